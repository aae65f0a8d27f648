#pragma once
// A neuron layer's Lagrangian L(x): a scalar function of the layer's state x
// whose gradient g = ∂L/∂x is the layer's activation. The layer's energy is
// the Legendre transform E = ⟨x, g⟩ − L(x), so that ∂E/∂g = x.
//
//   auto memory = connex::ham::softmax(/*beta=*/2.0);  // g = softmax(2x) over the last dim
//   torch::Tensor g = memory->activation(x);           // x: [batch, *shape]
//
// Built-in Lagrangians are sums over each sample's entries (softmax, layernorm
// and spherical_norm act on the last dim, or `dim`); each has its activation
// in closed form. Write your own with lagrangian(callable), whose activation
// autograd finds, or by deriving from LagrangianImpl (a module: parameters it
// registers are trained with the HAM).
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/types.h>

namespace connex::detail {
// Whether a HAM holds a part (Lagrangian or synapse): each joins one HAM, as
// another would re-size its parameters under the first. Not copied with
// the part, so a custom fresh() that copies itself makes an unjoined part.
struct JoinedMark {
  bool joined = false;
  JoinedMark() = default;
  JoinedMark(const JoinedMark&) {}
  JoinedMark& operator=(const JoinedMark&) { return *this; }
};
}  // namespace connex::detail

namespace connex::ham {

class HAMImpl;

class LagrangianImpl : public torch::nn::Module {
 public:
  // L(x) per sample: x is [batch, *shape]; returns [batch].
  virtual torch::Tensor value(const torch::Tensor& x) = 0;
  // g = ∂L/∂x, shaped like x. The default differentiates value() with
  // autograd (keeping the graph when grad mode is on, so training sees it).
  virtual torch::Tensor activation(const torch::Tensor& x);
  // Called once when a layer of per-sample shape `shape` takes this
  // Lagrangian: checks the shape and sizes parameters that depend on it;
  // throws connex::Error naming `layer`.
  virtual void attach(const std::vector<int64_t>& shape, const std::string& layer);
  // A new Lagrangian of the same kind and options, not yet attached
  // (HAM::clone(), edits and checkpoints attach it, then copy values in).
  // The default throws: a custom Lagrangian supports them by overriding it.
  virtual std::shared_ptr<LagrangianImpl> fresh() const;
  // What a checkpoint stores ({"kind": "tanh", "beta": 1, ...}); null when
  // it cannot be written down (a callable), which save() refuses.
  virtual nlohmann::json to_json() const { return nullptr; }
  // Parameters indexed by the layer's neurons: name -> the dim that is (a
  // 1-D layer's neuron edits move their entries by label).
  virtual std::vector<std::pair<std::string, int64_t>> neuron_dims() const { return {}; }
  // Whether L is convex, so that the descent never raises the energy for a
  // small enough step (custom Lagrangians: false unless they say so).
  virtual bool convex() const { return false; }
  // Whether a layer of some HAM has taken this Lagrangian.
  bool joined() const { return joined_.joined; }

 private:
  friend class HAMImpl;
  connex::detail::JoinedMark joined_;
};
using Lagrangian = std::shared_ptr<LagrangianImpl>;

// ½ Σ x²; g = x.
Lagrangian identity();
// Rectified power: (1/n) Σ relu(x)ⁿ; g = relu(x)ⁿ⁻¹ (n > 1, so that g is
// continuous; relu() is n = 2).
Lagrangian repu(double n);
Lagrangian relu();
// (1/β) Σ exp(βx); g = exp(βx).
Lagrangian exponential(double beta = 1.0);
// Rectified exponential: (1/β) Σ (exp(βx) − βx − 1) where x > 0, else 0; g = exp(βx) − 1 where x > 0, else 0.
Lagrangian rexp(double beta = 1.0);
// (1/β) Σ log cosh(βx); g = tanh(βx).
Lagrangian tanh(double beta = 1.0);
// (1/β) Σ log(1 + exp(βx)); g = sigmoid(βx).
Lagrangian sigmoid(double beta = 1.0);
// (1/β) Σ logsumexp(βx, dim); g = softmax(βx, dim). `dim` counts per-sample
// dims (0 is the first after the batch; −1 the last).
Lagrangian softmax(double beta = 1.0, int64_t dim = -1);
// Layer normalisation over the last dim (size D): L = D·γ·sqrt(var(x) + ε) +
// Σ δ·x; g = γ·(x − mean)/sqrt(var + ε) + δ. γ (a scalar) and δ (one per
// entry of the last dim) are trainable; `gamma` and `delta` are their initial
// values. L is convex only for γ ≥ 0, so the initial γ must be > 0 (training
// may still move it; convex() answers from the current γ).
Lagrangian layernorm(double gamma = 1.0, double delta = 0.0, double eps = 1e-5);
// sqrt(Σ x² + ε) over the last dim; g = x / sqrt(Σ x² + ε).
Lagrangian spherical_norm(double eps = 1e-5);
// Your own L(x) ([batch, *shape] -> [batch]); the activation is its autograd
// gradient. `convex` states whether L is convex. Not savable in a checkpoint.
Lagrangian lagrangian(std::function<torch::Tensor(const torch::Tensor&)> value, bool convex = false);

// The inverse of to_json() for the built-in Lagrangians; throws connex::Error naming `where`.
Lagrangian lagrangian_from_json(const nlohmann::json& json, const std::string& where);

}  // namespace connex::ham
