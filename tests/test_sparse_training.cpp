// Dynamic sparse training (SET, RigL) and pruning by data: the gradient of
// absent connections against explicit zero-weight ones, the rewiring
// invariants over many rewirings, the schedule, and bad input.
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include <torch/torch.h>

#include "optimizer_key.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

namespace {

const auto kTanh64 = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh");

// A traced forward, a squared-error loss and its backward.
LevelTrace traced_backward(NeuralNetwork& net, const torch::Tensor& x, const torch::Tensor& y) {
  LevelTrace trace;
  net->zero_grad();
  (net->forward_traced(x, trace) - y).pow(2).sum().backward();
  return trace;
}

// Every pair (source, target) that is not a connection and runs from a lower level to a higher one.
std::vector<Edge> absent_forward_pairs(const NeuralNetwork& net) {
  const Topology& t = net->topology();
  std::vector<Edge> out;
  for (int64_t s = 0; s < t.num_neurons(); ++s)
    for (int64_t d = 0; d < t.num_neurons(); ++d)
      if (t.level_of(s) < t.level_of(d) && t.role(s) != Role::Output && t.connection_index(s, d) < 0)
        out.emplace_back(t.label(s), t.label(d));
  return out;
}

// A layered network 6-12-12-3 keeping about `density` of its connections.
NeuralNetwork sparse_layered(double density, uint64_t seed, NeuralNetworkOptions options = kTanh64) {
  NeuralNetwork dense(nn::mlp_spec(6, 3, 12, 2), options.seed(seed));
  torch::manual_seed(seed);
  auto random_scores = torch::rand({dense->num_connections()}, torch::kFloat64);
  return prune(dense,
               PruneOptions().fraction(1 - density).scope(PruneScope::PerLevel).keep_min(1).scores(random_scores))
      .network;
}

std::map<Edge, double> weights_by_label(const NeuralNetwork& net) {
  std::map<Edge, double> out;
  for (const auto& [from, to] : net->spec().edges()) out[{from, to}] = net->weight(from, to);
  return out;
}

// The Adam moments of every connection, by label.
std::map<Edge, std::pair<double, double>> moments_by_label(const NeuralNetwork& net,
                                                           const torch::optim::Optimizer& optimizer) {
  const auto& adam = adam_state(optimizer, net->weight_tensor());
  const auto m = adam.exp_avg().contiguous(), v = adam.exp_avg_sq().contiguous();
  std::map<Edge, std::pair<double, double>> out;
  const Topology& t = net->topology();
  for (int64_t c = 0; c < t.num_connections(); ++c)
    out[{t.label(t.conn_source()[c]), t.label(t.conn_target()[c])}] = {m.data_ptr<double>()[c],
                                                                       v.data_ptr<double>()[c]};
  return out;
}

// Connections into each level of `reference`'s levels (by label), for a network with the same neurons.
std::vector<int64_t> per_group_counts(const NeuralNetwork& reference, const NeuralNetwork& net) {
  std::vector<int64_t> counts(reference->topology().levels().size(), 0);
  for (const auto& [from, to] : net->spec().edges())
    ++counts[reference->topology().level_of(reference->topology().dense_of(to))];
  return counts;
}

// What the first rewiring with `share` drops, by the rule walked over a full
// sort: in each level, its connections by (|w|, connection index), skipping
// each neuron's strongest input and each hidden neuron's strongest output
// (by the same order), until min(round(share * count), absent pairs) are taken.
std::set<Edge> weakest_walk(const NeuralNetwork& net, double share) {
  const Topology& t = net->topology();
  const auto w = net->weight_tensor().detach().to(torch::kFloat64).contiguous();
  const double* weight = w.data_ptr<double>();
  auto weaker = [&](int64_t a, int64_t b) {
    return std::abs(weight[a]) != std::abs(weight[b]) ? std::abs(weight[a]) < std::abs(weight[b]) : a < b;
  };
  std::vector<int64_t> strongest_in(t.num_neurons(), -1), strongest_out(t.num_neurons(), -1);
  for (int64_t c = 0; c < t.num_connections(); ++c) {
    int64_t& in = strongest_in[t.conn_target()[c]];
    int64_t& out = strongest_out[t.conn_source()[c]];
    if (in < 0 || weaker(in, c)) in = c;
    if (out < 0 || weaker(out, c)) out = c;
  }
  const size_t levels = t.levels().size();
  std::vector<std::set<int64_t>> feeds(levels);
  std::vector<std::vector<int64_t>> into(levels);
  for (int64_t c = 0; c < t.num_connections(); ++c) {
    feeds[t.level_of(t.conn_target()[c])].insert(t.level_of(t.conn_source()[c]));
    into[t.level_of(t.conn_target()[c])].push_back(c);
  }
  std::set<Edge> out;
  for (size_t l = 1; l < levels; ++l) {
    int64_t sources = 0;
    for (int64_t h : feeds[l]) sources += t.levels()[h].size();
    const int64_t count = static_cast<int64_t>(into[l].size());
    const int64_t wanted = std::min<int64_t>(std::llround(share * count), sources * t.levels()[l].size() - count);
    std::sort(into[l].begin(), into[l].end(), weaker);
    int64_t taken = 0;
    for (int64_t c : into[l]) {
      if (taken >= wanted) break;
      const int64_t source = t.conn_source()[c], target = t.conn_target()[c];
      if (c == strongest_in[target] || (t.role(source) == Role::Hidden && c == strongest_out[source])) continue;
      ++taken;
      out.emplace(t.label(source), t.label(target));
    }
  }
  return out;
}

// The connections of `before` that `after` no longer has.
std::set<Edge> dropped_edges(const NeuralNetwork& before, const NeuralNetwork& after) {
  const auto& kept = after->spec().edges();
  std::set<Edge> now(kept.begin(), kept.end()), dropped;
  for (const auto& e : before->spec().edges())
    if (!now.count(e)) dropped.insert(e);
  return dropped;
}

}  // namespace

TEST(SparseTraining, AbsentGradientEqualsAZeroWeightConnectionOnRandomDags) {
  std::mt19937_64 rng(11);
  int compared = 0;
  for (int trial = 0; trial < 30; ++trial) {
    NeuralNetwork net(random_dag(rng), NeuralNetworkOptions(kTanh64).seed(trial));
    auto x = torch::randn({7, net->num_inputs()}, torch::kFloat64);
    auto y = torch::randn({7, net->num_outputs()}, torch::kFloat64);
    auto trace = traced_backward(net, x, y);
    auto candidates = absent_forward_pairs(net);
    if (candidates.empty()) continue;
    std::shuffle(candidates.begin(), candidates.end(), rng);
    candidates.resize(std::min<size_t>(candidates.size(), 4));
    const auto gradients = absent_connection_gradients(net, trace, candidates);
    ASSERT_EQ(gradients.size(), candidates.size());
    for (size_t k = 0; k < candidates.size(); ++k) {
      // The same connection made explicitly, at weight 0: the function is unchanged, its gradient is the answer.
      auto explicit_net = edit(net).add_connections({candidates[k]}).function_preserving().build().network;
      ASSERT_EQ(explicit_net->weight(candidates[k].first, candidates[k].second), 0.0);
      explicit_net->zero_grad();
      (explicit_net->forward(x) - y).pow(2).sum().backward();
      const Topology& t = explicit_net->topology();
      const int64_t c = t.connection_index(t.dense_of(candidates[k].first), t.dense_of(candidates[k].second));
      EXPECT_NEAR(gradients[k], explicit_net->weight_tensor().grad()[c].item<double>(), 1e-10)
          << edge_str(candidates[k]) << " in trial " << trial;
      ++compared;
    }
  }
  EXPECT_GT(compared, 60);
}

TEST(SparseTraining, RigLGrowsTheLargestAbsentGradients) {
  auto net = sparse_layered(0.3, 4);
  auto x = torch::randn({16, 6}, torch::kFloat64), y = torch::randn({16, 3}, torch::kFloat64);
  auto trace = traced_backward(net, x, y);
  Rewirer rewirer(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.25));
  auto result = rewirer.rewire(net, 0, &trace);
  const auto before = weights_by_label(net), after = weights_by_label(result.network);
  std::vector<Edge> grown;
  for (const auto& [edge, w] : after)
    if (!before.count(edge)) grown.push_back(edge);
  ASSERT_EQ(static_cast<int64_t>(grown.size()), rewirer.last_report().grown);
  ASSERT_GT(grown.size(), 0u);
  // Within each target layer, every grown pair's |gradient| is at least every pair left out.
  const Topology& t = net->topology();
  for (int64_t level = 1; level <= t.depth(); ++level) {
    std::vector<Edge> grown_here, left_here;
    for (const auto& e : grown)
      if (t.level_of(t.dense_of(e.second)) == level) grown_here.push_back(e);
    for (const auto& e : absent_forward_pairs(net))
      if (t.level_of(t.dense_of(e.second)) == level && t.level_of(t.dense_of(e.first)) == level - 1 &&
          std::find(grown.begin(), grown.end(), e) == grown.end())
        left_here.push_back(e);
    if (grown_here.empty() || left_here.empty()) continue;
    auto g = absent_connection_gradients(net, trace, grown_here),
         l = absent_connection_gradients(net, trace, left_here);
    double smallest_grown = 1e300, largest_left = 0;
    for (double v : g) smallest_grown = std::min(smallest_grown, std::abs(v));
    for (double v : l) largest_left = std::max(largest_left, std::abs(v));
    EXPECT_GE(smallest_grown, largest_left) << "level " << level;
  }
}

// A rewiring is the editor's function-preserving edit that removes the
// dropped connections and adds the grown ones (read off the two edge sets):
// the same spec edges (a patched topology lists them by source), the same
// connection order, bit-equal parameters, the same remap and positions; the
// dropped are the ones the rule picks from a full sort. Low densities and
// large shares make many neurons keep their last input. Random DAGs, where a
// drop can move a neuron to another level, take the compiled path as well
// as the patched one.
namespace {

// Rewires a 2-level network of `sizes` by RigL and checks its level-1 growth
// against a full sort: exactly the quota largest |A_sᵀ Δ_t| of the absent
// pairs (equal scores by source, then target).
// With `zero_inputs`, every level-1 score is 0: the quota's smallest keys grow.
void expect_rigl_grows_the_largest_of_level_1(const std::vector<int64_t>& sizes, double density,
                                              bool zero_inputs = false) {
  const int64_t inputs = sizes[0], width = sizes[1];
  NeuralNetwork net(nn::sparse_layered_spec(sizes, nn::SparseLayersOptions().density(density).seed(3)), kTanh64);
  auto x = torch::randn({8, inputs}, torch::kFloat64), y = torch::randn({8, sizes[2]}, torch::kFloat64);
  if (zero_inputs) x.zero_();
  auto trace = traced_backward(net, x, y);
  Rewirer rewirer(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.3));
  auto result = rewirer.rewire(net, 0, &trace);
  const Topology& t = net->topology();
  // The level-1 block: scores by (source, target) in dense order, connected pairs out.
  auto scores = torch::mm(trace.values[0], trace.preactivations[1].grad().t()).abs();
  for (int64_t c = 0; c < t.num_connections(); ++c)
    if (t.level_of(t.conn_target()[c]) == 1) scores[t.conn_source()[c]][t.conn_target()[c] - inputs] = -1;
  const auto flat = scores.view(-1).contiguous();
  const double* score = flat.data_ptr<double>();
  std::set<Edge> grown;
  for (const auto& e : result.network->spec().edges())
    if (t.level_of(t.dense_of(e.second)) == 1 && t.connection_index(t.dense_of(e.first), t.dense_of(e.second)) < 0)
      grown.insert(e);
  ASSERT_GT(grown.size(), 5000u);
  std::vector<int64_t> order(flat.numel());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + grown.size(), order.end(),
                    [&](int64_t a, int64_t b) { return score[a] != score[b] ? score[a] > score[b] : a < b; });
  std::set<Edge> largest;
  for (size_t k = 0; k < grown.size(); ++k)
    largest.emplace(t.label(order[k] / width), t.label(inputs + order[k] % width));
  EXPECT_EQ(grown, largest);
}

}  // namespace

// A sparse wide level (1,200 × 8,000 pairs, 1 % connected, 0.3 % grown):
// a sample of the pairs brackets the cut, and each slice of rows keeps only
// the scores within or above it, straight after its product.
TEST(SparseTraining, RigLGrowsTheLargestOfASparseWideLevelExactly) {
  expect_rigl_grows_the_largest_of_level_1({1200, 8000, 2}, 0.01);
}

// Scores tied at the cut (here all 0: the inputs are) would pass the
// sample's bracket everywhere: the rewiring takes the selection below
// rather than list every pair, and grows the first pairs in key order.
TEST(SparseTraining, RigLGrowsByKeyWhereEveryScoreTies) {
  expect_rigl_grows_the_largest_of_level_1({800, 800, 2}, 0.05, true);
}

// A dense wide level, whose quota is much of its absent pairs (the bracket
// would hold a quarter of them), is scored a few thousand source rows at a
// time (at most 2^22 pairs), each later block counting only what beats the
// quota so far: here 1,000 × 4,500 pairs, half connected, in two blocks.
TEST(SparseTraining, RigLScoresADenseWideLevelInBlocksExactly) {
  expect_rigl_grows_the_largest_of_level_1({1000, 4500, 2}, 0.5);
}

TEST(SparseTraining, RewiringEqualsTheEditorsEdit) {
  struct Case {
    std::vector<int64_t> sizes;
    double density, share;
  };
  const std::vector<Case> cases{{{6, 12, 12, 3}, 0.4, 0.3},
                                {{20, 300, 300, 4}, 0.075, 0.6},
                                {{30, 80, 60, 50, 5}, 0.2, 0.45},
                                {{6, 0, 0, 3}, 0, 0.4}};  // a random DAG
  for (auto method : {RewireMethod::SET, RewireMethod::RigL}) {
    for (uint64_t seed = 0; seed < 3; ++seed) {
      for (const auto& c : cases) {
        SCOPED_TRACE(::testing::Message() << rewire_method_name(method) << " seed " << seed << " sizes "
                                          << c.sizes.size() << "/" << c.sizes[1]);
        NeuralNetwork net(
            c.density > 0
                ? nn::sparse_layered_spec(c.sizes, nn::SparseLayersOptions().density(c.density).seed(seed))
                : nn::random_dag_spec(
                      nn::RandomDagOptions().inputs(6).hidden(60).outputs(3).connections(400).depth(6).seed(seed)),
            NeuralNetworkOptions(kTanh64).seed(seed));
        torch::manual_seed(seed);
        auto x = torch::randn({8, c.sizes.front()}, torch::kFloat64),
             y = torch::randn({8, c.sizes.back()}, torch::kFloat64);
        auto trace = traced_backward(net, x, y);
        Rewirer rewirer(net, RewireOptions().method(method).drop_fraction(c.share).seed(seed));
        auto result = rewirer.rewire(net, 3, &trace);

        const auto& old_edges = net->spec().edges();
        const auto& new_edges = result.network->spec().edges();
        std::set<Edge> before(old_edges.begin(), old_edges.end()), after(new_edges.begin(), new_edges.end());
        std::vector<Edge> dropped, grown;
        for (const auto& e : old_edges)
          if (!after.count(e)) dropped.push_back(e);
        for (const auto& e : new_edges)
          if (!before.count(e)) grown.push_back(e);
        ASSERT_EQ(static_cast<int64_t>(dropped.size()), rewirer.last_report().dropped);
        ASSERT_EQ(static_cast<int64_t>(grown.size()), rewirer.last_report().grown);
        EXPECT_EQ(std::set<Edge>(dropped.begin(), dropped.end()), weakest_walk(net, c.share));
        auto expected = edit(net).remove_connections(dropped).add_connections(grown).function_preserving().build();

        EXPECT_EQ(result.network->spec().neurons(), expected.network->spec().neurons());
        EXPECT_EQ(std::set<Edge>(new_edges.begin(), new_edges.end()),
                  std::set<Edge>(expected.network->spec().edges().begin(), expected.network->spec().edges().end()));
        EXPECT_EQ(result.network->topology().conn_source(), expected.network->topology().conn_source());
        EXPECT_EQ(result.network->topology().conn_target(), expected.network->topology().conn_target());
        EXPECT_EQ(result.network->topology().out_connections(), expected.network->topology().out_connections());
        EXPECT_EQ(result.network->topology().out_offsets(), expected.network->topology().out_offsets());
        EXPECT_EQ(result.network->topology().out_targets(), expected.network->topology().out_targets());
        {
          // The spec's index adjacency: each source's targets, as edge_indices() lists them.
          const GraphSpec& spec = result.network->spec();
          const auto& adjacency = spec.index_adjacency();
          ASSERT_EQ(adjacency.offsets.size(), spec.num_neurons() + 1);
          std::vector<std::vector<int64_t>> listed(spec.num_neurons()), held(spec.num_neurons());
          for (const auto& [u, v] : spec.edge_indices()) listed[u].push_back(v);
          for (size_t u = 0; u < spec.num_neurons(); ++u) {
            held[u].assign(adjacency.targets.begin() + adjacency.offsets[u],
                           adjacency.targets.begin() + adjacency.offsets[u + 1]);
            std::sort(listed[u].begin(), listed[u].end());
            std::sort(held[u].begin(), held[u].end());
          }
          EXPECT_EQ(held, listed);
        }
        EXPECT_TRUE(torch::equal(result.network->weight_tensor(), expected.network->weight_tensor()));
        EXPECT_TRUE(torch::equal(result.network->bias_tensor(), expected.network->bias_tensor()));
        for (const char* name : {"weight", "bias"}) {
          const auto &got = result.parameters.moved.at(name), &want = expected.parameters.moved.at(name);
          EXPECT_TRUE(torch::equal(got.new_index, want.new_index)) << name;
          EXPECT_TRUE(torch::equal(got.old_index, want.old_index)) << name;
        }
        EXPECT_EQ(result.positions.inputs, expected.positions.inputs);
        EXPECT_EQ(result.positions.outputs, expected.positions.outputs);
        EXPECT_EQ(result.positions.neurons, expected.positions.neurons);
      }
    }
  }
}

// The drop keys a float network's connections differently from a double
// one's (bits and index packed in 64 bits); both drop what the walk drops,
// also where many magnitudes tie (weights rounded to quarters, zeros
// included) and ties go by connection index.
TEST(SparseTraining, DropMatchesTheWalkInEveryFloatWithTies) {
  // bfloat16 holds the rounded quarters exactly; its magnitudes rank as floats.
  for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dtype << " seed " << seed);
      auto net = sparse_layered(0.5, seed, NeuralNetworkOptions(kTanh64).dtype(dtype));
      {
        torch::NoGradGuard no_grad;
        net->weight_tensor().mul_(4).round_().div_(4);
      }
      Rewirer rewirer(net, RewireOptions().drop_fraction(0.4).seed(seed));
      EXPECT_EQ(dropped_edges(net, rewirer.rewire(net, 0).network), weakest_walk(net, 0.4));
      EXPECT_GT(rewirer.last_report().dropped, 10);
    }
  }
}

// Groups of tens of thousands of connections: still exactly what the walk
// drops, with distinct magnitudes and with nearly all of them tied (weights
// rounded to quarters are almost all 0 here).
TEST(SparseTraining, DropMatchesTheWalkInLargeGroups) {
  for (bool rounded : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "rounded " << rounded);
    NeuralNetwork dense(nn::mlp_spec(60, 3, 300, 2), NeuralNetworkOptions(kTanh64).dtype(torch::kFloat32).seed(3));
    torch::manual_seed(3);
    auto net = prune(dense, PruneOptions()
                                .fraction(0.5)
                                .scope(PruneScope::PerLevel)
                                .keep_min(1)
                                .scores(torch::rand({dense->num_connections()}, torch::kFloat64)))
                   .network;
    ASSERT_GT(net->topology().levels()[2].num_connections(), 40000);
    if (rounded) {
      torch::NoGradGuard no_grad;
      net->weight_tensor().mul_(4).round_().div_(4);
    }
    Rewirer rewirer(net, RewireOptions().drop_fraction(0.3));
    EXPECT_EQ(dropped_edges(net, rewirer.rewire(net, 0).network), weakest_walk(net, 0.3));
    EXPECT_GT(rewirer.last_report().dropped, 10000);
  }
}

// RigL on a bfloat16 network scores the absent pairs as floats and keeps
// each layer's connection count.
TEST(SparseTraining, RigLRunsInBFloat16) {
  auto net = sparse_layered(0.3, 4, NeuralNetworkOptions(kTanh64).dtype(torch::kBFloat16));
  auto x = torch::randn({16, 6}, torch::kBFloat16), y = torch::randn({16, 3}, torch::kBFloat16);
  auto trace = traced_backward(net, x, y);
  Rewirer rewirer(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.25));
  auto result = rewirer.rewire(net, 0, &trace);
  EXPECT_GT(rewirer.last_report().grown, 0);
  EXPECT_EQ(result.network->num_connections(), net->num_connections());
  EXPECT_EQ(result.network->weight_tensor().scalar_type(), torch::kBFloat16);
}

// The invariants of a rewiring, over many rewirings of both methods while
// Adam trains: the connections into each level stay as many, every
// connection goes from a lower level to a higher one, survivors keep their
// weights and moments bit for bit, new connections start at 0 with zero moments.
TEST(SparseTraining, RewiringInvariantsOverManyRewirings) {
  for (auto method : {RewireMethod::SET, RewireMethod::RigL}) {
    for (uint64_t seed = 0; seed < 3; ++seed) {
      auto net = sparse_layered(0.25, seed);
      const auto reference = net;
      const auto counts = per_group_counts(reference, net);
      std::unique_ptr<torch::optim::Optimizer> adam =
          std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(0.01));
      Rewirer rewirer(net, RewireOptions().method(method).drop_fraction(0.3).end_step(60).seed(seed));
      torch::manual_seed(seed);
      auto x = torch::randn({32, 6}, torch::kFloat64), y = torch::randn({32, 3}, torch::kFloat64);
      for (int64_t step = 0; step < 60; ++step) {
        auto trace = traced_backward(net, x, y);
        adam->step();
        if (step % 3 != 0) continue;
        const auto weights = weights_by_label(net);
        const auto moments = moments_by_label(net, *adam);
        auto result = rewirer.rewire(net, step, &trace);
        auto next = optimizer_after_edit(*adam, net, result);
        const auto& report = rewirer.last_report();
        EXPECT_EQ(report.dropped, report.grown);
        EXPECT_EQ(report.connections_before, report.connections_after);
        EXPECT_EQ(per_group_counts(reference, result.network), counts) << "step " << step;
        const auto new_moments = moments_by_label(result.network, *next);
        int64_t kept = 0, grown = 0;
        for (const auto& [edge, w] : weights_by_label(result.network)) {
          const Topology& t = reference->topology();
          EXPECT_LT(t.level_of(t.dense_of(edge.first)), t.level_of(t.dense_of(edge.second)));
          auto old = weights.find(edge);
          if (old != weights.end()) {
            ++kept;
            EXPECT_EQ(w, old->second);
            EXPECT_EQ(new_moments.at(edge), moments.at(edge));
          } else {
            ++grown;
            EXPECT_EQ(w, 0.0);
            EXPECT_EQ(new_moments.at(edge), std::make_pair(0.0, 0.0));
          }
        }
        EXPECT_EQ(grown, report.grown);
        EXPECT_EQ(kept + grown, result.network->num_connections());
        // No hidden neuron loses its last successor (it would be dead).
        const GraphQueries before(net), after(result.network);
        for (const auto& id : net->spec().neurons())
          if (before.role(id) == Role::Hidden && before.out_degree(id) > 0)
            EXPECT_GT(after.out_degree(id), 0) << "neuron " << id.str() << ", step " << step;
        net = result.network;
        adam = std::move(next);
      }
    }
  }
}

// Found by a new user: at 2 % density SET left 89 of 512 hidden neurons
// without successors after 29 rewirings, and dropped frozen connections.
// Each hidden neuron keeps its strongest outgoing connection, and frozen
// connections (the user's fixed weights) are never dropped.
TEST(SparseTraining, RewiringLeavesNoNeuronDeadAndKeepsFrozenConnections) {
  for (auto method : {RewireMethod::SET, RewireMethod::RigL}) {
    NeuralNetwork net(nn::sparse_layered_spec({8, 32, 32, 4}, nn::SparseLayersOptions().density(0.08).seed(3)),
                      kTanh64);
    ASSERT_TRUE(dead_neurons(net).empty());
    const auto x = torch::randn({16, 8}, torch::kFloat64), y = torch::randn({16, 4}, torch::kFloat64);
    // Up to three connections the first rewiring drops when nothing is frozen, frozen.
    std::vector<Edge> frozen;
    {
      Rewirer probe(net, RewireOptions().method(method).drop_fraction(0.5).seed(7));
      auto trace = traced_backward(net, x, y);
      const auto probed = probe.rewire(net, 0, &trace);
      const auto& edges = probed.network->spec().edges();
      const std::set<Edge> kept(edges.begin(), edges.end());
      for (const auto& e : net->spec().edges())
        if (!kept.count(e) && frozen.size() < 3) frozen.push_back(e);
    }
    ASSERT_FALSE(frozen.empty());
    net->freeze(frozen);
    std::map<Edge, double> frozen_weights;
    for (const auto& e : frozen) frozen_weights[e] = net->weight(e.first, e.second);
    Rewirer rewirer(net, RewireOptions().method(method).drop_fraction(0.5).seed(7));
    int64_t dropped = 0;
    for (int64_t step = 0; step < 40; ++step) {
      auto trace = traced_backward(net, x, y);
      auto result = rewirer.rewire(net, step, &trace);
      dropped += rewirer.last_report().dropped;
      net = result.network;
      ASSERT_TRUE(dead_neurons(net).empty()) << rewire_method_name(method) << ", step " << step;
      for (const auto& [e, value] : frozen_weights) {
        ASSERT_TRUE(net->is_frozen(e.first, e.second)) << edge_str(e);
        EXPECT_EQ(net->weight(e.first, e.second), value);
      }
    }
    EXPECT_GT(dropped, 20);
  }
}

TEST(SparseTraining, GrowthAloneKeepsTheFunctionExactly) {
  auto net = sparse_layered(0.3, 2);
  auto x = torch::randn({9, 6}, torch::kFloat64), y = torch::randn({9, 3}, torch::kFloat64);
  auto trace = traced_backward(net, x, y);
  // A network whose dropped connections already have weight 0: the rewiring moves nothing.
  Rewirer rewirer(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.2));
  auto first = rewirer.rewire(net, 0, &trace);
  auto zeroed = clone(net);
  {
    torch::NoGradGuard no_grad;
    const auto after = weights_by_label(first.network);
    for (const auto& [from, to] : net->spec().edges())
      if (!after.count({from, to})) zeroed->set_weight(from, to, 0.0);
  }
  auto again = Rewirer(zeroed, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.2));
  auto trace2 = traced_backward(zeroed, x, y);
  auto second = again.rewire(zeroed, 0, &trace2);
  EXPECT_TRUE(torch::equal(second.network->forward(x), zeroed->forward(x)));
}

TEST(SparseTraining, NoNeuronLosesItsLastInput) {
  // Neuron 4 reads only 0, at the smallest |w| of its level; 5 reads 0 and 1.
  NeuralNetwork net(
      GraphSpec::from_adjacency({{0, {4, 5}}, {1, {5}}, {2, {}}, {3, {}}, {4, {6}}, {5, {6}}}, {0, 1, 2, 3}, {6}),
      kTanh64);
  net->set_weight(0, 4, 1e-6);
  net->set_weight(0, 5, 0.5);
  net->set_weight(1, 5, 0.7);
  Rewirer set(net, RewireOptions().drop_fraction(0.6));
  auto result = set.rewire(net, 0);
  // Level 1 wants round(0.6 * 3) = 2 dropped, but 0 -> 4 and then 1 -> 5 are
  // the last inputs of their neurons: only 0 -> 5 goes. Level 2 has no absent
  // pair to grow (4 and 5 both feed 6), so it drops nothing.
  EXPECT_EQ(set.last_report().dropped, 1);
  EXPECT_EQ(set.last_report().grown, 1);
  EXPECT_FALSE(GraphQueries(result.network).successors(0) == GraphQueries(net).successors(0) &&
               GraphQueries(result.network).in_degree(5) == 2);
  EXPECT_GE(GraphQueries(result.network).in_degree(4), 1);
  EXPECT_GE(GraphQueries(result.network).in_degree(5), 1);
}

// An output below the last level sits in a level that feeds the next one,
// but it feeds nothing: no rewiring grows a connection out of it.
TEST(SparseTraining, NothingGrowsOutOfAnOutput) {
  // Level 1: hidden 2, 6, 7 and output 3; level 2: 4 and 8, read from 2 and 6.
  const auto spec = GraphSpec::from_adjacency(
      {{0, {2, 3, 6}}, {1, {6, 7}}, {2, {4, 8}}, {6, {8}}, {7, {}}, {4, {5}}, {8, {5}}}, {0, 1}, {3, 5});
  for (uint64_t seed = 0; seed < 20; ++seed) {
    NeuralNetwork net(spec, NeuralNetworkOptions(kTanh64).seed(seed));
    Rewirer rewirer(net, RewireOptions().drop_fraction(0.5).seed(seed));
    auto result = rewirer.rewire(net, 0);
    EXPECT_EQ(GraphQueries(result.network).out_degree(3), 0) << "seed " << seed;
    EXPECT_EQ(result.network->num_connections(), net->num_connections());
  }
}

TEST(SparseTraining, SetIsReproducibleAndDrawsDifferentlyPerSeed) {
  auto net = sparse_layered(0.3, 1);
  auto run = [&](uint64_t seed) {
    Rewirer rewirer(net, RewireOptions().seed(seed));
    return rewirer.rewire(net, 0).network->spec().edges();
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

// A resumed run rewires as the uninterrupted one with the Rewirer's saved
// groups: on a random DAG some neuron moves level within a few rewirings,
// and a Rewirer made from the resumed network's levels would differ.
TEST(SparseTraining, SavedGroupsResumeAsTheUninterruptedRun) {
  const NeuralNetwork start(
      nn::random_dag_spec(nn::RandomDagOptions().inputs(8).hidden(40).outputs(3).connections(300).depth(4).seed(3)),
      kTanh64);
  const auto options = RewireOptions().seed(3).drop_fraction(0.3);
  // Rewirings from step `first` on; weights redrawn per step, as training would move them.
  auto run = [&](Rewirer& rewirer, NeuralNetwork net, int64_t first, int64_t last) {
    for (int64_t step = first; step < last; ++step) {
      {
        torch::NoGradGuard no_grad;
        torch::manual_seed(static_cast<uint64_t>(step));
        net->weight_tensor().uniform_(-1, 1);
      }
      net = rewirer.rewire(net, step).network;
    }
    return net;
  };
  Rewirer whole(start, options);
  const auto uninterrupted = run(whole, start, 0, 16);
  // Stopped at the first step after which some neuron is off its group's level.
  Rewirer first_part(start, options);
  NeuralNetwork middle = start;
  int64_t stop = 0;
  while (stop < 8 && Rewirer(middle, options).groups().members == first_part.groups().members)
    middle = run(first_part, middle, stop, stop + 1), ++stop;
  ASSERT_LT(stop, 8) << "no neuron moved level";
  const auto saved = first_part.groups().to_json();
  Rewirer resumed(middle, RewireGroups::from_json(nlohmann::json::parse(saved.dump())), options);
  EXPECT_EQ(resumed.groups().members, first_part.groups().members);
  EXPECT_EQ(resumed.groups().grows_from, first_part.groups().grows_from);
  EXPECT_EQ(run(resumed, middle, stop, 16)->spec().edges(), uninterrupted->spec().edges());
  Rewirer from_levels(middle, options);
  EXPECT_NE(run(from_levels, middle, stop, 16)->spec().edges(), uninterrupted->spec().edges());
}

// Growth keeps the graph acyclic by running only from a group to a later
// one; a connection added since the Rewirer was made that runs the other way
// is refused at the next rewiring, before growth could close a cycle.
TEST(SparseTraining, AConnectionAgainstTheGroupsIsRefused) {
  const NeuralNetwork net(nn::sparse_layered_spec({4, 3, 3, 2}, nn::SparseLayersOptions().density(0.4).seed(1)),
                          kTanh64);
  Rewirer rewirer(net, RewireOptions().seed(4));
  const auto back = add_connections(net, {{7, 5}});  // layer 2 -> layer 1: acyclic, so the edit takes it
  const auto edges = back->spec().edges();
  rewirer.rewire(net, 0);
  const RewireReport before = rewirer.last_report();
  EXPECT_THROW_MSG(rewirer.rewire(back, 1),
                   "Rewirer::rewire(): connection 7 -> 5 runs from group 2 back to group 1 (the groups are the "
                   "levels when the Rewirer was made; growing along them could close a cycle); make a Rewirer for "
                   "this network");
  EXPECT_EQ(back->spec().edges(), edges);
  EXPECT_EQ(rewirer.last_report().dropped, before.dropped);  // the refused call reported nothing
  EXPECT_EQ(rewirer.last_report().connections_before, before.connections_before);
  // The same groups handed to a new Rewirer are refused alike; the network's own levels serve.
  EXPECT_THROW_MSG(Rewirer(back, rewirer.groups()), "Rewirer(): connection 7 -> 5 runs from group 2 back to group 1");
  for (int64_t step = 0; step < 20; ++step) EXPECT_NO_THROW(Rewirer(back, RewireOptions().seed(4)).rewire(back, step));
  // Within a group, a connection added since is kept to: growth never adds one there.
  EXPECT_NO_THROW(rewirer.rewire(add_connections(net, {{4, 5}}), 0));
}

// The check runs in parallel over chunks of connections: the first
// connection against the order is named, wherever the chunks split.
TEST(SparseTraining, TheFirstConnectionAgainstTheGroupsIsNamedInALargeNetwork) {
  const NeuralNetwork net(
      nn::sparse_layered_spec({200, 1000, 1000, 1000, 10}, nn::SparseLayersOptions().density(0.15).seed(2)));
  ASSERT_GT(net->num_connections(), int64_t{1} << 18);
  Rewirer rewirer(net);
  const Topology& t = net->topology();
  // Two connections from layer 3 back to layer 2 (neither pair is joined
  // the other way, so the graph stays acyclic), into targets far apart.
  auto back_pair = [&](int64_t target) {
    for (int64_t source = 2200; source < 3200; ++source)
      if (t.connection_index(t.dense_of(NeuronId(target)), t.dense_of(NeuronId(source))) < 0)
        return Edge{source, target};
    return Edge{-1, -1};
  };
  const Edge first = back_pair(1900), second = back_pair(1300);
  const auto both = add_connections(net, {first, second});
  const Topology& b = both->topology();
  ASSERT_GT(b.connection_index(b.dense_of(second.first), b.dense_of(second.second)), int64_t{1} << 16);
  EXPECT_THROW_MSG(rewirer.rewire(both, 0),
                   "Rewirer::rewire(): connection " + edge_str(second) + " runs from group 3 back to group 2");
}

TEST(SparseTraining, SavedGroupsThatDoNotFitAreRefused) {
  const NeuralNetwork net(nn::sparse_layered_spec({4, 3, 3, 2}, nn::SparseLayersOptions().density(0.4).seed(1)),
                          kTanh64);
  const RewireGroups good = Rewirer(net).groups();
  ASSERT_EQ(good.members.size(), 4u);
  auto changed = [&](const std::function<void(RewireGroups&)>& change) {
    RewireGroups g = good;
    change(g);
    return g;
  };
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.grows_from.pop_back(); })),
                   "Rewirer(): expected members and grows_from for each group alike, got 4 and 3 lists");
  EXPECT_THROW_MSG(Rewirer(net, RewireGroups{}), "Rewirer(): expected members and grows_from for each group alike");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) {
                             g.grows_from[2] = {1, 0};
                           })),
                   "Rewirer(): group 2 may grow only from earlier groups, in ascending order, got [1,0]");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.grows_from[1] = {1}; })),
                   "Rewirer(): group 1 may grow only from earlier groups, in ascending order, got [1]");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.members[2].push_back(g.members[1].front()); })),
                   "Rewirer(): neuron 4 is in groups 1 and 2");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.members[1].push_back(g.members[1].front()); })),
                   "Rewirer(): neuron 4 is listed twice in group 1");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.members[3].pop_back(); })),
                   "Rewirer(): neuron 11 of the network is in no group");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { g.members[3].push_back(99); })),
                   "Rewirer(): neuron 99 is not in the network");
  EXPECT_THROW_MSG(Rewirer(net, changed([](RewireGroups& g) { std::swap(g.members[0].back(), g.members[1].back()); })),
                   "Rewirer(): group 0 holds the inputs, and only them; got hidden neuron 6 in group 0");
  EXPECT_THROW_MSG(RewireGroups::from_json(nlohmann::json::array(), "saved"),
                   "saved: expected {\"members\": [[neuron ids], ...], \"grows_from\": [[groups], ...]}, got []");
  EXPECT_THROW_MSG(RewireGroups::from_json({{"members", {{0, 1.5}}}, {"grows_from", {{}}}}, "saved"),
                   "saved: /members/0/1 must be an integer or a string neuron id, got 1.5");
  EXPECT_THROW_MSG(RewireGroups::from_json({{"members", {1}}, {"grows_from", {{}}}}, "saved"),
                   "saved: /members must hold one list per group, got 1");
  EXPECT_THROW_MSG(RewireGroups::from_json({{"members", {{0}}}, {"grows_from", {{"a"}}}}, "saved"),
                   "saved: /grows_from/0 must list group numbers, got \"a\"");
  EXPECT_THROW_MSG(
      RewireGroups::from_json({{"members", {{0}}}, {"grows_from", {{uint64_t{1} << 63}}}}, "saved", "/run/groups"),
      "saved: /run/groups/grows_from/0 must list group numbers, got 9223372036854775808");
  EXPECT_THROW_MSG(RewireGroups::from_json({{"members", {{0}}}, {"grows_from", {{}}}, {"member", 1}}, "saved"),
                   "saved: \"member\" is not a key of rewire groups (members, grows_from)");
  const auto round = RewireGroups::from_json(good.to_json());
  EXPECT_EQ(round.members, good.members);
  EXPECT_EQ(round.grows_from, good.grows_from);
  EXPECT_THROW_MSG(Rewirer(net, RewireOptions().method(static_cast<RewireMethod>(7))),
                   "Rewirer(): expected a RewireMethod (SET or RigL), got 7");
}

TEST(SparseTraining, DropFractionFollowsTheCosineSchedule) {
  auto net = sparse_layered(0.3, 1);
  Rewirer rigl(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.3).end_step(100));
  EXPECT_DOUBLE_EQ(rigl.drop_fraction(0), 0.3);
  EXPECT_NEAR(rigl.drop_fraction(25), 0.15 * (1 + std::sqrt(0.5)), 1e-15);
  EXPECT_NEAR(rigl.drop_fraction(50), 0.15, 1e-15);
  EXPECT_EQ(rigl.drop_fraction(100), 0.0);
  EXPECT_EQ(rigl.drop_fraction(1000), 0.0);
  Rewirer set(net, RewireOptions().drop_fraction(0.3));
  EXPECT_EQ(set.drop_fraction(12345), 0.3);
  EXPECT_EQ(set.num_groups(), 4);
}

TEST(SparseTraining, BadInputNamesTheCulpritAndChangesNothing) {
  auto net = sparse_layered(0.3, 1);
  const auto edges = net->spec().edges();
  EXPECT_THROW_MSG(Rewirer(net, RewireOptions().drop_fraction(1)),
                   "Rewirer(): expected drop_fraction in [0, 1), got 1");
  EXPECT_THROW_MSG(Rewirer(net, RewireOptions().end_step(-1)), "Rewirer(): expected end_step >= 0, got -1");
  EXPECT_THROW_MSG(rewire_method_from_name("sett"),
                   "rewire_method_from_name(): expected \"set\" or \"rigl\", got \"sett\"");
  EXPECT_EQ(rewire_method_from_name("RigL"), RewireMethod::RigL);
  ASSERT_EQ(std::size(kRewireMethods), 2u);
  for (RewireMethod method : kRewireMethods) EXPECT_EQ(rewire_method_from_name(rewire_method_name(method)), method);
  EXPECT_EQ(rewire_method_from_name("SET"), RewireMethod::SET);
  NeuralNetwork normed(nn::mlp_spec(2, 1, 3, 1), NeuralNetworkOptions().use_topo_norm(true));
  EXPECT_THROW_MSG(Rewirer(normed, RewireOptions().method(RewireMethod::RigL)),
                   "Rewirer(): RigL expected a network without per-level operations");
  NeuralNetwork adaptive(nn::mlp_spec(2, 1, 3, 1), NeuralNetworkOptions().use_adaptive_activations(true));
  EXPECT_NO_THROW(Rewirer(adaptive, RewireOptions().method(RewireMethod::RigL)));  // scaling leaves z and the values
  {  // a connection added under topo norm would multiply a normed value, not the traced one
    LevelTrace normed_trace;
    normed->forward_traced(torch::randn({4, 2}), normed_trace).sum().backward();
    const NeuronId first_input = normed->spec().inputs()[0], an_output = normed->spec().outputs()[0];
    EXPECT_THROW_MSG(absent_connection_gradients(normed, normed_trace, {{first_input, an_output}}),
                     "absent_connection_gradients() expected a network without per-level operations but adaptive "
                     "activations (they change what a connection's gradient is), got topo_norm");
  }
  Rewirer rigl(net, RewireOptions().method(RewireMethod::RigL));
  EXPECT_THROW_MSG(rigl.rewire(net, 0), "Rewirer::rewire(): RigL expected the trace of a forward pass");
  LevelTrace untrained;
  net->forward_traced(torch::randn({4, 6}, torch::kFloat64), untrained);
  EXPECT_THROW_MSG(
      rigl.rewire(net, 0, &untrained),
      "Rewirer::rewire(): the trace has no gradient; call loss.backward() on the traced forward's loss first");
  // A NaN loss makes NaN scores, which rank nowhere: the group would grow
  // fewer than it dropped.
  LevelTrace nan_trace;
  (net->forward_traced(torch::randn({4, 6}, torch::kFloat64), nan_trace).sum() * std::nan("")).backward();
  EXPECT_THROW_MSG(rigl.rewire(net, 0, &nan_trace),
                   "Rewirer::rewire(): RigL expected finite gradients in the trace, got NaN or infinity (a NaN loss?)");
  // From end_step on nothing is dropped or grown: no trace is asked for.
  Rewirer ended(net, RewireOptions().method(RewireMethod::RigL).drop_fraction(0.3).end_step(10));
  const auto unchanged = ended.rewire(net, 10);
  EXPECT_EQ(ended.last_report().dropped, 0);
  EXPECT_EQ(ended.last_report().grown, 0);
  EXPECT_EQ(weights_by_label(unchanged.network), weights_by_label(net));
  NeuralNetwork other(nn::mlp_spec(2, 1, 3, 1));
  EXPECT_THROW_MSG(rigl.rewire(other, 0, &untrained),
                   "Rewirer::rewire(): expected the network the Rewirer was made for (33 neurons), got one of 6");
  // The same 33 labels in another network: its roles differ.
  NeuralNetwork same_labels(
      nn::random_dag_spec(nn::RandomDagOptions().inputs(4).hidden(26).outputs(3).connections(80).depth(4).seed(1)));
  ASSERT_EQ(same_labels->num_neurons(), 33);
  EXPECT_THROW_MSG(Rewirer(net).rewire(same_labels, 0),
                   "Rewirer::rewire(): neuron 4 was an input neuron when the Rewirer was made and is a hidden one now "
                   "(another network with the same labels?); make a Rewirer for this network");
  auto trace = traced_backward(net, torch::randn({4, 6}, torch::kFloat64), torch::randn({4, 3}, torch::kFloat64));
  EXPECT_THROW_MSG(absent_connection_gradients(net, trace, {edges.front()}),
                   "absent_connection_gradients(): connection " + edge_str(edges.front()) + " exists");
  EXPECT_THROW_MSG(absent_connection_gradients(net, trace, {{NeuronId(7), NeuronId(6)}}),
                   "absent_connection_gradients(): connection 7 -> 6 would not run from a lower level to a higher "
                   "one (levels 1 and 1)");
  EXPECT_THROW_MSG(absent_connection_gradients(other, trace, {{NeuronId(0), NeuronId(2)}}),
                   "absent_connection_gradients(): the trace was made by another network");
  LevelTrace foreign_shape = trace;  // a hand-made trace of the wrong depth is told by its shape
  foreign_shape.topology = nullptr;
  EXPECT_THROW_MSG(absent_connection_gradients(other, foreign_shape, {{NeuronId(0), NeuronId(2)}}),
                   "absent_connection_gradients(): expected a trace of this network's 3 levels, got 4");
  foreign_shape.topology = nullptr;
  EXPECT_THROW_MSG(activation_scores(net, foreign_shape),
                   "activation_scores(): the trace holds no network's structure; fill it with this network's "
                   "forward_traced(x, trace)");
  EXPECT_THROW_MSG(rigl.drop_fraction(-5), "Rewirer::drop_fraction(): expected a step >= 0, got -5");
  EXPECT_THROW_MSG(rigl.rewire(net, -1, &trace), "Rewirer::rewire(): expected a step >= 0, got -1");
  // A trace of an edited network has the same shapes but another meaning.
  auto edited = edit(net).remove_connections({edges.front()}).build().network;
  ASSERT_EQ(edited->topology().levels().size(), net->topology().levels().size());
  EXPECT_THROW_MSG(absent_connection_gradients(edited, trace, {}),
                   "absent_connection_gradients(): the trace was made by another network");
  EXPECT_THROW_MSG(activation_scores(edited, trace), "activation_scores(): the trace was made by another network");
  LevelTrace without_gradients;
  {
    torch::NoGradGuard no_grad;
    net->forward_traced(torch::randn({4, 6}, torch::kFloat64), without_gradients);
  }
  EXPECT_THROW_MSG(rigl.rewire(net, 0, &without_gradients),
                   "Rewirer::rewire(): the trace was made without gradients (under torch::NoGradGuard, or with every "
                   "parameter frozen)");
  EXPECT_EQ(net->spec().edges(), edges);
}

// ------------------------------------------------------- pruning by data

TEST(PruneByData, ActivationScoresAreWeightTimesMeanAbsoluteSource) {
  NeuralNetwork net(GraphSpec::from_adjacency({{0, {2}}, {1, {2, 3}}, {2, {3}}}, {0, 1}, {3}), kTanh64);
  net->set_weight(0, 2, 0.5);
  net->set_weight(1, 2, -2.0);
  net->set_weight(1, 3, 0.4);
  net->set_weight(2, 3, 3.0);
  net->set_bias(2, 0.1);
  auto x = torch::tensor({{1.0, -2.0}, {-3.0, 4.0}}, torch::kFloat64);
  LevelTrace trace;
  net->forward_traced(x, trace);
  const double h1 = std::tanh(0.5 * 1 - 2.0 * -2 + 0.1), h2 = std::tanh(0.5 * -3 - 2.0 * 4 + 0.1);
  const double mean0 = 2, mean1 = 3, mean2 = (std::abs(h1) + std::abs(h2)) / 2;
  auto scores = activation_scores(net, trace);
  const Topology& t = net->topology();
  auto at = [&](int from, int to) {
    return scores[t.connection_index(t.dense_of(from), t.dense_of(to))].item<double>();
  };
  EXPECT_NEAR(at(0, 2), 0.5 * mean0, 1e-15);
  EXPECT_NEAR(at(1, 2), 2.0 * mean1, 1e-15);
  EXPECT_NEAR(at(1, 3), 0.4 * mean1, 1e-15);
  EXPECT_NEAR(at(2, 3), 3.0 * mean2, 1e-15);
  // Ranked by |w·a|, 0 -> 2 is the weakest (1.0 against 1.2), though 1 -> 3 has the smaller |w|.
  EXPECT_EQ(connections_to_prune(net, PruneOptions().fraction(0.25).scores(scores)), (std::vector<Edge>{{0, 2}}));
  EXPECT_EQ(connections_to_prune(net, PruneOptions().fraction(0.25)), (std::vector<Edge>{{1, 3}}));
}

TEST(PruneByData, GradientScoresAreWeightTimesGradient) {
  auto net = sparse_layered(0.5, 3);
  EXPECT_THROW_MSG(gradient_scores(net), "gradient_scores(): the weights have no gradient; call loss.backward() first");
  auto trace = traced_backward(net, torch::randn({5, 6}, torch::kFloat64), torch::randn({5, 3}, torch::kFloat64));
  auto scores = gradient_scores(net);
  EXPECT_TRUE(torch::equal(scores, (net->weight_tensor().detach() * net->weight_tensor().grad()).abs()));
  auto pruned = prune(net, PruneOptions().threshold(1e-3).scores(scores));
  EXPECT_EQ(pruned.network->num_connections(), net->num_connections() - (scores < 1e-3).sum().item<int64_t>());
  // zero_grad() leaves gradients of 0, which would rank nothing.
  torch::optim::SGD(net->parameters(), 0.1).zero_grad();
  EXPECT_THROW_MSG(gradient_scores(net),
                   "gradient_scores(): every trainable weight's gradient is 0, so the scores would not rank the "
                   "connections (after zero_grad(), call loss.backward() first)");
  // Frozen connections' gradients are 0 by design; with every connection frozen there is nothing to rank wrong.
  net->freeze(net->spec().edges());
  traced_backward(net, torch::randn({5, 6}, torch::kFloat64), torch::randn({5, 3}, torch::kFloat64));
  EXPECT_EQ(gradient_scores(net).sum().item<double>(), 0.0);
  // Nor with no connection at all.
  NeuralNetwork bare(GraphSpec::from_edges({}, {0}, {1}, {0, 1}), NeuralNetworkOptions().dtype(torch::kFloat64));
  torch::mse_loss(bare->forward(torch::randn({2, 1}, torch::kFloat64)), torch::zeros({2, 1}, torch::kFloat64))
      .backward();
  EXPECT_EQ(gradient_scores(bare).numel(), 0);
}

TEST(PruneByData, BadScoresAreRefused) {
  auto net = sparse_layered(0.5, 3);
  const int64_t n = net->num_connections();
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.5).scores(torch::ones({n + 1}))),
                   "prune(): expected scores of shape [" + std::to_string(n) + "] (one per connection), got [" +
                       std::to_string(n + 1) + "]");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.5).scores(-torch::ones({n}))),
                   "prune(): expected finite scores >= 0, got a negative one");
  auto nan = torch::ones({n});
  nan[3] = std::nan("");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.5).scores(nan)),
                   "prune(): expected finite scores >= 0, got NaN or inf");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.5).scores(torch::ones({n}, torch::kLong))),
                   "prune(): expected floating-point scores, got Long (integer scores rank in steps; convert them)");
  LevelTrace wrong;
  EXPECT_THROW_MSG(activation_scores(net, wrong),
                   "activation_scores(): expected a trace of this network's 4 levels, got 0");
}

// A network on the fused kernel fills the trace from the kernel (values and
// pre-activations copied out, dL/dz from its backward), the same trace as
// the per-level path's, on random graphs, with and without adaptive
// activations (and topo norm, which RigL's scores refuse); RigL's scores
// read from either agree.
TEST(LevelTrace, TheFusedKernelFillsTheSameTraceAsThePerLevelPath) {
  std::mt19937_64 rng(12);
  const std::vector<std::string> activations = {"relu", "tanh", "gelu", "identity"};
  for (int trial = 0; trial < 16; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    auto spec = random_dag(rng, {6, 30, 0.3});
    auto options = NeuralNetworkOptions()
                       .dtype(torch::kFloat64)
                       .hidden_activation(activations[trial % activations.size()])
                       .seed(trial)
                       .output_transformation(trial % 3 == 2 ? "softmax" : "identity")
                       .use_adaptive_activations(trial % 8 >= 4);
    NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
    NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    ASSERT_TRUE(fused->uses_fused_kernel());
    ASSERT_FALSE(levels->uses_fused_kernel());
    copy_parameters_with_random_scales(fused, levels);
    const int64_t batch = trial % 2 ? 13 : 3;
    auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto y = torch::randn({batch, static_cast<int64_t>(spec.outputs().size())}, torch::kFloat64);
    {
      auto normed_options = NeuralNetworkOptions(options).use_topo_norm(true);
      NeuralNetwork normed_fused(spec, NeuralNetworkOptions(normed_options).execution(ExecutionOptions().fused(true)));
      NeuralNetwork normed_levels(spec,
                                  NeuralNetworkOptions(normed_options).execution(ExecutionOptions().fused(false)));
      copy_parameters_with_random_scales(normed_fused, normed_levels);
      auto c = traced_backward(normed_fused, x, y), d = traced_backward(normed_levels, x, y);
      for (size_t l = 1; l < c.values.size(); ++l) {
        EXPECT_TRUE(torch::allclose(c.values[l], d.values[l], 1e-12, 1e-12)) << "topo norm, level " << l;
        EXPECT_TRUE(torch::allclose(c.preactivations[l], d.preactivations[l], 1e-12, 1e-12))
            << "topo norm, level " << l;
        const auto &zc = c.preactivations[l], &zd = d.preactivations[l];
        EXPECT_TRUE(torch::allclose(zc.grad().defined() ? zc.grad() : torch::zeros_like(zc),
                                    zd.grad().defined() ? zd.grad() : torch::zeros_like(zd), 1e-10, 1e-10))
            << "topo norm, level " << l;
      }
    }
    auto a = traced_backward(fused, x, y), b = traced_backward(levels, x, y);
    ASSERT_EQ(a.values.size(), b.values.size());
    ASSERT_EQ(a.preactivations.size(), b.preactivations.size());
    EXPECT_TRUE(torch::equal(a.values[0], b.values[0]));
    EXPECT_FALSE(a.preactivations[0].defined());
    auto grad = [](const torch::Tensor& z) { return z.grad().defined() ? z.grad() : torch::zeros_like(z); };
    for (size_t l = 1; l < a.values.size(); ++l) {
      EXPECT_TRUE(torch::allclose(a.values[l], b.values[l], 1e-12, 1e-12)) << "level " << l;
      EXPECT_TRUE(torch::allclose(a.preactivations[l], b.preactivations[l], 1e-12, 1e-12)) << "level " << l;
      EXPECT_TRUE(torch::allclose(grad(a.preactivations[l]), grad(b.preactivations[l]), 1e-10, 1e-10)) << "level " << l;
    }
    EXPECT_TRUE(torch::allclose(fused->weight_tensor().grad(), levels->weight_tensor().grad(), 1e-10, 1e-10));
    const auto pairs = absent_forward_pairs(fused);
    const auto from_fused = absent_connection_gradients(fused, a, pairs),
               from_levels = absent_connection_gradients(levels, b, pairs);
    ASSERT_EQ(from_fused.size(), from_levels.size());
    for (size_t k = 0; k < from_fused.size(); ++k)
      EXPECT_NEAR(from_fused[k], from_levels[k], 1e-10) << edge_str(pairs[k]);
    // Only the adaptive scales train: the trace is recorded on both paths and
    // scores alike, but for connections into level 1, whose pre-activations
    // autograd does not record on the per-level path (zero there), while the
    // kernel gives their gradient.
    if (trial % 8 >= 4 && fused->topology().levels().size() >= 3) {  // a hidden level before another
      fused->weight_tensor().requires_grad_(false), fused->bias_tensor().requires_grad_(false);
      levels->weight_tensor().requires_grad_(false), levels->bias_tensor().requires_grad_(false);
      auto c = traced_backward(fused, x, y), d = traced_backward(levels, x, y);
      const auto scaled_fused = absent_connection_gradients(fused, c, pairs),
                 scaled_levels = absent_connection_gradients(levels, d, pairs);
      const Topology& t = fused->topology();
      for (size_t k = 0; k < scaled_fused.size(); ++k)
        if (t.level_of(t.dense_of(pairs[k].second)) > 1)
          EXPECT_NEAR(scaled_fused[k], scaled_levels[k], 1e-10) << edge_str(pairs[k]);
    }
    // Under NoGradGuard both paths make a trace that readers refuse alike.
    LevelTrace unrecorded;
    {
      torch::NoGradGuard no_grad;
      fused->forward_traced(x, unrecorded);
    }
    EXPECT_THROW_MSG(absent_connection_gradients(fused, unrecorded, pairs),
                     "absent_connection_gradients(): the trace was made without gradients (under "
                     "torch::NoGradGuard, or with every parameter frozen)");
  }
}

TEST(LevelTrace, ValuesAndGradientsMatchTheForward) {
  NeuralNetwork net(readme_spec(), kTanh64);
  auto x = torch::randn({5, net->num_inputs()}, torch::kFloat64);
  LevelTrace trace;
  auto y = net->forward_traced(x, trace);
  EXPECT_TRUE(torch::allclose(y, net->forward(x), 1e-14, 1e-14));
  ASSERT_EQ(trace.values.size(), net->topology().levels().size());
  EXPECT_FALSE(trace.preactivations[0].defined());
  EXPECT_TRUE(torch::equal(trace.values[0], x.t()));
  y.sum().backward();
  for (size_t l = 1; l < trace.values.size(); ++l) {
    EXPECT_EQ(trace.values[l].size(0), net->topology().levels()[l].size());
    EXPECT_TRUE(trace.preactivations[l].grad().defined()) << "level " << l;
  }
}
