#pragma once
// Optimizer continuity across an edit: move a torch optimizer's per-parameter
// state (Adam/AdamW moments and step, SGD momentum, RMSprop averages, Adagrad
// sums) from the old network's optimizer to a new optimizer over the edited
// network. Surviving entries keep their state; new entries start at zero.
//
//   auto result = connex::edit(net).remove_connections(weak).build();
//   torch::optim::Adam next(result.network->parameters(), old_adam.defaults() ...);
//   connex::transfer_optimizer_state(old_adam, net, next, result);
//
// Both optimizers must be of the same type. Per-tensor counters (Adam's step)
// carry over unchanged: new entries inside a surviving tensor share it, so
// their bias correction is that of the tensor, not of a fresh optimizer.
#include <torch/optim/optimizer.h>

#include "connex/plasticity.h"

namespace connex {

void transfer_optimizer_state(const torch::optim::Optimizer& old_optimizer, const NeuralNetwork& old_network,
                              torch::optim::Optimizer& new_optimizer, const EditResult& edit);

}  // namespace connex
