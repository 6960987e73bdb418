// Little-endian byte encoding and decoding: the one home for it in npzfs (ZIP records, the
// sidecar index, the seek table, the append journal all use it).
//
// Put* append to a std::string; Get* read from raw bytes the caller has bounds-checked;
// ByteReader reads a bounded buffer and reports running past its end as false, never as
// undefined behaviour. Plain functions and values: thread-safe as any local data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace npzfs {

inline void PutLe16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}
inline void PutLe32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void PutLe64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

inline uint16_t GetLe16(const unsigned char* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t GetLe32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline uint64_t GetLe64(const unsigned char* p) {
  return static_cast<uint64_t>(GetLe32(p)) | (static_cast<uint64_t>(GetLe32(p + 4)) << 32);
}
inline uint16_t GetLe16(const char* p) {
  return GetLe16(reinterpret_cast<const unsigned char*>(p));
}
inline uint32_t GetLe32(const char* p) {
  return GetLe32(reinterpret_cast<const unsigned char*>(p));
}
inline uint64_t GetLe64(const char* p) {
  return GetLe64(reinterpret_cast<const unsigned char*>(p));
}

// Overwrites 2/4/8 bytes at `pos` of `out` (which must already hold them).
inline void SetLe32(std::string& out, size_t pos, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[pos + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// Sequential, bounds-checked reads from a byte buffer (not owned; it must outlive the reader).
// Every method returns false, and reads nothing, when fewer bytes remain than it needs.
class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}

  bool U8(uint8_t* v) {
    if (remaining() < 1) return false;
    *v = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }
  bool U16(uint16_t* v) {
    if (remaining() < 2) return false;
    *v = GetLe16(in_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool U32(uint32_t* v) {
    if (remaining() < 4) return false;
    *v = GetLe32(in_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool U64(uint64_t* v) {
    if (remaining() < 8) return false;
    *v = GetLe64(in_.data() + pos_);
    pos_ += 8;
    return true;
  }
  // Copies the next n bytes into *out.
  bool Bytes(size_t n, std::string* out) {
    if (remaining() < n) return false;
    out->assign(in_.substr(pos_, n));
    pos_ += n;
    return true;
  }
  bool Skip(size_t n) {
    if (remaining() < n) return false;
    pos_ += n;
    return true;
  }
  size_t remaining() const { return in_.size() - pos_; }
  size_t position() const { return pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace npzfs
