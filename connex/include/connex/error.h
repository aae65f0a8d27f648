#pragma once
// connex's one exception type. Every rejected input raises connex::Error with a
// message that starts with the operation ("add_connections(): ...") and names
// the culprit (neuron, edge, file, JSON path), so callers can catch one type.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace connex {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws connex::Error with an fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace connex
