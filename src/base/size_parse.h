// Parsing and printing of byte sizes with K/M/G/T suffixes (powers of 1024).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace edgestor {

// "4096", "64K", "20G", "1.5T" (case-insensitive, optional trailing "iB"/"B").
// Returns nullopt on anything else, including overflow.
std::optional<uint64_t> ParseSize(std::string_view text);

// 65536 -> "64 KiB"; exact multiples print without a fraction.
std::string FormatSize(uint64_t bytes);

}  // namespace edgestor
