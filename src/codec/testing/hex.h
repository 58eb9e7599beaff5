// Test support: known-answer vectors are written as hex strings.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace edgestor::testing {

using Bytes = std::vector<uint8_t>;

inline Bytes FromHex(std::string_view hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

}  // namespace edgestor::testing
