// The `connex` program against hostile files and paths: planted symlinks,
// concurrent exports, a failing Graphviz, FIFOs and devices, huge or deeply
// nested inputs. Each failure is one line naming the culprit, with nothing
// written or left behind.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "cli_util.h"

using namespace connex::testing;
namespace fs = std::filesystem;

namespace {

bool have_dot() { return std::system("command -v dot > /dev/null 2>&1") == 0; }

struct PathFirst {  // a directory first on PATH for the life of the object
  explicit PathFirst(const std::string& dir) : old(std::getenv("PATH") ? std::getenv("PATH") : "") {
    setenv("PATH", (dir + ":" + old).c_str(), 1);
  }
  ~PathFirst() { setenv("PATH", old.c_str(), 1); }
  std::string old;
};

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool is_png(const std::string& bytes) { return bytes.rfind("\x89PNG\r\n\x1a\n", 0) == 0; }

size_t lines(const std::string& text) { return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')); }

}  // namespace

// The PNG path used the fixed names OUT.dot.tmp and OUT.tmp.png: one symlink
// planted at OUT.tmp.png made dot overwrite its target.
TEST(CliHardeningFiles, PngExportNeverWritesThroughPlantedSymlinks) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  spit(dir / "victim", "precious");
  for (const char* name : {"g.png.tmp.png", "g.png.dot.tmp"}) fs::create_symlink(dir / "victim", dir / name);
  auto r = connex_cli("export net.json --format png --out g.png", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(dir / "victim"), "precious");
  EXPECT_FALSE(fs::is_symlink(dir / "g.png"));
  EXPECT_TRUE(is_png(slurp(dir / "g.png")));
  EXPECT_EQ(names_in(dir.path),
            (std::vector<std::string>{"g.png", "g.png.dot.tmp", "g.png.tmp.png", "net.json", "victim"}))
      << "a temporary was left behind, or a planted link was replaced";
}

// They shared those names too: concurrent exports to one path failed with
// "filesystem error: cannot rename".
TEST(CliHardeningFiles, ConcurrentPngExportsToOnePathAllSucceed) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  std::string script = "cd '" + dir.path + "' || exit 1; ";
  for (int i = 0; i < 4; ++i)
    script += "( " CONNEX_CLI " export net.json --format png --out g.png > /dev/null 2> err" + std::to_string(i) +
              "; echo $? > code" + std::to_string(i) + " ) & ";
  script += "wait";
  ASSERT_EQ(std::system(script.c_str()), 0);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(slurp(dir / ("code" + std::to_string(i))), "0\n") << slurp(dir / ("err" + std::to_string(i)));
    fs::remove(dir / ("code" + std::to_string(i)));
    fs::remove(dir / ("err" + std::to_string(i)));
  }
  EXPECT_TRUE(is_png(slurp(dir / "g.png")));
  EXPECT_EQ(names_in(dir.path), (std::vector<std::string>{"g.png", "net.json"}));
}

// A failing dot used to leave "dot failed to draw" and Graphviz's words on
// stderr as separate lines (on a full disk: "gvwrite_no_z problem 8192").
TEST(CliHardeningFiles, DotFailureIsOneLineWithDotsOwnWords) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  fs::create_directory(dir / "bin");
  spit(dir / "bin/dot",
       "#!/bin/sh\necho 'Error: gvwrite_no_z problem 8192' >&2\nprintf 'then\\033[31m this\\n' >&2\nexit 1\n");
  fs::permissions(dir / "bin/dot", fs::perms::owner_all);
  PathFirst path(dir / "bin");
  auto r = connex_cli("export net.json --format png --out g.png", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: export: dot failed to draw g.png (exit status 1: Error: gvwrite_no_z problem 8192; then\\x1b[31m "
            "this); Graphviz could not write the image "
            "(a full disk or a file-size limit)\n");
  EXPECT_EQ(names_in(dir.path), (std::vector<std::string>{"bin", "net.json"})) << "dot's files were left behind";
}

// --out DIR drew the image, failed at the rename and left DIR.tmp.png.
TEST(CliHardeningFiles, ExportToADirectoryIsRefusedUpFront) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  fs::create_directory(dir / "pictures");
  for (const char* format : {"png", "json", "torchscript"}) {
    auto r = connex_cli(std::string("export net.json --format ") + format + " --out pictures", dir);
    EXPECT_EQ(r.code, 1) << format;
    EXPECT_EQ(r.err, "connex: export: --out pictures is a directory; give the path of the file to write\n") << format;
    EXPECT_EQ(names_in(dir.path), (std::vector<std::string>{"net.json", "pictures"}));
    EXPECT_TRUE(fs::is_empty(dir / "pictures"));
  }
}

// An option nested 100,000 deep crashed `connex inspect` (exit 139).
TEST(CliHardeningFiles, DeeplyNestedConfigIsOneLineNotACrash) {
  TempDir dir;
  spit(dir / "deep.json", R"({"graph": {"edges": [[0, 1]], "inputs": [0], "outputs": [1]}, "options": {"seed": )" +
                              std::string(100000, '[') + std::string(100000, ']') + "}}");
  auto r = connex_cli("inspect deep.json", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: load_config(): deep.json nests JSON deeper than 256 levels (at byte 336)\n");
}

// A FIFO as the config or as --data blocked forever.
TEST(CliHardeningFiles, FifoAsConfigOrDataIsRefusedWithoutBlocking) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  for (const char* args : {"inspect fifo", "train net.json --data fifo --epochs 1"}) {
    const std::string cmd = "cd '" + dir.path + "' && timeout 60 " CONNEX_CLI " " + args + " > .stdout 2> .stderr";
    const int status = std::system(cmd.c_str());
    const std::string err = slurp(dir / ".stderr");
    EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 1) << args << ": " << err;
    EXPECT_EQ(lines(err), 1u) << err;
    EXPECT_NE(err.find("fifo is a FIFO, not a regular file"), std::string::npos) << args << ": " << err;
  }
}
