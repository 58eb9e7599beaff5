#include "base/size_parse.h"

#include <cctype>
#include <cmath>
#include <cstdio>

namespace edgestor {

std::optional<uint64_t> ParseSize(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) i++;
  if (i == 0) return std::nullopt;
  std::string number(text.substr(0, i));
  std::string suffix;
  for (char c : text.substr(i)) suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix.size() >= 2 && suffix.substr(suffix.size() - 2) == "IB") suffix.resize(suffix.size() - 2);
  else if (suffix.size() == 2 && suffix[1] == 'B') suffix.resize(1);
  else if (suffix == "B") suffix.clear();

  int shift = 0;
  if (suffix.empty()) shift = 0;
  else if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else if (suffix == "T") shift = 40;
  else if (suffix == "P") shift = 50;
  else return std::nullopt;

  char* end = nullptr;
  long double value = std::strtold(number.c_str(), &end);
  if (end != number.c_str() + number.size() || value < 0) return std::nullopt;
  long double bytes = std::ldexp(value, shift);
  if (bytes >= 18446744073709551615.0L) return std::nullopt;
  long double whole = std::floor(bytes);
  if (whole != bytes) return std::nullopt;  // "1.3K" is not a whole number of bytes
  return static_cast<uint64_t>(whole);
}

std::string FormatSize(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int unit = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    unit++;
  }
  char out[48];
  if (value == std::floor(value)) std::snprintf(out, sizeof out, "%.0f %s", value, kUnits[unit]);
  else std::snprintf(out, sizeof out, "%.2f %s", value, kUnits[unit]);
  return out;
}

}  // namespace edgestor
