// Status and Result<T>: errors as values on the data path.
//
// A Status carries a POSIX errno value (0 = ok) and a human-readable message.
// errno codes are used because every frontend (NBD, virtio-blk) maps its
// error replies from them: EIO, ENOSPC, EINVAL, EROFS, ...
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace edgestor {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(int code, std::string message) : code_(code), message_(std::move(message)) {
    assert(code != 0);
  }

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  // "message (strerror)" for logs and the CLI.
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(const std::string& context) const;

 private:
  int code_ = 0;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Status status) : value_(std::move(status)) { assert(!std::get<Status>(value_).ok()); }

  bool ok() const { return std::holds_alternative<T>(value_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(value_);
  }
  T& value() & {
    assert(ok());
    return std::get<T>(value_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(value_));
  }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> value_;
};

}  // namespace edgestor

// Returns early from the enclosing function if `expr` yields a non-ok Status.
#define ES_RETURN_IF_ERROR(expr)        \
  do {                                  \
    ::edgestor::Status es_s_ = (expr);  \
    if (!es_s_.ok()) return es_s_;      \
  } while (0)

#define ES_CONCAT_INNER(a, b) a##b
#define ES_CONCAT(a, b) ES_CONCAT_INNER(a, b)
// Declares `lhs` from a Result<T>, returning its Status on error.
#define ES_ASSIGN_OR_RETURN(lhs, expr) ES_ASSIGN_OR_RETURN_IMPL(ES_CONCAT(es_r_, __LINE__), lhs, expr)
#define ES_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
