// Invariants at scale, reproducibility, save failures and concurrency:
//   Invariants.*   1,000 random edit sequences over every technique combination;
//                  the same seed trains bit-identically.
//   SaveFailure.*  a save that fails at any step of the atomic write, or is
//                  SIGKILLed at a random moment, leaves a complete checkpoint.
//   Concurrency.*  edits of one const original from several threads; saves to
//                  one path from several threads.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <random>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>

#include "file_io.h"
#include "network_snapshot.h"

using namespace connex;
using namespace connex::testing;
using namespace connex::fault_injection;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Every parameter moved off its initial draw, so that a survivor mapped to the
// wrong entry cannot pass by equal initial values (e.g. attention gains of 1).
void perturb(NeuralNetwork& net, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : net->parameters())
    p.add_(torch::randn(p.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat64)).to(p.scalar_type()) * 0.1);
}

// The names of regular files in `dir`, sorted.
std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool same_parameters(const NeuralNetwork& a, const NeuralNetwork& b) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  if (pa.size() != pb.size()) return false;
  for (const auto& p : pa)
    if (!pb.contains(p.key()) || !StateSnapshot::bit_identical(p.value().detach(), pb[p.key()].detach())) return false;
  auto ba = a->named_buffers(), bb = b->named_buffers();
  if (ba.size() != bb.size()) return false;
  for (const auto& t : ba)
    if (!bb.contains(t.key()) || !StateSnapshot::bit_identical(t.value(), bb[t.key()])) return false;
  return true;
}

}  // namespace

// ----------------------------------------------------- random edit sequences

TEST(Invariants, RandomEditSequencesOnEveryTechniqueCombination) {
  const auto start = Clock::now();
  std::mt19937_64 rng(20240611);
  const std::vector<std::string> activations = {"tanh", "gelu", "relu", "sigmoid"};
  int cases = 0, edits = 0, fd_checked = 0, fd_refined = 0;
  int64_t survivors_compared = 0, technique_entries_compared = 0;
  std::map<std::string, int> kinds;
  std::map<int, int> combinations;
  for (int trial = 0; trial < 1000; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    auto spec = random_dag(rng, {4, 12, 0.3, trial % 3 == 0});
    // The 16 technique combinations in turn, shifted every 16 trials so that
    // the gradient-checked sample (every 20th) meets them all.
    const int mask = (trial + trial / 16) % 16;
    ++combinations[mask];
    NeuralNetwork net(spec, NeuralNetworkOptions()
                                .dtype(torch::kFloat64)
                                .hidden_activation(activations[trial % 4])
                                .seed(trial)
                                .dropout_p(trial % 7 == 0 ? 0.2 : 0.0)
                                .use_topo_norm(mask & 1)
                                .use_topo_self_attention(mask & 2)
                                .use_neuron_self_attention(mask & 4)
                                .use_adaptive_activations(mask & 8));
    perturb(net, trial);
    net->eval();
    const StateSnapshot original(net);
    const Snapshot before = snapshot(net);

    NetworkEditor editor = edit(net);
    const auto plan = random_edit_sequence(net, editor, rng, std::uniform_int_distribution<int>(3, 6)(rng));
    EditResult result{NeuralNetwork(nullptr), {}, {}};
    try {
      result = editor.build(trial);
    } catch (const Error& e) {
      FAIL() << "a sequence of valid edits was refused: " << e.what();
    }
    auto& edited = result.network;
    ASSERT_EQ(edited->num_neurons(), plan.neurons);
    ASSERT_EQ(edited->num_connections(), plan.connections);
    survivors_compared += expect_survivors_identical(before, snapshot(edited));
    technique_entries_compared += expect_operation_parameters_survive(net, edited);
    ASSERT_TRUE(original.expect_same(net)) << "the original network changed";

    edited->eval();
    auto x = torch::randn({3, edited->num_inputs()}, torch::kFloat64);
    {
      torch::NoGradGuard no_grad;
      ASSERT_TRUE(torch::isfinite(edited->forward(x)).all().item<bool>());
    }
    if (trial % 20 == 0) {
      // Central differences at h = 1e-6 carry a rounding error of about
      // eps·|L| / h, which can pass the tolerance where the loss is large and
      // a gradient small (it does once here, with attention). A larger h must
      // then agree: a wrong gradient does not improve with any h.
      const double error = max_gradient_error(edited, x, 16);
      if (error > 1e-6) {
        const double coarser = max_gradient_error(edited, x, 16, 1e-5);
        ASSERT_LE(coarser, 1e-6) << "technique mask " << mask << "; error " << error << " at h = 1e-6";
        ++fd_refined;
      }
      ++fd_checked;
    }
    ++cases;
    edits += plan.edits;
    for (const auto& [kind, count] : plan.kinds) kinds[kind] += count;
    if (HasFailure()) return;
  }
  EXPECT_EQ(cases, 1000);
  EXPECT_EQ(fd_checked, 50);
  EXPECT_EQ(combinations.size(), 16u);
  EXPECT_EQ(kinds.size(), 7u) << "every edit kind was drawn";
  std::string by_kind;
  for (const auto& [kind, count] : kinds) by_kind += " " + kind + "=" + std::to_string(count);
  std::cout << "invariants: " << cases << " cases, " << edits << " edits (" << by_kind.substr(1) << "), "
            << survivors_compared << " surviving weights/biases and " << technique_entries_compared
            << " technique entries compared bit for bit, " << fd_checked << " gradient checks (" << fd_refined
            << " needing h = 1e-5), " << seconds_since(start) << " s\n";
  RecordProperty("cases", cases);
  RecordProperty("edits", edits);
}

// ------------------------------------------------------------ reproducibility

namespace {

struct TrainingRun {
  std::vector<double> losses;
  NeuralNetwork network{nullptr};
  bool fused = false;
};

// Builds, trains, edits (carrying Adam's state) and trains on, all from seeds.
TrainingRun train_from_seed(bool dropout_and_techniques) {
  torch::manual_seed(123);  // dropout draws from torch's global generator
  const bool t = dropout_and_techniques;
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions()
                                       .seed(7)
                                       .hidden_activation("tanh")
                                       .dropout_p(t ? 0.2 : 0.0)
                                       .use_topo_norm(t)
                                       .use_topo_self_attention(t)
                                       .use_neuron_self_attention(t)
                                       .use_adaptive_activations(t));
  TrainingRun run;
  run.fused = net->uses_fused_kernel();
  auto [x, y] = cos_sin_data();
  auto adam = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(1e-2));
  auto steps = [&](int n) {
    for (int i = 0; i < n; ++i) {
      adam->zero_grad();
      auto loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      adam->step();
      run.losses.push_back(loss.item<double>());
    }
  };
  steps(15);
  auto result =
      edit(net).add_hidden_neurons({100}).add_connections({{2, 100}, {100, 11}}).remove_connections({{9, 11}}).build(5);
  auto next = std::make_unique<torch::optim::Adam>(result.network->parameters(), torch::optim::AdamOptions(1e-2));
  transfer_optimizer_state(*adam, net, *next, result);
  net = result.network;
  adam = std::move(next);
  steps(15);
  run.network = net;
  return run;
}

}  // namespace

// Graphs of over 65,536 connections split the spec's, the compile's and the
// editor's passes between threads. On 1, 2 and 4 threads they give the same
// graphs, connection layouts and parameters, bit for bit; the layouts keep
// their orders, and the edit keeps every surviving weight by label.
TEST(Invariants, LargeGraphPassesAgreeAcrossThreadCounts) {
  // Torch's thread count comes back however the test ends (an ASSERT returns early).
  struct RestoreThreads {
    int previous = torch::get_num_threads();
    ~RestoreThreads() { torch::set_num_threads(previous); }
  } restore_threads;
  std::mt19937_64 rng(21);
  const int n = 20000, n_in = 50, n_out = 10;
  std::vector<Edge> edges;
  for (int v = n_in; v < n; ++v)
    for (int k = 0; k < 6; ++k)  // repeats happen, and count once
      edges.emplace_back(std::uniform_int_distribution<int>(0, std::min(v, n - n_out) - 1)(rng), v);
  std::shuffle(edges.begin(), edges.end(), rng);  // the spec's edge order is not grouped by source
  std::vector<NeuronId> neurons, inputs, outputs;
  for (int i = 0; i < n; ++i) neurons.emplace_back(i);
  std::shuffle(neurons.begin(), neurons.end(), rng);  // spec positions differ from ids and dense ids
  for (int i = 0; i < n_in; ++i) inputs.emplace_back(i);
  for (int i = n - n_out; i < n; ++i) outputs.emplace_back(i);
  std::vector<Edge> doomed, wires;
  for (size_t k = 0; k < edges.size(); k += 97) doomed.push_back(edges[k]);
  // Neurons 0 and 1, which feed many, lose every other connection (as in pruning).
  for (size_t k = 0, kept = 0; k < edges.size(); ++k)
    if (edges[k].first == NeuronId(0) || edges[k].first == NeuronId(1))
      if (kept++ % 2) doomed.push_back(edges[k]);
  std::sort(doomed.begin(), doomed.end());
  doomed.erase(std::unique(doomed.begin(), doomed.end()), doomed.end());
  std::vector<NeuronId> fresh;
  for (int h = 0; h < 20; ++h) {
    fresh.emplace_back(n + h);
    for (int k = 0; k < 5; ++k) {  // from the lower half to the upper half of the ids: acyclic
      wires.emplace_back(std::uniform_int_distribution<int>(0, n / 2 - 1)(rng), n + h);
      wires.emplace_back(n + h, std::uniform_int_distribution<int>(n / 2, n - 1)(rng));
    }
  }

  struct Run {
    NeuralNetwork before, after;
    EditResult edit;
  };
  auto run = [&](int threads) {
    torch::set_num_threads(threads);
    NeuralNetwork before(GraphSpec::from_edges(edges, inputs, outputs, neurons), NeuralNetworkOptions().seed(1));
    auto result = edit(before).remove_connections(doomed).add_hidden_neurons(fresh).add_connections(wires).build(2);
    return Run{before, result.network, result};
  };
  auto expect_same_layout = [](const NeuralNetwork& a, const NeuralNetwork& b) {
    const Topology &x = a->topology(), &y = b->topology();
    expect_same_compiled_fields(x, y);
    EXPECT_EQ(x.spec().neurons(), y.spec().neurons());
    EXPECT_EQ(x.spec().edge_indices(), y.spec().edge_indices());  // the same order, not only the same set
    EXPECT_EQ(x.spec().index_adjacency().offsets, y.spec().index_adjacency().offsets);
    EXPECT_EQ(x.spec().index_adjacency().targets, y.spec().index_adjacency().targets);
    EXPECT_TRUE(torch::equal(a->weight_tensor(), b->weight_tensor()));
    EXPECT_TRUE(torch::equal(a->bias_tensor(), b->bias_tensor()));
  };
  const Run one = run(1);
  ASSERT_GT(one.before->num_connections(), 65536);
  for (int threads : {2, 4}) {
    SCOPED_TRACE(threads);
    const Run many = run(threads);
    expect_same_layout(one.before, many.before);
    expect_same_layout(one.after, many.after);
    for (const auto& name : {"weight", "bias"}) {
      EXPECT_TRUE(
          torch::equal(one.edit.parameters.moved.at(name).new_index, many.edit.parameters.moved.at(name).new_index));
      EXPECT_TRUE(
          torch::equal(one.edit.parameters.moved.at(name).old_index, many.edit.parameters.moved.at(name).old_index));
    }
  }

  // The layouts' orders: each target's sources ascending, each source's
  // connections naming it; the edited graph is exactly the old one less the
  // removed edges plus the added ones; survivors keep their weights.
  const Run& last = one;
  for (const NeuralNetwork& net : {last.before, last.after}) {
    const Topology& topo = net->topology();
    for (int64_t d = 0; d < topo.num_neurons(); ++d) {
      for (int64_t c = topo.in_offsets()[d]; c < topo.in_offsets()[d + 1]; ++c) {
        ASSERT_EQ(topo.conn_target()[c], d);
        if (c > topo.in_offsets()[d]) ASSERT_LT(topo.conn_source()[c - 1], topo.conn_source()[c]);
      }
      for (int64_t k = topo.out_offsets()[d]; k < topo.out_offsets()[d + 1]; ++k) {
        ASSERT_EQ(topo.conn_source()[topo.out_connections()[k]], d);
        ASSERT_EQ(topo.conn_target()[topo.out_connections()[k]], topo.out_targets()[k]);
      }
    }
  }
  std::set<Edge> expected(edges.begin(), edges.end());
  for (const auto& edge : doomed) expected.erase(edge);
  expected.insert(wires.begin(), wires.end());
  const Topology &old_topo = last.before->topology(), &new_topo = last.after->topology();
  std::set<Edge> got;
  const auto old_weight = last.before->weight_tensor().accessor<float, 1>();
  const auto new_weight = last.after->weight_tensor().accessor<float, 1>();
  int64_t survivors = 0;
  for (int64_t c = 0; c < new_topo.num_connections(); ++c) {
    const Edge edge{new_topo.label(new_topo.conn_source()[c]), new_topo.label(new_topo.conn_target()[c])};
    got.insert(edge);
    const int64_t u = old_topo.dense_of(edge.first), v = old_topo.dense_of(edge.second);
    const int64_t old_c = u >= 0 && v >= 0 ? old_topo.connection_index(u, v) : -1;
    if (old_c < 0) continue;
    ++survivors;
    ASSERT_EQ(new_weight[c], old_weight[old_c]) << edge_str(edge);
  }
  EXPECT_EQ(survivors, old_topo.num_connections() - static_cast<int64_t>(doomed.size()));
  EXPECT_EQ(got, expected);
}

TEST(Invariants, SameSeedTrainsBitIdentically) {
  for (bool t : {false, true}) {
    SCOPED_TRACE(t ? "dropout and every technique" : "plain (fused kernel)");
    const auto a = train_from_seed(t), b = train_from_seed(t);
    EXPECT_EQ(a.fused, !t);
    ASSERT_EQ(a.losses.size(), b.losses.size());
    for (size_t i = 0; i < a.losses.size(); ++i) EXPECT_TRUE(same_bits(a.losses[i], b.losses[i])) << "step " << i;
    EXPECT_TRUE(same_parameters(a.network, b.network));
    EXPECT_LT(a.losses.back(), a.losses.front());
  }
}

// --------------------------------------------------------------- save failure

namespace {

struct WriteFaultGuard {
  WriteFaultGuard(WriteStep step, size_t partial) { set_write_fault(step, partial); }
  ~WriteFaultGuard() { set_write_fault(std::nullopt); }
};

const char* step_name(WriteStep step) {
  switch (step) {
    case WriteStep::open_temp:
      return "open_temp";
    case WriteStep::write:
      return "write";
    case WriteStep::fsync_file:
      return "fsync_file";
    case WriteStep::rename:
      return "rename";
    case WriteStep::fsync_dir:
      return "fsync_dir";
  }
  return "?";
}

}  // namespace

TEST(SaveFailure, AtEveryStepThePreviousCheckpointSurvivesWhole) {
  TempDir dir;
  const std::string path = dir / "net.ckpt";
  auto previous = nn::MLP(1, 2, 8, 2, NeuralNetworkOptions().seed(1));
  auto next = nn::DenseMLP(1, 2, 6, 3, NeuralNetworkOptions().seed(2));
  save(next, path);
  const std::string next_bytes = slurp(path);
  save(previous, path);
  const std::string good = slurp(path);
  int checked = 0;
  for (auto step :
       {WriteStep::open_temp, WriteStep::write, WriteStep::fsync_file, WriteStep::rename, WriteStep::fsync_dir}) {
    for (size_t partial : {size_t{0}, next_bytes.size() / 2, next_bytes.size()}) {
      if (step != WriteStep::write && partial > 0) continue;
      SCOPED_TRACE(std::string(step_name(step)) + ", " + std::to_string(partial) + " bytes written");
      std::string message;
      {
        WriteFaultGuard fault(step, partial);
        try {
          save(next, path);
          ADD_FAILURE() << "the save succeeded";
        } catch (const Error& e) {
          message = e.what();
        }
      }
      EXPECT_NE(message.find("save(): "), std::string::npos) << message;
      EXPECT_NE(message.find(path), std::string::npos) << "the message names the file: " << message;
      if (step == WriteStep::fsync_dir) {
        // The rename has happened: the new checkpoint is in place, whole; the
        // error says its durability is not guaranteed.
        EXPECT_NE(message.find("cannot sync its directory"), std::string::npos) << message;
        EXPECT_TRUE(slurp(path) == next_bytes);
        EXPECT_TRUE(torch::equal(load(path)->weight_tensor(), next->weight_tensor()));
        spit(path, good);
      } else {
        EXPECT_TRUE(slurp(path) == good) << "the previous checkpoint changed";
        EXPECT_TRUE(torch::equal(load(path)->weight_tensor(), previous->weight_tensor()));
      }
      EXPECT_EQ(files_in(dir.path), std::vector<std::string>{"net.ckpt"}) << "a temporary file was left behind";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 7);

  // The other writers share the same path through write_file_atomically.
  save_config(previous, dir / "net.json");
  const std::string config = slurp(dir / "net.json");
  {
    WriteFaultGuard fault(WriteStep::write, 10);
    EXPECT_THROW_MSG(save_config(next, dir / "net.json"), "save_config(): cannot write " + (dir / "net.json"));
  }
  EXPECT_EQ(slurp(dir / "net.json"), config);
  EXPECT_EQ(files_in(dir.path), (std::vector<std::string>{"net.ckpt", "net.json"}));
  save(next, path);  // with the hook off, saving works again
  EXPECT_TRUE(slurp(path) == next_bytes);
}

// A child process rewrites a ~4 MB checkpoint in a loop; the parent SIGKILLs
// it at random moments. After every kill the file must be one of the two
// complete versions and load.
//
// Why fork() and what the child does: a fork of a multi-threaded process (torch
// keeps thread pools) copies only the calling thread, so the child must not
// call into torch, whose pools and locks may be in any state. The parent
// therefore serializes both versions with save() beforehand, and the child
// only calls write_file_atomically() — the very function save() ends with —
// on those bytes: plain memory, open/write/fsync/rename and glibc's malloc
// (fork-safe). It never returns into gtest: it loops until killed and leaves
// through _exit() if a write fails. Exec'ing the CLI instead would spend most
// of each run loading LibTorch, so few kills would land inside a write.
TEST(SaveFailure, SigkillAtRandomMomentsLeavesACompleteCheckpoint) {
  TempDir dir;
  const std::string path = dir / "big.ckpt";
  // ~4.5 MB each: 160,800 weights and ~960,000 topo self-attention parameters
  // (float32); cheaper to build on each load than a network of 1M connections.
  auto options = [](uint64_t seed) { return NeuralNetworkOptions().seed(seed).use_topo_self_attention(true); };
  auto a = nn::MLP(1, 1, 400, 2, options(1));
  auto b = nn::MLP(1, 1, 400, 2, options(2));
  save(b, path);
  const std::string b_bytes = slurp(path);
  save(a, path);
  const std::string a_bytes = slurp(path);
  ASSERT_GT(a_bytes.size(), 4000000u) << a_bytes.size();
  ASSERT_NE(a_bytes, b_bytes);

  std::mt19937 rng(7);
  int kills = 0, mid_write = 0, found_a = 0, found_b = 0;
  double load_seconds = 0;
  for (int k = 0; k < 20; ++k) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0) << "fork failed";
    if (child == 0) {
      try {
        for (uint64_t i = 0;; ++i) write_file_atomically(path, i % 2 ? a_bytes : b_bytes, "save()");
      } catch (...) {
      }
      ::_exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(500, 60000)(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child ended on its own (a write failed)";
    ++kills;
    const std::string now = slurp(path);
    const bool is_a = now == a_bytes, is_b = now == b_bytes;
    EXPECT_TRUE(is_a || is_b) << "kill " << k << ": the checkpoint is neither complete version (" << now.size()
                              << " bytes)";
    found_a += is_a, found_b += is_b;
    const auto load_start = Clock::now();
    auto loaded = load(path);
    load_seconds += seconds_since(load_start);
    EXPECT_TRUE(torch::equal(loaded->weight_tensor(), (is_a ? a : b)->weight_tensor()));
    // A kill inside a write leaves its temporary (the process had no chance to
    // remove it); it never replaces the checkpoint. Clear it for the next round.
    for (const auto& name : files_in(dir.path))
      if (name != "big.ckpt") {
        EXPECT_EQ(name.rfind("big.ckpt.tmp.", 0), 0u) << name;
        ++mid_write;
        fs::remove(dir / name);
      }
  }
  EXPECT_EQ(kills, 20);
  std::cout << "kill test: " << kills << " kills, " << mid_write << " inside a write; found version a " << found_a
            << " times, b " << found_b << " times; loading took " << load_seconds << " s\n";
  RecordProperty("kills_inside_a_write", mid_write);
}

// ----------------------------------------------------------------- concurrency

// Edits read the original and build new networks: several threads may edit
// one const original (while others run eval forwards on it) and all get the
// same network as a serial edit.
TEST(Concurrency, EditsOfOneConstOriginalFromFourThreadsAgree) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions()
                                       .dtype(torch::kFloat64)
                                       .dropout_p(0.1)
                                       .use_topo_norm(true)
                                       .use_adaptive_activations(true)
                                       .seed(4));
  perturb(net, 4);
  net->eval();
  const NeuralNetwork original = net;
  const StateSnapshot snapshot_before(original);
  auto make_edit = [&] {
    return edit(original)
        .add_hidden_neurons({100})
        .add_connections({{1, 100}, {100, 11}})
        .remove_neurons({9})
        .set_dropout_p(0.2)
        .build(5)
        .network;
  };
  const auto reference = make_edit();
  const auto x = torch::randn({8, 1}, torch::kFloat64);
  torch::Tensor y_reference;
  {
    torch::NoGradGuard no_grad;
    y_reference = net->forward(x);
  }
  std::atomic<int> mismatches{0}, errors{0}, forward_mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      try {
        torch::NoGradGuard no_grad;
        for (int i = 0; i < 25; ++i) {
          if (!same_parameters(make_edit(), reference)) ++mismatches;
          if (!torch::equal(net->forward(x), y_reference)) ++forward_mismatches;
        }
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(forward_mismatches.load(), 0);
  snapshot_before.expect_same(original);
}

// Several threads saving (different networks) to one path: every save
// succeeds and the file ends as one of them, whole. (Before temporaries were
// unique per call, the threads shared one temporary name and clobbered each
// other's bytes or renamed it away under each other.)
TEST(Concurrency, SavesToOnePathFromFourThreads) {
  TempDir dir;
  const std::string path = dir / "shared.ckpt";
  std::vector<NeuralNetwork> nets;
  std::vector<std::string> versions;
  for (int t = 0; t < 4; ++t) {
    nets.push_back(nn::DenseMLP(2, 2, 64, 3, NeuralNetworkOptions().seed(t)));
    save(nets.back(), path);
    versions.push_back(slurp(path));
  }
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        try {
          save(nets[t], path);
        } catch (const std::exception& e) {
          ++errors;
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  const std::string now = slurp(path);
  EXPECT_TRUE(std::find(versions.begin(), versions.end(), now) != versions.end()) << "the file is none of the versions";
  EXPECT_NO_THROW(load(path));
  EXPECT_EQ(files_in(dir.path), std::vector<std::string>{"shared.ckpt"});
}
