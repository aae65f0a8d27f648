#pragma once
// Workloads shared by the benchmark program: random sparse DAGs and the
// plain-torch reference networks connex is measured against.
#include <algorithm>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "connex/connex.h"

namespace connex::bench {

// The random sparse DAG of workloads 4, 5, 9 and 10: `neurons` neurons (1%
// inputs, 1% outputs), `connections` connections, `depth` levels after the inputs.
inline nn::RandomDagOptions sparse_dag_options(int64_t neurons, int64_t connections, int64_t depth, uint64_t seed) {
  const int64_t n_in = std::max<int64_t>(1, neurons / 100), n_out = std::max<int64_t>(1, neurons / 100);
  return nn::RandomDagOptions()
      .inputs(n_in)
      .hidden(neurons - n_in - n_out)
      .outputs(n_out)
      .connections(connections)
      .depth(depth)
      .seed(seed);
}

// The masked-dense equivalent of a sparse layered network (what users write
// instead of connex): Linear layers whose weights are multiplied by a fixed
// 0/1 mask in every forward, the mask holding exactly `spec`'s connections.
struct MaskedLinearStackImpl : torch::nn::Module {
  // `spec` from nn::sparse_layered_spec(sizes, ...): integer ids, consecutive by layer.
  MaskedLinearStackImpl(const std::vector<int64_t>& sizes, const GraphSpec& spec) {
    std::vector<int64_t> first{0};  // each layer's first id
    for (int64_t n : sizes) first.push_back(first.back() + n);
    std::vector<torch::Tensor> mask;
    for (size_t k = 0; k + 1 < sizes.size(); ++k) {
      layers.push_back(register_module("layer" + std::to_string(k), torch::nn::Linear(sizes[k], sizes[k + 1])));
      mask.push_back(torch::zeros({sizes[k + 1], sizes[k]}));
    }
    for (const auto& [from, to] : spec.edges()) {
      const int64_t u = from.as_integer(), v = to.as_integer();
      const auto k = std::upper_bound(first.begin(), first.end(), u) - first.begin() - 1;
      TORCH_CHECK(first[k + 1] <= v && v < first[k + 2], "MaskedLinearStack: expected a layered spec, got edge ", u,
                  " -> ", v);
      mask[k].accessor<float, 2>()[v - first[k + 1]][u - first[k]] = 1;
    }
    for (size_t k = 0; k < mask.size(); ++k) masks.push_back(register_buffer("mask" + std::to_string(k), mask[k]));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t k = 0; k < layers.size(); ++k) {
      x = torch::nn::functional::linear(x, layers[k]->weight * masks[k], layers[k]->bias);
      if (k + 1 < layers.size()) x = torch::relu(x);
    }
    return x;
  }
  std::vector<torch::nn::Linear> layers;
  std::vector<torch::Tensor> masks;
};
TORCH_MODULE(MaskedLinearStack);

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
