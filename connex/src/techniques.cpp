#include "connex/techniques.h"

#include <cmath>

#include <torch/torch.h>

#include "builtin_operations.h"
#include "dtype.h"

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
  OperationParameters params;
  for (size_t l = 1; l < topology.levels().size(); ++l) {
    const Level& level = topology.levels()[l];
    const auto sources = source_labels(topology, level);
    const int64_t L = static_cast<int64_t>(sources.size());
    params[level_prefix(l) + "gamma"] = {torch::ones({L, 1}, dtype), {sources, std::nullopt}};
    params[level_prefix(l) + "beta"] = {torch::zeros({L, 1}, dtype), {sources, std::nullopt}};
  }
  return params;
}

torch::Tensor TopoNorm::on_inputs(const LevelContext& ctx, const torch::Tensor& s) const {
  if (s.size(0) == 0) return s;
  torch::Tensor normed = s;
  if (s.size(0) > 1) {
    auto mean = s.mean(0, true);
    auto var = (s - mean).pow(2).mean(0, true);
    normed = (s - mean) / torch::sqrt(var + 1e-5);
  }
  return ctx.param("gamma") * normed + ctx.param("beta");
}

std::optional<double> TopoNorm::parameter_count(const Topology& topology) const {
  double values = 0;
  for (size_t l = 1; l < topology.levels().size(); ++l) values += 2.0 * topology.levels()[l].sources.size();
  return values;
}

void TopoNorm::script_on_inputs(ScriptWriter& script, const LevelContext& ctx) const {
  if (ctx.plan.sources.size() > 1) {
    script.line("m = s.mean(0, True)");
    script.line("s = (s - m) / torch.sqrt((s - m).pow(2).mean(0, True) + 1e-05)");
  }
  script.line(fmt::format("s = {} * s + {}", script.buffer("norm_gamma", ctx.param("gamma")),
                          script.buffer("norm_beta", ctx.param("beta"))));
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
  const int64_t L = s.size(0);
  if (L == 0) return s;
  // s: [L, B]. Projections per sample: q[b] = Wq s[:, b] + bq -> [L, B].
  auto q = torch::addmm(ctx.param("query_bias").unsqueeze(1), ctx.param("query_weight"), s);
  auto k = torch::addmm(ctx.param("key_bias").unsqueeze(1), ctx.param("key_weight"), s);
  auto v = torch::addmm(ctx.param("value_bias").unsqueeze(1), ctx.param("value_weight"), s);
  // scores[b, i, j] = q[i, b] k[j, b] / sqrt(L)
  auto qt = q.t().unsqueeze(2), kt = k.t().unsqueeze(1);
  auto attention = torch::softmax(qt * kt / std::sqrt(static_cast<double>(L)), 2);
  auto out = torch::bmm(attention, v.t().unsqueeze(2)).squeeze(2);  // [B, L]
  return s + out.t();
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
  // The mask of each neuron's incoming connections, [n, L], from the plan
  // (a weight can be exactly zero while its connection exists).
  const std::vector<int64_t> pos = ctx.plan.dense_positions();
  auto mask = torch::zeros({n * L}, torch::TensorOptions().dtype(torch::kBool).device(s.device()))
                  .index_fill_(0, torch::tensor(pos, torch::kLong).to(s.device()), true)
                  .view({n, L});
  auto fan_in = mask.sum(1).clamp_min(1).to(s.scalar_type());  // [n]
  // x[b, n, i] = s[i, b] for every neuron; projections per neuron.
  auto x = s.t().unsqueeze(1).expand({B, n, L});
  auto project = [&](const char* m) {
    // [B, n, L] = einsum("nij,bnj->bni") + bias
    return torch::einsum("nij,bnj->bni", {ctx.param(std::string(m) + "_weight"), x}) +
           ctx.param(std::string(m) + "_bias");
  };
  auto q = project("query"), k = project("key"), v = project("value");
  auto scores = q.unsqueeze(3) * k.unsqueeze(2) / torch::sqrt(fan_in).view({1, n, 1, 1});  // [B, n, L, L]
  // The dtype's lowest finite value, not -inf: a neuron without inputs then
  // gets a finite (uniform) row, zeroed below, and no NaN reaches backward.
  scores = scores.masked_fill(~mask.view({1, n, 1, L}), lowest_value(s.scalar_type()));
  auto attention = torch::softmax(scores, 3);
  attention = attention.masked_fill(~mask.view({1, n, 1, L}), 0.0);
  auto attended = x + torch::matmul(attention, v.unsqueeze(3)).squeeze(3);  // [B, n, L]
  // z[n, b] = Σ_i w[n, i] attended[b, n, i] + bias[n]
  return (attended * weights.unsqueeze(0)).sum(2).t() + bias;
}

std::optional<double> NeuronSelfAttention::parameter_count(const Topology& topology) const {
  return attention_values(topology, true);
}

void NeuronSelfAttention::script_replace_affine(ScriptWriter& script, const LevelContext& ctx,
                                                const torch::Tensor& weights, const std::string& bias) const {
  const int64_t size = weights.size(0), width = weights.size(1);
  const std::vector<int64_t> pos = ctx.plan.dense_positions();
  auto outside = torch::ones({size * width}, torch::kBool)
                     .index_fill_(0, torch::tensor(pos, torch::kLong), false)
                     .view({1, size, 1, width});
  auto fan_in = (~outside).sum(3).clamp_min(1).to(weights.scalar_type()).sqrt().view({1, size, 1, 1});
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
