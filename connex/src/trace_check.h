#pragma once
// The one check of a LevelTrace against the network that reads it, for every
// reader (activation_scores, the Rewirer, absent_connection_gradients).
// Internal (neural_network.cpp).
#include "connex/neural_network.h"

namespace connex {

// Throws "<context>: ..." unless `trace` holds a value per level of
// `network`, each [level size, batch], and was made by a network of the same
// compiled graph (the same Topology object).
void check_trace(const NeuralNetworkImpl& network, const LevelTrace& trace, const char* context);

}  // namespace connex
