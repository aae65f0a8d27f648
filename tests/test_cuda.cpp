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
      NeuralNetwork cpu(spec, NeuralNetworkOptions()
                                  .dtype(torch::kFloat64)
                                  .seed(trial)
                                  .execution(ExecutionOptions().force_kernel(kernel))
                                  .hidden_activation("tanh")
                                  .dropout_p(0.2));
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

TEST(Cuda, TechniquesAndEditsMatchCpu) {
  REQUIRE_CUDA();
  std::mt19937_64 rng(6);
  for (int trial = 0; trial < 10; ++trial) {
    auto spec = random_dag(rng, {4, 14, 0.35});
    NeuralNetwork cpu(spec, NeuralNetworkOptions()
                                .dtype(torch::kFloat64)
                                .seed(trial)
                                .hidden_activation("tanh")
                                .use_topo_norm(true)
                                .use_topo_self_attention(true)
                                .use_neuron_self_attention(true)
                                .use_adaptive_activations(true));
    auto gpu = std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA)));
    auto x = torch::randn({6, static_cast<int64_t>(spec.inputs().size())}, torch::kFloat64);
    auto y_cpu = cpu->forward(x), y_gpu = gpu->forward(x.cuda());
    ASSERT_TRUE(torch::allclose(y_cpu, y_gpu.cpu(), 1e-9, 1e-9));
    y_cpu.sum().backward();
    y_gpu.sum().backward();
    auto a = cpu->named_parameters(), b = gpu->named_parameters();
    for (const auto& p : a)
      if (p.value().grad().defined())
        ASSERT_TRUE(torch::allclose(p.value().grad(), b[p.key()].grad().cpu(), 1e-8, 1e-8)) << p.key();
    // An edit of a CUDA network stays on CUDA and keeps its values.
    NeuralNetwork on_gpu(gpu);
    auto edited = edit(on_gpu)
                      .add_hidden_neurons({spec.id_kind() == NeuronId::Kind::String ? NeuronId("z") : NeuronId(99)})
                      .build(1)
                      .network;
    EXPECT_TRUE(edited->weight_tensor().is_cuda());
    EXPECT_TRUE(torch::allclose(edited->forward(x.cuda()).cpu(), y_cpu, 1e-9, 1e-9));
  }
}

TEST(Cuda, DensePathMatchesCpu) {
  REQUIRE_CUDA();
  for (const char* act : {"relu", "gelu", "tanh"}) {
    auto cpu = nn::DenseMLP(3, 2, 16, 3,
                            NeuralNetworkOptions()
                                .dtype(torch::kFloat64)
                                .hidden_activation(act)
                                .execution(ExecutionOptions().fused(false)));
    auto gpu = std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA)));
    ASSERT_TRUE(cpu->uses_dense_path());
    ASSERT_TRUE(gpu->uses_dense_path());
    auto x = torch::randn({32, 3}, torch::kFloat64);
    auto y_cpu = cpu->forward(x), y_gpu = gpu->forward(x.cuda());
    ASSERT_TRUE(torch::allclose(y_cpu, y_gpu.cpu(), 1e-10, 1e-10));
    y_cpu.pow(2).sum().backward();
    y_gpu.pow(2).sum().backward();
    EXPECT_TRUE(torch::allclose(cpu->weight_tensor().grad(), gpu->weight_tensor().grad().cpu(), 1e-10, 1e-10));
    EXPECT_TRUE(torch::allclose(cpu->bias_tensor().grad(), gpu->bias_tensor().grad().cpu(), 1e-10, 1e-10));
  }
}

// Topo norm inside the dense path runs CPU loops: on CUDA the network takes the per-level path.
TEST(Cuda, TopoNormLeavesTheDensePathOnTheGpu) {
  REQUIRE_CUDA();
  auto cpu = nn::MLP(
      2, 2, 8, 2,
      NeuralNetworkOptions().dtype(torch::kFloat64).use_topo_norm(true).execution(ExecutionOptions().fused(false)));
  auto gpu = std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA)));
  ASSERT_TRUE(cpu->uses_dense_path());
  EXPECT_FALSE(gpu->uses_dense_path());
  auto x = torch::randn({5, 2}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(cpu->forward(x), gpu->forward(x.cuda()).cpu(), 1e-10, 1e-10));
}
