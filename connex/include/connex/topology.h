#pragma once
// Topology: the pure "compile" of a GraphSpec into dense integer layouts.
//
// Neurons are renumbered by level (longest path from an input), so each
// level is one contiguous range of dense ids: inputs first, in
// input order (level 0), then level 1, 2, ... Within a level, hidden neurons
// come before outputs (so the activation applies to one prefix) and ties
// follow the user's topo_sort, or else the spec's neuron order.
//
// Connections are one flat array sorted by (target, source): the connections
// into a level are contiguous, and when a level reads every one of its
// sources, its weights are a dense row-major [level size, sources] matrix
// that needs no copy. The module stores one weight per connection in this
// order; plasticity finds a weight by (source label, target label).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "connex/graph_spec.h"

namespace connex {

// An allocator whose resize() leaves new entries uninitialised: Topology
// writes every entry of its per-connection arrays, and zero-filling four of
// them first was a tenth of an edit of a 1M-connection network.
template <typename T>
struct UninitialisedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitialisedAllocator<U>;
  };
  UninitialisedAllocator() = default;
  template <typename U>
  UninitialisedAllocator(const UninitialisedAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
// One entry per connection (resize() leaves entries unset; assign() fills).
using ConnectionArray = std::vector<int64_t, UninitialisedAllocator<int64_t>>;

// A run of values read from one level's output ("piece"; piece 0 is the input).
struct Segment {
  int64_t level = 0;
  int64_t begin = 0, end = 0;  // local positions [begin, end) when contiguous
  std::vector<int64_t> local;  // explicit local positions otherwise
  bool whole = false;          // the run is the entire level
  bool contiguous() const { return local.empty(); }
  int64_t size() const { return contiguous() ? end - begin : static_cast<int64_t>(local.size()); }
};

// How to assemble a list of neuron values from the per-level pieces: take the
// segments in order, concatenate, then reorder by `order` (empty: as is).
struct GatherPlan {
  std::vector<Segment> segments;
  std::vector<int64_t> order;
  int64_t size = 0;
};

// How one level computes its pre-activations.
enum class LevelKernel {
  BiasOnly,      // no incoming connections at all
  DenseView,     // every neuron reads every source: weights are a view, one matmul
  DenseScatter,  // dense enough: scatter weights into a zero matrix, one matmul
  EdgeList,      // sparse: gather source per connection, scale, index_add per target
};
const char* kernel_name(LevelKernel kernel);

struct Level {
  int64_t begin = 0, end = 0;  // dense ids of the batch
  int64_t hidden_end = 0;      // [begin, hidden_end) hidden, [hidden_end, end) outputs
  int64_t conn_begin = 0, conn_end = 0;
  std::vector<int64_t> sources;  // distinct source dense ids, ascending
  int64_t sources_before = 0;    // Σ sources of levels 1..l-1: its first row in a per-source table of all levels
  GatherPlan gather;             // assembles `sources`
  LevelKernel kernel = LevelKernel::BiasOnly;
  int64_t size() const { return end - begin; }
  int64_t num_connections() const { return conn_end - conn_begin; }
  // Whether `sources` are one run of consecutive ids (no sources count as one).
  bool sources_in_a_run() const {
    return sources.empty() || sources.back() - sources.front() + 1 == int64_t(sources.size());
  }
};

// A level's connections as the per-level path reads them, in connection order.
struct LevelEdges {
  std::vector<int64_t> source;  // position in the level's `sources`
  std::vector<int64_t> target;  // dense id - the level's begin
  // Each connection's position in the level's row-major [size, width] weight matrix.
  std::vector<int64_t> dense_positions(int64_t width) const;
};

// The start of the name of every per-level parameter and buffer ("level3_"):
// the network's dropout buffers, the techniques' parameters, the exports' names.
std::string level_prefix(size_t l);
// Whether `name` starts with some level_prefix().
bool has_level_prefix(const std::string& name);

struct CompileOptions {
  // A user topological order: must be a permutation of the neurons that
  // respects every edge. Only breaks ties within a level.
  std::optional<std::vector<NeuronId>> topo_sort;
  // Levels at least this dense (connections / (size × sources)) use a matmul.
  double dense_threshold = 0.1;
  // Force one kernel for every level that has connections (tests compare paths).
  std::optional<LevelKernel> force_kernel;
  // Starts every error message: the operation the user called.
  const char* context = "Topology::compile()";
};

class Topology {
 public:
  // The topology keeps the spec: pass an rvalue to hand it over without a copy.
  static std::shared_ptr<const Topology> compile(GraphSpec spec, const CompileOptions& options = {});

  const GraphSpec& spec() const { return spec_; }
  int64_t num_neurons() const { return static_cast<int64_t>(index_of_dense_.size()); }
  int64_t num_inputs() const { return num_inputs_; }
  int64_t num_connections() const { return static_cast<int64_t>(conn_source_.size()); }
  // Levels 1..depth run in order; levels()[0] is the input level.
  const std::vector<Level>& levels() const { return levels_; }
  int64_t depth() const { return static_cast<int64_t>(levels_.size()) - 1; }

  const NeuronId& label(int64_t dense) const { return spec_.neurons()[index_of_dense_[dense]]; }
  Role role(int64_t dense) const { return roles_[dense]; }
  int64_t level_of(int64_t dense) const { return level_of_[dense]; }
  // Dense id of a label, or -1.
  int64_t dense_of(const NeuronId& id) const;
  // Dense id of the neuron at this position in spec().neurons().
  int64_t dense_at(int64_t spec_index) const { return dense_of_index_[spec_index]; }
  // Position in spec().neurons() of dense id `dense` (the inverse of dense_at()).
  int64_t spec_index_at(int64_t dense) const { return index_of_dense_[dense]; }
  // Dense id of a label; throws naming `context` when unknown.
  int64_t require(const NeuronId& id, const char* context) const;
  // Output dense ids in the user's output order.
  const std::vector<int64_t>& output_ids() const { return output_ids_; }
  const GatherPlan& output_gather() const { return output_gather_; }

  // Flat connection arrays, sorted by (target, source).
  const ConnectionArray& conn_source() const { return conn_source_; }
  const ConnectionArray& conn_target() const { return conn_target_; }
  // Connections into dense id n are [in_offsets()[n], in_offsets()[n + 1]).
  const std::vector<int64_t>& in_offsets() const { return in_offsets_; }
  // Connections out of dense id n are out_connections()[out_offsets()[n] .. out_offsets()[n + 1]),
  // in the spec's successor order (not sorted by index).
  const std::vector<int64_t>& out_offsets() const { return out_offsets_; }
  const ConnectionArray& out_connections() const { return out_connections_; }
  // The target of each of those connections, in the same order: backward
  // passes that walk a source's connections read it in sequence rather than
  // through conn_target() at random.
  const ConnectionArray& out_targets() const { return out_targets_; }
  // Index of connection source -> target (dense ids), or -1.
  int64_t connection_index(int64_t source, int64_t target) const;
  // Position of a non-input neuron's bias.
  int64_t bias_index(int64_t dense) const { return dense - num_inputs_; }
  int64_t num_biases() const { return num_neurons() - num_inputs_; }

  // Builds a gather plan for arbitrary dense ids (any order, no duplicates).
  GatherPlan plan_gather(const std::vector<int64_t>& dense_ids) const;

  // Level l's edges (l >= 1), or every level's (entry 0, the inputs', empty):
  // made on demand, in O(connections) and a pass over the neurons below, since
  // neither the fused kernel nor the dense path reads them, and as arrays as
  // long as the connections they would double a large network's memory.
  LevelEdges level_edges(size_t l) const;
  std::vector<LevelEdges> level_edges() const;
  // Level l's connections' positions in its dense [size, sources] weight matrix.
  std::vector<int64_t> dense_positions(size_t l) const;

  // This topology less the connections `removed` (indices, each once), plus
  // the hidden neurons `added_neurons` (labels new to the spec, appended to
  // its neurons; here dense id num_neurons() + j names the j-th), plus
  // `added` ((source, target) dense ids, each absent here and given once),
  // patched in O(neurons + connections) rather than compiled: the result is
  // the compiled topology of the edited graph, whose spec lists edges by
  // source. Neurons that change level move to their new level's range.
  // Returns none where the edited graph needs a compile: an added connection
  // runs against this dense order (from a neuron at or past its target; a
  // cycle may close there), added neurons form a cycle, or options ask for a
  // topo_sort (the caller must also not patch a topology a topo_sort
  // ordered). `old_connection` receives, per new connection, its index here
  // or -1 for an added one.
  std::shared_ptr<const Topology> with_connections(const std::vector<int64_t>& removed,
                                                   const std::vector<std::pair<int64_t, int64_t>>& added,
                                                   const CompileOptions& options, ConnectionArray& old_connection,
                                                   const std::vector<NeuronId>& added_neurons = {}) const;

 private:
  explicit Topology(GraphSpec spec) : spec_(std::move(spec)) {}
  // The steps of compile(), in order (topology.cpp).
  void order_neurons(const std::vector<int64_t>& rank, int64_t depth);
  void sort_connections();
  void lay_out_levels(int64_t depth);
  void plan_level(int64_t l, const CompileOptions& options, std::vector<int64_t>& stamp);
  // level_edges()'s work, with `position` scratch of at least levels_[l].begin entries.
  LevelEdges edges_of(size_t l, std::vector<int64_t>& position) const;
  void plan_levels(const CompileOptions& options);
  // with_connections()'s steps (topology_patch.cpp): each neuron's level
  // from the base's incoming runs and a Patch (what was removed and added),
  // the new runs merged from the two (renumbered where a neuron moved), then
  // the outgoing runs and the spec's edges from the incoming runs.
  struct Patch;  // topology_patch.cpp
  bool patch_levels(const Patch& patch, std::vector<int64_t>& level) const;
  void patch_incoming(const Topology& base, const Patch& patch, bool moved, ConnectionArray& old_connection,
                      const char* context);
  void patch_outgoing(std::shared_ptr<GraphSpec::IndexAdjacency> adjacency);

  GraphSpec spec_;
  int64_t num_inputs_ = 0;
  std::vector<Role> roles_;
  std::vector<int64_t> level_of_;
  std::vector<int64_t> dense_of_index_;  // by position in spec_.neurons(): the spec's id map serves both
  std::vector<int64_t> index_of_dense_;  // its inverse
  std::vector<Level> levels_;
  std::vector<int64_t> output_ids_;
  GatherPlan output_gather_;
  ConnectionArray conn_source_, conn_target_;
  std::vector<int64_t> in_offsets_, out_offsets_;
  ConnectionArray out_connections_, out_targets_;
};

}  // namespace connex
