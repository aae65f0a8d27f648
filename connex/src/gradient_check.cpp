#include "connex/gradient_check.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include "connex/error.h"
#include "dtype.h"

namespace connex {

namespace {

constexpr const char* kContext = "check_gradients()";

std::string dtype_word(c10::ScalarType type) {
  const DtypeInfo* info = find_dtype(type);
  return info ? info->name : c10::toString(type);
}

void check_options(const GradientCheckOptions& o) {
  if (!(o.step() > 0) || !std::isfinite(o.step())) fail("{}: expected step > 0, got {}", kContext, o.step());
  if (!(o.atol() >= 0) || !std::isfinite(o.atol())) fail("{}: expected atol >= 0, got {}", kContext, o.atol());
  if (!(o.rtol() >= 0) || !std::isfinite(o.rtol())) fail("{}: expected rtol >= 0, got {}", kContext, o.rtol());
  if (o.atol() == 0 && o.rtol() == 0) fail("{}: atol and rtol are both 0: no difference could pass", kContext);
  if (o.entries_per_tensor() < 0)
    fail("{}: expected entries_per_tensor >= 0 (0: every entry), got {}", kContext, o.entries_per_tensor());
}

// Positions checked in a tensor of n entries: evenly spaced, first and last included.
std::vector<int64_t> sampled(int64_t n, int64_t wanted) {
  std::vector<int64_t> at;
  if (wanted == 0 || n <= wanted) {
    for (int64_t i = 0; i < n; ++i) at.push_back(i);
    return at;
  }
  for (int64_t k = 0; k < wanted; ++k) {
    const int64_t i =
        wanted == 1 ? 0 : static_cast<int64_t>(std::llround(double(k) * double(n - 1) / double(wanted - 1)));
    if (at.empty() || at.back() != i) at.push_back(i);
  }
  return at;
}

struct Checked {
  std::string name;
  torch::Tensor value;  // a leaf that requires grad
};

}  // namespace

std::string GradientCheck::summary() const {
  if (entries_checked == 0) return fmt::format("{}: nothing to check (no parameters, input not checked)", kContext);
  const std::string where =
      fmt::format("\"{}\"[{}]: analytic {:.9g}, numeric {:.9g}", tensor, entry, analytic, numeric);
  if (passed)
    return fmt::format("{}: passed, {} entries; closest to its tolerance {} ({:.3g} of it)", kContext, entries_checked,
                       where, ratio);
  return fmt::format("{}: failed at {} of {} entries; worst {} ({:.3g} times the tolerance)", kContext, entries_failed,
                     entries_checked, where, ratio);
}

GradientCheck check_gradients(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                              const torch::Tensor& x, const GradientCheckOptions& options) {
  check_options(options);
  if (!x.defined()) fail("{}: the input is an undefined tensor", kContext);
  std::vector<Checked> checked;
  for (const auto& item : module.named_parameters()) {
    const torch::Tensor& p = item.value();
    if (!p.requires_grad()) continue;  // nothing to compare: autograd gives it no gradient
    if (p.scalar_type() != torch::kFloat64)
      fail(
          "{}: parameter \"{}\" is {}; expected float64: a central difference in a coarser dtype cannot check a "
          "gradient (build the module with dtype float64)",
          kContext, item.key(), dtype_word(p.scalar_type()));
    if (!p.is_contiguous()) fail("{}: parameter \"{}\" is not contiguous", kContext, item.key());
    checked.push_back({item.key(), p});
  }
  torch::Tensor input = x.detach().clone();
  if (options.check_input()) {
    if (input.scalar_type() != torch::kFloat64)
      fail("{}: the input is {}; expected float64, or check_input(false) to check the parameters only", kContext,
           dtype_word(input.scalar_type()));
    input.requires_grad_(true);
    checked.push_back({"input", input});
  }

  torch::Tensor out = f(input);
  if (!out.defined() || !out.is_floating_point())
    fail("{}: expected a floating-point output, got {}", kContext,
         out.defined() ? dtype_word(out.scalar_type()) : std::string("an undefined tensor"));
  if (out.numel() == 0) fail("{}: the output is empty", kContext);
  // Evaluated as the first was (with autograd on), so a path chosen without it cannot differ by rounding;
  // a threaded reduction may still differ in its last bits, dropout by whole values.
  const torch::Tensor again = f(input).detach();
  const double scale = std::max(1.0, out.detach().abs().max().item<double>());
  if (again.sizes() != out.sizes() || !((again - out.detach()).abs().max().item<double>() <= 1e-10 * scale))
    fail(
        "{}: two evaluations at the same values differ: the function must be deterministic (dropout in "
        "training mode? call eval() first)",
        kContext);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed());
  const torch::Tensor r =
      torch::randn(out.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat64)).to(out.options());
  const torch::Tensor loss = (out * r).sum();
  if (!std::isfinite(loss.item<double>())) fail("{}: the output is not finite at the given input", kContext);

  std::vector<torch::Tensor> leaves;
  for (const auto& c : checked) leaves.push_back(c.value);
  const auto grads = torch::autograd::grad({loss}, leaves, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                           /*allow_unused=*/true);

  GradientCheck result;
  double worst = -1;
  torch::NoGradGuard no_grad;
  const auto loss_at = [&] { return (f(input) * r).sum().item<double>(); };
  for (size_t k = 0; k < checked.size(); ++k) {
    torch::Tensor flat = checked[k].value.detach().view(-1);
    const torch::Tensor analytic_all =
        grads[k].defined() ? grads[k].detach().reshape(-1).cpu() : torch::zeros({flat.numel()}, torch::kFloat64);
    for (const int64_t i : sampled(flat.numel(), options.entries_per_tensor())) {
      torch::Tensor entry = flat.narrow(0, i, 1);
      const double original = entry.item<double>();
      entry.fill_(original + options.step());
      const double up = loss_at();
      entry.fill_(original - options.step());
      const double down = loss_at();
      entry.fill_(original);  // exactly as it was: a double round-trips
      const double numeric = (up - down) / (2 * options.step());
      const double analytic = analytic_all[i].item<double>();
      const double allowed = options.atol() + options.rtol() * std::abs(numeric);
      const double difference = std::abs(analytic - numeric);
      double ratio =
          allowed > 0 ? difference / allowed : (difference == 0 ? 0 : std::numeric_limits<double>::infinity());
      if (!std::isfinite(numeric) || !std::isfinite(analytic)) ratio = std::numeric_limits<double>::infinity();
      ++result.entries_checked;
      if (!(ratio <= 1)) ++result.entries_failed;
      if (ratio > worst) {
        worst = ratio;
        result.tensor = checked[k].name;
        result.entry = i;
        result.analytic = analytic;
        result.numeric = numeric;
        result.ratio = ratio;
      }
    }
  }
  result.passed = result.entries_failed == 0;
  return result;
}

GradientCheck check_gradients(NeuralNetwork& network, const torch::Tensor& x, const GradientCheckOptions& options) {
  return check_gradients(
      *network, [&](const torch::Tensor& input) { return network->forward(input); }, x, options);
}

}  // namespace connex
