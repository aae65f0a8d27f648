#pragma once
// Plasticity for a HAM: add and remove the neurons of a 1-D layer and the
// connections of graph synapses, keeping every surviving parameter entry by
// label (neuron labels for layers, (i, j) labels for graph connections) and,
// with optimizer_after_edit, the optimizer's state.
//
//   auto result = connex::ham::edit(ham)
//                     .remove_connections("lateral", {{3, 7}})
//                     .add_neurons("hidden", {200, 201})
//                     .build();
//   auto next = connex::ham::optimizer_after_edit(adam, ham, result);  // same lr, moments carried
//   ham = result.ham;
//
// The edited HAM is new; the original is never changed. New entries (rows of
// a linear synapse for a new neuron, a new graph connection without a given
// weight) start as a fresh synapse would draw them, except new graph
// connections, which start at 0 so the energy is unchanged. Removing a neuron
// removes the graph connections that touch it. A layer's neurons and a graph
// synapse's connections keep their order; new ones follow, in the order
// given (so do a linear synapse's rows and columns). A neuron edit is refused for
// a layer joined by a custom synapse that has parameters but names none of
// them in neuron_dims() (conv2d and attention join no 1-D layer).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/optim/optimizer.h>

#include "connex/ham/ham.h"
#include "connex/parameter_remap.h"

namespace connex::ham {

// What an edit's parameter map refers to, in a few numbers per part: the
// layers (shape; a 1-D layer's neuron labels; the Lagrangian's kind) and
// the synapses (the layers they join; their class; a graph synapse's
// connections), by name, in order. Labels are
// kept as a count and a fingerprint, not copied: a graph of millions of
// connections costs an edit no second copy.
struct Structure {
  struct Part {
    std::string name;
    std::vector<int64_t> shape;       // a layer's per-sample shape
    std::vector<std::string> joined;  // a synapse's layers, in order
    int64_t labels = 0;               // a 1-D layer's neurons or a graph synapse's connections
    uint64_t fingerprint = 0;         // of those labels, in order
    std::string kind;                 // a layer's Lagrangian ("softmax"), a synapse's class ("GraphSynapse")
  };
  std::vector<Part> layers, synapses;
  static Structure of(const HAMImpl& ham);
  // Where `here` first differs from `base`, in words ("its synapse \"s\" has
  // 4 connections, here 5": its = base's); empty when they agree.
  static std::string first_difference(const Structure& base, const Structure& here);
};

struct EditResult {
  HAM ham{nullptr};
  // For each parameter of the new HAM, which entries (flattened) came from
  // which of the old one's; parameters not listed were copied whole.
  ParameterRemap parameters;
  // The structure of the HAM the edit started from: optimizer_after_edit()
  // refuses a HAM of another (the optimizer's state would move by a map made
  // for other entries), also the same HAM changed since the edit was built.
  std::shared_ptr<const Structure> base;
};

class Editor {
 public:
  explicit Editor(HAM ham);
  Editor& add_neurons(const std::string& layer, std::vector<NeuronId> neurons);
  Editor& remove_neurons(const std::string& layer, std::vector<NeuronId> neurons);
  // `weights` (optional, one per connection) sets the new connections' weights; otherwise 0.
  Editor& add_connections(const std::string& synapse, std::vector<std::pair<NeuronId, NeuronId>> connections,
                          torch::Tensor weights = {});
  Editor& remove_connections(const std::string& synapse, std::vector<std::pair<NeuronId, NeuronId>> connections);
  // Applies every step in order, all or nothing: a bad step throws
  // connex::Error naming it, and nothing is built.
  EditResult build() const;

  struct Step;  // one recorded call (edit.cpp)

 private:
  HAM ham_;
  std::vector<std::shared_ptr<const Step>> steps_;
};

inline Editor edit(HAM ham) { return Editor(std::move(ham)); }

// The optimizer to go on with: one of the same type, groups and options over
// the edited HAM's parameters, with every surviving entry's state carried.
std::unique_ptr<torch::optim::Optimizer> optimizer_after_edit(const torch::optim::Optimizer& old_optimizer,
                                                              const HAM& old_ham, const EditResult& edit);

}  // namespace connex::ham
