#include "connex/neuron_id.h"

namespace connex {

std::string NeuronId::str() const {
  if (is_integer()) return std::to_string(as_integer());
  return "\"" + as_string() + "\"";
}

std::string NeuronId::plain() const {
  return is_integer() ? std::to_string(as_integer()) : as_string();
}

size_t NeuronId::hash() const {
  if (is_integer()) return std::hash<int64_t>()(as_integer());
  return std::hash<std::string>()(as_string()) ^ 0x9e3779b97f4a7c15ull;
}

const char* kind_name(NeuronId::Kind kind) {
  return kind == NeuronId::Kind::Integer ? "an integer" : "a string";
}

std::string edge_str(const Edge& edge) { return edge.first.str() + " -> " + edge.second.str(); }

std::optional<int64_t> parse_integer(const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size() || text.empty()) return std::nullopt;
  return value;
}

std::string join_ids(const std::vector<NeuronId>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += ids[i].str();
  }
  return out + "]";
}

}  // namespace connex
