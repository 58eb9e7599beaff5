// Errors of the edgestor command-line tool.
//
// A command that fails throws CliError carrying the one line to print after
// "edgestor: "; main() catches it and exits with status 1. Exceptions stay
// inside the CLI: the engine reports errors as Status values, which Check()
// and Unwrap() turn into CliError with a description of what failed.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "base/status.h"

namespace edgestor::cli {

class CliError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Fails the command with `line` (no "edgestor: " prefix).
[[noreturn]] inline void Fail(const std::string& line) { throw CliError(line); }

// Fails with "<what>: <status>" unless `status` is ok.
inline void Check(const Status& status, const std::string& what) {
  if (!status.ok()) Fail(what + ": " + status.ToString());
}

// Returns the value of `result`, or fails with "<what>: <status>".
template <typename T>
T Unwrap(Result<T> result, const std::string& what) {
  Check(result.status(), what);
  return std::move(result).value();
}

}  // namespace edgestor::cli
