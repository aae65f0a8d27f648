// Tabular data (connex/dataset.h), the preprocessing that travels with a
// model (checkpoints, TorchScript), the exported module's input checks, the
// typed clone and the optimizer that survives an edit with its options.
#include <limits>

#include <torch/script.h>

#include "optimizer_key.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

namespace {

NeuralNetwork mlp(int64_t in, int64_t out, torch::Dtype dtype = torch::kFloat32) {
  return connex::nn::MLP(in, out, 4, 1, NeuralNetworkOptions().hidden_activation("tanh").dtype(dtype).seed(3));
}

// 12 rows: a = row index, b = 10 * row index squared, label cycling through three names.
std::string table_csv() {
  std::string csv = "a,b,species\n";
  const char* names[] = {"virginica", "setosa", "versicolor"};
  for (int i = 0; i < 12; ++i) csv += fmt::format("{},{},{}\n", i, 10 * i * i, names[i % 3]);
  return csv;
}

}  // namespace

TEST(Dataset, StandardizesWithTheTrainingRowsStatisticsOnly) {
  TempDir dir;
  spit(dir / "d.csv", table_csv());
  auto net = mlp(2, 3);
  const auto options = TableOptions()
                           .task(Task::Classification)
                           .standardize(true)
                           .validation_fraction(0.25)
                           .seed(5)
                           .dtype(torch::kFloat64);
  const Table table = read_table(dir / "d.csv", net, options);
  auto [train_rows, validation_rows] = split_rows(12, 0.25, 5);
  ASSERT_EQ(table.train.inputs().size(0), 9);
  ASSERT_EQ(table.validation.inputs().size(0), 3);
  // By hand: a = i, b = 10 i^2 over the training rows.
  double sum_a = 0, sum_b = 0;
  std::vector<double> as, bs;
  for (int64_t k = 0; k < 9; ++k) {
    const double i = static_cast<double>(train_rows[k].item<int64_t>());
    as.push_back(i), bs.push_back(10 * i * i);
    sum_a += i, sum_b += 10 * i * i;
  }
  const double mean_a = sum_a / 9, mean_b = sum_b / 9;
  double var_a = 0, var_b = 0;
  for (int k = 0; k < 9; ++k)
    var_a += (as[k] - mean_a) * (as[k] - mean_a), var_b += (bs[k] - mean_b) * (bs[k] - mean_b);
  const auto& p = table.preprocessing;
  EXPECT_NEAR(p.mean[0], mean_a, 1e-12);
  EXPECT_NEAR(p.mean[1], mean_b, 1e-9);
  EXPECT_NEAR(p.scale[0], std::sqrt(var_a / 8), 1e-12);
  EXPECT_NEAR(p.scale[1], std::sqrt(var_b / 8), 1e-9);
  // Validation rows use the training statistics, not their own.
  for (int64_t k = 0; k < 3; ++k) {
    const double i = static_cast<double>(validation_rows[k].item<int64_t>());
    EXPECT_NEAR(table.validation.inputs()[k][0].item<double>(), (i - mean_a) / p.scale[0], 1e-12);
    EXPECT_NEAR(table.validation.inputs()[k][1].item<double>(), (10 * i * i - mean_b) / p.scale[1], 1e-12);
  }
  EXPECT_NEAR(table.train.inputs().mean(0).abs().max().item<double>(), 0.0, 1e-12);
  EXPECT_EQ(p.features, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(p.targets, (std::vector<std::string>{"species"}));
  // Text labels: one output per distinct label, sorted.
  EXPECT_EQ(p.classes, (std::vector<std::string>{"setosa", "versicolor", "virginica"}));
  const int64_t expected[] = {2, 0, 1};
  for (int64_t k = 0; k < 9; ++k)
    EXPECT_EQ(table.train.targets()[k].item<int64_t>(), expected[train_rows[k].item<int64_t>() % 3]);
}

TEST(Dataset, FittedPreprocessingIsAppliedNotFittedAgain) {
  TempDir dir;
  spit(dir / "d.csv", table_csv());
  auto net = mlp(2, 3);
  const auto options = TableOptions().task(Task::Classification).standardize(true);
  const Preprocessing fitted = read_table(dir / "d.csv", net, options).preprocessing;
  // Other rows, other label order: the fitted statistics and classes still rule.
  spit(dir / "e.csv", "a,b,species\n100,0,versicolor\n-5,7,setosa\n");
  const Table table = read_table(dir / "e.csv", net, TableOptions().dtype(torch::kFloat64), fitted);
  EXPECT_EQ(table.preprocessing.mean, fitted.mean);
  EXPECT_EQ(table.preprocessing.classes, fitted.classes);
  EXPECT_NEAR(table.train.inputs()[0][0].item<double>(), (100 - fitted.mean[0]) / fitted.scale[0], 1e-12);
  EXPECT_EQ(table.train.targets()[0].item<int64_t>(), 1);
  EXPECT_EQ(table.train.targets()[1].item<int64_t>(), 0);
  // The fitted columns are found by name, whatever their position.
  spit(dir / "f.csv", "species,b,a\nsetosa,0,1\n");
  EXPECT_EQ(read_table(dir / "f.csv", net, {}, fitted).train.inputs()[0][0].item<float>(),
            static_cast<float>((1 - fitted.mean[0]) / fitted.scale[0]));
  spit(dir / "g.csv", "a,b,species\n1,2,daisy\n");
  EXPECT_THROW_MSG(read_table(dir / "g.csv", net, {}, fitted),
                   "g.csv:2: column 3 (\"species\"): \"daisy\" is not one of the classes the model was trained on "
                   "(setosa, versicolor, virginica)");
  EXPECT_THROW_MSG(read_table(dir / "g.csv", net, TableOptions().task(Task::Regression), fitted),
                   "g.csv: the model was trained for classification, not regression");
  // An explicit standardize must agree with the fitted preprocessing (unset takes it).
  EXPECT_THROW_MSG(read_table(dir / "f.csv", net, TableOptions().standardize(false), fitted),
                   "f.csv: the model was trained on standardized features; reading them raw (standardize false) "
                   "would change its inputs");
  EXPECT_EQ(read_table(dir / "f.csv", net, TableOptions().standardize(true), fitted).preprocessing.mean, fitted.mean);
  // Every column the file lacks is named at once, the model's apart from the flags'.
  spit(dir / "h.csv", "a,c,species\n1,2,setosa\n");
  EXPECT_THROW_MSG(read_table(dir / "h.csv", net, {}, fitted),
                   "h.csv: no column \"b\", a feature the model was trained on; the columns are a, c, species");
  spit(dir / "i.csv", "c,kind\n1,setosa\n");
  EXPECT_THROW_MSG(read_table(dir / "i.csv", net, {}, fitted),
                   "i.csv: no target column \"species\" or feature columns \"a\" and \"b\" that the model was trained "
                   "on; the columns are c, kind");
  Preprocessing renamed = fitted;
  renamed.features = {"x1", "x2"};
  renamed.targets = {"kind"};
  EXPECT_THROW_MSG(
      read_table(dir / "i.csv", net, {}, renamed),
      "i.csv: no feature columns \"x1\" and \"x2\" that the model was trained on; the columns are c, kind");
  EXPECT_THROW_MSG(
      read_table(dir / "i.csv", net, TableOptions().task(Task::Classification).targets({"label"}).features({"c", "z"})),
      "i.csv: unknown target column \"label\" and feature column \"z\"; the columns are c, kind");
  EXPECT_THROW_MSG(read_table(dir / "i.csv", net, TableOptions().targets({"label"}), fitted),
                   "i.csv: unknown column \"label\"; no feature columns \"a\" and \"b\" that the model was trained on; "
                   "the columns are c, kind");
}

TEST(Dataset, IntegerLabelsAreOutputIndices) {
  TempDir dir;
  spit(dir / "d.csv", "x,label\n0.5,2\n1.5,0\n");
  const Table table = read_table(dir / "d.csv", mlp(1, 3), TableOptions().task(Task::Classification));
  EXPECT_EQ(table.preprocessing.classes, (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_TRUE(torch::equal(std::get<0>(table.train.targets().sort()), torch::tensor({0, 2}, torch::kLong)));
  spit(dir / "e.csv", "x,label\n0.5,2\n1.5,3\n");
  EXPECT_THROW_MSG(
      read_table(dir / "e.csv", mlp(1, 3), TableOptions().task(Task::Classification)),
      "e.csv:3: column 2 (\"label\"): 3 is not an integer class label in [0, 3) (the network has 3 outputs)");
  spit(dir / "f.csv", "x,label\n0.5,a\n1.5,b\n2,c\n");
  EXPECT_THROW_MSG(read_table(dir / "f.csv", mlp(1, 2), TableOptions().task(Task::Classification)),
                   "f.csv: column \"label\" has 3 distinct class labels but the network has 2 outputs");
}

TEST(Dataset, SaysWhatWouldFitWhenTheTaskIsForgotten) {
  TempDir dir;
  spit(dir / "d.csv", table_csv());
  // Regression by default takes the last 3 columns as targets for 3 outputs.
  EXPECT_THROW_MSG(read_table(dir / "d.csv", mlp(2, 3)),
                   "d.csv: has 3 columns, too few for 3 target column(s) and at least one feature");
  spit(dir / "e.csv", "f0,f1,f2,f3,label\n1,2,3,4,0\n");
  EXPECT_THROW_MSG(
      read_table(dir / "e.csv", mlp(4, 3)),
      "e.csv: 2 feature columns (f0, f1) but the network has 4 inputs; if \"label\" holds class labels, set the task "
      "to classification (then the other 4 columns are the features)");
}

TEST(Dataset, WorksWithTorchDataLoaders) {
  auto [x, y] = cos_sin_data();
  Table table = table_from_tensors(x, y, TableOptions().validation_fraction(0.2).standardize(true).seed(1));
  EXPECT_EQ(*table.train.size(), 200u);
  EXPECT_EQ(*table.validation.size(), 50u);
  auto loader = torch::data::make_data_loader(table.train.map(torch::data::transforms::Stack<>()),
                                              torch::data::DataLoaderOptions(32));
  auto net = connex::nn::MLP(1, 2, 8, 1, NeuralNetworkOptions().hidden_activation("tanh"));
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-2));
  int64_t rows = 0, batches = 0;
  for (int epoch = 0; epoch < 3; ++epoch)
    for (auto& batch : *loader) {
      adam.zero_grad();
      auto loss = torch::mse_loss(net->forward(batch.data), batch.target);
      loss.backward();
      adam.step();
      rows += batch.data.size(0), ++batches;
      EXPECT_EQ(batch.data.sizes(), torch::IntArrayRef({batch.data.size(0), 1}));
      EXPECT_EQ(batch.target.size(1), 2);
    }
  EXPECT_EQ(rows, 600);
  EXPECT_EQ(batches, 3 * 7);
  // The training rows are standardized: mean 0, unbiased std 1.
  EXPECT_NEAR(table.train.inputs().mean().item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(table.train.inputs().std().item<double>(), 1.0, 1e-5);
}

TEST(Dataset, CheckpointsCarryThePreprocessing) {
  TempDir dir;
  spit(dir / "d.csv", table_csv());
  auto net = mlp(2, 3);
  const Table table = read_table(dir / "d.csv", net, TableOptions().task(Task::Classification).standardize(true));
  save(net, dir / "m.ckpt", nullptr, &table.preprocessing);
  const Checkpoint ck = load_checkpoint(dir / "m.ckpt");
  ASSERT_TRUE(ck.preprocessing);
  EXPECT_EQ(ck.preprocessing->to_json(), table.preprocessing.to_json());
  EXPECT_EQ(ck.preprocessing->mean, table.preprocessing.mean);  // bit for bit
  EXPECT_FALSE(load_checkpoint((save(net, dir / "n.ckpt"), dir / "n.ckpt")).preprocessing);
  // A preprocessing that does not fit is refused before anything is written.
  Preprocessing wrong = table.preprocessing;
  wrong.features.push_back("c"), wrong.mean.push_back(0), wrong.scale.push_back(1);
  EXPECT_THROW_MSG(save(net, dir / "w.ckpt", nullptr, &wrong),
                   "save(): " + dir / "w.ckpt" + ": the preprocessing: names 3 feature(s) for a network with 2 inputs");
  EXPECT_FALSE(std::filesystem::exists(dir / "w.ckpt"));
  // A crafted file is refused with the JSON path of the culprit.
  const std::string bytes = slurp(dir / "m.ckpt");
  spit(dir / "bad.ckpt", reseal_checkpoint(bytes, [](nlohmann::json& h, uint32_t&) {
         h["preprocessing"]["standardize"]["scale"][1] = 0;
       }));
  EXPECT_THROW_MSG(load_checkpoint(dir / "bad.ckpt"),
                   "/preprocessing/standardize/scale/1 must be a finite number > 0, got 0");
  spit(dir / "bad.ckpt", reseal_checkpoint(bytes, [](nlohmann::json& h, uint32_t&) {
         h["preprocessing"]["classes"] = {"a", "a"};
       }));
  EXPECT_THROW_MSG(load_checkpoint(dir / "bad.ckpt"), "/preprocessing: names a class twice");
  spit(dir / "bad.ckpt",
       reseal_checkpoint(bytes, [](nlohmann::json& h, uint32_t&) { h["preprocessing"]["task"] = 7; }));
  EXPECT_THROW_MSG(load_checkpoint(dir / "bad.ckpt"),
                   "/preprocessing/task must be \"regression\" or \"classification\", got 7");
}

TEST(TorchScriptExport, ChecksTheInputWithItsOwnMessage) {
  TempDir dir;
  auto net = mlp(3, 2);
  net->eval();
  export_torchscript(net, dir / "m.pt");
  auto m = torch::jit::load(dir / "m.pt");
  auto run = [&](const torch::Tensor& x) { return m.forward({x}).toTensor(); };
  auto message = [&](const torch::Tensor& x) {
    try {
      run(x);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(
      message(torch::randn({5, 4})).find("connex network: expected an input of shape [batch, 3] or [3], got [5, 4]"),
      std::string::npos)
      << message(torch::randn({5, 4}));
  EXPECT_NE(message(torch::randn({2, 2, 3})).find("got [2, 2, 3]"), std::string::npos);
  EXPECT_NE(
      message(torch::ones({2, 3}, torch::kComplexFloat)).find("expected a real-valued input, got a complex tensor"),
      std::string::npos);
  // float64, integer and bool inputs are cast to the network's float32.
  const auto x = torch::tensor({{1.0, -2.0, 0.5}, {3.0, 0.0, 1.0}}, torch::kFloat64);
  const auto expected = net->forward(x.to(torch::kFloat32));
  EXPECT_TRUE(torch::allclose(run(x), expected, 1e-6, 1e-6));
  EXPECT_TRUE(
      torch::allclose(run(x.to(torch::kLong)), net->forward(x.to(torch::kLong).to(torch::kFloat32)), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(run(x[0]), expected[0], 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(run(x.gt(0)), net->forward(x.gt(0).to(torch::kFloat32)), 1e-6, 1e-6));
  EXPECT_EQ(run(x).scalar_type(), torch::kFloat32);
}

TEST(TorchScriptExport, TakesRawRowsAndCarriesTheNames) {
  TempDir dir;
  spit(dir / "d.csv", table_csv());
  auto net = mlp(2, 3, torch::kFloat64);
  net->eval();
  const Table table = read_table(dir / "d.csv", net, TableOptions().task(Task::Classification).standardize(true));
  export_torchscript(net, dir / "m.pt", &table.preprocessing);
  auto m = torch::jit::load(dir / "m.pt");
  const auto raw = torch::tensor({{3.0, 90.0}, {11.0, 1210.0}}, torch::kFloat64);
  const auto expected = net->forward(table.preprocessing.apply(raw));
  EXPECT_TRUE(torch::allclose(m.forward({raw}).toTensor(), expected, 1e-12, 1e-12));
  auto strings = [&](const char* name) {
    std::vector<std::string> out;
    for (const auto& v : m.attr(name).toListRef()) out.push_back(v.toStringRef());
    return out;
  };
  EXPECT_EQ(strings("class_labels"), (std::vector<std::string>{"setosa", "versicolor", "virginica"}));
  EXPECT_EQ(strings("feature_names"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(strings("target_names"), (std::vector<std::string>{"species"}));
  // In eval mode, as its `training` attribute says (torch.jit.freeze and Python's m.training read it).
  ASSERT_TRUE(m.hasattr("training"));
  EXPECT_FALSE(m.is_training());
  m.train();
  EXPECT_TRUE(m.is_training());
  EXPECT_TRUE(torch::allclose(m.forward({raw}).toTensor(), expected, 1e-12, 1e-12));  // no dropout either way
  export_torchscript(net, dir / "plain.pt");
  EXPECT_TRUE(torch::jit::load(dir / "plain.pt").attr("class_labels").toListRef().empty());
  // An output added after training has no class: it is named, so class_labels[argmax] stays in range.
  const auto grown = edit(net).add_output_neurons({100}).add_connections({{net->hidden_neurons()[0], 100}}).build();
  export_torchscript(grown.network, dir / "grown.pt", &table.preprocessing);
  m = torch::jit::load(dir / "grown.pt");
  EXPECT_EQ(strings("class_labels"), (std::vector<std::string>{"setosa", "versicolor", "virginica", "output 100"}));
}

TEST(Network, TypedCloneIsADeepCopyWithFrozenEntries) {
  auto net = NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("relu").dtype(torch::kFloat64));
  net->freeze({{0, 1}}, {4});
  NeuralNetwork copy = connex::clone(net);  // a NeuralNetwork, no cast
  auto x = torch::linspace(0, 1, 7, torch::kFloat64).unsqueeze(1);
  EXPECT_TRUE(torch::equal(copy->forward(x), net->forward(x)));
  EXPECT_TRUE(copy->is_frozen(0, 1));
  EXPECT_FALSE(copy->is_frozen(0, 2));
  copy->set_weight(0, 2, 5.0);
  EXPECT_NE(net->weight(0, 2), 5.0);
  copy->forward(x).sum().backward();
  const auto& topo = copy->topology();
  EXPECT_EQ(copy->weight_tensor().grad()[topo.connection_index(topo.dense_of(0), topo.dense_of(1))].item<double>(),
            0.0);
  EXPECT_EQ(copy->bias_tensor().grad()[topo.bias_index(topo.dense_of(4))].item<double>(), 0.0);
  EXPECT_NE(copy->weight_tensor().grad()[topo.connection_index(topo.dense_of(0), topo.dense_of(2))].item<double>(),
            0.0);
  EXPECT_FALSE(net->weight_tensor().grad().defined());
  EXPECT_THROW_MSG(connex::clone(NeuralNetwork(nullptr)), "clone(): the network is empty");
}

// optimizer_after_edit: the type, every group and its options, and the state.
TEST(OptimizerAfterEdit, KeepsTypeGroupsOptionsAndState) {
  using namespace torch::optim;
  auto [x, y] = cos_sin_data(torch::kFloat64);
  for (const std::string type : {"adam", "adamw", "sgd", "rmsprop", "adagrad"}) {
    auto net = NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("tanh").dtype(torch::kFloat64));
    // Two groups: weights at one learning rate, biases at another.
    std::vector<OptimizerParamGroup> groups;
    auto options = [&](double lr) -> std::unique_ptr<OptimizerOptions> {
      if (type == "adam") return std::make_unique<AdamOptions>(AdamOptions(lr).betas({0.8, 0.95}).weight_decay(1e-3));
      if (type == "adamw") return std::make_unique<AdamWOptions>(AdamWOptions(lr).amsgrad(true));
      if (type == "sgd") return std::make_unique<SGDOptions>(SGDOptions(lr).momentum(0.7).nesterov(true));
      if (type == "rmsprop") return std::make_unique<RMSpropOptions>(RMSpropOptions(lr).momentum(0.5).centered(true));
      return std::make_unique<AdagradOptions>(AdagradOptions(lr).lr_decay(0.01));
    };
    groups.emplace_back(std::vector<torch::Tensor>{net->weight_tensor()}, options(0.02));
    groups.emplace_back(std::vector<torch::Tensor>{net->bias_tensor()}, options(0.005));
    auto optimizer = make_optimizer(type, std::move(groups));
    for (int step = 0; step < 3; ++step) {
      optimizer->zero_grad();
      torch::mse_loss(net->forward(x), y).backward();
      optimizer->step();
    }
    auto r = connex::edit(net)
                 .remove_connections({{8, 11}})
                 .add_hidden_neurons({100})
                 .add_connections({{0, 100}, {100, 11}})
                 .build(4);
    auto next = optimizer_after_edit(*optimizer, net, r);
    EXPECT_EQ(optimizer_type_name(*next), type);
    ASSERT_EQ(next->param_groups().size(), 2u) << type;
    for (size_t g = 0; g < 2; ++g)
      EXPECT_EQ(optimizer_options_to_json(next->param_groups()[g].options()),
                optimizer_options_to_json(optimizer->param_groups()[g].options()))
          << type;
    EXPECT_TRUE(next->param_groups()[0].params()[0].is_same(r.network->weight_tensor()));
    EXPECT_TRUE(next->param_groups()[1].params()[0].is_same(r.network->bias_tensor()));
    // The state equals what transfer_optimizer_state gives an optimizer built by hand with the same options.
    std::vector<OptimizerParamGroup> by_hand;
    by_hand.emplace_back(std::vector<torch::Tensor>{r.network->weight_tensor()}, options(0.02));
    by_hand.emplace_back(std::vector<torch::Tensor>{r.network->bias_tensor()}, options(0.005));
    auto manual = make_optimizer(type, std::move(by_hand));
    transfer_optimizer_state(*optimizer, net, *manual, r);
    for (const auto& p : r.network->parameters()) {
      const auto key = connex::optimizer_state_key(p);
      ASSERT_EQ(next->state().count(key), manual->state().count(key)) << type;
      if (!next->state().count(key)) continue;
      const auto a = state_fields(*next->state().at(key)), b = state_fields(*manual->state().at(key));
      EXPECT_EQ(a.step, b.step);
      for (size_t f = 0; f < a.tensors.size(); ++f)
        EXPECT_TRUE(a.tensors[f].second.defined() ? torch::equal(a.tensors[f].second, b.tensors[f].second)
                                                  : !b.tensors[f].second.defined())
            << type << " " << a.tensors[f].first;
    }
  }
}

TEST(OptimizerAfterEdit, RestoredFromACheckpointWithItsLearningRate) {
  TempDir dir;
  auto [x, y] = cos_sin_data();
  auto net = NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.01).betas({0.85, 0.99}));
  for (int step = 0; step < 2; ++step) {
    adam.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    adam.step();
  }
  save(net, dir / "m.ckpt", &adam);
  const Checkpoint ck = load_checkpoint(dir / "m.ckpt");
  auto restored = restore_optimizer(ck, dir / "m.ckpt");
  EXPECT_EQ(optimizer_type_name(*restored), "adam");
  EXPECT_EQ(restored->param_groups()[0].options().get_lr(), 0.01);
  EXPECT_EQ(optimizer_options_to_json(restored->param_groups()[0].options()),
            optimizer_options_to_json(adam.param_groups()[0].options()));
  // One more step from the restored optimizer equals one more step of the original.
  NeuralNetwork resumed = ck.network;
  auto step = [&](NeuralNetwork& n, torch::optim::Optimizer& o) {
    o.zero_grad();
    torch::mse_loss(n->forward(x), y).backward();
    o.step();
  };
  step(net, adam);
  step(resumed, *restored);
  EXPECT_TRUE(torch::equal(net->weight_tensor(), resumed->weight_tensor()));
  save(net, dir / "plain.ckpt");
  EXPECT_THROW_MSG(restore_optimizer(load_checkpoint(dir / "plain.ckpt"), "plain.ckpt"),
                   "restore_optimizer(): plain.ckpt holds no optimizer state");
}

TEST(OptimizerAfterEdit, AParameterLeftOutStaysOut) {
  auto net = NeuralNetwork(readme_spec(), NeuralNetworkOptions().hidden_activation("relu"));
  torch::optim::Adam weights_only({net->weight_tensor()}, torch::optim::AdamOptions(0.01));
  auto r = connex::edit(net).remove_connections({{8, 11}}).build();
  auto next = optimizer_after_edit(weights_only, net, r);
  ASSERT_EQ(next->param_groups().size(), 1u);
  ASSERT_EQ(next->param_groups()[0].params().size(), 1u);
  EXPECT_TRUE(next->param_groups()[0].params()[0].is_same(r.network->weight_tensor()));
}

TEST(Dataset, ColumnsThatAreNotFeaturesMayHoldAnything) {
  TempDir dir;
  // Even a name or cell that is not UTF-8 (Latin-1 "é"): only the chosen columns' names are recorded.
  spit(dir / "d.csv", "id,nam\xe9,a,b,kind\n1,Braund\xe9,0.5,2,x\n2,Cumings,1.5,3,y\n");
  const Table table = read_table(dir / "d.csv", mlp(2, 2),
                                 TableOptions().task(Task::Classification).features({"a", "b"}).targets({"kind"}));
  EXPECT_EQ(table.train.inputs().size(1), 2);
  EXPECT_EQ(table.preprocessing.classes, (std::vector<std::string>{"x", "y"}));
  // A stray word among integer labels, or an empty label, is named, not made a class.
  spit(dir / "e.csv", "a,b,label\n1,2,0\n3,4,1\n5,6,?\n7,8,1\n");
  EXPECT_THROW_MSG(
      read_table(dir / "e.csv", mlp(2, 12), TableOptions().task(Task::Classification)),
      "e.csv:4: column 3 (\"label\"): \"?\" is not a class label like the others (integer output indices)");
  spit(dir / "f.csv", "a,b,label\n1,2,x\n3,4,\n");
  EXPECT_THROW_MSG(read_table(dir / "f.csv", mlp(2, 2), TableOptions().task(Task::Classification)),
                   "f.csv:3: column 3 (\"label\"): the class label is empty");
  // The table's inputs take the network's dtype unless told otherwise.
  spit(dir / "g.csv", "a,b,y\n1,2,3\n");
  EXPECT_EQ(read_table(dir / "g.csv", mlp(2, 1, torch::kFloat64)).train.inputs().scalar_type(), torch::kFloat64);
}

// read_targets: the columns a trained model names as targets, found by name
// in any order among others, in file order, as training reads them (class
// indices by the fitted classes; float values in the network's dtype); a
// missing column, an unknown class or a value whose square overflows is named.
TEST(Dataset, ReadTargetsTakesTheTrainedColumnsByName) {
  const NeuralNetwork classifier = mlp(2, 3);
  const Table table = table_from_csv(parse_csv(table_csv(), "t.csv", {"species"}), classifier,
                                     TableOptions().task(Task::Classification));
  ASSERT_EQ(table.preprocessing.classes, (std::vector<std::string>{"setosa", "versicolor", "virginica"}));
  const auto csv =
      parse_csv("species,note,b,a\nsetosa,x,1,2\nvirginica,y,3,4\nversicolor,z,5,6\n", "n.csv", {"species", "note"});
  const auto labels = read_targets(csv, classifier, table.preprocessing);
  EXPECT_EQ(labels.scalar_type(), torch::kLong);
  EXPECT_TRUE(torch::equal(labels, torch::tensor({0, 2, 1}, torch::kLong)));
  EXPECT_THROW_MSG(
      read_targets(parse_csv("a,b,species\n1,2,oak\n", "o.csv", {"species"}), classifier, table.preprocessing),
      "o.csv:2: column 3 (\"species\"): \"oak\" is not one of the classes the model was trained on "
      "(setosa, versicolor, virginica)");
  EXPECT_THROW_MSG(read_targets(parse_csv("a,b\n1,2\n", "m.csv"), classifier, table.preprocessing),
                   "m.csv: no column \"species\", a target the model was trained on; the columns are a, b");

  const NeuralNetwork regressor = mlp(1, 2, torch::kFloat64);
  Preprocessing fitted;
  fitted.features = {"x"};
  fitted.targets = {"y1", "y2"};
  const auto values = read_targets(parse_csv("y2,x,y1\n0.25,7,-1.5\n3,8,1e100\n", "r.csv"), regressor, fitted);
  EXPECT_EQ(values.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(values, torch::tensor({{-1.5, 0.25}, {1e100, 3.0}}, torch::kFloat64)));
  EXPECT_THROW_MSG(read_targets(parse_csv("x,y1,y2\n1,2,1e30\n", "f.csv"), mlp(1, 2), fitted),
                   "f.csv:2: column 3 (\"y2\"): 1e+30 is too large to score in Float (|value| must stay below "
                   "1.8e+19, so that squared errors stay finite); rescale the column");
  // The preprocessing must fit the network, as for read_inputs.
  EXPECT_THROW_MSG(read_targets(parse_csv("x,y1\n1,2\n", "g.csv"), mlp(1, 1), fitted),
                   "read_targets(): names 2 target(s) for a network with 1 outputs");
}

// Tensors are checked as CSV cells are: NaN, infinities and values too
// large to train on (in float64 before standardizing, in the table's dtype
// after) are refused naming the row, column and value; so is a standardized
// value out of range in a table read with a fitted preprocessing.
TEST(Dataset, TensorValuesMustBeTrainable) {
  const auto y = torch::zeros({3, 1}, torch::kFloat64);
  const auto nan = std::numeric_limits<double>::quiet_NaN();
  auto x = torch::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, torch::kFloat64).view({3, 2});
  x[2][1] = nan;
  EXPECT_THROW_MSG(table_from_tensors(x, y),
                   "table_from_tensors(): row 2, feature 1 (\"x1\"): nan is not a finite number");
  x[2][1] = 2e19;  // within float64, too large to train on in float32
  EXPECT_THROW_MSG(table_from_tensors(x, y),
                   "table_from_tensors(): row 2, feature 1 (\"x1\"): 2e+19 is too large to train on in Float (|value| "
                   "must stay below 1.8e+19, so that squared errors stay finite); rescale the column");
  EXPECT_NO_THROW(table_from_tensors(x, y, TableOptions().dtype(torch::kFloat64)));
  EXPECT_NO_THROW(table_from_tensors(x, y, TableOptions().standardize(true)));  // standardized, it is small
  // Past what float64 squares, for the fit.
  x[2][1] = 2e154;
  EXPECT_THROW_MSG(table_from_tensors(x, y, TableOptions().standardize(true)),
                   "table_from_tensors(): row 2, feature 1 (\"x1\"): 2e+154 is too large to standardize (|value| must "
                   "stay below 1.3e+154, so that squared errors stay finite); rescale the column");
  x[2][1] = 6;
  auto bad_y = y.clone();
  bad_y[1][0] = -std::numeric_limits<double>::infinity();
  EXPECT_THROW_MSG(table_from_tensors(x, bad_y),
                   "table_from_tensors(): row 1, target 0 (\"y0\"): -inf is not a finite number");
  // A fitted standardization: 1e-5 standardizes to 1e+25.
  Preprocessing fitted;
  fitted.task = Task::Regression, fitted.features = {"a", "b"}, fitted.targets = {"y"};
  fitted.mean = {0.0, 0.0}, fitted.scale = {1.0, 1e-30};
  x[0][1] = 1e-5;
  EXPECT_THROW_MSG(
      table_from_tensors(x, y, {}, fitted),
      "table_from_tensors(): row 0, feature 1 (\"b\"): 1e-05 standardizes to 1e+25, too large to train on "
      "in Float (|value| must stay below 1.8e+19, so that squared errors stay finite); rescale the column");
  EXPECT_THROW_MSG(table_from_csv(parse_csv("a,b,y\n1,0,0\n2,1e-5,0\n", "s.csv"), nn::MLP(2, 1, 4, 1), {}, fitted),
                   "s.csv:3: column 2 (\"b\"): 1e-05 standardizes to 1e+25, too large to train on in Float (|value| "
                   "must stay below 1.8e+19, so that squared errors stay finite); rescale the column");
  // Target columns other than the preprocessing's are refused, not read past its names.
  EXPECT_THROW_MSG(table_from_tensors(x, torch::zeros({3, 2}, torch::kFloat64), {}, fitted),
                   "table_from_tensors(): 2 target columns, but the preprocessing names 1");
  fitted.scale = {1.0, 1e-20};
  const auto table = table_from_tensors(x, y, TableOptions().dtype(torch::kFloat64), fitted);
  EXPECT_DOUBLE_EQ(table.train.inputs().select(1, 1).min().item<double>(), 1e15);
}

TEST(Dataset, TensorsWithAFittedPreprocessingAreCheckedLikeFiles) {
  Preprocessing fitted;
  fitted.task = Task::Classification, fitted.features = {"x0"}, fitted.targets = {"label"}, fitted.classes = {"a", "b"};
  const auto x = torch::randn({4, 1}, torch::kFloat64);
  EXPECT_THROW_MSG(table_from_tensors(x, torch::tensor({0, 1, 2, 0}, torch::kLong), {}, fitted),
                   "table_from_tensors(): class labels must be in [0, 2) (the preprocessing's classes), got [0, 2]");
  EXPECT_THROW_MSG(
      table_from_tensors(x, torch::tensor({0, 1, 1, 0}, torch::kLong), TableOptions().task(Task::Regression), fitted),
      "table_from_tensors(): the model was trained for classification, not regression");
  EXPECT_THROW_MSG(fitted.apply(torch::zeros({3, 2})),
                   "Preprocessing::apply(): expected raw rows [rows, 1] (x0), got [3, 2]");
}

// What a preprocessing or a table cannot hold is refused where it enters:
// integer raw rows (standardized values would be truncated), a mean or
// scale a checkpoint could not store (save() wrote files load() refused),
// an integer table dtype, no rows; a table holds no autograd history.
TEST(Dataset, PreprocessingAndTablesRefuseWhatTheyCannotHold) {
  Preprocessing p;
  p.features = {"a", "b"};
  p.targets = {"y"};
  p.mean = {1.0, 2.0};
  p.scale = {0.5, 4.0};
  EXPECT_TRUE(torch::equal(p.apply(torch::tensor({{2.0, 6.0}}, torch::kFloat64)),
                           torch::tensor({{2.0, 1.0}}, torch::kFloat64)));
  EXPECT_THROW_MSG(p.apply(torch::ones({2, 2}, torch::kLong)),
                   "Preprocessing::apply(): expected floating-point raw rows, got Long; convert them first");
  const NeuralNetwork net = mlp(2, 1);
  TempDir dir;
  for (auto [mean, scale, message] : std::vector<std::tuple<double, double, std::string>>{
           {std::nan(""), 1.0, "the mean of feature \"b\" is nan, not a finite number"},
           {0.0, 0.0, "the scale of feature \"b\" is 0, not a finite number > 0"},
           {0.0, -HUGE_VAL, "the scale of feature \"b\" is -inf, not a finite number > 0"}}) {
    Preprocessing bad = p;
    bad.mean[1] = mean, bad.scale[1] = scale;
    EXPECT_THROW_MSG(bad.apply(torch::ones({1, 2})), "Preprocessing::apply(): " + message);
    EXPECT_THROW_MSG(save(net, dir / "p.ckpt", nullptr, &bad), "the preprocessing: " + message);
    EXPECT_FALSE(std::filesystem::exists(dir / "p.ckpt"));
    EXPECT_THROW_MSG(export_torchscript(net, dir / "p.pt", &bad),
                     "export_torchscript(): the preprocessing: " + message);
  }
  p.mean.pop_back();
  EXPECT_THROW_MSG(p.apply(torch::ones({1, 2})),
                   "Preprocessing::apply(): the standardization has 1 means and 2 scales for 2 features");

  const auto x = torch::randn({4, 2}), y = torch::randn({4, 1});
  EXPECT_THROW_MSG(
      table_from_tensors(x, y, TableOptions().dtype(torch::kInt)),
      "table_from_tensors(): the table's dtype must be one of float32, float64, float16, bfloat16, got Int");
  EXPECT_THROW_MSG(table_from_csv(parse_csv("a,b,y\n1,2,3\n", "i.csv"), net, TableOptions().dtype(torch::kLong)),
                   "i.csv: the table's dtype must be one of float32, float64, float16, bfloat16, got Long");
  EXPECT_THROW_MSG(table_from_tensors(torch::zeros({0, 2}), torch::zeros({0, 1})),
                   "table_from_tensors(): expected at least one row, got none");
  const auto leaf = x.clone().requires_grad_(true);
  const Table table = table_from_tensors(leaf, y.clone().requires_grad_(true), TableOptions().dtype(torch::kFloat32));
  EXPECT_FALSE(table.train.inputs().requires_grad());
  EXPECT_FALSE(table.train.targets().requires_grad());
  EXPECT_TRUE(torch::equal(std::get<0>(table.train.inputs().flatten().sort()), std::get<0>(x.flatten().sort())));
}
