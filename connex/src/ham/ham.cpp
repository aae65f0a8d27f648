#include "connex/ham/ham.h"

#include <cmath>
#include <limits>
#include <map>
#include <unordered_set>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "dtype.h"
#include "ham/attach.h"
#include "ham/describe.h"
#include "id_messages.h"
#include "messages.h"
#include "file_io.h"
#include "structure_stamp.h"

namespace connex::ham {

namespace {

// On the CPU a plain loop (no op dispatched: a descent checks every state twice).
template <typename T>
bool any_non_finite_in(const torch::Tensor& t) {
  const T* p = t.data_ptr<T>();
  bool found = false;
  for (int64_t i = 0, n = t.numel(); i < n; ++i) found |= !std::isfinite(p[i]);
  return found;
}
// Whether `t` holds a NaN or an infinity.
bool any_non_finite(const torch::Tensor& t) {
  if (!t.is_floating_point()) return false;
  if (t.device().is_cpu() && t.is_contiguous()) {
    if (t.scalar_type() == torch::kFloat) return any_non_finite_in<float>(t);
    if (t.scalar_type() == torch::kDouble) return any_non_finite_in<double>(t);
  }
  return !torch::isfinite(t).all().item<bool>();
}

// The first parameter's dtype and device, to place a new part like the rest.
std::optional<torch::TensorOptions> placement(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) return p.options();
  return std::nullopt;
}

// Probes run on zeros of two samples, in the part's own dtype.
torch::Tensor probe(const std::vector<int64_t>& shape, const torch::nn::Module& part) {
  std::vector<int64_t> sizes{2};
  sizes.insert(sizes.end(), shape.begin(), shape.end());
  auto options = placement(part).value_or(torch::TensorOptions().dtype(torch::get_default_dtype()));
  return torch::zeros(sizes, options.requires_grad(false));
}

}  // namespace

HAMImpl::HAMImpl()
    : layer_modules_(register_module("layers", std::make_shared<torch::nn::Module>())),
      synapse_modules_(register_module("synapses", std::make_shared<torch::nn::Module>())) {}

void HAMImpl::check_new_name(const std::string& name, const char* operation) const {
  if (name.empty()) fail("{}: expected a non-empty name", operation);
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
      fail("{}: name \"{}\" may hold only letters, digits, '_' and '-'", operation, printable(name));
  for (const auto& l : layers_)
    if (l.name == name) fail("{}: name \"{}\" is taken by a layer", operation, name);
  for (const auto& s : synapses_)
    if (s.name == name) fail("{}: name \"{}\" is taken by a synapse", operation, name);
}

HAMImpl& HAMImpl::add_layer(const std::string& name, std::vector<int64_t> shape, Lagrangian lagrangian, double tau) {
  std::vector<NeuronId> neurons;
  if (shape.size() == 1 && shape[0] > 0)
    for (int64_t i = 0; i < shape[0]; ++i) neurons.emplace_back(i);
  add_layer_checked({name, std::move(shape), std::move(lagrangian), tau, std::move(neurons)});
  return *this;
}

HAMImpl& HAMImpl::add_labelled_layer(const std::string& name, std::vector<NeuronId> neurons, Lagrangian lagrangian,
                                     double tau) {
  check_new_name(name, "add_layer()");  // first: the messages below print it
  if (neurons.empty()) fail("add_layer(): layer \"{}\": expected at least one neuron, got none", name);
  std::unordered_set<NeuronId, NeuronIdHash> seen;
  for (const auto& id : neurons) {
    if (!seen.insert(id).second) fail("add_layer(): layer \"{}\": neuron {} is listed twice", name, id);
    // Labels are of one kind per layer, as in a GraphSpec per graph (each layer is its own label space).
    if (id.kind() != neurons.front().kind())
      fail("add_layer(): layer \"{}\": {}", name, kinds_differ(id, neurons.front(), "layer"));
    if (!id.is_integer())
      if (auto problem = id_text_problem(id.as_string()))
        fail("add_layer(): layer \"{}\": neuron {}: {}", name, id, *problem);
  }
  std::vector<int64_t> shape{static_cast<int64_t>(neurons.size())};
  add_layer_checked({name, std::move(shape), std::move(lagrangian), tau, std::move(neurons)});
  return *this;
}

void HAMImpl::add_layer_checked(Layer layer) {
  check_new_name(layer.name, "add_layer()");
  const std::string& name = layer.name;
  if (!layer.lagrangian) fail("add_layer(): layer \"{}\": expected a Lagrangian, got none", name);
  if (!(layer.tau > 0) || !std::isfinite(layer.tau))
    fail("add_layer(): layer \"{}\": expected a finite τ > 0, got {}", name, layer.tau);
  if (layer.shape.empty()) fail("add_layer(): layer \"{}\": expected a per-sample shape of at least one dim", name);
  for (auto d : layer.shape)
    if (d < 1) fail("add_layer(): layer \"{}\": expected every dim ≥ 1, got {}", name, shape_str(layer.shape));
  if (layer.lagrangian->joined()) {
    for (const auto& l : layers_)
      if (l.lagrangian == layer.lagrangian)
        fail("add_layer(): layer \"{}\": its Lagrangian is already layer \"{}\"'s (give each layer its own)", name,
             l.name);
    fail("add_layer(): layer \"{}\": its Lagrangian belongs to another HAM (give each layer its own, or its fresh())",
         name);
  }
  layer.lagrangian->attach(layer.shape, name);
  if (auto where = part_options()) move_to(*layer.lagrangian, *where);
  {
    torch::NoGradGuard no_grad;
    auto x = probe(layer.shape, *layer.lagrangian);
    torch::Tensor g, l;
    try {
      g = layer.lagrangian->activation(x);
      l = layer.lagrangian->value(x);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("add_layer(): layer \"{}\": its Lagrangian fails on a state {}: {}", name, shape_str(x.sizes()),
           cause_of(e));
    }
    if (!g.defined() || !g.sizes().equals(x.sizes()))
      fail("add_layer(): layer \"{}\": its Lagrangian's activation is {} for a state {}; expected the same shape", name,
           g.defined() ? shape_str(g.sizes()) : "undefined", shape_str(x.sizes()));
    if (!l.defined() || !l.sizes().equals({2}))
      fail("add_layer(): layer \"{}\": its Lagrangian's value is {} for a state {}; expected one per sample [2]", name,
           l.defined() ? shape_str(l.sizes()) : "undefined", shape_str(x.sizes()));
  }
  layer_modules_->register_module(name, layer.lagrangian);
  layer.lagrangian->joined_.joined = true;
  layers_.push_back(std::move(layer));
}

HAMImpl& HAMImpl::add_synapse(const std::string& name, Synapse synapse, std::vector<std::string> layers) {
  check_new_name(name, "add_synapse()");
  if (!synapse) fail("add_synapse(): synapse \"{}\": expected a synapse, got none", name);
  if (synapse->joined()) {
    for (const auto& s : synapses_)
      if (s.synapse == synapse)
        fail("add_synapse(): synapse \"{}\": this synapse object is already synapse \"{}\" (give each its own)", name,
             s.name);
    fail(
        "add_synapse(): synapse \"{}\": this synapse object belongs to another HAM (give each its own, or its fresh())",
        name);
  }
  if (layers.empty()) fail("add_synapse(): synapse \"{}\": expected at least one layer", name);
  std::vector<size_t> positions;
  std::vector<LayerView> views;
  for (const auto& layer_name : layers) {
    const size_t at = find_layer(layer_name);
    if (at == layers_.size())
      fail("add_synapse(): synapse \"{}\": there is no layer \"{}\" (the layers: {})", name, printable(layer_name),
           layer_list());
    for (auto p : positions)
      if (p == at) fail("add_synapse(): synapse \"{}\": layer \"{}\" is listed twice", name, layer_name);
    positions.push_back(at);
    const Layer& l = layers_[at];
    views.push_back({l.name, l.shape, l.shape.size() == 1 ? &l.neurons : nullptr});
  }
  synapse->attach(views, name);
  // Like the rest of the HAM; a graph's given weights keep their dtype until
  // here, and go to the default one where the HAM names none.
  const auto where = part_options();
  if (where) move_to(*synapse, *where);
  if (is_graph_synapse(*synapse) && !(where && where->has_dtype()))
    synapse->to(c10::typeMetaToScalarType(torch::get_default_dtype()));
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> g;
    for (const auto& v : views) g.push_back(probe(v.shape, *synapse));
    torch::Tensor e;
    std::vector<torch::Tensor> d;
    try {
      e = synapse->energy(g);
      d = synapse->currents(g);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& ex) {
      fail("add_synapse(): synapse \"{}\": its energy fails on layers {}: {}", name, fmt::join(layers, ", "),
           cause_of(ex));
    }
    if (!e.defined() || !e.sizes().equals({2}))
      fail("add_synapse(): synapse \"{}\": its energy is {} for 2 samples; expected one per sample [2]", name,
           e.defined() ? shape_str(e.sizes()) : "undefined");
    if (d.size() != g.size())
      fail("add_synapse(): synapse \"{}\": it gives {} currents for {} layers", name, d.size(), g.size());
    for (size_t k = 0; k < g.size(); ++k)
      if (!d[k].defined() || !d[k].sizes().equals(g[k].sizes()))
        fail("add_synapse(): synapse \"{}\": its current for layer \"{}\" is {}; expected {}", name, layers[k],
             d[k].defined() ? shape_str(d[k].sizes()) : "undefined", shape_str(g[k].sizes()));
  }
  synapse_modules_->register_module(name, synapse);
  synapse->joined_.joined = true;
  synapses_.push_back({name, std::move(synapse), std::move(layers)});
  synapse_layers_.push_back(std::move(positions));
  return *this;
}

std::string HAMImpl::layer_list() const {
  std::string names;
  for (const auto& l : layers_) names += (names.empty() ? "" : ", ") + l.name;
  return names.empty() ? "none" : names;
}

size_t HAMImpl::find_layer(const std::string& name) const {
  size_t at = 0;
  while (at < layers_.size() && layers_[at].name != name) ++at;
  return at;
}

const Layer& HAMImpl::layer(const std::string& name) const {
  const size_t at = find_layer(name);
  if (at == layers_.size()) fail("HAM::layer(): there is no layer \"{}\"", printable(name));
  return layers_[at];
}

const SynapseConnection& HAMImpl::synapse(const std::string& name) const {
  for (const auto& s : synapses_)
    if (s.name == name) return s;
  fail("HAM::synapse(): there is no synapse \"{}\"", printable(name));
}

std::optional<torch::TensorOptions> HAMImpl::part_options() const {
  if (auto where = placement(*this)) return where;
  if (!moved_dtype_ && !moved_device_) return std::nullopt;
  torch::TensorOptions where;  // only what to() named
  if (moved_dtype_) where = where.dtype(*moved_dtype_);
  if (moved_device_) where = where.device(*moved_device_);
  return where;
}

void HAMImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  moved_device_ = device, moved_dtype_ = dtype;
}

void HAMImpl::to(torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(dtype, non_blocking);
  moved_dtype_ = dtype;
}

void HAMImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  moved_device_ = device;
}

States HAMImpl::init_states(int64_t batch, std::optional<torch::TensorOptions> options) const {
  if (batch < 1) fail("init_states(): expected a batch ≥ 1, got {}", batch);
  // What `options` sets, over the parameters' dtype and device.
  auto where = part_options().value_or(torch::TensorOptions());
  if (options && options->has_dtype()) where = where.dtype(options->dtype());
  if (options && options->has_device()) where = where.device(options->device());
  if (options && options->has_layout()) where = where.layout(options->layout());
  States x;
  for (const auto& l : layers_) {
    std::vector<int64_t> sizes{batch};
    sizes.insert(sizes.end(), l.shape.begin(), l.shape.end());
    x[l.name] = torch::zeros(sizes, where.requires_grad(false));
  }
  return x;
}

std::vector<torch::Tensor> HAMImpl::ordered(const States& x, const char* operation) const {
  if (layers_.empty()) fail("{}: the HAM has no layers", operation);
  for (const auto& [name, t] : x) {
    if (find_layer(name) == layers_.size())
      fail("{}: state \"{}\" names no layer of the HAM (its layers: {})", operation, printable(name), layer_list());
  }
  std::vector<torch::Tensor> out;
  int64_t batch = -1;
  const auto parameters = placement(*this);
  for (const auto& l : layers_) {
    auto it = x.find(l.name);
    if (it == x.end() || !it->second.defined())
      fail("{}: no state for layer \"{}\" (init_states(batch) makes one for every layer)", operation, l.name);
    const auto& t = it->second;
    const bool shaped =
        t.dim() == static_cast<int64_t>(l.shape.size()) + 1 && t.sizes().slice(1).equals(c10::IntArrayRef(l.shape));
    if (!shaped)
      fail("{}: layer \"{}\" has per-sample shape {}, so its state must be [batch, {}], got {}", operation, l.name,
           shape_str(l.shape), fmt::join(l.shape, ", "), shape_str(t.sizes()));
    if (t.size(0) == 0)  // torch's reshape of it is an error with a stack trace
      fail("{}: layer \"{}\"'s state has batch 0, expected a batch ≥ 1", operation, l.name);
    if (!t.is_floating_point())
      fail("{}: layer \"{}\"'s state must be floating-point, got {}", operation, l.name,
           c10::toString(t.scalar_type()));
    // The one dtype the CPU has too few kernels for (softmax, among others).
    if (const auto refusal = cpu_forward_refusal(t.scalar_type()); !refusal.empty() && t.device().is_cpu())
      fail("{}: layer \"{}\"'s state is {}: {}", operation, l.name, c10::toString(t.scalar_type()), refusal);
    // Torch's own message for mixed dtypes comes with its stack trace.
    if (parameters && t.scalar_type() != parameters->dtype())
      fail("{}: layer \"{}\"'s state is {}, but the HAM's parameters are {} (init_states() makes them alike)",
           operation, l.name, c10::toString(t.scalar_type()),
           c10::toString(c10::typeMetaToScalarType(parameters->dtype())));
    if (!out.empty() && t.scalar_type() != out.front().scalar_type())
      fail("{}: layer \"{}\"'s state is {}, but layer \"{}\"'s is {}", operation, l.name,
           c10::toString(t.scalar_type()), layers_[0].name, c10::toString(out.front().scalar_type()));
    // Likewise for devices: torch's message is a dispatcher dump.
    if (parameters && t.device() != parameters->device())
      fail(
          "{}: layer \"{}\"'s state is on {}, but the HAM's parameters are on {} (init_states() makes them alike; "
          ".to() moves a state)",
          operation, l.name, t.device().str(), parameters->device().str());
    if (!out.empty() && t.device() != out.front().device())
      fail("{}: layer \"{}\"'s state is on {}, but layer \"{}\"'s is on {}", operation, l.name, t.device().str(),
           layers_[0].name, out.front().device().str());
    if (batch >= 0 && t.size(0) != batch)
      fail("{}: layer \"{}\"'s state has batch {}, but layer \"{}\"'s has {}", operation, l.name, t.size(0),
           layers_[0].name, batch);
    batch = t.size(0);
    if (any_non_finite(t)) fail("{}: layer \"{}\"'s state holds NaN or infinity", operation, l.name);
    out.push_back(t);
  }
  return out;
}

std::vector<torch::Tensor> HAMImpl::activations_of(const std::vector<torch::Tensor>& x) {
  std::vector<torch::Tensor> g;
  g.reserve(x.size());
  for (size_t l = 0; l < x.size(); ++l) g.push_back(layers_[l].lagrangian->activation(x[l]));
  return g;
}

States HAMImpl::activations(const States& x) {
  const auto xs = ordered(x, "activations()");
  const auto gs = activations_of(xs);
  States out;
  for (size_t l = 0; l < gs.size(); ++l) out[layers_[l].name] = gs[l];
  return out;
}

namespace {

// Σ x·g − L(x) per sample. Where both terms overflow to +∞ (an exponential's
// g past βx ≈ 88 in float32, a repu's x^n) their difference is NaN, but the
// energy is +∞: x·g − L(x) ≥ −L(0) for a convex L, and every built-in's
// grows without bound there. L's term is masked, not the result, so that
// ∂E/∂g stays x.
torch::Tensor layer_energy(LagrangianImpl& lagrangian, const torch::Tensor& x, const torch::Tensor& g) {
  const auto xg = (x * g).reshape({x.size(0), -1}).sum(1);
  const auto l = lagrangian.value(x);
  const double inf = std::numeric_limits<double>::infinity();
  return xg - l.masked_fill(xg.eq(inf).logical_and(l.eq(inf)), 0);
}

}  // namespace

std::vector<torch::Tensor> HAMImpl::joined(size_t s, const std::vector<torch::Tensor>& g) const {
  std::vector<torch::Tensor> out;
  for (auto l : synapse_layers_[s]) out.push_back(g[l]);
  return out;
}

std::vector<torch::Tensor> HAMImpl::energy_terms(const std::vector<torch::Tensor>& xs,
                                                 const std::vector<torch::Tensor>& gs) {
  std::vector<torch::Tensor> terms;
  for (size_t l = 0; l < xs.size(); ++l) terms.push_back(layer_energy(*layers_[l].lagrangian, xs[l], gs[l]));
  for (size_t s = 0; s < synapses_.size(); ++s) terms.push_back(synapses_[s].synapse->energy(joined(s, gs)));
  return terms;
}

std::map<std::string, torch::Tensor> HAMImpl::energy_parts(const States& x) {
  const auto xs = ordered(x, "energy()");
  const auto terms = energy_terms(xs, activations_of(xs));
  std::map<std::string, torch::Tensor> parts;
  for (size_t l = 0; l < layers_.size(); ++l) parts[layers_[l].name] = terms[l];
  for (size_t s = 0; s < synapses_.size(); ++s) parts[synapses_[s].name] = terms[layers_.size() + s];
  return parts;
}

torch::Tensor HAMImpl::total_energy(const std::vector<torch::Tensor>& xs) {
  torch::Tensor total;
  for (const auto& e : energy_terms(xs, activations_of(xs))) total = total.defined() ? total + e : e;
  return total;
}

torch::Tensor HAMImpl::energy(const States& x) { return total_energy(ordered(x, "energy()")); }

States HAMImpl::dEdg(const States& x) {
  const auto xs = ordered(x, "dEdg()");
  const bool keep_graph = torch::GradMode::is_enabled();
  torch::AutoGradMode enable(true);
  auto gs = activations_of(xs);
  // g is an independent variable here: the layer term ⟨x, g⟩ − L(x) holds x fixed.
  for (auto& g : gs)
    if (!keep_graph || !g.requires_grad()) g = g.detach().requires_grad_(true);
  torch::Tensor total;
  for (const auto& e : energy_terms(xs, gs)) total = total.defined() ? total + e.sum() : e.sum();
  const auto grads = torch::autograd::grad({total}, gs, {}, keep_graph, keep_graph, /*allow_unused=*/true);
  States out;
  for (size_t l = 0; l < gs.size(); ++l) out[layers_[l].name] = grads[l].defined() ? grads[l] : xs[l];
  return out;
}

Descent HAMImpl::descend(const States& x, const DescentOptions& options, const Clamps& clamps) {
  if (options.steps() < 0) fail("descend(): expected steps ≥ 0, got {}", options.steps());
  if (!(options.dt() > 0) || !std::isfinite(options.dt()))
    fail("descend(): expected a finite dt > 0, got {}", options.dt());
  if (!(options.tolerance() >= 0) || !std::isfinite(options.tolerance()))
    fail("descend(): expected a finite tolerance ≥ 0, got {}", options.tolerance());
  auto xs = ordered(x, "descend()");
  const auto given = xs;  // the caller's tensors, which the result never shares
  // Per layer: held whole, held where a mask says, or free.
  std::vector<bool> held(layers_.size(), false);
  std::vector<torch::Tensor> masks(layers_.size());
  for (const auto& [name, mask] : clamps) {
    const size_t l = find_layer(name);
    if (l == layers_.size())
      fail("descend(): clamp \"{}\" names no layer of the HAM (its layers: {})", printable(name), layer_list());
    if (!mask.defined()) {
      held[l] = true;
      continue;
    }
    if (mask.scalar_type() != torch::kBool)
      fail("descend(): clamp \"{}\": expected a bool mask, got {}", name, c10::toString(mask.scalar_type()));
    std::vector<int64_t> joint;
    try {
      joint = at::infer_size(mask.sizes(), xs[l].sizes());
    } catch (const std::exception&) {
    }
    if (!c10::IntArrayRef(joint).equals(xs[l].sizes()))
      fail("descend(): clamp \"{}\": its mask {} does not broadcast to the state {}", name, shape_str(mask.sizes()),
           shape_str(xs[l].sizes()));
    try {
      masks[l] = mask.to(xs[l].device());
    } catch (const c10::OutOfMemoryError&) {
      throw;
    } catch (const c10::Error&) {
      fail("descend(): clamp \"{}\": its mask is on {} and cannot be moved to the states' device, {}", name,
           mask.device().str(), xs[l].device().str());
    }
  }
  // The steps keep an autograd graph only when something upstream wants gradients.
  bool keep_graph = false;
  if (torch::GradMode::is_enabled()) {
    for (const auto& p : parameters()) keep_graph = keep_graph || p.requires_grad();
    for (const auto& t : xs) keep_graph = keep_graph || t.requires_grad();
  }
  std::optional<torch::NoGradGuard> no_grad;
  if (!keep_graph) no_grad.emplace();

  std::vector<torch::Tensor> energies;
  auto record = [&] {
    if (!options.record_energy()) return;
    torch::NoGradGuard record_only;
    energies.push_back(total_energy(xs));
  };
  record();
  const size_t n = layers_.size();
  std::vector<torch::Tensor> current(n);  // −Σ_s ∂E_s/∂g per layer
  std::vector<torch::Tensor> before;      // the states a measured step started from
  int64_t taken = 0;
  double change = 0;
  for (int64_t step = 0; step < options.steps(); ++step) {
    // Every step's change is measured under a tolerance, else only the last's.
    const bool measured = options.tolerance() > 0 || step + 1 == options.steps();
    if (measured) before = xs;
    const auto gs = activations_of(xs);
    std::fill(current.begin(), current.end(), torch::Tensor());
    for (size_t s = 0; s < synapses_.size(); ++s) {
      const auto d = synapses_[s].synapse->currents(joined(s, gs));
      for (size_t k = 0; k < d.size(); ++k) {
        const size_t l = synapse_layers_[s][k];
        if (!held[l]) current[l] = current[l].defined() ? current[l] + d[k] : d[k];
      }
    }
    for (size_t l = 0; l < n; ++l) {
      if (held[l]) continue;
      // x − (dt/τ)(x + ∂E_s/∂g) = x + c·(current − x): one lerp.
      const double c = options.dt() / layers_[l].tau;
      auto next = current[l].defined() ? torch::lerp(xs[l], current[l], c) : xs[l] * (1 - c);
      xs[l] = masks[l].defined() ? torch::where(masks[l], xs[l], next) : next;
    }
    record();
    ++taken;
    if (measured) {
      torch::NoGradGuard measure_only;
      change = 0;
      for (size_t l = 0; l < n; ++l)
        if (!held[l]) change = std::max(change, (xs[l].detach() - before[l].detach()).abs().max().item<double>());
      if (options.tolerance() > 0 && change <= options.tolerance()) break;
    }
  }
  for (size_t l = 0; l < n; ++l)
    if (!held[l] && any_non_finite(xs[l])) {
      for (const auto& p : named_parameters())
        if (any_non_finite(p.value().detach()))
          fail("descend(): layer \"{}\"'s state became NaN or infinite: parameter \"{}\" holds NaN or infinity",
               layers_[l].name, p.key());
      // Two causes: steps that overshoot (dt/τ near 1 or past it), or an
      // energy without a lower bound, which no step size stops.
      std::string energy;
      if (options.record_energy()) {  // what was recorded is lost with the result: its last finite total
        const auto totals = torch::stack(energies).sum(1);
        const auto finite = torch::isfinite(totals).nonzero();
        if (finite.size(0) > 0) {
          const int64_t at = finite[-1][0].item<int64_t>();
          energy = fmt::format("; the energy was {:.6g} {}", totals[at].item<double>(),
                               at == 0 ? std::string("at the start") : fmt::format("after step {}", at));
        }
      }
      fail(
          "descend(): layer \"{}\"'s state became NaN or infinite: dt/τ = {:g} (dt {}, τ {}) may overshoot (keep it "
          "well below 1), or the energy has no lower bound (a growing activation fed back through a synapse), which a "
          "smaller dt only delays{}",
          layers_[l].name, options.dt() / layers_[l].tau, options.dt(), layers_[l].tau, energy);
    }
  Descent result;
  // A state no step replaced (steps(0), a held layer) is copied, so that writing into the result leaves `x` alone.
  for (size_t l = 0; l < n; ++l) result.states[layers_[l].name] = xs[l].is_same(given[l]) ? xs[l].clone() : xs[l];
  if (options.record_energy()) result.energy = torch::stack(energies);
  result.steps = taken;
  result.change = change;
  result.converged = options.tolerance() > 0 && taken > 0 && change <= options.tolerance();
  return result;
}

std::shared_ptr<torch::nn::Module> HAMImpl::clone(const c10::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  const RandomStateKept kept;  // the parts' initial draws are overwritten below
  auto copy = std::make_shared<HAMImpl>();
  copy->moved_dtype_ = moved_dtype_;
  copy->moved_device_ = device ? std::optional<torch::Device>(*device) : moved_device_;
  for (const auto& l : layers_) {
    if (l.shape.size() == 1)
      copy->add_labelled_layer(l.name, l.neurons, l.lagrangian->fresh(), l.tau);
    else
      copy->add_layer(l.name, l.shape, l.lagrangian->fresh(), l.tau);
  }
  for (const auto& s : synapses_) copy->add_synapse(s.name, s.synapse->fresh(), s.layers);
  const auto parameters = named_parameters(), buffers = named_buffers();
  for (auto& p : copy->named_parameters()) {
    const auto& from = parameters[p.key()];
    p.value().set_data(device ? from.clone().to(*device) : from.clone());
    p.value().set_requires_grad(from.requires_grad());
  }
  for (auto& b : copy->named_buffers()) {
    const auto& from = buffers[b.key()];
    b.value().set_data(device ? from.clone().to(*device) : from.clone());
  }
  copy->train(is_training());
  return copy;
}

void HAMImpl::clone_(torch::nn::Module& other, const c10::optional<torch::Device>& device) {
  const auto* from = dynamic_cast<const HAMImpl*>(&other);
  if (!from) fail("HAM::clone(): a parent's clone() found {} where its HAM was", other.name());
  *this = std::move(*std::static_pointer_cast<HAMImpl>(from->clone(device)));
}

namespace {

// The structure in one line, with a fingerprint of what gives the tensors
// their meaning, by name (torch keys tensors by name, not by the order the
// parts were added in): each layer's shape and neurons, each synapse's
// joined layers and description (kind and options, a graph synapse's
// connections in order) or, for one without, its connection labels, and
// every parameter's name and shape.
std::string structure_stamp(const HAMImpl& ham) {
  Fingerprint f;
  std::map<std::string, const Layer*> layers;
  for (const auto& l : ham.layers()) layers.emplace(l.name, &l);
  for (const auto& [name, l] : layers) {
    f.add(name);
    f.add(static_cast<int64_t>(l->shape.size()));
    for (const int64_t size : l->shape) f.add(size);
    f.add(static_cast<int64_t>(l->neurons.size()));
    for (const auto& id : l->neurons) f.add(id);
  }
  std::map<std::string, const SynapseConnection*> synapses;
  for (const auto& s : ham.synapses()) synapses.emplace(s.name, &s);
  int64_t connections = 0;
  for (const auto& [name, s] : synapses) {
    f.add(name);
    f.add(static_cast<int64_t>(s->layers.size()));
    for (const auto& joined : s->layers) f.add(joined);
    const auto* labels = s->synapse->connection_labels();
    if (labels) connections += static_cast<int64_t>(labels->size());
    if (const nlohmann::json description = s->synapse->to_json(); !description.is_null()) {
      f.add(description.dump());
    } else if (labels) {
      f.add(static_cast<int64_t>(labels->size()));
      for (const auto& [from, to] : *labels) f.add(from), f.add(to);
    }
  }
  f.add_parameters(ham);
  return fmt::format("{} layers, {} synapses, {} graph connections, fingerprint {:016x}", ham.layers().size(),
                     ham.synapses().size(), connections, f.value());
}

}  // namespace

void HAMImpl::save(torch::serialize::OutputArchive& archive) const {
  save_with_stamp(*this, archive, structure_stamp(*this));
}

void HAMImpl::load(torch::serialize::InputArchive& archive) {
  load_with_stamp(*this, archive, structure_stamp(*this), "HAM::load()", "structure",
                  "restore a HAM with its structure by ham::load() of a ham::save() checkpoint");
}

void HAMImpl::pretty_print(std::ostream& stream) const {
  stream << "connex::ham::HAM(layers=[";
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (l) stream << ", ";
    stream << layers_[l].name << " " << shape_str(layers_[l].shape) << " ";
    layers_[l].lagrangian->pretty_print(stream);
    if (layers_[l].tau != 1.0) stream << " tau=" << layers_[l].tau;
  }
  stream << "], synapses=[";
  for (size_t s = 0; s < synapses_.size(); ++s) {
    if (s) stream << ", ";
    stream << synapses_[s].name << " ";
    synapses_[s].synapse->pretty_print(stream);
    stream << " (" << fmt::format("{}", fmt::join(synapses_[s].layers, ", ")) << ")";
  }
  stream << "])";
}

}  // namespace connex::ham
