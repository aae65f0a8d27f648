#pragma once
// Optimizer state, described once for every optimizer connex knows (Adam,
// AdamW, SGD, RMSprop, Adagrad) and used three ways: carrying state across an
// edit (transfer_optimizer_state), writing it into and reading it from a
// checkpoint (connex's own format: field names, JSON options and raw tensor
// bytes, never torch's pickle, whose reader crashes on crafted bytes), and
// hashing it to compare data-parallel replicas.
//
//   auto result = connex::edit(net).remove_connections(weak).build();
//   torch::optim::Adam next(result.network->parameters(), old_adam.defaults() ...);
//   connex::transfer_optimizer_state(old_adam, net, next, result);
//
// Both optimizers must be of the same type. Per-tensor counters (Adam's step)
// carry over unchanged: new entries inside a surviving tensor share it, so
// their bias correction is that of the tensor, not of a fresh optimizer.
// New entries (and a field the new options read that the old state lacks)
// start where a fresh optimizer starts them: 0, Adagrad's sum at its group's
// initial_accumulator_value.
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/optim/optimizer.h>

#include "connex/plasticity.h"

namespace connex {

// Moves state only: the new optimizer keeps the group options (learning rate,
// betas, ...) it was built with. optimizer_after_edit builds it with the old ones.
void transfer_optimizer_state(const torch::optim::Optimizer& old_optimizer, const NeuralNetwork& old_network,
                              torch::optim::Optimizer& new_optimizer, const EditResult& edit);

// The optimizer to go on with after an edit, in one call: a new optimizer of
// the old one's type, with its parameter groups and each group's options, over
// the edited network's parameters (matched by name; parameters the old
// network lacked join the first group holding some of it, parameters the old
// optimizer left out stay out), carrying every survivor's state. Parameters
// of other modules in the optimizer (a head trained beside the network) keep
// their place and their state. `old_network` must be the network the edit
// started from, as it was before it: any other structure is refused.
//
//   auto r = connex::edit(net).remove_connections(weak).build();
//   auto next = connex::optimizer_after_edit(adam, net, r);  // same lr, betas, moments
std::unique_ptr<torch::optim::Optimizer> optimizer_after_edit(const torch::optim::Optimizer& old_optimizer,
                                                              const NeuralNetwork& old_network, const EditResult& edit);

// optimizer_after_edit in place: `optimizer` itself goes on over the edited
// network (its groups take the new parameters, its state moves), so whatever
// holds a reference to it, such as a learning-rate scheduler
// (torch::optim::StepLR), keeps working, and its group options stay the same
// objects. Refuses, changing nothing, what optimizer_after_edit refuses.
//
//   torch::optim::StepLR schedule(adam, 30, 0.5);
//   auto r = connex::edit(net).remove_connections(weak).build();
//   connex::follow_edit(adam, net, r);  // adam, and the schedule, go on
//   net = r.network;
void follow_edit(torch::optim::Optimizer& optimizer, const NeuralNetwork& old_network, const EditResult& edit);

// A new optimizer of a known type ("adam", "adamw", "sgd", "rmsprop",
// "adagrad") over these groups, each with options of that type; its
// defaults (what a group added later without options takes) are `defaults`,
// options of the same type, or else the first group's.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& type,
                                                        std::vector<torch::optim::OptimizerParamGroup> groups,
                                                        const torch::optim::OptimizerOptions* defaults = nullptr);

// "adam", "adamw", "sgd", "rmsprop", "adagrad", or "other" for an optimizer
// connex does not know (which it can neither save nor carry across edits).
std::string optimizer_type_name(const torch::optim::Optimizer& optimizer);

// One parameter's state as named fields. `tensors` lists every field of the
// type in a fixed order; a field the optimizer does not use (Adam's
// max_exp_avg_sq without amsgrad, SGD's momentum buffer without momentum) is
// an undefined tensor.
struct OptimizerStateFields {
  std::string type;             // as optimizer_type_name
  std::optional<int64_t> step;  // absent for SGD, which counts no steps
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
};
OptimizerStateFields state_fields(const torch::optim::OptimizerParamState& state);

// A parameter group's options (learning rate, betas, ...) as JSON, as a
// checkpoint holds them.
nlohmann::json optimizer_options_to_json(const torch::optim::OptimizerOptions& options);

}  // namespace connex
