// Edit scripts, and data-parallel training on c10d (Gloo): in-process groups
// of threads over a FileStore for the library calls, and real processes on
// loopback through the `connex` program for training, edits and a killed rank.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include "net_util.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

// ------------------------------------------------------------- EditScript

// The same calls on an EditScript or a NetworkEditor: they share the fluent API.
template <typename Edits>
Edits& sample_edits(Edits& e) {
  e.add_hidden_neurons({12})
      .add_connections({{1, 12}, {12, 11}, {1, 6}})
      .remove_connections({{2, 4}})
      .remove_neurons({9})
      .set_dropout_p(DropoutSpec({{5, 0.25}}))
      .add_input_neurons({13})
      .add_output_neurons({14})
      .add_connections({{13, 14}});
  return e;
}

TEST(EditScript, JsonRoundTripAndReplayMatchesTheEditor) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().seed(3));
  EditScript script;
  sample_edits(script);
  const auto json = script.to_json();
  EXPECT_EQ(json.size(), 8u);
  EXPECT_EQ(json[0].dump(), R"({"add_hidden_neurons":[12]})");
  EXPECT_EQ(json[4].dump(), R"({"set_dropout_p":{"hidden":0.0,"neurons":[[5,0.25]]}})");
  const EditScript again = EditScript::from_json(nlohmann::json::parse(json.dump()));
  EXPECT_EQ(again.to_json(), json);

  auto by_script = again.build(net, 7).network;
  auto editor = edit(net);
  auto by_editor = sample_edits(editor).build(7).network;
  ASSERT_EQ(by_script->num_connections(), by_editor->num_connections());
  EXPECT_TRUE(torch::equal(by_script->weight_tensor(), by_editor->weight_tensor()));
  EXPECT_TRUE(torch::equal(by_script->bias_tensor(), by_editor->bias_tensor()));
}

TEST(EditScript, StringIdsSurviveJson) {
  NeuralNetwork net(GraphSpec::from_edges({{"a", "h"}, {"h", "y"}}, {"a"}, {"y"}));
  EditScript script;
  script.add_hidden_neurons({"g"}).add_connections({{"a", "g"}, {"g", "y"}});
  const auto again = EditScript::from_json(nlohmann::json::parse(script.to_json().dump()));
  auto edited = again.build(net).network;
  EXPECT_EQ(edited->num_connections(), 4);
  EXPECT_EQ(edited->hidden_neurons().size(), 2u);
}

TEST(EditScript, BadJsonNamesThePath) {
  EXPECT_THROW_MSG(EditScript::from_json(nlohmann::json::object(), "s.json"), "s.json: the top level must be an array");
  EXPECT_THROW_MSG(EditScript::from_json(nlohmann::json::parse(R"([{"add_wires": []}])"), "s.json"),
                   "s.json: /0: unknown step \"add_wires\"");
  EXPECT_THROW_MSG(EditScript::from_json(nlohmann::json::parse(R"([{"add_connections": [[1, 2, 3]]}])"), "s.json"),
                   "s.json: /0/add_connections/0 must be a pair [from, to]");
  EXPECT_THROW_MSG(EditScript::from_json(nlohmann::json::parse(R"([{"remove_neurons": [1.5]}])"), "s.json"),
                   "s.json: /0/remove_neurons/0 must be an integer or a string neuron id");
  EXPECT_THROW_MSG(EditScript::from_json(nlohmann::json::parse(R"([{"set_dropout_p": "high"}])"), "s.json"),
                   "s.json: /0/set_dropout_p must be a number or an object");
  EXPECT_THROW_MSG(EditScript::from_json(
                       nlohmann::json::parse(R"([{"add_input_neurons": [1], "add_output_neurons": [2]}])"), "s.json"),
                   "s.json: /0 must be an object with one key");
}

TEST(EditScript, InvalidStepThrowsWhenAppliedAndLeavesTheNetwork) {
  NeuralNetwork net(readme_spec(), NeuralNetworkOptions().seed(1));
  const auto weight = net->weight_tensor().clone();
  EditScript script;
  script.add_connections({{6, 4}});  // 4 -> 6 exists: a cycle
  EXPECT_THROW_MSG(script.build(net), "cycle");
  EXPECT_TRUE(torch::equal(net->weight_tensor(), weight));
}

#if defined(CONNEX_WITH_DISTRIBUTED)

namespace {

using distributed::DataParallel;
using distributed::Group;
using distributed::GroupOptions;

// Runs `body(rank)` on `world` threads, each with its own Group joined
// through a FileStore; rethrows the first failure.
void run_ranks(int world, const std::function<void(Group&, int)>& body,
               std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  TempDir dir;
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(world);
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        Group group(GroupOptions().rank(r).world_size(world).file_store(dir / "store").timeout(timeout));
        body(group, r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

NeuralNetwork small_net(uint64_t seed, torch::Dtype dtype = torch::kFloat64) {
  return NeuralNetwork(readme_spec(), NeuralNetworkOptions().seed(seed).dtype(dtype).hidden_activation("tanh"));
}

}  // namespace

TEST(Distributed, GroupOptionsRejectBadValues) {
  EXPECT_THROW_MSG(Group(GroupOptions().rank(2).world_size(2)), "rank 2 is outside [0, 2)");
  EXPECT_THROW_MSG(Group(GroupOptions().world_size(0)), "world_size must be at least 1");
  EXPECT_THROW_MSG(Group(GroupOptions().master_port(70000).world_size(1)), "master_port must be in [1, 65535]");
  EXPECT_THROW_MSG(Group(GroupOptions().timeout(std::chrono::milliseconds(0))), "timeout must be positive");
}

TEST(Distributed, JoiningWithoutTheOtherRanksTimesOutNamingTheAddress) {
  const auto start = std::chrono::steady_clock::now();
  // Rank 1 of 2 over TCP with nobody hosting the store on this port.
  EXPECT_THROW_MSG(Group(GroupOptions().rank(1).world_size(2).master_port(1).timeout(std::chrono::milliseconds(1500))),
                   "rank 1 of 2: could not join the group at 127.0.0.1:1");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST(Distributed, EnvironmentLikeTorchrun) {
  setenv("RANK", "3", 1), setenv("WORLD_SIZE", "4", 1), setenv("MASTER_ADDR", "10.0.0.7", 1),
      setenv("MASTER_PORT", "29999", 1);
  auto options = GroupOptions::from_environment();
  EXPECT_EQ(options.rank(), 3);
  EXPECT_EQ(options.world_size(), 4);
  EXPECT_EQ(options.master_addr(), "10.0.0.7");
  EXPECT_EQ(options.master_port(), 29999);
  setenv("MASTER_PORT", "http", 1);
  EXPECT_THROW_MSG(GroupOptions::from_environment(), "environment variable MASTER_PORT=http is not an integer");
  unsetenv("RANK"), unsetenv("WORLD_SIZE"), unsetenv("MASTER_ADDR"), unsetenv("MASTER_PORT");
}

TEST(Distributed, BroadcastAverageAndChecksum) {
  run_ranks(2, [](Group& group, int rank) {
    EXPECT_EQ(group.backend(), "gloo");
    DataParallel dp(group);
    NeuralNetwork net = small_net(10 + rank);  // different on purpose
    dp.broadcast_parameters(net);
    const auto reference = small_net(10);
    EXPECT_TRUE(torch::equal(net->weight_tensor(), reference->weight_tensor()));
    EXPECT_TRUE(torch::equal(net->bias_tensor(), reference->bias_tensor()));
    dp.check_replicas_identical(net, nullptr, "after broadcast");

    // Rank r's gradients are r + 1 everywhere: the average is 1.5.
    for (auto& p : net->parameters()) p.mutable_grad() = torch::full_like(p, rank + 1.0);
    dp.average_gradients(net);
    for (auto& p : net->parameters()) EXPECT_TRUE(torch::allclose(p.grad(), torch::full_like(p, 1.5)));

    // One replica drifts: every rank learns which.
    if (rank == 1) {
      torch::NoGradGuard no_grad;
      net->weight_tensor()[0] += 1e-12;
    }
    EXPECT_THROW_MSG(dp.check_replicas_identical(net, nullptr, "drift check"),
                     "drift check: replicas differ: rank 1 has a checksum");
  });
}

TEST(Distributed, ChecksumCoversOptimizerState) {
  NeuralNetwork net = small_net(2);
  torch::optim::Adam a(net->parameters(), torch::optim::AdamOptions(0.01)),
      b(net->parameters(), torch::optim::AdamOptions(0.01));
  auto [x, y] = cos_sin_data(torch::kFloat64);
  auto step = [&](torch::optim::Optimizer& opt) {
    opt.zero_grad();
    torch::mse_loss(net->forward(x), y).backward();
    opt.step();
  };
  const uint64_t before = DataParallel::checksum(net, &a);
  EXPECT_EQ(before, DataParallel::checksum(net, &b));
  step(a);
  EXPECT_NE(DataParallel::checksum(net, &a), DataParallel::checksum(net, &b));  // a has moments, b none
  EXPECT_NE(DataParallel::checksum(net), before);
}

// World size 2 with half batches each = one process with the whole batch.
TEST(Distributed, TwoReplicasTrainLikeOneProcessAndStayIdenticalThroughAnEdit) {
  auto [x, y] = cos_sin_data(torch::kFloat64);
  const int steps = 30, edit_at = 15;
  auto prune = [](const NeuralNetwork& net) {
    EditScript script;
    script.remove_connections({{0, 3}}).add_hidden_neurons({12}).add_connections({{1, 12}, {12, 11}});
    return script;
  };
  auto train = [&](NeuralNetwork& net, const torch::Tensor& xs, const torch::Tensor& ys, DataParallel* dp,
                   double scale) {
    auto optimizer = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(0.01));
    for (int s = 0; s < steps; ++s) {
      if (s == edit_at) {
        EditResult edited =
            dp ? dp->apply_edit(net, dp->group().rank() == 0 ? prune(net) : EditScript(), 5) : prune(net).build(net, 5);
        auto next = std::make_unique<torch::optim::Adam>(edited.network->parameters(), torch::optim::AdamOptions(0.01));
        transfer_optimizer_state(*optimizer, net, *next, edited);
        net = edited.network;
        optimizer = std::move(next);
        if (dp) dp->check_replicas_identical(net, optimizer.get(), "after the edit");
      }
      optimizer->zero_grad();
      (torch::mse_loss(net->forward(xs), ys) * scale).backward();
      if (dp) dp->average_gradients(net);
      optimizer->step();
    }
    return optimizer;
  };
  NeuralNetwork single = small_net(4);
  train(single, x, y, nullptr, 1.0);

  std::vector<NeuralNetwork> replicas(2, small_net(0));
  const int64_t n = x.size(0), half = n / 2;  // 250 rows: 125 + 125
  run_ranks(2, [&](Group& group, int rank) {
    DataParallel dp(group);
    NeuralNetwork net = small_net(rank == 0 ? 4 : 99);  // rank 1 starts elsewhere: the broadcast fixes it
    dp.broadcast_parameters(net);
    auto xs = x.narrow(0, rank * half, rank == 0 ? half : n - half),
         ys = y.narrow(0, rank * half, rank == 0 ? half : n - half);
    auto optimizer = train(net, xs, ys, &dp, static_cast<double>(xs.size(0)) * 2 / n);
    dp.check_replicas_identical(net, optimizer.get(), "end");
    replicas[rank] = net;
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(replicas[r]->num_connections(), single->num_connections());
    EXPECT_LE((replicas[r]->weight_tensor() - single->weight_tensor()).abs().max().item<double>(), 1e-6);
    EXPECT_LE((replicas[r]->bias_tensor() - single->bias_tensor()).abs().max().item<double>(), 1e-6);
  }
  EXPECT_TRUE(torch::equal(replicas[0]->weight_tensor(), replicas[1]->weight_tensor()));
}

TEST(Distributed, BroadcastBytesAndAnInvalidEditFailOnEveryRankAlike) {
  run_ranks(3, [](Group& group, int rank) {
    EXPECT_EQ(group.broadcast_bytes(rank == 2 ? std::string("from two\0!", 10) : "", 2, "test"),
              std::string("from two\0!", 10));
    DataParallel dp(group);
    NeuralNetwork net = small_net(1);
    EditScript bad;
    bad.add_connections({{6, 4}});
    EXPECT_THROW_MSG(dp.apply_edit(net, rank == 0 ? bad : EditScript(), 0), "cycle");
    group.barrier("test");  // still in step after the failure
  });
}

// Replicas of other networks, or ranks out of step, meet in collectives of
// other sizes, where gloo would abort the process: each rank is refused by
// name before the collective runs, and the group stays usable.
TEST(Distributed, RanksThatDisagreeAreNamedNotAborted) {
  run_ranks(2, [](Group& group, int rank) {
    DataParallel dp(group);
    NeuralNetwork net = small_net(1, rank == 0 ? torch::kFloat64 : torch::kFloat32);
    const std::string theirs = rank == 0 ? "14 elements of Float" : "14 elements of Double";
    const std::string mine = rank == 0 ? "14 elements of Double" : "14 elements of Float";
    EXPECT_THROW_MSG(dp.broadcast_parameters(net),
                     fmt::format("broadcast_parameters(): rank {} of 2 sends {} where rank {} sends {}; the ranks must "
                                 "hold replicas of one network and run with the same arguments",
                                 1 - rank, theirs, rank, mine));
    // One rank checks its replicas while the other averages its gradients.
    NeuralNetwork same = small_net(1);
    same->forward(torch::ones({2, 1}, torch::kFloat64)).sum().backward();
    try {
      if (rank == 0)
        dp.average_gradients(same);
      else
        dp.check_replicas_identical(same, nullptr, "check");
      ADD_FAILURE() << "rank " << rank << " ran a collective the other did not";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(rank == 0 ? "average_gradients(): rank 1 of 2 runs another collective (1 "
                                                       "element of Long) where rank 0 runs this one (25 elements of "
                                                       "Double); every rank must make the same calls in the same order"
                                                     : "check: rank 0 of 2 runs another collective"),
                std::string::npos)
          << e.what();
    }
    group.barrier("test");  // still in step after the refusals
  });
}

// Row r of the table is rank r's; a row of another length is refused by
// name, as is an all-reduce's first call when the ranks disagree on its
// dtype, while a repeated all-reduce's count may change on every rank.
TEST(Distributed, GatherRowsAndAllReducesWhoseCountsChange) {
  run_ranks(3, [](Group& group, int rank) {
    const auto table = group.gather_rows({rank, 10 * rank, -rank, int64_t{1} << 62}, "rows");
    ASSERT_EQ(table.sizes(), (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(table.scalar_type(), torch::kLong);
    for (int r = 0; r < 3; ++r)
      EXPECT_TRUE(torch::equal(table[r], torch::tensor({int64_t{r}, int64_t{10 * r}, int64_t{-r}, int64_t{1} << 62})));
    EXPECT_THROW_MSG(group.gather_rows(std::vector<int64_t>(rank == 2 ? 3 : 2, 7), "short rows"),
                     rank == 2
                         ? "short rows: rank 0 of 3 sends 2 elements of Long where rank 2 sends 3 elements of Long"
                         : "short rows: rank 2 of 3 sends 3 elements of Long where rank");
    EXPECT_EQ(group.gather_rows({}, "no rows").sizes(), (std::vector<int64_t>{3, 0}));
    // Also when only one rank's row changes length between two calls of one name.
    group.gather_rows({1, 2, 3}, "rows again");
    EXPECT_THROW_MSG(group.gather_rows(std::vector<int64_t>(rank == 1 ? 5 : 3, 0), "rows again"),
                     rank == 1 ? "rows again: rank 0 of 3 sends 3 elements of Long where rank 1 sends 5"
                               : "rows again: rank 1 of 3 sends 5 elements of Long where rank");

    // A repeated all-reduce: another count on every rank is taken (one
    // rank's count is test ARankLocalEditIsNamedNotAborted's); at its first
    // call, ranks that disagree on the dtype are named.
    for (int step = 0; step < 3; ++step) {
      auto g = torch::full({5}, 1.0, torch::kFloat64);
      group.all_reduce_sum(g, "grads");
      EXPECT_TRUE(torch::equal(g, torch::full({5}, 3.0, torch::kFloat64)));
    }
    auto edited = torch::ones({6}, rank == 1 ? torch::kFloat32 : torch::kFloat64);
    EXPECT_THROW_MSG(group.all_reduce_sum(edited, "other grads"),
                     rank == 1
                         ? "other grads: rank 0 of 3 sends 6 elements of Double where rank 1 sends 6 elements of Float"
                         : "other grads: rank 1 of 3 sends 6 elements of Float where rank");
    auto agreed = torch::ones({6}, torch::kFloat64);
    group.all_reduce_sum(agreed, "grads");
    EXPECT_TRUE(torch::equal(agreed, torch::full({6}, 3.0, torch::kFloat64)));
    // Shorter on every rank (the first message padded), then none, then
    // longer again; each dtype that carries the statement in its message.
    for (int64_t n : {4, 0, 9, 9})
      for (auto dtype : {torch::kFloat64, torch::kFloat32, torch::kLong, torch::kInt}) {
        auto t = torch::arange(n, dtype) + rank;
        group.all_reduce_sum(t, "sized");
        EXPECT_TRUE(torch::equal(t, 3 * torch::arange(n, dtype) + 3)) << n << " " << dtype;
        auto m = torch::arange(n, dtype) * (rank + 1);
        group.all_reduce_max(m, "sized");
        EXPECT_TRUE(torch::equal(m, 3 * torch::arange(n, dtype))) << n << " " << dtype;
      }
    group.barrier("test");
  });
}

// A rank that edits its replica alone (not through apply_edit) averages
// gradients of another count than the other ranks, which have compared this
// all-reduce before and do not compare it again: every rank is refused by
// name in the same call, the tensors are left as they were, and the group
// stays usable.
TEST(Distributed, ARankLocalEditIsNamedNotAborted) {
  run_ranks(3, [](Group& group, int rank) {
    DataParallel dp(group);
    NeuralNetwork net = small_net(1);
    auto backward = [&](NeuralNetwork& n) {
      n->zero_grad();
      n->forward(torch::ones({2, 1}, torch::kFloat64)).sum().backward();
    };
    for (int step = 0; step < 2; ++step) {
      backward(net);
      dp.average_gradients(net);
    }
    NeuralNetwork mine = rank == 2 ? edit(net).remove_connections({net->spec().edges().front()}).build().network : net;
    backward(mine);
    const auto before = mine->weight_tensor().grad().clone();
    EXPECT_THROW_MSG(dp.average_gradients(mine),
                     rank == 2 ? "average_gradients(): rank 0 of 3 sends 25 elements of Double where rank 2 sends 24"
                               : "average_gradients(): rank 2 of 3 sends 24 elements of Double where rank");
    EXPECT_TRUE(torch::equal(mine->weight_tensor().grad(), before));
    backward(net);
    dp.average_gradients(net);  // the same replica again on every rank: in step
    // The same with a tensor larger than the first message, and with a maximum.
    for (int64_t n : {int64_t{5000}, int64_t{7000}}) {
      auto big = torch::full({n}, double(rank), torch::kFloat64);
      group.all_reduce_sum(big, "big");
      EXPECT_TRUE(torch::equal(big, torch::full({n}, 3.0, torch::kFloat64)));
      auto top = torch::full({n}, float(rank), torch::kFloat32);
      group.all_reduce_max(top, "top");
      EXPECT_TRUE(torch::equal(top, torch::full({n}, 2.0f, torch::kFloat32)));
    }
    // Two names seen before, called by different ranks at one time: named
    // as ranks in another collective. A non-contiguous tensor is summed in place.
    for (const char* name : {"x", "y"}) {
      auto t = torch::arange(6, torch::kFloat64).view({2, 3}).t();
      group.all_reduce_sum(t, name);
      EXPECT_TRUE(torch::equal(t, 3 * torch::arange(6, torch::kFloat64).view({2, 3}).t()));
    }
    auto some = torch::ones({6}, torch::kFloat64);
    EXPECT_THROW_MSG(group.all_reduce_sum(some, rank == 0 ? "x" : "y"),
                     rank == 0
                         ? "x: rank 1 of 3 runs another collective (6 elements of Double) where rank 0 runs this one"
                         : "y: rank 0 of 3 runs another collective (6 elements of Double) where rank");
    EXPECT_TRUE(torch::equal(some, torch::ones({6}, torch::kFloat64)));
    auto odd = torch::zeros({rank == 0 ? 7001 : 7000}, torch::kFloat32);
    EXPECT_THROW_MSG(group.all_reduce_max(odd, "top"),
                     rank == 0 ? "top: rank 1 of 3 sends 7000 elements of Float where rank 0 sends 7001"
                               : "top: rank 0 of 3 sends 7001 elements of Float where rank");
    group.barrier("test");
  });
}

#if defined(CONNEX_CLI)
#include "cli_util.h"

namespace {

int run_connex(const std::vector<std::string>& args, const std::string& log) {
  return wait_for(spawn_connex(args, log), std::chrono::seconds(300));
}

// A 2 -> 1 regression in float64, so that two ranks' summation order stays far below 1e-6.
void write_data_and_config(const TempDir& dir) {
  std::ofstream csv(dir / "data.csv");
  csv << "x1,x2,y\n";
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> u(-1, 1);
  for (int i = 0; i < 200; ++i) {
    const double a = u(rng), b = u(rng);
    csv << a << "," << b << "," << std::sin(a) - b * b << "\n";
  }
  spit(dir / "net.json", R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 16, "depth": 2},
                             "options": {"hidden_activation": "tanh", "dtype": "float64", "seed": 3}})");
}

double max_difference(const NeuralNetwork& a, const NeuralNetwork& b) {
  EXPECT_EQ(a->num_connections(), b->num_connections());
  if (a->num_connections() != b->num_connections()) return INFINITY;
  return std::max((a->weight_tensor() - b->weight_tensor()).abs().max().item<double>(),
                  (a->bias_tensor() - b->bias_tensor()).abs().max().item<double>());
}

}  // namespace

TEST(DistributedCli, TwoProcessesEqualOneWithTheWholeBatchAlsoThroughAPrune) {
  TempDir dir;
  write_data_and_config(dir);
  const std::vector<std::string> common{
      "train", dir / "net.json", "--data", dir / "data.csv", "--epochs", "12", "--batch-size",
      "40",    "--lr",           "0.01",   "--seed",         "2"};
  auto with = [&](std::vector<std::string> extra) {
    auto args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  ASSERT_EQ(run_connex(with({"--out", dir / "one"}), dir / "one.log"), 0) << slurp(dir / "one.log");
  ASSERT_EQ(run_connex(with({"--out", dir / "two", "--nproc", "2"}), dir / "two.log"), 0) << slurp(dir / "two.log");
  const std::string log = slurp(dir / "two.log");
  EXPECT_NE(log.find("[rank 1] replicas identical on all 2 ranks"), std::string::npos) << log;
  EXPECT_LE(max_difference(load(dir / "one/model.ckpt"), load(dir / "two/model.ckpt")), 1e-6);

  // An edit in the middle: pruned on rank 0, applied on both, optimizer state carried.
  ASSERT_EQ(
      run_connex(with({"--out", dir / "one_p", "--prune-at-epoch", "6", "--prune-fraction", "0.3"}), dir / "1p.log"), 0)
      << slurp(dir / "1p.log");
  ASSERT_EQ(
      run_connex(with({"--out", dir / "two_p", "--prune-at-epoch", "6", "--prune-fraction", "0.3", "--nproc", "2"}),
                 dir / "2p.log"),
      0)
      << slurp(dir / "2p.log");
  const auto one = load(dir / "one_p/model.ckpt"), two = load(dir / "two_p/model.ckpt");
  const int64_t all = load(dir / "one/model.ckpt")->num_connections();
  EXPECT_EQ(one->num_connections(), all - std::llround(0.3 * static_cast<double>(all)));
  EXPECT_LE(max_difference(one, two), 1e-6);
  EXPECT_NE(slurp(dir / "2p.log").find("pruned"), std::string::npos);
}

TEST(DistributedCli, AKilledRankStopsTheOtherWithItsNameAndTheCheckpointSurvives) {
  TempDir dir;
  write_data_and_config(dir);
  const std::string port = std::to_string(unused_port());
  const std::vector<std::string> args{
      "train", dir / "net.json",     "--data", dir / "data.csv", "--epochs",  "1000000",        "--batch-size",
      "20",    "--checkpoint-every", "5",      "--out",          dir / "run", "--dist-timeout", "30"};
  auto env = [&](int rank) {
    return std::vector<std::string>{"RANK=" + std::to_string(rank), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                    "MASTER_PORT=" + port};
  };
  const pid_t rank0 = spawn_connex(args, dir / "rank0.log", "", env(0));
  const pid_t rank1 = spawn_connex(args, dir / "rank1.log", "", env(1));
  // Let it write a checkpoint or two, then kill rank 1 without warning.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(dir / "run/model.ckpt") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(dir / "run/model.ckpt")) << slurp(dir / "rank0.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(rank1, SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(wait_for(rank1, std::chrono::seconds(10)), 128 + SIGKILL);
  const int code = wait_for(rank0, std::chrono::seconds(30));  // the --dist-timeout
  const std::string log = slurp(dir / "rank0.log");
  EXPECT_EQ(code, 1) << log;
  EXPECT_LT(std::chrono::steady_clock::now() - killed, std::chrono::seconds(30));
  EXPECT_NE(log.find("lost rank 1 of 2"), std::string::npos) << log;
  // The last checkpoint is whole: it loads, and no temporary file is left.
  NeuralNetwork saved = load(dir / "run/model.ckpt");
  EXPECT_EQ(saved->num_inputs(), 2);
  for (const auto& entry : fs::directory_iterator(dir / "run"))
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
}

// Ranks started by hand with other arguments would train apart (another
// --seed: other batches, a result silently not the whole batch's) or fall
// out of step (another --batch-size): both ranks refuse at the start, naming
// the setting, and no run directory is written.
TEST(DistributedCli, RanksWithOtherArgumentsAreRefusedAtTheStart) {
  TempDir dir;
  write_data_and_config(dir);
  for (const auto& [flag, mine, theirs] :
       std::vector<std::tuple<std::string, std::string, std::string>>{{"--seed", "3", "4"},
                                                                      {"--batch-size", "20", "25"},
                                                                      {"--optimizer", "adam", "sgd"},
                                                                      {"--prune-scope", "neuron", "level"},
                                                                      {"--prune-keep-min", "1", "2"}}) {
    SCOPED_TRACE(flag);
    const std::string port = std::to_string(unused_port());
    auto args = [&](const std::string& value) {
      std::vector<std::string> a{
          "train", dir / "net.json", "--data", dir / "data.csv", "--epochs", "2", "--out", dir / "run", flag, value};
      if (flag.rfind("--prune", 0) == 0) a.insert(a.end(), {"--prune-at-epoch", "1", "--prune-fraction", "0.2"});
      return a;
    };
    auto env = [&](int rank) {
      return std::vector<std::string>{"RANK=" + std::to_string(rank), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                      "MASTER_PORT=" + port};
    };
    const pid_t rank0 = spawn_connex(args(mine), dir / "rank0.log", "", env(0));
    const pid_t rank1 = spawn_connex(args(theirs), dir / "rank1.log", "", env(1));
    EXPECT_EQ(wait_for(rank0, std::chrono::seconds(120)), 1);
    EXPECT_EQ(wait_for(rank1, std::chrono::seconds(120)), 1);
    const std::string message =
        flag == "--optimizer" ? "train: rank 1 runs with another optimizer (--optimizer) than rank 0 (rank "
        : flag == "--prune-scope"
            ? "train: rank 1 runs with another prune scope (--prune-scope or the run's record) than rank 0 (rank "
        : flag == "--prune-keep-min"
            ? "train: rank 1 runs with --prune-keep-min (or the run's record) 2 where rank 0 has 1; every rank of a "
              "run needs the same arguments and data"
            : "train: rank 1 runs with " + flag + " " + theirs + " where rank 0 has " + mine +
                  "; every rank of a run needs the same arguments and data";
    for (const char* log : {"rank0.log", "rank1.log"})
      EXPECT_NE(slurp(dir / log).find(message), std::string::npos) << slurp(dir / log);
    EXPECT_FALSE(fs::exists(dir / "run"));  // the directory rank 0 made for it is gone again
  }
}

TEST(DistributedCli, NprocRejectsExplicitRanksAndTinyBatches) {
  TempDir dir;
  write_data_and_config(dir);
  EXPECT_EQ(run_connex({"train", "--nproc", "2", "--rank", "0", "--epochs", "1"}, dir / "a.log"), 2);
  EXPECT_NE(slurp(dir / "a.log").find("don't combine it with --rank or --world-size"), std::string::npos);
  // 200 rows in batches of 3: the last batch has 2 rows, fewer than 3 ranks.
  EXPECT_EQ(run_connex({"train", dir / "net.json", "--data", dir / "data.csv", "--epochs", "1", "--batch-size", "3",
                        "--nproc", "3"},
                       dir / "b.log"),
            1);
  EXPECT_NE(slurp(dir / "b.log").find("a batch of 2 rows cannot be shared by 3 ranks"), std::string::npos)
      << slurp(dir / "b.log");
}

#endif  // CONNEX_CLI
#endif  // CONNEX_WITH_DISTRIBUTED
