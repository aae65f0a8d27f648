// Every test starts from the same random state. LibTorch as Debian builds it
// seeds its default generator anew in each process, so a test that draws
// before its own manual_seed() drew differently on every run, and a rare
// draw (a finite-difference step near a kink) failed one run in many. The
// listener seeds before each test, however the tests run: ctest starts one
// process per test, a plain run of the program runs them all in turn.
#include <gtest/gtest.h>
#include <torch/utils.h>

namespace {

struct SeedEachTest : testing::EmptyTestEventListener {
  void OnTestStart(const testing::TestInfo&) override { torch::manual_seed(0x5eed); }
};

// Appended before main(): gtest_main's InitGoogleTest keeps listeners.
const bool seeded = [] {
  testing::UnitTest::GetInstance()->listeners().Append(new SeedEachTest);
  return true;
}();

}  // namespace
