#pragma once
// Structure learning on a network's graph: queries by label, dead-neuron
// removal and magnitude pruning with a scope and a floor. Every edit returns
// an EditResult, so optimizer_after_edit() carries the optimizer on (same
// type, options and state), and the network's other parameters stay as trained.
//
//   auto pruned = connex::prune(
//       net, connex::PruneOptions().fraction(0.5).scope(connex::PruneScope::PerNeuron).keep_min(1));
//   auto optimizer2 = connex::optimizer_after_edit(*optimizer, net, pruned);   // optimizer_state.h
//   auto cleaned = connex::remove_dead_neurons(pruned.network);
//   auto optimizer3 = connex::optimizer_after_edit(*optimizer2, pruned.network, cleaned);
//   net = cleaned.network;  // trained on with optimizer3
// A GraphQueries describes the graph it was made from: make a new one after an edit.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "connex/neural_network.h"
#include "connex/plasticity.h"

namespace connex {

// Neighbours and degrees by label. The constructor indexes the outgoing
// connections once, O(neurons + connections); each query then costs the size
// of its answer. Unknown labels throw, naming the query and the neuron.
class GraphQueries {
 public:
  explicit GraphQueries(const NeuralNetwork& network);
  // In connection order (the topology's (target, source) order).
  std::vector<NeuronId> successors(const NeuronId& id) const;
  std::vector<NeuronId> predecessors(const NeuronId& id) const;
  int64_t in_degree(const NeuronId& id) const;
  int64_t out_degree(const NeuronId& id) const;
  Role role(const NeuronId& id) const;

 private:
  int64_t dense(const NeuronId& id, const char* query) const;
  std::shared_ptr<const Topology> topology_;
  std::vector<int64_t> out_offsets_, out_targets_;  // by source dense id: its targets' dense ids
};

// Hidden neurons that cannot change any output: no input reaches them, or
// they reach no output. One that no input reaches has a constant value,
// folded into its successors' biases on removal; with a technique on (a
// per-level operation) it is kept, as the constant would pass through the
// technique. With an operation that reads a level's inputs
// together (topo norm, either attention), an input of a level that reaches
// an output reaches it too, and a neuron stays whose removal would take an
// input away from such a level. In the order of spec().neurons().
// O(neurons + connections).
std::vector<NeuronId> dead_neurons(const NeuralNetwork& network);
// Outputs that no input reaches: their values are constants (what a pruning
// that cut all their paths leaves). In the user's output order; O(neurons + connections).
std::vector<NeuronId> constant_outputs(const NeuralNetwork& network);
// Removes every dead neuron (and its connections) in one edit; an edit that
// changes nothing when there are none. The outputs stay as they were (in
// float32 within a rounding of each bias that takes a folded constant).
EditResult remove_dead_neurons(const NeuralNetwork& network);

// Which connections compete with each other for survival.
enum class PruneScope {
  Global,     // all of them
  PerNeuron,  // the connections into each neuron: each keeps its strongest share
              // (a share of one input rounds to all of it at 0.5: keep_min(1) keeps it)
  PerLevel,   // the connections into each level
};
// Every scope, in declaration order: the one list that names, parsers,
// checks and the command line's choices read.
inline constexpr PruneScope kPruneScopes[] = {PruneScope::Global, PruneScope::PerNeuron, PruneScope::PerLevel};
// "global", "neuron" or "level": the command line's and its run records' names.
const char* prune_scope_name(PruneScope scope);
// One of those names (either case); anything else throws, naming it.
PruneScope prune_scope_from_name(const std::string& name);

struct PruneOptions {
  // Remove this fraction of each scope's candidates, weakest |w| first (ties
  // in weight_tensor() order; a NaN |w| counts as the strongest)...
  TORCH_ARG(std::optional<double>, fraction) = std::nullopt;
  // ...or every candidate with |w| below this (give exactly one).
  TORCH_ARG(std::optional<double>, threshold) = std::nullopt;
  // Scopes other than Global take a fraction only (each group's weakest
  // share); with a threshold they are refused, since it removes the same in any scope.
  TORCH_ARG(PruneScope, scope) = PruneScope::Global;
  // Every hidden and output neuron keeps at least this many incoming
  // connections (fewer only if it had fewer): a connection whose removal
  // would break the floor is kept.
  TORCH_ARG(int64_t, keep_min) = 0;
  // Never prune the connections into output neurons (paths further up may
  // still be cut: constant_outputs() tells).
  TORCH_ARG(bool, protect_outputs) = false;
  // Frozen connections (NeuralNetwork::freeze) hold weights the user fixed:
  // they are not candidates (nor counted in a fraction) unless this is false.
  TORCH_ARG(bool, keep_frozen) = true;
  // What "weak" means: one finite floating-point score >= 0 per connection, in
  // weight_tensor()'s order (activation_scores(), gradient_scores() or the
  // user's own; others are refused); undefined: |w|.
  // The threshold, when given, applies to these scores.
  TORCH_ARG(torch::Tensor, scores) = {};
};

// |w| times the mean |value| of the connection's source over the batch of a
// trace (a forward pass of this network): how much each connection moves its
// target on that data, |w·a|.
torch::Tensor activation_scores(const NeuralNetwork& network, const LevelTrace& trace);
// |w · dL/dw|, from weight_tensor().grad() after loss.backward(): the
// first-order change of the loss when the connection is removed. Refused
// when every gradient of an unfrozen connection is 0 (zero_grad() with no
// backward() since).
torch::Tensor gradient_scores(const NeuralNetwork& network);

// The connections prune() would remove, weakest first (ties in connection order).
std::vector<Edge> connections_to_prune(const NeuralNetwork& network, const PruneOptions& options);
EditResult prune(const NeuralNetwork& network, const PruneOptions& options);

}  // namespace connex
