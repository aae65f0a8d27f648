#include "connex/generators.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <numeric>
#include <random>

#include "connex/error.h"
#include "prebuilt_size.h"
#include "uniform_draw.h"

namespace connex::nn {

namespace {

using Rng = std::mt19937_64;
using IndexEdges = std::vector<std::pair<int64_t, int64_t>>;

// Uniform in [0, n), n >= 1 (uniform_draw.h: the same graph everywhere).
int64_t draw(Rng& rng, int64_t n) { return static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(n))); }

// A uniformly random order of 0..n-1 (Fisher–Yates).
std::vector<int64_t> permutation(Rng& rng, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[draw(rng, i + 1)]);
  return order;
}

// A set of non-negative int64 keys (open addressing, linear probing): the
// samplers' membership test, several times faster than std::unordered_set.
class KeySet {
 public:
  // Room for `inserts` insertions (erased keys still take their slot).
  explicit KeySet(size_t inserts) {
    size_t capacity = 16;
    while (capacity < 2 * inserts) capacity *= 2;
    slots_.assign(capacity, kEmpty);
    mask_ = capacity - 1;
  }
  bool contains(int64_t key) const { return slots_[find(key)] == key; }
  // False when `key` was already in the set.
  bool insert(int64_t key) {
    const size_t i = find(key);
    if (slots_[i] == key) return false;
    slots_[i] = key;
    return true;
  }
  void erase(int64_t key) {
    const size_t i = find(key);
    if (slots_[i] == key) slots_[i] = kErased;
  }

 private:
  static constexpr int64_t kEmpty = -1, kErased = -2;
  // The slot holding `key`, else the empty slot that ends its probe.
  size_t find(int64_t key) const {
    uint64_t h = static_cast<uint64_t>(key);
    h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdULL;
    size_t i = (h ^ (h >> 33)) & mask_;
    while (slots_[i] != key && slots_[i] != kEmpty) i = (i + 1) & mask_;
    return i;
  }
  std::vector<int64_t> slots_;
  size_t mask_ = 0;
};

// A set of keys of [0, space) as one bit each: for spaces at most 64 times
// the keys drawn from them, where scanning it lists the keys in order faster than sorting them.
class Bitmap {
 public:
  explicit Bitmap(int64_t space) : words_((space + 63) / 64, 0) {}
  bool contains(int64_t key) const { return (words_[key >> 6] >> (key & 63)) & 1; }
  bool insert(int64_t key) {
    const uint64_t bit = uint64_t{1} << (key & 63);
    if (words_[key >> 6] & bit) return false;
    words_[key >> 6] |= bit;
    return true;
  }
  void append_sorted(std::vector<int64_t>& keys) const {
    for (size_t i = 0; i < words_.size(); ++i)
      for (uint64_t w = words_[i]; w != 0; w &= w - 1)
        keys.push_back(static_cast<int64_t>(i * 64) + __builtin_ctzll(w));
  }

 private:
  std::vector<uint64_t> words_;
};

// Adds keys to `taken` (holding `have`) until it holds `count`, uniformly among those of
// [0, space) it lacks, passing each to `add`.
template <typename Set, typename Add>
void draw_more(Rng& rng, int64_t space, int64_t have, int64_t count, Set& taken, Add add) {
  const int64_t more = count - have;
  if (more <= 0) return;
  if (count > space / 2) {
    // Mostly full: rejection would retry often; pick among the absent keys (partial Fisher–Yates).
    std::vector<int64_t> absent;
    for (int64_t key = 0; key < space; ++key)
      if (!taken.contains(key)) absent.push_back(key);
    const auto left = static_cast<int64_t>(absent.size());
    for (int64_t i = 0; i < more; ++i) {
      std::swap(absent[i], absent[i + draw(rng, left - i)]);
      taken.insert(absent[i]);
      add(absent[i]);
    }
    return;
  }
  for (int64_t added = 0; added < more;) {
    const int64_t key = draw(rng, space);
    if (taken.insert(key)) {
      add(key);
      ++added;
    }
  }
}

// `count` distinct keys of [0, space), sorted: the (distinct) `fixed` ones
// and the rest uniformly among the others. Which set holds them changes the
// time taken, never the keys.
std::vector<int64_t> sample_keys(Rng& rng, int64_t space, std::vector<int64_t> fixed, int64_t count) {
  const auto have = static_cast<int64_t>(fixed.size());
  if (space / 64 <= count) {
    Bitmap taken(space);
    for (int64_t key : fixed) taken.insert(key);
    draw_more(rng, space, have, count, taken, [](int64_t) {});
    std::vector<int64_t> keys;
    keys.reserve(count);
    taken.append_sorted(keys);
    return keys;
  }
  std::vector<int64_t> keys = std::move(fixed);
  keys.reserve(count);
  KeySet taken(count);
  for (int64_t key : keys) taken.insert(key);
  draw_more(rng, space, have, count, taken, [&](int64_t key) { keys.push_back(key); });
  std::sort(keys.begin(), keys.end());
  return keys;
}

// A random smallest set of (source, target) pairs between layers of n_in and
// n_out neurons that gives every target a source and, with `cover_sources`,
// every source a target: max(n_in, n_out) pairs (n_out without), the larger
// side in random order, the smaller side's random order cycled along it.
IndexEdges covering(Rng& rng, int64_t n_in, int64_t n_out, bool cover_sources) {
  IndexEdges pairs;
  if (!cover_sources) {
    pairs.reserve(n_out);
    for (int64_t target = 0; target < n_out; ++target) pairs.emplace_back(draw(rng, n_in), target);
    return pairs;
  }
  const auto sources = permutation(rng, n_in), targets = permutation(rng, n_out);
  const int64_t n = std::max(n_in, n_out);
  pairs.reserve(n);
  // i ≡ j modulo both sizes means i ≡ j modulo their lcm >= n: no pair repeats.
  for (int64_t i = 0; i < n; ++i) pairs.emplace_back(sources[i % n_in], targets[i % n_out]);
  return pairs;
}

// Neurons 0..n-1 split into inputs (the first), hidden and outputs (the last).
GraphSpec integer_spec(int64_t inputs, int64_t hidden, int64_t outputs, IndexEdges edges, const char* name) {
  std::vector<NeuronId> neurons, input_ids, output_ids;
  neurons.reserve(inputs + hidden + outputs);
  for (int64_t i = 0; i < inputs + hidden + outputs; ++i) neurons.emplace_back(i);
  input_ids.assign(neurons.begin(), neurons.begin() + inputs);
  output_ids.assign(neurons.end() - outputs, neurons.end());
  return GraphSpec(std::move(neurons), std::move(edges), std::move(input_ids), std::move(output_ids), name);
}

// Runs `build`, turning bad_alloc into a message.
template <typename Build>
GraphSpec building(const char* name, double neurons, double connections, Build build) {
  try {
    return build();
  } catch (const std::bad_alloc&) {
    fail("{}: out of memory building {:.3g} neurons and {:.3g} connections", name, neurons, connections);
  }
}

// ------------------------------------------------------------ sparse layers

void check_layers(const std::vector<int64_t>& sizes, const SparseLayersOptions& options, const char* name) {
  if (sizes.size() < 2) fail("{}: expected at least two layer sizes (inputs and outputs), got {}", name, sizes.size());
  double neurons = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (sizes[k] < 1) fail("{}: expected layer sizes >= 1, got sizes[{}] = {}", name, k, sizes[k]);
    neurons += static_cast<double>(sizes[k]);
  }
  // Under the limit, n_in * n_out and every sum of them fit int64.
  check_neuron_count(name, neurons);
  if (!(options.density() > 0 && options.density() <= 1))
    fail("{}: expected density in (0, 1], got {}", name, options.density());
  const auto d = options.distribution();
  if (d != DensityDistribution::Uniform && d != DensityDistribution::ErdosRenyi && d != DensityDistribution::ERK)
    fail("{}: expected a DensityDistribution, got {}", name, static_cast<int>(d));
}

// Integers summing to `total` (the targets' sum, rounded), each within 1 of its target and
// at most its capacity: the floors, plus one for the largest remainders (ties to the earlier pair).
std::vector<int64_t> largest_remainder(const std::vector<double>& target, const std::vector<int64_t>& capacity,
                                       int64_t total) {
  const size_t n = target.size();
  std::vector<int64_t> counts(n);
  std::vector<size_t> order(n);
  int64_t left = total;
  for (size_t k = 0; k < n; ++k) {
    counts[k] = std::min(static_cast<int64_t>(std::floor(target[k])), capacity[k]);
    left -= counts[k];
    order[k] = k;
  }
  auto remainder = [&](size_t k) { return target[k] - static_cast<double>(counts[k]); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder(a) > remainder(b); });
  for (size_t i = 0; i < n && left > 0; ++i)
    if (counts[order[i]] < capacity[order[i]]) ++counts[order[i]], --left;
  return counts;
}

std::vector<int64_t> layer_connections(const std::vector<int64_t>& sizes, const SparseLayersOptions& options,
                                       const char* name) {
  check_layers(sizes, options, name);
  const size_t pairs = sizes.size() - 1;
  const bool by_size = options.distribution() == DensityDistribution::Uniform;
  std::vector<int64_t> capacity(pairs);
  std::vector<double> weight(pairs), target(pairs);
  double total = 0;
  for (size_t k = 0; k < pairs; ++k) {
    capacity[k] = sizes[k] * sizes[k + 1];
    // The share of the total each pair asks for: n_in·n_out (uniform) or ε·(n_in + n_out) (Erdős–Rényi).
    weight[k] = static_cast<double>(by_size ? capacity[k] : sizes[k] + sizes[k + 1]);
    total += static_cast<double>(capacity[k]);
  }
  total *= options.density();
  // Each pair's count within [least, capacity]: least is 0, or with no dead
  // neurons one connection for every neuron that needs one (the larger
  // layer's size; the first pair's inputs need none).
  std::vector<int64_t> least(pairs, 0);
  double least_total = 0;
  if (options.no_dead_neurons())
    for (size_t k = 0; k < pairs; ++k) {
      least[k] = k == 0 ? sizes[1] : std::max(sizes[k], sizes[k + 1]);
      least_total += static_cast<double>(least[k]);
    }
  total = std::max(total, least_total);  // a target below the floors is raised to them
  // The pairs' shares are clamp(λ·weight, least, capacity), λ such that they
  // sum to the total (the sum grows with λ): a pair pushed to a bound stays
  // there and the others share what is left in proportion to their weights.
  auto share = [&](size_t k, double lambda) {
    return std::clamp(lambda * weight[k], static_cast<double>(least[k]), static_cast<double>(capacity[k]));
  };
  double low = 0, high = 0;
  for (size_t k = 0; k < pairs; ++k) high = std::max(high, static_cast<double>(capacity[k]) / weight[k]);
  for (int i = 0; i < 200 && low < high; ++i) {
    const double mid = 0.5 * (low + high);
    double sum = 0;
    for (size_t k = 0; k < pairs; ++k) sum += share(k, mid);
    (sum < total ? low : high) = mid;
  }
  // The free pairs' targets again from the total they share, so that they sum to it exactly.
  double rest = total, rest_weight = 0;
  std::vector<bool> bound(pairs);
  for (size_t k = 0; k < pairs; ++k) {
    const double at = high * weight[k];
    bound[k] = at <= static_cast<double>(least[k]) || at >= static_cast<double>(capacity[k]);
    if (bound[k]) {
      target[k] = share(k, high);
      rest -= target[k];
    } else {
      rest_weight += weight[k];
    }
  }
  for (size_t k = 0; k < pairs; ++k)
    if (!bound[k]) target[k] = rest * weight[k] / rest_weight;
  auto counts = largest_remainder(target, capacity, std::llround(total));
  for (size_t k = 0; k < pairs; ++k) counts[k] = std::max(counts[k], least[k]);
  return counts;
}

}  // namespace

const char* distribution_name(DensityDistribution distribution) {
  switch (distribution) {
    case DensityDistribution::Uniform:
      return "uniform";
    case DensityDistribution::ErdosRenyi:
      return "erdos_renyi";
    case DensityDistribution::ERK:
      return "erk";
  }
  fail("distribution_name(): expected a DensityDistribution, got {}", static_cast<int>(distribution));
}

DensityDistribution distribution_from_name(const std::string& name) {
  if (name == "uniform") return DensityDistribution::Uniform;
  if (name == "erdos_renyi" || name == "er") return DensityDistribution::ErdosRenyi;
  if (name == "erk") return DensityDistribution::ERK;
  fail("distribution_from_name(): expected \"uniform\", \"erdos_renyi\" (or \"er\") or \"erk\", got \"{}\"", name);
}

std::vector<int64_t> sparse_layer_connections(const std::vector<int64_t>& sizes, const SparseLayersOptions& options) {
  return layer_connections(sizes, options, "sparse_layer_connections()");
}

GraphSpec sparse_layered_spec(const std::vector<int64_t>& sizes, const SparseLayersOptions& options) {
  const char* name = "sparse_layered_spec()";
  const auto counts = layer_connections(sizes, options, name);
  const double neurons = std::accumulate(sizes.begin(), sizes.end(), 0.0);
  const int64_t connections = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  check_buildable(name, neurons, static_cast<double>(connections));
  return building(name, neurons, static_cast<double>(connections), [&] {
    Rng rng(options.seed());
    IndexEdges edges;
    edges.reserve(connections);
    int64_t first = 0;  // the id of the source layer's first neuron
    for (size_t k = 0; k + 1 < sizes.size(); ++k) {
      const int64_t n_in = sizes[k], n_out = sizes[k + 1];
      // Pair keys: source * n_out + target, so sorted keys list the edges by source, then target.
      std::vector<int64_t> fixed;
      if (options.no_dead_neurons())
        for (const auto& [s, t] : covering(rng, n_in, n_out, k > 0)) fixed.push_back(s * n_out + t);
      for (int64_t key : sample_keys(rng, n_in * n_out, std::move(fixed), counts[k]))
        edges.emplace_back(first + key / n_out, first + n_in + key % n_out);
      first += n_in;
    }
    const int64_t hidden = static_cast<int64_t>(neurons) - sizes.front() - sizes.back();
    return integer_spec(sizes.front(), hidden, sizes.back(), std::move(edges), name);
  });
}

// --------------------------------------------------------------- random DAG

namespace {

// The levels of a random DAG: level 0 the inputs, the hidden neurons as even
// as can be over levels 1..depth-1, the outputs level depth; start[b] the id
// of level b's first neuron (so the neurons before level b are ids 0..start[b]-1).
struct DagLevels {
  std::vector<int64_t> size, start;
};

DagLevels dag_levels(const RandomDagOptions& o, const char* name) {
  if (o.inputs() < 1) fail("{}: expected inputs >= 1, got {}", name, o.inputs());
  if (o.hidden() < 0) fail("{}: expected hidden >= 0, got {}", name, o.hidden());
  if (o.outputs() < 1) fail("{}: expected outputs >= 1, got {}", name, o.outputs());
  // Before the per-level lists (up to one per hidden neuron) are made.
  check_buildable(
      name, static_cast<double>(o.inputs()) + static_cast<double>(o.hidden()) + static_cast<double>(o.outputs()), 0);
  if (o.depth() < 0) fail("{}: expected depth >= 0, got {}", name, o.depth());
  const int64_t hidden = o.hidden(), depth = o.depth() != 0 ? o.depth() : hidden > 0 ? 2 : 1;
  if (hidden == 0 && depth != 1) fail("{}: expected depth 1 (or 0) without hidden neurons, got {}", name, depth);
  // Each hidden level holds at least one neuron.
  if (hidden > 0 && (depth < 2 || depth - 1 > hidden))
    fail("{}: expected depth in [2, {}] for {} hidden neurons, got {}", name, hidden + 1, hidden, depth);
  DagLevels levels;
  levels.size.push_back(o.inputs());
  for (int64_t b = 1; b < depth; ++b) levels.size.push_back(hidden / (depth - 1) + (b <= hidden % (depth - 1)));
  levels.size.push_back(o.outputs());
  int64_t next = 0;
  for (int64_t n : levels.size) levels.start.push_back(next), next += n;
  return levels;
}

GraphSpec build_dag(const RandomDagOptions& o, const DagLevels& levels, int64_t space, const char* name) {
  const auto depth = static_cast<int64_t>(levels.size.size()) - 1;
  // Keys number the forward pairs by target, then source: the pairs into level b
  // start at offset[b], the target's position in its level times start[b] past it, plus the source.
  std::vector<int64_t> offset(depth + 2, 0);
  for (int64_t b = 1; b <= depth; ++b) offset[b + 1] = offset[b] + levels.size[b] * levels.start[b];
  Rng rng(o.seed());
  std::vector<int64_t> fixed;
  // A predecessor in the level just before puts each neuron exactly at its level; hidden
  // sources covered too give every hidden neuron a successor.
  for (int64_t b = 1; b <= depth; ++b)
    for (const auto& [s, t] : covering(rng, levels.size[b - 1], levels.size[b], b > 1))
      fixed.push_back(offset[b] + t * levels.start[b] + levels.start[b - 1] + s);
  IndexEdges edges;
  edges.reserve(o.connections());
  int64_t b = 1;
  for (int64_t key : sample_keys(rng, space, std::move(fixed), o.connections())) {
    while (key >= offset[b + 1]) ++b;
    const int64_t r = key - offset[b];
    edges.emplace_back(r % levels.start[b], levels.start[b] + r / levels.start[b]);
  }
  return integer_spec(o.inputs(), o.hidden(), o.outputs(), std::move(edges), name);
}

}  // namespace

GraphSpec random_dag_spec(const RandomDagOptions& options) {
  const char* name = "random_dag_spec()";
  const DagLevels levels = dag_levels(options, name);
  // The fewest connections: the coverings between consecutive levels; the most: every forward pair.
  int64_t least = levels.size[1], most = 0;
  for (size_t b = 1; b < levels.size.size(); ++b) {
    if (b > 1) least += std::max(levels.size[b - 1], levels.size[b]);
    most += levels.size[b] * levels.start[b];
  }
  // The range stated is what can be built: every forward pair, up to the build limit.
  const auto allowed = std::min(most, static_cast<int64_t>(kBuildLimit));
  const double neurons = static_cast<double>(levels.start.back() + levels.size.back());
  if (least > allowed) check_buildable(name, neurons, static_cast<double>(least));  // the coverings alone are too many
  if (options.connections() < least || options.connections() > allowed)
    fail("{}: expected connections in [{}, {}] for these sizes and depth, got {}", name, least, allowed,
         options.connections());
  const auto connections = static_cast<double>(options.connections());
  check_buildable(name, neurons, connections);
  return building(name, neurons, connections, [&] { return build_dag(options, levels, most, name); });
}

// -------------------------------------------------------------- small world

namespace {

void check_small_world(const SmallWorldOptions& o, const char* name) {
  if (o.inputs() < 1) fail("{}: expected inputs >= 1, got {}", name, o.inputs());
  if (o.hidden() < 1) fail("{}: expected hidden >= 1, got {}", name, o.hidden());
  if (o.outputs() < 1) fail("{}: expected outputs >= 1, got {}", name, o.outputs());
  const double neurons =
      static_cast<double>(o.inputs()) + static_cast<double>(o.hidden()) + static_cast<double>(o.outputs());
  check_neuron_count(name, neurons);
  if (o.neighbours() < 0 || o.neighbours() % 2 != 0 || o.neighbours() >= o.hidden())
    fail("{}: expected neighbours even and in [0, hidden) = [0, {}), got {}", name, o.hidden(), o.neighbours());
  const double p = o.rewire_probability();
  if (!(p >= 0 && p <= 1)) fail("{}: expected rewire_probability in [0, 1], got {}", name, p);
  check_buildable(name, neurons, static_cast<double>(o.neighbours() / 2) * static_cast<double>(o.hidden()));
}

// Watts–Strogatz: node u joined to u+1..u+k/2 around the ring, then each of those edges,
// in turn, moved with probability p to a node drawn uniformly among those u is not yet
// joined to (kept when u is joined to all). As (low, high) pairs, sorted.
IndexEdges watts_strogatz(Rng& rng, int64_t n, int64_t k, double p) {
  IndexEdges ring;
  ring.reserve(n * (k / 2));
  std::vector<int64_t> degree(n, k);
  KeySet joined(2 * n * (k / 2));  // rewiring inserts once more per edge at most
  auto key = [n](int64_t a, int64_t b) { return std::min(a, b) * n + std::max(a, b); };
  for (int64_t j = 1; j <= k / 2; ++j)
    for (int64_t u = 0; u < n; ++u) ring.emplace_back(u, (u + j) % n), joined.insert(key(u, (u + j) % n));
  for (auto& [u, v] : ring) {
    if (uniform_unit(rng) >= p || degree[u] >= n - 1) continue;
    int64_t w = draw(rng, n);
    while (w == u || joined.contains(key(u, w))) w = draw(rng, n);
    joined.erase(key(u, v));
    joined.insert(key(u, w));
    --degree[v], ++degree[w];
    v = w;
  }
  for (auto& [u, v] : ring)
    if (u > v) std::swap(u, v);
  std::sort(ring.begin(), ring.end());
  return ring;
}

}  // namespace

GraphSpec small_world_dag_spec(const SmallWorldOptions& options) {
  const char* name = "small_world_dag_spec()";
  check_small_world(options, name);
  const int64_t inputs = options.inputs(), hidden = options.hidden(), outputs = options.outputs();
  Rng rng(options.seed());
  const IndexEdges ring = watts_strogatz(rng, hidden, options.neighbours(), options.rewire_probability());
  std::vector<bool> has_predecessor(hidden, false), has_successor(hidden, false);
  for (const auto& [u, v] : ring) has_successor[u] = has_predecessor[v] = true;
  const auto sources = std::count(has_predecessor.begin(), has_predecessor.end(), false),
             sinks = std::count(has_successor.begin(), has_successor.end(), false);
  const double neurons = static_cast<double>(inputs) + static_cast<double>(hidden) + static_cast<double>(outputs);
  const double connections = static_cast<double>(ring.size()) + static_cast<double>(inputs) * sources +
                             static_cast<double>(sinks) * static_cast<double>(outputs);
  check_buildable(name, neurons, connections);
  return building(name, neurons, connections, [&] {
    IndexEdges edges;
    edges.reserve(static_cast<size_t>(connections));
    for (int64_t h = 0; h < hidden; ++h)
      if (!has_predecessor[h])
        for (int64_t i = 0; i < inputs; ++i) edges.emplace_back(i, inputs + h);
    for (const auto& [u, v] : ring) edges.emplace_back(inputs + u, inputs + v);
    for (int64_t h = 0; h < hidden; ++h)
      if (!has_successor[h])
        for (int64_t o = 0; o < outputs; ++o) edges.emplace_back(inputs + h, inputs + hidden + o);
    return integer_spec(inputs, hidden, outputs, std::move(edges), name);
  });
}

}  // namespace connex::nn
