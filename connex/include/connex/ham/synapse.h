#pragma once
// A hypersynapse: a trainable module that maps the activations of one or more
// layers to an energy per sample. The descent moves each layer against the
// synapse's gradient ∂E/∂g, which the built-in synapses give in closed form
// (cheap, and differentiable by plain backpropagation); a custom synapse
// only has to write its energy.
//
//   ham->add_synapse("memory", connex::ham::linear(), {"image", "hidden"});  // E = −g₁ᵀ W g₂
//
// Parameters are sized from the layers a synapse joins, when it joins them,
// and named as below (ham->synapse("store").synapse->named_parameters()["weight"]).
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/types.h>

#include "connex/ham/lagrangian.h"
#include "connex/neuron_id.h"

namespace connex::ham {

// What a synapse sees of one layer it joins.
struct LayerView {
  std::string name;                      // the layer's name, for messages
  std::vector<int64_t> shape;            // per-sample shape
  const std::vector<NeuronId>* neurons;  // labels of a 1-D layer's neurons, else nullptr
};

class SynapseImpl : public torch::nn::Module {
 public:
  // Energy per sample: g holds the joined layers' activations in connection
  // order, each [batch, *shape]; returns [batch].
  virtual torch::Tensor energy(const std::vector<torch::Tensor>& g) = 0;
  // ∂E/∂g_k for each joined layer, shaped like g_k. The default asks autograd
  // (keeping the graph when grad mode is on, so training sees it).
  virtual std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& g);
  // −∂E/∂g_k, the input each joined layer receives: what the descent sums.
  // The default negates gradients(); the built-in synapses write it
  // directly (one op fewer per layer and step).
  virtual std::vector<torch::Tensor> currents(const std::vector<torch::Tensor>& g);
  // Called once when the synapse joins `layers`: checks their number and
  // shapes and sizes the parameters; throws connex::Error naming `synapse`.
  virtual void attach(const std::vector<LayerView>& layers, const std::string& synapse) = 0;
  // A new synapse of the same kind and options, not yet attached, with no
  // parameters (HAM::clone() and edits attach it, then copy values in). The
  // default throws: a custom synapse supports them by overriding it.
  virtual std::shared_ptr<SynapseImpl> fresh() const;
  // What a checkpoint stores ({"kind": "linear", ...}); null when it cannot
  // be written down, which save() refuses.
  virtual nlohmann::json to_json() const { return nullptr; }
  // Parameters indexed by the neurons of a joined 1-D layer: name -> for
  // each dim, the joined layer (its position in connection order) whose
  // neurons index it, or −1. A neuron edit of a joined layer moves these
  // entries by label; it is refused for a synapse that lists none.
  virtual std::vector<std::pair<std::string, std::vector<int64_t>>> neuron_dims() const { return {}; }
  // Parameters indexed by connection labels (the graph synapse's weights).
  virtual const std::vector<std::pair<NeuronId, NeuronId>>* connection_labels() const { return nullptr; }
  // Whether some HAM has taken this synapse.
  bool joined() const { return joined_.joined; }

 private:
  friend class HAMImpl;
  connex::detail::JoinedMark joined_;
};
using Synapse = std::shared_ptr<SynapseImpl>;

// E = −g₁ᵀ W g₂ (− b·g₂ with `bias`), each layer flattened per sample; W is
// [size₁, size₂]. With one layer, E = −½ gᵀ W g (a classic Hopfield
// network's coupling), whose gradient is −½ (W + Wᵀ) g. Parameters "weight"
// (W) and, with `bias`, "bias".
Synapse linear(bool bias = false);
// E = −b·g over one layer; "bias" b has the layer's shape.
Synapse bias();
// E = −⟨g₂, conv2d(g₁)⟩ for layers shaped [channels, height, width]; the
// second layer's shape must be the convolution's output shape. "weight" is
// [channels₂, channels₁, kernel height, kernel width].
Synapse conv2d(std::vector<int64_t> kernel, std::vector<int64_t> stride = {1, 1},
               std::vector<int64_t> padding = {0, 0});
// An energy whose gradient is multi-head attention, as in the Energy
// Transformer. One layer of tokens [tokens, dim] (self-attention) or two
// (queries from the first, keys from the second): with Qₕ = g₁ W_Qₕ and
// Kₕ = g₂ W_Kₕ ([tokens, head_dim]),
//   E = −(1/β) Σₕ Σ_q logsumexp_k(β Qₕ[q]·Kₕ[k]),  β = 1/sqrt(head_dim) unless given.
// "query" is [heads, dim₁, head_dim], "key" [heads, dim₂, head_dim].
Synapse attention(int64_t heads, int64_t head_dim, std::optional<double> beta = std::nullopt);
// Single neurons joined by individual labelled connections:
//   E = −Σ_(i,j) w_ij g_i g_j,
// i a neuron of the first layer and j of the second (or of the same layer,
// when the synapse joins one). Directions do not matter: in a one-layer
// synapse (i, j) and (j, i) are one connection, so listing both is refused;
// cycles and self-loops (i, i) are allowed. Weights are flat tensors, one per
// connection, in the given order, so it costs O(connections). `weights`
// (optional, one per connection) sets them; otherwise they are drawn from a
// normal distribution of mean 0 and standard deviation 1/sqrt(d), d = 2 ×
// connections / the joined layers' neurons (the mean degree; at least 1).
// "weight" holds them; the buffers "source" and "target" the neurons'
// positions, and "m_crow", "m_col", "m_slot", "m_conn" and their "t_"
// twins the two sparse patterns (by source and by target) derived from
// them, which an edit or a checkpoint rebuilds.
Synapse graph(std::vector<std::pair<NeuronId, NeuronId>> connections, torch::Tensor weights = {});

// The inverse of to_json() for the built-in synapses (a graph synapse's
// weights come from the checkpoint's tensors); throws connex::Error naming `where`.
Synapse synapse_from_json(const nlohmann::json& json, const std::string& where);

}  // namespace connex::ham
