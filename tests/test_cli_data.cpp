// The `connex` program's optimizer rule, pruning without data, and the
// preprocessing that travels with a model (checkpoint, later runs, TorchScript).
#include <regex>

#include <torch/script.h>

#include "cli_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

double saved_lr(const std::string& checkpoint) {
  return load_checkpoint(checkpoint).optimizer->groups.at(0).options.at("lr").get<double>();
}

// 60 rows of two features; the class is which third of the plane the point is in, as a name.
void write_classes_csv(const std::string& path) {
  std::ofstream out(path);
  out << "width,height,kind\n";
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 10);
  for (int i = 0; i < 60; ++i) {
    const double a = u(rng), b = 100 + 50 * u(rng);
    out << a << "," << b << "," << (a < 3.3 ? "small" : a < 6.6 ? "medium" : "large") << "\n";
  }
}

const char* kMlp23 = R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 3, "width": 8, "depth": 1},
                         "options": {"hidden_activation": "tanh"}})";

// 20 rows of x and two targets on lines in x.
void write_line_csv(const std::string& path) {
  std::string csv = "x,y1,y2\n";
  for (int i = 0; i < 20; ++i) csv += fmt::format("{},{},{}\n", i * 0.1, i * 0.2, 1 - i * 0.1);
  spit(path, csv);
}

// d.csv and net.json in `dir`, and a standardized classifier trained on them in dir/run.
void train_classifier(const TempDir& dir) {
  write_classes_csv(dir / "d.csv");
  spit(dir / "net.json", kMlp23);
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --task classification --standardize --epochs 30 --lr 0.05 --out run", dir)
          .code,
      0);
}

}  // namespace

TEST(CliOptimizer, SavedOptionsAreKeptUnlessAFlagSaysOtherwise) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 5 --lr 0.01 --out a", dir).code, 0);
  EXPECT_EQ(saved_lr(dir / "a/model.ckpt"), 0.01);

  auto r = connex_cli("edit a/model.ckpt --add-connection 1:6 --out e.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("optimizer state carried: adam, learning rate 0.01"), std::string::npos) << r.out;
  EXPECT_EQ(saved_lr(dir / "e.ckpt"), 0.01);

  r = connex_cli("train a/model.ckpt --epochs 1 --out b", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("resumed adam state from a/model.ckpt; learning rate 0.01 (saved)"), std::string::npos) << r.out;
  EXPECT_EQ(saved_lr(dir / "b/model.ckpt"), 0.01);

  // The flag wins, is logged, and changes the run.
  r = connex_cli("train a/model.ckpt --epochs 3 --lr 0.5 --out c", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("learning rate 0.5 (--lr; the checkpoint had 0.01)"), std::string::npos) << r.out;
  EXPECT_EQ(saved_lr(dir / "c/model.ckpt"), 0.5);
  ASSERT_EQ(connex_cli("train a/model.ckpt --epochs 3 --lr 1e-6 --out d", dir).code, 0);
  EXPECT_FALSE(torch::equal(load(dir / "c/model.ckpt")->weight_tensor(), load(dir / "d/model.ckpt")->weight_tensor()));

  // prune and train's mid-run prune keep it too.
  ASSERT_EQ(connex_cli("prune a/model.ckpt --fraction 0.2 --out p.ckpt", dir).code, 0);
  EXPECT_EQ(saved_lr(dir / "p.ckpt"), 0.01);
  ASSERT_EQ(connex_cli("prune a/model.ckpt --fraction 0.2 --lr 0.3 --out q.ckpt", dir).code, 0);
  EXPECT_EQ(saved_lr(dir / "q.ckpt"), 0.3);
  ASSERT_EQ(connex_cli("train a/model.ckpt --epochs 3 --prune-at-epoch 6 --prune-fraction 0.2 --out m", dir).code, 0);
  EXPECT_EQ(saved_lr(dir / "m/model.ckpt"), 0.01);
  EXPECT_EQ(load(dir / "m/model.ckpt")->num_connections(), 11);

  // Another --optimizer starts fresh, at --lr or the default.
  r = connex_cli("train a/model.ckpt --epochs 1 --optimizer sgd --out s", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("holds adam state; starting sgd fresh (--optimizer), learning rate 0.001"), std::string::npos)
      << r.out;
  EXPECT_EQ(load_checkpoint(dir / "s/model.ckpt").optimizer->type, "sgd");
}

TEST(CliPrune, NeedsDataOnlyForTheLossAndReportsAccuracy) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_classifier(dir));
  auto r = connex_cli("prune run/model.ckpt --fraction 0.3 --out x.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 40 -> 28 (removed 12)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("loss:"), std::string::npos) << r.out;
  EXPECT_TRUE(load_checkpoint(dir / "x.ckpt").preprocessing) << "the preprocessing stays with the pruned model";

  r = connex_cli("prune run/model.ckpt --fraction 0.3 --data d.csv --val-split 0.25 --out y.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("after pruning (15 validation rows)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("accuracy: "), std::string::npos) << r.out;
  r = connex_cli("prune run/model.ckpt --fraction 0.3 --data d.csv", dir);
  EXPECT_NE(r.out.find("after pruning (all 60 rows; --val-split F would hold some out)"), std::string::npos) << r.out;

  // A run trained with a split is measured on the rows it held out: the loss
  // before pruning is its last validation loss.
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --task classification --epochs 5 --val-split 0.25 --seed 3 --out split",
                 dir)
          .code,
      0);
  r = connex_cli("prune split --fraction 0.3 --data d.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const double val_loss = column(slurp(dir / "split/metrics.csv"), 2).back();
  EXPECT_NE(r.out.find(fmt::format("loss: {:.6f} -> ", val_loss)), std::string::npos) << r.out << val_loss;
  EXPECT_NE(r.out.find("after pruning (15 validation rows)"), std::string::npos) << r.out;

  // Training on takes the checkpoint's CSV and batch size unless flags say otherwise.
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --task classification --epochs 2 --batch-size 8 --out batched", dir).code,
      0);
  auto after_more = [](const std::string& out) {  // the lines of the loss and accuracy, without their times
    const size_t from = out.rfind('\n', out.find("after 1 more epochs")) + 1;
    return std::regex_replace(out.substr(from, out.find("wrote") - from), std::regex(R"(\[\d\d:\d\d:\d\d\] )"), "");
  };
  r = connex_cli("prune batched --fraction 0.3 --epochs 1 --out zb.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string csv = fs::absolute(dir / "d.csv").lexically_normal().string();
  EXPECT_NE((r.out + r.err).find("data: " + csv + " ("), std::string::npos) << r.out + r.err;
  EXPECT_NE((r.out + r.err).find("); the one the checkpoint was trained on (give --data to use another)\n"),
            std::string::npos)
      << r.out + r.err;
  const std::string with_its_batch = r.out;
  r = connex_cli("prune batched --fraction 0.3 --epochs 1 --batch-size 8 --data d.csv --out z8.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(after_more(r.out), after_more(with_its_batch));
  r = connex_cli("prune batched --fraction 0.3 --epochs 1 --batch-size 0 --out z0.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(after_more(r.out), after_more(with_its_batch));
  fs::remove(dir / "d.csv");
  r = connex_cli("prune batched --fraction 0.3 --epochs 1 --out gone.ckpt", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("connex: prune: batched was trained on " + csv + ", which is gone; give --data"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir / "gone.ckpt"));
  spit(dir / "reg.json", kMlp21);
  r = connex_cli("prune reg.json --fraction 0.3 --epochs 2 --out z.ckpt", dir);
  EXPECT_NE(r.err.find("connex: prune: the built-in toy data has 1 feature and 2 targets"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "z.ckpt"));
}

// An edit that leaves the inputs keeps the standardization: a removed output
// takes its class along, a new output (last) has none.
TEST(CliPreprocessing, AnEditOfTheOutputsKeepsTheStandardizationAndTheOtherClasses) {
  TempDir dir;
  write_classes_csv(dir / "d.csv");
  spit(dir / "net.json", kMlp23);
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --task classification --standardize --epochs 3 --out run", dir).code, 0);
  const auto trained = load_checkpoint(dir / "run/model.ckpt");
  ASSERT_TRUE(trained.preprocessing);
  const auto& classes = trained.preprocessing->classes;
  ASSERT_EQ(classes.size(), 3u);
  const std::string middle = fmt::format("{}", trained.network->output_neurons()[1]);
  auto r = connex_cli("edit run --remove-neuron " + middle + " --out less.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto less = load_checkpoint(dir / "less.ckpt");
  ASSERT_TRUE(less.preprocessing) << r.out + r.err;
  EXPECT_EQ(less.preprocessing->mean, trained.preprocessing->mean);
  EXPECT_EQ(less.preprocessing->scale, trained.preprocessing->scale);
  EXPECT_EQ(less.preprocessing->classes, (std::vector<std::string>{classes[0], classes[2]}));
  EXPECT_NE((r.out + r.err).find(" (standardized) and the classes " + classes[0] + "," + classes[2]), std::string::npos)
      << r.out + r.err;
  // A removed input takes its feature column and statistics along; a new input has none.
  const auto& features = trained.preprocessing->features;
  const std::string first = fmt::format("{}", trained.network->input_neurons()[0]);
  r = connex_cli("edit run --remove-neuron " + first + " --out fewer.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto fewer = load_checkpoint(dir / "fewer.ckpt");
  ASSERT_TRUE(fewer.preprocessing) << r.out + r.err;
  EXPECT_EQ(fewer.preprocessing->features, (std::vector<std::string>{features[1]}));
  EXPECT_EQ(fewer.preprocessing->mean, (std::vector<double>{trained.preprocessing->mean[1]}));
  EXPECT_EQ(fewer.preprocessing->scale, (std::vector<double>{trained.preprocessing->scale[1]}));
  EXPECT_EQ(fewer.preprocessing->classes, classes);
  EXPECT_NE((r.out + r.err)
                .find("the edit changed the inputs: the saved preprocessing keeps the features " + features[1] +
                      " (standardized)"),
            std::string::npos)
      << r.out + r.err;
  r = connex_cli("edit run --add-input 77 --add-connection 77:" + middle + " --out wider.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(load_checkpoint(dir / "wider.ckpt").preprocessing);
  EXPECT_NE((r.out + r.err).find("(input 77 is new and has no feature column): the saved preprocessing"),
            std::string::npos)
      << r.out + r.err;
  r = connex_cli("edit run --add-output 99 --add-connection 0:99 --out more.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto more = load_checkpoint(dir / "more.ckpt");
  ASSERT_TRUE(more.preprocessing) << r.out + r.err;
  EXPECT_EQ(more.preprocessing->classes, classes);
  EXPECT_EQ(more.preprocessing->mean, trained.preprocessing->mean);
  // A graph export holds the network only, and says so.
  r = connex_cli("export run --format json --out g.json", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(
      (r.out + r.err).find("export: g.json holds the network only, not the checkpoint's preprocessing (features "),
      std::string::npos)
      << r.out + r.err;
}

// An edited checkpoint keeps the CSV's columns but not its file name: train says so.
TEST(CliPreprocessing, TrainingAnEditedCheckpointWithoutDataNamesTheColumns) {
  TempDir dir;
  write_line_csv(dir / "d.csv");
  ASSERT_EQ(connex_cli("train --data d.csv --epochs 1 --out run", dir).code, 0);
  ASSERT_EQ(connex_cli("edit run --add-hidden 50 --add-connection 0:50 --out e.ckpt", dir).code, 0);
  const auto before = slurp(dir / "e.ckpt");
  auto r = connex_cli("train e.ckpt --epochs 1 --out again", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE((r.out + r.err)
                .find("train: the model was trained on a CSV (features x; targets y1, y2), not on the toy set, and the "
                      "checkpoint does not name the file (only a run of train --out records it; edited and pruned "
                      "checkpoints do "
                      "not); give --data"),
            std::string::npos)
      << r.out + r.err;
  EXPECT_EQ(slurp(dir / "e.ckpt"), before);
  EXPECT_FALSE(std::filesystem::exists(dir / "again"));
}

TEST(CliPreprocessing, TravelsWithTheModelIntoLaterRunsAndTorchScript) {
  TempDir dir;
  write_classes_csv(dir / "d.csv");
  spit(dir / "net.json", kMlp23);
  auto r = connex_cli(
      "train net.json --data d.csv --task classification --standardize --val-split 0.25 --seed 3 "
      "--epochs 40 --lr 0.05 --out run",
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("45 training rows, 15 validation rows, features width,height, targets kind, classes "
                       "large,medium,small, standardized"),
            std::string::npos)
      << r.out;
  const Checkpoint ck = load_checkpoint(dir / "run/model.ckpt");
  ASSERT_TRUE(ck.preprocessing);
  // The statistics are the training rows' (the same split read through the library), not all rows'.
  const auto options = TableOptions().task(Task::Classification).standardize(true).validation_fraction(0.25).seed(3);
  const Preprocessing expected = read_table(dir / "d.csv", ck.network, options).preprocessing;
  EXPECT_EQ(ck.preprocessing->mean, expected.mean);
  EXPECT_EQ(ck.preprocessing->scale, expected.scale);
  EXPECT_NE(ck.preprocessing->mean,
            read_table(dir / "d.csv", ck.network, TableOptions(options).validation_fraction(0)).preprocessing.mean);
  EXPECT_EQ(ck.preprocessing->classes, (std::vector<std::string>{"large", "medium", "small"}));

  // A later run on the same checkpoint applies them (another seed would fit other statistics).
  r = connex_cli("train run/model.ckpt --data d.csv --val-split 0.25 --seed 9 --epochs 2 --out again", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto later = load_checkpoint(dir / "again/model.ckpt").preprocessing;
  ASSERT_TRUE(later);
  EXPECT_EQ(later->to_json(), ck.preprocessing->to_json());
  r = connex_cli("train run/model.ckpt --data d.csv --task regression --epochs 1", dir);
  EXPECT_NE(r.err.find("train: --task regression: the model was trained for classification; leave --task out to use "
                       "the checkpoint's"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");  // refused as the checkpoint is opened, before anything is logged
  r = connex_cli("prune run/model.ckpt --fraction 0.3 --data d.csv --task regression", dir);
  EXPECT_EQ(r.err,
            "connex: prune: --task regression: the model was trained for classification; leave --task out to use "
            "the checkpoint's\n");
  EXPECT_EQ(r.out, "");

  // The exported module takes raw rows and names its classes.
  ASSERT_EQ(connex_cli("export run/model.ckpt --format torchscript --out m.pt", dir).code, 0);
  auto m = torch::jit::load(dir / "m.pt");
  const auto raw = torch::tensor({{1.0, 300.0}, {9.0, 120.0}}, torch::kFloat64);
  auto net = ck.network;
  net->eval();
  EXPECT_TRUE(torch::allclose(m.forward({raw}).toTensor(),
                              net->forward(ck.preprocessing->apply(raw).to(torch::kFloat32)), 1e-5, 1e-5));
  EXPECT_EQ(m.attr("class_labels").toListRef().size(), 3u);
  EXPECT_EQ(m.attr("class_labels").toListRef()[2].toStringRef(), "small");

  r = connex_cli("inspect run/model.ckpt", dir);
  EXPECT_NE(r.out.find("preprocessing: classification of kind (large, medium, small) from width, height, standardized"),
            std::string::npos)
      << r.out;
}

TEST(CliData, AForgottenTaskSaysWhatWouldFit) {
  TempDir dir;
  write_classes_csv(dir / "d.csv");
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 4, "depth": 1}})");
  auto r = connex_cli("train net.json --data d.csv --epochs 1", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("d.csv:2: column 3 (\"kind\")"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("is not a number; if \"kind\" holds class labels, add --task classification"), std::string::npos)
      << r.err;
  spit(dir / "net3.json", kMlp23);
  r = connex_cli("train net3.json --data d.csv --epochs 1", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("d.csv: has 3 columns, too few for 3 target column(s) and at least one feature"),
            std::string::npos)
      << r.err;
  spit(dir / "n.csv", "a,b,label\n1,2,0\n3,4,1\n");
  spit(dir / "net4.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 2, "width": 4, "depth": 1}})");
  r = connex_cli("train net4.json --data n.csv --epochs 1", dir);
  EXPECT_NE(
      r.err.find(
          "n.csv: 1 feature columns (a) but the network has 2 inputs; if \"label\" holds class labels, add --task "
          "classification (then the other 2 columns are the features)"),
      std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// prune's scope, floor and dead-neuron flags go to the library's prune().
TEST(CliPrune, ScopeFloorAndDeadNeurons) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 20 --out run", dir).code, 0);
  auto r = connex_cli("prune run --fraction 0.6 --scope neuron --keep-min 1 --remove-dead --out p.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 14 -> "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dead neurons removed: "), std::string::npos) << r.out;
  const NeuralNetwork pruned = load(dir / "p.ckpt");
  const GraphQueries q(pruned);
  for (const auto& id : pruned->spec().neurons())
    if (q.role(id) != Role::Input) EXPECT_GE(q.in_degree(id), 1) << id.str();
  EXPECT_TRUE(dead_neurons(pruned).empty());
  r = connex_cli("prune run --fraction 0.5 --scope layer", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--scope"), std::string::npos) << r.err;
}

// Frozen connections are no candidates unless --include-frozen, and the
// output says so; the cut-output warning suggests only flags not given.
TEST(CliPrune, KeepsFrozenConnectionsAndSaysSo) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 20 --out run", dir).code, 0);
  NeuralNetwork net = load(dir / "run/model.ckpt");
  auto graph = net->weighted_graph();
  std::sort(graph.connections.begin(), graph.connections.end(),
            [](const auto& a, const auto& b) { return std::abs(a.weight) < std::abs(b.weight); });
  const std::vector<Edge> weakest = {{graph.connections[0].from, graph.connections[0].to},
                                     {graph.connections[1].from, graph.connections[1].to}};
  net->freeze(weakest);
  save(net, dir / "frozen.ckpt");
  auto r = connex_cli("inspect frozen.ckpt", dir);
  EXPECT_NE(r.out.find("frozen: 2 connections, 0 biases\n"), std::string::npos) << r.out;
  r = connex_cli("prune frozen.ckpt --fraction 0.5 --out p.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 14 -> 8 (removed 6; 2 frozen connections were not candidates "
                       "(--include-frozen makes them so))"),
            std::string::npos)
      << r.out;
  const NeuralNetwork pruned = load(dir / "p.ckpt");
  for (const auto& [from, to] : weakest) {
    EXPECT_TRUE(pruned->is_frozen(from, to)) << edge_str({from, to});
    EXPECT_EQ(pruned->weight(from, to), net->weight(from, to));
  }
  // Training on holds them exactly, though the checkpoint's Adam moments
  // (from before they were frozen) would move them.
  r = connex_cli("prune frozen.ckpt --fraction 0.5 --epochs 5 --out trained.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  r = connex_cli("train frozen.ckpt --epochs 5 --out run2", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* file : {"trained.ckpt", "run2/model.ckpt"}) {
    const NeuralNetwork trained = load(dir / file);
    for (const auto& [from, to] : weakest) EXPECT_EQ(trained->weight(from, to), net->weight(from, to)) << file;
  }
  r = connex_cli("prune frozen.ckpt --fraction 0.5 --include-frozen --out q.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 14 -> 7 (removed 7)\n"), std::string::npos) << r.out;
  r = connex_cli("prune frozen.ckpt --threshold 1000 --protect-outputs --include-frozen", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(
      (r.out + r.err).find("their values are constants; a smaller --fraction or --threshold or --keep-min 1 helps"),
      std::string::npos)
      << r.out + r.err;
}

// connex predict: the saved preprocessing applied by column name, rows in
// file order, values equal to the network's own forward pass, a score when
// the file holds the targets, nothing written on bad input.
TEST(CliPredict, ClassifierProbabilitiesAndLabelsInFileOrder) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_classifier(dir));
  auto r = connex_cli("predict run --data d.csv --out p.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto ck = load_checkpoint(dir / "run/model.ckpt");
  const auto& classes = ck.preprocessing->classes;
  const CsvTable data = parse_csv(slurp(dir / "d.csv"), "d.csv", {"kind"});
  const CsvTable predicted = parse_csv(slurp(dir / "p.csv"), "p.csv", {"kind"});
  ASSERT_EQ(predicted.columns,
            (std::vector<std::string>{"kind", "p_" + classes[0], "p_" + classes[1], "p_" + classes[2]}));
  ASSERT_EQ(predicted.rows.size(), data.rows.size());
  // The expected values: the checkpoint's network on the standardized rows, in file order.
  auto raw = torch::empty({static_cast<int64_t>(data.rows.size()), 2}, torch::kFloat64);
  for (size_t i = 0; i < data.rows.size(); ++i) raw[i][0] = data.number(i, 0), raw[i][1] = data.number(i, 1);
  ck.network->eval();
  const auto probabilities =
      torch::softmax(ck.network->forward(ck.preprocessing->apply(raw).to(torch::kFloat32)).to(torch::kFloat64), 1);
  int64_t right = 0;
  for (size_t i = 0; i < data.rows.size(); ++i) {
    const auto best = probabilities[i].argmax().item<int64_t>();
    EXPECT_EQ(predicted.text[0][i], classes[best]) << "row " << i;
    for (int k = 0; k < 3; ++k)
      EXPECT_NEAR(predicted.number(i, k + 1), probabilities[i][k].item<double>(), 1e-6) << "row " << i;
    right += classes[best] == data.text[2][i];
  }
  EXPECT_NE(r.out.find(fmt::format("predicted 60 rows of d.csv; accuracy {:.4f} against column kind",
                                   static_cast<double>(right) / 60)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("wrote p.csv"), std::string::npos) << r.out;
}

// Scoring squares only the targets' errors: a feature too large to train
// on but within the dtype is predicted and scored; a target whose squared
// error would overflow leaves the file unscored, saying why, and the
// predictions are written all the same.
TEST(CliPredict, ScoringChecksTheTargetsNotTheFeatures) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(train_classifier(dir));
  spit(dir / "huge.csv", "width,height,kind\n1,120,small\n1e25,120,large\n9,1e30,large\n");
  auto r = connex_cli("predict run --data huge.csv --out p.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const CsvTable predicted = parse_csv(slurp(dir / "p.csv"), "p.csv", {"kind"});
  ASSERT_EQ(predicted.rows.size(), 3u);
  int right = 0;
  for (int i = 0; i < 3; ++i) right += predicted.text[0][i] == (i == 0 ? "small" : "large");
  EXPECT_NE(r.out.find(fmt::format("predicted 3 rows of huge.csv; accuracy {:.4f} against column kind", right / 3.0)),
            std::string::npos)
      << r.out;

  write_line_csv(dir / "line.csv");
  ASSERT_EQ(connex_cli("train --data line.csv --epochs 2 --out reg", dir).code, 0);
  spit(dir / "far.csv", "x,y1,y2\n0.5,1,0\n0.5,1e30,0\n");
  r = connex_cli("predict reg --data far.csv --out q.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("predicted 2 rows of far.csv; not scored: far.csv:3: column 2 (\"y1\"): 1e+30 is too large "
                       "to score in Float (|value| must stay below 1.8e+19, so that squared errors stay finite); "
                       "rescale the column"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(parse_csv(slurp(dir / "q.csv"), "q.csv").rows.size(), 2u);
}

// A classifier whose outputs are probabilities already (softmax) or their
// logarithms: the file holds those probabilities, not a second softmax of them.
TEST(CliPredict, ProbabilitiesFollowTheOutputTransformation) {
  TempDir dir;
  write_classes_csv(dir / "d.csv");
  for (const std::string transformation : {"softmax", "log_softmax"}) {
    spit(dir / "net.json", R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 3, "width": 8, "depth": 1},
                             "options": {"hidden_activation": "tanh", "output_transformation": ")" +
                               transformation + R"("}})");
    ASSERT_EQ(
        connex_cli("train net.json --data d.csv --task classification --epochs 5 --out " + transformation, dir).code,
        0);
    auto r = connex_cli("predict " + transformation + " --data d.csv --out p.csv", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    auto ck = load_checkpoint(dir / (transformation + "/model.ckpt"));
    const CsvTable data = parse_csv(slurp(dir / "d.csv"), "d.csv", {"kind"});
    auto raw = torch::empty({static_cast<int64_t>(data.rows.size()), 2}, torch::kFloat64);
    for (size_t i = 0; i < data.rows.size(); ++i) raw[i][0] = data.number(i, 0), raw[i][1] = data.number(i, 1);
    ck.network->eval();
    auto out = ck.network->forward(ck.preprocessing->apply(raw).to(torch::kFloat32)).to(torch::kFloat64);
    if (transformation == "log_softmax") out = out.exp();
    const CsvTable predicted = parse_csv(slurp(dir / "p.csv"), "p.csv", {"kind"});
    for (size_t i = 0; i < data.rows.size(); ++i)
      for (int k = 0; k < 3; ++k)
        ASSERT_NEAR(predicted.number(i, k + 1), out[i][k].item<double>(), 1e-6) << transformation << " row " << i;
  }
}

TEST(CliPredict, FeaturesFoundByNameWithoutTargetsToStandardOutput) {
  TempDir dir;
  write_line_csv(dir / "d.csv");
  ASSERT_EQ(connex_cli("train --data d.csv --standardize --epochs 2 --out run", dir).code, 0);
  // Other columns first, a column the model never saw, no targets: the predictions go to stdout.
  spit(dir / "new.csv", "note,x\nfirst,0.25\n\"a, b\",-1.5\n");
  auto r = connex_cli("predict run/model.ckpt --data new.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  auto ck = load_checkpoint(dir / "run/model.ckpt");
  ck.network->eval();
  const auto expected = ck.network->forward(
      ck.preprocessing->apply(torch::tensor({{0.25}, {-1.5}}, torch::kFloat64)).to(torch::kFloat32));
  const CsvTable predicted = parse_csv(r.out, "stdout");
  ASSERT_EQ(predicted.columns, (std::vector<std::string>{"y1", "y2"}));
  ASSERT_EQ(predicted.rows.size(), 2u);
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 2; ++k) EXPECT_NEAR(predicted.number(i, k), expected[i][k].item<double>(), 1e-6);
  EXPECT_NE(r.err.find("predicted 2 rows of new.csv"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("mse"), std::string::npos) << r.err;

  // Bad input: a missing feature, the data file as --out; nothing written, nothing changed.
  spit(dir / "other.csv", "a,b\n1,2\n");
  r = connex_cli("predict run --data other.csv --out p.csv", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("other.csv: no column \"x\", a feature the model was trained on; the columns are a, b"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "p.csv"));
  r = connex_cli("predict run --data new.csv --out new.csv", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("predict: --out new.csv is the file it reads; give another path"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir / "new.csv"), "note,x\nfirst,0.25\n\"a, b\",-1.5\n");
}

// A missing file is named as such (it was refused as "never trained"); a
// node-link JSON export, which holds trained weights but no preprocessing,
// predicts from its raw columns with a warning that says so; a text column
// read as an input then says why every column is one.
TEST(CliPredict, AMissingFileAndAGraphExportAreNamed) {
  TempDir dir;
  write_line_csv(dir / "d.csv");
  ASSERT_EQ(connex_cli("train --data d.csv --epochs 2 --out run", dir).code, 0);
  auto r = connex_cli("predict nothing.ckpt --data d.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("nothing.ckpt: no such file"), std::string::npos) << r.err;
  r = connex_cli("predict run --data nothing.csv", dir);  // the data file in the same words
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: nothing.csv: no such file\n");
  ASSERT_EQ(connex_cli("export run --format json --out g.json", dir).code, 0);
  spit(dir / "raw.csv", "x\n0.25\n-1.5\n");
  r = connex_cli("predict g.json --data raw.csv", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("g.json: a node-link JSON export holds no preprocessing: every column of raw.csv goes in as it "
                       "is, in file order"),
            std::string::npos)
      << r.err;
  auto ck = load_checkpoint(dir / "run/model.ckpt");
  ck.network->eval();
  const auto expected = ck.network->forward(torch::tensor({{0.25}, {-1.5}}));
  const CsvTable predicted = parse_csv(r.out, "stdout");
  ASSERT_EQ(predicted.rows.size(), 2u);
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 2; ++k) EXPECT_NEAR(predicted.number(i, k), expected[i][k].item<double>(), 1e-6);
  spit(dir / "text.csv", "x,note\n0.25,first\n");
  r = connex_cli("predict g.json --data text.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("g.json holds no preprocessing (a graph export, or an edit that dropped it), so every column "
                       "is read as an input"),
            std::string::npos)
      << r.err;
}

// The data line names a few columns and the last of many, with their count,
// rather than every one (a 64-pixel image table made it hundreds of characters).
TEST(CliData, ManyColumnsAreSaidInShort) {
  TempDir dir;
  std::string csv;
  for (int j = 0; j < 12; ++j) csv += fmt::format("p{},", j);
  csv += "y\n";
  for (int i = 0; i < 10; ++i) {
    for (int j = 0; j < 12; ++j) csv += fmt::format("{},", (i * j) % 7);
    csv += fmt::format("{}\n", i % 2);
  }
  spit(dir / "wide.csv", csv);
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 12, "output_size": 1, "width": 4, "depth": 1}})");
  const auto r = connex_cli("train net.json --data wide.csv --epochs 1", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(" (10 training rows, 0 validation rows, features p0,p1,p2,...,p11 (12), targets y)\n"),
            std::string::npos)
      << r.out;
}
