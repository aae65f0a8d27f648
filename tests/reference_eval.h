#pragma once
// A deliberately naive scalar evaluator: one neuron at a time, by recursion
// over predecessors, in double. The tests compare the batched tensor forward
// pass against it.
#include <functional>
#include <map>
#include <unordered_map>
#include <vector>

#include "connex/connex.h"

namespace connex::testing {

inline std::vector<double> reference_forward(const NeuralNetwork& net, const std::vector<double>& x,
                                             const std::function<double(double)>& activation) {
  const GraphSpec& spec = net->spec();
  std::unordered_map<NeuronId, std::vector<NeuronId>, NeuronIdHash> preds;
  for (const auto& [u, v] : spec.edges()) preds[v].push_back(u);
  std::unordered_map<NeuronId, double, NeuronIdHash> value;
  for (size_t i = 0; i < spec.inputs().size(); ++i) value[spec.inputs()[i]] = x[i];
  std::function<double(const NeuronId&)> eval = [&](const NeuronId& n) -> double {
    auto it = value.find(n);
    if (it != value.end()) return it->second;
    double z = net->bias(n);
    for (const auto& p : preds[n]) z += net->weight(p, n) * eval(p);
    double v = spec.role(n) == Role::Output ? z : activation(z);
    value[n] = v;
    return v;
  };
  std::vector<double> out;
  for (const auto& o : spec.outputs()) out.push_back(eval(o));
  return out;
}

inline double gelu_exact(double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); }

inline std::function<double(double)> scalar_activation(const std::string& name) {
  if (name == "relu") return [](double z) { return z > 0 ? z : 0.0; };
  if (name == "gelu") return gelu_exact;
  if (name == "silu") return [](double z) { return z / (1.0 + std::exp(-z)); };
  if (name == "tanh") return [](double z) { return std::tanh(z); };
  if (name == "sigmoid") return [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
  return [](double z) { return z; };
}

}  // namespace connex::testing
