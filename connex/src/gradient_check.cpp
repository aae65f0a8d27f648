#include "connex/gradient_check.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include "connex/error.h"
#include "dtype.h"
#include "messages.h"

namespace connex {

namespace {

constexpr const char* kContext = "check_gradients()";

// A dtype in messages: dtype.h's name, else torch's ("Long").
const char* dtype_word(c10::ScalarType type) {
  const char* name = dtype_name(type);
  return name ? name : c10::toString(type);
}

// The options, and that an input was given.
void check_arguments(const GradientCheckOptions& o, const torch::Tensor& x, const char* context) {
  if (!(o.step() > 0) || !std::isfinite(o.step())) fail("{}: expected step > 0, got {}", context, o.step());
  if (!(o.atol() >= 0) || !std::isfinite(o.atol())) fail("{}: expected atol >= 0, got {}", context, o.atol());
  if (!(o.rtol() >= 0) || !std::isfinite(o.rtol())) fail("{}: expected rtol >= 0, got {}", context, o.rtol());
  if (o.atol() == 0 && o.rtol() == 0) fail("{}: atol and rtol are both 0: no difference could pass", context);
  if (o.entries_per_tensor() < 0)
    fail("{}: expected entries_per_tensor >= 0 (0: every entry), got {}", context, o.entries_per_tensor());
  if (!x.defined()) fail("{}: the input is an undefined tensor", context);
}

// Positions checked in [begin, end): evenly spaced, first and last included.
void sample(int64_t begin, int64_t end, int64_t wanted, std::vector<int64_t>& at) {
  const int64_t n = end - begin;
  if (wanted == 0 || n <= wanted) {
    for (int64_t i = begin; i < end; ++i) at.push_back(i);
    return;
  }
  const size_t first = at.size();
  for (int64_t k = 0; k < wanted; ++k) {
    const int64_t i =
        begin + (wanted == 1 ? 0 : static_cast<int64_t>(std::llround(double(k) * double(n - 1) / double(wanted - 1))));
    if (at.size() == first || at.back() != i) at.push_back(i);
  }
}

// A flat tensor's runs, sampled each on its own: a network's levels.
struct Runs {
  std::vector<int64_t> bounds;  // 0, ..., numel
  const char* unit;             // what a run is ("level"); null for one run, the whole tensor
};

// A tensor checked, run by run.
struct Checked {
  std::string name;
  torch::Tensor value;  // a leaf that requires grad
  Runs runs;
  // Run r's name in the report: the tensor's, or "weight (level 2)".
  std::string run_name(size_t r) const { return runs.unit ? fmt::format("{} ({} {})", name, runs.unit, r + 1) : name; }
};

// What the check may disturb, put back on every way out: buffers (a batch
// norm's running statistics) and torch's generators (CPU, and the device's).
class Restored {
 public:
  Restored(const torch::nn::Module* module, const std::vector<c10::Device>& devices) {
    torch::NoGradGuard no_grad;
    if (module)
      for (const auto& b : module->named_buffers())
        if (b.value().defined()) buffers_.emplace_back(b.value(), b.value().clone());
    generators_.push_back(at::detail::getDefaultCPUGenerator());
    std::vector<c10::Device> seen;
    for (const auto& d : devices)
      if (!d.is_cpu() && std::find(seen.begin(), seen.end(), d) == seen.end()) {
        seen.push_back(d);
        generators_.push_back(at::globalContext().defaultGenerator(d));
      }
    for (auto& g : generators_) states_.push_back(g.get_state());
  }
  Restored(const Restored&) = delete;
  Restored& operator=(const Restored&) = delete;
  // Whether f drew from a generator since.
  bool drawn() const {
    for (size_t k = 0; k < generators_.size(); ++k)
      if (!torch::equal(generators_[k].get_state(), states_[k])) return true;
    return false;
  }
  ~Restored() {
    torch::NoGradGuard no_grad;
    for (auto& [buffer, saved] : buffers_) buffer.copy_(saved);
    for (size_t k = 0; k < generators_.size(); ++k) generators_[k].set_state(states_[k]);
  }

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> buffers_;
  std::vector<at::Generator> generators_;
  std::vector<torch::Tensor> states_;
};

// f(x), its errors said as the check's, naming the point (`at`).
torch::Tensor evaluate(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x,
                       const char* context, const std::string& at = "the given input") {
  try {
    return f(x);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("{}: the function failed at {}: {}", context, at, cause_of(e));
  }
}

// One entry moved for a central difference, and put back exactly (a double
// round-trips) however the evaluation there ends. It writes through
// `data()`, whose version counter is its own, so a graph built on the
// parameter before the check can still be backpropagated.
class Moved {
 public:
  Moved(const torch::Tensor& entry) : entry_(entry), original_(entry.item<double>()) {}
  Moved(const Moved&) = delete;
  Moved& operator=(const Moved&) = delete;
  double original() const { return original_; }
  void to(double value) { entry_.fill_(value); }
  ~Moved() { entry_.fill_(original_); }

 private:
  torch::Tensor entry_;
  double original_;
};

// f(x) once it passed what a central difference needs: no random draw, a
// float64 finite output, the same again at the same values.
torch::Tensor checked_output(const std::function<torch::Tensor(const torch::Tensor&)>& f, const torch::Tensor& x,
                             const Restored& restored, const char* context) {
  const torch::Tensor out = evaluate(f, x, context);
  if (restored.drawn())
    fail(
        "{}: the function draws from torch's random generator: it must be deterministic (dropout in training "
        "mode? call eval() first)",
        context);
  if (!out.defined()) fail("{}: expected a float64 output, got an undefined tensor", context);
  if (out.scalar_type() != torch::kFloat64)
    fail("{}: expected a float64 output, got {}: its rounding would swamp the central differences", context,
         dtype_word(out.scalar_type()));
  if (out.numel() == 0) fail("{}: the output is empty", context);
  if (!torch::isfinite(out.detach()).all().item<bool>())
    fail("{}: the output is not finite at the given input", context);
  // Evaluated as the first was (with autograd as it is), so a path chosen without it cannot differ by rounding;
  // a threaded reduction may still differ in its last bits, a random draw by whole values.
  const torch::Tensor again = evaluate(f, x, context).detach();
  const double scale = std::max(1.0, out.detach().abs().max().item<double>());
  if (again.sizes() != out.sizes() || !((again - out.detach()).abs().max().item<double>() <= 1e-10 * scale))
    fail("{}: two evaluations at the same values differ: the function must be deterministic", context);
  return out;
}

// Each checked entry's `analytic` gradient against the central difference of
// loss_at(where) as the entry moves by ± step (and back, exactly).
GradientCheck compare(const std::vector<Checked>& checked, const std::vector<torch::Tensor>& analytic_of,
                      const std::function<double(const std::string& where)>& loss_at,
                      const GradientCheckOptions& options, const char* context) {
  GradientCheck result;
  result.check = context;
  double worst = -1;
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < checked.size(); ++k) {
    const Checked& c = checked[k];
    torch::Tensor flat = c.value.data().view(-1);
    const torch::Tensor analytic_all = analytic_of[k].defined() ? analytic_of[k].detach().reshape(-1).cpu()
                                                                : torch::zeros({flat.numel()}, torch::kFloat64);
    for (size_t run = 0; run + 1 < c.runs.bounds.size(); ++run) {
      TensorGradientCheck counts{c.run_name(run)};
      std::vector<int64_t> at;
      sample(c.runs.bounds[run], c.runs.bounds[run + 1], options.entries_per_tensor(), at);
      for (const int64_t i : at) {
        double up = 0, down = 0;
        {
          Moved entry(flat.narrow(0, i, 1));
          const std::string where = fmt::format("\"{}\"[{}] ± {}", c.name, i, options.step());
          entry.to(entry.original() + options.step());
          up = loss_at(where);
          entry.to(entry.original() - options.step());
          down = loss_at(where);
        }
        const double numeric = (up - down) / (2 * options.step());
        const double analytic = analytic_all[i].item<double>();
        const double allowed = options.atol() + options.rtol() * std::abs(numeric);
        const double difference = std::abs(analytic - numeric);
        double ratio =
            allowed > 0 ? difference / allowed : (difference == 0 ? 0 : std::numeric_limits<double>::infinity());
        if (!std::isfinite(numeric) || !std::isfinite(analytic)) ratio = std::numeric_limits<double>::infinity();
        ++counts.entries_checked;
        if (!(ratio <= 1)) ++counts.entries_failed;
        if (ratio > worst) {
          worst = ratio;
          result.tensor = counts.tensor;
          result.entry = i;
          result.analytic = analytic;
          result.numeric = numeric;
          result.ratio = ratio;
        }
      }
      result.entries_checked += counts.entries_checked;
      result.entries_failed += counts.entries_failed;
      if (counts.entries_checked > 0) result.tensors.push_back(std::move(counts));
    }
  }
  result.passed = result.entries_failed == 0;
  return result;
}

GradientCheck check(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                    const torch::Tensor& x, const GradientCheckOptions& options,
                    const std::map<std::string, Runs>& runs_of) {
  check_arguments(options, x, kContext);
  const torch::AutoGradMode grad_on(true);  // a caller's NoGradGuard would leave nothing to compare
  std::vector<Checked> checked;
  std::vector<c10::Device> devices{x.device()};
  for (const auto& item : module.named_parameters()) {
    const torch::Tensor& p = item.value();
    if (!p.requires_grad()) continue;  // nothing to compare: autograd gives it no gradient
    if (p.scalar_type() != torch::kFloat64)
      fail(
          "{}: parameter \"{}\" is {}; expected float64: a central difference in a coarser dtype cannot check a "
          "gradient (a connex network: NeuralNetworkOptions().dtype(torch::kFloat64); a torch module: "
          "->to(torch::kFloat64))",
          kContext, item.key(), dtype_word(p.scalar_type()));
    if (!p.is_contiguous()) fail("{}: parameter \"{}\" is not contiguous", kContext, item.key());
    const auto it = runs_of.find(item.key());
    const bool in_runs = it != runs_of.end() && it->second.bounds.back() == p.numel();
    checked.push_back({item.key(), p, in_runs ? it->second : Runs{{0, p.numel()}, nullptr}});
    devices.push_back(p.device());
  }
  torch::Tensor input = x.detach().clone(at::MemoryFormat::Contiguous);  // flat positions in logical order
  if (options.check_input()) {
    if (input.scalar_type() != torch::kFloat64)
      fail("{}: the input is {}; expected float64, or check_input(false) to check the parameters only", kContext,
           dtype_word(input.scalar_type()));
    input.requires_grad_(true);
    checked.push_back({"input", input, {{0, input.numel()}, nullptr}});
  }

  const Restored restored(&module, devices);
  const torch::Tensor out = checked_output(f, input, restored, kContext);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  const torch::Tensor r =
      torch::randn(out.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat64)).to(out.options());
  const torch::Tensor loss = (out * r).sum();

  std::vector<torch::Tensor> leaves;
  for (const auto& c : checked) leaves.push_back(c.value);
  std::vector<torch::Tensor> grads;
  try {
    grads = torch::autograd::grad({loss}, leaves, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
  } catch (const std::exception& e) {
    fail("{}: autograd cannot differentiate the output (made under a NoGradGuard, or detached?): {}", kContext,
         cause_of(e));
  }

  return compare(
      checked, grads,
      [&](const std::string& where) { return (evaluate(f, input, kContext, where) * r).sum().item<double>(); }, options,
      kContext);
}

}  // namespace

std::string GradientCheck::summary() const {
  if (entries_checked == 0) return fmt::format("{}: nothing to check (no parameters, input not checked)", check);
  const std::string where =
      fmt::format("\"{}\"[{}]: analytic {:.9g}, numeric {:.9g}", tensor, entry, analytic, numeric);
  if (passed)
    return fmt::format("{}: passed, {} entries; closest to its tolerance {} ({:.3g} of it)", check, entries_checked,
                       where, ratio);
  std::vector<std::string> failing;
  for (const auto& t : tensors)
    if (t.entries_failed > 0)
      failing.push_back(fmt::format("{} {} of {}", t.tensor, t.entries_failed, t.entries_checked));
  return fmt::format("{}: failed at {} of {} entries ({}); worst {} ({:.3g} times the tolerance)", check,
                     entries_failed, entries_checked, fmt::join(failing, ", "), where, ratio);
}

GradientCheck check_gradients(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                              const torch::Tensor& x, const GradientCheckOptions& options) {
  return check(module, f, x, options, {});
}

GradientCheck check_gradient_formula(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                     const torch::Tensor& gradient, const torch::Tensor& x,
                                     const GradientCheckOptions& options) {
  const char* context = "check_gradient_formula()";
  check_arguments(options, x, context);
  for (const auto& [what, t] :
       {std::pair<const char*, const torch::Tensor&>{"the input", x}, {"the gradient", gradient}})
    if (t.defined() && t.scalar_type() != torch::kFloat64)
      fail("{}: {} is {}; expected float64", context, what, dtype_word(t.scalar_type()));
  if (!gradient.defined() || !gradient.sizes().equals(x.sizes()))
    fail("{}: expected a gradient of the input's shape {}, got {}", context, shape_str(x.sizes()),
         gradient.defined() ? shape_str(gradient.sizes()) : std::string("an undefined tensor"));
  torch::Tensor input = x.detach().clone(at::MemoryFormat::Contiguous);
  const Restored restored(nullptr, {x.device()});
  checked_output(f, input, restored, context);
  return compare(
      {{"x", input, {{0, input.numel()}, nullptr}}}, {gradient.contiguous()},
      [&](const std::string& where) { return evaluate(f, input, context, where).sum().item<double>(); }, options,
      context);
}

GradientCheck check_gradients(NeuralNetwork& network, const torch::Tensor& x, const GradientCheckOptions& options) {
  // The flat weight and bias, sampled level by level.
  const Topology& t = network->topology();
  std::vector<int64_t> weight_runs{0}, bias_runs{0};
  for (size_t l = 1; l < t.levels().size(); ++l) {
    weight_runs.push_back(t.levels()[l].conn_end);
    bias_runs.push_back(t.bias_index(t.levels()[l].end - 1) + 1);
  }
  return check(*network, [&](const torch::Tensor& input) { return network->forward(input); }, x, options,
               {{"weight", {weight_runs, "level"}}, {"bias", {bias_runs, "level"}}});
}

}  // namespace connex
