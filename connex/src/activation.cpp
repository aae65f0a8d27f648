#include "activation.h"

#include <torch/torch.h>

namespace connex {

const std::vector<ActivationInfo>& activations() {
  using torch::Tensor;
  // {kind, name, elementwise, apply, torchscript, fused, derivative_from_output, apply_in_place, derivative}
  static const std::vector<ActivationInfo> table = {
      {Activation::Identity, "identity", true, [](const Tensor& x) { return x; }, "{}", true, true, [](Tensor&) {},
       [](const Tensor& g, const Tensor&) { return g; }},
      {Activation::Relu, "relu", true, [](const Tensor& x) { return torch::relu(x); }, "torch.relu({})", true, true,
       [](Tensor& x) { x.relu_(); }, [](const Tensor& g, const Tensor& y) { return at::threshold_backward(g, y, 0); }},
      {Activation::Gelu, "gelu", true, [](const Tensor& x) { return torch::gelu(x); }, "torch.gelu({})", true, false,
       [](Tensor& x) { x.copy_(torch::gelu(x)); },
       [](const Tensor& g, const Tensor& z) { return at::gelu_backward(g, z); }},
      {Activation::Silu, "silu", true, [](const Tensor& x) { return torch::silu(x); }, "torch.silu({})", true, false,
       [](Tensor& x) { at::silu_(x); }, [](const Tensor& g, const Tensor& z) { return at::silu_backward(g, z); }},
      {Activation::Tanh, "tanh", true, [](const Tensor& x) { return torch::tanh(x); }, "torch.tanh({})", true, true,
       [](Tensor& x) { x.tanh_(); }, [](const Tensor& g, const Tensor& y) { return at::tanh_backward(g, y); }},
      {Activation::Sigmoid, "sigmoid", true, [](const Tensor& x) { return torch::sigmoid(x); }, "torch.sigmoid({})",
       true, true, [](Tensor& x) { x.sigmoid_(); },
       [](const Tensor& g, const Tensor& y) { return at::sigmoid_backward(g, y); }},
      {Activation::Softmax, "softmax", false, [](const Tensor& x) { return torch::softmax(x, -1); },
       "torch.softmax({}, -1)", false, false, nullptr, nullptr},
      {Activation::LogSoftmax, "log_softmax", false, [](const Tensor& x) { return torch::log_softmax(x, -1); },
       "torch.log_softmax({}, -1)", false, false, nullptr, nullptr},
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
