#include "launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace connex::cli {

namespace {

// A port the kernel considers free now (bound to port 0, then released). Rank
// 0 binds it again a moment later; a clash is reported by rank 0 as such.
int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

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

}  // namespace

int launch_local_workers(int argc, char** argv, int nproc, int grace_seconds) {
  const int port = free_loopback_port();
  if (port < 0) {
    std::fprintf(stderr, "connex: --nproc: no free TCP port on 127.0.0.1 for the rendezvous\n");
    return 1;
  }
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
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) {
    std::fprintf(stderr, "connex: --nproc: cannot find this program's path\n");
    return 1;
  }
  self[n] = '\0';

  std::vector<std::string> base_env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string key = entry.substr(0, entry.find('='));
    if (key == "RANK" || key == "WORLD_SIZE" || key == "LOCAL_RANK" || key == "LOCAL_WORLD_SIZE" ||
        key == "MASTER_ADDR" || key == "MASTER_PORT")
      continue;
    base_env.push_back(entry);
  }

  std::vector<pid_t> pids(nproc, -1);
  for (int rank = 0; rank < nproc; ++rank) {
    std::vector<std::string> env = base_env;
    env.push_back("RANK=" + std::to_string(rank));
    env.push_back("LOCAL_RANK=" + std::to_string(rank));
    env.push_back("WORLD_SIZE=" + std::to_string(nproc));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(nproc));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back("MASTER_PORT=" + std::to_string(port));
    std::vector<char*> argv_c, env_c;
    for (auto& a : args) argv_c.push_back(a.data());
    argv_c.push_back(nullptr);
    for (auto& e : env) env_c.push_back(e.data());
    env_c.push_back(nullptr);
    if (posix_spawn(&pids[rank], self, nullptr, nullptr, argv_c.data(), env_c.data()) != 0) {
      std::fprintf(stderr, "connex: --nproc: could not start worker %d\n", rank);
      for (int r = 0; r < rank; ++r) ::kill(pids[r], SIGTERM);
      for (int r = 0; r < rank; ++r) ::waitpid(pids[r], nullptr, 0);
      return 1;
    }
  }

  int result = 0, running = nproc;
  bool failed = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  bool terminated = false;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, failed ? WNOHANG : 0);
    if (pid > 0) {
      int rank = 0;
      while (rank < nproc && pids[rank] != pid) ++rank;
      if (rank == nproc) continue;
      pids[rank] = -1;
      --running;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && !terminated) {
        std::fprintf(stderr, "connex: worker rank %d of %d %s\n", rank, nproc, describe(status).c_str());
        if (!failed) {
          failed = true;
          result = exit_code(status);
          deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_seconds);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (failed && !terminated && std::chrono::steady_clock::now() >= deadline) {
      for (int r = 0; r < nproc; ++r)
        if (pids[r] > 0) {
          std::fprintf(stderr, "connex: stopping worker rank %d (still running %d s after the first failure)\n", r, grace_seconds);
          ::kill(pids[r], SIGTERM);
        }
      terminated = true;
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    } else if (terminated && std::chrono::steady_clock::now() >= deadline) {
      for (int r = 0; r < nproc; ++r)
        if (pids[r] > 0) ::kill(pids[r], SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

}  // namespace connex::cli
