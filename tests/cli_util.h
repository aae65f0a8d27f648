#pragma once
// Helpers for the tests that run the built `connex` program.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "test_util.h"

namespace connex::testing {

struct Run {
  int code;
  std::string out, err;
};

// Runs `connex ARGS` in `dir`, capturing stdout and stderr; `env`: entries
// (NAME=value, shell-safe) for its environment.
inline Run connex_cli(const std::string& args, const TempDir& dir, const std::string& env = "") {
  const std::string cmd =
      "cd '" + dir.path + "' && " + (env.empty() ? "" : env + " ") + CONNEX_CLI " " + args + " > .stdout 2> .stderr";
  const int status = std::system(cmd.c_str());
  Run r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / ".stdout"), slurp(dir / ".stderr")};
  std::filesystem::remove(dir / ".stdout");
  std::filesystem::remove(dir / ".stderr");
  return r;
}

// `network` saved as dir/bad.ckpt with `training` as its run's record: a
// resume refuses it with a message holding `message`, and writes nothing.
inline void expect_record_refused(const TempDir& dir, const NeuralNetwork& network, const nlohmann::json& training,
                                  const std::string& message) {
  save(network, dir / "bad.ckpt", nullptr, nullptr, training);
  const Run r = connex_cli("train bad.ckpt --epochs 1 --out bad", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "bad"));
}

// Starts `connex ARGS` without a shell (so that a signal reaches connex
// itself), with extra environment entries and in `dir` when given: stdout
// into `out`, stderr into `err` (into `out` too when `err` is empty).
inline pid_t spawn_connex(const std::vector<std::string>& args, const std::string& out, const std::string& err = "",
                          const std::vector<std::string>& env_extra = {}, const std::string& dir = "") {
  std::vector<std::string> argv_s{CONNEX_CLI};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) env_s.emplace_back(*e);
  env_s.insert(env_s.end(), env_extra.begin(), env_extra.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!dir.empty()) posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (err.empty())
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  else
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, CONNEX_CLI, &actions, nullptr, argv.data(), envp.data()), 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// Exit code (128 + signal for a killed process), or -1 when still running
// after `limit` (then it is killed and reaped).
inline int wait_for(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

inline std::vector<double> column(const std::string& csv, size_t index) {
  std::vector<double> values;
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) cells.push_back(cell);
    values.push_back(std::stod(cells.at(index)));
  }
  return values;
}

// A regression CSV: y = x1 - 2 x2 + 0.5.
inline void write_regression_csv(const std::string& path, int rows = 200) {
  std::ofstream out(path);
  out << "x1,x2,y\n";
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> u(-1, 1);
  for (int i = 0; i < rows; ++i) {
    const double a = u(rng), b = u(rng);
    out << a << "," << b << "," << a - 2 * b + 0.5 << "\n";
  }
}

inline const char* kMlp21 = R"({"graph": {"prebuilt": "MLP", "input_size": 2, "output_size": 1, "width": 8, "depth": 1},
                         "options": {"hidden_activation": "tanh"}})";

// Copies a table scripts/fetch-datasets.sh wrote (header f0,...,label) to
// `to`; false when it was not fetched.
inline bool copy_dataset(const std::string& from, const std::string& to) {
  std::ifstream in(from);
  if (!in) return false;
  std::ofstream(to) << in.rdbuf();
  return true;
}

inline bool empty_or_missing(const std::string& dir) {
  return !std::filesystem::exists(dir) || std::filesystem::is_empty(dir);
}

}  // namespace connex::testing
