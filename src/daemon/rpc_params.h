// Reading the parameters of control methods: a missing parameter or one of
// the wrong type is EINVAL naming it (the control server turns that into a
// JSON-RPC error for the caller).
#pragma once

#include <cerrno>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace edgestor::rpc {

inline Result<std::string> StringParam(const nlohmann::json& params, const char* key) {
  if (!params.contains(key) || !params[key].is_string())
    return Status(EINVAL, std::string("missing string parameter \"") + key + "\"");
  return params[key].get<std::string>();
}

inline Result<uint64_t> SizeParam(const nlohmann::json& params, const char* key) {
  if (!params.contains(key) || !params[key].is_number_unsigned())
    return Status(EINVAL, std::string("missing byte-count parameter \"") + key + "\"");
  return params[key].get<uint64_t>();
}

// An optional true/false parameter; absent (or null) is `otherwise`.
inline Result<bool> BoolParam(const nlohmann::json& params, const char* key, bool otherwise) {
  if (!params.contains(key) || params[key].is_null()) return otherwise;
  if (!params[key].is_boolean()) return Status(EINVAL, std::string("parameter \"") + key + "\" must be true or false");
  return params[key].get<bool>();
}

}  // namespace edgestor::rpc
