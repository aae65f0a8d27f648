#pragma once
// How built-in Lagrangians and synapses register what they size in attach():
// an entry an earlier, refused attach registered already is taken over, so a
// part can join a HAM after a refused try (torch refuses a second
// registration of a name); and how a part is placed like the rest. Internal.
#include <mutex>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <torch/nn/module.h>

namespace connex::ham {

// `value` under `name`, as a parameter (or else a buffer) of `module`.
inline torch::Tensor attach_entry(torch::nn::Module& module, const std::string& name, const torch::Tensor& value,
                                  bool parameter) {
  auto existing = parameter ? module.named_parameters(/*recurse=*/false) : module.named_buffers(/*recurse=*/false);
  if (auto* entry = existing.find(name)) {
    entry->set_data(value);
    return *entry;
  }
  return parameter ? module.register_parameter(name, value) : module.register_buffer(name, value);
}

inline torch::Tensor attach_parameter(torch::nn::Module& module, const std::string& name, const torch::Tensor& value) {
  return attach_entry(module, name, value, true);
}

inline torch::Tensor attach_buffer(torch::nn::Module& module, const std::string& name, const torch::Tensor& value) {
  return attach_entry(module, name, value, false);
}

// Moves a part (or a whole HAM: to() is virtual) to what `where` names; a
// dtype or device it leaves out stays.
inline void move_to(torch::nn::Module& part, const torch::TensorOptions& where) {
  if (where.has_dtype()) part.to(where.dtype().toScalarType());
  if (where.has_device()) part.to(where.device());
}

// Keeps the default CPU generator's state across a scope: attach() draws
// initial values, which a clone or a load overwrites at once; without it,
// a snapshot taken while training changed every later draw.
class RandomStateKept {
 public:
  RandomStateKept() {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> hold(generator.mutex());
    state_ = generator.get_state();
  }
  ~RandomStateKept() {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> hold(generator.mutex());
    generator.set_state(state_);
  }
  RandomStateKept(const RandomStateKept&) = delete;
  RandomStateKept& operator=(const RandomStateKept&) = delete;

 private:
  at::Tensor state_;
};

}  // namespace connex::ham
