// NeuralNetwork: values against hand computation, shapes and errors, seeds,
// clone, dropout, freezing, inspection, prebuilt networks.
#include <atomic>
#include <sstream>
#include <thread>

#include "reference_eval.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

namespace {

const auto kDouble = NeuralNetworkOptions().dtype(torch::kFloat64);

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

TEST(NeuralNetwork, TinyGraphByHand) {
  // 0,1 -> 2 ; 0,2 -> 3 ; 2,3,1 -> 4 (output) ; 3 -> 5 (output); outputs [5, 4]; tanh.
  auto spec = GraphSpec::from_edges({{0, 2}, {1, 2}, {0, 3}, {2, 3}, {2, 4}, {3, 4}, {1, 4}, {3, 5}}, {0, 1}, {5, 4});
  NeuralNetwork net(spec, NeuralNetworkOptions(kDouble).hidden_activation("tanh"));
  net->set_weight(0, 2, 0.5), net->set_weight(1, 2, -1.0), net->set_bias(2, 0.1);
  net->set_weight(0, 3, 2.0), net->set_weight(2, 3, 0.3), net->set_bias(3, -0.2);
  net->set_weight(2, 4, 1.5), net->set_weight(3, 4, -0.7), net->set_weight(1, 4, 0.25), net->set_bias(4, 0.05);
  net->set_weight(3, 5, 3.0), net->set_bias(5, 1.0);
  const double x0 = 0.4, x1 = -0.6;
  const double h2 = std::tanh(0.5 * x0 - 1.0 * x1 + 0.1);
  const double h3 = std::tanh(2.0 * x0 + 0.3 * h2 - 0.2);
  const double o4 = 1.5 * h2 - 0.7 * h3 + 0.25 * x1 + 0.05;
  const double o5 = 3.0 * h3 + 1.0;
  auto y = net->forward(torch::tensor({x0, x1}, torch::kFloat64));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2}));
  EXPECT_NEAR(y[0].item<double>(), o5, 1e-14);
  EXPECT_NEAR(y[1].item<double>(), o4, 1e-14);
}

TEST(NeuralNetwork, ReadmeGraphWithWeightsSetByLabel) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions(kDouble).hidden_activation("relu"));
  for (const auto& [u, v] : net->spec().edges())
    net->set_weight(u, v, 0.3 * (u.as_integer() + 1) - 0.11 * v.as_integer());
  for (int n = 1; n < 12; ++n) net->set_bias(n, 0.02 * n - 0.05);
  EXPECT_DOUBLE_EQ(net->weight(6, 9), 0.3 * 7 - 0.11 * 9);
  EXPECT_DOUBLE_EQ(net->bias(11), 0.02 * 11 - 0.05);
  // By hand for x = 1.5: neuron 3 (output) = w(0,3)·x + b3.
  auto y = net->forward(torch::tensor({{1.5}}, torch::kFloat64));
  EXPECT_NEAR(y[0][0].item<double>(), (0.3 - 0.33) * 1.5 + 0.01, 1e-14);
  for (double x : {-2.0, 0.0, 0.7, 1.5, 3.0}) {
    auto expected = reference_forward(net, {x}, scalar_activation("relu"));
    auto got = to_vector(net->forward(torch::tensor({x}, torch::kFloat64)));
    ASSERT_EQ(got.size(), 2u);
    EXPECT_NEAR(got[0], expected[0], 1e-12);
    EXPECT_NEAR(got[1], expected[1], 1e-12);
  }
}

TEST(NeuralNetwork, RandomGraphsMatchScalarReferenceForEveryActivationAndKernel) {
  std::mt19937_64 rng(42);
  const std::vector<std::optional<LevelKernel>> kernels = {std::nullopt, LevelKernel::DenseView,
                                                           LevelKernel::DenseScatter, LevelKernel::EdgeList};
  for (int trial = 0; trial < 60; ++trial) {
    auto spec = random_dag(rng, {4, 18, 0.3, trial % 3 == 0});
    const std::string act = std::vector<std::string>{"relu", "gelu", "silu", "tanh", "sigmoid", "identity"}[trial % 6];
    auto x = torch::randn({5, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    torch::Tensor first;
    for (const auto& kernel : kernels) {
      NeuralNetwork net(spec, NeuralNetworkOptions(kDouble).hidden_activation(act).seed(trial).execution(
                                  ExecutionOptions().force_kernel(kernel)));
      auto y = net->forward(x);
      if (!first.defined()) {
        first = y;
        for (int64_t b = 0; b < x.size(0); ++b) {
          auto expected = reference_forward(net, to_vector(x[b]), scalar_activation(act));
          auto got = to_vector(y[b]);
          for (size_t k = 0; k < got.size(); ++k) ASSERT_NEAR(got[k], expected[k], 1e-12) << act;
        }
      } else {
        ASSERT_TRUE(torch::allclose(y, first, 1e-13, 1e-13)) << "kernel paths disagree";
      }
    }
  }
}

TEST(NeuralNetwork, IsolatedNeuronsAndUnreachableOutputs) {
  // Output 5 has no inputs: it is its bias. Hidden 4 is isolated: it computes act(b) and feeds nobody.
  auto spec = GraphSpec::from_edges({{0, 1}, {1, 2}}, {0, 3}, {2, 5}, {0, 1, 2, 3, 4, 5});
  NeuralNetwork net(spec, kDouble);
  net->set_bias(5, 0.75);
  auto y = net->forward(torch::randn({3, 2}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(y.select(1, 1), torch::full({3}, 0.75, torch::kFloat64)));
}

TEST(NeuralNetwork, ForwardRejectsWrongShapeDtypeAndDevice) {
  NeuralNetwork net(readme_spec());
  EXPECT_THROW_MSG(net->forward(torch::zeros({4, 2})), "expected input of shape [batch, 1] or [1], got [4, 2]");
  EXPECT_THROW_MSG(net->forward(torch::zeros({2, 2, 1})), "got [2, 2, 1]");
  EXPECT_THROW_MSG(net->forward(torch::zeros({4, 1}, torch::kFloat64)), "expected input of dtype Float, got Double");
  EXPECT_THROW_MSG(net->forward(torch::Tensor()), "undefined");
  EXPECT_EQ(net->forward(torch::zeros({4, 1})).sizes(), (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(net->forward(torch::zeros({0, 1})).sizes(), (std::vector<int64_t>{0, 2}));
}

TEST(NeuralNetwork, SameSeedGivesBitIdenticalParametersAndOutputs) {
  auto a = nn::DenseMLP(3, 2, 16, 3, NeuralNetworkOptions().seed(5));
  auto b = nn::DenseMLP(3, 2, 16, 3, NeuralNetworkOptions().seed(5));
  auto c = nn::DenseMLP(3, 2, 16, 3, NeuralNetworkOptions().seed(6));
  EXPECT_TRUE(torch::equal(a->weight_tensor(), b->weight_tensor()));
  EXPECT_TRUE(torch::equal(a->bias_tensor(), b->bias_tensor()));
  EXPECT_FALSE(torch::equal(a->weight_tensor(), c->weight_tensor()));
  auto x = torch::randn({7, 3});
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
}

TEST(NeuralNetwork, InitialisationFollowsFanIn) {
  auto net = nn::MLP(1, 1, 400, 1, NeuralNetworkOptions().seed(1));
  // Hidden layer: fan-in 1 -> bound 1; output: fan-in 400 -> bound 0.05.
  auto w = net->weight_tensor();
  EXPECT_LE(w.narrow(0, 0, 400).abs().max().item<double>(), 1.0);
  EXPECT_GT(w.narrow(0, 0, 400).abs().max().item<double>(), 0.9);
  EXPECT_LE(w.narrow(0, 400, 400).abs().max().item<double>(), 0.05);
}

TEST(NeuralNetwork, CloneIsIndependent) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  auto copy = std::dynamic_pointer_cast<NeuralNetworkImpl>(net->clone());
  ASSERT_TRUE(copy);
  auto x = torch::linspace(0, 1, 10).unsqueeze(1);
  EXPECT_TRUE(torch::equal(net->forward(x), copy->forward(x)));
  EXPECT_NE(copy->weight_tensor().data_ptr(), net->weight_tensor().data_ptr());
  const double before = net->weight(0, 1);
  copy->set_weight(0, 1, before + 1.0);
  torch::optim::SGD sgd(copy->parameters(), 0.1);
  torch::mse_loss(copy->forward(x), torch::ones({10, 2})).backward();
  sgd.step();
  EXPECT_EQ(net->weight(0, 1), before);
}

// One forward(x) (the traced one has a name of its own): a network is a
// module torch::nn::Sequential and AnyModule hold, trained through them.
TEST(NeuralNetwork, GoesIntoASequential) {
  torch::manual_seed(2);
  auto net = nn::MLP(3, 2, 8, 1);
  torch::nn::Linear linear(4, 3);
  torch::nn::Sequential seq(linear, net);
  const auto x = torch::randn({5, 4});
  EXPECT_TRUE(torch::equal(seq->forward(x), net->forward(linear->forward(x))));
  EXPECT_EQ(seq->parameters().size(), linear->parameters().size() + net->parameters().size());
  torch::optim::SGD sgd(seq->parameters(), 0.1);
  const auto before = net->weight_tensor().clone();
  seq->forward(x).pow(2).sum().backward();
  sgd.step();
  EXPECT_FALSE(torch::equal(net->weight_tensor(), before));
}

namespace {
// A trainable element-wise activation: x -> a * tanh(x), one learnable a.
struct ScaledTanhImpl : torch::nn::Cloneable<ScaledTanhImpl> {
  ScaledTanhImpl() { reset(); }
  void reset() override { a = register_parameter("a", torch::ones({1}, torch::kFloat64)); }
  torch::Tensor forward(const torch::Tensor& x) { return a * torch::tanh(x); }
  torch::Tensor a;
};
TORCH_MODULE(ScaledTanh);
}  // namespace

TEST(NeuralNetwork, TrainableActivationModule) {
  ScaledTanh act;
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions(kDouble).hidden_activation(act));
  EXPECT_EQ(net->num_parameters(), 14 + 11 + 1);
  const auto& name = net->options().hidden_activation().name();
  EXPECT_EQ(name.substr(name.size() - 14), "ScaledTanhImpl");
  {
    torch::NoGradGuard g;
    act->a.fill_(2.0);
  }
  auto expected = reference_forward(net, {0.3}, [](double z) { return 2.0 * std::tanh(z); });
  auto y = net->forward(torch::tensor({0.3}, torch::kFloat64));
  EXPECT_NEAR(y[1].item<double>(), expected[1], 1e-12);
  y.sum().backward();
  EXPECT_TRUE(act->a.grad().defined());
  // A clone gets its own copy of the activation's parameter.
  auto copy = std::dynamic_pointer_cast<NeuralNetworkImpl>(net->clone());
  {
    torch::NoGradGuard g;
    act->a.fill_(3.0);
  }
  auto copy_y = copy->forward(torch::tensor({0.3}, torch::kFloat64));
  EXPECT_NEAR(copy_y[1].item<double>(), expected[1], 1e-12);
}

TEST(NeuralNetwork, CallableActivationAndSoftmaxOutput) {
  NeuralNetwork net(readme_spec(),
                    NeuralNetworkOptions(kDouble)
                        .hidden_activation(TensorFunction([](const torch::Tensor& z) { return z * z; }, "square"))
                        .output_transformation("softmax"));
  auto y = net->forward(torch::randn({6, 1}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(y.sum(1), torch::ones({6}, torch::kFloat64)));
  auto raw = reference_forward(net, {0.5}, [](double z) { return z * z; });
  auto soft = net->forward(torch::tensor({0.5}, torch::kFloat64));
  const double e0 = std::exp(raw[0]), e1 = std::exp(raw[1]);
  EXPECT_NEAR(soft[0].item<double>(), e0 / (e0 + e1), 1e-12);
}

TEST(NeuralNetwork, RejectsBadOptions) {
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("softmax")),
                   "hidden_activation \"softmax\" is not element-wise");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("swish")),
                   "unknown built-in \"swish\"");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().dropout_p(std::nan(""))),
                   "dropout_p for hidden neurons is nan");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().dropout_p(1.5)),
                   "dropout_p for hidden neurons is 1.5; it must lie in [0, 1]");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().dropout_p(DropoutSpec({{4, -0.1}}))),
                   "dropout_p of neuron 4 is -0.1");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().dropout_p(DropoutSpec({{40, 0.1}}))),
                   "dropout_p names neuron 40, which is not in the graph");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().dtype(torch::kInt64)),
                   "dtype Long is not a floating-point type");
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{0, 1})),
                   "topo_sort is not a permutation");
}

TEST(NeuralNetwork, GivenParametersAreTakenOverAndCloned) {
  const auto options = NeuralNetworkOptions(kDouble).hidden_activation("relu");
  NeuralNetwork drawn(readme_spec(), options);
  const auto topology = drawn->topology_ptr();
  const int64_t m = topology->num_connections(), b = topology->num_biases();
  auto weight = torch::linspace(-1, 1, m, torch::kFloat64), bias = torch::linspace(0.5, -0.5, b, torch::kFloat64);
  NeuralNetwork given(topology, options, weight, bias);
  // Taken over, not copied; and the function is that of those values.
  EXPECT_EQ(given->weight_tensor().data_ptr(), weight.data_ptr());
  EXPECT_EQ(given->bias_tensor().data_ptr(), bias.data_ptr());
  EXPECT_TRUE(given->weight_tensor().requires_grad());
  const auto& t = given->topology();
  EXPECT_DOUBLE_EQ(given->weight(t.label(t.conn_source()[3]), t.label(t.conn_target()[3])), weight[3].item<double>());
  for (double x : {-1.0, 0.3, 2.0}) {
    auto expected = reference_forward(given, {x}, scalar_activation("relu"));
    auto got = to_vector(given->forward(torch::tensor({x}, torch::kFloat64)));
    EXPECT_NEAR(got[0], expected[0], 1e-12);
    EXPECT_NEAR(got[1], expected[1], 1e-12);
  }
  // A clone holds the same values in storage of its own.
  auto copy = clone(given);
  EXPECT_TRUE(copy->weight_tensor().equal(weight));
  EXPECT_TRUE(copy->bias_tensor().equal(bias));
  EXPECT_NE(copy->weight_tensor().data_ptr(), weight.data_ptr());

  EXPECT_THROW_MSG(NeuralNetwork(topology, kDouble, torch::zeros({m + 1}, torch::kFloat64), bias),
                   fmt::format("NeuralNetwork(): expected weight of shape [{}], got [{}]", m, m + 1));
  EXPECT_THROW_MSG(NeuralNetwork(topology, kDouble, weight, torch::zeros({b, 1}, torch::kFloat64)),
                   fmt::format("NeuralNetwork(): expected bias of shape [{}], got [{}, 1]", b, b));
  EXPECT_THROW_MSG(NeuralNetwork(topology, kDouble, weight.to(torch::kFloat32), bias),
                   "NeuralNetwork(): expected weight of dtype Double (options().dtype()), got Float");
  EXPECT_THROW_MSG(NeuralNetwork(topology, kDouble, torch::Tensor(), bias),
                   "NeuralNetwork(): expected a weight tensor, got an undefined one");
  EXPECT_THROW_MSG(NeuralNetwork(topology, kDouble, weight, torch::Tensor()),
                   "NeuralNetwork(): expected a bias tensor, got an undefined one");
}

TEST(NeuralNetwork, AdoptParametersRefusesAnIndexOutOfRange) {
  NeuralNetwork from(readme_spec(), kDouble);
  NeuralNetwork to(readme_spec(), NeuralNetworkOptions(kDouble).seed(7));
  const auto before = to->weight_tensor().clone();
  const int64_t m = from->num_connections();
  ParameterRemap remap;
  remap.moved["weight"] = {torch::tensor({int64_t{0}, m}, torch::kLong), torch::tensor({0, 1}, torch::kLong)};
  EXPECT_THROW_MSG(to->adopt_parameters(*from, remap),
                   fmt::format("NeuralNetwork::adopt_parameters(): a remap index is out of range (expected new "
                               "indices in [0, {}) and old ones in [0, {}))",
                               m, m));
  remap.moved["weight"] = {torch::tensor({0, 1}, torch::kLong), torch::tensor({0}, torch::kLong)};
  EXPECT_THROW_MSG(to->adopt_parameters(*from, remap),
                   "NeuralNetwork::adopt_parameters(): expected as many new as old indices in a remap, got 2 and 1");
  // A bad bias remap refuses the whole adoption: the weight does not move either.
  remap.moved["weight"] = {torch::tensor({int64_t{1}}, torch::kLong), torch::tensor({int64_t{0}}, torch::kLong)};
  remap.moved["bias"] = {torch::tensor({int64_t{-1}}, torch::kLong), torch::tensor({int64_t{0}}, torch::kLong)};
  EXPECT_THROW_MSG(to->adopt_parameters(*from, remap),
                   "NeuralNetwork::adopt_parameters(): a remap index is out of range");
  EXPECT_TRUE(to->weight_tensor().equal(before));
  // In range, the pairs move: new[1] = old[0], new[m - 1] = old[2].
  remap.moved["weight"] = {torch::tensor({int64_t{1}, m - 1}, torch::kLong), torch::tensor({0, 2}, torch::kLong)};
  remap.moved["bias"] = {torch::tensor({0}, torch::kLong), torch::tensor({0}, torch::kLong)};
  to->adopt_parameters(*from, remap);
  EXPECT_EQ(to->weight_tensor()[1].item<double>(), from->weight_tensor()[0].item<double>());
  EXPECT_EQ(to->weight_tensor()[m - 1].item<double>(), from->weight_tensor()[2].item<double>());
  EXPECT_EQ(to->weight_tensor()[0].item<double>(), before[0].item<double>());
}

TEST(NeuralNetwork, DropoutOnlyInTrainingWithInvertedScaling) {
  auto net = nn::MLP(4, 1, 2000, 1, NeuralNetworkOptions(kDouble).hidden_activation("identity").dropout_p(0.5));
  EXPECT_DOUBLE_EQ(net->dropout_p(10), 0.5);
  EXPECT_DOUBLE_EQ(net->dropout_p(0), 0.0);
  EXPECT_DOUBLE_EQ(net->dropout_p(2004), 0.0);
  auto x = torch::ones({4000, 4}, torch::kFloat64);
  net->eval();
  auto clean = net->forward(x);
  EXPECT_TRUE(torch::equal(clean, net->forward(x)));
  net->train();
  torch::manual_seed(3);
  auto noisy = net->forward(x);
  EXPECT_FALSE(torch::equal(clean, noisy));
  // Inverted dropout keeps the expectation: the mean over many samples matches.
  EXPECT_NEAR(noisy.mean().item<double>(), clean.mean().item<double>(),
              0.05 * std::max(1.0, std::abs(clean.mean().item<double>())));
}

TEST(NeuralNetwork, PerNeuronDropoutMayDropInputs) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions(kDouble).dropout_p(DropoutSpec({{0, 1.0}})));
  EXPECT_DOUBLE_EQ(net->dropout_p(5), 0.0);
  net->train();
  auto dropped = net->forward(torch::full({3, 1}, 2.0, torch::kFloat64));
  net->eval();
  auto zero_input = net->forward(torch::zeros({3, 1}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(dropped, zero_input));
}

TEST(NeuralNetwork, FreezeZeroesChosenGradients) {
  NeuralNetwork net(readme_spec(), kDouble);
  net->freeze({{0, 1}, {8, 11}}, {11});
  EXPECT_TRUE(net->is_frozen(0, 1));
  EXPECT_FALSE(net->is_frozen(0, 2));
  net->forward(torch::randn({5, 1}, torch::kFloat64)).sum().backward();
  const auto& topo = net->topology();
  auto wg = net->weight_tensor().grad();
  EXPECT_EQ(wg[topo.connection_index(topo.dense_of(0), topo.dense_of(1))].item<double>(), 0.0);
  EXPECT_EQ(wg[topo.connection_index(topo.dense_of(8), topo.dense_of(11))].item<double>(), 0.0);
  EXPECT_NE(wg[topo.connection_index(topo.dense_of(0), topo.dense_of(3))].item<double>(), 0.0);
  EXPECT_EQ(net->bias_tensor().grad()[topo.bias_index(topo.dense_of(11))].item<double>(), 0.0);
  // Frozen values stay put under plain SGD; a clone stays frozen.
  auto copy = std::dynamic_pointer_cast<NeuralNetworkImpl>(net->clone());
  EXPECT_TRUE(copy->is_frozen(8, 11));
  const double before = copy->weight(8, 11);
  torch::optim::SGD sgd(copy->parameters(), 0.5);
  copy->forward(torch::randn({5, 1}, torch::kFloat64)).sum().backward();
  sgd.step();
  EXPECT_EQ(copy->weight(8, 11), before);
  EXPECT_THROW_MSG(net->freeze({{0, 11}}), "NeuralNetwork::freeze(): there is no connection 0 -> 11");
  EXPECT_THROW_MSG(net->freeze({}, {0}), "neuron 0 is an input and has no bias");
  net->unfreeze_all();
  EXPECT_FALSE(net->is_frozen(0, 1));
}

TEST(NeuralNetwork, LabelAccessErrors) {
  NeuralNetwork net(readme_spec());
  EXPECT_THROW_MSG(net->weight(0, 11), "NeuralNetwork::weight(): there is no connection 0 -> 11");
  EXPECT_THROW_MSG(net->weight(0, 99), "NeuralNetwork::weight(): neuron 99 is not in the network");
  EXPECT_THROW_MSG(net->set_weight("a", 1, 0.0), "neuron \"a\" is not in the network");
  EXPECT_THROW_MSG(net->bias(0), "NeuralNetwork::bias(): neuron 0 is an input and has no bias");
}

TEST(NeuralNetwork, InspectionAndPrettyPrint) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  EXPECT_EQ(net->input_neurons(), (std::vector<NeuronId>{0}));
  EXPECT_EQ(net->output_neurons(), (std::vector<NeuronId>{3, 11}));
  EXPECT_EQ(net->hidden_neurons(), (std::vector<NeuronId>{1, 2, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(net->num_connections(), 14);
  EXPECT_EQ(net->num_parameters(), 14 + 11);
  auto batches = net->topological_levels();
  EXPECT_EQ(batches, (std::vector<std::vector<NeuronId>>{{1, 2, 3}, {4, 5}, {6, 7}, {8, 9, 10}, {11}}));
  std::ostringstream s;
  s << *net;
  EXPECT_EQ(s.str(),
            "connex::NeuralNetwork(neurons=12, inputs=1, hidden=9, outputs=2, connections=14, depth=5, "
            "hidden_activation=relu, output_transformation=identity, dtype=Float)");
  // A technique is a submodule, which torch prints on a line of its own; pretty_print() is the network's line.
  NeuralNetwork normed(readme_spec(), NeuralNetworkOptions().hidden_activation("relu").use_topo_norm(true));
  std::ostringstream all, own;
  all << *normed;
  normed->pretty_print(own);
  const std::string line =
      "connex::NeuralNetwork(neurons=12, inputs=1, hidden=9, outputs=2, connections=14, depth=5, "
      "hidden_activation=relu, output_transformation=identity, dtype=Float, operations=[topo_norm])";
  EXPECT_EQ(own.str(), line);
  // gamma and beta: one entry per (level, source), 1 + 2 + 2 + 2 + 3 sources.
  EXPECT_EQ(all.str(), line + "(\n  (topo_norm): connex::OperationModule(tensors=2, values=20)\n)");
}

TEST(NeuralNetwork, WeightedGraphView) {
  NeuralNetwork net(readme_spec(), kDouble);
  auto g = net->weighted_graph();
  ASSERT_EQ(g.neurons.size(), 12u);
  ASSERT_EQ(g.connections.size(), 14u);
  EXPECT_EQ(g.neurons[0].role, Role::Input);
  EXPECT_FALSE(g.neurons[0].bias.has_value());
  for (const auto& n : g.neurons)
    if (n.role != Role::Input) EXPECT_EQ(*n.bias, net->bias(n.id));
  for (const auto& c : g.connections) EXPECT_EQ(c.weight, net->weight(c.from, c.to));
  EXPECT_EQ(g.outputs, (std::vector<NeuronId>{3, 11}));
}

TEST(Prebuilt, ConnectionCounts) {
  EXPECT_EQ(nn::DenseMLP(1, 2, 128, 4)->num_connections(), 99842);
  EXPECT_EQ(nn::MLP(1, 2, 128, 4)->num_connections(), 128 + 3 * 128 * 128 + 256);
  auto mlp = nn::MLP(3, 2, 5, 2);
  EXPECT_EQ(mlp->topological_levels().size(), 3u);
  EXPECT_EQ(mlp->num_parameters(), (3 * 5 + 5 * 5 + 5 * 2) + (5 + 5 + 2));
  EXPECT_THROW_MSG(nn::MLP(0, 2, 5, 2), "MLP(): sizes must be positive");
}

TEST(Prebuilt, MlpMatchesLinearLayers) {
  // An MLP's flat weights, viewed per layer, are exactly nn::Linear weights.
  auto net = nn::MLP(3, 2, 4, 1, NeuralNetworkOptions(kDouble).hidden_activation("tanh"));
  auto w1 = net->weight_tensor().narrow(0, 0, 12).view({4, 3});
  auto w2 = net->weight_tensor().narrow(0, 12, 8).view({2, 4});
  auto b1 = net->bias_tensor().narrow(0, 0, 4), b2 = net->bias_tensor().narrow(0, 4, 2);
  auto x = torch::randn({9, 3}, torch::kFloat64);
  auto expected = torch::linear(torch::tanh(torch::linear(x, w1, b1)), w2, b2);
  EXPECT_TRUE(torch::allclose(net->forward(x), expected, 1e-12, 1e-12));
}

// Regressions found by review.
TEST(NeuralNetwork, TopoSortOptionIsHonoured) {
  auto spec = GraphSpec::from_edges({{0, 1}, {0, 2}, {1, 3}, {2, 3}}, {0}, {3});
  NeuralNetwork sorted(spec, NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{0, 2, 1, 3}));
  EXPECT_EQ(sorted->topological_levels()[0], (std::vector<NeuronId>{2, 1}));
  EXPECT_THROW_MSG(NeuralNetwork(spec, NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{5, 0, 1, 2})),
                   "topo_sort names neuron 5, which is not in the graph");
  EXPECT_THROW_MSG(NeuralNetwork(spec, NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{3, 2, 1, 0})),
                   "topo_sort places 1 before 0, which violates the edge 0 -> 1");
}

TEST(NeuralNetwork, Float16OnCpuSaysWhy) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().dtype(torch::kFloat16));
  EXPECT_THROW_MSG(net->forward(torch::zeros({2, 1}, torch::kFloat16)), "float16 does not run on the CPU");
}

TEST(Prebuilt, HugeSizesAreAnErrorNotBadAlloc) {
  EXPECT_THROW_MSG(nn::DenseMLP(1, 1, 100000000, 3),
                   "DenseMLP(): 3e+08 neurons and 3e+16 connections is more than connex builds");
}

// forward() in eval mode on one shared network from several threads, on each execution path.
TEST(NeuralNetwork, ConcurrentEvalForwardOnASharedNetwork) {
  const std::vector<std::pair<std::string, ExecutionOptions>> paths = {
      {"fused", ExecutionOptions().fused(true)},
      {"dense", ExecutionOptions().dense_path(true)},
      {"per-level", ExecutionOptions().fused(false).dense_path(false)}};
  for (const auto& [path, execution] : paths) {
    auto net = nn::DenseMLP(3, 2, 16, 3, NeuralNetworkOptions().dtype(torch::kFloat64).execution(execution));
    ASSERT_EQ(net->uses_fused_kernel(), path == "fused");
    ASSERT_EQ(net->uses_dense_path(), path == "dense");
    net->eval();
    auto x = torch::randn({32, 3}, torch::kFloat64);
    torch::Tensor expected;
    {
      torch::NoGradGuard g;
      expected = net->forward(x);
    }
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        torch::NoGradGuard g;
        for (int i = 0; i < 50; ++i)
          if (!torch::equal(net->forward(x), expected)) ++mismatches;
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(mismatches.load(), 0) << path;
  }
}

// The per-level path's index tensors are made from the topology at its first
// forward (threads may race to it) and are not module state: a network on
// the fused kernel holds no per-connection array besides its parameters.
TEST(NeuralNetwork, PerLevelIndicesAreMadeOnFirstUseAndAreNotState) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const auto spec = random_dag(rng, {8, 40, 0.3, trial % 2 == 1});
    auto x = torch::randn({6, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    NeuralNetwork fused(spec, NeuralNetworkOptions(kDouble).seed(trial).execution(ExecutionOptions().fused(true)));
    std::vector<std::string> names;
    for (const auto& b : fused->named_buffers()) names.push_back(b.key());
    EXPECT_EQ(names, (std::vector<std::string>{"weight_grad_mask", "bias_grad_mask"}));
    NeuralNetwork net(
        spec, NeuralNetworkOptions(kDouble).seed(trial).execution(ExecutionOptions().fused(false).dense_path(false)));
    ASSERT_FALSE(net->uses_fused_kernel());
    ASSERT_FALSE(net->uses_dense_path());
    torch::NoGradGuard no_grad;
    const auto expected = fused->forward(x);
    std::vector<torch::Tensor> got(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        torch::NoGradGuard g;
        got[t] = net->forward(x);
      });
    for (auto& t : threads) t.join();
    for (const auto& y : got) ASSERT_TRUE(torch::allclose(y, expected, 1e-12, 1e-12)) << "trial " << trial;
    // A clone made after the first forward runs on as the original.
    auto copy = std::dynamic_pointer_cast<NeuralNetworkImpl>(net->clone());
    ASSERT_TRUE(torch::allclose(copy->forward(x), expected, 1e-12, 1e-12));
  }
  // Made under inference mode, the indices still serve a training step (autograd saves them).
  std::mt19937_64 again(8);
  NeuralNetwork net(random_dag(again, {8, 30, 0.3, false}),
                    NeuralNetworkOptions(kDouble).execution(ExecutionOptions().fused(false).dense_path(false)));
  auto x = torch::randn({3, net->num_inputs()}, torch::kFloat64);
  {
    c10::InferenceMode inference;
    net->forward(x);
  }
  net->forward(x).sum().backward();
  EXPECT_TRUE(net->weight_tensor().grad().defined());
  NeuralNetwork mlp(nn::MLP(2, 1, 3, 2));
  EXPECT_THROW_MSG(mlp->topology().level_edges(0), "Topology::level_edges(): expected a level in [1, 3], got 0");
  EXPECT_THROW_MSG(mlp->topology().level_edges(4), "Topology::level_edges(): expected a level in [1, 3], got 4");
}

TEST(NeuralNetwork, ToDtypeCastsOnlyFloatingTensors) {
  NeuralNetwork net(readme_spec(),
                    NeuralNetworkOptions().hidden_activation("tanh").execution(ExecutionOptions().fused(false)));
  auto x = torch::randn({4, 1});
  auto y = net->forward(x);
  net->to(torch::kFloat64);
  EXPECT_EQ(net->options().dtype(), torch::kFloat64);
  for (const auto& b : net->named_buffers())
    if (b.key().find("mask") == std::string::npos) EXPECT_EQ(b.value().scalar_type(), torch::kLong) << b.key();
  EXPECT_TRUE(torch::allclose(net->forward(x.to(torch::kFloat64)).to(torch::kFloat32), y, 1e-6, 1e-6));
  const std::string path = ::testing::TempDir() + "/as_double.ckpt";
  save(net, path);
  EXPECT_EQ(load(path)->weight_tensor().scalar_type(), torch::kFloat64);
  EXPECT_THROW_MSG(net->to(torch::kInt32), "dtype Int is not a floating-point type");
}

TEST(NeuralNetwork, FusedKernelFollowsDtypeRoundTrips) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().execution(ExecutionOptions().fused(true)));
  ASSERT_TRUE(net->uses_fused_kernel());
  net->to(torch::kFloat16);
  EXPECT_FALSE(net->uses_fused_kernel());
  net->to(torch::kFloat64);
  EXPECT_TRUE(net->uses_fused_kernel());
}

// An empty holder is a user's slip (a default member, a moved-from network):
// every use names it in one line, as connex::Error, whichever call reaches it.
TEST(NeuralNetwork, AnEmptyHolderIsNamedInOneLine) {
  const NeuralNetwork empty(nullptr);
  const std::string message =
      "NeuralNetwork: the holder is empty (NeuralNetwork(nullptr)); build a network from a GraphSpec or load() one";
  EXPECT_THROW_MSG(empty->num_neurons(), message);
  EXPECT_THROW_MSG(constant_outputs(empty), message);
  EXPECT_THROW_MSG(prune(empty, PruneOptions().fraction(0.5)), message);
  EXPECT_THROW_MSG(edit(empty), message);
  EXPECT_THROW_MSG(to_node_link_json(empty), message);
  NeuralNetwork mutable_empty(nullptr);
  EXPECT_THROW_MSG(mutable_empty(torch::zeros({1, 1})), message);
  EXPECT_THROW_MSG((void)*mutable_empty, message);
  try {
    constant_outputs(empty);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}
