#pragma once
// The JSON network config: a network's graph and every option that can be
// written down, without parameters. Schema (see configs/ and the README):
//
//   {
//     "format": "connex-network", "version": 1,
//     "graph": {"neurons": [...], "edges": [[u, v], ...] | "adjacency": {...},
//               "inputs": [...], "outputs": [...]}
//            | {"prebuilt": "MLP" | "DenseMLP", "input_size": 1, "output_size": 2,
//               "width": 128, "depth": 4},
//     "options": {"hidden_activation": "gelu", "output_transformation": "identity",
//                 "dropout_p": 0.1 | {"hidden": 0.1, "neurons": [[id, p], ...]},
//                 "topo_sort": [...], "seed": 0, "dtype": "float32"}
//   }
//
// Every key of "options" is optional. Errors name the JSON path and, when
// read from a file, the file.
#include <string>

#include <nlohmann/json.hpp>

#include "connex/neural_network.h"

namespace connex {

// Throws when an option cannot be written down (a custom callable or module).
nlohmann::json network_config(const NeuralNetwork& network, const char* context = "network_config()");
NeuralNetwork network_from_config(const nlohmann::json& config, const std::string& source = "config");

NeuralNetwork load_config(const std::string& path);
// Written atomically (temporary file + rename).
void save_config(const NeuralNetwork& network, const std::string& path);

}  // namespace connex
