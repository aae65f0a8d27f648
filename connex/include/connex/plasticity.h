#pragma once
// Plasticity: edit the graph of a (trained) network and get a new network
// that keeps every parameter of every surviving neuron and connection.
//
//   auto result = connex::edit(net)
//                     .add_connections({{1, 6}, {2, 11}})
//                     .remove_neurons({9})
//                     .build(/*seed=*/1);
//   connex::NeuralNetwork edited = result.network;
//
// The editor collects many edits, validates each against the graph as it
// stands after the previous ones (the network itself is never touched), then
// rebuilds once. Parameters move by label — (source, target) for weights,
// neuron id for biases — never by position. New parameters are drawn from the
// seed. The result shares no tensor storage with the original.
// The free functions below are one-edit uses of the editor.
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <initializer_list>
#include <vector>

#include "connex/graph_spec.h"
#include "connex/neural_network.h"
#include "connex/options.h"
#include "connex/parameter_remap.h"

namespace connex {

// Where each old position went (-1: removed). Positions are indices into the
// old network's input_neurons(), output_neurons() and spec().neurons().
struct PositionRemap {
  std::vector<int64_t> inputs, outputs, neurons;
};

struct EditResult {
  NeuralNetwork network;
  PositionRemap positions;
  ParameterRemap parameters;
  // The structure the edit started from: the optimizer plumbing
  // (optimizer_state.h) refuses an old network of another structure.
  std::shared_ptr<const Topology> base;
};

class NetworkEditor {
 public:
  explicit NetworkEditor(const NeuralNetwork& network);

  // Connections that already exist are ignored; one this edit removed is
  // refused (build() first, then add it anew with a drawn weight).
  NetworkEditor& add_connections(const std::vector<Edge>& edges);
  NetworkEditor& add_connections(const Adjacency& adjacency);
  NetworkEditor& remove_connections(const std::vector<Edge>& edges);
  NetworkEditor& remove_connections(const Adjacency& adjacency);
  // Removes base connections by index: positions in the network's
  // weight_tensor() (its topology's connection order), for a selection made
  // on tensors, with no label looked up per connection. Each index once, in
  // range, not removed before in this edit, between neurons it keeps.
  // Indices of an earlier network go stale after an edit (its
  // EditResult::parameters.moved["weight"] pairs new and old indices).
  NetworkEditor& remove_connections_at(const std::vector<int64_t>& connections);
  NetworkEditor& remove_connections_at(std::initializer_list<int64_t> connections) {  // {} picks neither overload
    return remove_connections_at(std::vector<int64_t>(connections));
  }
  // The same from a tensor on any device: 1-D int64 indices, or a bool mask
  // with one entry per connection (e.g. `score < threshold`).
  NetworkEditor& remove_connections_at(const torch::Tensor& connections);
  // New inputs come before the existing ones: [0, 1] + [2, 3] -> [2, 3, 0, 1].
  NetworkEditor& add_input_neurons(const std::vector<NeuronId>& ids);
  NetworkEditor& add_hidden_neurons(const std::vector<NeuronId>& ids);
  // New outputs come after the existing ones.
  NetworkEditor& add_output_neurons(const std::vector<NeuronId>& ids);
  // Removes the neurons and every connection to or from them.
  NetworkEditor& remove_neurons(const std::vector<NeuronId>& ids);
  // A number sets every hidden neuron (inputs and outputs to 0); a map changes
  // only the neurons it names.
  NetworkEditor& set_dropout_p(const DropoutSpec& dropout);
  // Growth that keeps the function: every new connection into a neuron that
  // existed before the edit starts at weight 0, so each old output stays
  // exactly as it was (new neurons read their inputs with drawn weights and
  // start to matter once training moves their outgoing ones). build()
  // refuses a new output under a built-in output transformation over all
  // the outputs (softmax, log_softmax; a custom one is taken as element-wise),
  // and, with an operation that reads a whole level (topo norm, the
  // attentions), an edit that gives an old level a new input
  // or moves an old neuron to another level (even where a removal in the
  // same edit moves it), and with neuron attention one that adds a
  // connection into an old neuron.
  NetworkEditor& function_preserving(bool on = true);

  // Validates the whole (acyclicity), rebuilds once, moves parameters.
  EditResult build(uint64_t seed = 0) const;

 private:
  // The steps of build() (plasticity.cpp): patched_topology(), or else the others in order.
  struct IndexGraph;  // the edited graph over neuron positions
  IndexGraph index_graph() const;
  NeuralNetworkOptions edited_options(uint64_t seed) const;
  GraphSpec checked_spec(IndexGraph& graph) const;
  // The base's topology patched with this edit, where no compile is needed.
  std::shared_ptr<const Topology> patched_topology(const NeuralNetworkOptions& options,
                                                   ConnectionArray& old_connection) const;

  // The neuron's dense id in the base network; -1 if it is not there or this edit removed it.
  int64_t base_dense(const NeuronId& id) const;
  // The edge's index in the base network; -1 if it is not there or an end was removed.
  int64_t base_connection(const Edge& edge) const;
  bool exists(const NeuronId& id) const;
  Role role_of(const NeuronId& id) const;
  void add_neurons(const std::vector<NeuronId>& ids, Role role, const char* context);

  NeuralNetwork network_;
  std::shared_ptr<const Topology> base_;
  // Overlay over the base network: what this edit adds and removes.
  std::vector<NeuronId> added_neurons_;
  std::unordered_map<NeuronId, Role, NeuronIdHash> added_roles_;
  std::unordered_set<NeuronId, NeuronIdHash> removed_neurons_;
  std::vector<Edge> added_edges_;  // in order; may include later-removed ones
  std::unordered_set<Edge, EdgeHash> added_edge_set_;
  // Base connections removed: a byte per index in the base topology (empty
  // before the first removal; 2 while a call checks its list). No hashing per
  // removed connection, here or at build(), which reads them in order.
  std::vector<uint8_t> removed_;
  std::vector<NeuronId> inputs_, outputs_;
  DropoutSpec dropout_;
  bool function_preserving_ = false;
};

// Starts a batch of edits on `network` (which is never modified).
NetworkEditor edit(const NeuralNetwork& network);

NeuralNetwork add_connections(const NeuralNetwork& network, const std::vector<Edge>& edges, uint64_t seed = 0);
NeuralNetwork add_connections(const NeuralNetwork& network, const Adjacency& adjacency, uint64_t seed = 0);
NeuralNetwork remove_connections(const NeuralNetwork& network, const std::vector<Edge>& edges);
NeuralNetwork remove_connections(const NeuralNetwork& network, const Adjacency& adjacency);
NeuralNetwork add_input_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed = 0);
NeuralNetwork add_hidden_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed = 0);
NeuralNetwork add_output_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids, uint64_t seed = 0);
// Returns the new network and where the remaining neurons' positions went.
std::pair<NeuralNetwork, PositionRemap> remove_neurons(const NeuralNetwork& network, const std::vector<NeuronId>& ids);
NeuralNetwork set_dropout_p(const NeuralNetwork& network, const DropoutSpec& dropout);

// What an edit from `before` to `after` would have returned, matching
// neurons and connections by label: for networks made by the free functions
// above (or any two networks), so that optimizer_after_edit() and
// transfer_optimizer_state() can carry an optimizer from one to the other.
EditResult as_edit(const NeuralNetwork& before, const NeuralNetwork& after);

}  // namespace connex
