#pragma once
// The optimizer part of a checkpoint, for any module whose parameters it
// holds by name: network checkpoints (checkpoint.cpp) and HAM checkpoints
// (ham/checkpoint.cpp). `context` starts the messages ("load()",
// "ham::load()"); `owner` names the module's kind in them ("network", "HAM").
// Internal.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "connex/checkpoint.h"
#include "tensor_file.h"

namespace connex::detail {

// The header's "optimizer" object; the state tensors' bytes go to `data`.
// Messages call the module `owner` ("network").
nlohmann::json write_optimizer(const torch::nn::Module& module, const torch::optim::Optimizer& optimizer,
                               std::string& data, const std::string& path, const char* context, const char* owner);
// Checks every group, option, state field and tensor against `module`.
// Where the file names `parts`, their whole parameter takes the place of the
// first one listed in the groups, and their state joins (rows without any
// start at zero; the step is that of the part of the lowest rows).
SavedOptimizer read_optimizer(const nlohmann::json& optimizer, const torch::nn::Module& module, const TensorData& data,
                              const std::string& path, const char* context, const char* owner,
                              const std::vector<ParameterPart>& parts = {});
// All or nothing: on an error the optimizer is unchanged.
void load_saved_optimizer(const SavedOptimizer& saved, torch::optim::Optimizer& optimizer, const std::string& path,
                          const torch::nn::Module& module, const char* context, const char* owner);
std::unique_ptr<torch::optim::Optimizer> restore_saved_optimizer(const SavedOptimizer& saved, const std::string& path,
                                                                 const torch::nn::Module& module, const char* context,
                                                                 const char* owner);

}  // namespace connex::detail
