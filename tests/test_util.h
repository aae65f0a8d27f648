#pragma once
// Shared helpers for the connex tests: random DAGs, finite differences, the
// toy data set, and an assertion that an expression throws a message.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "operation_entries.h"

#include "connex/connex.h"
#include "../apps/readme_network.h"
#include "file_io.h"
#include "optimizer_key.h"

namespace connex::testing {

// EXPECT that `statement` throws connex::Error whose message contains `needle`.
#define EXPECT_THROW_MSG(statement, needle)                                    \
  do {                                                                         \
    try {                                                                      \
      statement;                                                               \
      ADD_FAILURE() << "expected connex::Error containing: " << (needle);      \
    } catch (const connex::Error& e) {                                         \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)         \
          << "message: " << e.what() << "\nexpected to contain: " << (needle); \
    }                                                                          \
  } while (0)

// The 12-neuron network of Connex's README.
inline GraphSpec readme_spec() { return apps::readme_graph(); }

// A fresh temporary directory, removed with everything in it at scope exit.
struct TempDir {
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "connex_test_XXXXXX").string();
    path = mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path) / name).string(); }
  std::string path;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// A checkpoint's bytes with the header rewritten through `change`, re-sealed with a valid checksum.
inline std::string reseal_checkpoint(const std::string& file,
                                     const std::function<void(nlohmann::json&, uint32_t&)>& change) {
  uint32_t version;
  uint64_t header_size;
  std::memcpy(&version, file.data() + 8, 4);
  std::memcpy(&header_size, file.data() + 12, 8);
  auto header = nlohmann::json::parse(file.substr(20, header_size));
  const std::string data = file.substr(20 + header_size, file.size() - 8 - 20 - header_size);
  change(header, version);
  const std::string text = header.dump();
  std::string out = file.substr(0, 8);
  out.append(reinterpret_cast<const char*>(&version), 4);
  const uint64_t size = text.size();
  out.append(reinterpret_cast<const char*>(&size), 8);
  out += text + data;
  const uint64_t sum = fnv1a64(out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&sum), 8);
  return out;
}

// Every compiled field of two topologies: each neuron's label, role and
// level, the connection arrays and offsets, the outputs and their gather,
// and the level table. (Their specs are compared by the caller, as exactly
// as it needs.)
inline void expect_same_compiled_fields(const Topology& got, const Topology& want) {
  ASSERT_EQ(got.num_neurons(), want.num_neurons());
  ASSERT_EQ(got.num_inputs(), want.num_inputs());
  for (int64_t d = 0; d < want.num_neurons(); ++d) {
    ASSERT_EQ(got.label(d), want.label(d));
    ASSERT_EQ(got.role(d), want.role(d));
    ASSERT_EQ(got.level_of(d), want.level_of(d));
  }
  EXPECT_EQ(got.conn_source(), want.conn_source());
  EXPECT_EQ(got.conn_target(), want.conn_target());
  EXPECT_EQ(got.in_offsets(), want.in_offsets());
  EXPECT_EQ(got.out_offsets(), want.out_offsets());
  EXPECT_EQ(got.out_connections(), want.out_connections());
  EXPECT_EQ(got.out_targets(), want.out_targets());
  EXPECT_EQ(got.output_ids(), want.output_ids());
  auto same_gather = [](const GatherPlan& a, const GatherPlan& b) {
    ASSERT_EQ(a.size, b.size);
    ASSERT_EQ(a.order, b.order);
    ASSERT_EQ(a.segments.size(), b.segments.size());
    for (size_t k = 0; k < a.segments.size(); ++k) {
      EXPECT_EQ(a.segments[k].level, b.segments[k].level);
      EXPECT_EQ(a.segments[k].begin, b.segments[k].begin);
      EXPECT_EQ(a.segments[k].end, b.segments[k].end);
      EXPECT_EQ(a.segments[k].local, b.segments[k].local);
      EXPECT_EQ(a.segments[k].whole, b.segments[k].whole);
    }
  };
  same_gather(got.output_gather(), want.output_gather());
  ASSERT_EQ(got.levels().size(), want.levels().size());
  for (size_t l = 0; l < want.levels().size(); ++l) {
    const Level &a = got.levels()[l], &b = want.levels()[l];
    EXPECT_EQ(a.begin, b.begin);
    EXPECT_EQ(a.end, b.end);
    EXPECT_EQ(a.hidden_end, b.hidden_end);
    EXPECT_EQ(a.conn_begin, b.conn_begin);
    EXPECT_EQ(a.conn_end, b.conn_end);
    EXPECT_EQ(a.sources, b.sources);
    EXPECT_EQ(a.sources_before, b.sources_before);
    EXPECT_EQ(a.kernel, b.kernel);
    if (l > 0) {
      EXPECT_EQ(got.level_edges(l).source, want.level_edges(l).source);
      EXPECT_EQ(got.level_edges(l).target, want.level_edges(l).target);
    }
    same_gather(a.gather, b.gather);
  }
}

struct RandomDagOptions {
  int min_neurons = 4, max_neurons = 14;
  double edge_probability = 0.35;
  bool string_ids = false;
};

// A random valid GraphSpec: neurons shuffled, 1-3 inputs, 1-3 outputs, some
// isolated neurons possible; edges only go "forward" in a hidden order.
inline GraphSpec random_dag(std::mt19937_64& rng, const RandomDagOptions& opt = {}) {
  std::uniform_int_distribution<int> size_dist(opt.min_neurons, opt.max_neurons);
  const int n = size_dist(rng);
  const int n_in = std::uniform_int_distribution<int>(1, std::min(3, n - 2))(rng);
  const int n_out = std::uniform_int_distribution<int>(1, std::min(3, n - n_in - 1))(rng);
  std::vector<int> label(n);
  for (int i = 0; i < n; ++i) label[i] = i;
  std::shuffle(label.begin(), label.end(), rng);
  auto id = [&](int pos) { return opt.string_ids ? NeuronId("n" + std::to_string(label[pos])) : NeuronId(label[pos]); };
  // Inputs take the first positions, outputs the last: edges from lower to
  // higher positions never enter an input or leave an output.
  std::bernoulli_distribution edge(opt.edge_probability);
  std::vector<Edge> edges;
  for (int i = 0; i < n - n_out; ++i)
    for (int j = std::max(i + 1, n_in); j < n; ++j)
      if (edge(rng)) edges.emplace_back(id(i), id(j));
  std::vector<NeuronId> neurons, inputs, outputs;
  for (int i = 0; i < n; ++i) neurons.push_back(id(i));
  std::shuffle(neurons.begin(), neurons.end(), rng);
  for (int i = 0; i < n_in; ++i) inputs.push_back(id(i));
  for (int i = n - n_out; i < n; ++i) outputs.push_back(id(i));
  std::shuffle(inputs.begin(), inputs.end(), rng);
  std::shuffle(outputs.begin(), outputs.end(), rng);
  return GraphSpec(neurons, edges, inputs, outputs);
}

// The toy regression set of Connex's README: 250 points x in [0, 2π], y = (cos x, sin x).
// Copies `from`'s parameters into `to` (same names, any dtype), after
// drawing `from`'s adaptive-activation scales at random (away from their
// initial 1, of both signs), so that two paths are compared off the identity.
inline void copy_parameters_with_random_scales(NeuralNetwork& from, NeuralNetwork& to) {
  torch::NoGradGuard no_grad;
  auto into = to->named_parameters();
  for (auto& p : from->named_parameters()) {
    if (p.key().rfind("adaptive_activation.", 0) == 0 || p.key().rfind("topo_norm.", 0) == 0)
      p.value().copy_(torch::randn_like(p.value()));
    into[p.key()].copy_(p.value());
  }
}

inline std::pair<torch::Tensor, torch::Tensor> cos_sin_data(torch::Dtype dtype = torch::kFloat32) {
  auto x = torch::linspace(0, 2 * M_PI, 250, torch::kFloat64).unsqueeze(1);
  auto y = torch::cat({torch::cos(x), torch::sin(x)}, 1);
  return {x.to(dtype), y.to(dtype)};
}

// Adam's state of parameter `p`, which must have stepped.
inline torch::optim::AdamParamState& adam_state(const torch::optim::Optimizer& opt, const torch::Tensor& p) {
  return static_cast<torch::optim::AdamParamState&>(*opt.state().at(optimizer_state_key(p)));
}

inline double mse(const torch::Tensor& a, const torch::Tensor& b) { return torch::mse_loss(a, b).item<double>(); }

// Trains full-batch with Adam; returns {first loss, last loss}.
inline std::pair<double, double> train(NeuralNetwork& net, const torch::Tensor& x, const torch::Tensor& y, int epochs,
                                       double lr = 1e-3) {
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(lr));
  double first = 0, last = 0;
  for (int e = 0; e < epochs; ++e) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(net->forward(x), y);
    loss.backward();
    optimizer.step();
    if (e == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  return {first, torch::mse_loss(net->forward(x), y).item<double>()};
}

// The central difference (loss(entry + h) − loss(entry − h)) / 2h for entry i
// of `flat` (a flat view of a double parameter's data); the entry is restored.
inline double central_difference(torch::Tensor flat, int64_t i, const std::function<torch::Tensor()>& loss,
                                 double h = 1e-6) {
  torch::NoGradGuard no_grad;
  const double orig = flat[i].item<double>();
  flat[i] = orig + h;
  const double up = loss().item<double>();
  flat[i] = orig - h;
  const double down = loss().item<double>();
  flat[i] = orig;
  return (up - down) / (2 * h);
}

// The worst gradient of `net` (double) against central differences with step
// h, over every parameter (up to `max_checks` entries of each, the flat
// weight and bias sampled whole rather than level by level): the public
// check_gradients() with tolerance |difference| ≤ 1e-3 + |numeric|, so the
// ratio returned reads as a relative error with a floor of 1e-3.
inline double max_gradient_error(NeuralNetwork& net, const torch::Tensor& x, int max_checks = 64, double h = 1e-6) {
  return check_gradients(
             *net, [&](const torch::Tensor& v) { return net->forward(v); }, x,
             GradientCheckOptions().step(h).atol(1e-3).rtol(1).entries_per_tensor(max_checks).check_input(false))
      .ratio;
}

// max_gradient_error() at h = 1e-6 or, where that is past 1e-6, at h = 1e-5:
// rounding leaves a central difference an error of about eps·|L| / h, which
// can pass the bound where the loss is large and a gradient small; a wrong
// gradient improves with no h.
inline double refined_gradient_error(NeuralNetwork& net, const torch::Tensor& x, int max_checks = 64) {
  const double error = max_gradient_error(net, x, max_checks);
  return error > 1e-6 ? std::min(error, max_gradient_error(net, x, max_checks, 1e-5)) : error;
}

// Every technique/operation parameter entry of `after` whose keys all exist in
// `before` equals the old entry exactly. Returns the number of entries compared.
inline int64_t expect_operation_parameters_survive(const NeuralNetwork& before, const NeuralNetwork& after) {
  int64_t compared = 0;
  for_each_surviving_operation_entry(
      before, after, [&](const std::string& operation, const std::string& name, int64_t, double now, double was) {
        EXPECT_EQ(now, was) << operation << "." << name;
        ++compared;
      });
  return compared;
}

}  // namespace connex::testing
