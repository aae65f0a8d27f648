// `connex export --format png` end to end: what it draws, how big, how long.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "cli_util.h"

using namespace connex;
using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

bool have_dot() { return std::system("command -v dot > /dev/null 2>&1") == 0; }

// Width and height from a PNG's IHDR chunk (8-byte signature, chunk length,
// "IHDR", then both as big-endian 32-bit integers).
std::pair<uint32_t, uint32_t> png_size(const std::string& bytes) {
  EXPECT_GE(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) v = v << 8 | static_cast<unsigned char>(bytes[at + k]);
    return v;
  };
  return {be32(16), be32(20)};
}

// 40 inches at 96 dpi (DotOptions' defaults).
constexpr uint32_t kMaxPixels = 3840;

// Puts a directory first on PATH for the life of the object.
struct PathFirst {
  explicit PathFirst(const std::string& dir) : old(std::getenv("PATH") ? std::getenv("PATH") : "") {
    setenv("PATH", (dir + ":" + old).c_str(), 1);
  }
  ~PathFirst() { setenv("PATH", old.c_str(), 1); }
  std::string old;
};

}  // namespace

// The issue: 1,117 neurons took 27 s and gave a 3874x32767 PNG without a word.
TEST(CliExport, PngOfALargeNetworkIsASummaryOfBoundedSize) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  spit(dir / "big.json",
       R"({"graph": {"prebuilt": "MLP", "input_size": 4, "output_size": 3, "width": 256, "depth": 4}})");
  const auto start = std::chrono::steady_clock::now();
  auto r = connex_cli("export big.json --format png --out g.png", dir);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "wrote g.png: summary of 1,031 neurons, 198,400 connections in 6 levels (full drawings above 300 neurons "
            "or 3,000 connections are unreadable; use --format dot or json for the whole graph)\n");
  const auto [width, height] = png_size(slurp(dir / "g.png"));
  EXPECT_GT(width, 0u);
  EXPECT_LE(width, kMaxPixels);
  EXPECT_GT(height, 0u);
  EXPECT_LE(height, kMaxPixels);
  // Nothing else is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 2);
  std::printf("export of 1,031 neurons to png: %.2f s, %u x %u px, %ju bytes\n", seconds, width, height,
              static_cast<uintmax_t>(fs::file_size(dir / "g.png")));
}

TEST(CliExport, PngOfASmallNetworkDrawsEveryNeuron) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  auto r = connex_cli("export " CONNEX_SOURCE_DIR "/configs/readme.json --format png --out g.png", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "wrote g.png: all 12 neurons, 14 connections\n");
  const auto [width, height] = png_size(slurp(dir / "g.png"));
  EXPECT_LE(width, kMaxPixels);
  EXPECT_LE(height, kMaxPixels);
}

// A dot that hangs is stopped at --timeout, with one line saying so and no
// file left behind.
TEST(CliExport, DotPastItsTimeLimitIsStopped) {
  TempDir dir;
  fs::create_directory(dir / "bin");
  spit(dir / "bin/dot", "#!/bin/sh\nexec sleep 60\n");
  fs::permissions(dir / "bin/dot", fs::perms::owner_all);
  PathFirst path(dir / "bin");
  const auto start = std::chrono::steady_clock::now();
  auto r = connex_cli("export " CONNEX_SOURCE_DIR "/configs/readme.json --format png --out g.png --timeout 1", dir);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(
      r.err,
      "connex: export: dot did not finish drawing g.png (all 12 neurons, 14 connections) within 1 s and was stopped; "
      "raise --timeout, or use --format dot or json\n");
  EXPECT_LT(seconds, 30);  // not the fake dot's 60 s
  EXPECT_FALSE(fs::exists(dir / "g.png"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 1);  // bin/ only
}

// The issue: on a full disk the only words were Graphviz's "gvwrite_no_z
// problem 8192" and "dot failed to draw". A file-size limit makes every write
// past 20 KiB fail as a full disk does (without the SIGXFSZ that would kill):
// the message says what happened, and nothing is left behind.
TEST(CliExport, PngThatCannotBeWrittenSaysWhyAndLeavesNothing) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  spit(dir / "m.json", R"({"graph": {"prebuilt": "MLP", "input_size": 4, "output_size": 3, "width": 8, "depth": 3}})");
  const std::string cmd = "cd '" + dir.path +
                          "' && ulimit -f 40 && trap '' XFSZ && " CONNEX_CLI
                          " export m.json --format png --out g.png > out.txt 2> err.txt";
  const int status = std::system(("bash -c \"" + cmd + "\"").c_str());
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 1);
  EXPECT_EQ(
      slurp(dir / "err.txt"),
      "connex: export: dot failed to draw g.png (exit status 1: Error: gvwrite_no_z problem 8192); Graphviz could "
      "not write the image (a full disk or a file-size limit)\n");
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path)) left.insert(e.path().filename().string());
  EXPECT_EQ(left, (std::set<std::string>{"m.json", "out.txt", "err.txt"}));
}

// A real full file system, where the test may mount one (root with
// CAP_SYS_ADMIN): 48 KiB of tmpfs hold dot's input but not the image.
TEST(CliExport, PngOnAFullFileSystemSaysItIsFull) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  spit(dir / "m.json", R"({"graph": {"prebuilt": "MLP", "input_size": 4, "output_size": 3, "width": 8, "depth": 3}})");
  fs::create_directory(dir / "small");
  const std::string mount = "mount -t tmpfs -o size=48k tmpfs '" + (dir / "small") + "' 2> /dev/null";
  if (std::system(mount.c_str()) != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)";
  auto r = connex_cli("export m.json --format png --out small/g.png", dir);
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(dir / "small")) left.insert(e.path().filename().string());
  EXPECT_EQ(std::system(("umount '" + (dir / "small") + "'").c_str()), 0);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: export: dot failed to draw small/g.png (exit status 1); the file system that would hold "
            "small/g.png is full\n");
  EXPECT_TRUE(left.empty()) << *left.begin();
}

// What an export lacks is said where a deployer would otherwise learn it
// from wrong predictions: a TorchScript module of untrained weights, or
// without the preprocessing (an edit dropped it); a graph or drawing without
// it; GraphML's node order where it is not the network's input order. A
// removed input takes its column along, so the export keeps the others'.
TEST(CliExport, SaysWhatTheExportLacks) {
  TempDir dir;
  write_regression_csv(dir / "d.csv");
  spit(dir / "net.json", kMlp21);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --standardize --epochs 2 --out run", dir).code, 0);
  auto r = connex_cli("export net.json --format torchscript --out cfg.pt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("] warning: export: net.json holds a network's initial weights, never trained: cfg.pt "
                       "computes with those"),
            std::string::npos)
      << r.out;
  r = connex_cli("export run --format torchscript --out run.pt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  // A checkpoint without preprocessing never had one (the toy set), or the
  // edit that dropped it said so: its export says nothing more. A node-link
  // JSON holds none whatever the network was trained on.
  ASSERT_EQ(connex_cli("train --epochs 1 --out toy", dir).code, 0);
  r = connex_cli("export toy --format torchscript --out toy.pt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  r = connex_cli("edit run --add-input 70 --add-connection 70:2 --out wide.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(input 70 is new and has no feature column): the saved preprocessing"), std::string::npos)
      << r.out;
  ASSERT_EQ(connex_cli("export run --format json --out run.json", dir).code, 0);
  r = connex_cli("export run.json --format torchscript --out fromjson.pt", dir);
  EXPECT_NE(r.out.find("] warning: export: run.json is a node-link JSON export, which holds no preprocessing: "
                       "fromjson.pt takes its inputs as the network reads them, neither standardized nor named"),
            std::string::npos)
      << r.out;
  r = connex_cli("export wide.ckpt --format graphml --out wide.graphml", dir);
  EXPECT_NE(r.out.find("] warning: export: wide.graphml lists the inputs in node order, not the network's: input 0 is "
                       "number 1 there, where the network has 70; --format json keeps the order and imports back"),
            std::string::npos)
      << r.out;
  r = connex_cli("export run --format graphml --out run.png", dir);
  EXPECT_NE(r.out.find("] warning: export: run.png's extension names the png format; --format graphml writes run.png "
                       "as asked"),
            std::string::npos)
      << r.out;
  r = connex_cli("export run --format dot --out run.dot", dir);
  EXPECT_NE(r.out.find("] warning: export: run.dot holds the network only, not the checkpoint's preprocessing"),
            std::string::npos)
      << r.out;
  // A second value after an edit flag is refused with what to do instead.
  r = connex_cli("edit run --add-hidden 100 --add-connection 0:100 100:2 --out e.ckpt", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("; edit's --add-* and --remove-* flags take one value each: repeat a flag for more (see "
                       "connex edit --help)"),
            std::string::npos)
      << r.err;
}
