#include "connex/ham/lagrangian.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "connex/error.h"
#include "ham/attach.h"
#include "ham/describe.h"
#include "json_input.h"
#include "file_io.h"

namespace connex::ham {

namespace {

using nlohmann::json;

// Sums every per-sample entry: [batch, ...] -> [batch].
torch::Tensor per_sample(const torch::Tensor& t) { return t.reshape({t.size(0), -1}).sum(1); }

// The built-in Lagrangians, one class: each kind is a formula and its closed-form gradient.
class BuiltinLagrangian : public LagrangianImpl {
 public:
  enum class Kind { identity, repu, exponential, rexp, tanh, sigmoid, softmax, layernorm, spherical_norm };
  struct Spec {
    Kind kind;
    double a = 1.0;  // β, n, γ (layernorm) or ε (spherical_norm), by kind
    double b = 0.0;  // δ (layernorm)
    double c = 0.0;  // ε (layernorm)
    int64_t dim = -1;
  };
  explicit BuiltinLagrangian(Spec spec) : spec_(spec), dim_(spec.dim < 0 ? spec.dim : spec.dim + 1) {}

  void attach(const std::vector<int64_t>& shape, const std::string& layer) override {
    const int64_t rank = static_cast<int64_t>(shape.size());
    if (spec_.kind == Kind::softmax) {
      if (spec_.dim < -rank || spec_.dim >= rank)
        fail("add_layer(): layer \"{}\": softmax's dim {} is out of range for a per-sample shape of {} dims", layer,
             spec_.dim, rank);
    }
    if ((spec_.kind == Kind::layernorm || spec_.kind == Kind::spherical_norm) && rank == 0)
      fail("add_layer(): layer \"{}\": {} needs at least one per-sample dim", layer, kind_name());
    if (spec_.kind == Kind::layernorm) {
      gamma_ = attach_parameter(*this, "gamma", torch::full({}, spec_.a));
      delta_ = attach_parameter(*this, "delta", torch::full({shape.back()}, spec_.b));
    }
  }

  torch::Tensor value(const torch::Tensor& x) override {
    const double beta = spec_.a;
    switch (spec_.kind) {
      case Kind::identity:
        return 0.5 * per_sample(x * x);
      case Kind::repu:
        return per_sample(torch::relu(x).pow(spec_.a)) / spec_.a;
      case Kind::exponential:
        return per_sample(torch::exp(beta * x)) / beta;
      case Kind::rexp: {
        auto bx = torch::relu(beta * x);  // 0 where x ≤ 0, where the formula is 0 too
        return per_sample(torch::exp(bx) - bx - 1) / beta;
      }
      case Kind::tanh: {
        // log cosh(y) = |y| + log1p(exp(−2|y|)) − log 2, stable for large |y|.
        auto y = (beta * x).abs();
        return per_sample(y + torch::log1p(torch::exp(-2 * y)) - std::log(2.0)) / beta;
      }
      case Kind::sigmoid:
        return per_sample(torch::softplus(beta * x)) / beta;
      case Kind::softmax:
        return per_sample(torch::logsumexp(beta * x, dim_)) / beta;
      case Kind::layernorm: {
        check_attached();
        const int64_t d = x.size(-1);
        auto centred = x - x.mean(-1, true);
        auto y = torch::sqrt(centred.pow(2).mean(-1) + spec_.c);
        return per_sample(d * gamma_ * y) + per_sample(delta_ * x);
      }
      case Kind::spherical_norm:
        return per_sample(torch::sqrt(x.pow(2).sum(-1) + spec_.a));
    }
    return {};
  }

  torch::Tensor activation(const torch::Tensor& x) override {
    const double beta = spec_.a;
    const auto bx = [&] { return beta == 1.0 ? x : beta * x; };  // β = 1 costs no op
    switch (spec_.kind) {
      case Kind::identity:
        return x;
      case Kind::repu:
        return torch::relu(x).pow(spec_.a - 1);  // n > 1: no 0⁰
      case Kind::exponential:
        return torch::exp(bx());
      case Kind::rexp:
        return torch::expm1(torch::relu(bx()));
      case Kind::tanh:
        return torch::tanh(bx());
      case Kind::sigmoid:
        return torch::sigmoid(bx());
      case Kind::softmax:
        return torch::softmax(bx(), dim_);
      case Kind::layernorm: {
        check_attached();
        auto centred = x - x.mean(-1, true);
        return gamma_ * centred * torch::rsqrt(centred.pow(2).mean(-1, true) + spec_.c) + delta_;
      }
      case Kind::spherical_norm:
        return x * torch::rsqrt(x.pow(2).sum(-1, true) + spec_.a);
    }
    return {};
  }

  std::shared_ptr<LagrangianImpl> fresh() const override { return std::make_shared<BuiltinLagrangian>(spec_); }

  json to_json() const override {
    json j = {{"kind", kind_name()}};
    switch (spec_.kind) {
      case Kind::identity:
        break;
      case Kind::repu:
        j["n"] = spec_.a;
        break;
      case Kind::softmax:
        j["dim"] = spec_.dim;
        [[fallthrough]];
      case Kind::exponential:
      case Kind::rexp:
      case Kind::tanh:
      case Kind::sigmoid:
        j["beta"] = spec_.a;
        break;
      case Kind::layernorm:
        j["gamma"] = spec_.a;
        j["delta"] = spec_.b;
        j["eps"] = spec_.c;
        break;
      case Kind::spherical_norm:
        j["eps"] = spec_.a;
        break;
    }
    return j;
  }

  std::vector<std::pair<std::string, int64_t>> neuron_dims() const override {
    if (spec_.kind == Kind::layernorm) return {{"delta", 0}};
    return {};
  }
  // layernorm's L is D·γ·(a norm) + linear: convex for γ ≥ 0, which training may break; the rest always are.
  // Before a layer sizes γ, the initial γ answers.
  bool convex() const override {
    if (spec_.kind != Kind::layernorm) return true;
    return (gamma_.defined() ? gamma_.item<double>() : spec_.a) >= 0;
  }

  void pretty_print(std::ostream& stream) const override { stream << describe(to_json()); }

  const char* kind_name() const {
    static const char* names[] = {"identity", "repu",    "exponential", "rexp",          "tanh",
                                  "sigmoid",  "softmax", "layernorm",   "spherical_norm"};
    return names[static_cast<int>(spec_.kind)];
  }

 private:
  void check_attached() const {
    if (!delta_.defined()) fail("layernorm: its δ is sized by the layer it belongs to; add it to a layer first");
  }

  Spec spec_;
  int64_t dim_;  // softmax's dim in [batch, *shape]
  torch::Tensor gamma_, delta_;
};

void check_positive(double value, const char* what, const char* name) {
  if (!(value > 0) || !std::isfinite(value)) fail("{}(): expected a finite {} > 0, got {}", name, what, value);
}

Lagrangian make(BuiltinLagrangian::Spec spec) { return std::make_shared<BuiltinLagrangian>(spec); }

class CallableLagrangian : public LagrangianImpl {
 public:
  CallableLagrangian(std::function<torch::Tensor(const torch::Tensor&)> value, bool convex)
      : value_(std::move(value)), convex_(convex) {}
  torch::Tensor value(const torch::Tensor& x) override { return value_(x); }
  std::shared_ptr<LagrangianImpl> fresh() const override {
    return std::make_shared<CallableLagrangian>(value_, convex_);
  }
  bool convex() const override { return convex_; }
  void pretty_print(std::ostream& stream) const override { stream << "lagrangian(callable)"; }

 private:
  std::function<torch::Tensor(const torch::Tensor&)> value_;
  bool convex_;
};

}  // namespace

torch::Tensor LagrangianImpl::activation(const torch::Tensor& x) {
  const bool keep_graph = torch::GradMode::is_enabled();
  torch::AutoGradMode enable(true);
  // A leaf that needs no graph upstream is differentiated on a detached copy.
  auto input = x.requires_grad() ? x : x.detach().requires_grad_(true);
  auto l = value(input);
  // A value autograd cannot trace back to x (a detach(), an item(), a tensor
  // built anew) would make the activation 0 everywhere, without a word.
  const auto untraced = [&] {
    fail(
        "LagrangianImpl::activation(): the Lagrangian's value does not depend on the state through autograd (a "
        "detach(), item() or new tensor in value()?), so its activation would be 0 everywhere");
  };
  if (!l.requires_grad()) untraced();
  auto g = torch::autograd::grad({l.sum()}, {input}, {}, keep_graph, keep_graph, /*allow_unused=*/true)[0];
  if (!g.defined()) untraced();
  return g;
}

void LagrangianImpl::attach(const std::vector<int64_t>&, const std::string&) {}

std::shared_ptr<LagrangianImpl> LagrangianImpl::fresh() const {
  fail("{}: this Lagrangian does not implement fresh(), which cloning, editing and loading a HAM need", name());
}

Lagrangian identity() { return make({BuiltinLagrangian::Kind::identity}); }
Lagrangian repu(double n) {
  // n = 1 is convex but its activation a step: the energy jumps as a state
  // crosses 0, and no step size keeps the descent from raising it.
  if (!(n > 1) || !std::isfinite(n))
    fail(
        "repu(): expected a finite power n > 1 (at n = 1 the activation is a step, whose jumps can raise the energy), "
        "got {}",
        n);
  return make({BuiltinLagrangian::Kind::repu, n});
}
Lagrangian relu() { return repu(2.0); }
namespace {

// The four Lagrangians that take only a gain β, named by their factory in messages.
Lagrangian with_gain(BuiltinLagrangian::Kind kind, double beta, const char* factory) {
  check_positive(beta, "β", factory);
  return make({kind, beta});
}

}  // namespace

Lagrangian exponential(double beta) { return with_gain(BuiltinLagrangian::Kind::exponential, beta, "exponential"); }
Lagrangian rexp(double beta) { return with_gain(BuiltinLagrangian::Kind::rexp, beta, "rexp"); }
Lagrangian tanh(double beta) { return with_gain(BuiltinLagrangian::Kind::tanh, beta, "tanh"); }
Lagrangian sigmoid(double beta) { return with_gain(BuiltinLagrangian::Kind::sigmoid, beta, "sigmoid"); }
Lagrangian softmax(double beta, int64_t dim) {
  check_positive(beta, "β", "softmax");
  BuiltinLagrangian::Spec spec{BuiltinLagrangian::Kind::softmax, beta};
  spec.dim = dim;
  return make(spec);
}
Lagrangian layernorm(double gamma, double delta, double eps) {
  // γ < 0 makes L concave, so the descent could raise the energy; γ = 0 leaves g a constant.
  check_positive(gamma, "γ", "layernorm");
  if (!std::isfinite(delta)) fail("layernorm(): expected a finite δ, got {}", delta);
  // Both become parameters, made in float32 before the HAM takes another dtype.
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  if (gamma > kFloatMax || static_cast<float>(gamma) == 0 || std::fabs(delta) > kFloatMax)
    fail(
        "layernorm(): expected γ and |δ| at most {:g} (float32's largest value), and γ not below float32's "
        "smallest, got γ = {:g} and δ = {:g}",
        kFloatMax, gamma, delta);
  check_positive(eps, "ε", "layernorm");
  return make({BuiltinLagrangian::Kind::layernorm, gamma, delta, eps});
}
Lagrangian spherical_norm(double eps) {
  check_positive(eps, "ε", "spherical_norm");
  return make({BuiltinLagrangian::Kind::spherical_norm, eps});
}
Lagrangian lagrangian(std::function<torch::Tensor(const torch::Tensor&)> value, bool convex) {
  if (!value) fail("lagrangian(): expected a callable, got an empty std::function");
  return std::make_shared<CallableLagrangian>(std::move(value), convex);
}

Lagrangian lagrangian_from_json(const json& j, const std::string& where) {
  const std::string kind = kind_of(j, "a Lagrangian", where);
  auto number = [&](const char* key) {
    if (!j.contains(key) || !j.at(key).is_number()) fail("{}: {} needs a number \"{}\"", where, kind, key);
    return j.at(key).get<double>();
  };
  const char* what = "a Lagrangian";
  if (kind == "identity") detail::only_keys(j, {"kind"}, what, where);
  if (kind == "repu") detail::only_keys(j, {"kind", "n"}, what, where);
  if (kind == "exponential" || kind == "rexp" || kind == "tanh" || kind == "sigmoid")
    detail::only_keys(j, {"kind", "beta"}, what, where);
  if (kind == "softmax") detail::only_keys(j, {"kind", "beta", "dim"}, what, where);
  if (kind == "layernorm") detail::only_keys(j, {"kind", "gamma", "delta", "eps"}, what, where);
  if (kind == "spherical_norm") detail::only_keys(j, {"kind", "eps"}, what, where);
  try {
    if (kind == "identity") return identity();
    if (kind == "repu") return repu(number("n"));
    if (kind == "exponential") return exponential(number("beta"));
    if (kind == "rexp") return rexp(number("beta"));
    if (kind == "tanh") return tanh(number("beta"));
    if (kind == "sigmoid") return sigmoid(number("beta"));
    if (kind == "softmax") {
      if (!j.contains("dim") || !j.at("dim").is_number_integer()) fail("{}: softmax needs an integer \"dim\"", where);
      return softmax(number("beta"), j.at("dim").get<int64_t>());
    }
    if (kind == "layernorm") return layernorm(number("gamma"), number("delta"), number("eps"));
    if (kind == "spherical_norm") return spherical_norm(number("eps"));
  } catch (const Error& e) {
    fail_under(where, e);
  }
  fail(
      "{}: unknown Lagrangian \"{}\" (expected identity, repu, exponential, rexp, tanh, sigmoid, softmax, layernorm "
      "or spherical_norm)",
      where, printable(kind));
}

}  // namespace connex::ham
