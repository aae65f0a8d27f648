#pragma once
// NeuralNetwork: a DAG of single neurons as a trainable torch module.
//
//   auto net = connex::NeuralNetwork(
//       connex::GraphSpec::from_adjacency({{0, {1, 2}}, {1, {3}}, {2, {3}}}, {0}, {3}),
//       connex::NeuralNetworkOptions().hidden_activation("relu"));
//   torch::Tensor y = net->forward(x);  // x: [batch, inputs] -> [batch, outputs]
//
// The module holds the trained values: one flat `weight` tensor (one entry per
// connection, in the Topology's (target, source) order) and one flat `bias`
// tensor (one per non-input neuron), the freeze masks and dropout's rates;
// the structure lives in an immutable, shared Topology.
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "connex/graph_spec.h"
#include "connex/options.h"
#include "connex/parameter_remap.h"
#include "connex/topology.h"
#include "connex/weighted_graph.h"

namespace connex {

struct FusedPlan;
struct DensePlan;

// What one forward pass computed at each level, for methods that score
// connections by values and gradients (RigL's growth, pruning by |w·a| or
// |w·grad|). Level l's rows are its neurons, dense ids level.begin onward.
struct LevelTrace {
  // Per level (0: the inputs), [level size, batch]: the values later levels read (after dropout).
  std::vector<torch::Tensor> values;
  // Per level (0: undefined), [level size, batch]: the affine step's output
  // (before any operation's on_preactivation); after loss.backward() its
  // grad() is dL/dz, when autograd records (a parameter or the input requires gradients).
  std::vector<torch::Tensor> preactivations;
  // The compiled graph of the network that made it: readers refuse a trace
  // of another network (an edited one would match in shape but not in meaning).
  std::shared_ptr<const Topology> topology;
};

class NeuralNetworkImpl : public torch::nn::Cloneable<NeuralNetworkImpl> {
 public:
  // The spec is taken by value: pass an rvalue to hand it over without a copy.
  explicit NeuralNetworkImpl(GraphSpec spec, NeuralNetworkOptions options = {});
  // From an already compiled topology (the editor's path; options must match it).
  NeuralNetworkImpl(std::shared_ptr<const Topology> topology, NeuralNetworkOptions options);
  // The same with these parameters instead of drawn ones: `weight` one entry
  // per connection in the topology's order, `bias` one per non-input neuron
  // (bias_index()), both of options().dtype(); the network takes the tensors
  // over (no copy). Techniques' parameters are drawn as usual.
  NeuralNetworkImpl(std::shared_ptr<const Topology> topology, NeuralNetworkOptions options, torch::Tensor weight,
                    torch::Tensor bias);
  // Copies structure and options; a module-valued activation is deep-cloned so
  // that clone() never shares parameters with the original.
  NeuralNetworkImpl(const NeuralNetworkImpl& other);
  NeuralNetworkImpl& operator=(const NeuralNetworkImpl& other) = default;

  // Re-creates parameters (from options().seed()) and buffers.
  void reset() override;

  // Takes over `from`'s trained state, for a network built from an edited copy
  // of its graph: the weight and bias entries that `remap` pairs (a parameter
  // it does not list is copied whole, and must have the same shape), the
  // gradient masks by the same pairs (an all-ones mask has nothing to move),
  // the frozen flag with its hooks, the parameters of each operation of the
  // same name, by key, and the training mode. The index pairs, `from` and
  // this network must all be on this network's device.
  void adopt_parameters(const NeuralNetworkImpl& from, const ParameterRemap& remap);

  // x: [batch, num_inputs] -> [batch, num_outputs], or [num_inputs] -> [num_outputs].
  torch::Tensor forward(const torch::Tensor& x);
  // The same, filling `trace`. On the per-level path the trace's tensors are
  // the graph's own (it holds the autograd graph until dropped); on the
  // fused kernel they are copies (values without autograd history, the
  // pre-activations leaves whose grad() the kernel's backward fills). A name
  // of its own: one forward() lets torch::nn::Sequential and AnyModule hold
  // the network.
  torch::Tensor forward_traced(const torch::Tensor& x, LevelTrace& trace);

  void pretty_print(std::ostream& stream) const override;

  // torch::load(network, path) matches tensors by name alone, so another
  // graph's would load into this one, each weight onto another connection.
  // save() writes what the tensors mean beside them (a fingerprint of the
  // labels and roles in the layout's order, the connections and every
  // parameter's name and shape), and load() refuses an archive of another
  // graph or neuron order, naming both, before reading any of this
  // network's tensors. connex::save() and connex::load() keep the graph
  // itself (checkpoint.h).
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  // torch's Module::to(dtype) casts every buffer; these cast only
  // floating-point tensors and record the dtype in options().
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  // Whether forward() would take the fused whole-network kernel right now
  // (it depends on device, dtype, training mode and dropout).
  bool uses_fused_kernel() const;
  // Whether forward() would take the dense path (options.h) right now: not
  // on the fused kernel, float32/float64 on the CPU (any floating dtype on
  // other devices; with topo norm or topo self-attention, the CPU only), no
  // dropout while training.
  // A traced forward stays on the fused kernel where uses_fused_kernel(),
  // and otherwise takes the per-level path rather than the dense one.
  bool uses_dense_path() const;

  // ---- structure
  const GraphSpec& spec() const { return topology_->spec(); }
  const Topology& topology() const { return *topology_; }
  std::shared_ptr<const Topology> topology_ptr() const { return topology_; }
  const NeuralNetworkOptions& options() const { return options_; }
  const std::vector<NeuronId>& input_neurons() const { return spec().inputs(); }
  const std::vector<NeuronId>& output_neurons() const { return spec().outputs(); }
  std::vector<NeuronId> hidden_neurons() const;
  // The levels of non-input neurons, by label, in execution order.
  std::vector<std::vector<NeuronId>> topological_levels() const;
  int64_t num_neurons() const { return topology_->num_neurons(); }
  int64_t num_inputs() const { return topology_->num_inputs(); }
  int64_t num_outputs() const { return static_cast<int64_t>(output_neurons().size()); }
  int64_t num_connections() const { return topology_->num_connections(); }
  // Trainable scalars, the activation's and transformation's modules included.
  int64_t num_parameters() const;

  // ---- parameters by label
  double weight(const NeuronId& from, const NeuronId& to) const;
  void set_weight(const NeuronId& from, const NeuronId& to, double value);
  double bias(const NeuronId& neuron) const;
  void set_bias(const NeuronId& neuron, double value);
  double dropout_p(const NeuronId& neuron) const;
  // The flat parameter tensors themselves (layout: see Topology).
  const torch::Tensor& weight_tensor() const { return weight_; }
  const torch::Tensor& bias_tensor() const { return bias_; }

  // Zero the gradients of these connections' weights and these neurons'
  // biases from now on (like Equinox's filtered grad). Optimizers with
  // momentum or weight decay may still move a frozen value: exclude it from
  // decay, or freeze before the first step. Unknown labels throw.
  void freeze(const std::vector<Edge>& connections, const std::vector<NeuronId>& neurons = {});
  void unfreeze_all();
  // Re-reads the gradient masks (after they were loaded from a file) and
  // installs the freezing hooks if any entry is frozen.
  void sync_frozen();
  bool is_frozen(const NeuronId& from, const NeuronId& to) const;
  // Which connections (biases) are frozen, in weight_tensor()'s
  // (bias_tensor()'s) order: bool, on the CPU.
  torch::Tensor frozen_connections() const;
  torch::Tensor frozen_biases() const;

  WeightedGraph weighted_graph() const;

  // The per-level operations in pipeline order (techniques first, then the
  // user's), and each one's parameter module.
  const std::vector<LevelOperationPtr>& operations() const { return operations_; }
  const OperationModuleImpl& operation_parameters(size_t k) const { return *operation_modules_[k]; }
  OperationModuleImpl& operation_parameters(size_t k) { return *operation_modules_[k]; }

 private:
  // Dropout's registered buffers, [size, 1]; undefined when p = 0 throughout the level.
  struct LevelDropout {
    torch::Tensor keep_prob, keep_scale;
  };
  // The per-level path's index tensors on one device, made from the topology
  // when that path first runs there: not module state, and never made for a
  // network on the fused kernel or the dense path (they are as long as its
  // connections).
  struct GatherTensors {
    std::vector<torch::Tensor> segment_index;  // undefined for contiguous segments
    torch::Tensor order;
  };
  struct LevelIndex {
    GatherTensors gather;
    torch::Tensor edge_source, edge_target;  // an edge-list level's
    torch::Tensor scatter_pos;               // a scattered dense level's
  };
  struct PathIndex {
    torch::Device device;
    std::vector<LevelIndex> levels;  // index 0: the input level (none)
    GatherTensors output;
  };

  // The constructors' common part: the pipeline, dropout and fused plan,
  // then reset(), which takes `weight` and `bias` when they are defined.
  void set_up(torch::Tensor weight, torch::Tensor bias);
  void check_input(const torch::Tensor& x) const;
  torch::Tensor gather(const GatherPlan& plan, const GatherTensors& tensors,
                       const std::vector<torch::Tensor>& pieces) const;
  torch::Tensor apply_dropout(const torch::Tensor& values, const LevelDropout& level) const;
  torch::Tensor dense_weights(size_t l, const LevelIndex& index, const torch::Tensor& w) const;
  // The index tensors on `device`, made on first use there (thread-safe).
  std::shared_ptr<const PathIndex> path_index(const torch::Device& device) const;
  torch::Tensor forward_fused_or_levels(const torch::Tensor& x, LevelTrace* trace);
  torch::Tensor forward_levels(const torch::Tensor& x, LevelTrace* trace);
  // `preactivation`, when given, receives the affine step's output.
  torch::Tensor run_level(size_t l, const LevelIndex& index, const torch::Tensor& sources, int64_t batch,
                          torch::Tensor* preactivation) const;
  // Registers level l's dropout buffers (part of reset()).
  LevelDropout register_dropout(size_t l);
  void install_freeze_hooks();
  int64_t connection_or_throw(const NeuronId& from, const NeuronId& to, const char* context) const;
  int64_t bias_or_throw(const NeuronId& neuron, const char* context) const;

  NeuralNetworkOptions options_;
  std::shared_ptr<const Topology> topology_;
  std::vector<double> dropout_;  // resolved, per dense id
  torch::Tensor weight_, bias_;
  torch::Tensor given_weight_, given_bias_;  // the constructor's, for its reset() only
  torch::Tensor weight_grad_mask_, bias_grad_mask_;
  bool frozen_ = false;
  // Set when structure and options allow the fused kernel and the planner
  // prefers it; forward() then also needs a CPU float32/float64 network.
  std::shared_ptr<const FusedPlan> fused_plan_;
  // Set when the structure allows the dense path and the options do not refuse it.
  std::shared_ptr<const DensePlan> dense_plan_;
  std::vector<LevelDropout> dropout_levels_;  // index 0: the input level
  // The last device's PathIndex behind a lock of its own: a copy (clone())
  // takes the index under the other's lock and gets a lock of its own.
  struct PathIndexCache {
    mutable std::mutex mutex;
    std::shared_ptr<const PathIndex> index;
    PathIndexCache() = default;
    PathIndexCache(const PathIndexCache& other) : index(other.get()) {}
    PathIndexCache& operator=(const PathIndexCache& other) {
      auto taken = other.get();
      std::lock_guard<std::mutex> hold(mutex);
      index = std::move(taken);
      return *this;
    }
    std::shared_ptr<const PathIndex> get() const {
      std::lock_guard<std::mutex> hold(mutex);
      return index;
    }
    // Another device's index is not kept: it is as long as the connections.
    void drop_unless_on(const torch::Device& device) {
      std::lock_guard<std::mutex> hold(mutex);
      if (index && index->device != device) index.reset();
    }
  };
  mutable PathIndexCache path_index_;
  std::vector<LevelOperationPtr> operations_;
  std::vector<OperationModule> operation_modules_;
  std::vector<std::string> level_prefixes_;
};

// The module holder, as TORCH_MODULE(NeuralNetwork) would declare it, but
// reaching into an empty one (NeuralNetwork(nullptr)) throws connex::Error
// with one line, not torch's "Accessing empty ModuleHolder" and a stack.
class NeuralNetwork : public torch::nn::ModuleHolder<NeuralNetworkImpl> {
 public:
  using torch::nn::ModuleHolder<NeuralNetworkImpl>::ModuleHolder;
  using Impl = NeuralNetworkImpl;
  NeuralNetworkImpl* operator->() { return &checked(); }
  const NeuralNetworkImpl* operator->() const { return &checked(); }
  NeuralNetworkImpl& operator*() { return checked(); }
  const NeuralNetworkImpl& operator*() const { return checked(); }
  NeuralNetworkImpl* get() { return &checked(); }
  const NeuralNetworkImpl* get() const { return &checked(); }
  const std::shared_ptr<NeuralNetworkImpl>& ptr() const {
    checked();
    return impl_;
  }
  template <typename... Args>
  torch::Tensor operator()(Args&&... args) {
    return checked().forward(std::forward<Args>(args)...);
  }

 private:
  NeuralNetworkImpl& checked() const;
};

// A deep copy, typed (torch's Module::clone() returns a shared_ptr<Module>):
// parameters, buffers, options, frozen entries, and a module activation with
// its trained values; on `device` when one is given. Shares no storage with
// the original.
NeuralNetwork clone(const NeuralNetwork& network, const std::optional<torch::Device>& device = std::nullopt);

}  // namespace connex
