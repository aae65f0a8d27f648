#pragma once
// How a built-in Lagrangian or synapse prints: its JSON description as
// "kind(key=value, ...)", so pretty_print and checkpoints name the same things.
#include <string>

#include <nlohmann/json.hpp>

namespace connex::ham {

inline std::string describe(const nlohmann::json& description) {
  std::string text = description.at("kind").get<std::string>() + "(";
  bool first = true;
  for (const auto& [key, value] : description.items())
    if (key != "kind") text += (first ? "" : ", ") + key + "=" + value.dump(), first = false;
  return text + ")";
}

}  // namespace connex::ham
