#pragma once
// The built-in techniques a network's options switch on, as operations in
// pipeline order: the network asks for them without naming any technique.
#include <vector>

#include "connex/level_operation.h"
#include "connex/options.h"

namespace connex {

std::vector<LevelOperationPtr> builtin_operations(const NeuralNetworkOptions& options);

}  // namespace connex
