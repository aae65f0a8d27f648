#include "connex/graph_spec.h"

#include <algorithm>
#include <atomic>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "config_codec.h"
#include "connex/error.h"
#include "cycles.h"
#include "id_messages.h"
#include "json_input.h"
#include "parallel_passes.h"

namespace connex {

const char* role_name(Role role) {
  switch (role) {
    case Role::Input:
      return "input";
    case Role::Hidden:
      return "hidden";
    case Role::Output:
      return "output";
  }
  return "?";
}

namespace {

// Edges as flat arrays grouped by source: the targets of node u are
// targets[offsets[u] .. offsets[u + 1]). Built once per spec for both the
// repeated-edge and the cycle check, and kept as its index_adjacency().
struct EdgeCsr {
  std::vector<int64_t> offsets, targets, indegree;

  // A counting sort of the edges by source, keeping their order within each
  // source; large graphs split the edges between connex's threads.
  EdgeCsr(int64_t num_nodes, const std::vector<std::pair<int64_t, int64_t>>& edges)
      : targets(edges.size()), indegree(num_nodes, 0) {
    const int64_t m = static_cast<int64_t>(edges.size());
    const int64_t parts = counting_sort_parts(m, num_nodes);
    std::vector<std::vector<int64_t>> part_indegree(parts - 1, std::vector<int64_t>(num_nodes, 0));
    offsets = counting_sort_in_parts(parts, num_nodes, [&](int64_t p, auto&& slot_of) {
      int64_t* in = p == 0 ? indegree.data() : part_indegree[p - 1].data();
      for (int64_t e = m * p / parts; e < m * (p + 1) / parts; ++e) {
        const auto [u, v] = edges[e];
        const int64_t slot = slot_of(u);
        if (slot < 0)
          ++in[v];  // counting pass
        else
          targets[slot] = v;
      }
    });
    for (const auto& counts : part_indegree)
      for (int64_t v = 0; v < num_nodes; ++v) indegree[v] += counts[v];
  }

  // Sorts each node's targets (index_adjacency() promises them ascending) and
  // tells whether some edge is given twice: short per-node sorts instead of
  // one sort of every edge. Nodes are independent, so large graphs split them
  // between connex's threads (share_work).
  bool sort_targets_and_find_repeat() {
    std::atomic<bool> repeat{false};
    const int64_t num_nodes = static_cast<int64_t>(offsets.size()) - 1;
    share_work(0, num_nodes, std::max<int64_t>(1, num_nodes * (1 << 16) / std::max<int64_t>(1, targets.size())),
               [&](int64_t first_node, int64_t last_node) {
                 bool found = false;
                 for (int64_t n = first_node; n < last_node; ++n) {
                   auto first = targets.begin() + offsets[n], last = targets.begin() + offsets[n + 1];
                   std::sort(first, last);
                   found = found || std::adjacent_find(first, last) != last;
                 }
                 if (found) repeat = true;
               });
    return repeat;
  }
};

// On success, `batch` (given with each node's least batch) ends with each
// node's longest-path batch: Kahn's algorithm takes a node once all its
// predecessors are done, so its batch is final then and can be pushed on.
std::optional<std::vector<int64_t>> levels_or_cycle(const EdgeCsr& csr,
                                                    const std::vector<std::pair<int64_t, int64_t>>& edges,
                                                    std::vector<int64_t>& batch) {
  // Kahn's algorithm peels off every node not on or behind a cycle; any node
  // left has a predecessor that is also left, so walking predecessors from it
  // must revisit a node, and the walk between the two visits is a cycle.
  const int64_t num_nodes = static_cast<int64_t>(csr.offsets.size()) - 1;
  // Each node's count of predecessors not yet peeled and its batch so far
  // side by side: one cache line per target visited, not two.
  struct Node {
    int64_t remaining, batch;
  };
  std::vector<Node> nodes(num_nodes);
  for (int64_t n = 0; n < num_nodes; ++n) nodes[n] = {csr.indegree[n], batch[n]};
  // `peeled` doubles as the queue: nodes are appended once ready and taken
  // in turn, so no separate stack grows and shrinks.
  std::vector<int64_t> peeled;
  peeled.reserve(num_nodes);
  for (int64_t n = 0; n < num_nodes; ++n)
    if (nodes[n].remaining == 0) peeled.push_back(n);
  for (size_t head = 0; head < peeled.size(); ++head) {
    const int64_t n = peeled[head];
    const int64_t next_batch = nodes[n].batch + 1;
    for (int64_t k = csr.offsets[n]; k < csr.offsets[n + 1]; ++k) {
      Node& t = nodes[csr.targets[k]];
      t.batch = std::max(t.batch, next_batch);
      if (--t.remaining == 0) peeled.push_back(csr.targets[k]);
    }
  }
  if (static_cast<int64_t>(peeled.size()) == num_nodes) {
    for (int64_t n = 0; n < num_nodes; ++n) batch[n] = nodes[n].batch;
    return std::nullopt;
  }

  // Rare path: predecessor lists only for the nodes left.
  std::vector<std::vector<int64_t>> predecessors(num_nodes);
  for (const auto& [u, v] : edges)
    if (nodes[u].remaining > 0 && nodes[v].remaining > 0) predecessors[v].push_back(u);
  int64_t start = 0;
  while (nodes[start].remaining == 0) ++start;
  std::vector<int64_t> seen_at(num_nodes, -1), walk;
  int64_t node = start;
  while (seen_at[node] < 0) {
    seen_at[node] = static_cast<int64_t>(walk.size());
    walk.push_back(node);
    node = predecessors[node].front();
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

using NeuronIndex = std::unordered_map<NeuronId, int64_t, NeuronIdHash>;

void check_string_ids(const std::vector<NeuronId>& neurons, const char* ctx) {
  for (const auto& id : neurons) check_id_text(id, ctx);
}

// Repeated edges count once (as in networkx); keep the first of each, in order.
// Returns the edges grouped by source, each node's targets ascending.
EdgeCsr drop_repeated_edges(int64_t n, std::vector<std::pair<int64_t, int64_t>>& edge_indices) {
  EdgeCsr csr(n, edge_indices);
  if (!csr.sort_targets_and_find_repeat()) return csr;
  std::unordered_set<uint64_t> seen;
  seen.reserve(edge_indices.size());
  std::vector<std::pair<int64_t, int64_t>> unique;
  for (const auto& [u, v] : edge_indices)
    if (seen.insert(static_cast<uint64_t>(u) * static_cast<uint64_t>(n) + static_cast<uint64_t>(v)).second)
      unique.emplace_back(u, v);
  edge_indices = std::move(unique);
  csr = EdgeCsr(n, edge_indices);
  csr.sort_targets_and_find_repeat();  // kept as index_adjacency(): ascending per node
  return csr;
}

// The kind of the first neuron id, once every other id is checked to share it.
NeuronId::Kind common_id_kind(const std::vector<NeuronId>& neurons, const char* ctx) {
  const NeuronId::Kind kind = neurons.front().kind();
  for (const auto& id : neurons)
    if (id.kind() != kind) fail("{}: {}", ctx, kinds_differ(id, neurons.front(), "graph"));
  return kind;
}

// `kind` is the graph's id kind, absent when the graph has no neurons.
void check_end_list(const std::vector<NeuronId>& list, const char* what, const NeuronIndex& index,
                    std::optional<NeuronId::Kind> kind, const char* ctx) {
  if (list.empty()) fail("{}: no {} neurons given; a network needs at least one", ctx, what);
  std::unordered_set<NeuronId, NeuronIdHash> seen;
  for (const auto& id : list) {
    if (index.count(id) == 0) {
      if (kind && id.kind() != *kind) fail("{}: {} neuron {} {}", ctx, what, id, kind_clash(id, *kind));
      fail("{}: {} neuron {} is not a neuron of the graph", ctx, what, id);
    }
    if (!seen.insert(id).second) fail("{}: {} neuron {} is listed twice", ctx, what, id);
  }
}

std::vector<Role> assign_roles(size_t num_neurons, const NeuronIndex& index, const std::vector<NeuronId>& inputs,
                               const std::vector<NeuronId>& outputs, const char* ctx) {
  std::vector<Role> roles(num_neurons, Role::Hidden);
  for (const auto& id : inputs) roles[index.at(id)] = Role::Input;
  for (const auto& id : outputs) {
    auto& role = roles[index.at(id)];
    if (role == Role::Input) fail("{}: neuron {} is both an input and an output neuron", ctx, id);
    role = Role::Output;
  }
  return roles;
}

void check_edge_directions(const std::vector<std::pair<int64_t, int64_t>>& edge_indices, const std::vector<Role>& roles,
                           const std::vector<NeuronId>& neurons, const char* ctx) {
  for (const auto& [u, v] : edge_indices) {
    if (roles[v] == Role::Input)
      fail("{}: input neuron {} has the incoming connection {}; inputs take only the input values", ctx, neurons[v],
           edge_str({neurons[u], neurons[v]}));
    if (roles[u] == Role::Output)
      fail("{}: output neuron {} has the outgoing connection {}; outputs feed no other neuron", ctx, neurons[u],
           edge_str({neurons[u], neurons[v]}));
  }
}

// The levels of an acyclic graph with its edges by source (taken from `csr`);
// fails naming a cycle otherwise.
std::shared_ptr<GraphSpec::IndexAdjacency> levels_or_fail(EdgeCsr& csr,
                                                          const std::vector<std::pair<int64_t, int64_t>>& edge_indices,
                                                          const std::vector<Role>& roles,
                                                          const std::vector<NeuronId>& neurons, const char* ctx) {
  const auto n = static_cast<int64_t>(neurons.size());
  auto adjacency = std::make_shared<GraphSpec::IndexAdjacency>();
  adjacency->batch.resize(n);
  for (int64_t i = 0; i < n; ++i) adjacency->batch[i] = roles[i] == Role::Input ? 0 : 1;
  if (auto cycle = levels_or_cycle(csr, edge_indices, adjacency->batch)) {
    std::string text;
    for (size_t i = 0; i < cycle->size(); ++i) text += (i ? " -> " : "") + neurons[(*cycle)[i]].str();
    fail("{}: the graph has the cycle {}; a network must be acyclic", ctx, text);
  }
  adjacency->offsets = std::move(csr.offsets);
  adjacency->targets = std::move(csr.targets);
  return adjacency;
}

}  // namespace

std::optional<std::vector<int64_t>> find_cycle(int64_t num_nodes,
                                               const std::vector<std::pair<int64_t, int64_t>>& edges) {
  std::vector<int64_t> batch(num_nodes, 0);
  return levels_or_cycle(EdgeCsr(num_nodes, edges), edges, batch);
}

GraphSpec::GraphSpec(std::vector<NeuronId> neurons, std::vector<Edge> edges, std::vector<NeuronId> inputs,
                     std::vector<NeuronId> outputs, const std::string& context)
    : inputs_(std::move(inputs)), outputs_(std::move(outputs)) {
  const char* ctx = context.c_str();
  auto index = std::make_shared<NeuronIndex>();
  index_ = index;
  index->reserve(neurons.size() + edges.size() / 4);
  for (auto& id : neurons) {
    if (!index->emplace(id, static_cast<int64_t>(neurons_.size())).second)
      fail("{}: neuron {} is listed twice in the neuron list", ctx, id);
    neurons_.push_back(std::move(id));
  }
  // A given list is the whole graph: an edge naming anything else is a typo,
  // not a new neuron. Without a list the edges name the neurons.
  const bool listed = !neurons_.empty();
  const NeuronId::Kind listed_kind = listed ? neurons_.front().kind() : NeuronId::Kind::Integer;
  auto index_or_add = [&](const NeuronId& id, const Edge& edge) {
    auto it = index->find(id);
    if (it != index->end()) return it->second;
    if (listed) fail("{}: {}", ctx, unlisted_endpoint(edge, id, listed_kind, "the neurons list"));
    const auto n = static_cast<int64_t>(neurons_.size());
    index->emplace(id, n);
    neurons_.push_back(id);
    return n;
  };
  edge_indices_.reserve(edges.size());
  for (const auto& edge : edges) {
    const int64_t a = index_or_add(edge.first, edge);
    edge_indices_.emplace_back(a, index_or_add(edge.second, edge));
  }
  validate(context);
}

GraphSpec::GraphSpec(std::vector<NeuronId> neurons, std::vector<std::pair<int64_t, int64_t>> edge_indices,
                     std::vector<NeuronId> inputs, std::vector<NeuronId> outputs, const std::string& context)
    : neurons_(std::move(neurons)),
      edge_indices_(std::move(edge_indices)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)) {
  auto index = std::make_shared<NeuronIndex>();
  index_ = index;
  index->reserve(neurons_.size());
  for (size_t i = 0; i < neurons_.size(); ++i)
    if (!index->emplace(neurons_[i], static_cast<int64_t>(i)).second)
      fail("{}: neuron {} is listed twice in the neuron list", context, neurons_[i]);
  for (const auto& [u, v] : edge_indices_)
    if (u < 0 || v < 0 || u >= static_cast<int64_t>(neurons_.size()) || v >= static_cast<int64_t>(neurons_.size()))
      fail("{}: edge ({}, {}) indexes past the {} neurons", context, u, v, neurons_.size());
  validate(context);
}

void GraphSpec::validate(const std::string& context) {
  const char* ctx = context.c_str();
  const auto n = static_cast<int64_t>(neurons_.size());
  check_string_ids(neurons_, ctx);
  EdgeCsr csr = drop_repeated_edges(n, edge_indices_);
  std::optional<NeuronId::Kind> kind;  // none for a graph without neurons
  if (!neurons_.empty()) kind = id_kind_ = common_id_kind(neurons_, ctx);
  check_end_list(inputs_, "input", *index_, kind, ctx);  // a spec validated here has no appended neurons
  check_end_list(outputs_, "output", *index_, kind, ctx);
  roles_ = assign_roles(neurons_.size(), *index_, inputs_, outputs_, ctx);
  check_edge_directions(edge_indices_, roles_, neurons_, ctx);
  adjacency_ = levels_or_fail(csr, edge_indices_, roles_, neurons_, ctx);
}

namespace {

// Calls visit(u, v) for each edge in edge_indices() order without making
// that list: a patched spec's (`by_source`) from its successor lists.
template <typename Visit>
void visit_edges(bool by_source, const GraphSpec::IndexAdjacency* adjacency,
                 const std::vector<std::pair<int64_t, int64_t>>& given, const Visit& visit) {
  if (!by_source || !adjacency) {  // a moved-from spec holds neither
    for (const auto& [u, v] : given) visit(u, v);
    return;
  }
  for (size_t u = 0; u + 1 < adjacency->offsets.size(); ++u)
    for (int64_t k = adjacency->offsets[u]; k < adjacency->offsets[u + 1]; ++k)
      visit(static_cast<int64_t>(u), adjacency->targets[k]);
}

}  // namespace

const std::vector<Edge>& GraphSpec::edges() const {
  return edges_.get([&] {
    std::vector<Edge> list;
    list.reserve(edges_by_source_ && adjacency_ ? adjacency_->targets.size() : edge_indices_.size());
    visit_edges(edges_by_source_, adjacency_.get(), edge_indices_,
                [&](int64_t u, int64_t v) { list.emplace_back(neurons_[u], neurons_[v]); });
    return list;
  });
}

const std::vector<std::pair<int64_t, int64_t>>& GraphSpec::edge_indices() const {
  if (!edges_by_source_ || !adjacency_) return edge_indices_;
  return by_source_.get([&] {
    std::vector<std::pair<int64_t, int64_t>> list;
    list.reserve(adjacency_->targets.size());
    visit_edges(true, adjacency_.get(), edge_indices_, [&](int64_t u, int64_t v) { list.emplace_back(u, v); });
    return list;
  });
}

int64_t GraphSpec::index_of(const NeuronId& id) const {
  // Integer labels often are their own positions (generated graphs): one
  // read instead of a hash lookup, whose buckets miss the cache in a large graph.
  if (id.is_integer()) {
    const int64_t at = id.as_integer();
    if (at >= 0 && at < static_cast<int64_t>(neurons_.size()) && neurons_[at] == id) return at;
  }
  for (const auto* index : {index_.get(), appended_index_.get()}) {
    if (!index) continue;
    auto it = index->find(id);
    if (it != index->end()) return it->second;
  }
  return -1;
}

Role GraphSpec::role(const NeuronId& id) const {
  const int64_t index = index_of(id);
  if (index < 0) fail("GraphSpec::role(): neuron {} is not in the graph", id);
  return roles_[index];
}

GraphSpec GraphSpec::from_edges(const std::vector<Edge>& edges, std::vector<NeuronId> inputs,
                                std::vector<NeuronId> outputs, std::vector<NeuronId> neurons) {
  return GraphSpec(std::move(neurons), edges, std::move(inputs), std::move(outputs));
}

GraphSpec GraphSpec::from_adjacency(const Adjacency& adjacency, std::vector<NeuronId> inputs,
                                    std::vector<NeuronId> outputs, std::vector<NeuronId> neurons) {
  // A key with no successors still names a neuron (networkx treats it so),
  // unless a neuron list is given: then it is the whole graph, as for edges.
  const bool given = !neurons.empty();
  std::unordered_set<NeuronId, NeuronIdHash> listed(neurons.begin(), neurons.end());
  std::vector<Edge> edges;
  for (const auto& [from, successors] : adjacency) {
    if (listed.insert(from).second) {
      if (given && from.kind() != neurons.front().kind())
        fail("GraphSpec: adjacency key {} {}", from, kind_clash(from, neurons.front().kind()));
      if (given) fail("GraphSpec: adjacency key {} is not in the neurons list", from);
      neurons.push_back(from);
    }
    for (const auto& to : successors) edges.emplace_back(from, to);
  }
  // Without a list, the keys are followed by the neurons only edges name, so
  // the list handed on is complete.
  if (!given)
    for (const auto& edge : edges)
      if (listed.insert(edge.second).second) neurons.push_back(edge.second);
  return GraphSpec(std::move(neurons), std::move(edges), std::move(inputs), std::move(outputs));
}

// ---------------------------------------------------------------- JSON form

nlohmann::json id_to_json(const NeuronId& id) {
  return id.is_integer() ? nlohmann::json(id.as_integer()) : nlohmann::json(id.as_string());
}

NeuronId id_from_json(const nlohmann::json& value, const std::string& source, const std::string& path) {
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    fail("{}: {} is {}, beyond the 64-bit signed range of integer neuron ids", source, path, detail::excerpt(value));
  if (value.is_number_integer()) return NeuronId(value.get<int64_t>());
  if (value.is_string()) return NeuronId(value.get<std::string>());
  fail("{}: {} must be an integer or a string neuron id, got {}", source, path, detail::excerpt(value));
}

namespace {

// Where a JSON value sits, for messages: "<source>: <path>".
struct JsonPlace {
  const std::string& source;
  std::string path;
  JsonPlace at(const std::string& key) const { return {source, path + "/" + key}; }
  JsonPlace at(size_t index) const { return {source, path + "/" + std::to_string(index)}; }
};

NeuronId id_from_json(const nlohmann::json& value, const JsonPlace& place) {
  return connex::id_from_json(value, place.source, place.path);
}

std::vector<NeuronId> ids_from_json(const nlohmann::json& json, const std::string& key, bool required,
                                    const JsonPlace& place) {
  if (!json.contains(key)) {
    if (required)
      fail("{}: required key \"{}\" is missing{}", place.source, key, place.path.empty() ? "" : " in " + place.path);
    return {};
  }
  const auto& list = json.at(key);
  const auto here = place.at(key);
  if (!list.is_array()) fail("{}: {} must be an array, got {}", here.source, here.path, list.type_name());
  std::vector<NeuronId> ids;
  for (size_t i = 0; i < list.size(); ++i) ids.push_back(id_from_json(list[i], here.at(i)));
  return ids;
}

// Adjacency keys are always strings in JSON; decide their kind from the rest of the graph.
NeuronId key_to_id(const std::string& key, bool integer_graph, const JsonPlace& place) {
  if (!integer_graph) return NeuronId(key);
  auto value = parse_integer(key);
  if (!value)
    fail("{}: {} key \"{}\" is not an integer, but the graph's other ids are integers", place.source, place.path, key);
  return NeuronId(*value);
}

// A JSON graph's edges: as ids without a neuron list; with one, as positions
// in it (a non-empty "neurons" is the whole graph, as in the constructor),
// resolved here so the message for an id it lacks can name where the edge
// sits, and no label is looked up twice.
class JsonEdges {
 public:
  JsonEdges(const std::vector<NeuronId>& neurons, const std::string& source)
      : neurons_(neurons), source_(source), given_(!neurons.empty()) {
    if (!given_) return;
    listed_.reserve(neurons.size());
    for (size_t i = 0; i < neurons.size(); ++i)
      if (!listed_.emplace(neurons[i], static_cast<int64_t>(i)).second)
        fail("{}: neuron {} is listed twice in the neuron list", source, neurons[i]);
  }

  bool given() const { return given_; }

  void add(Edge edge, const JsonPlace& from_at, const JsonPlace& to_at) {
    if (!given_) return edges.push_back(std::move(edge));
    const int64_t u = position(edge, edge.first, from_at);
    edge_indices.emplace_back(u, position(edge, edge.second, to_at));
  }

  std::vector<Edge> edges;                                // without a neuron list
  std::vector<std::pair<int64_t, int64_t>> edge_indices;  // with one

 private:
  int64_t position(const Edge& edge, const NeuronId& id, const JsonPlace& at) const {
    auto it = listed_.find(id);
    if (it == listed_.end())
      fail("{}: {}: {}", source_, at.path, unlisted_endpoint(edge, id, neurons_.front().kind(), "the neurons list"));
    return it->second;
  }

  const std::vector<NeuronId>& neurons_;
  const std::string& source_;
  const bool given_;
  std::unordered_map<NeuronId, int64_t, NeuronIdHash> listed_;
};

void read_edge_list(const nlohmann::json& list, const JsonPlace& here, JsonEdges& edges) {
  if (!list.is_array()) fail("{}: {} must be an array, got {}", here.source, here.path, list.type_name());
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& pair = list[i];
    if (!pair.is_array() || pair.size() != 2)
      fail("{}: {} must be a pair [from, to], got {}", here.source, here.at(i).path, detail::excerpt(pair));
    edges.add({id_from_json(pair[0], here.at(i).at(0)), id_from_json(pair[1], here.at(i).at(1))}, here.at(i).at(0),
              here.at(i).at(1));
  }
}

// The kind of the keys follows the ids written elsewhere: the neuron list
// when given (it is the whole graph), else the inputs, else the outputs.
bool integer_adjacency_keys(const std::vector<NeuronId>& neurons, const std::vector<NeuronId>& inputs,
                            const std::vector<NeuronId>& outputs) {
  const NeuronId* witness = !neurons.empty()   ? &neurons.front()
                            : !inputs.empty()  ? &inputs.front()
                            : !outputs.empty() ? &outputs.front()
                                               : nullptr;
  return witness == nullptr || witness->is_integer();
}

struct AdjacencyEntry {
  NeuronId from;
  const nlohmann::json* successors;
  std::string key;
};

// JSON objects are unordered (nlohmann keeps keys sorted as text); order
// integer keys by value so "10" follows "9". List "neurons" to fix any order.
std::vector<AdjacencyEntry> entries_in_id_order(const nlohmann::json& map, bool integer_graph, const JsonPlace& here) {
  std::vector<AdjacencyEntry> entries;
  for (auto it = map.begin(); it != map.end(); ++it)
    entries.push_back({key_to_id(it.key(), integer_graph, here), &it.value(), it.key()});
  std::stable_sort(entries.begin(), entries.end(),
                   [](const AdjacencyEntry& a, const AdjacencyEntry& b) { return a.from < b.from; });
  return entries;
}

// Without a neuron list, a key not yet named is appended to `neurons`.
void read_adjacency(const nlohmann::json& map, const JsonPlace& here, const std::vector<NeuronId>& inputs,
                    const std::vector<NeuronId>& outputs, std::vector<NeuronId>& neurons, JsonEdges& edges) {
  if (!map.is_object()) fail("{}: {} must be an object, got {}", here.source, here.path, map.type_name());
  const auto entries = entries_in_id_order(map, integer_adjacency_keys(neurons, inputs, outputs), here);
  std::unordered_set<NeuronId, NeuronIdHash> named(neurons.begin(), neurons.end());
  for (const auto& [from, list, key] : entries) {
    const auto list_place = here.at(key);
    if (!list->is_array()) fail("{}: {} must be an array, got {}", here.source, list_place.path, list->type_name());
    if (named.insert(from).second) {
      if (edges.given())
        fail("{}: {}: adjacency key {} is not in the neurons list", here.source, list_place.path, from);
      neurons.push_back(from);
    }
    for (size_t i = 0; i < list->size(); ++i)
      edges.add({from, id_from_json((*list)[i], list_place.at(i))}, list_place, list_place.at(i));
  }
}

// No list: the adjacency keys, then the ids only edges name, in order of
// first appearance. The constructor takes a non-empty list as complete, so
// complete it; with no keys either, the constructor names them itself.
void complete_neuron_list(std::vector<NeuronId>& neurons, const std::vector<Edge>& edges) {
  if (neurons.empty()) return;
  std::unordered_set<NeuronId, NeuronIdHash> named(neurons.begin(), neurons.end());
  for (const auto& [u, v] : edges) {
    if (named.insert(u).second) neurons.push_back(u);
    if (named.insert(v).second) neurons.push_back(v);
  }
}

}  // namespace

GraphSpec GraphSpec::from_json(const nlohmann::json& json, const std::string& source, const std::string& path) {
  const JsonPlace place{source, path};
  if (!json.is_object())
    fail("{}: {} must be an object, got {}", source, path.empty() ? "the top level" : path, json.type_name());
  auto inputs = ids_from_json(json, "inputs", true, place);
  auto outputs = ids_from_json(json, "outputs", true, place);
  auto neurons = ids_from_json(json, "neurons", false, place);
  bool has_edges = json.contains("edges"), has_adjacency = json.contains("adjacency");
  if (has_edges && has_adjacency)
    fail("{}: give either \"edges\" or \"adjacency\"{}, not both", source, path.empty() ? "" : " in " + path);
  JsonEdges collected(neurons, source);
  if (has_edges)
    read_edge_list(json.at("edges"), place.at("edges"), collected);
  else if (has_adjacency)
    read_adjacency(json.at("adjacency"), place.at("adjacency"), inputs, outputs, neurons, collected);
  if (collected.given())
    return GraphSpec(std::move(neurons), std::move(collected.edge_indices), std::move(inputs), std::move(outputs),
                     source);
  complete_neuron_list(neurons, collected.edges);
  return GraphSpec(std::move(neurons), std::move(collected.edges), std::move(inputs), std::move(outputs), source);
}

nlohmann::json GraphSpec::to_json() const {
  nlohmann::json json;
  json["neurons"] = nlohmann::json::array();
  for (const auto& id : neurons_) json["neurons"].push_back(id_to_json(id));
  json["edges"] = nlohmann::json::array();
  visit_edges(edges_by_source_, adjacency_.get(), edge_indices_, [&](int64_t u, int64_t v) {
    json["edges"].push_back({id_to_json(neurons_[u]), id_to_json(neurons_[v])});
  });
  json["inputs"] = nlohmann::json::array();
  for (const auto& id : inputs_) json["inputs"].push_back(id_to_json(id));
  json["outputs"] = nlohmann::json::array();
  for (const auto& id : outputs_) json["outputs"].push_back(id_to_json(id));
  return json;
}

}  // namespace connex
