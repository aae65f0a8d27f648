#include "connex/techniques.h"

#include <cmath>

#include <torch/torch.h>

#include "builtin_operations.h"
#include "dtype.h"
#include "formula_gradients.h"
#include "scalar_attention.h"
#include "connex/neural_network.h"
#include "topo_norm.h"
#include "vector_clones.h"

namespace connex {

namespace {

// Uniform in ±1/sqrt(fan_in), as torch::nn::Linear draws.
torch::Tensor uniform(std::vector<int64_t> shape, int64_t fan_in, torch::Dtype dtype, at::Generator& gen) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  // Drawn in double whatever the dtype, so a float32 and a float64 network of the same seed start alike.
  return torch::empty(shape, torch::kFloat64).uniform_(-bound, bound, gen).to(dtype);
}

// A network's dtype is one of dtype.h's (the network checks it when built).
double lowest_value(torch::ScalarType dtype) { return -find_dtype(dtype)->max; }

// The labels of a level's sources and neurons: the keys of its parameters.
std::vector<NeuronId> source_labels(const Topology& topology, const Level& level) {
  std::vector<NeuronId> labels;
  for (int64_t d : level.sources) labels.push_back(topology.label(d));
  return labels;
}

std::vector<NeuronId> neuron_labels(const Topology& topology, const Level& level) {
  std::vector<NeuronId> labels;
  for (int64_t d = level.begin; d < level.end; ++d) labels.push_back(topology.label(d));
  return labels;
}

}  // namespace

// ------------------------------------------------------------------ norm

OperationParameters TopoNorm::build(const Topology& topology, torch::Dtype dtype, at::Generator&) const {
  DimKey rows;
  for (size_t l = 1; l < topology.levels().size(); ++l)
    for (const int64_t s : topology.levels()[l].sources) {
      rows.labels.push_back(topology.label(s));
      rows.runs.push_back(static_cast<int64_t>(l));
    }
  const int64_t n = static_cast<int64_t>(rows.size());
  OperationParameters params;
  params["gamma"] = {torch::ones({n, 1}, dtype), {rows, std::nullopt}};
  params["beta"] = {torch::zeros({n, 1}, dtype), {std::move(rows), std::nullopt}};
  return params;
}

std::vector<detail::ParameterPart> topo_norm_level_parts(const NeuralNetworkImpl& network) {
  std::vector<detail::ParameterPart> parts;
  for (const auto& op : network.operations())
    if (op->name() == "topo_norm") {
      const Topology& t = network.topology();
      for (size_t l = 1; l < t.levels().size(); ++l) {
        const Level& level = t.levels()[l];
        for (const char* name : {"gamma", "beta"})
          parts.push_back({"topo_norm." + level_prefix(l) + name, std::string("topo_norm.") + name,
                           level.sources_before, static_cast<int64_t>(level.sources.size())});
      }
    }
  return parts;
}

namespace {

// The level's rows of "gamma" or "beta".
torch::Tensor level_rows(const LevelContext& ctx, const char* name) {
  return ctx.params.get(name).narrow(0, ctx.sources_before, static_cast<int64_t>(ctx.plan.sources.size()));
}

}  // namespace

constexpr double kNormEpsilon = 1e-5;

torch::Tensor topo_norm_formula(const torch::Tensor& s, const torch::Tensor& gamma, const torch::Tensor& beta) {
  torch::Tensor normed = s;
  if (s.size(0) > 1) {
    auto mean = s.mean(0, true);
    auto var = (s - mean).pow(2).mean(0, true);
    normed = (s - mean) / torch::sqrt(var + kNormEpsilon);
  }
  return gamma * normed + beta;
}

namespace {

// The loops of topo_norm_forward()/backward() on raw rows ([L, B], row-major).
// Restrict-qualified and with fixed-width partial sums so GCC vectorises
// them; compiled for each instruction set (vector_clones.h) below.
template <typename T>
__attribute__((always_inline)) inline void norm_forward_rows(const T* __restrict s, const T* __restrict gamma,
                                                             const T* __restrict beta, T* __restrict normed,
                                                             T* __restrict y, T* __restrict rstd, int64_t L,
                                                             int64_t B) {
  std::vector<T> mean_v(B, 0), var_v(B, 0);
  T* __restrict mean = mean_v.data();
  T* __restrict var = var_v.data();
  if (L == 1) {  // one source is not standardised: normed = s
    for (int64_t b = 0; b < B; ++b) rstd[b] = 1;
  } else {
    for (int64_t i = 0; i < L; ++i)
      for (int64_t b = 0; b < B; ++b) mean[b] += s[i * B + b];
    for (int64_t b = 0; b < B; ++b) mean[b] /= static_cast<T>(L);
    for (int64_t i = 0; i < L; ++i)
      for (int64_t b = 0; b < B; ++b) {
        const T d = s[i * B + b] - mean[b];
        var[b] += d * d;
      }
    for (int64_t b = 0; b < B; ++b)
      rstd[b] = T(1) / std::sqrt(var[b] / static_cast<T>(L) + static_cast<T>(kNormEpsilon));
  }
  for (int64_t i = 0; i < L; ++i) {
    const T g = gamma[i], sh = beta[i];
    for (int64_t b = 0; b < B; ++b) {
      const T x = (s[i * B + b] - mean[b]) * rstd[b];
      normed[i * B + b] = x;
      y[i * B + b] = g * x + sh;
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void norm_backward_rows(const T* __restrict dy, const T* __restrict normed,
                                                              const T* __restrict gamma, const T* __restrict rstd,
                                                              T* __restrict ds, bool add, T* __restrict dgamma,
                                                              T* __restrict dbeta, int64_t L, int64_t B) {
  constexpr int64_t kParts = 16;
  std::vector<T> g_mean_v(B, 0), gx_mean_v(B, 0);
  T* __restrict g_mean = g_mean_v.data();
  T* __restrict gx_mean = gx_mean_v.data();
  for (int64_t i = 0; i < L; ++i) {
    const T gi = gamma[i];
    T dg[kParts] = {}, db[kParts] = {};
    int64_t b = 0;
    for (; b + kParts <= B; b += kParts)
      for (int64_t j = 0; j < kParts; ++j) {
        const T d = dy[i * B + b + j], x = normed[i * B + b + j], g = d * gi;
        dg[j] += d * x;
        db[j] += d;
        g_mean[b + j] += g;
        gx_mean[b + j] += g * x;
      }
    for (; b < B; ++b) {
      const T d = dy[i * B + b], x = normed[i * B + b], g = d * gi;
      dg[0] += d * x;
      db[0] += d;
      g_mean[b] += g;
      gx_mean[b] += g * x;
    }
    T dg_sum = 0, db_sum = 0;
    for (int64_t j = 0; j < kParts; ++j) dg_sum += dg[j], db_sum += db[j];
    dgamma[i] = dg_sum;
    dbeta[i] = db_sum;
  }
  if (L == 1) {  // not standardised: ds = dy ⊙ gamma
    if (add)
      for (int64_t b = 0; b < B; ++b) ds[b] += dy[b] * gamma[0];
    else
      for (int64_t b = 0; b < B; ++b) ds[b] = dy[b] * gamma[0];
    return;
  }
  const T inv_L = T(1) / static_cast<T>(L);
  for (int64_t b = 0; b < B; ++b) g_mean[b] *= inv_L, gx_mean[b] *= inv_L;
  for (int64_t i = 0; i < L; ++i) {
    const T gi = gamma[i];
    T* __restrict row = ds + i * B;
    if (add)
      for (int64_t b = 0; b < B; ++b)
        row[b] += rstd[b] * (dy[i * B + b] * gi - g_mean[b] - normed[i * B + b] * gx_mean[b]);
    else
      for (int64_t b = 0; b < B; ++b)
        row[b] = rstd[b] * (dy[i * B + b] * gi - g_mean[b] - normed[i * B + b] * gx_mean[b]);
  }
}

}  // namespace

// The loops for AVX2 and AVX-512 as well as the SSE2 baseline: on a small
// network's levels they were a third of the norm's cost in the baseline.

CONNEX_VECTOR_CLONES void topo_norm_forward_rows(const float* s, const float* gamma, const float* beta, float* normed,
                                                 float* y, float* rstd, int64_t L, int64_t B) {
  norm_forward_rows(s, gamma, beta, normed, y, rstd, L, B);
}
CONNEX_VECTOR_CLONES void topo_norm_forward_rows(const double* s, const double* gamma, const double* beta,
                                                 double* normed, double* y, double* rstd, int64_t L, int64_t B) {
  norm_forward_rows(s, gamma, beta, normed, y, rstd, L, B);
}
CONNEX_VECTOR_CLONES void topo_norm_backward_rows(const float* dy, const float* normed, const float* gamma,
                                                  const float* rstd, float* ds, bool add, float* dgamma, float* dbeta,
                                                  int64_t L, int64_t B) {
  norm_backward_rows(dy, normed, gamma, rstd, ds, add, dgamma, dbeta, L, B);
}
CONNEX_VECTOR_CLONES void topo_norm_backward_rows(const double* dy, const double* normed, const double* gamma,
                                                  const double* rstd, double* ds, bool add, double* dgamma,
                                                  double* dbeta, int64_t L, int64_t B) {
  norm_backward_rows(dy, normed, gamma, rstd, ds, add, dgamma, dbeta, L, B);
}

void topo_norm_forward(const torch::Tensor& s, const torch::Tensor& gamma, const torch::Tensor& beta,
                       torch::Tensor& normed, torch::Tensor& y, torch::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "connex_topo_norm_forward", [&] {
    topo_norm_forward_rows(s.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                           normed.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), s.size(0),
                           s.size(1));
  });
}

void topo_norm_backward(const torch::Tensor& dy, const torch::Tensor& normed, const torch::Tensor& gamma,
                        const torch::Tensor& rstd, torch::Tensor& ds, torch::Tensor& dgamma, torch::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES(normed.scalar_type(), "connex_topo_norm_backward", [&] {
    topo_norm_backward_rows(dy.data_ptr<scalar_t>(), normed.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(),
                            rstd.data_ptr<scalar_t>(), ds.data_ptr<scalar_t>(), false, dgamma.data_ptr<scalar_t>(),
                            dbeta.data_ptr<scalar_t>(), normed.size(0), normed.size(1));
  });
}

namespace {

// TopoNorm's normalisation and scaling as one autograd node, for the CPU.
// Nine torch operations and their backward nodes per level cost more than
// the arithmetic on a small network.
class TopoNormFunction : public torch::autograd::Function<TopoNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& s_in,
                               const torch::Tensor& gamma_in, const torch::Tensor& beta_in) {
    auto s = s_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
    auto normed = torch::empty_like(s), y = torch::empty_like(s), rstd = torch::empty({s.size(1)}, s.options());
    topo_norm_forward(s, gamma, beta, normed, y, rstd);
    ctx->save_for_backward({normed, gamma, rstd, s_in, gamma_in, beta_in});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &normed = saved[0], &gamma = saved[1], &rstd = saved[2];
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    if (torch::GradMode::is_enabled())  // create_graph: the formula's gradients (formula_gradients.h)
      return formula_gradients(
          {saved[3], saved[4], saved[5]},
          [](const torch::autograd::variable_list& in) { return topo_norm_formula(in[0], in[1], in[2]); }, grads[0]);
    auto ds = torch::empty_like(normed), dgamma = torch::empty_like(gamma), dbeta = torch::empty_like(gamma);
    topo_norm_backward(grads[0].contiguous(), normed, gamma, rstd, ds, dgamma, dbeta);
    return {ds, dgamma, dbeta};
  }
};

}  // namespace

torch::Tensor TopoNorm::on_inputs(const LevelContext& ctx, const torch::Tensor& s) const {
  if (s.size(0) == 0) return s;
  if (s.device().is_cpu() && kernel_dtype(s.scalar_type()))
    return TopoNormFunction::apply(s, level_rows(ctx, "gamma"), level_rows(ctx, "beta"));
  return topo_norm_formula(s, level_rows(ctx, "gamma"), level_rows(ctx, "beta"));
}

std::optional<double> TopoNorm::parameter_count(const Topology& topology) const {
  double values = 0;
  for (size_t l = 1; l < topology.levels().size(); ++l) values += 2.0 * topology.levels()[l].sources.size();
  return values;
}

void TopoNorm::script_on_inputs(ScriptWriter& script, const LevelContext& ctx) const {
  if (ctx.plan.sources.size() > 1) {
    script.line("m = s.mean(0, True)");
    script.line(fmt::format("s = (s - m) / torch.sqrt((s - m).pow(2).mean(0, True) + {})", kNormEpsilon));
  }
  script.line(fmt::format("s = {} * s + {}", script.buffer("norm_gamma", level_rows(ctx, "gamma")),
                          script.buffer("norm_beta", level_rows(ctx, "beta"))));
}

// ------------------------------------------------------------- attention

namespace {

void declare_attention(OperationParameters& params, const std::string& prefix, const std::vector<NeuronId>* rows,
                       const std::vector<NeuronId>& sources, torch::Dtype dtype, at::Generator& gen) {
  const int64_t L = static_cast<int64_t>(sources.size());
  for (const char* m : {"query", "key", "value"}) {
    if (rows) {
      const int64_t n = static_cast<int64_t>(rows->size());
      params[prefix + m + "_weight"] = {uniform({n, L, L}, L, dtype, gen), {*rows, sources, sources}};
      params[prefix + m + "_bias"] = {uniform({n, L}, L, dtype, gen), {*rows, sources}};
    } else {
      params[prefix + m + "_weight"] = {uniform({L, L}, L, dtype, gen), {sources, sources}};
      params[prefix + m + "_bias"] = {uniform({L}, L, dtype, gen), {sources}};
    }
  }
}

}  // namespace

OperationParameters TopoSelfAttention::build(const Topology& topology, torch::Dtype dtype, at::Generator& gen) const {
  OperationParameters params;
  for (size_t l = 1; l < topology.levels().size(); ++l)
    declare_attention(params, level_prefix(l), nullptr, source_labels(topology, topology.levels()[l]), dtype, gen);
  return params;
}

torch::Tensor TopoSelfAttention::on_inputs(const LevelContext& ctx, const torch::Tensor& s) const {
  if (s.size(0) == 0) return s;
  return topo_attention_formula(s, ctx.param("query_weight"), ctx.param("query_bias"), ctx.param("key_weight"),
                                ctx.param("key_bias"), ctx.param("value_weight"), ctx.param("value_bias"));
}

namespace {

// Three L×L projections and their biases per level (L: its sources), and n
// times that for neuron attention's n neurons.
double attention_values(const Topology& topology, bool per_neuron) {
  double values = 0;
  for (size_t l = 1; l < topology.levels().size(); ++l) {
    const Level& level = topology.levels()[l];
    const double L = static_cast<double>(level.sources.size());
    values += 3 * (L * L + L) * (per_neuron ? static_cast<double>(level.size()) : 1.0);
  }
  return values;
}

}  // namespace

std::optional<double> TopoSelfAttention::parameter_count(const Topology& topology) const {
  return attention_values(topology, false);
}

void TopoSelfAttention::script_on_inputs(ScriptWriter& script, const LevelContext& ctx) const {
  for (const std::string m : {"query", "key", "value"})
    script.line(fmt::format("{} = torch.addmm({}, {}, s)", m[0],
                            script.buffer("ta_" + m + "_b", ctx.param(m + "_bias").unsqueeze(1)),
                            script.buffer("ta_" + m + "_w", ctx.param(m + "_weight"))));
  script.line(fmt::format("a = torch.softmax(q.t().unsqueeze(2) * k.t().unsqueeze(1) / {}, 2)",
                          std::sqrt(static_cast<double>(ctx.plan.sources.size()))));
  script.line("s = s + torch.bmm(a, v.t().unsqueeze(2)).squeeze(2).t()");
}

OperationParameters NeuronSelfAttention::build(const Topology& topology, torch::Dtype dtype, at::Generator& gen) const {
  OperationParameters params;
  for (size_t l = 1; l < topology.levels().size(); ++l) {
    const Level& level = topology.levels()[l];
    const auto rows = neuron_labels(topology, level);
    declare_attention(params, level_prefix(l), &rows, source_labels(topology, level), dtype, gen);
  }
  return params;
}

std::optional<torch::Tensor> NeuronSelfAttention::replace_affine(const LevelContext& ctx, const torch::Tensor& s,
                                                                 const torch::Tensor& weights,
                                                                 const torch::Tensor& bias) const {
  const int64_t L = s.size(0), n = weights.size(0), B = s.size(1);
  if (L == 0) return bias.expand({n, B});
  // Each neuron attends over its incoming connections' slots, taken from
  // the plan (a weight can be exactly zero while its connection exists).
  // The level's connections run by target (the topology's incoming runs),
  // so its edge sources are already the keys, neuron by neuron.
  AttentionKeys keys;
  const auto& in = ctx.topology.in_offsets();
  for (int64_t d = ctx.plan.begin; d <= ctx.plan.end; ++d) keys.offsets.push_back(in[d] - ctx.plan.conn_begin);
  keys.positions = ctx.topology.level_edges(ctx.level).source;
  keys.scale.resize(n);
  for (int64_t r = 0; r < n; ++r)
    keys.scale[r] = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(keys.offsets[r + 1] - keys.offsets[r], 1)));
  // Slots outside a neuron's connections meet a zero weight below: no query there.
  keys.queries_are_keys = true;
  // Projections of every neuron at once: [n·L, L] × [L, B], viewed [n, L, B].
  auto project = [&](const std::string& m) {
    return torch::addmm(ctx.param(m + "_bias").reshape({n * L, 1}), ctx.param(m + "_weight").reshape({n * L, L}), s)
        .view({n, L, B});
  };
  auto attended = scalar_attention(project("query"), project("key"), project("value"), keys);  // [n, L, B]
  // z[n, b] = Σ_i w[n, i] (s[i, b] + attended[n, i, b]) + bias[n]
  return torch::addmm(bias, weights, s) + torch::bmm(weights.unsqueeze(1), attended).squeeze(1);
}

std::optional<double> NeuronSelfAttention::parameter_count(const Topology& topology) const {
  return attention_values(topology, true);
}

void NeuronSelfAttention::script_replace_affine(ScriptWriter& script, const LevelContext& ctx,
                                                const torch::Tensor& weights, const std::string& bias) const {
  const int64_t size = weights.size(0), width = weights.size(1);
  const std::vector<int64_t> pos = ctx.topology.dense_positions(ctx.level);
  auto outside = torch::ones({size * width}, torch::kBool)
                     .index_fill_(0, torch::tensor(pos, torch::kLong), false)
                     .view({1, size, 1, width});
  // sqrt in double: torch's CPU sqrt has no float16 kernel, and a float16 export runs on a GPU.
  auto fan_in =
      (~outside).sum(3).clamp_min(1).to(torch::kDouble).sqrt().to(weights.scalar_type()).view({1, size, 1, 1});
  script.line(fmt::format("xn = s.t().unsqueeze(1).expand([batch, {}, {}])", size, width));
  for (const std::string m : {"query", "key", "value"})
    script.line(fmt::format("{} = torch.einsum(\"nij,bnj->bni\", [{}, xn]) + {}", m[0],
                            script.buffer("na_" + m + "_w", ctx.param(m + "_weight")),
                            script.buffer("na_" + m + "_b", ctx.param(m + "_bias"))));
  const std::string mask = script.buffer("na_outside", outside);
  script.line(fmt::format("e = (q.unsqueeze(3) * k.unsqueeze(2) / {}).masked_fill({}, {})",
                          script.buffer("na_scale", fan_in), mask, lowest_value(weights.scalar_type())));
  script.line(fmt::format("a = torch.softmax(e, 3).masked_fill({}, 0.0)", mask));
  script.line("xn = xn + torch.matmul(a, v.unsqueeze(3)).squeeze(3)");
  script.line(fmt::format("z = (xn * {}.unsqueeze(0)).sum(2).t() + {}", script.buffer("W", weights), bias));
}

// ---------------------------------------------------------- adaptive act.

OperationParameters AdaptiveActivation::build(const Topology& topology, torch::Dtype dtype, at::Generator&) const {
  // One (a, b) per non-input neuron, in bias order, so a neuron keeps its
  // pair wherever an edit moves it; output neurons' entries are unused.
  std::vector<NeuronId> rows;
  for (int64_t d = topology.num_inputs(); d < topology.num_neurons(); ++d) rows.push_back(topology.label(d));
  const int64_t n = static_cast<int64_t>(rows.size());
  OperationParameters params;
  params["a"] = {torch::ones({n, 1}, dtype), {rows, std::nullopt}};
  params["b"] = {torch::ones({n, 1}, dtype), {rows, std::nullopt}};
  return params;
}

std::optional<torch::Tensor> AdaptiveActivation::replace_activation(const LevelContext& ctx, const torch::Tensor& z,
                                                                    const TensorFunction& activation) const {
  const int64_t first = ctx.topology.bias_index(ctx.plan.begin), hidden = z.size(0);
  return ctx.params.get("a").narrow(0, first, hidden) * activation(ctx.params.get("b").narrow(0, first, hidden) * z);
}

std::optional<double> AdaptiveActivation::parameter_count(const Topology& topology) const {
  return 2.0 * static_cast<double>(topology.num_neurons() - topology.num_inputs());
}

std::string AdaptiveActivation::script_replace_activation(
    ScriptWriter& script, const LevelContext& ctx, const std::string& z_hidden,
    const std::function<std::string(const std::string&)>& activation) const {
  const int64_t first = ctx.topology.bias_index(ctx.plan.begin), hidden = ctx.plan.hidden_end - ctx.plan.begin;
  const std::string a = script.buffer("ad_a", ctx.params.get("a").narrow(0, first, hidden));
  const std::string b = script.buffer("ad_b", ctx.params.get("b").narrow(0, first, hidden));
  return a + " * " + activation("(" + b + " * " + z_hidden + ")");
}

std::vector<LevelOperationPtr> builtin_operations(const NeuralNetworkOptions& options) {
  std::vector<LevelOperationPtr> operations;
  if (options.use_topo_norm()) operations.push_back(std::make_shared<TopoNorm>());
  if (options.use_topo_self_attention()) operations.push_back(std::make_shared<TopoSelfAttention>());
  if (options.use_neuron_self_attention()) operations.push_back(std::make_shared<NeuronSelfAttention>());
  if (options.use_adaptive_activations()) operations.push_back(std::make_shared<AdaptiveActivation>());
  return operations;
}

}  // namespace connex
