#pragma once
// The optimizer-state codec the checkpoint reads and writes with. Internal:
// users save and load whole optimizers (connex/checkpoint.h). Every function
// here looks its type up in the one table of optimizer kinds
// (optimizer_state.cpp); an unknown type name throws connex::Error.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/optim/optimizer.h>

#include "connex/optimizer_state.h"

namespace connex {

// The optimizers connex knows, for messages: by name ("adam, adamw, sgd,
// rmsprop and adagrad") or by title ("Adam, AdamW, ..."); `last_separator`
// joins the last two.
enum class OptimizerNaming { kName, kTitle };
std::string list_optimizer_kinds(OptimizerNaming naming, const char* last_separator = " and ");

// The names (as in module.named_parameters()) of the parameters of each of
// the optimizer's groups. A parameter that is not the module's throws,
// naming `context` and the group, calling the module `owner` ("network"),
// and ending with `remedy`.
std::vector<std::vector<std::string>> group_parameter_names(const torch::optim::Optimizer& optimizer,
                                                            const torch::nn::Module& module, const std::string& context,
                                                            const char* owner, const std::string& remedy);

// optimizer_after_edit for any module whose edit gives its moved entries as
// (flattened) index pairs, as connex::ham's editor does; `context` starts the
// messages, which call the module `module` ("HAM").
std::unique_ptr<torch::optim::Optimizer> optimizer_after_module_edit(const torch::optim::Optimizer& old_optimizer,
                                                                     const torch::nn::Module& old_module,
                                                                     const torch::nn::Module& new_module,
                                                                     const ParameterRemap& remap, const char* context,
                                                                     const char* module);

// The tensor field names of a type, e.g. {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"} for "adam".
const std::vector<std::string>& state_tensor_names(const std::string& type);
// Whether a type's state has a step counter.
bool state_has_step(const std::string& type);
// The inverse of state_fields; the fields must be those of fields.type.
std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(const OptimizerStateFields& fields);

// The state fields torch's step() reads for a parameter that has state, under
// its group's options (Adam's max_exp_avg_sq only with amsgrad, SGD's
// momentum buffer only with momentum, ...); a state lacking one would make
// step() throw or dereference nothing. And whether the optimizer keeps a state
// for every parameter from the start (Adagrad), so none may be missing (false
// for an unknown type).
std::vector<std::string> required_state_fields(const std::string& type, const torch::optim::OptimizerOptions& options);
bool state_required_for_every_parameter(const std::string& type);
// Where a new optimizer of `type` starts a state field's entries under these
// options: Adagrad's sum at initial_accumulator_value, every other field at 0.
double fresh_state_value(const std::string& type, const std::string& field,
                         const torch::optim::OptimizerOptions& options);

// The inverse of optimizer_options_to_json: checks every key and value and
// names the culprit by `where` (a file and JSON path); returns a fresh options
// object of `type`.
std::unique_ptr<torch::optim::OptimizerOptions> optimizer_options_from_json(const std::string& type,
                                                                            const nlohmann::json& json,
                                                                            const std::string& where);

}  // namespace connex
