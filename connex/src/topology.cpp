#include "connex/topology.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>

#include "connex/error.h"
#include "parallel_passes.h"

namespace connex {

const char* kernel_name(LevelKernel kernel) {
  switch (kernel) {
    case LevelKernel::BiasOnly:
      return "bias-only";
    case LevelKernel::DenseView:
      return "dense-view";
    case LevelKernel::DenseScatter:
      return "dense-scatter";
    case LevelKernel::EdgeList:
      return "edge-list";
  }
  return "?";
}

namespace {

// Rank of each spec neuron: its position in the user's topo sort (validated
// here) or in the spec's neuron list.
std::vector<int64_t> neuron_ranks(const GraphSpec& spec, const std::optional<std::vector<NeuronId>>& topo_sort,
                                  const char* context) {
  const int64_t n = static_cast<int64_t>(spec.num_neurons());
  std::vector<int64_t> rank(n);
  if (!topo_sort) {
    std::iota(rank.begin(), rank.end(), 0);
    return rank;
  }
  std::fill(rank.begin(), rank.end(), -1);
  for (size_t pos = 0; pos < topo_sort->size(); ++pos) {
    const auto& id = (*topo_sort)[pos];
    int64_t index = spec.index_of(id);
    if (index < 0) fail("{}: topo_sort names neuron {}, which is not in the graph", context, id);
    if (rank[index] >= 0) fail("{}: topo_sort lists neuron {} twice", context, id);
    rank[index] = static_cast<int64_t>(pos);
  }
  for (int64_t i = 0; i < n; ++i)
    if (rank[i] < 0)
      fail("{}: topo_sort is not a permutation of the neurons: neuron {} is missing", context, spec.neurons()[i]);
  for (const auto& [u, v] : spec.edge_indices())
    if (rank[u] > rank[v])
      fail("{}: topo_sort places {} before {}, which violates the edge {}", context, spec.neurons()[v],
           spec.neurons()[u], edge_str({spec.neurons()[u], spec.neurons()[v]}));
  return rank;
}

// The kernel of a level of `size` neurons reading `width` sources through `conns` connections.
LevelKernel choose_kernel(int64_t conns, int64_t size, int64_t width, const CompileOptions& options) {
  const double cells = static_cast<double>(size) * static_cast<double>(width);
  if (conns == 0) return LevelKernel::BiasOnly;
  if (options.force_kernel) {
    if (*options.force_kernel == LevelKernel::DenseView && conns != static_cast<int64_t>(cells))
      return LevelKernel::DenseScatter;  // a view exists only for complete levels
    return *options.force_kernel;
  }
  if (conns == static_cast<int64_t>(cells)) return LevelKernel::DenseView;
  if (conns >= options.dense_threshold * cells) return LevelKernel::DenseScatter;
  return LevelKernel::EdgeList;
}

}  // namespace

std::string level_prefix(size_t l) { return "level" + std::to_string(l) + "_"; }

bool has_level_prefix(const std::string& name) {
  if (name.rfind("level", 0) != 0) return false;
  size_t k = 5;
  while (k < name.size() && name[k] >= '0' && name[k] <= '9') ++k;
  return k > 5 && k < name.size() && name[k] == '_';
}

std::vector<int64_t> LevelEdges::dense_positions(int64_t width) const {
  std::vector<int64_t> positions(source.size());
  for (size_t k = 0; k < positions.size(); ++k) positions[k] = target[k] * width + source[k];
  return positions;
}

LevelEdges Topology::edges_of(size_t l, std::vector<int64_t>& position) const {
  const Level& lv = levels_[l];
  for (size_t i = 0; i < lv.sources.size(); ++i) position[lv.sources[i]] = static_cast<int64_t>(i);
  LevelEdges edges;
  edges.source.resize(lv.num_connections());
  edges.target.resize(lv.num_connections());
  for (int64_t c = lv.conn_begin; c < lv.conn_end; ++c) {
    edges.source[c - lv.conn_begin] = position[conn_source_[c]];
    edges.target[c - lv.conn_begin] = conn_target_[c] - lv.begin;
  }
  return edges;
}

LevelEdges Topology::level_edges(size_t l) const {
  if (l == 0 || l >= levels_.size()) fail("Topology::level_edges(): expected a level in [1, {}], got {}", depth(), l);
  std::vector<int64_t> position(levels_[l].begin);  // sources lie below the level
  return edges_of(l, position);
}

std::vector<LevelEdges> Topology::level_edges() const {
  std::vector<LevelEdges> edges(levels_.size());
  std::vector<int64_t> position(num_neurons());
  for (size_t l = 1; l < levels_.size(); ++l) edges[l] = edges_of(l, position);
  return edges;
}

std::vector<int64_t> Topology::dense_positions(size_t l) const {
  return level_edges(l).dense_positions(static_cast<int64_t>(levels_[l].sources.size()));
}

std::shared_ptr<const Topology> Topology::compile(GraphSpec spec_in, const CompileOptions& options) {
  // Which kernels may run: BiasOnly forced on a level with connections would drop them.
  if (options.force_kernel == LevelKernel::BiasOnly)
    fail("{}: force_kernel(BiasOnly) would ignore every connection; force DenseView, DenseScatter or EdgeList",
         options.context);
  if (std::isnan(options.dense_threshold)) fail("{}: dense_threshold must be a number, got nan", options.context);
  std::shared_ptr<Topology> topo(new Topology(std::move(spec_in)));
  const GraphSpec& spec = topo->spec_;
  // Level = longest path from a source; inputs are level 0, any other neuron
  // at least level 1 (an isolated hidden neuron still computes act(bias)).
  // The spec's validation computed it in its cycle check.
  const std::vector<int64_t>& level = spec.index_adjacency().batch;
  const int64_t depth = level.empty() ? 0 : *std::max_element(level.begin(), level.end());

  topo->order_neurons(neuron_ranks(spec, options.topo_sort, options.context), depth);
  topo->sort_connections();
  topo->lay_out_levels(depth);
  topo->plan_levels(options);

  for (const auto& id : spec.outputs()) topo->output_ids_.push_back(topo->dense_of_index_[spec.index_of(id)]);
  topo->output_gather_ = topo->plan_gather(topo->output_ids_);
  return topo;
}

// Dense order: inputs in input order, then by (level, hidden before output,
// rank). Kept as index_of_dense_: each dense id's spec position, through
// which the topology also reads its labels.
void Topology::order_neurons(const std::vector<int64_t>& rank, int64_t depth) {
  const GraphSpec& spec = spec_;
  const std::vector<int64_t>& level = spec.index_adjacency().batch;
  const int64_t n = static_cast<int64_t>(spec.num_neurons());
  std::vector<int64_t>& order = index_of_dense_;
  order.reserve(n);
  for (const auto& id : spec.inputs()) order.push_back(spec.index_of(id));
  // A counting sort on the key (level, output?) over the neurons taken in
  // rank order (rank is a permutation) keeps rank order within each key.
  std::vector<int64_t> by_rank(n);
  for (int64_t i = 0; i < n; ++i) by_rank[rank[i]] = i;
  auto key = [&](int64_t i) { return 2 * level[i] + (spec.role_at(i) == Role::Output ? 1 : 0); };
  std::vector<int64_t> start(2 * (depth + 1) + 1, 0);
  for (int64_t i = 0; i < n; ++i)
    if (level[i] > 0) ++start[key(i) + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int64_t> rest(start.back());
  for (int64_t i : by_rank)
    if (level[i] > 0) rest[start[key(i)]++] = i;
  order.insert(order.end(), rest.begin(), rest.end());

  dense_of_index_.resize(n);
  num_inputs_ = static_cast<int64_t>(spec.inputs().size());
  roles_.resize(n);
  level_of_.resize(n);
  for (int64_t d = 0; d < n; ++d) {
    int64_t i = order[d];
    dense_of_index_[i] = d;
    roles_[d] = spec.role_at(i);
    level_of_[d] = level[i];
  }
}

// Connections sorted by (target, source) through a counting sort on target,
// and the same connections grouped by source, for backward passes that
// gather gradients per source instead of scattering them. One sweep writes
// both: it visits sources in ascending dense order (each source's
// connections in the spec's successor order), so each target's run fills
// in ascending source order without a comparison sort.
//
// Large graphs split the sweep between threads by ranges of sources.
void Topology::sort_connections() {
  const auto& adjacency = spec_.index_adjacency();
  const std::vector<int64_t>& out_offsets = adjacency.offsets;
  const std::vector<int64_t>& out_targets = adjacency.targets;
  const std::vector<int64_t>& order = index_of_dense_;
  const int64_t n = num_neurons();
  const int64_t m = static_cast<int64_t>(out_targets.size());
  out_offsets_.assign(n + 1, 0);
  for (int64_t du = 0; du < n; ++du)
    out_offsets_[du + 1] = out_offsets_[du] + out_offsets[order[du] + 1] - out_offsets[order[du]];
  const int64_t parts = counting_sort_parts(m, n);
  std::vector<int64_t> part_begin(parts + 1, n);
  for (int64_t p = 0; p < parts; ++p)
    part_begin[p] =
        std::lower_bound(out_offsets_.begin(), out_offsets_.end() - 1, m * p / parts) - out_offsets_.begin();
  conn_source_.resize(m);
  conn_target_.resize(m);
  out_connections_.resize(m);
  out_targets_.resize(m);
  in_offsets_ = counting_sort_in_parts(parts, n, [&](int64_t p, auto&& slot_of) {
    for (int64_t du = part_begin[p]; du < part_begin[p + 1]; ++du) {
      const int64_t u = order[du];
      int64_t k_out = out_offsets_[du];
      for (int64_t k = out_offsets[u]; k < out_offsets[u + 1]; ++k, ++k_out) {
        const int64_t dv = dense_of_index_[out_targets[k]];
        const int64_t c = slot_of(dv);
        if (c < 0) continue;  // counting pass
        conn_source_[c] = du;
        out_connections_[k_out] = c;
        out_targets_[k_out] = dv;
      }
    }
  });
  // Targets in order, rather than scattered with the sources: a cache miss
  // less per connection.
  share_work(0, n, 1 << 12, [&](int64_t first, int64_t last) {
    for (int64_t dv = first; dv < last; ++dv)
      std::fill(conn_target_.begin() + in_offsets_[dv], conn_target_.begin() + in_offsets_[dv + 1], dv);
  });
}

// The level table: each level's dense ids, its hidden prefix and its connections.
void Topology::lay_out_levels(int64_t depth) {
  const int64_t n = num_neurons();
  levels_.resize(depth + 1);
  int64_t d = 0;
  for (int64_t l = 0; l <= depth; ++l) {
    Level& lv = levels_[l];
    lv.begin = d;
    while (d < n && level_of_[d] == l) ++d;
    lv.end = d;
    lv.hidden_end = lv.begin;
    while (lv.hidden_end < lv.end && roles_[lv.hidden_end] != Role::Output) ++lv.hidden_end;
    lv.conn_begin = in_offsets_[lv.begin];
    lv.conn_end = in_offsets_[lv.end];
  }
}

// Every level's plan. Levels are independent here, so large graphs split
// them between connex's threads (share_work); each chunk of levels holds a
// scratch `stamp` of its own while it runs.
void Topology::plan_levels(const CompileOptions& options) {
  const int64_t n = num_neurons(), depth = this->depth();
  const int64_t level_grain = num_connections() >= (int64_t(1) << 16) ? 1 : depth + 1;
  // A chunk is often one level: scratch made per chunk would be filled once
  // per level (a pass over all neurons each). Chunks take a scratch stamp
  // another finished with instead; a level stamps only its own number l
  // (or ~l, negative), so stamps left by other levels never look like its own.
  std::mutex scratch_lock;
  std::vector<std::vector<int64_t>> free_scratch;
  share_work(1, depth + 1, level_grain, [&](int64_t first_level, int64_t last_level) {
    std::vector<int64_t> scratch;
    {
      std::lock_guard<std::mutex> hold(scratch_lock);
      if (!free_scratch.empty()) scratch = std::move(free_scratch.back()), free_scratch.pop_back();
    }
    if (scratch.empty()) scratch.assign(n, -1);
    for (int64_t l = first_level; l < last_level; ++l) plan_level(l, options, scratch);
    std::lock_guard<std::mutex> hold(scratch_lock);
    free_scratch.push_back(std::move(scratch));
  });
  for (int64_t l = 2; l <= depth; ++l)
    levels_[l].sources_before = levels_[l - 1].sources_before + static_cast<int64_t>(levels_[l - 1].sources.size());
}

// Level l's sources, gather plan and kernel. `stamp` marks the sources
// seen in this level (entries set to l, or to ~l, never a level, once
// gathered; no other level writes l); it belongs to the calling chunk.
void Topology::plan_level(int64_t l, const CompileOptions& options, std::vector<int64_t>& stamp) {
  Level& lv = levels_[l];
  // Stamping counts the distinct sources without a branch.
  int64_t distinct = 0;
  for (int64_t c = lv.conn_begin; c < lv.conn_end; ++c) {
    int64_t& seen = stamp[conn_source_[c]];
    distinct += seen != l;
    seen = l;
  }
  // Ascending: read off the stamps where the ids below the level are few
  // against the sources (most of compiling a large, wide network went to
  // this sort), else gather the sources and sort them (deep, narrow graphs:
  // a scan per level would be quadratic there). The scan is branch-free:
  // whether an id below a wide level is a source is a coin toss the
  // processor cannot predict.
  lv.sources.resize(distinct + 1);
  int64_t* out = lv.sources.data();
  int64_t k = 0;
  if (lv.begin <= 16 * distinct) {
    const int64_t* seen = stamp.data();
    for (int64_t s = 0; s < lv.begin; ++s) {
      out[k] = s;
      k += seen[s] == l;
    }
  } else {
    // Each source once: its stamp moves from l to ~l (negative, never a level) when taken.
    for (int64_t c = lv.conn_begin; c < lv.conn_end; ++c) {
      int64_t& seen = stamp[conn_source_[c]];
      out[k] = conn_source_[c];
      k += seen == l;
      seen = ~l;
    }
    std::sort(out, out + k);
  }
  lv.sources.resize(distinct);
  lv.gather = plan_gather(lv.sources);
  lv.kernel = choose_kernel(lv.num_connections(), lv.size(), static_cast<int64_t>(lv.sources.size()), options);
}

GatherPlan Topology::plan_gather(const std::vector<int64_t>& dense_ids) const {
  GatherPlan plan;
  plan.size = static_cast<int64_t>(dense_ids.size());
  std::vector<int64_t> sorted(dense_ids);
  if (!std::is_sorted(dense_ids.begin(), dense_ids.end())) {
    std::sort(sorted.begin(), sorted.end());
    // order[k] = where dense_ids[k] lands in the ascending concatenation.
    std::unordered_map<int64_t, int64_t> where;
    for (size_t k = 0; k < sorted.size(); ++k) where[sorted[k]] = static_cast<int64_t>(k);
    for (int64_t d : dense_ids) plan.order.push_back(where.at(d));
  }
  size_t k = 0;
  while (k < sorted.size()) {
    const int64_t l = level_of_[sorted[k]];
    const Level& lv = levels_[l];
    size_t e = k;
    while (e < sorted.size() && level_of_[sorted[e]] == l) ++e;
    Segment seg;
    seg.level = l;
    const bool contiguous = sorted[e - 1] - sorted[k] == static_cast<int64_t>(e - k) - 1;
    if (contiguous) {
      seg.begin = sorted[k] - lv.begin;
      seg.end = sorted[e - 1] - lv.begin + 1;
      seg.whole = seg.begin == 0 && seg.end == lv.size();
    } else {
      for (size_t j = k; j < e; ++j) seg.local.push_back(sorted[j] - lv.begin);
    }
    plan.segments.push_back(std::move(seg));
    k = e;
  }
  return plan;
}

int64_t Topology::dense_of(const NeuronId& id) const {
  const int64_t index = spec_.index_of(id);
  return index < 0 ? -1 : dense_of_index_[index];
}

int64_t Topology::require(const NeuronId& id, const char* context) const {
  int64_t d = dense_of(id);
  if (d < 0) fail("{}: neuron {} is not in the network", context, id);
  return d;
}

int64_t Topology::connection_index(int64_t source, int64_t target) const {
  auto first = conn_source_.begin() + in_offsets_[target];
  auto last = conn_source_.begin() + in_offsets_[target + 1];
  auto it = std::lower_bound(first, last, source);
  return it != last && *it == source ? static_cast<int64_t>(it - conn_source_.begin()) : -1;
}

}  // namespace connex
