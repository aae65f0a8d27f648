#pragma once
// Checkpoints: one file holding a network's structure and options (its JSON
// config), all its parameters, and optionally an optimizer's state.
//
// Layout (little-endian): "CONNEXCK", u32 format version, u64 header length,
// the header (JSON: the config, a table of the network's tensors, and the
// optimizer's type, groups and per-parameter state table), the raw tensor
// bytes, and a u64 FNV-1a checksum of everything before it, which catches a
// truncated file or a flipped byte anywhere. Every size and range the header
// declares is checked against the bytes present before anything is built.
// Writes are atomic (temporary file + rename); every failure to read raises
// connex::Error naming the file.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <torch/optim/optimizer.h>

#include "connex/dataset.h"
#include "connex/neural_network.h"
#include "connex/optimizer_state.h"

namespace connex {

// Version 2 holds optimizer state in connex's own form (version 1 held torch's
// pickle, which cannot be read safely; version 1 files are refused).
constexpr uint32_t kCheckpointVersion = 2;

// An optimizer's state as a checkpoint holds it: parameters by name, never by
// position, so it restores into any optimizer of the same type built over the
// loaded network's parameters. Tensors are on the CPU, already checked against
// the network (shape and dtype of their parameter).
struct SavedOptimizer {
  std::string type;  // "adam", "adamw", "sgd", "rmsprop" or "adagrad"
  struct Group {
    nlohmann::json options;               // optimizer_options_to_json
    std::vector<std::string> parameters;  // names as network->named_parameters()
  };
  std::vector<Group> groups;
  std::map<std::string, OptimizerStateFields> state;  // by parameter name; parameters never stepped are absent
};

struct Checkpoint {
  NeuralNetwork network{nullptr};
  std::optional<SavedOptimizer> optimizer;     // empty when none was saved
  std::optional<Preprocessing> preprocessing;  // the data preprocessing the network was trained with, if saved
  nlohmann::json training;  // a training loop's own progress record (an object), null when none was saved
};

// Throws (before touching `path`) when the network has an option that cannot
// be written down, such as a custom callable activation, or the optimizer is
// of a type connex does not know or holds a parameter that is not the network's,
// or the preprocessing does not fit the network's inputs and outputs.
// `training`: where a training loop stands (epoch, history, generator states,
// ...), an object stored as given so that the loop can resume exactly.
void save(const NeuralNetwork& network, const std::string& path, const torch::optim::Optimizer* optimizer = nullptr,
          const Preprocessing* preprocessing = nullptr, const nlohmann::json& training = nullptr);
Checkpoint load_checkpoint(const std::string& path);
// The same from the file's bytes in memory (load_checkpoint reads the file and
// calls this); `source` names the bytes in messages. Sizes the header declares
// are checked against the bytes present before anything is allocated for them.
Checkpoint parse_checkpoint(const std::string& bytes, const std::string& source = "checkpoint");
NeuralNetwork load(const std::string& path);
// Restores the saved state and group options into an optimizer of the saved
// type. Parameters are matched by name: the optimizer must be built over the
// parameters of `network` (by default checkpoint.network; any network of the
// same structure will do, on any device, of any floating dtype: the state
// takes its parameter's dtype, as torch's load_state_dict makes it, and save()
// writes it so), and each of its groups must hold the parameters of the saved
// group. The same structure: the same neurons in the same parameter order,
// with the same roles and output order, and the same connections, as a clone
// or a reload has; another graph with the same counts is refused, naming the
// first neuron, role or connection that differs.
// All or nothing: on an error the optimizer is unchanged.
void load_optimizer_state(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer,
                          const std::string& path = "checkpoint", const NeuralNetwork& network = nullptr);
// The saved optimizer itself: a new one of the saved type, with the saved
// parameter groups and their options (learning rate, betas, ...), over the
// parameters of `network` (by default checkpoint.network), holding the saved
// state; its defaults (what a group added later without options takes) are
// the first group's options, as a checkpoint keeps the groups' options only.
// Throws when the checkpoint holds no optimizer, or `network` is not of
// checkpoint.network's structure (as load_optimizer_state says).
std::unique_ptr<torch::optim::Optimizer> restore_optimizer(const Checkpoint& checkpoint,
                                                           const std::string& path = "checkpoint",
                                                           const NeuralNetwork& network = nullptr);

}  // namespace connex
