#pragma once
// Numbers written as text, in tables and in flags: one reading for both.
// Internal.
#include <cerrno>
#include <cstdlib>
#include <optional>
#include <string>

namespace connex::detail {

struct Decimal {
  double value = 0;       // what strtod reads, ±HUGE_VAL past the range, a subnormal or 0 below it
  bool in_range = false;  // false on overflow and underflow (strtod's ERANGE)
};

// `text`, the whole of it, as strtod reads a decimal number; nullopt when it
// is empty, holds more than a number, or is hexadecimal, which strtod reads
// too (0x10 as 16) but no table or flag means.
inline std::optional<Decimal> read_decimal(const std::string& text) {
  if (text.empty() || text.find_first_of("xX") != std::string::npos) return std::nullopt;
  char* stop = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &stop);
  if (stop != text.c_str() + text.size()) return std::nullopt;
  return Decimal{v, errno != ERANGE};
}

}  // namespace connex::detail
