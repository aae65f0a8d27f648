#pragma once
// The dense path: a network whose every level is complete (each of its
// neurons reads every one of its sources) and reads one contiguous run of
// neurons (an MLP, a DenseMLP) runs as one autograd function. Forward is one
// addmm per level straight into a buffer of all values ([neurons, batch],
// dense ids), the activation in place; backward writes each level's weight
// and bias gradients into the flat gradient tensors. Against the per-level
// path it saves the autograd nodes between levels and the flat parameters'
// per-level narrow/view backward (a zero-filled full-size gradient per level,
// then their sum). Any device; topo norm or topo self-attention, when it is
// the network's only operation, runs inside it on the CPU (topo_norm.h,
// scalar_attention.h). Internal: the network plans and calls it.
#include <memory>
#include <vector>

#include <torch/types.h>

#include "activation.h"
#include "connex/level_operation.h"
#include "connex/tensor_function.h"
#include "connex/topology.h"

namespace connex {

// One level: its neurons, sources and weights, as ranges.
struct DenseStep {
  int64_t begin = 0, size = 0;          // neurons: dense ids [begin, begin + size)
  int64_t hidden = 0;                   // the first `hidden` of them are activated
  int64_t source_begin = 0, width = 0;  // sources: dense ids [source_begin, source_begin + width)
  int64_t conn_begin = 0;               // weights: [size, width] row-major from here in the flat weight
  int64_t source_row = 0;               // its first row in a per-source table (Level::sources_before)
};

struct DensePlan {
  int64_t neurons = 0, inputs = 0;
  std::vector<DenseStep> steps;  // levels 1..depth, in order
  std::vector<int64_t> outputs;  // dense ids in output order
  Activation activation = Activation::Identity;
  // The operation on each level's sources the path runs itself (CPU only).
  enum class Sources : int64_t { Plain, Norm, Attention } sources = Sources::Plain;
  bool norm() const { return sources == Sources::Norm; }
  bool attention() const { return sources == Sources::Attention; }
};

// A plan as integers and back (what the autograd node keeps for backward).
std::vector<int64_t> encode_dense_plan(const DensePlan& plan);
DensePlan decode_dense_plan(const std::vector<int64_t>& code);

// The plan, or null where the topology, the activation or the operations do
// not allow the dense path (a level that is not complete or whose sources are
// not one run, a level without connections, an activation that is not a
// built-in element-wise one, an operation other than a lone topo norm or
// topo self-attention).
std::shared_ptr<const DensePlan> plan_dense_path(const Topology& topology, const TensorFunction& activation,
                                                 const std::vector<LevelOperationPtr>& operations);

// x: [batch, inputs] -> [batch, outputs] (output order), differentiable
// with respect to x, weight, bias and the operation's parameters; twice too
// (a backward with create_graph runs the same formula in torch operations).
// The parameters: the norm's gamma and beta (topo norm's layout: [Σ sources,
// 1], level 1's rows first); the attention's query, key and value weight
// and bias of level 1, then of level 2, ... (six per level, techniques.h).
torch::Tensor dense_forward(const DensePlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const std::vector<torch::Tensor>& operation_parameters = {});

}  // namespace connex
