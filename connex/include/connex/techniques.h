#pragma once
// The four optional techniques of Connex, as LevelOperations. Switch them on
// with NeuralNetworkOptions().use_topo_norm(true) etc.; they cost nothing when
// off. For level l with collective inputs s (the distinct source values, in
// id order, L of them) and neurons n:
//
// - TopoNorm: per sample, s <- (s - mean(s)) / sqrt(var(s) + 1e-5) (this
//   standardisation is left out when L = 1, the affine step below is not;
//   when L = 2 it gives ±1 whatever the values, and passes almost no
//   gradient), then s <- gamma ⊙ s + beta, one (gamma, beta) per slot
//   (initialised 1, 0). Parameters "gamma" and "beta", [Σ_l L_l, 1]: level
//   1's sources, then level 2's, ..., keyed by (level, source neuron), one
//   tensor each so an optimizer updates two tensors, not two per level.
// - TopoSelfAttention: single-head attention over s as a sequence of
//   scalars: q = Wq s + bq, k = Wk s + bk, v = Wv s + bv (each L×L + L),
//   a = softmax_j(q_i k_j / sqrt(L)), s <- s + a v.
// - NeuronSelfAttention: the same per neuron, with the neuron's own Wq, Wk,
//   Wv (n×L×L) and biases (n×L), keys masked to the neuron's incoming
//   connections, scaled by 1/sqrt(fan-in); then z_n = Σ_i w_ni s'_ni + b_n.
//   On the CPU (float32, float64) both attentions run one kernel that
//   recomputes the attention weights in backward (or, where the scores are
//   small, expands exp in moments of the keys, exact to the dtype's
//   rounding, L·degree work instead of L² exponentials): neuron attention keeps
//   5 × batch × n × L values per level (q, k, v, the output, a softmax
//   normaliser), queries only at the neuron's own inputs (the others meet
//   a zero weight). Elsewhere, and for a backward with create_graph, the
//   same formula runs as torch operations, which keep the batch × n × L²
//   attention weights (250 samples × 128 neurons × 128² inputs × 4 bytes
//   ≈ 2 GiB for one dense 128-wide layer).
// - AdaptiveActivation: σ(z) -> a·σ(b·z) per hidden neuron, a = b = 1 at
//   start (Jagtap et al. 2020). "a" and "b" are [non-input neurons, 1] in
//   bias order, the layout the fused kernel reads; outputs' entries stay 1.
//
// Topo norm and both attentions read a level's collective inputs together
// (reads_whole_level()): a neuron depends on inputs of its level it has no
// connection to (in neuron attention through the projections, which read
// all L), so build() refuses a function-preserving edit that gives an old
// level a new input or moves an old neuron to another level. Neuron
// attention's keys are a neuron's connections, so it also refuses one that
// adds a connection into an old neuron (reads_connection_set()).
//
// Per-level parameters carry across an edit to the level at the same depth,
// entry by entry wherever the same source (and neuron) still exist.
#include "connex/level_operation.h"

namespace connex {

class TopoNorm : public LevelOperation {
 public:
  std::string name() const override { return "topo_norm"; }
  bool reads_whole_level() const override { return true; }
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& generator) const override;
  torch::Tensor on_inputs(const LevelContext& ctx, const torch::Tensor& sources) const override;
  std::optional<double> parameter_count(const Topology& topology) const override;
  bool scriptable() const override { return true; }
  void script_on_inputs(ScriptWriter& script, const LevelContext& ctx) const override;
};

class TopoSelfAttention : public LevelOperation {
 public:
  std::string name() const override { return "topo_self_attention"; }
  bool reads_whole_level() const override { return true; }
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& generator) const override;
  torch::Tensor on_inputs(const LevelContext& ctx, const torch::Tensor& sources) const override;
  std::optional<double> parameter_count(const Topology& topology) const override;
  bool scriptable() const override { return true; }
  void script_on_inputs(ScriptWriter& script, const LevelContext& ctx) const override;
};

class NeuronSelfAttention : public LevelOperation {
 public:
  std::string name() const override { return "neuron_self_attention"; }
  bool reads_whole_level() const override { return true; }
  bool reads_connection_set() const override { return true; }
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& generator) const override;
  std::optional<torch::Tensor> replace_affine(const LevelContext& ctx, const torch::Tensor& sources,
                                              const torch::Tensor& weights, const torch::Tensor& bias) const override;
  bool replaces_affine() const override { return true; }
  std::optional<double> parameter_count(const Topology& topology) const override;
  bool scriptable() const override { return true; }
  void script_replace_affine(ScriptWriter& script, const LevelContext& ctx, const torch::Tensor& weights,
                             const std::string& bias) const override;
};

class AdaptiveActivation : public LevelOperation {
 public:
  std::string name() const override { return "adaptive_activation"; }
  bool depends_on_level() const override { return false; }  // keyed by neuron
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& generator) const override;
  std::optional<torch::Tensor> replace_activation(const LevelContext& ctx, const torch::Tensor& z,
                                                  const TensorFunction& activation) const override;
  bool replaces_activation() const override { return true; }
  std::optional<std::pair<std::string, std::string>> fused_activation_scales() const override {
    return std::pair<std::string, std::string>{"a", "b"};
  }
  std::optional<double> parameter_count(const Topology& topology) const override;
  bool scriptable() const override { return true; }
  std::string script_replace_activation(
      ScriptWriter& script, const LevelContext& ctx, const std::string& z_hidden,
      const std::function<std::string(const std::string&)>& activation) const override;
};

}  // namespace connex
