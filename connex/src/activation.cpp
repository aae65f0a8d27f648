#include "activation.h"

#include <torch/torch.h>

namespace connex {

const std::vector<ActivationInfo>& activations() {
  using torch::Tensor;
  // {kind, name, elementwise, apply, torchscript, fused, derivative_from_output}
  static const std::vector<ActivationInfo> table = {
      {Activation::Identity, "identity", true, [](const Tensor& x) { return x; }, "{}", true, true},
      {Activation::Relu, "relu", true, [](const Tensor& x) { return torch::relu(x); }, "torch.relu({})", true, true},
      {Activation::Gelu, "gelu", true, [](const Tensor& x) { return torch::gelu(x); }, "torch.gelu({})", true, false},
      {Activation::Silu, "silu", true, [](const Tensor& x) { return torch::silu(x); }, "torch.silu({})", true, false},
      {Activation::Tanh, "tanh", true, [](const Tensor& x) { return torch::tanh(x); }, "torch.tanh({})", true, true},
      {Activation::Sigmoid, "sigmoid", true, [](const Tensor& x) { return torch::sigmoid(x); }, "torch.sigmoid({})",
       true, true},
      {Activation::Softmax, "softmax", false, [](const Tensor& x) { return torch::softmax(x, -1); },
       "torch.softmax({}, -1)", false, false},
      {Activation::LogSoftmax, "log_softmax", false, [](const Tensor& x) { return torch::log_softmax(x, -1); },
       "torch.log_softmax({}, -1)", false, false},
  };
  return table;
}

const ActivationInfo* find_activation(const std::string& name) {
  for (const auto& a : activations())
    if (name == a.name) return &a;
  return nullptr;
}

const ActivationInfo& activation_info(Activation kind) {
  for (const auto& a : activations())
    if (a.kind == kind) return a;
  return activations().front();  // unreachable: every kind has a row
}

}  // namespace connex
