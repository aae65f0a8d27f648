#pragma once
// ParameterRemap: which entries of one network's parameters came from which
// entries of another's. An edit (plasticity.h) returns one;
// NeuralNetwork::adopt_parameters() applies one, and optimizer state follows one.
#include <string>
#include <unordered_map>

#include <torch/types.h>

namespace connex {

// For each parameter of the new network (by name, as named_parameters()
// gives it), which entries came from which entries of the old one. Parameters
// not listed under `moved` were copied whole (same name, same shape).
struct ParameterRemap {
  struct Moved {
    torch::Tensor new_index, old_index;  // int64, same length: new[new_index[k]] = old[old_index[k]]
  };
  std::unordered_map<std::string, Moved> moved;
};

}  // namespace connex
