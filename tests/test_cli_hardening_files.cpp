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
  EXPECT_EQ(r.err, "connex: deep.json nests JSON deeper than 256 levels (at byte 336)\n");
}

// The CLI reads a network file before it knows whether it is a config or a
// node-link graph: its errors name the file, not load_config() (a node-link
// graph's said load_config() although the library reads it elsewhere).
TEST(CliHardeningFiles, AJsonNetworkFilesErrorsNameTheFile) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  ASSERT_EQ(connex_cli("export net.json --format json --out g.json", dir).code, 0);
  std::string graph = slurp(dir / "g.json");
  const size_t brace = graph.find('{');
  ASSERT_NE(brace, std::string::npos);
  graph.insert(brace + 1, "\"directed\": true, ");  // networkx writes it: now given twice
  spit(dir / "twice.json", graph);
  const std::string before = slurp(dir / "twice.json");
  auto r = connex_cli("inspect twice.json", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("connex: twice.json: /directed is given twice (line ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find("load_config"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir / "twice.json"), before);
  ASSERT_EQ(::mkfifo((dir / "fifo.json").c_str(), 0600), 0);
  r = connex_cli("inspect fifo.json", dir);
  EXPECT_EQ(r.err, "connex: network file: fifo.json is a FIFO, not a regular file\n");
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

// An --out that names a FIFO or a device was renamed over (writes are
// atomic renames): refused, the FIFO left as it was. predict's failed write
// to standard output is an error, and it refuses a config (never trained).
TEST(CliHardeningFiles, AnOutputThatIsNoRegularFileIsRefused) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  write_regression_csv(dir / "d.csv", 16);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out run", dir).code, 0);
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"predict run --data d.csv --out fifo",
            "predict: --out fifo is a pipe or FIFO, not a regular file; give the path of a file to write, or leave out "
            "--out to write to standard output"},
           {"export run --format json --out fifo",
            "export: --out fifo is a pipe or FIFO, not a regular file; give the path of a file to write"}}) {
    const auto r = connex_cli(args, dir);
    EXPECT_EQ(r.code, 1) << args;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_TRUE(std::filesystem::is_fifo(dir / "fifo")) << args;
  }
  if (std::filesystem::is_character_file("/dev/full")) {
    const std::string cmd = "cd '" + dir.path + "' && " CONNEX_CLI " predict run --data d.csv > /dev/full 2> .stderr";
    const int status = std::system(cmd.c_str());
    EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 1);
    EXPECT_NE(slurp(dir / ".stderr").find("predict: cannot write the predictions to standard output: No space left"),
              std::string::npos)
        << slurp(dir / ".stderr");
  }
  const auto r = connex_cli("predict net.json --data d.csv", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("predict: net.json holds a network's initial weights, never trained; give a checkpoint, a "
                       "train --out directory or a node-link JSON export"),
            std::string::npos)
      << r.err;
}

// `export net.ckpt --out net.ckpt` put a DOT drawing where the checkpoint
// was; `prune RUN --out RUN/model.ckpt` replaced a run's record behind its
// other files; `predict --out` replaced a checkpoint or a config given by a
// slip. All are refused up front, every file unchanged; prune and edit may
// still replace a checkpoint file (the write is atomic), predict a CSV.
TEST(CliHardeningFiles, AnOutputThatWouldDestroyTheInputIsRefused) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  write_regression_csv(dir / "d.csv", 16);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out run", dir).code, 0);
  ASSERT_EQ(connex_cli("prune run --fraction 0.1 --out net.ckpt", dir).code, 0);
  const auto before = names_in(dir.path), run_files = names_in(dir / "run");
  const std::string run_model = slurp(dir / "run/model.ckpt"), ckpt = slurp(dir / "net.ckpt"),
                    config = slurp(dir / "net.json"), data = slurp(dir / "d.csv");
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"export net.ckpt --format dot --out net.ckpt", "export: --out net.ckpt is the file it reads"},
           {"export net.json --format json --out ./net.json", "export: --out ./net.json is the file it reads"},
           {"edit net.json --add-hidden 7 --out net.json", "edit: --out net.json is the file it reads"},
           {"export run --format dot --out run/model.ckpt",
            "export: --out run/model.ckpt is the model.ckpt of the run directory run"},
           {"prune run --fraction 0.5 --out run/model.ckpt",
            "prune: --out run/model.ckpt is the model.ckpt of the run directory run; a run's files are rewritten "
            "together, by train --out only: write elsewhere"},
           {"prune run/model.ckpt --fraction 0.5 --out run/model.ckpt",
            "prune: --out run/model.ckpt is the model.ckpt of the run directory run"},
           {"export run/model.ckpt --format dot --out run/config.json",
            "export: --out run/config.json is the config.json of the run directory run"},
           {"prune net.ckpt --fraction 0.5 --out run/metrics.csv",
            "prune: --out run/metrics.csv is the metrics.csv of the run directory run"},
           {"edit run --add-hidden 7 --out run/model.ckpt",
            "edit: --out run/model.ckpt is the model.ckpt of the run directory run"},
           {"prune run --fraction 0.5 --out run", "prune: --out run is a directory; give the path of the file"},
           {"prune run --fraction 0.5 --out nodir/p.ckpt",
            "prune: cannot write nodir/p.ckpt: its directory nodir does not exist"},
           {"edit run --add-hidden 7 --out net.json/p.ckpt",
            "edit: cannot write net.json/p.ckpt: net.json is not a directory"},
           {"train net.json --data d.csv --epochs 1 --out run",
            "train: --out run holds another run (metrics.csv, metrics.json, config.json, model.ckpt); resume it with "
            "connex train run --out run, write elsewhere, or pass --overwrite to replace it"},
           {"train net.ckpt --data d.csv --epochs 1 --out ./run", "train: --out ./run holds another run"},
           // A file of another kind than the command writes.
           {"predict run --data d.csv --out net.ckpt",
            "predict: --out net.ckpt is a network checkpoint; write the predictions elsewhere"},
           {"export run --format dot --out net.ckpt",
            "export: --out net.ckpt is a network checkpoint; write the export elsewhere"},
           {"predict run --data d.csv --out net.json",
            "predict: --out net.json holds JSON, not predictions; write them elsewhere, or remove that file first"},
           {"prune run --fraction 0.1 --out net.json",
            "prune: --out net.json exists and is not a network checkpoint (text or JSON); write the checkpoint "
            "elsewhere, or remove that file first"},
           {"edit run --add-hidden 7 --out d.csv",
            "edit: --out d.csv exists and is not a network checkpoint (text or JSON)"}}) {
    SCOPED_TRACE(args);
    auto r = connex_cli(args, dir);
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_EQ(lines(r.err), 1u) << r.err;
    EXPECT_EQ(r.out.find("cores:"), std::string::npos) << r.out;  // refused before any work is set up
    EXPECT_EQ(names_in(dir.path), before);
    EXPECT_EQ(names_in(dir / "run"), run_files);
    EXPECT_EQ(slurp(dir / "run/model.ckpt"), run_model);
    EXPECT_EQ(slurp(dir / "net.ckpt"), ckpt);
    EXPECT_EQ(slurp(dir / "net.json"), config);
    EXPECT_EQ(slurp(dir / "d.csv"), data);
  }
  // Predictions replace earlier predictions.
  ASSERT_EQ(connex_cli("predict run --data d.csv --out p.csv", dir).code, 0);
  auto r = connex_cli("predict run --data d.csv --out p.csv", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  // A checkpoint file pruned in place, as asked.
  r = connex_cli("prune net.ckpt --fraction 0.5 --out net.ckpt", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(slurp(dir / "net.ckpt"), ckpt);
  // Beside a run's files, an export is fine.
  EXPECT_EQ(connex_cli("export run --format dot --out run/net.dot", dir).code, 0);
  // The run resumed in place, named either way, needs no flag; another run's
  // network replaces it only with --overwrite.
  EXPECT_EQ(connex_cli("train run --epochs 1 --out run", dir).code, 0);
  EXPECT_EQ(connex_cli("train run/model.ckpt --epochs 1 --out run/", dir).code, 0);
  r = connex_cli("train net.ckpt --data d.csv --epochs 1 --out run --overwrite", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(slurp(dir / "run/model.ckpt"), run_model);
}

// A checkpoint reached through a symlink is replaced where the link points:
// the link stays (an atomic rename over it used to put a plain file there).
TEST(CliHardeningFiles, EditingThroughASymlinkKeepsTheLink) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  fs::create_directories(dir / "store");
  ASSERT_EQ(connex_cli("edit net.json --add-hidden 100 --out store/net.ckpt", dir).code, 0);
  fs::create_symlink("store/net.ckpt", dir / "link.ckpt");
  const std::string before = slurp(dir / "store/net.ckpt");
  auto r = connex_cli("edit link.ckpt --add-hidden 101 --out link.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(dir / "link.ckpt"));
  EXPECT_NE(slurp(dir / "store/net.ckpt"), before);
  EXPECT_EQ(names_in(dir / "store"), (std::vector<std::string>{"net.ckpt"}));
  // A dangling link: its target is created, the link stays.
  fs::create_symlink("store/new.ckpt", dir / "dangling.ckpt");
  r = connex_cli("edit net.json --add-hidden 102 --out dangling.ckpt", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(dir / "dangling.ckpt"));
  EXPECT_TRUE(fs::is_regular_file(dir / "store/new.ckpt"));
  // A link to a run's model.ckpt is that file: refused as the run's own.
  write_regression_csv(dir / "d.csv", 16);
  ASSERT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out run", dir).code, 0);
  fs::create_symlink("run/model.ckpt", dir / "alias.ckpt");
  const std::string run_model = slurp(dir / "run/model.ckpt");
  r = connex_cli("edit net.json --add-hidden 103 --out alias.ckpt", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("edit: --out alias.ckpt is the model.ckpt of the run directory"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir / "run/model.ckpt"), run_model);
  EXPECT_TRUE(fs::is_symlink(dir / "alias.ckpt"));
}

// Files of a run that stopped before its model.ckpt: no run to resume, so
// the refusal offers only --overwrite or another directory.
TEST(CliHardeningFiles, TrainOverARunWithoutItsCheckpointSaysSo) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  write_regression_csv(dir / "d.csv", 16);
  fs::create_directories(dir / "half");
  spit(dir / "half/metrics.csv", "epoch,loss\n");
  auto r = connex_cli("train net.json --data d.csv --epochs 1 --out half", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err,
            "connex: train: --out half holds files a run writes (metrics.csv) but no model.ckpt; write elsewhere, or "
            "pass --overwrite to replace them\n");
  EXPECT_EQ(slurp(dir / "half/metrics.csv"), "epoch,loss\n");
  EXPECT_EQ(connex_cli("train net.json --data d.csv --epochs 1 --out half --overwrite", dir).code, 0);
}

// connex --threads N bench runs the benchmark on N cores unless its own
// options say otherwise (a workload name that matches none: no work).
TEST(CliHardeningFiles, BenchTakesConnexsThreads) {
  TempDir dir;
  auto r = connex_cli("--threads 1 bench --only no-such-workload", dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connex_bench: 1 core(s)"), std::string::npos) << r.out;
  r = connex_cli("--threads 1 bench --threads 2 --only no-such-workload", dir);
  EXPECT_NE(r.out.find("connex_bench: 2 core(s)"), std::string::npos) << r.out;
}

TEST(CliHardeningFiles, AnOutputInAMissingDirectoryNamesTheDirectory) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  auto r = connex_cli("export net.json --format json --out nodir/g.json", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: export: cannot write nodir/g.json: its directory nodir does not exist\n");
  r = connex_cli("export net.json --format png --out nodir/g.png", dir);
  EXPECT_EQ(r.err, "connex: export: cannot write nodir/g.png: its directory nodir does not exist\n");
  EXPECT_EQ(names_in(dir.path), (std::vector<std::string>{"net.json"}));
}

// What export --format json writes, the other commands read back; --threads
// may follow the command; a misspelt prebuilt kind is named as such; a CSV
// whose first line is not its header (sklearn's "rows,features,classes")
// is told by its first row's width, not by the network's inputs.
TEST(CliHardeningFiles, NewUsersCommonSlipsGetTheRightAnswer) {
  TempDir dir;
  spit(dir / "net.json", kMlp21);
  ASSERT_EQ(connex_cli("export net.json --format json --out g.json", dir).code, 0);
  auto r = connex_cli("inspect g.json --threads 1", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("connections: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("level connections: "), std::string::npos) << r.out;
  // networkx 3.4 on names the links "edges": read as well.
  std::string graph = slurp(dir / "g.json");
  graph.replace(graph.find("\"links\""), 7, "\"edges\"");
  spit(dir / "g34.json", graph);
  const auto links = connex_cli("inspect g.json", dir).out;
  EXPECT_EQ(connex_cli("inspect g34.json", dir).out, links);
  spit(dir / "sparse.json",
       R"({"graph": {"prebuilt": "SparseMLP", "input_size": 2, "output_size": 1, "width": 8, "depth": 1,
                     "density": 0.01}})");
  r = connex_cli("inspect sparse.json", dir);
  EXPECT_NE((r.out + r.err)
                .find("sparse.json: a sparse layered network of 16 connections; 0.01 asked for 0, raised so that "
                      "every hidden neuron starts with inputs and outputs and every output with inputs"),
            std::string::npos)
      << r.out + r.err;
  spit(dir / "typo.json",
       R"({"graph": {"prebuilt": "SparseMlp", "input_size": 2, "output_size": 1, "width": 4, "depth": 1,
                     "density": 0.5}})");
  r = connex_cli("inspect typo.json", dir);
  EXPECT_EQ(r.err,
            "connex: typo.json: /graph/prebuilt must be \"MLP\", \"DenseMLP\" or \"SparseMLP\", got \"SparseMlp\"\n");
  spit(dir / "sk.csv", "3,2,class_0,class_1\n0.5,1.5,0\n1.0,2.0,1\n-1.0,0.0,0\n");
  r = connex_cli("train net.json --data sk.csv --task classification --epochs 1", dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "connex: sk.csv:2: expected 4 columns, got 3\n");
}
