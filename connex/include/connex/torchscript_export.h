#pragma once
// TorchScript export: a self-contained scripted module of a network's
// inference (eval mode: dropout off) that torch::jit::load in C++ and
// torch.jit.load in Python run without connex. The forward takes [batch,
// inputs] or [inputs], like NeuralNetwork::forward. Weights are baked in as
// buffers in the layout each level runs fastest with; the file is not for
// further training (train the connex network, export again).
#include <string>

#include "connex/neural_network.h"

namespace connex {

struct Preprocessing;  // connex/dataset.h

// The module checks its input (shape [batch, inputs] or [inputs]; a real
// dtype, cast to the network's) and raises an AssertionError naming what it got.
// With a preprocessing (connex/dataset.h), it standardizes raw inputs itself
// and carries the names as attributes: feature_names, target_names and
// class_labels (the label of each output; empty lists without one).
//
// Throws, naming the option, when an activation or transformation is a
// custom callable or module (only built-ins can be scripted). Atomic write.
void export_torchscript(const NeuralNetwork& network, const std::string& path,
                        const Preprocessing* preprocessing = nullptr);
// The TorchScript source of the forward method (for inspection and tests).
std::string torchscript_source(const NeuralNetwork& network, const Preprocessing* preprocessing = nullptr);

}  // namespace connex
