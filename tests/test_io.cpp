// Files: JSON configs, checkpoints, weighted-graph exports, TorchScript.
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <torch/script.h>

#include "file_io.h"
#include "json_input.h"
#include "optimizer_key.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

const auto kDouble = NeuralNetworkOptions().dtype(torch::kFloat64);

// Rewrites a checkpoint file's header through `change` and re-seals it with a valid checksum.
void reseal(const std::string& path, const std::function<void(nlohmann::json&, uint32_t&)>& change) {
  spit(path, reseal_checkpoint(slurp(path), change));
}

NeuralNetwork random_network(std::mt19937_64& rng, int trial, const std::string& act = "tanh") {
  auto spec = random_dag(rng, {4, 16, 0.3, trial % 3 == 0});
  return NeuralNetwork(spec, NeuralNetworkOptions(kDouble)
                                 .hidden_activation(act)
                                 .seed(trial)
                                 .output_transformation(trial % 4 == 1 ? "softmax" : "identity")
                                 .dropout_p(trial % 5 == 0 ? 0.2 : 0.0));
}

torch::Tensor inputs_for(const NeuralNetwork& net, int64_t batch = 6) {
  return torch::randn({batch, net->num_inputs()}, torch::TensorOptions().dtype(net->options().dtype()));
}

torch::Tensor eval_forward(NeuralNetwork net, const torch::Tensor& x) {
  net->eval();
  torch::NoGradGuard g;
  return net->forward(x);
}

}  // namespace

// ------------------------------------------------------------------ configs

TEST(Config, ShippedConfigsLoad) {
  const std::string dir = CONNEX_SOURCE_DIR "/configs/";
  auto readme = load_config(dir + "readme.json");
  EXPECT_EQ(readme->num_connections(), 14);
  EXPECT_EQ(readme->options().hidden_activation().name(), "relu");
  auto letters = load_config(dir + "letters.json");
  EXPECT_EQ(letters->topological_levels().size(), 4u);
  EXPECT_DOUBLE_EQ(letters->dropout_p("C"), 0.1);
  EXPECT_EQ(load_config(dir + "mlp.json")->num_connections(), 128 + 3 * 128 * 128 + 256);
  EXPECT_EQ(load_config(dir + "dense_mlp.json")->num_connections(), 99842);
}

TEST(Config, RoundTripOverRandomNetworksAndEdits) {
  std::mt19937_64 rng(3);
  TempDir dir;
  for (int trial = 0; trial < 40; ++trial) {
    auto net = random_network(rng, trial);
    if (trial % 2)
      net = edit(net)
                .add_hidden_neurons({trial % 3 == 0 ? NeuronId("extra") : NeuronId(999)})
                .set_dropout_p(DropoutSpec({{net->input_neurons()[0], 0.3}}))
                .build(5)
                .network;
    save_config(net, dir / "net.json");
    auto back = load_config(dir / "net.json");
    EXPECT_EQ(back->spec().neurons(), net->spec().neurons());
    EXPECT_EQ(back->spec().edges(), net->spec().edges());
    EXPECT_EQ(back->input_neurons(), net->input_neurons());
    EXPECT_EQ(back->output_neurons(), net->output_neurons());
    EXPECT_EQ(back->options().seed(), net->options().seed());
    for (const auto& id : net->spec().neurons()) EXPECT_EQ(back->dropout_p(id), net->dropout_p(id));
    EXPECT_EQ(network_config(back), network_config(net));
  }
}

TEST(Config, ErrorsNameTheJsonPath) {
  auto bad = [](const std::string& text) { return network_from_config(nlohmann::json::parse(text), "my.json"); };
  EXPECT_THROW_MSG(bad(R"({"options":{}})"), "my.json: required key \"graph\" is missing");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1]],"outputs":[1]}})"),
                   "my.json: required key \"inputs\" is missing in /graph");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,true]],"inputs":[0],"outputs":[1]}})"),
                   "my.json: /graph/edges/0/1 must be an integer or a string neuron id, got true");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"hidden_activation":"swish"}})"),
      "my.json: /options/hidden_activation: TensorFunction: unknown built-in \"swish\"");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"seed":"7"}})"),
                   "my.json: /options/seed must be a non-negative integer, got \"7\"");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"dropout_p":"high"}})"),
                   "/options/dropout_p must be a number or an object");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"dropout_p":{"neurons":[[1]]}}})"),
      "/options/dropout_p/neurons/0 must be a pair [neuron, p]");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"dtype":"int8"}})"),
                   "/options/dtype must be one of float32");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"activation":"relu"}})"),
                   "my.json: /options/activation is not an option");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1],[1,2],[2,1]],"inputs":[0],"outputs":[3]}})"),
                   "my.json: output neuron 3 is not a neuron of the graph");
  EXPECT_THROW_MSG(bad(R"({"graph":{"edges":[[0,1],[1,2],[2,1],[2,3]],"inputs":[0],"outputs":[3]}})"),
                   "my.json: the graph has the cycle 1 -> 2 -> 1");
  EXPECT_THROW_MSG(bad(R"({"graph":{"prebuilt":"ResNet","input_size":1,"output_size":1,"width":2,"depth":1}})"),
                   "/graph/prebuilt must be \"MLP\", \"DenseMLP\" or \"SparseMLP\"");
  EXPECT_THROW_MSG(bad(R"({"graph":{"prebuilt":"MLP","input_size":-1,"output_size":1,"width":2,"depth":1}})"),
                   "/graph/input_size must be a non-negative integer");
  EXPECT_THROW_MSG(bad(R"({"version":2,"graph":{}})"), "my.json: /version is 2; this connex reads version 1");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]},"options":{"dropout_p":{"neurons":[[5,0.1]]}}})"),
      "my.json: NeuralNetwork(): dropout_p names neuron 5");
}

TEST(Config, FileErrors) {
  TempDir dir;
  EXPECT_THROW_MSG(load_config(dir / "missing.json"), "load_config(): cannot open " + (dir / "missing.json"));
  spit(dir / "broken.json", "{\"graph\": [1, 2");
  EXPECT_THROW_MSG(load_config(dir / "broken.json"), "is not valid JSON");
  NeuralNetwork custom(
      GraphSpec::from_edges({{0, 1}}, {0}, {1}),
      NeuralNetworkOptions().hidden_activation(TensorFunction([](const torch::Tensor& z) { return z; }, "mine")));
  spit(dir / "keep.json", "previous");
  EXPECT_THROW_MSG(save_config(custom, dir / "keep.json"),
                   "save_config(): hidden_activation \"mine\" is a custom callable; only built-ins");
  EXPECT_EQ(slurp(dir / "keep.json"), "previous");
}

// -------------------------------------------------------------- checkpoints

TEST(Checkpoint, RoundTripIsBitIdenticalAcrossRandomNetworksAndEdits) {
  std::mt19937_64 rng(11);
  TempDir dir;
  for (int trial = 0; trial < 40; ++trial) {
    auto net = random_network(rng, trial);
    if (trial % 2) {
      auto hidden = net->hidden_neurons();
      auto e = edit(net);
      if (!hidden.empty()) e.remove_neurons({hidden.front()});
      net = e.set_dropout_p(0.1).build(trial).network;
    }
    if (trial % 7 == 0 && net->num_connections() > 0) net->freeze({net->spec().edges().front()});
    save(net, dir / "net.ckpt");
    auto back = load(dir / "net.ckpt");
    auto x = inputs_for(net);
    EXPECT_TRUE(torch::equal(eval_forward(back, x), eval_forward(net, x)));
    EXPECT_TRUE(torch::equal(back->weight_tensor(), net->weight_tensor()));
    if (trial % 7 == 0 && net->num_connections() > 0)
      EXPECT_TRUE(back->is_frozen(net->spec().edges().front().first, net->spec().edges().front().second));
  }
}

// torch::save/torch::load match tensors by name and shape only: an archive
// of another graph with as many connections is refused by the graph it
// holds, with the network unchanged; the same graph loads (also nested in a
// Sequential), and an archive without the entry loads as torch loads it.
TEST(Checkpoint, TorchLoadRefusesAnotherGraphOfTheSameShapes) {
  TempDir dir;
  const auto options = NeuralNetworkOptions(kDouble).hidden_activation("tanh");
  NeuralNetwork a(GraphSpec::from_adjacency({{0, {2, 3}}, {1, {2}}, {2, {4}}, {3, {4}}}, {0, 1}, {4}), options);
  NeuralNetwork b(GraphSpec::from_adjacency({{0, {2}}, {1, {2, 3}}, {2, {4}}, {3, {4}}}, {0, 1}, {4}), options);
  ASSERT_EQ(a->weight_tensor().sizes(), b->weight_tensor().sizes());
  const std::string path = dir / "a.pt";
  torch::save(a, path);
  const auto before = b->weight_tensor().clone();
  EXPECT_THROW_MSG(torch::load(b, path),
                   "NeuralNetwork::load(): the archive holds the tensors of another graph or neuron order (5 "
                   "neurons, 5 connections, depth 2, no operations, fingerprint ");
  EXPECT_THROW_MSG(torch::load(b, path),
                   ") than this one (5 neurons, 5 connections, depth 2, no operations, fingerprint ");
  EXPECT_TRUE(torch::equal(b->weight_tensor(), before));
  // The labels count: the same shape under other labels is another graph.
  NeuralNetwork renamed(GraphSpec::from_adjacency({{0, {2, 3}}, {1, {2}}, {2, {5}}, {3, {5}}}, {0, 1}, {5}), options);
  EXPECT_THROW(torch::load(renamed, path), Error);

  NeuralNetwork same(a->spec(), NeuralNetworkOptions(options).seed(9));
  torch::load(same, path);
  EXPECT_TRUE(torch::equal(same->weight_tensor(), a->weight_tensor()));
  EXPECT_TRUE(torch::equal(same->bias_tensor(), a->bias_tensor()));
  const auto x = torch::randn({4, 2}, torch::kFloat64);
  EXPECT_TRUE(torch::equal(same->forward(x), a->forward(x)));
  // The operations' parameters count: the same graph with topo norm is another structure.
  NeuralNetwork normed(a->spec(), NeuralNetworkOptions(options).use_topo_norm(true));
  EXPECT_THROW_MSG(torch::load(normed, path),
                   "than this one (5 neurons, 5 connections, depth 2, operations topo_norm, ");
  // Edited and compiled anew, the same graph loads: a patched layout equals the compiled one.
  NeuralNetwork edited = edit(a).add_hidden_neurons({9}).add_connections({{0, 9}, {9, 4}}).build().network;
  torch::save(edited, dir / "edited.pt");
  NeuralNetwork compiled(edited->spec(), options);
  torch::load(compiled, dir / "edited.pt");
  EXPECT_TRUE(torch::equal(compiled->forward(x), edited->forward(x)));

  torch::nn::Sequential outer(a), other(b);
  torch::save(outer, dir / "seq.pt");
  EXPECT_THROW_MSG(torch::load(other, dir / "seq.pt"), "NeuralNetwork::load(): the archive holds the tensors of");

  torch::serialize::OutputArchive bare;  // as torch::save wrote it before the entry
  a->torch::nn::Module::save(bare);
  bare.save_to(dir / "bare.pt");
  torch::serialize::InputArchive in;
  in.load_from(dir / "bare.pt");
  b->load(in);
  EXPECT_TRUE(torch::equal(b->weight_tensor(), a->weight_tensor()));
}

TEST(Checkpoint, OptimizerStateResumesTrainingExactly) {
  TempDir dir;
  auto [x, y] = cos_sin_data();
  auto step = [&](NeuralNetwork& net, torch::optim::Optimizer& opt) {
    opt.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    opt.step();
  };
  auto reference = nn::DenseMLP(1, 2, 8, 2);
  torch::optim::Adam ref_opt(reference->parameters(), torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 20; ++i) step(reference, ref_opt);

  auto net = nn::DenseMLP(1, 2, 8, 2);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 10; ++i) step(net, opt);
  save(net, dir / "train.ckpt", &opt);
  auto checkpoint = load_checkpoint(dir / "train.ckpt");
  torch::optim::Adam resumed(checkpoint.network->parameters(), torch::optim::AdamOptions(1e-2));
  load_optimizer_state(checkpoint, resumed);
  for (int i = 0; i < 10; ++i) step(checkpoint.network, resumed);
  EXPECT_TRUE(torch::equal(checkpoint.network->weight_tensor(), reference->weight_tensor()));
  EXPECT_THROW_MSG(load_optimizer_state(load_checkpoint([&] {
                                          save(net, dir / "plain.ckpt");
                                          return dir / "plain.ckpt";
                                        }()),
                                        resumed),
                   "holds no optimizer state");
}

// An optimizer's state follows its parameters' dtype in a checkpoint, as
// torch's load_state_dict makes it: a network moved to double after its
// optimizer stepped (Adam's moments stay float32) saves a file that loads,
// and a float checkpoint's state resumes a copy moved to double.
TEST(Checkpoint, OptimizerStateTakesItsParametersDtype) {
  TempDir dir;
  auto [x, y] = cos_sin_data();
  auto net = nn::MLP(1, 2, 3, 1);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  adam.zero_grad();
  torch::mse_loss(net->forward(x), y).backward();
  adam.step();
  const torch::Tensor float_moment = adam_state(adam, net->weight_tensor()).exp_avg().clone();
  net->to(torch::kFloat64);
  ASSERT_EQ(adam_state(adam, net->weight_tensor()).exp_avg().scalar_type(), torch::kFloat32);
  save(net, dir / "double.ckpt", &adam);
  const auto loaded = load_checkpoint(dir / "double.ckpt");
  auto restored = restore_optimizer(loaded, "double.ckpt");
  const auto back = adam_state(*restored, loaded.network->weight_tensor()).exp_avg();
  EXPECT_EQ(back.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(back, float_moment.to(torch::kFloat64)));

  auto single = nn::MLP(1, 2, 3, 1);
  torch::optim::Adam single_adam(single->parameters(), torch::optim::AdamOptions(1e-2));
  single_adam.zero_grad();
  torch::mse_loss(single->forward(x), y).backward();
  single_adam.step();
  save(single, dir / "float.ckpt", &single_adam);
  const auto ck = load_checkpoint(dir / "float.ckpt");
  auto wide = clone(ck.network);
  wide->to(torch::kFloat64);
  auto resumed = restore_optimizer(ck, "float.ckpt", wide);
  EXPECT_TRUE(torch::equal(adam_state(*resumed, wide->weight_tensor()).exp_avg(),
                           adam_state(single_adam, single->weight_tensor()).exp_avg().to(torch::kFloat64)));
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    net = NeuralNetwork(GraphSpec::from_adjacency({{0, {1, 2, 3}}, {1, {4}}, {2, {4}}, {4, {3}}}, {0}, {3}), kDouble);
    path = dir / "net.ckpt";
    save(net, path);
    good = slurp(path);
  }
  TempDir dir;
  NeuralNetwork net{nullptr};
  std::string path, good;
};

TEST_F(BadCheckpoint, Truncated) {
  for (size_t keep : {size_t{0}, size_t{5}, size_t{30}, good.size() / 2, good.size() - 1}) {
    spit(path, good.substr(0, keep));
    EXPECT_THROW(load(path), Error) << keep;
  }
  spit(path, good.substr(0, good.size() - 1));
  EXPECT_THROW_MSG(load(path), "is corrupted: its checksum does not match");
  spit(path, good.substr(0, 25));
  EXPECT_THROW_MSG(load(path), "is truncated");
}

TEST_F(BadCheckpoint, RandomBytes) {
  std::mt19937 rng(1);
  std::string noise(4096, '\0');
  for (auto& c : noise) c = static_cast<char>(rng());
  spit(path, noise);
  EXPECT_THROW_MSG(load(path), "is not a connex checkpoint");
  spit(path, "CONNEXCK" + noise);
  EXPECT_THROW(load(path), Error);
}

TEST_F(BadCheckpoint, EveryFlippedByteIsDetected) {
  // Every byte position, tensor data included: none loads silently.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x10;
    spit(path, bad);
    ASSERT_THROW(load(path), Error) << "byte " << i << " of " << good.size();
  }
}

TEST_F(BadCheckpoint, ShapesThatDoNotMatchTheStructure) {
  reseal(path, [](nlohmann::json& h, uint32_t&) {
    for (auto& t : h["tensors"])
      if (t["name"] == "weight") t["shape"] = {3};
  });
  EXPECT_THROW_MSG(load(path), "tensor \"weight\" has shape [3] in the file but the network's structure needs [6]");
}

TEST_F(BadCheckpoint, UnknownFormatVersion) {
  reseal(path, [](nlohmann::json&, uint32_t& version) { version = 99; });
  EXPECT_THROW_MSG(load(path), "has checkpoint format version 99; this connex reads version 2");
}

TEST_F(BadCheckpoint, ConfigWithWrongTypes) {
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["config"]["options"]["seed"] = "zero"; });
  EXPECT_THROW_MSG(load(path), path + ": /options/seed must be a non-negative integer");
}

TEST_F(BadCheckpoint, ForeignFile) {
  torch::save(torch::ones({3}), path);  // a LibTorch zip file
  EXPECT_THROW_MSG(load(path), "is not a connex checkpoint");
  EXPECT_THROW_MSG(load(dir / "nope.ckpt"), "load(): cannot open");
}

TEST_F(BadCheckpoint, FailedSaveLeavesTheDestinationUnchanged) {
  NeuralNetwork custom(
      GraphSpec::from_edges({{0, 1}}, {0}, {1}),
      NeuralNetworkOptions().hidden_activation(TensorFunction([](const torch::Tensor& z) { return z; }, "mine")));
  EXPECT_THROW_MSG(save(custom, path), "save(): hidden_activation \"mine\" is a custom callable");
  EXPECT_EQ(slurp(path), good);
  EXPECT_THROW_MSG(save(net, dir / "no/such/dir/net.ckpt"), "save(): cannot write " + (dir / "no/such/dir/net.ckpt") +
                                                                ": its directory " + (dir / "no/such/dir") +
                                                                " does not exist");
  EXPECT_EQ(fs::directory_iterator(dir.path)->path().filename(), "net.ckpt");  // no temporary left behind
}

// ---------------------------------------------------------- graph exports

TEST(GraphExport, NodeLinkJsonRoundTripGivesTheSameOutputs) {
  std::mt19937_64 rng(5);
  TempDir dir;
  for (int trial = 0; trial < 30; ++trial) {
    auto net = random_network(rng, trial, trial % 2 ? "gelu" : "sigmoid");
    if (trial % 3 == 0) {
      const NeuronId h = net->spec().id_kind() == NeuronId::Kind::String ? NeuronId("h") : NeuronId(500);
      net = edit(net).add_hidden_neurons({h}).add_connections({{net->input_neurons()[0], h}}).build(1).network;
    }
    export_graph(net, dir / "g.json");
    auto back = import_graph_json(dir / "g.json");
    auto x = inputs_for(net);
    EXPECT_TRUE(torch::equal(eval_forward(back, x), eval_forward(net, x))) << trial;
  }
}

// The drawing lists inputs and outputs top to bottom in the user's order,
// whatever order would shorten the edges (dot's own choice, without the
// export's invisible chain, put them 1, 3, 0, 2 here).
TEST(GraphExport, DotDrawsInputsAndOutputsInTheirOrder) {
  if (std::system("command -v dot > /dev/null 2>&1") != 0) GTEST_SKIP() << "Graphviz's dot is not installed";
  NeuralNetwork net(GraphSpec::from_adjacency(
      {{0, {13}}, {1, {12}}, {2, {11}}, {3, {10}}, {0, {10}}, {10, {21}}, {11, {20}}, {12, {21}}, {13, {20}}},
      {3, 1, 0, 2}, {21, 20}));
  TempDir dir;
  { std::ofstream(dir / "g.dot") << to_dot(net); }
  ASSERT_EQ(std::system(("dot -Tplain -o " + (dir / "g.txt") + " " + (dir / "g.dot")).c_str()), 0);
  std::map<std::string, double> height;  // "node NAME X Y ...": Y grows upwards
  std::ifstream plain(dir / "g.txt");
  for (std::string kind, name; plain >> kind;) {
    if (kind == "node") {
      double x = 0, y = 0;
      plain >> name >> x >> y;
      height[name] = y;
    }
    std::getline(plain, kind);
  }
  for (const auto& order : {std::vector<std::string>{"3", "1", "0", "2"}, std::vector<std::string>{"21", "20"}})
    for (size_t k = 0; k + 1 < order.size(); ++k)
      EXPECT_GT(height.at(order[k]), height.at(order[k + 1])) << order[k] << " above " << order[k + 1];
}

TEST(GraphExport, GraphmlAndDotDescribeEveryConnection) {
  NeuralNetwork net(GraphSpec::from_edges({{"a", "b"}, {"b", "c"}, {"a", "c"}}, {"a"}, {"c"}), kDouble);
  net->set_weight("a", "b", -2.0);
  const auto graphml = to_graphml(net);
  EXPECT_NE(graphml.find("<edge source=\"a\" target=\"b\"><data key=\"weight\">-2</data></edge>"), std::string::npos);
  EXPECT_NE(graphml.find("<node id=\"a\"><data key=\"role\">input</data>"), std::string::npos);
  const auto dot = to_dot(net);
  EXPECT_NE(dot.find("\"a\" -> \"b\" [penwidth=4.00, color=\"#c0392b\""), std::string::npos);
  TempDir dir;
  export_graph(net, dir / "g.dot");
  if (std::system("command -v dot > /dev/null 2>&1") == 0) {
    EXPECT_EQ(std::system(("dot -Tpng -o " + (dir / "g.png") + " " + (dir / "g.dot")).c_str()), 0);
    EXPECT_GT(fs::file_size(dir / "g.png"), 100u);
  }
  EXPECT_THROW_MSG(export_graph(net, dir / "g.txt"), "cannot tell the format of");
}

TEST(GraphExport, ImportErrorsNameTheProblem) {
  auto bad = [](const std::string& text) { return from_node_link_json(nlohmann::json::parse(text), "g.json"); };
  EXPECT_THROW_MSG(bad(R"({"nodes":[],"links":[]})"), "g.json: required key \"graph\" is missing");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":0,"target":1}]})"),
      "g.json: required key \"weight\" is missing in /links/0");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1,"bias":"x"}],"links":[{"source":0,"target":1,"weight":1}]})"),
      "g.json: /nodes/1/bias must be a number");
}

TEST(GraphExport, ImportRejectsLinksToMissingNodesAndBadFrozenFlags) {
  auto bad = [](const std::string& text) { return from_node_link_json(nlohmann::json::parse(text), "g.json"); };
  const std::string head = R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1,"bias":0}],)";
  EXPECT_THROW_MSG(bad(head + R"("links":[{"source":0,"target":1,"weight":1},{"source":0,"target":9,"weight":1}]})"),
                   "g.json: /links/1/target: edge 0 -> 9 names neuron 9, which is not in /nodes");
  EXPECT_THROW_MSG(
      bad(head + R"("links":[{"source":"0","target":1,"weight":1}]})"),
      "g.json: /links/0/source: edge \"0\" -> 1 names neuron \"0\", a string id, but this graph's ids are integers");
  EXPECT_THROW_MSG(bad(head + R"("links":[{"source":0,"target":1,"weight":1,"frozen":"yes"}]})"),
                   "g.json: /links/0/frozen must be true or false, got \"yes\"");
  EXPECT_THROW_MSG(bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0,"frozen":true},{"id":1,"bias":0}],)"
                       R"("links":[{"source":0,"target":1,"weight":1}]})"),
                   "g.json: /nodes/0/frozen is true, but input neuron 0 has no bias to freeze");
  EXPECT_THROW_MSG(bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0,"bias":0.5},{"id":1,"bias":0}],)"
                       R"("links":[{"source":0,"target":1,"weight":1}]})"),
                   "g.json: /nodes/0/bias is given, but input neuron 0 has no bias (it passes its input on)");
  // A repeated link counts once; one that says another weight or flag is refused.
  EXPECT_EQ(
      bad(head + R"("links":[{"source":0,"target":1,"weight":2},{"source":0,"target":1,"weight":2}]})")->weight(0, 1),
      2.0);
  EXPECT_THROW_MSG(bad(head + R"("links":[{"source":0,"target":1,"weight":2},{"source":0,"target":1,"weight":9}]})"),
                   "g.json: /links/1 gives 0 -> 1 another weight than /links/0; give each connection once");
  EXPECT_THROW_MSG(
      bad(head + R"("links":[{"source":0,"target":1,"weight":2},{"source":0,"target":1,"weight":2,"frozen":true}]})"),
      "g.json: /links/1 gives 0 -> 1 another frozen flag than /links/0");
  // networkx writes "links" or "edges": a file with both that differ says two things.
  EXPECT_THROW_MSG(bad(head + R"("links":[{"source":0,"target":1,"weight":2}],"edges":[]})"),
                   "g.json: has both /links and /edges, and they differ (networkx writes one or the other); keep one");
  const std::string link = R"([{"source":0,"target":1,"weight":2}])";
  EXPECT_EQ(bad(head + R"("links":)" + link + R"(,"edges":)" + link + "}")->weight(0, 1), 2.0);
  // Option errors name where the options stand in this file.
  EXPECT_THROW_MSG(bad(R"({"graph":{"inputs":[0],"outputs":[1],"options":{"dtype":"int8"}},"nodes":[{"id":0},)"
                       R"({"id":1,"bias":0}],"links":[{"source":0,"target":1,"weight":1}]})"),
                   "g.json: /graph/options/dtype must be one of");
}

// The techniques' trained values travel in /graph/operation_parameters: a
// file whose options turn a technique on without them (or without one of
// them) is refused, where the values would have started afresh.
TEST(GraphExport, ImportNeedsTheTechniquesParameters) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().use_adaptive_activations(true).seed(4));
  auto json = to_node_link_json(net);
  ASSERT_TRUE(json["graph"].contains("operation_parameters"));
  EXPECT_TRUE(torch::equal(from_node_link_json(json, "g.json")->forward(torch::ones({2, 1})),
                           net->forward(torch::ones({2, 1}))));
  auto without_one = json;
  without_one["graph"]["operation_parameters"].erase("adaptive_activation.b");
  EXPECT_THROW_MSG(from_node_link_json(without_one, "g.json"),
                   "g.json: /graph/operation_parameters has no entry \"adaptive_activation.b\", which /graph/options "
                   "call for");
  json["graph"].erase("operation_parameters");
  EXPECT_THROW_MSG(from_node_link_json(json, "g.json"),
                   "g.json: /graph/options turn on adaptive_activation, but /graph/operation_parameters, which holds "
                   "their trained values, is missing (they would start afresh); export the trained network again");
}

// The attributes the export writes for networkx users but derives from
// /graph and the links: a hand-edited one that disagrees is refused, not
// silently ignored; absent ones and the export's own read back.
TEST(GraphExport, ImportRefusesDerivedNodeAttributesThatDisagree) {
  auto load = [](const std::string& nodes) {
    return from_node_link_json(
        nlohmann::json::parse(R"({"graph":{"inputs":[0],"outputs":[2],"options":{"dropout_p":{"hidden":0.25}}},)"
                              R"("nodes":)" +
                              nodes +
                              R"(,"links":[{"source":0,"target":1,"weight":1},{"source":1,"target":2,"weight":2}]})"),
        "g.json");
  };
  const std::string in = R"({"id":0,"role":"input","dropout_p":0.0,"level":0})";
  const std::string out = R"({"id":2,"bias":0,"role":"output","dropout_p":0,"level":2})";
  auto with_hidden = [&](const std::string& hidden) { return "[" + in + "," + hidden + "," + out + "]"; };
  EXPECT_EQ(load(with_hidden(R"({"id":1,"bias":0.5,"role":"hidden","dropout_p":0.25,"level":1})"))->bias(1), 0.5);
  EXPECT_EQ(load(with_hidden(R"({"id":1,"bias":0.5})"))->dropout_p(1), 0.25);
  EXPECT_THROW_MSG(load(with_hidden(R"({"id":1,"bias":0,"role":"output"})")),
                   "g.json: /nodes/1/role is \"output\", but neuron 1's role is hidden: roles come from /graph/inputs "
                   "and /graph/outputs");
  EXPECT_THROW_MSG(load(with_hidden(R"({"id":1,"bias":0,"role":3})")), "g.json: /nodes/1/role is 3, but neuron 1's");
  EXPECT_THROW_MSG(
      load(with_hidden(R"({"id":1,"bias":0,"dropout_p":0.5})")),
      "g.json: /nodes/1/dropout_p is 0.5, but neuron 1's dropout_p is 0.25: dropout comes from /graph/options");
  EXPECT_THROW_MSG(
      load(with_hidden(R"({"id":1,"bias":0,"level":3})")),
      "g.json: /nodes/1/level is 3, but neuron 1's level is 1: levels follow from the links (after editing "
      "them, leave \"level\" out)");
  EXPECT_THROW_MSG(load(with_hidden(R"({"id":1,"bias":0,"level":1.5})")), "g.json: /nodes/1/level is 1.5, but");
  // The export's own attributes agree, every kind of neuron and a per-neuron dropout included.
  DropoutSpec dropout(0.1);
  dropout.per_neuron = {{NeuronId(5), 0.3}};
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions(kDouble).dropout_p(dropout));
  const auto back = from_node_link_json(to_node_link_json(net), "g.json");
  EXPECT_EQ(back->dropout_p(5), 0.3);
  EXPECT_TRUE(torch::equal(back->weight_tensor(), net->weight_tensor()));
}

// A key given twice loses one of its values in any JSON reader, so connex
// refuses it, naming where it is as a JSON pointer and its line; invalid
// JSON is reported as such, whatever keys a scan of it would see.
TEST(Json, KeyGivenTwiceIsNamedByItsPath) {
  auto refused = [](const std::string& text) {
    try {
      connex::detail::parse_json(text, "x.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string tail = " is given twice (line 1); JSON keeps only one of the values: remove one";
  EXPECT_EQ(refused(R"({"seed":1,"seed":2})"), "x.json: /seed" + tail);
  EXPECT_EQ(refused(R"({"x":[{"a":1},{"a":1,"b":{},"a":2}]})"), "x.json: /x/1/a" + tail);
  EXPECT_EQ(refused(R"({"o":{"p":[0,[1,{"k":1,"k":2}]]}})"), "x.json: /o/p/1/1/k" + tail);
  // Escapes are decoded, in the repeated key and in the path to it; '/' and '~' in keys are escaped as JSON pointers
  // do.
  EXPECT_EQ(refused(R"({"\u006fpts":{"a/b":1,"a\/b":2}})"), "x.json: /opts/a~1b" + tail);
  EXPECT_EQ(refused(R"({"~":{"":1,"":2}})"), "x.json: /~0/" + tail);
  EXPECT_EQ(refused("{\"a\":1,\n\"b\":2,\n\"a\":3}"),
            "x.json: /a is given twice (line 3); JSON keeps only one of the values: remove one");
  // Not keys: strings holding colons, braces and escaped quotes; a key once per object.
  EXPECT_EQ(refused(R"({"a":"x:{\"a\":1}","b":{"a":1},"c":[{"a":1},{"a":2}]})"), "accepted");
  for (const std::string& invalid :
       {R"({"x":{1:2,3:4}})", R"({"a":1,:2})", R"([1,2]]{"a":1,"a":2})", R"({"a":1,"\q":2,"\q":3})"})
    EXPECT_NE(refused(invalid).find("x.json is not valid JSON"), std::string::npos) << invalid;
}

// The README promises the JSON import "rebuilds the same network": frozen
// weights and biases included, and marked so networkx users see them.
TEST(GraphExport, FrozenFlagsSurviveTheNodeLinkJson) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions(kDouble).hidden_activation("tanh").seed(4));
  const std::vector<Edge> frozen_edges{{8, 11}, {0, 1}, {2, 5}};
  const std::vector<NeuronId> frozen_neurons{4, 11};
  net->freeze(frozen_edges, frozen_neurons);

  const auto json = to_node_link_json(net);
  int64_t marked_links = 0, marked_nodes = 0;
  for (const auto& link : json["links"])
    if (link.contains("frozen")) {
      EXPECT_EQ(link["frozen"], true);  // written only where frozen
      EXPECT_TRUE(net->is_frozen(link["source"].get<int64_t>(), link["target"].get<int64_t>())) << link;
      ++marked_links;
    }
  for (const auto& node : json["nodes"])
    if (node.contains("frozen")) {
      EXPECT_EQ(node["frozen"], true);
      ++marked_nodes;
    }
  EXPECT_EQ(marked_links, 3);
  EXPECT_EQ(marked_nodes, 2);

  TempDir dir;
  export_graph(net, dir / "g.json");
  for (NeuralNetwork back : {from_node_link_json(json), import_graph_json(dir / "g.json")}) {
    const auto a = net->weighted_graph(), b = back->weighted_graph();
    ASSERT_EQ(a.connections.size(), b.connections.size());
    for (size_t k = 0; k < a.connections.size(); ++k) {
      EXPECT_EQ(back->is_frozen(a.connections[k].from, a.connections[k].to), a.connections[k].frozen) << k;
      EXPECT_EQ(b.connections[k].frozen, a.connections[k].frozen) << k;
    }
    ASSERT_EQ(a.neurons.size(), b.neurons.size());
    for (size_t k = 0; k < a.neurons.size(); ++k) EXPECT_EQ(b.neurons[k].frozen, a.neurons[k].frozen) << k;

    // And the import trains like the original: frozen entries get no gradient.
    auto [x, y] = cos_sin_data(torch::kFloat64);
    back->zero_grad();
    torch::mse_loss(back->forward(x), y).backward();
    const auto& topo = back->topology();
    const auto wg = back->weight_tensor().grad(), bg = back->bias_tensor().grad();
    for (const auto& c : b.connections) {
      const double g = wg[topo.connection_index(topo.dense_of(c.from), topo.dense_of(c.to))].item<double>();
      if (c.frozen)
        EXPECT_EQ(g, 0.0) << edge_str({c.from, c.to});
      else
        EXPECT_NE(g, 0.0) << edge_str({c.from, c.to});
    }
    for (const auto& n : b.neurons) {
      if (n.role == Role::Input) continue;
      const double g = bg[topo.bias_index(topo.dense_of(n.id))].item<double>();
      if (n.frozen)
        EXPECT_EQ(g, 0.0) << n.id.str();
      else
        EXPECT_NE(g, 0.0) << n.id.str();
    }
  }

  // GraphML carries the same marks; DOT draws frozen entries dashed.
  const auto graphml = to_graphml(net);
  auto count = [](const std::string& text, const std::string& needle) {
    int64_t n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count(graphml, "<data key=\"frozen_edge\">true</data>"), 3);
  EXPECT_EQ(count(graphml, "<data key=\"frozen\">true</data>"), 2);
  EXPECT_NE(graphml.find("<node id=\"11\"><data key=\"role\">output</data>"), std::string::npos);
  const auto dot = to_dot(net);
  EXPECT_EQ(count(dot, ", style=dashed];"), 3);
  EXPECT_EQ(count(dot, "style=\"filled,dashed\""), 2);

  // networkx reads the flags from both files.
  export_graph(net, dir / "g.graphml");
  const std::string cmd =
      "/usr/bin/python3 " CONNEX_SOURCE_DIR "/tests/python/check_frozen.py " + dir.path + " > " + (dir / "seen.txt");
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77 || code == 127) GTEST_SKIP() << "python3 with networkx is not installed";
  ASSERT_EQ(code, 0);
  const std::string expected = R"({"nodes": ["11", "4"], "edges": [["0", "1"], ["2", "5"], ["8", "11"]]})";
  EXPECT_EQ(slurp(dir / "seen.txt"), expected + "\n" + expected + "\n");
}

// A network too large to draw whole is drawn one box per level; the counts
// are checked by hand on a small network with a low threshold.
TEST(GraphExport, SummaryDrawingCountsNeuronsAndConnectionsPerLevel) {
  // Levels: 0 = {0, 1}; 1 = {2, 3, 4 (output)}; 2 = {5}; 3 = {6 (output)}.
  NeuralNetwork net(
      GraphSpec::from_edges({{0, 2}, {1, 2}, {0, 3}, {1, 4}, {2, 5}, {3, 5}, {0, 5}, {5, 6}, {1, 6}}, {0, 1}, {4, 6}),
      NeuralNetworkOptions(kDouble).seed(2));
  net->set_weight(0, 2, 0.5);
  net->set_weight(1, 2, -0.25);
  net->set_weight(0, 3, 1.0);
  net->freeze({{5, 6}}, {5});
  const auto topo = net->topology_ptr();
  ASSERT_EQ(topo->depth(), 3);

  DotOptions small;
  small.max_neurons = 5;  // 7 neurons: summary
  const DotDrawing drawing = draw_dot(net, small);
  EXPECT_TRUE(drawing.summary);
  EXPECT_EQ(drawing.description, "summary of 7 neurons, 9 connections in 4 levels");
  const std::string& dot = drawing.dot;
  EXPECT_NE(dot.find("size=\"40,40\";\n  dpi=96;"), std::string::npos) << dot;
  EXPECT_NE(dot.find("label=\"7 neurons, 9 connections, depth 3: one box per level\""), std::string::npos) << dot;
  EXPECT_NE(dot.find("b0 [fillcolor=\"#e0f0ff\", label=\"level 0\\n2 inputs\"]"), std::string::npos) << dot;
  EXPECT_NE(dot.find("b1 [fillcolor=\"#f4f4f4\", label=\"level 1\\n2 hidden\\n1 output\"]"), std::string::npos) << dot;
  EXPECT_NE(dot.find("b2 [fillcolor=\"#f4f4f4\", label=\"level 2\\n1 hidden\\n1 frozen bias\"]"), std::string::npos)
      << dot;
  EXPECT_NE(dot.find("b3 [fillcolor=\"#ffe8cc\", label=\"level 3\\n1 output\"]"), std::string::npos) << dot;
  // 0->2, 1->2, 0->3, 1->4: four connections, mean |w| (0.5 + 0.25 + 1 + |w(1,4)|) / 4.
  const double mean01 = (0.5 + 0.25 + 1.0 + std::abs(net->weight(1, 4))) / 4;
  EXPECT_NE(dot.find("b0 -> b1 [penwidth="), std::string::npos) << dot;
  EXPECT_NE(dot.find(fmt::format("label=\"4 connections\\nmean |w| {:.3g}\"", mean01)), std::string::npos) << dot;
  EXPECT_NE(dot.find("b0 -> b2 "), std::string::npos) << dot;  // 0 -> 5
  EXPECT_NE(dot.find(fmt::format("label=\"1 connection\\nmean |w| {:.3g}\"", std::abs(net->weight(0, 5)))),
            std::string::npos)
      << dot;
  EXPECT_NE(dot.find("b1 -> b2 "), std::string::npos) << dot;  // 2 -> 5, 3 -> 5
  EXPECT_NE(dot.find("b0 -> b3 "), std::string::npos) << dot;  // 1 -> 6
  // 5 -> 6: its only connection is frozen, so the arrow is dashed.
  EXPECT_NE(dot.find(fmt::format("label=\"1 connection\\nmean |w| {:.3g}\\n1 frozen\", style=dashed]",
                                 std::abs(net->weight(5, 6)))),
            std::string::npos)
      << dot;
  EXPECT_EQ(dot.find("b1 -> b3"), std::string::npos) << dot;

  // Below both thresholds, every neuron is drawn (and the drawing bounded).
  const DotDrawing full = draw_dot(net);
  EXPECT_FALSE(full.summary);
  EXPECT_EQ(full.description, "all 7 neurons, 9 connections");
  EXPECT_NE(full.dot.find("size=\"40,40\";"), std::string::npos);
  EXPECT_EQ(to_dot(net).find(" size=\""), std::string::npos);  // the plain DOT export is unbounded

  // Over max_boxes levels, consecutive levels share a box.
  EXPECT_NE(to_summary_dot(net, 2).find("label=\"levels 0-1\\n2 inputs\\n2 hidden\\n1 output\\n4 connections within\""),
            std::string::npos)
      << to_summary_dot(net, 2);
  EXPECT_THROW_MSG(to_summary_dot(net, 0), "to_summary_dot(): max_boxes must be at least 1, got 0");

  // Graphviz draws it.
  if (std::system("command -v dot > /dev/null 2>&1") == 0) {
    TempDir dir;
    spit(dir / "s.dot", dot);
    EXPECT_EQ(std::system(("dot -Tpng -o " + (dir / "s.png") + " " + (dir / "s.dot")).c_str()), 0);
    EXPECT_GT(fs::file_size(dir / "s.png"), 100u);
  }
}

// --------------------------------------------------------------- TorchScript

TEST(TorchScript, LoadedModuleMatchesTheNetwork) {
  std::mt19937_64 rng(9);
  TempDir dir;
  const std::vector<std::string> acts = {"relu", "gelu", "silu", "tanh", "sigmoid", "identity"};
  const std::vector<std::string> transforms = {"identity", "softmax", "log_softmax"};
  for (int trial = 0; trial < 36; ++trial) {
    auto spec = random_dag(rng, {4, 30, 0.25, trial % 3 == 0});
    std::optional<LevelKernel> kernel;
    if (trial % 4 == 1) kernel = LevelKernel::EdgeList;
    if (trial % 4 == 2) kernel = LevelKernel::DenseScatter;
    NeuralNetwork net(spec, NeuralNetworkOptions()
                                .hidden_activation(acts[trial % 6])
                                .output_transformation(transforms[trial % 3])
                                .dtype(trial % 2 ? torch::kFloat64 : torch::kFloat32)
                                .dropout_p(0.3)
                                .execution(ExecutionOptions().force_kernel(kernel)));
    if (trial % 5 == 0)
      net = edit(net)
                .add_hidden_neurons({spec.id_kind() == NeuronId::Kind::String ? NeuronId("t") : NeuronId(777)})
                .build(1)
                .network;
    export_torchscript(net, dir / "m.pt");
    auto module = torch::jit::load(dir / "m.pt");
    auto x = inputs_for(net, 7);
    auto got = module.forward({x}).toTensor();
    EXPECT_TRUE(torch::allclose(got, eval_forward(net, x), 1e-6, 1e-6)) << trial;
    auto single = module.forward({x[0]}).toTensor();
    EXPECT_TRUE(torch::allclose(single, eval_forward(net, x[0]), 1e-6, 1e-6)) << trial;
  }
}

TEST(TorchScript, CustomCallableIsRefusedByName) {
  NeuralNetwork net(
      GraphSpec::from_edges({{0, 1}, {1, 2}}, {0}, {2}),
      NeuralNetworkOptions().hidden_activation(TensorFunction([](const torch::Tensor& z) { return z; }, "mine")));
  TempDir dir;
  EXPECT_THROW_MSG(export_torchscript(net, dir / "m.pt"),
                   "export_torchscript(): hidden_activation \"mine\" is a custom callable and cannot be exported");
  EXPECT_FALSE(fs::exists(dir / "m.pt"));
}

TEST(Export, PythonReproducesOutputs) {
  TempDir dir;
  NeuralNetwork net(readme_spec(),
                    NeuralNetworkOptions(kDouble).hidden_activation("gelu").output_transformation("softmax"));
  net = add_connections(net, {{1, 6}, {2, 11}}, 3);
  export_torchscript(net, dir / "model.pt");
  export_graph(net, dir / "graph.json");
  auto x = torch::linspace(-1, 2, 9, torch::kFloat64).unsqueeze(1);
  auto y = eval_forward(net, x);
  nlohmann::json cases{{"dtype", "float64"}, {"x", nlohmann::json::array()}, {"y", nlohmann::json::array()}};
  for (int64_t i = 0; i < x.size(0); ++i) {
    cases["x"].push_back({x[i][0].item<double>()});
    cases["y"].push_back({y[i][0].item<double>(), y[i][1].item<double>()});
  }
  spit(dir / "cases.json", cases.dump());
  const std::string cmd = "/usr/bin/python3 " CONNEX_SOURCE_DIR "/tests/python/check_exports.py " + dir.path;
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77 || code == 127) GTEST_SKIP() << "python3 with torch and networkx is not installed";
  EXPECT_EQ(code, 0);
}

// Regressions found by review.
TEST_F(BadCheckpoint, OptimizerHeaderWithWrongTypes) {
  torch::optim::Adam adam(net->parameters());
  save(net, path, &adam);
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["optimizer"]["groups"] = "x"; });
  EXPECT_THROW_MSG(load(path), path + ": /optimizer must be");
}

TEST_F(BadCheckpoint, RepeatedTensorEntry) {
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["tensors"].push_back(h["tensors"][0]); });
  EXPECT_THROW_MSG(load(path), "holds tensor \"weight\" twice");
}

TEST_F(BadCheckpoint, OptimizerStateOfAnotherNetwork) {
  auto other = nn::MLP(1, 1, 5, 1, kDouble);
  torch::optim::Adam other_adam(other->parameters());
  other->forward(torch::ones({2, 1}, torch::kFloat64)).sum().backward();
  other_adam.step();
  save(other, dir / "other.ckpt", &other_adam);
  // Graft: this network's tensors, the other network's optimizer bytes.
  auto donor = load_checkpoint(dir / "other.ckpt");
  auto checkpoint = load_checkpoint(path);
  checkpoint.optimizer = donor.optimizer;
  torch::optim::Adam adam(checkpoint.network->parameters());
  EXPECT_THROW_MSG(
      load_optimizer_state(checkpoint, adam, "graft.ckpt"),
      "the optimizer state in graft.ckpt has exp_avg of shape [10] for parameter \"weight\", which is of shape [6]; "
      "it belongs to another network");
  EXPECT_TRUE(adam.state().empty());
}

// A checkpoint of this fixture's network with a stepped Adam, its header rewritten by `change`.
class BadOptimizerState : public BadCheckpoint {
 protected:
  void SetUp() override {
    BadCheckpoint::SetUp();
    torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.01));
    net->forward(torch::ones({2, 1}, torch::kFloat64)).sum().backward();
    adam.step();
    save(net, path, &adam);
    good = slurp(path);
  }
  void expect_rejected(const std::function<void(nlohmann::json&)>& change, const std::string& message) {
    spit(path, reseal_checkpoint(good, [&](nlohmann::json& h, uint32_t&) { change(h["optimizer"]); }));
    EXPECT_THROW_MSG(load_checkpoint(path), message);
  }
};

TEST_F(BadOptimizerState, UnknownType) {
  expect_rejected([](auto& o) { o["type"] = "lbfgs"; }, "/optimizer/type \"lbfgs\" is not an optimizer connex knows");
}
TEST_F(BadOptimizerState, NotAnObject) {
  expect_rejected([](auto& o) { o = "bytes"; }, "/optimizer must be {\"type\"");
}
TEST_F(BadOptimizerState, UnknownOption) {
  expect_rejected([](auto& o) { o["groups"][0]["options"]["momentum"] = 0.9; },
                  "/optimizer/groups/0/options has an unknown optimizer option \"momentum\"");
}
TEST_F(BadOptimizerState, MissingOption) {
  expect_rejected([](auto& o) { o["groups"][0]["options"].erase("eps"); },
                  "/optimizer/groups/0/options lacks the optimizer option \"eps\"");
}
TEST_F(BadOptimizerState, NegativeLearningRate) {
  expect_rejected([](auto& o) { o["groups"][0]["options"]["lr"] = -1; },
                  "/optimizer/groups/0/options/lr must be a number in [0, inf], got -1");
}
TEST_F(BadOptimizerState, BetaOutOfRange) {
  expect_rejected(
      [](auto& o) {
        o["groups"][0]["options"]["betas"] = {0.9, 1.0};
      },
      "/optimizer/groups/0/options/betas must be two numbers in [0, 1), got [0.9,1.0]");
}
TEST_F(BadOptimizerState, UnknownParameter) {
  expect_rejected([](auto& o) { o["groups"][0]["parameters"].push_back("gamma"); },
                  "/optimizer/groups/0/parameters names \"gamma\", which is not a parameter of the network");
}
TEST_F(BadOptimizerState, ParameterInTwoGroups) {
  expect_rejected([](auto& o) { o["groups"].push_back(o["groups"][0]); },
                  "/optimizer/groups/1/parameters names \"weight\" a second time");
}
TEST_F(BadOptimizerState, StateOfAnUngroupedParameter) {
  expect_rejected([](auto& o) { o["groups"][0]["parameters"] = {"weight"}; },
                  "/optimizer/state/bias is the state of a parameter that no optimizer group holds");
}
TEST_F(BadOptimizerState, UnknownField) {
  expect_rejected(
      [](auto& o) { o["state"]["weight"]["tensors"]["momentum_buffer"] = o["state"]["weight"]["tensors"]["exp_avg"]; },
      "/optimizer/state/weight/tensors/momentum_buffer is not a field of the adam state (exp_avg, exp_avg_sq, "
      "max_exp_avg_sq)");
}
TEST_F(BadOptimizerState, FieldTheStepReadsIsMissing) {
  expect_rejected(
      [](auto& o) { o["state"]["weight"]["tensors"].erase("exp_avg_sq"); },
      "/optimizer/state/weight/tensors lacks \"exp_avg_sq\", which adam's step reads under this group's options");
  // max_exp_avg_sq is read only with amsgrad: absent in this file, it becomes required by turning amsgrad on.
  expect_rejected(
      [](auto& o) { o["groups"][0]["options"]["amsgrad"] = true; },
      "/optimizer/state/bias/tensors lacks \"max_exp_avg_sq\", which adam's step reads under this group's options");
}
TEST_F(BadOptimizerState, AdagradStateMissingForAParameter) {
  torch::optim::Adagrad adagrad(net->parameters(), torch::optim::AdagradOptions(0.1));
  save(net, path, &adagrad);
  spit(path,
       reseal_checkpoint(slurp(path), [](nlohmann::json& h, uint32_t&) { h["optimizer"]["state"].erase("bias"); }));
  EXPECT_THROW_MSG(load_checkpoint(path),
                   "/optimizer/state lacks the state of parameter \"bias\" (adagrad keeps one for every parameter)");
}
TEST_F(BadOptimizerState, StepNotAnInteger) {
  expect_rejected([](auto& o) { o["state"]["weight"]["step"] = 1.5; },
                  "/optimizer/state/weight/step must be a non-negative integer");
  expect_rejected([](auto& o) { o["state"]["weight"]["step"] = -1; },
                  "/optimizer/state/weight/step must be a non-negative integer");
}
TEST_F(BadOptimizerState, TensorOfTheWrongShapeOrDtype) {
  expect_rejected([](auto& o) { o["state"]["weight"]["tensors"]["exp_avg"]["shape"] = {3}; },
                  "optimizer state /optimizer/state/weight/tensors/exp_avg has shape [3] in the file but the network's "
                  "structure needs [6]");
  expect_rejected(
      [](auto& o) { o["state"]["bias"]["tensors"]["exp_avg_sq"]["dtype"] = "float32"; },
      "optimizer state /optimizer/state/bias/tensors/exp_avg_sq is float32 in the file but the config says float64");
}
TEST_F(BadOptimizerState, TensorBeyondTheData) {
  expect_rejected([](auto& o) { o["state"]["weight"]["tensors"]["exp_avg"]["offset"] = 1u << 30; },
                  "optimizer state /optimizer/state/weight/tensors/exp_avg has an inconsistent byte range");
}
TEST_F(BadOptimizerState, VersionOneRefused) {
  spit(path, reseal_checkpoint(good, [](nlohmann::json&, uint32_t& version) { version = 1; }));
  EXPECT_THROW_MSG(load(path),
                   "has checkpoint format version 1; this connex reads version 2 (version 1 held optimizer state in "
                   "torch's pickle format");
}
TEST_F(BadOptimizerState, AnotherTypeOrGroupingIsRefusedAndLeavesTheOptimizerAlone) {
  auto checkpoint = load_checkpoint(path);
  torch::optim::SGD sgd(checkpoint.network->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  EXPECT_THROW_MSG(load_optimizer_state(checkpoint, sgd, "net.ckpt"),
                   "net.ckpt holds adam state, but the optimizer is sgd");
  // Two groups where the file has one; then one group without the bias.
  std::vector<torch::optim::OptimizerParamGroup> groups{{{checkpoint.network->weight_tensor()}},
                                                        {{checkpoint.network->bias_tensor()}}};
  torch::optim::Adam two(groups, torch::optim::AdamOptions(0.5));
  EXPECT_THROW_MSG(load_optimizer_state(checkpoint, two, "net.ckpt"),
                   "net.ckpt holds 1 parameter group(s), but the optimizer has 2");
  torch::optim::Adam partial(std::vector<torch::Tensor>{checkpoint.network->weight_tensor()},
                             torch::optim::AdamOptions(0.5));
  EXPECT_THROW_MSG(load_optimizer_state(checkpoint, partial, "net.ckpt"),
                   "group 0 of the optimizer holds parameters [weight] but the one in net.ckpt holds [weight, bias]");
  torch::optim::Adam foreign(std::vector<torch::Tensor>{torch::zeros({6}, torch::kFloat64)},
                             torch::optim::AdamOptions(0.5));
  EXPECT_THROW_MSG(load_optimizer_state(checkpoint, foreign, "net.ckpt"),
                   "holds a parameter of shape [6] that is not one of the network");
  EXPECT_TRUE(partial.state().empty());
  EXPECT_DOUBLE_EQ(partial.param_groups()[0].options().get_lr(), 0.5);
}

TEST(Checkpoint, SaveRefusesAForeignParameterAndLeavesTheFile) {
  TempDir dir;
  auto net = nn::MLP(1, 1, 3, 1, kDouble);
  save(net, dir / "net.ckpt");
  const std::string before = slurp(dir / "net.ckpt");
  torch::Tensor stranger = torch::zeros({2}, torch::requires_grad());
  torch::optim::SGD sgd(std::vector<torch::Tensor>{net->weight_tensor(), stranger}, 0.1);
  EXPECT_THROW_MSG(save(net, dir / "net.ckpt", &sgd),
                   "cannot save the optimizer for " + (dir / "net.ckpt") +
                       ": the optimizer's group 0 holds a parameter of shape [2] that is not one of the network's (a "
                       "checkpoint keeps the optimizer state of the network's parameters only)");
  EXPECT_EQ(slurp(dir / "net.ckpt"), before);
  // Loading into an optimizer over another network of this structure needs that network.
  torch::optim::SGD own(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  save(net, dir / "with.ckpt", &own);
  const Checkpoint ck = load_checkpoint(dir / "with.ckpt");
  auto twin = nn::MLP(1, 1, 3, 1, kDouble);
  torch::optim::SGD over_twin(twin->parameters(), 0.1);
  EXPECT_THROW_MSG(load_optimizer_state(ck, over_twin, "with.ckpt"),
                   "load_optimizer_state(): with.ckpt: the optimizer's group 0 holds a parameter of shape [6] that "
                   "is not one of the network's (build the optimizer over the network's parameters; for one over "
                   "another network of this structure, pass that network too)");
  load_optimizer_state(ck, over_twin, "with.ckpt", twin);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::SGDOptions&>(over_twin.param_groups()[0].options()).momentum(), 0.9);
  EXPECT_EQ(slurp(dir / "net.ckpt"), before);
}

// The saved moments follow the saved network's weight order, so a network
// given in its place must have that layout: the same file loaded again does;
// a graph with the same counts but a neuron renamed, or one connection moved,
// is refused naming it, and the optimizer is left as it was.
TEST(Checkpoint, OptimizerStateGoesOnlyOntoTheSameStructure) {
  TempDir dir;
  auto [x, y] = cos_sin_data(torch::kFloat64);
  auto net = NeuralNetwork(readme_spec(), kDouble);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  adam.zero_grad();
  torch::mse_loss(net->forward(x), y).backward();
  adam.step();
  save(net, dir / "net.ckpt", &adam);
  const Checkpoint ck = load_checkpoint(dir / "net.ckpt");

  auto again = load(dir / "net.ckpt");
  ASSERT_NE(&again->topology(), &ck.network->topology());
  auto resumed = restore_optimizer(ck, "net.ckpt", again);
  EXPECT_TRUE(torch::equal(adam_state(*resumed, again->weight_tensor()).exp_avg(),
                           adam_state(adam, net->weight_tensor()).exp_avg()));

  auto other = [&](GraphSpec spec) {
    auto built = NeuralNetwork(std::move(spec), kDouble);
    EXPECT_EQ(built->weight_tensor().sizes(), net->weight_tensor().sizes());
    EXPECT_EQ(built->bias_tensor().sizes(), net->bias_tensor().sizes());
    return built;
  };
  // The README graph with each label passed through `relabel`, and one edge replaced.
  auto readme_with = [](std::function<NeuronId(const NeuronId&)> relabel, const Edge& was = {}, const Edge& is = {}) {
    const GraphSpec readme = readme_spec();
    std::vector<Edge> edges;
    for (const auto& [from, to] : readme.edges())
      edges.push_back(Edge{from, to} == was ? is : Edge{relabel(from), relabel(to)});
    std::vector<NeuronId> neurons;  // in the README graph's order, so that only what is changed differs
    for (const auto& id : readme.neurons()) neurons.push_back(relabel(id));
    return GraphSpec::from_edges(edges, {0}, {3, relabel(11)}, neurons);
  };
  auto same = [](const NeuronId& id) { return id; };
  auto renamed = other(readme_with([](const NeuronId& id) { return id == NeuronId(11) ? NeuronId(12) : id; }));
  torch::optim::Adam untouched(renamed->parameters(), torch::optim::AdamOptions(0.5));
  const std::string fits = "; the optimizer state fits only a network of the same structure";
  EXPECT_THROW_MSG(load_optimizer_state(ck, untouched, "net.ckpt", renamed),
                   "load_optimizer_state(): the network given has neuron 12 where net.ckpt's network has 11 (position "
                   "11 of the compiled order)" +
                       fits);
  auto moved = other(readme_with(same, {1, 4}, {1, 5}));
  EXPECT_THROW_MSG(load_optimizer_state(ck, untouched, "net.ckpt", moved),
                   "load_optimizer_state(): the network given has connection 2 -> 4 where net.ckpt's network has 1 "
                   "-> 4 (weight 3)" +
                       fits);
  EXPECT_TRUE(untouched.state().empty());
  EXPECT_DOUBLE_EQ(untouched.param_groups()[0].options().get_lr(), 0.5);
  EXPECT_THROW_MSG(restore_optimizer(ck, "net.ckpt", moved), "restore_optimizer(): the network given has connection");
  // The same graph with output 3 a hidden neuron that leads nowhere: every
  // label and connection in place, the roles not; and the outputs swapped.
  auto demoted = other(GraphSpec::from_edges(readme_spec().edges(), {0}, {11}));
  EXPECT_THROW_MSG(restore_optimizer(ck, "net.ckpt", demoted),
                   "restore_optimizer(): neuron 3 is a hidden neuron in the network given but an output in net.ckpt's "
                   "network" +
                       fits);
  auto swapped = other(GraphSpec::from_edges(readme_spec().edges(), {0}, {11, 3}));
  EXPECT_THROW_MSG(
      restore_optimizer(ck, "net.ckpt", swapped),
      "restore_optimizer(): the network given lists its outputs in another order than net.ckpt's network" + fits);
}

// Every optimizer connex knows, with its options off their defaults: save
// after some steps, load into a fresh optimizer with default options, and
// the two trainings go on bit-identically (state, step counters and options restored).
TEST(Checkpoint, OptimizerStateRoundTripsForEveryKnownType) {
  using namespace torch::optim;
  TempDir dir;
  auto [x, y] = cos_sin_data(torch::kFloat64);
  using Factory = std::function<std::unique_ptr<Optimizer>(std::vector<torch::Tensor>, bool)>;
  const std::vector<std::pair<std::string, Factory>> kinds = {
      {"adam",
       [](auto p, bool tuned) {
         return std::make_unique<Adam>(
             p,
             tuned ? AdamOptions(0.02).betas({0.8, 0.99}).eps(1e-6).weight_decay(0.01).amsgrad(true) : AdamOptions());
       }},
      {"adamw",
       [](auto p, bool tuned) {
         return std::make_unique<AdamW>(p, tuned ? AdamWOptions(0.02).weight_decay(0.1) : AdamWOptions());
       }},
      {"sgd",
       [](auto p, bool tuned) {
         return std::make_unique<SGD>(p, tuned ? SGDOptions(0.05).momentum(0.9).nesterov(true) : SGDOptions(1));
       }},
      {"rmsprop",
       [](auto p, bool tuned) {
         return std::make_unique<RMSprop>(p,
                                          tuned ? RMSpropOptions(0.01).momentum(0.5).centered(true) : RMSpropOptions());
       }},
      {"adagrad",
       [](auto p, bool tuned) {
         return std::make_unique<Adagrad>(
             p, tuned ? AdagradOptions(0.05).lr_decay(0.01).initial_accumulator_value(0.1) : AdagradOptions());
       }},
  };
  for (const auto& [type, make] : kinds) {
    SCOPED_TRACE(type);
    auto net = nn::DenseMLP(1, 2, 6, 2, NeuralNetworkOptions(kDouble).use_topo_norm(true));
    auto optimizer = make(net->parameters(), true);
    auto step = [&](NeuralNetwork& n, Optimizer& o) {
      o.zero_grad();
      torch::mse_loss(n->forward(x), y).backward();
      o.step();
    };
    for (int i = 0; i < 4; ++i) step(net, *optimizer);
    save(net, dir / "run.ckpt", optimizer.get());
    auto checkpoint = load_checkpoint(dir / "run.ckpt");
    ASSERT_TRUE(checkpoint.optimizer);
    EXPECT_EQ(checkpoint.optimizer->type, type);
    auto resumed = make(checkpoint.network->parameters(), false);
    load_optimizer_state(checkpoint, *resumed, "run.ckpt");
    EXPECT_EQ(optimizer_options_to_json(resumed->param_groups()[0].options()),
              optimizer_options_to_json(optimizer->param_groups()[0].options()));
    for (int i = 0; i < 4; ++i) step(net, *optimizer), step(checkpoint.network, *resumed);
    auto a = net->named_parameters(), b = checkpoint.network->named_parameters();
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  }
}

TEST(GraphExport, ImportNamesNodeLinkPathsAndRejectsOverflow) {
  auto bad = [](const std::string& text) { return from_node_link_json(nlohmann::json::parse(text), "g.json"); };
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":true,"target":1,"weight":1}]})"),
      "g.json: /links/0/source must be an integer or a string neuron id, got true");
  EXPECT_THROW_MSG(bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1.5,"bias":0}],"links":[]})"),
                   "g.json: /nodes/1/id must be an integer or a string neuron id, got 1.5");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1]},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":0,"target":1,"weight":1e300}]})"),
      "g.json: /links/0/weight 1e+300 does not fit the network's dtype");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1],"operation_parameters":{"weight":{"shape":[1],"values":[5]}}},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":0,"target":1,"weight":1}]})"),
      "/graph/operation_parameters/weight names no operation parameter");
}

// Found by fuzz_checkpoint (fuzz/): a few header bytes can declare a huge
// structure (a prebuilt network is four numbers; attention parameters grow as
// n·L² per level), which the loader used to build before comparing it with
// the tensor bytes present. It now rejects it first.
TEST(Checkpoint, HugeDeclaredSizeRejected) {
  TempDir dir;
  const std::string path = dir / "net.ckpt";
  auto net = NeuralNetwork(GraphSpec::from_edges({{0, 1}, {1, 2}}, {0}, {2}), kDouble);
  save(net, path);
  const std::string good = slurp(path);
  auto with_graph = [&](const nlohmann::json& graph, const nlohmann::json& options) {
    spit(path, good);
    reseal(path, [&](nlohmann::json& h, uint32_t&) {
      h["config"]["graph"] = graph;
      for (const auto& [key, value] : options.items()) h["config"]["options"][key] = value;
    });
    return slurp(path);
  };
  // MLP(1, 1, 2000, 3): 8,004,000 connections and 6,001 biases, in a file of a few hundred bytes.
  std::string bytes =
      with_graph({{"prebuilt", "MLP"}, {"input_size", 1}, {"output_size", 1}, {"width", 2000}, {"depth", 3}}, {});
  EXPECT_THROW_MSG(load(path),
                   "declares a prebuilt network of 8010001 parameter values (64080008 bytes) but the file holds only");
  EXPECT_THROW_MSG(parse_checkpoint(bytes, "mem.ckpt"), "mem.ckpt: its config declares a prebuilt network");
  // SparseMLP at 10 %: at least 800,400 - 4 connections and the same 6,001 biases.
  with_graph({{"prebuilt", "SparseMLP"},
              {"input_size", 1},
              {"output_size", 1},
              {"width", 2000},
              {"depth", 3},
              {"density", 0.1}},
             {});
  EXPECT_THROW_MSG(load(path),
                   "declares a prebuilt network of 806397 parameter values (6451176 bytes) but the file holds only");
  // Sizes at the top of the int64 range: no overflow, no loop over the depth.
  with_graph({{"prebuilt", "DenseMLP"},
              {"input_size", INT64_MAX},
              {"output_size", INT64_MAX},
              {"width", INT64_MAX},
              {"depth", INT64_MAX}},
             {});
  EXPECT_THROW_MSG(load(path), "declares a prebuilt network of");
  // 40 inputs all feeding 40 outputs: 1,600 connections, but neuron self-attention needs 3·40·(40² + 40) more values.
  nlohmann::json edges = nlohmann::json::array(), inputs = nlohmann::json::array(), outputs = nlohmann::json::array();
  for (int i = 0; i < 40; ++i) inputs.push_back(i), outputs.push_back(100 + i);
  for (int i = 0; i < 40; ++i)
    for (int j = 0; j < 40; ++j) edges.push_back({i, 100 + j});
  with_graph({{"edges", edges}, {"inputs", inputs}, {"outputs", outputs}}, {{"use_neuron_self_attention", true}});
  EXPECT_THROW_MSG(load(path), "declares a network with attention of 198440 parameter values");
  // Valid checkpoints of attention networks still load, bit for bit.
  auto tech = NeuralNetwork(readme_spec(), NeuralNetworkOptions()
                                               .use_topo_self_attention(true)
                                               .use_neuron_self_attention(true)
                                               .use_topo_norm(true)
                                               .use_adaptive_activations(true)
                                               .seed(4));
  save(tech, path);
  auto loaded = parse_checkpoint(slurp(path), "mem.ckpt").network;
  for (const auto& p : tech->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), loaded->named_parameters()[p.key()])) << p.key();
}

// Found by fuzz_graph_json (fuzz/): operation parameter values were not
// checked against the dtype (1e300 loaded as inf in float16), and bfloat16
// weights and biases were checked against float's max, which rounds up to inf.
TEST(GraphExport, ImportRejectsValuesBeyondTheDtype) {
  auto bad = [](const std::string& text) { return from_node_link_json(nlohmann::json::parse(text), "g.json"); };
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1],"options":{"dtype":"bfloat16"}},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":0,"target":1,"weight":3.4e38}]})"),
      "g.json: /links/0/weight 3.4e+38 does not fit the network's dtype");
  EXPECT_THROW_MSG(
      bad(R"({"graph":{"inputs":[0],"outputs":[1],"options":{"dtype":"bfloat16"}},"nodes":[{"id":0},{"id":1,"bias":-3.4e38}],"links":[]})"),
      "g.json: /nodes/1/bias -3.4e+38 does not fit the network's dtype");
  auto ok = bad(
      R"({"graph":{"inputs":[0],"outputs":[1],"options":{"dtype":"bfloat16"}},"nodes":[{"id":0},{"id":1,"bias":0}],"links":[{"source":0,"target":1,"weight":3.3895313892515355e38}]})");
  EXPECT_TRUE(torch::isfinite(ok->weight_tensor()).all().item<bool>());
  auto half = NeuralNetwork(GraphSpec::from_edges({{0, 1}, {1, 2}}, {0}, {2}),
                            NeuralNetworkOptions().dtype(torch::kFloat16).use_topo_norm(true));
  auto json = to_node_link_json(half);
  json["graph"]["operation_parameters"]["topo_norm.beta"]["values"][0] = 1e300;
  EXPECT_THROW_MSG(
      from_node_link_json(json, "g.json"),
      "g.json: /graph/operation_parameters/topo_norm.beta/values/0 1e+300 does not fit the network's dtype");
  json["graph"]["operation_parameters"]["topo_norm.beta"]["values"][0] = 65504.0;
  EXPECT_EQ(from_node_link_json(json, "g.json")->named_parameters()["topo_norm.beta"][0].item<double>(), 65504.0);
}

// Found by fuzz_graph_json and fuzz_checkpoint (fuzz/): a float where an
// integer belongs (a shape of [1e308], an offset of -1.5e300) was converted
// by nlohmann's get<int64_t>/get<uint64_t>, which is undefined behaviour
// (UBSan: float-cast-overflow). Both readers now check the JSON types first.
TEST(Checkpoint, FloatShapeOrOffsetRejected) {
  TempDir dir;
  const std::string path = dir / "net.ckpt";
  save(NeuralNetwork(readme_spec()), path);
  const std::string good = slurp(path);
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["tensors"][0]["shape"] = {1e308}; });
  EXPECT_THROW_MSG(load(path), "is malformed: its shape must be an array of integers");
  spit(path, good);
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["tensors"][0]["offset"] = -1.5e300; });
  EXPECT_THROW_MSG(load(path), "its offset and nbytes non-negative integers");
  spit(path, good);
  reseal(path, [](nlohmann::json& h, uint32_t&) { h["tensors"][1]["nbytes"] = -4; });
  EXPECT_THROW_MSG(load(path), "its offset and nbytes non-negative integers");
}

TEST(GraphExport, ImportRejectsFloatShapes) {
  auto net = NeuralNetwork(readme_spec(), NeuralNetworkOptions().use_adaptive_activations(true));
  auto json = to_node_link_json(net);
  json["graph"]["operation_parameters"]["adaptive_activation.a"]["shape"] = {1e308, 1};
  EXPECT_THROW_MSG(
      from_node_link_json(json, "g.json"),
      "g.json: /graph/operation_parameters/adaptive_activation.a/shape must be an array of integers, got [1e+308,1]");
}

// Ids with quotes, backslashes, markup, DOT syntax and non-ASCII text are
// written and read back unchanged by every format's own parser; ids that no
// format can carry (control characters, invalid UTF-8, noncharacters) are
// refused when the graph is built.
TEST(GraphExport, AwkwardIdsSurviveEveryFormatsParser) {
  const std::vector<NeuronId> awkward{
      "in",     "say \"hi\"",      "back\\slash",   "<b>&amp;</b>", "a; injected [label=PWNED]",
      "x -> y", "über naïve 中文", "tab\u00a0nbsp", "'single'",     "out"};
  std::vector<Edge> edges;
  for (size_t i = 0; i + 1 < awkward.size(); ++i) edges.emplace_back(awkward[i], awkward[i + 1]);
  NeuralNetwork net(GraphSpec(awkward, edges, {"in"}, {"out"}));
  TempDir dir;
  spit(dir / "g.dot", to_dot(net));
  spit(dir / "g.graphml", to_graphml(net));
  spit(dir / "g.json", to_node_link_json(net).dump());
  // Graphviz: exactly these nodes, none injected.
  const int dot = std::system(("dot -Tplain " + dir / "g.dot" + " > " + dir / "g.plain 2> " + dir / "dot.err").c_str());
  if (dot != 0 && slurp(dir / "dot.err").empty()) GTEST_SKIP() << "Graphviz's dot is not installed";
  ASSERT_EQ(dot, 0) << slurp(dir / "dot.err");
  std::istringstream plain(slurp(dir / "g.plain"));
  int nodes = 0;
  for (std::string line; std::getline(plain, line);) nodes += line.rfind("node ", 0) == 0;
  EXPECT_EQ(nodes, static_cast<int>(awkward.size())) << slurp(dir / "g.plain");
  // C++ round trip.
  EXPECT_EQ(import_graph_json(dir / "g.json")->spec().neurons(), net->spec().neurons());
  // An XML parser and networkx.
  const std::string cmd =
      "/usr/bin/python3 " CONNEX_SOURCE_DIR "/tests/python/check_ids.py " + dir.path + " > " + (dir / "ids.json");
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 77 || code == 127) GTEST_SKIP() << "python3 with networkx is not installed";
  ASSERT_EQ(code, 0);
  const auto seen = nlohmann::json::parse(slurp(dir / "ids.json"));
  std::set<std::string> expected;
  for (const auto& id : awkward) expected.insert(id.as_string());
  for (const char* reader : {"graphml", "node_link"})
    EXPECT_EQ(seen.at(reader).get<std::set<std::string>>(), expected) << reader;

  for (const auto& [id, problem] : std::vector<std::pair<std::string, std::string>>{
           {std::string("a\0b", 3), "neuron \"a\\0b\" contains the control character U+0000 at offset 1"},
           {"esc\x1b[31m", "neuron \"esc\\x1b[31m\" contains the control character U+001B at offset 3"},
           {"line\nbreak", "contains the control character U+000A at offset 4"},
           {"c1\xc2\x85", "contains the control character U+0085 at offset 2"},
           {"bad\xff", "neuron \"bad\\xff\" is not valid UTF-8 (byte 0xff at offset 3)"},
           {"tab\tc1\xc2\x85", "neuron \"tab\\tc1\\u0085\" contains the control character U+0009 at offset 3"},
           {"nonchar\xef\xbf\xbe", "contains the noncharacter U+FFFE at offset 7"},
           {"", "neuron \"\" is empty; string ids must be non-empty, printable UTF-8 text"}}) {
    EXPECT_THROW_MSG(GraphSpec::from_edges({{"in", id}, {id, "out"}}, {"in"}, {"out"}), problem);
    EXPECT_THROW_MSG(connex::edit(net).add_hidden_neurons({id}).build(),
                     "string ids must be non-empty, printable UTF-8 text");
  }
  // A backslash and a quote typed into an id print escaped, so the id typed
  // as h\t1 never reads like the one holding a tab, nor a quote like its end.
  EXPECT_EQ(NeuronId("h\\t1").str(), R"("h\\t1")");
  EXPECT_EQ(NeuronId("h\t1").str(), R"("h\t1")");
  EXPECT_EQ(NeuronId("say \"hi\"").str(), R"("say \"hi\"")");
  EXPECT_THROW_MSG(net->bias("h\\t1"), R"(neuron "h\\t1")");
}

TEST(Config, SparseMLPPrebuiltForm) {
  auto from = [](const std::string& graph) {
    return network_from_config(nlohmann::json::parse(R"({"graph":{"prebuilt":"SparseMLP",)" + graph + "}}"), "my.json");
  };
  // {input_size, width x depth, output_size} through nn::sparse_layered_spec, Erdős–Rényi and seed 0 by default.
  auto net = from(R"("input_size":4,"output_size":2,"width":16,"depth":2,"density":0.3)");
  const std::vector<int64_t> sizes{4, 16, 16, 2};
  EXPECT_THROW_MSG(from(R"("input_size":4,"output_size":2,"width":16,"depth":2,"density":0.3,"dnesity":1)"),
                   "my.json: /graph/dnesity is not a key of a prebuilt \"SparseMLP\" graph (it takes prebuilt, "
                   "input_size, output_size, width, depth, density, distribution, seed)");
  EXPECT_THROW_MSG(network_from_config(nlohmann::json::parse(R"({"graph":{"prebuilt":"MLP","input_size":4,
                       "output_size":2,"width":16,"depth":2,"density":0.3}})"),
                                       "my.json"),
                   "my.json: /graph/density is not a key of a prebuilt \"MLP\" graph (it takes prebuilt, input_size, "
                   "output_size, width, depth)");
  EXPECT_EQ(net->spec().edge_indices(),
            nn::sparse_layered_spec(sizes, nn::SparseLayersOptions().density(0.3)).edge_indices());
  auto uniform =
      from(R"("input_size":4,"output_size":2,"width":16,"depth":2,"density":0.3,"distribution":"uniform","seed":7)");
  const auto options = nn::SparseLayersOptions().density(0.3).distribution(nn::DensityDistribution::Uniform).seed(7);
  EXPECT_EQ(uniform->spec().edge_indices(), nn::sparse_layered_spec(sizes, options).edge_indices());
  const auto counts = nn::sparse_layer_connections(sizes, options);
  EXPECT_EQ(uniform->num_connections(), std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  EXPECT_EQ(
      from(R"("input_size":3,"output_size":1,"width":5,"depth":0,"density":1,"distribution":"er")")->num_connections(),
      3);

  const std::string sizes_json = R"("input_size":4,"output_size":2,"width":16,"depth":2)";
  EXPECT_THROW_MSG(from(sizes_json), "my.json: required key \"density\" is missing in /graph");
  EXPECT_THROW_MSG(from(sizes_json + R"(,"density":1.5)"),
                   "my.json: /graph/density must be a number in (0, 1], got 1.5");
  EXPECT_THROW_MSG(from(sizes_json + R"(,"density":0)"), "my.json: /graph/density must be a number in (0, 1], got 0");
  EXPECT_THROW_MSG(from(sizes_json + R"(,"density":"0.1")"),
                   "my.json: /graph/density must be a number in (0, 1], got \"0.1\"");
  EXPECT_THROW_MSG(
      from(sizes_json + R"(,"density":0.1,"distribution":"gaussian")"),
      "my.json: /graph/distribution must be \"uniform\", \"erdos_renyi\", \"er\" or \"erk\", got \"gaussian\"");
  EXPECT_THROW_MSG(from(sizes_json + R"(,"density":0.1,"distribution":2)"), "my.json: /graph/distribution must be");
  EXPECT_THROW_MSG(from(sizes_json + R"(,"density":0.1,"seed":-1)"),
                   "my.json: /graph/seed must be a non-negative integer, got -1");
  EXPECT_THROW_MSG(from(R"("input_size":0,"output_size":2,"width":16,"depth":2,"density":0.1)"),
                   "my.json: /graph: sparse_layered_spec(): expected layer sizes >= 1, got sizes[0] = 0");
  EXPECT_THROW_MSG(from(R"("input_size":1,"output_size":2,"width":0,"depth":9223372036854775807,"density":0.1)"),
                   "my.json: /graph: sparse_layered_spec(): expected layer sizes >= 1, got sizes[1] = 0");
  EXPECT_THROW_MSG(
      from(R"("input_size":1,"output_size":2,"width":3,"depth":9223372036854775807,"density":0.1)"),
      "my.json: /graph/depth 9223372036854775807 x /graph/width 3 is more hidden neurons than connex builds");
  EXPECT_THROW_MSG(
      from(R"("input_size":1,"output_size":1,"width":100000,"depth":3,"density":0.5)"),
      "my.json: /graph: sparse_layered_spec(): 3e+05 neurons and 1e+10 connections is more than connex builds");
}

// Files written before topo norm's gamma and beta were flat (one [sources, 1]
// tensor per level, "topo_norm.level3_gamma") still load, the checkpoint's
// Adam state included: tests/data/legacy_topo_norm was written by the connex
// of 2026-12-02 (DenseMLP(1, 2, 4, 2) with topo norm after 6 Adam steps),
// with each level's values and state beside it.
TEST(Checkpoint, ReadsTopoNormSavedPerLevel) {
  const std::string dir = CONNEX_SOURCE_DIR "/tests/data/legacy_topo_norm/";
  const auto per_level = nlohmann::json::parse(std::ifstream(dir + "per_level.json"));
  auto ck = load_checkpoint(dir + "model.ckpt");
  const auto adam = restore_optimizer(ck);
  NeuralNetwork from_json = import_graph_json(dir + "graph.json");
  const Topology& t = ck.network->topology();
  ASSERT_EQ(t.depth(), 3);
  auto flat = [](const torch::Tensor& x) {
    auto c = x.detach().to(torch::kFloat64).contiguous().view(-1);
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  for (const std::string kind : {"gamma", "beta"}) {
    SCOPED_TRACE(kind);
    std::vector<double> value, exp_avg, exp_avg_sq;
    for (int64_t l = 1; l <= t.depth(); ++l) {
      const auto& saved = per_level.at("topo_norm.level" + std::to_string(l) + "_" + kind);
      for (const char* field : {"value", "exp_avg", "exp_avg_sq"}) {
        auto& into = std::string(field) == "value" ? value : std::string(field) == "exp_avg" ? exp_avg : exp_avg_sq;
        for (double v : saved.at(field)) into.push_back(v);
      }
      EXPECT_EQ(saved.at("step").get<int64_t>(), 6);
    }
    const torch::Tensor p = ck.network->named_parameters()["topo_norm." + kind];
    EXPECT_EQ(flat(p), value);
    EXPECT_EQ(flat(from_json->named_parameters()["topo_norm." + kind]), value);
    const auto& state = adam_state(*adam, p);
    EXPECT_EQ(state.step(), 6);
    EXPECT_EQ(flat(state.exp_avg()), exp_avg);
    EXPECT_EQ(flat(state.exp_avg_sq()), exp_avg_sq);
  }
  const auto x = torch::randn({5, 1});
  EXPECT_TRUE(torch::equal(ck.network->forward(x), from_json->forward(x)));
  // The node-link file's parts are each needed (a level left out would start
  // afresh), and a whole given beside its parts is ambiguous.
  const auto graph = nlohmann::json::parse(std::ifstream(dir + "graph.json"));
  auto short_one = graph;
  short_one["graph"]["operation_parameters"].erase("topo_norm.level3_gamma");
  EXPECT_THROW_MSG(from_node_link_json(short_one, "g.json"),
                   "g.json: /graph/operation_parameters has no entry \"topo_norm.level3_gamma\", which /graph/options "
                   "call for");
  auto both = graph;
  both["graph"]["operation_parameters"]["topo_norm.gamma"] =
      to_node_link_json(from_json)["graph"]["operation_parameters"]["topo_norm.gamma"];
  EXPECT_THROW_MSG(
      from_node_link_json(both, "g.json"),
      "g.json: /graph/operation_parameters names both topo_norm.gamma and its rows topo_norm.level1_gamma");
  // Parts listed in two groups: the whole joins the first; a repeated name is
  // still refused; the step is level 1's whatever the key order.
  const std::string good = slurp(dir + "model.ckpt");
  TempDir tmp;
  const std::string path = tmp / "split.ckpt";
  spit(path, reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         auto& groups = h["optimizer"]["groups"];
         auto second = groups[0];
         groups[0]["parameters"] = {"weight", "topo_norm.level1_gamma", "topo_norm.level1_beta"};
         second["parameters"] = {"bias", "topo_norm.level2_gamma", "topo_norm.level2_beta", "topo_norm.level3_gamma",
                                 "topo_norm.level3_beta"};
         groups.push_back(second);
         h["optimizer"]["state"]["topo_norm.level2_gamma"]["step"] = 3;
       }));
  auto split = load_checkpoint(path);
  const auto split_adam = restore_optimizer(split);
  ASSERT_EQ(split_adam->param_groups().size(), 2u);
  EXPECT_EQ(split_adam->param_groups()[0].params().size(), 3u);
  EXPECT_EQ(split_adam->param_groups()[1].params().size(), 1u);
  const torch::Tensor split_gamma = split.network->named_parameters()["topo_norm.gamma"];
  EXPECT_EQ(adam_state(*split_adam, split_gamma).step(), 6);
  spit(path, reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         h["optimizer"]["groups"][0]["parameters"].push_back("weight");
       }));
  EXPECT_THROW_MSG(load_checkpoint(path), "names \"weight\" a second time");
  // Saved again, it holds the flat names.
  TempDir out;
  save(ck.network, out / "m.ckpt", adam.get());
  auto again = load_checkpoint(out / "m.ckpt");
  EXPECT_TRUE(torch::equal(again.network->forward(x), ck.network->forward(x)));
  EXPECT_EQ(to_node_link_json(again.network)["graph"]["operation_parameters"].count("topo_norm.gamma"), 1u);
}
