// Topology::with_connections(): a topology patched rather than compiled, for
// edits that remove and add connections and add hidden neurons (a rewiring,
// a pruning, a growth). Each target's incoming run is merged with its added
// connections; the levels follow in one pass in the base's dense order.
// Where no neuron changes level, everything that depends on levels alone
// (the dense order, roles, the output plan) is kept; else the neurons are
// ordered again and the runs move with them. The outgoing runs and the
// spec's successor lists are a counting sort of the new incoming runs by source: a
// few linear passes, no comparison sort but of the rare run whose sources
// changed order.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <numeric>
#include <tuple>
#include <unordered_set>

#include "connex/error.h"
#include "connex/topology.h"
#include "id_messages.h"
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
                                                           ConnectionArray& old_connection,
                                                           const std::vector<NeuronId>& added_neurons) const {
  const char* context = "Topology::with_connections()";  // each layer names itself
  if (options.topo_sort) return nullptr;
  // The patch's ids: this topology's dense ids, then the added neurons.
  const int64_t n = num_neurons(), m = num_connections();
  const int64_t grown = n + static_cast<int64_t>(added_neurons.size());
  {
    std::unordered_set<NeuronId, NeuronIdHash> seen;
    for (const auto& id : added_neurons) {
      if (id.kind() != spec_.id_kind())
        fail("{}: added neuron {} is {}, but the graph's neuron ids are {}", context, id, kind_name(id.kind()),
             kind_plural(spec_.id_kind()));
      check_id_text(id, context);
      if (spec_.contains(id) || !seen.insert(id).second)
        fail("{}: added neuron {} is in the graph already or is given twice", context, id);
    }
  }
  Patch patch;
  patch.gone.assign(m, 0);
  patch.removed_into.assign(grown, 0);
  for (int64_t c : removed) {
    if (c < 0 || c >= m) fail("{}: expected connection indices in [0, {}), got {}", context, m, c);
    if (patch.gone[c])
      fail("{}: connection {} is removed twice", context, edge_str({label(conn_source_[c]), label(conn_target_[c])}));
    patch.gone[c] = 1;
    ++patch.removed_into[conn_target_[c]];
  }
  std::vector<int64_t> into_count(grown, 0), from_count(grown, 0);
  for (const auto& [s, t] : added) {
    if (s < 0 || s >= grown || t < 0 || t >= grown)
      fail("{}: expected an added connection between dense ids in [0, {}), got ({}, {})", context, grown, s, t);
    if ((s < n && roles_[s] == Role::Output) || (t < n && roles_[t] == Role::Input))
      fail("{}: connection {} would leave an output or enter an input", context,
           edge_str({s < n ? label(s) : added_neurons[s - n], t < n ? label(t) : added_neurons[t - n]}));
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
  std::vector<int64_t> level;
  if (!patch_levels(patch, level)) return nullptr;
  const int64_t depth = level.empty() ? 0 : *std::max_element(level.begin(), level.end());
  std::shared_ptr<Topology> topo(new Topology(GraphSpec()));
  topo->num_inputs_ = num_inputs_;

  // The spec: the same neurons, then the added ones (hidden); its edges
  // follow from the incoming runs (patch_outgoing()).
  GraphSpec& spec = topo->spec_;
  spec.neurons_ = spec_.neurons_;
  spec.inputs_ = spec_.inputs_;
  spec.outputs_ = spec_.outputs_;
  spec.id_kind_ = spec_.id_kind_;
  spec.index_ = spec_.index_;
  spec.appended_index_ = spec_.appended_index_;
  spec.roles_ = spec_.roles_;
  if (!added_neurons.empty()) {
    // The base's map is shared; the appended neurons go into a map of their
    // own, folded into a new whole one once they are many.
    auto appended = std::make_shared<GraphSpec::NeuronIndex>();
    if (spec_.appended_index_) *appended = *spec_.appended_index_;
    for (const auto& id : added_neurons) {
      appended->emplace(id, static_cast<int64_t>(spec.neurons_.size()));
      spec.neurons_.push_back(id);
      spec.roles_.push_back(Role::Hidden);
    }
    if (spec_.index_ && appended->size() * 8 > spec_.index_->size()) {
      auto whole = std::make_shared<GraphSpec::NeuronIndex>(*spec_.index_);
      whole->insert(appended->begin(), appended->end());
      spec.index_ = std::move(whole);
      appended.reset();
    }
    spec.appended_index_ = std::move(appended);
  }
  auto adjacency = std::make_shared<GraphSpec::IndexAdjacency>();
  bool moved = grown > n;
  for (int64_t d = 0; d < n && !moved; ++d) moved = level[d] != level_of_[d];
  if (!moved) {
    // Every neuron keeps its dense id, and all that depends on levels alone.
    topo->roles_ = roles_;
    topo->level_of_ = level_of_;
    topo->dense_of_index_ = dense_of_index_;
    topo->index_of_dense_ = index_of_dense_;
    adjacency->batch = spec_.index_adjacency().batch;
  } else {
    adjacency->batch.resize(grown);
    for (int64_t d = 0; d < grown; ++d) adjacency->batch[d < n ? index_of_dense_[d] : d] = level[d];
    spec.adjacency_ = adjacency;  // order_neurons() reads the levels there
    std::vector<int64_t> rank(grown);
    std::iota(rank.begin(), rank.end(), 0);
    topo->order_neurons(rank, depth);
  }
  topo->patch_incoming(*this, patch, moved, old_connection, context);
  topo->patch_outgoing(adjacency);
  topo->lay_out_levels(depth);
  topo->plan_levels(options);
  if (!moved) {
    topo->output_ids_ = output_ids_;
    topo->output_gather_ = output_gather_;
  } else {
    for (const auto& id : spec.outputs()) topo->output_ids_.push_back(topo->dense_of_index_[spec.index_of(id)]);
    topo->output_gather_ = topo->plan_gather(topo->output_ids_);
  }
  return topo;
}

// The incoming runs: each target's surviving connections merged with its
// added ones, sources ascending, in this topology's dense order. Where
// neurons `moved` (order_neurons() ordered them), each run goes to its
// target's new place and its sources are renumbered, then sorted again where
// a neuron that changed level broke their order; else ids are the base's.
// Fills old_connection.
void Topology::patch_incoming(const Topology& base, const Patch& patch, bool moved, ConnectionArray& old_connection,
                              const char* context) {
  const int64_t n = base.num_neurons(), grown = static_cast<int64_t>(patch.removed_into.size());
  const std::vector<uint8_t>& gone = patch.gone;
  const std::vector<int64_t>& into = patch.into;
  const std::vector<int64_t>& into_begin = patch.into_begin;
  // Patch ids (the base's dense ids, then the added neurons) and new dense ids.
  std::vector<int64_t> new_of_old, old_of_new;
  if (moved) {
    new_of_old.resize(grown);
    old_of_new.resize(grown);
    for (int64_t d = 0; d < grown; ++d) {
      new_of_old[d] = dense_of_index_[d < n ? base.index_of_dense_[d] : d];
      old_of_new[new_of_old[d]] = d;
    }
  }
  auto old_id = [&](int64_t d) { return moved ? old_of_new[d] : d; };
  in_offsets_.assign(grown + 1, 0);
  for (int64_t d = 0; d < grown; ++d) {
    const int64_t e = old_id(d);
    const int64_t base_run = e < n ? base.in_offsets_[e + 1] - base.in_offsets_[e] : 0;
    in_offsets_[d + 1] = in_offsets_[d] + base_run - patch.removed_into[e] + into_begin[e + 1] - into_begin[e];
  }
  const int64_t total = in_offsets_[grown];
  conn_source_.resize(total);
  conn_target_.resize(total);
  old_connection.resize(total);
  std::atomic<bool> repeated{false};
  share_work(0, grown, 1 << 10, [&](int64_t first, int64_t last) {
    std::vector<std::pair<int64_t, int64_t>> run;
    for (int64_t d = first; d < last; ++d) {
      const int64_t e = old_id(d);
      const int64_t c_end = e < n ? base.in_offsets_[e + 1] : 0, j_end = into_begin[e + 1];
      int64_t c = e < n ? base.in_offsets_[e] : 0, j = into_begin[e], out = in_offsets_[d], previous = -1;
      bool sorted = true;
      if (j == j_end && (e >= n || patch.removed_into[e] == 0)) {
        // Most runs of an edit are untouched: copied and renumbered.
        for (int64_t previous_source = -1; c < c_end; ++c, ++out) {
          const int64_t source = moved ? new_of_old[base.conn_source_[c]] : base.conn_source_[c];
          sorted &= previous_source < source;
          previous_source = source;
          old_connection[out] = c;
          conn_source_[out] = source;
          conn_target_[out] = d;
        }
      }
      while (c < c_end || j < j_end) {
        const int64_t old_source = c < c_end ? base.conn_source_[c] : grown;
        const int64_t new_source = j < j_end ? into[j] : grown;
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
        conn_source_[out] = moved ? new_of_old[s] : s;
        sorted &= out == in_offsets_[d] || conn_source_[out - 1] < conn_source_[out];
        conn_target_[out++] = d;
      }
      if (sorted) continue;
      const int64_t begin = in_offsets_[d];
      run.clear();
      for (int64_t k = begin; k < out; ++k) run.emplace_back(conn_source_[k], old_connection[k]);
      std::sort(run.begin(), run.end());
      for (int64_t k = begin; k < out; ++k) std::tie(conn_source_[k], old_connection[k]) = run[k - begin];
    }
  });
  if (repeated) fail("{}: an added connection exists already or is given twice", context);
}

// Each neuron's level in the patched graph, by patch ids (this topology's
// dense ids, then the added neurons): one pass in this dense order, which
// every connection here follows, so each neuron's sources have theirs when
// it is reached. An added neuron takes its level when a neuron reads it, or
// at the end, by a search through the added neurons that feed it. False
// where the order does not hold: an added connection from a neuron at or
// past its target (directly or through added neurons), or a cycle among
// added neurons.
bool Topology::patch_levels(const Patch& patch, std::vector<int64_t>& level) const {
  const int64_t n = num_neurons(), grown = static_cast<int64_t>(patch.removed_into.size());
  const std::vector<int64_t>& into = patch.into;
  const std::vector<int64_t>& into_begin = patch.into_begin;
  constexpr int64_t kUnknown = -1, kOpen = -2;
  level.assign(grown, kUnknown);
  std::vector<std::pair<int64_t, int64_t>> open;  // added neurons being settled, with the next source to read
  // Settles added neuron a (whose incoming connections are all added ones),
  // every base neuron it reaches back to lying before `bound`.
  auto settle = [&](int64_t a, int64_t bound) {
    open.emplace_back(a, into_begin[a]);
    level[a] = kOpen;
    while (!open.empty()) {
      const int64_t x = open.back().first;
      int64_t& j = open.back().second;
      int64_t pending = -1;
      for (; j < into_begin[x + 1]; ++j) {
        const int64_t s = into[j];
        if (s < n ? s >= bound : level[s] == kOpen) return false;
        if (level[s] == kUnknown) {
          pending = s;
          break;
        }
      }
      if (pending >= 0) {
        level[pending] = kOpen;
        open.emplace_back(pending, into_begin[pending]);
        continue;
      }
      int64_t deepest = 0;
      for (int64_t k = into_begin[x]; k < into_begin[x + 1]; ++k) deepest = std::max(deepest, level[into[k]]);
      level[x] = deepest + 1;
      open.pop_back();
    }
    return true;
  };
  for (int64_t d = 0; d < n; ++d) {
    if (roles_[d] == Role::Input) {
      level[d] = 0;
      continue;
    }
    int64_t deepest = 0;
    for (int64_t c = in_offsets_[d]; c < in_offsets_[d + 1]; ++c)
      if (!patch.gone[c]) deepest = std::max(deepest, level[conn_source_[c]]);
    for (int64_t j = into_begin[d]; j < into_begin[d + 1]; ++j) {
      const int64_t s = into[j];
      if (s < n ? s >= d : level[s] == kUnknown && !settle(s, d)) return false;
      deepest = std::max(deepest, level[s]);
    }
    level[d] = deepest + 1;
  }
  for (int64_t a = n; a < grown; ++a)
    if (level[a] == kUnknown && !settle(a, n)) return false;
  return true;
}

// The outgoing runs and the spec's successor lists: a stable counting sort
// of the new connections by source, visiting targets in spec order, so each
// source's run lists its targets in spec order (as compile() does). The
// sort scatters one array, each slot's connection and target side by side
// in one entry; each source's run and its successor list are the
// same list, so the runs and the successors are then written run by run, in
// order (a scattered write misses the cache: five scattered arrays took
// most of a 1M-connection rewiring's patch, and a second scattered array of
// targets was slower than reading each target through its connection, which
// the shared entry avoids). Looking survivors up through their old
// outgoing runs instead cost a cache miss per connection, and shifting the
// survivors of unchanged runs by their target's offset while looking up the
// rest was no faster either. The spec keeps only the successor lists and
// makes its edge_indices() from them when asked.
void Topology::patch_outgoing(std::shared_ptr<GraphSpec::IndexAdjacency> adjacency) {
  const int64_t n = num_neurons(), m = num_connections();
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
  adjacency->targets.resize(m);
  // Each slot's connection and target, scattered together: in 8 bytes where
  // both fit 32 bits (a 1M-connection rewiring's sort wrote half the memory).
  auto sort = [&](auto index) {
    using Index = decltype(index);
    struct Placed {
      Index connection, target;
    };
    std::unique_ptr<Placed[]> placed(new Placed[m]);  // every entry is written: left uninitialised
    std::vector<int64_t> spec_offset;                 // per dense id: its spec edges' start less its run's
    out_offsets_ = counting_sort_in_parts(
        parts, n,
        [&](int64_t p, auto&& slot_of) {
          for (int64_t u = part_begin[p]; u < part_begin[p + 1]; ++u) {
            const int64_t d = dense_of_index_[u];
            for (int64_t c = in_offsets_[d]; c < in_offsets_[d + 1]; ++c) {
              const int64_t slot = slot_of(conn_source_[c]);
              if (slot < 0) continue;  // counting pass
              placed[slot] = {static_cast<Index>(c), static_cast<Index>(d)};
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
    // The runs, and the spec's successors, run by run.
    share_work(0, n, 1 << 10, [&](int64_t first, int64_t last) {
      for (int64_t s = first; s < last; ++s) {
        for (int64_t slot = out_offsets_[s], e = slot + spec_offset[s]; slot < out_offsets_[s + 1]; ++slot, ++e) {
          out_connections_[slot] = placed[slot].connection;
          out_targets_[slot] = placed[slot].target;
          adjacency->targets[e] = index_of_dense_[placed[slot].target];
        }
      }
    });
  };
  if (std::max(m, n) <= int64_t{UINT32_MAX})
    sort(uint32_t{});
  else
    sort(int64_t{});
  spec_.adjacency_ = std::move(adjacency);
  spec_.edges_by_source_ = true;
}

}  // namespace connex
