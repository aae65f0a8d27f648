#pragma once
// TensorFunction: a Tensor -> Tensor map used as a hidden activation (applied
// element-wise) or as an output transformation (applied to the whole output
// vector). It is one of: a built-in known by name (so it can be saved and
// exported), any C++ callable, or a trainable torch module whose parameters
// become part of the network.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/container/any.h>
#include <torch/types.h>

namespace connex {

class TensorFunction {
 public:
  using Fn = std::function<torch::Tensor(const torch::Tensor&)>;

  // Built-ins: identity, relu, gelu, silu, tanh, sigmoid (element-wise) and
  // softmax, log_softmax (over the last dimension). Unknown names throw.
  TensorFunction(const char* name);         // NOLINT: implicit, so options read .hidden_activation("relu")
  TensorFunction(const std::string& name);  // NOLINT
  // Any callable. `name` shows in pretty_print and in errors.
  TensorFunction(Fn fn, std::string name = "custom");  // NOLINT
  // A trainable module with `Tensor forward(Tensor)`; it must be Cloneable.
  template <typename ModuleType>
  TensorFunction(torch::nn::ModuleHolder<ModuleType> module, std::string name = "")  // NOLINT
      : TensorFunction(torch::nn::AnyModule(module), module->name(), std::move(name)) {}
  TensorFunction() : TensorFunction("identity") {}

  static const std::vector<std::string>& builtin_names();

  const std::string& name() const { return name_; }
  bool is_builtin() const { return !fn_ && module_.is_empty(); }
  bool is_module() const { return !module_.is_empty(); }
  // Whether it is the built-in softmax or log_softmax: its outputs are then
  // probabilities or log-probabilities rather than logits.
  bool is_softmax() const;
  bool is_log_softmax() const;
  // Whether it maps each element on its own (required of hidden activations).
  bool is_elementwise() const;

  torch::Tensor operator()(const torch::Tensor& x) const;

  // The module to register as a child (null unless is_module()).
  std::shared_ptr<torch::nn::Module> module_ptr() const;
  // A copy whose module (if any) is a deep clone, so two networks never share parameters.
  TensorFunction deep_copy() const;

 private:
  TensorFunction(torch::nn::AnyModule module, const std::string& type_name, std::string name);

  std::string name_;
  Fn fn_;
  mutable torch::nn::AnyModule module_;  // AnyModule::forward is non-const
};

}  // namespace connex
