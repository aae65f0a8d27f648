#pragma once
// TorchScript export: a self-contained scripted module of a network's
// inference (eval mode: dropout off) that torch::jit::load in C++ and
// torch.jit.load in Python run without connex. The forward takes [batch,
// inputs] or [inputs], like NeuralNetwork::forward. Weights are baked in as
// buffers in the layout each batch runs fastest with; the file is not for
// further training (train the connex network, export again).
#include <string>

#include "connex/neural_network.h"

namespace connex {

// Throws, naming the option, when an activation or transformation is a
// custom callable or module (only built-ins can be scripted). Atomic write.
void export_torchscript(const NeuralNetwork& network, const std::string& path);
// The TorchScript source of the forward method (for inspection and tests).
std::string torchscript_source(const NeuralNetwork& network);

}  // namespace connex
