// connex's benchmark program. Each workload measures connex and its reference
// in the same run and prints their ratio, so figures compare within one
// machine state. Times are medians over repeated calls after a warm-up, and
// connex and its reference are timed in turn, call by call.
//
//   connex_bench [--quick] [--threads N] [--only NAME] [--device cpu|cuda[:N]]
//
// NAME (a part of it will do): mlp, dense, readme, sparse, plasticity,
// technique, sparse layered, rewire 1M, structure 1M, generators, shared cores, ham.
// On CUDA the GPU table runs instead: mlp, dense, sparse, technique, sparse layered.

#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "bench_workloads.h"
#include "file_io.h"
#include "examples.h"
#include "core_share.h"
#include "connex/connex.h"
#include "connex/ham/ham.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_of(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median_of(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double median_seconds(const std::function<void()>& fn, int warmup, int reps, double budget_s = 20.0) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) {
    times.push_back(seconds_of(fn));
    if (std::chrono::duration<double>(Clock::now() - start).count() > budget_s && times.size() >= 3) break;
  }
  return median_of(times);
}

// Medians of two closures timed alternately, call by call. This machine's
// speed drifts by tens of percent over seconds (a shared VM); timed in turn,
// both sides see the same drift, so their ratio holds when absolute times move.
// `set_a` and `set_b`, when given, put each side's thread setting in place:
// before each timed call of its side, untimed, followed by one untimed call
// of that side, so that the timed call finds the setting's pools awake as a
// training step finds them after the step before. (Timed right after the
// other side's call, each call woke a pool's threads: row 11's dense path
// read 1.21 of one thread on an idle VM, where in a run of steps it took 0.88.)
std::pair<double, double> paired_median_seconds(const std::function<void()>& a, const std::function<void()>& b,
                                                int warmup, int reps, double budget_s = 40.0,
                                                const std::function<void()>& set_a = {},
                                                const std::function<void()>& set_b = {}) {
  auto timed = [](const std::function<void()>& set, const std::function<void()>& fn) {
    if (set) {
      set();
      fn();
    }
    return seconds_of(fn);
  };
  for (int i = 0; i < warmup; ++i) timed(set_a, a), timed(set_b, b);
  std::vector<double> ta, tb;
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) {
    ta.push_back(timed(set_a, a));
    tb.push_back(timed(set_b, b));
    if (std::chrono::duration<double>(Clock::now() - start).count() > budget_s && ta.size() >= 3) break;
  }
  return {median_of(ta), median_of(tb)};
}

// Peak resident memory since the last reset, in MiB (Linux: VmHWM, reset via clear_refs).
void reset_peak_memory() { std::ofstream("/proc/self/clear_refs") << "5"; }
double peak_memory_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

std::string fmt_time(double s) {
  if (s < 1e-3) return fmt::format("{:.1f} µs", s * 1e6);
  if (s < 1.0) return fmt::format("{:.2f} ms", s * 1e3);
  return fmt::format("{:.2f} s", s);
}

// One training step (forward, MSE, backward, Adam) as a closure.
template <typename Net>
std::function<void()> train_step(Net net, torch::Tensor x, torch::Tensor y) {
  auto optimizer = std::make_shared<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-3));
  return [=]() mutable {
    optimizer->zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    optimizer->step();
  };
}

struct Row {
  std::string workload, connex, reference, ratio, note;
};

void print(const std::vector<Row>& rows) {
  fmt::print("\n| workload | connex | reference | ratio | note |\n| --- | --- | --- | --- | --- |\n");
  for (const auto& r : rows)
    fmt::print("| {} | {} | {} | {} | {} |\n", r.workload, r.connex, r.reference, r.ratio, r.note);
}

// Gives the cores to the pool `net` uses (core_share.h); the note's suffix naming the setting.
std::string share_cores(const connex::apps::CoreShare& cores, const connex::NeuralNetwork& net) {
  cores.apply(net);
  return fmt::format("; torch {} / BLAS {} thread(s)", torch::get_num_threads(),
                     connex::apps::CoreShare::blas_threads());
}

// What the workloads in functions of their own need from the run.
struct Run {
  bool quick;
  int reps;
  connex::apps::CoreShare cores;
  std::vector<Row>& rows;
  torch::Tensor x250, y250;  // toy data (workloads 1, 2, 3 and 6)
};

const auto kRelu = connex::NeuralNetworkOptions().hidden_activation("relu");

// One classification step (forward, cross-entropy, backward, Adam) as a closure.
template <typename Net>
std::function<void()> classify_step(Net net, torch::Tensor x, torch::Tensor labels) {
  auto optimizer = std::make_shared<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-3));
  return [=]() mutable {
    optimizer->zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), labels).backward();
    optimizer->step();
  };
}

// A connex network trained as a 10-class classifier, which a Rewirer may rewire.
struct Classifier {
  connex::NeuralNetwork net;
  std::shared_ptr<torch::optim::Optimizer> optimizer;
  torch::Tensor x, labels;

  Classifier(connex::NeuralNetwork network, int64_t batch)
      : net(std::move(network)),
        optimizer(std::make_shared<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-3))),
        x(torch::randn({batch, net->num_inputs()})),
        labels(torch::randint(net->num_outputs(), {batch}, torch::kLong)) {}
  // A train step; with a trace, through the traced forward (RigL reads it).
  void step(connex::LevelTrace* trace = nullptr) {
    optimizer->zero_grad();
    const auto out = trace ? net->forward_traced(x, *trace) : net->forward(x);
    torch::nn::functional::cross_entropy(out, labels).backward();
    optimizer->step();
  }
  // Rewires the network and carries the optimizer on (survivors keep their moments).
  void rewire(connex::Rewirer& rewirer, int64_t at_step, const connex::LevelTrace* trace) {
    auto r = rewirer.rewire(net, at_step, trace);
    optimizer = connex::optimizer_after_edit(*optimizer, net, r);
    net = r.network;
  }
};

connex::GraphSpec layered_spec(const std::vector<int64_t>& sizes, double density) {
  return connex::nn::sparse_layered_spec(sizes, connex::nn::SparseLayersOptions()
                                                    .density(density)
                                                    .distribution(connex::nn::DensityDistribution::ErdosRenyi)
                                                    .seed(1));
}

// The density of `sizes` that gives about `connections` connections.
double density_for(const std::vector<int64_t>& sizes, double connections) {
  double dense = 0;
  for (size_t k = 0; k + 1 < sizes.size(); ++k) dense += static_cast<double>(sizes[k] * sizes[k + 1]);
  return connections / dense;
}

std::string sizes_str(const std::vector<int64_t>& sizes) { return fmt::format("{}", fmt::join(sizes, "-")); }

// 1, 2. MLP and DenseMLP against Linear layers (plain and concatenating).
void mlps(Run& run, bool dense) {
  auto net = dense ? connex::nn::DenseMLP(1, 2, 128, 4, kRelu) : connex::nn::MLP(1, 2, 128, 4, kRelu);
  const auto pools = share_cores(run.cores, net);
  auto [a, b] = paired_median_seconds(
      train_step(net, run.x250, run.y250),
      train_step(connex::bench::LinearStack(1, 2, std::vector<int64_t>(4, 128), dense), run.x250, run.y250), 5,
      run.reps);
  run.rows.push_back(
      {dense ? "2. DenseMLP(1,2,128,4) train step, batch 250" : "1. MLP(1,2,128,4) train step, batch 250", fmt_time(a),
       fmt_time(b), fmt::format("{:.2f}", a / b),
       (dense ? "vs concatenating Linear layers" : "vs Linear layers") + pools});
}

// 3. The README's 12-neuron network.
void readme_net(Run& run) {
  connex::NeuralNetwork net(connex::apps::readme_graph(), kRelu);
  const auto pools = share_cores(run.cores, net);
  // The nearest plain network: Linear layers as wide as the README net's batches.
  auto [a, b] = paired_median_seconds(
      train_step(net, run.x250, run.y250),
      train_step(connex::bench::LinearStack(1, 2, std::vector<int64_t>{3, 2, 2, 3}, false), run.x250, run.y250), 20,
      run.reps * 10);
  run.rows.push_back({"3. README net (12 neurons) train step, batch 250", fmt_time(a), fmt_time(b),
                      fmt::format("{:.2f}", a / b), "vs Linear 1-3-2-2-3-2" + pools});
}

// Workload 4's sparse DAGs, built and trained twice, with their step times.
struct SparseDags {
  struct Dag {
    int64_t neurons;
    connex::NeuralNetwork net;
    std::function<void()> step;
    double peak_mib;
  };
  std::vector<Dag> dags;  // 10k neurons, then (without --quick) 100k
  std::vector<double> times;
  std::string pools;
};

SparseDags sparse_dags(Run& run) {
  // Both sizes are built first, then timed step by step in turn, so that
  // their ratio (the growth goal) sees one machine state, not two.
  SparseDags s;
  for (int64_t neurons : {10000, 100000}) {
    if (run.quick && neurons > 10000) break;
    reset_peak_memory();
    connex::NeuralNetwork net(
        connex::nn::random_dag_spec(connex::bench::sparse_dag_options(neurons, neurons * 10, 30, 1)), kRelu);
    s.pools = share_cores(run.cores, net);
    auto step = train_step(net, torch::randn({64, net->num_inputs()}), torch::randn({64, net->num_outputs()}));
    for (int i = 0; i < 2; ++i) step();
    // The process's peak while this network was built and trained (the
    // 1M figure includes the 100k network, kept for the paired timing).
    s.dags.push_back({neurons, net, step, peak_memory_mib()});
  }
  if (s.dags.size() == 2) {
    const auto [small, large] = paired_median_seconds(s.dags[0].step, s.dags[1].step, 1, 20);
    s.times = {small, large};
  } else {
    s.times = {median_seconds(s.dags[0].step, 1, 5)};
  }
  return s;
}

// 4. The sparse DAGs' throughput and growth.
void sparse_dag_rows(Run& run, const SparseDags& s) {
  for (size_t k = 0; k < s.dags.size(); ++k) {
    const int64_t conns = s.dags[k].net->num_connections();
    run.rows.push_back(
        {fmt::format("4. sparse DAG {}k neurons / {}k connections, depth {}, batch 64", s.dags[k].neurons / 1000,
                     conns / 1000, s.dags[k].net->topology().depth()),
         fmt_time(s.times[k]), "", "",
         fmt::format("{:.2e} connection·samples/s; peak RSS {:.0f} MiB", conns * 64 / s.times[k], s.dags[k].peak_mib) +
             s.pools});
  }
  if (s.dags.size() == 2)
    run.rows.push_back({"4. sparse DAG: time ratio 1M vs 100k connections (timed in turn)", "", "",
                        fmt::format("{:.2f}", s.times[1] / s.times[0]),
                        fmt::format("{:.1f}× the connections",
                                    double(s.dags[1].net->num_connections()) / s.dags[0].net->num_connections())});
}

// 5. On the largest network built: remove 1% of the connections; add 100 hidden neurons with 10 connections each.
void plasticity(Run& run, const SparseDags& s) {
  const auto& [neurons, net, step, peak] = s.dags.back();
  (void)peak;
  const int64_t conns = net->num_connections();
  std::mt19937_64 rng(2);
  std::vector<connex::Edge> doomed;
  const auto& edges = net->spec().edges();
  const auto& t = net->topology();
  auto level = [&](int64_t id) { return t.level_of(t.dense_of(connex::NeuronId(id))); };
  for (int64_t k = 0; k < conns / 100; ++k)
    doomed.push_back(edges[std::uniform_int_distribution<size_t>(0, edges.size() - 1)(rng)]);
  std::sort(doomed.begin(), doomed.end());
  doomed.erase(std::unique(doomed.begin(), doomed.end()), doomed.end());
  std::vector<connex::NeuronId> fresh;
  std::vector<connex::Edge> wires;
  const int64_t n_out = net->num_outputs();
  for (int64_t h = 0; h < 100; ++h) {
    connex::NeuronId id(neurons + h);
    fresh.push_back(id);
    for (int k = 0; k < 5; ++k) {
      // From a neuron in the first half of the levels, to one in the second half: never a cycle.
      int64_t u = std::uniform_int_distribution<int64_t>(0, neurons / 2 - 1)(rng);
      int64_t v = std::uniform_int_distribution<int64_t>(neurons / 2, neurons - n_out - 1)(rng);
      if (level(u) >= 15) u = 0;
      if (level(v) <= 15) v = neurons - 1;
      wires.emplace_back(u, id);
      wires.emplace_back(id, v);
    }
  }
  const auto [edit_t, step_t] = paired_median_seconds(
      [&] { connex::edit(net).remove_connections(doomed).add_hidden_neurons(fresh).add_connections(wires).build(1); },
      step, 1, run.quick ? 3 : 15, 60.0);
  run.rows.push_back(
      {fmt::format("5. plasticity on {}k connections: remove {} connections, add 100 neurons × 10 connections",
                   conns / 1000, doomed.size()),
       fmt_time(edit_t), fmt_time(step_t), fmt::format("{:.2f} train steps", edit_t / step_t),
       "one train step (timed in turn with the edit) is the reference" + s.pools});
}

// Workload 6's variants: each technique alone on the plain network's options.
std::vector<std::pair<std::string, connex::NeuralNetworkOptions>> technique_variants() {
  return {
      {"topo norm", connex::NeuralNetworkOptions(kRelu).use_topo_norm(true)},
      {"topo self-attention", connex::NeuralNetworkOptions(kRelu).use_topo_self_attention(true)},
      {"neuron self-attention", connex::NeuralNetworkOptions(kRelu).use_neuron_self_attention(true)},
      {"adaptive activations", connex::NeuralNetworkOptions(kRelu).use_adaptive_activations(true)},
  };
}

// 6. Each technique's cost: the same network and data, train step with / without.
void techniques(Run& run) {
  // Both run with the plain network's cores (it takes the fused kernel; a
  // thread count changed between calls would rebuild torch's thread pool).
  auto plain = connex::nn::DenseMLP(1, 2, 32, 3, kRelu);
  const auto pools = share_cores(run.cores, plain);
  auto plain_step = train_step(plain, run.x250, run.y250);
  for (const auto& [name, options] : technique_variants()) {
    const auto [t, t_plain] = paired_median_seconds(
        train_step(connex::nn::DenseMLP(1, 2, 32, 3, options), run.x250, run.y250), plain_step, 3, run.quick ? 5 : 20);
    run.rows.push_back({fmt::format("6. {} on DenseMLP(1,2,32,3) train step, batch 250", name), fmt_time(t),
                        fmt_time(t_plain), fmt::format("{:.2f}", t / t_plain),
                        "vs the same network without it" + pools});
  }
  // Training sharpens attention, and sharper scores cost the attention
  // kernel more (scalar_attention.h): the same step after some training.
  const auto variants = technique_variants();
  const auto& topo = std::find_if(variants.begin(), variants.end(), [](const auto& v) {
                       return v.first == "topo self-attention";
                     })->second;
  const int trained_steps = run.quick ? 50 : 300;
  const auto [t, t_plain] =
      paired_median_seconds(train_step(connex::nn::DenseMLP(1, 2, 32, 3, topo), run.x250, run.y250), plain_step,
                            trained_steps, run.quick ? 5 : 20);
  run.rows.push_back(
      {fmt::format("6. topo self-attention on DenseMLP(1,2,32,3) after {} train steps, batch 250", trained_steps),
       fmt_time(t), fmt_time(t_plain), fmt::format("{:.2f}", t / t_plain),
       "vs the same network without it; its sharper scores take the exact sums more" + pools});
}

// The cores as CoreShare gives them to a network of matrix products (the
// per-level path): the masked-dense reference's own setting. Returns the note's suffix.
std::string share_cores_for_matmuls(const connex::apps::CoreShare& cores) {
  const bool own_pool = connex::apps::CoreShare::blas_has_own_pool();
  torch::set_num_threads(own_pool ? 1 : cores.threads);
  if (own_pool) connex::apps::CoreShare::set_blas_threads(cores.threads);
  return fmt::format("; the reference: torch {} / BLAS {}", torch::get_num_threads(),
                     connex::apps::CoreShare::blas_threads());
}

// 7. Sparse layered networks against the masked-dense Linear layers users write instead.
void sparse_layered(Run& run) {
  const std::vector<int64_t> sizes{256, 1024, 1024, 10};
  for (double density : {0.01, 0.03, 0.1, 0.3}) {
    auto spec = layered_spec(sizes, density);
    connex::bench::MaskedLinearStack masked(sizes, spec);
    Classifier c(connex::NeuralNetwork(std::move(spec), kRelu), 128);
    const auto reference_pools = share_cores_for_matmuls(run.cores);
    const auto pools = share_cores(run.cores, c.net) + reference_pools;
    // Each side runs with its own best thread setting, switched untimed
    // before each call. Warmed up (and glibc told to keep freed memory, see
    // main()), or the masked-dense step's multi-MB tensors are mmapped and faulted in anew each time.
    const auto [a, b] =
        paired_median_seconds([&] { c.step(); }, classify_step(masked, c.x, c.labels), 5, run.reps, 40.0,
                              [&] { run.cores.apply(c.net); }, [&] { share_cores_for_matmuls(run.cores); });
    run.rows.push_back({fmt::format("7. sparse layered {} at {:g}% (ER, {}k connections) train step, batch 128",
                                    sizes_str(sizes), density * 100, c.net->num_connections() / 1000),
                        fmt_time(a), fmt_time(b), fmt::format("{:.2f}", a / b),
                        "vs masked-dense Linear layers, same connections; cross-entropy, Adam; glibc keeps freed "
                        "memory" +
                            pools});
  }
}

// 7. The planner's crossover: the same network on the fused kernel and on
// the per-level path (forced each way), each under its own core share.
void kernel_crossover(Run& run) {
  const std::vector<int64_t> sizes{256, 1024, 1024, 10};
  auto forced = [](bool fused) {
    return connex::NeuralNetworkOptions(kRelu).execution(connex::ExecutionOptions().fused(fused));
  };
  for (double density : {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}) {
    Classifier fused(connex::NeuralNetwork(layered_spec(sizes, density), forced(true)), 128);
    Classifier levels(connex::NeuralNetwork(layered_spec(sizes, density), forced(false)), 128);
    const auto pools = share_cores(run.cores, fused.net) + " / per-level" + share_cores(run.cores, levels.net);
    const auto [a, b] =
        paired_median_seconds([&] { fused.step(); }, [&] { levels.step(); }, 5, run.reps, 40.0,
                              [&] { run.cores.apply(fused.net); }, [&] { run.cores.apply(levels.net); });
    run.rows.push_back(
        {fmt::format("7. fused kernel vs per-level path at {:g}%, same network, batch 128", density * 100), fmt_time(a),
         fmt_time(b), fmt::format("{:.2f}", a / b),
         "each forced; the planner takes the per-level path from 55% with AVX-512, 45% AVX2, 35% SSE2 "
         "(kMatmulDensity)" +
             pools});
  }
}

// 7. Training at 10% with SET or RigL rewiring every 100 steps, against plain steps.
void sparse_layered_rewiring(Run& run) {
  const std::vector<int64_t> sizes{256, 1024, 1024, 10};
  for (auto method : {connex::RewireMethod::SET, connex::RewireMethod::RigL}) {
    const bool rigl = method == connex::RewireMethod::RigL;
    Classifier c(connex::NeuralNetwork(layered_spec(sizes, 0.1), kRelu), 128);
    const auto pools = share_cores(run.cores, c.net);
    connex::Rewirer rewirer(c.net, connex::RewireOptions().method(method).drop_fraction(0.3));
    int64_t at_step = 0;
    // The rewiring step (traced for RigL), rewire(), optimizer_after_edit and
    // the rewired network's first step, which pays for anything a new network builds.
    auto rewiring = [&] {
      connex::LevelTrace trace;
      c.step(rigl ? &trace : nullptr);
      c.rewire(rewirer, at_step += 100, rigl ? &trace : nullptr);
      c.step();
    };
    const auto [e, p] = paired_median_seconds(
        rewiring, [&] { c.step(); }, 2, run.quick ? 5 : 20);
    const double period = (98 * p + e) / 100;  // 100 steps, two of them in the rewiring
    const std::string name = connex::rewire_method_name(method);
    run.rows.push_back(
        {fmt::format("7. {} every 100 steps at 10%, drop 30%: train step amortised", name), fmt_time(period),
         fmt_time(p), fmt::format("{:.2f}", period / p),
         "(98 plain steps + the rewiring's 2 steps and rewiring) / 100, vs the plain connex step" + pools});
    run.rows.push_back(
        {fmt::format("7. {} rewiring alone at 10%{}", name, rigl ? ", its traced step included" : ""),
         fmt_time(e - 2 * p), fmt_time(p), fmt::format("{:.2f} train steps", (e - 2 * p) / p),
         "rewire() + optimizer_after_edit" + std::string(rigl ? " + the traced step's extra" : "") + pools});
  }
}

// 8. One SET and one RigL rewiring (drop and grow 30%) of a ~1M-connection
// layered network, with optimizer_after_edit, in train steps of that network.
void rewire_1m(Run& run) {
  const std::vector<int64_t> sizes{1000, 2000, 2000, 1000, 10};
  const double target = run.quick ? 1e5 : 1e6;
  Classifier c(connex::NeuralNetwork(layered_spec(sizes, density_for(sizes, target)), kRelu), 64);
  const auto pools = share_cores(run.cores, c.net);
  const int64_t conns = c.net->num_connections();
  connex::LevelTrace trace;  // RigL's: one traced step; rewire() only reads it
  c.step(&trace);
  const int reps = run.quick ? 3 : 5;
  for (auto method : {connex::RewireMethod::SET, connex::RewireMethod::RigL}) {
    connex::Rewirer rewirer(c.net, connex::RewireOptions().method(method).drop_fraction(0.3));
    // The rewired network is dropped: every call rewires the same network.
    auto rewiring = [&] {
      auto r = rewirer.rewire(c.net, 100, &trace);
      connex::optimizer_after_edit(*c.optimizer, c.net, r);
    };
    const auto [r, p] = paired_median_seconds(
        rewiring, [&] { c.step(); }, 1, reps, 60.0);
    run.rows.push_back({fmt::format("8. {} rewiring of {} ({}k connections), drop and grow 30%",
                                    connex::rewire_method_name(method), sizes_str(sizes), conns / 1000),
                        fmt_time(r), fmt_time(p), fmt::format("{:.2f} train steps", r / p),
                        "rewire() + optimizer_after_edit, vs one train step (batch 64, timed in turn)" + pools});
  }
  const auto [traced, p] = paired_median_seconds(
      [&] {
        connex::LevelTrace t;
        c.step(&t);
      },
      [&] { c.step(); }, 1, reps, 60.0);
  run.rows.push_back({fmt::format("8. traced train step (RigL's) of {}k connections", conns / 1000), fmt_time(traced),
                      fmt_time(p), fmt::format("{:.2f}", traced / p), "vs the plain train step" + pools});
}

// 9. prune() and remove_dead_neurons() on workload 4's DAG, in train steps.
void structure_1m(Run& run) {
  const int64_t neurons = run.quick ? 10000 : 100000;
  connex::NeuralNetwork net(
      connex::nn::random_dag_spec(connex::bench::sparse_dag_options(neurons, neurons * 10, 30, 1)), kRelu);
  const auto pools = share_cores(run.cores, net);
  auto step = train_step(net, torch::randn({64, net->num_inputs()}), torch::randn({64, net->num_outputs()}));
  const auto options = connex::PruneOptions().fraction(0.1);
  const auto pruned = connex::prune(net, options).network;
  const auto dead = connex::dead_neurons(pruned).size();
  const int reps = run.quick ? 3 : 5;
  const auto [t_prune, p1] = paired_median_seconds([&] { connex::prune(net, options); }, step, 1, reps, 60.0);
  const auto [t_dead, p2] = paired_median_seconds([&] { connex::remove_dead_neurons(pruned); }, step, 1, reps, 60.0);
  const int64_t conns = net->num_connections();
  run.rows.push_back({fmt::format("9. prune 10% (global magnitude) of the sparse DAG's {}k connections", conns / 1000),
                      fmt_time(t_prune), fmt_time(p1), fmt::format("{:.2f} train steps", t_prune / p1),
                      "vs one train step of workload 4's network (batch 64, timed in turn)" + pools});
  run.rows.push_back({fmt::format("9. remove_dead_neurons after that prune ({} dead)", dead), fmt_time(t_dead),
                      fmt_time(p2), fmt::format("{:.2f} train steps", t_dead / p2),
                      "vs one train step of the unpruned network" + pools});
}

// Medians of making a spec and of building a network from one (a fresh spec each time).
std::pair<double, double> make_and_build(const std::function<connex::GraphSpec()>& make, int reps) {
  std::vector<double> made, built;
  for (int i = 0; i < reps; ++i) {
    std::optional<connex::GraphSpec> spec;
    made.push_back(seconds_of([&] { spec.emplace(make()); }));
    connex::NeuralNetwork net{nullptr};
    built.push_back(seconds_of([&] { net = connex::NeuralNetwork(std::move(*spec), kRelu); }));
  }
  return {median_of(made), median_of(built)};
}

// 10. The generators making ~1M connections, and building a network from what they make.
void generators(Run& run) {
  const std::vector<int64_t> sizes{1000, 2000, 2000, 1000, 10};
  const int64_t neurons = run.quick ? 10000 : 100000;
  const double density = density_for(sizes, run.quick ? 1e5 : 1e6);
  const auto dag = connex::bench::sparse_dag_options(neurons, neurons * 10, 30, 1);
  const std::vector<std::pair<std::string, std::function<connex::GraphSpec()>>> makers = {
      {fmt::format("sparse_layered_spec {} at {:.2f}%", sizes_str(sizes), density * 100),
       [&] { return layered_spec(sizes, density); }},
      {fmt::format("random_dag_spec {}k neurons, depth 30", neurons / 1000),
       [&] { return connex::nn::random_dag_spec(dag); }},
  };
  for (const auto& [name, make] : makers) {
    const double conns = static_cast<double>(make().edges().size());
    const auto [made, built] = make_and_build(make, run.quick ? 3 : 5);
    run.rows.push_back({fmt::format("10. {}: {:.0f}k connections", name, conns / 1000), fmt_time(made), "", "",
                        fmt::format("{:.1f}M connections/s", conns / made / 1e6)});
    run.rows.push_back({fmt::format("10. NeuralNetwork from that spec"), fmt_time(built), "", "",
                        fmt::format("{:.1f}M connections/s", conns / built / 1e6)});
  }
}

}  // namespace

// 11. Thread settings on shared cores. A train step at 1 thread and at the
// default (all cores), each given out as the CLI gives a network its cores
// (core_share.h), timed in turn, with 0, 1 and 2 of the machine's cores
// kept busy by child processes this benchmark starts (each spins until
// killed): for the fused kernel (a 100k-connection sparse DAG, workload 4's
// smaller one), the per-level path and the dense path (an MLP
// 16-256-256-256-4). The default should never be more than 10 % slower than
// the better of the two.
void shared_cores(Run& run) {
  struct Case {
    std::string name;
    connex::NeuralNetwork net;
  };
  std::vector<Case> cases;
  cases.push_back({"fused kernel, sparse DAG 10k neurons / 100k connections",
                   connex::NeuralNetwork(
                       connex::nn::random_dag_spec(connex::bench::sparse_dag_options(10000, 100000, 30, 1)), kRelu)});
  cases.push_back(
      {"per-level path, MLP 16-256-256-256-4",
       connex::nn::MLP(16, 4, 256, 3,
                       connex::NeuralNetworkOptions(kRelu).execution(connex::ExecutionOptions().dense_path(false)))});
  cases.push_back({"dense path, MLP 16-256-256-256-4", connex::nn::MLP(16, 4, 256, 3, kRelu)});
  const int cores = connex::apps::cores_here();
  const connex::apps::CoreShare one{1};
  for (auto& c : cases) {
    auto step = train_step(c.net, torch::randn({64, c.net->num_inputs()}), torch::randn({64, c.net->num_outputs()}));
    for (int busy = 0; busy <= std::min(2, cores); ++busy) {
      std::vector<pid_t> spinners;
      for (int k = 0; k < busy; ++k) {
        const pid_t pid = fork();
        if (pid == 0)
          for (volatile uint64_t spin = 0;; spin = spin + 1) {
          }
        spinners.push_back(pid);
      }
      // The default starts each row as a fresh process would; its steps are
      // measured as the CLI measures them.
      const connex::apps::CoreShare all{cores};
      connex::reset_share_chooser();
      auto measured_step = [&] {
        const auto started = std::chrono::steady_clock::now();
        step();
        all.after_step(c.net, std::chrono::steady_clock::now() - started, 64);
      };
      // The default's choice of BLAS threads is made over windows of train
      // steps (ShareChooser): it is timed once it has tried both ways, and
      // between two tries, as most steps of a run of thousands meet it (the
      // tries, at most one window in two early on, are left out; a way that
      // collapses while timed is tried against the other at once, and that
      // try is timed too, as training would meet it).
      const int reps = run.quick ? 10 : 100;
      all.apply(c.net);
      const bool blas_choice = !c.net->uses_fused_kernel() && connex::apps::CoreShare::blas_has_own_pool();
      for (int64_t i = 0; i < 16 * connex::ShareChooser::kWindow; ++i) {
        if (i >= 2 * connex::ShareChooser::kWindow && (!blas_choice || all.blas_choice->regions_until_try() > reps + 3))
          break;
        measured_step();
      }
      const auto [t1, tn] = paired_median_seconds(
          step, measured_step, 3, reps, 30.0, [&] { one.apply(c.net); }, [&] { all.apply(c.net); });
      for (pid_t pid : spinners) kill(pid, SIGKILL), waitpid(pid, nullptr, 0);
      run.rows.push_back({fmt::format("11. {}, batch 64, {} core(s) kept busy", c.name, busy), fmt_time(tn),
                          fmt_time(t1), fmt::format("{:.2f}", tn / std::min(t1, tn)),
                          fmt::format("the default ({} threads) vs 1 thread; ratio: the default / the faster", cores)});
    }
  }
  run.cores.apply_default();
}

namespace {

// 12. HAMs (connex::ham): energy descent and training, against the same
// update written out in torch; the graph synapse against a dense one.
constexpr double kHamBeta = 2.0;  // the memory layer's softmax(β)
constexpr double kHamDt = 0.1;    // descent step (τ = 1)

// The only parameter of `synapse` in `ham` (a linear() without bias, a bias()).
torch::Tensor sole_parameter(const connex::ham::HAM& ham, const std::string& synapse) {
  const auto parameters = ham->synapse(synapse).synapse->parameters();
  if (parameters.size() != 1)
    throw std::runtime_error(
        fmt::format("connex_bench: synapse {} has {} parameters, 1 expected", synapse, parameters.size()));
  return parameters[0];
}

// The largest |a − b| relative to the largest |b|, the worst over the pairs.
double relative_diff(const std::vector<std::pair<torch::Tensor, torch::Tensor>>& pairs) {
  double worst = 0;
  for (const auto& [a, b] : pairs) {
    const double diff = (a.detach() - b.detach()).abs().max().item<double>();
    worst = std::max(worst, diff / std::max(b.detach().abs().max().item<double>(), 1e-30));
  }
  return worst;
}

// "same WHAT (…)", or a loud DIFFERENT (on stderr too): a ratio of two
// different computations means nothing. `relative`: from relative_diff().
std::string agreement(const std::string& what, double relative) {
  const bool same = relative <= 1e-4;
  if (!same)
    fmt::print(stderr, "connex_bench: 12. {} DIFFER from the reference's: relative |Δ| {:.2e}\n", what, relative);
  return fmt::format("{} {} (max |Δ| {:.0e} of the largest value)", same ? "same" : "DIFFERENT", what, relative);
}

// The reference: `steps` descent steps of workload 12's HAM (below) written
// out in torch, x ← x − dt (x + ∂E/∂g), with the closed-form gradients
//   g_img = x_img, g_mem = softmax(β x_mem), ∂E/∂g_img = −g_mem Wᵀ, ∂E/∂g_mem = −g_img W − b.
// Returns the image and memory states.
std::pair<torch::Tensor, torch::Tensor> reference_descent(torch::Tensor x_img, torch::Tensor x_mem,
                                                          const torch::Tensor& W, const torch::Tensor& b,
                                                          int64_t steps) {
  for (int64_t s = 0; s < steps; ++s) {
    const auto g_mem = torch::softmax(x_mem * kHamBeta, -1);
    const auto d_img = torch::addmm(x_img, g_mem, W.t(), 1, -1);  // x + ∂E/∂g
    const auto d_mem = torch::addmm(x_mem - b, x_img, W, 1, -1);
    x_img = torch::add(x_img, d_img, -kHamDt);
    x_mem = torch::add(x_mem, d_mem, -kHamDt);
  }
  return {x_img, x_mem};
}

// The HAM of 12 (a, b): an image layer (identity Lagrangian) and a memory
// layer (softmax(β)) joined by linear(), with a bias() on the memory.
connex::ham::HAM memory_ham(int64_t image, int64_t memory) {
  connex::ham::HAM ham;
  ham->add_layer("image", {image}, connex::ham::identity())
      .add_layer("memory", {memory}, connex::ham::softmax(kHamBeta))
      .add_synapse("store", connex::ham::linear(), {"image", "memory"})
      .add_synapse("bias", connex::ham::bias(), {"memory"});
  torch::NoGradGuard no_grad;
  sole_parameter(ham, "store").copy_(torch::randn({image, memory}) / std::sqrt(static_cast<double>(image)));
  sole_parameter(ham, "bias").copy_(torch::randn({memory}) * 0.1);
  return ham;
}

// The cores as for a network of matrix products (a HAM's time goes to its
// synapses' products), for connex and the reference alike. The note's suffix.
std::string share_cores_for_ham(const connex::apps::CoreShare& cores) {
  share_cores_for_matmuls(cores);
  return fmt::format("; torch {} / BLAS {} thread(s), both sides", torch::get_num_threads(),
                     connex::apps::CoreShare::blas_threads());
}

// 12 (a, b). Descent (inference) and a train step through the descent.
void ham_memory(Run& run, const std::string& pools) {
  const int64_t image = run.quick ? 64 : 784, memory = run.quick ? 256 : 2000, batch = run.quick ? 32 : 64;
  const int reps = run.quick ? 5 : 30;
  const double budget_s = run.quick ? 2.0 : 5.0;
  auto ham = memory_ham(image, memory);
  const auto W = sole_parameter(ham, "store"), b = sole_parameter(ham, "bias");
  const auto sizes = fmt::format("image {} (identity) × memory {} (softmax β={:g}), linear + bias, batch {}", image,
                                 memory, kHamBeta, batch);

  // (a) 10 descent steps without grad.
  {
    const int64_t steps = 10;
    auto x = ham->init_states(batch);
    x["image"] = torch::randn({batch, image});
    const auto options = connex::ham::DescentOptions().steps(steps).dt(kHamDt);
    const auto W_ref = W.detach().clone(), b_ref = b.detach().clone();
    torch::NoGradGuard no_grad;
    const auto settled = ham->descend(x, options).states;
    const auto [img, mem] = reference_descent(x.at("image"), x.at("memory"), W_ref, b_ref, steps);
    const double diff = relative_diff({{settled.at("image"), img}, {settled.at("memory"), mem}});
    const auto [a, r] = paired_median_seconds(
        [&] { ham->descend(x, options); },
        [&] { reference_descent(x.at("image"), x.at("memory"), W_ref, b_ref, steps); }, 2, reps, budget_s);
    run.rows.push_back({fmt::format("12. HAM descend, 10 steps (no grad): {}", sizes), fmt_time(a), fmt_time(r),
                        fmt::format("{:.2f}", a / r),
                        "vs the same steps in torch (closed-form gradients, addmm per layer); " +
                            agreement("final states", diff) + pools});
  }

  // (b) A train step: 5 descent steps from a noisy image, MSE to the clean one, backward, Adam.
  {
    const int64_t steps = 5;
    const auto clean = torch::randn({batch, image});
    auto x = ham->init_states(batch);
    x["image"] = clean + 0.5 * torch::randn({batch, image});
    const auto options = connex::ham::DescentOptions().steps(steps).dt(kHamDt);
    const auto W_ref = W.detach().clone().requires_grad_(), b_ref = b.detach().clone().requires_grad_();
    auto connex_loss = [&] { return torch::mse_loss(ham->descend(x, options).states.at("image"), clean); };
    auto reference_loss = [&] {
      return torch::mse_loss(reference_descent(x.at("image"), x.at("memory"), W_ref, b_ref, steps).first, clean);
    };
    // The same loss and gradients, from the same parameters.
    const auto loss = connex_loss(), loss_ref = reference_loss();
    loss.backward();
    loss_ref.backward();
    const double diff = relative_diff({{loss, loss_ref}, {W.grad(), W_ref.grad()}, {b.grad(), b_ref.grad()}});
    torch::optim::Adam adam(ham->parameters(), torch::optim::AdamOptions(1e-3));
    torch::optim::Adam adam_ref(std::vector<torch::Tensor>{W_ref, b_ref}, torch::optim::AdamOptions(1e-3));
    const auto [a, r] = paired_median_seconds(
        [&] {
          adam.zero_grad();
          connex_loss().backward();
          adam.step();
        },
        [&] {
          adam_ref.zero_grad();
          reference_loss().backward();
          adam_ref.step();
        },
        2, reps, budget_s);
    run.rows.push_back(
        {fmt::format("12. HAM train step (descend 5 steps, MSE, backward, Adam): {}", sizes), fmt_time(a), fmt_time(r),
         fmt::format("{:.2f}", a / r),
         "vs the same in torch, parameters as tensors; " + agreement("loss and gradients", diff) + pools});
  }
}

// 12 (c). The graph synapse against a dense linear() over one layer of n
// neurons joined to itself (tanh), at 1% and 10% of the n(n−1)/2 pairs: one
// descent step each, the same energy.
void ham_graph(Run& run, const std::string& pools) {
  const int64_t n = run.quick ? 500 : 2000, batch = run.quick ? 32 : 64;
  const int reps = run.quick ? 5 : 30;
  const double budget_s = run.quick ? 2.0 : 3.0;
  for (double density : {0.01, 0.1}) {
    const auto pairs = (torch::rand({n, n}) < density).triu(1).nonzero();  // [m, 2], i < j
    const int64_t m = pairs.size(0);
    std::vector<std::pair<connex::NeuronId, connex::NeuronId>> connections;
    connections.reserve(m);
    const auto at = pairs.accessor<int64_t, 2>();
    for (int64_t k = 0; k < m; ++k) connections.emplace_back(at[k][0], at[k][1]);
    const auto w = torch::randn({m}) / std::sqrt(density * n);
    connex::ham::HAM sparse, dense;
    sparse->add_layer("h", {n}, connex::ham::tanh())
        .add_synapse("lateral", connex::ham::graph(std::move(connections), w.clone()), {"h"});
    dense->add_layer("h", {n}, connex::ham::tanh()).add_synapse("lateral", connex::ham::linear(), {"h"});
    {
      // Over one layer, −½ gᵀ W g is −Σ w_ij g_i g_j when W holds 2 w_ij at (i, j) and 0 elsewhere.
      torch::NoGradGuard no_grad;
      auto W = sole_parameter(dense, "lateral");
      W.zero_();
      W.index_put_({pairs.select(1, 0), pairs.select(1, 1)}, 2 * w);
    }
    auto x = sparse->init_states(batch);
    x["h"] = torch::randn({batch, n});
    const auto options = connex::ham::DescentOptions().steps(1).dt(kHamDt);
    torch::NoGradGuard no_grad;
    const auto check = connex::ham::DescentOptions().steps(3).dt(kHamDt);
    const auto x_sparse = sparse->descend(x, check).states.at("h"), x_dense = dense->descend(x, check).states.at("h");
    const auto same = agreement("states after 3 steps", relative_diff({{x_sparse, x_dense}}));
    const auto [g, d] = paired_median_seconds([&] { sparse->descend(x, options); }, [&] { dense->descend(x, options); },
                                              2, reps, budget_s);
    run.rows.push_back(
        {fmt::format("12. HAM graph synapse, one descent step: 1 layer of {} (tanh) joined to itself, "
                     "{:g}% of pairs ({}k connections), batch {}",
                     n, density * 100, m / 1000, batch),
         fmt_time(g), fmt_time(d), fmt::format("{:.2f}", g / d),
         "vs a dense linear() synapse over the layer, same energy; ratio graph / dense; " + same + pools});
  }
}

// 12. The HAM workloads, under one setting of the cores.
void ham_workloads(Run& run) {
  const auto pools = share_cores_for_ham(run.cores);
  ham_memory(run, pools);
  ham_graph(run, pools);
  run.cores.apply_default();
}

// The GPU table: workloads 1, 2, 4, 6 and 7 on a CUDA device, at sizes a GPU
// is bought for. Every timed call ends with a device synchronisation, so a
// time is the step's, not its launch's; connex and its reference pay the same.
struct Gpu {
  Run& run;
  torch::Device device;

  std::function<void()> synced(std::function<void()> fn) const {
    return [fn = std::move(fn), index = device.index()] {
      fn();
      torch::cuda::synchronize(index);
    };
  }
  std::pair<double, double> paired(const std::function<void()>& a, const std::function<void()>& b, int reps) const {
    return paired_median_seconds(synced(a), synced(b), 5, reps);
  }
  torch::Tensor randn(std::vector<int64_t> sizes) const { return torch::randn(sizes, torch::Device(device)); }
  std::string note(const std::string& what) const { return what + "; " + device.str(); }
};

// G1, G2. MLP and DenseMLP(784, 10, 1024, 8) against Linear layers on cuBLAS.
void gpu_mlps(const Gpu& gpu, bool dense) {
  const int64_t batch = 1024;
  auto net = dense ? connex::nn::DenseMLP(784, 10, 1024, 8, kRelu) : connex::nn::MLP(784, 10, 1024, 8, kRelu);
  net->to(gpu.device);
  connex::bench::LinearStack reference(784, 10, std::vector<int64_t>(8, 1024), dense);
  reference->to(gpu.device);
  const auto x = gpu.randn({batch, 784}), y = gpu.randn({batch, 10});
  const auto [a, b] = gpu.paired(train_step(net, x, y), train_step(reference, x, y), gpu.run.reps);
  gpu.run.rows.push_back(
      {fmt::format("G{}. {}(784,10,1024,8) train step, batch {}", dense ? 2 : 1, dense ? "DenseMLP" : "MLP", batch),
       fmt_time(a), fmt_time(b), fmt::format("{:.2f}", a / b),
       gpu.note(dense ? "vs concatenating Linear layers" : "vs Linear layers")});
}

// G4. The sparse DAGs of workload 4 at batch 64 and 1024.
void gpu_sparse_dags(const Gpu& gpu) {
  for (int64_t neurons : {10000, 100000}) {
    if (gpu.run.quick && neurons > 10000) break;
    connex::NeuralNetwork net(
        connex::nn::random_dag_spec(connex::bench::sparse_dag_options(neurons, neurons * 10, 30, 1)), kRelu);
    net->to(gpu.device);
    for (int64_t batch : {64, 1024}) {
      auto step =
          gpu.synced(train_step(net, gpu.randn({batch, net->num_inputs()}), gpu.randn({batch, net->num_outputs()})));
      const double t = median_seconds(step, 3, gpu.run.quick ? 5 : 20);
      const int64_t conns = net->num_connections();
      gpu.run.rows.push_back({fmt::format("G4. sparse DAG {}k neurons / {}k connections, depth {}, batch {}",
                                          neurons / 1000, conns / 1000, net->topology().depth(), batch),
                              fmt_time(t), "", "",
                              gpu.note(fmt::format("{:.2e} connection·samples/s", conns * batch / t))});
    }
  }
}

// G6. Each technique's cost on the GPU: workload 6's network and data.
void gpu_techniques(const Gpu& gpu) {
  auto plain = connex::nn::DenseMLP(1, 2, 32, 3, kRelu);
  plain->to(gpu.device);
  const auto x = gpu.run.x250.to(gpu.device), y = gpu.run.y250.to(gpu.device);
  auto plain_step = train_step(plain, x, y);
  for (const auto& [name, options] : technique_variants()) {
    auto net = connex::nn::DenseMLP(1, 2, 32, 3, options);
    net->to(gpu.device);
    const auto [t, t_plain] = gpu.paired(train_step(net, x, y), plain_step, gpu.run.quick ? 5 : 20);
    gpu.run.rows.push_back({fmt::format("G6. {} on DenseMLP(1,2,32,3) train step, batch 250", name), fmt_time(t),
                            fmt_time(t_plain), fmt::format("{:.2f}", t / t_plain),
                            gpu.note("vs the same network without it")});
  }
}

// G7. Workload 7's sparse layered network against its masked-dense equivalent.
void gpu_sparse_layered(const Gpu& gpu) {
  const std::vector<int64_t> sizes{256, 1024, 1024, 10};
  for (double density : {0.01, 0.1, 0.3}) {
    auto spec = layered_spec(sizes, density);
    connex::bench::MaskedLinearStack masked(sizes, spec);
    masked->to(gpu.device);
    connex::NeuralNetwork net(std::move(spec), kRelu);
    net->to(gpu.device);
    const auto x = gpu.randn({128, 256});
    const auto labels = torch::randint(10, {128}, torch::TensorOptions(torch::kLong).device(gpu.device));
    const auto [a, b] = gpu.paired(classify_step(net, x, labels), classify_step(masked, x, labels), gpu.run.reps);
    gpu.run.rows.push_back({fmt::format("G7. sparse layered {} at {:g}% ({}k connections) train step, batch 128",
                                        sizes_str(sizes), density * 100, net->num_connections() / 1000),
                            fmt_time(a), fmt_time(b), fmt::format("{:.2f}", a / b),
                            gpu.note("vs masked-dense Linear layers, same connections; cross-entropy, Adam")});
  }
}

// The GPU table's workload names (for --only).
const std::vector<std::string> kGpuWorkloads = {"mlp", "dense", "sparse", "technique", "sparse layered"};

void gpu_workloads(Run& run, torch::Device device, const std::function<bool(const std::string&)>& wanted) {
  const Gpu gpu{run, device};
  if (wanted("mlp")) gpu_mlps(gpu, false);
  if (wanted("dense")) gpu_mlps(gpu, true);
  if (wanted("sparse")) gpu_sparse_dags(gpu);
  if (wanted("technique")) gpu_techniques(gpu);
  if (wanted("sparse layered")) gpu_sparse_layered(gpu);
}

}  // namespace

int main(int argc, char** argv) {
  // OpenBLAS reads two settings only when it loads (connex/openblas.h): the
  // program starts itself again with them where they are missing. Its
  // kernels, where it fell back on older ones than this processor runs (both
  // connex and the references run on them). And its workers' spin: they
  // spin for 2^28 cycles (~0.1 s) after each product before they sleep, so a
  // reference run on two BLAS threads kept the second core busy while the
  // connex step timed next to it (7 at 10 %: 0.41 of the masked-dense step,
  // 0.27 with the spin cut short); 2^20 cycles (~0.3 ms) outlasts the gaps
  // between one step's products. A value in the environment stays; if the
  // restart fails, it runs on as is, and the banner says so.
  connex::restart_with_openblas_settings(argv, {{"OPENBLAS_THREAD_TIMEOUT", "20"}});
  CLI::App app{"connex benchmarks: connex against plain torch references, ratios from one run"};
  bool quick = false;
  const int most_threads = connex::apps::most_threads_here();
  int threads = connex::apps::cores_here();
  std::string only, device_name = "cpu";
  app.add_flag("--quick", quick, "fewer repetitions; ~100k instead of ~1M connections");
  app.add_option("--threads", threads, "intra-op threads (default: all cores)")
      ->check(CLI::Validator(
          [most_threads](std::string& text) -> std::string {
            const auto v = connex::parse_integer(text);
            if (v && *v >= 1 && *v <= most_threads) return "";
            return fmt::format("must be an integer in [1, {}] (4 per core of this machine), got \"{}\"", most_threads,
                               connex::printable(text));
          },
          ""));
  app.add_option("--only", only, "run only workloads whose name contains this");
  app.add_option("--device", device_name,
                 "cpu (every workload), or cuda[:N] (the GPU table: mlp, dense, sparse, technique, sparse layered)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, as connex's errors (what the arguments held escaped).
    fmt::print(stderr, "connex_bench: {} (see --help)\n", connex::printable(e.what(), 1000));
    return 2;
  }
  std::optional<torch::Device> device;
  try {
    device.emplace(device_name);
  } catch (const std::exception&) {
    fmt::print(stderr, "connex_bench: --device: expected cpu, cuda or cuda:N, got \"{}\"\n", device_name);
    return 2;
  }
  if (device->is_cuda() && !torch::cuda::is_available()) {
    fmt::print(stderr, "connex_bench: --device {}: CUDA is not available to this LibTorch ({})\n", device_name,
               TORCH_VERSION);
    return 2;
  }
  if (device->is_cuda() && device->has_index() && device->index() >= static_cast<int>(torch::cuda::device_count())) {
    fmt::print(stderr, "connex_bench: --device {}: this machine has {} CUDA device(s)\n", device_name,
               torch::cuda::device_count());
    return 2;
  }
  if (!(device->is_cpu() || device->is_cuda())) {
    fmt::print(stderr, "connex_bench: --device: expected cpu, cuda or cuda:N, got \"{}\"\n", device_name);
    return 2;
  }
  if (device->is_cuda() && !device->has_index()) device.emplace(torch::kCUDA, 0);  // named in every row
  // glibc serves large blocks from its heap and keeps what is freed: by
  // default, early in a process, it mmaps each multi-MB tensor of the
  // masked-dense reference (7) and unmaps it on free, so every step faults
  // them in anew and the reference looks several times slower than it runs
  // once warm. For the whole run, so every workload sees the same allocator.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // Each workload gets the cores as the `connex` CLI would give them to its
  // connex network (core_share.h): torch's pool for the fused kernel,
  // OpenBLAS's for per-level path; its reference runs under the same setting
  // (but for 7's masked-dense reference, which gets its own: sparse_layered()).
  const connex::apps::CoreShare cores{threads};
  cores.apply_default();
  torch::manual_seed(0);
  const int reps = quick ? 10 : 50;
  auto wanted = [&](const std::string& name) { return only.empty() || name.find(only) != std::string::npos; };
  std::string blas_kernels = connex::describe(connex::openblas_kernels());
  if (!blas_kernels.empty()) blas_kernels += ", ";
  fmt::print(
      "connex_bench: {} core(s) (the fused kernel reaches {} thread(s)), {} (OPENBLAS_THREAD_TIMEOUT={}), {}{} "
      "repetitions, torch {}{}\n",
      threads, connex::fused_kernel_threads(),
      connex::apps::CoreShare::blas_has_own_pool() ? "OpenBLAS with its own pool" : "the BLAS follows torch's pool",
      std::getenv("OPENBLAS_THREAD_TIMEOUT") ? std::getenv("OPENBLAS_THREAD_TIMEOUT") : "unset", blas_kernels, reps,
      TORCH_VERSION, device->is_cuda() ? ", on " + device->str() : "");

  std::vector<Row> rows;
  const auto [x250, y250] = connex::apps::toy_data(250);
  Run run{quick, reps, cores, rows, x250, y250};
  if (device->is_cuda() && std::none_of(kGpuWorkloads.begin(), kGpuWorkloads.end(), wanted)) {
    fmt::print(stderr, "connex_bench: --only {}: no workload of the GPU table ({}) matches\n", only,
               fmt::join(kGpuWorkloads, ", "));
    return 2;
  }
  if (device->is_cuda()) {
    gpu_workloads(run, *device, wanted);
    print(rows);
    return 0;
  }
  if (wanted("mlp")) mlps(run, false);
  if (wanted("dense")) mlps(run, true);
  if (wanted("readme")) readme_net(run);
  if (wanted("sparse") || wanted("plasticity")) {
    const auto dags = sparse_dags(run);
    if (wanted("sparse")) sparse_dag_rows(run, dags);
    if (wanted("plasticity")) plasticity(run, dags);
  }
  if (wanted("technique")) techniques(run);
  if (wanted("sparse layered")) sparse_layered(run), kernel_crossover(run), sparse_layered_rewiring(run);
  if (wanted("rewire 1M")) rewire_1m(run);
  if (wanted("structure 1M")) structure_1m(run);
  if (wanted("generators")) generators(run);
  if (wanted("shared cores")) shared_cores(run);
  if (wanted("ham")) ham_workloads(run);
  print(rows);
  return 0;
}
