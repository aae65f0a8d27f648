#pragma once
// The per-level operation interface: connex's optional techniques (topo
// norm, topo self-attention, neuron self-attention, adaptive activations)
// are instances of it, and users write their own the same way.
//
// A network runs each level as
//   gather sources -> on_inputs (each op) -> affine (or an op's replace_affine)
//   -> on_preactivation (each op) -> activation (or an op's replace_activation)
//   -> dropout
// For each compiled topology an operation declares its parameters in
// build(), each dimension of each tensor keyed by neuron labels (or fixed).
// That is all an edit needs to carry them: an entry survives wherever every
// one of its keys survives, under the same parameter name. An operation that
// also writes its stages as TorchScript (the script_* methods) is exported
// with the network.
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/types.h>

#include "connex/tensor_function.h"
#include "connex/topology.h"

namespace connex {

// What each index of one dimension of a parameter stands for: a neuron
// label, and, where the dimension strings several runs together (topo norm's
// rows: every level's sources in turn), the run of each index. An entry
// survives an edit where its label does, in the same run. A vector of labels
// converts to it (one run).
struct DimKey {
  std::vector<NeuronId> labels;
  std::vector<int64_t> runs;                                                 // empty (one run), or one per label
  DimKey(std::vector<NeuronId> labels = {}, std::vector<int64_t> runs = {})  // NOLINT: implicit by design
      : labels(std::move(labels)), runs(std::move(runs)) {}
  size_t size() const { return labels.size(); }
  int64_t run(size_t i) const { return runs.empty() ? 0 : runs[i]; }
  friend bool operator==(const DimKey& a, const DimKey& b) { return a.labels == b.labels && a.runs == b.runs; }
};
using DimKeys = std::vector<std::optional<DimKey>>;

// One parameter of an operation. dim_keys[k], when set, names what each
// index of dimension k stands for (e.g. the source neurons of a level).
struct KeyedParameter {
  torch::Tensor value;
  DimKeys dim_keys;
};

// What an operation declares in build(): name -> parameter (names may not contain '.').
using OperationParameters = std::map<std::string, KeyedParameter>;

// Holds an operation's tensors inside the network, so they are parameters
// of the module (optimizers, clone(), .to(device), checkpoints see them).
class OperationModuleImpl : public torch::nn::Cloneable<OperationModuleImpl> {
 public:
  OperationModuleImpl() = default;
  explicit OperationModuleImpl(const OperationParameters& declared);
  void reset() override;
  const torch::Tensor& get(const std::string& name) const;
  const std::map<std::string, DimKeys>& keys() const { return keys_; }
  // One line: "connex::OperationModule(tensors=2, values=194)".
  void pretty_print(std::ostream& stream) const override;

 private:
  std::map<std::string, DimKeys> keys_;
  std::map<std::string, std::pair<std::vector<int64_t>, torch::Dtype>> shapes_;
  std::map<std::string, torch::Tensor> tensors_;
};
TORCH_MODULE(OperationModule);

// What an operation sees while running one level.
struct LevelContext {
  int64_t level;      // 1..depth
  const Level& plan;  // the level: neurons, sources, connections
  const Topology& topology;
  const OperationModuleImpl& params;
  std::string prefix;  // "level3_": the level's parameter name prefix
  // The collective inputs of the levels before this one: where a parameter
  // strings every level's sources together (topo norm's), this level's start
  // (plan.sources_before, kept here for operations written against it).
  int64_t sources_before = 0;
  const torch::Tensor& param(const std::string& name) const { return params.get(prefix + name); }
};

// The TorchScript forward being written by export_torchscript(). Within one
// level's code, `s` holds the level's sources ([sources, batch]), `z` its
// pre-activations ([neurons, batch]) and `batch` the batch size; an
// operation's lines rewrite them as its stages rewrite the tensors.
class ScriptWriter {
 public:
  // Appends one statement to the forward's body.
  void line(const std::string& code) { code_ << "    " << code << "\n"; }
  // Makes a copy of `value` (on the CPU) a buffer of the exported module,
  // named with the current level's prefix; returns the expression reading it.
  std::string buffer(const std::string& name, const torch::Tensor& value);

  // For the exporter: the prefix of the level being written, and the result.
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }
  std::ostream& stream() { return code_; }
  std::string source() const { return code_.str(); }
  const std::vector<std::pair<std::string, torch::Tensor>>& buffers() const { return buffers_; }

 private:
  std::ostringstream code_;
  std::string prefix_;
  std::vector<std::pair<std::string, torch::Tensor>> buffers_;
};

class LevelOperation {
 public:
  virtual ~LevelOperation() = default;
  // A unique name; the child module of the network is registered under it.
  virtual std::string name() const = 0;
  // Declares this operation's parameters for a topology, drawing random
  // values from `generator`.
  virtual OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& generator) const = 0;

  // sources: [collective inputs, batch] -> same shape.
  virtual torch::Tensor on_inputs(const LevelContext&, const torch::Tensor& sources) const { return sources; }
  // Computes the level's pre-activations [neurons, batch] from the sources and
  // the level's dense weights [neurons, sources] and biases [neurons, 1]; at
  // most one operation of a network may replace the affine step.
  virtual std::optional<torch::Tensor> replace_affine(const LevelContext&, const torch::Tensor& /*sources*/,
                                                      const torch::Tensor& /*weights*/,
                                                      const torch::Tensor& /*bias*/) const {
    return std::nullopt;
  }
  // z: [neurons, batch] -> same shape (outputs included).
  virtual torch::Tensor on_preactivation(const LevelContext&, const torch::Tensor& z) const { return z; }
  // z: the hidden rows [hidden, batch]; at most one operation may replace the activation.
  virtual std::optional<torch::Tensor> replace_activation(const LevelContext&, const torch::Tensor& /*z*/,
                                                          const TensorFunction& /*activation*/) const {
    return std::nullopt;
  }
  virtual bool replaces_affine() const { return false; }
  virtual bool replaces_activation() const { return false; }
  // Both questions default to false: an operation of your own that reads a
  // level's inputs together, or masks by connections, should say so.
  //
  // Whether a neuron's result depends on more of its level's collective
  // inputs than the ones it is connected to (a norm or an attention over the
  // level). A function-preserving edit then refuses to give an old level a
  // new input or to move an old neuron to another level, which would change
  // old outputs however small the new weights.
  virtual bool reads_whole_level() const { return false; }
  // Whether a neuron's result depends on which connections it has, not only
  // on their weights (an attention over its own inputs). A function-
  // preserving edit then refuses a new connection into an old neuron.
  virtual bool reads_connection_set() const { return false; }
  // Whether a neuron's result depends on the level it is in (parameters
  // keyed by level, as per-(level, source) gains are: a neuron that moves
  // level reads other entries, drawn anew). A function-preserving edit then
  // refuses to move an old neuron to another level. True unless an
  // operation says otherwise (one keyed by neuron alone, such as adaptive
  // activations), since connex cannot tell from its parameters.
  virtual bool depends_on_level() const { return true; }

  // An operation whose only stage is replace_activation() with a·σ(b·z) per
  // hidden neuron returns the names of its (a, b) parameters ([non-input
  // neurons, 1], in bias order): the fused CPU kernel then applies it
  // itself. nullopt (the default): the network takes the per-level path
  // (unless the operation is one the kernel knows, as TopoNorm).
  virtual std::optional<std::pair<std::string, std::string>> fused_activation_scales() const { return std::nullopt; }
  // Whether the operation is only such a scaling: it replaces the activation
  // and names its (a, b). The fused kernel applies it; a trace's z is taken
  // before it and its values after, so gradients read off a trace hold.
  bool scales_activation() const { return replaces_activation() && fused_activation_scales().has_value(); }

  // How many parameter values build() declares for `topology`, worked out
  // without building them (a checkpoint checks its size before allocating);
  // nullopt when the operation cannot say.
  virtual std::optional<double> parameter_count(const Topology& /*topology*/) const { return std::nullopt; }

  // TorchScript forms of the stages, for export_torchscript(): an operation
  // that returns true from scriptable() writes each stage it overrides.
  virtual bool scriptable() const { return false; }
  // Rewrites `s`.
  virtual void script_on_inputs(ScriptWriter&, const LevelContext&) const {}
  // Sets `z` from `s`, the level's dense weights [neurons, sources] and the
  // expression of its bias buffer [neurons, 1].
  virtual void script_replace_affine(ScriptWriter&, const LevelContext&, const torch::Tensor& /*weights*/,
                                     const std::string& /*bias*/) const {}
  // Rewrites `z`.
  virtual void script_on_preactivation(ScriptWriter&, const LevelContext&) const {}
  // The expression of the activated hidden rows, from the expression of their
  // pre-activations; `activation` writes the network's activation of an expression.
  virtual std::string script_replace_activation(
      ScriptWriter&, const LevelContext&, const std::string& z_hidden,
      const std::function<std::string(const std::string&)>& activation) const {
    return activation(z_hidden);
  }
};

using LevelOperationPtr = std::shared_ptr<const LevelOperation>;

// Copies into `to` every entry of `from` whose keys all survive in `to_keys`
// (fixed dimensions must match in size). Returns the entries copied, or -1
// when the two layouts cannot correspond at all. Used for parameters and for
// optimizer state alike.
int64_t copy_keyed(const torch::Tensor& from, const DimKeys& from_keys, torch::Tensor& to, const DimKeys& to_keys);

// copy_keyed for every parameter `from` and `to` share by name.
int64_t transfer_operation_parameters(const OperationModuleImpl& from, OperationModuleImpl& to);

}  // namespace connex
