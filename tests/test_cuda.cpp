// The same module on CUDA: skipped without a GPU.
#include "test_util.h"

using namespace connex;
using namespace connex::testing;

#define REQUIRE_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "CUDA is not available"

TEST(Cuda, ForwardAndGradientsMatchCpu) {
  REQUIRE_CUDA();
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 30; ++trial) {
    auto spec = random_dag(rng, {4, 30, 0.3});
    for (auto kernel : {LevelKernel::DenseView, LevelKernel::DenseScatter, LevelKernel::EdgeList}) {
      NeuralNetwork cpu(spec, NeuralNetworkOptions().dtype(torch::kFloat64).seed(trial).force_kernel(kernel)
                                  .hidden_activation("tanh").dropout_p(0.2));
      auto gpu = std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA)));
      cpu->eval(), gpu->eval();
      auto x = torch::randn({8, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
      auto y_cpu = cpu->forward(x);
      auto y_gpu = gpu->forward(x.cuda());
      ASSERT_TRUE(torch::allclose(y_cpu, y_gpu.cpu(), 1e-10, 1e-10));
      y_cpu.sum().backward();
      y_gpu.sum().backward();
      ASSERT_TRUE(torch::allclose(cpu->weight_tensor().grad(), gpu->weight_tensor().grad().cpu(), 1e-10, 1e-10));
      ASSERT_TRUE(torch::allclose(cpu->bias_tensor().grad(), gpu->bias_tensor().grad().cpu(), 1e-10, 1e-10));
      gpu->train();
      ASSERT_TRUE(torch::isfinite(gpu->forward(x.cuda())).all().item<bool>());
    }
  }
}

TEST(Cuda, ToDeviceMovesBuffersAndTrains) {
  REQUIRE_CUDA();
  auto net = nn::DenseMLP(1, 2, 64, 3);
  net->to(torch::kCUDA);
  for (const auto& b : net->buffers()) EXPECT_TRUE(b.is_cuda());
  auto [x, y] = cos_sin_data();
  auto [first, last] = train(net, x.cuda(), y.cuda(), 300, 3e-3);
  EXPECT_LE(last * 10, first);
  EXPECT_THROW_MSG(net->forward(torch::zeros({2, 1})), "expected input on device cuda:0, got cpu");
}
