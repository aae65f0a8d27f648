#include "connex/sparse_training.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <numeric>
#include <set>
#include <tuple>
#include <unordered_set>

#include <torch/torch.h>

#include "connex/error.h"
#include "config_codec.h"
#include "json_input.h"
#include "edit_build.h"
#include "enum_names.h"
#include "file_io.h"
#include "selection.h"
#include "trace_check.h"
#include "uniform_draw.h"
#include "work_share.h"

namespace connex {

const char* rewire_method_name(RewireMethod method) { return method == RewireMethod::SET ? "set" : "rigl"; }

RewireMethod rewire_method_from_name(const std::string& name) {
  // Either case: "RigL" and "SET" are the enum's (and the papers') spelling.
  if (auto method = enum_from_name(name, kRewireMethods, rewire_method_name)) return *method;
  fail("rewire_method_from_name(): expected {}, got \"{}\"", quoted_names(kRewireMethods, rewire_method_name),
       printable(name));
}

// One group's part of a rewiring, in dense ids of the network being rewired.
// A candidate pair's key is source position * |targets| + target position.
struct GroupPlan {
  std::vector<int64_t> targets;            // the group's neurons
  std::vector<int64_t> sources;            // every neuron of the groups it may grow from
  std::vector<int64_t> source_group_ends;  // sources is one run per source group; these are the runs' ends
  // The candidate pairs connected now: a bit per key while that is small,
  // else found in the topology (a binary search among the target's sources).
  bool bitmap = false;
  std::vector<uint64_t> connected_bits;
  int64_t connected = 0;  // how many candidate pairs are connected now
  int64_t quota = 0;      // how many connections it drops and grows

  int64_t width() const { return static_cast<int64_t>(targets.size()); }
  int64_t candidates() const { return static_cast<int64_t>(sources.size()) * width(); }
  bool is_connected(const Topology& t, int64_t key) const {
    if (bitmap) return connected_bits[key >> 6] >> (key & 63) & 1;
    return t.connection_index(sources[key / width()], targets[key % width()]) >= 0;
  }
};

struct Rewirer::Plan {
  std::vector<GroupPlan> groups;                  // by group; group 0 (the inputs) is empty
  std::vector<int64_t> drop;                      // connection indices
  std::vector<std::pair<int64_t, int64_t>> grow;  // (source, target) dense ids
};

namespace {

// Groups with at most this many candidate pairs keep a bitmap of them (4 MiB).
constexpr int64_t kBitmapLimit = int64_t{1} << 25;
// RigL scores at most this many candidate pairs at once (16 MiB in float).
constexpr int64_t kScoreChunk = int64_t{1} << 22;

// Records which of the group's candidate pairs are connected now. `position`
// (dense id -> -1) is returned as it came.
void mark_connected(const Topology& t, GroupPlan& group, std::vector<int64_t>& position) {
  for (size_t s = 0; s < group.sources.size(); ++s) position[group.sources[s]] = static_cast<int64_t>(s);
  const int64_t width = group.width();
  group.bitmap = group.candidates() <= kBitmapLimit;
  if (group.bitmap) group.connected_bits.assign((group.candidates() + 63) / 64, 0);
  for (int64_t k = 0; k < width; ++k)
    for (int64_t c = t.in_offsets()[group.targets[k]]; c < t.in_offsets()[group.targets[k] + 1]; ++c) {
      const int64_t s = position[t.conn_source()[c]];
      if (s < 0) continue;
      ++group.connected;
      if (group.bitmap) group.connected_bits[(s * width + k) >> 6] |= uint64_t{1} << ((s * width + k) & 63);
    }
  for (int64_t s : group.sources) position[s] = -1;
}

// `t` where its dtype is float32 or float64, else in float32: bfloat16 and
// float16 values rank as their float values do, and the ranking loops are
// written for the two.
torch::Tensor ranked_as_float(torch::Tensor t) {
  return t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble ? t : t.to(torch::kFloat);
}

// The rewired network, built in positions rather than labels: the base's
// edges less the dropped connections, then the grown pairs, over the same
// neurons, grown connections at 0 (what the editor's function-preserving
// edit gives).
EditResult build_rewired(const NeuralNetwork& network, const std::vector<int64_t>& drop,
                         const std::vector<std::pair<int64_t, int64_t>>& grow) {
  const Topology& t = network->topology();
  const GraphSpec& spec = network->spec();
  auto options = edited_options(network->options(), network->options().dropout_p(), 0, !grow.empty(),
                                [](const NeuronId&) { return true; });
  // The topology is patched, in a few passes over the connections, unless a
  // topo_sort ordered the base's neurons in a way the edited network would
  // not keep.
  if (!network->options().topo_sort()) {
    auto compile = compile_options(options);
    compile.context = "Rewirer::rewire()";
    ConnectionArray old_connection;
    if (auto patched = t.with_connections(drop, grow, compile, old_connection))
      return build_patched(network, std::move(patched), std::move(options), old_connection, true, false);
  }
  std::vector<int64_t> same(spec.num_neurons());
  std::iota(same.begin(), same.end(), 0);
  auto edges = surviving_edges(t, drop, same, grow.size());
  for (const auto& [source, target] : grow) edges.emplace_back(t.spec_index_at(source), t.spec_index_at(target));
  GraphSpec rewired(spec.neurons(), std::move(edges), spec.inputs(), spec.outputs(), "Rewirer::rewire()");
  return build_edited(network, std::move(rewired), std::move(options), std::move(same), true);
}

void require_plain_levels(const NeuralNetworkImpl& network, const char* context) {
  if (const LevelOperation* op = operation_changing_gradients(network))
    fail(
        "{} expected a network without per-level operations but adaptive activations (they change what a "
        "connection's gradient is), got {}",
        context, op->name());
}

// The trace's values and pre-activation gradients as [neurons, batch]
// matrices in dense-id order (level 0's gradient rows are zero).
std::pair<torch::Tensor, torch::Tensor> traced_matrices(const NeuralNetwork& network, const LevelTrace& trace,
                                                        const char* context) {
  check_trace(*network, trace, context);
  std::vector<torch::Tensor> values, grads;
  bool any_gradient = false, recorded = false;
  for (size_t l = 0; l < trace.values.size(); ++l) {
    values.push_back(trace.values[l].detach());
    const auto z = l < trace.preactivations.size() ? trace.preactivations[l] : torch::Tensor();
    recorded = recorded || (l > 0 && z.defined() && z.requires_grad());
    // A level the loss does not depend on gets no gradient: it is zero.
    const bool has = l > 0 && z.defined() && z.grad().defined();
    any_gradient = any_gradient || has;
    grads.push_back(has ? z.grad().detach() : torch::zeros_like(values.back()));
  }
  if (!recorded)
    fail("{}: the trace was made without gradients (under torch::NoGradGuard, or with every parameter frozen)",
         context);
  if (!any_gradient)
    fail("{}: the trace has no gradient; call loss.backward() on the traced forward's loss first", context);
  return {torch::cat(values), torch::cat(grads)};
}

// A candidate's score and key; larger scores first, equal ones by key.
using Scored = std::pair<double, int64_t>;
bool before(const Scored& a, const Scored& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; }

// Keeps the `count` of `best` that come first in that order (in no particular order).
void keep_largest(std::vector<Scored>& best, int64_t count) { keep_smallest(best, static_cast<size_t>(count), before); }

// |a · b| as a contiguous CPU tensor. On the CPU the rows are split among
// connex's threads: the product may run where BLAS has one thread.
torch::Tensor absolute_products(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.is_cpu()) return torch::mm(a, b).abs_().cpu().contiguous();
  auto out = torch::empty({a.size(0), b.size(1)}, a.options());
  share_work(0, a.size(0), 64, [&](int64_t first, int64_t last) {
    auto part = out.slice(0, first, last);
    torch::mm_out(part, a.slice(0, first, last), b);
    part.abs_();
  });
  return out;
}

// Appends to `best` the `count` largest non-negative, non-NaN scores of
// score[0, size) (key: first_key + position) that exceed `exceeding` (when >= 0),
// in linear time: a histogram of the scores' top bits (a non-negative
// float's bits order as its values do; a float's top 12 are its exponent and
// 3 mantissa bits, an eighth of an octave) finds the bucket where the count
// is reached; only that bucket is ordered.
template <typename Scalar>
void append_largest(const Scalar* score, int64_t size, int64_t first_key, int64_t count, std::vector<Scored>& best,
                    double exceeding = -1) {
  using Bits = std::conditional_t<sizeof(Scalar) == 4, uint32_t, uint64_t>;
  constexpr int bucket_bits = sizeof(Scalar) == 4 ? 12 : 16;
  constexpr int shift = static_cast<int>(sizeof(Bits)) * 8 - bucket_bits;
  constexpr int64_t buckets = int64_t{1} << bucket_bits;
  // The passes below read the scores as bits through a local pointer and
  // hold every bound in a local: a bound read through the closure is loaded
  // again after each store to a count, and each pass is a few instructions a
  // score.
  const Bits* bits = reinterpret_cast<const Bits*>(score);
  static_assert(sizeof(Bits) == sizeof(Scalar), "a score's bits");
  Bits limit_bits;  // +infinity: anything above is negative or NaN
  const Scalar infinity = std::numeric_limits<Scalar>::infinity();
  std::memcpy(&limit_bits, &infinity, sizeof limit_bits);
  const Bits limit = limit_bits;
  // The least bits that count: every non-negative score, or those past `exceeding`.
  Bits least = 0;
  if (exceeding >= 0) {
    const Scalar bound = static_cast<Scalar>(std::fabs(exceeding));  // -0 counts as +0
    std::memcpy(&least, &bound, sizeof least);
    ++least;
  }
  constexpr int64_t kChunk = int64_t{1} << 18;
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  std::vector<std::vector<uint32_t>> histograms(chunks);  // a chunk's counts fit 32 bits
  share_work(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t h = first; h < last; ++h) {
      histograms[h].assign(buckets + 1, 0);  // the last counts what is negative or NaN
      uint32_t* histogram = histograms[h].data();
      const Bits* b = bits;
      const Bits high = limit, low = least;
      for (int64_t i = h * kChunk, end = std::min(size, (h + 1) * kChunk); i < end; ++i)
        ++histogram[b[i] <= high && b[i] >= low ? b[i] >> shift : buckets];
    }
  });
  int64_t above = 0, bucket = buckets - 1;
  for (; bucket >= 0; --bucket) {
    int64_t here = 0;
    for (const auto& histogram : histograms) here += histogram[bucket];
    if (above + here >= count) break;
    above += here;
  }
  // Chunk by chunk, in order: every score above the bucket, and the bucket's
  // to be ordered (none where every score is wanted: bucket -1). Bits in
  // [floor, limit] are in the bucket or above, above it past bucket_end.
  const bool all = bucket < 0;
  const Bits floor = all ? least : std::max(least, static_cast<Bits>(static_cast<Bits>(bucket) << shift));
  const Bits bucket_end = all || bucket + 1 >= buckets ? limit : (static_cast<Bits>(bucket + 1) << shift) - 1;
  std::vector<std::vector<Scored>> taken(chunks), boundary(chunks);
  share_work(0, chunks, 1, [&](int64_t first, int64_t last) {
    const Bits* b = bits;
    const Scalar* s = score;
    const int64_t key = first_key;
    const Bits low = floor, high = limit, middle = bucket_end;
    const bool every = all;
    for (int64_t h = first; h < last; ++h) {
      std::vector<Scored>& in_taken = taken[h];
      std::vector<Scored>& in_boundary = boundary[h];
      for (int64_t i = h * kChunk, end = std::min(size, (h + 1) * kChunk); i < end; ++i) {
        const Bits v = b[i];
        if (v < low || v > high) continue;
        (every || v > middle ? in_taken : in_boundary).emplace_back(static_cast<double>(s[i]), key + i);
      }
    }
  });
  std::vector<Scored> rest;
  for (int64_t h = 0; h < chunks; ++h) {
    best.insert(best.end(), taken[h].begin(), taken[h].end());
    rest.insert(rest.end(), boundary[h].begin(), boundary[h].end());
  }
  keep_largest(rest, count - above);
  best.insert(best.end(), rest.begin(), rest.end());
}

// The connection index in a weakness key.
int64_t index_of_key(uint64_t key) { return static_cast<int64_t>(key & 0xffffffffu); }
int64_t index_of_key(const std::pair<uint64_t, int64_t>& key) { return key.second; }

// Each group's connections to drop, and its quota set to their number:
// the weakest of all but each target's strongest connection, at most the
// share and the group's absent candidates. Never dropped either: the
// connections `frozen` marks (null: none), and each hidden neuron's strongest
// outgoing one. key(c) orders connections as the walk does (|w|, then
// index). Groups run on connex's threads (share_work).
template <typename KeyOf>
std::vector<std::vector<int64_t>> select_weakest(const Topology& t, double share, std::vector<GroupPlan>& groups,
                                                 const uint8_t* frozen, const KeyOf& key) {
  using Key = decltype(key(0));
  // One pass in connection order finds each hidden neuron's strongest
  // outgoing connection: a neuron that lost its last one would reach no
  // output (dead, its incoming connections wasted on nothing).
  std::vector<uint8_t> kept(t.num_connections(), 0);
  {
    std::vector<Key> best(t.num_neurons());
    std::vector<int64_t> best_at(t.num_neurons(), -1);
    for (int64_t c = 0; c < t.num_connections(); ++c) {
      const int64_t s = t.conn_source()[c];
      if (t.role(s) != Role::Hidden) continue;
      const Key k = key(c);
      if (best_at[s] < 0 || best[s] < k) best[s] = k, best_at[s] = c;
    }
    for (int64_t c : best_at)
      if (c >= 0) kept[c] = 1;
    if (frozen)
      for (int64_t c = 0; c < t.num_connections(); ++c) kept[c] |= frozen[c];
  }
  std::vector<std::vector<int64_t>> dropped(groups.size());
  std::vector<uint8_t> marked(t.num_connections(), 0);  // groups own disjoint connections
  share_work(1, static_cast<int64_t>(groups.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      GroupPlan& group = groups[g];
      group.quota = 0;
      std::vector<Key> eligible;
      int64_t count = 0;
      for (int64_t d : group.targets) count += t.in_offsets()[d + 1] - t.in_offsets()[d];
      eligible.reserve(count);
      for (int64_t d : group.targets) {
        const int64_t begin = t.in_offsets()[d], end = t.in_offsets()[d + 1];
        if (end - begin <= 1) continue;
        // The strongest incoming connection stays: taken back out when it
        // went in (a kept one stays anyway).
        Key strongest = key(begin);
        int64_t strongest_at = -1;  // its place in `eligible`, if there
        for (int64_t c = begin; c < end; ++c) {
          const Key k = key(c);
          const bool strongest_so_far = c == begin || strongest < k;
          if (strongest_so_far) strongest = k, strongest_at = -1;
          if (kept[c]) continue;
          if (strongest_so_far) strongest_at = static_cast<int64_t>(eligible.size());
          eligible.push_back(k);
        }
        if (strongest_at >= 0) {
          std::swap(eligible[strongest_at], eligible.back());
          eligible.pop_back();
        }
      }
      const int64_t absent = group.candidates() - group.connected;
      const int64_t wanted = std::min({static_cast<int64_t>(std::llround(share * static_cast<double>(count))), absent,
                                       static_cast<int64_t>(eligible.size())});
      if (wanted <= 0) continue;
      keep_smallest(eligible, static_cast<size_t>(wanted));
      // Listed in ascending index (marked, then read off the group's runs):
      // the topology's patch then reads each dropped connection in order.
      // The walk writes every index and moves on past the marked ones (a
      // branch on a mark, which falls at random, cost most of the walk);
      // the entry past the last takes the writes after it.
      for (const Key& k : eligible) marked[index_of_key(k)] = 1;
      std::vector<int64_t>& out = dropped[g];
      out.resize(wanted + 1);
      int64_t next = 0;
      for (int64_t d : group.targets)
        for (int64_t c = t.in_offsets()[d], end = t.in_offsets()[d + 1]; c < end; ++c) {
          out[std::min(next, wanted)] = c;
          next += marked[c];
        }
      out.resize(wanted);
      group.quota = wanted;
    }
  });
  return dropped;
}

}  // namespace

RewireGroups RewireGroups::of_levels(const NeuralNetwork& network) {
  const Topology& t = network->topology();
  const size_t levels = t.levels().size();
  RewireGroups groups;
  groups.members.assign(levels, {});
  std::vector<std::set<int64_t>> feeds(levels);
  for (int64_t d = 0; d < t.num_neurons(); ++d) groups.members[t.level_of(d)].push_back(t.label(d));
  for (int64_t c = 0; c < t.num_connections(); ++c)
    feeds[t.level_of(t.conn_target()[c])].insert(t.level_of(t.conn_source()[c]));
  for (const auto& f : feeds) groups.grows_from.emplace_back(f.begin(), f.end());
  return groups;
}

nlohmann::json RewireGroups::to_json() const {
  nlohmann::json out{{"members", nlohmann::json::array()}, {"grows_from", grows_from}};
  for (const auto& group : members) {
    auto& ids = out["members"].emplace_back(nlohmann::json::array());
    for (const auto& id : group) ids.push_back(id_to_json(id));
  }
  return out;
}

RewireGroups RewireGroups::from_json(const nlohmann::json& json, const std::string& source, const std::string& path) {
  const char* expected = "{\"members\": [[neuron ids], ...], \"grows_from\": [[groups], ...]}";
  const std::string at = path.empty() ? source : fmt::format("{}: {}", source, path);
  auto lists = [&](const char* key) -> const nlohmann::json& {
    if (!json.is_object() || !json.contains(key) || !json.at(key).is_array())
      fail("{}: expected {}, got {}", at, expected, detail::excerpt(json));
    for (const auto& list : json.at(key))
      if (!list.is_array())
        fail("{}: {}/{} must hold one list per group, got {}", source, path, key, detail::excerpt(list));
    return json.at(key);
  };
  detail::only_keys(json, {"members", "grows_from"}, "rewire groups", at);
  RewireGroups groups;
  const auto& members = lists("members");
  for (size_t g = 0; g < members.size(); ++g) {
    groups.members.emplace_back();
    for (size_t k = 0; k < members[g].size(); ++k)
      groups.members.back().push_back(id_from_json(members[g][k], source, fmt::format("{}/members/{}/{}", path, g, k)));
  }
  const auto& grows_from = lists("grows_from");
  for (size_t g = 0; g < grows_from.size(); ++g) {
    groups.grows_from.emplace_back();
    for (const auto& h : grows_from[g]) {
      if (!h.is_number_integer() || (h.is_number_unsigned() && h.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
        fail("{}: {}/grows_from/{} must list group numbers, got {}", source, path, g, detail::excerpt(h));
      groups.grows_from.back().push_back(h.get<int64_t>());
    }
  }
  return groups;
}

Rewirer::Rewirer(const NeuralNetwork& network, RewireOptions options)
    : Rewirer(network, RewireGroups::of_levels(network), options) {}

Rewirer::Rewirer(const NeuralNetwork& network, RewireGroups groups, RewireOptions options)
    : options_(options), random_(options.seed()) {
  if (options.method() != RewireMethod::SET && options.method() != RewireMethod::RigL)
    fail("Rewirer(): expected a RewireMethod (SET or RigL), got {}", static_cast<int>(options.method()));
  if (!(options.drop_fraction() >= 0 && options.drop_fraction() < 1))
    fail("Rewirer(): expected drop_fraction in [0, 1), got {}", options.drop_fraction());
  if (options.end_step() < 0) fail("Rewirer(): expected end_step >= 0, got {}", options.end_step());
  if (options.method() == RewireMethod::RigL) require_plain_levels(*network, "Rewirer(): RigL");
  if (groups.members.empty() || groups.grows_from.size() != groups.members.size())
    fail("Rewirer(): expected members and grows_from for each group alike, got {} and {} lists", groups.members.size(),
         groups.grows_from.size());
  for (size_t g = 0; g < groups.grows_from.size(); ++g) {
    const auto& from = groups.grows_from[g];
    for (size_t i = 0; i < from.size(); ++i)
      if (from[i] < 0 || from[i] >= static_cast<int64_t>(g) || (i > 0 && from[i] <= from[i - 1]))
        fail("Rewirer(): group {} may grow only from earlier groups, in ascending order, got {}", g,
             detail::excerpt(nlohmann::json(from)));
  }
  const Topology& t = network->topology();
  members_ = std::move(groups.members);
  group_sources_ = std::move(groups.grows_from);
  num_neurons_ = t.num_neurons();
  for (const auto& group : members_) {
    roles_.emplace_back();
    for (const auto& id : group) roles_.back().push_back(t.role(t.require(id, "Rewirer()")));
  }
  dense_groups(t, "Rewirer()");
}

// Each group's neurons in dense ids, members_' order. Checks that every
// neuron is in one group, with the role it had (the same labels may name
// another network's neurons), the inputs alone in group 0, and that no
// connection runs from a group to an earlier one: growth only ever adds
// connections to later groups, so with that the graph stays acyclic.
std::vector<std::vector<int64_t>> Rewirer::dense_groups(const Topology& t, const char* context) const {
  auto a_role = [](Role role) { return fmt::format("{} {}", role == Role::Hidden ? "a" : "an", role_name(role)); };
  std::vector<int64_t> group_of(t.num_neurons(), -1);
  std::vector<std::vector<int64_t>> dense(members_.size());
  for (size_t g = 0; g < members_.size(); ++g)
    for (size_t k = 0; k < members_[g].size(); ++k) {
      const int64_t d = t.require(members_[g][k], context);
      if (t.role(d) != roles_[g][k])
        fail(
            "{}: neuron {} was {} neuron when the Rewirer was made and is {} one now (another network with the "
            "same labels?); make a Rewirer for this network",
            context, members_[g][k], a_role(roles_[g][k]), a_role(t.role(d)));
      if (group_of[d] == static_cast<int64_t>(g))
        fail("{}: neuron {} is listed twice in group {}", context, members_[g][k], g);
      if (group_of[d] >= 0) fail("{}: neuron {} is in groups {} and {}", context, members_[g][k], group_of[d], g);
      if ((g == 0) != (t.role(d) == Role::Input))
        fail("{}: group 0 holds the inputs, and only them; got {} neuron {} in group {}", context, role_name(t.role(d)),
             members_[g][k], g);
      group_of[d] = static_cast<int64_t>(g);
      dense[g].push_back(d);
    }
  for (int64_t d = 0; d < t.num_neurons(); ++d)
    if (group_of[d] < 0) fail("{}: neuron {} of the network is in no group", context, t.label(d));
  // The first connection against the order, found in parallel.
  std::atomic<int64_t> first_bad{t.num_connections()};
  share_work(0, t.num_connections(), 1 << 16, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c)
      if (group_of[t.conn_source()[c]] > group_of[t.conn_target()[c]]) {
        int64_t seen = first_bad.load();
        while (c < seen && !first_bad.compare_exchange_weak(seen, c)) {
        }
        return;
      }
  });
  if (const int64_t c = first_bad.load(); c < t.num_connections()) {
    const int64_t u = t.conn_source()[c], v = t.conn_target()[c];
    fail(
        "{}: connection {} -> {} runs from group {} back to group {} (the groups are the levels when the Rewirer "
        "was made; growing along them could close a cycle); make a Rewirer for this network",
        context, t.label(u), t.label(v), group_of[u], group_of[v]);
  }
  return dense;
}

double Rewirer::drop_fraction(int64_t step) const {
  if (step < 0) fail("Rewirer::drop_fraction(): expected a step >= 0, got {}", step);
  if (options_.end_step() == 0) return options_.drop_fraction();
  if (step >= options_.end_step()) return 0;
  return options_.drop_fraction() / 2 *
         (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(options_.end_step())));
}

EditResult Rewirer::rewire(const NeuralNetwork& network, int64_t step, const LevelTrace* trace) {
  if (step < 0) fail("Rewirer::rewire(): expected a step >= 0, got {}", step);
  const Topology& t = network->topology();
  if (t.num_neurons() != num_neurons_)
    fail("Rewirer::rewire(): expected the network the Rewirer was made for ({} neurons), got one of {}", num_neurons_,
         t.num_neurons());
  const std::vector<std::vector<int64_t>> dense = dense_groups(t, "Rewirer::rewire()");
  // Each group's targets, its candidate sources and which of those pairs are connected now.
  Plan plan;
  plan.groups.resize(members_.size());
  std::vector<int64_t> position(t.num_neurons(), -1);  // dense id -> its place in the group's sources
  for (size_t g = 1; g < members_.size(); ++g) {
    GroupPlan& group = plan.groups[g];
    group.targets = dense[g];
    for (int64_t h : group_sources_[g]) {
      for (int64_t d : dense[h])
        if (t.role(d) != Role::Output) group.sources.push_back(d);  // an output feeds nothing
      group.source_group_ends.push_back(static_cast<int64_t>(group.sources.size()));
    }
    mark_connected(t, group, position);
  }
  drop(network, drop_fraction(step), plan);
  if (options_.method() == RewireMethod::SET) {
    // Drawn from (seed, step) alone, so a rewiring does not depend on the
    // ones before it: a resumed run rewires as the uninterrupted one would.
    random_.seed(options_.seed() ^ (0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(step) + 1)));
    grow_random(network, plan);
  } else if (!plan.drop.empty()) {  // nothing to grow (past end_step, say): no trace needed
    if (!trace) fail("Rewirer::rewire(): RigL expected the trace of a forward pass after loss.backward(), got none");
    grow_by_gradient(network, *trace, plan);
  }

  report_ = {};
  report_.connections_before = network->num_connections();
  report_.dropped = static_cast<int64_t>(plan.drop.size());
  report_.grown = static_cast<int64_t>(plan.grow.size());
  auto result = build_rewired(network, plan.drop, plan.grow);
  report_.connections_after = result.network->num_connections();
  return result;
}

// Each group drops its weakest share (smallest |w|, ties by connection index),
// at most as many as it has absent candidates to grow back, and never a
// neuron's last incoming connection: a neuron that kept none would fall to
// level 1 and leave its group's place in the order. Nor a hidden neuron's
// strongest outgoing one, nor a frozen one (select_weakest). Walking the connections
// weakest first and skipping a neuron's last one drops exactly the weakest
// of all but each neuron's strongest connection, so that is what is selected
// (in linear time, groups on connex's threads).
void Rewirer::drop(const NeuralNetwork& network, double share, Plan& plan) const {
  const auto w = ranked_as_float(network->weight_tensor().detach().cpu().contiguous());
  // Frozen connections (a zero gradient mask) hold the user's weights.
  torch::Tensor frozen = network->frozen_connections();
  frozen = frozen.any().item<bool>() ? frozen.to(torch::kUInt8).contiguous() : torch::Tensor();
  const uint8_t* frozen_at = frozen.defined() ? frozen.data_ptr<uint8_t>() : nullptr;
  std::vector<std::vector<int64_t>> dropped;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "Rewirer::drop", [&] {
    const scalar_t* weight = w.data_ptr<scalar_t>();
    // A float's key packs its bits and the index into 64 bits (connex builds
    // fewer than 2^32 connections); a double's is a pair.
    if (std::is_same<scalar_t, float>::value && w.numel() < (int64_t{1} << 32))
      dropped = select_weakest(network->topology(), share, plan.groups, frozen_at, [weight](int64_t c) {
        const float magnitude = std::abs(static_cast<float>(weight[c]));
        uint32_t bits;
        std::memcpy(&bits, &magnitude, sizeof bits);
        return uint64_t{bits} << 32 | static_cast<uint64_t>(c);
      });
    else
      dropped = select_weakest(network->topology(), share, plan.groups, frozen_at, [weight](int64_t c) {
        const double magnitude = std::abs(static_cast<double>(weight[c]));
        uint64_t bits;
        std::memcpy(&bits, &magnitude, sizeof bits);
        return std::make_pair(bits, c);
      });
  });
  for (const auto& list : dropped) plan.drop.insert(plan.drop.end(), list.begin(), list.end());
}

// SET: each group's quota drawn uniformly among its absent candidate pairs.
void Rewirer::grow_random(const NeuralNetwork& network, Plan& plan) {
  const Topology& t = network->topology();
  int64_t total = 0;
  for (const GroupPlan& group : plan.groups) total += group.quota;
  plan.grow.reserve(total);
  for (size_t g = 1; g < plan.groups.size(); ++g) {
    const GroupPlan& group = plan.groups[g];
    if (group.quota <= 0) continue;
    const int64_t width = group.width(), candidates = group.candidates();
    const int64_t absent = candidates - group.connected;
    std::vector<int64_t> chosen;
    if (absent < candidates / 4) {
      // Nearly full: list the absent pairs and take a random quota of them.
      for (int64_t key = 0; key < candidates; ++key)
        if (!group.is_connected(t, key)) chosen.push_back(key);
      for (int64_t k = 0; k < group.quota; ++k)
        std::swap(chosen[k], chosen[k + static_cast<int64_t>(uniform_below(random_, chosen.size() - k))]);
      chosen.resize(group.quota);
    } else {
      // At least a quarter absent: rejection takes at most four draws per pair
      // on average. With a bitmap, a copy of it marks the chosen pairs too.
      std::vector<uint64_t> marked = group.bitmap ? group.connected_bits : std::vector<uint64_t>{};
      std::unordered_set<int64_t> taken;
      while (static_cast<int64_t>(chosen.size()) < group.quota) {
        const auto key = static_cast<int64_t>(uniform_below(random_, candidates));
        bool fresh;
        if (group.bitmap) {
          uint64_t& word = marked[key >> 6];
          const uint64_t bit = uint64_t{1} << (key & 63);
          fresh = !(word & bit);
          word |= bit;
        } else {
          fresh = !group.is_connected(t, key) && taken.insert(key).second;
        }
        if (fresh) chosen.push_back(key);
      }
    }
    for (int64_t key : chosen) plan.grow.emplace_back(group.sources[key / width], group.targets[key % width]);
  }
}

// RigL's quota for one group in one pass over its products, where a sample
// brackets the cut: the scores of absent candidates drawn at random give a
// score above which about the quota lies, give or take 6 standard
// deviations either side. Each slice of source rows then keeps, straight
// after its product and while it is in cache, only scores at or above the
// bracket's lower end (a few hundredths); nothing else is stored or read
// again (the exact selection below writes every score and reads them twice:
// most of a rewiring at 1M connections). Appends to `best` exactly what the
// exact selection gives and returns true; false (nothing appended) where the
// group is small, the bracket would hold much of it, or the sample missed.
bool largest_from_sample(const Topology& t, const GroupPlan& group, const torch::Tensor& values,
                         const torch::Tensor& target_rows, std::vector<Scored>& best) {
  const int64_t width = group.width(), candidates = group.candidates();
  const int64_t absent = candidates - group.connected;
  if (candidates < (int64_t{1} << 16) || absent <= 0 || !values.is_cpu()) return false;
  // Drawn at random (a fixed seed: the rewiring stays reproducible), not
  // evenly spaced, which with a power-of-two width met a handful of columns.
  const int64_t wanted = std::min<int64_t>(int64_t{1} << 13, candidates / 16);
  std::mt19937_64 random(0x5EED);
  std::vector<int64_t> sample_rows, sample_columns;
  for (int64_t k = 0; k < wanted; ++k) {
    const auto key = static_cast<int64_t>(uniform_below(random, static_cast<uint64_t>(candidates)));
    if (group.is_connected(t, key)) continue;
    sample_rows.push_back(group.sources[key / width]);
    sample_columns.push_back(key % width);
  }
  const auto sampled = static_cast<int64_t>(sample_rows.size());
  if (sampled < (int64_t{1} << 10)) return false;
  const auto sample_scores = ranked_as_float((values.index_select(0, torch::tensor(sample_rows)) *
                                              target_rows.index_select(0, torch::tensor(sample_columns)))
                                                 .sum(1)
                                                 .abs_())
                                 .to(torch::kDouble)
                                 .contiguous();
  std::vector<double> sample(sample_scores.data_ptr<double>(), sample_scores.data_ptr<double>() + sampled);
  // A NaN score (products that overflowed either way) would break the sort's order.
  if (std::any_of(sample.begin(), sample.end(), [](double v) { return std::isnan(v); })) return false;
  std::sort(sample.begin(), sample.end(), std::greater<double>());
  // Sorted largest first: the bracket's far end is its low score.
  const SampleBracket bracket =
      sample_bracket(static_cast<double>(group.quota), static_cast<double>(absent), static_cast<size_t>(sampled));
  const int64_t low_rank = bracket.far, high_rank = bracket.near;
  if (low_rank >= sampled / 4) return false;  // a quarter of the group or more: the exact selection
  const double low = sample[low_rank];
  const double high = high_rank >= 0 ? sample[high_rank] : HUGE_VAL;
  // Scores tied at `low` pass too (all of them where most scores are 0: dead
  // sources, a level without gradient): the share of the sample at or above
  // it decides, and the pass gives up once it has listed 4 times what that
  // share predicts (connected pairs included).
  const auto at_least_low = std::count_if(sample.begin(), sample.end(), [&](double v) { return v >= low; });
  if (at_least_low >= sampled / 4) return false;
  const int64_t room = 4 * (at_least_low + 1) * (candidates / sampled + 1) + (int64_t{1} << 12);
  std::atomic<int64_t> listed{0};
  std::atomic<bool> overflow{false};
  // Slices of up to 64 source rows and 2^18 scores (1 MB in float, so a
  // slice stays in cache while it is read), each product in a buffer of its own.
  const int64_t rows = static_cast<int64_t>(group.sources.size());
  const int64_t slice = std::clamp<int64_t>((int64_t{1} << 18) / width, 1, 64);
  const int64_t slices = (rows + slice - 1) / slice;
  std::vector<std::vector<Scored>> taken(slices), boundary(slices);
  const auto target_columns = target_rows.t();
  share_work(0, slices, 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> hits(static_cast<size_t>(slice * width));
    for (int64_t p = first; p < last && !overflow; ++p) {
      const int64_t begin = p * slice, end = std::min(rows, begin + slice);
      std::vector<int64_t> sources(group.sources.begin() + begin, group.sources.begin() + end);
      const auto block =
          ranked_as_float(torch::mm(values.index_select(0, torch::tensor(sources)), target_columns)).contiguous();
      AT_DISPATCH_FLOATING_TYPES(block.scalar_type(), "largest_from_sample", [&] {
        const scalar_t* score = block.data_ptr<scalar_t>();
        const int64_t size = block.numel();
        // The scores at or above `low` (a sample score, so one of this
        // type: compared exactly), listed without a branch; NaN is not.
        const auto bound = static_cast<scalar_t>(low);
        int64_t* hit = hits.data();
        int64_t count = 0;
        for (int64_t i = 0; i < size; ++i) {
          hit[count] = i;
          count += std::abs(score[i]) >= bound;
        }
        if (overflow || (listed += count) > room) {
          overflow = true;
          return;
        }
        for (int64_t h = 0; h < count; ++h) {
          const int64_t key = begin * width + hit[h];
          if (group.is_connected(t, key)) continue;
          const double v = std::abs(static_cast<double>(score[hit[h]]));
          (v > high ? taken[p] : boundary[p]).emplace_back(v, key);
        }
      });
    }
  });
  if (overflow) return false;
  std::vector<Scored> above, rest;
  for (int64_t p = 0; p < slices; ++p) {
    above.insert(above.end(), taken[p].begin(), taken[p].end());
    rest.insert(rest.end(), boundary[p].begin(), boundary[p].end());
    std::vector<Scored>().swap(taken[p]);
    std::vector<Scored>().swap(boundary[p]);
  }
  const auto quota = static_cast<size_t>(group.quota);
  if (above.size() > quota || above.size() + rest.size() < quota) return false;
  keep_largest(rest, static_cast<int64_t>(quota - above.size()));
  best.insert(best.end(), above.begin(), above.end());
  best.insert(best.end(), rest.begin(), rest.end());
  return true;
}

// RigL: per group and source group, one [sources, targets] block of
// |values · gradientsᵀ| (the gradient each absent pair would have), the
// connected pairs excluded; the group grows its quota of the largest
// (equal scores in candidate order, so a rewiring is reproducible).
void Rewirer::grow_by_gradient(const NeuralNetwork& network, const LevelTrace& trace, Plan& plan) const {
  const Topology& t = network->topology();
  const auto [values, grads] = traced_matrices(network, trace, "Rewirer::rewire()");
  // A NaN score ranks nowhere: a group would grow fewer than it dropped.
  for (const auto* m : {&values, &grads})
    if (!torch::isfinite(*m).all().item<bool>())
      fail("Rewirer::rewire(): RigL expected finite {} in the trace, got NaN or infinity (a NaN loss?)",
           m == &values ? "values" : "gradients");
  std::vector<int64_t> column(t.num_neurons(), -1);  // dense id -> its place among the group's targets
  for (size_t g = 1; g < plan.groups.size(); ++g) {
    const GroupPlan& group = plan.groups[g];
    if (group.quota <= 0) continue;
    const int64_t width = group.width();
    for (int64_t k = 0; k < width; ++k) column[group.targets[k]] = k;
    const auto target_rows = grads.index_select(0, torch::tensor(group.targets).to(grads.device()));
    const auto target_grads = target_rows.t();
    std::vector<Scored> best;  // the quota largest of the rows scored so far
    // The exact selection over stored scores where the sample cannot serve.
    if (!largest_from_sample(t, group, values, target_rows, best)) {
      // Rows of sources at a time, kScoreChunk scores at most: a level pair of
      // 20,000 × 20,000 neurons would otherwise hold 1.6 GB of scores at once.
      const int64_t rows_at_once = std::max<int64_t>(1, kScoreChunk / width);
      double above = -1;  // the least score in `best` once it holds the quota
      int64_t begin = 0;
      for (int64_t end : group.source_group_ends) {
        for (int64_t first = begin; first < end; first += rows_at_once) {
          const int64_t last = std::min(end, first + rows_at_once);
          std::vector<int64_t> rows(group.sources.begin() + first, group.sources.begin() + last);
          const size_t had = best.size();
          auto block = ranked_as_float(
              absolute_products(values.index_select(0, torch::tensor(rows).to(values.device())), target_grads));
          // The rows' connected pairs, read off each source's outgoing connections
          // (a source feeding several groups has its run read once per group:
          // O(groups fed × connections), small beside the products).
          AT_DISPATCH_FLOATING_TYPES(block.scalar_type(), "grow_by_gradient", [&] {
            scalar_t* score = block.data_ptr<scalar_t>();
            share_work(0, last - first, 64, [&](int64_t from, int64_t to) {
              for (int64_t r = from; r < to; ++r) {
                const int64_t s = rows[r];
                for (int64_t o = t.out_offsets()[s]; o < t.out_offsets()[s + 1]; ++o) {
                  const int64_t k = column[t.out_targets()[o]];
                  if (k >= 0) score[r * width + k] = -1;
                }
              }
            });
            append_largest(score, block.numel(), first * width, group.quota, best, above);
          });
          // Keys grow from chunk to chunk, so once `best` holds the quota, a
          // later score must beat the least of them to count (a tie loses).
          if (static_cast<int64_t>(best.size()) >= group.quota && best.size() != had) {
            keep_largest(best, group.quota);
            above = std::min_element(best.begin(), best.end(), [](const Scored& a, const Scored& b) {
                      return a.first < b.first;
                    })->first;
          }
        }
        begin = end;
      }
      keep_largest(best, group.quota);
    }
    for (const auto& [score, key] : best)
      plan.grow.emplace_back(group.sources[key / width], group.targets[key % width]);
    for (int64_t d : group.targets) column[d] = -1;
  }
}

// An activation scaling leaves both: the trace's z is before it, the values after.
const LevelOperation* operation_changing_gradients(const NeuralNetworkImpl& network) {
  for (const auto& op : network.operations())
    if (!op->scales_activation()) return op.get();
  return nullptr;
}

std::vector<double> absent_connection_gradients(const NeuralNetwork& network, const LevelTrace& trace,
                                                const std::vector<Edge>& edges) {
  constexpr const char* context = "absent_connection_gradients()";
  require_plain_levels(*network, context);
  const Topology& t = network->topology();
  const auto [values, grads] = traced_matrices(network, trace, context);
  std::vector<int64_t> sources, targets;
  for (const auto& [from, to] : edges) {
    const int64_t s = t.require(from, context), d = t.require(to, context);
    if (t.connection_index(s, d) >= 0) fail("{}: connection {} exists", context, edge_str({from, to}));
    if (t.level_of(s) >= t.level_of(d))
      fail("{}: connection {} would not run from a lower level to a higher one (levels {} and {})", context,
           edge_str({from, to}), t.level_of(s), t.level_of(d));
    sources.push_back(s);
    targets.push_back(d);
  }
  if (edges.empty()) return {};
  auto index = [&](const std::vector<int64_t>& ids) { return torch::tensor(ids).to(values.device()); };
  auto products = (values.index_select(0, index(sources)).to(torch::kFloat64) *
                   grads.index_select(0, index(targets)).to(torch::kFloat64))
                      .sum(1)
                      .to(torch::kCPU)
                      .contiguous();
  return {products.data_ptr<double>(), products.data_ptr<double>() + products.numel()};
}

}  // namespace connex
