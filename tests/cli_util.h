#pragma once
// Helpers for the tests that run the built `connex` program.
#include <sys/wait.h>

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


// Runs `connex ARGS` in `dir`, capturing stdout and stderr.
inline Run connex_cli(const std::string& args, const TempDir& dir) {
  const std::string cmd = "cd '" + dir.path + "' && " CONNEX_CLI " " + args + " > .stdout 2> .stderr";
  const int status = std::system(cmd.c_str());
  Run r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / ".stdout"), slurp(dir / ".stderr")};
  std::filesystem::remove(dir / ".stdout");
  std::filesystem::remove(dir / ".stderr");
  return r;
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

// sklearn's CSV form ("n,features,class names" then rows) -> a CSV with a header.
inline bool convert_sklearn(const std::string& from, const std::string& to) {
  std::ifstream in(from);
  if (!in) return false;
  std::string first;
  std::getline(in, first);
  const int features = std::stoi(first.substr(first.find(',') + 1));
  std::ofstream out(to);
  for (int f = 0; f < features; ++f) out << "f" << f << ",";
  out << "label\n" << in.rdbuf();
  return true;
}

inline bool empty_or_missing(const std::string& dir) { return !std::filesystem::exists(dir) || std::filesystem::is_empty(dir); }

}  // namespace connex::testing
