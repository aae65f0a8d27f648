#include "launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <c10/util/Logging.h>

extern char** environ;

namespace connex::cli {

namespace {

constexpr const char* kRendezvousVariable = "CONNEX_LOCAL_RENDEZVOUS";

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// The signal that asked the launcher to stop (SIGINT, SIGTERM or SIGHUP), or 0.
volatile sig_atomic_t g_stop_signal = 0;

void record_stop_signal(int signal) {
  if (g_stop_signal == 0) g_stop_signal = signal;
}

// Starts one worker. The child asks the kernel for SIGTERM when the launcher
// dies (even by SIGKILL), so no worker outlives it; if the launcher is already
// gone by then, the child stops at once. Only async-signal-safe calls between
// fork and exec.
pid_t start_worker(const char* path, char* const argv[], char* const envp[]) {
  const pid_t launcher = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;  // the launcher, or -1
  if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != launcher) ::_exit(128 + SIGTERM);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(path, argv, envp);
  ::_exit(127);
}

std::string error_file(const std::string& directory, int rank) { return directory + "/error." + std::to_string(rank); }

// A directory only this user can enter ($TMPDIR or /tmp), or empty.
std::string make_private_directory() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/connex-rendezvous-XXXXXX";
  return ::mkdtemp(pattern.data()) ? pattern : std::string();  // mkdtemp: mode 0700
}

// The launcher's own arguments less --nproc, for its workers.
std::vector<std::string> worker_args(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--nproc") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0) continue;
    args.push_back(a);
  }
  return args;
}

// This program's path, or empty.
std::string own_path() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return std::string();
  self[n] = '\0';
  return self;
}

struct RemoveDirectory {
  const std::string& path;
  ~RemoveDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

// The environment the workers share: the launcher's, less the variables that place a process in a run.
std::vector<std::string> environment_without_rank_variables() {
  std::vector<std::string> base_env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string key = entry.substr(0, entry.find('='));
    if (key == "RANK" || key == "WORLD_SIZE" || key == "LOCAL_RANK" || key == "LOCAL_WORLD_SIZE" ||
        key == "MASTER_ADDR" || key == "MASTER_PORT" || key == kRendezvousVariable)
      continue;
    base_env.push_back(entry);
  }
  return base_env;
}

// Ctrl-C, `kill PID` or a closed terminal reach the launcher: the workers
// get the same signal (see Workers), then SIGKILL if they linger.
void forward_stop_signals() {
  struct sigaction action {};
  action.sa_handler = record_stop_signal;
  sigemptyset(&action.sa_mask);
  for (const int signal : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(signal, &action, nullptr);
}

// Starts ranks 0 to nproc - 1; empty (the ones started stopped again) when one cannot start.
std::vector<pid_t> start_workers(const std::string& self, std::vector<std::string>& args,
                                 const std::vector<std::string>& base_env, const std::string& directory, int nproc) {
  std::vector<pid_t> pids(nproc, -1);
  for (int rank = 0; rank < nproc; ++rank) {
    std::vector<std::string> env = base_env;
    env.push_back("RANK=" + std::to_string(rank));
    env.push_back("LOCAL_RANK=" + std::to_string(rank));
    env.push_back("WORLD_SIZE=" + std::to_string(nproc));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(nproc));
    env.push_back(std::string(kRendezvousVariable) + "=" + directory);
    std::vector<char*> argv_c, env_c;
    for (auto& a : args) argv_c.push_back(a.data());
    argv_c.push_back(nullptr);
    for (auto& e : env) env_c.push_back(e.data());
    env_c.push_back(nullptr);
    pids[rank] = start_worker(self.c_str(), argv_c.data(), env_c.data());
    if (pids[rank] < 0) {
      std::fprintf(stderr, "connex: --nproc: could not start worker %d: %s\n", rank, std::strerror(errno));
      for (int r = 0; r < rank; ++r) ::kill(pids[r], SIGTERM);
      for (int r = 0; r < rank; ++r) ::waitpid(pids[r], nullptr, 0);
      return {};
    }
  }
  return pids;
}

// The running workers, watched until every one has ended: the first failure
// starts the grace period, after which the rest get SIGTERM; a signal to the
// launcher goes on to them at once; SIGKILL follows 5 s after either.
struct Workers {
  Workers(std::vector<pid_t> started, int grace)
      : pids(std::move(started)),
        nproc(static_cast<int>(pids.size())),
        grace_seconds(grace),
        running(nproc),
        statuses(nproc, 0),
        report(nproc, false) {}

  std::vector<pid_t> pids;  // -1 once ended
  int nproc, grace_seconds;
  int result = 0, running;
  bool failed = false, terminated = false, killed = false;
  std::vector<int> statuses;
  std::vector<bool> report;  // failed by itself, not stopped by the launcher
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();

  // Polls, so that a signal or the grace period is noticed within 50 ms.
  void wait() {
    while (running > 0) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid > 0) {
        ended(pid, status);
        continue;
      }
      if (pid < 0 && errno != EINTR) break;
      stop_when_due(std::chrono::steady_clock::now());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  void ended(pid_t pid, int status) {
    int rank = 0;
    while (rank < nproc && pids[rank] != pid) ++rank;
    if (rank == nproc) return;
    pids[rank] = -1;
    --running;
    statuses[rank] = status;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && !terminated) {
      report[rank] = true;
      if (!failed) {
        failed = true;
        result = exit_code(status);
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_seconds);
      }
    }
  }

  void stop_when_due(std::chrono::steady_clock::time_point now) {
    if (g_stop_signal != 0 && !terminated) {
      std::fprintf(stderr, "connex: --nproc: stopping the workers (the launcher got %s)\n", strsignal(g_stop_signal));
      stop_all(g_stop_signal);
      result = 128 + g_stop_signal;
      terminated = true;
      deadline = now + std::chrono::seconds(5);
    } else if (failed && !terminated && now >= deadline) {
      for (int r = 0; r < nproc; ++r)
        if (pids[r] > 0)
          std::fprintf(stderr, "connex: stopping worker rank %d (still running %d s after the first failure)\n", r,
                       grace_seconds);
      stop_all(SIGTERM);
      terminated = true;
      deadline = now + std::chrono::seconds(5);
    } else if (terminated && !killed && now >= deadline) {
      stop_all(SIGKILL);
      killed = true;
    }
  }

  void stop_all(int signal) {
    for (int r = 0; r < nproc; ++r)
      if (pids[r] > 0) ::kill(pids[r], signal);
  }
};

// Each failure once: a message every rank gave (e.g. a bad input file, which
// every rank reads) without a rank; others with the first rank that gave it.
void report_failures(const Workers& workers, const std::string& directory) {
  const int nproc = workers.nproc;
  const auto& report = workers.report;
  std::vector<std::string> messages(nproc);
  for (int r = 0; r < nproc; ++r) {
    if (!report[r]) continue;
    std::ifstream in(error_file(directory, r));
    std::getline(in, messages[r]);
    if (messages[r].empty())
      messages[r] =
          "worker rank " + std::to_string(r) + " of " + std::to_string(nproc) + " " + describe(workers.statuses[r]);
  }
  for (int r = 0; r < nproc; ++r) {
    if (!report[r]) continue;
    bool seen = false, everywhere = true;
    for (int q = 0; q < nproc; ++q) {
      seen |= q < r && report[q] && messages[q] == messages[r];
      everywhere &= report[q] && messages[q] == messages[r];
    }
    if (seen) continue;
    if (everywhere || messages[r].rfind("worker rank ", 0) == 0)
      std::fprintf(stderr, "connex: %s\n", messages[r].c_str());
    else
      std::fprintf(stderr, "connex: [rank %d] %s\n", r, messages[r].c_str());
  }
}

}  // namespace

std::optional<std::string> local_rendezvous_directory() {
  const char* directory = std::getenv(kRendezvousVariable);
  if (!directory || !*directory) return std::nullopt;
  return std::string(directory);
}

void report_error(const std::string& rank_tag, const std::string& message) {
  const char* rank = std::getenv("RANK");
  if (auto directory = local_rendezvous_directory(); directory && rank) {
    std::ofstream out(error_file(*directory, std::atoi(rank)));
    if (out << message << std::flush) return;
  }
  std::fprintf(stderr, "connex: %s%s\n", rank_tag.c_str(), message.c_str());
}

void silence_torch_logging() { FLAGS_minloglevel = google::GLOG_FATAL; }

int launch_local_workers(int argc, char** argv, int nproc, int grace_seconds) {
  std::vector<std::string> args = worker_args(argc, argv);
  const std::string self = own_path();
  if (self.empty()) {
    std::fprintf(stderr, "connex: --nproc: cannot find this program's path\n");
    return 1;
  }

  // The rendezvous: a FileStore in a directory of our own, no network port.
  const std::string directory = make_private_directory();
  if (directory.empty()) {
    std::fprintf(stderr, "connex: --nproc: could not create a private directory in %s: %s\n",
                 std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp", std::strerror(errno));
    return 1;
  }
  const RemoveDirectory remove_directory{directory};
  const std::vector<std::string> base_env = environment_without_rank_variables();
  forward_stop_signals();
  std::vector<pid_t> pids = start_workers(self, args, base_env, directory, nproc);
  if (pids.empty()) return 1;
  Workers workers(std::move(pids), grace_seconds);
  workers.wait();
  report_failures(workers, directory);
  return workers.result;
}

}  // namespace connex::cli
