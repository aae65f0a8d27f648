#pragma once
// A built-in Lagrangian's or synapse's description: how it prints (its JSON
// description as "kind(key=value, ...)", so pretty_print and checkpoints name
// the same things), how a reader names where a description went wrong, and
// which synapse is connex's graph synapse. Internal.
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "connex/error.h"
#include "connex/ham/synapse.h"
#include "json_input.h"

namespace connex::ham {

inline std::string describe(const nlohmann::json& description) {
  std::string text = description.at("kind").get<std::string>() + "(";
  bool first = true;
  for (const auto& [key, value] : description.items())
    if (key != "kind") text += (first ? "" : ", ") + key + "=" + value.dump(), first = false;
  return text + ")";
}

// The "kind" of a built-in part's description; throws, naming `where` and
// `what` ("a Lagrangian", "a synapse"), unless it is an object with a string "kind".
inline std::string kind_of(const nlohmann::json& description, const char* what, const std::string& where) {
  if (!description.is_object() || !description.contains("kind") || !description.at("kind").is_string())
    fail("{}: expected {} {{\"kind\": ...}}, got {}", where, what, detail::excerpt(description));
  return description.at("kind").get<std::string>();
}

// Rethrows a reader's error under `where` (a file and JSON path), unless its
// message already starts there.
[[noreturn]] inline void fail_under(const std::string& where, const Error& e) {
  if (std::string_view(e.what()).rfind(where, 0) == 0) throw e;
  fail("{}: {}", where, e.what());
}

// Whether `synapse` is connex's graph synapse (graph()), which an edit
// rebuilds with other connections; a custom synapse may list connection
// labels too, but only its own code knows how to rebuild it.
bool is_graph_synapse(const SynapseImpl& synapse);

}  // namespace connex::ham
