// Backpropagated gradients against central finite differences, in double.
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

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
      NeuralNetwork net(spec, NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").force_kernel(kernel));
      auto x = torch::randn({4, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      ASSERT_LE(max_gradient_error(net, x), 1e-6) << kernel_name(kernel);
    }
  }
}

TEST(Gradients, DenseMlpMatchesFiniteDifferences) {
  auto net = nn::DenseMLP(2, 3, 6, 3, NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("gelu"));
  EXPECT_LE(max_gradient_error(net, torch::randn({5, 2}, torch::kFloat64)), 1e-6);
}

TEST(Gradients, FusedKernelAndBatchPathAgreeAndMatchFiniteDifferences) {
  std::mt19937_64 rng(31);
  const std::vector<std::string> activations = {"relu", "gelu", "silu", "tanh", "sigmoid", "identity"};
  for (int trial = 0; trial < 60; ++trial) {
    auto spec = random_dag(rng, {4, 24, 0.3, trial % 2 == 1});
    const auto& act = activations[trial % activations.size()];
    auto options = NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation(act).seed(trial);
    NeuralNetwork fused(spec, NeuralNetworkOptions(options).fused(true));
    NeuralNetwork levels(spec, NeuralNetworkOptions(options).fused(false));
    ASSERT_TRUE(fused->uses_fused_kernel());
    ASSERT_FALSE(levels->uses_fused_kernel());
    auto x = torch::randn({5, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto y_fused = fused->forward(x), y_levels = levels->forward(x);
    ASSERT_TRUE(torch::allclose(y_fused, y_levels, 1e-12, 1e-12)) << act;
    auto r = torch::randn_like(y_fused);
    (y_fused * r).sum().backward();
    (y_levels * r).sum().backward();
    // A parameter no output depends on may have no gradient at all on the batch path.
    auto grad = [](const torch::Tensor& p) { return p.grad().defined() ? p.grad() : torch::zeros_like(p); };
    ASSERT_TRUE(torch::allclose(grad(fused->weight_tensor()), grad(levels->weight_tensor()), 1e-10, 1e-10)) << act;
    ASSERT_TRUE(torch::allclose(grad(fused->bias_tensor()), grad(levels->bias_tensor()), 1e-10, 1e-10)) << act;
    if (trial % 3 == 0) ASSERT_LE(max_gradient_error(fused, x), 1e-6) << act;
  }
}

TEST(Gradients, FusedKernelPassesGradientToTheInput) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").fused(true));
  auto x = torch::randn({4, 1}, torch::kFloat64).requires_grad_(true);
  net->forward(x).sum().backward();
  NeuralNetwork ref(readme_spec(), NeuralNetworkOptions().dtype(torch::kFloat64).hidden_activation("tanh").fused(false));
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
  EXPECT_THROW_MSG(NeuralNetwork(readme_spec(), NeuralNetworkOptions().fused(true).use_topo_norm(true)), "fused(true) needs");
}
