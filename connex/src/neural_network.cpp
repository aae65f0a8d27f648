#include "connex/neural_network.h"

#include <atomic>
#include <cmath>
#include <map>
#include <set>
#include <typeinfo>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "connex/techniques.h"
#include "dense_path.h"
#include "edit_build.h"
#include "fused_plan.h"
#include "messages.h"
#include "remap_copy.h"
#include "structure_stamp.h"
#include "trace_check.h"
#include "builtin_operations.h"
#include "dtype.h"
#include "work_share.h"

namespace connex {

CompileOptions compile_options(const NeuralNetworkOptions& options) {
  CompileOptions compile;
  compile.topo_sort = options.topo_sort();
  compile.dense_threshold = options.execution().dense_threshold();
  compile.force_kernel = options.execution().force_kernel();
  compile.context = "NeuralNetwork()";
  return compile;
}

namespace {

void check_probability(double p, const std::string& what) {
  if (!(p >= 0.0 && p <= 1.0))  // also rejects NaN
    fail("NeuralNetwork(): dropout_p {} is {}; it must lie in [0, 1]", what, p);
}

void check_options(const NeuralNetworkOptions& options) {
  if (!options.hidden_activation().is_elementwise())
    fail(
        "NeuralNetwork(): hidden_activation \"{}\" is not element-wise; use it as "
        "output_transformation instead",
        options.hidden_activation().name());
  const auto dtype = options.dtype();
  if (!find_dtype(dtype)) fail("NeuralNetwork(): dtype {} is not a floating-point type", c10::toString(dtype));
}

// Initialisation as torch::nn::Linear does it, per neuron: weights and bias
// uniform in ±1/sqrt(fan-in). This keeps each pre-activation's variance
// independent of fan-in, which matters here because fan-in varies from
// neuron to neuron; Connex's N(0, 0.1²) makes wide neurons saturate and
// narrow ones nearly silent. A neuron without inputs is a constant; its bias
// is drawn as for fan-in 1 (not 0, which would sit on ReLU's kink).
// initial_bound() is that bound for one neuron's weights and bias (also for
// an edit's new entries, edited_parameters()).
double initial_bound(const Topology& topo, int64_t dense) {
  const int64_t fan_in = topo.in_offsets()[dense + 1] - topo.in_offsets()[dense];
  return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
}

// Returns (weight, bias) in float64.
std::pair<torch::Tensor, torch::Tensor> initial_parameters(const Topology& topo, at::Generator& generator) {
  // Uniform draws in double (weights, then biases), scaled in place per
  // neuron: the same values as scaling with tensor ops, without their four
  // temporaries.
  auto weight = torch::rand({topo.num_connections()}, generator, torch::kFloat64);
  auto bias = torch::rand({topo.num_biases()}, generator, torch::kFloat64);
  double* w = weight.data_ptr<double>();
  double* b = bias.data_ptr<double>();
  for (int64_t d = topo.num_inputs(); d < topo.num_neurons(); ++d) {
    const double bound = initial_bound(topo, d);
    for (int64_t c = topo.in_offsets()[d]; c < topo.in_offsets()[d + 1]; ++c) w[c] = (w[c] * 2 - 1) * bound;
    b[topo.bias_index(d)] = (b[topo.bias_index(d)] * 2 - 1) * bound;
  }
  return {weight, bias};
}

// Throws unless copy_entries(to, from, pairs) can move every entry it names.
void check_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved* pairs,
                   const char* name) {
  if (pairs) return check_moved_entries(to.numel(), from.numel(), *pairs, "NeuralNetwork::adopt_parameters()");
  if (!to.sizes().equals(from.sizes()))
    fail("NeuralNetwork::adopt_parameters(): expected {} of shape {} (the remap does not move it), got {}", name,
         shape_str(to.sizes()), shape_str(from.sizes()));
}

bool is_cpu_index(const torch::Tensor& t) { return t.is_cpu() && t.scalar_type() == torch::kLong && t.is_contiguous(); }

}  // namespace

void move_checked_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved& moved) {
  const auto& new_index = moved.new_index;
  const auto& old_index = moved.old_index;
  const bool direct = to.is_cpu() && from.is_cpu() && to.is_contiguous() && from.is_contiguous() &&
                      to.scalar_type() == from.scalar_type() &&
                      (to.scalar_type() == torch::kFloat || to.scalar_type() == torch::kDouble) &&
                      is_cpu_index(new_index) && is_cpu_index(old_index);
  if (!direct) {
    torch::NoGradGuard no_grad;
    to.view(-1).index_copy_(0, new_index, from.reshape(-1).index_select(0, old_index));
    return;
  }
  const int64_t pairs = new_index.numel();
  const int64_t* to_entry = new_index.data_ptr<int64_t>();
  const int64_t* from_entry = old_index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(to.scalar_type(), "copy_moved_entries", [&] {
    scalar_t* out = to.data_ptr<scalar_t>();
    const scalar_t* in = from.data_ptr<scalar_t>();
    share_work(0, pairs, int64_t{1} << 15, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) out[to_entry[k]] = in[from_entry[k]];
    });
  });
}

namespace {

// to[new_index] = from[old_index] for the remap's pairs; the whole tensor when
// there are none. check_entries() has passed for the same sizes.
void copy_entries(torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved* pairs) {
  if (pairs) return move_checked_entries(to, from, *pairs);
  to.copy_(from);
}

// The operation pipeline: techniques in Connex's order, then the user's.
std::vector<LevelOperationPtr> operation_pipeline(const NeuralNetworkOptions& options) {
  std::vector<LevelOperationPtr> operations = builtin_operations(options);
  const size_t builtins = operations.size();
  for (const auto& op : options.operations()) {
    if (!op) fail("NeuralNetwork(): options().operations() holds a null operation");
    operations.push_back(op);
  }
  std::map<std::string, size_t> names;  // name -> position
  int affine = 0, activation = 0;
  for (size_t k = 0; k < operations.size(); ++k) {
    const auto& op = operations[k];
    if (const auto [at, fresh] = names.emplace(op->name(), k); !fresh)
      fail("NeuralNetwork(): two operations are named \"{}\"{}", op->name(),
           at->second < builtins ? "; one is the built-in technique of that name: give yours another"
                                 : "; give each its own name(), under which its parameters are registered");
    if (op->name().empty() || op->name().find('.') != std::string::npos)
      fail("NeuralNetwork(): operation name \"{}\" must be non-empty and without dots", op->name());
    affine += op->replaces_affine();
    activation += op->replaces_activation();
  }
  if (affine > 1) fail("NeuralNetwork(): more than one operation replaces the affine step");
  if (activation > 1) fail("NeuralNetwork(): more than one operation replaces the activation");
  return operations;
}

// Dropout per dense id; validation names the neuron.
std::vector<double> resolve_dropout(const Topology& topo, const DropoutSpec& dropout) {
  check_probability(dropout.hidden, "for hidden neurons");
  std::vector<double> resolved(topo.num_neurons(), 0.0);
  for (int64_t d = 0; d < topo.num_neurons(); ++d)
    if (topo.role(d) == Role::Hidden) resolved[d] = dropout.hidden;
  for (const auto& [id, p] : dropout.per_neuron) {
    int64_t d = topo.dense_of(id);
    if (d < 0) fail("NeuralNetwork(): dropout_p names neuron {}, which is not in the graph", id);
    check_probability(p, "of neuron " + id.str());
    resolved[d] = p;
  }
  return resolved;
}

// The planner's whole-network choice. The fused kernel runs the network as
// one autograd function: it wins where per-op overhead dominates (small
// networks) or levels are sparse; layered dense networks keep BLAS matmuls.
// Structure and options only; the dtype is checked at each forward, since
// to(dtype) may change it. Null when the network keeps the per-level path.
// dense_fits: whether the dense path has a plan for this network.
std::shared_ptr<const FusedPlan> plan_fused_kernel(const std::shared_ptr<const Topology>& topology,
                                                   const NeuralNetworkOptions& options,
                                                   const std::vector<LevelOperationPtr>& operations, bool dense_fits) {
  // The kernel applies one activation scaling (adaptive activations) and topo norm itself (TopoNorm itself, not a
  // subclass that may compute something else); any other operation needs the levels, and so does one that declares
  // scales without replacing the activation (the per-level path would not scale).
  int scalings = 0, norms = 0, others = 0;
  for (const auto& op : operations)
    ++(typeid(*op) == typeid(TopoNorm) ? norms : op->scales_activation() ? scalings : others);
  const bool operations_fuse = others == 0 && scalings <= 1 && norms <= 1;
  const bool fused_eligible =
      operations_fuse && fused_supports(options.hidden_activation()) && !options.execution().force_kernel();
  // Connections in levels that run faster as one matmul than in the fused
  // kernel's loops: complete levels, and scattered ones at least
  // kMatmulDensity dense. On a layered network (BENCHMARKS.md) the kernel
  // in AVX-512 vectors ties with the per-level path at 60 % density and wins
  // at 50 %; in AVX2's, timed beside an AVX-512 BLAS, it wins at 40 % and
  // loses at 50 %; in SSE2's, twice as slow, 35 % (measured before the
  // kernel had register tiles).
  const int lanes = fused_kernel_lanes();
  const double kMatmulDensity = lanes >= 64 ? 0.55 : lanes >= 32 ? 0.45 : 0.35;
  int64_t dense_connections = 0;
  for (const auto& level : topology->levels()) {
    const double cells = static_cast<double>(level.size()) * static_cast<double>(level.sources.size());
    if (level.kernel == LevelKernel::DenseView ||
        (level.kernel == LevelKernel::DenseScatter && level.num_connections() >= kMatmulDensity * cells))
      dense_connections += level.num_connections();
  }
  const bool small = topology->num_connections() <= 4096;
  // dense_path(true) asks for the dense path instead, where the structure allows it.
  const bool dense_asked = options.execution().dense_path().value_or(false);
  if (dense_asked && options.execution().fused().value_or(false))
    fail("NeuralNetwork(): fused(true) and dense_path(true) exclude each other");
  const bool dense_wanted = dense_asked && dense_fits;
  const bool fused_preferred = options.execution().fused()
                                   ? *options.execution().fused()
                                   : !dense_wanted && (small || dense_connections * 2 < topology->num_connections());
  const bool fused_dtype = kernel_dtype(options.dtype());
  if (options.execution().fused() && *options.execution().fused() && !(fused_eligible && fused_dtype))
    fail(
        "NeuralNetwork(): fused(true) needs a built-in activation other than softmax, float32 or float64, no "
        "operations but adaptive activations and topo norm, and no forced kernel");
  // Made here, not on first use, so concurrent forward() calls share it safely.
  if (fused_eligible && fused_preferred)
    return std::make_shared<FusedPlan>(make_fused_plan(topology, options.hidden_activation(), norms == 1));
  return nullptr;
}

// The dense path's plan, or null where it does not apply or the options refuse it.
std::shared_ptr<const DensePlan> plan_dense(const Topology& topology, const NeuralNetworkOptions& options,
                                            const std::vector<LevelOperationPtr>& operations) {
  const auto wanted = options.execution().dense_path();
  if (wanted && !*wanted) return nullptr;
  if (options.execution().force_kernel()) {  // the per-level kernels are what is asked for
    if (wanted) fail("NeuralNetwork(): dense_path(true) and force_kernel() exclude each other");
    return nullptr;
  }
  // dense_path(true) is a preference: a network it does not fit (an edit may
  // make one) takes the planner's other paths, as uses_dense_path() says.
  return plan_dense_path(topology, options.hidden_activation(), operations);
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> edited_parameters(const Topology& topo, at::ArrayRef<int64_t> weight_kept,
                                                          at::ArrayRef<int64_t> bias_kept, uint64_t seed,
                                                          const torch::TensorOptions& options) {
  // Its own stream: the network's seed also draws the techniques' parameters.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x9e3779b97f4a7c15ULL);
  auto fresh = [&](at::ArrayRef<int64_t> kept, auto&& bound_of) {
    std::vector<int64_t> index;
    for (int64_t k = 0; k < static_cast<int64_t>(kept.size()); ++k)
      if (kept[k] < 0) index.push_back(k);
    auto out = torch::empty({static_cast<int64_t>(kept.size())}, options);
    if (index.empty()) return out;
    auto values = torch::rand({static_cast<int64_t>(index.size())}, generator, torch::kFloat64);
    double* v = values.data_ptr<double>();
    for (size_t k = 0; k < index.size(); ++k) v[k] = (v[k] * 2 - 1) * bound_of(index[k]);
    torch::NoGradGuard no_grad;
    out.index_put_({torch::tensor(index, torch::kLong).to(options.device())}, values.to(options));
    return out;
  };
  auto weight = fresh(weight_kept, [&](int64_t c) { return initial_bound(topo, topo.conn_target()[c]); });
  auto bias = fresh(bias_kept, [&](int64_t b) { return initial_bound(topo, b + topo.num_inputs()); });
  return {weight, bias};
}

void check_moved_entries(int64_t to_size, int64_t from_size, const ParameterRemap::Moved& moved, const char* context) {
  const auto& new_index = moved.new_index;
  const auto& old_index = moved.old_index;
  if (new_index.numel() != old_index.numel())
    fail("{}: expected as many new as old indices in a remap, got {} and {}", context, new_index.numel(),
         old_index.numel());
  if (new_index.numel() == 0) return;
  bool out_of_range = false;
  if (is_cpu_index(new_index) && is_cpu_index(old_index)) {
    const int64_t* to_entry = new_index.data_ptr<int64_t>();
    const int64_t* from_entry = old_index.data_ptr<int64_t>();
    std::atomic<bool> bad_chunk{false};
    share_work(0, new_index.numel(), int64_t{1} << 16, [&](int64_t first, int64_t last) {
      bool bad = false;
      for (int64_t k = first; k < last; ++k)
        bad |= to_entry[k] < 0 || to_entry[k] >= to_size || from_entry[k] < 0 || from_entry[k] >= from_size;
      if (bad) bad_chunk = true;
    });
    out_of_range = bad_chunk;
  } else {
    out_of_range = new_index.min().item<int64_t>() < 0 || new_index.max().item<int64_t>() >= to_size ||
                   old_index.min().item<int64_t>() < 0 || old_index.max().item<int64_t>() >= from_size;
  }
  if (out_of_range)
    fail("{}: a remap index is out of range (expected new indices in [0, {}) and old ones in [0, {}))", context,
         to_size, from_size);
}

void copy_moved_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved& moved,
                        const char* context) {
  check_moved_entries(to.numel(), from.numel(), moved, context);
  move_checked_entries(to, from, moved);
}

// `options` is passed on by copy: with a move, the compiler may move it out
// before compile_options() reads it (argument order is unspecified).
NeuralNetworkImpl::NeuralNetworkImpl(GraphSpec spec, NeuralNetworkOptions options)
    : NeuralNetworkImpl(Topology::compile(std::move(spec), compile_options(options)), options) {}

NeuralNetworkImpl::NeuralNetworkImpl(std::shared_ptr<const Topology> topology, NeuralNetworkOptions options)
    : options_(std::move(options)), topology_(std::move(topology)) {
  check_options(options_);
  set_up({}, {});
}

NeuralNetworkImpl::NeuralNetworkImpl(std::shared_ptr<const Topology> topology, NeuralNetworkOptions options,
                                     torch::Tensor weight, torch::Tensor bias)
    : options_(std::move(options)), topology_(std::move(topology)) {
  check_options(options_);
  auto check = [&](const torch::Tensor& t, const char* name, int64_t size) {
    if (!t.defined()) fail("NeuralNetwork(): expected a {} tensor, got an undefined one", name);
    if (t.dim() != 1 || t.size(0) != size)
      fail("NeuralNetwork(): expected {} of shape [{}], got {}", name, size, shape_str(t.sizes()));
    if (t.scalar_type() != options_.dtype())
      fail("NeuralNetwork(): expected {} of dtype {} (options().dtype()), got {}", name,
           c10::toString(options_.dtype()), c10::toString(t.scalar_type()));
  };
  check(weight, "weight", topology_->num_connections());
  check(bias, "bias", topology_->num_biases());
  if (weight.device() != bias.device())
    fail("NeuralNetwork(): expected weight and bias on one device, got {} and {}", weight.device().str(),
         bias.device().str());
  set_up(weight.detach(), bias.detach());
}

void NeuralNetworkImpl::set_up(torch::Tensor weight, torch::Tensor bias) {
  operations_ = operation_pipeline(options_);
  dropout_ = resolve_dropout(*topology_, options_.dropout_p());
  dense_plan_ = plan_dense(*topology_, options_, operations_);
  fused_plan_ = plan_fused_kernel(topology_, options_, operations_, dense_plan_ != nullptr);
  given_weight_ = std::move(weight);
  given_bias_ = std::move(bias);
  reset();
  if (!weight_.is_cpu()) to(weight_.device());  // the buffers follow given parameters
}

// LibTorch before 2.2 makes Module a virtual base of Cloneable, which the
// most derived class initialises; from 2.2 it is a plain base of Cloneable.
#if TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 2)
#define CONNEX_MODULE_COPY torch::nn::Module(other)
#else
#define CONNEX_MODULE_COPY torch::nn::Cloneable<NeuralNetworkImpl>(other)
#endif
NeuralNetworkImpl::NeuralNetworkImpl(const NeuralNetworkImpl& other)
    : CONNEX_MODULE_COPY,
      options_(other.options_),
      topology_(other.topology_),
      dropout_(other.dropout_),
      frozen_(other.frozen_),
      fused_plan_(other.fused_plan_),
      dense_plan_(other.dense_plan_),
      path_index_(other.path_index_),
      operations_(other.operations_) {
  options_.hidden_activation(other.options_.hidden_activation().deep_copy());
  options_.output_transformation(other.options_.output_transformation().deep_copy());
}
#undef CONNEX_MODULE_COPY

void NeuralNetworkImpl::reset() {
  const Topology& topo = *topology_;
  const auto float_options = torch::TensorOptions().dtype(options_.dtype());
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options_.seed());
  if (given_weight_.defined()) {
    // Taken once: a later reset() draws.
    weight_ = register_parameter("weight", std::exchange(given_weight_, {}));
    bias_ = register_parameter("bias", std::exchange(given_bias_, {}));
  } else {
    auto [weight, bias] = initial_parameters(topo, generator);
    weight_ = register_parameter("weight", weight.to(float_options));
    bias_ = register_parameter("bias", bias.to(float_options));
  }
  weight_grad_mask_ = register_buffer("weight_grad_mask", torch::ones({topo.num_connections()}, float_options));
  bias_grad_mask_ = register_buffer("bias_grad_mask", torch::ones({topo.num_biases()}, float_options));

  dropout_levels_.clear();
  for (size_t l = 0; l < topo.levels().size(); ++l) dropout_levels_.push_back(register_dropout(l));

  operation_modules_.clear();
  level_prefixes_.clear();
  for (size_t l = 0; l < topo.levels().size(); ++l) level_prefixes_.push_back(level_prefix(l));
  for (const auto& op : operations_) {
    OperationModule declared = [&] {  // the module's checks name the parameter; this names its operation
      try {
        return OperationModule(op->build(topo, options_.dtype(), generator));
      } catch (const Error& e) {
        fail("NeuralNetwork(): operation \"{}\": {}", op->name(), e.what());
      }
    }();
    operation_modules_.push_back(register_module(op->name(), std::move(declared)));
  }

  if (auto m = options_.hidden_activation().module_ptr()) register_module("hidden_activation", m);
  if (auto m = options_.output_transformation().module_ptr()) register_module("output_transformation", m);
  if (frozen_) install_freeze_hooks();
}

NeuralNetworkImpl::LevelDropout NeuralNetworkImpl::register_dropout(size_t l) {
  const Level& level = topology_->levels()[l];
  const std::string prefix = level_prefix(l);
  LevelDropout t;
  bool any_dropout = false;
  std::vector<double> keep(level.size()), scale(level.size());
  for (int64_t d = level.begin; d < level.end; ++d) {
    const double p = dropout_[d];
    any_dropout |= p > 0.0;
    keep[d - level.begin] = 1.0 - p;
    scale[d - level.begin] = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;  // inverted dropout
  }
  if (any_dropout) {
    const auto float_options = torch::TensorOptions().dtype(options_.dtype());
    t.keep_prob =
        register_buffer(prefix + "keep_prob", torch::tensor(keep, torch::kFloat64).to(float_options).unsqueeze(1));
    t.keep_scale =
        register_buffer(prefix + "keep_scale", torch::tensor(scale, torch::kFloat64).to(float_options).unsqueeze(1));
  }
  return t;
}

void NeuralNetworkImpl::adopt_parameters(const NeuralNetworkImpl& from, const ParameterRemap& remap) {
  auto pairs = [&](const std::string& name) -> const ParameterRemap::Moved* {
    auto it = remap.moved.find(name);
    return it == remap.moved.end() ? nullptr : &it->second;
  };
  const ParameterRemap::Moved* weight_pairs = pairs("weight");
  const ParameterRemap::Moved* bias_pairs = pairs("bias");
  // Both checked before either moves: a refused remap changes nothing.
  check_entries(weight_, from.weight_, weight_pairs, "weight");
  check_entries(bias_, from.bias_, bias_pairs, "bias");
  {
    torch::NoGradGuard no_grad;
    copy_entries(weight_, from.weight_, weight_pairs);
    copy_entries(bias_, from.bias_, bias_pairs);
    // A fresh mask is all ones; so is an old one where nothing was frozen,
    // and then there is nothing to move (a gather and scatter as long as the
    // network, saved).
    if (!from.weight_grad_mask_.eq(1).all().item<bool>())
      copy_entries(weight_grad_mask_, from.weight_grad_mask_, weight_pairs);
    if (!from.bias_grad_mask_.eq(1).all().item<bool>()) copy_entries(bias_grad_mask_, from.bias_grad_mask_, bias_pairs);
    if (from.frozen_ && !frozen_) {
      frozen_ = true;
      install_freeze_hooks();
    }
  }
  // Operation (technique) parameters: entry by entry, by their keys.
  for (size_t k = 0; k < operations_.size(); ++k)
    for (size_t j = 0; j < from.operations_.size(); ++j)
      if (from.operations_[j]->name() == operations_[k]->name())
        transfer_operation_parameters(*from.operation_modules_[j], *operation_modules_[k]);
  train(from.is_training());
}

// ------------------------------------------------------------------ dtype

void NeuralNetworkImpl::to(torch::Dtype dtype, bool non_blocking) { to(weight_.device(), dtype, non_blocking); }

// Torch would throw c10::Error (with a C++ backtrace) from deep inside Module::to().
static void check_device(const torch::Device& device) {
  if (device.is_cuda() && !torch::cuda::is_available())
    fail(
        "NeuralNetwork::to(): device {} is not available: CUDA is not available (no GPU, or this LibTorch was built "
        "without CUDA)",
        device.str());
  if (device.is_cuda() && device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count()))
    fail("NeuralNetwork::to(): device {} does not exist: there are {} CUDA devices", device.str(),
         torch::cuda::device_count());
}

void NeuralNetworkImpl::to(torch::Device device, bool non_blocking) {
  check_device(device);
  torch::nn::Module::to(device, non_blocking);
  path_index_.drop_unless_on(device);
}

void NeuralNetworkImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  if (!c10::isFloatingType(dtype))
    fail("NeuralNetwork::to(): dtype {} is not a floating-point type", c10::toString(dtype));
  check_device(device);
  torch::NoGradGuard no_grad;
  auto cast = [&](torch::Tensor& t) {
    t.set_data(t.is_floating_point() ? t.to(device, dtype, non_blocking) : t.to(device, t.scalar_type(), non_blocking));
  };
  for (auto& p : parameters()) cast(p);
  for (auto& b : buffers()) cast(b);
  options_.dtype(dtype);
  path_index_.drop_unless_on(device);
}

// ------------------------------------------------------------------ forward

namespace {

// Whether dropout acts in this forward (it runs on the per-level path).
template <typename Levels>
bool dropout_acts(bool training, const Levels& levels) {
  if (training)
    for (const auto& level : levels)
      if (level.keep_prob.defined()) return true;
  return false;
}

}  // namespace

bool NeuralNetworkImpl::uses_fused_kernel() const {
  if (!fused_plan_ || !weight_.device().is_cpu()) return false;
  return kernel_dtype(weight_.scalar_type()) && !dropout_acts(is_training(), dropout_levels_);
}

bool NeuralNetworkImpl::uses_dense_path() const {
  if (!dense_plan_ || uses_fused_kernel()) return false;
  const bool cpu = weight_.device().is_cpu();
  // Topo norm and topo self-attention inside the path run their CPU loops.
  if (dense_plan_->sources != DensePlan::Sources::Plain && !cpu) return false;
  if (cpu ? !kernel_dtype(weight_.scalar_type()) : !weight_.is_floating_point()) return false;
  return !dropout_acts(is_training(), dropout_levels_);
}

void NeuralNetworkImpl::check_input(const torch::Tensor& x) const {
  const int64_t n_in = num_inputs();
  if (!x.defined()) fail("NeuralNetwork::forward(): the input tensor is undefined");
  if ((x.dim() != 1 && x.dim() != 2) || x.size(-1) != n_in)
    fail("NeuralNetwork::forward(): expected input of shape [batch, {}] or [{}], got {}", n_in, n_in,
         shape_str(x.sizes()));
  if (x.scalar_type() != weight_.scalar_type())
    fail("NeuralNetwork::forward(): expected input of dtype {}, got {}", c10::toString(weight_.scalar_type()),
         c10::toString(x.scalar_type()));
  if (const std::string refusal = cpu_forward_refusal(weight_.scalar_type());
      !refusal.empty() && weight_.device().is_cpu())
    fail("NeuralNetwork::forward(): {}, or move the network to CUDA", refusal);
  if (x.device() != weight_.device())
    fail("NeuralNetwork::forward(): expected input on device {}, got {}", weight_.device().str(), x.device().str());
}

torch::Tensor NeuralNetworkImpl::gather(const GatherPlan& plan, const GatherTensors& tensors,
                                        const std::vector<torch::Tensor>& pieces) const {
  std::vector<torch::Tensor> parts;
  parts.reserve(plan.segments.size());
  for (size_t k = 0; k < plan.segments.size(); ++k) {
    const Segment& seg = plan.segments[k];
    const torch::Tensor& piece = pieces[seg.level];
    if (seg.whole)
      parts.push_back(piece);
    else if (seg.contiguous())
      parts.push_back(piece.narrow(0, seg.begin, seg.end - seg.begin));
    else
      parts.push_back(piece.index_select(0, tensors.segment_index[k]));
  }
  torch::Tensor values = parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
  return tensors.order.defined() ? values.index_select(0, tensors.order) : values;
}

std::shared_ptr<const NeuralNetworkImpl::PathIndex> NeuralNetworkImpl::path_index(const torch::Device& device) const {
  std::lock_guard<std::mutex> hold(path_index_.mutex);
  if (path_index_.index && path_index_.index->device == device) return path_index_.index;
  // Made once for every later forward: never inference tensors (autograd saves them).
  c10::InferenceMode not_inference(false);
  const Topology& topo = *topology_;
  auto on_device = [&](const std::vector<int64_t>& values) { return torch::tensor(values, torch::kLong).to(device); };
  auto gather_tensors = [&](const GatherPlan& plan) {
    GatherTensors t;
    for (const Segment& seg : plan.segments)
      t.segment_index.push_back(seg.contiguous() ? torch::Tensor() : on_device(seg.local));
    if (!plan.order.empty()) t.order = on_device(plan.order);
    return t;
  };
  auto index = std::make_shared<PathIndex>(PathIndex{device, {}, gather_tensors(topo.output_gather())});
  index->levels.resize(topo.levels().size());
  const std::vector<LevelEdges> edges = topo.level_edges();
  const bool replaces_affine = std::any_of(operations_.begin(), operations_.end(),
                                           [](const LevelOperationPtr& op) { return op->replaces_affine(); });
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    LevelIndex& t = index->levels[l];
    t.gather = gather_tensors(level.gather);
    if (level.kernel == LevelKernel::EdgeList) {
      t.edge_source = on_device(edges[l].source);
      t.edge_target = on_device(edges[l].target);
    }
    // A scattered dense level's weight matrix, and that of any level whose
    // affine step an operation replaces (dense_weights()).
    if (level.kernel == LevelKernel::DenseScatter || (level.kernel == LevelKernel::EdgeList && replaces_affine))
      t.scatter_pos = on_device(edges[l].dense_positions(static_cast<int64_t>(level.sources.size())));
  }
  path_index_.index = index;
  return index;
}

torch::Tensor NeuralNetworkImpl::apply_dropout(const torch::Tensor& values, const LevelDropout& level) const {
  if (!is_training() || !level.keep_prob.defined()) return values;
  auto mask = torch::bernoulli(level.keep_prob.expand(values.sizes())) * level.keep_scale;
  return values * mask;
}

torch::Tensor NeuralNetworkImpl::forward(const torch::Tensor& x) { return forward_fused_or_levels(x, nullptr); }

torch::Tensor NeuralNetworkImpl::forward_traced(const torch::Tensor& x, LevelTrace& trace) {
  return forward_fused_or_levels(x, &trace);
}

torch::Tensor NeuralNetworkImpl::forward_fused_or_levels(const torch::Tensor& x, LevelTrace* trace) {
  check_input(x);
  const bool single = x.dim() == 1;
  torch::Tensor out;  // [batch, outputs]
  if (uses_fused_kernel()) {
    FusedOperations applied;  // what the kernel applies itself (the planner allows an activation scaling and topo norm)
    for (size_t k = 0; k < operations_.size(); ++k)
      if (fused_plan_->norm && typeid(*operations_[k]) == typeid(TopoNorm)) {
        applied.gamma = operation_modules_[k]->get("gamma");
        applied.beta = operation_modules_[k]->get("beta");
      } else if (auto names = operations_[k]->fused_activation_scales()) {
        applied.scale_a = operation_modules_[k]->get(names->first);
        applied.scale_b = operation_modules_[k]->get(names->second);
      }
    out = fused_forward(*fused_plan_, single ? x.unsqueeze(0) : x, weight_, bias_, applied, trace);
  } else if (!trace && uses_dense_path()) {
    std::vector<torch::Tensor> params;  // the operation's, when the path runs one (dense_path.h)
    if (dense_plan_->norm()) params = {operation_modules_[0]->get("gamma"), operation_modules_[0]->get("beta")};
    if (dense_plan_->attention())
      for (size_t l = 1; l < topology_->levels().size(); ++l)
        for (const char* name : {"query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias"})
          params.push_back(operation_modules_[0]->get(level_prefix(l) + name));
    out = dense_forward(*dense_plan_, single ? x.unsqueeze(0) : x, weight_, bias_, params);
  } else {
    return forward_levels(x, trace);
  }
  return options_.output_transformation()(single ? out.squeeze(0) : out);
}

void check_trace(const NeuralNetworkImpl& network, const LevelTrace& trace, const char* context) {
  const Topology& t = network.topology();
  const size_t levels = t.levels().size();
  // Named first: another network's levels may differ in shape as well.
  if (trace.topology && trace.topology.get() != &t)
    fail(
        "{}: the trace was made by another network (an edited one keeps the shapes, not the meaning); fill it "
        "with this network's forward_traced(x, trace)",
        context);
  if (trace.values.size() != levels)
    fail("{}: expected a trace of this network's {} levels, got {}", context, levels, trace.values.size());
  for (size_t l = 0; l < levels; ++l) {
    const auto& v = trace.values[l];
    if (!v.defined() || v.dim() != 2 || v.size(0) != t.levels()[l].size())
      fail("{}: level {} of the trace does not match this network's level of {} neurons", context, l,
           t.levels()[l].size());
  }
  if (!trace.topology)
    fail("{}: the trace holds no network's structure; fill it with this network's forward_traced(x, trace)", context);
}

torch::Tensor NeuralNetworkImpl::forward_levels(const torch::Tensor& x, LevelTrace* trace) {
  const Topology& topo = *topology_;
  const bool single = x.dim() == 1;
  const int64_t batch = single ? 1 : x.size(0);

  // Values are kept neuron-major, [neurons, batch]: gathering whole rows along
  // the leading dimension is the fast direction, and each level is its own
  // tensor ("piece") so autograd never copies a growing shared buffer.
  const auto index = path_index(weight_.device());
  std::vector<torch::Tensor> pieces(topo.levels().size());
  pieces[0] = apply_dropout((single ? x.unsqueeze(1) : x.t()).contiguous(), dropout_levels_[0]);
  if (trace) {
    trace->preactivations.assign(pieces.size(), torch::Tensor());
    trace->topology = topology_;
  }

  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    const LevelIndex& t = index->levels[l];
    auto sources = level.kernel == LevelKernel::BiasOnly ? torch::Tensor() : gather(level.gather, t.gather, pieces);
    pieces[l] =
        apply_dropout(run_level(l, t, sources, batch, trace ? &trace->preactivations[l] : nullptr), dropout_levels_[l]);
  }

  auto out = gather(topo.output_gather(), index->output, pieces);  // [outputs, batch]
  if (trace) trace->values = pieces;
  out = single ? out.squeeze(1) : out.t();
  return options_.output_transformation()(out);
}

torch::Tensor NeuralNetworkImpl::dense_weights(size_t l, const LevelIndex& t, const torch::Tensor& w) const {
  const Level& level = topology_->levels()[l];
  const int64_t size = level.size(), width = static_cast<int64_t>(level.sources.size());
  if (level.kernel == LevelKernel::DenseView) return w.view({size, width});
  // path_index() made the positions of every level that scatters (DenseScatter,
  // and an edge-list level whose affine step an operation replaces).
  return torch::zeros({size * width}, w.options()).scatter(0, t.scatter_pos, w).view({size, width});
}

// One batch: on_inputs -> affine (or an operation's replace_affine) ->
// on_preactivation -> activation (or replace_activation). Without
// operations this is just the level's kernel and the activation.
torch::Tensor NeuralNetworkImpl::run_level(size_t l, const LevelIndex& t, const torch::Tensor& gathered, int64_t batch,
                                           torch::Tensor* preactivation) const {
  const Topology& topo = *topology_;
  const Level& level = topo.levels()[l];
  const int64_t size = level.size();
  auto bias = bias_.narrow(0, topo.bias_index(level.begin), size).unsqueeze(1);
  std::vector<LevelContext> contexts;
  for (size_t k = 0; k < operations_.size(); ++k)
    contexts.push_back(
        {static_cast<int64_t>(l), level, topo, *operation_modules_[k], level_prefixes_[l], level.sources_before});

  // An error from within an operation's step (a parameter it never
  // declared, say) names the operation, the step and the level.
  auto run = [&](size_t k, const char* step, auto&& call) {
    return in_operation_step("NeuralNetwork::forward()", operations_[k]->name(), step, l, call);
  };
  // What an operation's step returns must have the shape the next step
  // reads: said naming the operation and level, not as a torch error later.
  auto checked = [&](size_t k, const char* step, torch::Tensor value, const char* shape, int64_t rows) {
    if (!value.defined() || value.dim() != 2 || value.size(0) != rows || value.size(1) != batch)
      fail("NeuralNetwork::forward(): operation \"{}\"'s {} at level {} returned {}; expected {} = [{}, {}]",
           operations_[k]->name(), step, l,
           value.defined() ? fmt::format("[{}]", fmt::join(value.sizes(), ", ")) : "an undefined tensor", shape, rows,
           batch);
    return value;
  };
  torch::Tensor z;
  if (!gathered.defined()) {
    z = bias.expand({size, batch});
  } else {
    torch::Tensor sources = gathered;
    const int64_t width = gathered.size(0);
    for (size_t k = 0; k < operations_.size(); ++k)
      sources =
          checked(k, "on_inputs", run(k, "on_inputs", [&] { return operations_[k]->on_inputs(contexts[k], sources); }),
                  "[sources, batch]", width);
    auto w = weight_.narrow(0, level.conn_begin, level.num_connections());
    for (size_t k = 0; k < operations_.size() && !z.defined(); ++k)
      if (operations_[k]->replaces_affine())
        if (auto r = run(k, "replace_affine", [&] {
              return operations_[k]->replace_affine(contexts[k], sources, dense_weights(l, t, w), bias);
            }))
          z = checked(k, "replace_affine", *r, "[neurons, batch]", size);
    if (!z.defined()) {
      if (level.kernel == LevelKernel::EdgeList)
        z = bias.expand({size, batch})
                .index_add(0, t.edge_target, sources.index_select(0, t.edge_source) * w.unsqueeze(1));
      else
        z = torch::addmm(bias, dense_weights(l, t, w), sources);
    }
  }
  if (preactivation) {
    if (z.requires_grad()) z.retain_grad();
    *preactivation = z;
  }
  for (size_t k = 0; k < operations_.size(); ++k)
    z = checked(k, "on_preactivation",
                run(k, "on_preactivation", [&] { return operations_[k]->on_preactivation(contexts[k], z); }),
                "[neurons, batch]", size);

  const int64_t hidden = level.hidden_end - level.begin;
  if (hidden == 0) return z;
  auto activate = [&](const torch::Tensor& zh) {
    for (size_t k = 0; k < operations_.size(); ++k)
      if (operations_[k]->replaces_activation())
        if (auto r = run(k, "replace_activation", [&] {
              return operations_[k]->replace_activation(contexts[k], zh, options_.hidden_activation());
            }))
          return checked(k, "replace_activation", *r, "[hidden, batch]", zh.size(0));
    return options_.hidden_activation()(zh);
  };
  if (hidden == size) return activate(z);
  return torch::cat({activate(z.narrow(0, 0, hidden)), z.narrow(0, hidden, size - hidden)}, 0);
}

// --------------------------------------------------------------- inspection

void NeuralNetworkImpl::pretty_print(std::ostream& stream) const {
  const auto& topo = *topology_;
  stream << "connex::NeuralNetwork(neurons=" << topo.num_neurons() << ", inputs=" << topo.num_inputs()
         << ", hidden=" << hidden_neurons().size() << ", outputs=" << num_outputs()
         << ", connections=" << topo.num_connections() << ", depth=" << topo.depth()
         << ", hidden_activation=" << options_.hidden_activation().name()
         << ", output_transformation=" << options_.output_transformation().name()
         << ", dtype=" << c10::toString(options_.dtype());
  if (!operations_.empty()) {
    stream << ", operations=[";
    for (size_t k = 0; k < operations_.size(); ++k) stream << (k ? ", " : "") << operations_[k]->name();
    stream << "]";
  }
  stream << ")";
}

namespace {

// The graph in one line, with a fingerprint of what decides which entry of
// the tensors is what: the labels and roles in the layout's order, each
// connection's (source, target) there, and every parameter's name and
// shape (the operations' included). The same graph with its neurons listed
// in another order may be laid out otherwise, and then differs too.
std::string structure_stamp(const NeuralNetworkImpl& network) {
  const Topology& t = network.topology();
  Fingerprint f;
  for (int64_t d = 0; d < t.num_neurons(); ++d) {
    f.add(t.label(d));
    f.add(static_cast<int64_t>(t.role(d)));
  }
  for (int64_t d = 0; d < t.num_neurons(); ++d) {
    f.add(t.in_offsets()[d + 1] - t.in_offsets()[d]);
    for (int64_t c = t.in_offsets()[d]; c < t.in_offsets()[d + 1]; ++c) f.add(t.conn_source()[c]);
  }
  f.add_parameters(network);
  std::vector<std::string> operations;
  for (const auto& op : network.operations()) operations.push_back(op->name());
  return fmt::format(
      "{} neurons, {} connections, depth {}, {}, fingerprint {:016x}", t.num_neurons(), t.num_connections(), t.depth(),
      operations.empty() ? "no operations" : fmt::format("operations {}", fmt::join(operations, ", ")), f.value());
}

}  // namespace

void NeuralNetworkImpl::save(torch::serialize::OutputArchive& archive) const {
  save_with_stamp(*this, archive, structure_stamp(*this));
}

void NeuralNetworkImpl::load(torch::serialize::InputArchive& archive) {
  load_with_stamp(*this, archive, structure_stamp(*this), "NeuralNetwork::load()", "graph or neuron order",
                  "restore a network with its graph by connex::load() of a connex::save() checkpoint");
}

std::vector<NeuronId> NeuralNetworkImpl::hidden_neurons() const {
  std::vector<NeuronId> hidden;
  for (const auto& id : spec().neurons())
    if (spec().role(id) == Role::Hidden) hidden.push_back(id);
  return hidden;
}

std::vector<std::vector<NeuronId>> NeuralNetworkImpl::topological_levels() const {
  std::vector<std::vector<NeuronId>> batches;
  const auto& topo = *topology_;
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    std::vector<NeuronId> batch;
    for (int64_t d = topo.levels()[l].begin; d < topo.levels()[l].end; ++d) batch.push_back(topo.label(d));
    batches.push_back(std::move(batch));
  }
  return batches;
}

int64_t NeuralNetworkImpl::num_parameters() const {
  int64_t total = 0;
  for (const auto& p : parameters()) total += p.numel();
  return total;
}

int64_t NeuralNetworkImpl::connection_or_throw(const NeuronId& from, const NeuronId& to, const char* context) const {
  const auto& topo = *topology_;
  int64_t c = topo.connection_index(topo.require(from, context), topo.require(to, context));
  if (c < 0) fail("{}: there is no connection {}", context, edge_str({from, to}));
  return c;
}

int64_t NeuralNetworkImpl::bias_or_throw(const NeuronId& neuron, const char* context) const {
  const auto& topo = *topology_;
  int64_t d = topo.require(neuron, context);
  if (topo.role(d) == Role::Input) fail("{}: neuron {} is an input and has no bias", context, neuron);
  return topo.bias_index(d);
}

double NeuralNetworkImpl::weight(const NeuronId& from, const NeuronId& to) const {
  return weight_[connection_or_throw(from, to, "NeuralNetwork::weight()")].item<double>();
}

void NeuralNetworkImpl::set_weight(const NeuronId& from, const NeuronId& to, double value) {
  torch::NoGradGuard no_grad;
  weight_[connection_or_throw(from, to, "NeuralNetwork::set_weight()")].fill_(value);
}

double NeuralNetworkImpl::bias(const NeuronId& neuron) const {
  return bias_[bias_or_throw(neuron, "NeuralNetwork::bias()")].item<double>();
}

void NeuralNetworkImpl::set_bias(const NeuronId& neuron, double value) {
  torch::NoGradGuard no_grad;
  bias_[bias_or_throw(neuron, "NeuralNetwork::set_bias()")].fill_(value);
}

double NeuralNetworkImpl::dropout_p(const NeuronId& neuron) const {
  return dropout_[topology_->require(neuron, "NeuralNetwork::dropout_p()")];
}

void NeuralNetworkImpl::freeze(const std::vector<Edge>& connections, const std::vector<NeuronId>& neurons) {
  // Resolve every label first, so a bad one changes nothing.
  std::vector<int64_t> conns, biases;
  for (const auto& [from, to] : connections) conns.push_back(connection_or_throw(from, to, "NeuralNetwork::freeze()"));
  for (const auto& id : neurons) biases.push_back(bias_or_throw(id, "NeuralNetwork::freeze()"));
  torch::NoGradGuard no_grad;
  for (int64_t c : conns) weight_grad_mask_[c].fill_(0);
  for (int64_t b : biases) bias_grad_mask_[b].fill_(0);
  if (!frozen_) {
    frozen_ = true;
    install_freeze_hooks();
  }
}

void NeuralNetworkImpl::unfreeze_all() {
  torch::NoGradGuard no_grad;
  weight_grad_mask_.fill_(1);
  bias_grad_mask_.fill_(1);
}

void NeuralNetworkImpl::sync_frozen() {
  const bool any = (weight_grad_mask_ == 0).any().item<bool>() || (bias_grad_mask_ == 0).any().item<bool>();
  if (any && !frozen_) {
    frozen_ = true;
    install_freeze_hooks();
  }
}

bool NeuralNetworkImpl::is_frozen(const NeuronId& from, const NeuronId& to) const {
  return weight_grad_mask_[connection_or_throw(from, to, "NeuralNetwork::is_frozen()")].item<double>() == 0.0;
}

torch::Tensor NeuralNetworkImpl::frozen_connections() const { return (weight_grad_mask_ == 0).cpu(); }
torch::Tensor NeuralNetworkImpl::frozen_biases() const { return (bias_grad_mask_ == 0).cpu(); }

void NeuralNetworkImpl::install_freeze_hooks() {
  // The hooks hold the mask buffers by handle; .to(device) and load() update
  // those handles in place, so the hooks follow.
  auto weight_mask = weight_grad_mask_, bias_mask = bias_grad_mask_;
  weight_.register_hook([weight_mask](const torch::Tensor& g) { return g * weight_mask; });
  bias_.register_hook([bias_mask](const torch::Tensor& g) { return g * bias_mask; });
}

WeightedGraph NeuralNetworkImpl::weighted_graph() const {
  const auto& topo = *topology_;
  WeightedGraph graph;
  graph.inputs = spec().inputs();
  graph.outputs = spec().outputs();
  auto weights = weight_.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  auto biases = bias_.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* w = weights.data_ptr<double>();
  const double* b = biases.data_ptr<double>();
  // Frozen entries: a zero in the gradient masks.
  auto weight_mask = weight_grad_mask_.to(torch::kCPU, torch::kFloat64).contiguous();
  auto bias_mask = bias_grad_mask_.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* wm = weight_mask.data_ptr<double>();
  const double* bm = bias_mask.data_ptr<double>();
  for (const auto& id : spec().neurons()) {
    const int64_t d = topo.dense_of(id);
    WeightedGraph::Neuron neuron{id, topo.role(d), std::nullopt, dropout_[d], topo.level_of(d), false};
    if (neuron.role != Role::Input) {
      neuron.bias = b[topo.bias_index(d)];
      neuron.frozen = bm[topo.bias_index(d)] == 0.0;
    }
    graph.neurons.push_back(std::move(neuron));
  }
  for (const auto& [from, to] : spec().edges()) {
    const int64_t c = topo.connection_index(topo.dense_of(from), topo.dense_of(to));
    graph.connections.push_back({from, to, w[c], wm[c] == 0.0});
  }
  for (size_t k = 0; k < operations_.size(); ++k)
    for (const auto& p : operation_modules_[k]->named_parameters()) {
      auto values = p.value().detach().to(torch::kCPU, torch::kFloat64).contiguous();
      graph.operation_parameters.push_back(
          {operations_[k]->name() + "." + p.key(), values.sizes().vec(),
           std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel())});
    }
  return graph;
}

NeuralNetworkImpl& NeuralNetwork::checked() const {
  if (is_empty())
    fail("NeuralNetwork: the holder is empty (NeuralNetwork(nullptr)); build a network from a GraphSpec or load() one");
  return *impl_;
}

NeuralNetwork clone(const NeuralNetwork& network, const std::optional<torch::Device>& device) {
  if (network.is_empty()) fail("clone(): the network is empty (a NeuralNetwork holding nullptr)");
  const c10::optional<torch::Device> on = device ? c10::optional<torch::Device>(*device) : c10::nullopt;
  return NeuralNetwork(std::dynamic_pointer_cast<NeuralNetworkImpl>(network->clone(on)));
}

}  // namespace connex
