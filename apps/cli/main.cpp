// connex: the command line. Subcommands train, prune, edit, export, inspect
// and bench; every failure is one line on stderr and a non-zero exit, and
// files are only ever written whole (temporary file + rename).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "connex/file_io.h"
#include "training.h"

namespace fs = std::filesystem;
using namespace connex;
using namespace connex::cli;

namespace {

// The README network, used by `connex train` without a config.
constexpr const char* kReadmeConfig = R"({
  "format": "connex-network", "version": 1,
  "graph": {"adjacency": {"0": [1, 2, 3], "1": [4], "2": [4, 5], "4": [6], "5": [7], "6": [8, 9],
                          "7": [10], "8": [11], "9": [11], "10": [11]},
            "inputs": [0], "outputs": [3, 11]},
  "options": {"hidden_activation": "relu"}
})";

bool is_checkpoint(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char magic[8] = {};
  const size_t n = std::fread(magic, 1, 8, f);
  std::fclose(f);
  return n == 8 && std::string(magic, 8) == "CONNEXCK";
}

// A checkpoint or a JSON config; empty path: the embedded README network.
Checkpoint open_network(const std::string& path) {
  if (path.empty()) return {network_from_config(nlohmann::json::parse(kReadmeConfig), "embedded README config"), "", ""};
  if (!fs::exists(path)) fail("{}: no such file", path);
  if (is_checkpoint(path)) return load_checkpoint(path);
  return {load_config(path), "", ""};
}

NeuronId parse_id(const std::string& text, const NeuralNetwork& network, const std::string& what) {
  if (network->spec().id_kind() == NeuronId::Kind::String) return NeuronId(text);
  auto value = parse_integer(text);
  if (!value) fail("{}: \"{}\" is not an integer neuron id (this network's ids are integers)", what, text);
  return NeuronId(*value);
}

Edge parse_edge(const std::string& text, const NeuralNetwork& network, const std::string& what) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos) fail("{}: \"{}\" is not of the form FROM:TO", what, text);
  return {parse_id(text.substr(0, colon), network, what), parse_id(text.substr(colon + 1), network, what)};
}

// Runs a program found on PATH with these arguments, without a shell; its exit
// status, or 127 when it cannot be started.
int run_program(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return 127;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda") {
    if (!torch::cuda::is_available())
      fail("--device cuda: CUDA is not available (no GPU, or this LibTorch was built without CUDA)");
    return torch::kCUDA;
  }
  fail("--device must be cpu or cuda, got \"{}\"", name);
}

struct DataArgs {
  std::string data, task = "regression";
  std::vector<std::string> targets, features;
  bool standardize = false;
  void add_to(CLI::App* cmd) {
    cmd->add_option("--data", data, "CSV file with a header row (default: built-in cos/sin toy data)");
    cmd->add_option("--target", targets, "target column(s) (default: the last column(s))");
    cmd->add_option("--features", features, "feature columns (default: every non-target column)");
    cmd->add_option("--task", task, "regression (MSE) or classification (softmax + cross-entropy)")->check(CLI::IsMember({"regression", "classification"}));
    cmd->add_flag("--standardize", standardize, "z-score every feature column");
  }
  DataOptions options() const { return {data, targets, features, task == "classification" ? Task::Classification : Task::Regression, standardize}; }
};

struct TrainArgs {
  int epochs = 1000;
  int64_t batch_size = 0;
  double lr = 1e-3, val_split = 0.0;
  std::string optimizer = "adam", device = "cpu";
  uint64_t seed = 0;
  void add_to(CLI::App* cmd, int default_epochs) {
    epochs = default_epochs;
    cmd->add_option("--epochs", epochs, "epochs")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_option("--batch-size", batch_size, "mini-batch size (0: full batch)")->check(CLI::NonNegativeNumber);
    cmd->add_option("--lr", lr, "learning rate")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--optimizer", optimizer, "adam, adamw or sgd (momentum 0.9)")->check(CLI::IsMember({"adam", "adamw", "sgd"}));
    cmd->add_option("--seed", seed, "seed for the split, shuffling and new parameters");
    cmd->add_option("--device", device, "cpu or cuda");
    cmd->add_option("--val-split", val_split, "fraction of rows held out for validation")->check(CLI::Range(0.0, 0.9));
  }
};

// Writes every file of a training run into `out`, each atomically.
void write_run(const std::string& out, const NeuralNetwork& net, const torch::optim::Optimizer& optimizer,
               const std::vector<EpochMetrics>& history) {
  fs::create_directories(out);
  save(net, (fs::path(out) / "model.ckpt").string(), &optimizer);
  write_file_atomically((fs::path(out) / "metrics.csv").string(), metrics_csv(history), "train");
  write_file_atomically((fs::path(out) / "metrics.json").string(), metrics_json(history).dump(1) + "\n", "train");
  try {
    save_config(net, (fs::path(out) / "config.json").string());
  } catch (const Error& e) {
    spdlog::warn("config.json not written: {}", e.what());
  }
}

void restore_optimizer(const Checkpoint& ck, torch::optim::Optimizer& optimizer, const std::string& type, const std::string& path) {
  if (ck.optimizer_state.empty()) return;
  if (ck.optimizer_type != type) {
    spdlog::info("{} holds {} state; starting {} fresh", path, ck.optimizer_type, type);
    return;
  }
  load_optimizer_state(ck, optimizer, path);
  spdlog::info("resumed {} state from {}", type, path);
}

int cmd_train(const std::string& config, const DataArgs& d, const TrainArgs& t, const std::string& out) {
  auto device = parse_device(t.device);
  Checkpoint ck = open_network(config);
  NeuralNetwork net = ck.network;
  Dataset data = load_dataset(d.options(), net);  // checks sizes before anything runs
  if (!out.empty() && fs::exists(out) && !fs::is_directory(out)) fail("--out {} exists and is not a directory", out);
  net->to(device);
  auto optimizer = make_optimizer(t.optimizer, net, t.lr);
  restore_optimizer(ck, *optimizer, t.optimizer, config);
  spdlog::info("{}", c10::str(*net));
  spdlog::info("data: {} ({} rows, features {}, targets {})", data.source, data.x.size(0), fmt::join(data.feature_names, ","),
               fmt::join(data.target_names, ","));
  TrainOptions options;
  options.epochs = t.epochs, options.batch_size = t.batch_size, options.lr = t.lr, options.optimizer = t.optimizer;
  options.seed = t.seed, options.val_split = t.val_split, options.device = device, options.task = d.options().task;
  auto result = train(net, *optimizer, data, options);
  auto [loss, metric] = evaluate(net, result.train_x, result.train_y, options.task);
  spdlog::info("final training loss {:.6f}{}", loss, options.task == Task::Classification ? fmt::format(", accuracy {:.4f}", metric) : "");
  if (!result.history.empty() && !std::isnan(result.history.back().val_metric))
    spdlog::info("validation {} {:.6f}", options.task == Task::Classification ? "accuracy" : "mse", result.history.back().val_metric);
  if (!out.empty()) {
    net->to(torch::kCPU);
    write_run(out, net, *optimizer, result.history);
    spdlog::info("wrote {}/model.ckpt, metrics.csv, metrics.json, config.json", out);
  }
  return 0;
}

int cmd_prune(const std::string& path, std::optional<double> threshold, std::optional<double> fraction, const DataArgs& d,
              const TrainArgs& t, const std::string& out) {
  if (threshold.has_value() == fraction.has_value()) fail("prune: give exactly one of --threshold and --fraction");
  if (threshold && !(*threshold >= 0 && std::isfinite(*threshold))) fail("prune: --threshold must be a finite number >= 0, got {}", *threshold);
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  Dataset data = load_dataset(d.options(), net);
  const Task task = d.options().task;
  auto graph = net->weighted_graph();
  std::vector<std::pair<double, Edge>> by_strength;
  for (const auto& c : graph.connections) by_strength.push_back({std::abs(c.weight), {c.from, c.to}});
  std::sort(by_strength.begin(), by_strength.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Edge> weak;
  if (threshold) {
    for (const auto& [w, e] : by_strength)
      if (w < *threshold) weak.push_back(e);
  } else {
    const auto count = static_cast<size_t>(std::llround(*fraction * static_cast<double>(by_strength.size())));
    for (size_t i = 0; i < count; ++i) weak.push_back(by_strength[i].second);
  }
  auto optimizer = make_optimizer(t.optimizer, net, t.lr);
  restore_optimizer(ck, *optimizer, t.optimizer, path);
  auto [loss_before, metric_before] = evaluate(net, data.x, data.y, task);
  auto result = edit(net).remove_connections(weak).build(t.seed);
  NeuralNetwork pruned = result.network;
  auto next = make_optimizer(t.optimizer, pruned, t.lr);
  transfer_optimizer_state(*optimizer, net, *next, result);
  auto [loss_after, metric_after] = evaluate(pruned, data.x, data.y, task);
  std::printf("connections: %lld -> %lld (removed %zu)\n", static_cast<long long>(net->num_connections()),
              static_cast<long long>(pruned->num_connections()), weak.size());
  std::printf("loss: %.6f -> %.6f after pruning\n", loss_before, loss_after);
  std::vector<EpochMetrics> history;
  if (t.epochs > 0) {
    TrainOptions options;
    options.epochs = t.epochs, options.batch_size = t.batch_size, options.lr = t.lr, options.seed = t.seed, options.task = task;
    history = train(pruned, *next, data, options).history;
    auto [loss_trained, metric] = evaluate(pruned, data.x, data.y, task);
    std::printf("loss: %.6f after %d more epochs\n", loss_trained, t.epochs);
  }
  if (!out.empty()) {
    save(pruned, out, next.get());
    std::printf("wrote %s\n", out.c_str());
  }
  return 0;
}

struct EditArgs {
  std::vector<std::string> add_connection, remove_connection, add_input, add_hidden, add_output, remove_neuron;
  std::optional<double> dropout;
  uint64_t seed = 0;
};

int cmd_edit(const std::string& path, const EditArgs& a, const std::string& out) {
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  auto ids = [&](const std::vector<std::string>& texts, const char* what) {
    std::vector<NeuronId> v;
    for (const auto& t : texts) v.push_back(parse_id(t, net, what));
    return v;
  };
  auto edges = [&](const std::vector<std::string>& texts, const char* what) {
    std::vector<Edge> v;
    for (const auto& t : texts) v.push_back(parse_edge(t, net, what));
    return v;
  };
  // Neurons first, so new neurons can be wired in the same command.
  auto editor = edit(net);
  editor.add_input_neurons(ids(a.add_input, "--add-input"))
      .add_hidden_neurons(ids(a.add_hidden, "--add-hidden"))
      .add_output_neurons(ids(a.add_output, "--add-output"))
      .add_connections(edges(a.add_connection, "--add-connection"))
      .remove_connections(edges(a.remove_connection, "--remove-connection"))
      .remove_neurons(ids(a.remove_neuron, "--remove-neuron"));
  if (a.dropout) editor.set_dropout_p(*a.dropout);
  auto result = editor.build(a.seed);
  std::unique_ptr<torch::optim::Optimizer> next;
  if (!ck.optimizer_state.empty() && ck.optimizer_type != "other" && ck.optimizer_type != "rmsprop" && ck.optimizer_type != "adagrad") {
    auto old_optimizer = make_optimizer(ck.optimizer_type, net, 1e-3);
    load_optimizer_state(ck, *old_optimizer, path);
    next = make_optimizer(ck.optimizer_type, result.network, 1e-3);
    transfer_optimizer_state(*old_optimizer, net, *next, result);
  }
  save(result.network, out, next.get());
  std::printf("%s\nwrote %s%s\n", c10::str(*result.network).c_str(), out.c_str(), next ? " (optimizer state carried)" : "");
  return 0;
}

int cmd_export(const std::string& path, const std::string& format, const std::string& out) {
  NeuralNetwork net = open_network(path).network;
  if (format == "torchscript") {
    export_torchscript(net, out);
  } else if (format == "json" || format == "graphml" || format == "dot") {
    const std::string text = format == "json" ? to_node_link_json(net).dump(1) + "\n" : format == "graphml" ? to_graphml(net) : to_dot(net);
    write_file_atomically(out, text, "export");
  } else {  // png through Graphviz, run directly (no shell: the paths are the user's)
    const std::string dot_file = out + ".dot.tmp", png_tmp = out + ".tmp.png";
    write_file_atomically(dot_file, to_dot(net), "export");
    const int status = run_program({"dot", "-Tpng", "-o", png_tmp, dot_file});
    fs::remove(dot_file);
    if (status == 127) fail("export --format png needs Graphviz's dot, which is not installed");
    if (status != 0) {
      fs::remove(png_tmp);
      fail("export: dot failed to draw {}", out);
    }
    fs::rename(png_tmp, out);
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int cmd_inspect(const std::string& path) {
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  const auto& topo = net->topology();
  std::printf("%s\n", c10::str(*net).c_str());
  std::printf("inputs  (%lld): %s\n", static_cast<long long>(net->num_inputs()), join_ids(net->input_neurons()).c_str());
  std::printf("outputs (%lld): %s\n", static_cast<long long>(net->num_outputs()), join_ids(net->output_neurons()).c_str());
  const auto hidden = net->hidden_neurons();
  std::printf("hidden  (%zu)%s\n", hidden.size(), hidden.size() <= 40 ? (": " + join_ids(hidden)).c_str() : "");
  std::printf("connections: %lld\ndepth: %lld\nparameters: %lld\n", static_cast<long long>(net->num_connections()),
              static_cast<long long>(topo.depth()), static_cast<long long>(net->num_parameters()));
  std::string sizes;
  std::map<std::string, int> kernels;
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    sizes += (l > 1 ? " " : "") + std::to_string(topo.levels()[l].size());
    ++kernels[kernel_name(topo.levels()[l].kernel)];
  }
  std::printf("batch sizes: %s\n", sizes.c_str());
  std::string kernel_text;
  for (const auto& [k, n] : kernels) kernel_text += fmt::format("{}{} × {}", kernel_text.empty() ? "" : ", ", n, k);
  std::printf("batch kernels: %s\n", kernel_text.c_str());
  std::string ops;
  for (const auto& op : net->operations()) ops += (ops.empty() ? "" : ", ") + op->name();
  std::printf("techniques: %s\n", ops.empty() ? "none" : ops.c_str());
  double max_p = 0;
  int dropped = 0;
  for (const auto& n : net->weighted_graph().neurons) {
    max_p = std::max(max_p, n.dropout_p);
    dropped += n.dropout_p > 0;
  }
  std::printf("dropout: %d neurons with p > 0 (max %.3g)\n", dropped, max_p);
  if (!ck.optimizer_state.empty()) std::printf("optimizer state: %s\n", ck.optimizer_type.c_str());
  return 0;
}

int cmd_bench(const std::vector<std::string>& args) {
  // The benchmark program sits beside this one.
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const fs::path bench = self.parent_path() / "connex_bench";
  if (!fs::exists(bench)) fail("bench: {} is missing; build the connex_bench target", bench.string());
  std::vector<char*> argv{const_cast<char*>(bench.c_str())};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(bench.c_str(), argv.data());
  fail("bench: cannot run {}", bench.string());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"connex: train, prune, edit, export and inspect DAG neural networks"};
  app.require_subcommand(1);
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--threads", threads, "intra-op threads (default: all cores)")->check(CLI::Range(1, 1024));

  std::string config, path, out, format;
  DataArgs data;
  TrainArgs train_args, prune_train;
  std::optional<double> threshold, fraction;
  EditArgs edit_args;
  std::vector<std::string> bench_args;

  auto* train_cmd = app.add_subcommand("train", "train a network from a JSON config or checkpoint");
  train_cmd->add_option("config", config, "JSON config or checkpoint (default: the README network)");
  data.add_to(train_cmd);
  train_args.add_to(train_cmd, 1000);
  train_cmd->add_option("--out", out, "directory for model.ckpt, metrics.csv, metrics.json, config.json");

  auto* prune_cmd = app.add_subcommand("prune", "remove the weakest connections by |w|, optionally train on");
  prune_cmd->add_option("checkpoint", path, "checkpoint or config")->required();
  prune_cmd->add_option("--threshold", threshold, "remove connections with |w| below this");
  prune_cmd->add_option("--fraction", fraction, "remove this fraction of connections, weakest first")->check(CLI::Range(0.0, 1.0));
  data.add_to(prune_cmd);
  prune_train.add_to(prune_cmd, 0);
  prune_cmd->add_option("--out", out, "write the pruned checkpoint here");

  auto* edit_cmd = app.add_subcommand("edit", "add and remove neurons and connections");
  edit_cmd->add_option("checkpoint", path, "checkpoint or config")->required();
  edit_cmd->add_option("--add-connection", edit_args.add_connection, "FROM:TO")->allow_extra_args(false);
  edit_cmd->add_option("--remove-connection", edit_args.remove_connection, "FROM:TO")->allow_extra_args(false);
  edit_cmd->add_option("--add-input", edit_args.add_input, "new input neuron (comes first)")->allow_extra_args(false);
  edit_cmd->add_option("--add-hidden", edit_args.add_hidden, "new hidden neuron")->allow_extra_args(false);
  edit_cmd->add_option("--add-output", edit_args.add_output, "new output neuron (comes last)")->allow_extra_args(false);
  edit_cmd->add_option("--remove-neuron", edit_args.remove_neuron, "neuron to remove")->allow_extra_args(false);
  edit_cmd->add_option("--dropout", edit_args.dropout, "dropout p for every hidden neuron")->check(CLI::Range(0.0, 1.0));
  edit_cmd->add_option("--seed", edit_args.seed, "seed for new parameters");
  edit_cmd->add_option("--out", out, "write the edited checkpoint here")->required();

  auto* export_cmd = app.add_subcommand("export", "write a network as TorchScript, JSON, GraphML, DOT or PNG");
  export_cmd->add_option("checkpoint", path, "checkpoint or config")->required();
  export_cmd->add_option("--format", format, "torchscript, json, graphml, dot or png")->required()
      ->check(CLI::IsMember({"torchscript", "json", "graphml", "dot", "png"}));
  export_cmd->add_option("--out", out, "output file")->required();

  auto* inspect_cmd = app.add_subcommand("inspect", "describe a checkpoint or config");
  inspect_cmd->add_option("file", path, "checkpoint or config")->required();

  auto* bench_cmd = app.add_subcommand("bench", "run the benchmark program (options pass through)");
  bench_cmd->allow_extras();
  bench_cmd->prefix_command();

  if (argc > 1 && argv[1][0] != '-') {
    const std::string first = argv[1];
    bool known = false;
    for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) known |= sub->get_name() == first;
    if (!known) {
      std::fprintf(stderr, "connex: unknown subcommand \"%s\"; the subcommands are train, prune, edit, export, inspect, bench\n", first.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "connex: %s (see connex --help)\n", e.what());
    return 2;
  }
  torch::set_num_threads(threads);
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    if (*train_cmd) return cmd_train(config, data, train_args, out);
    if (*prune_cmd) return cmd_prune(path, threshold, fraction, data, prune_train, out);
    if (*edit_cmd) return cmd_edit(path, edit_args, out);
    if (*export_cmd) return cmd_export(path, format, out);
    if (*inspect_cmd) return cmd_inspect(path);
    if (*bench_cmd) return cmd_bench(bench_cmd->remaining());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connex: %s\n", e.what());
    return 1;
  }
  return 0;
}
