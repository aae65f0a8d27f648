// The catalogue of rejected inputs: every kind of bad input connex refuses,
// in one table. Each case runs against a fresh "world" (a trained network
// with a technique, dropout, a frozen connection and an Adam optimizer, plus
// a directory holding its checkpoint, its config and a CSV) and asserts
//   (a) it is refused with connex::Error (the CLI: a non-zero exit and one
//       line on stderr) whose message names the culprit, and
//   (b) nothing changed: every parameter and buffer of the network bit for
//       bit, its structure, the optimizer's state, and every file in the
//       directory byte for byte (no file added, none left half-written).
//
//   category    | rejected inputs                                                  | the message names
//   ------------+------------------------------------------------------------------+--------------------------
//   graph       | cycle, self-loop, unknown / repeated input or output, neuron     | the neurons, the cycle
//               | both input and output, input with an incoming / output with an   | as a path, the edge, the
//               | outgoing connection, no inputs, no outputs, a repeated neuron    | JSON path, the id kind
//               | id, mixed id kinds, an input / output / edge id of the other     |
//               | kind, an edge or adjacency key naming a neuron missing from the  |
//               | neurons list, a malformed JSON graph, a string id with a control |
//               | character, invalid UTF-8 or a noncharacter                         |
//   options     | dropout p outside [0, 1] or NaN, dropout of an unknown neuron,   | the option, the value,
//               | unknown activation, non-element-wise activation, non-floating   | the neuron
//               | dtype, bad topo_sort, non-positive prebuilt sizes, to(int)       |
//   forward     | wrong width, wrong rank, a scalar, wrong dtype, undefined tensor | expected and actual
//   gradients   | check_gradients of a float network or input, of a network with   | the parameter, the
//               | dropout in training mode, a step, tolerance or sample size out  | option and value, the
//               | of range                                                         | remedy
//   access      | weight/set_weight/bias/set_bias/freeze/dropout_p by a bad label  | the connection / neuron
//   edit        | cycle (named), self-loop, unknown neuron, connection into an     | the edge, the cycle, the
//               | input / out of an output, missing connection (by edge, or by an  | neuron, the index
//               | index out of range or listed twice), removing every              |
//               | input or output, existing or wrong-kind id, bad dropout, re-adding|
//               | a removed neuron, a neuron listed twice, two edges closing a cycle|
//               | a topology patch adding an existing connection or removing one   |
//               | twice, function-preserving growth that a norm or attention over  |
//               | a level would see                                                |
//   config      | wrong-typed field, missing field, unknown key, bad dtype name,  | the file and JSON path
//               | bad version, invalid JSON, missing file, cycle in a config file, |
//               | saving a custom callable over an existing config, a SparseMLP    |
//               | density outside (0, 1] or missing, unknown distribution, bad seed|
//   csv         | ragged row, non-numeric cell, NaN cell, overflow, empty file,    | the file, line, column
//               | header only, repeated / empty column name, missing file          |
//   table       | columns that do not fit the network, text in a regression target,| the file, line, column,
//               | more classes than outputs, no training rows, a label the fitted  | what would fit
//               | model never saw                                                   |
//   checkpoint  | truncated (two ways), flipped byte, wrong magic, format version, | the file and the problem
//               | shape mismatch, missing / extra tensor, bad config inside, empty |
//               | or missing file, optimizer state of another network, saving a   |
//               | custom callable over it, saving into a missing directory, a bad  |
//               | or misfitting preprocessing, restoring an optimizer never saved  |
//   cli         | bad flag values (range, choice, form), unknown flag, a flag     | the flag / file / line
//               | given twice, bad CSV, invalid edit, corrupted checkpoint, prune |
//               | without a criterion                                              |
//
// connex::ham (associative memories) keeps its own catalogue in
// tests/test_ham.cpp (HamErrors.*, HamEdit.BadSteps…, HamCheckpoint.*): bad
// layers, synapses, states, clamps, edit steps and files, each asserting its
// message and that the HAM and files are unchanged.
//
// Accepted by design, so not in the table: a repeated edge (counts once, as in
// networkx; a node-link link repeated with another weight is refused), NaN or inf in forward() inputs (they propagate;
// a check would cost a device sync per call), add_connections of an existing connection (ignored).
#include <sys/wait.h>

#include <filesystem>
#include <functional>

#include "file_io.h"
#include "network_snapshot.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

const auto kDouble = torch::TensorOptions().dtype(torch::kFloat64);

// The state every case starts from.
struct World {
  World() {
    torch::manual_seed(0);
    net = NeuralNetwork(readme_spec(), NeuralNetworkOptions()
                                           .dtype(torch::kFloat64)
                                           .hidden_activation("relu")
                                           .use_adaptive_activations(true)
                                           .dropout_p(0.1)
                                           .seed(3));
    net->freeze({{8, 11}});
    adam = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-2));
    auto [x, y] = cos_sin_data(torch::kFloat64);
    adam->zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    adam->step();
    save(net, dir / "good.ckpt", adam.get());
    save_config(net, dir / "net.json");
    spit(dir / "data.csv", "x,y1,y2\n0,1,0\n0.5,0.88,0.48\n1,0.54,0.84\n");
  }
  std::string good() const { return slurp(dir / "good.ckpt"); }
  TempDir dir;
  NeuralNetwork net{nullptr};
  std::unique_ptr<torch::optim::Adam> adam;
};

using Act = std::function<std::string(World&)>;

struct Case {
  std::string category, name;
  std::function<void(World&)> prepare;  // writes the bad input files (before the snapshot); may be empty
  Act act;                              // returns the error message
  std::vector<std::string> needles;     // each must appear in the message
};

// A library call that must throw connex::Error; returns its message.
Act lib(std::function<void(World&)> call) {
  return [call](World& w) -> std::string {
    try {
      call(w);
    } catch (const Error& e) {
      return e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw " << typeid(e).name() << " instead of connex::Error: " << e.what();
      return "";
    }
    ADD_FAILURE() << "was accepted";
    return "";
  };
}

std::string optimizer_bytes(const torch::optim::Optimizer& optimizer) {
  std::ostringstream bytes;
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  archive.save_to(bytes);
  return bytes.str();
}

std::map<std::string, std::string> files_under(const std::string& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root))
    files[fs::relative(entry.path(), root).string()] = entry.is_regular_file() ? slurp(entry.path().string()) : "<dir>";
  return files;
}

std::function<void(World&)> file(const std::string& name, std::function<std::string(World&)> contents) {
  return [name, contents](World& w) { spit(w.dir / name, contents(w)); };
}
std::function<void(World&)> file(const std::string& name, const std::string& contents) {
  return file(name, [contents](World&) { return contents; });
}

NeuralNetwork custom_callable_network() {
  return NeuralNetwork(
      GraphSpec::from_edges({{0, 1}, {1, 2}}, {0}, {2}),
      NeuralNetworkOptions().hidden_activation(TensorFunction([](const torch::Tensor& z) { return z; }, "mine")));
}

torch::Tensor zeros(std::vector<int64_t> shape, torch::Dtype dtype = torch::kFloat64) {
  return torch::zeros(shape, torch::TensorOptions().dtype(dtype));
}

#ifdef CONNEX_CLI
// `connex ARGS` in the world's directory: must exit non-zero with exactly one
// line on stderr and write nothing named "out". Returns stderr.
Act cli(const std::string& args) {
  return [args](World& w) -> std::string {
    TempDir logs;
    const std::string cmd = "cd '" + w.dir.path + "' && " CONNEX_CLI " " + args + " > '" + (logs / "out.txt") +
                            "' 2> '" + (logs / "err.txt") + "'";
    const int status = std::system(cmd.c_str());
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const std::string err = slurp(logs / "err.txt");
    EXPECT_GT(code, 0) << "connex " << args << " (stdout: " << slurp(logs / "out.txt") << ")";
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line on stderr, got: " << err;
    EXPECT_FALSE(fs::exists(w.dir / "out")) << "connex " << args << " wrote out";
    return err;
  };
}
#endif

std::vector<Case> make_catalogue() {
  std::vector<Case> c;
  auto add = [&](std::string category, std::string name, std::function<void(World&)> prepare, Act act,
                 std::vector<std::string> needles) {
    c.push_back({std::move(category), std::move(name), std::move(prepare), std::move(act), std::move(needles)});
  };
  const std::function<void(World&)> none;

  // ------------------------------------------------------------------ graph
  add("graph", "Cycle", none, lib([](World&) {
        GraphSpec::from_edges({{0, 3}, {3, 5}, {5, 7}, {7, 3}, {7, 9}}, {0}, {9});
      }),
      {"the graph has the cycle 3 -> 5 -> 7 -> 3"});
  add("graph", "SelfLoop", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}, {1, 1}, {1, 2}}, {0}, {2});
      }),
      {"the graph has the cycle 1 -> 1"});
  add("graph", "UnknownInput", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0, 7}, {1});
      }),
      {"input neuron 7 is not a neuron of the graph"});
  add("graph", "UnknownOutput", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0}, {9});
      }),
      {"output neuron 9 is not a neuron of the graph"});
  add("graph", "OutputOfTheOtherIdKind", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0}, {"x"});
      }),
      {"GraphSpec: output neuron \"x\" is a string id, but this graph's ids are integers"});
  add("graph", "InputOfTheOtherIdKind", none, lib([](World&) {
        GraphSpec::from_edges({{"a", "b"}}, {0}, {"b"});
      }),
      {"GraphSpec: input neuron 0 is an integer id, but this graph's ids are strings"});
  // With a neuron list, a typo in an edge is an error, not a new neuron.
  add("graph", "EdgeNamesAnUnlistedNeuron", none, lib([](World&) {
        GraphSpec::from_edges({{"n1", "n2"}, {"n1", "n2OO1"}}, {"n1"}, {"n2"}, {"n1", "n2", "n2001"});
      }),
      {"GraphSpec: edge \"n1\" -> \"n2OO1\" names neuron \"n2OO1\", which is not in the neurons list"});
  add("graph", "EdgeOfTheOtherIdKind", none, lib([](World&) {
        GraphSpec::from_edges({{"a", "b"}, {0, "b"}}, {"a"}, {"b"}, {"a", "b"});
      }),
      {"GraphSpec: edge 0 -> \"b\" names neuron 0, an integer id, but this graph's ids are strings"});
  add("graph", "AdjacencyKeyNotListed", none, lib([](World&) {
        GraphSpec::from_adjacency({{0, {1}}, {5, {}}}, {0}, {1}, {0, 1});
      }),
      {"GraphSpec: adjacency key 5 is not in the neurons list"});
  add("graph", "BothInputAndOutput", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0, 2}, {1, 2}, {0, 1, 2});
      }),
      {"neuron 2 is both an input and an output neuron"});
  add("graph", "InputWithIncomingEdge", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}, {1, 2}, {3, 0}}, {0, 3}, {2});
      }),
      {"input neuron 0 has the incoming connection 3 -> 0"});
  add("graph", "OutputWithOutgoingEdge", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}, {1, 2}, {2, 4}}, {0}, {2, 4});
      }),
      {"output neuron 2 has the outgoing connection 2 -> 4"});
  add("graph", "NoInputs", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {}, {1});
      }),
      {"no input neurons given"});
  add("graph", "NoOutputs", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0}, {});
      }),
      {"no output neurons given"});
  add("graph", "RepeatedNeuronId", none, lib([](World&) {
        GraphSpec::from_edges({{0, 1}}, {0}, {1}, {0, 1, 0});
      }),
      {"neuron 0 is listed twice in the neuron list"});
  add("graph", "RepeatedInput", none, lib([](World&) {
        GraphSpec::from_edges({{0, 2}, {1, 2}}, {0, 1, 0}, {2});
      }),
      {"input neuron 0 is listed twice"});
  add("graph", "MixedIdKinds", none, lib([](World&) {
        GraphSpec::from_edges({{0, "a"}}, {0}, {"a"});
      }),
      {"neuron \"a\" is a string but neuron 0 is an integer"});
  add("graph", "IdWithANulByte", none, lib([](World&) {
        GraphSpec::from_edges({{"a", std::string("b\0c", 3)}}, {"a"}, {std::string("b\0c", 3)});
      }),
      {"GraphSpec: neuron \"b\\0c\" contains the control character U+0000 at offset 1; string ids must be non-empty, "
       "printable UTF-8 text"});
  add("graph", "EmptyStringId", none, lib([](World&) {
        GraphSpec::from_edges({{"a", ""}}, {"a"}, {""});
      }),
      {"GraphSpec: neuron \"\" is empty; string ids must be non-empty, printable UTF-8 text"});
  add("graph", "IdNotUtf8",
      file("bad.json",
           "{\"graph\": {\"edges\": [[\"a\", \"b\\u0000\"]], \"inputs\": [\"a\"], \"outputs\": [\"b\\u0000\"]}}"),
      lib([](World& w) { load_config(w.dir / "bad.json"); }), {"bad.json", "contains the control character U+0000"});
  add("edit", "AddedIdWithAnEscape", none, lib([](World&) {
        NeuralNetwork named(GraphSpec::from_edges({{"a", "b"}}, {"a"}, {"b"}));
        connex::edit(named).add_hidden_neurons({"\x1b[2J"}).build();
      }),
      {"contains the control character U+001B at offset 0"});
  add("graph", "JsonEdgeNotAPair", none, lib([](World&) {
        GraphSpec::from_json(nlohmann::json::parse(R"({"edges":[[0]],"inputs":[0],"outputs":[1]})"), "g.json");
      }),
      {"g.json", "/edges/0 must be a pair [from, to]"});

  // ---------------------------------------------------------------- options
  auto readme_with = [](NeuralNetworkOptions o) { return [o](World&) { NeuralNetwork(readme_spec(), o); }; };
  add("options", "DropoutAboveOne", none, lib(readme_with(NeuralNetworkOptions().dropout_p(1.5))),
      {"dropout_p for hidden neurons is 1.5; it must lie in [0, 1]"});
  add("options", "DropoutNanForANeuron", none,
      lib(readme_with(NeuralNetworkOptions().dropout_p(DropoutSpec({{4, std::nan("")}})))),
      {"dropout_p of neuron 4 is nan"});
  add("options", "DropoutOfUnknownNeuron", none,
      lib(readme_with(NeuralNetworkOptions().dropout_p(DropoutSpec({{40, 0.1}})))),
      {"dropout_p names neuron 40, which is not in the graph"});
  add("options", "UnknownActivation", none,
      lib([](World&) { NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("swish")); }),
      {"unknown built-in \"swish\""});
  add("options", "NonElementwiseActivation", none,
      lib(readme_with(NeuralNetworkOptions().hidden_activation("softmax"))),
      {"hidden_activation \"softmax\" is not element-wise"});
  add("options", "IntegerDtype", none, lib(readme_with(NeuralNetworkOptions().dtype(torch::kInt64))),
      {"dtype Long is not a floating-point type"});
  add("options", "ForcedBiasOnlyKernel", none,
      lib(readme_with(
          NeuralNetworkOptions().execution(ExecutionOptions().fused(false).force_kernel(LevelKernel::BiasOnly)))),
      {"NeuralNetwork(): force_kernel(BiasOnly) would ignore every connection"});
  add("options", "NanDenseThreshold", none,
      lib(readme_with(NeuralNetworkOptions().execution(ExecutionOptions().dense_threshold(std::nan(""))))),
      {"NeuralNetwork(): dense_threshold must be a number, got nan"});
  add("options", "TopoSortViolatesAnEdge", none, lib([](World&) {
        NeuralNetwork(GraphSpec::from_edges({{0, 1}, {1, 2}}, {0}, {2}),
                      NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{1, 0, 2}));
      }),
      {"topo_sort places", "0 -> 1"});
  add("options", "TopoSortMissingANeuron", none,
      lib(readme_with(NeuralNetworkOptions().topo_sort(std::vector<NeuronId>{0, 1}))),
      {"topo_sort is not a permutation of the neurons: neuron"});
  add("options", "PrebuiltZeroWidth", none, lib([](World&) { nn::MLP(1, 2, 0, 2); }),
      {"MLP(): sizes must be positive", "width=0"});
  if (!torch::cuda::is_available())
    add("options", "NetworkToCudaWithoutCuda", none, lib([](World& w) { w.net->to(torch::kCUDA); }),
        {"NeuralNetwork::to(): device cuda", "CUDA is not available"});
  add("options", "NetworkToIntegerDtype", none, lib([](World& w) { w.net->to(torch::kInt32); }),
      {"NeuralNetwork::to(): dtype Int is not a floating-point type"});

  // ---------------------------------------------------------------- forward
  add("forward", "WrongWidth", none, lib([](World& w) {
        w.net->forward(zeros({4, 3}));
      }),
      {"expected input of shape [batch, 1] or [1], got [4, 3]"});
  add("forward", "WrongRank", none, lib([](World& w) { w.net->forward(zeros({2, 1, 1})); }), {"got [2, 1, 1]"});
  add("forward", "Scalar", none, lib([](World& w) { w.net->forward(torch::tensor(1.0, kDouble)); }), {"got []"});
  add("forward", "WrongDtype", none, lib([](World& w) {
        w.net->forward(zeros({4, 1}, torch::kFloat32));
      }),
      {"expected input of dtype Double, got Float"});
  add("forward", "IntegerInput", none, lib([](World& w) {
        w.net->forward(zeros({4, 1}, torch::kLong));
      }),
      {"expected input of dtype Double, got Long"});
  add("forward", "Undefined", none, lib([](World& w) { w.net->forward(torch::Tensor()); }),
      {"the input tensor is undefined"});

  // ------------------------------------------------------- gradient check
  add("gradients", "DropoutInTrainingMode", none, lib([](World& w) {
        check_gradients(w.net, zeros({4, 1}));
      }),
      {"check_gradients(): the function draws from torch's random generator", "call eval() first"});
  add("gradients", "FloatInput", none, lib([](World& w) {
        check_gradients(w.net, zeros({4, 1}, torch::kFloat32));
      }),
      {"check_gradients(): the input is float32; expected float64"});
  add("gradients", "ZeroStep", none, lib([](World& w) {
        check_gradients(w.net, zeros({4, 1}), GradientCheckOptions().step(0));
      }),
      {"check_gradients(): expected step > 0, got 0"});
  add("gradients", "FloatNetwork", none, lib([](World& w) {
        NeuralNetwork single(readme_spec());
        check_gradients(single, zeros({4, 1}));
      }),
      {"check_gradients(): parameter \"weight\" is float32; expected float64"});

  // ----------------------------------------------------------------- access
  add("access", "WeightOfMissingConnection", none, lib([](World& w) { w.net->weight(0, 11); }),
      {"NeuralNetwork::weight(): there is no connection 0 -> 11"});
  add("access", "SetWeightOfUnknownNeuron", none, lib([](World& w) { w.net->set_weight(0, 42, 1.0); }),
      {"NeuralNetwork::set_weight(): neuron 42 is not in the network"});
  add("access", "SetBiasOfInput", none, lib([](World& w) { w.net->set_bias(0, 1.0); }),
      {"NeuralNetwork::set_bias(): neuron 0 is an input and has no bias"});
  add("access", "FreezeWithOneBadLabel", none, lib([](World& w) {
        w.net->freeze({{1, 4}, {0, 11}}, {4});
      }),
      {"NeuralNetwork::freeze(): there is no connection 0 -> 11"});
  add("access", "DropoutOfUnknownNeuron", none, lib([](World& w) { w.net->dropout_p("z"); }),
      {"NeuralNetwork::dropout_p(): neuron \"z\" is not in the network"});

  // ------------------------------------------------------------------- edit
  add("edit", "PatchAddsAnExistingConnection", none, lib([](World& w) {
        const Topology& t = w.net->topology();
        ConnectionArray old_connection;
        t.with_connections({}, {{t.dense_of(1), t.dense_of(4)}}, {}, old_connection);
      }),
      {"Topology::with_connections(): an added connection exists already or is given twice"});
  add("edit", "PatchRemovesAConnectionTwice", none, lib([](World& w) {
        const Topology& t = w.net->topology();
        const int64_t c = t.connection_index(t.dense_of(1), t.dense_of(4));
        ConnectionArray old_connection;
        t.with_connections({c, c}, {}, {}, old_connection);
      }),
      {"Topology::with_connections(): connection 1 -> 4 is removed twice"});
  add("edit", "Cycle", none, lib([](World& w) {
        add_connections(w.net, {{8, 2}});
      }),
      {"add_connections(): edge 8 -> 2 would create the cycle 2 -> 4 -> 6 -> 8 -> 2"});
  add("edit", "SelfLoop", none, lib([](World& w) {
        add_connections(w.net, {{5, 5}});
      }),
      {"edge 5 -> 5 would create the cycle 5 -> 5"});
  add("edit", "TwoEdgesCloseACycle", none, lib([](World& w) {
        edit(w.net).add_connections({{7, 1}}).add_connections({{1, 5}}).build();
      }),
      {"would create the cycle 1 -> 5 -> 7 -> 1"});
  add("edit", "UnknownNeuron", none, lib([](World& w) {
        add_connections(w.net, {{1, 42}});
      }),
      {"add_connections(): edge 1 -> 42 names neuron 42, which is not in the network"});
  add("edit", "ConnectionIntoInput", none, lib([](World& w) {
        add_connections(w.net, {{4, 0}});
      }),
      {"edge 4 -> 0 would enter input neuron 0"});
  add("edit", "ConnectionOutOfOutput", none, lib([](World& w) {
        add_connections(w.net, {{3, 4}});
      }),
      {"edge 3 -> 4 would leave output neuron 3"});
  add("edit", "RemoveMissingConnection", none, lib([](World& w) {
        remove_connections(w.net, {{0, 11}});
      }),
      {"remove_connections(): there is no connection 0 -> 11"});
  add("edit", "RemoveConnectionIndexOutOfRange", none, lib([](World& w) {
        edit(w.net).remove_connections_at({0, w.net->num_connections()}).build();
      }),
      {"remove_connections_at(): connection index", "is out of range; the network has"});
  add("edit", "RemoveConnectionIndexTwice", none, lib([](World& w) {
        const Topology& t = w.net->topology();
        const int64_t c = t.connection_index(t.dense_of(1), t.dense_of(4));
        edit(w.net).remove_connections_at({c, c}).build();
      }),
      {"(1 -> 4) is listed twice"});
  add("edit", "RemoveTheOnlyInput", none, lib([](World& w) { remove_neurons(w.net, {0}); }),
      {"remove_neurons(): removing [0] would leave the network without input neurons"});
  add("edit", "RemoveEveryOutput", none, lib([](World& w) {
        remove_neurons(w.net, {3, 11});
      }),
      {"removing [3, 11] would leave the network without output neurons"});
  add("edit", "RemoveUnknownNeuron", none, lib([](World& w) { remove_neurons(w.net, {42}); }),
      {"remove_neurons(): neuron 42 is not in the network"});
  add("edit", "RemoveANeuronTwice", none, lib([](World& w) {
        remove_neurons(w.net, {4, 4});
      }),
      {"remove_neurons(): neuron 4 is listed twice"});
  add("edit", "AddExistingNeuron", none, lib([](World& w) { add_hidden_neurons(w.net, {4}); }),
      {"add_hidden_neurons(): neuron 4 already exists"});
  add("edit", "AddWrongIdKind", none, lib([](World& w) { add_output_neurons(w.net, {"x"}); }),
      {"add_output_neurons(): neuron \"x\" is a string but the network's neuron ids are integers"});
  add("edit", "DropoutOutOfRange", none, lib([](World& w) { set_dropout_p(w.net, 2.0); }),
      {"set_dropout_p(): dropout_p for hidden neurons is 2"});
  add("edit", "DropoutOfUnknownNeuron", none, lib([](World& w) {
        set_dropout_p(w.net, DropoutSpec({{42, 0.1}}));
      }),
      {"set_dropout_p(): neuron 42 is not in the network"});
  add("edit", "ReaddRemovedNeuron", none,
      lib([](World& w) { edit(w.net).remove_neurons({4}).add_hidden_neurons({4}).build(); }),
      {"add_hidden_neurons(): neuron 4 was removed earlier in this edit"});
  add("edit", "ReaddRemovedConnection", none, lib([](World& w) {
        edit(w.net).remove_connections({{1, 4}}).add_connections({{0, 4}, {1, 4}}).build();
      }),
      {"add_connections(): edge 1 -> 4 was removed earlier in this edit; build() first, then add it anew"});

  add("edit", "FunctionPreservingNewLevelInput", none, lib([](World&) {
        NeuralNetwork normed(readme_spec(), NeuralNetworkOptions().use_topo_norm(true));
        edit(normed).add_connections({{1, 6}}).function_preserving().build();
      }),
      {"function_preserving(): level 3 would read neuron 1 besides its old inputs, and topo_norm reads a level's "
       "inputs together"});
  add("edit", "FunctionPreservingNewOutputUnderSoftmax", none, lib([](World&) {
        NeuralNetwork classifier(readme_spec(), NeuralNetworkOptions().output_transformation("softmax"));
        edit(classifier).add_output_neurons({20}).add_connections({{1, 20}}).function_preserving().build();
      }),
      {"function_preserving(): output neuron 20 would be new, and the output transformation softmax spans the "
       "outputs: every old output would change"});

  // ----------------------------------------------------------------- config
  auto config = [](std::string text) {
    return lib([text](World&) { network_from_config(nlohmann::json::parse(text), "my.json"); });
  };
  const std::string graph = R"("graph":{"edges":[[0,1]],"inputs":[0],"outputs":[1]})";
  add("config", "WrongTypedField", none, config("{" + graph + R"(,"options":{"seed":"7"}})"),
      {"my.json: /options/seed must be a non-negative integer, got \"7\""});
  add("config", "SeedPastSixtyFourBits", none, config("{" + graph + R"(,"options":{"seed":1e20}})"),
      {"my.json: /options/seed must be a non-negative integer in decimal digits, at most 18446744073709551615, got "
       "1e+20"});
  add("config", "WrongTypedBool", none, config("{" + graph + R"(,"options":{"use_topo_norm":"yes"}})"),
      {"my.json: /options/use_topo_norm must be true or false"});
  add("config", "MissingField", none, config(R"({"graph":{"edges":[[0,1]],"outputs":[1]}})"),
      {"my.json: required key \"inputs\" is missing in /graph"});
  add("config", "WrongTypedNeuronId", none, config(R"({"graph":{"edges":[[0,true]],"inputs":[0],"outputs":[1]}})"),
      {"my.json: /graph/edges/0/1 must be an integer or a string neuron id, got true"});
  add("config", "UnknownOption", none, config("{" + graph + R"(,"options":{"activation":"relu"}})"),
      {"my.json: /options/activation is not an option"});
  add("config", "BadDtypeName", none, config("{" + graph + R"(,"options":{"dtype":"int8"}})"),
      {"my.json: /options/dtype must be one of float32"});
  add("config", "FutureVersion", none, config(R"({"version":2,"graph":{}})"),
      {"my.json: /version is 2; this connex reads version 1"});
  add("config", "InvalidJsonFile", file("broken.json", "{\"graph\": [1, 2"),
      lib([](World& w) { load_config(w.dir / "broken.json"); }), {"load_config():", "broken.json is not valid JSON"});
  // nlohmann keeps the last value of a key given twice: the first "seed" was silently dropped.
  add("config", "KeyGivenTwice",
      file("twice.json", "{" + graph + R"(,"options":{"seed":1,"hidden_activation":"tanh","seed":2}})"),
      lib([](World& w) { load_config(w.dir / "twice.json"); }),
      {"load_config():",
       "twice.json: /options/seed is given twice (line 1); JSON keeps only one of the values: remove one"});
  // The same key spelt with an escape is the same key.
  add("config", "KeyGivenTwiceOnceEscaped",
      file("escaped.json", "{" + graph + ",\n\"options\":{\"seed\":1,\n\"se\\u0065d\":2}}"),
      lib([](World& w) { load_config(w.dir / "escaped.json"); }),
      {"escaped.json: /options/seed is given twice (line 3)"});
  // Invalid JSON is invalid JSON, whatever keys a scan of it would see.
  add("config", "KeysOfInvalidJson", file("stale.json", R"({"x":{1:2,3:4}})"),
      lib([](World& w) { load_config(w.dir / "stale.json"); }), {"load_config():", "stale.json is not valid JSON"});
  // Colons in an array are a syntax error, not keys given twice.
  add("config", "ColonsInAnArray", file("colons.json", R"({"a":[1:2, 1:2]})"),
      lib([](World& w) { load_config(w.dir / "colons.json"); }), {"load_config():", "colons.json is not valid JSON"});
  // Nested 100,000 deep, it crashed the message's dump() (exit 139 in the program).
  add("config", "NestedTooDeeply",
      file("deep.json", "{\"options\": {\"seed\": " + std::string(100000, '[') + std::string(100000, ']') + "}}"),
      lib([](World& w) { load_config(w.dir / "deep.json"); }),
      {"load_config():", "deep.json nests JSON deeper than 256 levels (at byte"});
  add("config", "EdgeNamesAnUnlistedNeuron", none,
      config(R"({"graph":{"neurons":[0,1,2],"edges":[[0,1],[1,2],[1,20]],"inputs":[0],"outputs":[2]}})"),
      {"my.json: /graph/edges/2/1: edge 1 -> 20 names neuron 20, which is not in the neurons list"});
  add("config", "AdjacencyNamesAnUnlistedNeuron", none,
      config(R"({"graph":{"neurons":[0,1,2],"adjacency":{"0":[1],"1":[2,20]},"inputs":[0],"outputs":[2]}})"),
      {"my.json: /graph/adjacency/1/1: edge 1 -> 20 names neuron 20, which is not in the neurons list"});
  add("config", "CycleInAFile",
      file("cyclic.json", R"({"graph":{"edges":[[0,1],[1,2],[2,1],[2,3]],"inputs":[0],"outputs":[3]}})"),
      lib([](World& w) { load_config(w.dir / "cyclic.json"); }), {"cyclic.json: the graph has the cycle 1 -> 2 -> 1"});
  add("config", "MissingFile", none, lib([](World& w) { load_config(w.dir / "nothing.json"); }),
      {"load_config(): cannot open", "nothing.json"});
  add("config", "SaveCustomCallableOverAFile", none,
      lib([](World& w) { save_config(custom_callable_network(), w.dir / "net.json"); }),
      {"save_config(): hidden_activation \"mine\" is a custom callable"});
  const std::string sparse_mlp =
      R"({"graph":{"prebuilt":"SparseMLP","input_size":2,"output_size":1,"width":4,"depth":2)";
  add("config", "SparseMLPDensityOutOfRange", none, config(sparse_mlp + R"(,"density":1.5}})"),
      {"my.json: /graph/density must be a number in (0, 1], got 1.5"});
  add("config", "SparseMLPDensityMissing", none, config(sparse_mlp + "}}"),
      {"my.json: required key \"density\" is missing in /graph"});
  add("config", "SparseMLPUnknownDistribution", none,
      config(sparse_mlp + R"(,"density":0.5,"distribution":"normal"}})"),
      {"my.json: /graph/distribution must be \"uniform\", \"erdos_renyi\", \"er\" or \"erk\", got \"normal\""});
  add("config", "SparseMLPNegativeSeed", none, config(sparse_mlp + R"(,"density":0.5,"seed":-4}})"),
      {"my.json: /graph/seed must be a non-negative integer, got -4"});
  add("config", "SparseMLPSeedWithAnExponent", none, config(sparse_mlp + R"(,"density":0.5,"seed":1e3}})"),
      {"my.json: /graph/seed must be a non-negative integer in decimal digits, at most 18446744073709551615, got "
       "1000.0"});

  // -------------------------------------------------------------------- csv
  auto csv = [](const std::string& name) { return lib([name](World& w) { read_csv(w.dir / name); }); };
  add("csv", "RaggedRow", file("d.csv", "x1,x2,y\n1,2,3\n4,5\n"), csv("d.csv"), {"d.csv:3: expected 3 columns, got 2"});
  add("csv", "LongRow", file("d.csv", "x1,x2,y\n1,2,3\n\n4,5,6,7\n"), csv("d.csv"),
      {"d.csv:4: expected 3 columns, got 4"});
  add("csv", "UnquotedDecimalComma", file("d.csv", "x1,x2,y\n1,2,3\n4,-2,5,6\n"), csv("d.csv"),
      {"d.csv:3: expected 3 columns, got 4 (if -2,5 in columns 2-3 is one number, write it with a decimal point: "
       "-2.5)"});
  add("csv", "NonNumericCell", file("d.csv", "x1,x2,y\n1,2,3\n4,abc,6\n"), csv("d.csv"),
      {"d.csv:3: column 2 (\"x2\"): \"abc\" is not a number"});
  add("csv", "NanCell", file("d.csv", "x1,x2,y\n1,2,3\n4,5,nan\n"), csv("d.csv"),
      {"d.csv:3: column 3 (\"y\"): nan is not a finite number"});
  add("csv", "Overflow", file("d.csv", "x\n1e400\n"), csv("d.csv"),
      {"d.csv:2: column 1 (\"x\"): 1e400 is beyond the range of a double (about 1.8e308)"});
  // strtod skips leading white space but stops at trailing: inside quotes, neither is a number.
  add("csv", "QuotedSpaceBeforeANumber", file("d.csv", "x,y\n\" 2\",1\n"), csv("d.csv"),
      {"d.csv:2: column 1 (\"x\"): \" 2\" is not a number"});
  add("cli", "SpaceBeforeAFlagsNumber", none, cli("train net.json --lr ' 0.01' --out out"),
      {"--lr: must be a number in (0, 1000000], got \" 0.01\""});
  add("cli", "IdOutOfRange", none, cli("edit good.ckpt --add-hidden 99999999999999999999 --out out"),
      {"--add-hidden: \"99999999999999999999\" is not an integer neuron id (this network's ids are integers: decimal "
       "digits, no leading 0, within 64 bits)"});
  add("csv", "UnclosedQuote", file("d.csv", "x1,x2,y\n1,\"2,3\n4,5,6\n"), csv("d.csv"),
      {"d.csv:2: column 2: the quoted cell is never closed"});
  add("csv", "Empty", file("d.csv", ""), csv("d.csv"), {"d.csv: the file is empty"});
  add("csv", "HeaderOnly", file("d.csv", "x,y\n"), csv("d.csv"), {"d.csv: the file has a header but no data rows"});
  add("csv", "PathGivenAsText", none, lib([](World&) { parse_csv("iris.csv"); }),
      {"csv: the file has a header but no data rows (parse_csv() takes a file's text; read_csv(\"iris.csv\") reads the "
       "file)"});
  add("csv", "RepeatedColumn", file("d.csv", "a,a\n1,2\n"), csv("d.csv"),
      {"d.csv:1: the header names column \"a\" twice"});
  add("csv", "EmptyColumnName", file("d.csv", "a,,b\n1,2,3\n"), csv("d.csv"),
      {"d.csv:1: the header has an empty column name (column 2)"});
  add("csv", "MissingFile", none, csv("nothing.csv"), {"read_csv(): cannot open", "nothing.csv"});

  // ------------------------------------------------------------------ table
  // read_table for the world's network (1 input, 2 outputs).
  auto table = [](const std::string& name, TableOptions options = {}) {
    return lib([name, options](World& w) { read_table(w.dir / name, w.net, options); });
  };
  add("table", "TooFewFeatureColumns", file("d.csv", "y1,y2\n1,2\n"), table("d.csv"),
      {"d.csv: has 2 columns, too few for 2 target column(s) and at least one feature"});
  add("table", "ForgottenClassificationTask", file("d.csv", "x,kind\n1,cat\n2,dog\n"),
      table("d.csv", TableOptions().targets({"kind"})),
      {"d.csv: 1 target columns (kind) but the network has 2 outputs"});
  add("table", "TextInARegressionTarget", file("d.csv", "x,y1,y2\n1,2,cat\n"), table("d.csv"),
      {"d.csv:2: column 3 (\"y2\"): \"cat\" is not a number"});
  add("table", "MoreClassesThanOutputs", file("d.csv", "x,kind\n1,a\n2,b\n3,c\n"),
      table("d.csv", TableOptions().task(Task::Classification)),
      {"d.csv: column \"kind\" has 3 distinct class labels but the network has 2 outputs"});
  add("table", "ValidationTakesEveryRow", file("d.csv", "x,y1,y2\n1,2,3\n"),
      table("d.csv", TableOptions().validation_fraction(0.5)),
      {"split_rows(): a validation fraction of 0.5 leaves no training rows (1 row in all)"});
  add("table", "UnknownClassOfAFittedModel", file("d.csv", "x,kind\n1,a\n2,zebra\n"), lib([](World& w) {
        Preprocessing fitted;
        fitted.task = Task::Classification, fitted.features = {"x"}, fitted.targets = {"kind"},
        fitted.classes = {"a", "b"};
        read_table(w.dir / "d.csv", w.net, {}, fitted);
      }),
      {"d.csv:3: column 2 (\"kind\"): \"zebra\" is not one of the classes the model was trained on (a, b)"});

  add("table", "FittedStandardizationPastTheTrainingRange", file("d.csv", "x,y1,y2\n0,1,2\n1e-9,3,4\n"),
      lib([](World& w) {
        Preprocessing fitted;
        fitted.task = Task::Regression, fitted.features = {"x"}, fitted.targets = {"y1", "y2"};
        fitted.mean = {0.0}, fitted.scale = {1e-300};  // the world's network is float64
        read_table(w.dir / "d.csv", w.net, {}, fitted);
      }),
      {"d.csv:3: column 1 (\"x\"): 1e-09 standardizes to 1e+291, too large to train on in Double (|value| must "
       "stay below 1.3e+154, so that squared errors stay finite); rescale the column"});
  add("table", "NanInTensors", none, lib([](World&) {
        table_from_tensors(torch::tensor({1.0, std::nan("")}, torch::kFloat64).view({2, 1}), torch::zeros({2, 2}));
      }),
      {"table_from_tensors(): row 1, feature 0 (\"x0\"): nan is not a finite number"});

  auto inputs_for = [](const std::string& name, bool fitted) {
    return lib([name, fitted](World& w) {
      Preprocessing x;
      x.features = {"x"}, x.targets = {"y1", "y2"};
      read_inputs(w.dir / name, w.net, fitted ? std::optional<Preprocessing>(x) : std::nullopt);
    });
  };
  add("table", "InputsWithoutPreprocessingCountEveryColumn", file("p.csv", "a,b\n1,2\n"), inputs_for("p.csv", false),
      {"p.csv: 2 columns (a, b) but the network has 1 inputs; without the preprocessing of a model trained on a CSV, "
       "every column is an input"});
  add("table", "InputsMissingAFeature", file("p.csv", "y1,y2\n1,2\n"), inputs_for("p.csv", true),
      {"p.csv: no column \"x\", a feature the model was trained on; the columns are y1, y2"});
  add("table", "InputsWithTextInAFeature", file("p.csv", "note,x\nok,abc\n"), inputs_for("p.csv", true),
      {"p.csv:2: column 2 (\"x\"): \"abc\" is not a number"});

  // ------------------------------------------------------------- checkpoint
  auto load_file = [](const std::string& name) { return lib([name](World& w) { load(w.dir / name); }); };
  add("checkpoint", "TruncatedHalf",
      file("bad.ckpt",
           [](World& w) {
             auto g = w.good();
             return g.substr(0, g.size() / 2);
           }),
      load_file("bad.ckpt"), {"bad.ckpt is truncated: its header claims"});
  add("checkpoint", "TruncatedTail",
      file("bad.ckpt",
           [](World& w) {
             auto g = w.good();
             return g.substr(0, g.size() - 16);
           }),
      load_file("bad.ckpt"), {"bad.ckpt is corrupted: its checksum does not match"});
  add("checkpoint", "TruncatedInTheHeader", file("bad.ckpt", [](World& w) { return w.good().substr(0, 25); }),
      load_file("bad.ckpt"), {"bad.ckpt is truncated"});
  add("checkpoint", "FlippedByte",
      file("bad.ckpt",
           [](World& w) {
             auto g = w.good();
             g[g.size() - 100] ^= 0x01;
             return g;
           }),
      load_file("bad.ckpt"), {"bad.ckpt is corrupted: its checksum does not match"});
  add("checkpoint", "WrongMagic",
      file("bad.ckpt",
           [](World& w) {
             auto g = w.good();
             g[7] = 'X';
             return g;
           }),
      load_file("bad.ckpt"), {"bad.ckpt is not a connex checkpoint"});
  add("checkpoint", "FormatVersion",
      file("bad.ckpt",
           [](World& w) { return reseal_checkpoint(w.good(), [](nlohmann::json&, uint32_t& v) { v = 99; }); }),
      load_file("bad.ckpt"), {"bad.ckpt has checkpoint format version 99; this connex reads version 2"});
  add("checkpoint", "ShapeMismatch",
      file("bad.ckpt",
           [](World& w) {
             return reseal_checkpoint(w.good(), [](nlohmann::json& h, uint32_t&) {
               for (auto& t : h["tensors"])
                 if (t["name"] == "weight") t["shape"] = {3};
             });
           }),
      load_file("bad.ckpt"),
      {"bad.ckpt: tensor \"weight\" has shape [3] in the file but the network's structure needs [14]"});
  add("checkpoint", "MissingTensor",
      file("bad.ckpt",
           [](World& w) {
             return reseal_checkpoint(w.good(), [](nlohmann::json& h, uint32_t&) {
               auto& t = h["tensors"];
               for (size_t i = 0; i < t.size(); ++i)
                 if (t[i]["name"] == "bias") t.erase(i);
             });
           }),
      load_file("bad.ckpt"), {"bad.ckpt lacks tensor \"bias\""});
  add("checkpoint", "ExtraTensor",
      file("bad.ckpt",
           [](World& w) {
             return reseal_checkpoint(w.good(), [](nlohmann::json& h, uint32_t&) {
               auto extra = h["tensors"][0];
               extra["name"] = "stowaway";
               h["tensors"].push_back(extra);
             });
           }),
      load_file("bad.ckpt"), {"bad.ckpt holds tensor \"stowaway\", which its network's structure does not have"});
  add("checkpoint", "BadConfigInside",
      file("bad.ckpt",
           [](World& w) {
             return reseal_checkpoint(w.good(),
                                      [](nlohmann::json& h, uint32_t&) { h["config"]["options"]["seed"] = "zero"; });
           }),
      load_file("bad.ckpt"), {"bad.ckpt: /options/seed must be a non-negative integer"});
  add("checkpoint", "EmptyFile", file("bad.ckpt", ""), load_file("bad.ckpt"), {"bad.ckpt is not a connex checkpoint"});
  add("checkpoint", "MissingFile", none, load_file("nothing.ckpt"), {"load(): cannot open", "nothing.ckpt"});
  auto other_network_checkpoint = [](bool same_parameter_list) {
    return [same_parameter_list](World& w) {
      auto other = nn::MLP(1, 2, 5, 1,
                           NeuralNetworkOptions().dtype(torch::kFloat64).use_adaptive_activations(same_parameter_list));
      torch::optim::Adam other_adam(other->parameters());
      other->forward(torch::ones({2, 1}, kDouble)).sum().backward();
      other_adam.step();
      save(other, w.dir / "other.ckpt", &other_adam);
    };
  };
  auto graft = lib([](World& w) {
    // The world's own checkpoint with the other network's optimizer bytes, into the world's (stepped) optimizer.
    auto grafted = load_checkpoint(w.dir / "good.ckpt");
    grafted.optimizer = load_checkpoint(w.dir / "other.ckpt").optimizer;
    load_optimizer_state(grafted, *w.adam, "graft.ckpt", w.net);
  });
  add("checkpoint", "OptimizerStateOfAnotherNetwork", other_network_checkpoint(true), graft,
      {"the optimizer state in graft.ckpt has exp_avg of shape [15] for parameter \"weight\", which is of shape "
       "[14]; it belongs to another network"});
  add("checkpoint", "OptimizerStateWithOtherParameters", other_network_checkpoint(false), graft,
      {"group 0 of the optimizer holds parameters [", "] but the one in graft.ckpt holds ["});
  add("checkpoint", "OptimizerStateOfAnotherType", none, lib([](World& w) {
        auto checkpoint = load_checkpoint(w.dir / "good.ckpt");
        torch::optim::SGD sgd(w.net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
        load_optimizer_state(checkpoint, sgd, "good.ckpt");
      }),
      {"load_optimizer_state(): good.ckpt holds adam state, but the optimizer is sgd"});
  add("checkpoint", "SaveCustomCallableOverACheckpoint", none,
      lib([](World& w) { save(custom_callable_network(), w.dir / "good.ckpt"); }),
      {"save(): hidden_activation \"mine\" is a custom callable"});
  auto with_preprocessing = [](std::function<void(nlohmann::json&)> change) {
    return file("bad.ckpt", [change](World& w) {
      return reseal_checkpoint(w.good(), [change](nlohmann::json& h, uint32_t&) {
        h["preprocessing"] = {{"task", "regression"},
                              {"features", {"x"}},
                              {"targets", {"y1", "y2"}},
                              {"standardize", {{"mean", {0.5}}, {"scale", {2.0}}}}};
        change(h["preprocessing"]);
      });
    });
  };
  add("checkpoint", "PreprocessingWithAZeroScale",
      with_preprocessing([](nlohmann::json& p) { p["standardize"]["scale"][0] = 0; }), load_file("bad.ckpt"),
      {"bad.ckpt: /preprocessing/standardize/scale/0 must be a finite number > 0, got 0"});
  add("checkpoint", "PreprocessingStatisticsOfAnotherWidth", with_preprocessing([](nlohmann::json& p) {
        p["features"] = {"x", "z"};
      }),
      load_file("bad.ckpt"), {"bad.ckpt: /preprocessing/standardize/mean must be an array of 2 numbers"});
  add("checkpoint", "PreprocessingForOtherInputs", with_preprocessing([](nlohmann::json& p) {
        p.erase("standardize");
        p["features"] = {"x", "z"};
      }),
      load_file("bad.ckpt"), {"bad.ckpt: /preprocessing: names 2 feature(s) for a network with 1 inputs"});
  add("checkpoint", "PreprocessingWithAnUnknownKey", with_preprocessing([](nlohmann::json& p) { p["scaler"] = 1; }),
      load_file("bad.ckpt"), {"bad.ckpt: /preprocessing has an unknown key \"scaler\""});
  add("checkpoint", "SavePreprocessingThatDoesNotFit", none, lib([](World& w) {
        Preprocessing p;
        p.features = {"a", "b"}, p.targets = {"y1", "y2"};
        save(w.net, w.dir / "good.ckpt", nullptr, &p);
      }),
      {"the preprocessing: names 2 feature(s) for a network with 1 inputs"});
  add("checkpoint", "PreprocessingNamesATargetTwice", with_preprocessing([](nlohmann::json& p) {
        p.erase("standardize");
        p["targets"] = {"y1", "y1"};
      }),
      load_file("bad.ckpt"), {"bad.ckpt: /preprocessing: names target column \"y1\" twice"});
  add("checkpoint", "RestoreWithoutAnOptimizer", none, lib([](World& w) {
        restore_optimizer(Checkpoint{w.net, std::nullopt, std::nullopt}, "plain.ckpt");
      }),
      {"restore_optimizer(): plain.ckpt holds no optimizer state"});
  add("checkpoint", "OptimizerStateOntoAnotherGraphOfTheSameCounts", none, lib([](World& w) {
        // The README network with 1 -> 5 in place of 1 -> 4: every parameter has the saved name and shape.
        const GraphSpec readme = readme_spec();
        std::vector<Edge> edges = readme.edges();
        std::replace(edges.begin(), edges.end(), Edge{1, 4}, Edge{1, 5});
        GraphSpec moved = GraphSpec::from_edges(edges, {0}, {3, 11}, readme.neurons());
        auto other = NeuralNetwork(std::move(moved), w.net->options());
        torch::optim::Adam adam(other->parameters());
        load_optimizer_state(load_checkpoint(w.dir / "good.ckpt"), adam, "good.ckpt", other);
      }),
      {"load_optimizer_state(): the network given has connection 2 -> 4 where good.ckpt's network has 1 -> 4 "
       "(weight 3); the optimizer state fits only a network of the same structure"});
  add("checkpoint", "SaveIntoAMissingDirectory", none,
      lib([](World& w) { save(w.net, w.dir / "no/such/dir/net.ckpt"); }),
      {"save(): cannot write ", "no/such/dir/net.ckpt: its directory ", "no/such/dir does not exist"});

  // -------------------------------------------------------------------- cli
#ifdef CONNEX_CLI
  add("cli", "NegativeEpochs", none, cli("train net.json --epochs -3 --out out"),
      {"--epochs: must be an integer in [0, 2147483647], got \"-3\""});
  add("cli", "ZeroLearningRate", none, cli("train net.json --lr 0 --out out"),
      {"--lr: must be a number in (0, 1000000], got \"0\""});
  add("cli", "HugeLearningRate", none, cli("train net.json --lr 1e39 --out out"),
      {"--lr: must be a number in (0, 1000000], got \"1e39\""});
  add("cli", "NegativeSeed", none, cli("train net.json --seed -1 --out out"),
      {"--seed: must be an integer in [0, 18446744073709551615], got \"-1\""});
  add("cli", "SeedBeyond64Bits", none, cli("train net.json --seed 18446744073709551616 --out out"),
      {"--seed: must be an integer in [0, 18446744073709551615], got \"18446744073709551616\""});
  add("cli", "SeedInExponentForm", none, cli("edit good.ckpt --seed 1e20 --out out"),
      {"--seed: must be an integer in [0, 18446744073709551615], got \"1e20\""});
  add("cli", "PruneAfterTheLastEpoch", none,
      cli("train net.json --epochs 3 --prune-at-epoch 5 --prune-fraction 0.5 --out out"),
      {"train: --prune-at-epoch 5 is outside this run's epochs 1 to 3; --epochs 5 reaches it"});
  add("cli", "ValidationSplitOutOfRange", none, cli("train net.json --val-split 2 --out out"),
      {"--val-split: must be a number in [0, 0.9], got \"2\""});
  add("cli", "UnknownOptimizer", none, cli("train net.json --optimizer lbfgs --out out"),
      {"--optimizer: must be one of adam, adamw or sgd, got \"lbfgs\""});
  add("cli", "UnknownDevice", none, cli("train net.json --device tpu --out out"),
      {"--device: must be one of cpu or cuda, got \"tpu\""});
  add("cli", "NonNumericEpochs", none, cli("train net.json --epochs many --out out"),
      {"--epochs: must be an integer in [0, 2147483647], got \"many\""});
  add("cli", "EpochsBeyondAnInt", none, cli("train net.json --epochs 3000000000 --out out"),
      {"--epochs: must be an integer in [0, 2147483647], got \"3000000000\""});
  add("cli", "IntegerWithAnExponent", none, cli("train net.json --epochs 1e3 --out out"),
      {"--epochs: must be an integer in [0, 2147483647] in decimal digits without a leading 0, got \"1e3\""});
  add("cli", "IntegerWithALeadingZero", none, cli("train net.json --epochs 010 --out out"),
      {"--epochs: must be an integer in [0, 2147483647] in decimal digits without a leading 0, got \"010\""});
  add("cli", "SeedWithALeadingZero", none, cli("train net.json --seed 010 --out out"),
      {"--seed: must be an integer in [0, 18446744073709551615] without a leading 0, got \"010\""});
  add("cli", "UnknownFlag", none, cli("train net.json --epocs 3 --out out"), {"--epocs"});
  add("cli", "FlagGivenTwice", none, cli("train net.json --epochs 1 --standardize --standardize --out out"),
      {"--standardize is given 2 times; give it once"});
  add("cli", "ZeroThreads", none, cli("--threads 0 train net.json --out out"),
      {"--threads: must be an integer in [1, 1024], got \"0\""});
  // 1000 threads on a few cores took 30 s to start.
  // Finite, but its squared error is not: training used to end in "lower --lr".
  add("cli", "CellTooLargeToTrainOn", file("big.csv", "x,y1,y2\n0,1,0\n1e308,0.88,0.48\n"),
      cli("train net.json --data big.csv --epochs 1 --out out"),
      {"big.csv:3: column 1 (\"x\"): 1e+308 is too large to train on in Double"});
  add("cli", "MoreThreadsThanTheMachineCanUse", none, cli("--threads 1000 train net.json --epochs 1 --out out"),
      {"--threads 1000: this machine has", "give at most"});
  add("cli", "Float16OnTheCpu",
      file("half.json",
           R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 2, "width": 4, "depth": 1},
               "options": {"dtype": "float16"}})"),
      cli("train half.json --epochs 1 --out out"),
      {"train: half.json: dtype float16 does not run on the CPU in LibTorch 1.13; use bfloat16, float32 or float64, "
       "or --device cuda"});
  add("cli", "BadCsvCell", file("bad.csv", "x,y1,y2\n0,1,0\n1,abc,2\n"),
      cli("train net.json --data bad.csv --epochs 1 --out out"),
      {"bad.csv:3: column 2 (\"y1\"): \"abc\" is not a number"});
  // The names and labels a run uses go into JSON (the checkpoint, the run's
  // record), which holds UTF-8 only: refused when read, not after training.
  add("cli", "ColumnNameNotUtf8", file("latin.csv", "x\xe9,y1,y2\n0,1,0\n0.5,0.88,0.48\n"),
      cli("train net.json --data latin.csv --epochs 1 --out out"),
      {"latin.csv: column 1 (\"x\\xe9\"): the name is not UTF-8 (byte 0xe9)"});
  add("cli", "ClassLabelNotUtf8",
      file("labels.csv",
           "x,label\n0,a\n1,c\xff"
           "a\n2,b\n"),
      cli("train net.json --data labels.csv --task classification --epochs 1 --out out"),
      {"labels.csv:3: column 2 (\"label\"): the class label \"c\\xffa\" is not UTF-8"});
  add("cli", "DataPathNotUtf8", none, cli("train net.json --data \"$(printf 'g\\377.csv')\" --epochs 1 --out out"),
      {"--data: expected a UTF-8 file name (runs record their paths in JSON), got \"g\\xff.csv\""});
  // An unset shell variable: not the default network.
  add("cli", "EmptyFileName", none, cli("export '' --format json --out out"),
      {"checkpoint: expected a file name, got an empty string"});
  add("cli", "PruneWritesOverItsData", none, cli("prune good.ckpt --fraction 0.3 --data data.csv --out data.csv"),
      {"prune: --out data.csv is the file it reads; give another path"});
  add("cli", "TrainRewritesItsData",
      [](World& w) {
        fs::create_directory(w.dir / "run");
        spit(w.dir / "run/metrics.csv", "x,y1,y2\n0,1,0\n0.5,0.88,0.48\n");
      },
      cli("train net.json --data run/metrics.csv --epochs 1 --out run --overwrite"),
      {"train: --data run/metrics.csv is the metrics.csv that --out run rewrites"});
  add("cli", "FeatureNamedTwice", none, cli("train net.json --data data.csv --features x x --epochs 1 --out out"),
      {"data.csv: column \"x\" is named twice as a feature"});
  add("cli", "BenchWithoutThreads", none, cli("bench --threads 0"),
      {"connex_bench: --threads: must be an integer in [1, ", "got \"0\""});
  add("cli", "HexadecimalCell", file("hex.csv", "x,y1,y2\n0,1,0\n0x10,0.88,0.48\n"),
      cli("train net.json --data hex.csv --epochs 1 --out out"),
      {"hex.csv:3: column 1 (\"x\"): \"0x10\" is not a number"});
  add("cli", "HexadecimalLearningRate", none, cli("train net.json --lr 0x10 --out out"),
      {"--lr: must be a number in (0, 1000000], got \"0x10\""});
  add("cli", "EdgeNotFromTo", none, cli("edit good.ckpt --add-connection 1-6 --out out"),
      {"--add-connection: \"1-6\" is not of the form FROM:TO"});
  // The library runs adds before removes: both in one command undid the add, silently.
  add("cli", "EditAddsAndRemovesAConnection", none,
      cli("edit good.ckpt --add-connection 1:6 --remove-connection 1:6 --out out"),
      {"edit: --remove-connection 1 -> 6: the same command adds it (--add-connection); give neither"});
  // 1 -> 4 exists: the contradiction is said, not that the add repeats it.
  add("cli", "EditRemovesAndAddsAnExistingConnection", none,
      cli("edit good.ckpt --remove-connection 1:4 --add-connection 1:4 --out out"),
      {"edit: --remove-connection 1 -> 4: the same command adds it (--add-connection); give neither"});
  // Written out unchanged, the checkpoint would only have lost its training record.
  add("cli", "EditNothing", none, cli("edit good.ckpt --seed 3 --out out"),
      {"edit: nothing to edit; give --add-connection, --remove-connection, --add-input, --add-hidden, --add-output, "
       "--remove-neuron or --dropout"});
  add("cli", "EditAddsAndRemovesANeuron", none, cli("edit good.ckpt --add-hidden 20 --remove-neuron 20 --out out"),
      {"edit: --remove-neuron 20: the same command adds it; give neither"});
  add("cli", "EditWiresARemovedNeuron", none, cli("edit good.ckpt --add-connection 1:6 --remove-neuron 6 --out out"),
      {"edit: --add-connection 1 -> 6: the same command removes neuron 6 (--remove-neuron)"});
  add("cli", "EditMakesACycle", none, cli("edit good.ckpt --add-connection 8:2 --out out"),
      {"edit: --add-connection: edge 8 -> 2 would create the cycle 2 -> 4 -> 6 -> 8 -> 2"});
  add("cli", "EditAddsAConnectionTwice", none,
      cli("edit good.ckpt --add-connection 1:6 --add-connection 1:6 --out out"),
      {"edit: --add-connection: edge 1 -> 6 is listed twice"});
  add("cli", "EditAddsANeuronTwice", none, cli("edit good.ckpt --add-hidden 20 --add-hidden 20 --out out"),
      {"edit: --add-hidden: neuron 20 is listed twice"});
  add("cli", "EditRemovesAConnectionTwice", none,
      cli("edit good.ckpt --remove-connection 1:4 --remove-connection 1:4 --out out"),
      {"edit: --remove-connection: edge 1 -> 4 is listed twice"});
  add("cli", "DropoutOutOfRange", none, cli("edit good.ckpt --dropout 1.5 --out out"),
      {"--dropout: must be a number in [0, 1], got \"1.5\""});
  add("cli", "PruneWithoutACriterion", none, cli("prune good.ckpt --out out"),
      {"give exactly one of --threshold and --fraction"});
  add("cli", "UnknownExportFormat", none, cli("export good.ckpt --format pdf --out out"),
      {"--format: must be one of torchscript, json, graphml, dot or png, got \"pdf\""});
  add("cli", "ExportTimeoutWithoutPng", none, cli("export good.ckpt --format json --timeout 5 --out out"),
      {"export: --timeout is the time Graphviz may take to draw a PNG; --format json does not run it"});
  add("cli", "CorruptedCheckpoint",
      file("bad.ckpt",
           [](World& w) {
             auto g = w.good();
             g[g.size() / 2] ^= 0x01;
             return g;
           }),
      cli("export bad.ckpt --format json --out out"), {"bad.ckpt is corrupted"});
#endif
  return c;
}

const std::vector<Case>& catalogue() {
  static const std::vector<Case> cases = make_catalogue();
  return cases;
}

std::vector<size_t> case_indices() {
  std::vector<size_t> indices(catalogue().size());
  for (size_t i = 0; i < indices.size(); ++i) indices[i] = i;
  return indices;
}

}  // namespace

class Catalogue : public ::testing::TestWithParam<size_t> {};

TEST_P(Catalogue, RejectedWithTheCulpritNamedAndNothingChanged) {
  const Case& c = catalogue()[GetParam()];
  World w;
  if (c.prepare) c.prepare(w);
  const StateSnapshot state(w.net);
  const auto files = files_under(w.dir.path);
  const std::string optimizer = optimizer_bytes(*w.adam);

  const std::string message = c.act(w);
  EXPECT_FALSE(message.empty());
  const std::string line = !message.empty() && message.back() == '\n' ? message.substr(0, message.size() - 1) : message;
  EXPECT_EQ(line.find('\n'), std::string::npos) << "the message is one line: " << message;
  for (const auto& needle : c.needles)
    EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nexpected to contain: " << needle;

  state.expect_same(w.net);
  EXPECT_TRUE(optimizer_bytes(*w.adam) == optimizer) << "the optimizer's state changed";
  const auto files_now = files_under(w.dir.path);
  for (const auto& [name, bytes] : files) {
    auto it = files_now.find(name);
    if (it == files_now.end())
      ADD_FAILURE() << name << " disappeared";
    else
      EXPECT_TRUE(it->second == bytes) << name << " changed";
  }
  for (const auto& [name, bytes] : files_now)
    if (!files.count(name)) ADD_FAILURE() << name << " appeared";
  // The world's checkpoint is still loadable and is the world's network.
  EXPECT_TRUE(torch::equal(load(w.dir / "good.ckpt")->weight_tensor(), w.net->weight_tensor()));
}

INSTANTIATE_TEST_SUITE_P(BadInput, Catalogue, ::testing::ValuesIn(case_indices()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const Case& c = catalogue()[info.param];
                           return c.category + "_" + c.name;
                         });

TEST(CatalogueSummary, CoversEveryCategory) {
  std::map<std::string, int> per_category;
  std::set<std::string> names;
  for (const auto& c : catalogue()) {
    ++per_category[c.category];
    EXPECT_TRUE(names.insert(c.category + "_" + c.name).second) << "duplicate case " << c.name;
    EXPECT_FALSE(c.needles.empty()) << c.name;
  }
  std::string summary;
  for (const auto& [category, count] : per_category) summary += category + "=" + std::to_string(count) + " ";
  std::cout << "catalogue: " << catalogue().size() << " cases: " << summary << "\n";
  RecordProperty("catalogue", summary);
  EXPECT_GE(catalogue().size(), 30u);
  for (const char* category : {"graph", "options", "forward", "access", "edit", "config", "csv", "checkpoint"})
    EXPECT_GE(per_category[category], 3) << category;
#ifdef CONNEX_CLI
  EXPECT_GE(per_category["cli"], 3);
#endif
}
