// Topology::with_connections(): a topology patched rather than compiled, for
// edits that remove and add connections but move no neuron to another level
// (a rewiring). Everything that depends on levels alone (the dense order,
// roles, the output plan) is kept; each target's incoming run is merged
// with its added connections, and each source's outgoing run, with the
// spec's edges, with its added ones: a few linear passes, no sort.
#include <algorithm>
#include <atomic>
#include <numeric>

#include "connex/error.h"
#include "connex/topology.h"
#include "work_share.h"

namespace connex {

struct Topology::Patch {
  std::vector<uint8_t> gone;              // per base connection: removed
  std::vector<int64_t> removed_from;      // per source: removed connections
  std::vector<int64_t> removed_into;      // per target: removed connections
  std::vector<int64_t> into, into_begin;  // added sources by target, each target's ascending
  std::vector<int64_t> from_begin;        // per source: the offset of its added connections, listed by source
  std::vector<int64_t> new_of_old;        // per base connection: its new index, -1 if removed
  std::vector<int64_t> added_new;         // per entry of `into`: its new index
};

namespace {

// Offsets of a counting sort: counts[k] items of key k go to [offsets[k], offsets[k + 1]).
std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

}  // namespace

std::shared_ptr<const Topology> Topology::with_connections(const std::vector<int64_t>& removed,
                                                           const std::vector<std::pair<int64_t, int64_t>>& added,
                                                           const CompileOptions& options,
                                                           std::vector<int64_t>& old_connection) const {
  const char* context = "Topology::with_connections()";  // each layer names itself
  const int64_t n = num_neurons(), m = num_connections();
  Patch patch;
  patch.gone.assign(m, 0);
  patch.removed_from.assign(n, 0);
  patch.removed_into.assign(n, 0);
  for (int64_t c : removed) {
    if (c < 0 || c >= m) fail("{}: expected connection indices in [0, {}), got {}", context, m, c);
    if (patch.gone[c])
      fail("{}: connection {} is removed twice", context, edge_str({label(conn_source_[c]), label(conn_target_[c])}));
    patch.gone[c] = 1;
    ++patch.removed_from[conn_source_[c]];
    ++patch.removed_into[conn_target_[c]];
  }
  std::vector<int64_t> into_count(n, 0), from_count(n, 0);
  for (const auto& [s, t] : added) {
    if (s < 0 || s >= n || t < 0 || t >= n)
      fail("{}: expected an added connection between dense ids in [0, {}), got ({}, {})", context, n, s, t);
    if (roles_[s] == Role::Output || roles_[t] == Role::Input)
      fail("{}: connection {} would leave an output or enter an input", context, edge_str({label(s), label(t)}));
    ++into_count[t];
    ++from_count[s];
  }
  // The added sources by target, each target's ascending: a counting sort by
  // source, then a stable one by target.
  patch.into_begin = offsets_of(into_count);
  patch.from_begin = offsets_of(from_count);
  patch.into.resize(added.size());
  {
    std::vector<int64_t> by_source(added.size()), fill(patch.from_begin.begin(), patch.from_begin.end() - 1);
    for (size_t k = 0; k < added.size(); ++k) by_source[fill[added[k].first]++] = static_cast<int64_t>(k);
    fill.assign(patch.into_begin.begin(), patch.into_begin.end() - 1);
    for (int64_t k : by_source) patch.into[fill[added[k].second]++] = added[k].first;
  }
  std::shared_ptr<Topology> topo(new Topology(GraphSpec()));
  topo->num_inputs_ = num_inputs_;
  topo->roles_ = roles_;
  topo->level_of_ = level_of_;
  topo->dense_of_index_ = dense_of_index_;
  topo->index_of_dense_ = index_of_dense_;
  if (!topo->patch_incoming(*this, patch, old_connection, context)) return nullptr;
  topo->patch_outgoing(*this, patch);
  topo->lay_out_levels(depth());
  topo->plan_levels(options);
  topo->output_ids_ = output_ids_;
  topo->output_gather_ = output_gather_;
  return topo;
}

// The incoming runs: each target's surviving connections merged with its
// added ones. Fills old_connection, and the patch's new_of_old and
// added_new. False when some neuron would change level (nothing else is
// valid then).
bool Topology::patch_incoming(const Topology& base, Patch& patch, std::vector<int64_t>& old_connection,
                              const char* context) {
  const int64_t n = base.num_neurons();
  const std::vector<uint8_t>& gone = patch.gone;
  const std::vector<int64_t>& into = patch.into;
  const std::vector<int64_t>& into_begin = patch.into_begin;
  in_offsets_.assign(n + 1, 0);
  for (int64_t d = 0; d < n; ++d)
    in_offsets_[d + 1] = in_offsets_[d] + base.in_offsets_[d + 1] - base.in_offsets_[d] - patch.removed_into[d] +
                         into_begin[d + 1] - into_begin[d];
  const int64_t total = in_offsets_[n];
  conn_source_.resize(total);
  conn_target_.resize(total);
  old_connection.resize(total);
  patch.new_of_old.resize(base.num_connections());
  patch.added_new.resize(into.size());
  std::atomic<bool> levels_kept{true}, repeated{false};
  share_work(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) {
      const int64_t c_end = base.in_offsets_[d + 1], j_end = into_begin[d + 1];
      int64_t c = base.in_offsets_[d], j = into_begin[d], out = in_offsets_[d], deepest = -1, previous = -1;
      while (c < c_end || j < j_end) {
        const int64_t old_source = c < c_end ? base.conn_source_[c] : n;
        const int64_t new_source = j < j_end ? into[j] : n;
        // An added pair that is here (removed or not) or given twice.
        if (old_source == new_source || new_source == previous) repeated = true;
        if (old_source <= new_source) {
          if (gone[c]) {
            patch.new_of_old[c++] = -1;
            continue;
          }
          old_connection[out] = c;
          patch.new_of_old[c++] = out;
        } else {
          old_connection[out] = -1;
          patch.added_new[j++] = out;
          previous = new_source;
        }
        const int64_t s = std::min(old_source, new_source);
        conn_source_[out] = s;
        conn_target_[out++] = d;
        deepest = std::max(deepest, level_of_[s]);
      }
      if (roles_[d] != Role::Input && std::max<int64_t>(1, deepest + 1) != level_of_[d]) levels_kept = false;
    }
  });
  if (repeated) fail("{}: an added connection exists already or is given twice", context);
  return levels_kept;
}

// The outgoing runs and the spec: each source's surviving connections (in
// the base's order, the spec's order of targets) merged with its added ones
// in the same order. The spec lists edges by source in spec order, so its
// edges and index adjacency are written in the same pass.
void Topology::patch_outgoing(const Topology& base, const Patch& patch) {
  const int64_t n = base.num_neurons();
  // The added connections by source, each source's in spec order of targets:
  // (target, new connection index).
  std::vector<std::pair<int64_t, int64_t>> from(patch.into.size());
  {
    std::vector<int64_t> fill(patch.from_begin.begin(), patch.from_begin.end() - 1);
    for (int64_t u = 0; u < n; ++u) {
      const int64_t d = dense_of_index_[u];
      for (int64_t j = patch.into_begin[d]; j < patch.into_begin[d + 1]; ++j)
        from[fill[patch.into[j]]++] = {d, patch.added_new[j]};
    }
  }
  auto count = [&](int64_t d) {
    return base.out_offsets_[d + 1] - base.out_offsets_[d] - patch.removed_from[d] + patch.from_begin[d + 1] -
           patch.from_begin[d];
  };
  out_offsets_.assign(n + 1, 0);
  for (int64_t d = 0; d < n; ++d) out_offsets_[d + 1] = out_offsets_[d] + count(d);
  const int64_t total = out_offsets_[n];
  out_connections_.resize(total);
  out_targets_.resize(total);

  const GraphSpec& old = base.spec_;
  GraphSpec& spec = spec_;
  spec.neurons_ = old.neurons_;
  spec.inputs_ = old.inputs_;
  spec.outputs_ = old.outputs_;
  spec.id_kind_ = old.id_kind_;
  spec.index_ = old.index_;
  spec.roles_ = old.roles_;
  auto adjacency = std::make_shared<GraphSpec::IndexAdjacency>();
  adjacency->batch = old.index_adjacency().batch;
  adjacency->offsets.assign(n + 1, 0);
  for (int64_t u = 0; u < n; ++u) adjacency->offsets[u + 1] = adjacency->offsets[u] + count(dense_of_index_[u]);
  adjacency->targets.resize(total);
  spec.edge_indices_.resize(total);

  share_work(0, n, 1 << 9, [&](int64_t first, int64_t last) {
    for (int64_t u = first; u < last; ++u) {
      const int64_t d = dense_of_index_[u];
      int64_t k = base.out_offsets_[d];
      const int64_t k_end = base.out_offsets_[d + 1];
      int64_t j = patch.from_begin[d];
      const int64_t j_end = patch.from_begin[d + 1];
      int64_t out = out_offsets_[d], e = adjacency->offsets[u];
      while (k < k_end || j < j_end) {
        int64_t target, connection;
        const int64_t old_target = k < k_end ? base.out_targets_[k] : -1;
        if (j == j_end || (k < k_end && index_of_dense_[old_target] < index_of_dense_[from[j].first])) {
          connection = patch.new_of_old[base.out_connections_[k++]];
          if (connection < 0) continue;  // removed
          target = old_target;
        } else {
          target = from[j].first;
          connection = from[j++].second;
        }
        out_connections_[out] = connection;
        out_targets_[out++] = target;
        const int64_t v = index_of_dense_[target];
        adjacency->targets[e] = v;
        spec.edge_indices_[e++] = {u, v};
      }
    }
  });
  spec.adjacency_ = std::move(adjacency);
}

}  // namespace connex
