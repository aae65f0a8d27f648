#pragma once
// Tabular data for a network: a CSV file or tensors as a torch dataset
// (usable with torch::data::make_data_loader), split into training and
// validation rows, with the preprocessing fitted on the training rows only.
//
//   auto table = connex::read_table("iris.csv", net, connex::TableOptions()
//                    .task(connex::Task::Classification).standardize(true).validation_fraction(0.3));
//   auto loader = torch::data::make_data_loader(
//       table.train.map(torch::data::transforms::Stack<>()), /*batch_size=*/32);
//   connex::save(net, "model.ckpt", &optimizer, &table.preprocessing);  // travels with the model
//
// The preprocessing is what a deployed model needs to take raw rows: the
// feature columns in input order, their standardization, and the class label
// of each output. Checkpoints store it, later reads apply it instead of
// fitting anew, and export_torchscript bakes it into the exported module.
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/data/datasets/base.h>
#include <torch/data/example.h>
#include <torch/types.h>

#include "connex/csv.h"
#include "connex/neural_network.h"

namespace connex {

// Regression: float targets, one column per output, mean squared error.
// Classification: one label column, one output per class, cross-entropy.
enum class Task { Regression, Classification };
const char* task_name(Task task);

struct Preprocessing {
  std::vector<std::string> features;  // the input columns, in input order
  std::vector<std::string> targets;   // the target columns (classification: the one label column)
  Task task = Task::Regression;
  // Standardization: input k = (raw k - mean[k]) / scale[k]; both empty when off.
  std::vector<double> mean, scale;
  // Classification: classes[i] is the label text of output i (integer labels
  // give "0", "1", ...); a label absent from it is an error.
  std::vector<std::string> classes;

  bool standardizes() const { return !mean.empty(); }
  // Raw feature rows [rows, features] -> network inputs, in the dtype of `raw`.
  torch::Tensor apply(const torch::Tensor& raw) const;
  nlohmann::json to_json() const;
  // Checks every field and that it fits `network` (inputs, outputs); names the culprit by `where`.
  static Preprocessing from_json(const nlohmann::json& json, const std::string& where, const NeuralNetwork& network);
  // Throws unless its features match the network's inputs, its classes fit
  // the outputs and its standardization has a finite mean and a finite
  // positive scale per feature.
  void check_fits(const NeuralNetwork& network, const std::string& where) const;
  // Each output's name, in output order: its class (classification) or its
  // target column (regression), and "output <id>" for one without (an output
  // added after training, or no preprocessing at all).
  std::vector<std::string> output_names(const NeuralNetwork& network) const;

 private:
  void check_standardization(const std::string& where) const;
};

// Rows of inputs and targets, as torch::data examples. Inputs are float32
// (or the dtype given); targets float for regression, int64 class indices for
// classification.
class TableDataset : public torch::data::datasets::Dataset<TableDataset> {
 public:
  TableDataset() = default;
  TableDataset(torch::Tensor inputs, torch::Tensor targets);
  torch::data::Example<> get(size_t index) override;
  torch::optional<size_t> size() const override;
  const torch::Tensor& inputs() const { return inputs_; }
  const torch::Tensor& targets() const { return targets_; }

 private:
  torch::Tensor inputs_, targets_;
};

struct TableOptions {
  // Target columns; empty: the last column for classification, the last
  // num_outputs columns for regression.
  TORCH_ARG(std::vector<std::string>, targets) = {};
  TORCH_ARG(std::vector<std::string>, features) = {};   // empty: every non-target column
  TORCH_ARG(std::optional<Task>, task) = std::nullopt;  // default: the fitted preprocessing's, else regression
  // z-score each feature with the training rows' mean and unbiased standard
  // deviation (ddof 1, as torch.std; sklearn's StandardScaler uses ddof 0);
  // a column without spread (constant, or one training row) keeps scale 1.
  // Unset: no. With a fitted preprocessing its standardization applies, and
  // a value given must agree with it (true or false).
  TORCH_ARG(std::optional<bool>, standardize) = std::nullopt;
  TORCH_ARG(double, validation_fraction) = 0.0;  // rows held out, in [0, 1)
  TORCH_ARG(uint64_t, seed) = 0;                 // decides which rows are held out
  // Of the inputs (and regression targets); default: the network's (float32 for table_from_tensors).
  TORCH_ARG(std::optional<torch::Dtype>, dtype) = std::nullopt;
};

struct Table {
  TableDataset train, validation;  // validation is empty when validation_fraction is 0
  Preprocessing preprocessing;
  std::string source;
};

// Reads a CSV (header row, then numbers; class labels may be text) for
// `network`, checking the columns against its inputs and outputs. With
// `fitted` (a checkpoint's preprocessing) its columns, standardization and
// classes are applied and nothing is fitted; the options' task, features,
// targets and standardize must then agree with it or be left unset.
Table read_table(const std::string& path, const NeuralNetwork& network, const TableOptions& options = {},
                 const std::optional<Preprocessing>& fitted = std::nullopt);
// The network inputs of a CSV's rows, in file order, for prediction: the
// columns `fitted` names as features (any others, targets among them, are
// ignored) standardized as it says; without `fitted`, every column is an
// input. [rows, inputs] in the network's dtype.
torch::Tensor read_inputs(const std::string& path, const NeuralNetwork& network,
                          const std::optional<Preprocessing>& fitted = std::nullopt);
// The same from a parsed CSV (parse_csv: leave the non-feature columns as text).
torch::Tensor read_inputs(const CsvTable& csv, const NeuralNetwork& network,
                          const std::optional<Preprocessing>& fitted = std::nullopt);
// The targets of a CSV's rows, in file order, as a trained model reads them:
// the columns `fitted` names as targets (any others are ignored), int64
// class indices [rows] for classification, else [rows, outputs] in the
// network's dtype, each small enough that its squared error stays finite.
// With read_inputs, what scoring predictions needs.
torch::Tensor read_targets(const CsvTable& csv, const NeuralNetwork& network, const Preprocessing& fitted);
Table table_from_csv(const CsvTable& csv, const NeuralNetwork& network, const TableOptions& options = {},
                     const std::optional<Preprocessing>& fitted = std::nullopt);
// Raw inputs [rows, features] and targets ([rows, outputs] float, or [rows]
// int64 class indices), split and preprocessed as read_table does; features
// are named "x0", "x1", ... unless `fitted` names them. Values are checked
// as a CSV's cells are: finite and small enough to train on (raw, and
// after standardizing), else an error names the row and column.
Table table_from_tensors(const torch::Tensor& inputs, const torch::Tensor& targets, const TableOptions& options = {},
                         const std::optional<Preprocessing>& fitted = std::nullopt);

// The row split read_table uses: a permutation of `rows` rows drawn from
// `seed`; the first round(rows * fraction) (at least one when fraction > 0)
// are held out. {training rows, validation rows}, each in permutation order.
std::pair<torch::Tensor, torch::Tensor> split_rows(int64_t rows, double validation_fraction, uint64_t seed);

}  // namespace connex
