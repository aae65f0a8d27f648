#pragma once
// GraphSpec: the validated, immutable description of a network's graph —
// which neurons exist, how they connect, which are inputs and outputs (in
// order). It knows nothing of tensors; NeuralNetwork compiles it into a
// Topology. Every constructor validates, so a GraphSpec that exists is a DAG
// whose inputs have no incoming and whose outputs have no outgoing edges.
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "connex/neuron_id.h"

namespace connex {

// id -> successors, in the order given (so neuron order is reproducible).
using Adjacency = std::vector<std::pair<NeuronId, std::vector<NeuronId>>>;

enum class Role { Input, Hidden, Output };
const char* role_name(Role role);

class GraphSpec {
 public:
  // `neurons`, when not empty, is the complete list of neurons, isolated ones
  // included: an edge naming any other id is an error (a typo such as "n2OO1"
  // must not become a neuron). When empty, the neurons are those the edges
  // name, in order of first appearance. Inputs and outputs never add a
  // neuron: each must be listed or named by an edge, and be of the graph's
  // id kind. `context` prefixes error messages ("NeuralNetwork(): ...").
  GraphSpec(std::vector<NeuronId> neurons, std::vector<Edge> edges, std::vector<NeuronId> inputs,
            std::vector<NeuronId> outputs, const std::string& context = "GraphSpec");
  // Edges given as positions in `neurons` (which must list every neuron): the
  // fast path for code that already works on indices, such as the editor.
  GraphSpec(std::vector<NeuronId> neurons, std::vector<std::pair<int64_t, int64_t>> edge_indices,
            std::vector<NeuronId> inputs, std::vector<NeuronId> outputs, const std::string& context);

  static GraphSpec from_edges(const std::vector<Edge>& edges, std::vector<NeuronId> inputs,
                              std::vector<NeuronId> outputs, std::vector<NeuronId> neurons = {});
  // Each key names a neuron, even with no successors; with a non-empty
  // `neurons` list every key and successor must be in it, as for edges.
  static GraphSpec from_adjacency(const Adjacency& adjacency, std::vector<NeuronId> inputs,
                                  std::vector<NeuronId> outputs, std::vector<NeuronId> neurons = {});
  // {"neurons":[...], "edges":[[u,v],...] | "adjacency":{"u":[v,...]}, "inputs":[...], "outputs":[...]}.
  // "neurons" is optional; a non-empty one is the complete list, as above.
  // Adjacency keys are JSON strings; in an integer graph they must spell integers.
  // Errors read "<source>: <path>/edges/0/1 must be ..." (path: where this object sits).
  static GraphSpec from_json(const nlohmann::json& json, const std::string& source = "graph JSON",
                             const std::string& path = "");
  nlohmann::json to_json() const;

  const std::vector<NeuronId>& neurons() const { return neurons_; }
  // Deduplicated, in the order first given. Made on the first call and then
  // shared by copies of the spec: as label pairs the edges take ~80 bytes
  // each, and most specs (every edit builds one) are only read by index.
  // Safe to call from several threads.
  const std::vector<Edge>& edges() const;
  // The same edges as positions in neurons(). A patched topology's spec
  // (Topology::with_connections()) lists them by source and makes this list
  // on the first call, as edges() does.
  const std::vector<std::pair<int64_t, int64_t>>& edge_indices() const;
  const std::vector<NeuronId>& inputs() const { return inputs_; }
  const std::vector<NeuronId>& outputs() const { return outputs_; }
  NeuronId::Kind id_kind() const { return id_kind_; }

  size_t num_neurons() const { return neurons_.size(); }
  bool contains(const NeuronId& id) const { return index_of(id) >= 0; }
  // Position of `id` in neurons(), or -1.
  int64_t index_of(const NeuronId& id) const;
  Role role(const NeuronId& id) const;
  Role role_at(int64_t index) const { return roles_[index]; }

  // The edges as successor lists over positions in neurons() (the targets
  // of u are targets[offsets[u] .. offsets[u + 1]), ascending) and the
  // level of each position: 0 for inputs, else one more than
  // the largest batch among its predecessors, and at least 1 (the longest
  // path from a source). The validation makes both in its repeat and cycle
  // checks and keeps them for Topology::compile; copies of the spec share them.
  struct IndexAdjacency {
    std::vector<int64_t> offsets, targets, batch;
  };
  const IndexAdjacency& index_adjacency() const { return *adjacency_; }

 private:
  // Topology::with_connections() makes the spec of a graph it patched and
  // checked itself: the same neurons, new edges.
  friend class Topology;
  GraphSpec() = default;

  std::vector<NeuronId> neurons_;
  void validate(const std::string& context);

  // A value made once, on demand, and then shared by copies of the spec;
  // a copy reads the pointer atomically, as get() may be setting it.
  template <typename T>
  class Lazy {
   public:
    Lazy() = default;
    Lazy(const Lazy& other) : value_(std::atomic_load(&other.value_)) {}
    Lazy& operator=(const Lazy& other) {
      std::atomic_store(&value_, std::atomic_load(&other.value_));
      return *this;
    }
    // Moves take the value along with what it was made from.
    Lazy(Lazy&& other) noexcept : value_(std::move(other.value_)) {}
    Lazy& operator=(Lazy&& other) noexcept {
      value_ = std::move(other.value_);
      return *this;
    }
    // The first value stored stays; a thread that lost the race to make it
    // returns that one, so every caller sees the same object.
    template <typename Make>
    const T& get(const Make& make) const {
      if (auto made = std::atomic_load(&value_)) return *made;
      std::shared_ptr<const T> expected, desired = std::make_shared<const T>(make());
      if (std::atomic_compare_exchange_strong(&value_, &expected, desired)) return *desired;
      return *expected;
    }

   private:
    mutable std::shared_ptr<const T> value_;
  };
  Lazy<std::vector<Edge>> edges_;
  // The edge positions: given (edge_indices_), or, where edges_by_source_,
  // made from the successor lists (by_source_).
  std::vector<std::pair<int64_t, int64_t>> edge_indices_;
  bool edges_by_source_ = false;
  Lazy<std::vector<std::pair<int64_t, int64_t>>> by_source_;
  std::vector<NeuronId> inputs_;
  std::vector<NeuronId> outputs_;
  NeuronId::Kind id_kind_ = NeuronId::Kind::Integer;
  // Each neuron's position in neurons(), shared by copies of the spec. A
  // patched spec (Topology::with_connections() only appends neurons) shares
  // its base's map and holds what it appended in appended_index_ (null when
  // nothing): copying a large graph's map cost more than a quarter of an edit.
  using NeuronIndex = std::unordered_map<NeuronId, int64_t, NeuronIdHash>;
  std::shared_ptr<const NeuronIndex> index_, appended_index_;
  std::vector<Role> roles_;
  std::shared_ptr<const IndexAdjacency> adjacency_;
};

}  // namespace connex
