#include "connex/plasticity.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include <torch/torch.h>

#include "connex/error.h"
#include "cycles.h"
#include "edit_build.h"
#include "id_messages.h"
#include "parallel_passes.h"

namespace connex {

namespace {

// The edges an editor added that it still wants, once each, in the order of
// first addition: `added` keeps that order but may hold edges a later call
// took back, and repeats of ones added again; `wanted` says which stand.
std::vector<const Edge*> wanted_edges(const std::vector<Edge>& added,
                                      const std::unordered_set<Edge, EdgeHash>& wanted) {
  std::unordered_set<Edge, EdgeHash> taken;
  std::vector<const Edge*> edges;
  for (const auto& edge : added)
    if (wanted.count(edge) && taken.insert(edge).second) edges.push_back(&edge);
  return edges;
}

// The positions `marks` sets, ascending (an editor's removed connections).
std::vector<int64_t> marked(const std::vector<uint8_t>& marks) {
  std::vector<int64_t> positions;
  for (int64_t c = 0; c < static_cast<int64_t>(marks.size()); ++c)
    if (marks[c]) positions.push_back(c);
  return positions;
}

std::vector<Edge> adjacency_edges(const Adjacency& adjacency) {
  std::vector<Edge> edges;
  for (const auto& [from, successors] : adjacency)
    for (const auto& to : successors) edges.emplace_back(from, to);
  return edges;
}

// The (new index, old index) pairs of the entries of `old_of_new` that are
// not -1, in ascending new index, written straight into the tensors.
ParameterRemap::Moved kept_pairs(at::ArrayRef<int64_t> old_of_new, const torch::Device& device) {
  torch::Tensor new_index, old_index;
  int64_t *to_new = nullptr, *to_old = nullptr;
  parallel_compact(
      static_cast<int64_t>(old_of_new.size()), [&](int64_t i) { return old_of_new[i] >= 0; },
      [&](int64_t count) {
        new_index = torch::empty({count}, torch::kLong);
        old_index = torch::empty({count}, torch::kLong);
        to_new = new_index.data_ptr<int64_t>();
        to_old = old_index.data_ptr<int64_t>();
      },
      [&](int64_t i, int64_t slot) { to_new[slot] = i, to_old[slot] = old_of_new[i]; });
  return {new_index.to(device), old_index.to(device)};
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> surviving_edges(const Topology& base,
                                                         const std::vector<int64_t>& removed_connections,
                                                         const std::vector<int64_t>& new_index_of_old, size_t added) {
  // Removed connections as old spec positions, grouped by source, each
  // source's lost targets sorted: a search per edge of a source that lost
  // some (a pruning edit can take half of every source's connections). The
  // survivors are then filtered on connex's threads.
  const int64_t old_n = static_cast<int64_t>(new_index_of_old.size());
  std::vector<int64_t> lost_begin(old_n + 1, 0), lost_target(removed_connections.size());
  for (int64_t c : removed_connections) ++lost_begin[base.spec_index_at(base.conn_source()[c]) + 1];
  std::partial_sum(lost_begin.begin(), lost_begin.end(), lost_begin.begin());
  {
    std::vector<int64_t> fill(lost_begin.begin(), lost_begin.end() - 1);
    for (int64_t c : removed_connections)
      lost_target[fill[base.spec_index_at(base.conn_source()[c])]++] = base.spec_index_at(base.conn_target()[c]);
  }
  share_work(0, old_n, 1 << 12, [&](int64_t first, int64_t last) {
    for (int64_t u = first; u < last; ++u)
      std::sort(lost_target.begin() + lost_begin[u], lost_target.begin() + lost_begin[u + 1]);
  });
  // A byte per neuron says all the filter needs of most edges, and stays in
  // cache where the index arrays would not: 0 removed, 1 kept, 2 kept but
  // lost some connection.
  std::vector<uint8_t> state(old_n);
  for (int64_t i = 0; i < old_n; ++i)
    state[i] = new_index_of_old[i] < 0 ? 0 : lost_begin[i + 1] > lost_begin[i] ? 2 : 1;
  auto kept = [&](int64_t u, int64_t v) {
    if (state[u] == 0 || state[v] == 0) return false;
    if (state[u] == 1) return true;
    return !std::binary_search(lost_target.begin() + lost_begin[u], lost_target.begin() + lost_begin[u + 1], v);
  };
  // Decided once per edge (parallel_compact asks twice: to count, to fill).
  const auto& old_edges = base.spec().edge_indices();
  const int64_t m = static_cast<int64_t>(old_edges.size());
  std::vector<uint8_t> keep(m);
  share_work(0, m, 1 << 15, [&](int64_t first, int64_t last) {
    for (int64_t e = first; e < last; ++e) keep[e] = kept(old_edges[e].first, old_edges[e].second);
  });
  std::vector<std::pair<int64_t, int64_t>> edges;
  parallel_compact(
      m, [&](int64_t e) { return keep[e] != 0; },
      [&](int64_t count) {
        edges.reserve(count + added);
        edges.resize(count);
      },
      [&](int64_t e, int64_t slot) {
        edges[slot] = {new_index_of_old[old_edges[e].first], new_index_of_old[old_edges[e].second]};
      });
  return edges;
}

namespace {

// Names the added edge that closes a cycle in the graph (neurons, edges), if
// one does; edges from first_added on are the added ones.
void fail_on_added_cycle(const std::vector<NeuronId>& neurons, const std::vector<std::pair<int64_t, int64_t>>& edges,
                         size_t first_added) {
  if (edges.size() == first_added) return;
  if (auto cycle = find_cycle(static_cast<int64_t>(neurons.size()), edges)) {
    std::set<std::pair<int64_t, int64_t>> added(edges.begin() + first_added, edges.end());
    std::string path;
    Edge culprit;
    for (size_t k = 0; k < cycle->size(); ++k) {
      path += (k ? " -> " : "") + neurons[(*cycle)[k]].str();
      if (k + 1 < cycle->size() && added.count({(*cycle)[k], (*cycle)[k + 1]}))
        culprit = {neurons[(*cycle)[k]], neurons[(*cycle)[k + 1]]};
    }
    fail("add_connections(): edge {} would create the cycle {}", edge_str(culprit), path);
  }
}

// Which entry of the base network's weight and bias each entry of the new
// one (`topo`) takes, or -1 for a new one. Parameters move by neuron: the
// old dense id of each new neuron (found through spec positions, since
// index_graph() kept the old neuron order, rather than by label lookups),
// then each connection by (old source, old target).
struct KeptEntries {
  std::vector<int64_t> weight;  // per connection of `topo`
  std::vector<int64_t> bias;    // per bias of `topo`
};
KeptEntries kept_entries(const Topology& base, const Topology& topo, const std::vector<int64_t>& new_index_of_old) {
  std::vector<int64_t> old_dense(topo.num_neurons(), -1);
  for (int64_t i = 0; i < static_cast<int64_t>(new_index_of_old.size()); ++i)
    if (new_index_of_old[i] >= 0) old_dense[topo.dense_at(new_index_of_old[i])] = base.dense_at(i);
  // A binary search per connection, on connex's threads.
  KeptEntries kept{std::vector<int64_t>(topo.num_connections()), std::vector<int64_t>(topo.num_biases(), -1)};
  share_work(0, topo.num_connections(), 1 << 15, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t u = old_dense[topo.conn_source()[c]], v = old_dense[topo.conn_target()[c]];
      kept.weight[c] = u < 0 || v < 0 ? -1 : base.connection_index(u, v);
    }
  });
  for (int64_t d = topo.num_inputs(); d < topo.num_neurons(); ++d)
    if (old_dense[d] >= 0) kept.bias[topo.bias_index(d)] = base.bias_index(old_dense[d]);
  return kept;
}

ParameterRemap parameter_remap(const KeptEntries& kept, const torch::Device& device) {
  ParameterRemap remap;
  remap.moved["weight"] = kept_pairs(kept.weight, device);
  remap.moved["bias"] = kept_pairs(kept.bias, device);
  return remap;
}

// Where each of `before` sits in `after` (-1: gone).
std::vector<int64_t> where_each_went(const std::vector<NeuronId>& before, const std::vector<NeuronId>& after) {
  std::unordered_map<NeuronId, int64_t, NeuronIdHash> where;
  for (size_t i = 0; i < after.size(); ++i) where.emplace(after[i], static_cast<int64_t>(i));
  std::vector<int64_t> positions;
  positions.reserve(before.size());
  for (const auto& id : before) {
    auto it = where.find(id);
    positions.push_back(it == where.end() ? -1 : it->second);
  }
  return positions;
}

// The entries of a parameter the remap moved (came from the old network).
std::vector<uint8_t> moved_entries(const ParameterRemap& remap, const char* name, int64_t size) {
  std::vector<uint8_t> moved(size, 0);
  const auto index = remap.moved.at(name).new_index.to(torch::kCPU);
  const int64_t* i = index.data_ptr<int64_t>();
  for (int64_t k = 0; k < index.numel(); ++k) moved[i[k]] = 1;
  return moved;
}

// The connections of an edited network (`topo`) that are new (the remap did
// not move them) and enter an old neuron (one whose bias it moved; inputs
// are never targets), ascending.
std::vector<int64_t> connections_into_old_neurons(const Topology& topo, const ParameterRemap& remap) {
  const auto old_connection = moved_entries(remap, "weight", topo.num_connections());
  const auto old_bias = moved_entries(remap, "bias", topo.num_biases());
  std::vector<int64_t> found;
  for (int64_t c = 0; c < topo.num_connections(); ++c)
    if (!old_connection[c] && old_bias[topo.bias_index(topo.conn_target()[c])]) found.push_back(c);
  return found;
}

// A function-preserving edit of a network with an operation that reads a
// whole level (a norm, an attention) keeps old outputs only where every old
// neuron stays in its level and no old level gains an input, and with one
// that reads a neuron's connections (neuron attention) only where no old
// neuron gains one: throws naming the first neuron, input or connection that
// breaks this (the base stays as it was).
void check_function_kept(const NeuralNetworkImpl& base, const EditResult& edited) {
  // A transformation over all the outputs (softmax) takes a new one into every old one's value.
  if (const TensorFunction& over = base.options().output_transformation(); !over.is_elementwise()) {
    const std::unordered_set<NeuronId, NeuronIdHash> old(base.output_neurons().begin(), base.output_neurons().end());
    for (const auto& id : edited.network->output_neurons())
      if (!old.count(id))
        fail(
            "function_preserving(): output neuron {} would be new, and the output transformation {} spans the "
            "outputs: every old output would change",
            id, over.name());
  }
  const auto& operations = base.operations();
  auto first = [&](bool (LevelOperation::*asks)() const) {
    auto it = std::find_if(operations.begin(), operations.end(), [&](const auto& op) { return ((*op).*asks)(); });
    return it == operations.end() ? nullptr : it->get();
  };
  const Topology& old = base.topology();
  const Topology& topo = edited.network->topology();
  if (const LevelOperation* connection_reader = first(&LevelOperation::reads_connection_set)) {
    const std::vector<int64_t> entering = connections_into_old_neurons(topo, edited.parameters);
    if (!entering.empty()) {
      const int64_t c = entering.front();
      fail(
          "function_preserving(): connection {} would enter old neuron {}, and {} attends over a neuron's "
          "connections",
          edge_str({topo.label(topo.conn_source()[c]), topo.label(topo.conn_target()[c])}),
          topo.label(topo.conn_target()[c]), connection_reader->name());
    }
  }
  const LevelOperation* level_reader = first(&LevelOperation::reads_whole_level);
  const LevelOperation* level_keyed = first(&LevelOperation::depends_on_level);
  if (!level_reader && !level_keyed) return;
  auto new_dense = [&](int64_t old_dense) {
    const int64_t moved = edited.positions.neurons[old.spec_index_at(old_dense)];
    return moved < 0 ? int64_t{-1} : topo.dense_at(moved);
  };
  const std::string why =
      level_reader
          ? fmt::format("{} reads a level's inputs together", level_reader->name())
          : fmt::format("{} depends on a neuron's level (LevelOperation::depends_on_level())", level_keyed->name());
  for (int64_t d = old.num_inputs(); d < old.num_neurons(); ++d) {
    const int64_t moved = new_dense(d);
    if (moved >= 0 && topo.level_of(moved) != old.level_of(d))
      fail("function_preserving(): neuron {} would move from level {} to level {}, and {}", old.label(d),
           old.level_of(d), topo.level_of(moved), why);
  }
  if (!level_reader) return;
  for (int64_t l = 1; l <= old.depth() && l <= topo.depth(); ++l) {
    const Level& before = old.levels()[l];
    bool kept_neuron = false;
    for (int64_t d = before.begin; d < before.end && !kept_neuron; ++d) kept_neuron = new_dense(d) >= 0;
    if (!kept_neuron) continue;
    std::vector<int64_t> had;
    for (int64_t s : before.sources)
      if (const int64_t moved = new_dense(s); moved >= 0) had.push_back(moved);
    std::sort(had.begin(), had.end());
    for (int64_t s : topo.levels()[l].sources)
      if (!std::binary_search(had.begin(), had.end(), s))
        fail("function_preserving(): level {} would read neuron {} besides its old inputs, and {}", l, topo.label(s),
             why);
  }
}

// Sets to 0 every new connection into an old neuron (connections_into_old_neurons()).
void zero_connections_into_old_neurons(NeuralNetworkImpl& network, const ParameterRemap& remap) {
  const std::vector<int64_t> zeroed = connections_into_old_neurons(network.topology(), remap);
  if (zeroed.empty()) return;
  torch::NoGradGuard no_grad;
  const auto& weight = network.weight_tensor();
  weight.index_fill_(0, torch::tensor(zeroed, torch::kLong).to(weight.device()), 0.0);
}

}  // namespace

NetworkEditor::NetworkEditor(const NeuralNetwork& network)
    : network_(network),
      base_(network->topology_ptr()),
      inputs_(network->input_neurons()),
      outputs_(network->output_neurons()),
      dropout_(network->options().dropout_p()) {}

NetworkEditor edit(const NeuralNetwork& network) { return NetworkEditor(network); }

int64_t NetworkEditor::base_dense(const NeuronId& id) const {
  if (!removed_neurons_.empty() && removed_neurons_.count(id)) return -1;
  return base_->dense_of(id);
}

int64_t NetworkEditor::base_connection(const Edge& edge) const {
  const int64_t u = base_dense(edge.first), v = base_dense(edge.second);
  return u >= 0 && v >= 0 ? base_->connection_index(u, v) : -1;
}

bool NetworkEditor::exists(const NeuronId& id) const { return added_roles_.count(id) || base_dense(id) >= 0; }

Role NetworkEditor::role_of(const NeuronId& id) const {
  auto it = added_roles_.find(id);
  return it != added_roles_.end() ? it->second : base_->role(base_->dense_of(id));
}

NetworkEditor& NetworkEditor::add_connections(const std::vector<Edge>& edges) {
  // Check every edge before recording any, so a failed call leaves the editor as it was.
  std::vector<int64_t> base(edges.size());  // each edge's base_connection(), looked up once
  for (size_t i = 0; i < edges.size(); ++i) {
    const Edge& edge = edges[i];
    for (const auto* id : {&edge.first, &edge.second})
      if (!exists(*id))
        fail("add_connections(): edge {} names neuron {}, which is not in the network", edge_str(edge), *id);
    if (role_of(edge.second) == Role::Input)
      fail("add_connections(): edge {} would enter input neuron {}; inputs take only the input values", edge_str(edge),
           edge.second);
    if (role_of(edge.first) == Role::Output)
      fail("add_connections(): edge {} would leave output neuron {}; outputs feed no other neuron", edge_str(edge),
           edge.first);
    if (edge.first == edge.second)
      fail("add_connections(): edge {} would create the cycle {}", edge_str(edge), edge_str(edge));
    // As for a neuron: bringing its old weight back would not be adding it, and drawing a new one is build()'s.
    base[i] = base_connection(edge);
    if (base[i] >= 0 && !removed_.empty() && removed_[base[i]])
      fail("add_connections(): edge {} was removed earlier in this edit; build() first, then add it anew",
           edge_str(edge));
  }
  for (size_t i = 0; i < edges.size(); ++i)
    if (base[i] < 0 && added_edge_set_.insert(edges[i]).second) added_edges_.push_back(edges[i]);
  return *this;
}

NetworkEditor& NetworkEditor::add_connections(const Adjacency& adjacency) {
  return add_connections(adjacency_edges(adjacency));
}

namespace {

// The base connections one remove call takes, marked 2 in the editor's
// bytes while the call checks its list: if the call throws they go back to
// 0 (it records nothing), once it commits they are removed (1).
class StagedRemoval {
 public:
  StagedRemoval(std::vector<uint8_t>& removed, int64_t connections) : removed_(removed) {
    if (removed_.empty()) removed_.assign(connections, 0);
  }
  ~StagedRemoval() {
    for (int64_t c : taken_) removed_[c] = committed_ ? 1 : 0;
  }
  StagedRemoval(const StagedRemoval&) = delete;
  StagedRemoval& operator=(const StagedRemoval&) = delete;
  // Takes connection c if it is still there; else returns its mark (1:
  // removed earlier in the edit, 2: taken earlier in this call).
  uint8_t take(int64_t c) {
    const uint8_t mark = removed_[c];
    if (mark == 0) taken_.push_back(c), removed_[c] = 2;  // listed before marked: a bad_alloc leaves no mark
    return mark;
  }
  void commit() { committed_ = true; }

 private:
  std::vector<uint8_t>& removed_;
  std::vector<int64_t> taken_;
  bool committed_ = false;
};

}  // namespace

NetworkEditor& NetworkEditor::remove_connections(const std::vector<Edge>& edges) {
  // Each edge is a base connection (kept by index) or one this edit added.
  // The label lookups, cache misses in maps of every neuron, run on torch's
  // threads (read-only); the checks then go in order, so the first bad edge
  // is the one named. Nothing is recorded before every edge passed.
  const int64_t count = static_cast<int64_t>(edges.size());
  std::vector<int64_t> source(count), target(count), connection(count);
  share_work(0, count, 1024, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      source[i] = base_dense(edges[i].first), target[i] = base_dense(edges[i].second);
      connection[i] = source[i] >= 0 && target[i] >= 0 ? base_->connection_index(source[i], target[i]) : -1;
    }
  });
  std::vector<const Edge*> added;
  StagedRemoval staged(removed_, base_->num_connections());
  std::unordered_set<Edge, EdgeHash> seen_added;
  for (int64_t i = 0; i < count; ++i) {
    const Edge& edge = edges[i];
    if (source[i] < 0 && !added_roles_.count(edge.first))
      fail("remove_connections(): edge {} names neuron {}, which is not in the network", edge_str(edge), edge.first);
    if (target[i] < 0 && !added_roles_.count(edge.second))
      fail("remove_connections(): edge {} names neuron {}, which is not in the network", edge_str(edge), edge.second);
    const int64_t c = connection[i];
    if (c >= 0) {
      if (const uint8_t mark = staged.take(c))
        fail("remove_connections(): edge {} {}", edge_str(edge),
             mark == 2 ? "is listed twice" : "was removed earlier in this edit");
    } else if (!added_edge_set_.count(edge)) {
      fail("remove_connections(): there is no connection {}", edge_str(edge));
    } else if (!seen_added.insert(edge).second) {
      fail("remove_connections(): edge {} is listed twice", edge_str(edge));
    } else {
      added.push_back(&edge);
    }
  }
  staged.commit();
  for (const Edge* edge : added) added_edge_set_.erase(*edge);  // added earlier in this edit: just drop it
  return *this;
}

NetworkEditor& NetworkEditor::remove_connections(const Adjacency& adjacency) {
  return remove_connections(adjacency_edges(adjacency));
}

NetworkEditor& NetworkEditor::remove_connections_at(const std::vector<int64_t>& connections) {
  const Topology& t = *base_;
  const int64_t n = t.num_connections();
  StagedRemoval staged(removed_, n);
  auto edge = [&](int64_t c) { return edge_str({t.label(t.conn_source()[c]), t.label(t.conn_target()[c])}); };
  for (int64_t c : connections) {
    if (c < 0 || c >= n)
      fail("remove_connections_at(): connection index {} is out of range; the network has {} connections", c, n);
    if (!removed_neurons_.empty())
      for (int64_t d : {t.conn_source()[c], t.conn_target()[c]})
        if (removed_neurons_.count(t.label(d)))
          fail("remove_connections_at(): connection {} ({}) touches neuron {}, which this edit removed", c, edge(c),
               t.label(d));
    if (const uint8_t mark = staged.take(c))
      fail("remove_connections_at(): connection {} ({}) {}", c, edge(c),
           mark == 2 ? "is listed twice" : "was removed earlier in this edit");
  }
  staged.commit();
  return *this;
}

NetworkEditor& NetworkEditor::remove_connections_at(const torch::Tensor& connections) {
  if (!connections.defined())
    fail("remove_connections_at(): expected a tensor of indices or a mask, got an undefined one");
  if (connections.scalar_type() == torch::kBool) {
    const int64_t n = base_->num_connections();
    if (connections.dim() != 1 || connections.size(0) != n)
      fail("remove_connections_at(): expected a bool mask of shape [{}] (one entry per connection), got {}", n,
           c10::str(connections.sizes()));
    const auto indices = connections.to(torch::kCPU).nonzero().view(-1).contiguous();
    const int64_t* at = indices.data_ptr<int64_t>();
    return remove_connections_at(std::vector<int64_t>(at, at + indices.numel()));
  }
  if (connections.scalar_type() != torch::kLong || connections.dim() != 1) {
    // The two likeliest slips: nonzero()'s [k, 1] result, and scores where a mask was meant.
    const char* hint = connections.scalar_type() == torch::kLong && connections.dim() == 2 && connections.size(1) == 1
                           ? " (nonzero() gives [k, 1]: flatten it)"
                       : connections.is_floating_point() ? " (for a mask, compare: scores < threshold)"
                                                         : "";
    fail("remove_connections_at(): expected 1-D int64 indices or a bool mask, got a {}-D {} tensor{}",
         connections.dim(), c10::toString(connections.scalar_type()), hint);
  }
  const auto indices = connections.to(torch::kCPU).contiguous();
  const int64_t* at = indices.data_ptr<int64_t>();
  return remove_connections_at(std::vector<int64_t>(at, at + indices.numel()));
}

void NetworkEditor::add_neurons(const std::vector<NeuronId>& ids, Role role, const char* context) {
  std::unordered_set<NeuronId, NeuronIdHash> seen;
  const auto kind = base_->spec().id_kind();
  for (const auto& id : ids) {
    if (id.kind() != kind)
      fail("{}: neuron {} is {} but the network's neuron ids are {}", context, id, kind_name(id.kind()),
           kind_plural(kind));
    check_id_text(id, context);
    if (exists(id)) fail("{}: neuron {} already exists", context, id);
    if (!seen.insert(id).second) fail("{}: neuron {} is listed twice", context, id);
    if (removed_neurons_.count(id))
      fail("{}: neuron {} was removed earlier in this edit; build() first, then add it anew", context, id);
  }
  for (const auto& id : ids) {
    added_neurons_.push_back(id);
    added_roles_.emplace(id, role);
  }
}

NetworkEditor& NetworkEditor::add_input_neurons(const std::vector<NeuronId>& ids) {
  add_neurons(ids, Role::Input, "add_input_neurons()");
  std::vector<NeuronId> inputs(ids);
  inputs.insert(inputs.end(), inputs_.begin(), inputs_.end());
  inputs_ = std::move(inputs);
  return *this;
}

NetworkEditor& NetworkEditor::add_hidden_neurons(const std::vector<NeuronId>& ids) {
  add_neurons(ids, Role::Hidden, "add_hidden_neurons()");
  return *this;
}

NetworkEditor& NetworkEditor::add_output_neurons(const std::vector<NeuronId>& ids) {
  add_neurons(ids, Role::Output, "add_output_neurons()");
  outputs_.insert(outputs_.end(), ids.begin(), ids.end());
  return *this;
}

NetworkEditor& NetworkEditor::remove_neurons(const std::vector<NeuronId>& ids) {
  std::unordered_set<NeuronId, NeuronIdHash> doomed;
  for (const auto& id : ids) {
    if (!exists(id)) fail("remove_neurons(): neuron {} is not in the network", id);
    if (!doomed.insert(id).second) fail("remove_neurons(): neuron {} is listed twice", id);
  }
  auto survivors = [&](const std::vector<NeuronId>& list) {
    std::vector<NeuronId> kept;
    for (const auto& id : list)
      if (!doomed.count(id)) kept.push_back(id);
    return kept;
  };
  auto inputs = survivors(inputs_), outputs = survivors(outputs_);
  if (inputs.empty())
    fail("remove_neurons(): removing {} would leave the network without input neurons", join_ids(ids));
  if (outputs.empty())
    fail("remove_neurons(): removing {} would leave the network without output neurons", join_ids(ids));
  inputs_ = std::move(inputs);
  outputs_ = std::move(outputs);
  for (const auto& id : ids) {
    if (added_roles_.erase(id)) {
      added_neurons_.erase(std::find(added_neurons_.begin(), added_neurons_.end(), id));
    } else {
      removed_neurons_.insert(id);
    }
  }
  // Edges this edit added to or from the removed neurons go with them; base
  // edges are filtered at build().
  std::vector<Edge> kept;
  for (const auto& edge : added_edges_) {
    if (doomed.count(edge.first) || doomed.count(edge.second))
      added_edge_set_.erase(edge);
    else
      kept.push_back(edge);
  }
  added_edges_ = std::move(kept);
  return *this;
}

NetworkEditor& NetworkEditor::set_dropout_p(const DropoutSpec& dropout) {
  auto check = [](double p, const std::string& what) {
    if (!(p >= 0.0 && p <= 1.0)) fail("set_dropout_p(): dropout_p {} is {}; it must lie in [0, 1]", what, p);
  };
  for (const auto& [id, p] : dropout.per_neuron) {
    if (!exists(id)) fail("set_dropout_p(): neuron {} is not in the network", id);
    check(p, "of neuron " + id.str());
  }
  if (dropout.per_neuron.empty()) {
    check(dropout.hidden, "for hidden neurons");
    dropout_ = DropoutSpec(dropout.hidden);  // a number resets every neuron
  } else {
    dropout_.per_neuron.insert(dropout_.per_neuron.end(), dropout.per_neuron.begin(), dropout.per_neuron.end());
  }
  return *this;
}

struct NetworkEditor::IndexGraph : EditGraph {};

NetworkEditor& NetworkEditor::function_preserving(bool on) {
  function_preserving_ = on;
  return *this;
}

EditResult NetworkEditor::build(uint64_t seed) const {
  NeuralNetworkOptions options = edited_options(seed);
  auto result = [&] {
    ConnectionArray old_connection;
    if (auto topology = patched_topology(options, old_connection))
      return build_patched(network_, std::move(topology), std::move(options), old_connection, false,
                           function_preserving_);
    IndexGraph graph = index_graph();
    GraphSpec spec = checked_spec(graph);
    return build_edited(network_, std::move(spec), std::move(options), std::move(graph.new_index_of_old),
                        function_preserving_);
  }();
  if (function_preserving_) check_function_kept(*network_, result);
  return result;
}

// This edit's topology patched from the base's (Topology::with_connections()),
// or none where it needs a compile: it removes neurons or adds inputs or
// outputs, or a topo_sort ordered the base (or what the patch declines).
std::shared_ptr<const Topology> NetworkEditor::patched_topology(const NeuralNetworkOptions& options,
                                                                ConnectionArray& old_connection) const {
  if (!removed_neurons_.empty() || network_->options().topo_sort()) return nullptr;
  for (const auto& entry : added_roles_)
    if (entry.second != Role::Hidden) return nullptr;
  const Topology& base = *base_;
  const int64_t n = base.num_neurons();
  std::unordered_map<NeuronId, int64_t, NeuronIdHash> added_dense;
  for (size_t j = 0; j < added_neurons_.size(); ++j) added_dense.emplace(added_neurons_[j], n + int64_t(j));
  auto dense = [&](const NeuronId& id) {
    auto it = added_dense.find(id);
    return it != added_dense.end() ? it->second : base.dense_of(id);
  };
  std::vector<std::pair<int64_t, int64_t>> added;
  for (const Edge* edge : wanted_edges(added_edges_, added_edge_set_))
    added.emplace_back(dense(edge->first), dense(edge->second));
  return base.with_connections(marked(removed_), added, compile_options(options), old_connection, added_neurons_);
}

namespace {

// The EditResult of `result`, made from `base` with `remap`: the result
// adopts every parameter the remap moves.
EditResult finish_edit(const NeuralNetwork& base, NeuralNetwork result, ParameterRemap remap,
                       std::vector<int64_t> new_index_of_old, bool function_preserving) {
  const Topology& old = base->topology();
  EditResult out{result, {}, std::move(remap), base->topology_ptr()};
  result->adopt_parameters(*base, out.parameters);
  if (function_preserving) zero_connections_into_old_neurons(*result, out.parameters);
  out.positions.inputs = where_each_went(old.spec().inputs(), result->spec().inputs());
  out.positions.outputs = where_each_went(old.spec().outputs(), result->spec().outputs());
  out.positions.neurons = std::move(new_index_of_old);  // the new spec lists neurons in the graph's order
  return out;
}

}  // namespace

EditResult build_edited(const NeuralNetwork& base, GraphSpec spec, NeuralNetworkOptions options,
                        std::vector<int64_t> new_index_of_old, bool function_preserving) {
  // Only the new entries are drawn; the survivors move in (finish_edit()).
  auto topology = Topology::compile(std::move(spec), compile_options(options));
  const KeptEntries kept = kept_entries(base->topology(), *topology, new_index_of_old);
  const auto& old_weight = base->weight_tensor();
  auto [weight, bias] = edited_parameters(*topology, kept.weight, kept.bias, options.seed(), old_weight.options());
  NeuralNetwork result(std::move(topology), std::move(options), std::move(weight), std::move(bias));
  return finish_edit(base, result, parameter_remap(kept, old_weight.device()), std::move(new_index_of_old),
                     function_preserving);
}

EditResult build_patched(const NeuralNetwork& base, std::shared_ptr<const Topology> topology,
                         NeuralNetworkOptions options, const ConnectionArray& old_connection, bool zero_new,
                         bool function_preserving) {
  // Biases move by spec position, which no base neuron changed.
  const Topology& old = base->topology();
  const Topology& topo = *topology;
  std::vector<int64_t> bias_kept(topo.num_biases(), -1);
  for (int64_t d = topo.num_inputs(); d < topo.num_neurons(); ++d)
    if (const int64_t u = topo.spec_index_at(d); u < old.num_neurons())
      bias_kept[topo.bias_index(d)] = old.bias_index(old.dense_at(u));
  // Zeros, rather than drawn entries that the survivors would overwrite.
  const auto& old_weight = base->weight_tensor();
  auto [weight, bias] = zero_new
                            ? std::make_pair(torch::zeros({topo.num_connections()}, old_weight.options()),
                                             torch::zeros({topo.num_biases()}, old_weight.options()))
                            : edited_parameters(topo, old_connection, bias_kept, options.seed(), old_weight.options());
  ParameterRemap remap;
  remap.moved["weight"] = kept_pairs(old_connection, old_weight.device());
  remap.moved["bias"] = kept_pairs(bias_kept, old_weight.device());
  std::vector<int64_t> same(old.num_neurons());
  std::iota(same.begin(), same.end(), 0);
  NeuralNetwork result(std::move(topology), std::move(options), std::move(weight), std::move(bias));
  return finish_edit(base, result, std::move(remap), std::move(same), function_preserving);
}

NetworkEditor::IndexGraph NetworkEditor::index_graph() const {
  const GraphSpec& old_spec = base_->spec();
  const int64_t old_n = static_cast<int64_t>(old_spec.num_neurons());
  IndexGraph g;
  g.new_index_of_old.assign(old_n, -1);
  g.neurons.reserve(old_n + added_neurons_.size());
  for (int64_t i = 0; i < old_n; ++i)
    if (removed_neurons_.empty() || !removed_neurons_.count(old_spec.neurons()[i])) {
      g.new_index_of_old[i] = static_cast<int64_t>(g.neurons.size());
      g.neurons.push_back(old_spec.neurons()[i]);
    }
  std::unordered_map<NeuronId, int64_t, NeuronIdHash> added_index;
  for (const auto& id : added_neurons_) {
    added_index.emplace(id, static_cast<int64_t>(g.neurons.size()));
    g.neurons.push_back(id);
  }
  auto new_index = [&](const NeuronId& id) {
    auto it = added_index.find(id);
    return it != added_index.end() ? it->second : g.new_index_of_old[old_spec.index_of(id)];
  };

  // Ascending: surviving_edges() then reads the base's arrays in order.
  g.edges = surviving_edges(*base_, marked(removed_), g.new_index_of_old, added_edges_.size());
  g.first_added = g.edges.size();
  for (const Edge* edge : wanted_edges(added_edges_, added_edge_set_))
    g.edges.emplace_back(new_index(edge->first), new_index(edge->second));
  return g;
}

// The base network's options with this edit's dropout and `seed`; dropout
// entries of removed neurons go with them.
NeuralNetworkOptions NetworkEditor::edited_options(uint64_t seed) const {
  return connex::edited_options(network_->options(), dropout_, seed, !added_neurons_.empty() || !added_edges_.empty(),
                                [&](const NeuronId& id) { return exists(id); });
}

NeuralNetworkOptions edited_options(const NeuralNetworkOptions& base, DropoutSpec dropout, uint64_t seed, bool adds,
                                    const std::function<bool(const NeuronId&)>& exists) {
  NeuralNetworkOptions options = base;
  dropout.per_neuron.erase(std::remove_if(dropout.per_neuron.begin(), dropout.per_neuron.end(),
                                          [&](const auto& entry) { return !exists(entry.first); }),
                           dropout.per_neuron.end());
  options.dropout_p(dropout).seed(seed);
  options.hidden_activation(options.hidden_activation().deep_copy());
  options.output_transformation(options.output_transformation().deep_copy());
  if (options.topo_sort()) {
    // Keep the user's order for survivors (a topo_sort lists every base
    // neuron); new neurons have no place in it, so drop it.
    if (adds) {
      options.topo_sort(std::nullopt);
    } else {
      std::vector<NeuronId> order;
      for (const auto& id : *options.topo_sort())
        if (exists(id)) order.push_back(id);
      options.topo_sort(order);
    }
  }
  return options;
}

// The validated spec of the edited graph. The base was acyclic and removals
// cannot close a cycle, so any cycle runs through an added edge: when
// GraphSpec refuses the graph, name that edge (on a rebuilt copy: the first
// went into the spec).
GraphSpec NetworkEditor::checked_spec(IndexGraph& graph) const {
  try {
    return GraphSpec(std::move(graph.neurons), std::move(graph.edges), inputs_, outputs_, "edit");
  } catch (const Error&) {
    const IndexGraph again = index_graph();
    fail_on_added_cycle(again.neurons, again.edges, again.first_added);
    throw;
  }
}

EditResult as_edit(const NeuralNetwork& before, const NeuralNetwork& after) {
  if (before.is_empty() || after.is_empty()) fail("as_edit(): expected two networks, got an empty holder");
  const GraphSpec& old_spec = before->spec();
  std::vector<int64_t> new_index_of_old(old_spec.num_neurons());
  for (size_t i = 0; i < old_spec.num_neurons(); ++i)
    new_index_of_old[i] = after->spec().index_of(old_spec.neurons()[i]);
  EditResult out{after,
                 {},
                 parameter_remap(kept_entries(before->topology(), after->topology(), new_index_of_old),
                                 after->weight_tensor().device()),
                 before->topology_ptr()};
  out.positions.inputs = where_each_went(old_spec.inputs(), after->spec().inputs());
  out.positions.outputs = where_each_went(old_spec.outputs(), after->spec().outputs());
  out.positions.neurons = std::move(new_index_of_old);
  return out;
}

// --------------------------------------------------------- one-edit helpers

NeuralNetwork add_connections(const NeuralNetwork& network, const std::vector<Edge>& edges, uint64_t seed) {
  return edit(network).add_connections(edges).build(seed).network;
}
NeuralNetwork add_connections(const NeuralNetwork& network, const Adjacency& adjacency, uint64_t seed) {
  return edit(network).add_connections(adjacency).build(seed).network;
}
NeuralNetwork remove_connections(const NeuralNetwork& network, const std::vector<Edge>& edges) {
  return edit(network).remove_connections(edges).build().network;
}
NeuralNetwork remove_connections(const NeuralNetwork& network, const Adjacency& adjacency) {
  return edit(network).remove_connections(adjacency).build().network;
}
NeuralNetwork add_input_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed) {
  return edit(network).add_input_neurons(ids).build(seed).network;
}
NeuralNetwork add_hidden_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed) {
  return edit(network).add_hidden_neurons(ids).build(seed).network;
}
NeuralNetwork add_output_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed) {
  return edit(network).add_output_neurons(ids).build(seed).network;
}
std::pair<NeuralNetwork, PositionRemap> remove_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids) {
  auto result = edit(network).remove_neurons(ids).build();
  return {result.network, result.positions};
}
NeuralNetwork set_dropout_p(const NeuralNetwork& network, const DropoutSpec& dropout) {
  return edit(network).set_dropout_p(dropout).build().network;
}

}  // namespace connex
