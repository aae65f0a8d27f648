#pragma once
// The command line's data and training loop: datasets from CSV or the
// built-in toy set, a mini-batch trainer with validation, metrics and a
// progress display.
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

// Loads the data and checks it against the network's inputs and outputs.
// `fitted`: a checkpoint's preprocessing, applied instead of fitting anew.
// `command` names the subcommand in messages.
Table load_dataset(const DataOptions& options, const NeuralNetwork& network, const std::optional<Preprocessing>& fitted,
                   const std::string& command);

// The connections with the smallest |w|: those below `threshold`, or the
// weakest `fraction` of all (exactly one of the two is given).
std::vector<Edge> weakest_connections(const NeuralNetwork& network, std::optional<double> threshold,
                                      std::optional<double> fraction);

struct TrainOptions {
  int epochs = 1000;
  int64_t batch_size = 0;  // 0: full batch
  uint64_t seed = 0;       // the table's split seed: shuffles go on from the same generator
  torch::Device device = torch::kCPU;
  Task task = Task::Regression;
  std::optional<Preprocessing> preprocessing;  // saved with every checkpoint
  // Prune this fraction of connections (weakest |w| first) after this epoch;
  // the optimizer state moves with the surviving parameters.
  int prune_at_epoch = 0;
  double prune_fraction = 0.0;
  // Write `out` (see write_run) every this many epochs; 0: only the caller writes.
  int checkpoint_every = 0;
  std::string out;
  // Called with the network whenever training replaces it (after a prune):
  // an edit can move it between the fused kernel and per-batch levels, and
  // with them the thread pool that should get the cores.
  std::function<void(const NeuralNetwork&)> on_network_replaced;
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

// A fresh optimizer of the CLI's kinds (adam, adamw, sgd with momentum 0.9).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, NeuralNetwork& network, double lr);

// Loss and metric (MSE, or accuracy for classification) on a whole set, eval mode.
std::pair<double, double> evaluate(NeuralNetwork& network, const torch::Tensor& x, const torch::Tensor& y, Task task);
torch::Tensor loss_of(const NeuralNetwork& network, const torch::Tensor& out, const torch::Tensor& y, Task task);

struct TrainResult {
  std::vector<EpochMetrics> history;
  torch::Tensor train_x, train_y, val_x, val_y;
  int64_t steps = 0;  // optimizer steps taken
};

// Trains with the given optimizer, reports each epoch. A prune step replaces
// both `network` and `optimizer` (same type and options, state carried).
TrainResult train(NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer>& optimizer, const Table& data,
                  const TrainOptions& options);

// Writes every file of a training run into the directory `out`, each
// atomically: model.ckpt (with optimizer state and preprocessing),
// metrics.csv, metrics.json, config.json.
void write_run(const std::string& out, const NeuralNetwork& network, const torch::optim::Optimizer& optimizer,
               const std::vector<EpochMetrics>& history, const std::optional<Preprocessing>& preprocessing);

nlohmann::json metrics_json(const std::vector<EpochMetrics>& history);
std::string metrics_csv(const std::vector<EpochMetrics>& history);

}  // namespace connex::cli
