#pragma once
// Prebuilt networks (connex::nn), the counterparts of Connex's connex.nn.
// Neuron ids are integers: inputs 0..input_size-1, then each hidden layer,
// then the outputs.
#include <cstdint>

#include "connex/neural_network.h"

namespace connex::nn {

// `depth` hidden layers of `width` neurons; each layer feeds only the next.
GraphSpec mlp_spec(int64_t input_size, int64_t output_size, int64_t width, int64_t depth);
// Same layers, but every layer (inputs included) feeds every later layer.
GraphSpec dense_mlp_spec(int64_t input_size, int64_t output_size, int64_t width, int64_t depth);

NeuralNetwork MLP(int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                  NeuralNetworkOptions options = {});
NeuralNetwork DenseMLP(int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                       NeuralNetworkOptions options = {});

}  // namespace connex::nn
