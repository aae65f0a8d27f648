#pragma once
// A gradient check for C++: autograd's gradients of a module (and of its
// input) against central differences, as torch.autograd.gradcheck does in
// Python. Written for the authors of a LevelOperation or a TensorFunction
// module: a wrong backward shows here before it trains badly.
//
//   auto net = connex::NeuralNetwork(spec, connex::NeuralNetworkOptions().dtype(torch::kFloat64)
//                                              .operations({std::make_shared<MyOperation>()}));
//   auto check = connex::check_gradients(net, torch::randn({8, 2}, torch::kFloat64));
//   if (!check.passed) std::cerr << check.summary() << "\n";
//
// The loss is L = Σ f(x) · r with r fixed random weights (so every output
// counts, with a sign and size of its own). Each checked entry v is moved to
// v ± step and L evaluated again: the central difference (L+ − L−) / 2·step
// ("numeric") must match ∂L/∂v within atol + rtol·|numeric|. Parameters, buffers
// (a batch norm's running statistics), the input, every .grad and torch's
// random generators are left as they were, bit for bit. Where f has a kink
// (relu at 0) an entry at it can differ: check at points away from kinks.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include "connex/neural_network.h"

namespace connex {

struct GradientCheckOptions {
  TORCH_ARG(double, step) = 1e-6;  // the central difference's step
  TORCH_ARG(double, atol) = 1e-5;  // an entry passes when |analytic − numeric| ≤ atol + rtol·|numeric|
  TORCH_ARG(double, rtol) = 1e-3;
  // Entries checked per tensor, evenly spaced through it (from 2 on, the
  // first and last included); 0 checks every entry. Each costs two forward passes. A
  // NeuralNetwork's weight and bias count one tensor per level, so that
  // every level is checked however wide the others are.
  TORCH_ARG(int64_t, entries_per_tensor) = 64;
  TORCH_ARG(bool, check_input) = true;  // also ∂L/∂x
  TORCH_ARG(uint64_t, seed) = 0;        // draws r (torch's global generator is not touched)
};

// One tensor's (or, for a network's weight and bias, one level's) count.
struct TensorGradientCheck {
  std::string tensor;  // "input", a named_parameters() key, or "weight (level 2)"
  int64_t entries_checked = 0;
  int64_t entries_failed = 0;
};

struct GradientCheck {
  std::string check = "check_gradients()";  // the function that made it, which summary() names
  bool passed = true;
  int64_t entries_checked = 0;
  int64_t entries_failed = 0;
  std::vector<TensorGradientCheck> tensors;  // in the order checked: parameters, then the input
  // The entry furthest outside its tolerance (or, when all pass, closest to it):
  std::string tensor;   // as in `tensors`: "input", a named_parameters() key, "weight (level 2)"
  int64_t entry = -1;   // its position in the flattened tensor
  double analytic = 0;  // autograd's ∂L/∂entry
  double numeric = 0;   // the central difference
  double ratio = 0;     // |analytic − numeric| / (atol + rtol·|numeric|): > 1 fails
  // One line: "check_gradients(): passed, 130 entries; ..." or "...: failed at
  // 9 of 130 entries (gain.g 9 of 11); worst ...", the failing tensors listed.
  std::string summary() const;
};

// Checks f's gradients with respect to module's parameters (float64, as
// are x and f's output: float32's rounding is larger than any useful step)
// and to x (with check_input). f must be deterministic: one that draws from
// torch's generator, or whose two evaluations at the same values differ, is
// refused (dropout in training mode: call eval() first). Parameters that f does not reach have a
// zero gradient, and are checked as such. The gradients come from
// torch::autograd::grad, not backward(): LibTorch 1.13 runs no hook of a
// parameter there (freeze()'s masks), so a frozen network is checked as if
// unfrozen; later versions may run them, so check before freezing.
GradientCheck check_gradients(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                              const torch::Tensor& x, const GradientCheckOptions& options = {});
// The network's forward, over all its parameters.
GradientCheck check_gradients(NeuralNetwork& network, const torch::Tensor& x, const GradientCheckOptions& options = {});

// Checks a gradient given by a formula, with no autograd: `gradient` (shaped
// as x) against central differences of Σ f(x), as the check above does for
// x ("x" in the report; check_input does not apply). For a custom HAM
// Lagrangian whose activation is written out:
//   auto check = connex::check_gradient_formula(
//       [&](const torch::Tensor& v) { return lagrangian->value(v); }, lagrangian->activation(x), x);
GradientCheck check_gradient_formula(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                     const torch::Tensor& gradient, const torch::Tensor& x,
                                     const GradientCheckOptions& options = {});

}  // namespace connex
