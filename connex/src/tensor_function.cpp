#include "connex/tensor_function.h"

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "activation.h"
#include "connex/error.h"

namespace connex {

const std::vector<std::string>& TensorFunction::builtin_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& a : activations()) v.emplace_back(a.name);
    return v;
  }();
  return names;
}

TensorFunction::TensorFunction(const char* name) : TensorFunction(std::string(name)) {}

TensorFunction::TensorFunction(const std::string& name) : name_(name) {
  if (!find_activation(name))
    fail("TensorFunction: unknown built-in \"{}\"; the built-ins are {}", name, fmt::join(builtin_names(), ", "));
}

TensorFunction::TensorFunction(Fn fn, std::string name) : name_(std::move(name)), fn_(std::move(fn)) {
  if (!fn_) fail("TensorFunction: the callable \"{}\" is empty", name_);
}

TensorFunction::TensorFunction(torch::nn::AnyModule module, const std::string& type_name, std::string name)
    : name_(name.empty() ? type_name : std::move(name)), module_(std::move(module)) {}

namespace {

bool is_builtin_kind(const TensorFunction& f, Activation kind) {
  const ActivationInfo* a = f.is_builtin() ? find_activation(f.name()) : nullptr;
  return a && a->kind == kind;
}

}  // namespace

bool TensorFunction::is_softmax() const { return is_builtin_kind(*this, Activation::Softmax); }
bool TensorFunction::is_log_softmax() const { return is_builtin_kind(*this, Activation::LogSoftmax); }

bool TensorFunction::is_elementwise() const {
  // Callables and modules are taken at the user's word.
  return !is_builtin() || find_activation(name_)->elementwise;
}

torch::Tensor TensorFunction::operator()(const torch::Tensor& x) const {
  if (fn_) return fn_(x);
  if (!module_.is_empty()) return module_.forward(x);
  if (const ActivationInfo* a = find_activation(name_)) return a->apply(x);
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
