#pragma once
// Reading an enum back from its name, for the public *_from_name functions
// whose names are read in either case. Internal.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <iterator>
#include <optional>
#include <string>
#include <type_traits>

namespace connex {

// The value among `values` (an enum's list, such as kPruneScopes) whose
// `name_of(value)` (lower case) equals `text` in either case; none when no value's does.
template <typename Values, typename NameOf>
auto enum_from_name(const std::string& text, const Values& values, NameOf name_of)
    -> std::optional<std::decay_t<decltype(*std::begin(values))>> {
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (auto value : values)
    if (lower == name_of(value)) return value;
  return std::nullopt;
}

// Their names quoted, as an "expected ..." message lists them: "a", "b" or "c".
template <typename Values, typename NameOf>
std::string quoted_names(const Values& values, NameOf name_of) {
  std::string text;
  const std::ptrdiff_t count = std::distance(std::begin(values), std::end(values));
  std::ptrdiff_t k = 0;
  for (auto value : values) {
    if (k > 0) text += k + 1 == count ? " or " : ", ";
    text += std::string("\"") + name_of(value) + "\"";
    ++k;
  }
  return text;
}

}  // namespace connex
