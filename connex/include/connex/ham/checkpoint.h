#pragma once
// HAM checkpoints: one file holding a HAM's structure (layers, Lagrangians,
// synapses, connections, neuron and connection labels, as JSON), all its
// parameters and optionally an optimizer's state, so training resumes exactly. The layout is that of network
// checkpoints (connex/checkpoint.h) under the magic "CONNEXHM": checksummed, every declared size checked before
// anything is built, written atomically, and every failure to read raises
// connex::Error naming the file.
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/optim/optimizer.h>

#include "connex/checkpoint.h"
#include "connex/ham/ham.h"

namespace connex::ham {

constexpr uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  HAM ham{nullptr};
  std::optional<SavedOptimizer> optimizer;  // by parameter name; empty when none was saved
};

// Throws (before touching `path`) when a Lagrangian or synapse cannot be
// written down (a callable, a custom module), or the optimizer is of a type
// connex does not know or holds a parameter that is not the HAM's.
void save(const HAM& ham, const std::string& path, const torch::optim::Optimizer* optimizer = nullptr);
Checkpoint load_checkpoint(const std::string& path);
HAM load(const std::string& path);
// The same from the file's bytes; `source` names them in messages.
Checkpoint parse_checkpoint(const std::string& bytes, const std::string& source = "checkpoint");
// The saved optimizer: of the saved type, with the saved groups, options and
// state, over the parameters of `ham` (by default checkpoint.ham; another
// must have its structure: the same layers, neuron labels and Lagrangian
// kinds, the same synapses, of the same classes, and graph connections, in order). Throws when the checkpoint
// holds none, or naming the first difference of structure.
std::unique_ptr<torch::optim::Optimizer> restore_optimizer(const Checkpoint& checkpoint,
                                                           const std::string& path = "checkpoint",
                                                           const HAM& ham = nullptr);
// The structure alone, as the checkpoint's header holds it.
nlohmann::json structure_json(const HAM& ham);
HAM from_structure_json(const nlohmann::json& structure, const std::string& where);

}  // namespace connex::ham
