// `connex train` as a long run lives: stopped by a signal, resumed exactly,
// refusing an --out it could not write before it starts, and never writing
// non-finite parameters.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "cli_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

// The README-sized regression net with dropout, so that resuming must also restore the dropout generator.
const char* kDropoutNet = R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 6, "depth": 2},
                              "options": {"hidden_activation": "tanh", "dropout_p": 0.2}})";

void expect_same_parameters(const std::string& a, const std::string& b) {
  auto x = load(a), y = load(b);
  for (const auto& p : x->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), *y->named_parameters().find(p.key()))) << p.key();
}

// Epoch and training-loss columns of a metrics.csv.
std::vector<std::pair<double, double>> losses(const std::string& csv) {
  const auto epochs = column(csv, 0), loss = column(csv, 1);
  std::vector<std::pair<double, double>> out;
  for (size_t i = 0; i < epochs.size(); ++i) out.emplace_back(epochs[i], loss[i]);
  return out;
}

// Waits until the run logs its first epoch.
void wait_for_training(const TempDir& dir) {
  for (int i = 0; i < 600 && slurp(dir / "out.txt").find("epoch     1/") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

}  // namespace

TEST(CliResume, ARunResumedAtAnEpochEqualsTheUninterruptedRunBitForBit) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 60);
  spit(dir / "net.json", kDropoutNet);
  const std::string data = " --data d.csv --lr 0.01 ";
  for (const std::string batches : {"", "--batch-size 16 --val-split 0.2 --seed 5"}) {
    SCOPED_TRACE(batches.empty() ? "full batch" : batches);
    ASSERT_EQ(connex_cli("train net.json" + data + batches + " --epochs 6 --out full", dir).code, 0);
    ASSERT_EQ(connex_cli("train net.json" + data + batches + " --epochs 3 --out half", dir).code, 0);
    // The data settings come back from the checkpoint: no --batch-size, --seed or --val-split here.
    auto r = connex_cli("train half/model.ckpt" + data + "--epochs 3 --out resumed", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    expect_same_parameters(dir / "full/model.ckpt", dir / "resumed/model.ckpt");
    // One history, numbered on: epochs 1..6, the same losses.
    EXPECT_EQ(losses(slurp(dir / "resumed/metrics.csv")), losses(slurp(dir / "full/metrics.csv")));
    EXPECT_EQ(nlohmann::json::parse(slurp(dir / "resumed/metrics.json")).size(), 6u);
    EXPECT_EQ(load_checkpoint(dir / "resumed/model.ckpt").training.at("epoch"), 6);
    EXPECT_EQ((r.out + r.err).find("splits the rows anew"), std::string::npos) << r.out + r.err;
    // Another split is said: rows the run trained on may now be validation rows.
    r = connex_cli("train half/model.ckpt" + data + "--val-split 0.5 --epochs 1 --out resplit", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE((r.out + r.err)
                  .find(fmt::format("train: --val-split 0.5 splits the rows anew (the run used seed {} and validation "
                                    "split {:g})",
                                    batches.empty() ? 0 : 5, batches.empty() ? 0.0 : 0.2)),
              std::string::npos)
        << r.out + r.err;
    for (const char* d : {"full", "half", "resumed", "resplit"}) fs::remove_all(dir / d);
  }
}

TEST(CliResume, SigtermStopsAfterAStepWritesTheRunAndResumesExactly) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 64);
  spit(dir / "net.json", kDropoutNet);
  const std::string args = "train net.json --data d.csv --lr 0.01 --batch-size 4 --seed 2";
  const int epochs = 1500;
  const pid_t pid = spawn_connex({"train", "net.json", "--data", "d.csv", "--lr", "0.01", "--batch-size", "4", "--seed",
                                  "2", "--epochs", std::to_string(epochs), "--out", "stopped"},
                                 dir / "out.txt", dir / "err.txt", {}, dir.path);
  wait_for_training(dir);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string err = slurp(dir / "err.txt");
  ASSERT_TRUE(WIFEXITED(status)) << err;
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("connex: train: stopped by Terminated "), std::string::npos) << err;
  EXPECT_NE(err.find("wrote stopped/model.ckpt (resume: connex train stopped --epochs "), std::string::npos) << err;
  EXPECT_NE(err.find(" --out stopped)"), std::string::npos) << err;
  const auto described = connex_cli("inspect stopped/model.ckpt", dir);
  EXPECT_NE(described.out.find("; seed 2, batch size 4, validation split 0 (a resumed run keeps these)"),
            std::string::npos)
      << described.out;
  for (const auto& entry : fs::directory_iterator(dir / "stopped"))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  const auto progress = load_checkpoint(dir / "stopped/model.ckpt").training;
  const int done = progress.at("epoch").get<int>();
  ASSERT_LT(done, epochs) << "the run ended before the signal came";

  // Resumed as the message says (the checkpoint knows its CSV) for the epochs
  // left (a partly done epoch is finished first), it equals the run never stopped.
  auto r = connex_cli("train stopped --epochs " + std::to_string(epochs - done) + " --out resumed", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("] data: " + (fs::path(dir.path) / "d.csv").lexically_normal().string() + " ("),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("] data: "), r.out.rfind("] data: ")) << r.out;  // one line
  EXPECT_NE(r.out.find("; the one the checkpoint was trained on (give --data to use another)\n"), std::string::npos)
      << r.out;
  ASSERT_EQ(connex_cli(args + " --epochs " + std::to_string(epochs) + " --out full", dir).code, 0);
  expect_same_parameters(dir / "full/model.ckpt", dir / "resumed/model.ckpt");
  EXPECT_EQ(losses(slurp(dir / "resumed/metrics.csv")), losses(slurp(dir / "full/metrics.csv")));
  RecordProperty("stopped_at", fmt::format("epoch {} + {} batches", done, progress.at("batch").get<int64_t>()));
}

TEST(CliResume, AnUnwritableOutIsRefusedBeforeTraining) {
  TempDir dir;
  spit(dir / "file.txt", "x");
  fs::create_directories(dir / "taken/model.ckpt");
  const auto start = std::chrono::steady_clock::now();
  for (const auto& [out, message] : std::vector<std::pair<std::string, std::string>>{
           {"file.txt/sub", "--out file.txt/sub: cannot create the directory: Not a directory"},
           {"file.txt",
            "--out file.txt exists and is not a directory; train --out takes the run's directory, where it writes "
            "model.ckpt, metrics.csv, metrics.json and config.json"},
           {"new/model.ckpt",
            "--out new/model.ckpt names a checkpoint file; train --out takes the run's directory, where it writes "
            "model.ckpt, metrics.csv, metrics.json and config.json (give the directory, such as new)"},
           {"taken", "--out taken: model.ckpt is a directory"},
           {"/proc/connex", "--out /proc/connex: cannot create the directory"}}) {
    auto r = connex_cli("train --epochs 100000 --out " + out, dir);
    EXPECT_NE(r.code, 0) << out;
    EXPECT_NE(r.err.find("connex: train: " + message), std::string::npos) << r.err;
    if (out == "file.txt" || out == "new/model.ckpt")  // refused before the network is opened
      EXPECT_EQ(r.out.find("cores:"), std::string::npos) << r.out;
  }
  EXPECT_FALSE(fs::exists(dir / "new"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60))
      << "100,000 epochs ran before the check";
  EXPECT_EQ(slurp(dir / "file.txt"), "x");
  EXPECT_FALSE(fs::exists(dir / "taken/metrics.csv"));
}

TEST(CliResume, NonFiniteParametersStopTheRunAndKeepTheLastFiniteCheckpoint) {
  TempDir dir;
  auto r = connex_cli("train --optimizer sgd --lr 1e6 --epochs 200 --checkpoint-every 1 --out run", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(r.err.find("became non-finite") != std::string::npos ||
              r.err.find("the loss became") != std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  if (fs::exists(dir / "run/model.ckpt"))
    for (const auto& p : load(dir / "run/model.ckpt")->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
}

TEST(CliResume, TwoRunsNeverShareAnOut) {
  TempDir dir;
  const pid_t pid =
      spawn_connex({"train", "--epochs", "100000", "--out", "run"}, dir / "out.txt", dir / "err.txt", {}, dir.path);
  wait_for_training(dir);
  auto r = connex_cli("train --epochs 1 --out run", dir);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("connex: train: --out run: another connex run is writing there; give each run its own --out"),
            std::string::npos)
      << r.err;
  // The first run's files are its own, and whole.
  EXPECT_EQ(load_checkpoint(dir / "run/model.ckpt").training.at("epoch").get<size_t>(),
            nlohmann::json::parse(slurp(dir / "run/metrics.json")).size());
}

// A run directory is a set with model.ckpt as its record (written last). Its
// loader (any command given the directory) finds the files that a write
// stopped before model.ckpt left ahead of it, and says which.
TEST(CliResume, ADirectoryLoaderFindsFilesOutOfStepWithModelCkpt) {
  TempDir dir;
  ASSERT_EQ(connex_cli("train --epochs 3 --out run", dir).code, 0);
  auto r = connex_cli("inspect run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("training: 3 epoch(s) done"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run directory: every file goes with model.ckpt\n"), std::string::npos) << r.out;
  // As a full disk after metrics.csv and config.json but before model.ckpt leaves it.
  ASSERT_EQ(connex_cli("train --epochs 4 --out ahead", dir).code, 0);
  fs::copy_file(dir / "ahead/metrics.csv", dir / "run/metrics.csv", fs::copy_options::overwrite_existing);
  spit(dir / "run/config.json", "{}\n");
  r = connex_cli("inspect run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("run directory: 2 out of step (see the warning)\n"), std::string::npos) << r.out;
  EXPECT_NE(
      r.out.find(
          "] warning: run: metrics.csv (it ends at epoch 4) does not go with model.ckpt (epoch 3): a write stopped "
          "before model.ckpt; model.ckpt is the record, and train --out run rewrites them all\n"),
      std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("] warning: run: config.json does not go with model.ckpt (epoch 3)"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("metrics.json"), std::string::npos) << r.out;
  // Training on from the directory rewrites the whole set at epoch 5.
  r = connex_cli("train run --epochs 2 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  r = connex_cli("inspect run", dir);
  EXPECT_EQ(r.out.find("does not go with"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("training: 5 epoch(s) done"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run directory: every file goes with model.ckpt\n"), std::string::npos) << r.out;
  // A directory that is not a run says so.
  fs::create_directory(dir / "empty");
  r = connex_cli("inspect empty", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(
      r.err,
      "connex: empty: a directory without model.ckpt; give a checkpoint or config file, or a train --out directory\n");
}

// The checkpoint records its CSV: a resumed run without --data finds it, says
// when it changed since, and names it when it is gone.
TEST(CliResume, AResumedRunFindsItsCsvAndNoticesAChange) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 40);
  spit(dir / "net.json", kDropoutNet);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 2 --out run", dir).code, 0);
  auto r = connex_cli("train run --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("changed since"), std::string::npos) << r.out;
  write_regression_csv(dir / "d.csv", 41);
  r = connex_cli("train run --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string csv = (fs::path(dir.path) / "d.csv").lexically_normal().string();
  EXPECT_NE(r.out.find("] warning: " + csv + " changed since the checkpoint was written (it has "), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find(" then): a resumed run differs from an uninterrupted one\n"), std::string::npos) << r.out;
  fs::remove(dir / "d.csv");
  r = connex_cli("train run --epochs 1 --out run", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: train: run was trained on " + csv + ", which is gone; give --data\n");
  EXPECT_EQ(load_checkpoint(dir / "run/model.ckpt").training.at("epoch"), 4);  // unchanged by the refused run
}

// The record holds the CSV's content hash: a touched file is the same data,
// and a rewrite that kept its size and modification time is not. Export and
// predict write no file over that CSV.
TEST(CliResume, TheRecordedCsvIsJudgedByItsBytesAndNotWrittenOver) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 40);
  spit(dir / "net.json", kDropoutNet);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 2 --out run", dir).code, 0);
  const auto record = load_checkpoint(dir / "run/model.ckpt").training.at("data");
  ASSERT_TRUE(record.contains("hash"));
  EXPECT_EQ(record.at("hash").get<std::string>().size(), 16u);
  const auto stamp = fs::last_write_time(dir / "d.csv");
  fs::last_write_time(dir / "d.csv", stamp + std::chrono::hours(1));  // touched
  auto r = connex_cli("train run --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("changed since"), std::string::npos) << r.out;
  // One digit changed in place, the size and time kept.
  std::string text = slurp(dir / "d.csv");
  const size_t digit = text.find_first_of("123456789", text.find('\n') + 1);
  ASSERT_NE(digit, std::string::npos);
  text[digit] = text[digit] == '9' ? '8' : static_cast<char>(text[digit] + 1);
  const auto before = fs::last_write_time(dir / "d.csv");
  spit(dir / "d.csv", text);
  fs::last_write_time(dir / "d.csv", before);
  r = connex_cli("train run --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string csv = (fs::path(dir.path) / "d.csv").lexically_normal().string();
  EXPECT_NE(r.out.find(csv + " changed since the checkpoint was written (its bytes differ from the recorded ones): a "
                             "resumed run differs from an uninterrupted one"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("; the checkpoint's CSV, changed since it was trained on (give --data to use another)\n"),
            std::string::npos)
      << r.out;
  // Named by --data, as a relative path, the recorded CSV is checked too.
  text[digit] = text[digit] == '9' ? '8' : static_cast<char>(text[digit] + 1);
  spit(dir / "d.csv", text);
  r = connex_cli("train run --data d.csv --epochs 1 --out run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(csv + " changed since the checkpoint was written (its bytes differ from the recorded ones)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("; the checkpoint's CSV, changed since it was trained on\n"), std::string::npos) << r.out;
  // A record of an earlier version, without the hash, goes by the time.
  auto ck = load_checkpoint(dir / "run/model.ckpt");
  auto training = ck.training;
  training["data"].erase("hash");
  save(ck.network, dir / "old.ckpt", nullptr, nullptr, training);
  fs::last_write_time(dir / "d.csv", fs::last_write_time(dir / "d.csv") + std::chrono::hours(2));
  r = connex_cli("train old.ckpt --epochs 1 --out later", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(it was modified since)"), std::string::npos) << r.out;
  training["data"]["hash"] = "not hex";
  expect_record_refused(dir, ck.network, training,
                        "bad.ckpt: /training/data must be {\"path\": \"...\", \"bytes\": N, \"modified\": N, "
                        "\"hash\": \"16 hex digits\"}");
  // Export and predict refuse to write over the CSV the run trained on.
  text = slurp(dir / "d.csv");
  r = connex_cli("predict run --data d.csv --out d.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("predict: --out d.csv is the file it reads; give another path"), std::string::npos) << r.err;
  fs::create_directory(dir / "sub");
  fs::create_symlink(fs::path(dir.path) / "d.csv", dir / "sub/link.csv");
  write_regression_csv(dir / "other.csv", 5);
  r = connex_cli("predict run --data other.csv --out sub/link.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: predict: --out sub/link.csv is the CSV run was trained on (" + csv + "); write elsewhere\n");
  r = connex_cli("export run --format json --out d.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: export: --out d.csv is the CSV run was trained on (" + csv + "); write elsewhere\n");
  EXPECT_EQ(slurp(dir / "d.csv"), text);
}

// inspect names the run's CSV and whether it is as the run left it; a
// resume without --out says up front that it keeps nothing; a recorded CSV
// behind a link that leads nowhere is named with the link's target.
TEST(CliResume, TheRunsDataIsShownAndAResumeWithoutOutIsWarnedOfAtTheStart) {
  TempDir dir;
  write_regression_csv(dir / "d.csv", 40);
  spit(dir / "net.json", kDropoutNet);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out run", dir).code, 0);
  const std::string csv = (fs::path(dir.path) / "d.csv").lexically_normal().string();
  auto r = connex_cli("inspect run", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("data: " + csv + " (a resumed run trains on it unless --data names another)\n"),
            std::string::npos)
      << r.out;
  spit(dir / "d.csv", slurp(dir / "d.csv") + "1,2,3\n");
  r = connex_cli("inspect run", dir);
  EXPECT_NE(r.out.find("data: " + csv + " (changed since the run: it has "), std::string::npos) << r.out;
  ASSERT_EQ(connex_cli("train --epochs 1 --out toy", dir).code, 0);
  r = connex_cli("inspect toy", dir);
  EXPECT_NE(r.out.find("data: no CSV recorded (the built-in toy set, or a run of an earlier version; a resumed run "
                       "trains on the toy set unless --data names a CSV)\n"),
            std::string::npos)
      << r.out;

  // The warning comes before the first epoch, and the run's files stay as they were.
  const std::string ckpt = slurp(dir / "run/model.ckpt");
  r = connex_cli("train run --data d.csv --epochs 1", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string all = r.out + r.err;
  const size_t warned = all.find(
      "warning: no --out: this resumed run will not be saved and run stays as it was; give --out run to save it");
  ASSERT_NE(warned, std::string::npos) << all;
  EXPECT_LT(warned, all.find("final training loss")) << all;
  EXPECT_EQ(all.find("no --out", warned + 20), std::string::npos) << all;  // once: not again at the end
  EXPECT_EQ(slurp(dir / "run/model.ckpt"), ckpt);
  fs::copy_file(dir / "run/model.ckpt", dir / "copy.ckpt");
  r = connex_cli("train copy.ckpt --data d.csv --epochs 1", dir);
  EXPECT_NE((r.out + r.err).find("give --out DIR to save it"), std::string::npos) << r.out + r.err;
  r = connex_cli("train run/model.ckpt --data d.csv --epochs 1", dir);  // its directory is the run's
  EXPECT_NE((r.out + r.err).find("give --out run to save it"), std::string::npos) << r.out + r.err;
  // An empty value is refused by name, not filled from the next argument.
  r = connex_cli("train run --epochs= 2 --out run", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "connex: --epochs: got an empty value (see connex train --help)\n");
  // A fresh run without --out is warned of before its first epoch too, once.
  r = connex_cli("train net.json --data d.csv --epochs 1", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string fresh = r.out + r.err;
  EXPECT_EQ(fresh.find("this resumed run"), std::string::npos) << fresh;
  const size_t said = fresh.find("warning: no --out: the trained network will not be saved; give --out DIR to keep it");
  ASSERT_NE(said, std::string::npos) << fresh;
  EXPECT_LT(said, fresh.find("epoch     1/1")) << fresh;
  EXPECT_EQ(fresh.find("no --out", said + 20), std::string::npos) << fresh;

  // Trained through a link whose file then goes.
  write_regression_csv(dir / "d2.csv", 40);
  fs::create_symlink("d2.csv", dir / "link.csv");
  ASSERT_EQ(connex_cli("train net.json --data link.csv --epochs 1 --out linked", dir).code, 0);
  fs::remove(dir / "d2.csv");
  const std::string link = (fs::path(dir.path) / "link.csv").lexically_normal().string();
  const std::string target = (fs::path(dir.path) / "d2.csv").lexically_normal().string();
  r = connex_cli("inspect linked", dir);
  EXPECT_NE(
      r.out.find("data: " + link + ", a symbolic link to " + target + ", which is gone (a resumed run needs --data)"),
      std::string::npos)
      << r.out;
  r = connex_cli("train linked --epochs 1 --out linked", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: train: linked was trained on " + link + ", a symbolic link to " + target +
                       ", which is gone; give --data\n");
  // A CSV that became a directory is named so, not as a changed file.
  fs::remove(dir / "link.csv");
  fs::create_directory(dir / "link.csv");
  r = connex_cli("inspect linked", dir);
  EXPECT_NE(r.out.find("data: " + link + ", which is a directory now (a resumed run needs --data)"), std::string::npos)
      << r.out;
  r = connex_cli("train linked --epochs 1 --out linked", dir);
  EXPECT_EQ(r.err, "connex: train: linked was trained on " + link + ", which is a directory now; give --data\n");
}
