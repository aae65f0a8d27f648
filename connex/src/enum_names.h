#pragma once
// Reading an enum back from its name, for the public *_from_name functions
// whose names are read in either case. Internal.
#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <optional>
#include <string>

namespace connex {

// The value among `values` whose `name_of(value)` (lower case) equals
// `text` in either case; none when no value's does.
template <typename Enum, typename NameOf>
std::optional<Enum> enum_from_name(const std::string& text, std::initializer_list<Enum> values, NameOf name_of) {
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (Enum value : values)
    if (lower == name_of(value)) return value;
  return std::nullopt;
}

}  // namespace connex
