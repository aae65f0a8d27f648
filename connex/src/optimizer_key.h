#pragma once
// The key under which torch::optim files a parameter's state: the address of
// the parameter's TensorImpl, as text in LibTorch 1.x and as the pointer
// itself from 2.0. Every reader and writer of Optimizer::state() asks here.
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include <torch/torch.h>

namespace connex {

using OptimizerStateKey = typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

// A template only so that the branch this LibTorch does not use is never compiled.
template <typename Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& parameter) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;  // how LibTorch 1.x writes the pointer (c10::guts::to_string)
    text << static_cast<const void*>(parameter.unsafeGetTensorImpl());
    return text.str();
  } else {
    return static_cast<Key>(parameter.unsafeGetTensorImpl());
  }
}

}  // namespace connex
