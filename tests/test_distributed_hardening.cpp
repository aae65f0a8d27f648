// `connex train --nproc N` and the rendezvous under stress: signals to the
// launcher, what the rendezvous exposes, and what the user reads when it fails.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "net_util.h"
#include "test_util.h"

#if defined(CONNEX_WITH_DISTRIBUTED)

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A TCP port held by a listening socket on every interface while it lives.
struct BusyPort {
  BusyPort() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof(a);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd, 1), 0);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~BusyPort() { close(fd); }
  int fd = -1, port = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// ------------------------------------------------ joining: waits and messages

TEST(DistributedHardening, AJoinWaitsTheTimeoutOnceAndNamesWhoNeverCame) {
  TempDir dir;
  using distributed::Group;
  using distributed::GroupOptions;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW_MSG(Group(GroupOptions().rank(0).world_size(3).file_store(dir / "store").timeout(1500ms)),
                   "rank 0 of 3: ranks 1, 2 did not join the group at file " + dir / "store" + " within 1500 ms");
  EXPECT_LT(seconds_since(start), 2 * 1.5);  // TCPStore used to wait once, then Gloo again
  // Over TCP, rank 0 hosting the store alone: the same, and no C++ stack frames.
  const int port = unused_port();
  try {
    Group(GroupOptions().rank(0).world_size(2).master_port(port).timeout(1500ms));
    ADD_FAILURE() << "rank 0 joined alone";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              fmt::format("rank 0 of 2: rank 1 did not join the group at 127.0.0.1:{} within 1500 ms", port));
  }
}

TEST(DistributedHardening, ABusyPortIsNamed) {
  BusyPort busy;
  try {
    distributed::Group(distributed::GroupOptions().rank(0).world_size(2).master_port(busy.port).timeout(1500ms));
    ADD_FAILURE() << "hosted the store on a busy port";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              fmt::format("rank 0 of 2: could not host the group's store on port {}: the port is in use", busy.port));
  }
}

#if defined(CONNEX_CLI)
#include "cli_util.h"

namespace {

// /proc/PID/stat's state and parent; state '\0' when there is no such process.
std::pair<char, pid_t> state_and_parent(pid_t pid) {
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const size_t close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos || close + 4 > stat.size()) return {'\0', 0};
  return {stat[close + 2], static_cast<pid_t>(std::atol(stat.c_str() + close + 4))};
}

// Running (not a zombie, not gone).
bool alive(pid_t pid) {
  const char state = state_and_parent(pid).first;
  return state != '\0' && state != 'Z' && state != 'X';
}

std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = std::stoi(name);
    if (state_and_parent(pid).second == parent && alive(pid)) children.push_back(pid);
  }
  return children;
}

bool eventually(const std::function<bool()>& condition, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

void write_data_and_config(const TempDir& dir) {
  write_regression_csv(dir / "data.csv");
  spit(dir / "net.json", kMlp21);
}

// A long `--nproc 2` run, its launcher's pid and its two workers, once both
// train (a checkpoint was written). Workers left behind are killed at scope
// exit; the rendezvous directory is made in `dir` (TMPDIR), even when the
// launcher is killed before it can remove it.
struct LongRun {
  explicit LongRun(const TempDir& dir) : dir(dir) {
    write_data_and_config(dir);
    launcher = spawn_connex({"train", dir / "net.json", "--data", dir / "data.csv", "--epochs", "1000000",
                             "--batch-size", "20", "--checkpoint-every", "2", "--nproc", "2", "--out", dir / "run"},
                            dir / "run.log", "", {"TMPDIR=" + dir.path});
    eventually(
        [&] { return (children_of(launcher).size() == 2 && fs::exists(dir / "run/model.ckpt")) || !alive(launcher); },
        120s);
    workers = children_of(launcher);
  }
  ~LongRun() {
    for (pid_t w : workers)
      if (alive(w)) kill(w, SIGKILL);
    if (launcher > 0) wait_for(launcher, 10s);
  }
  bool workers_gone(std::chrono::seconds limit) const {
    return eventually([&] { return std::none_of(workers.begin(), workers.end(), alive); }, limit);
  }
  std::string log() const { return slurp(dir / "run.log"); }

  const TempDir& dir;
  pid_t launcher = -1;
  std::vector<pid_t> workers;
};

}  // namespace

// ------------------------------------------------- signals to the launcher

TEST(DistributedHardening, SigtermToTheLauncherStopsEveryWorker) {
  TempDir dir;
  LongRun run(dir);
  ASSERT_EQ(run.workers.size(), 2u) << run.log();
  ASSERT_EQ(kill(run.launcher, SIGTERM), 0);
  const int code = wait_for(run.launcher, 30s);
  run.launcher = -1;
  EXPECT_EQ(code, 128 + SIGTERM) << run.log();
  EXPECT_TRUE(run.workers_gone(10s)) << run.log();
  EXPECT_NE(run.log().find("connex: --nproc: stopping the workers (the launcher got Terminated)\n"), std::string::npos)
      << run.log();
}

TEST(DistributedHardening, WorkersDieWithAKilledLauncher) {
  TempDir dir;
  LongRun run(dir);
  ASSERT_EQ(run.workers.size(), 2u) << run.log();
  ASSERT_EQ(kill(run.launcher, SIGKILL), 0);  // no chance to forward anything
  EXPECT_EQ(wait_for(run.launcher, 10s), 128 + SIGKILL);
  run.launcher = -1;
  EXPECT_TRUE(run.workers_gone(10s)) << run.log();
}

// ------------------------------------------------------ the local rendezvous

namespace {

// VARIABLE's value in process PID's environment, or empty.
std::string environment_of(pid_t pid, const std::string& variable) {
  const std::string environ_text = slurp("/proc/" + std::to_string(pid) + "/environ");
  std::istringstream entries(environ_text);
  std::string entry;
  while (std::getline(entries, entry, '\0'))
    if (entry.rfind(variable + "=", 0) == 0) return entry.substr(variable.size() + 1);
  return "";
}

// The local addresses (hex, as /proc/net/tcp* writes them) of the listening
// TCP sockets that process PID holds.
std::vector<std::string> listening_addresses(pid_t pid) {
  std::map<std::string, std::string> listening;  // socket inode -> local address
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream lines(slurp(table));
    std::string line;
    std::getline(lines, line);  // header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode;
      if (state == "0A") listening[inode] = local;
    }
  }
  std::vector<std::string> addresses;
  for (const auto& fd : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code error;
    const std::string target = fs::read_symlink(fd.path(), error).string();
    if (target.rfind("socket:[", 0) != 0) continue;
    const auto it = listening.find(target.substr(8, target.size() - 9));
    if (it != listening.end()) addresses.push_back(it->second);
  }
  return addresses;
}

// 127.0.0.1, ::1 or ::ffff:127.0.0.1, in /proc/net/tcp* form (any port).
bool is_loopback(const std::string& address) {
  const std::string host = address.substr(0, address.find(':'));
  return host == "0100007F" || host == "00000000000000000000000001000000" || host == "0000000000000000FFFF00000100007F";
}

}  // namespace

TEST(DistributedHardening, ALocalRunListensOnNoRendezvousPortAndCleansUpItsPrivateDirectory) {
  TempDir dir;
  std::string rendezvous;
  {
    LongRun run(dir);
    ASSERT_EQ(run.workers.size(), 2u) << run.log();
    for (pid_t worker : run.workers) {
      // No port to choose or expose: a FileStore in the launcher's directory.
      EXPECT_EQ(environment_of(worker, "MASTER_PORT"), "");
      rendezvous = environment_of(worker, "CONNEX_LOCAL_RENDEZVOUS");
      // Gloo's own connections listen on loopback only; nothing on a public address.
      const auto addresses = listening_addresses(worker);
      for (const auto& address : addresses)
        EXPECT_TRUE(is_loopback(address)) << "worker " << worker << " listens on " << address;
    }
    ASSERT_EQ(fs::path(rendezvous).parent_path(), fs::path(dir.path));
    EXPECT_EQ(fs::path(rendezvous).filename().string().rfind("connex-rendezvous-", 0), 0u) << rendezvous;
    struct stat info {};
    ASSERT_EQ(stat(rendezvous.c_str(), &info), 0);
    EXPECT_TRUE(S_ISDIR(info.st_mode));
    EXPECT_EQ(info.st_mode & 07777, 0700u);
    EXPECT_EQ(info.st_uid, getuid());
    EXPECT_NE(run.log().find("joined (gloo through the launcher's private file store)"), std::string::npos)
        << run.log();
    ASSERT_EQ(kill(run.launcher, SIGTERM), 0);
    EXPECT_EQ(wait_for(run.launcher, 30s), 128 + SIGTERM);
    run.launcher = -1;
    EXPECT_FALSE(fs::exists(rendezvous));  // removed when stopped by a signal
  }
  // ... and after a run that ends by itself.
  const pid_t short_run =
      spawn_connex({"train", dir / "net.json", "--data", dir / "data.csv", "--epochs", "2", "--nproc", "2"},
                   dir / "short.log", "", {"TMPDIR=" + dir.path});
  EXPECT_EQ(wait_for(short_run, 120s), 0) << slurp(dir / "short.log");
  for (const auto& entry : fs::directory_iterator(dir.path))
    EXPECT_EQ(entry.path().filename().string().rfind("connex-rendezvous-", 0), std::string::npos) << entry.path();
}

TEST(DistributedHardening, NprocRejectsARendezvousAddress) {
  TempDir dir;
  const auto r = connex_cli("train --nproc 2 --master-port 29500 --epochs 1", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(
      r.err,
      "connex: --nproc workers meet through a private file, not a port; --master-addr and --master-port are for runs "
      "with --rank and --world-size\n");
}

// ------------------------------------------------------ what the user reads

namespace {

// Runs `connex ARGS` with extra environment entries; exit code, stderr and seconds taken.
struct Outcome {
  int code;
  std::string err;
  double seconds;
};
Outcome run_connex(const TempDir& dir, const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  const auto start = std::chrono::steady_clock::now();
  const int code = wait_for(spawn_connex(args, dir / "out.log", dir / "err.log", env), 120s);
  return {code, slurp(dir / "err.log"), seconds_since(start)};
}

std::vector<std::string> rank_env(int rank, int port) {
  return {"RANK=" + std::to_string(rank), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
          "MASTER_PORT=" + std::to_string(port)};
}

}  // namespace

TEST(DistributedHardening, RankZeroAloneWaitsDistTimeoutOnceAndSaysWhoIsMissingInOneLine) {
  TempDir dir;
  const int port = unused_port();
  const auto r = run_connex(dir, {"train", "--epochs", "1", "--dist-timeout", "4"}, rank_env(0, port));
  EXPECT_EQ(r.code, 1);
  // One line, no C++ stack frames, no glog lines.
  EXPECT_EQ(r.err,
            fmt::format("connex: [rank 0] rank 0 of 2: rank 1 did not join the group at 127.0.0.1:{} within 4000 ms\n",
                        port));
  EXPECT_GE(r.seconds, 4);
  EXPECT_LT(r.seconds, 8) << "waited twice the timeout";  // it did: TCPStore's wait, then Gloo's
}

TEST(DistributedHardening, ABusyMasterPortIsOneLine) {
  TempDir dir;
  BusyPort busy;
  const auto r = run_connex(dir, {"train", "--epochs", "1", "--dist-timeout", "2"}, rank_env(0, busy.port));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(
      r.err,
      fmt::format("connex: [rank 0] rank 0 of 2: could not host the group's store on port {}: the port is in use\n",
                  busy.port));
}

TEST(DistributedHardening, AnInputErrorUnderNprocIsReportedOnceAsWithoutIt) {
  TempDir dir;
  spit(dir / "bad.csv", "x,y\n1,abc\n");
  const auto alone = run_connex(dir, {"train", "--epochs", "1", "--data", dir / "bad.csv"});
  ASSERT_EQ(alone.code, 1);
  ASSERT_EQ(std::count(alone.err.begin(), alone.err.end(), '\n'), 1) << alone.err;
  const auto two = run_connex(dir, {"train", "--epochs", "1", "--data", dir / "bad.csv", "--nproc", "2"});
  EXPECT_EQ(two.code, 1);
  EXPECT_EQ(two.err, alone.err);  // every rank hit it: once, without a rank
}

// A flag given twice is refused in words, not as CLI11's count.
TEST(DistributedHardening, AFlagGivenTwiceIsRefusedNamingIt) {
  TempDir dir;
  const auto r = connex_cli("train --epochs 1 --epochs 2", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "connex: --epochs is given 2 times; give it once (see connex train --help)\n");
}

TEST(DistributedHardening, DistTimeoutIsRangeCheckedBeforeTheConversionToMilliseconds) {
  TempDir dir;
  for (const char* bad : {"1e300", "1e-9", "0", "-1", "inf", "nan"}) {
    const auto r = connex_cli(std::string("train --epochs 1 --dist-timeout ") + bad, dir);
    EXPECT_EQ(r.code, 2) << bad;
    EXPECT_EQ(
        r.err,
        fmt::format(
            "connex: --dist-timeout: must be a number in [0.001, 1000000], got \"{}\" (see connex train --help)\n",
            bad));
  }
  EXPECT_EQ(connex_cli("train --epochs 1 --dist-timeout 0.001", dir).code,
            0);  // a single process: no group to wait for
}

#endif  // CONNEX_CLI
#endif  // CONNEX_WITH_DISTRIBUTED
