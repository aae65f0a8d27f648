// `connex train --density/--rewire` (sparse and dynamic sparse training) and
// `connex prune --score`: the counts they promise, exact resumption, and the
// refusals, each one line with nothing written.
#include <signal.h>

#include <array>
#include <chrono>
#include <map>
#include <numeric>
#include <regex>
#include <set>
#include <thread>

#include "cli_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

// 2-16-16-1 with tanh: small enough to train in a blink, sparse enough to rewire.
const char* kMlp = R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 16, "depth": 2},
                       "options": {"hidden_activation": "tanh"}})";
const std::vector<int64_t> kSizes{2, 16, 16, 1};

int64_t expected_connections(double density, nn::DensityDistribution distribution) {
  const auto per_pair =
      nn::sparse_layer_connections(kSizes, nn::SparseLayersOptions().density(density).distribution(distribution));
  return std::accumulate(per_pair.begin(), per_pair.end(), int64_t{0});
}

// Every "rewire step ..." line of a run's log: {step, before, dropped, grown, after}.
std::vector<std::array<int64_t, 5>> rewirings(const std::string& log) {
  static const std::regex line(
      R"(rewire step (\d+) \((set|rigl), drop fraction [0-9.e-]+\): (\d+) connections, (\d+) dropped \(([0-9.e-]+) of them\), (\d+) grown, (\d+) after)");
  std::vector<std::array<int64_t, 5>> out;
  for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it)
    out.push_back(
        {std::stoll((*it)[1]), std::stoll((*it)[3]), std::stoll((*it)[4]), std::stoll((*it)[6]), std::stoll((*it)[7])});
  return out;
}

std::set<std::pair<std::string, std::string>> edges_of(const NeuralNetwork& net) {
  std::set<std::pair<std::string, std::string>> edges;
  for (const auto& c : net->weighted_graph().connections) edges.emplace(c.from.str(), c.to.str());
  return edges;
}

void expect_same_model(const std::string& a, const std::string& b) {
  auto x = load(a), y = load(b);
  EXPECT_EQ(edges_of(x), edges_of(y));
  for (const auto& p : x->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), *y->named_parameters().find(p.key()))) << p.key();
}

// `connex <args> --out stopped`, stopped by SIGTERM once its first epoch is
// logged and resumed into resumed/ for the epochs left, then the whole run
// into full/: the two models must agree. `done`: the epochs before the
// signal; `resumed_log`: the resumed run's output.
void stop_resume_and_compare(const TempDir& dir, const std::vector<std::string>& args, int epochs, int& done,
                             std::string& resumed_log) {
  auto with_out = [&](const std::string& out) {
    auto a = args;
    a.insert(a.end(), {"--epochs", std::to_string(epochs), "--out", out});
    return a;
  };
  const pid_t pid = spawn_connex(with_out("stopped"), dir / "out.txt", dir / "err.txt", {}, dir.path);
  for (int i = 0; i < 600 && slurp(dir / "out.txt").find("epoch     1/") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  ASSERT_EQ(wait_for(pid, std::chrono::seconds(60)), 1) << slurp(dir / "err.txt");
  done = load_checkpoint(dir / "stopped/model.ckpt").training.at("epoch").get<int>();
  ASSERT_LT(done, epochs) << "the run ended before the signal came";
  auto r = connex_cli("train stopped --epochs " + std::to_string(epochs - done) + " --out resumed", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  resumed_log = r.out;
  std::string full;
  for (const auto& a : with_out("full")) full += a + " ";
  ASSERT_EQ(connex_cli(full, dir).code, 0);
  expect_same_model(dir / "full/model.ckpt", dir / "resumed/model.ckpt");
}

}  // namespace

TEST(CliSparse, DensityDrawsTheExpectedConnectionsAndTrains) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  auto r = connex_cli("train net.json --data d.csv --density 0.2 --epochs 30 --lr 0.01 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const int64_t er = expected_connections(0.2, nn::DensityDistribution::ErdosRenyi);
  EXPECT_EQ(load(dir / "run/model.ckpt")->num_connections(), er);
  const auto losses = column(slurp(dir / "run/metrics.csv"), 1);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), losses.front());
  // The graph is the generator's, seeded by --seed; a SparseMLP config's density and distribution give way to the
  // flags.
  spit(dir / "sparse.json",
       R"({"graph": {"prebuilt": "SparseMLP", "input_size": 2, "output_size": 1, "width": 16, "depth": 2,
                     "density": 0.9, "distribution": "erk", "seed": 11}})");
  r = connex_cli("train sparse.json --data d.csv --density 0.3 --init-density uniform --seed 4 --epochs 1 --out u",
                 dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto drawn = NeuralNetwork(nn::sparse_layered_spec(
      kSizes, nn::SparseLayersOptions().density(0.3).distribution(nn::DensityDistribution::Uniform).seed(4)));
  EXPECT_EQ(edges_of(load(dir / "u/model.ckpt")), edges_of(drawn));
  EXPECT_EQ(drawn->num_connections(), expected_connections(0.3, nn::DensityDistribution::Uniform));
  // Without --seed, the config's own seed draws the graph.
  r = connex_cli("train sparse.json --data d.csv --density 0.3 --epochs 1 --out own", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("(erk, seed 11"), std::string::npos) << r.out + r.err;
  EXPECT_EQ(edges_of(load(dir / "own/model.ckpt")),
            edges_of(NeuralNetwork(nn::sparse_layered_spec(
                kSizes, nn::SparseLayersOptions().density(0.3).distribution(nn::DensityDistribution::ERK).seed(11)))));
}

TEST(CliSparse, SetAndRiglLogOneLinePerRewiringAndKeepTheConnectionCount) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  const int64_t connections = expected_connections(0.25, nn::DensityDistribution::ErdosRenyi);
  // 64 rows in batches of 8: 8 steps an epoch, 40 in all, a rewiring after every 10th.
  const std::string run = "train net.json --data d.csv --density 0.25 --batch-size 8 --epochs 5 --rewire-every 10 ";
  for (const std::string method : {"set", "rigl"}) {
    SCOPED_TRACE(method);
    auto r = connex_cli(run + "--rewire " + method + " --drop-fraction 0.4 --out " + method, dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const auto lines = rewirings(r.out + r.err);
    // The share reaches 0 at 0.75 of the 40 steps, so step 30 and on keep their connections.
    const std::vector<int64_t> steps{10, 20};
    ASSERT_EQ(lines.size(), steps.size()) << r.out;
    for (size_t i = 0; i < lines.size(); ++i) {
      EXPECT_EQ(lines[i][0], steps[i]);
      EXPECT_EQ(lines[i][1], connections);
      EXPECT_GT(lines[i][2], 0);
      EXPECT_EQ(lines[i][2], lines[i][3]);
      EXPECT_EQ(lines[i][4], connections);
    }
    EXPECT_EQ(load(dir / (method + "/model.ckpt"))->num_connections(), connections);
    const auto record = load_checkpoint(dir / (method + "/model.ckpt")).training.at("rewire");
    EXPECT_EQ(record.at("method"), method);
    EXPECT_EQ(record.at("every"), 10);
    EXPECT_EQ(record.at("end_step"), 30);
    const auto described = connex_cli("inspect " + method, dir).out;
    EXPECT_NE(described.find("rewiring: " + method + " after every 10 steps, drop fraction 0.4, none from step 30"),
              std::string::npos)
        << described;
  }
  EXPECT_NE(edges_of(load(dir / "set/model.ckpt")), edges_of(load(dir / "rigl/model.ckpt")));
}

TEST(CliSparse, AResumedRewiringRunEqualsTheUninterruptedRun) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 60);
  spit(dir / "net.json", kMlp);
  // 48 training rows in batches of 16: 3 steps an epoch, a rewiring after every 2nd step of the run.
  const std::string common =
      "train net.json --data d.csv --density 0.3 --lr 0.01 --batch-size 16 --val-split 0.2 --seed 5 "
      "--rewire-every 2 ";
  // Rewiring ends at step 9 in both runs: half of the full run's 18 steps, all of the first part's 9.
  for (const std::string flags : {"--rewire set", "--rewire rigl"}) {
    SCOPED_TRACE(flags);
    ASSERT_EQ(connex_cli(common + flags + " --rewire-end 0.5 --epochs 6 --out full", dir).code, 0);
    ASSERT_EQ(connex_cli(common + flags + " --rewire-end 1 --epochs 3 --out half", dir).code, 0);
    // The rewiring comes back from the checkpoint's record (no --rewire flags here), with its end.
    auto r = connex_cli("train half --epochs 3 --out half", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(rewirings(r.out).size(), 0u) << r.out;
    EXPECT_EQ(load_checkpoint(dir / "half/model.ckpt").training.at("rewire").at("end_step"), 9);
    expect_same_model(dir / "full/model.ckpt", dir / "half/model.ckpt");
    EXPECT_EQ(column(slurp(dir / "half/metrics.csv"), 1), column(slurp(dir / "full/metrics.csv"), 1));
    for (const char* d : {"full", "half"}) fs::remove_all(dir / d);
  }
  // A flag overrides the record: --rewire none trains on without rewiring.
  ASSERT_EQ(connex_cli(common + "--rewire set --epochs 1 --out run", dir).code, 0);
  auto r = connex_cli("train run --epochs 2 --rewire none --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(rewirings(r.out).empty()) << r.out;
  EXPECT_FALSE(load_checkpoint(dir / "run/model.ckpt").training.contains("rewire"));
}

// RigL's schedule is fixed in steps when the run starts: a run stopped by a
// signal and resumed as its message says rewires on exactly as the run never stopped.
TEST(CliSparse, ARiglRunStoppedBySigtermResumesExactly) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  const int epochs = 400;  // 16 steps an epoch; RigL rewires until step 4,800 (0.75 of the run)
  int done = -1;
  std::string log;
  stop_resume_and_compare(dir,
                          {"train", "net.json", "--data", "d.csv", "--density", "0.3", "--lr", "0.01", "--seed", "2",
                           "--batch-size", "4", "--rewire", "rigl", "--rewire-every", "50"},
                          epochs, done, log);
  if (HasFatalFailure()) return;
  if (done < 280) EXPECT_FALSE(rewirings(log).empty()) << log;
  EXPECT_EQ(load_checkpoint(dir / "resumed/model.ckpt").training.at("rewire").at("end_step"), 4800);
  RecordProperty("stopped_at_epoch", done);
}

// Found by a new user: a prune scheduled with --prune-at-epoch was lost when
// the stopped run was resumed with the command its message gives. The run's
// record keeps the schedule until it has run.
TEST(CliSparse, AStoppedRunResumedPrunesWhereTheUninterruptedOneDoes) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  const int epochs = 1200;  // a plain epoch takes a millisecond or two: the signal must come first
  int done = -1;
  std::string log;
  stop_resume_and_compare(dir,
                          {"train",
                           "net.json",
                           "--data",
                           "d.csv",
                           "--density",
                           "0.3",
                           "--lr",
                           "0.01",
                           "--seed",
                           "2",
                           "--batch-size",
                           "4",
                           "--prune-at-epoch",
                           "1199",
                           "--prune-fraction",
                           "0.4",
                           "--prune-scope",
                           "neuron",
                           "--prune-keep-min",
                           "1"},
                          epochs, done, log);
  if (HasFatalFailure()) return;
  const auto stopped = load_checkpoint(dir / "stopped/model.ckpt").training;
  if (done < 1199) {
    EXPECT_EQ(stopped.at("prune"),
              (nlohmann::json{{"at_epoch", 1199}, {"fraction", 0.4}, {"scope", "neuron"}, {"keep_min", 1}}));
    EXPECT_NE(log.find("prune: 0.4 of the connections (neuron scope, keep-min 1) after epoch 1199, from the run's "
                       "record"),
              std::string::npos)
        << log;
  }
  if (done < 1199)
    EXPECT_LT(load(dir / "resumed/model.ckpt")->num_connections(), load(dir / "stopped/model.ckpt")->num_connections());
  // Once it has run, the record drops it.
  EXPECT_FALSE(load_checkpoint(dir / "resumed/model.ckpt").training.contains("prune"));
  RecordProperty("stopped_at_epoch", done);
}

// A recorded schedule past a resume's epochs stays scheduled (inspect shows
// it); a malformed one is refused by name.
TEST(CliSparse, ARecordedPruneStaysScheduledAndABadOneIsRefused) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 60);
  spit(dir / "net.json", kMlp);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --density 0.3 --batch-size 16 --epochs 1 --out run", dir).code, 0);
  const auto ck = load_checkpoint(dir / "run/model.ckpt");
  auto training = ck.training;
  training["prune"] = {{"at_epoch", 5}, {"fraction", 0.5}, {"scope", "level"}, {"keep_min", 2}};
  save(ck.network, dir / "pending.ckpt", nullptr, nullptr, training);
  auto r = connex_cli("inspect pending.ckpt", dir);
  EXPECT_NE(r.out.find("prune: 0.5 of the connections (level scope, keep-min 2) after epoch 5 (a resumed run keeps it; "
                       "--prune-at-epoch 0 cancels it, --prune-at-epoch N moves it)"),
            std::string::npos)
      << r.out;
  r = connex_cli("train pending.ckpt --epochs 2 --out later", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("prune: the run's prune at epoch 5 lies past this run's last epoch 3; it stays scheduled"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(load_checkpoint(dir / "later/model.ckpt").training.at("prune").at("at_epoch"), 5);
  EXPECT_LT(r.out.find("prune: the run's prune"), r.out.find("] cores: ")) << r.out;  // the set-up's lines first
  // A run refused after its set-up has logged (the prune line) writes only its refusal.
  spit(dir / "one_column.csv", "x\n1\n2\n");
  r = connex_cli("train pending.ckpt --epochs 2 --data one_column.csv --out refused", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = connex_cli("prune pending.ckpt --fraction 0.5 --data one_column.csv --out p.ckpt", dir);  // prune's too
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // --prune-at-epoch 0 cancels it, and says so.
  r = connex_cli("train later --epochs 3 --prune-at-epoch 0 --out cancelled", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(
      (r.out + r.err).find("prune: --prune-at-epoch 0 cancels the run's recorded prune: 0.5 of the connections ("),
      std::string::npos)
      << r.out + r.err;
  const auto cancelled = load_checkpoint(dir / "cancelled/model.ckpt");
  EXPECT_FALSE(cancelled.training.contains("prune"));
  EXPECT_EQ(cancelled.network->num_connections(), ck.network->num_connections());  // epoch 5 passed unpruned
  // --prune-at-epoch alone moves the recorded prune: its fraction stays, and its scope and floor unless given.
  // At the run's last epoch, the log says no epoch trains the pruned network.
  r = connex_cli("train pending.ckpt --epochs 2 --prune-at-epoch 3 --prune-keep-min 1 --out moved", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* said : {"prune: 0.5 of the connections (level scope, keep-min 1) after epoch 3: the run's recorded "
                           "prune, moved from epoch 5, changed by --prune-keep-min",
                           "epoch 3: pruned ", "(|w| smallest first, level scope, keep-min 1)",
                           "epoch 3: this run's last, so no epoch trains the pruned network (the epochs' figures and "
                           "the final validation figure are from before the prune, the final training loss from after "
                           "it); a resumed run with --epochs trains it on"})
    EXPECT_NE((r.out + r.err).find(said), std::string::npos) << said << "\n" << r.out + r.err;
  // A new prune at the recorded epoch replaces it, saying so: its scope and floor are not inherited.
  r = connex_cli("train pending.ckpt --epochs 4 --prune-at-epoch 5 --prune-fraction 0.5 --out replaced", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find("prune: --prune-at-epoch 5 replaces the run's recorded prune: 0.5 of the connections (level "
                      "scope, keep-min 2) after epoch 5"),
            std::string::npos)
      << r.out + r.err;
  // Moved past this run's epochs, it stays scheduled for a later one.
  r = connex_cli("train pending.ckpt --epochs 1 --prune-at-epoch 9 --out postponed", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* said : {"the run's recorded prune, moved from epoch 5",
                           "prune: it lies past this run's last epoch 2; it stays scheduled"})
    EXPECT_NE((r.out + r.err).find(said), std::string::npos) << said << "\n" << r.out + r.err;
  EXPECT_EQ(load_checkpoint(dir / "postponed/model.ckpt").training.at("prune").at("at_epoch"), 9);
  const auto moved = load_checkpoint(dir / "moved/model.ckpt");
  EXPECT_FALSE(moved.training.contains("prune"));
  EXPECT_LT(moved.network->num_connections(), ck.network->num_connections());
  // --prune-scope or --prune-keep-min alone change a recorded prune to come; without one they need
  // --prune-at-epoch. A run of no epochs has none for a prune to follow.
  r = connex_cli("train pending.ckpt --epochs 1 --prune-scope neuron --out rescoped", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find("prune: 0.5 of the connections (neuron scope, keep-min 2) after epoch 5: the run's recorded "
                      "prune, changed by --prune-scope"),
            std::string::npos)
      << r.out + r.err;
  EXPECT_EQ(load_checkpoint(dir / "rescoped/model.ckpt").training.at("prune").at("scope"), "neuron");
  // So does --prune-fraction alone, and several are named together.
  r = connex_cli("train pending.ckpt --epochs 1 --prune-fraction 0.25 --prune-keep-min 1 --out refraction", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find("prune: 0.25 of the connections (level scope, keep-min 1) after epoch 5: the run's recorded "
                      "prune, changed by --prune-fraction and --prune-keep-min"),
            std::string::npos)
      << r.out + r.err;
  EXPECT_EQ(load_checkpoint(dir / "refraction/model.ckpt").training.at("prune").at("fraction"), 0.25);
  r = connex_cli("train cancelled --epochs 1 --prune-fraction 0.25 --out again", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: train: --prune-fraction needs --prune-at-epoch (the epoch after which to prune, >= 1); the "
            "checkpoint's run has no prune to come that it could change\n");
  EXPECT_EQ(r.out, "");  // refused before any log line
  r = connex_cli("train cancelled --epochs 1 --prune-keep-min 1 --out again", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: train: --prune-keep-min needs --prune-at-epoch (the epoch after which to prune, >= 1); the "
            "checkpoint's run has no prune to come that it could change\n");
  // --prune-at-epoch 0 with no prune to come cancels nothing, and says so.
  r = connex_cli("train cancelled --epochs 1 --prune-at-epoch 0 --out none", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("prune: --prune-at-epoch 0: no prune (the run had none to come)"), std::string::npos) << r.out;
  // A new prune past this run's epochs is refused; with a recorded prune the
  // message says what may lie past the run.
  r = connex_cli("train pending.ckpt --epochs 1 --prune-at-epoch 9 --prune-fraction 0.25 --out again", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: train: --prune-at-epoch 9 is outside this run's epochs 2 to 2; --epochs 8 reaches it (without "
            "--prune-fraction it would move the run's recorded prune, which may lie past the run, and "
            "--prune-fraction alone changes that prune's share)\n");
  r = connex_cli("train pending.ckpt --epochs 0 --prune-at-epoch 2 --out again", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: train: --prune-at-epoch 2 has no epoch to follow: this run trains none (--epochs 0)\n");
  // With no prune to come, --prune-fraction is needed.
  r = connex_cli("train cancelled --epochs 2 --prune-at-epoch 7 --out again", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: train: --prune-at-epoch 7 needs --prune-fraction (the share to prune, in (0, 1]); the "
            "checkpoint's run has no prune to come that it could move\n");
  EXPECT_TRUE(empty_or_missing(dir / "again"));
  // A prune epoch the checkpoint has passed is refused, saying so.
  r = connex_cli("train later --epochs 1 --prune-at-epoch 2 --prune-fraction 0.5 --out past", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("train: --prune-at-epoch 2 is outside this run's epochs 4 to 4 (the checkpoint has trained 3 "
                       "epochs)"),
            std::string::npos)
      << r.err;
  // A record's scope is read in either case, as the library reads it.
  training["prune"]["scope"] = "Level";
  save(ck.network, dir / "upper.ckpt", nullptr, nullptr, training);
  r = connex_cli("inspect upper.ckpt", dir);
  EXPECT_NE(r.out.find("prune: 0.5 of the connections (level scope, keep-min 2) after epoch 5"), std::string::npos)
      << r.out;
  training["prune"]["scope"] = "everywhere";
  expect_record_refused(dir, ck.network, training,
                        "bad.ckpt: /training/prune must be {\"at_epoch\": N in [1, 2147483647], \"fraction\": in "
                        "(0, 1], \"scope\": \"global\", \"neuron\" or \"level\", \"keep_min\": N >= 0}, got");
}

// A resume with another --rewire method keeps the recorded end (only
// --rewire-end moves it); a run of no steps fixes none, so the run that
// continues it fixes its own.
TEST(CliSparse, TheRecordedRewiringEndStaysAcrossAMethodChange) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 60);
  spit(dir / "net.json", kMlp);
  // 48 training rows in batches of 16: 3 steps an epoch; 2 epochs end rewiring at step round(0.75 * 6) = 5 (4.5 up).
  const std::string common = "train net.json --data d.csv --density 0.3 --batch-size 16 --val-split 0.2 --seed 5 ";
  ASSERT_EQ(connex_cli(common + "--rewire set --rewire-every 2 --epochs 2 --out run", dir).code, 0);
  const auto end = load_checkpoint(dir / "run/model.ckpt").training.at("rewire").at("end_step").get<int64_t>();
  auto r = connex_cli("train run --epochs 2 --rewire rigl --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(fmt::format("rewiring: rigl ended at step {}, before this run's steps 7 to 12", end)),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(rewirings(r.out).empty()) << r.out;
  EXPECT_EQ(load_checkpoint(dir / "run/model.ckpt").training.at("rewire").at("end_step"), end);

  ASSERT_EQ(connex_cli(common + "--rewire set --rewire-every 2 --epochs 0 --out zero", dir).code, 0);
  EXPECT_EQ(load_checkpoint(dir / "zero/model.ckpt").training.at("rewire").at("end_step"), 0);
  r = connex_cli("train zero --epochs 4 --out zero", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load_checkpoint(dir / "zero/model.ckpt").training.at("rewire").at("end_step"), 9);  // 0.75 of 12 steps
  EXPECT_FALSE(rewirings(r.out).empty()) << r.out;
  // Also where the run of no steps continues one that trained: 6 steps, then none, then 12 more.
  ASSERT_EQ(connex_cli(common + "--epochs 2 --out plain", dir).code, 0);
  r = connex_cli("train plain --rewire set --rewire-every 2 --epochs 0 --out plain", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("this run takes no steps; the run that continues it fixes the end and rewires"),
            std::string::npos)
      << r.out << r.err;
  r = connex_cli("train plain --epochs 4 --out plain", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load_checkpoint(dir / "plain/model.ckpt").training.at("rewire").at("end_step"), 14);  // 0.75 of 18
  EXPECT_EQ(rewirings(r.out).size(), 3u) << r.out;  // after steps 8, 10 and 12
}

// A random DAG's neurons move level as it rewires: the run's record keeps
// the Rewirer's groups, so a run stopped and resumed still rewires as the
// uninterrupted one (a Rewirer made from the resumed network's levels would not).
TEST(CliSparse, AStoppedDagRunResumesWithItsGroups) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  save_config(
      NeuralNetwork(
          nn::random_dag_spec(nn::RandomDagOptions().inputs(2).hidden(40).outputs(1).connections(150).depth(6).seed(2)),
          NeuralNetworkOptions().hidden_activation("tanh")),
      dir / "dag.json");
  const int epochs = 4000;  // 16 steps an epoch, a few seconds; SET rewires until step 48,000 (0.75 of the run)
  int done = -1;
  std::string log;
  stop_resume_and_compare(dir,
                          {"train", "dag.json", "--data", "d.csv", "--lr", "0.01", "--seed", "2", "--batch-size", "4",
                           "--rewire", "set", "--rewire-every", "40"},
                          epochs, done, log);
  if (HasFatalFailure()) return;
  if (done < 2900) EXPECT_FALSE(rewirings(log).empty()) << log;
  // The run did move neurons: its groups are not the stopped network's levels.
  const auto stopped = load_checkpoint(dir / "stopped/model.ckpt");
  const auto groups = RewireGroups::from_json(stopped.training.at("rewire").at("groups"));
  EXPECT_NE(groups.members, Rewirer(stopped.network).groups().members);
  RecordProperty("stopped_at_epoch", done);
}

// Groups that no longer fit the network (it was edited since) are made anew, with a warning.
TEST(CliSparse, SavedGroupsThatNoLongerFitAreMadeAnew) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 60);
  spit(dir / "net.json", kMlp);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --density 0.3 --batch-size 16 --rewire set --rewire-every 2 "
                       "--epochs 2 --out run",
                       dir)
                .code,
            0);
  // Edited by a program that keeps the run's record (connex edit starts a new one).
  const auto ck = load_checkpoint(dir / "run/model.ckpt");
  const auto edited = edit(ck.network).add_hidden_neurons({500}).add_connections({{0, 500}, {500, 34}}).build();
  save(edited.network, dir / "edited.ckpt", nullptr, nullptr, ck.training);
  auto r = connex_cli("train edited.ckpt --data d.csv --epochs 2 --rewire-end 1 --out run2", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("rewiring: the run's saved groups do not fit the network (Rewirer(): neuron 500 of the "
                       "network is in no group); made anew from its levels"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(rewirings(r.out).empty()) << r.out;
}

TEST(CliSparse, RefusalsAreOneLineAndWriteNothing) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 32);
  spit(dir / "net.json", kMlp);
  spit(dir / "dense.json",
       R"({"graph": {"prebuilt": "DenseMLP", "input_size": 2, "output_size": 1, "width": 4, "depth": 2}})");
  spit(dir / "explicit.json", R"({"graph": {"edges": [[0, 1], [1, 2]], "inputs": [0], "outputs": [2]}})");
  spit(dir / "norm.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 8, "depth": 2},
           "options": {"use_topo_norm": true}})");
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out ck", dir).code, 0);
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --density 0.5 --rewire set --rewire-every 1 --epochs 2 --out ck2", dir)
          .code,
      0);
  const std::string needs = "train: --density needs a config with \"prebuilt\": \"MLP\" or \"SparseMLP\", got ";
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"explicit.json --density 0.5", needs + "an explicit graph"},
           {"dense.json --density 0.5", needs + "\"prebuilt\": \"DenseMLP\""},
           {"--density 0.5", needs + "the built-in README network (an explicit graph)"},
           {"ck --density 0.5", "train: --density draws the network of a new run from a config; ck is a checkpoint"},
           {"net.json --init-density erk", "train: --init-density needs --density"},
           {"net.json --rewire-every 5", "train: --rewire-every needs --rewire set or rigl"},
           {"net.json --drop-fraction 0.2", "train: --drop-fraction needs --rewire set or rigl"},
           {"net.json --rewire none --rewire-end 0.5", "train: --rewire-end needs --rewire set or rigl"},
           {"net.json --rewire set --drop-fraction 1", "must be a number in [0, 1), got \"1\""},
           {"net.json --density 0", "must be a number in (0, 1], got \"0\""},
           {"net.json --density 0.5 --drop-fraction 0.2", "train: --drop-fraction needs --rewire set or rigl"},
           {"net.json --density 0.5 --rewire none --rewire-every 5",
            "train: --rewire-every needs --rewire set or rigl"},
           {"net.json --prune-at-epoch 0 --prune-fraction 0.5",
            "train: --prune-fraction needs --prune-at-epoch (the epoch after which to prune, >= 1); --prune-at-epoch 0 "
            "schedules none"},
           {"net.json --prune-at-epoch -1 --prune-fraction 0.5",
            "--prune-at-epoch: must be an integer in [0, 2147483647], got \"-1\""},
           {"net.json --prune-at-epoch 1 --prune-fraction 0",
            "--prune-fraction: must be a number in (0, 1], got \"0\""},
           {"net.json --prune-fraction 0.5",
            "train: --prune-fraction needs --prune-at-epoch (the epoch after which to prune, >= 1)"},
           {"net.json --prune-at-epoch 1",
            "train: --prune-at-epoch 1 needs --prune-fraction (the share to prune, in (0, 1])"},
           {"net.json --prune-scope neuron",
            "train: --prune-scope needs --prune-at-epoch (the epoch after which to prune, >= 1)"},
           {"net.json --prune-keep-min 2",
            "train: --prune-keep-min needs --prune-at-epoch (the epoch after which to prune, >= 1)"},
           {"net.json --prune-at-epoch 1 --prune-fraction 0.5 --prune-scope layer",
            "--prune-scope: must be one of global, neuron or level, got \"layer\""},
           {"net.json --prune-at-epoch 1 --prune-fraction 0.5 --prune-scope \"\"",
            "--prune-scope: must be one of global, neuron or level, got \"\""},
           {"net.json --rewire set --nproc 2", "train: --rewire needs a single process, got 2 ranks"},
           {"net.json --rewire set --world-size 2 --rank 0", "train: --rewire needs a single process, got 2 ranks"},
           {"ck2 --rewire-end 1 --world-size 2 --rank 0",
            "train: the checkpoint's run rewires (set, from its record) and rewiring needs a single process, got 2 "
            "ranks; add --rewire none to train it data parallel"},
           {"norm.json --rewire rigl",
            "train: --rewire rigl needs a network without per-level techniques but adaptive activations (they "
            "change what a connection's gradient is), got "}}) {
    SCOPED_TRACE(args);
    auto r = connex_cli("train " + args + " --data d.csv --epochs 1 --out run", dir);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(empty_or_missing(dir / "run")) << args;
  }
  // SET has no such limit.
  auto r = connex_cli("train norm.json --data d.csv --rewire set --rewire-every 1 --epochs 1 --out run", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  // A dense network has nowhere to grow: said once, up front.
  EXPECT_NE((r.out + r.err)
                .find("train: --rewire set: every level already reads every neuron of the levels that feed it, so "
                      "a rewiring moves nothing; start sparse with a --density below 1"),
            std::string::npos)
      << r.err;
  // A schedule that cannot rewire in this run is said up front: 3 full-batch steps, every 100, none from step 2.
  r = connex_cli("train net.json --data d.csv --density 0.5 --rewire rigl --epochs 3", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find("train: --rewire rigl will not rewire in this run (steps 1 to 3; every 100 steps, "
                      "drop fraction 0.3, none from step 2): lower --rewire-every, train in mini-batches "
                      "with --batch-size, or give --rewire-end"),
            std::string::npos)
      << r.out + r.err;
  // A drop fraction of 0 is named as the reason.
  r = connex_cli("train net.json --data d.csv --density 0.5 --rewire set --drop-fraction 0 --batch-size 4 --epochs 1",
                 dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find("drop fraction 0, none from step 6): a drop fraction of 0 moves nothing; give --drop-fraction "
                      "above 0"),
            std::string::npos)
      << r.out + r.err;
  // A loss gone non-finite before a rewiring is named as the epoch's check
  // names it (RigL's trace check said "NaN or infinity (a NaN loss?)").
  r = connex_cli(
      "train net.json --data d.csv --density 0.5 --rewire rigl --rewire-every 1 --batch-size 4 --optimizer sgd --lr "
      "1000000 --epochs 3",
      dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(", where a rewiring was due; lower --lr"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // A pruning that leaves an output without inputs says so.
  r = connex_cli("prune ck --fraction 1", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("prune: 1 of 1 outputs ("), std::string::npos) << r.out + r.err;
  // prune --score activation|gradient measures on data.
  // (on --data, or the CSV a trained checkpoint records; a config has none).
  r = connex_cli("prune net.json --score gradient --fraction 0.5 --out p.ckpt", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("prune: --score gradient needs --data"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "p.ckpt"));
  r = connex_cli("prune ck --score gradient --fraction 0.5 --out p.ckpt", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("scores: gradient"), std::string::npos) << r.out;
}

TEST(CliSparse, PruneScoresByActivationOrGradient) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 80);
  spit(dir / "net.json", kMlp);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 40 --lr 0.01 --val-split 0.25 --out run", dir).code, 0);
  const int64_t all = load(dir / "run/model.ckpt")->num_connections();
  std::map<std::string, std::set<std::pair<std::string, std::string>>> kept;
  std::string removed_line;
  for (const std::string score : {"magnitude", "activation", "gradient"}) {
    SCOPED_TRACE(score);
    auto r = connex_cli("prune run --data d.csv --fraction 0.4 --score " + score + " --out " + score + ".ckpt", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const size_t at = r.out.find("connections: ");
    ASSERT_NE(at, std::string::npos) << r.out;
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    if (removed_line.empty()) removed_line = line;
    EXPECT_EQ(line, removed_line);  // the same number, whatever the score
    // Scored on the training rows, measured on the validation rows they did not see.
    if (score != "magnitude") EXPECT_NE(r.out.find("scores: " + score + " ("), std::string::npos) << r.out;
    if (score != "magnitude") EXPECT_NE(r.out.find(" training rows\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("loss: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("(20 validation rows)"), std::string::npos) << r.out;
    const auto pruned = load(dir / (score + ".ckpt"));
    EXPECT_EQ(pruned->num_connections(), all - std::llround(0.4 * static_cast<double>(all)));
    kept[score] = edges_of(pruned);
  }
  EXPECT_NE(kept["activation"], kept["magnitude"]);
  EXPECT_NE(kept["gradient"], kept["magnitude"]);
}

// A checkpoint whose rewiring record is broken (an unknown method, a method
// that is not a string, a share out of range) is refused in one line naming
// the file and the record, and the run writes nothing.
TEST(CliSparse, ABrokenRewiringRecordIsRefused) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  ASSERT_EQ(
      connex_cli("train net.json --data d.csv --density 0.25 --batch-size 8 --epochs 1 --rewire set --rewire-every "
                 "4 --out run",
                 dir)
          .code,
      0);
  const std::string good = slurp(dir / "run/model.ckpt");
  const std::vector<std::function<void(nlohmann::json&)>> breaks{
      [](nlohmann::json& r) { r["method"] = "random"; }, [](nlohmann::json& r) { r["method"] = 3; },
      [](nlohmann::json& r) { r["drop_fraction"] = 1.5; }, [](nlohmann::json& r) { r.erase("every"); }};
  for (size_t k = 0; k < breaks.size(); ++k) {
    SCOPED_TRACE(k);
    spit(dir / "bad.ckpt",
         reseal_checkpoint(good, [&](nlohmann::json& header, uint32_t&) { breaks[k](header["training"]["rewire"]); }));
    auto r = connex_cli("train bad.ckpt --data d.csv --epochs 1 --out again", dir);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("bad.ckpt: /training/rewire must be {\"method\": \"set\" or \"rigl\""), std::string::npos)
        << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir / "again"));
  }
}

// train --prune-at-epoch takes prune's scope and floor, and says when its
// pruning has left an output constant (a global |w| cut took every connection
// into the outputs of a new user's sparse network, silently).
TEST(CliSparse, PruningWhileTrainingKeepsAFloorOrSaysItCutAnOutput) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 32);
  spit(dir / "net.json", kMlp);
  const std::string run = "train net.json --data d.csv --epochs 2 --prune-at-epoch 1 --prune-fraction 0.99 ";
  auto r = connex_cli(run + "--out cut", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("train: 1 of 1 outputs ("), std::string::npos) << r.out + r.err;
  EXPECT_NE((r.out + r.err).find("--prune-keep-min 1"), std::string::npos) << r.out + r.err;
  // With a floor of one incoming connection, every neuron keeps an input.
  r = connex_cli(run + "--prune-keep-min 1 --out kept", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ((r.out + r.err).find("no longer depend on any input"), std::string::npos) << r.out + r.err;
  const NeuralNetwork kept = load(dir / "kept/model.ckpt");
  const Topology& t = kept->topology();
  for (int64_t d = t.num_inputs(); d < t.num_neurons(); ++d) EXPECT_GE(t.in_offsets()[d + 1] - t.in_offsets()[d], 1);
  // The 1 % the fraction spares (3 connections) may add to the 33 the floor keeps.
  EXPECT_GE(kept->num_connections(), 16 + 16 + 1);
  EXPECT_LE(kept->num_connections(), 16 + 16 + 1 + 3);
  // Per neuron: each keeps its strongest 1 % (at least one, by the floor).
  r = connex_cli(run + "--prune-scope neuron --prune-keep-min 1 --out scoped", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load(dir / "scoped/model.ckpt")->num_connections(), 16 + 16 + 1);
}

// prune --keep-min above what a fraction leaves says what it held back.
TEST(CliSparse, AFloorThatKeepsEverythingIsSaid) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 32);
  spit(dir / "net.json", kMlp);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out ck", dir).code, 0);
  const std::string before = slurp(dir / "ck/model.ckpt");
  auto r = connex_cli("prune ck --fraction 0.5 --keep-min 1000 --out p.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const int64_t half = (2 * 16 + 16 * 16 + 16) / 2;
  EXPECT_NE(
      (r.out + r.err)
          .find(fmt::format("prune: --keep-min 1000 kept {} of the {} connections that --fraction chose: nothing is "
                            "removed",
                            half, half)),
      std::string::npos)
      << r.out + r.err;
  EXPECT_EQ(slurp(dir / "ck/model.ckpt"), before);
  // train's pruning says the same, naming the prune's settings (they may be the run's record's).
  r = connex_cli("train ck --epochs 2 --prune-at-epoch 2 --prune-fraction 0.5 --prune-keep-min 1000 --out t", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err)
                .find(fmt::format("train: epoch 2: the prune's keep-min 1000 kept {} of the {} connections that "
                                  "the prune's fraction chose: nothing is removed",
                                  half, half)),
            std::string::npos)
      << r.out + r.err;
  // A scope applies to a fraction only; without --out, nothing is saved, and it is said.
  r = connex_cli("prune ck --threshold 0.01 --scope neuron --out s.ckpt", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("prune: --scope neuron applies to --fraction (each group's weakest share); --threshold "
                       "removes every connection below it whatever the scope"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "s.ckpt"));
  r = connex_cli("prune ck --threshold 0.01 --scope global --out s.ckpt", dir);  // named, even as the default
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("prune: --scope global applies to --fraction"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "s.ckpt"));
  r = connex_cli("prune ck --fraction 0.5 --batch-size 4 --out s.ckpt", dir);
  EXPECT_NE(r.err.find("prune: --batch-size 4 applies to training on; give --epochs N"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "s.ckpt"));
  // So are a seed and a split that no data uses.
  r = connex_cli("prune ck --fraction 0.5 --seed 5 --out s.ckpt", dir);
  EXPECT_EQ(r.err,
            "connex: prune: --seed 5 applies to the data's split; give --data FILE.csv, --epochs N or --score "
            "activation|gradient\n");
  r = connex_cli("prune ck --fraction 0.5 --val-split 0.2 --out s.ckpt", dir);
  EXPECT_EQ(r.err,
            "connex: prune: --val-split 0.2 applies to the data's split; give --data FILE.csv, --epochs N or --score "
            "activation|gradient\n");
  r = connex_cli("prune ck --fraction 0.5 --target y --out s.ckpt", dir);
  EXPECT_EQ(
      r.err,
      "connex: prune: --target applies to the data; give --data FILE.csv, --epochs N or --score activation|gradient\n");
  r = connex_cli("prune ck --fraction 0.5 --device cuda --out s.ckpt", dir);  // prune's own training runs on the CPU
  EXPECT_EQ(r.err,
            "connex: prune: --device cuda: prune trains on on the CPU; train the pruned checkpoint with connex train "
            "--device cuda\n");
  EXPECT_FALSE(std::filesystem::exists(dir / "s.ckpt"));
  r = connex_cli("prune ck --fraction 0.5", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("] warning: no --out: the pruned network was not saved"), std::string::npos) << r.out;
  EXPECT_EQ(slurp(dir / "ck/model.ckpt"), before);
}

// A fraction per neuron is rounded neuron by neuron (halves up): with fan-ins
// of 5 it takes 3 of each, 60 %, and says so beside what the fraction of all
// the candidates would take (round(0.5 · 35) = 18); per level the shares
// round to within one, and nothing is said.
TEST(CliSparse, RoundedSharesAreSaid) {
  TempDir dir;
  spit(dir / "net.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 5, "output_size": 2, "width": 5, "depth": 1}})");
  auto r = connex_cli("prune net.json --fraction 0.5 --scope Neuron", dir);  // a name in either case
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 35 -> 14 (removed 21)"), std::string::npos) << r.out;
  EXPECT_NE((r.out + r.err)
                .find("prune: --scope neuron rounds --fraction 0.5 to whole connections neuron by neuron (halves up): "
                      "21 chosen, where 0.5 of all the candidates would be 18"),
            std::string::npos)
      << r.out + r.err;
  r = connex_cli("prune net.json --fraction 0.5 --scope level", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: 35 -> 17 (removed 18)"), std::string::npos) << r.out;
  EXPECT_EQ((r.out + r.err).find("rounds"), std::string::npos) << r.out + r.err;
}

// The distribution names a config takes, the flag takes too (in either case); the cores line
// is said once when rewiring keeps the network on the same path.
TEST(CliSparse, InitDensityTakesTheLibrarysNamesAndCoresAreSaidOnce) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kMlp);
  auto r = connex_cli(
      "train net.json --data d.csv --density 0.25 --init-density erdos_renyi --rewire set --rewire-every 4 "
      "--batch-size 8 --epochs 2",
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string log = r.out + r.err;
  EXPECT_EQ(rewirings(log).size(), 2u) << log;
  size_t said = 0;
  for (size_t at = log.find("] cores: "); at != std::string::npos; at = log.find("] cores: ", at + 1)) ++said;
  EXPECT_EQ(said, 1u) << log;
  r = connex_cli("train net.json --data d.csv --density 0.25 --init-density erdos --epochs 1", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--init-density: must be one of uniform, er, erdos_renyi or erk, got \"erdos\""),
            std::string::npos)
      << r.err;
  // In either case, as the other flags that take a name (--device too).
  r = connex_cli("train net.json --data d.csv --density 0.25 --init-density ERK --device CPU --epochs 1", dir);
  ASSERT_EQ(r.code, 0) << r.err;
}
