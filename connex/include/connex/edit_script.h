#pragma once
// A plasticity edit written down. EditScript records the same calls as
// NetworkEditor (in order) so that an edit can be stored as JSON, sent to
// other processes and replayed: replaying one script on equal networks with
// the same seed gives bit-identical networks. Data-parallel training uses it
// to apply an edit decided on rank 0 on every rank.
//
// JSON form, one object per step:
//   [{"remove_connections": [[0, 3], [2, 5]]}, {"add_hidden_neurons": ["h1"]},
//    {"add_connections": [[0, "h1"]]}, {"set_dropout_p": 0.1}]
// Step names: add_connections, remove_connections, add_input_neurons,
// add_hidden_neurons, add_output_neurons, remove_neurons, set_dropout_p
// (a number or {"hidden": p, "neurons": [[id, p], ...]}).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "connex/plasticity.h"

namespace connex {

class EditScript {
 public:
  EditScript& add_connections(std::vector<Edge> edges);
  EditScript& remove_connections(std::vector<Edge> edges);
  EditScript& add_input_neurons(std::vector<NeuronId> ids);
  EditScript& add_hidden_neurons(std::vector<NeuronId> ids);
  EditScript& add_output_neurons(std::vector<NeuronId> ids);
  EditScript& remove_neurons(std::vector<NeuronId> ids);
  EditScript& set_dropout_p(DropoutSpec dropout);

  bool empty() const { return steps_.empty(); }
  size_t size() const { return steps_.size(); }

  // An editor for `network` with every step applied (each validated as
  // NetworkEditor validates it; the first bad step throws and names itself).
  NetworkEditor apply(const NeuralNetwork& network) const;
  EditResult build(const NeuralNetwork& network, uint64_t seed = 0) const { return apply(network).build(seed); }

  nlohmann::json to_json() const;
  // Errors name `source` and the JSON path of the bad value.
  static EditScript from_json(const nlohmann::json& json, const std::string& source = "edit script");

 private:
  enum class Kind { AddConnections, RemoveConnections, AddInputs, AddHidden, AddOutputs, RemoveNeurons, SetDropout };
  struct Step {
    Kind kind;
    std::vector<Edge> edges;    // connection steps
    std::vector<NeuronId> ids;  // neuron steps
    DropoutSpec dropout;        // set_dropout_p
  };
  static const char* name_of(Kind kind);
  std::vector<Step> steps_;
};

}  // namespace connex
