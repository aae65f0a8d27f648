// The `connex` program end to end: each test runs the built binary.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include <torch/script.h>

#include "cli_util.h"
#include "connex/ham/checkpoint.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

TEST(Cli, TrainOnToyDataWritesCheckpointMetricsAndConfig) {
  TempDir dir;
  auto r = connex_cli("train --epochs 300 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"model.ckpt", "metrics.csv", "metrics.json", "config.json"})
    EXPECT_TRUE(fs::exists(dir / ("run/" + std::string(f)))) << f;
  auto losses = column(slurp(dir / "run/metrics.csv"), 1);
  ASSERT_EQ(losses.size(), 300u);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_EQ(load(dir / "run/model.ckpt")->num_connections(), 14);
  EXPECT_EQ(load_config(dir / "run/config.json")->num_connections(), 14);
  EXPECT_EQ(nlohmann::json::parse(slurp(dir / "run/metrics.json")).size(), 300u);
  EXPECT_EQ(load_checkpoint(dir / "run/model.ckpt").optimizer->type, "adam");
}

// The network is one line wherever the CLI prints it, techniques included
// (torch's printing adds a line per submodule); a record of full-batch
// training says so; a malformed LOCAL_WORLD_SIZE is refused, not ignored.
TEST(Cli, PrintsTheNetworkOnOneLine) {
  TempDir dir;
  spit(dir / "norm.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 2, "width": 4, "depth": 2},
           "options": {"use_topo_norm": true}})");
  auto r = connex_cli("train norm.json --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("operations=[topo_norm])\n"), std::string::npos) << r.out;
  r = connex_cli("inspect run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("operations=[topo_norm])\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", batch size 0 (the full training set), "), std::string::npos) << r.out;
  r = connex_cli("edit run --add-hidden 100 --add-connection 0:100 --out e.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find('\n')).find("connex::NeuralNetwork(neurons=12, "), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;  // the network, then what was written
  EXPECT_EQ(r.out.find("(topo_norm):"), std::string::npos) << r.out;
  ::setenv("LOCAL_WORLD_SIZE", "+2", 1);
  r = connex_cli("inspect run", dir);
  ::unsetenv("LOCAL_WORLD_SIZE");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: environment variable LOCAL_WORLD_SIZE=+2 is not an integer in [1, 1048576]\n");
}

TEST(Cli, TrainOnCsvWithValidation) {
  TempDir dir;
  write_regression_csv(dir / "data.csv");
  spit(dir / "net.json", kMlp21);
  auto r = connex_cli(
      "train net.json --data data.csv --epochs 200 --lr 0.01 --val-split 0.25 --batch-size 32 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto val = column(slurp(dir / "run/metrics.csv"), 3);
  EXPECT_LT(val.back(), val.front() / 10);
}

TEST(Cli, ResumeCarriesOptimizerAndEditsThenTrainsOn) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 100 --out a", dir).code, 0);
  auto r = connex_cli(
      "edit a/model.ckpt --add-connection 1:6 --add-connection 2:11 --remove-neuron 9 --out edited.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("optimizer state carried"), std::string::npos);
  auto edited = load(dir / "edited.ckpt");
  EXPECT_EQ(edited->num_neurons(), 11);
  EXPECT_EQ(edited->weight(0, 1), load(dir / "a/model.ckpt")->weight(0, 1));
  r = connex_cli("train edited.ckpt --epochs 100 --out b", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("resumed adam state"), std::string::npos) << r.out;
  // --function-preserving: a new neuron wired in, and a new connection into an old one, leave the outputs as they were.
  r = connex_cli(
      "edit a/model.ckpt --add-hidden 20 --add-connection 0:20 --add-connection 20:11 --add-connection 1:6 "
      "--function-preserving --out same.ckpt",
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto base = load(dir / "a/model.ckpt"), same = load(dir / "same.ckpt");
  EXPECT_EQ(same->num_neurons(), base->num_neurons() + 1);
  EXPECT_EQ(same->weight(20, 11), 0.0);
  const auto x = torch::randn({7, base->num_inputs()});
  EXPECT_TRUE(torch::equal(same->forward(x), base->forward(x)));
}

// String ids may hold colons: FROM:TO splits at the one colon whose sides
// both name neurons, the network's or the command's new ones.
TEST(Cli, EditNamesStringIdsThatHoldColons) {
  TempDir dir;
  const GraphSpec spec({"in:0", "a", "a:b", "b:c", "c", "out"},
                       {{"in:0", "a"},
                        {"in:0", "a:b"},
                        {"in:0", "b:c"},
                        {"in:0", "c"},
                        {"a", "out"},
                        {"a:b", "out"},
                        {"b:c", "out"},
                        {"c", "out"}},
                       {"in:0"}, {"out"});
  save(NeuralNetwork(spec), dir / "net.ckpt");
  auto r = connex_cli(
      "edit net.ckpt --remove-connection in:0:a:b --add-hidden n:1 --add-connection in:0:n:1 "
      "--add-connection n:1:out --out e.ckpt",
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto edited = load(dir / "e.ckpt");
  const Topology& t = edited->topology();
  auto has = [&](const char* from, const char* to) {
    return t.connection_index(t.dense_of(from), t.dense_of(to)) >= 0;
  };
  EXPECT_FALSE(has("in:0", "a:b"));
  EXPECT_TRUE(has("in:0", "n:1"));
  EXPECT_TRUE(has("n:1", "out"));
  EXPECT_EQ(edited->num_connections(), 9);
  // a:b:c is a -> b:c as well as a:b -> c: refused, naming both, and nothing written.
  r = connex_cli("edit net.ckpt --add-connection a:b:c --out f.ckpt", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--add-connection: \"a:b:c\" splits into two neurons at more than one colon (\"a\" and "
                       "\"b:c\", \"a:b\" and \"c\")"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "f.ckpt"));
  // No colon names two neurons: the error names the side that is missing
  // ("a:x" after "in:0"), not the first colon's "in".
  r = connex_cli("edit net.ckpt --remove-connection in:0:a:x --out f.ckpt", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("a:x"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("neuron in "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("\"in\""), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "f.ckpt"));
}

TEST(Cli, PruneRemovesTheRightNumberOfConnections) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train " CONNEX_SOURCE_DIR "/configs/dense_mlp.json --epochs 20 --out run", dir).code, 0);
  auto r = connex_cli("prune run/model.ckpt --fraction 0.25 --epochs 20 --out pruned.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 99842 -> 74881 (removed 24961)"), std::string::npos) << r.out;
  EXPECT_EQ(load(dir / "pruned.ckpt")->num_connections(), 74881);
  r = connex_cli("prune run/model.ckpt --threshold 0.01 --out t.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto before = load(dir / "run/model.ckpt")->weighted_graph();
  int64_t strong = 0;
  for (const auto& c : before.connections) strong += std::abs(c.weight) >= 0.01;
  EXPECT_EQ(load(dir / "t.ckpt")->num_connections(), strong);
}

TEST(Cli, ExportEveryFormatAndInspect) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 10 --out run", dir).code, 0);
  for (const char* f : {"torchscript:m.pt", "json:g.json", "graphml:g.graphml", "dot:g.dot", "png:g.png"}) {
    const std::string spec(f), format = spec.substr(0, spec.find(':')), file = spec.substr(spec.find(':') + 1);
    auto r = connex_cli("export run/model.ckpt --format " + format + " --out " + file, dir);
    ASSERT_EQ(r.code, 0) << format << ": " << r.err;
    EXPECT_GT(fs::file_size(dir / file), 100u) << format;
  }
  auto net = load(dir / "run/model.ckpt");
  net->eval();
  auto x = torch::randn({5, 1});
  EXPECT_TRUE(torch::allclose(torch::jit::load(dir / "m.pt").forward({x}).toTensor(), net->forward(x), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(import_graph_json(dir / "g.json")->forward(x), net->forward(x)));
  EXPECT_EQ(slurp(dir / "g.png").substr(1, 3), "PNG");
  auto r = connex_cli("inspect run/model.ckpt", dir);
  ASSERT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("connections: 14\ndepth: 5\nparameters: 25"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("level sizes: 3 2 2 3 1"), std::string::npos) << r.out;
  r = connex_cli("inspect " CONNEX_SOURCE_DIR "/configs/letters.json", dir);
  EXPECT_NE(r.out.find("dropout: 5 neurons with p > 0 (max 0.1)"), std::string::npos) << r.out;
}

// GraphML and DOT hold no technique parameters: said; the JSON keeps them.
TEST(Cli, ExportSaysWhereTechniqueParametersAreLeftOut) {
  TempDir dir;
  spit(dir / "net.json", R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 2, "width": 4, "depth": 1},
                              "options": {"use_adaptive_activations": true}})");
  const std::string said =
      "export: g.graphml holds no technique parameters (adaptive_activation); --format json and "
      "the checkpoint keep them, and only they import back";
  auto r = connex_cli("export net.json --format graphml --out g.graphml", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find(said), std::string::npos) << r.out + r.err;
  r = connex_cli("export net.json --format json --out g.json", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ((r.out + r.err).find("technique parameters"), std::string::npos) << r.out + r.err;
}

// A bfloat16 network trains a regression: LibTorch 1.13 has no bfloat16 MSE
// on the CPU ("mse_cpu" not implemented), so the loss is taken in float32.
TEST(Cli, ABfloat16NetworkTrainsARegression) {
  TempDir dir;
  spit(dir / "bf.json", R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 2, "width": 4, "depth": 1},
                             "options": {"dtype": "bfloat16"}})");
  auto r = connex_cli("train bf.json --epochs 2 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load(dir / "run/model.ckpt")->weight_tensor().scalar_type(), torch::kBFloat16);
}

// A HAM checkpoint (connex/ham): inspect describes it; the commands that
// read a network say that inspect does.
TEST(Cli, InspectDescribesAHamCheckpoint) {
  TempDir dir;
  connex::ham::HAM memory;
  memory->add_layer("image", {4}, connex::ham::tanh(2.0))
      .add_layer("memory", {3}, connex::ham::softmax())
      .add_synapse("store", connex::ham::linear(), {"image", "memory"});
  memory->named_parameters()["synapses.store.weight"].set_requires_grad(false);
  torch::optim::Adam adam(memory->parameters(), torch::optim::AdamOptions(0.005));
  connex::ham::save(memory, dir / "m.ham", &adam);
  auto r = connex_cli("inspect m.ham", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  std::ostringstream structure;
  memory->pretty_print(structure);
  EXPECT_NE(r.out.find(structure.str() + "\nlayer image: per-sample shape [4], tanh("), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer memory: per-sample shape [3], softmax("), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters: 12 (12 frozen)\noptimizer state: adam, learning rate 0.005"), std::string::npos)
      << r.out;
  spit(dir / "x.csv", "a\n1\n");
  r = connex_cli("predict m.ham --data x.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("m.ham is a HAM checkpoint (connex/ham's ham::load); connex reads a network from a checkpoint, "
                       "a JSON config or a node-link JSON export (connex inspect describes a HAM checkpoint)"),
            std::string::npos)
      << r.err;
  // Saved as a run directory's model.ckpt: named as such, not left to the
  // network loader; train --out there advises no resume that would fail.
  fs::create_directories(dir / "run");
  fs::copy_file(dir / "m.ham", dir / "run/model.ckpt");
  spit(dir / "run/metrics.csv", "epoch,loss\n");
  r = connex_cli("predict run --data x.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(
      r.err.find("run/model.ckpt is a HAM checkpoint (connex/ham's ham::load); connex reads a network from a "
                 "checkpoint, a JSON config or a node-link JSON export (connex inspect describes a HAM checkpoint)"),
      std::string::npos)
      << r.err;
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 1, "width": 2, "depth": 1}})");
  r = connex_cli("train net.json --data x.csv --out run", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(
      r.err.find("train: --out run holds files a run writes (metrics.csv, model.ckpt), but its model.ckpt is a HAM "
                 "checkpoint (connex/ham's ham::load); write elsewhere, or pass --overwrite to replace them"),
      std::string::npos)
      << r.err;
  EXPECT_EQ(slurp(dir / "run/model.ckpt"), slurp(dir / "m.ham"));
  r = connex_cli("inspect run", dir);  // inspect, which the refusals name, describes it there too
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("layer memory: per-sample shape [3], softmax("), std::string::npos) << r.out;
}

// A run directory whose network checkpoint was cut short is not advised for
// resuming (the resume would fail): the refusal gives the loader's reason.
TEST(Cli, TrainOutNamesARunDirectorysDamagedCheckpoint) {
  TempDir dir;
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 1, "width": 2, "depth": 1}})");
  spit(dir / "x.csv", "a,b\n1,2\n");
  fs::create_directories(dir / "cut");
  connex::save(connex::nn::MLP(1, 1, 2, 1), dir / "whole.ckpt");
  const std::string whole = slurp(dir / "whole.ckpt");
  spit(dir / "cut/model.ckpt", whole.substr(0, whole.size() / 2));
  spit(dir / "cut/metrics.csv", "epoch,loss\n");
  auto r = connex_cli("train net.json --data x.csv --out cut", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("train: --out cut holds files a run writes (metrics.csv, model.ckpt), but its model.ckpt "
                       "cannot be resumed (load_checkpoint(): cut/model.ckpt "),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("); write elsewhere, or pass --overwrite to replace them"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(slurp(dir / "cut/model.ckpt"), whole.substr(0, whole.size() / 2));
}

TEST(Cli, ClassifiesARealDataSetLikeAPlainMlp) {
  TempDir dir;
  if (!copy_dataset(CONNEX_BINARY_DIR "/datasets/iris.csv", dir / "iris.csv"))
    GTEST_SKIP() << "iris.csv from python3-sklearn was not fetched (scripts/fetch-datasets.sh)";
  spit(dir / "mlp.json", R"({"graph": {"prebuilt": "MLP", "input_size": 4, "output_size": 3, "width": 16, "depth": 1},
                              "options": {"hidden_activation": "relu"}})");
  spit(dir / "dag.json",
       R"({"graph": {"prebuilt": "DenseMLP", "input_size": 4, "output_size": 3, "width": 6, "depth": 3},
                              "options": {"hidden_activation": "tanh", "output_transformation": "softmax"}})");
  double accuracy[2];
  int k = 0;
  for (const char* config : {"mlp.json", "dag.json"}) {
    auto r = connex_cli(std::string("train ") + config +
                            " --data iris.csv --task classification --standardize --val-split 0.3 "
                            "--epochs 300 --lr 0.01 --seed 1 --out run_" +
                            config,
                        dir);
    ASSERT_EQ(r.code, 0) << r.err;
    accuracy[k++] = column(slurp(dir / ("run_" + std::string(config) + "/metrics.csv")), 3).back();
  }
  RecordProperty("iris_val_accuracy_mlp", std::to_string(accuracy[0]));
  RecordProperty("iris_val_accuracy_dag", std::to_string(accuracy[1]));
  EXPECT_GE(accuracy[0], 0.9);
  EXPECT_GE(accuracy[1], accuracy[0] - 0.05);
}

// ---------------------------------------------------------------- bad input

class CliBadInput : public ::testing::Test {
 protected:
  void expect_failure(const std::string& args, const std::string& message) {
    auto r = connex_cli(args + " --out out", dir);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << "stderr: " << r.err << "\nexpected: " << message;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line on stderr: " << r.err;
    EXPECT_TRUE(empty_or_missing(dir / "out")) << "partial output for: " << args;
  }
  TempDir dir;
};

TEST_F(CliBadInput, MissingFile) { expect_failure("train nothing.json", "nothing.json: no such file"); }
TEST_F(CliBadInput, UnreadableConfig) {
  fs::create_directory(dir / "adir");
  expect_failure("train adir", "adir");
}
TEST_F(CliBadInput, MissingDataFile) { expect_failure("train --data nothing.csv", "nothing.csv: no such file"); }
TEST_F(CliBadInput, MalformedCsvNamesLineAndColumn) {
  spit(dir / "d.csv", "x1,x2,y\n1,2,3\n4,abc,6\n");
  spit(dir / "net.json", kMlp21);
  expect_failure("train net.json --data d.csv", "d.csv:3: column 2 (\"x2\"): \"abc\" is not a number");
}
TEST_F(CliBadInput, NanCell) {
  spit(dir / "d.csv", "x1,x2,y\n1,2,3\n4,nan,6\n");
  spit(dir / "net.json", kMlp21);
  expect_failure("train net.json --data d.csv", "d.csv:3: column 2 (\"x2\"): nan is not a finite number");
}
TEST_F(CliBadInput, RowWithTooFewColumns) {
  spit(dir / "d.csv", "x1,x2,y\n1,2,3\n4,5\n");
  spit(dir / "net.json", kMlp21);
  expect_failure("train net.json --data d.csv", "d.csv:3: expected 3 columns, got 2");
}
TEST_F(CliBadInput, TooFewColumnsForTheNetwork) {
  spit(dir / "d.csv", "x1,y\n1,3\n4,6\n");
  spit(dir / "net.json", kMlp21);
  expect_failure("train net.json --data d.csv", "d.csv: 1 feature columns (x1) but the network has 2 inputs");
}
TEST_F(CliBadInput, UnknownColumn) {
  write_regression_csv(dir / "d.csv", 10);
  spit(dir / "net.json", kMlp21);
  expect_failure("train net.json --data d.csv --target zz", "d.csv: unknown column \"zz\"; the columns are x1, x2, y");
}
TEST_F(CliBadInput, LabelThatIsNotAClass) {
  spit(dir / "d.csv", "x1,x2,label\n1,2,0\n4,5,1.5\n");
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 2, "width": 4, "depth": 1}})");
  expect_failure("train net.json --data d.csv --task classification",
                 "d.csv:3: column 3 (\"label\"): 1.5 is not an integer class label in [0, 2)");
}
TEST_F(CliBadInput, UnknownSubcommand) { expect_failure("trian", "unknown subcommand \"trian\""); }
TEST_F(CliBadInput, UnknownOption) { expect_failure("train --epocs 3", "--epocs"); }
TEST_F(CliBadInput, CudaWithoutCuda) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "CUDA is available here";
  expect_failure("train --device cuda", "--device cuda: CUDA is not available");
}
TEST_F(CliBadInput, BadConfigNamesThePath) {
  spit(dir / "net.json", R"({"graph": {"edges": [[0, 1]], "inputs": [0], "outputs": [1]}, "options": {"seed": -1}})");
  expect_failure("train net.json", "net.json: /options/seed must be a non-negative integer");
}
TEST_F(CliBadInput, InvalidEdit) {
  ASSERT_EQ(connex_cli("train --epochs 2 --out run", dir).code, 0);
  expect_failure("edit run/model.ckpt --add-connection 8:2",
                 "edit: --add-connection: edge 8 -> 2 would create the cycle 2 -> 4 -> 6 -> 8 -> 2");
  expect_failure("edit run/model.ckpt --remove-neuron x", "--remove-neuron: \"x\" is not an integer neuron id");
  expect_failure("edit run/model.ckpt --add-connection 0:1",
                 "edit: --add-connection 0 -> 1: the network has this connection already (weight ");
}

// Files connex writes that hold no network are named, not parsed as JSON.
TEST_F(CliBadInput, FilesThatHoldNoNetworkAreNamed) {
  ASSERT_EQ(connex_cli("train --epochs 1 --out run", dir).code, 0);
  ASSERT_EQ(connex_cli("export run --format torchscript --out m.pt", dir).code, 0);
  ASSERT_EQ(connex_cli("export run --format graphml --out g.graphml", dir).code, 0);
  ASSERT_EQ(connex_cli("export run --format dot --out g.dot", dir).code, 0);
  spit(dir / "empty.json", "");
  spit(dir / "notes.txt", "x,y\n1,2\n");  // a CSV given where the network goes
  for (const auto& [file, kind] :
       std::vector<std::pair<std::string, std::string>>{{"m.pt", "a zip archive (a TorchScript export?)"},
                                                        {"g.graphml", "GraphML"},
                                                        {"g.dot", "a Graphviz DOT file"},
                                                        {"empty.json", "an empty file"},
                                                        {"notes.txt", "neither a connex checkpoint nor JSON"}}) {
    auto r = connex_cli("inspect " + file, dir);
    EXPECT_NE(r.code, 0) << file;
    EXPECT_NE(r.err.find(file + " is " + kind +
                         "; connex reads a network from a checkpoint, a JSON config or a node-link JSON export"),
              std::string::npos)
        << r.err;
  }
  spit(dir / "list.json", "[1, 2]");  // JSON, but not a config: the config reader says so
  auto r = connex_cli("inspect list.json", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err.find("neither a connex checkpoint"), std::string::npos) << r.err;
}

// Regressions found by review.
TEST_F(CliBadInput, NonPositiveThreads) { expect_failure("--threads 0 inspect x.json", "--threads"); }
TEST_F(CliBadInput, NanThreshold) {
  ASSERT_EQ(connex_cli("train --epochs 2 --out run", dir).code, 0);
  expect_failure("prune run/model.ckpt --threshold nan", "--threshold: must be a number >= 0, got \"nan\"");
  // Text is told as other flags tell it, not in CLI11's words ("Could not convert").
  expect_failure("prune run/model.ckpt --threshold abc", "--threshold: must be a number >= 0, got \"abc\"");
}
TEST_F(CliBadInput, ColumnAsFeatureAndTarget) {
  write_regression_csv(dir / "d.csv", 10);
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 1, "width": 2, "depth": 1}})");
  expect_failure("train net.json --data d.csv --features y --target y",
                 "column \"y\" is named both as a feature and as a target");
}
// The fused kernel's pool gets the cores for a fused network, OpenBLAS's for
// the dense and per-level paths; the other pools (torch's always) get one thread.
TEST(Cli, GivesTheCoresToThePoolTheNetworkUses) {
  const std::string to_fused = "cores: 1 torch thread(s), 1 BLAS thread(s) (fused kernel on 2 thread(s))";
  TempDir dir;
  write_regression_csv(dir / "data.csv", 50);
  auto fused = connex_cli("--threads 2 train --epochs 1", dir);
  ASSERT_EQ(fused.code, 0) << fused.err;
  EXPECT_NE((fused.out + fused.err).find(to_fused), std::string::npos) << fused.out << fused.err;
  // 2-100-100-1: 10,300 connections in complete levels, which run as matrix products (the dense path).
  spit(dir / "mlp.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 100, "depth": 2}})");
  auto dense = connex_cli("--threads 2 train mlp.json --data data.csv --epochs 1", dir);
  ASSERT_EQ(dense.code, 0) << dense.err;
  EXPECT_NE((dense.out + dense.err)
                .find("cores: 1 torch thread(s), 2 BLAS thread(s) (dense path; 1 while sharing them does not pay)"),
            std::string::npos)
      << dense.out << dense.err;
  // Pruning 95% leaves 515 connections, which run on the fused kernel: the
  // cores move to the kernel's pool mid-run (train) and before training on (prune).
  auto pruned =
      connex_cli("--threads 2 train mlp.json --data data.csv --epochs 2 --prune-at-epoch 1 --prune-fraction 0.95", dir);
  ASSERT_EQ(pruned.code, 0) << pruned.err;
  const std::string log = pruned.out + pruned.err;
  const auto dense_at = log.find("(dense path"), fused_at = log.find(to_fused);
  EXPECT_NE(dense_at, std::string::npos) << log;
  EXPECT_NE(fused_at, std::string::npos) << log;
  EXPECT_LT(dense_at, fused_at) << log;
  auto prune = connex_cli("--threads 2 prune mlp.json --data data.csv --fraction 0.95 --epochs 1", dir);
  ASSERT_EQ(prune.code, 0) << prune.err;
  EXPECT_NE((prune.out + prune.err).find(to_fused), std::string::npos) << prune.out << prune.err;
}

// A user's OPENBLAS_NUM_THREADS caps the BLAS threads connex gives out.
TEST(Cli, OpenBlasNumThreadsCapsTheBlasThreads) {
  TempDir dir;
  write_regression_csv(dir / "data.csv", 50);
  spit(dir / "mlp.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 100, "depth": 2}})");
  const std::string log = dir / "log.txt";
  const pid_t pid = spawn_connex({"--threads", "2", "train", "mlp.json", "--data", "data.csv", "--epochs", "1"}, log,
                                 "", {"OPENBLAS_NUM_THREADS=1"}, dir.path);
  ASSERT_EQ(wait_for(pid, std::chrono::seconds(120)), 0) << slurp(log);
  EXPECT_NE(slurp(log).find("cores: 1 torch thread(s), 1 BLAS thread(s) (dense path)"), std::string::npos)
      << slurp(log);
}

// OpenBLAS's kernels: which core names count as knowing the processor, and
// what this processor would run faster (connex/openblas.h).
TEST(OpenBlas, FasterKernelsOnlyWhereOpenBlasFellBackOnOlderOnes) {
  const CpuVectors none, avx2{true, false}, avx512{true, true};
  for (const char* known :
       {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "Excavator", "HASWELL", "skylakex"})
    EXPECT_EQ(faster_openblas_kernels(known, avx512), "") << known;
  for (const char* older : {"Prescott", "Core2", "Nehalem", "Sandybridge", "Bulldozer", "Unknown"}) {
    EXPECT_EQ(faster_openblas_kernels(older, avx512), "SkylakeX") << older;
    EXPECT_EQ(faster_openblas_kernels(older, avx2), "Haswell") << older;
    EXPECT_EQ(faster_openblas_kernels(older, none), "") << older;
  }
  EXPECT_EQ(faster_openblas_kernels("", avx512), "");  // another BLAS
  EXPECT_EQ(describe(OpenBlasKernels{}), "");
  EXPECT_EQ(describe(OpenBlasKernels{"Haswell", true, "", false}), "OpenBLAS's Haswell kernels");
  EXPECT_EQ(describe(OpenBlasKernels{"SkylakeX", true, "", true}), "OpenBLAS's SkylakeX kernels (OPENBLAS_CORETYPE)");
  // A name OpenBLAS lacks (it then chose for itself), and slower kernels chosen by name.
  EXPECT_EQ(describe(OpenBlasKernels{"Cooperlake", true, "", false, "Skylake\n"}),
            "OpenBLAS's Cooperlake kernels (OPENBLAS_CORETYPE=Skylake? not taken)");
  EXPECT_EQ(describe(OpenBlasKernels{"Prescott", true, "SkylakeX", true, "prescott"}),
            "OpenBLAS's Prescott kernels (OPENBLAS_CORETYPE; this processor runs SkylakeX's faster: set "
            "OPENBLAS_CORETYPE=SkylakeX)");
  EXPECT_EQ(describe(OpenBlasKernels{"Prescott", true, "SkylakeX", false}),
            "OpenBLAS's Prescott kernels (this processor runs SkylakeX's faster: set OPENBLAS_CORETYPE=SkylakeX)");
}

// `connex train` starts itself again where OpenBLAS runs older kernels than
// this processor's, and says which run; a user's OPENBLAS_CORETYPE stands.
// (A build of OpenBLAS for one processor, or another BLAS, has nothing to choose.)
TEST(Cli, RunsTheProcessorsOwnBlasKernels) {
  const OpenBlasKernels here = openblas_kernels();  // this test program does not start itself again
  if (here.running.empty()) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  TempDir dir;
  const auto run = connex_cli("train --epochs 1", dir);
  ASSERT_EQ(run.code, 0) << run.err;
  const bool set = std::getenv("OPENBLAS_CORETYPE") != nullptr;  // then the CLI runs as this program does
  const std::string expected =
      (set || here.faster.empty() ? describe(here) : "OpenBLAS's " + here.faster + " kernels (OPENBLAS_CORETYPE)") +
      "\n";
  EXPECT_NE(run.out.find("] cores: "), std::string::npos) << run.out;
  EXPECT_NE(run.out.find(expected), std::string::npos) << run.out << "expected: " << expected;
  if (set || !here.selectable || !cpu_vectors().avx2_fma) return;
  const auto chosen = connex_cli("train --epochs 1", dir, "OPENBLAS_CORETYPE=Haswell");
  ASSERT_EQ(chosen.code, 0) << chosen.err;
  EXPECT_NE(chosen.out.find("OpenBLAS's Haswell kernels (OPENBLAS_CORETYPE)\n"), std::string::npos) << chosen.out;
  // A name OpenBLAS lacks: it chooses for itself (it knows the processor
  // then, or the line suggests faster kernels), and the line says so.
  const auto lacked = connex_cli("train --epochs 1", dir, "OPENBLAS_CORETYPE=NoSuchCore");
  ASSERT_EQ(lacked.code, 0) << lacked.err;
  EXPECT_NE(lacked.out.find(" kernels (OPENBLAS_CORETYPE=NoSuchCore not taken"), std::string::npos) << lacked.out;
}

TEST(Cli, PngPathIsNeverAShellCommand) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 2 --out run", dir).code, 0);
  auto r = connex_cli("export run/model.ckpt --format png --out \"x';touch INJECTED;'.png\"", dir);
  EXPECT_FALSE(fs::exists(dir / "INJECTED"));
  if (r.code == 0) EXPECT_TRUE(fs::exists(dir / "x';touch INJECTED;'.png"));
}
TEST(Cli, StandardizeASingleRow) {
  TempDir dir;
  spit(dir / "one.csv", "x,y\n1,2\n");
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 1, "output_size": 1, "width": 2, "depth": 1}})");
  auto r = connex_cli("train net.json --data one.csv --standardize --epochs 3 --out run", dir);
  EXPECT_EQ(r.code, 0) << r.err;
}
