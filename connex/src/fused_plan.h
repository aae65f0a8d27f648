#pragma once
// The fused CPU kernel's plan and entry points (connex/fused_kernel.h says
// what the kernel is). Internal: the network makes the plan and calls it.
#include <memory>

#include <torch/types.h>

#include "connex/fused_kernel.h"
#include "connex/tensor_function.h"
#include "connex/topology.h"

namespace connex {

struct LevelTrace;

// Built-in element-wise activations the fused kernel differentiates itself.
bool fused_supports(const TensorFunction& activation);

// The width in bytes of the vectors the kernel's batch loops run in, each
// width compiled for its instruction set: 64 with AVX-512, 32 with AVX2 and
// FMA, else 16. set_fused_kernel_lanes(16, 32 or 64) runs a narrower width
// than the processor's (tests run every width on one machine; wider than the
// processor's fails), 0 restores the processor's. The planner's threshold
// follows the width (neural_network.cpp) for networks built meanwhile.
int fused_kernel_lanes();
void set_fused_kernel_lanes(int bytes);

// What the kernel needs besides the tensors, made once per network: the
// topology with the kernel's connection layout (kept alive by the autograd
// graph through a tensor that owns a reference), the activation, and
// whether the network norms its levels' sources (topo norm, whose rows the
// layout then holds too).
struct FusedPlan {
  torch::Tensor layout_holder;
  int64_t activation = 0;
  bool norm = false;
};
FusedPlan make_fused_plan(const std::shared_ptr<const Topology>& topology, const TensorFunction& activation,
                          bool norm = false);

// The operations the kernel applies itself; undefined where off.
struct FusedOperations {
  // Adaptive activations: a hidden neuron's value is a·σ(b·z) ([non-input neurons, 1], bias order).
  torch::Tensor scale_a, scale_b;
  // Topo norm's ([Σ_l sources of level l, 1], techniques.h): defined exactly when the plan norms.
  torch::Tensor gamma, beta;
};

// x: [batch, inputs] -> [batch, outputs] (output order), differentiable
// with respect to x, weight, bias and the operations' tensors. With a
// trace, fills it as the per-level path does: each level's values and
// pre-activations are copied out, the pre-activations as leaves whose
// grad() the kernel's backward fills with dL/dz (when autograd records).
torch::Tensor fused_forward(const FusedPlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const FusedOperations& operations = {},
                            LevelTrace* trace = nullptr);

}  // namespace connex
