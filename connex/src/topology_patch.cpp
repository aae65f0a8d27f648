// Topology::with_connections(): a topology patched rather than compiled, for
// edits that remove and add connections but move no neuron to another level
// (a rewiring). Everything that depends on levels alone (the dense order,
// roles, the output plan) is kept; each target's incoming run is merged
// with its added connections, and the outgoing runs and the spec's edges
// are a counting sort of the new incoming runs by source: a few linear
// passes, no comparison sort.
#include <algorithm>
#include <atomic>
#include <numeric>

#include "connex/error.h"
#include "connex/topology.h"
#include "parallel_passes.h"
#include "work_share.h"

namespace connex {

struct Topology::Patch {
  std::vector<uint8_t> gone;              // per base connection: removed
  std::vector<int64_t> removed_into;      // per target: removed connections
  std::vector<int64_t> into, into_begin;  // added sources by target, each target's ascending
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
  patch.removed_into.assign(n, 0);
  for (int64_t c : removed) {
    if (c < 0 || c >= m) fail("{}: expected connection indices in [0, {}), got {}", context, m, c);
    if (patch.gone[c])
      fail("{}: connection {} is removed twice", context, edge_str({label(conn_source_[c]), label(conn_target_[c])}));
    patch.gone[c] = 1;
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
  patch.into.resize(added.size());
  {
    const auto from_begin = offsets_of(from_count);
    std::vector<int64_t> by_source(added.size()), fill(from_begin.begin(), from_begin.end() - 1);
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
  topo->patch_outgoing(*this);
  topo->lay_out_levels(depth());
  topo->plan_levels(options);
  topo->output_ids_ = output_ids_;
  topo->output_gather_ = output_gather_;
  return topo;
}

// The incoming runs: each target's surviving connections merged with its
// added ones. Fills old_connection. False when some neuron would change level (nothing else is
// valid then).
bool Topology::patch_incoming(const Topology& base, const Patch& patch, std::vector<int64_t>& old_connection,
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
            ++c;
            continue;
          }
          old_connection[out] = c++;
        } else {
          old_connection[out] = -1;
          ++j;
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

// The outgoing runs and the spec: a stable counting sort of the new
// connections by source, visiting targets in spec order, so each source's
// run lists its targets in spec order (as compile() does, and as the spec
// lists edges). The sort scatters one array, the connection of each slot;
// each source's run and its edges in the spec are the same list, so the
// targets and the spec's edges are then written run by run, in order (a
// scattered write misses the cache: five scattered arrays took most of a
// 1M-connection rewiring's patch). Looking survivors up through their old
// outgoing runs instead cost a cache miss per connection.
void Topology::patch_outgoing(const Topology& base) {
  const int64_t n = num_neurons(), m = num_connections();
  const GraphSpec& old = base.spec_;
  spec_.neurons_ = old.neurons_;
  spec_.inputs_ = old.inputs_;
  spec_.outputs_ = old.outputs_;
  spec_.id_kind_ = old.id_kind_;
  spec_.index_ = old.index_;
  spec_.roles_ = old.roles_;
  // Parts: targets in spec order, a similar number of connections each.
  const int64_t parts = counting_sort_parts(m, n);
  std::vector<int64_t> part_begin(parts + 1, n);
  {
    int64_t u = 0, seen = 0;
    for (int64_t p = 0; p < parts; ++p) {
      while (u < n && seen < m * p / parts)
        seen += in_offsets_[dense_of_index_[u] + 1] - in_offsets_[dense_of_index_[u]], ++u;
      part_begin[p] = u;
    }
  }
  out_connections_.resize(m);
  out_targets_.resize(m);
  auto adjacency = std::make_shared<GraphSpec::IndexAdjacency>();
  adjacency->targets.resize(m);
  spec_.edge_indices_.resize(m);
  std::vector<int64_t> spec_offset;  // per dense id: its spec edges' start less its run's
  out_offsets_ = counting_sort_in_parts(
      parts, n,
      [&](int64_t p, auto&& slot_of) {
        for (int64_t u = part_begin[p]; u < part_begin[p + 1]; ++u) {
          const int64_t d = dense_of_index_[u];
          for (int64_t c = in_offsets_[d]; c < in_offsets_[d + 1]; ++c) {
            const int64_t s = conn_source_[c];
            const int64_t slot = slot_of(s);
            if (slot < 0) continue;  // counting pass
            out_connections_[slot] = c;
          }
        }
      },
      [&](const std::vector<int64_t>& offsets) {
        // Between the passes: the spec's offsets, by spec position.
        adjacency->offsets.assign(n + 1, 0);
        for (int64_t u = 0; u < n; ++u)
          adjacency->offsets[u + 1] =
              adjacency->offsets[u] + offsets[dense_of_index_[u] + 1] - offsets[dense_of_index_[u]];
        spec_offset.resize(n);
        for (int64_t d = 0; d < n; ++d) spec_offset[d] = adjacency->offsets[index_of_dense_[d]] - offsets[d];
      });
  // Targets (read through the connections) and the spec's edges, run by run.
  share_work(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      const int64_t from = index_of_dense_[s];
      for (int64_t slot = out_offsets_[s], e = slot + spec_offset[s]; slot < out_offsets_[s + 1]; ++slot, ++e) {
        const int64_t d = conn_target_[out_connections_[slot]];
        out_targets_[slot] = d;
        const int64_t u = index_of_dense_[d];
        adjacency->targets[e] = u;
        spec_.edge_indices_[e] = {from, u};
      }
    }
  });
  adjacency->batch = old.index_adjacency().batch;
  spec_.adjacency_ = std::move(adjacency);
}

}  // namespace connex
