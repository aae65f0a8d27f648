// Backpropagated gradients against central finite differences, in double.
#include <array>
#include <map>
#include <set>

#include <ATen/CPUGeneratorImpl.h>

#include "fused_plan.h"
#include "test_util.h"
#include "vector_clones.h"

using namespace connex;
using namespace connex::testing;

namespace {

// The fused kernel's vector widths this processor runs, widest first: tests
// run each (an AVX-512 machine runs all three instruction sets' code).
std::vector<int> kernel_widths() {
  std::vector<int> widths;
  for (int bytes : {64, 32, 16})
    if (bytes <= widest_vector_bytes()) widths.push_back(bytes);
  return widths;
}

// Runs the kernel in `bytes`-wide vectors for a scope, the processor's own after it.
struct KernelWidth {
  explicit KernelWidth(int bytes) { set_fused_kernel_lanes(bytes); }
  ~KernelWidth() { set_fused_kernel_lanes(0); }
  KernelWidth(const KernelWidth&) = delete;
  KernelWidth& operator=(const KernelWidth&) = delete;
};

// check(name, gradient, reference gradient) for each parameter of `net` and
// its namesake in `reference`; a parameter without a gradient counts as zeros.
template <typename Check>
void for_each_gradient_pair(NeuralNetwork& net, NeuralNetwork& reference, Check check) {
  auto on_reference = reference->named_parameters();
  for (const auto& p : net->named_parameters()) {
    const auto& q = on_reference[p.key()];
    check(p.key(), p.value().grad().defined() ? p.value().grad() : torch::zeros_like(p.value()),
          q.grad().defined() ? q.grad() : torch::zeros_like(q));
  }
}

}  // namespace

TEST(Gradients, RandomDagsEveryActivationMatchFiniteDifferences) {
  std::mt19937_64 rng(2024);
  const std::vector<std::string> activations = {"relu", "gelu", "silu", "tanh", "sigmoid", "identity"};
  double worst = 0.0;
  for (const auto& act : activations) {
    for (int trial = 0; trial < 50; ++trial) {
      auto spec = random_dag(rng, {4, 16, 0.35, trial % 2 == 0});
      NeuralNetwork net(spec, NeuralNetworkOptions()
                                  .dtype(torch::kFloat64)
                                  .hidden_activation(act)
                                  .output_transformation(trial % 5 == 0 ? "softmax" : "identity")
                                  .seed(trial));
      auto x = torch::randn({3, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      const double err = max_gradient_error(net, x);
      worst = std::max(worst, err);
      ASSERT_LE(err, 1e-6) << act << " trial " << trial;
    }
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
}

TEST(Gradients, EveryKernelPathMatchesFiniteDifferences) {
  std::mt19937_64 rng(99);
  for (auto kernel : {LevelKernel::DenseView, LevelKernel::DenseScatter, LevelKernel::EdgeList}) {
    for (int trial = 0; trial < 15; ++trial) {
      auto spec = random_dag(rng, {5, 20, 0.4});
      NeuralNetwork net(spec, NeuralNetworkOptions()
                                  .dtype(torch::kFloat64)
                                  .hidden_activation("tanh")
                                  .execution(ExecutionOptions().force_kernel(kernel)));
      auto x = torch::randn({4, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      ASSERT_LE(max_gradient_error(net, x), 1e-6) << kernel_name(kernel);
    }
  }
}

TEST(Gradients, DenseMlpMatchesFiniteDifferences) {
  auto net = nn::DenseMLP(2, 3, 6, 3, NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("gelu"));
  EXPECT_LE(max_gradient_error(net, torch::randn({5, 2}, torch::kFloat64)), 1e-6);
}

// Every second run of the activations with adaptive activations on (a·σ(b·z)
// per hidden neuron), and half the trials with topo norm, both of which
// the fused kernel applies itself and the per-level path as operations.
TEST(Gradients, FusedKernelAndBatchPathAgreeAndMatchFiniteDifferences) {
  std::mt19937_64 rng(31);
  const std::vector<std::string> activations = {"relu", "gelu", "silu", "tanh", "sigmoid", "identity"};
  const std::vector<int> widths = kernel_widths();
  for (int trial = 0; trial < 72; ++trial) {
    const KernelWidth width(widths[static_cast<size_t>(trial / 5) % widths.size()]);
    auto spec = random_dag(rng, {4, 24, 0.3, trial % 2 == 1});
    const auto& act = activations[trial % activations.size()];
    const bool adaptive = (trial / activations.size()) % 2 == 1, norm = trial % 4 >= 2;
    SCOPED_TRACE(std::string(adaptive ? "adaptive" : "") + (norm ? " topo norm" : ""));
    auto options = NeuralNetworkOptions()
                       .dtype(torch::kFloat64)
                       .hidden_activation(act)
                       .seed(trial)
                       .use_adaptive_activations(adaptive)
                       .use_topo_norm(norm);
    NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
    NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    ASSERT_TRUE(fused->uses_fused_kernel());
    ASSERT_FALSE(levels->uses_fused_kernel());
    // (a, b) away from (1, 1), a of both signs, gamma and beta away from (1, 0), the same in both networks.
    copy_parameters_with_random_scales(fused, levels);
    // Batches below, past and well past a vector of doubles (the scalar tail, both, several vectors;
    // 8, 4 or 2 doubles by width), a tile of eight vectors, and several tiles with vectors and a tail left.
    const int64_t batch = std::array<int64_t, 6>{5, 13, 37, 64, 150, 200}[(trial / 12) % 6];
    auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto y_fused = fused->forward(x), y_levels = levels->forward(x);
    ASSERT_TRUE(torch::allclose(y_fused, y_levels, 1e-12, 1e-12)) << act << " trial " << trial;
    auto r = torch::randn_like(y_fused);
    (y_fused * r).sum().backward();
    (y_levels * r).sum().backward();
    // A parameter no output depends on may have no gradient at all on the batch path.
    auto grad = [](const torch::Tensor& p) { return p.grad().defined() ? p.grad() : torch::zeros_like(p); };
    auto on_levels = levels->named_parameters();
    for (const auto& p : fused->named_parameters())
      ASSERT_TRUE(torch::allclose(grad(p.value()), grad(on_levels[p.key()]), 1e-10, 1e-10))
          << p.key() << " " << act << " trial " << trial;
    // Finite differences on batches up to 64: over more samples the summed loss leaves them a rounding
    // error near the bound (the two paths agree to 1e-10 there, above). Not for relu under topo norm: a
    // step in one value moves every normed value of its levels, and some across relu's kink.
    if (trial % 3 == 0 && batch <= 64 && !(norm && act == "relu"))
      ASSERT_LE(refined_gradient_error(fused, x), 1e-6) << act << " trial " << trial;
  }
}

// The kernel runs its batch loops in vectors of 64, 32 or 16 bytes (16, 8
// or 4 floats; each instruction set's registers) with a scalar tail, its
// sums in tiles of up to eight vectors held in registers: float32 networks
// at batch sizes around one vector's and past eight, random in- and
// out-degrees, with and without adaptive activations, against the per-level
// path in float64 on the same parameters, in every width the processor runs.
// With topo norm, against the per-level path in float32, as a whole tensor:
// where a level's sources have almost no variance in a sample (relu's zeros,
// two sources normed to ±1) its norm amplifies rounding up to 1/sqrt(eps)
// = 316 times, so float32 and float64 part there by more than 1e-4.
TEST(Gradients, FusedKernelLanesAgreeInFloat32) {
  std::mt19937_64 rng(5);
  int trial = 0;
  for (int bytes : kernel_widths())
    for (const char* act : {"relu", "tanh", "identity"})
      for (int operations : {0, 1, 2}) {  // none, adaptive activations, topo norm (with them for tanh)
        const bool adaptive = operations == 1 || (operations == 2 && std::string(act) == "tanh"),
                   norm = operations == 2;
        const KernelWidth width(bytes);
        SCOPED_TRACE(std::string(act) + (adaptive ? ", adaptive" : "") + (norm ? ", topo norm" : "") + ", " +
                     std::to_string(bytes) + "-byte vectors");
        auto spec = random_dag(rng, {20, 40, 0.4});
        auto options = NeuralNetworkOptions()
                           .dtype(torch::kFloat32)
                           .hidden_activation(act)
                           .seed(++trial)
                           .use_adaptive_activations(adaptive)
                           .use_topo_norm(norm);
        const auto reference_dtype = norm ? torch::kFloat32 : torch::kFloat64;
        NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
        NeuralNetwork reference(
            spec, NeuralNetworkOptions(options).dtype(reference_dtype).execution(ExecutionOptions().fused(false)));
        ASSERT_TRUE(fused->uses_fused_kernel());
        copy_parameters_with_random_scales(fused, reference);
        auto close = [norm](const torch::Tensor& a, const torch::Tensor& b) {
          const auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
          if (!norm) return torch::allclose(a64, b64, 1e-4, 1e-4);
          return (a64 - b64).abs().max().item<double>() <= 1e-3 * (1 + b64.abs().max().item<double>());
        };
        auto gap = [](const torch::Tensor& a, const torch::Tensor& b) {
          const auto b64 = b.to(torch::kFloat64);
          return "largest difference " + std::to_string((a.to(torch::kFloat64) - b64).abs().max().item<double>()) +
                 " among values up to " + std::to_string(b64.abs().max().item<double>());
        };
        for (int64_t batch : {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 64, 128, 200, 300}) {
          SCOPED_TRACE("batch " + std::to_string(batch));
          auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
          auto xf = x.to(torch::kFloat32).requires_grad_(true), xr = x.to(reference_dtype).requires_grad_(true);
          fused->zero_grad();
          reference->zero_grad();
          auto y = fused->forward(xf), y_ref = reference->forward(xr);
          auto r = torch::randn_like(y_ref);
          (y * r.to(torch::kFloat32)).sum().backward();
          (y_ref * r).sum().backward();
          EXPECT_TRUE(close(y, y_ref)) << gap(y, y_ref);
          EXPECT_TRUE(close(xf.grad(), xr.grad())) << gap(xf.grad(), xr.grad());
          for_each_gradient_pair(fused, reference,
                                 [&](const std::string& name, const torch::Tensor& g, const torch::Tensor& g_ref) {
                                   EXPECT_TRUE(close(g, g_ref)) << name << ": " << gap(g, g_ref);
                                 });
        }
      }
}

// A NaN input is NaN wherever it reaches, on the fused kernel as in torch:
// relu(NaN) is NaN (the kernel's max(z, 0) made it 0, so a NaN row gave a
// finite output), and relu's gradient passes at NaN (threshold_backward).
// Against the per-level path on connection lists (a matrix product would
// spread 0 · NaN along rows the kernel never reads), in every vector width,
// with and without adaptive activations. The graphs have no dead neurons: a
// level nobody reads gets no gradient on the per-level path (autograd never
// visits it), while the kernel's 0 · act'(NaN) is NaN there.
TEST(Gradients, FusedKernelCarriesNaNAsTorchDoes) {
  std::mt19937_64 rng(8);
  int trial = 0;
  for (int bytes : kernel_widths())
    for (const char* act : {"relu", "tanh", "identity"})
      for (bool adaptive : {false, true}) {
        const KernelWidth width(bytes);
        SCOPED_TRACE(std::string(act) + (adaptive ? ", adaptive" : "") + ", " + std::to_string(bytes) +
                     "-byte vectors");
        auto spec = remove_dead_neurons(NeuralNetwork(random_dag(rng, {6, 30, 0.4}))).network->spec();
        auto options = NeuralNetworkOptions()
                           .dtype(torch::kFloat64)
                           .hidden_activation(act)
                           .seed(++trial)
                           .use_adaptive_activations(adaptive);
        NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
        NeuralNetwork reference(spec, NeuralNetworkOptions(options).execution(
                                          ExecutionOptions().fused(false).force_kernel(LevelKernel::EdgeList)));
        ASSERT_TRUE(fused->uses_fused_kernel());
        copy_parameters_with_random_scales(fused, reference);
        for (int64_t batch : {3, 40}) {
          auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
          x[1][trial % x.size(1)] = std::nan("");  // one input of a row
          x[2].fill_(std::nan(""));                // a whole row
          auto xf = x.clone().requires_grad_(true), xr = x.clone().requires_grad_(true);
          fused->zero_grad();
          reference->zero_grad();
          auto y = fused->forward(xf), y_ref = reference->forward(xr);
          ASSERT_TRUE(y[2].isnan().any().item<bool>()) << "the NaN row reached no output";
          EXPECT_TRUE(torch::allclose(y, y_ref, 1e-10, 1e-10, /*equal_nan=*/true)) << y << y_ref;
          auto r = torch::randn_like(y_ref);
          (y * r).sum().backward();
          (y_ref * r).sum().backward();
          EXPECT_TRUE(torch::allclose(xf.grad(), xr.grad(), 1e-10, 1e-10, true)) << xf.grad() << xr.grad();
          for_each_gradient_pair(fused, reference,
                                 [](const std::string& name, const torch::Tensor& g, const torch::Tensor& g_ref) {
                                   EXPECT_TRUE(torch::allclose(g, g_ref, 1e-10, 1e-10, true))
                                       << name << ": " << (g.isnan() != g_ref.isnan()).sum().item<int64_t>()
                                       << " entries NaN on one path only";
                                 });
        }
      }
}

// Only the widths the kernel has, and none wider than the processor's.
TEST(Gradients, KernelWidthRefusesWhatItCannotRun) {
  EXPECT_THROW_MSG(set_fused_kernel_lanes(24), "set_fused_kernel_lanes(): expected 0, 16, 32 or 64 bytes, got 24");
  EXPECT_EQ(fused_kernel_lanes(), widest_vector_bytes());
  if (widest_vector_bytes() < 64)
    EXPECT_THROW_MSG(set_fused_kernel_lanes(64), "set_fused_kernel_lanes(): this processor's vectors are at most");
  EXPECT_EQ(fused_kernel_lanes(), widest_vector_bytes());
}

// An operation that names activation scales but does not replace the
// activation keeps the per-level path (which would not scale), so both
// paths compute the same function.
TEST(Gradients, ScalesWithoutAReplacedActivationKeepThePerLevelPath) {
  struct NamesScalesOnly : LevelOperation {
    std::string name() const override { return "names_scales_only"; }
    OperationParameters build(const Topology& t, torch::Dtype dtype, at::Generator&) const override {
      std::vector<NeuronId> rows;
      for (int64_t d = t.num_inputs(); d < t.num_neurons(); ++d) rows.push_back(t.label(d));
      const int64_t n = static_cast<int64_t>(rows.size());
      return {{"a", {torch::full({n, 1}, 2.0, dtype), {rows, std::nullopt}}},
              {"b", {torch::full({n, 1}, 3.0, dtype), {rows, std::nullopt}}}};
    }
    std::optional<std::pair<std::string, std::string>> fused_activation_scales() const override {
      return std::pair<std::string, std::string>{"a", "b"};
    }
  };
  auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").seed(3);
  NeuralNetwork plain(readme_spec(), options);
  NeuralNetwork with_op(readme_spec(), NeuralNetworkOptions(options).operations({std::make_shared<NamesScalesOnly>()}));
  EXPECT_FALSE(with_op->uses_fused_kernel());
  auto x = torch::randn({4, 1}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(with_op->forward(x), plain->forward(x), 1e-12, 1e-12));
}

// Second derivatives: a backward with create_graph through the fused
// kernel takes its formula's gradients (torch operations), so a gradient
// penalty's gradient equals the per-level path's, on random DAGs (levels
// whose sources are not one run of ids), with and without adaptive
// activations and topo norm; with an input that wants no gradient too.
TEST(Gradients, FusedKernelGivesSecondDerivatives) {
  std::mt19937_64 rng(17);
  for (int trial = 0; trial < 12; ++trial) {
    const bool adaptive = trial % 2 == 1, norm = trial % 4 >= 2, x_wants = trial % 3 != 2;
    SCOPED_TRACE("trial " + std::to_string(trial));
    auto spec = random_dag(rng, {4, 16, 0.35, trial % 2 == 0});
    auto options = NeuralNetworkOptions()
                       .dtype(torch::kFloat64)
                       .hidden_activation(trial % 3 == 0 ? "gelu" : "tanh")
                       .seed(trial)
                       .use_adaptive_activations(adaptive)
                       .use_topo_norm(norm);
    NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
    NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    ASSERT_TRUE(fused->uses_fused_kernel());
    copy_parameters_with_random_scales(fused, levels);
    const auto x0 = torch::randn({5, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto penalty_gradients = [&](NeuralNetwork& net) {
      net->zero_grad();
      auto x = x0.clone().requires_grad_(x_wants);
      auto y = net->forward(x);
      auto r = torch::linspace(-1, 1, y.numel(), torch::kFloat64).view(y.sizes());
      std::vector<torch::Tensor> wrt = net->parameters();
      if (x_wants) wrt.push_back(x);
      auto g = torch::autograd::grad({(y * r).sum()}, wrt, {}, true, true, true);
      torch::Tensor penalty = torch::zeros({}, torch::kFloat64);
      for (const auto& gi : g)
        if (gi.defined()) penalty = penalty + gi.pow(2).sum();
      penalty.backward();
      std::vector<torch::Tensor> out;
      for (const auto& p : net->parameters()) out.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
      if (x_wants) out.push_back(x.grad());
      return out;
    };
    const auto got = penalty_gradients(fused), want = penalty_gradients(levels);
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k)
      EXPECT_TRUE(torch::allclose(got[k], want[k], 1e-10, 1e-10)) << "tensor " << k;
  }
}

TEST(Gradients, FusedKernelPassesGradientToTheInput) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions()
                                       .dtype(torch::kFloat64)
                                       .hidden_activation("tanh")
                                       .execution(ExecutionOptions().fused(true)));
  auto x = torch::randn({4, 1}, torch::kFloat64).requires_grad_(true);
  net->forward(x).sum().backward();
  NeuralNetwork ref(readme_spec(), NeuralNetworkOptions()
                                       .dtype(torch::kFloat64)
                                       .hidden_activation("tanh")
                                       .execution(ExecutionOptions().fused(false)));
  auto x2 = x.detach().clone().requires_grad_(true);
  ref->forward(x2).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));
}

TEST(Gradients, DropoutInTrainingLeavesTheFusedKernel) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().dropout_p(0.2));
  net->train();
  EXPECT_FALSE(net->uses_fused_kernel());
  net->eval();
  EXPECT_TRUE(net->uses_fused_kernel());
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions()
                                                    .execution(ExecutionOptions().fused(true))
                                                    .use_adaptive_activations(true)
                                                    .use_topo_self_attention(true)),
                   "NeuralNetwork(): fused(true) needs a built-in activation other than softmax, float32 or float64, "
                   "no operations but adaptive activations and topo norm, and no forced kernel");
}

// Graphs of each shape the planner tells apart, in double.
std::vector<std::pair<std::string, GraphSpec>> shaped_graphs(std::mt19937_64& rng) {
  std::vector<std::pair<std::string, GraphSpec>> graphs;
  auto ids = [](int first, int last) {
    std::vector<NeuronId> v;
    for (int i = first; i < last; ++i) v.emplace_back(i);
    return v;
  };
  {  // a single-input chain 0 -> 1 -> ... -> 24
    std::vector<Edge> edges;
    for (int i = 0; i + 1 < 25; ++i) edges.emplace_back(i, i + 1);
    graphs.emplace_back("chain", GraphSpec(ids(0, 25), edges, ids(0, 1), ids(24, 25)));
  }
  {  // wide: 3 inputs -> 40 hidden, complete (one dense level) -> 2 outputs from every hidden
    std::vector<Edge> edges;
    for (int h = 3; h < 43; ++h) {
      for (int i = 0; i < 3; ++i) edges.emplace_back(i, h);
      edges.emplace_back(h, 43);
      edges.emplace_back(h, 44);
    }
    graphs.emplace_back("wide complete", GraphSpec(ids(0, 45), edges, ids(0, 3), ids(43, 45)));
  }
  {  // dense bipartite layers with 30% of the edges missing, and skip connections
    std::vector<Edge> edges;
    std::bernoulli_distribution keep(0.7);
    const std::vector<int> layer = {0, 4, 16, 28, 31};  // inputs 0-3, hidden 4-15 and 16-27, outputs 28-30
    for (size_t l = 1; l + 1 < layer.size(); ++l)
      for (int v = layer[l]; v < layer[l + 1]; ++v)
        for (int u = 0; u < layer[l]; ++u)
          if (keep(rng) || u == layer[l] - 1) edges.emplace_back(u, v);
    graphs.emplace_back("dense bipartite", GraphSpec(ids(0, 31), edges, ids(0, 4), ids(28, 31)));
  }
  graphs.emplace_back("mixed", random_dag(rng, {30, 60, 0.15}));
  return graphs;
}

TEST(Gradients, EveryKernelPathAgreesOnGraphsOfEveryShape) {
  std::mt19937_64 rng(77);
  const std::vector<std::string> activations = {"tanh", "relu", "gelu", "sigmoid", "silu"};
  const std::vector<int> widths = kernel_widths();
  int shape_index = 0;
  for (const auto& [shape, spec] : shaped_graphs(rng)) {
    const KernelWidth width(widths[static_cast<size_t>(shape_index) % widths.size()]);
    const auto& act = activations[shape_index++ % activations.size()];
    auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation(act).seed(shape_index);
    std::vector<std::pair<std::string, NeuralNetwork>> paths;
    paths.emplace_back("fused",
                       NeuralNetwork(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true))));
    paths.emplace_back("planner's per-level choice",
                       NeuralNetwork(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false))));
    paths.emplace_back("per-level path, no dense path",
                       NeuralNetwork(spec, NeuralNetworkOptions(options).execution(
                                               ExecutionOptions().fused(false).dense_path(false))));
    for (auto kernel : {LevelKernel::DenseView, LevelKernel::DenseScatter, LevelKernel::EdgeList})
      paths.emplace_back(
          kernel_name(kernel),
          NeuralNetwork(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().force_kernel(kernel))));
    ASSERT_TRUE(paths[0].second->uses_fused_kernel());
    // Batches below, at and past a vector of doubles in each of the fused kernel's widths.
    for (int64_t batch : {1, 8, 13, 64}) {
      SCOPED_TRACE(shape + ", " + act + ", batch " + std::to_string(batch));
      auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      torch::Tensor y_ref, r, gx_ref, gw_ref, gb_ref;
      for (auto& [path, net] : paths) {
        net->zero_grad();
        auto xi = x.clone().requires_grad_(true);
        auto y = net->forward(xi);
        if (!r.defined()) r = torch::randn_like(y);
        (y * r).sum().backward();
        // A parameter no output depends on may have no gradient at all on the per-level path.
        auto grad = [](const torch::Tensor& p) { return p.grad().defined() ? p.grad() : torch::zeros_like(p); };
        auto gw = grad(net->weight_tensor()), gb = grad(net->bias_tensor()), gx = grad(xi);
        if (!y_ref.defined()) {
          y_ref = y.detach(), gx_ref = gx, gw_ref = gw, gb_ref = gb;
          continue;
        }
        EXPECT_TRUE(torch::allclose(y, y_ref, 1e-12, 1e-12)) << path;
        EXPECT_TRUE(torch::allclose(gx, gx_ref, 1e-10, 1e-10)) << path;
        EXPECT_TRUE(torch::allclose(gw, gw_ref, 1e-10, 1e-10)) << path;
        EXPECT_TRUE(torch::allclose(gb, gb_ref, 1e-10, 1e-10)) << path;
      }
      if (batch == 13) EXPECT_LE(max_gradient_error(paths[0].second, x), 1e-6);
    }
  }
}

// A level wide enough that the fused kernel splits it between threads, in
// forward and in backward, against the per-level path; float32 with the
// identity activation (derivative from the output) as well as double; with
// and without topo norm (whose normed rows are split in backward).
TEST(Gradients, FusedKernelAgreesWhenALevelIsSplitBetweenThreads) {
  const int previous = torch::get_num_threads();
  torch::set_num_threads(2);
  std::mt19937_64 rng(9);
  // 64 inputs: the input gradient's rows are shared out too, 16 a task.
  std::vector<Edge> edges;
  std::uniform_int_distribution<int> input(0, 63);
  for (int h = 64; h < 3064; ++h) {
    for (int k = 0; k < 4; ++k) edges.emplace_back(input(rng), h);
    edges.emplace_back(h, 3064 + h % 2);
  }
  std::vector<NeuronId> inputs, outputs{3064, 3065};
  for (int i = 0; i < 64; ++i) inputs.emplace_back(i);
  const auto spec = GraphSpec::from_edges(edges, inputs, outputs);
  // Batch 200: the rows (3066 × 200 values) exceed the 2 MiB from which the kernel prefetches them.
  for (int64_t batch : {16, 200})
    for (int bytes : kernel_widths())
      for (auto [dtype, act, tolerance, norm] :
           {std::tuple{torch::kFloat64, "tanh", 1e-10, false}, std::tuple{torch::kFloat32, "identity", 1e-4, false},
            std::tuple{torch::kFloat64, "tanh", 1e-10, true}}) {
        const KernelWidth width(bytes);
        SCOPED_TRACE(std::string(act) + (norm ? ", topo norm" : "") + ", batch " + std::to_string(batch) + ", " +
                     std::to_string(bytes) + " bytes");
        auto options = NeuralNetworkOptions().dtype(dtype).hidden_activation(act).seed(3).use_topo_norm(norm);
        NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
        NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
        ASSERT_TRUE(fused->uses_fused_kernel());
        auto x = torch::randn({batch, 64}, dtype);
        auto xf = x.clone().requires_grad_(true), xl = x.clone().requires_grad_(true);
        auto yf = fused->forward(xf), yl = levels->forward(xl);
        EXPECT_TRUE(torch::allclose(yf, yl, tolerance, tolerance));
        auto r = torch::randn_like(yf);
        (yf * r).sum().backward();
        (yl * r).sum().backward();
        EXPECT_TRUE(torch::allclose(xf.grad(), xl.grad(), tolerance, tolerance));
        EXPECT_TRUE(
            torch::allclose(fused->weight_tensor().grad(), levels->weight_tensor().grad(), tolerance, tolerance));
        EXPECT_TRUE(torch::allclose(fused->bias_tensor().grad(), levels->bias_tensor().grad(), tolerance, tolerance));

        // Each row is summed by one thread in a fixed order, so the split
        // changes no bit: one thread gives the same values and gradients.
        const auto weight_grad = fused->weight_tensor().grad().clone(), bias_grad = fused->bias_tensor().grad().clone();
        torch::set_num_threads(1);
        auto x1 = x.clone().requires_grad_(true);
        auto y1 = fused->forward(x1);
        fused->zero_grad();
        (y1 * r).sum().backward();
        torch::set_num_threads(2);
        EXPECT_TRUE(torch::equal(y1, yf));
        EXPECT_TRUE(torch::equal(x1.grad(), xf.grad()));
        EXPECT_TRUE(torch::equal(fused->weight_tensor().grad(), weight_grad));
        EXPECT_TRUE(torch::equal(fused->bias_tensor().grad(), bias_grad));
      }
  torch::set_num_threads(previous);
}

// Past 1 MiB of weights (131,072 in double) backward gathers them into
// outgoing order and scatters their gradients back; below, with its tiles,
// it reads and writes them in place (tests above). The same values and gradients as the
// per-level path, and for x too, in every width.
TEST(Gradients, FusedKernelAgreesPastTheWeightsItReadsInPlace) {
  const auto spec = nn::sparse_layered_spec({64, 1024, 1024, 10}, nn::SparseLayersOptions().density(0.27).seed(4));
  for (bool norm : {false, true}) {  // topo norm's backward reads the weights in its rows' order
    SCOPED_TRACE(norm ? "topo norm" : "plain");
    auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").seed(5).use_topo_norm(norm);
    NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
    NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    ASSERT_TRUE(fused->uses_fused_kernel());
    ASSERT_GT(fused->num_connections() * 8, 2 << 20);  // past 2 MiB too
    // Batch 64: eight vectors of doubles, where the AVX-512 code runs its tiles
    // and only the weights' size sends backward to the two passes.
    for (int64_t batch : {5, 64}) {
      auto x = torch::randn({batch, 64}, torch::kFloat64);
      auto xl = x.clone().requires_grad_(true);
      levels->zero_grad();
      auto yl = levels->forward(xl);
      auto r = torch::randn_like(yl);
      (yl * r).sum().backward();
      for (int bytes : kernel_widths()) {
        const KernelWidth width(bytes);
        SCOPED_TRACE(std::to_string(bytes) + "-byte vectors, batch " + std::to_string(batch));
        fused->zero_grad();
        auto xf = x.clone().requires_grad_(true);
        auto yf = fused->forward(xf);
        EXPECT_TRUE(torch::allclose(yf, yl, 1e-10, 1e-10));
        (yf * r).sum().backward();
        EXPECT_TRUE(torch::allclose(xf.grad(), xl.grad(), 1e-10, 1e-10));
        EXPECT_TRUE(torch::allclose(fused->weight_tensor().grad(), levels->weight_tensor().grad(), 1e-10, 1e-10));
        EXPECT_TRUE(torch::allclose(fused->bias_tensor().grad(), levels->bias_tensor().grad(), 1e-10, 1e-10));
        if (norm)
          for (const char* name : {"topo_norm.gamma", "topo_norm.beta"})
            EXPECT_TRUE(torch::allclose(fused->named_parameters()[name].grad(), levels->named_parameters()[name].grad(),
                                        1e-10, 1e-10))
                << name;
      }
    }
  }
}

// Topo norm in the fused kernel on levels of every shape: one reading no
// source (its neuron has no incoming connection), one reading one source
// (not standardised), one reading two (±1), sources that are one run of ids
// and sources that are not; an empty batch, a single sample, a batch past
// the vectors; values, gradients and second derivatives against the
// per-level path.
TEST(Gradients, FusedKernelNormsLevelsOfEveryShape) {
  // 1 has no incoming connection (level 1 reads nothing); 2 reads 0 and 1 (a run); 4 reads 2 alone; the
  // outputs read 0, 2 and 4 (not a run) and 1 and 3.
  const GraphSpec spec({0, 1, 2, 3, 4, 5}, {{0, 2}, {1, 2}, {2, 4}, {0, 3}, {2, 3}, {4, 3}, {1, 5}, {3, 5}}, {0}, {5});
  auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("gelu").use_topo_norm(true);
  NeuralNetwork fused(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(true)));
  NeuralNetwork levels(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
  ASSERT_TRUE(fused->uses_fused_kernel());
  std::set<size_t> widths;
  for (size_t l = 1; l < fused->topology().levels().size(); ++l)
    widths.insert(fused->topology().levels()[l].sources.size());
  EXPECT_EQ(widths, (std::set<size_t>{0, 1, 2, 3}));
  copy_parameters_with_random_scales(fused, levels);
  for (int64_t batch : {0, 1, 70}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const auto x0 = torch::randn({batch, 1}, torch::kFloat64);
    auto run = [&](NeuralNetwork& net) {
      net->zero_grad();
      auto x = x0.clone().requires_grad_(true);
      auto y = net->forward(x);
      auto g = torch::autograd::grad({y.pow(3).sum()}, {x}, {}, true, true)[0];
      (y.sum() + g.pow(2).sum()).backward();
      std::vector<torch::Tensor> out{y.detach(), x.grad()};
      for (const auto& p : net->parameters()) out.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
      return out;
    };
    const auto got = run(fused), want = run(levels);
    for (size_t k = 0; k < got.size(); ++k) EXPECT_TRUE(torch::allclose(got[k], want[k], 1e-12, 1e-12)) << k;
  }
  // The first-order backward alone (the kernel's, not the formula's).
  auto x = torch::randn({9, 1}, torch::kFloat64);
  fused->zero_grad();
  levels->zero_grad();
  fused->forward(x).pow(2).sum().backward();
  levels->forward(x).pow(2).sum().backward();
  auto on_levels = levels->named_parameters();
  for (const auto& p : fused->named_parameters())
    EXPECT_TRUE(torch::allclose(p.value().grad(), on_levels[p.key()].grad(), 1e-12, 1e-12)) << p.key();
}

// The fused kernel takes torch's intra-op thread count unless told its own
// (its pool: tests/test_work_share.cpp shows the threads running).
TEST(Gradients, FusedKernelThreadsFollowTorchUnlessSet) {
  const int previous = torch::get_num_threads();
  torch::set_num_threads(2);
  EXPECT_EQ(fused_kernel_threads(), 2);
  torch::set_num_threads(1);
  EXPECT_EQ(fused_kernel_threads(), 1);
  set_fused_kernel_threads(3);
  EXPECT_EQ(fused_kernel_threads(), 3);
  EXPECT_THROW_MSG(set_fused_kernel_threads(-1), "set_fused_kernel_threads(): expected 0 to 1024 threads, got -1");
  EXPECT_EQ(fused_kernel_threads(), 3);
  set_fused_kernel_threads(0);
  EXPECT_EQ(fused_kernel_threads(), 1);
  torch::set_num_threads(previous);
}

TEST(Gradients, FusedKernelBackwardOnAnEmptyBatch) {
  for (int bytes : kernel_widths())
    for (bool norm : {false, true}) {
      const KernelWidth width(bytes);
      SCOPED_TRACE(std::to_string(bytes) + "-byte vectors" + (norm ? ", topo norm" : ""));
      NeuralNetwork net(
          readme_spec(),
          NeuralNetworkOptions().dtype(torch::kFloat64).use_topo_norm(norm).execution(ExecutionOptions().fused(true)));
      auto x = torch::zeros({0, 1}, torch::kFloat64).requires_grad_(true);
      auto y = net->forward(x);
      EXPECT_EQ(y.sizes(), (std::vector<int64_t>{0, 2}));
      y.sum().backward();
      EXPECT_EQ(x.grad().sizes(), x.sizes());
      EXPECT_EQ(net->weight_tensor().grad().abs().sum().item<double>(), 0.0);
      EXPECT_EQ(net->bias_tensor().grad().abs().sum().item<double>(), 0.0);
    }
}

// ------------------------------------------------------------ dense path

// MLP- and DenseMLP-shaped networks (one with a single input: a level of
// one source, which topo norm does not standardise), and one whose first
// level mixes hidden neurons with an output, its outputs listed out of dense
// order.
std::vector<std::pair<std::string, GraphSpec>> dense_path_graphs() {
  std::vector<std::pair<std::string, GraphSpec>> graphs;
  graphs.emplace_back("mlp", nn::mlp_spec(3, 2, 7, 3));
  graphs.emplace_back("dense mlp", nn::dense_mlp_spec(2, 3, 5, 3));
  graphs.emplace_back("dense mlp, one input", nn::dense_mlp_spec(1, 2, 4, 2));
  // inputs 0, 1; hidden 2-5 and output 7 read both inputs; output 6 reads 2-5.
  std::vector<Edge> edges;
  for (int v : {2, 3, 4, 5, 7})
    for (int u : {0, 1}) edges.emplace_back(u, v);
  for (int u : {2, 3, 4, 5}) edges.emplace_back(u, 6);
  std::vector<NeuronId> ids;
  for (int i = 0; i < 8; ++i) ids.emplace_back(i);
  graphs.emplace_back("mixed level, outputs out of order", GraphSpec(ids, edges, {0, 1}, {6, 7}));
  return graphs;
}

// Values and gradients (of x, weight, bias and the operation's parameters)
// equal the per-level path's in double for every element-wise activation,
// alone, with topo norm and with topo self-attention (each run inside the
// path), and match finite differences.
TEST(Gradients, DensePathAgreesWithThePerLevelPathAndFiniteDifferences) {
  const std::vector<std::string> activations = {"relu", "gelu", "silu", "tanh", "sigmoid", "identity"};
  int trial = 0;
  for (const std::string operation : {"", "topo_norm", "topo_self_attention"})
    for (const auto& [shape, spec] : dense_path_graphs())
      for (const auto& act : activations) {
        SCOPED_TRACE(shape + ", " + act + ", " + operation);
        auto options = NeuralNetworkOptions()
                           .dtype(torch::kFloat64)
                           .hidden_activation(act)
                           .seed(++trial)
                           .use_topo_norm(operation == "topo_norm")
                           .use_topo_self_attention(operation == "topo_self_attention");
        NeuralNetwork dense(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
        NeuralNetwork levels(
            spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false).dense_path(false)));
        ASSERT_TRUE(dense->uses_dense_path());
        ASSERT_FALSE(levels->uses_dense_path());
        {  // gamma and beta away from (1, 0), the same in both networks; the attention's projections in every
           // other trial as they start (scores the kernel's expansion sums), else larger (summed exactly)
          torch::NoGradGuard no_grad;
          auto into = levels->named_parameters();
          const bool keep = operation == "topo_self_attention" && trial % 2 == 0;
          for (auto& p : dense->named_parameters()) {
            if (!operation.empty() && !keep && p.key().find(operation) != std::string::npos)
              p.value().copy_(torch::randn_like(p.value()));
            into[p.key()].copy_(p.value());
          }
        }
        for (int64_t batch : {1, 9}) {
          auto x = torch::randn({batch, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
          auto xd = x.clone().requires_grad_(true), xl = x.clone().requires_grad_(true);
          dense->zero_grad(), levels->zero_grad();
          auto yd = dense->forward(xd), yl = levels->forward(xl);
          ASSERT_TRUE(torch::allclose(yd, yl, 1e-12, 1e-12));
          auto r = torch::randn_like(yd);
          (yd * r).sum().backward();
          (yl * r).sum().backward();
          EXPECT_TRUE(torch::allclose(xd.grad(), xl.grad(), 1e-12, 1e-12));
          auto on_levels = levels->named_parameters();
          for (const auto& p : dense->named_parameters())
            EXPECT_TRUE(torch::allclose(p.value().grad(), on_levels[p.key()].grad(), 1e-11, 1e-11)) << p.key();
        }
        // A step of 1e-5: at 1e-6 the loss's rounding alone left the per-level
        // path too up to 1.3e-6 on these networks; at 1e-5 both are near 1e-8.
        EXPECT_LE(max_gradient_error(
                      dense, torch::randn({5, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64), 64, 1e-5),
                  1e-6);
      }
}

// A single sample, and float32 against the per-level path in float64.
TEST(Gradients, DensePathInFloat32AndOnASingleSample) {
  for (const auto& [shape, spec] : dense_path_graphs()) {
    SCOPED_TRACE(shape);
    auto options = NeuralNetworkOptions().hidden_activation("gelu").seed(3);
    NeuralNetwork dense(spec, options);
    NeuralNetwork levels(
        spec, NeuralNetworkOptions(options).dtype(torch::kFloat64).execution(ExecutionOptions().dense_path(false)));
    copy_parameters_with_random_scales(dense, levels);
    ASSERT_TRUE(dense->uses_dense_path() || dense->uses_fused_kernel());
    NeuralNetwork forced(spec, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    copy_parameters_with_random_scales(dense, forced);
    ASSERT_TRUE(forced->uses_dense_path());
    auto x = torch::randn({64, static_cast<int64_t>(spec.inputs().size())});
    auto y = forced->forward(x), y_ref = levels->forward(x.to(torch::kFloat64));
    EXPECT_TRUE(torch::allclose(y.to(torch::kFloat64), y_ref, 1e-5, 1e-5));
    y.sum().backward();
    y_ref.sum().backward();
    EXPECT_TRUE(torch::allclose(forced->weight_tensor().grad().to(torch::kFloat64), levels->weight_tensor().grad(),
                                1e-4, 1e-4));
    auto one = forced->forward(x[0]);
    EXPECT_EQ(one.dim(), 1);
    EXPECT_TRUE(torch::allclose(one, y[0], 1e-6, 1e-6));
  }
}

// create_graph: the dense path's gradients are differentiable again, as the
// per-level path's (a gradient penalty on the input).
TEST(Gradients, DensePathGivesSecondDerivatives) {
  for (const char* act : {"tanh", "relu", "gelu", "sigmoid"}) {
    SCOPED_TRACE(act);
    auto options = NeuralNetworkOptions()
                       .dtype(torch::kFloat64)
                       .hidden_activation(act)
                       .seed(5)
                       .use_topo_norm(std::string(act) == "gelu" || std::string(act) == "sigmoid")
                       .use_topo_self_attention(std::string(act) == "tanh");
    auto dense = nn::DenseMLP(2, 2, 6, 2, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false)));
    auto levels = nn::DenseMLP(
        2, 2, 6, 2, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false).dense_path(false)));
    ASSERT_TRUE(dense->uses_dense_path());
    auto x = torch::randn({4, 2}, torch::kFloat64);
    for (auto* net : {&dense, &levels}) {
      auto xi = x.clone().requires_grad_(true);
      auto g = torch::autograd::grad({(*net)->forward(xi).pow(2).sum()}, {xi}, {}, true, true)[0];
      g.pow(2).sum().backward();
    }
    EXPECT_GT(dense->weight_tensor().grad().abs().sum().item<double>(), 0.0);
    EXPECT_TRUE(torch::allclose(dense->weight_tensor().grad(), levels->weight_tensor().grad(), 1e-10, 1e-10));
    EXPECT_TRUE(torch::allclose(dense->bias_tensor().grad(), levels->bias_tensor().grad(), 1e-10, 1e-10));
  }
}

// When the dense path runs and when it does not.
TEST(Gradients, DensePathIsTakenWhereItApplies) {
  auto mlp = nn::MLP(1, 2, 128, 4);  // too many connections for the fused kernel's small-network rule
  EXPECT_FALSE(mlp->uses_fused_kernel());
  EXPECT_TRUE(mlp->uses_dense_path());
  // Dropout runs on the per-level path while training.
  auto with_dropout = nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().dropout_p(0.1));
  EXPECT_FALSE(with_dropout->uses_dense_path());
  with_dropout->eval();
  EXPECT_TRUE(with_dropout->uses_dense_path());
  // A custom activation, a technique, bfloat16 on the CPU: the per-level path.
  auto custom = nn::MLP(
      1, 2, 128, 2, NeuralNetworkOptions().hidden_activation(TensorFunction([](const torch::Tensor& z) { return z; })));
  EXPECT_FALSE(custom->uses_dense_path());
  EXPECT_TRUE(nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().use_topo_self_attention(true))->uses_dense_path());
  auto attentions =
      nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().use_topo_self_attention(true).use_neuron_self_attention(true));
  EXPECT_FALSE(attentions->uses_dense_path());
  auto normed_and_adaptive =
      nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().use_topo_norm(true).use_adaptive_activations(true));
  EXPECT_FALSE(normed_and_adaptive->uses_dense_path());
  EXPECT_TRUE(nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().use_topo_norm(true))->uses_dense_path());
  // Topo norm, alone or with adaptive activations, runs in the fused kernel where the plain network would.
  EXPECT_TRUE(nn::DenseMLP(1, 2, 32, 3, NeuralNetworkOptions().use_topo_norm(true))->uses_fused_kernel());
  EXPECT_TRUE(nn::DenseMLP(1, 2, 32, 3, NeuralNetworkOptions().use_topo_norm(true).use_adaptive_activations(true))
                  ->uses_fused_kernel());
  EXPECT_FALSE(nn::DenseMLP(1, 2, 32, 3, NeuralNetworkOptions().use_topo_norm(true).use_topo_self_attention(true))
                   ->uses_fused_kernel());
  auto half = nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().dtype(torch::kBFloat16));
  EXPECT_FALSE(half->uses_dense_path());
  // dense_path(true) takes the path where the fused kernel would run, is a
  // preference where the structure does not allow it (a sparse graph, an
  // edit that makes a level incomplete), and refuses the options that exclude it.
  std::mt19937_64 rng(3);
  NeuralNetwork sparse(random_dag(rng, {4, 20, 0.3}),
                       NeuralNetworkOptions().execution(ExecutionOptions().dense_path(true)));
  EXPECT_FALSE(sparse->uses_dense_path());
  auto forced = nn::MLP(2, 1, 8, 2, NeuralNetworkOptions().execution(ExecutionOptions().dense_path(true)));
  ASSERT_TRUE(forced->uses_dense_path());
  const auto& ft = forced->topology();
  auto edited = connex::remove_connections(forced, {{ft.label(ft.conn_source()[0]), ft.label(ft.conn_target()[0])}});
  EXPECT_FALSE(edited->uses_dense_path());
  EXPECT_TRUE(edited->uses_fused_kernel());
  auto small = nn::DenseMLP(1, 2, 8, 2, NeuralNetworkOptions().execution(ExecutionOptions().dense_path(true)));
  EXPECT_FALSE(small->uses_fused_kernel());
  EXPECT_TRUE(small->uses_dense_path());
  EXPECT_THROW_MSG(
      nn::DenseMLP(1, 2, 8, 2, NeuralNetworkOptions().execution(ExecutionOptions().dense_path(true).fused(true))),
      "NeuralNetwork(): fused(true) and dense_path(true) exclude each other");
  EXPECT_THROW_MSG(nn::DenseMLP(1, 2, 8, 2,
                                NeuralNetworkOptions().execution(
                                    ExecutionOptions().dense_path(true).force_kernel(LevelKernel::DenseView))),
                   "NeuralNetwork(): dense_path(true) and force_kernel() exclude each other");
  EXPECT_FALSE(
      nn::MLP(1, 2, 128, 2, NeuralNetworkOptions().execution(ExecutionOptions().force_kernel(LevelKernel::DenseView)))
          ->uses_dense_path());
  // An empty batch gives an empty output and zero gradients.
  auto none = mlp->forward(torch::zeros({0, 1}));
  EXPECT_EQ(none.size(0), 0);
  EXPECT_EQ(none.size(1), 2);
  none.sum().backward();
  EXPECT_EQ(mlp->weight_tensor().grad().abs().sum().item<double>(), 0.0);
  mlp->zero_grad();
  // A traced forward takes the per-level path and fills the trace.
  LevelTrace trace;
  auto y = mlp->forward_traced(torch::randn({3, 1}), trace);
  y.sum().backward();
  ASSERT_EQ(trace.preactivations.size(), mlp->topology().levels().size());
  EXPECT_TRUE(trace.preactivations[1].grad().defined());
}

// Without gradients (NoGradGuard), with only some parameters asking for
// them, and two backwards through one graph (retain_graph).
TEST(Gradients, DensePathUnderNoGradPartialGradientsAndRetainedGraphs) {
  auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("silu").use_topo_norm(true);
  auto dense = nn::DenseMLP(2, 2, 5, 2, NeuralNetworkOptions(options).execution(ExecutionOptions().dense_path(true)));
  auto levels = nn::DenseMLP(
      2, 2, 5, 2, NeuralNetworkOptions(options).execution(ExecutionOptions().fused(false).dense_path(false)));
  ASSERT_TRUE(dense->uses_dense_path());
  auto x = torch::randn({7, 2}, torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    auto y = dense->forward(x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(torch::allclose(y, levels->forward(x), 1e-12, 1e-12));
  }
  dense->weight_tensor().requires_grad_(false);
  levels->weight_tensor().requires_grad_(false);
  auto yd = dense->forward(x), yl = levels->forward(x);
  yd.sum().backward({}, /*retain_graph=*/true);
  yd.sum().backward();
  yl.sum().backward({}, true);
  yl.sum().backward();
  EXPECT_FALSE(dense->weight_tensor().grad().defined());
  auto on_levels = levels->named_parameters();
  for (const auto& p : dense->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    EXPECT_TRUE(torch::allclose(p.value().grad(), on_levels[p.key()].grad(), 1e-11, 1e-11)) << p.key();
  }
}

// Frozen connections keep a zero gradient on the dense path (the hooks act on
// the flat gradient, whichever path made it).
TEST(Gradients, DensePathKeepsFrozenConnectionsFrozen) {
  auto net = nn::MLP(2, 1, 4, 2, NeuralNetworkOptions().dtype(torch::kFloat64));
  ASSERT_TRUE(net->uses_dense_path() || net->uses_fused_kernel());
  NeuralNetwork dense(net->spec(), NeuralNetworkOptions(net->options()).execution(ExecutionOptions().fused(false)));
  ASSERT_TRUE(dense->uses_dense_path());
  const auto& t = dense->topology();
  const Edge frozen{t.label(t.conn_source()[5]), t.label(t.conn_target()[5])};
  dense->freeze({frozen});
  dense->forward(torch::randn({6, 2}, torch::kFloat64)).sum().backward();
  EXPECT_EQ(dense->weight_tensor().grad()[5].item<double>(), 0.0);
  EXPECT_GT(dense->weight_tensor().grad().abs().sum().item<double>(), 0.0);
}

// ---- check_gradients(): the public gradient check -------------------------

namespace {

// y = g · z with a backward that doubles g's gradient when `wrong` (a bug an
// operation's author could write) and is right otherwise.
struct ScaleFunction : torch::autograd::Function<ScaleFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& g, const torch::Tensor& z,
                               bool wrong) {
    ctx->save_for_backward({g, z});
    ctx->saved_data["wrong"] = wrong;
    return g * z;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad) {
    const auto saved = ctx->get_saved_variables();
    const double factor = ctx->saved_data["wrong"].toBool() ? 2.0 : 1.0;
    auto grad_g = (factor * grad[0] * saved[1]).sum(1, /*keepdim=*/true);
    return {grad_g, grad[0] * saved[0], torch::Tensor()};
  }
};

// A per-neuron gain through ScaleFunction.
class CheckedGain : public LevelOperation {
 public:
  explicit CheckedGain(bool wrong) : wrong_(wrong) {}
  std::string name() const override { return "gain"; }
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator&) const override {
    std::vector<NeuronId> rows;
    for (int64_t d = topology.num_inputs(); d < topology.num_neurons(); ++d) rows.push_back(topology.label(d));
    return {{"g",
             {torch::linspace(0.5, 1.5, static_cast<int64_t>(rows.size()), dtype).unsqueeze(1), {rows, std::nullopt}}}};
  }
  torch::Tensor on_preactivation(const LevelContext& ctx, const torch::Tensor& z) const override {
    auto g = ctx.params.get("g").narrow(0, ctx.topology.bias_index(ctx.plan.begin), z.size(0));
    return ScaleFunction::apply(g, z, wrong_);
  }
  bool depends_on_level() const override { return false; }

 private:
  bool wrong_;
};

// Two inputs, hidden 2 (level 1) and 3 (level 2), outputs 4 and 5.
GraphSpec gain_graph() {
  return GraphSpec::from_adjacency({{0, {2, 5}}, {1, {2}}, {2, {3, 4}}, {3, {4}}}, {0, 1}, {4, 5});
}

NeuralNetwork gained_network(bool wrong, torch::Dtype dtype = torch::kFloat64) {
  return NeuralNetwork(gain_graph(), NeuralNetworkOptions().hidden_activation("tanh").dtype(dtype).seed(3).operations(
                                         {std::make_shared<CheckedGain>(wrong)}));
}

}  // namespace

TEST(GradientCheck, PassesOnARightBackwardAndLeavesEverythingAsItWas) {
  auto net = gained_network(false);
  const auto x = torch::tensor({{0.4, -0.2}, {1.1, 0.7}, {-0.6, 0.3}}, torch::kFloat64);
  net->forward(x).sum().backward();  // gradients the check must not disturb
  std::vector<torch::Tensor> values, grads;
  int64_t entries = x.numel();
  for (const auto& p : net->parameters()) {
    values.push_back(p.detach().clone());
    grads.push_back(p.grad().clone());
    entries += p.numel();
  }
  torch::manual_seed(7);
  const auto expected_draw = torch::randn({4});
  torch::manual_seed(7);

  const auto check = check_gradients(net, x, GradientCheckOptions().entries_per_tensor(0));
  EXPECT_TRUE(check.passed) << check.summary();
  EXPECT_EQ(check.entries_checked, entries);  // every entry of every parameter and of the input
  EXPECT_EQ(check.entries_failed, 0);
  EXPECT_LT(check.ratio, 1.0);
  EXPECT_NE(check.summary().find("check_gradients(): passed, " + std::to_string(entries) + " entries"),
            std::string::npos)
      << check.summary();
  EXPECT_TRUE(torch::equal(torch::randn({4}), expected_draw));  // torch's generator untouched
  const auto after = net->parameters();
  for (size_t k = 0; k < after.size(); ++k) {
    EXPECT_TRUE(torch::equal(after[k], values[k])) << k;
    EXPECT_TRUE(torch::equal(after[k].grad(), grads[k])) << k;
  }
  // The fused kernel's gradients, the input's included, pass too.
  NeuralNetwork fused(gain_graph(), NeuralNetworkOptions()
                                        .dtype(torch::kFloat64)
                                        .hidden_activation("tanh")
                                        .execution(ExecutionOptions().fused(true)));
  ASSERT_TRUE(fused->uses_fused_kernel());
  const auto on_fused = check_gradients(fused, x);
  EXPECT_TRUE(on_fused.passed) << on_fused.summary();
  EXPECT_EQ(on_fused.entries_checked, fused->num_parameters() + x.numel());
}

TEST(GradientCheck, FindsAWrongBackwardAndNamesTheEntry) {
  auto net = gained_network(true);
  const auto x = torch::tensor({{0.4, -0.2}, {1.1, 0.7}}, torch::kFloat64);
  const auto check = check_gradients(net, x);
  ASSERT_FALSE(check.passed);
  EXPECT_EQ(check.tensor, "gain.g");
  EXPECT_GE(check.entries_failed, 1);
  // The wrong backward doubles the gain's gradient: analytic = 2 × numeric.
  EXPECT_NEAR(check.analytic / check.numeric, 2.0, 1e-6);
  EXPECT_GT(check.ratio, 1.0);
  EXPECT_NE(check.summary().find("failed at "), std::string::npos) << check.summary();
  EXPECT_NE(check.summary().find("\"gain.g\"[" + std::to_string(check.entry) + "]"), std::string::npos);
  // Only the gain fails, and the summary lists it with its count.
  for (const auto& t : check.tensors)
    EXPECT_EQ(t.entries_failed > 0, t.tensor == "gain.g") << t.tensor << " " << t.entries_failed;
  EXPECT_NE(check.summary().find(fmt::format("entries (gain.g {} of 4); worst", check.entries_failed)),
            std::string::npos)
      << check.summary();

  // The input's gradient, of any module and function: d(x³)/dx given as 2x² is 2/3 of the truth.
  struct WrongCube : torch::autograd::Function<WrongCube> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& v) {
      ctx->save_for_backward({v});
      return v * v * v;
    }
    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::tensor_list grad) {
      const auto v = ctx->get_saved_variables()[0];
      return {grad[0] * 2 * v * v};
    }
  };
  torch::nn::Module none;
  const auto cube = check_gradients(
      none, [](const torch::Tensor& v) { return WrongCube::apply(v); },
      torch::tensor({0.5, -1.5, 2.0}, torch::kFloat64));
  ASSERT_FALSE(cube.passed);
  EXPECT_EQ(cube.tensor, "input");
  EXPECT_EQ(cube.entry, 2);  // the largest |x|: the largest difference
  EXPECT_NEAR(cube.numeric / cube.analytic, 1.5, 1e-6);
  EXPECT_EQ(cube.entries_checked, 3);
  EXPECT_EQ(cube.entries_failed, 3);
}

TEST(GradientCheck, SamplesEntriesEvenlyAndChecksPlainModules) {
  torch::nn::Linear linear(torch::nn::LinearOptions(40, 3));
  linear->to(torch::kFloat64);
  const auto x = torch::randn({5, 40}, torch::kFloat64);
  const auto check = check_gradients(
      *linear, [&](const torch::Tensor& v) { return linear(v); }, x, GradientCheckOptions().entries_per_tensor(10));
  EXPECT_TRUE(check.passed) << check.summary();
  EXPECT_EQ(check.entries_checked, 10 + 3 + 10);  // weight 120 → 10, bias 3 → all, input 200 → 10
  const auto parameters_only = check_gradients(
      *linear, [&](const torch::Tensor& v) { return linear(v); }, x,
      GradientCheckOptions().entries_per_tensor(1).check_input(false));
  EXPECT_EQ(parameters_only.entries_checked, 2);
}

TEST(GradientCheck, RefusesWhatItCannotCheck) {
  const auto x = torch::tensor({{0.4, -0.2}}, torch::kFloat64);
  auto single = gained_network(false, torch::kFloat32);
  EXPECT_THROW_MSG(check_gradients(single, x.to(torch::kFloat32)), "is float32; expected float64");
  auto net = gained_network(false);
  EXPECT_THROW_MSG(check_gradients(net, x.to(torch::kFloat32)),
                   "check_gradients(): the input is float32; expected float64, or check_input(false)");
  EXPECT_THROW_MSG(check_gradients(net, x, GradientCheckOptions().step(0)),
                   "check_gradients(): expected step > 0, got 0");
  EXPECT_THROW_MSG(check_gradients(net, x, GradientCheckOptions().rtol(-1)),
                   "check_gradients(): expected rtol >= 0, got -1");
  EXPECT_THROW_MSG(check_gradients(net, x, GradientCheckOptions().entries_per_tensor(-2)),
                   "check_gradients(): expected entries_per_tensor >= 0 (0: every entry), got -2");
  EXPECT_THROW_MSG(check_gradients(net, x, GradientCheckOptions().atol(0).rtol(0)),
                   "check_gradients(): atol and rtol are both 0");
  NeuralNetwork dropping(gain_graph(), NeuralNetworkOptions().dtype(torch::kFloat64).dropout_p(0.5));
  EXPECT_THROW_MSG(check_gradients(dropping, torch::randn({64, 2}, torch::kFloat64)),
                   "check_gradients(): the function draws from torch's random generator: it must be deterministic "
                   "(dropout in training mode? call eval() first)");
  dropping->eval();
  EXPECT_TRUE(check_gradients(dropping, torch::randn({64, 2}, torch::kFloat64)).passed);
}

// A network's flat weight and bias are sampled level by level: a narrow
// level is checked whole beside a wide one.
TEST(GradientCheck, SamplesANetworksWeightsLevelByLevel) {
  // 30 inputs, 40 hidden, 2 outputs: 1,200 weights into level 1, 80 into level 2.
  NeuralNetwork net(nn::mlp_spec(30, 2, 40, 1),
                    NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh"));
  ASSERT_EQ(net->topology().depth(), 2);
  const auto check =
      check_gradients(net, torch::randn({3, 30}, torch::kFloat64), GradientCheckOptions().entries_per_tensor(50));
  EXPECT_TRUE(check.passed) << check.summary();
  std::map<std::string, int64_t> checked;
  for (const auto& t : check.tensors) checked[t.tensor] = t.entries_checked;
  EXPECT_EQ(checked["weight (level 1)"], 50);
  EXPECT_EQ(checked["weight (level 2)"], 50);  // of its 80, where one sample of the whole 1,280 took 4
  EXPECT_EQ(checked["bias (level 1)"], 40);
  EXPECT_EQ(checked["bias (level 2)"], 2);
  EXPECT_EQ(checked["input"], 50);
}

// What a new user's trial of the check ran into: each refused with the check's own message, and
// nothing it touched left changed.
TEST(GradientCheck, RefusesRandomDrawsNonFiniteAndCoarseOutputsAndRestoresBuffers) {
  // Dropout of 2 %: two evaluations often draw the same mask; the draw itself is what is refused, every time.
  NeuralNetwork light(gain_graph(), NeuralNetworkOptions().dtype(torch::kFloat64).dropout_p(0.02));
  for (int seed = 0; seed < 20; ++seed) {
    torch::manual_seed(seed);
    const auto x = torch::randn({1, 2}, torch::kFloat64);
    const auto state = at::detail::getDefaultCPUGenerator().get_state();
    EXPECT_THROW_MSG(check_gradients(light, x), "check_gradients(): the function draws from torch's random generator");
    EXPECT_TRUE(torch::equal(at::detail::getDefaultCPUGenerator().get_state(), state));  // the draw undone
  }
  torch::nn::Linear linear(torch::nn::LinearOptions(3, 2));
  linear->to(torch::kFloat64);
  const auto x = torch::randn({4, 3}, torch::kFloat64);
  EXPECT_THROW_MSG(check_gradients(
                       *linear, [&](const torch::Tensor& v) { return linear(v) / 0.0; }, x),
                   "check_gradients(): the output is not finite at the given input");
  EXPECT_THROW_MSG(check_gradients(
                       *linear, [&](const torch::Tensor& v) { return linear(v).to(torch::kFloat32); }, x),
                   "check_gradients(): expected a float64 output, got float32");
  EXPECT_THROW_MSG(check_gradients(
                       *linear, [&](const torch::Tensor& v) { return linear(v).detach(); }, x),
                   "check_gradients(): autograd cannot differentiate the output (made under a NoGradGuard, or "
                   "detached?)");
  EXPECT_THROW_MSG(
      check_gradients(
          *linear, [&](const torch::Tensor& v) { return linear(v); }, torch::randn({4, 5}, torch::kFloat64)),
      "check_gradients(): the function failed at the given input: ");
  // A batch norm in training mode updates its running statistics at every evaluation: put back.
  torch::nn::Sequential norm(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4));
  norm->to(torch::kFloat64);
  std::vector<torch::Tensor> buffers;
  for (const auto& b : norm->buffers()) buffers.push_back(b.clone());
  const auto checked = check_gradients(
      *norm, [&](const torch::Tensor& v) { return norm->forward(v); }, x);
  EXPECT_TRUE(checked.passed) << checked.summary();
  const auto after = norm->buffers();
  ASSERT_EQ(after.size(), buffers.size());
  for (size_t k = 0; k < after.size(); ++k) EXPECT_TRUE(torch::equal(after[k], buffers[k])) << k;
}

// What a review found: a graph built before the check still backpropagates, a
// function that throws at a moved entry leaves it as it was and is named
// there, a transposed input and a caller's NoGradGuard are checked as any.
TEST(GradientCheck, LeavesGraphsAndParametersIntactWhateverHappens) {
  torch::nn::Linear linear(torch::nn::LinearOptions(3, 1));
  linear->to(torch::kFloat64);
  const auto f = [&](const torch::Tensor& v) { return linear(v); };
  const auto x = torch::randn({4, 3}, torch::kFloat64);
  const auto pending = linear(x).pow(2).sum();  // backward() comes after the check
  EXPECT_TRUE(check_gradients(*linear, f, x).passed);
  pending.backward();  // the check's writes went through data(): no version bumped
  EXPECT_TRUE(linear->weight.grad().defined());

  {
    torch::NoGradGuard no_grad;  // the caller's: the check turns autograd on for itself
    EXPECT_TRUE(check_gradients(*linear, f, x).passed);
  }
  const auto transposed = check_gradients(*linear, f, torch::randn({3, 4}, torch::kFloat64).t());
  EXPECT_TRUE(transposed.passed) << transposed.summary();

  torch::NoGradGuard no_grad;
  linear->weight.fill_(1.0);
  const auto refuses_above_one = [&](const torch::Tensor& v) {
    TORCH_CHECK(linear->weight[0][0].item<double>() <= 1.0, "weight above 1");
    return linear(v);
  };
  EXPECT_THROW_MSG(check_gradients(*linear, refuses_above_one, x, GradientCheckOptions().check_input(false)),
                   "check_gradients(): the function failed at \"weight\"[0] ± 1e-06: weight above 1");
  EXPECT_TRUE(torch::equal(linear->weight, torch::ones({1, 3}, torch::kFloat64)));  // put back
}

// A gradient given by a formula, against central differences of Σ f: right,
// wrong by a factor, and refused where it cannot be compared.
TEST(GradientCheck, ComparesAGradientFormulaWithCentralDifferences) {
  const auto x = torch::tensor({{0.3, -1.2, 2.0}, {0.5, 0.1, -0.7}}, torch::kFloat64);
  const auto cube = [](const torch::Tensor& v) { return v.pow(3).sum(1); };  // per sample, as a Lagrangian's value
  const auto right = check_gradient_formula(cube, 3 * x.pow(2), x, GradientCheckOptions().entries_per_tensor(0));
  EXPECT_TRUE(right.passed) << right.summary();
  EXPECT_EQ(right.entries_checked, 6);
  const auto wrong = check_gradient_formula(cube, 2 * x.pow(2), x);
  ASSERT_FALSE(wrong.passed);
  EXPECT_EQ(wrong.tensor, "x");
  EXPECT_EQ(wrong.entry, 2);  // x = 2: the largest difference, 3·4 against 2·4
  EXPECT_NEAR(wrong.numeric, 12.0, 1e-6);
  EXPECT_DOUBLE_EQ(wrong.analytic, 8.0);
  EXPECT_EQ(wrong.summary().rfind("check_gradient_formula(): failed at 6 of 6 entries (x 6 of 6); worst \"x\"[2]", 0),
            0u)
      << wrong.summary();
  EXPECT_THROW_MSG(check_gradient_formula(cube, x.narrow(1, 0, 2), x),
                   "check_gradient_formula(): expected a gradient of the input's shape [2, 3], got [2, 2]");
  EXPECT_THROW_MSG(check_gradient_formula(cube, x.to(torch::kFloat32), x),
                   "check_gradient_formula(): the gradient is float32; expected float64");
  EXPECT_THROW_MSG(check_gradient_formula(cube, 3 * x.pow(2), x, GradientCheckOptions().step(-1)),
                   "check_gradient_formula(): expected step > 0, got -1");
}
