#pragma once
// Workloads shared by the benchmark program: random sparse DAGs and the
// plain-Linear reference networks connex is measured against.
#include <random>
#include <vector>

#include <torch/torch.h>

#include "connex/connex.h"

namespace connex::bench {

// A random sparse DAG: `neurons` neurons in `depth` layers after an input
// layer (1% inputs, 1% outputs in the last layer), each non-input neuron with
// `fan_in` distinct sources: one from the previous layer (so the depth is
// exact) and the rest uniformly from all earlier layers.
struct SparseDag {
  GraphSpec spec;
  std::vector<int64_t> layer_of;  // by integer id
};

inline SparseDag random_sparse_dag(int64_t neurons, int64_t fan_in, int64_t depth, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t n_in = std::max<int64_t>(1, neurons / 100), n_out = std::max<int64_t>(1, neurons / 100);
  const int64_t n_hidden = neurons - n_in - n_out;
  std::vector<int64_t> layer_begin;  // ids are consecutive by layer
  layer_begin.push_back(0);
  layer_begin.push_back(n_in);
  for (int64_t l = 1; l < depth; ++l) layer_begin.push_back(n_in + n_hidden * l / (depth - 1));
  layer_begin.push_back(neurons);  // last layer: the outputs
  std::vector<int64_t> layer_of(neurons);
  for (size_t l = 0; l + 1 < layer_begin.size(); ++l)
    for (int64_t i = layer_begin[l]; i < layer_begin[l + 1]; ++i) layer_of[i] = static_cast<int64_t>(l);

  std::vector<Edge> edges;
  edges.reserve(neurons * fan_in);
  std::vector<int64_t> picked;
  for (int64_t v = n_in; v < neurons; ++v) {
    const int64_t l = layer_of[v];
    const int64_t prev_begin = layer_begin[l - 1], prev_end = layer_begin[l];
    // Sources: never an output (they sit in the last layer, which nobody reads).
    const int64_t pool = std::min(prev_end, neurons - n_out);
    picked.clear();
    picked.push_back(std::uniform_int_distribution<int64_t>(prev_begin, prev_end - 1)(rng));
    const int64_t want = std::min<int64_t>(fan_in, pool);
    while (static_cast<int64_t>(picked.size()) < want) {
      int64_t u = std::uniform_int_distribution<int64_t>(0, pool - 1)(rng);
      if (std::find(picked.begin(), picked.end(), u) == picked.end()) picked.push_back(u);
    }
    for (int64_t u : picked) edges.emplace_back(u, v);
  }
  std::vector<NeuronId> all, inputs, outputs;
  for (int64_t i = 0; i < neurons; ++i) all.emplace_back(i);
  for (int64_t i = 0; i < n_in; ++i) inputs.emplace_back(i);
  for (int64_t i = neurons - n_out; i < neurons; ++i) outputs.emplace_back(i);
  return {GraphSpec(std::move(all), std::move(edges), std::move(inputs), std::move(outputs)), std::move(layer_of)};
}

// Plain Linear layers: the reference for MLP(in, out, width, depth).
struct LinearStackImpl : torch::nn::Module {
  LinearStackImpl(int64_t in, int64_t out, std::vector<int64_t> widths, bool dense) : dense(dense) {
    int64_t reads = in;
    for (size_t k = 0; k <= widths.size(); ++k) {
      const int64_t size = k < widths.size() ? widths[k] : out;
      layers.push_back(register_module("layer" + std::to_string(k),
                                       torch::nn::Linear(dense ? reads : (k ? widths[k - 1] : in), size)));
      reads += size;
    }
  }
  // `dense`: each layer reads the concatenation of the input and every earlier layer (DenseMLP).
  torch::Tensor forward(torch::Tensor x) {
    std::vector<torch::Tensor> seen{x};
    for (size_t k = 0; k < layers.size(); ++k) {
      auto in = dense ? torch::cat(seen, 1) : seen.back();
      auto z = layers[k]->forward(in);
      seen.push_back(k + 1 < layers.size() ? torch::relu(z) : z);
    }
    return seen.back();
  }
  bool dense;
  std::vector<torch::nn::Linear> layers;
};
TORCH_MODULE(LinearStack);

}  // namespace connex::bench
