#pragma once
// Weighted-graph exports of a network, for people and other tools:
// - node-link JSON, the form networkx.node_link_graph reads (edge attributes
//   "weight" and "frozen"; node attributes "role", "bias", "dropout_p",
//   "level", "frozen"; graph attributes "inputs", "outputs" and the options),
//   and back;
// - GraphML (yEd, Gephi, networkx.read_graphml);
// - DOT for Graphviz: `dot -Tpng` draws the network, pen width by |w| and
//   colour by sign (blue positive, red negative), frozen entries dashed;
//   above a few hundred neurons, draw_dot() draws a summary instead.
// Frozen weights and biases are marked `"frozen": true` (only where frozen)
// in the JSON and GraphML, and the JSON import freezes them again.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "connex/neural_network.h"

namespace connex {

nlohmann::json to_node_link_json(const NeuralNetwork& network);
// The same network back (same outputs): structure, options, weights and
// biases, frozen entries. Every link must join two of the nodes.
NeuralNetwork from_node_link_json(const nlohmann::json& json, const std::string& source = "node-link JSON");
std::string to_graphml(const NeuralNetwork& network);
// Every neuron and connection.
std::string to_dot(const NeuralNetwork& network);
// One box per topological level (its neuron count by role) and one arrow per
// pair of connected levels (its connection count and mean |w|); over
// `max_boxes` levels, consecutive levels share a box. Readable at any size:
// a full drawing of a thousand neurons is a smear, and Graphviz takes minutes.
std::string to_summary_dot(const NeuralNetwork& network, int64_t max_boxes = 40);

struct DotOptions {
  // Above either count draw_dot() draws the summary.
  int64_t max_neurons = 300;
  int64_t max_connections = 3000;
  // Graphviz scales a larger drawing down to fit max_inches a side and
  // renders bitmaps at `dpi` (its own default), so a PNG is at most
  // max_inches * dpi pixels a side (40 * 96 = 3840). 0: no bound.
  double max_inches = 40;
  int dpi = 96;
};
struct DotDrawing {
  std::string dot;
  bool summary = false;
  // What was drawn: "all 12 neurons, 14 connections", or
  // "summary of 1,027 neurons, 197,120 connections in 6 levels".
  std::string description;
  // Why a summary: "full drawings above 300 neurons or 3,000 connections are unreadable".
  std::string reason;
};
// The full drawing or, above the options' counts, the summary, bounded in size.
DotDrawing draw_dot(const NeuralNetwork& network, const DotOptions& options = {});

// Writes by file extension: .json (node-link), .graphml, .dot. Atomic.
void export_graph(const NeuralNetwork& network, const std::string& path);
NeuralNetwork import_graph_json(const std::string& path);

}  // namespace connex
