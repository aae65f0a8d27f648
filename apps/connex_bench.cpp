// connex's benchmark program. Each workload measures connex and its reference
// in the same run and prints their ratio, so figures compare within one
// machine state. Times are medians over repeated calls after a warm-up, and
// connex and its reference are timed in turn, call by call.
//
//   connex_bench [--quick] [--threads N] [--only NAME]

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "bench_workloads.h"
#include "examples.h"
#include "core_share.h"
#include "connex/connex.h"

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
std::pair<double, double> paired_median_seconds(const std::function<void()>& a, const std::function<void()>& b,
                                                int warmup, int reps, double budget_s = 40.0) {
  for (int i = 0; i < warmup; ++i) a(), b();
  std::vector<double> ta, tb;
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) {
    ta.push_back(seconds_of(a));
    tb.push_back(seconds_of(b));
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"connex benchmarks: connex against plain torch references, ratios from one run"};
  bool quick = false;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string only;
  app.add_flag("--quick", quick, "fewer repetitions and no 1M-connection workloads");
  app.add_option("--threads", threads, "intra-op threads (default: all cores)");
  app.add_option("--only", only, "run only workloads whose name contains this");
  CLI11_PARSE(app, argc, argv);
  // Each workload gets the cores as the `connex` CLI would give them to its
  // connex network (core_share.h): torch's pool for the fused kernel,
  // OpenBLAS's for per-level path; its reference runs under the same setting.
  const connex::apps::CoreShare cores{threads};
  cores.apply_default();
  auto share_cores = [&](const connex::NeuralNetwork& net) {
    cores.apply(net);
    return fmt::format("; torch {} / BLAS {} thread(s)", torch::get_num_threads(),
                       connex::apps::CoreShare::blas_threads());
  };
  torch::manual_seed(0);
  const int reps = quick ? 10 : 50;
  auto wanted = [&](const std::string& name) { return only.empty() || name.find(only) != std::string::npos; };
  fmt::print(
      "connex_bench: {} core(s) (the fused kernel reaches {} thread(s)), {}, {} repetitions, torch {}\n", threads,
      connex::fused_kernel_threads(),
      connex::apps::CoreShare::blas_has_own_pool() ? "OpenBLAS with its own pool" : "the BLAS follows torch's pool",
      reps, TORCH_VERSION);

  std::vector<Row> rows;
  const auto [x250, y250] = connex::apps::toy_data(250);
  const auto relu = connex::NeuralNetworkOptions().hidden_activation("relu");

  if (wanted("mlp")) {
    auto net = connex::nn::MLP(1, 2, 128, 4, relu);
    const auto pools = share_cores(net);
    auto [a, b] = paired_median_seconds(
        train_step(net, x250, y250),
        train_step(connex::bench::LinearStack(1, 2, std::vector<int64_t>(4, 128), false), x250, y250), 5, reps);
    rows.push_back({"1. MLP(1,2,128,4) train step, batch 250", fmt_time(a), fmt_time(b), fmt::format("{:.2f}", a / b),
                    "vs Linear layers" + pools});
  }
  if (wanted("dense")) {
    auto net = connex::nn::DenseMLP(1, 2, 128, 4, relu);
    const auto pools = share_cores(net);
    auto [a, b] = paired_median_seconds(
        train_step(net, x250, y250),
        train_step(connex::bench::LinearStack(1, 2, std::vector<int64_t>(4, 128), true), x250, y250), 5, reps);
    rows.push_back({"2. DenseMLP(1,2,128,4) train step, batch 250", fmt_time(a), fmt_time(b),
                    fmt::format("{:.2f}", a / b), "vs concatenating Linear layers" + pools});
  }
  if (wanted("readme")) {
    connex::NeuralNetwork net(connex::apps::readme_graph(), relu);
    const auto pools = share_cores(net);
    // The nearest plain network: Linear layers as wide as the README net's batches.
    auto [a, b] = paired_median_seconds(
        train_step(net, x250, y250),
        train_step(connex::bench::LinearStack(1, 2, std::vector<int64_t>{3, 2, 2, 3}, false), x250, y250), 20,
        reps * 10);
    rows.push_back({"3. README net (12 neurons) train step, batch 250", fmt_time(a), fmt_time(b),
                    fmt::format("{:.2f}", a / b), "vs Linear 1-3-2-2-3-2" + pools});
  }

  if (wanted("sparse") || wanted("plasticity")) {
    // Both sizes are built first, then timed step by step in turn, so that
    // their ratio (the growth goal) sees one machine state, not two.
    struct Sparse {
      int64_t neurons;
      connex::bench::SparseDag dag;
      connex::NeuralNetwork net;
      std::function<void()> step;
      double peak_mib;
    };
    std::vector<Sparse> sparse;
    std::string pools;
    for (int64_t neurons : {10000, 100000}) {
      if (quick && neurons > 10000) break;
      reset_peak_memory();
      auto dag = connex::bench::random_sparse_dag(neurons, 10, 30, 1);
      connex::NeuralNetwork net(dag.spec, relu);
      pools = share_cores(net);
      auto step = train_step(net, torch::randn({64, net->num_inputs()}), torch::randn({64, net->num_outputs()}));
      for (int i = 0; i < 2; ++i) step();
      // The process's peak while this network was built and trained (the
      // 1M figure includes the 100k network, kept for the paired timing).
      sparse.push_back({neurons, std::move(dag), net, step, peak_memory_mib()});
    }
    std::vector<double> times;
    if (sparse.size() == 2) {
      const auto [small, large] = paired_median_seconds(sparse[0].step, sparse[1].step, 1, 20);
      times = {small, large};
    } else {
      times = {median_seconds(sparse[0].step, 1, 5)};
    }
    if (wanted("sparse")) {
      for (size_t k = 0; k < sparse.size(); ++k) {
        const int64_t conns = sparse[k].net->num_connections();
        rows.push_back({fmt::format("4. sparse DAG {}k neurons / {}k connections, depth {}, batch 64",
                                    sparse[k].neurons / 1000, conns / 1000, sparse[k].net->topology().depth()),
                        fmt_time(times[k]), "", "",
                        fmt::format("{:.2e} connection·samples/s; peak RSS {:.0f} MiB", conns * 64 / times[k],
                                    sparse[k].peak_mib) +
                            pools});
      }
      if (sparse.size() == 2)
        rows.push_back({"4. sparse DAG: time ratio 1M vs 100k connections (timed in turn)", "", "",
                        fmt::format("{:.2f}", times[1] / times[0]),
                        fmt::format("{:.1f}× the connections",
                                    double(sparse[1].net->num_connections()) / sparse[0].net->num_connections())});
    }

    if (wanted("plasticity")) {
      // On the largest network built: remove 1% of the connections; add 100 hidden neurons with 10 connections each.
      auto& [neurons, dag, net, step, peak] = sparse.back();
      (void)peak;
      const int64_t conns = net->num_connections();
      std::mt19937_64 rng(2);
      std::vector<connex::Edge> doomed;
      const auto& edges = dag.spec.edges();
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
          // From a neuron in the first half of the layers, to one in the second half: never a cycle.
          int64_t u = std::uniform_int_distribution<int64_t>(0, neurons / 2 - 1)(rng);
          int64_t v = std::uniform_int_distribution<int64_t>(neurons / 2, neurons - n_out - 1)(rng);
          if (dag.layer_of[u] >= 15) u = 0;
          if (dag.layer_of[v] <= 15) v = neurons - 1;
          wires.emplace_back(u, id);
          wires.emplace_back(id, v);
        }
      }
      const auto [edit_t, step_t] = paired_median_seconds(
          [&] {
            connex::edit(net).remove_connections(doomed).add_hidden_neurons(fresh).add_connections(wires).build(1);
          },
          step, 1, quick ? 3 : 15, 60.0);
      rows.push_back(
          {fmt::format("5. plasticity on {}k connections: remove {} connections, add 100 neurons × 10 connections",
                       conns / 1000, doomed.size()),
           fmt_time(edit_t), fmt_time(step_t), fmt::format("{:.2f} train steps", edit_t / step_t),
           "one train step (timed in turn with the edit) is the reference" + pools});
    }
  }
  if (wanted("technique")) {
    // Each technique's cost: the same network and data, train step with / without.
    // Both run with the plain network's cores (it takes the fused kernel; a
    // thread count changed between calls would rebuild torch's thread pool).
    auto plain = connex::nn::DenseMLP(1, 2, 32, 3, relu);
    const auto pools = share_cores(plain);
    auto plain_step = train_step(plain, x250, y250);
    const std::vector<std::pair<std::string, connex::NeuralNetworkOptions>> variants = {
        {"topo norm", connex::NeuralNetworkOptions(relu).use_topo_norm(true)},
        {"topo self-attention", connex::NeuralNetworkOptions(relu).use_topo_self_attention(true)},
        {"neuron self-attention", connex::NeuralNetworkOptions(relu).use_neuron_self_attention(true)},
        {"adaptive activations", connex::NeuralNetworkOptions(relu).use_adaptive_activations(true)},
    };
    for (const auto& [name, options] : variants) {
      const auto [t, t_plain] = paired_median_seconds(
          train_step(connex::nn::DenseMLP(1, 2, 32, 3, options), x250, y250), plain_step, 3, quick ? 5 : 20);
      rows.push_back({fmt::format("6. {} on DenseMLP(1,2,32,3) train step, batch 250", name), fmt_time(t),
                      fmt_time(t_plain), fmt::format("{:.2f}", t / t_plain), "vs the same network without it" + pools});
    }
  }
  print(rows);
  return 0;
}
