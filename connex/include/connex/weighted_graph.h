#pragma once
// WeightedGraph: a plain-data view of a network — every neuron with its role,
// bias and dropout, every connection with its weight, and which are frozen. The C++ counterpart of
// Connex's to_networkx_weighted_digraph; exporters (JSON, GraphML, DOT) read it.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "connex/graph_spec.h"

namespace connex {

struct WeightedGraph {
  struct Neuron {
    NeuronId id;
    Role role = Role::Hidden;
    std::optional<double> bias;  // inputs have none
    double dropout_p = 0.0;
    int64_t level = 0;    // inputs are 0, else one more than the deepest predecessor
    bool frozen = false;  // the bias is frozen (NeuralNetwork::freeze); never for inputs
  };
  struct Connection {
    NeuronId from, to;
    double weight = 0.0;
    bool frozen = false;  // the weight is frozen
  };
  std::vector<Neuron> neurons;          // in the graph's neuron order
  std::vector<Connection> connections;  // in the graph's edge order
  std::vector<NeuronId> inputs, outputs;
  // A parameter of a per-level operation (a technique), by full name ("topo_self_attention.level1_query_weight").
  struct OperationParameter {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<double> values;  // row-major
  };
  std::vector<OperationParameter> operation_parameters;
};

}  // namespace connex
