#pragma once
// The fused CPU path: the whole network's forward and backward as one
// autograd function over the flat connection layout, instead of a few torch
// ops per batch. Per batch, neurons run in parallel; each computes its
// pre-activation as a sum of weight × source row (contiguous over the batch
// dimension), and backward gathers each neuron's gradient from its outgoing
// connections (grouped by source), so no two threads write the same row.
// It pays where per-op overhead dominates (small networks) and where levels
// are sparse; dense layered networks stay on the matmul path.
#include <torch/types.h>

#include "connex/tensor_function.h"
#include "connex/topology.h"

namespace connex {

// How many threads one fused level runs on: torch's intra-op thread count
// (torch::set_num_threads) when connex was compiled with OpenMP (the
// CONNEX_OPENMP build option, on with GCC), else 1. Found by running a
// parallel loop, so it reports what the kernel gets, not what was asked.
int fused_kernel_threads();

// Built-in element-wise activations the fused kernel differentiates itself.
bool fused_supports(const TensorFunction& activation);

// What the kernel needs besides the tensors, made once per network: the
// topology with the kernel's connection layout (kept alive by the autograd
// graph through a tensor that owns a reference), and the activation.
struct FusedPlan {
  torch::Tensor layout_holder;
  int64_t activation = 0;
};
FusedPlan make_fused_plan(const std::shared_ptr<const Topology>& topology, const TensorFunction& activation);

// x: [batch, inputs] -> [batch, outputs] (output order), differentiable
// with respect to x, weight and bias.
torch::Tensor fused_forward(const FusedPlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias);

}  // namespace connex
