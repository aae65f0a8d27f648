// connex::ham: Lagrangians against autograd, synapses' closed forms, energy
// descent, clamping, training through the descent, edits, checkpoints, errors.
#include <functional>
#include <random>

#include "connex/ham/checkpoint.h"
#include "connex/ham/edit.h"
#include "connex/ham/ham.h"
#include "ham_util.h"
#include "optimizer_key.h"
#include "test_util.h"

namespace connex::testing {
namespace {

namespace H = connex::ham;
using Pairs = std::vector<std::pair<NeuronId, NeuronId>>;

struct DoubleDefault {
  DoubleDefault() { torch::set_default_dtype(caffe2::TypeMeta::Make<double>()); }
  ~DoubleDefault() { torch::set_default_dtype(caffe2::TypeMeta::Make<float>()); }
};

torch::Tensor autograd_of(H::LagrangianImpl& l, const torch::Tensor& x) {
  auto leaf = x.detach().requires_grad_(true);
  return torch::autograd::grad({l.value(leaf).sum()}, {leaf})[0];
}

std::vector<std::pair<std::string, H::Lagrangian>> builtin_lagrangians() {
  return {{"identity", H::identity()},
          {"relu", H::relu()},
          {"repu3", H::repu(3)},
          {"repu1.5", H::repu(1.5)},
          {"exponential", H::exponential(0.7)},
          {"rexp", H::rexp(1.5)},
          {"tanh", H::tanh(2.0)},
          {"sigmoid", H::sigmoid(1.5)},
          {"softmax", H::softmax(2.0)},
          {"softmax_dim0", H::softmax(0.5, 0)},
          {"layernorm", H::layernorm(1.3, 0.2)},
          {"spherical_norm", H::spherical_norm()}};
}

TEST(HamLagrangian, ActivationEqualsAutogradAndLayerEnergyGradientIsTheState) {
  DoubleDefault dd;
  torch::manual_seed(1);
  for (auto& [name, l] : builtin_lagrangians()) {
    l->attach({3, 4}, name);
    l->to(torch::kDouble);
    for (int trial = 0; trial < 5; ++trial) {
      auto x = torch::randn({6, 3, 4}, torch::kDouble) * 1.5;
      EXPECT_TRUE(torch::allclose(l->activation(x), autograd_of(*l, x), 1e-9, 1e-11)) << name;
      // ∂E/∂g = x, through x: ∂E/∂x = (∂g/∂x)ᵀ x.
      auto leaf = x.clone().requires_grad_(true);
      auto g = l->activation(leaf);
      auto e = ((leaf * g).reshape({6, -1}).sum(1) - l->value(leaf)).sum();
      auto de_dx = torch::autograd::grad({e}, {leaf}, {}, true)[0];
      auto jt_x = g.requires_grad() ? torch::autograd::grad({g}, {leaf}, {x})[0] : torch::zeros_like(x);
      EXPECT_TRUE(torch::allclose(de_dx, jt_x, 1e-9, 1e-11)) << name;
    }
  }
}

// Every built-in activation is its Lagrangian's gradient by central
// differences too (check_gradient_formula, which a custom Lagrangian's author
// uses); one written wrong is caught.
TEST(HamLagrangian, ActivationsPassTheGradientFormulaCheck) {
  DoubleDefault dd;
  torch::manual_seed(4);
  for (auto& [name, l] : builtin_lagrangians()) {
    l->attach({5}, "x");
    const auto x = torch::randn({3, 5}) + (name == "relu" || name.rfind("repu", 0) == 0 ? 0.5 : 0.0);
    const auto value = [&](const torch::Tensor& v) { return l->value(v); };
    const auto check = check_gradient_formula(value, l->activation(x), x);
    EXPECT_TRUE(check.passed) << name << ": " << check.summary();
    // The README's tighter rtol for a formula: the built-ins pass it, an activation off by 0.1 % does not.
    const auto tight = GradientCheckOptions().rtol(1e-7);
    EXPECT_TRUE(check_gradient_formula(value, l->activation(x), x, tight).passed) << name;
    EXPECT_TRUE(check_gradient_formula(value, 1.001 * l->activation(x), x).passed) << name;
    EXPECT_FALSE(check_gradient_formula(value, 1.001 * l->activation(x), x, tight).passed) << name;
  }
  struct TripledActivation : H::LagrangianImpl {
    torch::Tensor value(const torch::Tensor& x) override { return 0.5 * x.pow(2).sum(1); }
    torch::Tensor activation(const torch::Tensor& x) override { return 3 * x; }
  } tripled;
  const auto x = torch::randn({2, 4});
  const auto check =
      check_gradient_formula([&](const torch::Tensor& v) { return tripled.value(v); }, tripled.activation(x), x);
  ASSERT_FALSE(check.passed);
  EXPECT_NEAR(check.analytic / check.numeric, 3.0, 1e-6);
}

TEST(HamLagrangian, ValuesMatchTheirFormulas) {
  DoubleDefault dd;
  auto x = torch::tensor({{-1.0, 0.5, 2.0}});
  EXPECT_NEAR(H::identity()->value(x).item<double>(), 0.5 * (1 + 0.25 + 4), 1e-12);
  EXPECT_NEAR(H::relu()->value(x).item<double>(), 0.5 * (0.25 + 4), 1e-12);
  EXPECT_NEAR(H::tanh(2.0)->value(x).item<double>(),
              (std::log(std::cosh(-2.0)) + std::log(std::cosh(1.0)) + std::log(std::cosh(4.0))) / 2, 1e-12);
  EXPECT_NEAR(H::softmax(2.0)->value(x).item<double>(), std::log(std::exp(-2.0) + std::exp(1.0) + std::exp(4.0)) / 2,
              1e-12);
  EXPECT_NEAR(H::rexp(1.0)->value(x).item<double>(), (std::exp(0.5) - 1.5) + (std::exp(2.0) - 3), 1e-12);
  // log cosh stays finite where cosh overflows.
  EXPECT_NEAR(H::tanh(1.0)->value(torch::tensor({{1000.0}})).item<double>(), 1000 - std::log(2.0), 1e-9);
}

TEST(HamLagrangian, CallableLagrangianDifferentiatesByAutograd) {
  DoubleDefault dd;
  auto quartic = H::lagrangian([](const torch::Tensor& x) { return x.pow(4).sum(1) / 4; }, true);
  auto x = torch::randn({4, 5});
  EXPECT_TRUE(torch::allclose(quartic->activation(x), x.pow(3)));
  // A value autograd cannot trace to x would give an activation of 0 everywhere: refused, with or without grad mode.
  auto detached = H::lagrangian([](const torch::Tensor& x) { return x.detach().pow(2).sum(1); }, true);
  const char* untraced =
      "LagrangianImpl::activation(): the Lagrangian's value does not depend on the state through autograd";
  EXPECT_THROW_MSG(detached->activation(x), untraced);
  {
    torch::NoGradGuard no_grad;
    EXPECT_THROW_MSG(detached->activation(x), untraced);
  }
}

TEST(HamLagrangian, LayernormAnswersConvexBeforeAndAfterItJoinsALayer) {
  auto norm = H::layernorm(0.5);
  EXPECT_TRUE(norm->convex());  // from the initial γ: no layer has sized γ yet
  H::HAM ham;
  ham->add_layer("n", {3}, norm);
  EXPECT_TRUE(norm->convex());
  {
    torch::NoGradGuard no_grad;
    ham->named_parameters()["layers.n.gamma"].fill_(-0.5);  // as training might
  }
  EXPECT_FALSE(norm->convex());
  EXPECT_TRUE(H::layernorm(0.5)->convex());
  EXPECT_FALSE(H::lagrangian([](const torch::Tensor& x) { return x.sum(1); })->convex());
}

// Synapses' closed-form gradients against autograd of their energy.
void expect_gradients_match(H::SynapseImpl& s, const std::vector<torch::Tensor>& g, const std::string& what) {
  std::vector<torch::Tensor> leaves;
  for (const auto& t : g) leaves.push_back(t.detach().requires_grad_(true));
  auto expected = torch::autograd::grad({s.energy(leaves).sum()}, leaves, {}, false, false, true);
  auto got = s.gradients(g);
  ASSERT_EQ(got.size(), g.size());
  for (size_t k = 0; k < g.size(); ++k) {
    auto e = expected[k].defined() ? expected[k] : torch::zeros_like(g[k]);
    EXPECT_TRUE(torch::allclose(got[k], e, 1e-9, 1e-11)) << what << " layer " << k;
  }
}

TEST(HamSynapse, ClosedFormGradientsEqualAutograd) {
  DoubleDefault dd;
  torch::manual_seed(2);
  H::HAM ham;
  ham->add_layer("a", {5}, H::tanh())
      .add_layer("b", {2, 3}, H::sigmoid())
      .add_layer("img", {2, 7, 6}, H::identity())
      .add_layer("maps", {3, 4, 3}, H::identity())
      .add_layer("tokens", {4, 6}, H::identity())
      .add_labelled_layer("n", {"x", "y", "z"}, H::tanh())
      .add_synapse("ab", H::linear(true), {"a", "b"})
      .add_synapse("aa", H::linear(true), {"a"})
      .add_synapse("bias", H::bias(), {"b"})
      .add_synapse("conv", H::conv2d({3, 2}, {2, 2}, {1, 0}), {"img", "maps"})
      .add_synapse("att", H::attention(2, 3), {"tokens"})
      .add_synapse("loops", H::graph({{0, 1}, {1, 2}, {2, 0}, {3, 3}, {4, 1}}), {"a"})
      .add_synapse("across", H::graph({{0, "x"}, {0, "y"}, {4, "z"}}), {"a", "n"});
  for (auto& p : ham->parameters()) torch::NoGradGuard(), p.data().normal_();
  auto x = ham->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  auto g = ham->activations(x);
  for (const auto& s : ham->synapses()) {
    std::vector<torch::Tensor> gs;
    for (const auto& l : s.layers) gs.push_back(g[l]);
    expect_gradients_match(*s.synapse, gs, s.name);
  }
}

TEST(HamSynapse, AttentionGradientIsMultiHeadAttention) {
  DoubleDefault dd;
  torch::manual_seed(21);
  // Queries from one layer, keys from another: ∂E/∂g_q = −Σ_h softmax(β Q_h K_hᵀ) K_h W_Q,hᵀ, attention whose values
  // are the keys mapped back.
  const int64_t heads = 3, head_dim = 2;
  const double beta = 0.8;
  H::HAM ham;
  ham->add_layer("q", {4, 5}, H::identity()).add_layer("k", {6, 3}, H::identity());
  ham->add_synapse("att", H::attention(heads, head_dim, beta), {"q", "k"});
  auto params = ham->synapse("att").synapse->named_parameters();
  auto wq = params["query"], wk = params["key"];
  auto gq = torch::randn({2, 4, 5}), gk = torch::randn({2, 6, 3});
  auto by_hand = torch::zeros_like(gq);
  for (int64_t h = 0; h < heads; ++h) {
    auto q = gq.matmul(wq[h]), k = gk.matmul(wk[h]);  // [2, 4, hd], [2, 6, hd]
    auto a = torch::softmax(beta * q.matmul(k.transpose(1, 2)), -1);
    by_hand -= a.matmul(k).matmul(wq[h].t());
  }
  auto d = ham->synapse("att").synapse->gradients({gq, gk});
  EXPECT_TRUE(torch::allclose(d[0], by_hand, 1e-10, 1e-12));
}

// A trainable Lagrangian of the user's own: a learnt gain a, L = Σ softplus(a·x)/a.
struct GainLagrangian : H::LagrangianImpl {
  GainLagrangian() { gain = register_parameter("gain", torch::ones({}) * 1.5); }
  torch::Tensor value(const torch::Tensor& x) override { return (torch::softplus(gain * x) / gain).sum(1); }
  std::shared_ptr<H::LagrangianImpl> fresh() const override { return std::make_shared<GainLagrangian>(); }
  bool convex() const override { return true; }
  torch::Tensor gain;
};

TEST(HamLagrangian, CustomTrainableModuleTrainsThroughTheDescent) {
  DoubleDefault dd;
  torch::manual_seed(22);
  H::HAM ham;
  ham->add_layer("in", {3}, H::identity())
      .add_layer("out", {4}, std::make_shared<GainLagrangian>())
      .add_layer("top", {2}, H::identity());
  ham->add_synapse("io", H::linear(), {"in", "out"}).add_synapse("ot", H::linear(), {"out", "top"});
  auto x = ham->init_states(2);
  x["in"] = torch::randn({2, 3});
  // "top" moves by g_out, which the gain shapes.
  auto loss = [&] { return ham->descend(x, H::DescentOptions().steps(4), {{"in", {}}}).states["top"].pow(2).sum(); };
  auto l = loss();
  l.backward();
  auto gain = ham->named_parameters()["layers.out.gain"];
  ASSERT_TRUE(gain.grad().defined());
  EXPECT_NEAR(gain.grad().item<double>(), central_difference(gain.data().view(-1), 0, loss), 1e-6);
  // Its activation is autograd's gradient of its value, and clone() copies its parameter through fresh().
  auto copy = std::dynamic_pointer_cast<H::HAMImpl>(ham->clone());
  EXPECT_TRUE(torch::equal(copy->named_parameters()["layers.out.gain"], gain));
}

TEST(HamSynapse, GraphEqualsDenseWithTheSameEntries) {
  DoubleDefault dd;
  torch::manual_seed(3);
  const int64_t n = 12;
  std::mt19937 rng(4);
  Pairs one, two;
  std::set<std::pair<int, int>> seen;
  while (one.size() < 30) {
    int i = rng() % n, j = rng() % n;  // self-loops and cycles included
    if (seen.count({i, j}) || seen.count({j, i})) continue;
    seen.insert({i, j});
    one.push_back({i, j});
  }
  for (int k = 0; k < 25; ++k) two.push_back({int(rng() % n), int(k)});
  auto w1 = torch::randn({30}), w2 = torch::randn({25});
  auto dense1 = torch::zeros({n, n}), dense2 = torch::zeros({n, 25});
  for (int c = 0; c < 30; ++c) dense1[one[c].first.as_integer()][one[c].second.as_integer()] += w1[c];
  for (int c = 0; c < 25; ++c) dense2[two[c].first.as_integer()][two[c].second.as_integer()] += w2[c];

  auto build = [&](bool graph) {
    H::HAM ham;
    ham->add_layer("a", {n}, H::tanh()).add_layer("b", {25}, H::softmax(2.0));
    ham->add_synapse("one", graph ? H::graph(one, w1) : H::linear(), {"a"});
    ham->add_synapse("two", graph ? H::graph(two, w2) : H::linear(), {"a", "b"});
    if (!graph) {
      torch::NoGradGuard no_grad;
      ham->synapse("one").synapse->named_parameters()["weight"].copy_(2 * dense1);  // linear is −½ gᵀWg
      ham->synapse("two").synapse->named_parameters()["weight"].copy_(dense2);
    }
    return ham;
  };
  auto sparse = build(true), dense = build(false);
  auto x = sparse->init_states(4);
  for (auto& [name, t] : x) t.normal_();
  auto es = sparse->energy_parts(x), ed = dense->energy_parts(x);
  for (const auto& name : {"one", "two"}) EXPECT_TRUE(torch::allclose(es[name], ed[name], 1e-10, 1e-12)) << name;
  auto g = sparse->activations(x);
  auto by_hand = -((g["a"].mm(dense1)) * g["a"]).sum(1);
  EXPECT_TRUE(torch::allclose(es["one"], by_hand, 1e-10, 1e-12));
  auto opts = H::DescentOptions().steps(7).dt(0.2);
  auto xs = sparse->descend(x, opts).states, xd = dense->descend(x, opts).states;
  for (const auto& name : {"a", "b"}) EXPECT_TRUE(torch::allclose(xs[name], xd[name], 1e-10, 1e-12)) << name;
}

// A random HAM of convex layers: 2-4 layers, random synapses of every kind, graph synapses with cycles and self-loops.
H::HAM random_ham(std::mt19937& rng) {
  H::HAM ham;
  const int layers = 2 + rng() % 3;
  auto pick = [&]() -> H::Lagrangian {
    switch (rng() % 9) {
      case 0:
        return H::identity();
      case 1:
        return H::relu();
      case 2:
        return H::tanh(0.5 + (rng() % 3) * 0.5);
      case 3:
        return H::sigmoid(1.0);
      case 4:
        return H::softmax(1.0 + rng() % 3);
      case 5:
        return H::rexp(0.5);
      case 6:
        return H::exponential(0.3);
      // ε bounds these two's curvature near x = 0, so that dt = 0.02 is small enough.
      case 7:
        return H::layernorm(1.0, 0.1, 0.1);
      default:
        return H::spherical_norm(0.1);
    }
  };
  std::vector<int64_t> sizes;
  for (int l = 0; l < layers; ++l) {
    sizes.push_back(2 + rng() % 6);
    ham->add_layer("l" + std::to_string(l), {sizes.back()}, pick(), 0.5 + (rng() % 4) * 0.5);
  }
  const int synapses = 1 + rng() % 5;
  for (int s = 0; s < synapses; ++s) {
    const int a = rng() % layers, b = rng() % layers;
    const std::string name = "s" + std::to_string(s), la = "l" + std::to_string(a), lb = "l" + std::to_string(b);
    switch (rng() % 4) {
      case 0:
        ham->add_synapse(name, H::linear(rng() % 2),
                         a == b ? std::vector<std::string>{la} : std::vector<std::string>{la, lb});
        break;
      case 1:
        ham->add_synapse(name, H::bias(), {la});
        break;
      default: {
        Pairs c;
        std::set<std::pair<int, int>> seen;
        const int count = 1 + rng() % 12;
        for (int k = 0; k < count; ++k) {
          int i = rng() % sizes[a], j = rng() % sizes[b];
          if (seen.count({i, j}) || (a == b && seen.count({j, i}))) continue;
          seen.insert({i, j});
          c.push_back({i, j});
        }
        ham->add_synapse(name, H::graph(c), a == b ? std::vector<std::string>{la} : std::vector<std::string>{la, lb});
      }
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& p : ham->named_parameters())
    if (p.key().rfind("synapses.", 0) == 0)
      p.value().mul_(0.5).add_(p.key().find("bias") != std::string::npos ? 0.1 : 0.0);
  return ham;
}

TEST(HamDescent, EnergyNeverIncreasesOnRandomConvexHams) {
  DoubleDefault dd;
  torch::manual_seed(5);
  std::mt19937 rng(6);
  int graphs_with_cycles = 0;
  for (int trial = 0; trial < 220; ++trial) {
    auto ham = random_ham(rng);
    for (const auto& s : ham->synapses())
      if (s.synapse->connection_labels() && s.layers.size() == 1) ++graphs_with_cycles;
    auto x = ham->init_states(3);
    for (auto& [name, t] : x) t.normal_();
    torch::NoGradGuard no_grad;
    auto e = ham->descend(x, H::DescentOptions().steps(25).dt(0.02).record_energy(true)).energy;
    auto rise = (e.slice(0, 1) - e.slice(0, 0, -1)).max().item<double>();
    ASSERT_LE(rise, 1e-10 * (1 + e.abs().max().item<double>())) << "trial " << trial << ": " << *ham;
  }
  EXPECT_GT(graphs_with_cycles, 20);
}

TEST(HamDescent, StepIsMinusDtOverTauTimesAutogradDEdg) {
  DoubleDefault dd;
  torch::manual_seed(7);
  std::mt19937 rng(8);
  for (int trial = 0; trial < 20; ++trial) {
    auto ham = random_ham(rng);
    auto x = ham->init_states(2);
    for (auto& [name, t] : x) t.normal_();
    auto d = ham->dEdg(x);
    auto next = ham->descend(x, H::DescentOptions().steps(1).dt(0.3)).states;
    for (const auto& l : ham->layers())
      EXPECT_TRUE(torch::allclose(next[l.name], x[l.name] - 0.3 / l.tau * d[l.name], 1e-10, 1e-12)) << l.name;
  }
}

// x·g and L(x) both overflow float32 past βx ≈ 88 (exponential, rexp) and
// x^n (repu): the layer's energy is +∞ there, not ∞ − ∞ = NaN, its other
// samples are untouched and ∂E/∂g is still the state. (A synapse that sees
// such a g has no defined energy: −g·W·g with g = ∞.)
TEST(HamLagrangian, AnOverflowingLayerEnergyIsInfinityNotNaN) {
  const double inf = std::numeric_limits<double>::infinity();
  for (auto l : {H::exponential(1.0), H::rexp(2.0), H::repu(3)}) {
    const auto kind = l->to_json().dump();
    H::HAM ham;
    ham->add_layer("x", {2}, l);
    const double big = l->to_json().at("kind") == "repu" ? 1e13 : 100.0;
    H::States x{{"x", torch::tensor({big, 0.5, 0.25, -0.5}, torch::kFloat).view({2, 2})}};
    const auto energy = ham->energy(x);
    EXPECT_EQ(energy[0].item<double>(), inf) << kind;
    // The finite sample as before: x·g − L(x) itself.
    const auto x1 = x.at("x").narrow(0, 1, 1);
    const auto own = (x1 * l->activation(x1)).sum() - l->value(x1).sum();
    EXPECT_EQ(energy[1].item<float>(), own.item<float>()) << kind;
    EXPECT_TRUE(std::isfinite(energy[1].item<double>())) << kind;
    EXPECT_TRUE(torch::equal(ham->dEdg(x).at("x"), x.at("x"))) << kind;
  }
}

// A chain v → h → c (identity, softmax(3), tanh) drawn from seed 9, with 5 random samples.
std::pair<H::HAM, H::States> chain_with_states() {
  torch::manual_seed(9);
  H::HAM ham;
  ham->add_layer("v", {8}, H::identity()).add_layer("h", {6}, H::softmax(3.0)).add_layer("c", {4}, H::tanh());
  ham->add_synapse("vh", H::linear(), {"v", "h"}).add_synapse("hc", H::linear(), {"h", "c"});
  auto x = ham->init_states(5);
  for (auto& [name, t] : x) t.normal_();
  return {ham, x};
}

TEST(HamDescent, ClampedLayersAndEntriesNeverMove) {
  auto [ham, x] = chain_with_states();
  auto mask = torch::rand({5, 8}) < 0.5;
  auto out = ham->descend(x, H::DescentOptions().steps(30), {{"v", mask}, {"c", {}}}).states;
  EXPECT_TRUE(torch::equal(out["c"], x["c"]));
  EXPECT_TRUE(torch::equal(out["v"].masked_select(mask), x["v"].masked_select(mask)));
  EXPECT_FALSE(torch::equal(out["v"].masked_select(~mask), x["v"].masked_select(~mask)));
  EXPECT_FALSE(torch::equal(out["h"], x["h"]));
  // A mask shared by the batch broadcasts.
  auto row = torch::tensor({true, false, true, false, true, false, true, false});
  auto shared = ham->descend(x, {}, {{"v", row}}).states;
  EXPECT_TRUE(
      torch::equal(shared["v"].index({torch::indexing::Slice(), row}), x["v"].index({torch::indexing::Slice(), row})));
}

TEST(HamDescent, ResultNeverSharesTheCallersTensors) {
  torch::manual_seed(19);
  H::HAM ham;
  ham->add_layer("v", {4}, H::identity()).add_layer("h", {3}, H::softmax(2.0));
  ham->add_synapse("vh", H::linear(), {"v", "h"});
  auto x = ham->init_states(2);
  for (auto& [name, t] : x) t.normal_();
  const auto before = x["v"].clone();
  auto none = ham->descend(x, H::DescentOptions().steps(0).record_energy(true));
  for (const auto& [name, t] : x) {
    EXPECT_TRUE(torch::equal(none.states[name], t)) << name;
    EXPECT_NE(none.states[name].data_ptr(), t.data_ptr()) << name;
  }
  EXPECT_EQ(none.energy.sizes(), (std::vector<int64_t>{1, 2}));
  none.states["v"].add_(1);
  EXPECT_TRUE(torch::equal(x["v"], before));
  // A layer held whole is copied too.
  auto held = ham->descend(x, H::DescentOptions().steps(3), {{"v", {}}}).states;
  EXPECT_TRUE(torch::equal(held["v"], x["v"]));
  EXPECT_NE(held["v"].data_ptr(), x["v"].data_ptr());
  // The copies keep the graph: the sum of the unmoved state has gradient 1 per entry.
  auto leaf = x["v"].clone().requires_grad_(true);
  auto y = x;
  y["v"] = leaf;
  ham->descend(y, H::DescentOptions().steps(0)).states["v"].sum().backward();
  EXPECT_TRUE(torch::equal(leaf.grad(), torch::ones({2, 4})));
}

// A step's change (the largest |Δx|) tells a descent that has not settled, and
// a tolerance stops one that has, where a fixed descent of as many steps would.
TEST(HamDescent, ToleranceStopsASettledDescentAndChangeTellsOneThatIsNot) {
  DoubleDefault dd;
  // One identity layer and no synapse: x ← x·(1 − dt/τ), a step moving the
  // largest |x| by dt/τ of it: here 0.2·0.9^(k−1) at step k.
  H::HAM leak;
  leak->add_layer("x", {2}, H::identity());
  const H::States x{{"x", torch::tensor({{1.0, -2.0}})}};
  const auto two = leak->descend(x, H::DescentOptions().steps(2).dt(0.1));
  EXPECT_EQ(two.steps, 2);
  EXPECT_NEAR(two.change, 0.2 * 0.9, 1e-15);
  EXPECT_FALSE(two.converged);  // no tolerance was given
  // 0.2·0.9^(k−1) ≤ 0.1 first at k = 8 (0.9^7 = 0.478, 0.9^6 = 0.531).
  const auto settled = leak->descend(x, H::DescentOptions().steps(100).dt(0.1).tolerance(0.1).record_energy(true));
  EXPECT_EQ(settled.steps, 8);
  EXPECT_TRUE(settled.converged);
  EXPECT_NEAR(settled.change, 0.2 * std::pow(0.9, 7), 1e-15);
  EXPECT_EQ(settled.energy.size(0), 9);
  EXPECT_TRUE(
      torch::equal(settled.states.at("x"), leak->descend(x, H::DescentOptions().steps(8).dt(0.1)).states.at("x")));
  // dt/τ = 2.5: x ← −1.5·x, finite for 20 steps and moving ever more; not settled.
  const auto wild = leak->descend(x, H::DescentOptions().steps(20).dt(2.5).tolerance(1e-3));
  EXPECT_EQ(wild.steps, 20);
  EXPECT_FALSE(wild.converged);
  EXPECT_NEAR(wild.change, 2.5 * 2.0 * std::pow(1.5, 19), 1e-9 * wild.change);
  EXPECT_EQ(leak->descend(x, H::DescentOptions().steps(0).tolerance(0.1)).steps, 0);
  EXPECT_FALSE(leak->descend(x, H::DescentOptions().steps(0).tolerance(0.1)).converged);

  // A memory settles well before its step budget; held layers and entries do not count.
  auto [ham, states] = chain_with_states();
  const auto memory = ham->descend(states, H::DescentOptions().steps(2000).tolerance(1e-6), {{"c", {}}});
  EXPECT_TRUE(memory.converged);
  EXPECT_LT(memory.steps, 2000);
  EXPECT_LE(memory.change, 1e-6);
  const auto fixed = ham->descend(states, H::DescentOptions().steps(memory.steps), {{"c", {}}});
  for (const auto& [name, t] : fixed.states) EXPECT_TRUE(torch::equal(memory.states.at(name), t)) << name;
  EXPECT_DOUBLE_EQ(fixed.change, memory.change);  // the last step is measured either way
}

TEST(HamDescent, InferenceKeepsNoGraphTrainingDoes) {
  torch::manual_seed(10);
  H::HAM ham;
  ham->add_layer("a", {4}, H::tanh()).add_layer("b", {3}, H::softmax());
  ham->add_synapse("ab", H::linear(), {"a", "b"}).add_synapse("att", H::linear(), {"a"});
  auto x = ham->init_states(2);
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, t] : ham->descend(x).states) EXPECT_FALSE(t.requires_grad()) << name;
  }
  for (const auto& [name, t] : ham->descend(x).states) EXPECT_TRUE(t.requires_grad()) << name;
  for (auto& p : ham->parameters()) p.requires_grad_(false);
  for (const auto& [name, t] : ham->descend(x).states) EXPECT_FALSE(t.requires_grad()) << name;
}

TEST(HamTraining, GradientsThroughTheDescentMatchFiniteDifferences) {
  DoubleDefault dd;
  torch::manual_seed(11);
  H::HAM ham;
  ham->add_layer("in", {5}, H::identity())
      .add_layer("hid", {4}, H::layernorm(1.2, 0.1))
      .add_layer("tok", {2, 3}, H::tanh())
      .add_layer("out", {3}, H::softmax(1.5));
  ham->add_synapse("ih", H::linear(true), {"in", "hid"})
      .add_synapse("ho", H::linear(), {"hid", "out"})
      .add_synapse("lat", H::graph({{0, 1}, {1, 2}, {2, 0}, {3, 3}}), {"hid"})
      .add_synapse("att", H::attention(2, 2), {"tok"})
      .add_synapse("to", H::linear(), {"tok", "out"})
      .add_synapse("bo", H::bias(), {"out"});
  auto x = ham->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  auto target = torch::randn({3, 3});
  auto loss = [&] {
    auto s = ham->descend(x, H::DescentOptions().steps(5).dt(0.2), {{"in", {}}}).states;
    return (ham->activations(s)["out"] * target).sum() + s["hid"].pow(2).sum() * 0.1;
  };
  auto value = loss();
  ham->zero_grad();
  value.backward();
  const double eps = 1e-6;
  for (auto& p : ham->named_parameters()) {
    auto flat = p.value().data().view(-1);
    auto grad = p.value().grad().view(-1);
    for (int64_t k = 0; k < std::min<int64_t>(flat.numel(), 6); ++k) {
      EXPECT_NEAR(grad[k].item<double>(), central_difference(flat, k, loss, eps),
                  1e-6 * (1 + std::abs(grad[k].item<double>())))
          << p.key() << "[" << k << "]";
    }
  }
}

TEST(HamTraining, SameSeedGivesBitIdenticalRuns) {
  auto run = [] {
    torch::manual_seed(12);
    H::HAM ham;
    ham->add_layer("in", {6}, H::identity()).add_layer("hid", {5}, H::relu()).add_layer("out", {3}, H::softmax());
    ham->add_synapse("ih", H::linear(), {"in", "hid"})
        .add_synapse("ho", H::linear(), {"hid", "out"})
        .add_synapse("lat", H::graph({{0, 1}, {2, 3}, {4, 4}}), {"hid"});
    torch::optim::Adam adam(ham->parameters(), 0.01);
    auto x = ham->init_states(4);
    x["in"] = torch::randn({4, 6});
    for (int step = 0; step < 3; ++step) {
      auto s = ham->descend(x, H::DescentOptions().steps(4), {{"in", {}}}).states;
      auto l = s["out"].pow(2).sum();
      adam.zero_grad();
      l.backward();
      adam.step();
    }
    std::vector<torch::Tensor> out;
    for (const auto& p : ham->parameters()) out.push_back(p.detach().clone());
    return out;
  };
  auto a = run(), b = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(torch::equal(a[k], b[k]));
}

// ------------------------------------------------------------------- edits

TEST(HamEdit, SurvivingEntriesAreBitIdenticalByLabel) {
  torch::manual_seed(13);
  auto ham = editable_ham();
  for (auto& p : ham->parameters()) torch::NoGradGuard(), p.data().normal_();
  auto r = H::edit(ham)
               .remove_neurons("a", {"q"})
               .add_neurons("a", {"t"})
               .add_neurons("b", {7})
               .add_connections("lat", {{"t", "p"}, {"r", "s"}}, torch::tensor({0.5, -0.25}))
               .add_connections("across", {{"t", 7}})
               .remove_connections("lat", {{"p", "r"}})  // given as (r, p): directions do not matter
               .build();
  auto& e = *r.ham;
  EXPECT_EQ(e.layer("a").neurons, (std::vector<NeuronId>{"p", "r", "s", "t"}));
  EXPECT_EQ(e.layer("b").neurons, (std::vector<NeuronId>{0, 1, 2, 7}));
  auto old_p = ham->named_parameters(), new_p = e.named_parameters();
  // a: old p q r s -> new p r s t; b: old 0 1 2 -> new 0 1 2 7.
  const std::vector<int> a_old{0, 2, 3}, a_new{0, 1, 2};
  auto W = old_p["synapses.ab.weight"], W2 = new_p["synapses.ab.weight"];
  for (size_t i = 0; i < a_old.size(); ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(W2[a_new[i]][j].item<float>(), W[a_old[i]][j].item<float>());
  auto A = old_p["synapses.aa.weight"], A2 = new_p["synapses.aa.weight"];
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = 0; j < 3; ++j) EXPECT_EQ(A2[a_new[i]][a_new[j]].item<float>(), A[a_old[i]][a_old[j]].item<float>());
  EXPECT_TRUE(torch::equal(new_p["synapses.ab.bias"].slice(0, 0, 3), old_p["synapses.ab.bias"]));
  EXPECT_TRUE(torch::equal(new_p["synapses.bb.bias"].slice(0, 0, 3), old_p["synapses.bb.bias"]));
  EXPECT_TRUE(torch::equal(new_p["layers.b.delta"].slice(0, 0, 3), old_p["layers.b.delta"]));
  EXPECT_TRUE(torch::equal(new_p["layers.b.gamma"], old_p["layers.b.gamma"]));
  // lat: old (p,q) (q,r) (r,p) (s,s) -> (s,s) survives, then (t,p) = 0.5, (r,s) = −0.25.
  EXPECT_EQ(*e.synapse("lat").synapse->connection_labels(), (Pairs{{"s", "s"}, {"t", "p"}, {"r", "s"}}));
  auto L = new_p["synapses.lat.weight"];
  EXPECT_EQ(L[0].item<float>(), old_p["synapses.lat.weight"][3].item<float>());
  EXPECT_EQ(L[1].item<float>(), 0.5f);
  EXPECT_EQ(L[2].item<float>(), -0.25f);
  auto C = new_p["synapses.across.weight"];
  EXPECT_TRUE(torch::equal(C.slice(0, 0, 2), old_p["synapses.across.weight"]));
  EXPECT_EQ(C[2].item<float>(), 0.0f);  // new connections start at 0
  // The original is untouched.
  EXPECT_EQ(ham->layer("a").neurons.size(), 4u);
  EXPECT_EQ(ham->synapse("lat").synapse->connection_labels()->size(), 4u);
}

TEST(HamEdit, AddingZeroConnectionsKeepsTheEnergy) {
  DoubleDefault dd;
  torch::manual_seed(14);
  auto ham = editable_ham();
  auto r = H::edit(ham).add_connections("lat", {{"p", "s"}, {"q", "q"}}).build();
  auto x = ham->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  EXPECT_TRUE(torch::equal(ham->energy(x), r.ham->energy(x)));
}

TEST(HamEdit, OptimizerStateFollowsTheLabels) {
  torch::manual_seed(15);
  auto ham = editable_ham();
  torch::optim::Adam adam(ham->parameters(), torch::optim::AdamOptions(0.003));
  auto x = ham->init_states(4);
  for (auto& [name, t] : x) t.normal_();
  for (int step = 0; step < 2; ++step) {
    adam.zero_grad();
    ham->descend(x, H::DescentOptions().steps(3)).states.at("b").pow(2).sum().backward();
    adam.step();
  }
  auto r = H::edit(ham).remove_neurons("a", {"p"}).remove_connections("lat", {{"q", "r"}}).build();
  auto next = H::optimizer_after_edit(adam, ham, r);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(next->param_groups()[0].options()).lr(), 0.003);
  auto oldW = ham->named_parameters()["synapses.ab.weight"], newW = r.ham->named_parameters()["synapses.ab.weight"];
  auto& o = adam_state(adam, oldW);
  auto& n = adam_state(*next, newW);
  EXPECT_EQ(n.step(), o.step());
  EXPECT_TRUE(torch::equal(n.exp_avg(), o.exp_avg().slice(0, 1)));  // rows q r s
  auto oldL = ham->named_parameters()["synapses.lat.weight"], newL = r.ham->named_parameters()["synapses.lat.weight"];
  // lat: (p,q) (q,r) (r,p) (s,s) -> only (s,s) survives (p is gone, (q,r) removed).
  ASSERT_EQ(newL.numel(), 1);
  EXPECT_EQ(adam_state(*next, newL).exp_avg_sq()[0].item<float>(),
            adam_state(adam, oldL).exp_avg_sq()[3].item<float>());
  // The carried optimizer steps.
  next->zero_grad();
  r.ham->descend(x.count("a") ? H::States{{"a", x["a"].slice(1, 1)}, {"b", x["b"]}} : x, H::DescentOptions().steps(2))
      .states.at("b")
      .pow(2)
      .sum()
      .backward();
  next->step();
}

// An edit's map moves state only from the HAM it started from: following it
// from the edited HAM, or from one with other labels, is refused, naming the
// first difference, and the optimizer is left as it was.
TEST(HamEdit, OptimizerAfterEditRefusesAnotherHam) {
  auto ham = editable_ham();
  torch::optim::Adam adam(ham->parameters(), torch::optim::AdamOptions(0.003));
  const auto groups = adam.param_groups().size();
  auto r = H::edit(ham).remove_neurons("a", {"p"}).build();
  const char* remedy = "; pass the HAM the edit started from, as it was before the edit";
  EXPECT_THROW_MSG(H::optimizer_after_edit(adam, r.ham, r),
                   std::string("ham::optimizer_after_edit(): the edit was made from another HAM (its layer \"a\" has "
                               "4 neurons, here 3)") +
                       remedy);
  auto cut = H::edit(ham).remove_connections("lat", {{"q", "r"}}).build();
  EXPECT_THROW_MSG(H::optimizer_after_edit(adam, cut.ham, cut), "(its synapse \"lat\" has 4 connections, here 3)");
  // The same sizes, another label: s gone, z added.
  auto swapped = H::edit(ham).remove_neurons("a", {"s"}).add_neurons("a", {"z"}).build();
  EXPECT_THROW_MSG(H::optimizer_after_edit(adam, swapped.ham, cut),
                   "(its layer \"a\" has other neuron labels, as many)");
  EXPECT_EQ(adam.param_groups().size(), groups);
  EXPECT_TRUE(adam.state().empty());
  // The HAM it started from passes.
  auto next = H::optimizer_after_edit(adam, ham, r);
  EXPECT_EQ(next->param_groups()[0].params().size(), r.ham->parameters().size());
  // An optimizer that holds the edited HAM's parameters already.
  torch::optim::Adam both(ham->parameters(), torch::optim::AdamOptions(0.003));
  both.add_param_group(torch::optim::OptimizerParamGroup(r.ham->parameters()));
  EXPECT_THROW_MSG(H::optimizer_after_edit(both, ham, r),
                   "ham::optimizer_after_edit(): the optimizer's group 1 holds a parameter of the edited HAM already; "
                   "build it over the HAM before the edit");
  // The same HAM, changed since the edit was built, is another HAM.
  ham->add_layer("late", {2}, H::identity());
  EXPECT_THROW_MSG(H::optimizer_after_edit(adam, ham, r), "(its layers are a, b, here a, b, late)");
}

TEST(HamEdit, BadStepsAreRefusedNamingThemAndNothingChanges) {
  auto ham = editable_ham();
  auto before = ham->named_parameters()["synapses.ab.weight"].clone();
  EXPECT_THROW_MSG(H::edit(ham).remove_neurons("a", {"zz"}).build(),
                   "ham::edit(): step 1 (remove_neurons \"a\"): layer \"a\" has no neuron \"zz\"");
  EXPECT_THROW_MSG(H::edit(ham).add_neurons("a", {"p"}).build(), "layer \"a\" already has neuron \"p\"");
  EXPECT_THROW_MSG(H::edit(ham).add_neurons("nope", {1}).build(), "there is no layer \"nope\"");
  EXPECT_THROW_MSG(H::edit(ham).remove_neurons("b", {0, 1, 2}).build(), "would leave layer \"b\" without neurons");
  EXPECT_THROW_MSG(H::edit(ham).add_connections("lat", {{"q", "p"}}).build(),
                   "synapse \"lat\" already has connection (\"q\", \"p\")");
  EXPECT_THROW_MSG(H::edit(ham).add_connections("ab", {{"q", 0}}).build(), "synapse \"ab\" is not a graph synapse");
  EXPECT_THROW_MSG(H::edit(ham).add_connections("across", {{"q", 9}}).build(),
                   "names neuron 9, which layer \"b\" does not have");
  EXPECT_THROW_MSG(H::edit(ham).remove_connections("lat", {{"p", "s"}}).build(),
                   "synapse \"lat\" has no connection (\"p\", \"s\")");
  EXPECT_THROW_MSG(H::edit(ham).add_connections("lat", {{"p", "s"}}, torch::ones({2})).build(),
                   "expected one floating-point weight per connection ([1])");
  EXPECT_THROW_MSG(H::edit(ham).add_neurons("a", {"u"}).remove_neurons("a", {"u", "u"}).build(),
                   "step 2 (remove_neurons \"a\"): neuron \"u\" is listed twice");
  // Parameters follow labels: what an edit removed and added back would come back with its old values.
  EXPECT_THROW_MSG(H::edit(ham).remove_connections("lat", {{"p", "q"}}).add_connections("lat", {{"q", "p"}}).build(),
                   "ham::edit(): step 2 (add_connections \"lat\"): connection (\"q\", \"p\") was removed earlier in "
                   "this edit; build() first, then add it anew");
  EXPECT_THROW_MSG(H::edit(ham).remove_neurons("a", {"q"}).add_neurons("a", {"q"}).build(),
                   "ham::edit(): step 2 (add_neurons \"a\"): neuron \"q\" was removed earlier in this edit; build() "
                   "first, then add it anew");
  H::HAM conv;
  conv->add_layer("img", {1, 4, 4}, H::identity()).add_layer("tok", {3}, H::identity());
  conv->add_layer("toks", {2, 3}, H::identity()).add_synapse("att", H::attention(1, 2), {"toks"});
  // A custom synapse with a parameter it does not index by neuron cannot
  // follow an edit; one without parameters has nothing to move.
  struct Square : H::SynapseImpl {
    torch::Tensor scale;
    torch::Tensor energy(const std::vector<torch::Tensor>& g) override { return -(g[0] * g[0]).sum(1) * scale; }
    void attach(const std::vector<H::LayerView>&, const std::string&) override {
      scale = register_parameter("scale", torch::ones({1}));
    }
  };
  struct Plain : H::SynapseImpl {
    torch::Tensor energy(const std::vector<torch::Tensor>& g) override { return -(g[0] * g[0]).sum(1); }
    void attach(const std::vector<H::LayerView>&, const std::string&) override {}
    std::shared_ptr<H::SynapseImpl> fresh() const override { return std::make_shared<Plain>(); }
  };
  conv->add_synapse("sq", std::make_shared<Square>(), {"tok"});
  EXPECT_THROW_MSG(H::edit(conv).add_neurons("img", {9}).build(), "only the neurons of a 1-D layer can be edited");
  EXPECT_THROW_MSG(H::edit(conv).add_neurons("tok", {9}).build(),
                   "synapse \"sq\" joins layer \"tok\" and cannot follow neuron edits (it has parameters but names "
                   "none of them in neuron_dims())");
  H::HAM plain;
  plain->add_layer("tok", {3}, H::identity()).add_synapse("sq", std::make_shared<Plain>(), {"tok"});
  EXPECT_EQ(H::edit(plain).add_neurons("tok", {9}).build().ham->layer("tok").neurons.size(), 4u);
  EXPECT_TRUE(torch::equal(before, ham->named_parameters()["synapses.ab.weight"]));
  EXPECT_EQ(ham->layer("a").neurons.size(), 4u);
}

// ------------------------------------------------------------------ errors

TEST(HamErrors, BadStructureIsRefusedNamingTheCulpritAndNothingChanges) {
  H::HAM ham;
  ham->add_layer("a", {4}, H::tanh())
      .add_layer("img", {1, 6, 6}, H::identity())
      .add_layer("m", {2, 3, 3}, H::identity());
  EXPECT_THROW_MSG(ham->add_layer("b", {3}, H::tanh(), 0.0),
                   "add_layer(): layer \"b\": expected a finite τ > 0, got 0");
  EXPECT_THROW_MSG(ham->add_layer("b", {3}, H::tanh(), -1.0), "expected a finite τ > 0, got -1");
  EXPECT_THROW_MSG(ham->add_layer("a", {3}, H::tanh()), "add_layer(): name \"a\" is taken by a layer");
  EXPECT_THROW_MSG(ham->add_layer("b.c", {3}, H::tanh()), "name \"b.c\" may hold only letters, digits");
  // A name's bytes are escaped: the message stays one whole line.
  EXPECT_THROW_MSG(ham->add_layer(std::string("a\0b", 3), {3}, H::tanh()),
                   "add_layer(): name \"a\\0b\" may hold only letters, digits, '_' and '-'");
  EXPECT_THROW_MSG(ham->add_layer("a\nb", {3}, H::tanh()), "add_layer(): name \"a\\nb\" may hold only");
  EXPECT_THROW_MSG(ham->layer("x\ny"), "HAM::layer(): there is no layer \"x\\ny\"");
  EXPECT_THROW_MSG(ham->add_labelled_layer("n\nm", {"p", "p"}, H::tanh()), "add_layer(): name \"n\\nm\" may hold");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::linear(), {"a", std::string("z\0z", 3)}),
                   "add_synapse(): synapse \"s\": there is no layer \"z\\0z\" (the layers: a, img, m)");
  EXPECT_THROW_MSG(ham->add_layer("b", {0}, H::tanh()), "expected every dim ≥ 1, got [0]");
  EXPECT_THROW_MSG(ham->add_layer("b", {3}, H::softmax(1.0, 2)), "softmax's dim 2 is out of range");
  EXPECT_THROW_MSG(
      ham->add_layer("b", {3}, H::lagrangian([](const torch::Tensor& x) { return x.sum(); })),
      "add_layer(): layer \"b\": its Lagrangian's value is [] for a state [2, 3]; expected one per sample [2]");
  struct Wrong : H::LagrangianImpl {
    torch::Tensor value(const torch::Tensor& x) override { return x.sum(1); }
    torch::Tensor activation(const torch::Tensor& x) override { return x.sum(1); }
  };
  EXPECT_THROW_MSG(
      ham->add_layer("b", {3}, std::make_shared<Wrong>()),
      "add_layer(): layer \"b\": its Lagrangian's activation is [2] for a state [2, 3]; expected the same shape");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::linear(), {"a", "zz"}),
                   "add_synapse(): synapse \"s\": there is no layer \"zz\"");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::linear(), {"a", "a"}), "layer \"a\" is listed twice");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::conv2d({3, 3}), {"img", "m"}),
                   "add_synapse(): synapse \"s\": the convolution of layer \"img\" [1, 6, 6] is [2, 4, 4], but layer "
                   "\"m\" is [2, 3, 3]");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::attention(1, 2), {"a"}),
                   "add_synapse(): synapse \"s\": an attention synapse needs layers shaped [tokens, dim], but layer "
                   "\"a\" is [4]");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::graph({{0, 9}}), {"a"}),
                   "connection (0, 9) names neuron 9, which layer \"a\" does not have");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::graph({{0, 1}, {1, 0}}), {"a"}),
                   "connection (1, 0) is listed twice (directions do not matter within one layer)");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::graph({{0, 1}}), {"img"}), "a graph synapse joins 1-D layers");
  EXPECT_THROW_MSG(ham->add_synapse("s", H::bias(), {"a", "img"}), "a bias synapse joins 1 layer, got 2");
  EXPECT_EQ(ham->layers().size(), 3u);
  EXPECT_TRUE(ham->synapses().empty());
  EXPECT_EQ(ham->parameters().size(), 0u);
  EXPECT_THROW_MSG(H::repu(0.5),
                   "repu(): expected a finite power n > 1 (at n = 1 the activation is a step, whose "
                   "jumps can raise the energy), got 0.5");
  EXPECT_THROW_MSG(H::repu(1), "repu(): expected a finite power n > 1");
  EXPECT_THROW_MSG(H::tanh(0), "tanh(): expected a finite β > 0, got 0");
  EXPECT_THROW_MSG(H::conv2d({3}), "conv2d(): expected the kernel as two integers in [1, 1048576], got [3]");
}

TEST(HamErrors, LayernormsParametersMustFitFloat) {
  EXPECT_THROW_MSG(H::layernorm(1e300),
                   "layernorm(): expected γ and |δ| at most 3.40282e+38 (float32's largest value), and γ not below "
                   "float32's smallest, got γ = 1e+300 and δ = 0");
  EXPECT_THROW_MSG(H::layernorm(1.0, -1e39), "got γ = 1 and δ = -1e+39");
  EXPECT_THROW_MSG(H::layernorm(1e-50), "and γ not below float32's smallest, got γ = 1e-50 and δ = 0");
  EXPECT_THROW_MSG(
      H::lagrangian_from_json({{"kind", "layernorm"}, {"gamma", 1e300}, {"delta", 0.0}, {"eps", 1e-5}}, "here"),
      "here: layernorm(): expected γ and |δ| at most");
}

TEST(HamErrors, LayernormNeedsAFinitePositiveGamma) {
  EXPECT_THROW_MSG(H::layernorm(-1.0), "layernorm(): expected a finite γ > 0, got -1");
  EXPECT_THROW_MSG(H::layernorm(0.0), "layernorm(): expected a finite γ > 0, got 0");
  EXPECT_THROW_MSG(H::layernorm(INFINITY), "layernorm(): expected a finite γ > 0, got inf");
  EXPECT_THROW_MSG(H::layernorm(1.0, NAN), "layernorm(): expected a finite δ, got nan");
  EXPECT_THROW_MSG(H::layernorm(1.0, 0.0, 0.0), "layernorm(): expected a finite ε > 0, got 0");
  // A checkpoint's description goes through the same check.
  EXPECT_THROW_MSG(
      H::lagrangian_from_json({{"kind", "layernorm"}, {"gamma", -2.0}, {"delta", 0.0}, {"eps", 1e-5}}, "here"),
      "here: layernorm(): expected a finite γ > 0, got -2");
}

TEST(HamErrors, TheNeuronIdsOfALayerAreOfOneKind) {
  H::HAM ham;
  ham->add_layer("h", {3}, H::tanh());
  EXPECT_THROW_MSG(ham->add_labelled_layer("m", {1, "a"}, H::tanh()),
                   "add_layer(): layer \"m\": neuron \"a\" is a string but neuron 1 is an integer; all neuron ids of "
                   "a layer must be of one kind");
  EXPECT_EQ(ham->layers().size(), 1u);
  EXPECT_THROW_MSG(H::edit(ham).add_neurons("h", {3, "x"}).build(),
                   "ham::edit(): step 1 (add_neurons \"h\"): neuron \"x\" is a string but neuron 0 is an integer; "
                   "all neuron ids of a layer must be of one kind");
  EXPECT_EQ(ham->layer("h").neurons, (std::vector<NeuronId>{0, 1, 2}));
  // Each layer is its own label space: layers of either kind share a HAM and a graph synapse.
  ham->add_labelled_layer("s", {"x", "y"}, H::tanh()).add_synapse("g", H::graph({{0, "x"}}), {"h", "s"});
  EXPECT_EQ(H::edit(ham).add_neurons("s", {"z"}).build().ham->layer("s").neurons,
            (std::vector<NeuronId>{"x", "y", "z"}));
}

TEST(HamErrors, ALabelledLayerNeedsANeuron) {
  H::HAM ham;
  EXPECT_THROW_MSG(ham->add_labelled_layer("e", {}, H::tanh()),
                   "add_layer(): layer \"e\": expected at least one neuron, got none");
  EXPECT_TRUE(ham->layers().empty());
}

TEST(HamErrors, StatesOnAnotherDeviceAreRefused) {
  // Meta tensors have a device but no data, so this runs without a GPU.
  const auto meta = torch::TensorOptions().device(torch::kMeta);
  H::HAM ham;
  ham->add_layer("a", {4}, H::tanh()).add_layer("b", {2}, H::softmax()).add_synapse("ab", H::linear(), {"a", "b"});
  auto x = ham->init_states(3);
  x["a"] = torch::zeros({3, 4}, meta);
  EXPECT_THROW_MSG(ham->descend(x),
                   "descend(): layer \"a\"'s state is on meta, but the HAM's parameters are on cpu (init_states() "
                   "makes them alike; .to() moves a state)");
  EXPECT_THROW_MSG(ham->energy(x), "energy(): layer \"a\"'s state is on meta");
  EXPECT_TRUE(ham->parameters()[0].device().is_cpu());
  auto mask = torch::ones({3, 4}, torch::TensorOptions().dtype(torch::kBool).device(torch::kMeta));
  EXPECT_THROW_MSG(ham->descend(ham->init_states(3), {}, {{"a", mask}}),
                   "descend(): clamp \"a\": its mask is on meta and cannot be moved to the states' device, cpu");
  H::HAM bare;  // no parameters: the states agree among themselves
  bare->add_layer("p", {2}, H::tanh()).add_layer("q", {2}, H::tanh());
  EXPECT_THROW_MSG(bare->descend({{"p", torch::zeros({1, 2})}, {"q", torch::zeros({1, 2}, meta)}}),
                   "descend(): layer \"q\"'s state is on meta, but layer \"p\"'s is on cpu");
}

TEST(HamErrors, APartRefusedOnceJoinsOnTheRightTry) {
  H::HAM ham;
  ham->add_layer("img", {1, 6, 6}, H::identity()).add_layer("m", {2, 3, 3}, H::identity());
  ham->add_layer("ok", {2, 4, 4}, H::identity()).add_layer("a", {3}, H::tanh());
  auto conv = H::conv2d({3, 3});
  EXPECT_THROW_MSG(ham->add_synapse("c", conv, {"img", "m"}), "the convolution of layer \"img\"");
  ham->add_synapse("c", conv, {"img", "ok"});
  auto lateral = H::graph({{0, 1}, {1, 2}}, torch::tensor({0.5, 0.25}));
  EXPECT_THROW_MSG(ham->add_synapse("g", lateral, {"a", "img"}), "a graph synapse joins 1-D layers");
  ham->add_synapse("g", lateral, {"a"});
  EXPECT_TRUE(torch::allclose(ham->synapse("g").synapse->named_parameters()["weight"], torch::tensor({0.5f, 0.25f})));
  auto x = ham->init_states(2);
  for (auto& [name, t] : x) t.normal_();
  EXPECT_EQ(ham->descend(x).states["ok"].sizes(), (std::vector<int64_t>{2, 2, 4, 4}));
}

// A Lagrangian with one gain per neuron that does not say its gains follow the neurons.
struct GainPerNeuron : H::LagrangianImpl {
  void attach(const std::vector<int64_t>& shape, const std::string&) override {
    gain = register_parameter("gain", torch::ones(shape));
  }
  torch::Tensor value(const torch::Tensor& x) override { return (0.5 * gain * x * x).sum(1); }
  std::shared_ptr<H::LagrangianImpl> fresh() const override { return std::make_shared<GainPerNeuron>(); }
  torch::Tensor gain;
};

TEST(HamEdit, AParameterThatCannotFollowTheNeuronsIsRefused) {
  H::HAM ham;
  ham->add_layer("a", {1}, std::make_shared<GainPerNeuron>()).add_synapse("b", H::bias(), {"a"});
  EXPECT_THROW_MSG(H::edit(ham).add_neurons("a", {1}).build(),
                   "ham::edit(): parameter \"layers.a.gain\" would change from [1] to [2], but its owner does not say");
  EXPECT_EQ(ham->layer("a").neurons.size(), 1u);
}

TEST(HamErrors, BuiltInDescriptionsAreReadWithOnePrefix) {
  EXPECT_THROW_MSG(H::lagrangian_from_json({{"kind", "tanh"}}, "here"), "here: tanh needs a number \"beta\"");
  try {
    H::lagrangian_from_json({{"kind", "tanh"}}, "here");
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("here: here"), std::string::npos) << e.what();
  }
  EXPECT_THROW_MSG(H::conv2d({3, int64_t{1} << 40}), "conv2d(): expected the kernel as two integers in [1, 1048576]");
}

TEST(HamErrors, BadStatesAndOptionsAreRefused) {
  H::HAM ham;
  ham->add_layer("a", {4}, H::tanh()).add_layer("b", {2}, H::softmax()).add_synapse("ab", H::linear(), {"a", "b"});
  auto x = ham->init_states(3);
  auto with = [&](const std::string& name, torch::Tensor t) {
    auto y = x;
    y[name] = std::move(t);
    return y;
  };
  EXPECT_THROW_MSG(ham->descend(with("zz", torch::zeros({3, 1}))), "descend(): state \"zz\" names no layer of the HAM");
  EXPECT_THROW_MSG(ham->descend({{"a", x["a"]}}), "descend(): no state for layer \"b\"");
  EXPECT_THROW_MSG(ham->descend(with("a", torch::zeros({3, 5}))),
                   "descend(): layer \"a\" has per-sample shape [4], so its state must be [batch, 4], got [3, 5]");
  EXPECT_THROW_MSG(ham->energy(with("b", torch::zeros({2, 2}))),
                   "energy(): layer \"b\"'s state has batch 2, but layer \"a\"'s has 3");
  EXPECT_THROW_MSG(ham->descend(with("a", torch::full({3, 4}, NAN))), "descend(): layer \"a\"'s state holds NaN");
  EXPECT_THROW_MSG(ham->energy(with("b", torch::full({3, 2}, -INFINITY))),
                   "energy(): layer \"b\"'s state holds NaN or infinity");
  // States of another dtype than the parameters (torch's message comes with a stack trace).
  EXPECT_THROW_MSG(ham->descend(with("a", torch::zeros({3, 4}, torch::kDouble))),
                   "descend(): layer \"a\"'s state is Double, but the HAM's parameters are Float (init_states() makes "
                   "them alike)");
  {
    auto mask = torch::ones({3, 4}, torch::TensorOptions().dtype(torch::kBool).device(torch::kMeta));
    EXPECT_THROW_MSG(ham->descend(ham->init_states(3), {}, {{"a", mask}}),
                     "descend(): clamp \"a\": its mask is on meta and cannot be moved to the states' device, cpu");
    H::HAM bare;  // no parameters: the states agree among themselves
    bare->add_layer("p", {2}, H::tanh()).add_layer("q", {2}, H::tanh());
    EXPECT_THROW_MSG(bare->energy({{"p", torch::zeros({1, 2})}, {"q", torch::zeros({1, 2}, torch::kDouble)}}),
                     "energy(): layer \"q\"'s state is Double, but layer \"p\"'s is Float");
    // Half has too few CPU kernels (softmax's among them): said up front, not as torch's error mid-descent.
    H::HAM half;
    half->add_layer("h", {3}, H::softmax()).add_synapse("w", H::linear(), {"h"});
    half->to(torch::kHalf);
    EXPECT_THROW_MSG(half->descend(half->init_states(2)),
                     "descend(): layer \"h\"'s state is Half: float16 does not run on the CPU in LibTorch 1.13");
  }
  EXPECT_THROW_MSG(ham->descend(x, H::DescentOptions().dt(0)), "descend(): expected a finite dt > 0, got 0");
  EXPECT_THROW_MSG(ham->descend(x, H::DescentOptions().steps(-1)), "descend(): expected steps ≥ 0, got -1");
  EXPECT_THROW_MSG(ham->descend(x, H::DescentOptions().tolerance(-1)),
                   "descend(): expected a finite tolerance ≥ 0, got -1");
  EXPECT_THROW_MSG(ham->descend(x, {}, {{"q", {}}}), "descend(): clamp \"q\" names no layer of the HAM");
  EXPECT_THROW_MSG(ham->descend(x, {}, {{"a", torch::ones({3, 3}, torch::kBool)}}),
                   "descend(): clamp \"a\": its mask [3, 3] does not broadcast to the state [3, 4]");
  EXPECT_THROW_MSG(ham->descend(x, {}, {{"a", torch::ones({3, 4})}}),
                   "descend(): clamp \"a\": expected a bool mask, got Float");
  EXPECT_THROW_MSG(ham->init_states(0), "init_states(): expected a batch ≥ 1, got 0");
  // A step far too large for τ blows the state up; the message says so.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ham->parameters()) p.fill_(1e30);
  }
  auto big = with("a", torch::ones({3, 4}));
  EXPECT_THROW_MSG(ham->descend(big, H::DescentOptions().steps(50).dt(3.0)),
                   "descend(): layer \"a\"'s state became NaN or infinite: dt/τ = 3 (dt 3, τ 1) may overshoot (keep it "
                   "well below 1), or the energy has no lower bound");
  // The energy it recorded, lost with the result, is told by its last finite total.
  try {
    ham->descend(big, H::DescentOptions().steps(50).dt(3.0).record_energy(true));
    ADD_FAILURE() << "no error";
  } catch (const connex::Error& e) {
    EXPECT_NE(std::string(e.what()).find("smaller dt only delays; the energy was "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(" after step "), std::string::npos) << e.what();
  }
  // A NaN weight, not the step, is what the message names then.
  {
    torch::NoGradGuard no_grad;
    ham->named_parameters()["synapses.ab.weight"].fill_(NAN);
  }
  EXPECT_THROW_MSG(ham->descend(big),
                   "descend(): layer \"a\"'s state became NaN or infinite: parameter \"synapses.ab.weight\" holds NaN "
                   "or infinity");
}

// A graph synapse's given weights are finite, as an edit's are.
TEST(HamErrors, NonFiniteGraphWeightsAreRefused) {
  {
    // init_states keeps the parameters' dtype where the options set only the device.
    H::HAM typed;
    typed->add_layer("p", {2}, H::tanh()).add_synapse("w", H::linear(), {"p"});
    typed->to(torch::kDouble);
    EXPECT_EQ(typed->init_states(2, torch::TensorOptions().device(torch::kCPU)).at("p").scalar_type(), torch::kDouble);
    EXPECT_EQ(typed->init_states(2, torch::kFloat).at("p").scalar_type(), torch::kFloat);
  }
  H::HAM ham;
  ham->add_layer("h", {3}, H::tanh());
  EXPECT_THROW_MSG(ham->add_synapse("s", H::graph({{0, 1}, {1, 2}}, torch::tensor({0.5f, NAN})), {"h"}),
                   "add_synapse(): synapse \"s\": the weight of connection (1, 2) is nan");
  EXPECT_TRUE(ham->synapses().empty());
}

// ------------------------------------------------------------- checkpoints

TEST(HamCheckpoint, RoundTripsBitIdentically) {
  TempDir dir;
  for (bool as_double : {false, true}) {
    torch::manual_seed(16);
    auto ham = editable_ham();
    ham->add_layer("img", {1, 5, 5}, H::identity()).add_layer("maps", {2, 3, 3}, H::relu(), 2.0);
    ham->add_layer("tok", {3, 4}, H::spherical_norm()).add_synapse("conv", H::conv2d({3, 3}), {"img", "maps"});
    ham->add_synapse("att", H::attention(2, 3, 0.7), {"tok"});
    if (as_double) ham->to(torch::kDouble);
    const auto path = dir / "ham.ckpt";
    H::save(ham, path);
    auto back = H::load(path);
    std::ostringstream a, b;
    a << *ham;
    b << *back;
    EXPECT_EQ(a.str(), b.str());
    EXPECT_EQ(H::structure_json(ham), H::structure_json(back));
    auto p = ham->named_parameters(), q = back->named_parameters();
    ASSERT_EQ(p.size(), q.size());
    for (const auto& item : p) EXPECT_TRUE(torch::equal(item.value(), q[item.key()])) << item.key();
    auto x = ham->init_states(2);
    for (auto& [name, t] : x) t.normal_();
    EXPECT_TRUE(torch::equal(ham->descend(x).states["maps"], back->descend(x).states["maps"]));
  }
}

// torch::save/torch::load fill tensors by name and shape: a HAM whose graph
// synapse has as many connections but other ones (whose wiring buffers
// would be overwritten under its own labels) refuses the archive, unchanged;
// the same structure loads.
TEST(HamCheckpoint, TorchLoadRefusesAnotherStructureOfTheSameShapes) {
  TempDir dir;
  auto make = [](const Pairs& connections) {
    H::HAM ham;
    ham->add_layer("v", {4}, H::tanh()).add_synapse("s", H::graph(connections), {"v"});
    return ham;
  };
  torch::manual_seed(3);
  H::HAM a = make({{0, 1}, {2, 3}}), b = make({{0, 2}, {1, 3}}), twin = make({{0, 1}, {2, 3}});
  torch::save(a, dir / "a.pt");
  const auto buffers = b->named_buffers();
  std::map<std::string, torch::Tensor> before;
  for (const auto& item : buffers) before[item.key()] = item.value().clone();
  const auto weight = b->named_parameters()["synapses.s.weight"].clone();
  EXPECT_THROW_MSG(torch::load(b, dir / "a.pt"),
                   "HAM::load(): the archive holds the tensors of another structure (1 layers, 1 synapses, 2 graph "
                   "connections, fingerprint ");
  EXPECT_TRUE(torch::equal(b->named_parameters()["synapses.s.weight"], weight));
  for (const auto& item : b->named_buffers()) EXPECT_TRUE(torch::equal(item.value(), before[item.key()])) << item.key();
  torch::load(twin, dir / "a.pt");
  auto x = a->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  EXPECT_TRUE(torch::equal(twin->energy(x), a->energy(x)));
  // Parts are matched by name, not by the order they were added in; a
  // synapse's kind and options count (torch would reshape the weights under
  // the other synapse's head sizes).
  auto attend = [](int64_t heads, int64_t dim, bool layer_first) {
    H::HAM ham;
    if (layer_first) ham->add_layer("extra", {3}, H::tanh());
    ham->add_layer("t", {4, 8}, H::identity());
    if (!layer_first) ham->add_layer("extra", {3}, H::tanh());
    ham->add_synapse("att", H::attention(heads, dim), {"t"});
    return ham;
  };
  H::HAM two_by_four = attend(2, 4, true);
  torch::save(two_by_four, dir / "att.pt");
  H::HAM reordered = attend(2, 4, false);
  torch::load(reordered, dir / "att.pt");
  EXPECT_TRUE(torch::equal(reordered->named_parameters()["synapses.att.query"],
                           two_by_four->named_parameters()["synapses.att.query"]));
  // Synapses with parameters, added in the other order, load too.
  auto joined = [](bool linear_first) {
    H::HAM ham;
    ham->add_layer("v", {3}, H::tanh()).add_layer("h", {2}, H::tanh());
    if (linear_first) ham->add_synapse("w", H::linear(), {"v", "h"});
    ham->add_synapse("b", H::bias(), {"h"});
    if (!linear_first) ham->add_synapse("w", H::linear(), {"v", "h"});
    return ham;
  };
  H::HAM first = joined(true), second = joined(false);
  torch::save(first, dir / "joined.pt");
  torch::load(second, dir / "joined.pt");
  EXPECT_TRUE(
      torch::equal(second->named_parameters()["synapses.w.weight"], first->named_parameters()["synapses.w.weight"]));
  H::HAM four_by_two = attend(4, 2, true);
  EXPECT_THROW_MSG(torch::load(four_by_two, dir / "att.pt"),
                   "HAM::load(): the archive holds the tensors of another structure");
}

TEST(HamCheckpoint, OptimizerStateResumesTrainingExactly) {
  TempDir dir;
  torch::manual_seed(23);
  auto ham = editable_ham();
  torch::optim::Adam adam(ham->parameters(), torch::optim::AdamOptions(0.01).betas({0.8, 0.95}));
  auto x = ham->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  auto step = [&](H::HAM& h, torch::optim::Optimizer& o) {
    o.zero_grad();
    h->descend(x, H::DescentOptions().steps(3)).states.at("b").pow(2).sum().backward();
    o.step();
  };
  step(ham, adam);
  step(ham, adam);
  const auto path = dir / "ham.ckpt";
  H::save(ham, path, &adam);
  auto checkpoint = H::load_checkpoint(path);
  ASSERT_TRUE(checkpoint.optimizer.has_value());
  auto restored = H::restore_optimizer(checkpoint, path);
  EXPECT_DOUBLE_EQ(static_cast<torch::optim::AdamOptions&>(restored->param_groups()[0].options()).lr(), 0.01);
  step(ham, adam);
  step(checkpoint.ham, *restored);
  auto p = ham->named_parameters(), q = checkpoint.ham->named_parameters();
  for (const auto& item : p) EXPECT_TRUE(torch::equal(item.value(), q[item.key()])) << item.key();
  // Over the same file loaded again it restores; over a HAM whose graph
  // synapse has other connections, as many (every parameter of the saved
  // name and shape), it is refused naming the synapse.
  auto again = H::load(path);
  auto over_again = H::restore_optimizer(checkpoint, path, again);
  auto saved = H::load_checkpoint(path);  // untouched by the steps above
  auto from_file = H::restore_optimizer(saved, path);
  const auto mine = again->named_parameters(), theirs = saved.ham->named_parameters();
  ASSERT_EQ(over_again->state().size(), from_file->state().size());
  for (const auto& item : mine) {
    if (!from_file->state().count(optimizer_state_key(theirs[item.key()]))) continue;  // never stepped
    EXPECT_TRUE(torch::equal(adam_state(*over_again, item.value()).exp_avg(),
                             adam_state(*from_file, theirs[item.key()]).exp_avg()))
        << item.key();
  }
  auto rewired = H::edit(ham).remove_connections("lat", {{"p", "q"}}).add_connections("lat", {{"p", "s"}}).build().ham;
  EXPECT_THROW_MSG(H::restore_optimizer(checkpoint, path, rewired),
                   "ham::restore_optimizer(): " + path +
                       " holds the state of another HAM than the one given (its synapse \"lat\" has other "
                       "connections, as many); the optimizer state fits only a HAM of the same structure");
  // Over a HAM of the same layers and synapses whose layer has another
  // Lagrangian: its parameters (none here, layernorm's γ and δ elsewhere) mean other things.
  auto twin = editable_ham(H::sigmoid());
  EXPECT_THROW_MSG(H::restore_optimizer(H::load_checkpoint(path), path, twin),
                   "ham::restore_optimizer(): " + path +
                       " holds the state of another HAM than the one given (its layer \"a\" has Lagrangian tanh, "
                       "here sigmoid)");
  // Likewise a synapse of another class, even with parameters of the same names and shapes.
  struct Mirror : H::SynapseImpl {
    torch::Tensor weight;
    torch::Tensor energy(const std::vector<torch::Tensor>& g) override {
      return -(g[0] * torch::matmul(g[0], weight.t())).sum(1);
    }
    void attach(const std::vector<H::LayerView>&, const std::string&) override {
      weight = register_parameter("weight", torch::zeros({4, 4}));
    }
  };
  auto mirrored = editable_ham(nullptr, std::make_shared<Mirror>());
  EXPECT_THROW_MSG(H::restore_optimizer(H::load_checkpoint(path), path, mirrored),
                   "(its synapse \"aa\" is of class LinearSynapse, here Mirror)");
  // Without an optimizer there is none to restore; one over another module's parameters is refused, file untouched.
  H::save(ham, dir / "plain.ckpt");
  EXPECT_THROW_MSG(H::restore_optimizer(H::load_checkpoint(dir / "plain.ckpt"), "plain.ckpt"),
                   "ham::restore_optimizer(): plain.ckpt holds no optimizer state");
  const std::string before = slurp(path);
  torch::optim::SGD stranger({torch::zeros({2}, torch::requires_grad())}, 0.1);
  EXPECT_THROW_MSG(H::save(ham, path, &stranger), "ham::save(): cannot save the optimizer for");
  EXPECT_EQ(slurp(path), before);
}

TEST(HamCheckpoint, FrozenParametersStayFrozen) {
  TempDir dir;
  auto ham = editable_ham();
  ham->named_parameters()["synapses.ab.weight"].requires_grad_(false);
  H::save(ham, dir / "ham.ckpt");
  auto back = H::load(dir / "ham.ckpt");
  for (const auto& p : back->named_parameters())
    EXPECT_EQ(p.value().requires_grad(), p.key() != "synapses.ab.weight") << p.key();
  // A name that is not a parameter is refused.
  auto bad = reseal_checkpoint(slurp(dir / "ham.ckpt"), [](nlohmann::json& h, uint32_t&) { h["frozen"] = {"nope"}; });
  spit(dir / "bad.ckpt", bad);
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "/frozen names \"nope\", which is not a parameter of its HAM");
}

TEST(HamCheckpoint, UnknownKeysAreRefused) {
  TempDir dir;
  H::save(editable_ham(), dir / "ham.ckpt");
  const std::string good = slurp(dir / "ham.ckpt");
  auto refused = [&](const std::function<void(nlohmann::json&)>& change, const std::string& message) {
    spit(dir / "bad.ckpt", reseal_checkpoint(good, [&](nlohmann::json& h, uint32_t&) { change(h); }));
    EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), message);
  };
  refused([](nlohmann::json& h) { h["bogus"] = 1; },
          "\"bogus\" is not a key of a HAM checkpoint's header (structure, tensors, dtype, frozen, optimizer)");
  refused([](nlohmann::json& h) { h["structure"]["extra"] = 1; },
          ": /structure: \"extra\" is not a key of a HAM's structure (layers, synapses)");
  refused([](nlohmann::json& h) { h["structure"]["layers"][0]["colour"] = "red"; },
          ": /structure/layers/0: \"colour\" is not a key of a layer (name, tau, lagrangian, neurons, shape)");
  refused([](nlohmann::json& h) { h["structure"]["layers"][1]["lagrangian"]["betta"] = 5; },
          "/structure/layers/1/lagrangian: \"betta\" is not a key of a Lagrangian (kind, gamma, delta, eps)");
  refused([](nlohmann::json& h) { h["structure"]["synapses"][0]["weight"] = 1; },
          "/structure/synapses/0: \"weight\" is not a key of a synapse entry (name, layers, synapse)");
  refused([](nlohmann::json& h) { h["structure"]["synapses"][0]["synapse"]["bias "] = true; },
          "/structure/synapses/0/synapse: \"bias \" is not a key of a synapse (kind, bias)");
}

// A layer lists its neurons (1-D) or has a shape, never both; a file that
// gives both is refused rather than read by one and not the other.
TEST(HamCheckpoint, ALayerWithNeuronsAndAShapeIsRefused) {
  TempDir dir;
  H::save(editable_ham(), dir / "ham.ckpt");
  spit(dir / "bad.ckpt", reseal_checkpoint(slurp(dir / "ham.ckpt"), [](nlohmann::json& h, uint32_t&) {
         h["structure"]["layers"][1]["shape"] = {5};
       }));
  EXPECT_THROW_MSG(
      H::load(dir / "bad.ckpt"),
      "ham::load(): " + (dir / "bad.ckpt") +
          ": /structure/layers/1: a layer has \"neurons\" (a 1-D layer's labels) or a \"shape\", not both");
}

// Each entry point names itself in its messages.
TEST(HamCheckpoint, EachEntryPointNamesItself) {
  TempDir dir;
  H::save(editable_ham(), dir / "ham.ckpt");
  const std::string good = slurp(dir / "ham.ckpt");
  spit(dir / "bad.ckpt", good.substr(0, 10));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "ham::load(): " + (dir / "bad.ckpt") + " is truncated");
  EXPECT_THROW_MSG(H::load_checkpoint(dir / "bad.ckpt"),
                   "ham::load_checkpoint(): " + (dir / "bad.ckpt") + " is truncated");
  EXPECT_THROW_MSG(H::parse_checkpoint("garbage", "bytes"),
                   "ham::parse_checkpoint(): bytes is not a connex HAM checkpoint");
  EXPECT_THROW_MSG(H::load_checkpoint(dir / "missing.ckpt"), "ham::load_checkpoint(): cannot open");
  EXPECT_THROW_MSG(load_checkpoint(dir / "ham.ckpt"),
                   "load_checkpoint(): " + (dir / "ham.ckpt") + " is not a connex checkpoint");
  EXPECT_THROW_MSG(parse_checkpoint("garbage", "bytes"), "parse_checkpoint(): bytes is not a connex checkpoint");
  EXPECT_THROW_MSG(load(dir / "missing.ckpt"), "load(): cannot open");
}

// A HAM without parameters remembers the dtype its to() named: the graph
// weights and states it makes later keep float64's digits, also in a clone.
TEST(HamModule, ToWithoutParametersPlacesLaterParts) {
  H::HAM ham;
  ham->add_layer("t", {3}, H::tanh());
  ASSERT_TRUE(ham->parameters().empty());
  ham->to(torch::kDouble);
  EXPECT_EQ(ham->init_states(2)["t"].scalar_type(), torch::kDouble);
  ham->add_synapse("g", H::graph({{0, 1}, {1, 2}}, torch::tensor({0.1, -0.3}, torch::kDouble)), {"t"});
  const auto w = ham->named_parameters()["synapses.g.weight"];
  ASSERT_EQ(w.scalar_type(), torch::kDouble);
  EXPECT_EQ(w[0].item<double>(), 0.1);
  EXPECT_EQ(w[1].item<double>(), -0.3);
  H::HAM bare;
  bare->add_layer("t", {3}, H::tanh());
  bare->to(torch::kDouble);
  auto copy = std::dynamic_pointer_cast<H::HAMImpl>(bare->clone());
  EXPECT_EQ(copy->init_states(1)["t"].scalar_type(), torch::kDouble);
  // An edit and a checkpoint keep it too.
  auto edited = H::edit(bare).build().ham;
  EXPECT_EQ(edited->init_states(1)["t"].scalar_type(), torch::kDouble);
  TempDir dir;
  H::save(bare, dir / "bare.ham");
  EXPECT_EQ(H::load(dir / "bare.ham")->init_states(1)["t"].scalar_type(), torch::kDouble);
  // Without a to(), the default dtype as before.
  H::HAM plain;
  plain->add_layer("t", {3}, H::tanh());
  EXPECT_EQ(plain->init_states(1)["t"].scalar_type(), torch::kFloat);
}

TEST(HamCheckpoint, BadFilesAreRefusedNamingTheFileAndNothingIsWritten) {
  TempDir dir;
  auto ham = editable_ham();
  const auto path = dir / "ham.ckpt";
  H::save(ham, path);
  const std::string good = slurp(path);
  EXPECT_THROW_MSG(H::load(dir / "missing.ckpt"), "missing.ckpt");
  spit(dir / "bad.ckpt", good.substr(0, good.size() - 9));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "bad.ckpt is corrupted: its checksum does not match");
  spit(dir / "bad.ckpt", good.substr(0, 10));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "ham::load(): " + (dir / "bad.ckpt") + " is truncated");
  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 1;
  spit(dir / "bad.ckpt", flipped);
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "is corrupted");
  // A network checkpoint is not a HAM checkpoint.
  save(NeuralNetwork(readme_spec()), dir / "net.ckpt");
  EXPECT_THROW_MSG(H::load(dir / "net.ckpt"), "is not a connex HAM checkpoint (it does not start with \"CONNEXHM\")");
  // A custom Lagrangian cannot be written down: refused before the file is touched.
  H::HAM custom;
  custom->add_layer("a", {2}, H::lagrangian([](const torch::Tensor& x) { return x.pow(2).sum(1); }));
  EXPECT_THROW_MSG(H::save(custom, path), "ham::save(): layer \"a\"'s Lagrangian cannot be written down");
  EXPECT_EQ(slurp(path), good);
  // A header whose structure claims far more parameters than the file holds.
  auto huge = reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
    h["structure"]["layers"][0]["neurons"] = nlohmann::json::array();
    for (int i = 0; i < 100000; ++i) h["structure"]["layers"][0]["neurons"].push_back(i);
  });
  spit(dir / "bad.ckpt", huge);
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "values but the file holds");
}

TEST(HamCheckpoint, SizesAreCheckedAgainstTheFileBothWays) {
  TempDir dir;
  // A big layer with few parameters loads (the bound counts what each synapse really holds).
  H::HAM big;
  big->add_layer("a", {5000}, H::identity()).add_synapse("b", H::bias(), {"a"});
  H::save(big, dir / "big.ckpt");
  EXPECT_EQ(H::load(dir / "big.ckpt")->layer("a").shape[0], 5000);
  // Crafted headers: huge attention weights, a synapse that is not an object.
  H::HAM small;
  small->add_layer("t", {2, 4}, H::identity()).add_synapse("att", H::attention(1, 2), {"t"});
  small->add_synapse("b", H::bias(), {"t"});
  H::save(small, dir / "small.ckpt");
  const std::string good = slurp(dir / "small.ckpt");
  spit(dir / "bad.ckpt", reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         h["structure"]["synapses"][0]["synapse"]["heads"] = 4096;
         h["structure"]["synapses"][0]["synapse"]["head_dim"] = 4096;
       }));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "parameter values but the file holds");
  spit(dir / "bad.ckpt", reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         h["structure"]["synapses"][0]["synapse"] = "linear";
       }));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "expected a synapse {\"kind\": ...}, got \"linear\"");
  spit(dir / "bad.ckpt", reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         h["structure"]["layers"][0]["shape"] = {1 << 20, 1 << 10};
       }));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "has a layer of 1073741824 entries per sample");
  // Mixed dtypes cannot be written down as one.
  small->synapse("att").synapse->to(torch::kDouble);
  EXPECT_THROW_MSG(H::save(small, dir / "mixed.ckpt"), "cast the HAM to one dtype first");
  EXPECT_FALSE(std::filesystem::exists(dir / "mixed.ckpt"));
}

TEST(Ham, CloneIsDeepAndPrintsExactly) {
  torch::manual_seed(17);
  auto ham = editable_ham();
  auto copy = std::dynamic_pointer_cast<H::HAMImpl>(ham->clone());
  ASSERT_TRUE(copy);
  auto p = ham->named_parameters(), q = copy->named_parameters();
  for (const auto& item : p) {
    EXPECT_TRUE(torch::equal(item.value(), q[item.key()])) << item.key();
    EXPECT_NE(item.value().data_ptr(), q[item.key()].data_ptr()) << item.key();
  }
  std::ostringstream s;
  s << *ham;
  EXPECT_EQ(s.str().rfind("connex::ham::HAM(layers=[a [4] ", 0), 0u) << s.str();
}

// A HAM inside a user's Cloneable module: torch's clone() of the parent
// calls clone_ on each child, whose default did nothing (the copy kept
// fresh weights). Cloning or loading a HAM leaves the random draws that
// follow as they were (its parts' initial draws are overwritten anyway).
struct HoldsAHam : torch::nn::Cloneable<HoldsAHam> {
  H::HAM ham{nullptr};
  HoldsAHam() { reset(); }
  void reset() override {
    ham = register_module("ham", H::HAM());
    ham->add_layer("v", {3}, H::tanh()).add_layer("m", {2}, H::softmax());
    ham->add_synapse("w", H::linear(), {"v", "m"});
  }
};

TEST(Ham, CloneOfAParentModuleCopiesItsHamAndDrawsStayPut) {
  torch::manual_seed(3);
  auto parent = std::make_shared<HoldsAHam>();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : parent->parameters()) p.uniform_(-2, 2);
  }
  auto copy = std::dynamic_pointer_cast<HoldsAHam>(parent->clone());
  ASSERT_TRUE(copy);
  const auto p = parent->named_parameters(), q = copy->named_parameters();
  ASSERT_EQ(p.size(), q.size());
  for (const auto& item : p) {
    EXPECT_TRUE(torch::equal(item.value(), q[item.key()])) << item.key();
    EXPECT_NE(item.value().data_ptr(), q[item.key()].data_ptr()) << item.key();
  }
  EXPECT_TRUE(torch::equal(copy->ham->named_parameters()["synapses.w.weight"],
                           parent->ham->named_parameters()["synapses.w.weight"]));
  TempDir dir;
  H::save(parent->ham, dir / "h.ckpt");
  torch::manual_seed(5);
  const auto expected = torch::rand({4});
  torch::manual_seed(5);
  auto cloned = parent->ham->clone();
  auto loaded = H::load(dir / "h.ckpt");
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
}

// A part joins one HAM: a second re-sized (or re-drew) the first's parameters.
TEST(HamErrors, APartOfOneHamIsRefusedByAnother) {
  auto store = H::linear();
  auto act = H::tanh();
  H::HAM a, b;
  a->add_layer("v", {8}, act).add_layer("m", {3}, H::softmax()).add_synapse("s", store, {"v", "m"});
  const auto weight = a->named_parameters()["synapses.s.weight"].clone();
  b->add_layer("v", {4}, H::identity());
  EXPECT_THROW_MSG(b->add_synapse("s", store, {"v"}),
                   "add_synapse(): synapse \"s\": this synapse object belongs to another HAM (give each its own, or "
                   "its fresh())");
  EXPECT_THROW_MSG(b->add_layer("u", {4}, act),
                   "add_layer(): layer \"u\": its Lagrangian belongs to another HAM (give each layer its own, or its "
                   "fresh())");
  EXPECT_EQ(b->layers().size(), 1u);
  EXPECT_TRUE(torch::equal(a->named_parameters()["synapses.s.weight"], weight));
  b->add_synapse("s", store->fresh(), {"v"});
  b->add_layer("u", {4}, act->fresh());
  EXPECT_EQ(b->named_parameters()["synapses.s.weight"].sizes(), (std::vector<int64_t>{4, 4}));
}

// States of batch 0 passed the checks and met torch's reshape error.
TEST(HamErrors, AnEmptyBatchIsRefused) {
  H::HAM ham;
  ham->add_layer("a", {3}, H::tanh()).add_synapse("b", H::bias(), {"a"});
  auto x = ham->init_states(1);
  x["a"] = x["a"].narrow(0, 0, 0);
  EXPECT_THROW_MSG(ham->energy(x), "energy(): layer \"a\"'s state has batch 0, expected a batch ≥ 1");
  EXPECT_THROW_MSG(ham->descend(x), "layer \"a\"'s state has batch 0, expected a batch ≥ 1");
}

// A graph synapse's given float64 weights went through float32.
TEST(Ham, GivenGraphWeightsKeepTheirDigits) {
  H::HAM ham;
  ham->add_layer("a", {2}, H::tanh()).add_synapse("c", H::bias(), {"a"});
  ham->to(torch::kDouble);
  ham->add_synapse("g", H::graph({{0, 1}}, torch::tensor({0.1}, torch::kDouble)), {"a"});
  EXPECT_EQ(ham->named_parameters()["synapses.g.weight"].item<double>(), 0.1);
  H::HAM plain;  // float32: the given weights are placed like the rest
  plain->add_layer("a", {2}, H::tanh()).add_synapse("c", H::bias(), {"a"});
  plain->add_synapse("g", H::graph({{0, 1}}, torch::tensor({0.1}, torch::kDouble)), {"a"});
  EXPECT_EQ(plain->named_parameters()["synapses.g.weight"].scalar_type(), torch::kFloat);
}

// A crafted checkpoint: a layer without a shape under an attention synapse
// crashed the size check; a huge token count asked for 32 GiB of scores.
TEST(HamCheckpoint, CraftedAttentionShapesAreRefused) {
  TempDir dir;
  H::HAM small;
  small->add_layer("t", {2, 1}, H::identity()).add_synapse("att", H::attention(1, 1), {"t"});
  H::save(small, dir / "small.ckpt");
  const std::string good = slurp(dir / "small.ckpt");
  spit(dir / "bad.ckpt",
       reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) { h["structure"]["layers"][0].erase("shape"); }));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"), "expected a member \"shape\"");
  spit(dir / "bad.ckpt", reseal_checkpoint(good, [](nlohmann::json& h, uint32_t&) {
         h["structure"]["layers"][0]["shape"] = {65536, 1};
       }));
  EXPECT_THROW_MSG(H::load(dir / "bad.ckpt"),
                   "its structure's attention synapse \"att\" scores 4294967296 token pairs per sample (at most "
                   "268435456 can be loaded)");
  EXPECT_EQ(H::load(dir / "small.ckpt")->layer("t").shape, (std::vector<int64_t>{2, 1}));
}

}  // namespace
}  // namespace connex::testing
