#pragma once
// NeuralNetworkOptions: everything about a network except its graph, in the
// style of torch::nn options (chained TORCH_ARG setters, inline defaults).
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include <torch/arg.h>
#include <torch/types.h>

#include "connex/level_operation.h"
#include "connex/neuron_id.h"
#include "connex/tensor_function.h"
#include "connex/topology.h"

namespace connex {

// Dropout probabilities. A number p means "p for every hidden neuron, 0 for
// inputs and outputs"; a list of (neuron, p) sets the named neurons (inputs
// and outputs included) and leaves every other at `hidden` (0 unless a
// number was given first, see set_dropout_p).
struct DropoutSpec {
  DropoutSpec(double p = 0.0) : hidden(p) {}  // NOLINT: implicit, .dropout_p(0.1)
  DropoutSpec(std::vector<std::pair<NeuronId, double>> map) : per_neuron(std::move(map)) {}  // NOLINT
  double hidden = 0.0;
  std::vector<std::pair<NeuronId, double>> per_neuron;
};

// How a network executes: which kernels run its levels. Every path computes
// the same function (the tests compare them); the network chooses well on its
// own, so these are for benchmarks and for comparing paths.
struct ExecutionOptions {
  // Levels at least this dense (connections / (size × sources)) use a matmul.
  TORCH_ARG(double, dense_threshold) = 0.1;
  // One kernel for every level that has connections.
  TORCH_ARG(std::optional<LevelKernel>, force_kernel) = std::nullopt;
  // The fused whole-network CPU kernel (fused_kernel.h): nullopt lets the
  // network choose; true/false force it where it applies.
  TORCH_ARG(std::optional<bool>, fused) = std::nullopt;
  // The dense path (an MLP-like network whose levels are all complete, as
  // one autograd function of one matmul per level; topo norm or topo
  // self-attention, if it is the only operation, inside it): nullopt takes it where it applies and the
  // fused kernel does not run; false never takes it; true takes it where it
  // applies even instead of the fused kernel, and throws with fused(true)
  // or force_kernel(). A network
  // it does not fit (or an edit that makes one) runs as with nullopt;
  // uses_dense_path() tells.
  TORCH_ARG(std::optional<bool>, dense_path) = std::nullopt;
};

struct NeuralNetworkOptions {
  // Applied element-wise to hidden neurons: a built-in name, a callable, or a trainable module.
  TORCH_ARG(TensorFunction, hidden_activation) = TensorFunction("gelu");
  // Applied to the whole output vector [batch, outputs].
  TORCH_ARG(TensorFunction, output_transformation) = TensorFunction("identity");
  TORCH_ARG(DropoutSpec, dropout_p) = DropoutSpec(0.0);
  // A topological order of all neurons; only decides ties within a level.
  TORCH_ARG(std::optional<std::vector<NeuronId>>, topo_sort) = std::nullopt;
  // Seeds parameter initialisation (not dropout, which draws from torch's generator).
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  // Connex's optional techniques (see techniques.h); off, they cost nothing.
  TORCH_ARG(bool, use_topo_norm) = false;
  TORCH_ARG(bool, use_topo_self_attention) = false;
  TORCH_ARG(bool, use_neuron_self_attention) = false;
  TORCH_ARG(bool, use_adaptive_activations) = false;
  // User-defined per-level operations, run after the built-in ones at each stage.
  TORCH_ARG(std::vector<LevelOperationPtr>, operations) = {};
  // Which kernels run the network (see ExecutionOptions).
  TORCH_ARG(ExecutionOptions, execution) = {};
};

}  // namespace connex
