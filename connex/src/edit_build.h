#pragma once
// The second half of an edit, from the edited graph over neuron positions to
// the EditResult, shared by NetworkEditor::build() and Rewirer::rewire().
// Internal (plasticity.cpp).
//
// An edit that removes no neuron and adds only hidden ones may patch the
// base's topology instead of compiling the edited graph (build_patched()).
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "connex/plasticity.h"

namespace connex {

// The edited graph over neuron positions: surviving neurons in their old
// order, then the new ones; surviving edges in their old order, then the
// added ones (from first_added on).
struct EditGraph {
  std::vector<NeuronId> neurons;
  std::vector<std::pair<int64_t, int64_t>> edges;
  size_t first_added = 0;
  std::vector<int64_t> new_index_of_old;  // by old spec position; -1: removed
};

// The base connections that survive removing `removed_connections` (indices
// in `base`, each once) and the neurons whose new_index_of_old is -1, as
// (new source, new target) positions in the base's edge order, with room
// reserved for `added` more.
std::vector<std::pair<int64_t, int64_t>> surviving_edges(const Topology& base,
                                                         const std::vector<int64_t>& removed_connections,
                                                         const std::vector<int64_t>& new_index_of_old, size_t added);

// The base's options for the edited network: `dropout` less the entries of
// neurons `exists` refuses, `seed`, fresh copies of the activation and output
// transformation, and the topo_sort restricted to the neurons that exist, or
// dropped when the edit `adds` neurons or connections (they have no place in it).
NeuralNetworkOptions edited_options(const NeuralNetworkOptions& base, DropoutSpec dropout, uint64_t seed, bool adds,
                                    const std::function<bool(const NeuronId&)>& exists);

// The edited network of `spec` (the validated spec of an EditGraph) with
// `options`, on the base's device, holding every parameter of `base` that
// survived (the remap says which) and, when `function_preserving`, 0 on
// every new connection into an old neuron; positions from new_index_of_old.
EditResult build_edited(const NeuralNetwork& base, GraphSpec spec, NeuralNetworkOptions options,
                        std::vector<int64_t> new_index_of_old, bool function_preserving);

// The same for a topology patched from the base's
// (Topology::with_connections(), which gave `old_connection`): the base's
// neurons keep their spec positions (added ones follow) and their biases;
// new entries start at 0 when `zero_new`, else are drawn from
// options.seed() as build_edited() draws them.
EditResult build_patched(const NeuralNetwork& base, std::shared_ptr<const Topology> topology,
                         NeuralNetworkOptions options, const ConnectionArray& old_connection, bool zero_new,
                         bool function_preserving);

// The compile options a network's options ask for (neural_network.cpp).
CompileOptions compile_options(const NeuralNetworkOptions& options);

// An edited network's weight and bias (neural_network.cpp), of `options`:
// the entries `*_kept` marks -1 (per connection and per non-input neuron of
// `topo`) drawn as a new network draws them (uniform in ±1/sqrt(fan-in)) from
// a stream of `seed`; the others left for the survivors to fill.
std::pair<torch::Tensor, torch::Tensor> edited_parameters(const Topology& topo, at::ArrayRef<int64_t> weight_kept,
                                                          at::ArrayRef<int64_t> bias_kept, uint64_t seed,
                                                          const torch::TensorOptions& options);

}  // namespace connex
