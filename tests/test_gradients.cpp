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
