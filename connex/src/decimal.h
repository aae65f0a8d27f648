#pragma once
// Numbers written as text, in tables, flags and environment variables: one
// reading for each kind. Internal.
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

#include "connex/error.h"
#include "connex/neuron_id.h"

namespace connex::detail {

struct Decimal {
  double value = 0;       // what strtod reads: a subnormal or 0 below the range
  bool overflow = false;  // beyond the range of a double (value is ±HUGE_VAL)
};

// `text`, the whole of it, as strtod reads a decimal number; nullopt when it
// is empty, starts with white space (which strtod would skip, though it
// refuses it at the end), holds more than a number, or is hexadecimal, which
// strtod reads too (0x10 as 16) but no table or flag means.
inline std::optional<Decimal> read_decimal(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) ||
      text.find_first_of("xX") != std::string::npos)
    return std::nullopt;
  char* stop = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &stop);
  if (stop != text.c_str() + text.size()) return std::nullopt;
  return Decimal{v, errno == ERANGE && std::abs(v) == HUGE_VAL};
}

// The integer in environment variable `name`, or nullopt when it is unset or
// empty; anything but an integer in [lowest, highest] (parse_integer()'s
// digits) is refused naming the variable, never read as a default.
inline std::optional<int> environment_int(const char* name, int lowest, int highest) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  const auto parsed = parse_integer(value);
  if (!parsed || *parsed < lowest || *parsed > highest)
    fail("environment variable {}={} is not an integer in [{}, {}]", name, value, lowest, highest);
  return static_cast<int>(*parsed);
}

}  // namespace connex::detail
