#include "connex/tensor_function.h"

#include <algorithm>

#include <torch/nn/functional/activation.h>
#include <torch/torch.h>

#include "connex/error.h"

namespace connex {

const std::vector<std::string>& TensorFunction::builtin_names() {
  static const std::vector<std::string> names = {"identity", "relu",    "gelu",    "silu",
                                                 "tanh",     "sigmoid", "softmax", "log_softmax"};
  return names;
}

TensorFunction::TensorFunction(const char* name) : TensorFunction(std::string(name)) {}

TensorFunction::TensorFunction(const std::string& name) : name_(name) {
  const auto& names = builtin_names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    fail("TensorFunction: unknown built-in \"{}\"; the built-ins are {}", name, fmt::join(names, ", "));
}

TensorFunction::TensorFunction(Fn fn, std::string name) : name_(std::move(name)), fn_(std::move(fn)) {
  if (!fn_) fail("TensorFunction: the callable \"{}\" is empty", name_);
}

TensorFunction::TensorFunction(torch::nn::AnyModule module, const std::string& type_name, std::string name)
    : name_(name.empty() ? type_name : std::move(name)), module_(std::move(module)) {}

bool TensorFunction::is_elementwise() const {
  // Callables and modules are taken at the user's word.
  return !is_builtin() || (name_ != "softmax" && name_ != "log_softmax");
}

torch::Tensor TensorFunction::operator()(const torch::Tensor& x) const {
  if (fn_) return fn_(x);
  if (!module_.is_empty()) return module_.forward(x);
  if (name_ == "identity") return x;
  if (name_ == "relu") return torch::relu(x);
  if (name_ == "gelu") return torch::gelu(x);
  if (name_ == "silu") return torch::silu(x);
  if (name_ == "tanh") return torch::tanh(x);
  if (name_ == "sigmoid") return torch::sigmoid(x);
  if (name_ == "softmax") return torch::softmax(x, -1);
  if (name_ == "log_softmax") return torch::log_softmax(x, -1);
  fail("TensorFunction: unknown built-in \"{}\"", name_);
}

std::shared_ptr<torch::nn::Module> TensorFunction::module_ptr() const {
  return module_.is_empty() ? nullptr : module_.ptr();
}

TensorFunction TensorFunction::deep_copy() const {
  TensorFunction copy = *this;
  if (!module_.is_empty()) copy.module_ = module_.clone();
  return copy;
}

}  // namespace connex
