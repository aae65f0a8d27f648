#pragma once
// Random graph generators: sparse layered networks, random DAGs and
// small-world DAGs, as GraphSpecs to build a NeuralNetwork from. Each is
// seeded (the same options give the same graph, bit for bit), validated
// (bad sizes throw, naming the option) and linear in the connections it makes.
//
//   auto spec = connex::nn::sparse_layered_spec({256, 1024, 1024, 10},
//                                                connex::nn::SparseLayersOptions().density(0.05).seed(3));
//   auto net = connex::NeuralNetwork(std::move(spec));
//
// Neuron ids are integers: the inputs first, then the hidden neurons, then the outputs.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "connex/graph_spec.h"

namespace connex::nn {

// How a sparse layered network shares its connections between layer pairs.
enum class DensityDistribution {
  Uniform,     // every layer pair at the same density
  ErdosRenyi,  // density of the pair (n_in, n_out) proportional to (n_in + n_out) / (n_in * n_out)
  ERK,         // Erdős–Rényi-Kernel; for single neurons (no kernel dimensions) it equals ErdosRenyi
};
const char* distribution_name(DensityDistribution distribution);
// "uniform", "erdos_renyi" (or "er"), "erk"; anything else throws, naming it.
DensityDistribution distribution_from_name(const std::string& name);

struct SparseLayersOptions {
  // The share of all the connections a dense layered network of these sizes
  // would have, in (0, 1]. A pair whose share would exceed 1 is made dense and
  // the others are scaled up, so the total stays on target.
  TORCH_ARG(double, density) = 0.1;
  TORCH_ARG(DensityDistribution, distribution) = DensityDistribution::ErdosRenyi;
  // Every hidden neuron gets at least one incoming and one outgoing
  // connection, every output at least one incoming, so no neuron starts dead
  // (these count towards the target: a pair raised to them takes the extra
  // from the others, and a target below all of them is raised to them: the
  // result can be denser than asked, which num_connections() tells).
  // Inputs are not covered: at a low density an input may feed nothing,
  // and the network then ignores that feature until growth reaches it.
  TORCH_ARG(bool, no_dead_neurons) = true;
  TORCH_ARG(uint64_t, seed) = 0;
};

// Layers of the given sizes ({inputs, hidden..., outputs}, at least two);
// connections only from each layer to the next, drawn uniformly without
// replacement within each layer pair: density_k * n_in * n_out per pair, within
// one of it (rounded so that the total is exact).
GraphSpec sparse_layered_spec(const std::vector<int64_t>& sizes, const SparseLayersOptions& options = {});
// The number of connections each layer pair gets (what sparse_layered_spec makes).
std::vector<int64_t> sparse_layer_connections(const std::vector<int64_t>& sizes, const SparseLayersOptions& options);

struct RandomDagOptions {
  TORCH_ARG(int64_t, inputs) = 1;
  TORCH_ARG(int64_t, hidden) = 0;
  TORCH_ARG(int64_t, outputs) = 1;
  TORCH_ARG(int64_t, connections) = 1;
  // The network's depth (Topology::depth(), levels after the inputs): the
  // hidden neurons fill depth - 1 levels, the outputs the last one. 0: one
  // hidden level when there are hidden neurons.
  TORCH_ARG(int64_t, depth) = 0;
  TORCH_ARG(uint64_t, seed) = 0;
};
// Exactly `connections` connections and `depth` levels; every hidden neuron
// has a predecessor and a successor and every output a predecessor, the rest
// are drawn uniformly among the pairs that go forward between levels.
GraphSpec random_dag_spec(const RandomDagOptions& options);

struct SmallWorldOptions {
  TORCH_ARG(int64_t, inputs) = 1;
  TORCH_ARG(int64_t, hidden) = 8;  // the ring's nodes
  TORCH_ARG(int64_t, outputs) = 1;
  TORCH_ARG(int64_t, neighbours) = 4;            // k: each node joined to its k nearest on the ring (even, < hidden)
  TORCH_ARG(double, rewire_probability) = 0.25;  // p: each ring edge moved to a random node with this probability
  TORCH_ARG(uint64_t, seed) = 0;
};
// A Watts–Strogatz graph over the hidden neurons, each edge oriented from the
// lower to the higher node number (as in randomly wired networks); hidden
// neurons without a predecessor read every input, those without a successor
// feed every output.
GraphSpec small_world_dag_spec(const SmallWorldOptions& options);

}  // namespace connex::nn
