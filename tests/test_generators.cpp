// The random graph generators: exact counts, the density split between layer
// pairs, no dead neurons, exact depth, seeding, and every validation message.
#include <numeric>
#include <chrono>
#include <cmath>
#include <iostream>
#include <limits>

#include "test_util.h"

using namespace connex;
using namespace connex::nn;

namespace {

// The number of connections between each pair of consecutive layers; fails on any other connection.
std::vector<int64_t> pair_counts(const GraphSpec& spec, const std::vector<int64_t>& sizes) {
  std::vector<int64_t> first{0};
  for (int64_t n : sizes) first.push_back(first.back() + n);
  auto layer = [&](int64_t id) {
    return static_cast<size_t>(std::upper_bound(first.begin(), first.end(), id) - first.begin()) - 1;
  };
  std::vector<int64_t> counts(sizes.size() - 1, 0);
  for (const auto& [u, v] : spec.edge_indices()) {
    EXPECT_EQ(layer(v), layer(u) + 1) << u << " -> " << v;
    if (layer(v) == layer(u) + 1) ++counts[layer(u)];
  }
  return counts;
}

SparseLayersOptions sparse(double density, DensityDistribution distribution = DensityDistribution::ErdosRenyi) {
  return SparseLayersOptions().density(density).distribution(distribution).no_dead_neurons(false);
}

// The level (longest path from an input) of each neuron, by id.
std::vector<int64_t> levels(const GraphSpec& spec) { return spec.index_adjacency().batch; }

}  // namespace

TEST(Generators, DistributionNamesRoundTrip) {
  for (auto d : {DensityDistribution::Uniform, DensityDistribution::ErdosRenyi, DensityDistribution::ERK})
    EXPECT_EQ(distribution_from_name(distribution_name(d)), d);
  EXPECT_EQ(distribution_from_name("er"), DensityDistribution::ErdosRenyi);
  EXPECT_THROW_MSG(
      distribution_from_name("ER"),
      "distribution_from_name(): expected \"uniform\", \"erdos_renyi\" (or \"er\") or \"erk\", got \"ER\"");
}

TEST(Generators, CountsAreExactPerLayerPairAndWithinRoundingOfTheirTarget) {
  const std::vector<std::vector<int64_t>> shapes{{30, 50, 40, 10}, {7, 3}, {5, 64, 64, 64, 2}, {100, 1, 100}};
  for (const auto& sizes : shapes)
    for (double density : {0.013, 0.1, 0.37, 0.5, 0.9, 1.0})
      for (auto d : {DensityDistribution::Uniform, DensityDistribution::ErdosRenyi, DensityDistribution::ERK}) {
        SCOPED_TRACE(::testing::Message()
                     << "density " << density << " " << distribution_name(d) << " sizes[1] " << sizes[1]);
        const auto counts = sparse_layer_connections(sizes, sparse(density, d));
        const auto spec = sparse_layered_spec(sizes, sparse(density, d).seed(4));
        EXPECT_EQ(pair_counts(spec, sizes), counts);
        double dense = 0;
        int64_t total = 0;
        for (size_t k = 0; k + 1 < sizes.size(); ++k) {
          const double capacity = static_cast<double>(sizes[k] * sizes[k + 1]);
          dense += capacity;
          total += counts[k];
          EXPECT_LE(counts[k], capacity);
          // Uniform: every pair at the density, to within the rounding.
          if (d == DensityDistribution::Uniform) EXPECT_LT(std::abs(counts[k] - density * capacity), 1.0);
        }
        EXPECT_EQ(total, std::llround(density * dense));
        EXPECT_EQ(static_cast<int64_t>(spec.edge_indices().size()), total);
      }
}

TEST(Generators, ErdosRenyiSharesConnectionsByHand) {
  // {4, 8, 2} at density 0.5: 24 of 48 connections. ε·(4+8) + ε·(8+2) = 24 gives ε = 24/22,
  // targets 13.09 and 10.91; the largest remainder rounds the second up: 13 and 11.
  EXPECT_EQ(sparse_layer_connections({4, 8, 2}, sparse(0.5)), (std::vector<int64_t>{13, 11}));
  EXPECT_EQ(sparse_layer_connections({4, 8, 2}, sparse(0.5, DensityDistribution::ERK)), (std::vector<int64_t>{13, 11}));
  // Uniform: half of each pair.
  EXPECT_EQ(sparse_layer_connections({4, 8, 2}, sparse(0.5, DensityDistribution::Uniform)),
            (std::vector<int64_t>{16, 8}));
  // {2, 8, 8} at 0.25: 20 of 80; ε·10 + ε·16 = 20 gives 7.69 and 12.31: 8 and 12.
  EXPECT_EQ(sparse_layer_connections({2, 8, 8}, sparse(0.25)), (std::vector<int64_t>{8, 12}));
}

TEST(Generators, SaturatedPairsBecomeDenseAndTheRestShareTheRemainder) {
  // {1, 4, 100} at 0.5: 202 of 404. ε = 202/109 asks 9.3 of the first pair's 4: it is made
  // dense, and the second takes the other 198.
  EXPECT_EQ(sparse_layer_connections({1, 4, 100}, sparse(0.5)), (std::vector<int64_t>{4, 198}));
  const auto spec = sparse_layered_spec({1, 4, 100}, sparse(0.5));
  EXPECT_EQ(pair_counts(spec, {1, 4, 100}), (std::vector<int64_t>{4, 198}));
  // {1, 1, 3, 2} at 0.8: 8 of 10. ε = 8/11 makes the first pair dense (1.45 > 1); then ε = 7/9
  // makes the second dense (3.1 > 3); the third takes the last 4.
  EXPECT_EQ(sparse_layer_connections({1, 1, 3, 2}, sparse(0.8)), (std::vector<int64_t>{1, 3, 4}));
  // Density 1: every pair dense, whatever the distribution.
  EXPECT_EQ(sparse_layer_connections({3, 5, 2}, sparse(1.0)), (std::vector<int64_t>{15, 10}));
}

TEST(Generators, NoDeadNeurons) {
  const std::vector<std::vector<int64_t>> shapes{{20, 50, 5, 30, 3}, {1, 40, 1}, {64, 7, 7, 64}, {3, 2}};
  for (const auto& sizes : shapes)
    for (double density : {0.001, 0.05, 0.3})
      for (uint64_t seed : {0, 1, 2}) {
        const auto options = SparseLayersOptions().density(density).seed(seed);
        const auto counts = sparse_layer_connections(sizes, options);
        const auto loose = sparse_layer_connections(sizes, sparse(density));
        // The covering (one connection into each target, one out of each hidden
        // source) counts towards the target: the total stays on it unless the
        // coverings alone exceed it.
        int64_t floors = 0;
        for (size_t k = 0; k + 1 < sizes.size(); ++k) {
          const int64_t least = k == 0 ? sizes[1] : std::max(sizes[k], sizes[k + 1]);
          EXPECT_GE(counts[k], least);
          floors += least;
        }
        const int64_t on_target = std::accumulate(loose.begin(), loose.end(), int64_t{0});
        EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), std::max(on_target, floors))
            << "density " << density;
        auto spec = sparse_layered_spec(sizes, options);
        EXPECT_EQ(pair_counts(spec, sizes), counts);
        NeuralNetwork net(std::move(spec));
        EXPECT_TRUE(dead_neurons(net).empty()) << "density " << density << " seed " << seed;
        EXPECT_EQ(net->topology().depth(), static_cast<int64_t>(sizes.size()) - 1);
      }
}

// A pair raised to its covering takes the extra from the others, by hand:
// 30-128-128-2 at 2 % is 409.6 connections; Erdős–Rényi asks 119, 192.7 and
// 97.9 of the pairs, the first and last are raised to 128, and the middle
// one keeps the 153.6 left (rounded up, the total being 410). Uniform
// 64-256-256-10 at 5 %: the last pair (128 asked) is raised to 256 and the
// first two share 3,968 as 1:4.
TEST(Generators, CoveringsCountTowardsTheTarget) {
  EXPECT_EQ(sparse_layer_connections({30, 128, 128, 2}, SparseLayersOptions().density(0.02)),
            (std::vector<int64_t>{128, 154, 128}));
  EXPECT_EQ(sparse_layer_connections({64, 256, 256, 10},
                                     SparseLayersOptions().density(0.05).distribution(DensityDistribution::Uniform)),
            (std::vector<int64_t>{794, 3174, 256}));
  // Below the coverings' sum, every pair is at its covering.
  EXPECT_EQ(sparse_layer_connections({30, 128, 128, 2}, SparseLayersOptions().density(0.001)),
            (std::vector<int64_t>{128, 128, 128}));
}

TEST(Generators, EdgesAreSortedAndNeverRepeat) {
  // 0.9 picks among the absent pairs; 0.2 draws and rejects repeats, marking the pairs taken
  // in a bitmap; 0.002 of {2000, 2000} (8000 of 4 million pairs) in a hash set.
  for (const auto& [sizes, density] : std::vector<std::pair<std::vector<int64_t>, double>>{
           {{50, 60, 40}, 0.9}, {{50, 60, 40}, 0.2}, {{2000, 2000}, 0.002}}) {
    const auto spec = sparse_layered_spec(sizes, sparse(density).seed(9));
    const auto& edges = spec.edge_indices();
    EXPECT_EQ(pair_counts(spec, sizes), sparse_layer_connections(sizes, sparse(density)));
    EXPECT_TRUE(std::is_sorted(edges.begin(), edges.end()));
    EXPECT_EQ(std::adjacent_find(edges.begin(), edges.end()), edges.end());
  }
}

TEST(Generators, SameSeedSameGraphOtherSeedOtherGraph) {
  const std::vector<int64_t> sizes{10, 30, 30, 4};
  auto layered = [&](uint64_t seed) { return sparse_layered_spec(sizes, SparseLayersOptions().seed(seed)); };
  EXPECT_EQ(layered(5).edge_indices(), layered(5).edge_indices());
  EXPECT_NE(layered(5).edge_indices(), layered(6).edge_indices());
  auto dag = [](uint64_t seed) {
    return random_dag_spec(RandomDagOptions().inputs(5).hidden(40).outputs(3).connections(200).depth(6).seed(seed));
  };
  EXPECT_EQ(dag(5).edge_indices(), dag(5).edge_indices());
  EXPECT_NE(dag(5).edge_indices(), dag(6).edge_indices());
  auto small_world = [](uint64_t seed) {
    return small_world_dag_spec(SmallWorldOptions().hidden(40).neighbours(6).rewire_probability(0.3).seed(seed));
  };
  EXPECT_EQ(small_world(5).edge_indices(), small_world(5).edge_indices());
  EXPECT_NE(small_world(5).edge_indices(), small_world(6).edge_indices());
}

TEST(Generators, RandomDagHasExactlyItsConnectionsAndDepth) {
  struct Case {
    int64_t inputs, hidden, outputs, depth;
  };
  for (const auto& c : std::vector<Case>{{3, 10, 2, 4}, {1, 1, 1, 2}, {4, 0, 3, 1}, {2, 9, 2, 10}, {5, 30, 5, 2}}) {
    // The fewest: each neuron one connection from the level before, each hidden one onward.
    std::vector<int64_t> size{c.inputs};
    for (int64_t b = 1; b < c.depth; ++b)
      size.push_back(c.hidden / (c.depth - 1) + (b <= c.hidden % (c.depth - 1) ? 1 : 0));
    size.push_back(c.outputs);
    int64_t least = size[1], most = 0, before = 0;
    for (size_t b = 1; b < size.size(); ++b) {
      if (b > 1) least += std::max(size[b - 1], size[b]);
      before += size[b - 1];
      most += size[b] * before;
    }
    for (int64_t connections : {least, (least + most) / 2, most - 1, most}) {
      if (connections < least) continue;
      for (uint64_t seed : {0, 1}) {
        auto spec = random_dag_spec(RandomDagOptions()
                                        .inputs(c.inputs)
                                        .hidden(c.hidden)
                                        .outputs(c.outputs)
                                        .connections(connections)
                                        .depth(c.depth)
                                        .seed(seed));
        EXPECT_EQ(static_cast<int64_t>(spec.edge_indices().size()), connections);
        // Every neuron sits exactly at its level: the inputs, then the hidden levels in id order, then the outputs.
        std::vector<int64_t> expected;
        for (size_t b = 0; b < size.size(); ++b) expected.insert(expected.end(), size[b], static_cast<int64_t>(b));
        EXPECT_EQ(levels(spec), expected) << "connections " << connections;
        NeuralNetwork net(std::move(spec));
        EXPECT_EQ(net->topology().depth(), c.depth);
        EXPECT_TRUE(dead_neurons(net).empty());
      }
    }
  }
  // Depth 0: one hidden level, or none without hidden neurons.
  EXPECT_EQ(NeuralNetwork(random_dag_spec(RandomDagOptions().hidden(5).connections(10)))->topology().depth(), 2);
  EXPECT_EQ(NeuralNetwork(random_dag_spec(RandomDagOptions().inputs(3).outputs(2).connections(4)))->topology().depth(),
            1);
}

TEST(Generators, SmallWorldRingAndItsLinks) {
  // p = 0: the ring alone, k·n/2 edges; on a ring of 10 with k = 4, node 0 is the only one
  // without a lower neighbour and node 9 the only one without a higher.
  const auto ring =
      small_world_dag_spec(SmallWorldOptions().inputs(3).hidden(10).outputs(2).neighbours(4).rewire_probability(0));
  int64_t hidden_edges = 0;
  for (const auto& [u, v] : ring.edge_indices()) {
    if (u < 3 || v >= 13) continue;
    ++hidden_edges;
    EXPECT_LT(u, v);
  }
  EXPECT_EQ(hidden_edges, 4 * 10 / 2);
  EXPECT_EQ(static_cast<int64_t>(ring.edge_indices().size()), 20 + 3 + 2);
  // Rewired: still k·n/2 ring edges, all from low to high; every source reads every input, every sink feeds every
  // output, so nothing is dead.
  for (double p : {0.1, 0.5, 1.0})
    for (uint64_t seed : {0, 1, 2}) {
      auto spec = small_world_dag_spec(
          SmallWorldOptions().inputs(2).hidden(30).outputs(3).neighbours(6).rewire_probability(p).seed(seed));
      std::vector<bool> has_in(30, false), has_out(30, false);
      int64_t ring_edges = 0, links = 0;
      for (const auto& [u, v] : spec.edge_indices()) {
        if (u >= 2 && v < 32) {
          ++ring_edges;
          EXPECT_LT(u, v);
          has_out[u - 2] = has_in[v - 2] = true;
        }
      }
      for (int64_t h = 0; h < 30; ++h) links += (has_in[h] ? 0 : 2) + (has_out[h] ? 0 : 3);
      EXPECT_EQ(ring_edges, 6 * 30 / 2);
      EXPECT_EQ(static_cast<int64_t>(spec.edge_indices().size()), ring_edges + links);
      NeuralNetwork net(std::move(spec));
      EXPECT_TRUE(dead_neurons(net).empty());
    }
  // k = n - 1: every node already joined to every other, so no edge can move: the complete graph.
  const auto complete = small_world_dag_spec(SmallWorldOptions().hidden(5).neighbours(4).rewire_probability(1));
  EXPECT_EQ(complete.edge_indices().size(), 10u + 1 + 1);
  // k = 0: no ring; every hidden neuron reads every input and feeds every output.
  EXPECT_EQ(
      small_world_dag_spec(SmallWorldOptions().inputs(2).hidden(3).outputs(4).neighbours(0)).edge_indices().size(),
      3u * (2 + 4));
}

TEST(Generators, ValidationErrorsNameTheFunctionAndTheOption) {
  const auto huge = std::numeric_limits<int64_t>::max();
  EXPECT_THROW_MSG(sparse_layered_spec({5}),
                   "sparse_layered_spec(): expected at least two layer sizes (inputs and outputs), got 1");
  EXPECT_THROW_MSG(sparse_layered_spec({5, 0, 3}),
                   "sparse_layered_spec(): expected layer sizes >= 1, got sizes[1] = 0");
  EXPECT_THROW_MSG(sparse_layer_connections({5, -2}, {}),
                   "sparse_layer_connections(): expected layer sizes >= 1, got sizes[1] = -2");
  EXPECT_THROW_MSG(sparse_layered_spec({5, 3}, SparseLayersOptions().density(1.5)),
                   "sparse_layered_spec(): expected density in (0, 1], got 1.5");
  EXPECT_THROW_MSG(sparse_layered_spec({5, 3}, SparseLayersOptions().density(0)), "expected density in (0, 1], got 0");
  EXPECT_THROW_MSG(sparse_layered_spec({5, 3}, SparseLayersOptions().density(std::nan(""))),
                   "expected density in (0, 1], got nan");
  EXPECT_THROW_MSG(sparse_layered_spec({5, 3}, SparseLayersOptions().distribution(static_cast<DensityDistribution>(7))),
                   "sparse_layered_spec(): expected a DensityDistribution, got 7");
  EXPECT_THROW_MSG(sparse_layered_spec({huge, huge, huge}),
                   "sparse_layered_spec(): 2.77e+19 neurons is more than connex builds (limit 2e+09)");
  EXPECT_THROW_MSG(
      sparse_layered_spec({100000, 100000, 100000}, SparseLayersOptions().density(0.5)),
      "sparse_layered_spec(): 3e+05 neurons and 1e+10 connections is more than connex builds (limit 2e+09 each)");

  auto dag = [] { return RandomDagOptions().inputs(2).hidden(6).outputs(2).depth(3).connections(12); };
  EXPECT_THROW_MSG(random_dag_spec(dag().inputs(0)), "random_dag_spec(): expected inputs >= 1, got 0");
  EXPECT_THROW_MSG(random_dag_spec(dag().hidden(-1)), "random_dag_spec(): expected hidden >= 0, got -1");
  EXPECT_THROW_MSG(random_dag_spec(dag().outputs(0)), "random_dag_spec(): expected outputs >= 1, got 0");
  EXPECT_THROW_MSG(random_dag_spec(dag().depth(-1)), "random_dag_spec(): expected depth >= 0, got -1");
  EXPECT_THROW_MSG(random_dag_spec(dag().depth(8)),
                   "random_dag_spec(): expected depth in [2, 7] for 6 hidden neurons, got 8");
  EXPECT_THROW_MSG(random_dag_spec(dag().depth(1)),
                   "random_dag_spec(): expected depth in [2, 7] for 6 hidden neurons, got 1");
  EXPECT_THROW_MSG(random_dag_spec(dag().hidden(0).depth(2)),
                   "random_dag_spec(): expected depth 1 (or 0) without hidden neurons, got 2");
  // Levels of 2, 3, 3, 2: the coverings take 3 + 3 + 3 = 9; every forward pair is 3·2 + 3·5 + 2·8 = 37.
  EXPECT_THROW_MSG(random_dag_spec(dag().connections(8)),
                   "random_dag_spec(): expected connections in [9, 37] for these sizes and depth, got 8");
  EXPECT_THROW_MSG(random_dag_spec(dag().connections(38)), "expected connections in [9, 37]");
  EXPECT_THROW_MSG(random_dag_spec(dag().inputs(huge).hidden(huge).outputs(huge)),
                   "random_dag_spec(): 2.77e+19 neurons");
  // The range stated stops at what connex builds (3.25e10 forward pairs here).
  EXPECT_THROW_MSG(random_dag_spec(dag().inputs(100000).hidden(100000).outputs(100000).connections(huge)),
                   "random_dag_spec(): expected connections in [200000, 2000000000] for these sizes and depth, got");
  EXPECT_THROW_MSG(random_dag_spec(dag().inputs(100000).hidden(100000).outputs(100000).connections(3000000000)),
                   "random_dag_spec(): expected connections in [200000, 2000000000] for these sizes and depth, got "
                   "3000000000");

  auto ring = [] { return SmallWorldOptions().hidden(8).neighbours(4); };
  EXPECT_THROW_MSG(small_world_dag_spec(ring().inputs(0)), "small_world_dag_spec(): expected inputs >= 1, got 0");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().hidden(0)), "small_world_dag_spec(): expected hidden >= 1, got 0");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().outputs(-3)), "small_world_dag_spec(): expected outputs >= 1, got -3");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().neighbours(3)),
                   "small_world_dag_spec(): expected neighbours even and in [0, hidden) = [0, 8), got 3");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().neighbours(8)),
                   "expected neighbours even and in [0, hidden) = [0, 8), got 8");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().neighbours(-2)), "got -2");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().rewire_probability(1.5)),
                   "small_world_dag_spec(): expected rewire_probability in [0, 1], got 1.5");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().rewire_probability(-0.1)),
                   "expected rewire_probability in [0, 1], got -0.1");
  EXPECT_THROW_MSG(small_world_dag_spec(ring().hidden(huge)),
                   "small_world_dag_spec(): 9.22e+18 neurons is more than connex builds (limit 2e+09)");
  EXPECT_THROW_MSG(
      small_world_dag_spec(ring().inputs(100000).hidden(100000).outputs(100000).neighbours(0)),
      "small_world_dag_spec(): 3e+05 neurons and 2e+10 connections is more than connex builds (limit 2e+09 each)");
}

// Timing, run by hand: ./build/tests/connex_tests --gtest_also_run_disabled_tests
// --gtest_filter='Generators.DISABLED_*'
TEST(Generators, DISABLED_MillionConnectionsTiming) {
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); };
  auto start = Clock::now();
  auto layered = sparse_layered_spec({1000, 1000, 1000, 1000}, SparseLayersOptions().density(0.33).seed(1));
  const double layered_s = seconds(start);
  start = Clock::now();
  NeuralNetwork layered_net(std::move(layered));
  const double layered_net_s = seconds(start);
  start = Clock::now();
  auto dag =
      random_dag_spec(RandomDagOptions().inputs(100).hidden(3000).outputs(10).depth(6).connections(1000000).seed(1));
  const double dag_s = seconds(start);
  start = Clock::now();
  NeuralNetwork dag_net(std::move(dag));
  const double dag_net_s = seconds(start);
  std::cout << "sparse_layered_spec: " << layered_net->num_connections() << " connections in " << layered_s
            << " s (NeuralNetwork: " << layered_net_s << " s)\nrandom_dag_spec: " << dag_net->num_connections()
            << " connections in " << dag_s << " s (NeuralNetwork: " << dag_net_s << " s)\n";
}
