// connex: the command line. Subcommands train, prune, edit, export, inspect
// and bench; every failure is one line on stderr and a non-zero exit, and
// files are only ever written whole (temporary file + rename).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "connex/file_io.h"
#include "../core_share.h"
#include "launcher.h"
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
  if (path.empty()) return {network_from_config(nlohmann::json::parse(kReadmeConfig), "embedded README config"), std::nullopt};
  if (!fs::exists(path)) fail("{}: no such file", path);
  if (is_checkpoint(path)) return load_checkpoint(path);
  return {load_config(path), std::nullopt};
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

// Number checks for options. (CLI11's own range checks print the whole
// double range in their messages; these say what is wanted.)
CLI::Validator number_in(double low, double high, bool integer, bool low_open = false) {
  std::string what = integer ? "an integer" : "a number";
  if (high == HUGE_VAL) what += low_open ? fmt::format(" > {}", low) : fmt::format(" >= {}", low);
  else what += fmt::format(" in [{}, {}]", low, high);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(text.c_str(), &end);
        const bool parsed = !text.empty() && end && *end == '\0' && errno == 0 && std::isfinite(v);
        if (!parsed || (integer && v != std::floor(v)) || v < low || (low_open && v == low) || v > high)
          return fmt::format("must be {}, got \"{}\"", what, text);
        return std::string();
      },
      what);
}

using connex::apps::CoreShare;

struct TrainArgs {
  int epochs = 1000;
  int64_t batch_size = 0;
  double lr = 1e-3, val_split = 0.0;
  std::string optimizer = "adam", device = "cpu";
  uint64_t seed = 0;
  int prune_at_epoch = 0, checkpoint_every = 0;
  double prune_fraction = 0.0;
  void add_to(CLI::App* cmd, int default_epochs) {
    epochs = default_epochs;
    cmd->add_option("--epochs", epochs, "epochs")->check(number_in(0, HUGE_VAL, true))->capture_default_str();
    cmd->add_option("--batch-size", batch_size, "mini-batch size (0: full batch)")->check(number_in(0, HUGE_VAL, true));
    cmd->add_option("--lr", lr, "learning rate")->check(number_in(0, HUGE_VAL, false, true))->capture_default_str();
    cmd->add_option("--optimizer", optimizer, "adam, adamw or sgd (momentum 0.9)")->check(CLI::IsMember({"adam", "adamw", "sgd"}));
    cmd->add_option("--seed", seed, "seed for the split, shuffling and new parameters");
    cmd->add_option("--device", device, "cpu or cuda");
    cmd->add_option("--val-split", val_split, "fraction of rows held out for validation")->check(number_in(0, 0.9, false));
  }
};

void restore_optimizer(const Checkpoint& ck, torch::optim::Optimizer& optimizer, const std::string& type, const std::string& path) {
  if (!ck.optimizer) return;
  if (ck.optimizer->type != type) {
    spdlog::info("{} holds {} state; starting {} fresh", path, ck.optimizer->type, type);
    return;
  }
  load_optimizer_state(ck, optimizer, path);
  spdlog::info("resumed {} state from {}", type, path);
}

// Data-parallel flags; unset ones come from RANK, WORLD_SIZE, MASTER_ADDR and
// MASTER_PORT (as torchrun sets them).
struct DistributedArgs {
  int nproc = 1;
  std::optional<int> rank, world_size, master_port;
  std::optional<std::string> master_addr;
  double timeout = 60;
  void add_to(CLI::App* cmd) {
    cmd->add_option("--nproc", nproc, "run N local worker processes, data parallel (Gloo on loopback)")->check(number_in(1, 256, true));
    cmd->add_option("--rank", rank, "this process's rank in a multi-process run (default: $RANK)")->check(number_in(0, HUGE_VAL, true));
    cmd->add_option("--world-size", world_size, "number of processes in the run (default: $WORLD_SIZE, else 1)")->check(number_in(1, 1 << 20, true));
    cmd->add_option("--master-addr", master_addr, "address of rank 0's rendezvous store (default: $MASTER_ADDR, else 127.0.0.1)");
    cmd->add_option("--master-port", master_port, "port of rank 0's rendezvous store (default: $MASTER_PORT, else 29500)")->check(number_in(1, 65535, true));
    cmd->add_option("--dist-timeout", timeout, "seconds to wait for other ranks before giving up")->check(number_in(0, HUGE_VAL, false, true));
  }
  // "[rank R] " for log lines and errors in a multi-process run, else empty.
  std::string rank_tag() const {
#if defined(CONNEX_WITH_DISTRIBUTED)
    try {
      const auto options = group_options(torch::kCPU);
      if (options.world_size() > 1) return fmt::format("[rank {}] ", options.rank());
    } catch (const Error&) {
      // A malformed RANK/WORLD_SIZE: cmd_train reports it.
    }
#endif
    return "";
  }
#if defined(CONNEX_WITH_DISTRIBUTED)
  distributed::GroupOptions group_options(torch::Device device) const {
    auto options = distributed::GroupOptions::from_environment();
    if (rank) options.rank(*rank);
    if (world_size) options.world_size(*world_size);
    if (master_addr) options.master_addr(*master_addr);
    if (master_port) options.master_port(*master_port);
    options.timeout(std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
    options.device(device);
    return options;
  }
#endif
};

int cmd_train(const std::string& config, const DataArgs& d, const TrainArgs& t, const DistributedArgs& dist,
              const std::string& out, const CoreShare& cores) {
  auto device = parse_device(t.device);
  if (t.prune_at_epoch > 0 && !(t.prune_fraction > 0))
    fail("train: --prune-at-epoch {} needs --prune-fraction (in (0, 1))", t.prune_at_epoch);
  if (t.checkpoint_every > 0 && out.empty()) fail("train: --checkpoint-every needs --out");
  Checkpoint ck = open_network(config);
  NeuralNetwork net = ck.network;
  spdlog::info("cores: {}", cores.apply(net));
  Dataset data = load_dataset(d.options(), net);  // checks sizes before anything runs
  if (!out.empty() && fs::exists(out) && !fs::is_directory(out)) fail("--out {} exists and is not a directory", out);

  int rank = 0;
#if defined(CONNEX_WITH_DISTRIBUTED)
  std::unique_ptr<distributed::Group> group;
  std::unique_ptr<distributed::DataParallel> data_parallel;
  auto group_options = dist.group_options(device);
  if (group_options.world_size() > 1) {
    if (device.is_cuda()) {  // one GPU per local rank
      const char* local = std::getenv("LOCAL_RANK");
      device = torch::Device(torch::kCUDA, local ? static_cast<int>(parse_integer(local).value_or(0)) : 0);
      group_options.device(device);
    }
    group = std::make_unique<distributed::Group>(group_options);
    data_parallel = std::make_unique<distributed::DataParallel>(*group);
    rank = group->rank();
    spdlog::info("rank {} of {} joined ({} through {}:{})", group->rank(), group->world_size(), group->backend(),
                 group_options.master_addr(), group_options.master_port());
  }
#else
  if (dist.nproc > 1 || dist.world_size.value_or(1) > 1)
    fail("train: this connex was built without distributed support (CONNEX_WITH_DISTRIBUTED; needs libgloo-dev)");
#endif
  const bool reporter = rank == 0;

  // Dropout draws from torch's generator: reproducible by --seed, and
  // different on each rank so the ranks' shares get independent masks.
  torch::manual_seed(t.seed + 7919 * static_cast<uint64_t>(rank));
  net->to(device);
#if defined(CONNEX_WITH_DISTRIBUTED)
  if (data_parallel) data_parallel->broadcast_parameters(net);
#endif
  auto optimizer = make_optimizer(t.optimizer, net, t.lr);
  restore_optimizer(ck, *optimizer, t.optimizer, config);
  if (reporter) {
    spdlog::info("{}", c10::str(*net));
    spdlog::info("data: {} ({} rows, features {}, targets {})", data.source, data.x.size(0), fmt::join(data.feature_names, ","),
                 fmt::join(data.target_names, ","));
  }
  TrainOptions options;
  options.epochs = t.epochs, options.batch_size = t.batch_size, options.lr = t.lr, options.optimizer = t.optimizer;
  options.seed = t.seed, options.val_split = t.val_split, options.device = device, options.task = d.options().task;
  options.prune_at_epoch = t.prune_at_epoch, options.prune_fraction = t.prune_fraction;
  options.checkpoint_every = t.checkpoint_every, options.out = out;
  options.on_network_replaced = [&cores](const NeuralNetwork& pruned) { spdlog::info("cores: {}", cores.apply(pruned)); };
#if defined(CONNEX_WITH_DISTRIBUTED)
  options.data_parallel = data_parallel.get();
  if (data_parallel) data_parallel->check_replicas_identical(net, optimizer.get(), "train: start");
#endif
  const auto start = std::chrono::steady_clock::now();
  auto result = train(net, optimizer, data, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
#if defined(CONNEX_WITH_DISTRIBUTED)
  if (data_parallel) {
    const uint64_t sum = data_parallel->check_replicas_identical(net, optimizer.get(), "train: end");
    spdlog::info("replicas identical on all {} ranks (checksum {:016x})", group->world_size(), sum);
  }
#endif
  if (!reporter) return 0;
  spdlog::info("{} steps in {:.3f} s: {:.1f} steps/s", result.steps, seconds, result.steps / std::max(seconds, 1e-9));
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
              const TrainArgs& t, const std::string& out, const CoreShare& cores) {
  if (threshold.has_value() == fraction.has_value()) fail("prune: give exactly one of --threshold and --fraction");
  if (threshold && !(*threshold >= 0 && std::isfinite(*threshold))) fail("prune: --threshold must be a finite number >= 0, got {}", *threshold);
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  spdlog::info("cores: {}", cores.apply(net));
  Dataset data = load_dataset(d.options(), net);
  const Task task = d.options().task;
  const std::vector<Edge> weak = weakest_connections(net, threshold, fraction);
  auto optimizer = make_optimizer(t.optimizer, net, t.lr);
  restore_optimizer(ck, *optimizer, t.optimizer, path);
  auto [loss_before, metric_before] = evaluate(net, data.x, data.y, task);
  auto result = edit(net).remove_connections(weak).build(t.seed);
  NeuralNetwork pruned = result.network;
  auto next = optimizer_after_edit(t.optimizer, *optimizer, net, result, t.lr);
  spdlog::info("cores: {}", cores.apply(pruned));  // the pruned network may take the other path (and pool)
  auto [loss_after, metric_after] = evaluate(pruned, data.x, data.y, task);
  std::printf("connections: %lld -> %lld (removed %zu)\n", static_cast<long long>(net->num_connections()),
              static_cast<long long>(pruned->num_connections()), weak.size());
  std::printf("loss: %.6f -> %.6f after pruning\n", loss_before, loss_after);
  std::vector<EpochMetrics> history;
  if (t.epochs > 0) {
    TrainOptions options;
    options.epochs = t.epochs, options.batch_size = t.batch_size, options.lr = t.lr, options.seed = t.seed, options.task = task;
    history = train(pruned, next, data, options).history;
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
  if (ck.optimizer && ck.optimizer->type != "rmsprop" && ck.optimizer->type != "adagrad") {
    auto old_optimizer = make_optimizer(ck.optimizer->type, net, 1e-3);
    load_optimizer_state(ck, *old_optimizer, path);
    next = optimizer_after_edit(ck.optimizer->type, *old_optimizer, net, result, 1e-3);
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
  if (ck.optimizer) std::printf("optimizer state: %s\n", ck.optimizer->type.c_str());
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
  app.add_option("--threads", threads, "cores to use (default: all; local workers share them)")->check(number_in(1, 1024, true));

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
  DistributedArgs dist;
  dist.add_to(train_cmd);
  train_cmd->add_option("--prune-at-epoch", train_args.prune_at_epoch, "prune after this epoch (with --prune-fraction)")->check(number_in(0, HUGE_VAL, true));
  train_cmd->add_option("--prune-fraction", train_args.prune_fraction, "fraction of connections to prune, weakest |w| first")->check(number_in(0, 1, false));
  train_cmd->add_option("--checkpoint-every", train_args.checkpoint_every, "write --out every this many epochs (rank 0)")->check(number_in(0, HUGE_VAL, true));
  train_cmd->add_option("--out", out, "directory for model.ckpt, metrics.csv, metrics.json, config.json");

  auto* prune_cmd = app.add_subcommand("prune", "remove the weakest connections by |w|, optionally train on");
  prune_cmd->add_option("checkpoint", path, "checkpoint or config")->required();
  prune_cmd->add_option("--threshold", threshold, "remove connections with |w| below this");
  prune_cmd->add_option("--fraction", fraction, "remove this fraction of connections, weakest first")->check(number_in(0, 1, false));
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
  edit_cmd->add_option("--dropout", edit_args.dropout, "dropout p for every hidden neuron")->check(number_in(0, 1, false));
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
  if (*train_cmd && dist.nproc > 1) {
    if (dist.rank || dist.world_size) {
      std::fprintf(stderr, "connex: --nproc launches local workers itself; don't combine it with --rank or --world-size\n");
      return 2;
    }
    // Workers that see a failed peer stop within a few heartbeats; give them that, then stop them.
    return launch_local_workers(argc, argv, dist.nproc, 10);
  }
  // Local workers share the cores unless --threads says otherwise.
  const char* local_world = std::getenv("LOCAL_WORLD_SIZE");
  if (app.get_option("--threads")->count() == 0 && local_world)
    threads = std::max(1, threads / static_cast<int>(std::max<int64_t>(1, parse_integer(local_world).value_or(1))));
  const CoreShare cores{threads};
  cores.apply_default();
  const std::string rank_tag = *train_cmd ? dist.rank_tag() : "";
  spdlog::set_pattern("[%H:%M:%S] " + rank_tag + "%v");
  try {
    if (*train_cmd) return cmd_train(config, data, train_args, dist, out, cores);
    if (*prune_cmd) return cmd_prune(path, threshold, fraction, data, prune_train, out, cores);
    if (*edit_cmd) return cmd_edit(path, edit_args, out);
    if (*export_cmd) return cmd_export(path, format, out);
    if (*inspect_cmd) return cmd_inspect(path);
    if (*bench_cmd) return cmd_bench(bench_cmd->remaining());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "connex: %s%s\n", rank_tag.c_str(), e.what());
    return 1;
  }
  return 0;
}
