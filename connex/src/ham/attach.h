#pragma once
// How built-in Lagrangians and synapses register what they size in attach():
// an entry an earlier, refused attach registered already is taken over, so a
// part can join a HAM after a refused try (torch refuses a second
// registration of a name). Internal.
#include <string>

#include <torch/nn/module.h>

namespace connex::ham {

inline torch::Tensor attach_parameter(torch::nn::Module& module, const std::string& name, const torch::Tensor& value) {
  auto existing = module.named_parameters(/*recurse=*/false);
  if (auto* p = existing.find(name)) {
    p->set_data(value);
    return *p;
  }
  return module.register_parameter(name, value);
}

inline torch::Tensor attach_buffer(torch::nn::Module& module, const std::string& name, const torch::Tensor& value) {
  auto existing = module.named_buffers(/*recurse=*/false);
  if (auto* b = existing.find(name)) {
    b->set_data(value);
    return *b;
  }
  return module.register_buffer(name, value);
}

}  // namespace connex::ham
