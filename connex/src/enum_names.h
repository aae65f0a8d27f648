#pragma once
// Reading an enum back from its name, for the public *_from_name functions
// whose names are read in either case, and lists of names as messages say
// them. Internal.
#include <algorithm>
#include <cctype>
#include <iterator>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

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

// Items as a message lists them: "a, b or c" (`last_word` "or"), "a and b" ("and").
inline std::string listed(const std::vector<std::string>& items, const char* last_word) {
  std::string text;
  for (size_t k = 0; k < items.size(); ++k)
    text += (k == 0 ? "" : k + 1 == items.size() ? std::string(" ") + last_word + " " : std::string(", ")) + items[k];
  return text;
}

// Their names quoted, as an "expected ..." message lists them: "a", "b" or "c".
template <typename Values, typename NameOf>
std::string quoted_names(const Values& values, NameOf name_of) {
  std::vector<std::string> quoted;
  for (auto value : values) quoted.push_back(std::string("\"") + name_of(value) + "\"");
  return listed(quoted, "or");
}

}  // namespace connex
