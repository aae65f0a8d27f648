#pragma once
// Weighted-graph exports of a network, for people and other tools:
// - node-link JSON, the form networkx.node_link_graph reads (edge attribute
//   "weight"; node attributes "role", "bias", "dropout_p", "level"; graph
//   attributes "inputs", "outputs" and the options), and back;
// - GraphML (yEd, Gephi, networkx.read_graphml);
// - DOT for Graphviz: `dot -Tpng` draws the network, pen width by |w| and
//   colour by sign (blue positive, red negative).
#include <string>

#include <nlohmann/json.hpp>

#include "connex/neural_network.h"

namespace connex {

nlohmann::json to_node_link_json(const NeuralNetwork& network);
// The same network back (same outputs): structure, options, weights and biases.
NeuralNetwork from_node_link_json(const nlohmann::json& json, const std::string& source = "node-link JSON");
std::string to_graphml(const NeuralNetwork& network);
std::string to_dot(const NeuralNetwork& network);

// Writes by file extension: .json (node-link), .graphml, .dot. Atomic.
void export_graph(const NeuralNetwork& network, const std::string& path);
NeuralNetwork import_graph_json(const std::string& path);

}  // namespace connex
