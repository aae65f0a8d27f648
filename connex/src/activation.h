#pragma once
// The built-in activations, one row each: TensorFunction, the fused kernel,
// the dense path, the TorchScript export and the config all read this table,
// so a new built-in is one row here (plus its math in fused_kernel.cpp if it
// is fused).
#include <string>
#include <vector>

#include <torch/types.h>

namespace connex {

enum class Activation { Identity, Relu, Gelu, Silu, Tanh, Sigmoid, Softmax, LogSoftmax };

struct ActivationInfo {
  Activation kind;
  const char* name;
  // Maps each element on its own; the others act over the last dimension.
  bool elementwise;
  torch::Tensor (*apply)(const torch::Tensor&);
  // The TorchScript expression applying it, with {} standing for the argument.
  const char* torchscript;
  // The fused kernel has its math (fused_kernel.cpp).
  bool fused;
  // Its derivative follows from its output, so the fused kernel keeps no
  // pre-activations for backward.
  bool derivative_from_output;
  // Element-wise ones (null for the others): applied in place, and
  // grad ⊙ σ'(z) from σ(z) when derivative_from_output, else from z (the
  // dense path's backward).
  void (*apply_in_place)(torch::Tensor&);
  torch::Tensor (*derivative)(const torch::Tensor& grad, const torch::Tensor& output_or_input);
};

// Every built-in, in the order messages list them.
const std::vector<ActivationInfo>& activations();
// The built-in of that name; null when there is none.
const ActivationInfo* find_activation(const std::string& name);
const ActivationInfo& activation_info(Activation kind);

}  // namespace connex
