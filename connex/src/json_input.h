#pragma once
// JSON from files and other untrusted sources, and JSON values in messages.
#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace connex::detail {

// Deeper nesting than any connex file needs; bounded so that nothing
// recursive (nlohmann's dump(), a message) ever meets 100,000 levels.
constexpr size_t kMaxJsonDepth = 256;

// Parses untrusted JSON text. Refuses nesting deeper than kMaxJsonDepth
// before parsing ("WHAT nests JSON deeper than 256 levels (at byte N)"), a
// syntax error ("WHAT is not valid JSON: ...") and, in valid JSON, an
// object that gives a key twice, escapes decoded ("WHAT: /options/seed is
// given twice (line 3); ..."), as connex::Error.
nlohmann::json parse_json(std::string_view text, const std::string& what);

// `value` as JSON text for a one-line message: at most about `max_bytes`
// (cut with "…"), nested values past a few levels elided, control bytes
// escaped; never copies a long string or array whole.
std::string excerpt(const nlohmann::json& value, size_t max_bytes = 80);

// Refuses a member of `object` that is not one of `keys` ("WHERE: \"k\" is
// not a key of WHAT (KEYS)"): a misspelt key would otherwise be ignored,
// its value silently replaced by nothing. A non-object passes.
void only_keys(const nlohmann::json& object, std::initializer_list<const char*> keys, const char* what,
               const std::string& where);

// Whether `doc` is a node-link graph, as export_graph() and networkx write
// it: "nodes", and "links" (or "edges", networkx 3.4 on) at the top.
inline bool is_node_link_graph(const nlohmann::json& doc) {
  return doc.is_object() && doc.contains("nodes") && (doc.contains("links") || doc.contains("edges"));
}

}  // namespace connex::detail
