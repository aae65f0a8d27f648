// Topology::with_connections(): a topology patched rather than compiled, for
// edits that remove and add connections but move no neuron to another level
// (a rewiring). Everything that depends on levels alone (the dense order,
// roles, the output plan) is kept; each target's incoming run is merged
// with its added connections, and the outgoing runs are sorted again.
#include <algorithm>
#include <atomic>
#include <numeric>

#include <ATen/Parallel.h>

#include "connex/error.h"
#include "connex/topology.h"
#include "parallel_passes.h"

namespace connex {

std::shared_ptr<const Topology> Topology::with_connections(const std::vector<int64_t>& removed,
                                                           const std::vector<std::pair<int64_t, int64_t>>& added,
                                                           const CompileOptions& options,
                                                           std::vector<int64_t>& old_connection) const {
  const char* context = "Topology::with_connections()";  // each layer names itself
  const int64_t n = num_neurons(), m = num_connections();
  std::vector<uint8_t> gone(m, 0);
  for (int64_t c : removed) {
    if (c < 0 || c >= m) fail("{}: expected connection indices in [0, {}), got {}", context, m, c);
    if (gone[c])
      fail("{}: connection {} is removed twice", context, edge_str({label(conn_source_[c]), label(conn_target_[c])}));
    gone[c] = 1;
  }
  for (const auto& [s, t] : added) {
    if (s < 0 || s >= n || t < 0 || t >= n)
      fail("{}: expected an added connection between dense ids in [0, {}), got ({}, {})", context, n, s, t);
    if (roles_[s] == Role::Output || roles_[t] == Role::Input)
      fail("{}: connection {} would leave an output or enter an input", context, edge_str({label(s), label(t)}));
  }
  std::shared_ptr<Topology> topo(new Topology(GraphSpec()));
  topo->num_inputs_ = num_inputs_;
  topo->roles_ = roles_;
  topo->level_of_ = level_of_;
  topo->dense_of_index_ = dense_of_index_;
  topo->index_of_dense_ = index_of_dense_;
  if (!topo->patch_connections(*this, gone, added, old_connection, context)) return nullptr;
  topo->patch_spec(*this);
  topo->lay_out_levels(depth());
  topo->plan_levels(options);
  topo->output_ids_ = output_ids_;
  topo->output_gather_ = output_gather_;
  return topo;
}

// The connection arrays of `base` less `gone` plus `added`, and whether every
// neuron keeps its level (false: nothing else is valid).
bool Topology::patch_connections(const Topology& base, const std::vector<uint8_t>& gone,
                                 const std::vector<std::pair<int64_t, int64_t>>& added,
                                 std::vector<int64_t>& old_connection, const char* context) {
  const int64_t n = base.num_neurons();
  // The added sources by target (a counting sort), each target's ascending.
  std::vector<int64_t> into_begin(n + 1, 0), into(added.size());
  for (const auto& [s, t] : added) ++into_begin[t + 1];
  std::partial_sum(into_begin.begin(), into_begin.end(), into_begin.begin());
  {
    std::vector<int64_t> fill(into_begin.begin(), into_begin.end() - 1);
    for (const auto& [s, t] : added) into[fill[t]++] = s;
  }
  at::parallel_for(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) std::sort(into.begin() + into_begin[d], into.begin() + into_begin[d + 1]);
  });

  // Incoming runs: each target's surviving connections merged with its added ones.
  in_offsets_.assign(n + 1, 0);
  at::parallel_for(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) {
      int64_t kept = 0;
      for (int64_t c = base.in_offsets_[d]; c < base.in_offsets_[d + 1]; ++c) kept += gone[c] ? 0 : 1;
      in_offsets_[d + 1] = kept + into_begin[d + 1] - into_begin[d];
    }
  });
  std::partial_sum(in_offsets_.begin(), in_offsets_.end(), in_offsets_.begin());
  const int64_t total = in_offsets_[n];
  conn_source_.resize(total);
  conn_target_.resize(total);
  old_connection.resize(total);
  std::atomic<bool> levels_kept{true}, repeated{false};
  at::parallel_for(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) {
      const int64_t c_end = base.in_offsets_[d + 1], j_end = into_begin[d + 1];
      int64_t c = base.in_offsets_[d], j = into_begin[d], out = in_offsets_[d], deepest = -1, previous = -1;
      while (c < c_end || j < j_end) {
        const int64_t old_source = c < c_end ? base.conn_source_[c] : n;
        const int64_t new_source = j < j_end ? into[j] : n;
        // An added pair that is here (removed or not) or given twice.
        if (old_source == new_source || new_source == previous) repeated = true;
        if (old_source <= new_source) {
          if (gone[c++]) continue;
          old_connection[out] = c - 1;
        } else {
          old_connection[out] = -1;
          previous = new_source;
          ++j;
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
  if (!levels_kept) return false;

  // Outgoing runs, by a counting sort on the source that visits targets in
  // spec order: each source's targets come out in spec order, as compile()
  // lists them.
  const int64_t parts = counting_sort_parts(total, n);
  std::vector<int64_t> part_begin(parts + 1, n);
  {
    std::vector<int64_t> seen(n + 1, 0);  // connections into the spec positions before
    for (int64_t u = 0; u < n; ++u)
      seen[u + 1] = seen[u] + in_offsets_[dense_of_index_[u] + 1] - in_offsets_[dense_of_index_[u]];
    for (int64_t p = 0; p < parts; ++p)
      part_begin[p] = std::lower_bound(seen.begin(), seen.end() - 1, total * p / parts) - seen.begin();
  }
  out_connections_.resize(total);
  out_targets_.resize(total);
  out_offsets_ = counting_sort_in_parts(parts, n, [&](int64_t p, auto&& slot_of) {
    for (int64_t u = part_begin[p]; u < part_begin[p + 1]; ++u) {
      const int64_t d = dense_of_index_[u];
      for (int64_t c = in_offsets_[d]; c < in_offsets_[d + 1]; ++c) {
        const int64_t slot = slot_of(conn_source_[c]);
        if (slot < 0) continue;  // counting pass
        out_connections_[slot] = c;
        out_targets_[slot] = d;
      }
    }
  });
  return true;
}

// The spec of the patched graph: the base's neurons, inputs and outputs, and
// the edges read off the outgoing runs (by source in spec order, each
// source's targets in spec order), which are also its index adjacency.
void Topology::patch_spec(const Topology& base) {
  const GraphSpec& old = base.spec_;
  GraphSpec& spec = spec_;
  spec.neurons_ = old.neurons_;
  spec.inputs_ = old.inputs_;
  spec.outputs_ = old.outputs_;
  spec.id_kind_ = old.id_kind_;
  spec.index_ = old.index_;
  spec.roles_ = old.roles_;
  const auto n = static_cast<int64_t>(old.num_neurons());
  auto adjacency = std::make_shared<GraphSpec::IndexAdjacency>();
  adjacency->batch = old.index_adjacency().batch;
  adjacency->offsets.assign(n + 1, 0);
  for (int64_t u = 0; u < n; ++u) {
    const int64_t du = dense_of_index_[u];
    adjacency->offsets[u + 1] = adjacency->offsets[u] + out_offsets_[du + 1] - out_offsets_[du];
  }
  adjacency->targets.resize(out_targets_.size());
  spec.edge_indices_.resize(out_targets_.size());
  at::parallel_for(0, n, 1 << 10, [&](int64_t first, int64_t last) {
    for (int64_t u = first; u < last; ++u) {
      const int64_t du = dense_of_index_[u];
      for (int64_t k = out_offsets_[du], e = adjacency->offsets[u]; k < out_offsets_[du + 1]; ++k, ++e) {
        const int64_t v = index_of_dense_[out_targets_[k]];
        adjacency->targets[e] = v;
        spec.edge_indices_[e] = {u, v};
      }
    }
  });
  spec.adjacency_ = std::move(adjacency);
}

}  // namespace connex
