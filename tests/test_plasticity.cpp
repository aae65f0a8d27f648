// Plasticity: edits keep every surviving parameter, leave the original alone,
// reject invalid edits with the culprit named, and carry optimizer state.
#include <optional>
#include <set>

#include "network_snapshot.h"
#include "optimizer_key.h"
#include "reference_eval.h"

using namespace connex;
using namespace connex::testing;

namespace {

const auto kDouble = NeuralNetworkOptions().dtype(torch::kFloat64);

}  // namespace

// The network's options but the seed carry over to the edited network, as
// do its mode and device, on the patched path (connections and a hidden
// neuron) and the compiled one (a neuron removed, its dropout with it).
TEST(Plasticity, AnEditKeepsTheNetworksOptionsAndMode) {
  const auto options = NeuralNetworkOptions()
                           .hidden_activation("tanh")
                           .output_transformation("softmax")
                           .dtype(torch::kFloat64)
                           .use_topo_norm(true)
                           .dropout_p(DropoutSpec({{4, 0.2}, {9, 0.1}}))
                           .seed(3)
                           .execution(ExecutionOptions().fused(false).dense_path(false).dense_threshold(0.3));
  NeuralNetwork net(readme_spec(), options);
  net->eval();
  const NeuronId input = net->spec().inputs()[0], output = net->spec().outputs()[0];
  const EditResult grown = edit(net)
                               .remove_connections({net->spec().edges()[0]})
                               .add_hidden_neurons({50})
                               .add_connections({{input, 50}, {50, output}})
                               .build(7);
  const EditResult shrunk = edit(net).remove_neurons({9}).build(8);
  for (const EditResult* r : {&grown, &shrunk}) {
    const NeuralNetworkOptions& got = r->network->options();
    EXPECT_EQ(got.hidden_activation().name(), "tanh");
    EXPECT_EQ(got.output_transformation().name(), "softmax");
    EXPECT_EQ(got.dtype(), torch::kFloat64);
    EXPECT_EQ(r->network->weight_tensor().scalar_type(), torch::kFloat64);
    EXPECT_TRUE(got.use_topo_norm());
    EXPECT_EQ(got.execution().fused(), std::optional<bool>(false));
    EXPECT_EQ(got.execution().dense_path(), std::optional<bool>(false));
    EXPECT_EQ(got.execution().dense_threshold(), 0.3);
    EXPECT_FALSE(r->network->is_training());
    EXPECT_EQ(r->network->weight_tensor().device(), net->weight_tensor().device());
  }
  EXPECT_EQ(grown.network->options().seed(), 7u);
  EXPECT_EQ(shrunk.network->options().seed(), 8u);
  using Entries = std::vector<std::pair<NeuronId, double>>;
  EXPECT_EQ(grown.network->options().dropout_p().per_neuron, (Entries{{4, 0.2}, {9, 0.1}}));
  EXPECT_EQ(shrunk.network->options().dropout_p().per_neuron, (Entries{{4, 0.2}}));
}

TEST(Plasticity, ReadmeSequenceKeepsWeightsAndTrainingContinues) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  auto [x, y] = cos_sin_data();
  train(net, x, y, 1000);
  const auto before = snapshot(net);
  const auto y_before = net->forward(x);

  auto added = add_connections(net, {{1, 6}, {2, 11}});
  auto [edited, positions] = remove_neurons(added, {9});
  EXPECT_EQ(edited->num_connections(), 14 + 2 - 2);
  // Neuron order: adjacency keys 0 1 2 4 5 6 7 8 9 10, then 3 and 11 from edges.
  EXPECT_EQ(positions.neurons, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, -1, 8, 9, 10}));
  EXPECT_EQ(positions.outputs, (std::vector<int64_t>{0, 1}));
  expect_survivors_identical(before, snapshot(edited));
  expect_same_network(net, before, x, y_before);  // the original is untouched

  const double loss_edit = mse(edited->forward(x), y);
  auto [first, last] = train(edited, x, y, 1000);
  EXPECT_LT(last, loss_edit);
  expect_same_network(net, before, x, y_before);  // training the new one never moves the old
}

TEST(Plasticity, NewInputsComeFirstAndNewNeuronsStartIsolated) {
  auto net = nn::MLP(2, 1, 3, 1, kDouble);  // inputs 0, 1; hidden 2..4; output 5
  auto wider = add_input_neurons(net, {10, 11});
  EXPECT_EQ(wider->input_neurons(), (std::vector<NeuronId>{10, 11, 0, 1}));
  auto x = torch::randn({4, 2}, torch::kFloat64);
  // New inputs are isolated: whatever they receive, outputs match the old network.
  auto x4 = torch::cat({torch::randn({4, 2}, torch::kFloat64), x}, 1);
  EXPECT_TRUE(torch::equal(wider->forward(x4), net->forward(x)));

  auto more = add_output_neurons(add_hidden_neurons(net, {20}), {30, 31});
  EXPECT_EQ(more->output_neurons(), (std::vector<NeuronId>{5, 30, 31}));
  EXPECT_EQ(more->hidden_neurons().back(), NeuronId(20));
  auto y = more->forward(x);
  EXPECT_TRUE(torch::equal(y.narrow(1, 0, 1), net->forward(x)));
  // An isolated output is its bias.
  EXPECT_TRUE(torch::allclose(y.select(1, 1), torch::full({4}, more->bias(30), torch::kFloat64)));
}

TEST(Plasticity, RemoveNeuronsReportsPositions) {
  auto net = nn::MLP(3, 3, 2, 1, kDouble);  // inputs 0..2, hidden 3, 4, outputs 5..7
  auto [smaller, positions] = remove_neurons(net, {1, 6, 3});
  EXPECT_EQ(positions.inputs, (std::vector<int64_t>{0, -1, 1}));
  EXPECT_EQ(positions.outputs, (std::vector<int64_t>{0, -1, 1}));
  EXPECT_EQ(positions.neurons, (std::vector<int64_t>{0, -1, 1, -1, 2, 3, -1, 4}));
  EXPECT_EQ(smaller->num_connections(), 2 * 1 + 1 * 2);
  EXPECT_EQ(smaller->forward(torch::zeros({1, 2}, torch::kFloat64)).sizes(), (std::vector<int64_t>{1, 2}));
}

TEST(Plasticity, SetDropoutNumberAndMap) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().dropout_p(DropoutSpec({{0, 0.3}, {4, 0.2}})));
  auto uniform = set_dropout_p(net, 0.4);
  EXPECT_DOUBLE_EQ(uniform->dropout_p(0), 0.0);
  EXPECT_DOUBLE_EQ(uniform->dropout_p(4), 0.4);
  EXPECT_DOUBLE_EQ(uniform->dropout_p(11), 0.0);
  auto mapped = set_dropout_p(net, DropoutSpec({{5, 0.5}, {11, 0.1}}));
  EXPECT_DOUBLE_EQ(mapped->dropout_p(0), 0.3);  // unnamed neurons keep theirs
  EXPECT_DOUBLE_EQ(mapped->dropout_p(4), 0.2);
  EXPECT_DOUBLE_EQ(mapped->dropout_p(5), 0.5);
  EXPECT_DOUBLE_EQ(mapped->dropout_p(11), 0.1);
  EXPECT_DOUBLE_EQ(net->dropout_p(5), 0.0);
  // A new hidden neuron of a uniformly dropped network gets the uniform p.
  EXPECT_DOUBLE_EQ(add_hidden_neurons(uniform, {50})->dropout_p(50), 0.4);
}

TEST(Plasticity, OptionsAndModuleParametersCarryOver) {
  auto act = torch::nn::PReLU(torch::nn::PReLUOptions().init(0.3));
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation(act).output_transformation("softmax"));
  net->freeze({{8, 11}});
  auto edited = add_connections(net, {{1, 6}});
  EXPECT_EQ(edited->options().output_transformation().name(), "softmax");
  EXPECT_TRUE(edited->is_frozen(8, 11));
  EXPECT_FALSE(edited->is_frozen(1, 6));
  auto old_slope = net->named_parameters()["hidden_activation.weight"];
  auto new_slope = edited->named_parameters()["hidden_activation.weight"];
  EXPECT_TRUE(torch::equal(old_slope, new_slope));
  EXPECT_NE(old_slope.data_ptr(), new_slope.data_ptr());
}

TEST(Plasticity, ResultSharesNoStorage) {
  auto net = nn::DenseMLP(2, 2, 8, 2);
  auto result = edit(net).build();
  std::set<const void*> old_ptrs;
  for (const auto& p : net->parameters()) old_ptrs.insert(p.data_ptr());
  for (const auto& b : net->buffers()) old_ptrs.insert(b.data_ptr());
  for (const auto& p : result.network->parameters()) EXPECT_FALSE(old_ptrs.count(p.data_ptr()));
  for (const auto& b : result.network->buffers()) EXPECT_FALSE(old_ptrs.count(b.data_ptr()));
  EXPECT_TRUE(torch::equal(net->weight_tensor(), result.network->weight_tensor()));
}

// ------------------------------------------------------------ invalid edits

class InvalidEdit : public ::testing::Test {
 protected:
  void SetUp() override {
    net = NeuralNetwork(readme_spec(), kDouble);
    before = snapshot(net);
    x = torch::linspace(0, 1, 5, torch::kFloat64).unsqueeze(1);
    y = net->forward(x);
  }
  void TearDown() override { expect_same_network(net, before, x, y); }
  NeuralNetwork net{nullptr};
  Snapshot before;
  torch::Tensor x, y;
};

TEST_F(InvalidEdit, UnknownNeuron) {
  EXPECT_THROW_MSG(add_connections(net, {{1, 42}}),
                   "add_connections(): edge 1 -> 42 names neuron 42, which is not in the network");
  EXPECT_THROW_MSG(remove_neurons(net, {42}), "remove_neurons(): neuron 42 is not in the network");
  EXPECT_THROW_MSG(set_dropout_p(net, DropoutSpec({{42, 0.1}})), "set_dropout_p(): neuron 42 is not in the network");
}

TEST_F(InvalidEdit, ConnectionIntoInput) {
  EXPECT_THROW_MSG(add_connections(net, {{4, 0}}), "add_connections(): edge 4 -> 0 would enter input neuron 0");
}

TEST_F(InvalidEdit, ConnectionOutOfOutput) {
  EXPECT_THROW_MSG(add_connections(net, {{3, 4}}), "add_connections(): edge 3 -> 4 would leave output neuron 3");
}

TEST_F(InvalidEdit, Cycle) {
  EXPECT_THROW_MSG(add_connections(net, {{8, 2}}),
                   "add_connections(): edge 8 -> 2 would create the cycle 2 -> 4 -> 6 -> 8 -> 2");
  EXPECT_THROW_MSG(add_connections(net, {{5, 5}}), "add_connections(): edge 5 -> 5 would create the cycle 5 -> 5");
  // Two edges that close a cycle only together.
  EXPECT_THROW_MSG(edit(net).add_connections({{7, 1}}).add_connections({{1, 5}}).build(),
                   "would create the cycle 1 -> 5 -> 7 -> 1");
}

TEST_F(InvalidEdit, NeuronThatExists) {
  EXPECT_THROW_MSG(add_hidden_neurons(net, {4}), "add_hidden_neurons(): neuron 4 already exists");
  EXPECT_THROW_MSG(add_input_neurons(net, {20, 20}), "add_input_neurons(): neuron 20 is listed twice");
  EXPECT_THROW_MSG(add_output_neurons(net, {"x"}),
                   "add_output_neurons(): neuron \"x\" is a string but the network's neuron ids are integers");
}

TEST_F(InvalidEdit, RemovingAConnectionThatDoesNotExist) {
  EXPECT_THROW_MSG(remove_connections(net, {{0, 11}}), "remove_connections(): there is no connection 0 -> 11");
  EXPECT_THROW_MSG(remove_connections(net, {{0, 1}, {0, 1}}), "remove_connections(): edge 0 -> 1 is listed twice");
  EXPECT_THROW_MSG(edit(net).remove_connections({{0, 1}}).remove_connections({{0, 1}}),
                   "remove_connections(): edge 0 -> 1 was removed earlier in this edit");
  // Added back in the same edit, it came back with its trained weight, unlike a re-added neuron (refused).
  NetworkEditor editor = edit(net);
  editor.remove_connections({{0, 1}});
  EXPECT_THROW_MSG(editor.add_connections({{0, 2}, {0, 1}}),
                   "add_connections(): edge 0 -> 1 was removed earlier in this edit; build() first, then add it anew");
  EXPECT_EQ(editor.build().network->num_connections(), net->num_connections() - 1);  // the refused call added nothing
  EXPECT_THROW_MSG(edit(net).add_hidden_neurons({20}).add_connections({{0, 20}}).remove_connections({{0, 20}, {0, 20}}),
                   "remove_connections(): edge 0 -> 20 is listed twice");
}

TEST_F(InvalidEdit, RemovingConnectionsByIndex) {
  const Topology& t = net->topology();
  const int64_t n = net->num_connections();
  const int64_t c = t.connection_index(t.dense_of(1), t.dense_of(4));
  EXPECT_THROW_MSG(edit(net).remove_connections_at({c, n}),
                   fmt::format("remove_connections_at(): connection index {} is out of range; the network has {} "
                               "connections",
                               n, n));
  EXPECT_THROW_MSG(edit(net).remove_connections_at({-1}), "connection index -1 is out of range");
  EXPECT_THROW_MSG(edit(net).remove_connections_at({c, c}),
                   fmt::format("remove_connections_at(): connection {} (1 -> 4) is listed twice", c));
  EXPECT_THROW_MSG(edit(net).remove_connections({{1, 4}}).remove_connections_at({c}),
                   fmt::format("remove_connections_at(): connection {} (1 -> 4) was removed earlier in this edit", c));
  EXPECT_THROW_MSG(edit(net).remove_neurons({4}).remove_connections_at({c}),
                   fmt::format("remove_connections_at(): connection {} (1 -> 4) touches neuron 4, which this edit "
                               "removed",
                               c));
  // From tensors: a mask of the wrong shape, a float tensor, an undefined one.
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::zeros({n + 1}, torch::kBool)),
                   fmt::format("remove_connections_at(): expected a bool mask of shape [{}] (one entry per "
                               "connection), got [{}]",
                               n, n + 1));
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::zeros({2})),
                   "remove_connections_at(): expected 1-D int64 indices or a bool mask, got a 1-D Float tensor "
                   "(for a mask, compare: scores < threshold)");
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::ones({3}).nonzero()),
                   "got a 2-D Long tensor (nonzero() gives [k, 1]: flatten it)");
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::zeros({2}, torch::kInt)), "got a 1-D Int tensor");
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::Tensor()),
                   "remove_connections_at(): expected a tensor of indices or a mask, got an undefined one");
  EXPECT_THROW_MSG(edit(net).remove_connections_at(torch::tensor({c, c})), "(1 -> 4) is listed twice");
  // A call that fails records nothing: 1 -> 4 is still there, whichever way it was named.
  for (int way = 0; way < 2; ++way) {
    auto editor = edit(net);
    if (way == 0) EXPECT_THROW(editor.remove_connections_at({c, n}), Error);
    if (way == 1) EXPECT_THROW(editor.remove_connections({{1, 4}, {0, 11}}), Error);
    const auto result = editor.build();
    EXPECT_EQ(result.network->num_connections(), n);
    EXPECT_EQ(result.network->weight(1, 4), net->weight(1, 4));
  }
}

TEST_F(InvalidEdit, RemovingEveryInputOrOutput) {
  EXPECT_THROW_MSG(remove_neurons(net, {0}),
                   "remove_neurons(): removing [0] would leave the network without input neurons");
  EXPECT_THROW_MSG(remove_neurons(net, {3, 11}), "would leave the network without output neurons");
}

TEST_F(InvalidEdit, BadDropout) {
  EXPECT_THROW_MSG(set_dropout_p(net, 2.0), "set_dropout_p(): dropout_p for hidden neurons is 2");
  EXPECT_THROW_MSG(set_dropout_p(net, DropoutSpec({{4, std::nan("")}})), "dropout_p of neuron 4 is nan");
}

TEST_F(InvalidEdit, ReaddingARemovedNeuronInOneBatch) {
  EXPECT_THROW_MSG(edit(net).remove_neurons({4}).add_hidden_neurons({4}).build(),
                   "add_hidden_neurons(): neuron 4 was removed earlier in this edit");
}

// Removing connections by index is removing them by edge: the same network,
// bit for bit, over random picks; indices from a tensor or a mask name the
// same connections; an index removed and its edge added back in one edit
// keeps its weight.
TEST(Plasticity, RemovingByIndexIsRemovingByEdge) {
  torch::manual_seed(3);
  NeuralNetwork net(
      nn::random_dag_spec(nn::RandomDagOptions().inputs(4).hidden(60).outputs(3).connections(400).seed(7)), kDouble);
  const Topology& t = net->topology();
  std::mt19937_64 rng(11);
  const auto x = torch::randn({5, net->num_inputs()}, torch::kFloat64);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<int64_t> indices;
    std::vector<Edge> edges;
    for (int64_t c = 0; c < t.num_connections(); ++c)
      if (std::uniform_int_distribution<int>(0, 9)(rng) < trial % 10) {
        indices.push_back(c);
        edges.emplace_back(t.label(t.conn_source()[c]), t.label(t.conn_target()[c]));
      }
    std::shuffle(indices.begin(), indices.end(), rng);
    auto by_index = edit(net).remove_connections_at(indices).build().network;
    auto by_edge = remove_connections(net, edges);
    EXPECT_EQ(by_index->spec().edge_indices(), by_edge->spec().edge_indices());
    EXPECT_TRUE(torch::equal(by_index->weight_tensor(), by_edge->weight_tensor()));
    EXPECT_TRUE(torch::equal(by_index->forward(x), by_edge->forward(x)));
  }
  // From tensors: int64 indices, or a mask (the weakest third here).
  const auto weak = net->weight_tensor().detach().abs() < 0.1;
  auto by_mask = edit(net).remove_connections_at(weak).build().network;
  auto by_tensor = edit(net).remove_connections_at(weak.nonzero().view(-1)).build().network;
  std::vector<int64_t> listed;
  for (int64_t c = 0; c < t.num_connections(); ++c)
    if (weak[c].item<bool>()) listed.push_back(c);
  ASSERT_GT(listed.size(), 10u);
  auto by_list = edit(net).remove_connections_at(listed).build().network;
  EXPECT_EQ(edit(net).remove_connections_at({}).build().network->num_connections(), net->num_connections());
  EXPECT_EQ(by_mask->num_connections(), net->num_connections() - static_cast<int64_t>(listed.size()));
  for (const auto& other : {by_tensor, by_list}) {
    EXPECT_EQ(by_mask->spec().edge_indices(), other->spec().edge_indices());
    EXPECT_TRUE(torch::equal(by_mask->weight_tensor(), other->weight_tensor()));
  }
  const int64_t c = t.num_connections() / 2;
  const Edge edge{t.label(t.conn_source()[c]), t.label(t.conn_target()[c])};
  // Removed by index, it is removed as by its edge: adding it back in the same edit is refused.
  EXPECT_THROW_MSG(edit(net).remove_connections_at({c}).add_connections({edge}),
                   "add_connections(): edge " + edge_str(edge) + " was removed earlier in this edit");
}

// ------------------------------------------------------- property: at scale

TEST(Plasticity, RandomEditSequencesKeepEverySurvivingParameter) {
  std::mt19937_64 rng(12345);
  int fd_checked = 0;
  for (int trial = 0; trial < 150; ++trial) {
    // Inputs drawn from a seed of the trial's: LibTorch seeds its generator anew in every process, and one
    // ctest run's draw put trial 0's finite differences (all four techniques, gelu) 1.1e-5 away.
    torch::manual_seed(trial);
    auto spec = random_dag(rng, {4, 14, 0.3, trial % 4 == 0});
    // Every fifth network runs all four techniques, whose parameters must survive too.
    const bool techniques = trial % 5 == 0;
    NeuralNetwork net(spec, NeuralNetworkOptions(kDouble)
                                .hidden_activation(trial % 2 ? "tanh" : "gelu")
                                .seed(trial)
                                .use_topo_norm(techniques)
                                .use_topo_self_attention(techniques)
                                .use_neuron_self_attention(techniques)
                                .use_adaptive_activations(techniques));
    auto x = torch::randn({3, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    const auto before = snapshot(net);
    const auto y_before = net->forward(x);

    // A random sequence of edits, each valid when applied (acyclicity
    // included), in one editor: build() must accept it.
    NetworkEditor editor = edit(net);
    const auto plan = random_edit_sequence(net, editor, rng, std::uniform_int_distribution<int>(1, 6)(rng));
    EditResult result{NeuralNetwork(nullptr), {}, {}};
    try {
      result = editor.build(trial);
    } catch (const Error& e) {
      FAIL() << "trial " << trial << ": a sequence of valid edits was refused: " << e.what();
    }
    auto& edited = result.network;
    ASSERT_EQ(edited->num_neurons(), plan.neurons);
    ASSERT_EQ(edited->num_connections(), plan.connections);
    expect_survivors_identical(before, snapshot(edited));
    if (techniques) expect_operation_parameters_survive(net, edited);
    expect_same_network(net, before, x, y_before);
    auto x_new = torch::randn({3, edited->num_inputs()}, torch::kFloat64);
    edited->eval();
    ASSERT_TRUE(torch::isfinite(edited->forward(x_new)).all().item<bool>());
    if (trial % 10 == 0) {
      ASSERT_LE(max_gradient_error(edited, x_new, 16), 1e-6) << "trial " << trial;
      ++fd_checked;
    }
  }
  EXPECT_EQ(fd_checked, 15);
}

// An edit that removes connections and adds hidden neurons and connections
// patches the base's topology (Topology::with_connections()). The same edit
// of the same network ordered by a topo_sort (its own dense order, so both
// bases are one topology) is compiled. Both must give one network: the
// topology, every parameter bit for bit (new entries drawn alike), the remap
// and the positions; over random edits where neurons change level, with
// techniques and function_preserving in some, and pairs in any direction in
// others.
TEST(Plasticity, PatchedEditIsTheCompiledEdit) {
  std::mt19937_64 rng(77);
  int moved = 0, listed_apart = 0, refused = 0;
  for (int trial = 0; trial < 120; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    const bool string_ids = trial % 2 == 1, techniques = trial % 4 == 0, keep_function = trial % 3 == 0;
    auto spec = random_dag(rng, {4, 30, 0.3, string_ids});
    const auto options =
        NeuralNetworkOptions(kDouble).seed(trial).use_topo_norm(techniques).use_adaptive_activations(techniques);
    NeuralNetwork plain(spec, options);
    const Topology& t = plain->topology();
    const int64_t n = t.num_neurons(), m = t.num_connections();
    std::vector<NeuronId> order;
    for (int64_t d = 0; d < n; ++d) order.push_back(t.label(d));
    NeuralNetwork sorted(spec, NeuralNetworkOptions(options).topo_sort(order));
    {
      torch::NoGradGuard no_grad;
      auto into = sorted->named_parameters();
      for (auto& p : plain->named_parameters()) into[p.key()].copy_(p.value());
    }
    auto draw = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
    std::vector<int64_t> removed;
    const double share = std::uniform_real_distribution<double>(0, 0.5)(rng);
    for (int64_t c = 0; c < m; ++c)
      if (std::bernoulli_distribution(share)(rng)) removed.push_back(c);
    // New neurons fed from below a pivot and feeding above it; pairs along the dense order.
    std::vector<NeuronId> fresh;
    for (int64_t j = 0, k = draw(1, 3); j < k; ++j)
      fresh.push_back(string_ids ? NeuronId("new" + std::to_string(j)) : NeuronId(1000 + j));
    auto label = [&](int64_t d) { return d < n ? t.label(d) : fresh[d - n]; };
    std::set<Edge> chosen;
    std::vector<Edge> added;
    auto offer = [&](int64_t s, int64_t d) {
      if (s == d || (s < n && t.role(s) == Role::Output) || (d < n && t.role(d) == Role::Input)) return;
      if (s < n && d < n && t.connection_index(s, d) >= 0) return;
      if (chosen.insert({label(s), label(d)}).second) added.emplace_back(label(s), label(d));
    };
    // Every fifth trial also draws pairs against the dense order: the patch
    // declines them, and both edits compile (or name the same cycle).
    const bool any_direction = trial % 5 == 4;
    for (int tries = 0; tries < 12; ++tries) {
      const int64_t a = draw(0, n - 1), b = draw(0, n - 1);
      any_direction ? offer(a, b) : offer(std::min(a, b), std::max(a, b));
    }
    for (int64_t j = 0; j < static_cast<int64_t>(fresh.size()); ++j) {
      const int64_t pivot = draw(t.num_inputs(), n - 1);
      for (int e = 0; e < 2; ++e) offer(draw(0, pivot - 1), n + j), offer(n + j, draw(pivot, n - 1));
    }
    auto build = [&](const NeuralNetwork& net) {
      return edit(net)
          .remove_connections_at(removed)
          .add_hidden_neurons(fresh)
          .add_connections(added)
          .function_preserving(keep_function)
          .build(trial + 1);
    };
    std::optional<EditResult> got, want;
    std::string got_error, want_error;
    try {
      got = build(plain);
    } catch (const Error& e) {
      got_error = e.what();
    }
    try {
      want = build(sorted);
    } catch (const Error& e) {
      want_error = e.what();
    }
    ASSERT_EQ(got_error, want_error);
    if (!got) {  // a cycle, or a function-preserving edit a norm refuses, in both
      ++refused;
      continue;
    }
    NeuralNetwork a = got->network, b = want->network;
    expect_same_compiled_fields(a->topology(), b->topology());
    EXPECT_FALSE(a->options().topo_sort() || b->options().topo_sort());
    auto theirs = b->named_parameters();
    for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), theirs[p.key()])) << p.key();
    for (const auto& [name, pairs] : want->parameters.moved) {
      ASSERT_TRUE(got->parameters.moved.count(name)) << name;
      EXPECT_TRUE(torch::equal(got->parameters.moved.at(name).new_index, pairs.new_index)) << name;
      EXPECT_TRUE(torch::equal(got->parameters.moved.at(name).old_index, pairs.old_index)) << name;
    }
    EXPECT_EQ(got->parameters.moved.size(), want->parameters.moved.size());
    EXPECT_EQ(got->positions.neurons, want->positions.neurons);
    EXPECT_EQ(got->positions.inputs, want->positions.inputs);
    EXPECT_EQ(got->positions.outputs, want->positions.outputs);
    auto x = torch::randn({4, a->num_inputs()}, torch::kFloat64);
    a->eval(), b->eval();
    EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
    for (int64_t d = 0; d < n; ++d)
      moved += a->topology().level_of(a->topology().dense_of(t.label(d))) != t.level_of(d);
    // The one difference: a patched spec lists its edges by source, a compiled one as given.
    listed_apart += a->spec().edge_indices() != b->spec().edge_indices();
  }
  EXPECT_GT(moved, 100);
  EXPECT_GT(listed_apart, 60);  // the two paths ran
  EXPECT_GT(refused, 5);
}

// ------------------------------------------------------ optimizer continuity

namespace {

template <typename Optimizer, typename Options>
void expect_continuity(Options options) {
  auto [x, y] = cos_sin_data();
  const int k = 25;
  auto reference = nn::DenseMLP(1, 2, 8, 2, NeuralNetworkOptions().seed(3));
  auto interrupted = nn::DenseMLP(1, 2, 8, 2, NeuralNetworkOptions().seed(3));
  auto step = [&](NeuralNetwork& net, torch::optim::Optimizer& opt) {
    opt.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    opt.step();
  };
  Optimizer ref_opt(reference->parameters(), options);
  for (int i = 0; i < 2 * k; ++i) step(reference, ref_opt);

  Optimizer first(interrupted->parameters(), options);
  for (int i = 0; i < k; ++i) step(interrupted, first);
  auto result = edit(interrupted).build(99);  // an edit that changes nothing
  Optimizer second(result.network->parameters(), options);
  transfer_optimizer_state(first, interrupted, second, result);
  for (int i = 0; i < k; ++i) step(result.network, second);

  EXPECT_TRUE(torch::equal(reference->weight_tensor(), result.network->weight_tensor()));
  EXPECT_TRUE(torch::equal(reference->bias_tensor(), result.network->bias_tensor()));
}

}  // namespace

TEST(OptimizerContinuity, AdamBitIdenticalAcrossANullEdit) {
  expect_continuity<torch::optim::Adam>(torch::optim::AdamOptions(1e-2));
}
TEST(OptimizerContinuity, AdamWAmsgradBitIdenticalAcrossANullEdit) {
  expect_continuity<torch::optim::AdamW>(torch::optim::AdamWOptions(1e-2).amsgrad(true));
}
TEST(OptimizerContinuity, SgdMomentumBitIdenticalAcrossANullEdit) {
  expect_continuity<torch::optim::SGD>(torch::optim::SGDOptions(1e-2).momentum(0.9));
}
TEST(OptimizerContinuity, RmspropBitIdenticalAcrossANullEdit) {
  expect_continuity<torch::optim::RMSprop>(torch::optim::RMSpropOptions(1e-3).momentum(0.5).centered(true));
}

TEST(OptimizerContinuity, SurvivorsKeepMomentsNewEntriesStartAtZero) {
  auto [x, y] = cos_sin_data();
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 5; ++i) {
    adam.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    adam.step();
  }
  auto result = edit(net).add_connections({{1, 6}}).remove_neurons({9}).build();
  torch::optim::Adam next(result.network->parameters(), torch::optim::AdamOptions(1e-2));
  transfer_optimizer_state(adam, net, next, result);
  auto& old_state = adam_state(adam, net->weight_tensor());
  auto& new_state = adam_state(next, result.network->weight_tensor());
  EXPECT_EQ(new_state.step(), 5);
  const auto& t_old = net->topology();
  const auto& t_new = result.network->topology();
  auto at = [](const Topology& t, int u, int v) { return t.connection_index(t.dense_of(u), t.dense_of(v)); };
  EXPECT_EQ(new_state.exp_avg()[at(t_new, 0, 1)].item<float>(), old_state.exp_avg()[at(t_old, 0, 1)].item<float>());
  EXPECT_EQ(new_state.exp_avg_sq()[at(t_new, 6, 8)].item<float>(),
            old_state.exp_avg_sq()[at(t_old, 6, 8)].item<float>());
  EXPECT_EQ(new_state.exp_avg()[at(t_new, 1, 6)].item<float>(), 0.0f);
  EXPECT_THROW_MSG(transfer_optimizer_state(
                       adam, net, *std::make_unique<torch::optim::SGD>(result.network->parameters(), 0.1), result),
                   "the optimizers differ in type (adam and sgd)");
  // The slips a new user made once `net = result.network` ran: the edited
  // network given as the old one, a new optimizer over the old network.
  // Each used to move nothing without a word.
  torch::optim::Adam fresh(result.network->parameters(), torch::optim::AdamOptions(1e-2));
  EXPECT_THROW_MSG(transfer_optimizer_state(adam, result.network, fresh, result),
                   "transfer_optimizer_state(): the edit was made from another network (12 neurons and 14 "
                   "connections, where this one has 11 and");
  NeuralNetwork twin(readme_spec());  // the same structure, other parameters
  torch::optim::Adam over_twin(twin->parameters(), torch::optim::AdamOptions(1e-2));
  EXPECT_THROW_MSG(
      transfer_optimizer_state(over_twin, net, fresh, result),
      "transfer_optimizer_state(): none of the old optimizer's parameters (group 0 holds one of shape "
      "[14]) is one of the old network's; pass the network the optimizer was built over (the one before the "
      "edit), and carry the optimizer through each edit in turn (one left behind an earlier edit still holds that "
      "edit's old network)");
  torch::optim::Adam over_old(net->parameters(), torch::optim::AdamOptions(1e-2));
  EXPECT_THROW_MSG(transfer_optimizer_state(adam, net, over_old, result),
                   "none of the new optimizer's parameters (group 0 holds one of shape [14]) is one of the edited "
                   "network's; build it over edit.network's parameters");
  EXPECT_TRUE(fresh.state().empty());
  EXPECT_TRUE(over_old.state().empty());
  EXPECT_THROW_MSG(optimizer_after_edit(over_twin, net, result),
                   "optimizer_after_edit(): none of the optimizer's parameters (group 0 holds one of shape [14]) is "
                   "one of the old network's; pass the network the optimizer was built over");
}

// A fresh Adagrad starts every sum at initial_accumulator_value, so a carried
// one starts its new entries there too (they started at 0, and the first step
// of a new connection moved it by lr·sign(g)).
TEST(OptimizerContinuity, AdagradStartsNewEntriesAtItsInitialAccumulator) {
  auto [x, y] = cos_sin_data();
  for (bool techniques : {false, true}) {
    NeuralNetwork net(readme_spec(), NeuralNetworkOptions()
                                         .hidden_activation("relu")
                                         .use_topo_norm(techniques)
                                         .use_topo_self_attention(techniques)
                                         .use_adaptive_activations(techniques));
    const auto options = torch::optim::AdagradOptions(0.1).initial_accumulator_value(0.25);
    torch::optim::Adagrad adagrad(net->parameters(), options);
    for (int i = 0; i < 3; ++i) {
      adagrad.zero_grad();
      torch::mse_loss(net->forward(x), y).backward();
      adagrad.step();
    }
    auto result = edit(net).add_hidden_neurons({20}).add_connections({{1, 6}, {0, 20}, {20, 8}}).build();
    auto next = optimizer_after_edit(adagrad, net, result);
    const auto& topo = result.network->topology();
    for (const auto& p : result.network->named_parameters()) {
      const auto& sum =
          static_cast<torch::optim::AdagradParamState&>(*next->state().at(optimizer_state_key(p.value()))).sum();
      // Every sum is 0.25 plus squared gradients: none below it.
      EXPECT_TRUE((sum >= 0.25).all().item<bool>()) << p.key() << " techniques " << techniques;
    }
    const auto& weight_sum = static_cast<torch::optim::AdagradParamState&>(
                                 *next->state().at(optimizer_state_key(result.network->weight_tensor())))
                                 .sum();
    EXPECT_EQ(weight_sum[topo.connection_index(topo.dense_of(1), topo.dense_of(6))].item<float>(), 0.25f);
    EXPECT_EQ(weight_sum[topo.connection_index(topo.dense_of(20), topo.dense_of(8))].item<float>(), 0.25f);
    // One step from here moves a new connection as a fresh Adagrad's first step does.
    next->zero_grad();
    torch::mse_loss(result.network->forward(x), y).backward();
    const auto c = topo.connection_index(topo.dense_of(1), topo.dense_of(6));
    const double g = result.network->weight_tensor().grad()[c].item<double>();
    const double w = result.network->weight_tensor()[c].item<double>();
    next->step();
    EXPECT_NEAR(result.network->weight_tensor()[c].item<double>(), w - 0.1 * g / (std::sqrt(0.25 + g * g) + 1e-10),
                1e-6);
  }
}

// A new optimizer may ask for a state field the old one never kept (Adam's
// max_exp_avg_sq once amsgrad is on, RMSprop's momentum buffer and average
// gradient): the carried state starts it at 0, as a new optimizer would,
// where step() used to throw torch's "Expected a proper Tensor".
TEST(OptimizerContinuity, AFieldTheNewOptionsReadStartsAtZero) {
  auto [x, y] = cos_sin_data();
  auto train = [&](NeuralNetwork& net, torch::optim::Optimizer& opt, int steps) {
    for (int i = 0; i < steps; ++i) {
      opt.zero_grad();
      torch::mse_loss(net->forward(x), y).backward();
      opt.step();
    }
  };
  {
    NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
    train(net, adam, 3);
    auto result = edit(net).add_connections({{1, 6}}).build();
    torch::optim::Adam next(result.network->parameters(), torch::optim::AdamOptions(1e-2).amsgrad(true));
    transfer_optimizer_state(adam, net, next, result);
    const auto& state = adam_state(next, result.network->weight_tensor());
    ASSERT_TRUE(state.max_exp_avg_sq().defined());
    EXPECT_EQ(state.max_exp_avg_sq().abs().sum().item<float>(), 0.0f);
    EXPECT_NO_THROW(train(result.network, next, 2));
    EXPECT_TRUE(torch::isfinite(result.network->weight_tensor()).all().item<bool>());
  }
  {
    NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
    torch::optim::RMSprop rms(net->parameters(), torch::optim::RMSpropOptions(1e-3));
    train(net, rms, 3);
    auto result = edit(net).add_connections({{1, 6}}).build();
    torch::optim::RMSprop next(result.network->parameters(),
                               torch::optim::RMSpropOptions(1e-3).momentum(0.5).centered(true));
    transfer_optimizer_state(rms, net, next, result);
    const auto& state = static_cast<torch::optim::RMSpropParamState&>(
        *next.state().at(optimizer_state_key(result.network->weight_tensor())));
    ASSERT_TRUE(state.momentum_buffer().defined());
    ASSERT_TRUE(state.grad_avg().defined());
    EXPECT_EQ(state.grad_avg().abs().sum().item<float>(), 0.0f);
    EXPECT_NO_THROW(train(result.network, next, 2));
    EXPECT_TRUE(torch::isfinite(result.network->weight_tensor()).all().item<bool>());
  }
}

// follow_edit moves the optimizer itself: a scheduler holding it goes on
// with its count, and the state equals what optimizer_after_edit carries.
TEST(Plasticity, FollowEditKeepsTheOptimizerAndItsScheduler) {
  NeuralNetwork net(readme_spec());
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.1));
  torch::optim::StepLR schedule(adam, 2, 0.5);
  const auto x = torch::randn({8, 1}), y = torch::randn({8, 2});
  auto train = [&](NeuralNetwork n) {
    adam.zero_grad();
    torch::mse_loss(n->forward(x), y).backward();
    adam.step();
    schedule.step();
  };
  for (int i = 0; i < 3; ++i) train(net);
  auto result = edit(net).add_connections({{1, 6}}).remove_neurons({9}).build();
  const auto expected = optimizer_after_edit(adam, net, result);
  // A refusal changes nothing.
  EXPECT_THROW_MSG(follow_edit(adam, result.network, result), "follow_edit(): the edit was made from another network");
  EXPECT_TRUE(adam.param_groups()[0].params()[0].is_same(net->parameters()[0]));
  EXPECT_EQ(adam.param_groups()[0].params().size(), net->parameters().size());
  EXPECT_EQ(adam.state().size(), net->parameters().size());
  EXPECT_TRUE(adam.state().count(optimizer_state_key(net->weight_tensor())));
  follow_edit(adam, net, result);
  ASSERT_EQ(adam.param_groups()[0].params().size(), result.network->parameters().size());
  for (size_t k = 0; k < result.network->parameters().size(); ++k)
    EXPECT_TRUE(adam.param_groups()[0].params()[k].is_same(result.network->parameters()[k]));
  for (const auto& p : result.network->parameters()) {
    const auto& got = adam_state(adam, p);
    const auto& want = adam_state(*expected, p);
    EXPECT_EQ(got.step(), want.step());
    EXPECT_TRUE(torch::equal(got.exp_avg(), want.exp_avg()));
    EXPECT_TRUE(torch::equal(got.exp_avg_sq(), want.exp_avg_sq()));
  }
  EXPECT_EQ(adam.state().size(), result.network->parameters().size());
  // LibTorch's StepLR(2) halves the rate at its third step and its fifth.
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(), 0.05);
  train(result.network);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(), 0.05);
  train(result.network);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(), 0.025);
}

// A parameter of another module trained beside the network (a head) may
// share the optimizers: it keeps its state as it is, the network's move.
TEST(Plasticity, TransferKeepsTheStateOfAHeadTrainedBeside) {
  NeuralNetwork net(readme_spec());
  torch::nn::Linear head(2, 1);
  std::vector<torch::Tensor> params = net->parameters();
  for (const auto& p : head->parameters()) params.push_back(p);
  torch::optim::Adam adam(params, torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({8, 1}), y = torch::randn({8, 1});
  for (int i = 0; i < 3; ++i) {
    adam.zero_grad();
    torch::mse_loss(head->forward(net->forward(x)), y).backward();
    adam.step();
  }
  auto result = edit(net).add_connections({{1, 6}}).build();
  std::vector<torch::Tensor> next_params = result.network->parameters();
  for (const auto& p : head->parameters()) next_params.push_back(p);
  torch::optim::Adam next(next_params, torch::optim::AdamOptions(1e-2));
  transfer_optimizer_state(adam, net, next, result);
  const auto& old_head = adam_state(adam, head->weight);
  const auto& new_head = adam_state(next, head->weight);
  EXPECT_EQ(new_head.step(), 3);
  EXPECT_TRUE(torch::equal(new_head.exp_avg(), old_head.exp_avg()));
  EXPECT_EQ(next.state().size(), adam.state().size());
  // Copies: stepping the new optimizer leaves the old one's moments alone.
  const auto kept = old_head.exp_avg().clone();
  next.zero_grad();
  torch::mse_loss(head->forward(result.network->forward(x)), y).backward();
  next.step();
  EXPECT_FALSE(torch::equal(new_head.exp_avg(), kept));
  EXPECT_TRUE(torch::equal(old_head.exp_avg(), kept));
  EXPECT_EQ(old_head.step(), 3);
}

// An edit carries the structure it started from: giving the plumbing any
// other old network (the edited one, or an edit applied a second time) is
// refused, changing nothing; a clone of the base is the same structure.
TEST(Plasticity, OptimizerPlumbingChecksWhereTheEditStarted) {
  NeuralNetwork net(readme_spec());
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({8, 1}), y = torch::randn({8, 2});
  for (int i = 0; i < 3; ++i) {
    adam.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    adam.step();
  }
  auto grown = edit(net).add_hidden_neurons({100}).add_connections({{0, 100}, {100, 11}}).build();
  follow_edit(adam, net, grown);
  const auto moments = [&] { return adam_state(adam, grown.network->weight_tensor()).exp_avg().clone(); };
  const auto before = moments();
  EXPECT_THROW_MSG(follow_edit(adam, grown.network, grown),
                   "follow_edit(): the edit was made from another network (12 neurons and 14 connections, where this "
                   "one has 13 and 16); pass the network the edit started from, as it was before the edit");
  EXPECT_TRUE(torch::equal(moments(), before));
  EXPECT_TRUE(adam.param_groups()[0].params()[0].is_same(grown.network->parameters()[0]));
  // Followed twice with the right old network: the optimizer already follows it.
  EXPECT_THROW_MSG(follow_edit(adam, net, grown),
                   "follow_edit(): the optimizer already holds the edited network's parameters (it follows this edit "
                   "already, or was built over the edit's network); pass the optimizer as it was before the edit");
  EXPECT_THROW_MSG(optimizer_after_edit(adam, net, grown), "optimizer_after_edit(): the optimizer already holds");
  EXPECT_TRUE(torch::equal(moments(), before));
  // An edit of another network of another structure.
  auto other = edit(net).remove_connections({{8, 11}}).build().network;
  auto of_other = edit(other).remove_connections({{9, 11}}).build();
  EXPECT_THROW_MSG(optimizer_after_edit(adam, grown.network, of_other),
                   "optimizer_after_edit(): the edit was made from another network (12 neurons and 13 connections, "
                   "where this one has 13 and 16)");
  // A clone's edit: the same structure, so its remap applies.
  auto of_twin = edit(clone(grown.network)).remove_connections({{8, 11}}).build();
  auto next = optimizer_after_edit(adam, grown.network, of_twin);
  EXPECT_EQ(next->state().size(), grown.network->parameters().size());
  // Followed twice, an edit that keeps the size: the first difference is named.
  auto swapped = edit(grown.network).remove_connections({{8, 11}}).add_connections({{0, 11}}).build();
  follow_edit(adam, grown.network, swapped);
  EXPECT_THROW_MSG(follow_edit(adam, swapped.network, swapped),
                   "follow_edit(): the edit was made from another network of the same size (its connection");
}

// An optimizer that also holds another module's parameters (a head): the
// plumbing keeps them in their groups, with their state and options.
TEST(Plasticity, FollowEditKeepsAHeadInItsGroup) {
  NeuralNetwork net(readme_spec());
  torch::nn::Linear head(2, 1);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(head->parameters(), std::make_unique<torch::optim::AdamOptions>(0.05));
  groups.emplace_back(net->parameters(), std::make_unique<torch::optim::AdamOptions>(0.01));
  torch::optim::Adam adam(std::move(groups), torch::optim::AdamOptions(7e-4));
  torch::optim::StepLR schedule(adam, 1, 0.5);
  const auto x = torch::randn({8, 1}), y = torch::randn({8, 1});
  for (int i = 0; i < 3; ++i) {
    adam.zero_grad();
    torch::mse_loss(head->forward(net->forward(x)), y).backward();
    adam.step();
  }
  auto head_state = [&] { return adam_state(adam, head->weight); };
  const auto head_moments = head_state().exp_avg().clone();
  auto result = edit(net).add_connections({{1, 6}}).build();
  const auto copy = optimizer_after_edit(adam, net, result);
  ASSERT_EQ(copy->param_groups().size(), 2u);
  EXPECT_TRUE(copy->param_groups()[0].params()[0].is_same(head->weight));
  // The defaults too (what a group added later without options takes), not the first group's options.
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamOptions&>(copy->defaults()).lr(), 7e-4);
  follow_edit(adam, net, result);
  ASSERT_EQ(adam.param_groups()[0].params().size(), 2u);
  EXPECT_TRUE(adam.param_groups()[0].params()[0].is_same(head->weight));
  EXPECT_TRUE(adam.param_groups()[0].params()[1].is_same(head->bias));
  EXPECT_TRUE(adam.param_groups()[1].params()[0].is_same(result.network->parameters()[0]));
  EXPECT_EQ(head_state().step(), 3);
  EXPECT_TRUE(torch::equal(head_state().exp_avg(), head_moments));
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(), 0.05);
  schedule.step();  // LibTorch's StepLR(1) halves the rates from its second step
  schedule.step();
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(), 0.025);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(adam.param_groups()[1].options()).lr(), 0.005);
  // An optimizer that already holds some of the edited network is a slip.
  std::vector<torch::Tensor> mixed = net->parameters();
  mixed.push_back(result.network->bias_tensor());
  torch::optim::Adam both(mixed, torch::optim::AdamOptions(1e-2));
  EXPECT_THROW_MSG(optimizer_after_edit(both, net, result),
                   "optimizer_after_edit(): the optimizer's group 0 holds a parameter of the edited network already; "
                   "build it over the network before the edit");
}

// Regression found by review: dropout entries follow neurons added and removed in one batch.
TEST(Plasticity, DropoutOfANeuronAddedAndRemovedInOneBatch) {
  NeuralNetwork net(readme_spec());
  auto result =
      edit(net).add_hidden_neurons({100}).set_dropout_p(DropoutSpec({{100, 0.5}})).remove_neurons({100}).build();
  EXPECT_EQ(result.network->num_neurons(), 12);
}
