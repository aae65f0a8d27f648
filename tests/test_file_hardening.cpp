// Hostile files: temporaries that cannot be hijacked, reads that refuse what
// is not a regular file or is too large, JSON too deeply nested, and
// messages that never echo an unbounded value.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <filesystem>
#include <functional>
#include <set>

#include "file_io.h"
#include "test_util.h"

using namespace connex;
using namespace connex::testing;
using namespace connex::fault_injection;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

// Temporaries used to be PATH.tmp.PID.N, opened with O_CREAT|O_TRUNC: a
// symlink planted at the next name made the write go through it.
TEST(AtomicWrite, NeverWritesThroughASymlinkPlantedAtATemporaryName) {
  TempDir dir;
  const std::string path = dir / "out.json", victim = dir / "victim";
  spit(victim, "precious");
  // The name of the temporary the next write would use, as the failed open reports it.
  std::string message;
  set_write_fault(WriteStep::open_temp);
  try {
    write_file_atomically(path, "x", "test");
  } catch (const Error& e) {
    message = e.what();
  }
  set_write_fault(std::nullopt);
  const std::string prefix = path + ".tmp." + std::to_string(::getpid()) + ".";
  ASSERT_NE(message.find("test: cannot write " + path + ": creating the temporary " + prefix), std::string::npos)
      << message;
  const std::string suffix = message.substr(message.find(prefix) + prefix.size());
  const uint64_t last = std::strtoull(suffix.c_str(), nullptr, 10);  // a counter's value, if it is one
  std::vector<std::string> planted;
  for (uint64_t k = 0; k < 64; ++k) {
    for (uint64_t n : {k, last + 1 + k}) {
      const std::string name = prefix + std::to_string(n);
      if (!fs::is_symlink(name)) fs::create_symlink(victim, name), planted.push_back(name);
    }
  }
  write_file_atomically(path, "new bytes", "test");
  EXPECT_EQ(slurp(victim), "precious") << "the write went through a planted symlink";
  EXPECT_FALSE(fs::is_symlink(path));
  EXPECT_EQ(slurp(path), "new bytes");
  for (const auto& name : planted) EXPECT_TRUE(fs::is_symlink(name)) << name;
  EXPECT_EQ(names_in(dir.path).size(), planted.size() + 2) << "a temporary was left behind";
}

// A replaced file keeps its mode (a new file's would have been 0644 less the
// umask), and one its user may not write is refused as cp refuses it, left as
// it was (root may write anything, so that half runs for other users only).
TEST(AtomicWrite, AReplacedFileKeepsItsModeAndAReadOnlyOneIsRefused) {
  TempDir dir;
  const std::string path = dir / "kept.json";
  spit(path, "old");
  ::chmod(path.c_str(), 0600);
  write_file_atomically(path, "new", "test");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(slurp(path), "new");
  ::chmod(path.c_str(), 0444);
  if (::geteuid() == 0) GTEST_SKIP() << "root writes a read-only file";
  EXPECT_THROW_MSG(write_file_atomically(path, "newer", "test"), "test: cannot write " + path + ": Permission denied");
  EXPECT_EQ(slurp(path), "new");
  EXPECT_EQ(names_in(dir.path).size(), 1u);
}

TEST(AtomicWrite, TemporaryNamesAreUnpredictable) {
  TempDir dir;
  std::set<std::string> suffixes;
  set_write_fault(WriteStep::open_temp);
  for (int i = 0; i < 4; ++i) {
    try {
      write_file_atomically(dir / "f", "x", "test");
    } catch (const Error& e) {
      const std::string m = e.what();
      const std::string rest = m.substr(m.find(".tmp.") + 5);
      const std::string suffix = rest.substr(rest.find('.') + 1, 16);
      EXPECT_EQ(suffix.find_first_not_of("0123456789abcdef"), std::string::npos) << m;
      EXPECT_EQ(suffix.size(), 16u) << m;
      suffixes.insert(suffix);
    }
  }
  set_write_fault(std::nullopt);
  EXPECT_EQ(suffixes.size(), 4u);
}

TEST(PrivateDirectory, IsMadeExclusivelyAndRemovedWithItsFiles) {
  TempDir dir;
  std::string made;
  {
    const PrivateDirectory scratch(dir / "g.png", "test");
    made = scratch.path();
    EXPECT_EQ(made.rfind(dir / "g.png.tmp.", 0), 0u) << made;
    struct stat info {};
    ASSERT_EQ(::stat(made.c_str(), &info), 0);
    EXPECT_EQ(info.st_mode & 0777, 0700u);
    spit(scratch / "graph.dot", "digraph {}");
  }
  EXPECT_FALSE(fs::exists(made));
  EXPECT_TRUE(names_in(dir.path).empty());
  EXPECT_THROW_MSG(
      PrivateDirectory(dir / "missing/g.png", "export"),
      "export: cannot write " + (dir / "missing/g.png") + ": its directory " + (dir / "missing") + " does not exist");
  spit(dir / "afile", "x");
  EXPECT_THROW_MSG(write_file_atomically(dir / "afile/g.json", "{}", "export"),
                   "export: cannot write " + (dir / "afile/g.json") + ": " + (dir / "afile") + " is not a directory");
  EXPECT_EQ(slurp(dir / "afile"), "x");
}

TEST(Printable, EscapesControlBytesAndCutsLongValues) {
  EXPECT_EQ(printable("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(printable(std::string("x\0y", 3)), "x\\0y");
  EXPECT_EQ(printable("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(printable(std::string(1000, 'a')), std::string(80, 'a') + "…");
  EXPECT_EQ(printable("ab", 80), "ab");
  // Never half a UTF-8 character.
  EXPECT_EQ(printable("aé", 2), "a…");
  // Bytes that are not UTF-8 (Latin-1, a cut or overlong sequence) are escaped, UTF-8 text is kept,
  // and so are the characters that break a line: C1 controls (NEL) and the line and paragraph separators.
  EXPECT_EQ(printable("caf\xe9 é \xc0\xaf \xe2\x82"), "caf\\xe9 é \\xc0\\xaf \\xe2\\x82");
  EXPECT_EQ(printable("a\xc2\x85"
                      "b\xe2\x80\xa8"
                      "c\xe2\x80\xa9"
                      "d"),
            "a\\u0085b\\u2028c\\u2029d");
}

// ------------------------------------------------------------ nesting depth
//
// A value nested 100,000 deep crashed `connex inspect` (exit 139): nlohmann's
// dump() recursed once per level while the error message was built.

namespace {

std::string nested(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// `file`'s checkpoint with its header text changed by `edit` and sealed again
// (header length and checksum), without parsing the header.
std::string reseal_text(const std::string& file, const std::function<std::string(std::string)>& edit) {
  uint64_t header_size = 0;
  std::memcpy(&header_size, file.data() + 12, 8);
  const std::string header = edit(file.substr(20, header_size));
  std::string out = file.substr(0, 12);
  const uint64_t size = header.size();
  out.append(reinterpret_cast<const char*>(&size), 8);
  out += header + file.substr(20 + header_size, file.size() - 8 - 20 - header_size);
  const uint64_t sum = fnv1a64(out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&sum), 8);
  return out;
}

}  // namespace

TEST(JsonDepth, ConfigNestedTooDeeplyIsRefusedAtParse) {
  TempDir dir;
  spit(dir / "deep.json",
       R"({"graph": {"edges": [[0, 1]], "inputs": [0], "outputs": [1]}, "options": {"seed": )" + nested(100000) + "}}");
  EXPECT_THROW_MSG(load_config(dir / "deep.json"),
                   "load_config(): " + (dir / "deep.json") + " nests JSON deeper than 256 levels (at byte 336)");
  // 256 levels are still JSON connex reads (and then refuses as a seed).
  spit(dir / "ok.json",
       R"({"graph": {"edges": [[0, 1]], "inputs": [0], "outputs": [1]}, "options": {"seed": )" + nested(254) + "}}");
  EXPECT_THROW_MSG(load_config(dir / "ok.json"),
                   "/options/seed must be a non-negative integer, got [[[[[[[[[…]]]]]]]]]");
  // Brackets inside strings are not nesting.
  spit(dir / "str.json",
       R"({"graph": {"edges": [["a", "b"]], "inputs": ["a"], "outputs": ["b"]}, "options": {"hidden_activation": ")" +
           std::string(1000, '[') + "\"}}");
  EXPECT_THROW_MSG(load_config(dir / "str.json"), "/options/hidden_activation");
}

TEST(JsonDepth, GraphJsonNestedTooDeeplyIsRefusedAtParse) {
  TempDir dir;
  spit(dir / "g.json", R"({"directed": true, "nodes": )" + nested(300) + "}");
  EXPECT_THROW_MSG(import_graph_json(dir / "g.json"),
                   "import_graph_json(): " + (dir / "g.json") + " nests JSON deeper than 256 levels (at byte 283)");
}

TEST(JsonDepth, CheckpointWithADeepTensorEntryIsRefusedAtParse) {
  TempDir dir;
  save(NeuralNetwork(readme_spec()), dir / "good.ckpt");
  const std::string bad = reseal_text(slurp(dir / "good.ckpt"), [](std::string header) {
    const size_t at = header.find("\"tensors\":[");
    return header.insert(at + 11, nested(100000) + ",");
  });
  EXPECT_THROW_MSG(parse_checkpoint(bad, "deep.ckpt"),
                   "parse_checkpoint(): deep.ckpt's header nests JSON deeper than 256 levels (at byte");
}

// Programs build JSON too: a message about a deep or huge value is cut.
TEST(JsonDepth, MessagesShowAnExcerptOfADeepOrHugeValue) {
  nlohmann::json deep = 1;
  for (int i = 0; i < 100000; ++i) {
    nlohmann::json a = nlohmann::json::array();
    a.push_back(std::move(deep));
    deep = std::move(a);
  }
  nlohmann::json config = nlohmann::json::parse(R"({"graph": {"edges": [[0, 1]], "inputs": [0], "outputs": [1]}})");
  config["options"]["seed"] = std::move(deep);
  EXPECT_THROW_MSG(network_from_config(config, "mine"),
                   "mine: /options/seed must be a non-negative integer, got [[[[[[[[[…]]]]]]]]]");
  config["options"]["seed"] = std::string(20000000, 'x');
  try {
    network_from_config(config, "mine");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "mine: /options/seed must be a non-negative integer, got \"" + std::string(79, 'x') + "…");
  }
  config["options"]["seed"] = std::vector<int>(1000000, 7);
  EXPECT_THROW_MSG(network_from_config(config, "mine"), "got [7,7,7,7,");
}

// ------------------------------------------------------------------ hangs

TEST(ReadFile, RefusesWhatIsNotARegularFile) {
  TempDir dir;
  // /dev/zero was read until memory ran out; a FIFO blocked forever (tests/test_cli_hardening_files.cpp).
  EXPECT_THROW_MSG(read_file("/dev/null", "load()"), "load(): /dev/null is a character device, not a regular file");
  EXPECT_THROW_MSG(load_config("/dev/null"), "load_config(): /dev/null is a character device, not a regular file");
  EXPECT_THROW_MSG(read_csv(dir.path), "read_csv(): " + dir.path + " is a directory, not a regular file");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  EXPECT_THROW_MSG(load_config(dir / "fifo"), "load_config(): " + (dir / "fifo") + " is a FIFO, not a regular file");
  EXPECT_THROW_MSG(read_file(dir / "missing", "load()"),
                   "load(): cannot open " + (dir / "missing") + ": No such file or directory");
}

TEST(ReadFile, RefusesAFileLargerThanItsBound) {
  TempDir dir;
  spit(dir / "f", "0123456789A");
  EXPECT_THROW_MSG(read_file(dir / "f", "test", 10),
                   "test: " + (dir / "f") + " is 11 bytes, more than the 10 connex reads");
  EXPECT_EQ(read_file(dir / "f", "test", 11), "0123456789A");
  EXPECT_EQ(read_file(dir / "f", "test"), "0123456789A");
}

// A depth near int64's maximum ran the counting loop for hours before the
// size limit was checked; sizes under the limit gave std::bad_alloc.
TEST(PrebuiltSizes, AreCheckedByArithmeticBeforeAnyLoopOrAllocation) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW_MSG(nn::mlp_spec(1, 1, 1, std::numeric_limits<int64_t>::max() / 2), "MLP(): 4.61e+18 neurons");
  EXPECT_THROW_MSG(nn::dense_mlp_spec(1, 1, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max()),
                   "more than connex builds");
  EXPECT_THROW_MSG(network_from_config(nlohmann::json::parse(R"({"graph": {"prebuilt": "DenseMLP", "input_size": 1,
                       "output_size": 1, "width": 1, "depth": 9223372036854775807}})"),
                                       "big.json"),
                   "big.json: /graph: DenseMLP(): 9.22e+18 neurons");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  // Under the count limit, memory decides: 1.9e9 connections need hundreds of GB.
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (memory > 400e9) GTEST_SKIP() << "this machine could build it";
  EXPECT_THROW_MSG(nn::mlp_spec(1, 1, 30800, 3),
                   "MLP(): 9.24e+04 neurons and 1.9e+09 connections need about 486 GB of memory to build");
}

// A chain is a level per neuron, whose tables cost more than a wide layer's
// neurons: depth 3e7 at width 1 passed the check on a 24 GB machine and
// would have needed ~40 GB. Now ~1.8 KB a neuron is counted.
TEST(PrebuiltSizes, AChainCountsItsLevels) {
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (memory > 50e9) GTEST_SKIP() << "this machine could build it";
  EXPECT_THROW_MSG(nn::mlp_spec(1, 1, 1, 30000000),
                   "MLP(): 3e+07 neurons and 3e+07 connections need about 53.8 GB of memory to build");
}

// The duplicate check compared each header name with every earlier one: 10^5 columns took 14 s.
TEST(CsvHeader, WideHeaderIsCheckedInLinearTime) {
  std::string header;
  for (int j = 0; j < 200000; ++j) header += "c" + std::to_string(j) + ",";
  const std::string text = header + "c7\n";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW_MSG(parse_csv(text, "wide.csv"), "wide.csv:1: the header names column \"c7\" twice");
  std::string row;
  for (int j = 0; j < 200000; ++j) row += "1,";
  std::vector<std::string> all_text;  // every column kept as text: looked up by name, each once
  for (int j = 0; j < 200000; ++j) all_text.push_back("c" + std::to_string(j));
  EXPECT_EQ(parse_csv(header + "y\n" + row + "2\n", "wide.csv", all_text).columns.size(), 200001u);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

// ------------------------------------------------------------------- CSV

TEST(CsvQuoting, QuotedCellsFollowRfc4180) {
  const auto t =
      parse_csv("a,\"b, the second\",name\n\"1.5\", \"2\" ,\"Smith, J.\"\n3,4,\"say \"\"hi\"\"\nthen\"\n5,6,x\n",
                "q.csv", {"name"});
  EXPECT_EQ(t.columns, (std::vector<std::string>{"a", "b, the second", "name"}));
  ASSERT_EQ(t.rows.size(), 3u);
  EXPECT_EQ(t.rows[0][0], 1.5);
  EXPECT_EQ(t.rows[0][1], 2.0);
  EXPECT_EQ(t.text[2], (std::vector<std::string>{"Smith, J.", "say \"hi\"\nthen", "x"}));
  EXPECT_EQ(t.row_lines, (std::vector<int64_t>{2, 3, 5}));  // a line break inside a cell still counts
  EXPECT_THROW_MSG(
      parse_csv("a,y\n\"1,5\",2\n", "q.csv"),
      "q.csv:2: column 1 (\"a\"): \"1,5\" is not a number (write decimals with a point: connex reads 1.5, not 1,5)");
  EXPECT_THROW_MSG(parse_csv("a,y\n1,\"2\n3,4\n", "q.csv"), "q.csv:2: column 2: the quoted cell is never closed");
  EXPECT_THROW_MSG(parse_csv("a,y\n1,\"2\"x\n", "q.csv"),
                   "q.csv:2: column 2: text after the closing quote of a quoted cell");
}

TEST(CsvLines, CarriageReturnOnlyAndCrLfLineEnds) {
  const auto cr = parse_csv("a,y\r1,2\r3,4\r", "cr.csv");
  EXPECT_EQ(cr.rows.size(), 2u);
  EXPECT_EQ(cr.row_lines, (std::vector<int64_t>{2, 3}));
  const auto crlf = parse_csv("a,y\r\n1,2\r\n\r\n3,4\r\n", "crlf.csv");
  EXPECT_EQ(crlf.rows.size(), 2u);
  EXPECT_EQ(crlf.row_lines, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(crlf.columns, (std::vector<std::string>{"a", "y"}));
}

TEST(CsvMessages, ControlBytesAreEscapedAndLongCellsCut) {
  try {
    parse_csv(std::string("a,y\n1\0x,2\n", 10), "nul.csv");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "nul.csv:2: column 1 (\"a\"): \"1\\0x\" is not a number");
  }
  // A 10 MB cell used to be echoed whole.
  try {
    parse_csv("a,y\n" + std::string(10000000, '7') + "x,2\n", "big.csv");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "big.csv:2: column 1 (\"a\"): \"" + std::string(80, '7') + "…\" is not a number");
  }
}

TEST(CsvMessages, WideHeadersAreListedShort) {
  std::string header, row;
  for (int j = 0; j < 1000; ++j) header += "c" + std::to_string(j) + ",", row += "1,";
  const auto csv = parse_csv(header + "y\n" + row + "2\n", "wide.csv");
  EXPECT_THROW_MSG(table_from_csv(csv, nn::MLP(2, 1, 4, 1)),
                   "wide.csv: 1000 feature columns (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, … (1000 in all)) but the "
                   "network has 2 inputs");
}

// A finite 1e308 overflowed the loss, and training blamed the learning rate.
TEST(CsvValues, CellsTooLargeToTrainOnAreNamed) {
  const auto csv = parse_csv("x1,x2,y\n0,1,2\n1e308,1,2\n", "big.csv");
  EXPECT_THROW_MSG(
      table_from_csv(csv, nn::MLP(2, 1, 4, 1)),
      "big.csv:3: column 1 (\"x1\"): 1e+308 is too large to train on in Float (|value| must stay below 1.8e+19");
  EXPECT_THROW_MSG(
      table_from_csv(csv, nn::MLP(2, 1, 4, 1, NeuralNetworkOptions().dtype(torch::kFloat64))),
      "big.csv:3: column 1 (\"x1\"): 1e+308 is too large to train on in Double (|value| must stay below 1.3e+154");
  EXPECT_THROW_MSG(table_from_csv(csv, nn::MLP(2, 1, 4, 1), TableOptions().standardize(true)),
                   "1e+308 is too large to standardize");
  const auto target = parse_csv("x1,x2,y\n0,1,2e20\n", "t.csv");
  EXPECT_THROW_MSG(table_from_csv(target, nn::MLP(2, 1, 4, 1)),
                   "t.csv:2: column 3 (\"y\"): 2e+20 is too large to train on in Float");
  EXPECT_NO_THROW(table_from_csv(parse_csv("x1,x2,y\n0,1e18,2\n", "ok.csv"), nn::MLP(2, 1, 4, 1)));
}

// Prediction squares nothing: it refused 1e20 in a float32 network "so that
// squared errors stay finite". Its cells need only be in the dtype's range,
// before standardization (raw) and after it (what the network reads).
TEST(CsvValues, PredictionReadsCellsUpToTheDtypesRange) {
  const auto net = nn::MLP(2, 1, 4, 1);
  const auto csv = parse_csv("x1,x2\n0,1\n1e20,-3e38\n", "p.csv");
  const auto x = read_inputs(csv, net);
  ASSERT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_FLOAT_EQ(x[1][0].item<float>(), 1e20f);
  EXPECT_FLOAT_EQ(x[1][1].item<float>(), -3e38f);
  EXPECT_THROW_MSG(read_inputs(parse_csv("x1,x2\n0,1\n1,4e38\n", "q.csv"), net),
                   "q.csv:3: column 2 (\"x2\"): 4e+38 is too large for Float (|value| must stay below 3.4e+38); "
                   "rescale the column");
  Preprocessing fitted;
  fitted.features = {"x1", "x2"};
  fitted.targets = {"y"};
  fitted.mean = {0.0, 1.0};
  fitted.scale = {1e-3, 2.0};
  const auto scaled = read_inputs(parse_csv("x1,x2\n2,5\n", "s.csv"), net, fitted);
  EXPECT_FLOAT_EQ(scaled[0][0].item<float>(), 2000.0f);
  EXPECT_FLOAT_EQ(scaled[0][1].item<float>(), 2.0f);
  // 1e36 is within float32, its standardized 1e39 is not.
  EXPECT_THROW_MSG(read_inputs(parse_csv("x1,x2\n0,1\n1e36,1\n", "s.csv"), net, fitted),
                   "s.csv:3: column 1 (\"x1\"): 1e+36 standardizes to 1e+39, beyond the range of Float (|value| "
                   "below 3.4e+38)");
  // In float64 the same standardized value is fine.
  const auto net64 = nn::MLP(2, 1, 4, 1, NeuralNetworkOptions().dtype(torch::kFloat64));
  EXPECT_DOUBLE_EQ(read_inputs(parse_csv("x1,x2\n1e36,1\n", "s.csv"), net64, fitted)[0][0].item<double>(), 1e39);
}
