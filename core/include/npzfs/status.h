// Errors as values for the whole of core/.
//
// A Status is either ok or carries a positive errno value plus a message that names the
// file and the cause ("data.npz: member adc.npy: CRC-32 mismatch"). The FUSE layer replies
// the errno; the npz tool prints the message. Nothing in core throws across a module edge,
// calls exit() or prints to stdout.
//
// A few failures carry a Cause too, for the callers that must act on what went wrong beyond
// its errno (never by matching the message).
//
// Result<T> holds either a T or a non-ok Status. Both types are plain values: copyable,
// movable, and as thread-safe as any std::string.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace npzfs {

class [[nodiscard]] Status {
 public:
  enum class Cause : unsigned char {
    kUnspecified,
    kUnexpectedEndOfFile,  // EIO: a file ended before bytes it was expected to hold
  };

  Status() = default;  // ok
  static Status Ok() { return Status(); }
  // `code` is a positive errno value (EIO, EINVAL, ENOENT, ...). A zero code is turned into
  // EIO so that an error can never be mistaken for success.
  static Status Error(int code, std::string message, Cause cause = Cause::kUnspecified) {
    return Status(code == 0 ? EIO : code, std::move(message), cause);
  }

  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  Cause cause() const { return cause_; }

  // Prefixes the message with context, e.g. the archive name: "ctx: message". Code and
  // cause are kept.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_, cause_);
  }

 private:
  Status(int code, std::string message, Cause cause = Cause::kUnspecified)
      : code_(code), message_(std::move(message)), cause_(cause) {}
  int code_ = 0;
  std::string message_;
  Cause cause_ = Cause::kUnspecified;
};

// An error for a failed system call: "<path>: <what>: <strerror(err)>".
Status ErrnoStatus(int err, const std::string& path, const std::string& what);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status::Error(EIO, "internal: ok status in Result");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace npzfs

#define NPZ_CONCAT_INNER(a, b) a##b
#define NPZ_CONCAT(a, b) NPZ_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not ok.
#define NPZ_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::npzfs::Status npz_status_ = (expr);      \
    if (!npz_status_.ok()) return npz_status_; \
  } while (0)

// `NPZ_ASSIGN_OR_RETURN(auto x, Foo());` declares x from a Result or returns its Status.
#define NPZ_ASSIGN_OR_RETURN(lhs, expr) \
  NPZ_ASSIGN_OR_RETURN_IMPL(NPZ_CONCAT(npz_result_, __LINE__), lhs, expr)
#define NPZ_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
