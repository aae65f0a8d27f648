#pragma once
// A custom autograd node's backward with create_graph (a gradient penalty,
// Hessian-vector products): the gradients its own CPU loops compute would be
// constants, so it hands over to the same formula in torch operations, whose
// gradients are differentiable again. Internal.
#include <functional>

#include <torch/torch.h>

namespace connex {

// One entry per input: the gradient of formula(inputs) against grad_output,
// itself differentiable; undefined for an input that does not require grad.
inline torch::autograd::variable_list formula_gradients(
    const torch::autograd::variable_list& inputs,
    const std::function<torch::Tensor(const torch::autograd::variable_list&)>& formula,
    const torch::Tensor& grad_output) {
  torch::autograd::variable_list wanted, result(inputs.size());
  for (const auto& input : inputs)
    if (input.requires_grad()) wanted.push_back(input);
  if (wanted.empty()) return result;
  const auto grads = torch::autograd::grad({formula(inputs)}, wanted, {grad_output}, /*retain_graph=*/true,
                                           /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t k = 0, next = 0; k < inputs.size(); ++k)
    if (inputs[k].requires_grad()) result[k] = grads[next++];
  return result;
}

}  // namespace connex
