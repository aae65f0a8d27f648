#pragma once
// Checkpoints: one file holding a network's structure and options (its JSON
// config), all its parameters, and optionally an optimizer's state.
//
// Layout (little-endian): "CONNEXCK", u32 format version, u64 header length,
// the header (JSON: config, tensor table, optimizer blob), the tensor bytes,
// and a u64 FNV-1a checksum of everything before it. LibTorch's own zip
// reader does not verify CRCs, so this checksum is what catches a flipped
// byte anywhere, tensor data included. Writes are atomic (temporary file +
// rename); every failure to read raises connex::Error naming the file.
#include <string>

#include <torch/optim/optimizer.h>

#include "connex/neural_network.h"

namespace connex {

constexpr uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  NeuralNetwork network{nullptr};
  std::string optimizer_state;  // torch::serialize bytes; empty when none was saved
  std::string optimizer_type;   // "adam", "adamw", "sgd", "rmsprop", "adagrad" or "other"
};

// The name save() records for an optimizer's type.
std::string optimizer_type_name(const torch::optim::Optimizer& optimizer);

// Throws (before touching `path`) when the network has an option that cannot
// be written down, such as a custom callable activation.
void save(const NeuralNetwork& network, const std::string& path, const torch::optim::Optimizer* optimizer = nullptr);
Checkpoint load_checkpoint(const std::string& path);
// The same from the file's bytes in memory (load_checkpoint reads the file and
// calls this); `source` names the bytes in messages. Sizes the header declares
// are checked against the bytes present before anything is allocated for them.
Checkpoint parse_checkpoint(const std::string& bytes, const std::string& source = "checkpoint");
NeuralNetwork load(const std::string& path);
// Restores the saved state into an optimizer built over checkpoint.network's parameters.
void load_optimizer_state(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer, const std::string& path = "checkpoint");

}  // namespace connex
