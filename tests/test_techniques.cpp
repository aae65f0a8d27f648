// The optional techniques and the per-level operation interface.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <torch/script.h>

#include "reference_eval.h"
#include "scalar_attention.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

namespace {

struct Flags {
  bool norm = false, topo_attention = false, neuron_attention = false, adaptive = false;
};

NeuralNetworkOptions with(Flags f, NeuralNetworkOptions o = NeuralNetworkOptions().dtype(torch::kFloat64)) {
  return o.use_topo_norm(f.norm)
      .use_topo_self_attention(f.topo_attention)
      .use_neuron_self_attention(f.neuron_attention)
      .use_adaptive_activations(f.adaptive);
}

// Parameters by full name, as nested vectors of doubles.
struct Params {
  explicit Params(const NeuralNetwork& net) {
    for (const auto& p : net->named_parameters())
      tensors[p.key()] = p.value().detach().to(torch::kFloat64).contiguous();
  }
  double at(const std::string& name, std::vector<int64_t> index) const {
    auto t = tensors.at(name);
    for (int64_t i : index) t = t[i];
    return t.item<double>();
  }
  std::map<std::string, torch::Tensor> tensors;
};

// The techniques written out as scalar loops, one neuron at a time.
std::vector<double> reference(const NeuralNetwork& net, const std::vector<double>& x, Flags f,
                              const std::function<double(double)>& act) {
  const Topology& topo = net->topology();
  const Params p(net);
  std::vector<double> value(topo.num_neurons());
  for (int64_t i = 0; i < topo.num_inputs(); ++i) value[i] = x[i];
  for (int64_t l = 1; l <= topo.depth(); ++l) {
    const Level& level = topo.levels()[l];
    const std::string lv = "level" + std::to_string(l) + "_";
    const size_t L = level.sources.size();
    std::vector<double> s(L);
    for (size_t i = 0; i < L; ++i) s[i] = value[level.sources[i]];
    if (f.norm && L > 0) {
      if (L > 1) {
        double mean = 0, var = 0;
        for (double v : s) mean += v / L;
        for (double v : s) var += (v - mean) * (v - mean) / L;
        for (double& v : s) v = (v - mean) / std::sqrt(var + 1e-5);
      }
      int64_t row = 0;  // every level's sources in turn
      for (int64_t k = 1; k < l; ++k) row += static_cast<int64_t>(topo.levels()[k].sources.size());
      for (size_t i = 0; i < L; ++i)
        s[i] = p.at("topo_norm.gamma", {row + int64_t(i), 0}) * s[i] + p.at("topo_norm.beta", {row + int64_t(i), 0});
    }
    if (f.topo_attention && L > 0) {
      const std::string a = "topo_self_attention." + lv;
      std::vector<double> q(L), k(L), v(L), out(L);
      for (size_t i = 0; i < L; ++i) {
        q[i] = p.at(a + "query_bias", {int64_t(i)});
        k[i] = p.at(a + "key_bias", {int64_t(i)});
        v[i] = p.at(a + "value_bias", {int64_t(i)});
        for (size_t j = 0; j < L; ++j) {
          q[i] += p.at(a + "query_weight", {int64_t(i), int64_t(j)}) * s[j];
          k[i] += p.at(a + "key_weight", {int64_t(i), int64_t(j)}) * s[j];
          v[i] += p.at(a + "value_weight", {int64_t(i), int64_t(j)}) * s[j];
        }
      }
      for (size_t i = 0; i < L; ++i) {
        double mx = -1e300, sum = 0;
        for (size_t j = 0; j < L; ++j) mx = std::max(mx, q[i] * k[j] / std::sqrt(double(L)));
        for (size_t j = 0; j < L; ++j) sum += std::exp(q[i] * k[j] / std::sqrt(double(L)) - mx);
        for (size_t j = 0; j < L; ++j) out[i] += std::exp(q[i] * k[j] / std::sqrt(double(L)) - mx) / sum * v[j];
      }
      for (size_t i = 0; i < L; ++i) s[i] += out[i];
    }
    for (int64_t d = level.begin; d < level.end; ++d) {
      const int64_t r = d - level.begin;
      std::vector<size_t> slots;  // this neuron's inputs, as slots
      std::vector<double> w;
      for (int64_t c = topo.in_offsets()[d]; c < topo.in_offsets()[d + 1]; ++c) {
        slots.push_back(std::find(level.sources.begin(), level.sources.end(), topo.conn_source()[c]) -
                        level.sources.begin());
        w.push_back(net->weight(topo.label(topo.conn_source()[c]), topo.label(d)));
      }
      std::vector<double> in = s;
      if (f.neuron_attention && !slots.empty()) {
        const std::string a = "neuron_self_attention." + lv;
        std::vector<double> q(L), k(L), v(L);
        for (size_t i = 0; i < L; ++i) {
          q[i] = p.at(a + "query_bias", {r, int64_t(i)});
          k[i] = p.at(a + "key_bias", {r, int64_t(i)});
          v[i] = p.at(a + "value_bias", {r, int64_t(i)});
          for (size_t j = 0; j < L; ++j) {
            q[i] += p.at(a + "query_weight", {r, int64_t(i), int64_t(j)}) * s[j];
            k[i] += p.at(a + "key_weight", {r, int64_t(i), int64_t(j)}) * s[j];
            v[i] += p.at(a + "value_weight", {r, int64_t(i), int64_t(j)}) * s[j];
          }
        }
        const double scale = std::sqrt(double(slots.size()));
        for (size_t i = 0; i < L; ++i) {
          double mx = -1e300, sum = 0, out = 0;
          for (size_t j : slots) mx = std::max(mx, q[i] * k[j] / scale);
          for (size_t j : slots) sum += std::exp(q[i] * k[j] / scale - mx);
          for (size_t j : slots) out += std::exp(q[i] * k[j] / scale - mx) / sum * v[j];
          in[i] = s[i] + out;
        }
      }
      double z = net->bias(topo.label(d));
      for (size_t c = 0; c < slots.size(); ++c) z += w[c] * in[slots[c]];
      if (topo.role(d) == Role::Hidden) {
        if (f.adaptive) {
          const int64_t b = topo.bias_index(d);
          z = p.at("adaptive_activation.a", {b, 0}) * act(p.at("adaptive_activation.b", {b, 0}) * z);
        } else {
          z = act(z);
        }
      }
      value[d] = z;
    }
  }
  std::vector<double> out;
  for (int64_t d : topo.output_ids()) out.push_back(value[d]);
  return out;
}

// Moves every technique parameter away from its initial value, so tests see real values.
void perturb(NeuralNetwork& net, uint64_t seed) {
  torch::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : net->named_parameters())
    if (p.key().find('.') != std::string::npos)
      p.value().add_(torch::randn(p.value().sizes(), gen, torch::kFloat64).to(p.value().dtype()) * 0.3);
}

GraphSpec small_graph() {
  // Level 1: 2 <- {0, 1}, 3 <- {0}; level 2: output 4 <- {2, 3}, output 5 <- {1, 3}.
  return GraphSpec::from_edges({{0, 2}, {1, 2}, {0, 3}, {2, 4}, {3, 4}, {1, 5}, {3, 5}}, {0, 1}, {4, 5});
}

const std::vector<std::pair<std::string, Flags>> kEach = {
    {"topo_norm", {true, false, false, false}},
    {"topo_self_attention", {false, true, false, false}},
    {"neuron_self_attention", {false, false, true, false}},
    {"adaptive_activation", {false, false, false, true}},
    {"all four", {true, true, true, true}},
};

}  // namespace

TEST(Techniques, OffCostsNothing) {
  NeuralNetwork net(small_graph());
  EXPECT_EQ(net->num_parameters(), 7 + 4);
  EXPECT_TRUE(net->operations().empty());
}

TEST(Techniques, ValuesMatchAScalarReference) {
  for (const auto& [name, flags] : kEach) {
    for (const std::string act : {"tanh", "relu"}) {
      NeuralNetwork net(small_graph(), with(flags).hidden_activation(act).seed(3));
      perturb(net, 1);
      for (auto x : std::vector<std::vector<double>>{{0.3, -1.2}, {2.0, 0.5}, {-0.7, -0.1}}) {
        auto expected = reference(net, x, flags, scalar_activation(act));
        auto got = net->forward(torch::tensor(x, torch::kFloat64));
        for (size_t k = 0; k < expected.size(); ++k)
          EXPECT_NEAR(got[k].item<double>(), expected[k], 1e-12) << name << " " << act;
      }
    }
  }
}

TEST(Techniques, RandomGraphsMatchTheReferenceOnEveryKernel) {
  std::mt19937_64 rng(77);
  for (int trial = 0; trial < 40; ++trial) {
    auto spec = random_dag(rng, {4, 12, 0.35});
    const Flags flags = kEach[trial % kEach.size()].second;
    std::optional<LevelKernel> kernel;
    if (trial % 3 == 1) kernel = LevelKernel::EdgeList;
    if (trial % 3 == 2) kernel = LevelKernel::DenseScatter;
    NeuralNetwork net(
        spec, with(flags).hidden_activation("gelu").seed(trial).execution(ExecutionOptions().force_kernel(kernel)));
    perturb(net, trial);
    auto x = torch::randn({static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto expected =
        reference(net, std::vector<double>(x.data_ptr<double>(), x.data_ptr<double>() + x.numel()), flags, gelu_exact);
    auto got = net->forward(x);
    for (size_t k = 0; k < expected.size(); ++k)
      ASSERT_NEAR(got[k].item<double>(), expected[k], 1e-10) << "trial " << trial;
  }
}

TEST(Techniques, GradientsMatchFiniteDifferences) {
  std::mt19937_64 rng(8);
  for (const auto& [name, flags] : kEach) {
    for (int trial = 0; trial < 8; ++trial) {
      auto spec = random_dag(rng, {4, 10, 0.4});
      NeuralNetwork net(spec, with(flags).hidden_activation("tanh").seed(trial));
      perturb(net, trial);
      auto x = torch::randn({3, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      // 2e-6: the central differences' own error (rounding ~eps·|L|/h at
      // h = 1e-6, truncation at larger h) reaches 1.1e-6 here on some CPUs;
      // a wrong gradient term is off by orders of magnitude more.
      ASSERT_LE(max_gradient_error(net, x, 24), 2e-6) << name << " trial " << trial;
    }
  }
}

namespace {

// Random groups over an L-long sequence: each group's keys a random subset
// (some empty), scales drawn too.
AttentionKeys random_keys(std::mt19937_64& rng, int64_t groups, int64_t L, bool queries_are_keys) {
  AttentionKeys keys;
  keys.offsets = {0};
  keys.queries_are_keys = queries_are_keys;
  std::bernoulli_distribution keep(0.6);
  for (int64_t g = 0; g < groups; ++g) {
    if (g % 4 != 3)  // every fourth group without keys
      for (int64_t i = 0; i < L; ++i)
        if (keep(rng)) keys.positions.push_back(i);
    keys.offsets.push_back(static_cast<int64_t>(keys.positions.size()));
    keys.scale.push_back(std::uniform_real_distribution<double>(0.2, 1.5)(rng));
  }
  return keys;
}

// o and the gradients of Σ o ⊙ r with respect to q, k and v.
std::vector<torch::Tensor> attention_and_gradients(
    const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>& f,
    const torch::Tensor& q0, const torch::Tensor& k0, const torch::Tensor& v0, const torch::Tensor& r) {
  auto q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
  auto o = f(q, k, v);
  (o * r).sum().backward();
  return {o.detach(), q.grad(), k.grad(), v.grad()};
}

// o, dq, dk and dv of `got` each within tolerance · (1 + its largest value)
// of `want` (double); `context` names the case in a failure.
void expect_attention_agrees(const std::vector<torch::Tensor>& got, const std::vector<torch::Tensor>& want,
                             double tolerance, const std::string& context) {
  const char* names[] = {"o", "dq", "dk", "dv"};
  for (int t = 0; t < 4; ++t)
    ASSERT_LE((got[t].to(torch::kFloat64) - want[t]).abs().max().item<double>(),
              tolerance * (1 + want[t].abs().max().item<double>()))
        << names[t] << " " << context;
}

// The kernel's gradients of Σ o ⊙ r (double) against central differences,
// entry by entry; `context` names the case in a failure.
void expect_central_differences(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& r, const AttentionKeys& keys, const std::string& context) {
  auto f = [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); };
  auto got = attention_and_gradients(f, q, k, v, r);
  const std::vector<torch::Tensor> inputs{q, k, v};
  for (int which = 0; which < 3; ++which) {
    for (int64_t e = 0; e < q.numel(); ++e) {
      const double h = 1e-6;
      auto at = [&](double delta) {
        auto moved = inputs;
        moved[which] = inputs[which].clone();
        moved[which].view({-1})[e] += delta;
        return (f(moved[0], moved[1], moved[2]) * r).sum().item<double>();
      };
      ASSERT_NEAR(got[1 + which].view({-1})[e].item<double>(), (at(h) - at(-h)) / (2 * h), 1e-7)
          << "input " << which << " entry " << e << " " << context;
    }
  }
}

}  // namespace

// The kernel both attention techniques run on the CPU, against the same
// formula in torch operations (the path of every other device): values and
// the three gradients, over random key sets, with and without queries
// restricted to the keys; and against central differences.
TEST(Techniques, AttentionKernelMatchesTheTorchFormula) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    // Batches within one of the kernel's 64-sample chunks (more in the test below).
    const int64_t groups = 1 + trial % 5, L = 1 + (trial * 7) % 13,
                  B = std::vector<int64_t>{1, 3, 16, 17, 33}[(trial / 2) % 5];
    const auto keys = random_keys(rng, groups, L, trial % 2 == 1);
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      auto q = torch::randn({groups, L, B}, torch::kFloat64) * 2, k = torch::randn({groups, L, B}, torch::kFloat64) * 2,
           v = torch::randn({groups, L, B}, torch::kFloat64), r = torch::randn({groups, L, B}, torch::kFloat64);
      auto got = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); }, q.to(dtype),
          k.to(dtype), v.to(dtype), r.to(dtype));
      auto want = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b, c, keys); }, q, k,
          v, r);
      ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, dtype == torch::kFloat64 ? 1e-12 : 2e-5,
                                                      "trial " + std::to_string(trial) + " " + c10::toString(dtype)));
    }
  }
  // Central differences of Σ o ⊙ r, entry by entry.
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t groups = 2, L = 5, B = 2;
    const auto keys = random_keys(rng, groups, L, trial % 2 == 1);
    auto q = torch::randn({groups, L, B}, torch::kFloat64), k = torch::randn({groups, L, B}, torch::kFloat64),
         v = torch::randn({groups, L, B}, torch::kFloat64), r = torch::randn({groups, L, B}, torch::kFloat64);
    expect_central_differences(q, k, v, r, keys, "trial " + std::to_string(trial));
  }
}

namespace {

// The kernel against the formula in double on the inputs as the kernel
// sees them (float keys near 30 are rounded by 2e-6, which moves dq by more
// than the kernel's own error), in double and float; `context` names the case.
void expect_kernel_matches_formula(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const torch::Tensor& r, const AttentionKeys& keys, const std::string& context) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    auto got = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); }, q.to(dtype),
        k.to(dtype), v.to(dtype), r.to(dtype));
    auto exactly = [&](const torch::Tensor& t) { return t.to(dtype).to(torch::kFloat64); };
    auto want = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b, c, keys); },
        exactly(q), exactly(k), exactly(v), exactly(r));
    ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, dtype == torch::kFloat64 ? 1e-12 : 5e-6,
                                                    context + " " + c10::toString(dtype)));
  }
}

// The largest |p(x)/e^x - 1| of the polynomial with coefficients c over
// 20,001 points of [-range, range], in long double.
long double worst_relative_error(const std::vector<double>& c, double range) {
  long double worst = 0;
  for (int i = 0; i <= 20000; ++i) {
    const long double x = -range + 2 * range * i / 20000.0L;
    long double p = 0;
    for (auto k = c.rbegin(); k != c.rend(); ++k) p = p * x + *k;
    worst = std::max(worst, std::fabs(p / std::exp(x) - 1));
  }
  return worst;
}

}  // namespace

// The polynomial that stands for exp in the kernel's expansion, at the
// kernel's caps and float's tolerance (scalar_attention.cpp): within the
// tolerance relative to e^x on a fine grid, of lower degree than Taylor's
// series needs for the same bound (5 and 9 at R = 1/4 and 1, as an
// economisation worked separately in Python gave; Taylor: 7 and 11).
TEST(Techniques, ExpPolynomialIsWithinItsToleranceInFewerTermsThanTaylor) {
  const double tolerance = 1.5e-8;
  for (double range : {0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0}) {
    const auto c = exp_polynomial(range, tolerance);
    ASSERT_FALSE(c.empty()) << range;
    int taylor = 0;  // the least degree with e^R·R^(P+1)/(P+1)! under the tolerance
    for (double bound = std::exp(range) * range; bound > tolerance;) bound *= range / (++taylor + 1);
    EXPECT_LE(static_cast<int>(c.size()) - 1, taylor) << range;
    if (range >= 0.25) EXPECT_LT(static_cast<int>(c.size()) - 1, taylor) << range;
    EXPECT_LE(worst_relative_error(c, range), tolerance) << range;
  }
  EXPECT_EQ(exp_polynomial(0.25, tolerance).size(), 6u);
  EXPECT_EQ(exp_polynomial(1.0, tolerance).size(), 10u);
  // Double's tolerance (a quarter ulp) holds before the coefficients are
  // rounded to double; after, within ~1e-16·e^(2R), as Taylor's did.
  for (double range : {0.125, 1.0, 3.5}) {
    const auto c = exp_polynomial(range, 2.8e-17);
    ASSERT_FALSE(c.empty()) << range;
    EXPECT_LE(worst_relative_error(c, range), 1.2e-16 * std::exp(2 * range)) << range;
  }
  EXPECT_TRUE(exp_polynomial(6.0, 1e-25).empty());   // degree ~40: more than 38
  EXPECT_TRUE(exp_polynomial(40.0, 1e-17).empty());  // Taylor's degree 60 is not enough
  EXPECT_TRUE(exp_polynomial(0.0, tolerance).empty());
  EXPECT_TRUE(exp_polynomial(-1.0, tolerance).empty());
}

// Sequences long enough for the kernel's moment expansion (scalar_attention.cpp),
// with scores spread from |s| ≈ 0.01 (a low degree) through the caps on
// the expansion's range (3.5 in double, 5 in float) to 30 (the exact sums),
// so that units mix expanded queries with exact ones; batches of one to
// three 64-sample chunks, keys far from 0, and a group without keys: values
// and gradients against the torch formula, both ways of summing taken (the
// kernel's counts), and central differences where it expands.
TEST(Techniques, AttentionKernelAgreesAcrossScoreRanges) {
  std::mt19937_64 rng(11);
  torch::manual_seed(11);
  const auto before = attention_path_counts();
  for (double spread : {0.01, 0.3, 1.0, 2.2, 3.8, 5.5, 20.0}) {
    for (int trial = 0; trial < 4; ++trial) {
      const int64_t groups = 4, L = std::vector<int64_t>{24, 40, 97, 33}[trial],
                    B = std::vector<int64_t>{37, 64, 65, 150}[trial];
      const auto keys = random_keys(rng, groups, L, trial % 2 == 1);  // group 3 without keys
      // q in [-spread, spread], k in [-0.5, 1.5] (+ 30 in one trial in two): |s| up to about spread.
      auto q = (torch::rand({groups, L, B}, torch::kFloat64) * 2 - 1) * spread,
           k = torch::rand({groups, L, B}, torch::kFloat64) * 2 - 0.5 + (trial % 2) * 30.0,
           v = torch::randn({groups, L, B}, torch::kFloat64), r = torch::randn({groups, L, B}, torch::kFloat64);
      q.select(2, 0).mul_(0.01);     // in the first chunk one sample far below the others
      q.select(2, B - 1).mul_(1.5);  // and in the last one far above
      ASSERT_NO_FATAL_FAILURE(expect_kernel_matches_formula(
          q, k, v, r, keys,
          "spread " + std::to_string(spread) + " L " + std::to_string(L) + " B " + std::to_string(B)));
    }
  }
  const auto after = attention_path_counts();
  EXPECT_GT(after.expanded - before.expanded, 0);
  EXPECT_GT(after.exact - before.exact, 0);
  // Keys equal within each sample (the keys' spread 0) or nearly (1e-9),
  // against queries of 1e6 and 1e8: finite, and the formula's values. The
  // formula takes the keys less 5 (the same softmax, o and gradients), or
  // rounding q·k near 5e8 would cost it more than the kernel's error.
  for (double spread : {0.0, 1e-9}) {
    const int64_t groups = 1, L = 40, B = 20;
    const auto keys = random_keys(rng, groups, L, false);
    auto q = torch::randn({groups, L, B}, torch::kFloat64) * (spread == 0 ? 1e6 : 1e8),
         k = 5 + torch::rand({groups, L, B}, torch::kFloat64) * spread,
         v = torch::randn({groups, L, B}, torch::kFloat64), r = torch::randn({groups, L, B}, torch::kFloat64);
    auto got = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); }, q, k, v, r);
    auto want = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b - 5, c, keys); }, q,
        k, v, r);
    for (int t = 0; t < 4; ++t) ASSERT_TRUE(got[t].isfinite().all().item<bool>()) << t << " spread " << spread;
    ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, 1e-9, "spread " + std::to_string(spread)));
  }
  // Scores in the thousands on keys near 20, summed exactly in float32: the
  // weights come from t·(k_j - the top key), not t·k_j less the top score
  // (which lost 4 digits here: 4e-5 of o's largest value).
  {
    const int64_t groups = 2, L = 88, B = 129;
    const auto keys = random_keys(rng, groups, L, false);
    auto q = torch::randn({groups, L, B}, torch::kFloat64) * 40, k = torch::randn({groups, L, B}, torch::kFloat64) + 20,
         v = torch::randn({groups, L, B}, torch::kFloat64), r = torch::randn({groups, L, B}, torch::kFloat64);
    auto as_float = [](const torch::Tensor& t) { return t.to(torch::kFloat32).to(torch::kFloat64); };
    auto got = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); },
        q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32), r.to(torch::kFloat32));
    auto want = attention_and_gradients(
        [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b - 20, c, keys); },
        as_float(q), as_float(k), as_float(v), as_float(r));
    ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, 1e-5, "scores in the thousands"));
  }
  // Central differences where the expansion sums (in double from about 20 keys).
  for (double spread : {0.2, 1.0}) {
    const int64_t groups = 1, L = 40, B = 2;
    const auto keys = random_keys(rng, groups, L, false);
    auto q = (torch::rand({groups, L, B}, torch::kFloat64) * 2 - 1) * spread,
         k = torch::rand({groups, L, B}, torch::kFloat64) * 2 - 1, v = torch::randn({groups, L, B}, torch::kFloat64),
         r = torch::randn({groups, L, B}, torch::kFloat64);
    const auto expanded_before = attention_path_counts().expanded;
    expect_central_differences(q, k, v, r, keys, "spread " + std::to_string(spread));
    ASSERT_GT(attention_path_counts().expanded, expanded_before) << "spread " << spread;
  }
}

// A negative scale (AttentionKeys allows any factor) spreads the scores as
// its magnitude does: the kernel plans by |scale| (it once sent every
// sample to the expansion of the smallest cap, an error of 15 in o).
TEST(Techniques, AttentionKernelTakesANegativeScale) {
  std::mt19937_64 rng(5);
  torch::manual_seed(5);
  for (double scale : {0.5, -0.5, -0.01}) {
    auto keys = random_keys(rng, 1, 40, false);
    keys.scale[0] = scale;
    const int64_t L = 40, B = 70;
    auto q = torch::randn({1, L, B}, torch::kFloat64) * 8, k = torch::randn({1, L, B}, torch::kFloat64),
         v = torch::randn({1, L, B}, torch::kFloat64), r = torch::randn({1, L, B}, torch::kFloat64);
    ASSERT_NO_FATAL_FAILURE(expect_kernel_matches_formula(q, k, v, r, keys, "scale " + std::to_string(scale)));
  }
}

// A group of 300 positions: backward sums its expanded query rows 128 at a
// time (scalar_attention.cpp, kRowBlock), so the sums cross two blocks.
TEST(Techniques, AttentionKernelSumsManyQueriesInBlocks) {
  torch::manual_seed(6);
  const int64_t L = 300, B = 70;
  const auto keys = topo_attention_keys(L);
  auto q = torch::randn({1, L, B}, torch::kFloat64), k = torch::randn({1, L, B}, torch::kFloat64),
       v = torch::randn({1, L, B}, torch::kFloat64), r = torch::randn({1, L, B}, torch::kFloat64);
  const auto before = attention_path_counts();
  ASSERT_NO_FATAL_FAILURE(expect_kernel_matches_formula(q, k, v, r, keys, "L 300"));
  EXPECT_GT(attention_path_counts().expanded - before.expanded, 2 * 256 * B);  // both dtypes, past two blocks
}

// One sharp sample no longer makes its query rows exact: the kernel sums
// that sample alone exactly and every other by the expansion (the counts
// are (query, sample) pairs), in both dtypes, with the formula's values and
// gradients. A non-finite query in one sample stays in that sample: every
// other sample's values and gradients are finite and the formula's.
TEST(Techniques, AttentionKernelSumsASharpSampleAlone) {
  std::mt19937_64 rng(13);
  torch::manual_seed(13);
  const int64_t groups = 2, L = 40, B = 64, sharp = 9;
  for (bool queries_are_keys : {false, true}) {
    // 30 keys a group (a set drawn at random), enough for the cost model
    // to expand every row.
    AttentionKeys keys;
    keys.offsets = {0};
    keys.queries_are_keys = queries_are_keys;
    for (int64_t g = 0; g < groups; ++g) {
      std::vector<int64_t> positions(L);
      std::iota(positions.begin(), positions.end(), 0);
      std::shuffle(positions.begin(), positions.end(), rng);
      positions.resize(30);
      std::sort(positions.begin(), positions.end());
      keys.positions.insert(keys.positions.end(), positions.begin(), positions.end());
      keys.offsets.push_back(static_cast<int64_t>(keys.positions.size()));
      keys.scale.push_back(0.2 + 0.4 * g);
    }
    const int64_t pairs = groups * (queries_are_keys ? 30 : L);
    auto q = (torch::rand({groups, L, B}, torch::kFloat64) * 2 - 1) * 0.05,
         k = torch::rand({groups, L, B}, torch::kFloat64) * 2 - 1, v = torch::randn({groups, L, B}, torch::kFloat64),
         r = torch::randn({groups, L, B}, torch::kFloat64);
    // |s| of 18 and more at that sample (past every cap), under the least cap elsewhere.
    const auto sign = (torch::rand({groups, L}, torch::kFloat64) < 0.5).to(torch::kFloat64) * 2 - 1;
    q.select(2, sharp).copy_(sign * (100 + 100 * torch::rand({groups, L}, torch::kFloat64)));
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      const auto before = attention_path_counts();
      auto got = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); }, q.to(dtype),
          k.to(dtype), v.to(dtype), r.to(dtype));
      const auto after = attention_path_counts();
      const std::string context = std::string(c10::toString(dtype)) + (queries_are_keys ? " neuron" : " topo");
      EXPECT_EQ(after.exact - before.exact, pairs) << context;  // the sharp sample of each query row
      EXPECT_EQ(after.expanded - before.expanded, pairs * (B - 1)) << context;
      auto exactly = [&](const torch::Tensor& t) { return t.to(dtype).to(torch::kFloat64); };
      auto want = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b, c, keys); },
          exactly(q), exactly(k), exactly(v), exactly(r));
      ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, dtype == torch::kFloat64 ? 1e-12 : 5e-6, context));
    }
    for (double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
      auto q_bad = q.clone();
      q_bad[0][keys.positions[0]][sharp] = bad;  // a query in either kind of keys
      auto got = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention(a, b, c, keys); }, q_bad, k, v, r);
      auto want = attention_and_gradients(
          [&](const auto& a, const auto& b, const auto& c) { return scalar_attention_reference(a, b, c, keys); }, q, k,
          v, r);
      const auto others = torch::arange(B) != sharp;
      for (auto& t : got) t = t.index({torch::indexing::Slice(), torch::indexing::Slice(), others});
      for (auto& t : want) t = t.index({torch::indexing::Slice(), torch::indexing::Slice(), others});
      for (int t = 0; t < 4; ++t) ASSERT_TRUE(got[t].isfinite().all().item<bool>()) << t << " " << bad;
      ASSERT_NO_FATAL_FAILURE(expect_attention_agrees(got, want, 1e-12, "a non-finite query in another sample"));
    }
  }
}

// A gradient that is differentiated again (create_graph): the kernel's
// backward hands over to the torch formula's, so second derivatives agree.
TEST(Techniques, AttentionKernelIsDifferentiableTwice) {
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 6; ++trial) {
    const auto keys = random_keys(rng, 3, 6, trial % 2 == 1);
    auto q0 = torch::randn({3, 6, 4}, torch::kFloat64), k0 = torch::randn({3, 6, 4}, torch::kFloat64),
         v0 = torch::randn({3, 6, 4}, torch::kFloat64), r = torch::randn({3, 6, 4}, torch::kFloat64);
    auto second = [&](bool kernel) {
      // q as a non-contiguous view of its leaf
      auto q_leaf = q0.transpose(1, 2).clone().requires_grad_(), k = k0.clone().requires_grad_(),
           v = v0.clone().requires_grad_();
      auto q = q_leaf.transpose(1, 2);
      auto o = kernel ? scalar_attention(q, k, v, keys) : scalar_attention_reference(q, k, v, keys);
      auto g = torch::autograd::grad({(o * r).sum()}, {q, k, v}, {}, true, true);
      (g[0].pow(2).sum() + (g[1] * g[2]).sum()).backward();
      return std::vector<torch::Tensor>{q_leaf.grad().transpose(1, 2), k.grad(), v.grad()};
    };
    auto got = second(true), want = second(false);
    for (int t = 0; t < 3; ++t)
      ASSERT_LE((got[t] - want[t]).abs().max().item<double>(), 1e-12) << "input " << t << " trial " << trial;
  }
}

// Second derivatives through each technique on the path the network
// takes (a gradient penalty |∂(Σ y ⊙ r)/∂x|²), against central differences
// of the penalty in a few parameters.
TEST(Techniques, SecondDerivativesMatchFiniteDifferences) {
  for (const auto& [name, flags] : kEach) {
    auto net = nn::DenseMLP(2, 2, 4, 2, with(flags).hidden_activation("tanh").seed(4));
    perturb(net, 4);
    auto x = torch::randn({3, 2}, torch::kFloat64), r = torch::randn({3, 2}, torch::kFloat64);
    auto penalty = [&] {
      auto xi = x.clone().requires_grad_();
      auto g = torch::autograd::grad({(net->forward(xi) * r).sum()}, {xi}, {}, true, true)[0];
      return g.pow(2).sum();
    };
    net->zero_grad();
    penalty().backward();
    int checked = 0;
    for (auto& p : net->named_parameters()) {
      auto flat = p.value().data().view(-1);
      for (int64_t e = 0; e < flat.numel(); e += std::max<int64_t>(1, flat.numel() / 3)) {
        const double h = 1e-5, old = flat[e].item<double>();
        double at[2];
        for (int side = 0; side < 2; ++side) {
          flat[e] = old + (side ? -h : h);
          torch::NoGradGuard no_grad_outside;  // the penalty turns grad mode on for itself
          at[side] = [&] {
            torch::AutoGradMode on(true);
            return penalty().item<double>();
          }();
        }
        flat[e] = old;
        const double numeric = (at[0] - at[1]) / (2 * h);
        const auto grad = p.value().grad();
        const double analytic = grad.defined() ? grad.view(-1)[e].item<double>() : 0.0;
        ASSERT_NEAR(analytic, numeric, 1e-6 * (1 + std::abs(numeric))) << name << " " << p.key() << "[" << e << "]";
        ++checked;
      }
    }
    EXPECT_GT(checked, 10) << name;
  }
}

TEST(Techniques, EachTrainsTheReadmeExample) {
  auto [x, y] = cos_sin_data();
  for (const auto& [name, flags] : kEach) {
    NeuralNetwork net(readme_spec(), with(flags, NeuralNetworkOptions()).hidden_activation("relu"));
    auto [first, last] = train(net, x, y, 300, 1e-2);
    RecordProperty(name + "_loss", fmt::format("{:.4f} -> {:.4f}", first, last));
    EXPECT_LT(last, first * 0.8) << name << ": " << first << " -> " << last;
  }
}

TEST(Techniques, AllFourSurviveAnEditBitForBit) {
  NeuralNetwork net(small_graph(), with({true, true, true, true}).seed(1));
  perturb(net, 2);
  auto result =
      edit(net).add_hidden_neurons({6}).add_connections({{0, 6}, {6, 5}, {2, 5}}).remove_connections({{1, 5}}).build(4);
  auto& after = result.network;
  const int64_t compared = expect_operation_parameters_survive(net, after);
  EXPECT_GT(compared, 50);
  EXPECT_TRUE(torch::isfinite(after->forward(torch::randn({4, 2}, torch::kFloat64))).all().item<bool>());
}

TEST(Techniques, OptimizerContinuityAcrossANullEdit) {
  auto [x, y] = cos_sin_data(torch::kFloat64);
  auto make = [] { return nn::DenseMLP(1, 2, 4, 2, with({true, true, true, true}).seed(2)); };
  auto step = [&](NeuralNetwork& n, torch::optim::Optimizer& o) {
    o.zero_grad();
    torch::mse_loss(n->forward(x), y).backward();
    o.step();
  };
  auto reference_net = make(), net = make();
  torch::optim::Adam ref_opt(reference_net->parameters(), torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 20; ++i) step(reference_net, ref_opt);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  for (int i = 0; i < 10; ++i) step(net, opt);
  auto result = edit(net).build(5);
  torch::optim::Adam next(result.network->parameters(), torch::optim::AdamOptions(1e-2));
  transfer_optimizer_state(opt, net, next, result);
  for (int i = 0; i < 10; ++i) step(result.network, next);
  auto a = reference_net->named_parameters(), b = result.network->named_parameters();
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
}

TEST(Techniques, CheckpointConfigAndGraphRoundTrips) {
  NeuralNetwork net(small_graph(), with({true, true, true, true}).seed(1));
  perturb(net, 5);
  const std::string path = ::testing::TempDir() + "/techniques.ckpt";
  save(net, path);
  auto back = load(path);
  auto x = torch::randn({3, 2}, torch::kFloat64);
  EXPECT_TRUE(torch::equal(back->forward(x), net->forward(x)));
  EXPECT_TRUE(network_config(back)["options"]["use_neuron_self_attention"].get<bool>());
  auto from_graph = from_node_link_json(to_node_link_json(net));
  EXPECT_TRUE(torch::equal(from_graph->forward(x), net->forward(x)));
  EXPECT_EQ(net->weighted_graph().operation_parameters.size(),
            2u /*norm*/ + 12 /*topo attn*/ + 12 /*neuron attn*/ + 2 /*adaptive*/);
}

TEST(Techniques, TorchScriptExportMatches) {
  std::mt19937_64 rng(21);
  for (int trial = 0; trial < 20; ++trial) {
    auto spec = random_dag(rng, {4, 14, 0.35});
    const Flags flags = kEach[trial % kEach.size()].second;
    std::optional<LevelKernel> kernel;
    if (trial % 3 == 1) kernel = LevelKernel::EdgeList;
    NeuralNetwork net(spec, with(flags)
                                .hidden_activation(trial % 2 ? "silu" : "tanh")
                                .seed(trial)
                                .execution(ExecutionOptions().force_kernel(kernel))
                                .dtype(trial % 4 < 2 ? torch::kFloat64 : torch::kFloat32));
    perturb(net, trial);
    const std::string path = ::testing::TempDir() + "/techniques.pt";
    export_torchscript(net, path);
    auto module = torch::jit::load(path);
    auto x = torch::randn({5, static_cast<int64_t>(spec.inputs().size())},
                          torch::TensorOptions().dtype(net->options().dtype()));
    net->eval();
    auto scripted = module.forward({x}).toTensor(), direct = net->forward(x);
    // The script runs the techniques as torch operations, the network its
    // CPU kernels (attention, norm), which round differently: in float32 a
    // few ulps per level, amplified where a level's inputs vary little
    // (norm divides by their spread). 1e-5 is ~80 ulps at 1.
    const double tolerance = net->options().dtype() == torch::kFloat64 ? 1e-10 : 1e-5;
    EXPECT_TRUE(torch::allclose(scripted, direct, tolerance, tolerance))
        << kEach[trial % kEach.size()].first << " trial " << trial << ": largest difference "
        << (scripted - direct).abs().max().item<double>() << " at values up to " << direct.abs().max().item<double>();
  }
}

// A float16 network is exported to run on a GPU; scripting computes its
// constants on the CPU, which has no float16 sqrt (neuron self-attention's
// scale failed with torch's error). Its script, moved to float32, computes
// what the network moved to float32 does.
TEST(Techniques, AFloat16NetworkWithEveryTechniqueExports) {
  auto net = nn::DenseMLP(1, 2, 3, 2,  // fan-ins 1, 4 and 7: a scale float16 rounds
                          NeuralNetworkOptions()
                              .dtype(torch::kFloat16)
                              .use_topo_norm(true)
                              .use_topo_self_attention(true)
                              .use_neuron_self_attention(true)
                              .use_adaptive_activations(true)
                              .seed(4));
  const std::string path = ::testing::TempDir() + "/half.pt";
  export_torchscript(net, path);
  auto module = torch::jit::load(path);
  module.to(torch::kFloat32);
  net->to(torch::kFloat32);
  net->eval();
  const auto x = torch::randn({6, 1});
  // The script's constants are float16's (√7 to 4e-4), the network's float32's.
  EXPECT_TRUE(torch::allclose(module.forward({x}).toTensor(), net->forward(x), 2e-3, 2e-3));
}

// ------------------------------------------------------- a user operation

namespace {

// A per-neuron gain on the pre-activation: z -> g ⊙ z, one g per non-input
// neuron, keyed by neuron so it survives edits.
class NeuronGain : public LevelOperation {
 public:
  std::string name() const override { return "gain"; }
  OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator&) const override {
    std::vector<NeuronId> rows;
    for (int64_t d = topology.num_inputs(); d < topology.num_neurons(); ++d) rows.push_back(topology.label(d));
    return {{"g", {torch::ones({static_cast<int64_t>(rows.size()), 1}, dtype), {rows, std::nullopt}}}};
  }
  torch::Tensor on_preactivation(const LevelContext& ctx, const torch::Tensor& z) const override {
    return ctx.params.get("g").narrow(0, ctx.topology.bias_index(ctx.plan.begin), z.size(0)) * z;
  }
  bool depends_on_level() const override { return false; }  // keyed by neuron
};

// The same, declared as depending on a neuron's level (the default).
class LevelKeyedGain : public NeuronGain {
 public:
  std::string name() const override { return "level_gain"; }
  bool depends_on_level() const override { return true; }
};

// The same gain with its TorchScript form: exported with the network.
class ScriptedGain : public NeuronGain {
 public:
  bool scriptable() const override { return true; }
  void script_on_preactivation(ScriptWriter& script, const LevelContext& ctx) const override {
    const auto g = ctx.params.get("g").narrow(0, ctx.topology.bias_index(ctx.plan.begin), ctx.plan.size());
    script.line(fmt::format("z = {} * z", script.buffer("gain", g)));
  }
};

// A gain whose forward asks for a parameter it never declared.
class MisspeltGain : public NeuronGain {
 public:
  torch::Tensor on_preactivation(const LevelContext& ctx, const torch::Tensor& z) const override {
    return ctx.params.get("gg") * z;
  }
};

// A scripted gain whose TorchScript form asks for a parameter it never declared.
class MisspeltScriptedGain : public ScriptedGain {
 public:
  void script_on_preactivation(ScriptWriter& script, const LevelContext& ctx) const override {
    script.line(fmt::format("z = {} * z", script.buffer("gain", ctx.params.get("gg"))));
  }
};

}  // namespace

namespace {

// A step whose torch operation fails (a product of mismatched shapes).
class MismatchedProduct : public NeuronGain {
 public:
  torch::Tensor on_preactivation(const LevelContext&, const torch::Tensor& z) const override {
    return torch::ones({3, 3}).matmul(z);
  }
};

// Steps that return the wrong shape: an input dropped, a transposed result.
class DropsASource : public NeuronGain {
 public:
  torch::Tensor on_inputs(const LevelContext&, const torch::Tensor& sources) const override {
    return sources.narrow(0, 0, sources.size(0) - 1);
  }
};
class Transposes : public NeuronGain {
 public:
  torch::Tensor on_preactivation(const LevelContext&, const torch::Tensor& z) const override { return z.t(); }
};

}  // namespace

// A torch error from within a step is one line naming the operation, the step and the level.
TEST(UserOperation, ATorchErrorWithinAStepIsNamed) {
  NeuralNetwork net(small_graph(), NeuralNetworkOptions().operations({std::make_shared<MismatchedProduct>()}));
  try {
    net->forward(torch::zeros({2, 2}));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("NeuralNetwork::forward(): operation \"gain\"'s on_preactivation at level 1: ", 0), 0u)
        << message;
    EXPECT_NE(message.find("cannot be multiplied"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;  // torch's backtrace left out
  }
}

// A step that returns the wrong shape is named with its operation and level,
// where it returns (a torch error about mismatched products came later).
TEST(UserOperation, AStepOfTheWrongShapeIsNamed) {
  NeuralNetwork drops(small_graph(), NeuralNetworkOptions().operations({std::make_shared<DropsASource>()}));
  EXPECT_THROW_MSG(drops->forward(torch::zeros({3, 2})),
                   "NeuralNetwork::forward(): operation \"gain\"'s on_inputs at level 1 returned [1, 3]; expected "
                   "[sources, batch] = [2, 3]");
  NeuralNetwork transposes(small_graph(), NeuralNetworkOptions().operations({std::make_shared<Transposes>()}));
  EXPECT_THROW_MSG(transposes->forward(torch::zeros({3, 2})),
                   "NeuralNetwork::forward(): operation \"gain\"'s on_preactivation at level 1 returned [3, ");
}

// An operation's parameters may be keyed by level (a per-(level, source)
// gain): a neuron that moves level would read other entries, drawn anew, so a
// function-preserving edit refuses the move unless the operation says it does
// not depend on the level (a gain keyed by neuron, whose growth stays exact).
TEST(UserOperation, FunctionPreservingRefusesALevelMoveUnlessTheOperationIgnoresLevels) {
  auto deepen = [](const NeuralNetwork& net) {  // output 5 moves from level 2 to 3
    return edit(net).add_hidden_neurons({9}).add_connections({{2, 9}, {9, 5}}).function_preserving().build(1);
  };
  NeuralNetwork by_neuron(small_graph(),
                          NeuralNetworkOptions().dtype(torch::kFloat64).operations({std::make_shared<NeuronGain>()}));
  const auto x = torch::randn({4, 2}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(deepen(by_neuron).network->forward(x), by_neuron->forward(x), 1e-12, 1e-12));
  NeuralNetwork by_level(small_graph(), NeuralNetworkOptions().operations({std::make_shared<LevelKeyedGain>()}));
  EXPECT_THROW_MSG(deepen(by_level),
                   "function_preserving(): neuron 5 would move from level 2 to level 3, and level_gain depends on a "
                   "neuron's level (LevelOperation::depends_on_level())");
}

// A user operation reading a parameter it did not declare is told which it
// did, and which operation, step and level asked.
TEST(UserOperation, MisspeltParameterNamesTheDeclaredOnes) {
  NeuralNetwork net(small_graph(), NeuralNetworkOptions().operations({std::make_shared<MisspeltGain>()}));
  EXPECT_THROW_MSG(net->forward(torch::zeros({1, 2})),
                   "NeuralNetwork::forward(): operation \"gain\"'s on_preactivation at level 1: LevelOperation: no "
                   "parameter \"gg\"; the operation declared \"g\"");
  // And where the TorchScript export calls its script_* step (no file written).
  NeuralNetwork scripted(small_graph(), NeuralNetworkOptions().operations({std::make_shared<MisspeltScriptedGain>()}));
  const std::string path = ::testing::TempDir() + "/misspelt_gain.pt";
  std::filesystem::remove(path);
  EXPECT_THROW_MSG(export_torchscript(scripted, path),
                   "export_torchscript(): operation \"gain\"'s script_on_preactivation at level 1: LevelOperation: "
                   "no parameter \"gg\"; the operation declared \"g\"");
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(UserOperation, TrainsAndSurvivesEdits) {
  auto gain = std::make_shared<NeuronGain>();
  NeuralNetwork net(small_graph(),
                    NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").operations({gain}));
  EXPECT_EQ(net->num_parameters(), 7 + 4 + 4);
  {
    torch::NoGradGuard g;
    net->named_parameters()["gain.g"].copy_(torch::tensor({{2.0}, {3.0}, {0.5}, {-1.0}}, torch::kFloat64));
  }
  // By hand for x = (0.4, -0.2): neuron 3 = tanh(3 · (w03 · 0.4 + b3)) (dense order 2, 3, 4, 5).
  auto x = torch::tensor({0.4, -0.2}, torch::kFloat64);
  const double h3 = std::tanh(3.0 * (net->weight(0, 3) * 0.4 + net->bias(3)));
  const double h2 = std::tanh(2.0 * (net->weight(0, 2) * 0.4 + net->weight(1, 2) * -0.2 + net->bias(2)));
  const double o4 = 0.5 * (net->weight(2, 4) * h2 + net->weight(3, 4) * h3 + net->bias(4));
  EXPECT_NEAR(net->forward(x)[0].item<double>(), o4, 1e-12);
  EXPECT_LE(max_gradient_error(net, torch::randn({3, 2}, torch::kFloat64)), 1e-6);

  auto edited =
      edit(net).add_hidden_neurons({9}).add_connections({{0, 9}, {9, 4}}).remove_neurons({2}).build(1).network;
  auto g = edited->named_parameters()["gain.g"];
  const auto& t = edited->topology();
  EXPECT_EQ(g[t.bias_index(t.dense_of(3))].item<double>(), 3.0);
  EXPECT_EQ(g[t.bias_index(t.dense_of(5))].item<double>(), -1.0);
  EXPECT_EQ(g[t.bias_index(t.dense_of(9))].item<double>(), 1.0);  // new: its initial value
  EXPECT_THROW_MSG(save(net, ::testing::TempDir() + "/gain.ckpt"),
                   "user-defined operation \"gain\" cannot be written down; only the built-in techniques can "
                   "(torch::save of the network keeps every parameter, its own too, for torch::load into a network "
                   "built with it)");
  {  // What that message advises: torch::save, then torch::load into the same network built anew.
    const std::string path = ::testing::TempDir() + "/gain.pt";
    torch::save(net, path);
    NeuralNetwork again(small_graph(),
                        NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").operations({gain}));
    torch::load(again, path);
    EXPECT_TRUE(torch::equal(again->named_parameters()["gain.g"], net->named_parameters()["gain.g"]));
    EXPECT_TRUE(torch::equal(again->forward(x), net->forward(x)));
  }
  EXPECT_THROW_MSG(export_torchscript(net, ::testing::TempDir() + "/gain.pt"),
                   "user-defined operation \"gain\" has no TorchScript form");
  EXPECT_THROW_MSG(NeuralNetwork(small_graph(), NeuralNetworkOptions().operations({gain, gain})),
                   "NeuralNetwork(): two operations are named \"gain\"; give each its own name(), under which its "
                   "parameters are registered");
  // A clash with a built-in technique says so.
  class CalledTopoNorm : public NeuronGain {
   public:
    std::string name() const override { return "topo_norm"; }
  };
  EXPECT_THROW_MSG(
      NeuralNetwork(small_graph(),
                    NeuralNetworkOptions().use_topo_norm(true).operations({std::make_shared<CalledTopoNorm>()})),
      "NeuralNetwork(): two operations are named \"topo_norm\"; one is the built-in technique of that name: give "
      "yours another");
  // A parameter its build() declares wrongly is named with the operation.
  class ShortKeys : public NeuronGain {
   public:
    OperationParameters build(const Topology& topology, torch::Dtype dtype, at::Generator& g) const override {
      auto declared = NeuronGain::build(topology, dtype, g);
      declared.at("g").dim_keys[0]->labels.pop_back();
      return declared;
    }
  };
  EXPECT_THROW_MSG(NeuralNetwork(small_graph(), NeuralNetworkOptions().operations({std::make_shared<ShortKeys>()})),
                   "NeuralNetwork(): operation \"gain\": LevelOperation: parameter \"g\"'s dimension 0 has 3 labels "
                   "for 4 entries");
}

// A user operation that writes its own TorchScript form is exported, and the
// loaded module computes what the network does (eval mode, double).
TEST(UserOperation, WithAScriptFormIsExported) {
  NeuralNetwork net(small_graph(), NeuralNetworkOptions()
                                       .dtype(torch::kFloat64)
                                       .hidden_activation("tanh")
                                       .use_adaptive_activations(true)
                                       .operations({std::make_shared<ScriptedGain>()}));
  {
    torch::NoGradGuard g;
    net->named_parameters()["gain.g"].copy_(torch::tensor({{2.0}, {3.0}, {0.5}, {-1.0}}, torch::kFloat64));
    net->named_parameters()["adaptive_activation.b"].mul_(1.5);
  }
  const std::string path = ::testing::TempDir() + "/scripted_gain.pt";
  export_torchscript(net, path);
  auto module = torch::jit::load(path);
  net->eval();
  const auto x = torch::randn({5, 2}, torch::kFloat64);
  const auto expected = net->forward(x);
  const auto got = module.forward({x}).toTensor();
  EXPECT_LE((got - expected).abs().max().item<double>(), 1e-12);
  EXPECT_NE(torchscript_source(net).find("z = self.L1_gain * z"), std::string::npos) << torchscript_source(net);
}

// A dimension that strings several runs together (topo norm's rows, every
// level's sources in turn) matches an entry by its label within its run.
TEST(KeyedParameters, EntriesMatchByLabelWithinTheirRun) {
  const DimKeys from_keys = {DimKey({NeuronId("a"), NeuronId("b"), NeuronId("a")}, {1, 1, 2})};
  const DimKeys to_keys = {DimKey({NeuronId("a"), NeuronId("a"), NeuronId("b")}, {2, 1, 3})};
  const auto from = torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64);
  auto to = torch::full({3}, -1.0, torch::kFloat64);
  EXPECT_EQ(copy_keyed(from, from_keys, to, to_keys), 2);
  EXPECT_TRUE(torch::equal(to, torch::tensor({3.0, 1.0, -1.0}, torch::kFloat64)));
  // Without runs, labels alone match (one run).
  auto plain = torch::full({2}, -1.0, torch::kFloat64);
  EXPECT_EQ(copy_keyed(torch::tensor({5.0, 6.0}, torch::kFloat64), {DimKey({NeuronId(1), NeuronId(2)})}, plain,
                       {std::vector<NeuronId>{2, 7}}),
            1);
  EXPECT_TRUE(torch::equal(plain, torch::tensor({6.0, -1.0}, torch::kFloat64)));
  OperationParameters bad;
  bad["g"] = {torch::zeros({2}), {DimKey({NeuronId(1), NeuronId(2)}, {1})}};
  EXPECT_THROW_MSG((void)OperationModule(bad), "LevelOperation: parameter \"g\"'s dimension 0 has 2 labels but 1 runs");
  // A key names every index of its dimension, no more, no fewer.
  bad["g"] = {torch::zeros({5, 1}), {DimKey({NeuronId(1)}), std::nullopt}};
  EXPECT_THROW_MSG((void)OperationModule(bad),
                   "LevelOperation: parameter \"g\"'s dimension 0 has 1 labels for 5 entries");
  bad["g"] = {torch::zeros({2}), {DimKey({NeuronId(1), NeuronId(2)}), std::nullopt}};
  EXPECT_THROW_MSG((void)OperationModule(bad), "LevelOperation: parameter \"g\" has 2 dimension keys for 1 dimensions");
  bad["g"] = {torch::Tensor(), {}};
  EXPECT_THROW_MSG((void)OperationModule(bad), "LevelOperation: parameter \"g\" is an undefined tensor");
}
