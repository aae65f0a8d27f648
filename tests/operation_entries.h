#pragma once
// Which entries of a network's technique parameters survive an edit, shared by
// the tests (test_util.h, with gtest assertions) and the edit fuzzer (with its
// own checks), so it has no gtest dependency.
//
// An entry of a parameter of `after` survives when the same operation in
// `before` has a parameter of the same name and every keyed index of the entry
// (a neuron label per dimension, in the same run: DimKeys) exists there; an unkeyed dimension
// maps index to index where the old size allows.
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "connex/connex.h"

namespace connex::testing {

// Calls visit(operation name, parameter name, flat index in the new tensor,
// new value, old value) for every surviving entry; values in double.
template <typename Visit>
void for_each_surviving_operation_entry(const NeuralNetwork& before, const NeuralNetwork& after, Visit&& visit) {
  for (size_t k = 0; k < after->operations().size(); ++k) {
    const std::string operation = after->operations()[k]->name();
    size_t j = 0;
    while (j < before->operations().size() && before->operations()[j]->name() != operation) ++j;
    if (j == before->operations().size()) continue;
    const auto& old_mod = before->operation_parameters(j);
    const auto& new_mod = after->operation_parameters(k);
    for (const auto& [name, new_keys] : new_mod.keys()) {
      if (!old_mod.keys().count(name)) continue;
      const auto& old_keys = old_mod.keys().at(name);
      auto old_t = old_mod.get(name).detach().to(torch::kFloat64).contiguous();
      auto new_t = new_mod.get(name).detach().to(torch::kFloat64).contiguous();
      const auto sizes = new_t.sizes().vec();
      if (sizes.size() != old_keys.size() || old_t.dim() != new_t.dim())
        throw std::logic_error(operation + "." + name + " changed rank across the edit");
      // Old position of each new index, per dimension (-1: not in the old network).
      std::vector<std::vector<int64_t>> old_of(sizes.size());
      for (size_t d = 0; d < sizes.size(); ++d) {
        std::map<std::pair<int64_t, NeuronId>, int64_t> old_pos;  // (run, label) -> index
        if (old_keys[d])
          for (size_t i = 0; i < old_keys[d]->size(); ++i)
            old_pos.emplace(std::make_pair(old_keys[d]->run(i), old_keys[d]->labels[i]), static_cast<int64_t>(i));
        for (int64_t i = 0; i < sizes[d]; ++i) {
          if (!new_keys[d] || !old_keys[d]) {
            old_of[d].push_back(!new_keys[d] && !old_keys[d] && i < old_t.size(static_cast<int64_t>(d)) ? i : -1);
            continue;
          }
          auto it = old_pos.find({new_keys[d]->run(i), new_keys[d]->labels[i]});
          old_of[d].push_back(it == old_pos.end() ? -1 : it->second);
        }
      }
      const double* nv = new_t.template data_ptr<double>();
      const double* ov = old_t.template data_ptr<double>();
      const auto old_strides = old_t.strides().vec();
      for (int64_t flat = 0; flat < new_t.numel(); ++flat) {
        int64_t rem = flat, old_flat = 0;
        bool found = true;
        for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
          const int64_t o = old_of[d][rem % sizes[d]];
          rem /= sizes[d];
          if (o < 0)
            found = false;
          else
            old_flat += o * old_strides[d];
        }
        if (found) visit(operation, name, flat, nv[flat], ov[old_flat]);
      }
    }
  }
}

}  // namespace connex::testing
