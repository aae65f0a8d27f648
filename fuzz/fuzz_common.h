#pragma once
// Shared pieces of the connex fuzz targets (fuzz_*.cpp).
//
// Policy: connex reports every rejected input as connex::Error. A target
// catches exactly that; any other exception escaping, a failed invariant
// (FUZZ_CHECK), a crash or a sanitizer report aborts, which libFuzzer (and
// the replay driver, replay_main.cpp) reports as a finding.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "connex/connex.h"

#define FUZZ_CHECK(cond, ...)                                                                \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                     \
      std::fprintf(stderr, "\n");                                                            \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace connex_fuzz {

using nlohmann::json;

// Runs `body`; connex::Error is an accepted outcome (returns false), any
// other exception is a finding.
template <typename F>
bool guarded(const char* what, F&& body) {
  try {
    body();
    return true;
  } catch (const connex::Error&) {
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: an exception other than connex::Error escaped: %s\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "%s: a non-std exception escaped\n", what);
    std::abort();
  }
}

// Parses bytes as JSON; nullopt-like (discarded) on a syntax error, which is
// nlohmann's business, not connex's.
inline bool parse_json(const uint8_t* data, size_t size, json& out) {
  try {
    out = json::parse(data, data + size);
    return true;
  } catch (const json::exception&) {
    return false;
  }
}

// ---------------------------------------------------------------- caps
//
// An input is skipped (not an error) when the network it describes would be
// larger than these caps, so that one input cannot allocate gigabytes: a
// prebuilt MLP with width 1e4 is a legal request, just not a useful fuzz
// input. With either attention technique on, parameters grow as L² (topo) or
// n·L² (neuron) per level, so the caps are smaller.
constexpr double kMaxNeurons = 256, kMaxConnections = 4096;
constexpr double kMaxNeuronsAttention = 48, kMaxConnectionsAttention = 512;

inline bool flag_on(const json& options, const char* key) {
  return options.is_object() && options.contains(key) && options.at(key).is_boolean() && options.at(key).get<bool>();
}

// `graph` is a config's "/graph" (GraphSpec JSON or prebuilt), `options` its
// "/options" (may be null). Counts what the JSON declares, before connex sees it.
inline bool within_caps(const json& graph, const json& options) {
  const bool attention = flag_on(options, "use_topo_self_attention") || flag_on(options, "use_neuron_self_attention");
  const double max_neurons = attention ? kMaxNeuronsAttention : kMaxNeurons;
  const double max_connections = attention ? kMaxConnectionsAttention : kMaxConnections;
  if (!graph.is_object()) return true;  // connex rejects it
  if (graph.contains("prebuilt")) {
    double size[4];
    const char* keys[4] = {"input_size", "output_size", "width", "depth"};
    for (int k = 0; k < 4; ++k) {
      if (!graph.contains(keys[k]) || !graph.at(keys[k]).is_number()) return true;  // connex rejects it
      size[k] = std::abs(graph.at(keys[k]).get<double>());
    }
    // Neurons, and connections as if every layer fed every later one (DenseMLP; bounds MLP too).
    const double neurons = size[0] + size[1] + size[2] * size[3];
    return neurons <= max_neurons && neurons * neurons / 2 <= max_connections * 8;
  }
  double ids = 0, connections = 0;
  auto count_array = [](const json& g, const char* key) -> double {
    return g.contains(key) && g.at(key).is_array() ? static_cast<double>(g.at(key).size()) : 0.0;
  };
  ids += count_array(graph, "neurons");
  connections += count_array(graph, "edges");
  if (graph.contains("adjacency") && graph.at("adjacency").is_object())
    for (const auto& [key, targets] : graph.at("adjacency").items()) {
      ids += 1;
      if (targets.is_array()) connections += static_cast<double>(targets.size());
    }
  ids += 2 * connections;
  return ids <= 2 * max_neurons && connections <= max_connections;
}

// ------------------------------------------------------- forward checks

inline double dtype_max(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat64:
      return 1.7976931348623157e308;
    case torch::kFloat16:
      return 65504.0;
    default:
      return 3.4028234663852886e38;  // float32, bfloat16
  }
}

inline double max_abs(const torch::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0.0;
  return t.detach().abs().max().to(torch::kFloat64).item<double>();
}

// A sound upper bound on every value a forward pass on inputs in [-1, 1]
// computes in eval mode (no dropout), including the intermediate attention
// scores and squared deviations of the norm. Built-in activations satisfy
// |act(z)| <= |z| + 1. Overflow in this double arithmetic gives inf, which
// only disables the finiteness check.
inline double eval_value_bound(const connex::NeuralNetwork& net) {
  // A checkpoint may hold NaN or inf parameters (a diverged training): no claim then.
  for (const auto& p : net->parameters())
    if (p.numel() > 0 && !torch::isfinite(p.detach()).all().item<bool>()) return INFINITY;
  const connex::Topology& topo = net->topology();
  double p_norm = 0, p_topo = 0, p_neuron = 0, p_adaptive = 0;
  bool norm = false, topo_att = false, neuron_att = false, adaptive = false;
  for (size_t k = 0; k < net->operations().size(); ++k) {
    const std::string name = net->operations()[k]->name();
    double p = 0;
    for (const auto& t : net->operation_parameters(k).parameters()) p = std::max(p, max_abs(t));
    if (name == "topo_norm")
      norm = true, p_norm = p;
    else if (name == "topo_self_attention")
      topo_att = true, p_topo = p;
    else if (name == "neuron_self_attention")
      neuron_att = true, p_neuron = p;
    else if (name == "adaptive_activation")
      adaptive = true, p_adaptive = p;
    else
      return INFINITY;  // unknown operation: no claim
  }
  auto weights = net->weight_tensor().detach().to(torch::kFloat64).abs().contiguous();
  auto biases = net->bias_tensor().detach().to(torch::kFloat64).abs().contiguous();
  const double* w = weights.data_ptr<double>();
  const double* b = biases.data_ptr<double>();
  std::vector<double> bound(topo.num_neurons(), 0.0);
  for (int64_t d = 0; d < topo.num_inputs(); ++d) bound[d] = 1.0;
  double worst = 1.0;
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const connex::Level& level = topo.levels()[l];
    const double L = static_cast<double>(level.sources.size());
    double bs = 0;
    for (int64_t s : level.sources) bs = std::max(bs, bound[s]);
    bool collective = false;  // sources transformed as a whole: use bs for each
    if (norm && L > 0) {
      worst = std::max(worst, 4 * bs * bs);
      bs = p_norm * std::max(bs, std::sqrt(L)) + p_norm;
      collective = true;
    }
    if (topo_att && L > 0) {
      const double q = L * p_topo * bs + p_topo;
      worst = std::max(worst, q * q);
      bs = bs + q;
      collective = true;
    }
    for (int64_t d = level.begin; d < level.end; ++d) {
      double z = b[topo.bias_index(d)];
      double att = bs;
      if (neuron_att) {
        const double q = L * p_neuron * bs + p_neuron;
        worst = std::max(worst, q * q);
        att = bs + q;
      }
      const auto& offsets = topo.in_offsets();
      for (int64_t c = offsets[d]; c < offsets[d + 1]; ++c)
        z += w[c] * ((collective || neuron_att) ? att : bound[topo.conn_source()[c]]);
      if (d < level.hidden_end) z = adaptive ? p_adaptive * (p_adaptive * z + 1) : z + 1;
      bound[d] = z;
      worst = std::max(worst, z);
    }
  }
  double out = 0;
  for (int64_t d : topo.output_ids()) out = std::max(out, bound[d]);
  const std::string transform = net->options().output_transformation().name();
  if (transform == "log_softmax")
    out = 2 * out + std::log(static_cast<double>(topo.output_ids().size()) + 1) + 1;
  else if (transform == "softmax")
    out = 1;
  else if (transform != "identity")
    return INFINITY;
  return std::max(worst, out);
}

// Forward in eval mode on a small batch in [-1, 1] (and, with `single`, on
// one sample): output shape and dtype always; finiteness when
// eval_value_bound shows that no value can overflow the dtype (computed only
// when an output is not finite: it is the slow part).
inline void check_forward(connex::NeuralNetwork& net, const char* what, bool single = true) {
  torch::NoGradGuard no_grad;
  const bool was_training = net->is_training();
  net->eval();
  const int64_t n_in = net->num_inputs(), n_out = net->num_outputs();
  const auto dtype = net->options().dtype();
  constexpr int64_t kBatch = 3;
  auto x = torch::linspace(-1.0, 1.0, kBatch * n_in, torch::kFloat64).view({kBatch, n_in}).to(dtype);
  auto y = net->forward(x);
  FUZZ_CHECK(y.dim() == 2 && y.size(0) == kBatch && y.size(1) == n_out, "%s: forward gave shape %s for %lld outputs",
             what, c10::str(y.sizes()).c_str(), static_cast<long long>(n_out));
  FUZZ_CHECK(y.scalar_type() == dtype, "%s: forward gave dtype %s, network dtype %s", what,
             c10::toString(y.scalar_type()), c10::toString(dtype));
  bool finite = torch::isfinite(y).all().item<bool>();
  if (single) {
    auto y1 = net->forward(x[0]);
    FUZZ_CHECK(y1.dim() == 1 && y1.size(0) == n_out, "%s: single-sample forward gave shape %s", what,
               c10::str(y1.sizes()).c_str());
    finite = finite && torch::isfinite(y1).all().item<bool>();
  }
  if (!finite) {
    const double bound = eval_value_bound(net);
    FUZZ_CHECK(bound > dtype_max(dtype) * 1e-4, "%s: non-finite output although every value is bounded by %g", what,
               bound);
  }
  if (was_training) net->train();
}

// Training-mode forward and backward (dropout, autograd, the fused kernel's
// backward): only that nothing but connex::Error escapes and shapes hold.
inline void check_backward(connex::NeuralNetwork& net, const char* what) {
  const int64_t n_in = net->num_inputs();
  net->train();
  auto x = torch::linspace(-1.0, 1.0, 2 * n_in, torch::kFloat64).view({2, n_in}).to(net->options().dtype());
  auto y = net->forward(x);
  FUZZ_CHECK(y.size(0) == 2 && y.size(1) == net->num_outputs(), "%s: training forward gave shape %s", what,
             c10::str(y.sizes()).c_str());
  y.to(torch::kFloat64).sum().backward();
  net->zero_grad();
}

}  // namespace connex_fuzz
