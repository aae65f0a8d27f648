#include "connex/graph_spec.h"

#include <algorithm>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "connex/error.h"

namespace connex {

const char* role_name(Role role) {
  switch (role) {
    case Role::Input: return "input";
    case Role::Hidden: return "hidden";
    case Role::Output: return "output";
  }
  return "?";
}

std::optional<std::vector<int64_t>> find_cycle(
    int64_t num_nodes, const std::vector<std::pair<int64_t, int64_t>>& edges) {
  // Kahn's algorithm peels off every node not on or behind a cycle; any node
  // left has a predecessor that is also left, so walking predecessors from it
  // must revisit a node, and the walk between the two visits is a cycle.
  std::vector<int64_t> indegree(num_nodes, 0);
  std::vector<std::vector<int64_t>> successors(num_nodes), predecessors(num_nodes);
  for (const auto& [u, v] : edges) {
    ++indegree[v];
    successors[u].push_back(v);
    predecessors[v].push_back(u);
  }
  std::vector<int64_t> stack;
  for (int64_t n = 0; n < num_nodes; ++n)
    if (indegree[n] == 0) stack.push_back(n);
  int64_t removed = 0;
  while (!stack.empty()) {
    int64_t n = stack.back();
    stack.pop_back();
    ++removed;
    for (int64_t s : successors[n])
      if (--indegree[s] == 0) stack.push_back(s);
  }
  if (removed == num_nodes) return std::nullopt;

  int64_t start = 0;
  while (indegree[start] == 0) ++start;
  std::vector<int64_t> seen_at(num_nodes, -1), walk;
  int64_t node = start;
  while (seen_at[node] < 0) {
    seen_at[node] = static_cast<int64_t>(walk.size());
    walk.push_back(node);
    for (int64_t p : predecessors[node])
      if (indegree[p] > 0) {
        node = p;
        break;
      }
  }
  // walk[seen_at[node]..] follows edges backwards; reverse it into a forward path.
  std::vector<int64_t> cycle(walk.begin() + seen_at[node], walk.end());
  std::reverse(cycle.begin(), cycle.end());
  // Start the printed cycle at its smallest node so messages are reproducible.
  auto smallest = std::min_element(cycle.begin(), cycle.end());
  std::rotate(cycle.begin(), smallest, cycle.end());
  cycle.push_back(cycle.front());
  return cycle;
}

GraphSpec::GraphSpec(std::vector<NeuronId> neurons, std::vector<Edge> edges,
                     std::vector<NeuronId> inputs, std::vector<NeuronId> outputs,
                     const std::string& context) {
  const char* ctx = context.c_str();
  for (const auto& id : neurons) {
    if (!index_.emplace(id, static_cast<int64_t>(neurons_.size())).second)
      fail("{}: neuron {} is listed twice in the neuron list", ctx, id);
    neurons_.push_back(id);
  }
  auto add_if_new = [&](const NeuronId& id) {
    if (index_.emplace(id, static_cast<int64_t>(neurons_.size())).second) neurons_.push_back(id);
  };
  std::unordered_set<Edge, EdgeHash> seen_edges;
  for (auto& edge : edges) {
    add_if_new(edge.first);
    add_if_new(edge.second);
    if (seen_edges.insert(edge).second) edges_.push_back(std::move(edge));
  }

  if (!neurons_.empty()) {
    id_kind_ = neurons_.front().kind();
    for (const auto& id : neurons_)
      if (id.kind() != id_kind_)
        fail("{}: neuron {} is {} but neuron {} is {}; all neuron ids of a graph must be of one kind",
             ctx, id, kind_name(id.kind()), neurons_.front(), kind_name(id_kind_));
  }

  auto check_list = [&](const std::vector<NeuronId>& list, const char* what) {
    if (list.empty()) fail("{}: no {} neurons given; a network needs at least one", ctx, what);
    std::unordered_set<NeuronId, NeuronIdHash> seen;
    for (const auto& id : list) {
      if (!contains(id)) fail("{}: {} neuron {} is not a neuron of the graph", ctx, what, id);
      if (!seen.insert(id).second) fail("{}: {} neuron {} is listed twice", ctx, what, id);
    }
  };
  check_list(inputs, "input");
  check_list(outputs, "output");

  roles_.assign(neurons_.size(), Role::Hidden);
  for (const auto& id : inputs) roles_[index_.at(id)] = Role::Input;
  for (const auto& id : outputs) {
    auto& role = roles_[index_.at(id)];
    if (role == Role::Input) fail("{}: neuron {} is both an input and an output neuron", ctx, id);
    role = Role::Output;
  }
  inputs_ = std::move(inputs);
  outputs_ = std::move(outputs);

  std::vector<std::pair<int64_t, int64_t>> dense_edges;
  dense_edges.reserve(edges_.size());
  for (const auto& edge : edges_) {
    int64_t u = index_.at(edge.first), v = index_.at(edge.second);
    if (roles_[v] == Role::Input)
      fail("{}: input neuron {} has the incoming connection {}; inputs take only the input values",
           ctx, edge.second, edge_str(edge));
    if (roles_[u] == Role::Output)
      fail("{}: output neuron {} has the outgoing connection {}; outputs feed no other neuron", ctx,
           edge.first, edge_str(edge));
    dense_edges.emplace_back(u, v);
  }
  if (auto cycle = find_cycle(static_cast<int64_t>(neurons_.size()), dense_edges)) {
    std::vector<NeuronId> path;
    for (int64_t n : *cycle) path.push_back(neurons_[n]);
    std::string text;
    for (size_t i = 0; i < path.size(); ++i) text += (i ? " -> " : "") + path[i].str();
    fail("{}: the graph has the cycle {}; a network must be acyclic", ctx, text);
  }
}

int64_t GraphSpec::index_of(const NeuronId& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? -1 : it->second;
}

Role GraphSpec::role(const NeuronId& id) const {
  auto it = index_.find(id);
  if (it == index_.end()) fail("GraphSpec::role(): neuron {} is not in the graph", id);
  return roles_[it->second];
}

GraphSpec GraphSpec::from_edges(const std::vector<Edge>& edges, std::vector<NeuronId> inputs,
                                std::vector<NeuronId> outputs, std::vector<NeuronId> neurons) {
  return GraphSpec(std::move(neurons), edges, std::move(inputs), std::move(outputs));
}

GraphSpec GraphSpec::from_adjacency(const Adjacency& adjacency, std::vector<NeuronId> inputs,
                                    std::vector<NeuronId> outputs, std::vector<NeuronId> neurons) {
  // A key with no successors still names a neuron (networkx treats it so).
  std::unordered_set<NeuronId, NeuronIdHash> listed(neurons.begin(), neurons.end());
  std::vector<Edge> edges;
  for (const auto& [from, successors] : adjacency) {
    if (listed.insert(from).second) neurons.push_back(from);
    for (const auto& to : successors) edges.emplace_back(from, to);
  }
  return GraphSpec(std::move(neurons), std::move(edges), std::move(inputs), std::move(outputs));
}

// ---------------------------------------------------------------- JSON form

namespace {

NeuronId id_from_json(const nlohmann::json& value, const std::string& path) {
  if (value.is_number_integer()) return NeuronId(value.get<int64_t>());
  if (value.is_string()) return NeuronId(value.get<std::string>());
  fail("graph JSON: {} must be an integer or a string neuron id, got {}", path, value.dump());
}

std::vector<NeuronId> ids_from_json(const nlohmann::json& json, const std::string& key,
                                    bool required) {
  if (!json.contains(key)) {
    if (required) fail("graph JSON: required key \"{}\" is missing", key);
    return {};
  }
  const auto& list = json.at(key);
  if (!list.is_array()) fail("graph JSON: /{} must be an array, got {}", key, list.type_name());
  std::vector<NeuronId> ids;
  for (size_t i = 0; i < list.size(); ++i)
    ids.push_back(id_from_json(list[i], fmt::format("/{}/{}", key, i)));
  return ids;
}

// Adjacency keys are always strings in JSON; decide their kind from the rest of the graph.
NeuronId key_to_id(const std::string& key, bool integer_graph) {
  if (!integer_graph) return NeuronId(key);
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(key, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != key.size() || key.empty())
    fail("graph JSON: /adjacency key \"{}\" is not an integer, but the graph's other ids are integers",
         key);
  return NeuronId(value);
}

}  // namespace

GraphSpec GraphSpec::from_json(const nlohmann::json& json) {
  if (!json.is_object()) fail("graph JSON: the top level must be an object, got {}", json.type_name());
  auto inputs = ids_from_json(json, "inputs", true);
  auto outputs = ids_from_json(json, "outputs", true);
  auto neurons = ids_from_json(json, "neurons", false);
  bool has_edges = json.contains("edges"), has_adjacency = json.contains("adjacency");
  if (has_edges && has_adjacency)
    fail("graph JSON: give either \"edges\" or \"adjacency\", not both");
  std::vector<Edge> edges;
  if (has_edges) {
    const auto& list = json.at("edges");
    if (!list.is_array()) fail("graph JSON: /edges must be an array, got {}", list.type_name());
    for (size_t i = 0; i < list.size(); ++i) {
      const auto& pair = list[i];
      if (!pair.is_array() || pair.size() != 2)
        fail("graph JSON: /edges/{} must be a pair [from, to], got {}", i, pair.dump());
      edges.emplace_back(id_from_json(pair[0], fmt::format("/edges/{}/0", i)),
                         id_from_json(pair[1], fmt::format("/edges/{}/1", i)));
    }
  } else if (has_adjacency) {
    const auto& map = json.at("adjacency");
    if (!map.is_object()) fail("graph JSON: /adjacency must be an object, got {}", map.type_name());
    // The kind of the keys follows the ids written elsewhere (inputs come first).
    bool integer_graph = inputs.front().is_integer();
    std::unordered_set<NeuronId, NeuronIdHash> listed(neurons.begin(), neurons.end());
    for (auto it = map.begin(); it != map.end(); ++it) {
      NeuronId from = key_to_id(it.key(), integer_graph);
      if (!it.value().is_array())
        fail("graph JSON: /adjacency/{} must be an array, got {}", it.key(), it.value().type_name());
      if (listed.insert(from).second) neurons.push_back(from);
      for (size_t i = 0; i < it.value().size(); ++i)
        edges.emplace_back(from, id_from_json(it.value()[i],
                                              fmt::format("/adjacency/{}/{}", it.key(), i)));
    }
  }
  return GraphSpec(std::move(neurons), std::move(edges), std::move(inputs), std::move(outputs),
                   "graph JSON");
}

nlohmann::json GraphSpec::to_json() const {
  auto id_json = [](const NeuronId& id) {
    return id.is_integer() ? nlohmann::json(id.as_integer()) : nlohmann::json(id.as_string());
  };
  nlohmann::json json;
  json["neurons"] = nlohmann::json::array();
  for (const auto& id : neurons_) json["neurons"].push_back(id_json(id));
  json["edges"] = nlohmann::json::array();
  for (const auto& [u, v] : edges_) json["edges"].push_back({id_json(u), id_json(v)});
  json["inputs"] = nlohmann::json::array();
  for (const auto& id : inputs_) json["inputs"].push_back(id_json(id));
  json["outputs"] = nlohmann::json::array();
  for (const auto& id : outputs_) json["outputs"].push_back(id_json(id));
  return json;
}

}  // namespace connex
