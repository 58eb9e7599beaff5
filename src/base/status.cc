#include "base/status.h"

#include <cstring>

namespace edgestor {

std::string Status::ToString() const {
  if (ok()) return "ok";
  return message_ + " (" + std::strerror(code_) + ")";
}

Status Status::WithContext(const std::string& context) const {
  if (ok()) return *this;
  return Status(code_, context + ": " + message_);
}

}  // namespace edgestor
