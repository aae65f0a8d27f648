// The same module on CUDA: skipped without a GPU.
#include "connex/ham/edit.h"
#include "connex/ham/ham.h"
#include "ham_util.h"
#include "optimizer_key.h"
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

// Topo norm and topo self-attention inside the dense path run CPU loops: on
// CUDA the network takes the per-level path, with the same values.
TEST(Cuda, TopoNormAndAttentionLeaveTheDensePathOnTheGpu) {
  REQUIRE_CUDA();
  for (bool attention : {false, true}) {
    SCOPED_TRACE(attention ? "topo self-attention" : "topo norm");
    auto cpu = nn::MLP(2, 2, 8, 2,
                       NeuralNetworkOptions()
                           .dtype(torch::kFloat64)
                           .use_topo_norm(!attention)
                           .use_topo_self_attention(attention)
                           .execution(ExecutionOptions().fused(false)));
    auto gpu = std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA)));
    ASSERT_TRUE(cpu->uses_dense_path());
    EXPECT_FALSE(gpu->uses_dense_path());
    auto x = torch::randn({5, 2}, torch::kFloat64);
    EXPECT_TRUE(torch::allclose(cpu->forward(x), gpu->forward(x.cuda()).cpu(), 1e-10, 1e-10));
  }
}

// Structure learning on CUDA: RigL, SET and pruning choose what they choose
// on the CPU, the optimizer's moments follow the survivors, and the results
// stay on the device.
TEST(Cuda, StructureLearningMatchesCpu) {
  REQUIRE_CUDA();
  auto spec = nn::sparse_layered_spec({6, 12, 12, 3}, nn::SparseLayersOptions().density(0.4).seed(3));
  NeuralNetwork cpu(spec, NeuralNetworkOptions().dtype(torch::kFloat64).seed(1).hidden_activation("tanh"));
  NeuralNetwork gpu(std::dynamic_pointer_cast<NeuralNetworkImpl>(cpu->clone(torch::Device(torch::kCUDA))));
  auto x = torch::randn({16, 6}, torch::kFloat64), y = torch::randn({16, 3}, torch::kFloat64);
  torch::optim::Adam adam_cpu(cpu->parameters(), 1e-2), adam_gpu(gpu->parameters(), 1e-2);
  LevelTrace trace_cpu, trace_gpu;
  for (int step = 0; step < 3; ++step) {
    adam_cpu.zero_grad(), adam_gpu.zero_grad();
    torch::mse_loss(cpu->forward_traced(x, trace_cpu), y).backward();
    torch::mse_loss(gpu->forward_traced(x.cuda(), trace_gpu), y.cuda()).backward();
    if (step < 2) adam_cpu.step(), adam_gpu.step();  // the last backward is RigL's
  }
  auto same = [](const NeuralNetwork& a, const NeuralNetwork& b) {
    ASSERT_EQ(a->spec().edges(), b->spec().edges());
    ASSERT_TRUE(b->weight_tensor().is_cuda());
    ASSERT_TRUE(torch::allclose(a->weight_tensor(), b->weight_tensor().cpu(), 1e-10, 1e-10));
  };
  for (auto method : {RewireMethod::RigL, RewireMethod::SET}) {
    const auto options = RewireOptions().method(method).drop_fraction(0.3).seed(4);
    Rewirer on_cpu(cpu, options), on_gpu(gpu, options);
    auto r_cpu = on_cpu.rewire(cpu, 0, &trace_cpu), r_gpu = on_gpu.rewire(gpu, 0, &trace_gpu);
    ASSERT_GT(on_cpu.last_report().grown, 0);
    same(r_cpu.network, r_gpu.network);
    auto next_cpu = optimizer_after_edit(adam_cpu, cpu, r_cpu), next_gpu = optimizer_after_edit(adam_gpu, gpu, r_gpu);
    auto moment = [](const torch::optim::Optimizer& o, const NeuralNetwork& n) {
      return adam_state(o, n->weight_tensor()).exp_avg();
    };
    ASSERT_TRUE(moment(*next_gpu, r_gpu.network).is_cuda());
    EXPECT_TRUE(
        torch::allclose(moment(*next_cpu, r_cpu.network), moment(*next_gpu, r_gpu.network).cpu(), 1e-10, 1e-10));
  }
  same(prune(cpu, PruneOptions().fraction(0.2)).network, prune(gpu, PruneOptions().fraction(0.2)).network);
}

// A trainable activation module moves to the GPU with the network: folding
// a dead neuron's constant ran it on a CPU tensor (torch's device error).
TEST(Cuda, DeadNeuronsFoldWithAnActivationModule) {
  REQUIRE_CUDA();
  // 3 is reached from no input and feeds the output: its constant folds into 5's bias.
  NeuralNetwork net(GraphSpec::from_adjacency({{0, {1}}, {1, {5}}, {3, {5}}}, {0}, {5}),
                    NeuralNetworkOptions().hidden_activation(torch::nn::PReLU(torch::nn::PReLUOptions().init(0.3))));
  net->to(torch::kCUDA, torch::kFloat64);  // the PReLU's slope too
  const auto x = torch::randn({4, 1}, torch::kFloat64).cuda();
  const auto before = net->forward(x);
  EditResult result = remove_dead_neurons(net);
  EXPECT_EQ(result.network->num_neurons(), 3);
  EXPECT_LE((result.network->forward(x) - before).abs().max().item<double>(), 1e-12);
}

TEST(Cuda, HamDescentTrainingAndEditsMatchCpu) {
  REQUIRE_CUDA();
  torch::set_default_dtype(caffe2::TypeMeta::Make<double>());
  struct FloatAgain {
    ~FloatAgain() { torch::set_default_dtype(caffe2::TypeMeta::Make<float>()); }
  } float_again;
  torch::manual_seed(18);
  namespace H = connex::ham;
  auto ham = editable_ham();
  ham->add_layer("img", {1, 6, 6}, H::identity()).add_layer("maps", {2, 4, 4}, H::tanh());
  ham->add_synapse("conv", H::conv2d({3, 3}), {"img", "maps"});
  auto gpu = std::dynamic_pointer_cast<H::HAMImpl>(ham->clone(torch::Device(torch::kCUDA)));
  auto x = ham->init_states(3);
  for (auto& [name, t] : x) t.normal_();
  H::States xg;
  for (const auto& [name, t] : x) xg[name] = t.cuda();
  auto opts = H::DescentOptions().steps(6).dt(0.1);
  auto a = ham->descend(x, opts).states, b = gpu->descend(xg, opts).states;
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::allclose(t, b[name].cpu(), 1e-9, 1e-11)) << name;
  // A loss over every layer, so that every parameter (the image's and the labelled layers' alike) has a gradient.
  auto loss = [](const H::States& states) {
    torch::Tensor sum = torch::zeros({}, states.begin()->second.options());
    for (const auto& [name, t] : states) sum = sum + t.pow(2).sum();
    return sum;
  };
  loss(a).backward();
  loss(b).backward();
  auto p = ham->named_parameters(), q = gpu->named_parameters();
  for (const auto& item : p) {
    ASSERT_TRUE(item.value().grad().defined() && q[item.key()].grad().defined()) << item.key();
    EXPECT_TRUE(torch::allclose(item.value().grad(), q[item.key()].grad().cpu(), 1e-9, 1e-11)) << item.key();
  }
  // An edit keeps the HAM on its device.
  auto edited = H::edit(H::HAM(gpu)).add_neurons("a", {"t"}).add_connections("lat", {{"t", "p"}}).build();
  for (const auto& t : edited.ham->parameters()) EXPECT_TRUE(t.is_cuda());
  for (const auto& t : edited.ham->buffers()) EXPECT_TRUE(t.is_cuda());
}
