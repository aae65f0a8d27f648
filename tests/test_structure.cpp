// Structure learning: label queries, dead-neuron removal, pruning scopes and
// floors, function-preserving growth, and edits by the free functions carried
// into an optimizer (as_edit).
#include <random>

#include "test_util.h"

using namespace connex;
using namespace connex::testing;

namespace {

// The ids of `network` among `wanted`, in its spec's neuron order.
std::vector<NeuronId> in_spec_order(const NeuralNetwork& network, const std::vector<NeuronId>& wanted) {
  std::vector<NeuronId> out;
  for (const auto& id : network->spec().neurons())
    if (std::find(wanted.begin(), wanted.end(), id) != wanted.end()) out.push_back(id);
  return out;
}

const auto kTanh64 = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh");

// Inputs 0, 1; hidden 2, 3; output 4; weights set by hand.
NeuralNetwork hand_network() {
  NeuralNetwork net(GraphSpec::from_adjacency({{0, {2, 3}}, {1, {2, 3}}, {2, {4}}, {3, {4}}}, {0, 1}, {4}), kTanh64);
  const std::vector<std::tuple<int, int, double>> weights = {{0, 2, 0.1},  {1, 2, -0.5}, {0, 3, 0.2},
                                                             {1, 3, -0.9}, {2, 4, 0.05}, {3, 4, 0.3}};
  for (const auto& [from, to, w] : weights) net->set_weight(from, to, w);
  return net;
}

std::vector<Edge> edges(std::initializer_list<std::pair<int, int>> list) {
  std::vector<Edge> out;
  for (const auto& [a, b] : list) out.emplace_back(a, b);
  return out;
}

}  // namespace

TEST(GraphQueries, AnswerByLabel) {
  NeuralNetwork net(readme_spec());
  const GraphQueries q(net);
  EXPECT_EQ(q.successors(0), (std::vector<NeuronId>{1, 2, 3}));
  EXPECT_EQ(q.predecessors(11), (std::vector<NeuronId>{8, 9, 10}));
  EXPECT_EQ(q.predecessors(0), std::vector<NeuronId>{});
  EXPECT_EQ(q.successors(3), std::vector<NeuronId>{});
  EXPECT_EQ(q.in_degree(4), 2);
  EXPECT_EQ(q.out_degree(6), 2);
  EXPECT_EQ(q.out_degree(11), 0);
  EXPECT_EQ(q.role(3), Role::Output);
  EXPECT_EQ(q.role(0), Role::Input);
  EXPECT_EQ(q.role(5), Role::Hidden);
  EXPECT_THROW_MSG(q.successors(99), "GraphQueries::successors(): neuron 99 is not in the network");
  EXPECT_THROW_MSG(q.in_degree(NeuronId("a")), "GraphQueries::in_degree(): neuron \"a\" is not in the network");
}

TEST(GraphQueries, DegreesSumToTheConnectionsOnRandomGraphs) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    NeuralNetwork net(random_dag(rng));
    const GraphQueries q(net);
    int64_t in = 0, out = 0;
    for (const auto& id : net->spec().neurons()) {
      in += q.in_degree(id);
      out += q.out_degree(id);
      for (const auto& s : q.successors(id)) {
        const auto p = q.predecessors(s);
        EXPECT_NE(std::find(p.begin(), p.end(), id), p.end());
      }
    }
    EXPECT_EQ(in, net->num_connections());
    EXPECT_EQ(out, net->num_connections());
  }
}

// 2 reaches no output; 3 is reached from no input but feeds the output (its
// constant folds into 5's bias); 4 hangs off 3 and reaches nothing.
TEST(DeadNeurons, AreFoundAndRemovedWithTheOutputsUnchanged) {
  NeuralNetwork net(GraphSpec::from_adjacency({{0, {1, 2}}, {1, {5}}, {3, {5, 4}}}, {0}, {5}), kTanh64);
  EXPECT_EQ(dead_neurons(net), in_spec_order(net, {2, 3, 4}));
  const auto x = torch::randn({7, 1}, torch::kFloat64);
  const auto before = net->forward(x);
  EditResult result = remove_dead_neurons(net);
  EXPECT_EQ(result.network->spec().neurons(), in_spec_order(net, {0, 1, 5}));
  EXPECT_LE((result.network->forward(x) - before).abs().max().item<double>(), 1e-12);
  // By hand: 5's bias took w35 · tanh(b3).
  EXPECT_NEAR(result.network->bias(5), net->bias(5) + net->weight(3, 5) * std::tanh(net->bias(3)), 1e-15);
  EXPECT_EQ(result.network->weight(0, 1), net->weight(0, 1));
  EXPECT_TRUE(dead_neurons(result.network).empty());

  // With a technique the constant would pass through it: 3 stays.
  NeuralNetwork adaptive(net->spec(), NeuralNetworkOptions(kTanh64).use_adaptive_activations(true));
  EXPECT_EQ(dead_neurons(adaptive), in_spec_order(net, {2, 4}));
}

// Outputs no input reaches, in the user's output order: one never connected,
// then one whose only path a removal cut.
TEST(ConstantOutputs, AreTheOutputsNoInputReaches) {
  NeuralNetwork net(GraphSpec::from_adjacency({{0, {2}}, {2, {3}}, {1, {4}}, {5, {}}}, {0, 1}, {5, 3, 4}), kTanh64);
  EXPECT_EQ(constant_outputs(net), std::vector<NeuronId>{NeuronId(5)});
  const auto cut = edit(net).remove_connections({Edge(0, 2)}).build().network;
  EXPECT_EQ(constant_outputs(cut), (std::vector<NeuronId>{NeuronId(5), NeuronId(3)}));
  EXPECT_TRUE(constant_outputs(edit(net).add_connections({Edge(1, 5)}).build().network).empty());
}

// Inputs 0 and 1, output 5; level 1 is {2, 3, 4}, level 2 {5, 6, 7}. By
// their connections 3, 4, 6 and 7 reach no output. A technique that reads a
// level's inputs together (topo norm, either attention) mixes 4 into what 5
// reads, since 4 is an input of level 2 (through 6); 6 and 3 stay as well,
// being the only readers of an input of a level that reaches the output (4
// in level 2, 1 in level 1). Only 7, which reads what 5 reads, can go.
TEST(DeadNeurons, ATechniqueThatMixesALevelKeepsItsInputs) {
  const auto spec =
      GraphSpec::from_adjacency({{0, {2, 4}}, {1, {3}}, {2, {5, 7}}, {4, {6}}, {3, {}}, {6, {}}, {7, {}}}, {0, 1}, {5});
  const auto x = torch::randn({6, 2}, torch::kFloat64);
  auto with = [&](const char* technique) {
    const std::string t = technique;
    return NeuralNetwork(spec, NeuralNetworkOptions(kTanh64)
                                   .seed(4)
                                   .use_topo_norm(t == "topo norm")
                                   .use_topo_self_attention(t == "topo self-attention")
                                   .use_neuron_self_attention(t == "neuron self-attention")
                                   .use_adaptive_activations(t == "adaptive activations"));
  };
  for (const char* technique :
       {"none", "adaptive activations", "topo norm", "topo self-attention", "neuron self-attention"}) {
    SCOPED_TRACE(technique);
    NeuralNetwork net = with(technique);
    const bool mixes = net->operations().size() == 1 && net->operations()[0]->reads_whole_level();
    EXPECT_EQ(dead_neurons(net), mixes ? in_spec_order(net, {7}) : in_spec_order(net, {3, 4, 6, 7}));
    const auto before = net->forward(x);
    EditResult result = remove_dead_neurons(net);
    EXPECT_LE((result.network->forward(x) - before).abs().max().item<double>(), 1e-12);
    EXPECT_TRUE(dead_neurons(result.network).empty());
  }
}

// Every technique, since those that read a level's inputs together keep
// more (above).
TEST(DeadNeurons, RemovalKeepsEveryOutputOnRandomGraphs) {
  std::mt19937_64 rng(11);
  int removed = 0;
  for (int trial = 0; trial < 250; ++trial) {
    RandomDagOptions options;
    options.edge_probability = 0.2;
    const int technique = trial % 5;
    NeuralNetwork net(random_dag(rng, options), NeuralNetworkOptions(kTanh64)
                                                    .seed(trial)
                                                    .use_topo_norm(technique == 1)
                                                    .use_topo_self_attention(technique == 2)
                                                    .use_neuron_self_attention(technique == 3)
                                                    .use_adaptive_activations(technique == 4));
    const auto x = torch::randn({5, net->num_inputs()}, torch::kFloat64);
    const auto before = net->forward(x);
    const auto dead = dead_neurons(net);
    EditResult result = remove_dead_neurons(net);
    removed += static_cast<int>(dead.size());
    EXPECT_EQ(result.network->num_neurons(), net->num_neurons() - static_cast<int64_t>(dead.size()));
    EXPECT_LE((result.network->forward(x) - before).abs().max().item<double>(), 1e-12) << "trial " << trial;
    EXPECT_TRUE(dead_neurons(result.network).empty()) << "trial " << trial;
  }
  EXPECT_GT(removed, 100);  // the graphs did have dead neurons
}

TEST(Prune, ScopesChooseTheWeakestOfEachGroup) {
  auto net = hand_network();
  auto pruned = [&](const PruneOptions& o) { return connections_to_prune(net, o); };
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5)), edges({{2, 4}, {0, 2}, {0, 3}}));
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5).scope(PruneScope::PerNeuron)), edges({{2, 4}, {0, 2}, {0, 3}}));
  EXPECT_EQ(pruned(PruneOptions().fraction(0.2).scope(PruneScope::PerNeuron)), edges({}));  // round(0.4) = 0 of 2
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5).scope(PruneScope::PerLevel)), edges({{2, 4}, {0, 2}, {0, 3}}));
  // Level 1: 3 of its 4; level 2: round(1.5) = both.
  EXPECT_EQ(pruned(PruneOptions().fraction(0.75).scope(PruneScope::PerLevel)),
            edges({{2, 4}, {0, 2}, {0, 3}, {3, 4}, {1, 2}}));
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5).protect_outputs(true)), edges({{0, 2}, {0, 3}}));
  EXPECT_EQ(pruned(PruneOptions().threshold(0.25)), edges({{2, 4}, {0, 2}, {0, 3}}));
  // A floor of one input each: 3 -> 4 and 1 -> 2 stay although below the threshold.
  EXPECT_EQ(pruned(PruneOptions().threshold(0.6).keep_min(1)), edges({{2, 4}, {0, 2}, {0, 3}}));
  EXPECT_EQ(pruned(PruneOptions().threshold(0.6)), edges({{2, 4}, {0, 2}, {0, 3}, {3, 4}, {1, 2}}));
}

// connections_to_prune as first written: every group stable-sorted, its
// share taken, the whole choice stable-sorted by score, then the floor.
std::vector<Edge> prune_reference(const NeuralNetwork& net, const PruneOptions& o) {
  const Topology& t = net->topology();
  const auto s = o.scores().defined() ? o.scores().to(torch::kFloat64).contiguous()
                                      : net->weight_tensor().detach().abs().to(torch::kFloat64).contiguous();
  const double* score = s.data_ptr<double>();
  auto group = [&](int64_t c) {
    const int64_t target = t.conn_target()[c];
    return o.scope() == PruneScope::Global ? 0 : o.scope() == PruneScope::PerNeuron ? target : t.level_of(target);
  };
  std::vector<int64_t> order;
  for (int64_t c = 0; c < t.num_connections(); ++c)
    if (!(o.protect_outputs() && t.role(t.conn_target()[c]) == Role::Output)) order.push_back(c);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return group(a) != group(b) ? group(a) < group(b) : score[a] < score[b];
  });
  std::vector<int64_t> chosen;
  for (size_t first = 0; first < order.size();) {
    size_t last = first;
    while (last < order.size() && group(order[last]) == group(order[first])) ++last;
    const size_t count = last - first;
    const size_t take = o.fraction() ? static_cast<size_t>(std::llround(*o.fraction() * double(count))) : count;
    for (size_t k = first; k < first + take; ++k)
      if (!o.threshold() || score[order[k]] < *o.threshold()) chosen.push_back(order[k]);
    first = last;
  }
  std::stable_sort(chosen.begin(), chosen.end(), [&](int64_t a, int64_t b) { return score[a] < score[b]; });
  std::vector<int64_t> remaining(t.num_neurons());
  for (int64_t d = 0; d < t.num_neurons(); ++d) remaining[d] = t.in_offsets()[d + 1] - t.in_offsets()[d];
  std::vector<Edge> edges;
  for (int64_t c : chosen)
    if (remaining[t.conn_target()[c]] > o.keep_min()) {
      --remaining[t.conn_target()[c]];
      edges.emplace_back(t.label(t.conn_source()[c]), t.label(t.conn_target()[c]));
    }
  return edges;
}

// The selection that replaced the sorts chooses the same connections in the
// same order, ties (scores of five values) included, over every scope.
TEST(Prune, SelectionMatchesSortingOnRandomGraphs) {
  std::mt19937_64 rng(5);
  const PruneScope scopes[] = {PruneScope::Global, PruneScope::PerNeuron, PruneScope::PerLevel};
  int64_t compared = 0;
  for (int trial = 0; trial < 300; ++trial) {
    RandomDagOptions options;
    options.edge_probability = 0.3;
    NeuralNetwork net(random_dag(rng, options), NeuralNetworkOptions(kTanh64).seed(trial));
    const auto ties = torch::floor(torch::rand({net->num_connections()}, torch::kFloat64) * 5) / 5;
    PruneOptions o;
    o.scope(scopes[trial % 3]).protect_outputs(trial % 4 == 0).keep_min(trial % 5 == 0 ? 1 : 0);
    if (trial % 2) o.scores(ties);
    if (trial % 7 == 3)
      o.threshold(0.5).scope(PruneScope::Global);  // a threshold takes no scope
    else
      o.fraction(std::uniform_real_distribution<double>(0, 1)(rng));
    const auto got = connections_to_prune(net, o);
    EXPECT_EQ(got, prune_reference(net, o)) << "trial " << trial;
    compared += static_cast<int64_t>(got.size());
  }
  EXPECT_GT(compared, 1000);
}

// A diverged (NaN) weight ranks as the strongest: chosen after every number.
TEST(Prune, ANanWeightRanksAsTheStrongest) {
  auto net = hand_network();
  {
    torch::NoGradGuard no_grad;
    net->weight_tensor()[0] = std::nan("");
  }
  const Topology& t = net->topology();
  const Edge nan_edge{t.label(t.conn_source()[0]), t.label(t.conn_target()[0])};
  auto half = connections_to_prune(net, PruneOptions().fraction(0.5));
  EXPECT_EQ(std::count(half.begin(), half.end(), nan_edge), 0);
  auto all = connections_to_prune(net, PruneOptions().fraction(1.0));
  ASSERT_EQ(all.size(), 6u);
  EXPECT_EQ(all.back(), nan_edge);
}

// A frozen connection holds a weight the user fixed: it is no candidate, and
// a fraction counts the others only; keep_frozen(false) makes it one again.
TEST(Prune, KeepsFrozenConnectionsUnlessTold) {
  auto net = hand_network();
  net->freeze(edges({{2, 4}, {0, 2}}));  // the two weakest
  auto pruned = [&](const PruneOptions& o) { return connections_to_prune(net, o); };
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5)), edges({{0, 3}, {3, 4}}));  // 2 of the 4 others
  EXPECT_EQ(pruned(PruneOptions().threshold(0.25)), edges({{0, 3}}));
  EXPECT_EQ(pruned(PruneOptions().fraction(0.5).keep_frozen(false)), edges({{2, 4}, {0, 2}, {0, 3}}));
  const auto result = prune(net, PruneOptions().fraction(1.0));
  EXPECT_EQ(result.network->num_connections(), 2);
  EXPECT_TRUE(result.network->is_frozen(2, 4));
  EXPECT_TRUE(result.network->is_frozen(0, 2));
  EXPECT_EQ(result.network->weight(2, 4), 0.05);
}

TEST(Prune, RejectsBadOptionsByName) {
  auto net = hand_network();
  EXPECT_THROW_MSG(prune(net, PruneOptions()), "prune(): expected exactly one of fraction and threshold, got neither");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.5).threshold(0.1)),
                   "prune(): expected exactly one of fraction and threshold, got both");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(1.5)), "prune(): expected a fraction in [0, 1], got 1.5");
  EXPECT_THROW_MSG(prune(net, PruneOptions().threshold(-1)), "prune(): expected a finite threshold >= 0, got -1");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.1).keep_min(-2)), "prune(): expected keep_min >= 0, got -2");
  EXPECT_THROW_MSG(prune(net, PruneOptions().fraction(0.1).scope(static_cast<PruneScope>(9))),
                   "prune(): expected a PruneScope (Global, PerNeuron or PerLevel), got 9");
  EXPECT_THROW_MSG(prune(net, PruneOptions().threshold(0.1).scope(PruneScope::PerNeuron)),
                   "prune(): a scope other than Global applies to a fraction (each group's weakest share), got "
                   "PerNeuron with a threshold, which removes every connection below it in any scope");
  EXPECT_THROW_MSG(connections_to_prune(net, PruneOptions().threshold(0.1).scope(PruneScope::PerLevel)),
                   "got PerLevel with a threshold");
  EXPECT_EQ(net->num_connections(), 6);
}

// The pruned network keeps every surviving weight, and the optimizer goes on
// with its type, learning rate and state.
// The command line's names, read in either case; each name reads back as its scope.
TEST(Prune, ScopeNamesReadBack) {
  // kPruneScopes lists every scope once, in declaration order.
  ASSERT_EQ(std::size(kPruneScopes), 3u);
  for (size_t k = 0; k < std::size(kPruneScopes); ++k) {
    EXPECT_EQ(static_cast<size_t>(kPruneScopes[k]), k);
    EXPECT_EQ(prune_scope_from_name(prune_scope_name(kPruneScopes[k])), kPruneScopes[k]);
  }
  EXPECT_STREQ(prune_scope_name(PruneScope::PerNeuron), "neuron");
  EXPECT_EQ(prune_scope_from_name("Level"), PruneScope::PerLevel);
  EXPECT_EQ(prune_scope_from_name("GLOBAL"), PruneScope::Global);
  EXPECT_THROW_MSG(prune_scope_from_name("layer"),
                   "prune_scope_from_name(): expected \"global\", \"neuron\" or \"level\", got \"layer\"");
  EXPECT_THROW_MSG(prune_scope_from_name("lev\nel"), "got \"lev\\nel\"");
  EXPECT_THROW_MSG(prune_scope_name(static_cast<PruneScope>(9)),
                   "prune_scope_name(): expected a PruneScope (Global, PerNeuron or PerLevel), got 9");
}

TEST(Prune, ResultCarriesTheOptimizer) {
  auto net = hand_network();
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.03));
  const auto x = torch::randn({8, 2}, torch::kFloat64), y = torch::randn({8, 1}, torch::kFloat64);
  for (int i = 0; i < 3; ++i) {
    adam.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    adam.step();
  }
  EditResult result = prune(net, PruneOptions().fraction(0.5).scope(PruneScope::PerNeuron));
  EXPECT_EQ(result.network->num_connections(), 3);
  EXPECT_EQ(result.network->weight(1, 2), net->weight(1, 2));
  EXPECT_EQ(result.network->weight(3, 4), net->weight(3, 4));
  auto next = optimizer_after_edit(adam, net, result);
  EXPECT_EQ(next->param_groups()[0].options().get_lr(), 0.03);
  EXPECT_EQ(next->state().size(), 2u);  // weight and bias both have moments
}

// New connections into old neurons start at 0: the fused kernel sums each
// row in connection order, and an added 0·v changes no partial sum.
TEST(Growth, FunctionPreservingKeepsTheOutputsBitForBit) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu").seed(3));
  ASSERT_TRUE(net->uses_fused_kernel());
  const auto x = torch::randn({16, 1});
  const auto before = net->forward(x);
  EditResult grown = edit(net)
                         .add_hidden_neurons({20, 21})
                         .add_connections({{0, 20}, {20, 21}, {21, 11}, {20, 3}, {1, 6}})
                         .function_preserving()
                         .build(7);
  EXPECT_TRUE(torch::equal(grown.network->forward(x), before));
  EXPECT_EQ(grown.network->weight(21, 11), 0.0);
  EXPECT_EQ(grown.network->weight(20, 3), 0.0);
  EXPECT_EQ(grown.network->weight(1, 6), 0.0);
  EXPECT_NE(grown.network->weight(0, 20), 0.0);  // into new neurons: drawn from the seed
  EXPECT_NE(grown.network->weight(20, 21), 0.0);
  // Without the option the new connections are drawn from the seed.
  EditResult drawn = edit(net).add_hidden_neurons({20}).add_connections({{0, 20}, {20, 3}}).build(7);
  EXPECT_NE(drawn.network->weight(20, 3), 0.0);
}

TEST(Growth, FunctionPreservingOnRandomGraphsInDouble) {
  std::mt19937_64 rng(21);
  for (int trial = 0; trial < 100; ++trial) {
    NeuralNetwork net(random_dag(rng), NeuralNetworkOptions(kTanh64).seed(trial));
    const auto x = torch::randn({4, net->num_inputs()}, torch::kFloat64);
    const auto before = net->forward(x);
    // A new neuron between an input and every hidden or output neuron.
    auto editor = edit(net).add_hidden_neurons({1000}).add_connections({{net->input_neurons()[0], 1000}});
    for (const auto& id : net->spec().neurons())
      if (net->spec().role(id) != Role::Input) editor.add_connections({{1000, id}});
    auto grown = editor.function_preserving().build(trial).network;
    EXPECT_LE((grown->forward(x) - before).abs().max().item<double>(), 1e-12) << "trial " << trial;
  }
}

// A norm or an attention over a level reads all of its inputs, so a new
// input (weight 0 or not) or a neuron moved to another level changes old
// outputs; neuron attention's keys are a neuron's connections, so a new
// connection into an old neuron does too. A function-preserving edit
// refuses each, names the culprit and leaves the network as it was; growth
// that avoids them stays exact. README graph levels: 1 {1, 2, 3},
// 2 {4, 5}, 3 {6, 7}, 4 {8, 9, 10}, 5 {11}; level 3 reads 4 and 5.
TEST(Growth, FunctionPreservingUnderOperationsThatReadAWholeLevel) {
  const std::vector<std::pair<std::string, NeuralNetworkOptions>> variants = {
      {"topo_norm", NeuralNetworkOptions(kTanh64).use_topo_norm(true)},
      {"topo_self_attention", NeuralNetworkOptions(kTanh64).use_topo_self_attention(true)},
      {"neuron_self_attention", NeuralNetworkOptions(kTanh64).use_neuron_self_attention(true)},
  };
  torch::manual_seed(4);
  const auto x = torch::randn({8, 1}, torch::kFloat64);
  for (const auto& [name, options] : variants) {
    SCOPED_TRACE(name);
    const bool by_connection = name == "neuron_self_attention";
    NeuralNetwork net(readme_spec(), NeuralNetworkOptions(options).seed(5));
    const auto before = net->forward(x);
    // The new neuron 20 reads input 0 and feeds nothing; 4 already feeds level 3.
    auto kept = edit(net).add_hidden_neurons({20}).add_connections({{0, 20}});
    if (!by_connection) kept.add_connections({{4, 7}});
    auto grown = kept.function_preserving().build(1).network;
    EXPECT_LE((grown->forward(x) - before).abs().max().item<double>(), 1e-12);

    auto refused = [&](std::vector<Edge> added, const std::string& level_message) {
      EXPECT_THROW_MSG(
          edit(net).add_connections(added).function_preserving().build(1),
          by_connection
              ? "function_preserving(): connection " + edge_str(added[0]) + " would enter old neuron " +
                    added[0].second.str() + ", and neuron_self_attention attends over a neuron's connections"
              : "function_preserving(): " + level_message + ", and " + name + " reads a level's inputs together");
      EXPECT_NO_THROW(edit(net).add_connections(added).build(1));  // without the promise it builds
    };
    refused({{1, 6}}, "level 3 would read neuron 1 besides its old inputs");
    refused({{8, 10}}, "neuron 10 would move from level 4 to level 5");
    if (by_connection) refused({{4, 7}}, "");
    EXPECT_TRUE(torch::equal(net->forward(x), before));  // refused edits change nothing
  }
  // Adaptive activations act per neuron: any growth keeps the function.
  NeuralNetwork adaptive(readme_spec(), NeuralNetworkOptions(kTanh64).use_adaptive_activations(true).seed(5));
  const auto before = adaptive->forward(x);
  auto grown = edit(adaptive).add_connections({{1, 6}, {8, 10}}).function_preserving().build(1).network;
  EXPECT_LE((grown->forward(x) - before).abs().max().item<double>(), 1e-12);
}

// A free function's result, turned into an EditResult by label, carries an
// optimizer exactly as the editor's own result does.
TEST(AsEdit, MatchesTheEditorsRemap) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().seed(2));
  const auto by_editor = edit(net).add_connections({{1, 6}, {2, 11}}).remove_neurons({9}).build(1);
  const auto by_label = as_edit(net, by_editor.network);
  for (const char* name : {"weight", "bias"}) {
    EXPECT_TRUE(
        torch::equal(by_label.parameters.moved.at(name).new_index, by_editor.parameters.moved.at(name).new_index));
    EXPECT_TRUE(
        torch::equal(by_label.parameters.moved.at(name).old_index, by_editor.parameters.moved.at(name).old_index));
  }
  EXPECT_EQ(by_label.positions.inputs, by_editor.positions.inputs);
  EXPECT_EQ(by_label.positions.outputs, by_editor.positions.outputs);
  const NeuralNetwork added = add_connections(net, {{1, 6}});
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.2).momentum(0.5));
  auto next = optimizer_after_edit(sgd, net, as_edit(net, added));
  EXPECT_EQ(next->param_groups()[0].options().get_lr(), 0.2);
  EXPECT_THROW_MSG(as_edit(net, NeuralNetwork(nullptr)), "as_edit(): expected two networks, got an empty holder");
}
