#pragma once
// The command line's data and training loop: datasets from CSV or the
// built-in toy set, a mini-batch trainer with validation, metrics and a
// progress display.
#include <chrono>
#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "connex/connex.h"

namespace connex::cli {

struct DataOptions {
  std::string path;  // empty: the toy (cos x, sin x) set
  TableOptions table;
};

// Every command names a file it reads but cannot find one way: "PATH: no such file".
void require_file(const std::string& path);

// Loads the data and checks it against the network's inputs and outputs.
// `fitted`: a checkpoint's preprocessing, applied instead of fitting anew.
// `command` names the subcommand in messages.
Table load_dataset(const DataOptions& options, const NeuralNetwork& network, const std::optional<Preprocessing>& fitted,
                   const std::string& command);

// Dynamic sparse training (train --rewire): a checkpoint's record keeps it,
// so that a resumed run rewires as the uninterrupted run would.
struct RewireSettings {
  std::string method;          // "set" or "rigl"; empty: no rewiring
  int64_t every = 100;         // rewire after every this many optimizer steps of the run
  double drop_fraction = 0.3;  // the share of each level's connections replaced (before any decay)
  int64_t end_step = 0;        // the step from which the share is 0 (RigL's T_end); 0: no decay
  // The Rewirer's groups, so that a resumed run rewires as the
  // uninterrupted one; none before the first run with rewiring.
  std::optional<RewireGroups> groups;

  bool active() const { return !method.empty(); }
};

// train's --prune-at-epoch schedule, kept in the run's record so that a
// stopped run, resumed, prunes where the uninterrupted one would.
struct PruneSchedule {
  int at_epoch = 0;     // prune after this epoch; 0: none
  double fraction = 0;  // of each scope's connections, weakest |w| first
  PruneScope scope = PruneScope::Global;
  int64_t keep_min = 0;  // every neuron keeps at least this many incoming connections

  PruneOptions options() const { return PruneOptions().fraction(fraction).scope(scope).keep_min(keep_min); }
  // "level scope, keep-min 2" (the floor only when it is set), as the log says the rule.
  std::string rule_said() const;
  // "0.5 of the connections (level scope, keep-min 2) after epoch 5", as the log and inspect say the schedule.
  std::string said() const;
  nlohmann::json to_json() const;
  // Checks every field; `where` names the file.
  static PruneSchedule from_json(const nlohmann::json& json, const std::string& where);
};

struct TrainOptions {
  int epochs = 1000;
  int64_t batch_size = 0;  // 0: full batch
  uint64_t seed = 0;       // the table's split seed: shuffles go on from the same generator
  torch::Device device = torch::kCPU;
  Task task = Task::Regression;
  std::optional<Preprocessing> preprocessing;  // saved with every checkpoint
  // Write `out` (see write_run) every this many epochs; 0: only the caller writes.
  int checkpoint_every = 0;
  std::string out;
  // Set (by a signal handler) to a signal number to stop after the current step.
  const volatile std::sig_atomic_t* stop = nullptr;
  // Called with the network whenever training replaces it (after a prune):
  // an edit can move it between the fused kernel and per-level path, and
  // with them the thread pool that should get the cores.
  std::function<void(const NeuralNetwork&)> on_network_replaced;
  // Called after every optimizer step with the network, the step's wall
  // time and its rows (the CLI measures how its cores are shared).
  std::function<void(const NeuralNetwork&, std::chrono::steady_clock::duration, int64_t)> after_step;
  // Set the rewiring's end_step (Progress::rewire) to this share of the run's
  // steps, those already taken and those this call takes; unset: as recorded.
  std::optional<double> rewire_end;
#if defined(CONNEX_WITH_DISTRIBUTED)
  // Data parallel: each batch is split over the group's ranks, gradients are
  // averaged, only rank 0 reports and writes. Null: one process.
  distributed::DataParallel* data_parallel = nullptr;
#endif
};

struct EpochMetrics {
  int epoch = 0;
  double train_loss = 0, val_loss = NAN, val_metric = NAN, seconds = 0;
};

// Where a training run stands. Every checkpoint the CLI writes holds it, so a
// resumed run (same data) goes on exactly as the uninterrupted run would have,
// bit for bit: same epochs, same shuffles, same dropout masks.
struct Progress {
  int epoch = 0;          // epochs completed
  int64_t batch = 0;      // batches of epoch + 1 already taken (a run stopped mid-epoch)
  double batch_loss = 0;  // their loss, summed over rows
  int64_t steps = 0;      // optimizer steps taken in all
  double seconds = 0;     // training time in all
  // The run's data settings; a resumed run keeps them unless a flag says otherwise.
  uint64_t seed = 0;
  int64_t batch_size = 0;
  double val_split = 0;
  // The CSV trained on (absolute; empty: the toy set) and its size,
  // modification time and content hash then, so that a resumed run finds it
  // and notices a change (a touched file is not one).
  std::string data;
  int64_t data_bytes = 0, data_modified = 0;
  std::string data_hash;        // FNV-1a 64 of its bytes, 16 hex digits; empty in records of earlier versions
  torch::Tensor shuffle_state;  // the shuffle generator at the start of epoch + 1
  torch::Tensor dropout_state;  // torch's default CPU generator (dropout masks)
  RewireSettings rewire;
  PruneSchedule prune;
  std::vector<EpochMetrics> history;

  nlohmann::json to_json() const;
  // Checks every field; `where` names the file.
  static Progress from_json(const nlohmann::json& json, const std::string& where);
  // `path` as the record holds a CSV's: absolute, lexically normal ("" stays "").
  static std::string data_path(const std::string& path);
  // Records `path` (a CSV; "" for the toy set) as the run's data.
  // `hash`: its file_hash, where the caller has it already (data_changed()'s).
  void set_data(const std::string& path, const std::optional<std::string>& hash = std::nullopt);
  // Why the recorded CSV is not as it was ("" when it is, or none is recorded).
  // Reads the whole file when its size is unchanged and a hash is recorded;
  // `hash` then receives the file's.
  std::string data_changed(std::optional<std::string>* hash = nullptr) const;
  static constexpr const char* kUnreadable = "it cannot be read now";  // data_changed()'s for a file it cannot read
};

// Thrown by train() when a stop was asked for (a signal): the run stopped
// after a whole step and, with --out, wrote its files.
struct Stopped {
  int signal;
  Progress progress;
};

// The optimizers the CLI offers, a choice among the library's kinds: their
// names, for --optimizer's check, and "adam, adamw or sgd (momentum 0.9)".
std::vector<std::string> optimizer_choices();
std::string describe_optimizer_choices();
// A fresh optimizer of one of them, made by the library (make_optimizer).
std::unique_ptr<torch::optim::Optimizer> fresh_optimizer(const std::string& name, NeuralNetwork& network, double lr);

// Loss and metric (MSE, or accuracy for classification) on a whole set, eval mode.
std::pair<double, double> evaluate(NeuralNetwork& network, const torch::Tensor& x, const torch::Tensor& y, Task task);
torch::Tensor loss_of(const NeuralNetwork& network, const torch::Tensor& out, const torch::Tensor& y, Task task);

struct TrainResult {
  torch::Tensor train_x, train_y, val_x, val_y;
  int64_t steps = 0;  // optimizer steps taken by this call
};

// Trains `options.epochs` more epochs from where `progress` stands (finishing
// an epoch stopped midway first) and reports each. The prune of
// `progress.prune` (where it falls in these epochs) and each rewiring of
// `progress.rewire` replace both `network` and `optimizer` (same type and
// options, state carried). The
// parameters are checked after every epoch: non-finite ones stop the run
// before anything is written. A stop request throws Stopped.
TrainResult train(NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer>& optimizer, const Table& data,
                  const TrainOptions& options, Progress& progress);

// Writes every file of a training run into the directory `out`, each
// atomically: model.ckpt (with optimizer state, preprocessing and progress),
// metrics.csv, metrics.json, config.json.
void write_run(const std::string& out, const NeuralNetwork& network, const torch::optim::Optimizer& optimizer,
               const Progress& progress, const std::optional<Preprocessing>& preprocessing);
// A pruning that leaves an output reached from no input has made it a
// constant: `command` warns, suggesting `remedy`.
void warn_about_cut_outputs(const NeuralNetwork& pruned, const std::string& command, const std::string& remedy);
// How many of the network's connections are frozen (a prune keeps them unless told).
int64_t frozen_count(const NeuralNetwork& network);
// "; N frozen connections were not candidates" (nothing for none), for a prune's report.
std::string frozen_note(int64_t frozen);
// Says (spdlog) what a keep_min floor held back of what the pruning rule
// alone chose, `chosen` being what is removed with it, and where a fraction
// per neuron or level, rounded group by group (halves up: a fan-in of 5
// loses 3 at 0.5), chose over 1 % more or fewer than that fraction of all
// the candidates would; nothing where neither happened. Flags name the
// command's own (--fraction, --keep-min, --scope...).
void say_how_the_rule_chose(const NeuralNetwork& network, const PruneOptions& options, size_t chosen,
                            const std::string& command, const std::string& rule_flag, const std::string& floor_flag,
                            const std::string& scope_flag);

// The files write_run() writes into a run directory, model.ckpt (the record) last.
inline constexpr const char* kRunFiles[] = {"metrics.csv", "metrics.json", "config.json", "model.ckpt"};

// The companions of `dir`/model.ckpt in a run directory (metrics.csv,
// metrics.json, config.json) that are not what that checkpoint's write put
// there, each named with the epoch it shows where it can. model.ckpt is the
// record and write_run writes it last, so after a write that failed midway
// (a full disk) the others may be a checkpoint ahead; the --out lock keeps two
// runs from mixing. Empty when the set is whole.
std::vector<std::string> run_files_out_of_step(const std::string& dir, const Checkpoint& checkpoint);

std::string metrics_json(const std::vector<EpochMetrics>& history);
std::string metrics_csv(const std::vector<EpochMetrics>& history);

}  // namespace connex::cli
