// The numpyWriter README sequence, step by step, with the npzfs C++ API (core/).
//
//   NumpyFileManager('file.npy', 'w', (400, 400), np.int32) + addFrame  -> NpyAppender
//   readFrames(50, 100)                                                  -> NpyReader
//   flushBuffer(strict=True)                                             -> Flush(kSync)
//   NpzFileWriter.zipNpyFiles('file.npz', paths, keys, compressed=True) -> WriteArchive
//   writeArray('adc', arr1); writeArray('tx', arr2) on 'tmp.npz'         -> AppendToArchive
//   NpzFileWriter('tmp.npz', 'r').readFrames('adc', 5, 8)               -> Archive +
//   ReadMemberFrames
//
// Usage: api_example DIR. Everything is written inside DIR. The program checks every result
// against the frames it wrote (frame i of adc holds the value i everywhere) and exits
// non-zero, naming the step, on any error or mismatch. tests/test_npz_tool.py runs it and
// then checks the files with numpy.
#include <fcntl.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "npzfs/archive.h"
#include "npzfs/archive_writer.h"
#include "npzfs/file_util.h"
#include "npzfs/member_reader.h"
#include "npzfs/npy_appender.h"
#include "npzfs/npy_header.h"
#include "npzfs/npy_reader.h"

namespace {

using npzfs::Status;

constexpr uint64_t kRows = 400, kCols = 400, kFrames = 120;

[[noreturn]] void Fail(const std::string& step, const std::string& why) {
  std::fprintf(stderr, "api_example: %s: %s\n", step.c_str(), why.c_str());
  std::exit(1);
}

void Check(const Status& s, const std::string& step) {
  if (!s.ok()) Fail(step, s.message());
}

template <typename T>
T Take(npzfs::Result<T> r, const std::string& step) {
  if (!r.ok()) Fail(step, r.status().message());
  return std::move(r).value();
}

std::vector<int32_t> Frame(int32_t value) { return std::vector<int32_t>(kRows * kCols, value); }

// Frames [first, first + n) read back must hold first, first + 1, ... everywhere.
void CheckFrames(const std::vector<std::byte>& bytes, uint64_t first, uint64_t n,
                 const std::string& step) {
  const uint64_t frame_bytes = kRows * kCols * sizeof(int32_t);
  if (bytes.size() != n * frame_bytes) {
    Fail(step, "got " + std::to_string(bytes.size()) + " bytes, expected " +
                   std::to_string(n * frame_bytes));
  }
  for (uint64_t f = 0; f < n; ++f) {
    for (uint64_t i = 0; i < kRows * kCols; ++i) {
      int32_t v;
      std::memcpy(&v, bytes.data() + f * frame_bytes + i * sizeof v, sizeof v);
      if (v != static_cast<int32_t>(first + f)) {
        Fail(step, "frame " + std::to_string(first + f) + " element " + std::to_string(i) + " is " +
                       std::to_string(v));
      }
    }
  }
}

// A member made of a whole file, streamed by the writer from the open fd.
npzfs::NewMember MemberFromFile(const std::string& name, const npzfs::UniqueFd& fd,
                                const std::string& path) {
  npzfs::NewMember m;
  m.name = name;
  npzfs::MemberPiece piece;
  piece.fd = fd.get();
  piece.offset = 0;
  piece.length = Take(npzfs::FileSize(fd.get(), path), "stat " + path);
  m.pieces.push_back(std::move(piece));
  return m;
}

// npw = NumpyFileManager('file.npy', 'w', (400, 400), np.int32); npw.addFrame(...)
void CreateAndAddFrames(const std::string& npy) {
  auto layout = Take(npzfs::NpyHeader::ForFrames("<i4", {kRows, kCols}, false, 0), "layout");
  auto npw = Take(npzfs::NpyAppender::Open(npy, layout), "create file.npy");
  for (uint64_t i = 0; i < kFrames; ++i) {
    auto frame = Frame(static_cast<int32_t>(i));
    Check(npw->AddFrame(std::as_bytes(std::span(frame))), "addFrame");
    // npw.flushBuffer(strict=True) halfway: these frames now survive a crash.
    if (i == kFrames / 2) Check(npw->Flush(npzfs::Durability::kSync), "flushBuffer(strict)");
  }
  Check(npw->Flush(npzfs::Durability::kSync), "flushBuffer(strict)");
  if (npw->frame_count() != kFrames) Fail("addFrame", "frame_count is wrong");
  Check(npw->Close(), "close file.npy");
}

// npw = NumpyFileManager('file.npy'); npw.readFrames(50, 100)
void ReadFramesBack(const std::string& npy) {
  auto reader = Take(npzfs::NpyReader::Open(npy), "open file.npy");
  if (reader.header().frame_count() != kFrames) Fail("readFrames", "header count is wrong");
  CheckFrames(Take(reader.ReadFrames(50, 100), "readFrames(50, 100)"), 50, 50,
              "readFrames(50, 100)");
  // Out-of-range frames are an error value, not a crash.
  if (reader.ReadFrames(100, 200).ok()) Fail("readFrames(100, 200)", "expected ERANGE");
}

// A second array, tx: 10 frames of 3 float64.
void CreateTx(const std::string& tx_npy) {
  auto layout = Take(npzfs::NpyHeader::ForFrames("<f8", {3}, false, 0), "tx layout");
  auto w = Take(npzfs::NpyAppender::Open(tx_npy, layout), "create tx.npy");
  for (int i = 0; i < 10; ++i) {
    double row[3] = {i + 0.0, i + 0.25, i + 0.5};
    Check(w->AddFrame(std::as_bytes(std::span(row))), "tx addFrame");
  }
  Check(w->Close(), "close tx.npy");
}

// zipNpyFiles into file.npz, then writeArray twice into tmp.npz.
void ZipAndAppend(const std::string& dir, const std::string& npy, const std::string& tx_npy) {
  auto adc_fd = Take(npzfs::OpenFile(npy, O_RDONLY), "open file.npy");
  auto tx_fd = Take(npzfs::OpenFile(tx_npy, O_RDONLY), "open tx.npy");
  npzfs::WriteOptions deflate;
  deflate.compress_level = 6;

  // NpzFileWriter.zipNpyFiles('file.npz', [file.npy, tx.npy], ['adc', 'tx'], compressed=True)
  Check(npzfs::WriteArchive(
            dir + "/file.npz",
            {MemberFromFile("adc.npy", adc_fd, npy), MemberFromFile("tx.npy", tx_fd, tx_npy)},
            deflate),
        "zipNpyFiles");

  // with NpzFileWriter('tmp.npz', 'w', compress_file=True) as npz:
  //     npz.writeArray('adc', arr1); npz.writeArray('tx', arr2)
  const std::string tmp = dir + "/tmp.npz";
  Check(npzfs::AppendToArchive(tmp, {MemberFromFile("adc.npy", adc_fd, npy)}, deflate),
        "writeArray('adc')");
  Check(npzfs::AppendToArchive(tmp, {MemberFromFile("tx.npy", tx_fd, tx_npy)}, deflate),
        "writeArray('tx')");
  // Writing a key twice is refused (EEXIST) and leaves the archive as it was.
  Status again = npzfs::AppendToArchive(tmp, {MemberFromFile("tx.npy", tx_fd, tx_npy)}, deflate);
  if (again.ok() || again.code() != EEXIST) {
    Fail("writeArray('tx') again",
         "expected EEXIST, got: " + (again.ok() ? std::string("ok") : again.message()));
  }
}

// with NpzFileWriter('tmp.npz', 'r') as npz: npz.readFrames('adc', 5, 8)
void ReadFramesFromArchive(const std::string& tmp) {
  constexpr uint16_t kZipMethodDeflated = 8;
  auto archive = Take(npzfs::Archive::Open(tmp, {}), "open tmp.npz");
  auto index = archive->Find("adc.npy");
  if (!index) Fail("readFrames('adc', 5, 8)", "tmp.npz has no adc.npy");
  if (archive->members()[*index].entry.method != kZipMethodDeflated) {
    Fail("readFrames('adc', 5, 8)", "adc.npy should be deflated");
  }
  auto adc = Take(archive->OpenMember(*index), "open adc.npy in tmp.npz");
  CheckFrames(Take(npzfs::ReadMemberFrames(*adc, 5, 8, "tmp.npz:adc"), "readFrames('adc', 5, 8)"),
              5, 3, "readFrames('adc', 5, 8)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: api_example DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::string npy = dir + "/file.npy", tx_npy = dir + "/tx.npy";
  CreateAndAddFrames(npy);
  ReadFramesBack(npy);
  CreateTx(tx_npy);
  ZipAndAppend(dir, npy, tx_npy);
  ReadFramesFromArchive(dir + "/tmp.npz");
  std::printf("api_example: the numpyWriter sequence passed in %s\n", dir.c_str());
  return 0;
}
