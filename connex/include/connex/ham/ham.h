#pragma once
// HAM: a hypergraph of neuron layers joined by hypersynapses, whose states
// evolve by descending one energy (a modern Hopfield network, an associative
// memory). Unlike connex::NeuralNetwork nothing fires in order: every layer's
// state x moves at once, τ dx/dt = −∂E/∂g, so synapses may form cycles.
//
//   connex::ham::HAM ham;
//   ham->add_layer("image", {64}, connex::ham::identity())
//       .add_layer("memory", {200}, connex::ham::softmax(4.0))
//       .add_synapse("store", connex::ham::linear(), {"image", "memory"});
//   auto x = ham->init_states(batch);
//   x["image"] = corrupted;                                   // [batch, 64]
//   auto settled = ham->descend(x, connex::ham::DescentOptions().steps(20).dt(0.1),
//                               {{"image", visible}}).states;  // visible pixels held
//
// E = Σ_layers (⟨x, g⟩ − L(x)) + Σ_synapses E_s(g...), per sample. A descent
// step is x ← x − (dt/τ)(x + Σ_s ∂E_s/∂g) for every layer that is not held;
// it dispatches a few ops per layer and synapse, never one per neuron.
// Training backpropagates through the unrolled steps; without grad mode (or
// without trainable parameters and states) the steps keep no graph.
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "connex/ham/lagrangian.h"
#include "connex/ham/synapse.h"
#include "connex/neuron_id.h"

namespace connex::ham {

// Layer states (or activations, or gradients) by layer name, each [batch, *shape].
using States = std::map<std::string, torch::Tensor>;
// Layers held fixed during a descent: by name, a bool mask broadcastable to
// [batch, *shape] (true: held), or an undefined tensor to hold the whole layer.
using Clamps = std::map<std::string, torch::Tensor>;

struct Layer {
  std::string name;
  std::vector<int64_t> shape;  // per sample
  Lagrangian lagrangian;
  double tau;                     // time constant, > 0
  std::vector<NeuronId> neurons;  // a 1-D layer's neuron labels (default 0..n−1); empty for other shapes
};

struct SynapseConnection {
  std::string name;
  Synapse synapse;
  std::vector<std::string> layers;  // the layers it joins, in the order its energy takes them
};

struct DescentOptions {
  TORCH_ARG(int64_t, steps) = 10;  // ≥ 0
  // > 0. Each step moves x a fraction dt/τ of the way to its target: keep
  // dt/τ well below 1 (at dt ≥ τ the states can oscillate or diverge).
  TORCH_ARG(double, dt) = 0.1;
  // Record the energy before the first step and after each ([steps taken + 1, batch]); costs one energy per step.
  TORCH_ARG(bool, record_energy) = false;
  // > 0: stop after the first step that moves no free state entry (of any
  // sample) by more than this; 0: take every step. Costs a reduction and a
  // device sync per step.
  TORCH_ARG(double, tolerance) = 0;
};

struct Descent {
  States states;         // after the last step
  torch::Tensor energy;  // [steps taken + 1, batch] when recorded, else undefined
  int64_t steps = 0;     // steps taken: options.steps(), or fewer where the tolerance stopped it
  // The largest |x − x_before| of the last step over every free state entry
  // (0 without a step): a descent that has not settled shows here. Measuring
  // it costs a reduction and a device sync per call (per step with a tolerance).
  double change = 0;
  bool converged = false;  // a tolerance was given and the last step moved no entry by more
};

class HAMImpl : public torch::nn::Module {
 public:
  HAMImpl();
  // A layer of per-sample shape `shape`. Names (of layers and synapses
  // alike) are unique, non-empty, and made of letters, digits, '_' and '-'.
  HAMImpl& add_layer(const std::string& name, std::vector<int64_t> shape, Lagrangian lagrangian, double tau = 1.0);
  // A 1-D layer whose neurons carry these labels (graph synapses and neuron
  // edits address them; a 1-D layer added by add_layer() has labels 0..n−1).
  HAMImpl& add_labelled_layer(const std::string& name, std::vector<NeuronId> neurons, Lagrangian lagrangian,
                              double tau = 1.0);
  // Joins `layers` (existing, in the order the synapse's energy takes them).
  HAMImpl& add_synapse(const std::string& name, Synapse synapse, std::vector<std::string> layers);

  const std::vector<Layer>& layers() const { return layers_; }
  const std::vector<SynapseConnection>& synapses() const { return synapses_; }
  const Layer& layer(const std::string& name) const;
  const SynapseConnection& synapse(const std::string& name) const;

  // Zero states for `batch` samples, with the parameters' dtype and device
  // (while there are none, those of the last to(), else the default dtype on
  // the CPU) but for what `options` sets.
  States init_states(int64_t batch, std::optional<torch::TensorOptions> options = std::nullopt) const;
  States activations(const States& x);
  // Total energy per sample, [batch].
  torch::Tensor energy(const States& x);
  // Each layer's and synapse's term by name, [batch] each; they sum to energy().
  std::map<std::string, torch::Tensor> energy_parts(const States& x);
  // ∂E/∂g for every layer, by autograd through energy() (the descent uses the
  // equal closed form x + Σ_s ∂E_s/∂g instead).
  States dEdg(const States& x);
  // `options.steps()` steps of x ← x − (dt/τ) ∂E/∂g from `x`, holding `clamps`.
  // The states returned are new tensors, never those of `x` (not even for
  // steps(0) or a held layer), so writing into them leaves `x` alone.
  Descent descend(const States& x, const DescentOptions& options = {}, const Clamps& clamps = {});

  // A deep copy: same structure, copied parameters (custom Lagrangians and
  // synapses must implement fresh()).
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override;
  void pretty_print(std::ostream& stream) const override;
  // torch::save/torch::load: save() writes a fingerprint of the structure the
  // tensors belong to (layers, their neurons, synapses, a graph synapse's
  // connections) beside them, and load() refuses an archive of another
  // structure with nothing changed; ham::save()/ham::load() keep the
  // structure itself (checkpoint.h).
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  // torch's, and a HAM without parameters yet remembers the dtype and device
  // for the parts and states it makes (a graph synapse's weights, say).
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;
  // Where new parts and states go: the parameters' dtype and device, else
  // what the to() calls named (only that); none: the default dtype on the CPU.
  std::optional<torch::TensorOptions> part_options() const;

 private:
  // Checks the states cover every layer with the right shapes, dtype and device, no NaN; `operation` starts the
  // message.
  std::vector<torch::Tensor> ordered(const States& x, const char* operation) const;
  // A Cloneable parent's clone() calls it on its children: this HAM becomes
  // a clone of `other` (torch's default did nothing, leaving the parent's
  // copy with freshly drawn weights).
  void clone_(torch::nn::Module& other, const c10::optional<torch::Device>& device) override;
  std::vector<torch::Tensor> activations_of(const std::vector<torch::Tensor>& x);
  // The activations of synapse `s`'s layers, in the order its energy takes them.
  std::vector<torch::Tensor> joined(size_t s, const std::vector<torch::Tensor>& g) const;
  // Each layer's energy term, then each synapse's, [batch] each.
  std::vector<torch::Tensor> energy_terms(const std::vector<torch::Tensor>& x, const std::vector<torch::Tensor>& g);
  torch::Tensor total_energy(const std::vector<torch::Tensor>& x);  // their sum, [batch]
  size_t find_layer(const std::string& name) const;                 // its position in layers_, or layers_.size()
  void add_layer_checked(Layer layer);
  void check_new_name(const std::string& name, const char* operation) const;
  std::string layer_list() const;  // "a, b, c", for messages

  std::vector<Layer> layers_;
  std::vector<SynapseConnection> synapses_;
  std::vector<std::vector<size_t>> synapse_layers_;                     // per synapse, its layers' positions in layers_
  std::shared_ptr<torch::nn::Module> layer_modules_, synapse_modules_;  // "layers" and "synapses"
  std::optional<torch::Dtype> moved_dtype_;                             // set by to()
  std::optional<torch::Device> moved_device_;                           // set by to()
};
TORCH_MODULE(HAM);

}  // namespace connex::ham
