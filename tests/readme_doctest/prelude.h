#pragma once
// Included first by the C++ file extract.py generates from README.md's C++
// blocks: the README network every fragment finds as `network` (and `net`,
// `spec`, `adam`), helpers a README doctest comment may use, and the runner.
// Convention (details in extract.py): `<!-- doctest[ compile-only][
// if=MACRO]: context -->` just before a ```cpp block that needs more names.
#include <connex/connex.h>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "../../apps/readme_network.h"

namespace readme_doctest {

// The README's network (its Example section).
inline connex::GraphSpec readme_spec() { return connex::apps::readme_graph(); }
inline connex::NeuralNetwork readme_network() {
  return connex::NeuralNetwork(readme_spec(), connex::NeuralNetworkOptions().hidden_activation("relu"));
}

// A block's `int main(...)` became `auto readme_main(...)`: void when the
// block returns nothing (real main returns 0 then).
template <typename Main>
void check_main_result(Main main) {
  static char name[] = "readme_doctest";
  static char* argv[] = {name, nullptr};
  auto call = [&] {
    if constexpr (std::is_invocable_v<Main>)
      return main();
    else
      return main(1, argv);
  };
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
  } else if (int rc = call(); rc != 0) {
    throw std::runtime_error("main() returned " + std::to_string(rc));
  }
}

struct Block {
  int line;  // of README.md
  bool run;  // false: compile-only
  void (*fn)();
};

// Runs the runnable blocks in a scratch directory (a block may write files),
// each reported on one line; non-zero when any throws.
inline int run_blocks(const std::vector<Block>& blocks) {
  namespace fs = std::filesystem;
  const fs::path home = fs::current_path();
  const fs::path scratch = fs::temp_directory_path() / ("connex_readme_doctest." + std::to_string(::getpid()));
  fs::create_directories(scratch);
  fs::current_path(scratch);
  int failures = 0;
  for (const Block& b : blocks) {
    if (!b.run) {
      std::printf("README.md:%d: compiled (not run)\n", b.line);
      continue;
    }
    const auto start = std::chrono::steady_clock::now();
    try {
      b.fn();
      const std::chrono::duration<double> s = std::chrono::steady_clock::now() - start;
      std::printf("README.md:%d: ok (%.2f s)\n", b.line, s.count());
    } catch (const std::exception& e) {
      std::printf("README.md:%d: FAILED: %s\n", b.line, e.what());
      ++failures;
    }
    std::fflush(stdout);
  }
  fs::current_path(home);
  fs::remove_all(scratch);
  std::printf("%zu README blocks compiled, %d failed\n", blocks.size(), failures);
  return failures ? 1 : 0;
}

}  // namespace readme_doctest
