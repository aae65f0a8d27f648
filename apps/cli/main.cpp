// connex: the command line. Subcommands train, prune, edit, export, inspect,
// predict and bench; every failure is one line on stderr and a non-zero exit, and
// files are only ever written whole (temporary file + rename).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <fmt/ranges.h>

#include "connex/ham/checkpoint.h"
#include "connex/openblas.h"
#include "tensor_file.h"
#include "decimal.h"
#include "dtype.h"
#include "enum_names.h"
#include "file_io.h"
#include "json_input.h"
#include "prebuilt_size.h"
#include "../core_share.h"
#include "launcher.h"
#include "../examples.h"
#include "training.h"
#include "utf8.h"

namespace fs = std::filesystem;
using namespace connex;
using namespace connex::cli;
using connex::detail::has_magic;
using connex::detail::kHamMagic;
using connex::detail::kNetworkMagic;

namespace {

// The log's "%*": "warning: " before a warning or an error, so that it
// stands out among the per-epoch lines; nothing before other lines.
class WarningMark : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    if (msg.level < spdlog::level::warn) return;
    const std::string_view mark = msg.level == spdlog::level::warn ? "warning: " : "error: ";
    dest.append(mark.data(), mark.data() + mark.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<WarningMark>(); }
};

// --scope's and --prune-scope's names: the library's.
std::vector<std::string> prune_scope_choices() {
  std::vector<std::string> names;
  for (PruneScope scope : kPruneScopes) names.push_back(prune_scope_name(scope));
  return names;
}

// --rewire's names: the library's methods, and none.
std::vector<std::string> rewire_choices() {
  std::vector<std::string> names;
  for (RewireMethod method : kRewireMethods) names.push_back(rewire_method_name(method));
  names.push_back("none");
  return names;
}

// The first `n` bytes of a regular file ("" when it is empty); nullopt for
// anything else (a FIFO would block the read) or a file that cannot be read.
std::optional<std::string> file_head(const std::string& path, size_t n) {
  std::error_code ignored;
  if (!fs::is_regular_file(path, ignored)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return head;
}

// What a file holds by its first bytes, for messages: one of the kinds
// connex reads or writes that is no JSON config, or "" for anything else.
std::string kind_of_head(const std::string& head) {
  return head.empty()                                                    ? "an empty file"
         : has_magic(head, kNetworkMagic)                                ? "a network checkpoint"
         : has_magic(head, kHamMagic)                                    ? "a HAM checkpoint (connex/ham's ham::load)"
         : head.rfind("PK\x03\x04", 0) == 0                              ? "a zip archive (a TorchScript export?)"
         : head.rfind("\x89PNG", 0) == 0                                 ? "a PNG image"
         : head.rfind("<?xml", 0) == 0 || head.rfind("<graphml", 0) == 0 ? "GraphML"
         : head.rfind("digraph", 0) == 0 || head.rfind("strict digraph", 0) == 0 ? "a Graphviz DOT file"
                                                                                 : "";
}

// Where a head's first character lies past a UTF-8 byte-order mark and blanks (npos: none).
size_t first_character(const std::string& head) {
  return head.find_first_not_of(" \t\r\n", head.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0);
}

bool is_checkpoint(const std::string& path) {
  const auto head = file_head(path, 8);
  return head && has_magic(*head, kNetworkMagic);
}

// What a file holds, by its first bytes (`head`), where connex wrote it and
// it holds no network to read back (named here, rather than left to the
// JSON parser's or the checkpoint loader's complaint), or "" for anything
// that may hold one.
std::string kind_without_network(const std::string& head) {
  if (has_magic(head, kNetworkMagic)) return "";
  std::string kind = kind_of_head(head);
  // Any other file whose first character starts no JSON value holds no network; a JSON value
  // other than an object is left to the config reader, which says what it expects.
  const size_t first = first_character(head);
  const std::string json_starts = "{[\"-0123456789tfn";
  if (kind.empty() && first != std::string::npos && json_starts.find(head[first]) == std::string::npos)
    kind = "neither a connex checkpoint nor JSON";
  return kind;
}

// Refuses a file kind_without_network() names, saying what it is. A FIFO
// (no head) is left to the JSON reader, which refuses it without blocking.
void refuse_without_network(const std::string& path) {
  const auto head = file_head(path, 16);
  if (!head) return;
  if (const std::string kind = kind_without_network(*head); !kind.empty())
    fail("{} is {}; connex reads a network from a checkpoint, a JSON config or a node-link JSON export{}", path, kind,
         has_magic(*head, kHamMagic) ? " (connex inspect describes a HAM checkpoint)" : "");
}

// A SparseMLP `graph` (a config's, valid) built as `net`: where the floor
// of one connection into every hidden and output neuron and out of every
// hidden one raised its density's count, "; D asked for N, raised ...", else "".
std::string sparse_floor_note(const NeuralNetwork& net, const nlohmann::json& graph) {
  const double density = graph.value("density", nn::SparseLayersOptions().density());
  const auto dense = nn::layered_size(graph.at("input_size").get<double>(), graph.at("output_size").get<double>(),
                                      graph.at("width").get<double>(), graph.at("depth").get<double>(), false);
  const auto asked = static_cast<int64_t>(std::llround(density * dense.connections));
  if (net->num_connections() <= asked + graph.at("depth").get<int64_t>() + 1) return "";  // rounding per layer pair
  return fmt::format(
      "; {} asked for {}, raised so that every hidden neuron starts with inputs and outputs and every output with "
      "inputs",
      density, asked);
}

// A network file's JSON document (a config or a node-link graph: which is
// not known yet, so its errors name the file, not a library function).
nlohmann::json read_json_file(const std::string& path) {
  return connex::detail::parse_json(read_file(path, "network file"), path);
}

// What open_network() read a network from.
enum class NetworkFile {
  Trained,      // a checkpoint, or a train --out directory's model.ckpt
  Config,       // a JSON config (or, for an empty path, the embedded README one): initial weights
  GraphExport,  // the node-link JSON export writes: trained weights, no preprocessing
};

// A JSON file: a network config, or the node-link graph export --format json writes.
NeuralNetwork network_from_json_file(const std::string& path, NetworkFile& kind) {
  const auto doc = read_json_file(path);
  kind = connex::detail::is_node_link_graph(doc) ? NetworkFile::GraphExport : NetworkFile::Config;
  if (kind == NetworkFile::GraphExport) return from_node_link_json(doc, path);
  NeuralNetwork net = network_from_config(doc, path);
  const auto& graph = doc.at("graph");
  if (graph.contains("prebuilt") && graph.at("prebuilt") == "SparseMLP")
    if (const std::string note = sparse_floor_note(net, graph); !note.empty())
      spdlog::info("{}: a sparse layered network of {} connections{}", path, net->num_connections(), note);
  return net;
}

// A checkpoint, a JSON config or a node-link graph; empty path: the embedded
// README network. `source`, when given, receives which it was.
Checkpoint open_network(const std::string& path, NetworkFile* source = nullptr) {
  NetworkFile unasked;
  if (!source) source = &unasked;
  *source = NetworkFile::Trained;
  if (path.empty()) {
    *source = NetworkFile::Config;
    return {network_from_config(nlohmann::json::parse(apps::kReadmeConfig), "embedded README config"), std::nullopt};
  }
  require_file(path);
  if (fs::is_directory(path)) {  // a training run's --out
    const std::string model = (fs::path(path) / "model.ckpt").string();
    if (!fs::exists(model))
      fail("{}: a directory without model.ckpt; give a checkpoint or config file, or a train --out directory", path);
    refuse_without_network(model);
    Checkpoint ck = load_checkpoint(model);
    const int epoch = ck.training.is_null() ? 0 : Progress::from_json(ck.training, model).epoch;
    for (const auto& file : run_files_out_of_step(path, ck))
      spdlog::warn(
          "{}: {} does not go with model.ckpt (epoch {}): a write stopped before model.ckpt; model.ckpt is the "
          "record, and train --out {} rewrites them all",
          path, file, epoch, path);
    return ck;
  }
  if (is_checkpoint(path)) return load_checkpoint(path);
  refuse_without_network(path);
  return {network_from_json_file(path, *source), std::nullopt};
}

// Up front, before any work: `command`'s --out (when given) must name a
// file in an existing directory; never one of the files of a run directory
// (one holding model.ckpt: train --out alone rewrites a run, all its files
// together); and not the file `in` it reads, unless that is a checkpoint
// file the command may replace (prune, edit: the write is atomic). Export
// would put a drawing where the network was, edit a checkpoint in place of
// a hand-written config.
void check_out(const std::string& command, const std::string& in, const std::string& out, bool may_replace_checkpoint) {
  if (out.empty()) return;
  std::error_code ec;
  if (fs::is_directory(out, ec)) fail("{}: --out {} is a directory; give the path of the file to write", command, out);
  // A FIFO, device or socket would be replaced by a file (writes are atomic
  // renames), and what reads it would get nothing.
  const auto type = fs::status(out, ec).type();
  if (type == fs::file_type::fifo || type == fs::file_type::character || type == fs::file_type::block ||
      type == fs::file_type::socket)
    fail("{}: --out {} is {}, not a regular file; give the path of a file to write{}", command, out,
         type == fs::file_type::fifo     ? "a pipe or FIFO"
         : type == fs::file_type::socket ? "a socket"
                                         : "a device",
         command == "predict" ? ", or leave out --out to write to standard output" : "");
  const fs::path parent = fs::path(out).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    fail("{}: cannot write {}: {}", command, out,
         fs::exists(parent, ec) ? parent.string() + " is not a directory"
                                : "its directory " + parent.string() + " does not exist");
  // Where the write lands: through a symlink, the file it points to (the
  // library's atomic writes keep the link and replace its target).
  const fs::path lands = write_destination(out);
  const fs::path dir = lands.parent_path().empty() ? fs::path(".") : lands.parent_path();
  if (fs::exists(dir / "model.ckpt", ec))
    for (const char* name : kRunFiles)
      if (lands.filename() == name)
        fail(
            "{}: --out {} is the {} of the run directory {}; a run's files are rewritten together, by train --out "
            "only: write elsewhere",
            command, out, name, dir.string());
  check_replaceable(out, command.c_str());  // not after the work
  if (!in.empty() && fs::exists(out, ec) && fs::equivalent(in, out, ec) &&
      (!may_replace_checkpoint || !is_checkpoint(in)))
    fail("{}: --out {} is the file it reads; give another path", command, out);
}

// What a command writes to --out, for check_out_kind.
enum class Writes { Checkpoint, Predictions, Export };

// An existing file of another kind is not replaced: a slip in --out must
// not put predictions where a trained checkpoint was, or a checkpoint over
// a config. After check_out's checks (their messages say more).
void check_out_kind(const std::string& command, const std::string& out, Writes writes) {
  std::error_code ec;
  const fs::path lands = write_destination(out);
  if (out.empty() || !fs::exists(lands, ec)) return;
  const auto head = file_head(lands.string(), 16);
  if (!head) fail("{}: --out {} cannot be read to see what it holds; write elsewhere", command, out);
  if (head->empty()) return;
  const std::string kind = kind_of_head(*head);
  const bool checkpoint = has_magic(*head, kNetworkMagic) || has_magic(*head, kHamMagic);
  if (writes == Writes::Checkpoint && !has_magic(*head, kNetworkMagic))
    fail(
        "{}: --out {} exists and is not a network checkpoint ({}); write the checkpoint elsewhere, or remove that "
        "file first",
        command, out, kind.empty() ? "text or JSON" : kind);
  if (writes != Writes::Checkpoint && checkpoint)
    fail("{}: --out {} is {}; write the {} elsewhere", command, out, kind,
         writes == Writes::Predictions ? "predictions" : "export");
  if (writes != Writes::Predictions) return;
  // JSON (a config, an export) is told from a CSV of predictions by parsing it.
  const size_t first = first_character(*head);
  if (first == std::string::npos || ((*head)[first] != '{' && (*head)[first] != '[')) return;
  std::ifstream in(lands, std::ios::binary);
  if (head->rfind("\xEF\xBB\xBF", 0) == 0) in.ignore(3);
  if (nlohmann::json::accept(in))
    fail("{}: --out {} holds JSON, not predictions; write them elsewhere, or remove that file first", command, out);
}

NeuronId parse_id(const std::string& text, const NeuralNetwork& network, const std::string& what) {
  if (network->spec().id_kind() == NeuronId::Kind::String) return NeuronId(text);
  auto value = parse_integer(text);
  if (!value)
    fail(
        "{}: \"{}\" is not an integer neuron id (this network's ids are integers: decimal digits, no leading 0, "
        "within 64 bits)",
        what, printable(text));
  return NeuronId(*value);
}

// FROM:TO. String ids may hold colons themselves: the text splits at the
// one colon whose two sides both name neurons (`named`: the network's, or
// ones the same command adds); two such colons are refused as ambiguous.
// Where none does, the first colon with one side naming a neuron (else the
// first colon), so that the edit's error names the neuron truly missing.
Edge parse_edge(const std::string& text, const NeuralNetwork& network, const std::string& what,
                const std::function<bool(const NeuronId&)>& named) {
  size_t colon = text.find(':');
  if (colon == std::string::npos) fail("{}: \"{}\" is not of the form FROM:TO", what, text);
  if (network->spec().id_kind() == NeuronId::Kind::String && text.find(':', colon + 1) != std::string::npos) {
    std::vector<size_t> splits;
    size_t one_side = std::string::npos;  // the first colon with one side naming a neuron
    for (size_t c = colon; c != std::string::npos; c = text.find(':', c + 1)) {
      const bool from = named(NeuronId(text.substr(0, c))), to = named(NeuronId(text.substr(c + 1)));
      if (from && to) splits.push_back(c);
      if ((from || to) && one_side == std::string::npos) one_side = c;
    }
    if (splits.size() > 1)
      fail("{}: \"{}\" splits into two neurons at more than one colon (\"{}\" and \"{}\", \"{}\" and \"{}\")", what,
           text, text.substr(0, splits[0]), text.substr(splits[0] + 1), text.substr(0, splits[1]),
           text.substr(splits[1] + 1));
    if (splits.size() == 1)
      colon = splits[0];
    else if (one_side != std::string::npos)
      colon = one_side;
  }
  return {parse_id(text.substr(0, colon), network, what), parse_id(text.substr(colon + 1), network, what)};
}

// run_program's result for a program killed at its time limit.
constexpr int kTimedOut = -1;

// Runs a program found on PATH with these arguments, without a shell, its
// stdout discarded and its stderr written to `stderr_file`; its exit status,
// 127 when it is not found, or kTimedOut when it was still running after
// `limit` seconds (> 0) and was killed.
int run_program(const std::vector<std::string>& args, double limit, const std::string& stderr_file) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, stderr_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned == ENOENT) return 127;
  if (spawned != 0) fail("cannot run {}: {}", args[0], std::strerror(spawned));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit);
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, limit > 0 ? WNOHANG : 0);
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) return 127;
    if (done == pid) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return kTimedOut;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda") {
    if (!torch::cuda::is_available())
      fail("--device cuda: CUDA is not available (no GPU, or this LibTorch was built without CUDA)");
    return torch::kCUDA;
  }
  fail("--device must be cpu or cuda, got \"{}\"", name);
}

// A file or directory name: not empty (an unset shell variable would
// otherwise mean "the default network").
CLI::Validator path_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return text.empty() ? "expected a file name, got an empty string" : std::string();
      },
      "");
}

// With path_check(), for a path a run records in JSON (--data), which holds UTF-8 only.
CLI::Validator utf8_path_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (first_non_utf8(text) != std::string::npos)
          return fmt::format("expected a UTF-8 file name (runs record their paths in JSON), got \"{}\"",
                             printable(text));
        return std::string();
      },
      "");
}

// The network's own line, without the lines torch's printing adds for its submodules (techniques, activations).
std::string one_line(const NeuralNetwork& network) {
  std::ostringstream line;
  network->pretty_print(line);
  return line.str();
}

// One of `names`, in either case as the library reads them (the value
// becomes the name), said as number_in() says its range: CLI11's IsMember
// printed a set, and an empty value as nothing ("--scope:  not in {...}").
// A transform, not a check: CLI11 drops a check's change to the value.
CLI::Validator one_of(const std::vector<std::string>& names) {
  const std::string what = "one of " + listed(names, "or");
  return CLI::Validator(
      [names, what](std::string& text) -> std::string {
        std::string lower = text;
        std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
        for (const auto& name : names)
          if (lower == name) {
            text = name;
            return std::string();
          }
        return fmt::format("must be {}, got \"{}\"", what, text);
      },
      what);
}

// A flag given twice is refused as an option given twice is (CLI11 counts a repeated flag by default).
CLI::Option* add_flag_once(CLI::App* command, const std::string& name, bool& value, const std::string& help) {
  return command->add_flag(name, value, help)->multi_option_policy(CLI::MultiOptionPolicy::Throw);
}

struct DataArgs {
  std::string data;
  bool recorded = false;  // data is the checkpoint's CSV (resumed_data_args()), by default or named by --data
  bool changed = false;   // and that CSV changed since the checkpoint was written
  bool named = false;     // --data gave it (resumed_data_args())
  std::optional<std::string> task;
  std::vector<std::string> targets, features;
  bool standardize = false;
  void add_to(CLI::App* cmd) {
    cmd->add_option("--data", data,
                    "CSV file with a header row (default: the one a checkpoint was trained on, else built-in cos/sin "
                    "toy data)")
        ->check(path_check())
        ->check(utf8_path_check());
    cmd->add_option("--target", targets, "target column(s) (default: the checkpoint's, else the last column(s))");
    cmd->add_option("--features", features,
                    "feature columns (default: the checkpoint's, else every non-target column)");
    cmd->add_option(
           "--task", task,
           "regression (MSE) or classification (softmax + cross-entropy); default: the checkpoint's, else regression")
        ->transform(one_of({"regression", "classification"}));
    add_flag_once(cmd, "--standardize", standardize,
                  "z-score every feature column (training rows' statistics, saved with the model)");
  }
  DataOptions options(const NeuralNetwork& network, double val_split, uint64_t seed) const {
    DataOptions o;
    o.path = data;
    o.table.targets(targets).features(features).validation_fraction(val_split).seed(seed).dtype(
        network->weight_tensor().scalar_type());
    if (task) o.table.task(*task == "classification" ? Task::Classification : Task::Regression);
    if (standardize) o.table.standardize(true);  // unset without the flag: a checkpoint's preprocessing decides
    return o;
  }
};

// The checkpoint's task is the model's: --task may only repeat it. Checked
// as the network is opened, before anything is logged or read.
void check_task_flag(const DataArgs& d, const std::optional<Preprocessing>& fitted, const char* command) {
  if (!fitted || !d.task || *d.task == task_name(fitted->task)) return;
  fail("{}: --task {}: the model was trained for {}; leave --task out to use the checkpoint's", command, *d.task,
       task_name(fitted->task));
}

// Number checks for options. (CLI11's own range checks print the whole
// double range in their messages; these say what is wanted.)
// The largest value of an int flag; an int64_t flag's bound is 9e15 (below 2^53, exact in a double).
constexpr double kIntMax = std::numeric_limits<int>::max();

CLI::Validator number_in(double low, double high, bool integer, bool low_open = false, bool high_open = false) {
  std::string what = integer ? "an integer" : "a number";
  if (high == HUGE_VAL)
    what += low_open ? fmt::format(" > {}", low) : fmt::format(" >= {}", low);
  else
    what += fmt::format(" in {}{}, {}{}", low_open ? "(" : "[", low, high, high_open ? ")" : "]");
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        const auto number = connex::detail::read_decimal(text);
        const double v = number ? number->value : 0.0;
        const bool parsed = number && !number->overflow && std::isfinite(v);
        // An integer is its decimal digits: CLI11 converts no exponent or
        // fraction (1e3, 100.0) and reads a leading 0 as octal (010 is 8).
        const size_t first = text.find_first_not_of("+-");
        const bool digits = text.find_first_not_of("+-0123456789") == std::string::npos && first != std::string::npos &&
                            (text[first] != '0' || first + 1 == text.size());
        if (!parsed || (integer && v != std::floor(v)) || v < low || (low_open && v == low) || v > high ||
            (high_open && v == high))
          return fmt::format("must be {}, got \"{}\"", what, text);
        if (integer && !digits)
          return fmt::format("must be {} in decimal digits without a leading 0, got \"{}\"", what, text);
        return std::string();
      },
      what);
}

// A seed: a whole number in [0, 2^64), written in decimal digits (CLI11
// would wrap "-1" and saturate "1e20" or "2^64" silently).
CLI::Validator seed_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        // Decimal digits, no leading 0 (CLI11 would read 010 as octal 8).
        const bool digits = !text.empty() && text.size() <= 20 &&
                            text.find_first_not_of("0123456789") == std::string::npos &&
                            (text[0] != '0' || text.size() == 1);
        errno = 0;
        if (digits) std::strtoull(text.c_str(), nullptr, 10);
        if (!digits || errno == ERANGE)
          return fmt::format("must be an integer in [0, 18446744073709551615]{}, got \"{}\"",
                             text.size() > 1 && text[0] == '0' ? " without a leading 0" : "", text);
        return std::string();
      },
      "an integer in [0, 2^64)");
}

using connex::apps::CoreShare;

// The `cores:` line's end: which OpenBLAS kernels run ("" for another BLAS).
std::string blas_kernels_said() {
  const std::string said = describe(openblas_kernels());
  return said.empty() ? said : "; " + said;
}

struct TrainArgs {
  int epochs = 1000;
  // Unset: a resumed checkpoint's own, else 0 (full batch, no validation, seed 0).
  std::optional<int64_t> batch_size;
  std::optional<double> lr;
  std::optional<double> val_split;
  std::optional<std::string> optimizer;
  std::string device = "cpu";
  std::optional<uint64_t> seed;
  int checkpoint_every = 0;
  std::optional<int> prune_at_epoch;  // 0: no prune (cancels a resumed run's recorded one)
  double prune_fraction = 0.0;
  std::optional<std::string> prune_scope;  // train's --prune-at-epoch: as prune's --scope and --keep-min
  std::optional<int64_t> prune_keep_min;
  // Sparse training (train only): a new run's network at --density, and --rewire's settings (unset: the record's).
  std::optional<double> density;
  std::optional<std::string> init_density, rewire;
  std::optional<int64_t> rewire_every;
  std::optional<double> drop_fraction, rewire_end;
  bool overwrite = false;  // train only: --out may replace another run
  // --prune-at-epoch N without --prune-fraction: moves a resumed run's recorded prune to N.
  bool moves_prune() const { return prune_at_epoch.value_or(0) > 0 && !(prune_fraction > 0); }
  // recorded: whose settings are the defaults ("a resumed run's"); seeds: what --seed draws.
  void add_to(CLI::App* cmd, int default_epochs, const std::string& recorded, const std::string& seeds) {
    epochs = default_epochs;
    cmd->add_option("--epochs", epochs, "epochs")->check(number_in(0, kIntMax, true))->capture_default_str();
    cmd->add_option("--batch-size", batch_size, "mini-batch size (0: full batch; default: " + recorded + ", else 0)")
        ->check(number_in(0, 9.0e15, true));
    // Above 1e6 no optimizer does anything useful, and float32 state overflows near 3.4e38.
    cmd->add_option("--lr", lr, "learning rate (default: the checkpoint optimizer's, else 0.001)")
        ->check(number_in(0, 1e6, false, true));
    cmd->add_option("--optimizer", optimizer, describe_optimizer_choices() + "; default: the checkpoint's, else adam")
        ->transform(one_of(optimizer_choices()));
    cmd->add_option("--seed", seed, "seed for " + seeds + " (default: " + recorded + ", else 0)")->check(seed_check());
    cmd->add_option("--device", device, "where to train")->transform(one_of({"cpu", "cuda"}));
    cmd->add_option("--val-split", val_split,
                    "fraction of rows held out for validation (default: " + recorded + ", else 0)")
        ->check(number_in(0, 0.9, false));
  }
};

// The one rule for every command's optimizer: a checkpoint's optimizer goes
// on as saved (type, groups, options, state) unless --optimizer names another
// type, which starts fresh; --lr, when given, replaces every group's
// learning rate. Logs what it chose.
std::unique_ptr<torch::optim::Optimizer> choose_optimizer(const Checkpoint& ck, NeuralNetwork& net, const TrainArgs& t,
                                                          const std::string& path) {
  if (ck.optimizer && (!t.optimizer || *t.optimizer == ck.optimizer->type)) {
    auto optimizer = restore_optimizer(ck, path, net);
    const double saved = optimizer->param_groups()[0].options().get_lr();
    if (t.lr) {
      for (auto& group : optimizer->param_groups()) group.options().set_lr(*t.lr);
      spdlog::info("resumed {} state from {}; learning rate {} (--lr; the checkpoint had {})", ck.optimizer->type, path,
                   *t.lr, saved);
    } else {
      spdlog::info("resumed {} state from {}; learning rate {} (saved)", ck.optimizer->type, path, saved);
    }
    return optimizer;
  }
  const std::string type = t.optimizer.value_or("adam");
  const double lr = t.lr.value_or(1e-3);
  if (ck.optimizer)
    spdlog::info("{} holds {} state; starting {} fresh (--optimizer), learning rate {}", path, ck.optimizer->type, type,
                 lr);
  return fresh_optimizer(type, net, lr);
}

// Column names as the data line lists them: the first few and the last of many, with their count.
std::string columns_said(const std::vector<std::string>& names) {
  if (names.size() <= 8) return fmt::format("{}", fmt::join(names, ","));
  return fmt::format("{},...,{} ({})", fmt::join(names.begin(), names.begin() + 3, ","), names.back(), names.size());
}

// A checkpoint's preprocessing after an edit: a removed input takes its
// feature column (and statistics) along, the others keep theirs; each old
// output keeps its class (new outputs, which come last, have none) or its
// target column. A new input, or a new output of a regression, has no
// column: then the preprocessing is dropped, with a warning.
std::optional<Preprocessing> preprocessing_after_edit(const Checkpoint& ck, const NeuralNetwork& edited) {
  if (!ck.preprocessing) return std::nullopt;
  const Preprocessing& old = *ck.preprocessing;
  const auto& old_inputs = ck.network->input_neurons();
  const auto& old_outputs = ck.network->output_neurons();
  const bool inputs_kept = edited->input_neurons() == old_inputs;
  if (inputs_kept && edited->output_neurons() == old_outputs) return ck.preprocessing;
  Preprocessing kept = old;
  std::string why;
  if (!inputs_kept) {
    kept.features.clear();
    kept.mean.clear();
    kept.scale.clear();
    size_t k = 0;  // survivors keep their order, new inputs come first
    for (const auto& id : edited->input_neurons()) {
      const auto at = std::find(old_inputs.begin() + static_cast<std::ptrdiff_t>(k), old_inputs.end(), id);
      if (at == old_inputs.end()) {
        why = fmt::format("input {} is new and has no feature column", id);
        break;
      }
      k = static_cast<size_t>(at - old_inputs.begin());
      kept.features.push_back(old.features.at(k));
      if (old.standardizes()) kept.mean.push_back(old.mean.at(k)), kept.scale.push_back(old.scale.at(k));
      ++k;
    }
  }
  const bool classes = old.task == Task::Classification;
  if (why.empty() && edited->output_neurons() != old_outputs) {
    kept.classes.clear();
    if (!classes) kept.targets.clear();
    for (const auto& id : edited->output_neurons()) {
      const auto at = std::find(old_outputs.begin(), old_outputs.end(), id);
      const size_t k = static_cast<size_t>(at - old_outputs.begin());
      if (classes && at != old_outputs.end() && k < old.classes.size())
        kept.classes.push_back(old.classes[k]);
      else if (classes)
        break;  // this output and those after it have no class
      else if (at != old_outputs.end())
        kept.targets.push_back(old.targets.at(k));
      else {
        why = fmt::format("output {} is new and has no target column", id);
        break;
      }
    }
  }
  if (why.empty()) {
    try {
      kept.check_fits(edited, "the edited network's preprocessing");
      spdlog::info("the edit changed the {}: the saved preprocessing keeps the features {}{} and the {} {}",
                   inputs_kept ? "outputs" : "inputs", columns_said(kept.features),
                   kept.standardizes() ? " (standardized)" : "", classes ? "classes" : "targets",
                   columns_said(classes ? kept.classes : kept.targets));
      return kept;
    } catch (const Error& e) {
      why = e.what();
    }
  }
  spdlog::warn(
      "the edit changed the inputs or outputs ({}): the saved preprocessing (features {}) no longer "
      "applies and is dropped",
      why, columns_said(old.features));
  return std::nullopt;
}

// Data-parallel flags; unset ones come from RANK, WORLD_SIZE, MASTER_ADDR and
// MASTER_PORT (as torchrun sets them).
struct DistributedArgs {
  int nproc = 1;
  std::optional<int> rank, world_size, master_port;
  std::optional<std::string> master_addr;
  double timeout = 60;
  void add_to(CLI::App* cmd) {
    cmd->add_option("--nproc", nproc,
                    "run N local worker processes, data parallel (no rendezvous port; Gloo on loopback)")
        ->check(number_in(1, 256, true));
    cmd->add_option("--rank", rank, "this process's rank in a multi-process run (default: $RANK)")
        ->check(number_in(0, kIntMax, true));
    cmd->add_option("--world-size", world_size, "number of processes in the run (default: $WORLD_SIZE, else 1)")
        ->check(number_in(1, 1 << 20, true));
    cmd->add_option("--master-addr", master_addr,
                    "address of rank 0's rendezvous store (default: $MASTER_ADDR, else 127.0.0.1)");
    cmd->add_option("--master-port", master_port,
                    "port of rank 0's rendezvous store (default: $MASTER_PORT, else 29500)")
        ->check(number_in(1, 65535, true));
    // Checked before the conversion to milliseconds (1e300 would overflow, 1e-9 round to 0).
    cmd->add_option("--dist-timeout", timeout, "seconds to wait for other ranks before giving up (default 60)")
        ->check(number_in(0.001, 1e6, false));
  }
  // "[rank R] " for log lines and errors in a multi-process run, else empty.
  std::string rank_tag() const {
#if defined(CONNEX_WITH_DISTRIBUTED)
    try {
      const auto options = group_options(torch::kCPU);
      if (options.world_size() > 1) return fmt::format("[rank {}] ", options.rank());
    } catch (const Error&) {
      // A malformed RANK/WORLD_SIZE: cmd_train reports it.
    }
#endif
    return "";
  }
#if defined(CONNEX_WITH_DISTRIBUTED)
  distributed::GroupOptions group_options(torch::Device device) const {
    auto options = distributed::GroupOptions::from_environment();
    if (rank) options.rank(*rank);
    if (world_size) options.world_size(*world_size);
    if (master_addr) options.master_addr(*master_addr);
    if (master_port) options.master_port(*master_port);
    // A worker of --nproc: the launcher's private FileStore, Gloo on loopback, no port.
    if (auto directory = local_rendezvous_directory())
      options.file_store(*directory + "/store").gloo_address("127.0.0.1");
    options.timeout(std::chrono::milliseconds(std::llround(timeout * 1000)));
    options.device(device);
    return options;
  }
#endif
};

volatile std::sig_atomic_t g_stop_signal = 0;

// Turns SIGINT and SIGTERM into a stop request for train() while alive; a
// second signal ends the process at once, as without a handler.
class StopOnSignals {
 public:
  explicit StopOnSignals(bool active) : active_(active) {
    if (!active_) return;
    struct sigaction action {};
    action.sa_handler = [](int signal) { g_stop_signal = signal; };
    action.sa_flags = SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~StopOnSignals() {
    if (!active_) return;
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  bool active_;
  struct sigaction old_int_ {
  }, old_term_{};
};

int group_size(const DistributedArgs& dist) {
  return dist.world_size.value_or(connex::detail::environment_int("WORLD_SIZE", 1, 1 << 20).value_or(1));
}

// Holds --out for one run, taken before training so that a directory that
// cannot take the run's files is found out then, not after: it makes the
// directory, checks that the files can be written there, and keeps an
// exclusive lock on it, so that two runs never mix their files. Directories
// it made that stayed empty (the run failed before writing) are removed again.
class OutLock {
 public:
  explicit OutLock(const std::string& out) {
    if (out.empty()) return;
    std::error_code error;
    if (fs::exists(out, error) && !fs::is_directory(out, error))
      fail("train: --out {} exists and is not a directory", out);
    for (fs::path p = fs::absolute(out, error); !p.empty() && !fs::exists(p, error) && p != p.parent_path();
         p = p.parent_path())
      made_.push_back(p);
    std::error_code create_error;
    fs::create_directories(out, create_error);
    if (create_error || !fs::is_directory(out, error)) {
      remove_made();
      fail("train: --out {}: cannot create the directory: {}", out,
           create_error ? create_error.message() : "it vanished while being made");
    }
    try {
      for (const char* name : {"model.ckpt", "metrics.csv", "metrics.json", "config.json"})
        if (fs::is_directory(fs::path(out) / name, error)) fail("train: --out {}: {} is a directory", out, name);
      std::string probe = (fs::path(out) / ".connex-probe-XXXXXX").string();
      const int probe_fd = ::mkstemp(probe.data());
      if (probe_fd < 0) fail("train: --out {}: cannot write there: {}", out, std::strerror(errno));
      ::close(probe_fd);
      ::unlink(probe.c_str());
      fd_ = ::open(out.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd_ < 0) fail("train: --out {}: cannot open the directory: {}", out, std::strerror(errno));
      if (::flock(fd_, LOCK_EX | LOCK_NB) != 0)
        fail("train: --out {}: another connex run is writing there; give each run its own --out", out);
    } catch (...) {
      release();
      throw;
    }
  }
  ~OutLock() { release(); }
  OutLock(const OutLock&) = delete;
  OutLock& operator=(const OutLock&) = delete;

 private:
  void remove_made() {
    std::error_code error;
    for (const auto& p : made_)  // deepest first; a directory the run wrote into is not empty
      if (fs::is_empty(p, error)) fs::remove(p, error);
  }
  void release() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    remove_made();
  }

  int fd_ = -1;
  std::vector<fs::path> made_;
};

// One line for the data a command reads, saying whether it is the checkpoint's CSV.
void log_data(const Table& data, const DataArgs& args) {
  const auto& p = data.preprocessing;
  spdlog::info("data: {} ({} training rows, {} validation rows, features {}, targets {}{}{}){}", data.source,
               data.train.inputs().size(0), data.validation.inputs().size(0), columns_said(p.features),
               columns_said(p.targets),
               p.task == Task::Classification ? fmt::format(", classes {}", columns_said(p.classes)) : "",
               p.standardizes() ? ", standardized" : "",
               !args.recorded ? ""
                              : fmt::format("; {}{}",
                                            args.changed ? "the checkpoint's CSV, changed since it was trained on"
                                                         : "the one the checkpoint was trained on",
                                            args.named ? "" : " (give --data to use another)"));
}

// The first rewiring setting given, if any (they need a method: --rewire, or a checkpoint's record).
const char* rewire_setting_given(const TrainArgs& t) {
  return t.rewire_every    ? "--rewire-every"
         : t.drop_fraction ? "--drop-fraction"
         : t.rewire_end    ? "--rewire-end"
                           : nullptr;
}

void check_train_flags(const TrainArgs& t, const std::string& out) {
  // --prune-at-epoch without --prune-fraction moves a resumed run's recorded prune, and --prune-fraction,
  // --prune-scope or --prune-keep-min alone change it: resume_prune_schedule().
  if (t.prune_fraction > 0 && t.prune_at_epoch == 0)
    fail(
        "train: --prune-fraction needs --prune-at-epoch (the epoch after which to prune, >= 1); --prune-at-epoch 0 "
        "schedules none");
  if (t.checkpoint_every > 0 && out.empty()) fail("train: --checkpoint-every needs --out");
  if (t.init_density && !t.density) fail("train: --init-density needs --density");
  // A --density run is new, with no recorded method: said before its network is drawn.
  if (t.density && (!t.rewire || *t.rewire == "none") && rewire_setting_given(t))
    fail("train: {} needs --rewire set or rigl", rewire_setting_given(t));
}

// Up front: train --out writes all of a run's files, so a directory holding
// another run's (not the one being resumed) is replaced only with --overwrite;
// a typo or a reused name would otherwise lose a finished run without a word.
void check_train_out(const std::string& config, const std::string& out, bool overwrite) {
  std::error_code ec;
  if (out.empty()) return;
  const std::string takes =
      "train --out takes the run's directory, where it writes model.ckpt, metrics.csv, "
      "metrics.json and config.json";
  if (fs::exists(out, ec) && !fs::is_directory(out, ec))
    fail("train: --out {} exists and is not a directory; {}", out, takes);
  // A new directory named like a checkpoint file is a slip for the run's directory.
  if (!fs::exists(out, ec) && fs::path(out).extension() == ".ckpt")
    fail("train: --out {} names a checkpoint file; {} (give the directory, such as {})", out, takes,
         fs::path(out).has_parent_path() ? fs::path(out).parent_path().string() : std::string("run"));
  if (!fs::is_directory(out, ec)) return;
  // Written after the last epoch: a file there the run may not replace is refused before the first.
  for (const char* name : kRunFiles) check_replaceable((fs::path(out) / name).string(), "train");
  if (overwrite) return;
  std::vector<std::string> held;
  for (const char* name : kRunFiles)
    if (fs::is_regular_file(fs::path(out) / name, ec)) held.emplace_back(name);
  if (held.empty()) return;
  const fs::path model = fs::path(out) / "model.ckpt";
  if (!config.empty() &&
      (fs::equivalent(config, out, ec) || (fs::exists(model, ec) && fs::equivalent(config, model, ec))))
    return;  // resuming that run in place
  if (fs::is_regular_file(model, ec)) {
    const auto head = file_head(model.string(), 16);
    if (head && has_magic(*head, kNetworkMagic)) {
      // Advise resuming only a run that would resume: a damaged file gets the loader's reason.
      std::string damage;
      try {
        load_checkpoint(model.string());
      } catch (const std::exception& e) {  // bad_alloc too: the file is still not a run to resume
        damage = e.what();
      }
      if (!damage.empty())
        fail(
            "train: --out {} holds files a run writes ({}), but its model.ckpt cannot be resumed ({}); write "
            "elsewhere, or pass --overwrite to replace them",
            out, fmt::join(held, ", "), damage);
      fail(
          "train: --out {} holds another run ({}); resume it with connex train {} --out {}, write elsewhere, or pass "
          "--overwrite to replace it",
          out, fmt::join(held, ", "), out, out);
    }
    const std::string kind = head ? kind_without_network(*head) : "";
    fail(
        "train: --out {} holds files a run writes ({}), but its model.ckpt is {}; write elsewhere, or pass "
        "--overwrite to replace them",
        out, fmt::join(held, ", "),
        !kind.empty() ? kind
        : head        ? "not a network checkpoint"
                      : "not readable");
  }
  fail(
      "train: --out {} holds files a run writes ({}) but no model.ckpt; write elsewhere, or pass --overwrite to "
      "replace them",
      out, fmt::join(held, ", "));
}

// train --out rewrites every run file in it: none may be what the run reads
// (a config or CSV kept there under a run file's name, --overwrite or not),
// but for the model.ckpt of the run it resumes.
void check_run_files_are_not_inputs(const std::string& out, const std::string& config, const std::string& data) {
  if (out.empty()) return;
  std::error_code ec;
  for (const char* name : kRunFiles) {
    const fs::path file = fs::path(out) / name;
    if (!fs::is_regular_file(file, ec)) continue;
    const bool is_data = !data.empty() && fs::equivalent(data, file, ec);
    const bool is_config = !config.empty() && std::string(name) != "model.ckpt" && fs::equivalent(config, file, ec);
    if (is_data || is_config)
      fail("train: {} {} is the {} that --out {} rewrites; move it elsewhere first, or write elsewhere",
           is_data ? "--data" : "the config", is_data ? data : config, name, out);
  }
}

// train --density: a new run's network, a sparse layered one of the config's
// layer sizes (its graph made "prebuilt": "SparseMLP"), drawn with --seed, else a SparseMLP config's own.
NeuralNetwork sparse_network(const std::string& config, const TrainArgs& t) {
  const std::string needs = "train: --density needs a config with \"prebuilt\": \"MLP\" or \"SparseMLP\", got ";
  if (config.empty()) fail("{}the built-in README network (an explicit graph)", needs);
  std::error_code error;
  if (fs::is_directory(config, error) || is_checkpoint(config))
    fail(
        "train: --density draws the network of a new run from a config; {} is a checkpoint (a resumed run keeps its "
        "network)",
        config);
  require_file(config);
  auto json = read_json_file(config);
  if (!json.is_object() || !json.contains("graph") || !json.at("graph").is_object())
    load_config(config);  // says what is wrong with it
  auto& graph = json.at("graph");
  const auto kind = graph.contains("prebuilt") ? graph.at("prebuilt") : nlohmann::json();
  if (kind != "MLP" && kind != "SparseMLP")
    fail("{}{}", needs, kind.is_null() ? std::string("an explicit graph") : "\"prebuilt\": " + kind.dump());
  graph["prebuilt"] = "SparseMLP";
  graph["density"] = *t.density;
  // A SparseMLP config's own seed stays unless --seed replaces it.
  if (t.seed || !graph.contains("seed")) graph["seed"] = t.seed.value_or(0);
  if (t.init_density) graph["distribution"] = *t.init_density;
  NeuralNetwork net = network_from_config(json, config);  // checks the config's seed too
  spdlog::info("--density {}: a sparse layered network of {} connections ({}, seed {}{})", *t.density,
               net->num_connections(), graph.value("distribution", "er"), graph.at("seed").dump(),
               sparse_floor_note(net, graph));
  return net;
}

std::string rewire_needs_one_process(int ranks) {
  return fmt::format(
      "train: --rewire needs a single process, got {} ranks (data-parallel ranks would have to rewire identically)",
      ranks);
}

// Whether some level lacks a connection from a level that feeds it: without
// one, a rewiring has nowhere to grow and moves nothing.
bool has_room_to_grow(const NeuralNetwork& net) {
  const RewireGroups groups = RewireGroups::of_levels(net);
  double candidates = 0;
  for (size_t l = 0; l < groups.members.size(); ++l)
    for (int64_t h : groups.grows_from[l])
      candidates += static_cast<double>(groups.members[h].size()) * static_cast<double>(groups.members[l].size());
  return candidates > static_cast<double>(net->num_connections());
}

// The run's rewiring: the checkpoint's record, each setting replaced by its
// flag. Returns the share of the run's steps to end at when the end is set
// anew: by --rewire-end, or where the record fixed none (no rewiring yet, or
// a run of no steps).

std::optional<double> plan_rewiring(const TrainArgs& t, RewireSettings& r, const NeuralNetwork& net, int ranks,
                                    int64_t steps_done) {
  const std::string recorded = r.method;
  if (t.rewire) r.method = *t.rewire == "none" ? "" : *t.rewire;
  if (!r.active()) {
    if (rewire_setting_given(t)) fail("train: {} needs --rewire set or rigl", rewire_setting_given(t));
    r = {};
    return std::nullopt;
  }
  r.every = t.rewire_every.value_or(r.every);
  r.drop_fraction = t.drop_fraction.value_or(r.drop_fraction);
  // A recorded schedule that has ended rewires no more: such a run may go data parallel.
  const bool ended = !t.rewire && !t.rewire_end && r.end_step > 0 && steps_done >= r.end_step;
  if (ranks > 1 && !ended) {
    if (t.rewire) fail("{}", rewire_needs_one_process(ranks));
    fail(
        "train: the checkpoint's run rewires ({}, from its record) and rewiring needs a single process, got {} ranks; "
        "add --rewire none to train it data parallel",
        r.method, ranks);
  }
  if (const LevelOperation* op = operation_changing_gradients(*net);
      op && rewire_method_from_name(r.method) == RewireMethod::RigL)
    fail(
        "train: --rewire rigl needs a network without per-level techniques but adaptive activations (they change what "
        "a connection's gradient is), got {}; use --rewire set",
        op->name());
  if (!has_room_to_grow(net))
    spdlog::warn(
        "train: --rewire {}: every level already reads every neuron of the levels that feed it, so a rewiring "
        "moves nothing; start sparse with a --density below 1",
        r.method);
  if (t.rewire_end) return t.rewire_end;
  // A recorded end stays, also for another method (--rewire-end moves it);
  // 0 is an end not fixed yet (a run of no steps fixes none).
  if (!recorded.empty() && r.end_step > 0) return std::nullopt;
  // Both methods stop at 0.75 of the run by default: a rewiring late in the
  // run leaves its new connections barely trained, one after the last step
  // leaves them at 0.
  r.end_step = 0;
  return 0.75;
}

// A checkpoint written by `train` resumes where it stopped, with its data settings unless flags say otherwise;
// a new --prune-at-epoch must fall within the epochs this run adds (a recorded prune may move past them).
Progress resumed_progress(const Checkpoint& ck, const TrainArgs& t, const std::string& config) {
  Progress progress;
  if (!ck.training.is_null()) progress = Progress::from_json(ck.training, config);
  // The split follows (seed, validation share): another one puts rows the run
  // trained on among the validation rows, and its validation figures stop comparing.
  const bool resplit = progress.epoch > 0 &&
                       ((t.seed && *t.seed != progress.seed) || (t.val_split && *t.val_split != progress.val_split));
  if (resplit && std::max(t.val_split.value_or(progress.val_split), progress.val_split) > 0)
    spdlog::warn(
        "train: {} splits the rows anew (the run used seed {} and validation split {:g}): rows it trained on may "
        "now be validation rows, so its validation figures no longer compare",
        t.seed && *t.seed != progress.seed ? fmt::format("--seed {}", *t.seed)
                                           : fmt::format("--val-split {:g}", *t.val_split),
        progress.seed, progress.val_split);
  progress.seed = t.seed.value_or(progress.seed);
  progress.batch_size = t.batch_size.value_or(progress.batch_size);
  progress.val_split = t.val_split.value_or(progress.val_split);
  if (t.batch_size && progress.batch > 0) {  // the stopped epoch's position means nothing with other batches
    spdlog::info("--batch-size: the run stopped mid-epoch; epoch {} starts over", progress.epoch + 1);
    progress.batch = 0;
    progress.batch_loss = 0;
  }
  const int last_epoch = progress.epoch + t.epochs;
  const int at = t.prune_at_epoch.value_or(0);
  // Without a fraction, --prune-at-epoch moves a recorded prune to come (resume_prune_schedule()).
  if (t.moves_prune() && !(progress.prune.at_epoch > progress.epoch))
    fail("train: --prune-at-epoch {} needs --prune-fraction (the share to prune, in (0, 1]){}", at,
         progress.epoch > 0 ? "; the checkpoint's run has no prune to come that it could move" : "");
  if (at > 0 && t.epochs == 0)
    fail("train: --prune-at-epoch {} has no epoch to follow: this run trains none (--epochs 0)", at);
  // A recorded prune moved past this run's epochs stays scheduled, as it would unmoved; a new one must fall within.
  if (at > 0 && (at <= progress.epoch || (at > last_epoch && !t.moves_prune())))
    fail("train: --prune-at-epoch {} is outside this run's epochs {} to {}{}", at, progress.epoch + 1, last_epoch,
         at <= progress.epoch
             ? fmt::format(" (the checkpoint has trained {} epochs)", progress.epoch)
             : fmt::format("; --epochs {} reaches it{}", at - progress.epoch,
                           progress.prune.at_epoch > progress.epoch
                               ? " (without --prune-fraction it would move the run's recorded prune, which may lie "
                                 "past the run, and --prune-fraction alone changes that prune's share)"
                               : ""));
  return progress;
}

// The run's prune schedule (progress.prune, which train() applies and the
// run's record keeps): --prune-at-epoch's, else the record's while it is
// still to come (a stopped run resumed prunes where it would have; a
// schedule past this run's epochs stays for a later one); --prune-at-epoch 0
// cancels it, --prune-at-epoch without --prune-fraction moves it (its scope
// and floor kept unless given), and --prune-fraction, --prune-scope or
// --prune-keep-min without --prune-at-epoch change it.
void resume_prune_schedule(const TrainArgs& t, Progress& progress) {
  PruneSchedule& s = progress.prune;
  const bool recorded = s.at_epoch > progress.epoch;
  // The settings given without --prune-at-epoch, which change the recorded prune (--prune-fraction with it
  // schedules a new one).
  std::vector<std::string> tweaks;
  if (t.prune_fraction > 0 && !t.prune_at_epoch) tweaks.emplace_back("--prune-fraction");
  if (t.prune_scope) tweaks.emplace_back("--prune-scope");
  if (t.prune_keep_min) tweaks.emplace_back("--prune-keep-min");
  if (!tweaks.empty() && (t.prune_at_epoch ? *t.prune_at_epoch == 0 : !recorded))
    fail("train: {} needs --prune-at-epoch (the epoch after which to prune, >= 1){}", tweaks.front(),
         t.prune_at_epoch     ? "; --prune-at-epoch 0 schedules none"
         : progress.epoch > 0 ? "; the checkpoint's run has no prune to come that it could change"
                              : "");
  // The recorded prune to come, changed by those alone, or moved by
  // --prune-at-epoch without --prune-fraction (resumed_progress() refused
  // that without a record).
  const bool moves = t.moves_prune();
  if (moves || (!t.prune_at_epoch && !tweaks.empty())) {
    if (!t.prune_at_epoch && t.prune_fraction > 0) s.fraction = t.prune_fraction;
    if (t.prune_scope) s.scope = prune_scope_from_name(*t.prune_scope);
    if (t.prune_keep_min) s.keep_min = *t.prune_keep_min;
    const int was = s.at_epoch;
    if (moves) s.at_epoch = *t.prune_at_epoch;
    // A move may change the scope and floor too (tweaks holds them then): said as well.
    std::string how = moves && s.at_epoch != was ? fmt::format(", moved from epoch {}", was) : "";
    if (!tweaks.empty()) how += ", changed by " + listed(tweaks, "and");
    spdlog::info("prune: {}: the run's recorded prune{}", s.said(), how);
    if (s.at_epoch > progress.epoch + t.epochs)
      spdlog::info("prune: it lies past this run's last epoch {}; it stays scheduled", progress.epoch + t.epochs);
    return;
  }
  if (t.prune_at_epoch) {
    const int at = *t.prune_at_epoch;
    const PruneSchedule given =
        at == 0 ? PruneSchedule{}
                : PruneSchedule{at, t.prune_fraction,
                                t.prune_scope ? prune_scope_from_name(*t.prune_scope) : PruneScope::Global,
                                t.prune_keep_min.value_or(0)};
    // Said whenever it differs, also at the recorded epoch (its scope and floor are not inherited).
    if (recorded && (at == 0 || given.said() != s.said()))
      spdlog::info("prune: --prune-at-epoch {} {} the run's recorded prune: {}", at, at == 0 ? "cancels" : "replaces",
                   s.said());
    else if (at == 0)
      spdlog::info("prune: --prune-at-epoch 0: no prune{}", progress.epoch > 0 ? " (the run had none to come)" : "");
    s = given;
    if (at > 0) spdlog::info("prune: {}", s.said());
    return;
  }
  if (!recorded) {
    s = {};
    return;
  }
  const int last_epoch = progress.epoch + t.epochs;
  if (s.at_epoch > last_epoch) {
    spdlog::info("prune: the run's prune at epoch {} lies past this run's last epoch {}; it stays scheduled",
                 s.at_epoch, last_epoch);
    return;
  }
  spdlog::info("prune: {}, from the run's record", s.said());
}

// Why a run's recorded CSV cannot be read as one ("" when it can): the
// file, or where its link points, is gone, or it is a directory now.
std::string missing_data_said(const std::string& path) {
  std::error_code ec;
  if (fs::exists(path, ec)) return fs::is_directory(path, ec) ? "which is a directory now" : "";
  if (!fs::is_symlink(fs::symlink_status(path, ec))) return "which is gone";
  fs::path target = fs::read_symlink(path, ec);
  if (ec) return "a symbolic link that leads nowhere";
  if (target.is_relative()) target = (fs::path(path).parent_path() / target).lexically_normal();
  // The target itself there: another link that leads nowhere, or a loop.
  if (fs::exists(fs::symlink_status(target, ec)))
    return fmt::format("a symbolic link through {} that leads nowhere", target.string());
  return fmt::format("a symbolic link to {}, which is gone", target.string());
}

// Holds the log lines of a command's set-up (its settings, the data line,
// warnings) until release(), which writes them as they came, with their
// times: a command refused before it starts its work writes only its
// one-line refusal (on standard error), not half of its set-up.
class HeldLog {
 public:
  HeldLog() : logger_(spdlog::default_logger()), sinks_(logger_->sinks()) {
    held_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1 << 12);
    logger_->sinks() = {held_};
  }
  ~HeldLog() {
    if (held_) logger_->sinks() = sinks_;  // refused: the held lines go
  }
  HeldLog(const HeldLog&) = delete;
  HeldLog& operator=(const HeldLog&) = delete;
  void release() {
    logger_->sinks() = sinks_;
    for (const auto& message : held_->last_raw())
      for (const auto& sink : sinks_)
        if (sink->should_log(message.level)) sink->log(message);
    logger_->flush();
    held_.reset();
  }

 private:
  std::shared_ptr<spdlog::logger> logger_;
  std::vector<spdlog::sink_ptr> sinks_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> held_;
};

// A resumed run (or a pruned one trained on) goes on with the checkpoint's CSV unless --data names another.
DataArgs resumed_data_args(const DataArgs& d, Progress& progress, const std::string& config,
                           const char* command = "train") {
  DataArgs data_args = d;
  if (d.data.empty() && !progress.data.empty()) {
    if (const std::string missing = missing_data_said(progress.data); !missing.empty())
      fail("{}: {} was trained on {}, {}; give --data", command, config, progress.data, missing);
    data_args.data = progress.data;
    data_args.recorded = true;
  }
  // The recorded CSV is hashed (read whole) only when it is the one used, and once.
  std::optional<std::string> hash;
  const bool same =
      !data_args.data.empty() && !progress.data.empty() && Progress::data_path(data_args.data) == progress.data;
  data_args.recorded = data_args.recorded || same;
  data_args.named = !d.data.empty();
  if (const std::string changed = same ? progress.data_changed(&hash) : ""; !changed.empty()) {
    data_args.changed = true;
    spdlog::warn("{} changed since the checkpoint was written ({}): {}", progress.data, changed,
                 std::string(command) == "train" ? "a resumed run differs from an uninterrupted one"
                                                 : "the figures differ from those of the run");
  }
  progress.set_data(data_args.data, same ? hash : std::nullopt);
  return data_args;
}

// This process's place in a data-parallel run; rank 0 with no group when it runs alone.
struct Replicas {
#if defined(CONNEX_WITH_DISTRIBUTED)
  std::unique_ptr<distributed::Group> group;
  std::unique_ptr<distributed::DataParallel> data_parallel;
#endif
  int rank = 0;
};

// Joins the group when the run has more than one rank; a CUDA device becomes this local rank's GPU.
Replicas join_replicas(const DistributedArgs& dist, torch::Device& device) {
  Replicas replicas;
#if defined(CONNEX_WITH_DISTRIBUTED)
  auto group_options = dist.group_options(device);
  if (group_options.world_size() > 1) {
    if (device.is_cuda()) {  // one GPU per local rank
      device = torch::Device(torch::kCUDA, connex::detail::environment_int("LOCAL_RANK", 0, 1 << 20).value_or(0));
      group_options.device(device);
    }
    replicas.group = std::make_unique<distributed::Group>(group_options);
    replicas.data_parallel = std::make_unique<distributed::DataParallel>(*replicas.group);
    replicas.rank = replicas.group->rank();
    spdlog::info("rank {} of {} joined ({} through {})", replicas.group->rank(), replicas.group->world_size(),
                 replicas.group->backend(),
                 group_options.file_store().empty()
                     ? fmt::format("{}:{}", group_options.master_addr(), group_options.master_port())
                     : std::string("the launcher's private file store"));
  }
#else
  (void)device;
  if (dist.nproc > 1 || dist.world_size.value_or(1) > 1)
    fail("train: this connex was built without distributed support (CONNEX_WITH_DISTRIBUTED; needs libgloo-dev)");
#endif
  return replicas;
}

TrainOptions train_options(const TrainArgs& t, const Progress& progress, torch::Device device, const Table& data,
                           const std::optional<Preprocessing>& preprocessing, const std::string& out,
                           const CoreShare& cores, std::string cores_said) {
  TrainOptions options;
  options.epochs = t.epochs;
  options.batch_size = progress.batch_size;
  options.seed = progress.seed;
  options.device = device;
  options.task = data.preprocessing.task;
  options.preprocessing = preprocessing;
  options.checkpoint_every = t.checkpoint_every;
  options.out = out;
  // Said when it changes: a rewiring, every few steps, keeps the network's size.
  options.on_network_replaced = [&cores, said = std::move(cores_said)](const NeuralNetwork& edited) mutable {
    std::string share = cores.apply(edited);
    if (share != said) spdlog::info("cores: {}", share);
    said = std::move(share);
  };
  options.after_step = [&cores](const NeuralNetwork& net, std::chrono::steady_clock::duration took, int64_t rows) {
    cores.after_step(net, took, rows);
  };
  return options;
}

// Trains; a stop by signal writes --out as far as the run got, then fails with how to resume.
TrainResult train_until_done_or_stopped(NeuralNetwork& net, std::unique_ptr<torch::optim::Optimizer>& optimizer,
                                        const Table& data, const TrainOptions& options, Progress& progress,
                                        const std::optional<Preprocessing>& preprocessing, const std::string& out,
                                        int last_epoch) {
  try {
    return train(net, optimizer, data, options, progress);
  } catch (const Stopped& stopped) {
    if (!out.empty()) {
      net->to(torch::kCPU);
      write_run(out, net, *optimizer, stopped.progress, preprocessing);
    }
    const auto& p = stopped.progress;
    const std::string where = p.batch > 0 ? fmt::format("in epoch {} after {} batch(es)", p.epoch + 1, p.batch)
                                          : fmt::format("after epoch {}", p.epoch);
    fail("train: stopped by {} {}{}", strsignal(stopped.signal), where,
         out.empty() ? std::string("; nothing written (no --out)")
                     : fmt::format("; wrote {}/model.ckpt (resume: connex train {} --epochs {} --out {})", out, out,
                                   last_epoch - p.epoch, out));
  }
}

// Rank 0's summary of the run, then its files.
void report_and_write_run(NeuralNetwork& net, const torch::optim::Optimizer& optimizer, const TrainResult& result,
                          double seconds, Task task, const Progress& progress,
                          const std::optional<Preprocessing>& preprocessing, const std::string& out) {
  spdlog::info("{} step{} in {:.3f} s: {:.1f} steps/s", result.steps, result.steps == 1 ? "" : "s", seconds,
               result.steps / std::max(seconds, 1e-9));
  auto [loss, metric] = evaluate(net, result.train_x, result.train_y, task);
  spdlog::info("final training loss {:.6f}{}", loss,
               task == Task::Classification ? fmt::format(", accuracy {:.4f}", metric) : "");
  if (!progress.history.empty() && !std::isnan(progress.history.back().val_metric))
    spdlog::info("validation {} {:.6f}", task == Task::Classification ? "accuracy" : "mse",
                 progress.history.back().val_metric);
  if (!out.empty()) {
    net->to(torch::kCPU);
    write_run(out, net, optimizer, progress, preprocessing);
    spdlog::info("wrote {}/model.ckpt, metrics.csv, metrics.json, config.json", out);
  }
}

#if defined(CONNEX_WITH_DISTRIBUTED)
// The ranks of one run must take the same steps over the same rows with the
// same optimizer: another --seed shuffles other batches, another --optimizer
// or learning rate steps otherwise (both a result silently not the whole
// batch's), another --batch-size, --epochs or prune schedule makes other
// collectives, out of step from then on. Compared once, at the start,
// through Group::gather_rows; each rank refuses naming the first setting
// that differs.
void check_ranks_agree(distributed::Group& group, const Progress& progress, int last_epoch, const Table& data,
                       const torch::optim::Optimizer& optimizer) {
  struct Setting {
    const char* name;
    int64_t bits;  // an integer, a double's bits, or a hash
    enum { Integer, Real, Hash } kind;
    std::string shown;  // a hash's value in words, where there is one
  };
  auto real = [](const char* name, double value) {
    int64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return Setting{name, bits, Setting::Real};
  };
  // The rows' bytes, not a sum: a float sum's last bits depend on the thread count.
  auto bytes_of = [](const char* name, const torch::Tensor& t) {
    const torch::Tensor c = t.contiguous();
    return Setting{name,
                   static_cast<int64_t>(fnv1a64(c.data_ptr(), static_cast<size_t>(c.numel() * c.element_size())) >> 1),
                   Setting::Hash};
  };
  const std::string type = optimizer_type_name(optimizer);
  const std::vector<Setting> settings{
      {"--seed", static_cast<int64_t>(progress.seed), Setting::Integer},
      {"--batch-size", progress.batch_size, Setting::Integer},
      {"the last epoch (--epochs past the resumed ones)", last_epoch, Setting::Integer},
      {"the optimizer steps already taken", progress.steps, Setting::Integer},
      real("--val-split", progress.val_split),
      {"another optimizer (--optimizer)", static_cast<int64_t>(fnv1a64(type.data(), type.size()) >> 1), Setting::Hash,
       type},
      real("the learning rate", optimizer.param_groups()[0].options().get_lr()),
      {"--prune-at-epoch (or the run's record)", progress.prune.at_epoch, Setting::Integer},
      real("--prune-fraction (or the run's record)", progress.prune.fraction),
      {"another prune scope (--prune-scope or the run's record)", static_cast<int64_t>(progress.prune.scope),
       Setting::Hash, prune_scope_name(progress.prune.scope)},
      {"--prune-keep-min (or the run's record)", progress.prune.keep_min, Setting::Integer},
      {"training rows", data.train.inputs().size(0), Setting::Integer},
      bytes_of("other training inputs", data.train.inputs()),
      bytes_of("other training targets", data.train.targets())};
  std::vector<int64_t> mine;
  for (const Setting& s : settings) mine.push_back(s.bits);
  const auto table = group.gather_rows(mine, "train: the ranks' settings");
  const auto at = table.accessor<int64_t, 2>();
  const int size = group.world_size(), k = static_cast<int>(settings.size());
  auto show = [](const Setting& s, int64_t bits) {
    if (s.kind == Setting::Integer) return std::to_string(bits);
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return fmt::format("{}", value);
  };
  const char* same = "every rank of a run needs the same arguments and data";
  for (int r = 1; r < size; ++r)
    for (int j = 0; j < k; ++j) {
      if (at[r][j] == at[0][j]) continue;
      const Setting& s = settings[j];
      if (s.kind == Setting::Hash)  // the values themselves are not exchanged
        fail("train: rank {} runs with {} than rank 0{}; {}", r, s.name,
             s.shown.empty() ? std::string() : fmt::format(" (rank {}'s: {})", group.rank(), s.shown), same);
      fail("train: rank {} runs with {} {} where rank 0 has {}; {}", r, s.name, show(s, at[r][j]), show(s, at[0][j]),
           same);
    }
}
#endif

// The --out that saves a resumed run: its directory (also for the directory's model.ckpt), else a new one.
std::string resume_out_said(const std::string& config) {
  if (fs::is_directory(config)) return config;
  const fs::path file(config);
  if (file.filename() == "model.ckpt") return file.has_parent_path() ? file.parent_path().string() : ".";
  return "DIR";
}

int cmd_train(const std::string& config, const DataArgs& d, const TrainArgs& t, const DistributedArgs& dist,
              const std::string& out, const CoreShare& cores) {
  HeldLog held;  // released when the inputs are checked
  auto device = parse_device(t.device);
  check_train_flags(t, out);
  check_train_out(config, out, t.overwrite);
  Checkpoint ck =
      t.density ? Checkpoint{sparse_network(config, t), std::nullopt, std::nullopt, {}} : open_network(config);
  NeuralNetwork net = ck.network;
  check_task_flag(d, ck.preprocessing, "train");
  // Before the banner and the data: the library would refuse it at the first forward.
  if (const std::string refusal = cpu_forward_refusal(net->weight_tensor().scalar_type());
      !refusal.empty() && device.is_cpu())
    fail("train: {}: dtype {}, or --device cuda", config.empty() ? std::string("the network") : config, refusal);
  const std::string cores_said = cores.apply(net);
  Progress progress = resumed_progress(ck, t, config);
  resume_prune_schedule(t, progress);
  const auto rewire_end =
      plan_rewiring(t, progress.rewire, net, dist.nproc > 1 ? dist.nproc : group_size(dist), progress.steps);
  const int last_epoch = progress.epoch + t.epochs;
  const DataArgs data_args = resumed_data_args(d, progress, config);
  check_run_files_are_not_inputs(out, config, data_args.data);
  // Checks sizes before anything runs; a checkpoint's preprocessing is applied, not fitted anew.
  Table data = load_dataset(data_args.options(net, progress.val_split, progress.seed), net, ck.preprocessing, "train");
  // Saved with the model: the data's (the toy set's only when it standardizes, so that a model trained on
  // raw toy data can go on to a CSV).
  const std::optional<Preprocessing> preprocessing = data_args.data.empty() && !data.preprocessing.standardizes()
                                                         ? ck.preprocessing
                                                         : std::optional<Preprocessing>(data.preprocessing);

  // The inputs are checked: the set-up's lines now, before a wait for the other ranks.
  held.release();
  const Replicas replicas = join_replicas(dist, device);
  const bool reporter = replicas.rank == 0;
  const OutLock out_lock(reporter ? out : std::string());  // only rank 0 writes --out

  // Dropout draws from torch's generator: reproducible by --seed, and
  // different on each rank so the ranks' shares get independent masks.
  torch::manual_seed(progress.seed + 7919 * static_cast<uint64_t>(replicas.rank));
  net->to(device);
#if defined(CONNEX_WITH_DISTRIBUTED)
  if (replicas.data_parallel) replicas.data_parallel->broadcast_parameters(net);
#endif
  auto optimizer = choose_optimizer(ck, net, t, config);
#if defined(CONNEX_WITH_DISTRIBUTED)
  if (replicas.group) check_ranks_agree(*replicas.group, progress, last_epoch, data, *optimizer);
#endif
  spdlog::info("cores: {}{}", cores_said, blas_kernels_said());
  if (reporter) {
    spdlog::info("{}", one_line(net));
    log_data(data, data_args);
    // Said before the first epoch, so that a long run can be stopped and given one.
    if (out.empty() && !ck.training.is_null())
      spdlog::warn("no --out: this resumed run will not be saved and {} stays as it was; give --out {} to save it",
                   config, resume_out_said(config));
    else if (out.empty())
      spdlog::warn("no --out: the trained network will not be saved; give --out DIR to keep it");
  }
  TrainOptions options = train_options(t, progress, device, data, preprocessing, out, cores, cores_said);
  options.rewire_end = rewire_end;
#if defined(CONNEX_WITH_DISTRIBUTED)
  options.data_parallel = replicas.data_parallel.get();
  if (replicas.data_parallel) replicas.data_parallel->check_replicas_identical(net, optimizer.get(), "train: start");
#endif
  const auto start = std::chrono::steady_clock::now();
  // SIGINT/SIGTERM: finish the step, write the files, say so, exit non-zero.
  // (Data-parallel workers are stopped by their launcher.)
  StopOnSignals stop_on_signals(replicas.rank == 0 && group_size(dist) == 1);
  options.stop = &g_stop_signal;
  const TrainResult result =
      train_until_done_or_stopped(net, optimizer, data, options, progress, preprocessing, out, last_epoch);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
#if defined(CONNEX_WITH_DISTRIBUTED)
  if (replicas.data_parallel) {
    const uint64_t sum = replicas.data_parallel->check_replicas_identical(net, optimizer.get(), "train: end");
    spdlog::info("replicas identical on all {} ranks (checksum {:016x})", replicas.group->world_size(), sum);
  }
#endif
  if (!reporter) return 0;
  report_and_write_run(net, *optimizer, result, seconds, options.task, progress, preprocessing, out);
  return 0;
}

// How `prune` chooses: the library's PruneOptions from the flags.
struct PruneArgs {
  std::optional<double> threshold, fraction;
  std::optional<std::string> scope;  // global when not given
  int64_t keep_min = 0;
  bool protect_outputs = false, remove_dead = false, include_frozen = false;
  std::string score = "magnitude";  // or activation, gradient: measured on data
  PruneOptions options() const {
    return PruneOptions()
        .threshold(threshold)
        .fraction(fraction)
        .scope(prune_scope_from_name(scope.value_or("global")))
        .keep_min(keep_min)
        .protect_outputs(protect_outputs)
        .keep_frozen(!include_frozen);
  }
};

// The rows prune measures on: the validation rows when there are some, else every row; and their description.
std::pair<const TableDataset&, std::string> measured_rows(const Table& data) {
  const bool held_out = data.validation.inputs().size(0) > 0;
  const auto& rows = held_out ? data.validation : data.train;
  return {rows, held_out ? fmt::format("{} validation rows", rows.inputs().size(0))
                         : fmt::format("all {} rows; --val-split F would hold some out", rows.inputs().size(0))};
}

// prune --score activation|gradient: each connection's score on the training
// rows (undefined for magnitude: PruneOptions' own |w|), in eval mode; the
// loss is then measured on rows the scores did not see (the validation rows).
torch::Tensor connection_scores(NeuralNetwork& net, const std::string& score, const Table& data) {
  if (score == "magnitude") return {};
  const auto& rows = data.train;
  const std::string on = fmt::format("{} training rows", rows.inputs().size(0));
  const bool was_training = net->is_training();
  net->eval();
  torch::Tensor scores;
  if (score == "activation") {
    LevelTrace trace;
    net->forward_traced(rows.inputs(), trace);
    scores = activation_scores(net, trace);
  } else {
    net->zero_grad();
    loss_of(net, net->forward(rows.inputs()), rows.targets(), data.preprocessing.task).backward();
    scores = gradient_scores(net);
    net->zero_grad();
  }
  net->train(was_training);
  spdlog::info("scores: {} ({}) on {}", score, score == "activation" ? "|w a|" : "|w dL/dw|", on);
  return scores.detach();
}

// prune --data: the loss (and accuracy) before and after pruning on the
// measured rows; with --epochs, trains the pruned network on and reports again.
void report_pruning(NeuralNetwork& net, NeuralNetwork& pruned, std::unique_ptr<torch::optim::Optimizer>& next,
                    const Table& data, const TrainArgs& t, const Progress& trained) {
  // Measured on the validation rows when there are some, else on every row.
  const auto measured = measured_rows(data);
  const auto& rows = measured.first;
  const std::string& on = measured.second;
  const Task task = data.preprocessing.task;
  auto report = [&](const char* when) {
    auto [loss_before, metric_before] = evaluate(net, rows.inputs(), rows.targets(), task);
    auto [loss_after, metric_after] = evaluate(pruned, rows.inputs(), rows.targets(), task);
    spdlog::info("loss: {:.6f} -> {:.6f} {} ({})", loss_before, loss_after, when, on);
    if (task == Task::Classification)
      spdlog::info("accuracy: {:.4f} -> {:.4f} {} ({})", metric_before, metric_after, when, on);
  };
  report("after pruning");
  if (t.epochs > 0) {
    TrainOptions options;
    options.epochs = t.epochs;
    options.batch_size = trained.batch_size;  // --batch-size, else the checkpoint's run's
    options.seed = trained.seed;
    options.task = task;
    Progress fresh;
    train(pruned, next, data, options, fresh);
    report(fmt::format("after {} more epochs", t.epochs).c_str());
  }
}

int cmd_prune(const std::string& path, const PruneArgs& p, const DataArgs& d, const TrainArgs& t,
              const std::string& out, const CoreShare& cores) {
  HeldLog held;  // the set-up's lines, released when the inputs are checked
  const std::optional<double> threshold = p.threshold, fraction = p.fraction;
  if (threshold.has_value() == fraction.has_value()) fail("prune: give exactly one of --threshold and --fraction");
  if (threshold && !(*threshold >= 0 && std::isfinite(*threshold)))
    fail("prune: --threshold must be a finite number >= 0, got {}", *threshold);
  if (threshold && p.scope)
    fail(
        "prune: --scope {} applies to --fraction (each group's weakest share); --threshold removes every connection "
        "below it whatever the scope",
        *p.scope);
  // Data only when asked for: --data reports the loss before and after, a
  // --score other than magnitude scores on it, and training on needs some
  // (the toy set when the network fits it).
  const bool scored = p.score != "magnitude";
  const bool uses_data = !d.data.empty() || t.epochs > 0 || scored;
  // Flags that would do nothing are refused (--lr and --optimizer set the saved optimizer's).
  if (t.batch_size && t.epochs == 0)
    fail("prune: --batch-size {} applies to training on; give --epochs N", *t.batch_size);
  if (!uses_data) {
    const char* use = "give --data FILE.csv, --epochs N or --score activation|gradient";
    if (t.seed) fail("prune: --seed {} applies to the data's split; {}", *t.seed, use);
    if (t.val_split) fail("prune: --val-split {:g} applies to the data's split; {}", *t.val_split, use);
    const char* data_flag = d.task                ? "--task"
                            : !d.targets.empty()  ? "--target"
                            : !d.features.empty() ? "--features"
                                                  : nullptr;
    if (data_flag) fail("prune: {} applies to the data; {}", data_flag, use);
  }
  if (t.device != "cpu")
    fail("prune: --device {}: prune trains on on the CPU; train the pruned checkpoint with connex train --device {}",
         t.device, t.device);
  check_out("prune", path, out, true);
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  check_task_flag(d, ck.preprocessing, "prune");
  const std::string cores_said = cores.apply(net);
  if (d.standardize && !(ck.preprocessing && ck.preprocessing->standardizes()))
    fail(
        "prune: --standardize would fit new statistics for a model trained without them; the checkpoint's "
        "preprocessing is used");
  // A trained checkpoint's split (the loss is then measured on the rows it
  // held out), batch size and CSV, each unless a flag says otherwise.
  Progress trained = ck.training.is_null() ? Progress{} : Progress::from_json(ck.training, path);
  trained.seed = t.seed.value_or(trained.seed);
  trained.batch_size = t.batch_size.value_or(trained.batch_size);
  trained.val_split = t.val_split.value_or(trained.val_split);
  const uint64_t seed = trained.seed;
  if (scored && d.data.empty() && trained.data.empty())
    fail("prune: --score {} needs --data ({} records no training CSV to score the connections on)", p.score, path);
  std::optional<DataArgs> data_args;
  if (uses_data) {
    data_args = resumed_data_args(d, trained, path, "prune");
    check_out("prune", data_args->data, out, false);  // the CSV it reads, given or the checkpoint's
  }
  check_out_kind("prune", out, Writes::Checkpoint);
  spdlog::info("cores: {}{}", cores_said, blas_kernels_said());
  std::optional<Table> data;
  if (data_args) {
    data = load_dataset(data_args->options(net, trained.val_split, seed), net, ck.preprocessing, "prune");
    log_data(*data, *data_args);
  }
  held.release();  // the inputs are checked; the report follows
  const PruneOptions options = p.options().scores(data ? connection_scores(net, p.score, *data) : torch::Tensor());
  const std::vector<Edge> weak = connections_to_prune(net, options);
  // What the floor held back, so that a floor above every fan-in is not a silent no-op.
  say_how_the_rule_chose(net, options, weak.size(), "prune", threshold ? "--threshold" : "--fraction", "--keep-min",
                         "--scope");
  auto optimizer = choose_optimizer(ck, net, t, path);
  auto result = edit(net).remove_connections(weak).build(seed);
  NeuralNetwork pruned = result.network;
  auto next = optimizer_after_edit(*optimizer, net, result);
  const int64_t frozen = p.include_frozen ? 0 : frozen_count(net);
  const std::string frozen_said = frozen > 0 ? frozen_note(frozen) + " (--include-frozen makes them so)" : "";
  spdlog::info("connections: {} -> {} (removed {}{})", net->num_connections(), pruned->num_connections(), weak.size(),
               frozen_said);
  std::vector<std::string> remedies{"a smaller --fraction or --threshold"};
  if (!p.protect_outputs) remedies.push_back("--protect-outputs");
  if (p.keep_min == 0) remedies.push_back("--keep-min 1");
  const std::string last = remedies.back();
  remedies.pop_back();
  warn_about_cut_outputs(
      pruned, "prune", (remedies.empty() ? last : fmt::format("{} or {}", fmt::join(remedies, ", "), last)) + " helps");
  if (p.remove_dead) {  // neurons the pruning cut off from every input or output
    const auto dead = dead_neurons(pruned);
    auto cleaned = remove_dead_neurons(pruned);
    next = optimizer_after_edit(*next, pruned, cleaned);
    const int64_t frozen_gone = frozen_count(pruned) - frozen_count(cleaned.network);
    spdlog::info("dead neurons removed: {} ({} connections left{})", dead.size(), cleaned.network->num_connections(),
                 frozen_gone > 0 ? fmt::format("; {} frozen connections went with them", frozen_gone) : "");
    pruned = cleaned.network;
  }
  // The pruned network may take the other path (and pool).
  if (const std::string share = cores.apply(pruned); share != cores_said) spdlog::info("cores: {}", share);
  std::optional<Preprocessing> preprocessing = ck.preprocessing;
  if (data) {
    report_pruning(net, pruned, next, *data, t, trained);
    if (!trained.data.empty() || data->preprocessing.standardizes()) preprocessing = data->preprocessing;
  }
  if (!out.empty()) {
    save(pruned, out, next.get(), preprocessing ? &*preprocessing : nullptr);
    spdlog::info("wrote {}", out);
  } else {
    spdlog::warn("no --out: the pruned network was not saved");
  }
  return 0;
}

struct EditArgs {
  std::vector<std::string> add_connection, remove_connection, add_input, add_hidden, add_output, remove_neuron;
  std::optional<double> dropout;
  uint64_t seed = 0;
  bool function_preserving = false;
};

// The editor's messages name its calls; the command's name the flags that made them.
std::string edit_message_with_flags(const std::string& message) {
  static const std::pair<std::string, std::string> calls[] = {{"add_input_neurons(): ", "--add-input: "},
                                                              {"add_hidden_neurons(): ", "--add-hidden: "},
                                                              {"add_output_neurons(): ", "--add-output: "},
                                                              {"add_connections(): ", "--add-connection: "},
                                                              {"remove_connections(): ", "--remove-connection: "},
                                                              {"remove_neurons(): ", "--remove-neuron: "},
                                                              {"set_dropout_p(): ", "--dropout: "},
                                                              {"function_preserving(): ", "--function-preserving: "}};
  for (const auto& [call, flag] : calls)
    if (message.rfind(call, 0) == 0) return "edit: " + flag + message.substr(call.size());
  return "edit: " + message;
}

int cmd_edit(const std::string& path, const EditArgs& a, const std::string& out) {
  // Written out unchanged, the network would lose its training record (an edited network starts a new one).
  if (a.add_connection.empty() && a.remove_connection.empty() && a.add_input.empty() && a.add_hidden.empty() &&
      a.add_output.empty() && a.remove_neuron.empty() && !a.dropout)
    fail(
        "edit: nothing to edit; give --add-connection, --remove-connection, --add-input, --add-hidden, --add-output, "
        "--remove-neuron or --dropout");
  check_out("edit", path, out, true);
  check_out_kind("edit", out, Writes::Checkpoint);
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  auto ids = [&](const std::vector<std::string>& texts, const char* what) {
    std::vector<NeuronId> v;
    for (const auto& t : texts) v.push_back(parse_id(t, net, what));
    return v;
  };
  const Topology& t = net->topology();
  // The neurons an edge may name: the network's and those this command adds.
  const std::vector<NeuronId> new_inputs = ids(a.add_input, "--add-input"),
                              new_hidden = ids(a.add_hidden, "--add-hidden"),
                              new_outputs = ids(a.add_output, "--add-output");
  std::set<NeuronId> added_ids;
  for (const auto* list : {&new_inputs, &new_hidden, &new_outputs}) added_ids.insert(list->begin(), list->end());
  const auto named = [&](const NeuronId& id) { return t.dense_of(id) >= 0 || added_ids.count(id) > 0; };
  auto edges = [&](const std::vector<std::string>& texts, const char* what) {
    std::vector<Edge> v;
    for (const auto& text : texts) v.push_back(parse_edge(text, net, what, named));
    return v;
  };
  const std::vector<Edge> added = edges(a.add_connection, "--add-connection");
  const std::vector<Edge> removed = edges(a.remove_connection, "--remove-connection");
  const std::vector<NeuronId> removed_neurons = ids(a.remove_neuron, "--remove-neuron");
  // The library runs adds before removes, so removing in the same command
  // what it adds would silently undo the add: said first, whatever else is wrong with it.
  for (const auto& e : removed)
    if (std::find(added.begin(), added.end(), e) != added.end())
      fail("edit: --remove-connection {}: the same command adds it (--add-connection); give neither", edge_str(e));
  for (const auto& id : removed_neurons) {
    if (added_ids.count(id)) fail("edit: --remove-neuron {}: the same command adds it; give neither", id);
    for (const auto& e : added)
      if (e.first == id || e.second == id)
        fail("edit: --add-connection {}: the same command removes neuron {} (--remove-neuron)", edge_str(e), id);
  }
  // The library keeps an existing connection that is added again (an edit may
  // restore one it removed); here, adds come before removes, so it is a mistake.
  for (const auto& [from, to] : added) {
    const int64_t u = t.dense_of(from), v = t.dense_of(to);
    if (u >= 0 && v >= 0 && t.connection_index(u, v) >= 0)
      fail("edit: --add-connection {}: the network has this connection already (weight {:g})", edge_str({from, to}),
           net->weight(from, to));
  }
  // The library merges a connection added twice; given twice here, it is a slip.
  for (size_t i = 0; i < added.size(); ++i)
    if (std::find(added.begin(), added.begin() + i, added[i]) != added.begin() + i)
      fail("edit: --add-connection: edge {} is listed twice", edge_str(added[i]));
  // Neurons first, so new neurons can be wired in the same command.
  auto result = [&] {
    try {
      auto editor = edit(net);
      editor.add_input_neurons(new_inputs)
          .add_hidden_neurons(new_hidden)
          .add_output_neurons(new_outputs)
          .add_connections(added)
          .remove_connections(removed)
          .remove_neurons(removed_neurons);
      if (a.dropout) editor.set_dropout_p(*a.dropout);
      editor.function_preserving(a.function_preserving);
      return editor.build(a.seed);
    } catch (const Error& e) {
      throw Error(edit_message_with_flags(e.what()));
    }
  }();
  // The saved optimizer goes on with its own options (learning rate included).
  std::unique_ptr<torch::optim::Optimizer> next;
  if (ck.optimizer) next = optimizer_after_edit(*restore_optimizer(ck, path), net, result);
  const auto preprocessing = preprocessing_after_edit(ck, result.network);
  save(result.network, out, next.get(), preprocessing ? &*preprocessing : nullptr);
  std::printf("%s\nwrote %s%s\n", one_line(result.network).c_str(), out.c_str(),
              next ? fmt::format(" (optimizer state carried: {}, learning rate {})", ck.optimizer->type,
                                 next->param_groups()[0].options().get_lr())
                         .c_str()
                   : "");
  return 0;
}

// dot's stderr in a few words: its lines joined, control bytes escaped, cut.
std::string dot_failure(const std::string& messages, int status) {
  std::string lines;
  std::istringstream in(messages);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines += (lines.empty() ? "" : "; ") + line;
  const std::string exit = status == 128 ? "killed by a signal" : fmt::format("exit status {}", status);
  return lines.empty() ? exit : fmt::format("{}: {}", exit, printable(lines, 200));
}

// dot reports any failed write as "gvwrite_no_z problem 8192"; say what it means.
std::string write_failure_note(const std::string& scratch, const std::string& out, const std::string& messages) {
  struct statvfs fs_info {};
  if (::statvfs(scratch.c_str(), &fs_info) == 0 && fs_info.f_bavail == 0)
    return fmt::format("; the file system that would hold {} is full", out);
  if (messages.find("gvwrite") != std::string::npos)
    return "; Graphviz could not write the image (a full disk or a file-size limit)";
  return "";
}

// At most the first 64 KiB of a small log file ("" when unreadable).
std::string slurp_bounded(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text(64 * 1024, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(std::max<std::streamsize>(0, in.gcount())));
  return text;
}

// The CSV a run trained on (its record's) is what a resume of it reads:
// export and predict write no file over it.
void check_out_is_not_the_runs_data(const std::string& command, const Checkpoint& ck, const std::string& path,
                                    const std::string& out) {
  if (out.empty() || !ck.training.is_object() || !ck.training.contains("data")) return;
  const auto& d = ck.training.at("data");
  if (!d.is_object() || !d.contains("path") || !d.at("path").is_string()) return;
  const std::string data = d.at("path").get<std::string>();
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(data, out, ec))
    fail("{}: --out {} is the CSV {} was trained on ({}); write elsewhere", command, out, path, data);
}

int cmd_export(const std::string& path, const std::string& format, const std::string& out, double dot_seconds) {
  // Up front: a directory would only fail at the rename, after all the work.
  check_out("export", path, out, false);
  check_out_kind("export", out, Writes::Export);
  NetworkFile kind;
  const Checkpoint ck = open_network(path, &kind);
  check_out_is_not_the_runs_data("export", ck, path, out);
  // A name that says another format: the file is written as asked, and said.
  static const std::pair<const char*, const char*> kExtensions[] = {
      {".pt", "torchscript"}, {".pth", "torchscript"}, {".json", "json"}, {".graphml", "graphml"},
      {".dot", "dot"},        {".gv", "dot"},          {".png", "png"}};
  const std::string extension = fs::path(out).extension().string();
  for (const auto& [ext, named] : kExtensions)
    if (extension == ext && format != named)
      spdlog::warn("export: {}'s extension names the {} format; --format {} writes {} as asked", out, named, format,
                   out);
  const NeuralNetwork& net = ck.network;
  // What a deployer would otherwise find out from wrong predictions.
  if (format == "torchscript") {
    if (kind == NetworkFile::Config)
      spdlog::warn("export: {} holds a network's initial weights, never trained: {} computes with those", path, out);
    else if (kind == NetworkFile::GraphExport)  // a checkpoint without one never had it, or its edit said so
      spdlog::warn(
          "export: {} is a node-link JSON export, which holds no preprocessing: {} takes its inputs as the network "
          "reads them, neither standardized nor named",
          path, out);
  } else if (ck.preprocessing) {  // a graph or drawing holds the network alone
    spdlog::warn(
        "export: {} holds the network only, not the checkpoint's preprocessing (features {}{}{}); a model that "
        "takes raw rows is --format torchscript, or keep the checkpoint",
        out, columns_said(ck.preprocessing->features), ck.preprocessing->standardizes() ? ", standardized" : "",
        ck.preprocessing->classes.empty() ? "" : fmt::format(", classes {}", columns_said(ck.preprocessing->classes)));
  }
  if (format == "torchscript") {
    // A deployed model takes raw rows: the preprocessing goes inside it.
    export_torchscript(net, out, ck.preprocessing ? &*ck.preprocessing : nullptr);
  } else if (format == "json" || format == "graphml" || format == "dot") {
    const std::string text = format == "json"      ? to_node_link_json(net).dump(1) + "\n"
                             : format == "graphml" ? to_graphml(net)
                                                   : to_dot(net);
    write_file_atomically(out, text, "export");
    // GraphML lists neurons in node order, with no input or output order of its own.
    if (format == "graphml")
      for (const auto& [role, order] : {std::pair<Role, std::vector<NeuronId>>{Role::Input, net->input_neurons()},
                                        {Role::Output, net->output_neurons()}}) {
        const GraphSpec& spec = net->spec();  // its neurons' order is the file's node order
        std::vector<NeuronId> listed;
        for (int64_t i = 0; i < spec.num_neurons(); ++i)
          if (spec.role_at(i) == role) listed.push_back(spec.neurons()[i]);
        const auto at = std::mismatch(listed.begin(), listed.end(), order.begin());
        if (at.first != listed.end())
          spdlog::warn(
              "export: {} lists the {} in node order, not the network's: {} {} there, where the network has {}; "
              "--format json keeps the order and imports back",
              out, role == Role::Input ? "inputs" : "outputs", role == Role::Input ? "input" : "output",
              fmt::format("{} is number {}", *at.first, at.first - listed.begin() + 1), *at.second);
      }
    // GraphML and DOT describe the graph: the techniques' trained values travel in the JSON only.
    if (format != "json" && !net->operations().empty()) {
      std::vector<std::string> techniques;
      for (const auto& op : net->operations()) techniques.push_back(op->name());
      spdlog::warn(
          "export: {} holds no technique parameters ({}); --format json and the checkpoint keep them, and only they "
          "import back",
          out, fmt::join(techniques, ", "));
    }
  } else {  // png through Graphviz, run directly (no shell: the paths are the user's)
    // A large network is drawn as a summary, every drawing is bounded in
    // pixels, and dot gets a time limit: a full drawing of a thousand neurons
    // takes minutes and is unreadable at Graphviz's size limit.
    const DotDrawing drawing = draw_dot(net);
    // dot's files (input, image, messages) live in a directory of this run's
    // own (mode 0700, removed on every path): no name in it can be planted or
    // shared with a concurrent export. The image then reaches `out` by the
    // same exclusive temporary + rename as every other file.
    const PrivateDirectory scratch(out, "export");
    const std::string dot_file = scratch / "graph.dot", png_file = scratch / "graph.png", log = scratch / "dot.stderr";
    write_file_atomically(dot_file, drawing.dot, "export");
    const int status = run_program({"dot", "-Tpng", "-o", png_file, dot_file}, dot_seconds, log);
    if (status == 127)
      fail("export --format png needs Graphviz's dot, which is not on PATH (Debian: apt-get install graphviz)");
    if (status == kTimedOut)
      fail(
          "export: dot did not finish drawing {} ({}) within {:g} s and was stopped; raise --timeout, or use --format "
          "dot or json",
          out, drawing.description, dot_seconds);
    if (status != 0) {
      const std::string messages = slurp_bounded(log);
      fail("export: dot failed to draw {} ({}){}", out, dot_failure(messages, status),
           write_failure_note(scratch.path(), out, messages));
    }
    write_file_atomically(out, read_file(png_file, "export"), "export");
    if (drawing.summary)
      std::printf("wrote %s: %s (%s; use --format dot or json for the whole graph)\n", out.c_str(),
                  drawing.description.c_str(), drawing.reason.c_str());
    else
      std::printf("wrote %s: %s\n", out.c_str(), drawing.description.c_str());
    return 0;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

// inspect: a run's record, the settings a resumed run keeps.
void print_training_record(const Progress& p) {
  std::printf(
      "training: %d epoch(s) done%s; seed %llu, batch size %s, validation split %g (a resumed run keeps these)\n",
      p.epoch, p.batch > 0 ? fmt::format(", {} batch(es) of epoch {}", p.batch, p.epoch + 1).c_str() : "",
      static_cast<unsigned long long>(p.seed),
      p.batch_size > 0 ? std::to_string(p.batch_size).c_str() : "0 (the full training set)", p.val_split);
  if (p.rewire.active())
    std::printf("rewiring: %s after every %lld steps, drop fraction %g, %s (a resumed run keeps these)\n",
                p.rewire.method.c_str(), static_cast<long long>(p.rewire.every), p.rewire.drop_fraction,
                p.rewire.end_step > 0 ? fmt::format("none from step {}", p.rewire.end_step).c_str()
                                      : "its end fixed by the run that continues it");
  if (p.prune.at_epoch > p.epoch)
    std::printf("prune: %s (a resumed run keeps it; --prune-at-epoch 0 cancels it, --prune-at-epoch N moves it)\n",
                p.prune.said().c_str());
  if (p.data.empty()) {
    std::printf(
        "data: no CSV recorded (the built-in toy set, or a run of an earlier version; a resumed run trains on the "
        "toy set unless --data names a CSV)\n");
    return;
  }
  if (const std::string missing = missing_data_said(p.data); !missing.empty()) {
    std::printf("data: %s, %s (a resumed run needs --data)\n", p.data.c_str(), missing.c_str());
    return;
  }
  // Hashed whole when its size is as recorded: the bytes decide.
  const std::string changed = p.data_changed();
  const std::string said =
      changed.empty() ? "a resumed run trains on it unless --data names another"
      : changed == Progress::kUnreadable
          ? changed
          : fmt::format("changed since the run: {}; a resumed run warns of it, and --data can name another CSV",
                        changed);
  std::printf("data: %s (%s)\n", p.data.c_str(), said.c_str());
}

// A CSV cell: quoted when it holds a comma, a quote or a line break (RFC 4180).
std::string csv_cell(const std::string& text) {
  // Also an empty cell and one with outer spaces: readers drop those spaces.
  const bool padded = text.empty() || std::isspace(static_cast<unsigned char>(text.front())) ||
                      std::isspace(static_cast<unsigned char>(text.back()));
  if (!padded && text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// Predictions for a CSV's rows, in file order, through the preprocessing the
// model was trained with; scored when the file holds the target columns too.
int cmd_predict(const std::string& path, const std::string& data, const std::string& out, int64_t batch_size) {
  check_out("predict", path, out, false);
  check_out("predict", data, out, false);
  check_out_kind("predict", out, Writes::Predictions);
  // The predictions take standard output: the log goes to standard error.
  if (out.empty()) spdlog::set_default_logger(spdlog::stderr_color_mt("predict"));
  // Names a missing file, or one that holds no network.
  NetworkFile kind;
  const Checkpoint ck = open_network(path, &kind);
  check_out_is_not_the_runs_data("predict", ck, path, out);
  if (kind == NetworkFile::Config)
    fail(
        "predict: {} holds a network's initial weights, never trained; give a checkpoint, a train --out directory "
        "or a node-link JSON export",
        path);
  if (kind == NetworkFile::GraphExport)
    spdlog::warn(
        "{}: a node-link JSON export holds no preprocessing: every column of {} goes in as it is, in file order (a "
        "network trained on standardized columns predicts from the checkpoint)",
        path, data);
  NeuralNetwork net = ck.network;
  const auto& fitted = ck.preprocessing;
  // Read and parsed once: every column but the features stays text.
  require_file(data);
  const std::string text_in = read_file(data, "predict");
  const auto columns = csv_columns(text_in, data);
  std::vector<std::string> text_columns;
  if (fitted)
    for (const auto& name : columns)
      if (std::find(fitted->features.begin(), fitted->features.end(), name) == fitted->features.end())
        text_columns.push_back(name);
  const CsvTable csv = [&] {
    try {
      return parse_csv(text_in, data, text_columns);
    } catch (const Error& e) {
      if (fitted) throw;
      // Without the preprocessing's feature names every column is an input.
      fail(
          "{}; {} holds no preprocessing (a graph export, or an edit that dropped it), so every column is read as an "
          "input",
          e.what(), path);
    }
  }();
  const bool has_targets = fitted && std::all_of(fitted->targets.begin(), fitted->targets.end(),
                                                 [&](const std::string& name) { return csv.column_index(name) >= 0; });
  // Rows are predicted within the dtype's range; scoring squares the
  // targets' errors, so a target beyond that leaves the rows unscored, not
  // unpredicted.
  const torch::Tensor inputs = read_inputs(csv, net, fitted);
  torch::Tensor targets;
  std::string unscored;  // why rows that hold the targets were not scored
  if (has_targets) {
    try {
      targets = read_targets(csv, net, *fitted);
    } catch (const Error& e) {
      unscored = e.what();
    }
  }
  if (fitted && !has_targets) {
    std::vector<std::string> missing;  // of the targets, when the file holds some of them
    for (const auto& name : fitted->targets)
      if (csv.column_index(name) < 0) missing.push_back(name);
    if (missing.size() < fitted->targets.size())
      unscored = fmt::format("the file lacks the target column(s) {}", fmt::join(missing, ", "));
  }

  torch::NoGradGuard no_grad;
  net->eval();
  const int64_t rows = inputs.size(0);
  std::vector<torch::Tensor> parts;
  for (int64_t first = 0; first < rows; first += batch_size)
    parts.push_back(net->forward(inputs.narrow(0, first, std::min(batch_size, rows - first))));
  const torch::Tensor outputs = torch::cat(parts);

  // The columns: a regression's targets (or the outputs' labels); a
  // classifier's label column (the most probable output's class, or the
  // output's label where it has none), then each output's probability.
  const bool classify = fitted && fitted->task == Task::Classification;
  std::vector<std::string> header;
  const std::vector<std::string> output_names = (fitted ? *fitted : Preprocessing{}).output_names(net);
  if (classify) {
    header.push_back(fitted->targets[0]);
    for (const auto& name : output_names) header.push_back("p_" + name);
  } else {
    header = output_names;
  }
  // A classifier's outputs are logits, probabilities or log-probabilities, by its output transformation.
  const auto& transformation = net->options().output_transformation();
  torch::Tensor values = outputs.to(torch::kFloat64);
  if (classify && !transformation.is_softmax())
    values = transformation.is_log_softmax() ? values.exp() : torch::softmax(values, 1);
  values = values.contiguous();
  const bool as_float = outputs.scalar_type() != torch::kFloat64;  // shortest text of the value the network gave
  auto number = [&](double x) { return as_float ? fmt::format("{}", static_cast<float>(x)) : fmt::format("{}", x); };
  const auto chosen = outputs.argmax(1).contiguous();
  const double* v = values.data_ptr<double>();
  const int64_t* best = chosen.data_ptr<int64_t>();
  std::string text;
  for (size_t j = 0; j < header.size(); ++j) text += (j ? "," : "") + csv_cell(header[j]);
  text += "\n";
  const int64_t n_out = values.size(1);
  for (int64_t i = 0; i < rows; ++i) {
    if (classify) text += csv_cell(output_names[best[i]]) + ",";
    for (int64_t k = 0; k < n_out; ++k) text += (k ? "," : "") + number(v[i * n_out + k]);
    text += "\n";
  }
  if (out.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
      fail("predict: cannot write the predictions to standard output: {}", std::strerror(errno));
  } else {
    write_file_atomically(out, text, "predict");
  }
  // The summary goes to stderr when the predictions take stdout.
  std::string summary = fmt::format("predicted {} row{} of {}", rows, rows == 1 ? "" : "s", data);
  if (!fitted)
    summary += fmt::format(" (no preprocessing saved: its {} columns are the inputs, as given)", columns.size());
  if (targets.defined()) {
    // From the outputs above (batched), as training's evaluate() scores them.
    const double loss = loss_of(net, outputs, targets, fitted->task).item<double>();
    const double metric = classify ? chosen.eq(targets).to(torch::kFloat64).mean().item<double>() : loss;
    summary += classify ? fmt::format("; accuracy {:.4f} against column {} (cross-entropy {:.6g})", metric,
                                      fitted->targets[0], loss)
                        : fmt::format("; mse {:.6g} against columns {}", loss, fmt::join(fitted->targets, ","));
  } else if (!unscored.empty()) {
    summary += fmt::format("; not scored: {}", unscored);
  }
  if (!out.empty()) summary += fmt::format("\nwrote {}", out);
  std::fprintf(out.empty() ? stderr : stdout, "%s\n", summary.c_str());
  return 0;
}

// inspect's line for a checkpoint's optimizer state (nothing without one).
void print_saved_optimizer(const std::optional<SavedOptimizer>& saved) {
  if (saved)
    std::printf("optimizer state: %s, learning rate %s\n", saved->type.c_str(),
                saved->groups.empty() ? "?" : saved->groups[0].options.at("lr").dump().c_str());
}

// inspect of a HAM checkpoint (connex/ham): no command trains or edits one,
// but a user who has one wants to see what it holds.
int inspect_ham(const std::string& path) {
  const ham::Checkpoint ck = ham::load_checkpoint(path);
  std::ostringstream structure;
  ck.ham->pretty_print(structure);
  std::printf("%s\n", structure.str().c_str());
  for (const auto& l : ck.ham->layers()) {
    std::ostringstream lagrangian;
    l.lagrangian->pretty_print(lagrangian);
    fmt::print("layer {}: per-sample shape [{}], {}, tau {:g}\n", l.name, fmt::join(l.shape, ", "), lagrangian.str(),
               l.tau);
  }
  int64_t values = 0, frozen = 0;
  for (const auto& p : ck.ham->parameters()) {
    values += p.numel();
    frozen += p.requires_grad() ? 0 : p.numel();
  }
  std::printf("parameters: %lld (%lld frozen)\n", static_cast<long long>(values), static_cast<long long>(frozen));
  print_saved_optimizer(ck.optimizer);
  return 0;
}

int cmd_inspect(const std::string& path) {
  std::error_code ec;
  // A run directory's model.ckpt may be a HAM checkpoint too.
  const std::string file = fs::is_directory(path, ec) ? (fs::path(path) / "model.ckpt").string() : path;
  if (const auto head = file_head(file, 8); head && has_magic(*head, kHamMagic)) return inspect_ham(file);
  Checkpoint ck = open_network(path);
  NeuralNetwork net = ck.network;
  const auto& topo = net->topology();
  std::printf("%s\n", one_line(net).c_str());
  std::printf("inputs  (%lld): %s\n", static_cast<long long>(net->num_inputs()),
              join_ids(net->input_neurons()).c_str());
  std::printf("outputs (%lld): %s\n", static_cast<long long>(net->num_outputs()),
              join_ids(net->output_neurons()).c_str());
  const auto hidden = net->hidden_neurons();
  std::printf("hidden  (%zu)%s\n", hidden.size(), hidden.size() <= 40 ? (": " + join_ids(hidden)).c_str() : "");
  std::printf("connections: %lld\ndepth: %lld\nparameters: %lld\n", static_cast<long long>(net->num_connections()),
              static_cast<long long>(topo.depth()), static_cast<long long>(net->num_parameters()));
  std::string sizes;
  std::map<std::string, int> kernels;
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    sizes += (l > 1 ? " " : "") + std::to_string(topo.levels()[l].size());
    ++kernels[kernel_name(topo.levels()[l].kernel)];
  }
  std::printf("level sizes: %s\n", sizes.c_str());
  std::string connections;  // into each level: what rewiring keeps
  for (size_t l = 1; l < topo.levels().size(); ++l)
    connections += (l > 1 ? " " : "") + std::to_string(topo.levels()[l].num_connections());
  std::printf("level connections: %s\n", connections.c_str());
  std::string kernel_text;
  for (const auto& [k, n] : kernels) kernel_text += fmt::format("{}{} × {}", kernel_text.empty() ? "" : ", ", n, k);
  std::printf("level kernels: %s\n", kernel_text.c_str());
  std::string ops;
  for (const auto& op : net->operations()) ops += (ops.empty() ? "" : ", ") + op->name();
  std::printf("techniques: %s\n", ops.empty() ? "none" : ops.c_str());
  double max_p = 0;
  int dropped = 0;
  for (const auto& n : net->weighted_graph().neurons) {
    max_p = std::max(max_p, n.dropout_p);
    dropped += n.dropout_p > 0;
  }
  std::printf("dropout: %d neurons with p > 0 (max %.3g)\n", dropped, max_p);
  std::printf("frozen: %lld connections, %lld biases\n", static_cast<long long>(frozen_count(net)),
              static_cast<long long>(net->frozen_biases().sum().item<int64_t>()));
  print_saved_optimizer(ck.optimizer);
  if (!ck.training.is_null()) print_training_record(Progress::from_json(ck.training, path));
  if (fs::is_directory(path)) {
    const auto stale = run_files_out_of_step(path, ck);
    std::printf("run directory: %s\n", stale.empty()
                                           ? "every file goes with model.ckpt"
                                           : fmt::format("{} out of step (see the warning)", stale.size()).c_str());
  }
  if (const auto& p = ck.preprocessing) {
    const std::string classes =
        p->task == Task::Classification ? fmt::format(" ({})", fmt::join(p->classes, ", ")) : "";
    std::printf("preprocessing: %s of %s%s from %s%s\n", task_name(p->task),
                fmt::format("{}", fmt::join(p->targets, ", ")).c_str(), classes.c_str(),
                fmt::format("{}", fmt::join(p->features, ", ")).c_str(), p->standardizes() ? ", standardized" : "");
  }
  return 0;
}

// `threads`: connex's own --threads (given before `bench`), passed on unless
// the benchmark's options name their own.
int cmd_bench(std::vector<std::string> args, std::optional<int> threads) {
  // The benchmark program sits beside this one.
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const fs::path bench = self.parent_path() / "connex_bench";
  if (!fs::exists(bench)) fail("bench: {} is missing; build the connex_bench target", bench.string());
  const bool own = std::any_of(args.begin(), args.end(),
                               [](const std::string& a) { return a == "--threads" || a.rfind("--threads=", 0) == 0; });
  if (threads && !own) args.insert(args.begin(), {"--threads", std::to_string(*threads)});
  std::vector<char*> argv{const_cast<char*>(bench.c_str())};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(bench.c_str(), argv.data());
  fail("bench: cannot run {}", bench.string());
}

// Every subcommand's arguments; train and prune share the data flags, and the commands share `path` and --out.
struct Commands {
  std::string config, path, out, format;
  DataArgs data;
  TrainArgs train_args, prune_train;
  DistributedArgs dist;
  PruneArgs prune_args;
  EditArgs edit_args;
  double dot_seconds = 60;
  std::string predict_data;
  int64_t predict_batch = 4096;
  std::optional<int> bench_threads;  // connex --threads N bench: N, for the benchmark
  CLI::App *train = nullptr, *prune = nullptr, *edit = nullptr, *export_ = nullptr, *inspect = nullptr,
           *predict = nullptr, *bench = nullptr;
};

void add_sparse_training_flags(CLI::App* train, TrainArgs& t) {
  train
      ->add_option("--density", t.density,
                   "start from a sparse layered network of the config's layer sizes at this density "
                   "(\"prebuilt\": \"MLP\" or \"SparseMLP\" configs; seeded by --seed)")
      ->check(number_in(0, 1, false, true));
  // The library's names (distribution_from_name; erdos_renyi is er), as a config gives them.
  train
      ->add_option("--init-density", t.init_density,
                   "how --density is shared among the layer pairs (default er; erdos_renyi is er)")
      ->transform(one_of({"uniform", "er", "erdos_renyi", "erk"}));
  train
      ->add_option("--rewire", t.rewire,
                   "rewire while training: set (grow at random), rigl (grow by gradient) or none; default: a resumed "
                   "run's")
      ->transform(one_of(rewire_choices()));
  train->add_option("--rewire-every", t.rewire_every, "rewire after every N optimizer steps (default 100)")
      ->check(number_in(1, 9.0e15, true));
  train->add_option("--drop-fraction", t.drop_fraction, "share of each level's connections replaced (default 0.3)")
      ->check(number_in(0, 1, false, false, true));
  train
      ->add_option("--rewire-end", t.rewire_end,
                   "stop rewiring (the share decays to 0 by a cosine) at this fraction of the run's steps (default "
                   "0.75)")
      ->check(number_in(0, 1, false, true));
}

void add_train_command(CLI::App& app, Commands& c) {
  c.train = app.add_subcommand("train", "train a network from a JSON config or checkpoint");
  c.train->add_option("config", c.config, "JSON config or checkpoint (default: the README network)")
      ->check(path_check());
  c.data.add_to(c.train);
  c.train_args.add_to(c.train, 1000, "a resumed run's", "the split, shuffling and new parameters");
  c.dist.add_to(c.train);
  c.train
      ->add_option("--prune-at-epoch", c.train_args.prune_at_epoch,
                   "prune after this epoch (with --prune-fraction; without it, a resumed run's recorded prune moves "
                   "here); 0 cancels a resumed run's recorded prune")
      ->check(number_in(0, kIntMax, true));
  c.train
      ->add_option("--prune-fraction", c.train_args.prune_fraction,
                   "fraction of connections to prune at --prune-at-epoch, weakest |w| first; alone, as --prune-scope "
                   "and --prune-keep-min alone, it changes a resumed run's recorded prune")
      ->check(number_in(0, 1, false, true));
  c.train
      ->add_option("--prune-scope", c.train_args.prune_scope,
                   "which connections compete at --prune-at-epoch, as prune's --scope (default: global)")
      ->transform(one_of(prune_scope_choices()));
  c.train
      ->add_option("--prune-keep-min", c.train_args.prune_keep_min,
                   "at --prune-at-epoch every neuron keeps at least this many incoming connections (default 0)")
      ->check(number_in(0, 9.0e15, true));
  c.train
      ->add_option("--checkpoint-every", c.train_args.checkpoint_every, "write --out every this many epochs (rank 0)")
      ->check(number_in(0, kIntMax, true));
  c.train->add_option("--out", c.out, "directory for model.ckpt, metrics.csv, metrics.json, config.json")
      ->check(path_check());
  add_flag_once(c.train, "--overwrite", c.train_args.overwrite,
                "let --out replace another run's files (resuming a run in place needs no flag)");
  add_sparse_training_flags(c.train, c.train_args);
}

void add_prune_command(CLI::App& app, Commands& c) {
  c.prune = app.add_subcommand("prune", "remove the weakest connections (by |w| or --score), optionally train on");
  c.prune->add_option("checkpoint", c.path, "checkpoint or config")->required()->check(path_check());
  c.prune->add_option("--threshold", c.prune_args.threshold, "remove connections with |w| below this")
      ->check(number_in(0, HUGE_VAL, false));
  c.prune->add_option("--fraction", c.prune_args.fraction, "remove this fraction of connections, weakest first")
      ->check(number_in(0, 1, false));
  c.prune
      ->add_option("--scope", c.prune_args.scope,
                   "which connections compete for --fraction: global, neuron (into each neuron) or level")
      ->transform(one_of(prune_scope_choices()));
  c.prune->add_option("--keep-min", c.prune_args.keep_min, "every neuron keeps at least this many incoming connections")
      ->check(number_in(0, 9.0e15, true));
  add_flag_once(c.prune, "--protect-outputs", c.prune_args.protect_outputs, "never prune connections into outputs");
  add_flag_once(c.prune, "--include-frozen", c.prune_args.include_frozen,
                "prune frozen connections too (by default they are kept)");
  c.prune
      ->add_option("--score", c.prune_args.score,
                   "what makes a connection weak: magnitude |w| (default), activation |w a| or gradient |w dL/dw| "
                   "(these two on --data's training rows)")
      ->transform(one_of({"magnitude", "activation", "gradient"}));
  add_flag_once(c.prune, "--remove-dead", c.prune_args.remove_dead,
                "then remove hidden neurons that no input reaches or that reach no output");
  c.data.add_to(c.prune);
  c.prune_train.add_to(c.prune, 0, "a trained checkpoint's", "the data's split and the shuffling of --epochs");
  c.prune->add_option("--out", c.out, "write the pruned checkpoint here")->check(path_check());
}

void add_edit_command(CLI::App& app, Commands& c) {
  auto& a = c.edit_args;
  c.edit = app.add_subcommand("edit", "add and remove neurons and connections");
  c.edit->add_option("checkpoint", c.path, "checkpoint or config")->required()->check(path_check());
  // One value a flag (a second would be read as the checkpoint): repeated for more.
  c.edit->add_option("--add-connection", a.add_connection, "FROM:TO, one a flag (repeat it for more)")
      ->allow_extra_args(false);
  c.edit->add_option("--remove-connection", a.remove_connection, "FROM:TO, one a flag (repeat it for more)")
      ->allow_extra_args(false);
  c.edit->add_option("--add-input", a.add_input, "new input neuron (comes first), one a flag")->allow_extra_args(false);
  c.edit->add_option("--add-hidden", a.add_hidden, "new hidden neuron, one a flag")->allow_extra_args(false);
  c.edit->add_option("--add-output", a.add_output, "new output neuron (comes last), one a flag")
      ->allow_extra_args(false);
  c.edit->add_option("--remove-neuron", a.remove_neuron, "neuron to remove, one a flag")->allow_extra_args(false);
  c.edit->add_option("--dropout", a.dropout, "dropout p for every hidden neuron")->check(number_in(0, 1, false));
  c.edit->add_option("--seed", a.seed, "seed for new parameters")->check(seed_check());
  add_flag_once(
      c.edit, "--function-preserving", a.function_preserving,
      "every new connection into an existing neuron starts at 0, so what the edit adds leaves the outputs as they "
      "were (an edit it cannot keep so, such as a new output under softmax, is refused); removals still change them");
  c.edit->add_option("--out", c.out, "write the edited checkpoint here")->required()->check(path_check());
}

void add_export_command(CLI::App& app, Commands& c) {
  c.export_ = app.add_subcommand("export", "write a network as TorchScript, JSON, GraphML, DOT or PNG");
  c.export_->add_option("checkpoint", c.path, "checkpoint or config")->required()->check(path_check());
  c.export_->add_option("--format", c.format, "the file's format")
      ->required()
      ->transform(one_of({"torchscript", "json", "graphml", "dot", "png"}));
  c.export_->add_option("--out", c.out, "output file")->required()->check(path_check());
  c.export_->add_option("--timeout", c.dot_seconds, "png: seconds Graphviz may take (default 60)")
      ->check(number_in(0, 86400, false, true));
}

void add_inspect_command(CLI::App& app, Commands& c) {
  c.inspect = app.add_subcommand("inspect", "describe a checkpoint (network or HAM) or config");
  c.inspect->add_option("file", c.path, "checkpoint or config")->required()->check(path_check());
}

void add_predict_command(CLI::App& app, Commands& c) {
  c.predict = app.add_subcommand("predict", "run a trained network on a CSV's rows and write its predictions");
  c.predict->add_option("checkpoint", c.path, "checkpoint or run directory")->required()->check(path_check());
  c.predict->add_option("--data", c.predict_data, "CSV with the feature columns the model was trained on")
      ->required()
      ->check(path_check());
  c.predict->add_option("--out", c.out, "CSV to write (default: standard output)")->check(path_check());
  c.predict->add_option("--batch-size", c.predict_batch, "rows per forward pass (default 4096)")
      ->check(number_in(1, 1 << 30, true));
}

void add_bench_command(CLI::App& app, Commands& c) {
  c.bench = app.add_subcommand("bench", "run the benchmark program (options pass through)");
  c.bench->allow_extras();
  c.bench->prefix_command();
}

// True (after saying so) when the first argument names no subcommand.
bool unknown_subcommand(CLI::App& app, int argc, char** argv) {
  if (argc <= 1 || argv[1][0] == '-') return false;
  const std::string first = argv[1];
  bool known = false;
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    known |= sub->get_name() == first;
    names.push_back(sub->get_name());
  }
  if (!known)
    std::fprintf(stderr, "connex: unknown subcommand \"%s\"; the subcommands are %s\n", first.c_str(),
                 fmt::format("{}", fmt::join(names, ", ")).c_str());
  return !known;
}

// Said after parsing (not by the flag's check, whose range the help prints) with the machine's cores.
bool too_many_threads(int threads) {
  const int most = apps::most_threads_here();
  if (threads <= most) return false;
  std::fprintf(stderr,
               "connex: --threads %d: this machine has %d core(s); give at most %d (threads beyond the cores only "
               "wait for each other)\n",
               threads, apps::cores_here(), most);
  return true;
}

// True (after saying so) when --nproc comes with flags for a run whose ranks meet by port.
bool nproc_conflicts(const DistributedArgs& dist) {
  if (dist.rank || dist.world_size) {
    std::fprintf(stderr,
                 "connex: --nproc launches local workers itself; don't combine it with --rank or --world-size\n");
    return true;
  }
  if (dist.master_addr || dist.master_port) {
    std::fprintf(stderr,
                 "connex: --nproc workers meet through a private file, not a port; --master-addr and --master-port "
                 "are for runs with --rank and --world-size\n");
    return true;
  }
  return false;
}

// Local workers share the cores unless --threads says otherwise.
int threads_for_this_process(const CLI::App& app, int threads) {
  if (app.get_option("--threads")->count() == 0)
    threads = std::max(1, threads / connex::detail::environment_int("LOCAL_WORLD_SIZE", 1, 1 << 20).value_or(1));
  return threads;
}

// CLI11's message, but for a flag given twice, which it words as a count
// ("--epochs: At Most 1 required but received 2").
std::string parse_error_text(const CLI::ParseError& e) {
  std::string text = e.what();
  const std::string repeated = ": At Most 1 required but received ";
  const auto at = text.find(repeated);
  if (at != std::string::npos)
    text = text.substr(0, at) + " is given " + text.substr(at + repeated.size()) + " times; give it once";
  return text;
}

int run_command(const Commands& c, const CoreShare& cores) {
  if (*c.train) return cmd_train(c.config, c.data, c.train_args, c.dist, c.out, cores);
  if (*c.prune) return cmd_prune(c.path, c.prune_args, c.data, c.prune_train, c.out, cores);
  if (*c.edit) return cmd_edit(c.path, c.edit_args, c.out);
  if (*c.export_) {
    if (c.export_->get_option("--timeout")->count() && c.format != "png")
      fail("export: --timeout is the time Graphviz may take to draw a PNG; --format {} does not run it", c.format);
    return cmd_export(c.path, c.format, c.out, c.dot_seconds);
  }
  if (*c.inspect) return cmd_inspect(c.path);
  if (*c.predict) return cmd_predict(c.path, c.predict_data, c.out, c.predict_batch);
  if (*c.bench) return cmd_bench(c.bench->remaining(), c.bench_threads);
  return 0;
}

}  // namespace

// The help that lists the flags of the command argv names ("connex train --help"), else the program's.
std::string help_for(CLI::App& app, int argc, char** argv) {
  const auto commands = app.get_subcommands([](CLI::App*) { return true; });
  for (int k = 1; k < argc; ++k)
    for (const CLI::App* command : commands)
      if (command->get_name() == argv[k]) return "connex " + command->get_name() + " --help";
  return "connex --help";
}

int main(int argc, char** argv) {
  CLI::App app{"connex: train, prune, edit, export, inspect and predict with DAG neural networks"};
  app.require_subcommand(1);
  int threads = apps::cores_here();
  app.add_option("--threads", threads, "cores to use (default: all; at most 4 per core; local workers share them)")
      ->check(number_in(1, 1024, true));
  Commands c;
  add_train_command(app, c);
  add_prune_command(app, c);
  add_edit_command(app, c);
  add_export_command(app, c);
  add_inspect_command(app, c);
  add_predict_command(app, c);
  add_bench_command(app, c);
  // `connex train cfg.json --threads 1` as well as `connex --threads 1 train
  // cfg.json`: the commands pass --threads up (bench passes its options on to
  // the benchmark program instead).
  for (CLI::App* command : {c.train, c.prune, c.edit, c.export_, c.inspect, c.predict}) command->fallthrough();

  if (unknown_subcommand(app, argc, argv)) return 2;
  // CLI11 reads `--flag=` (an empty value) as `--flag` alone and takes the
  // next argument as its value: `--epochs= 2` would train 2 epochs.
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    if (arg == "--") break;
    if (arg.size() > 3 && arg.rfind("--", 0) == 0 && arg.find('=') == arg.size() - 1) {
      std::fprintf(stderr, "connex: %s: got an empty value (see %s)\n",
                   printable(arg.substr(0, arg.size() - 1), 200).c_str(), help_for(app, argc, argv).c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string text = parse_error_text(e);
    if (dynamic_cast<const CLI::ExtrasError*>(&e) && c.edit->parsed())
      text += "; edit's --add-* and --remove-* flags take one value each: repeat a flag for more";
    std::fprintf(stderr, "connex: %s (see %s)\n", printable(text, 1000).c_str(), help_for(app, argc, argv).c_str());
    return 2;
  }
  if (too_many_threads(threads)) return 2;
  // Before any work, the commands that compute start again where OpenBLAS
  // runs older kernels than this processor's (connex/openblas.h).
  if (*c.train || *c.prune || *c.predict) restart_with_openblas_settings(argv);
  if (*c.bench && app.get_option("--threads")->count() > 0) c.bench_threads = threads;
  if (*c.train && c.dist.nproc > 1) {
    if (nproc_conflicts(c.dist)) return 2;
    if (c.train_args.rewire.value_or("none") != "none") {
      report_error("", rewire_needs_one_process(c.dist.nproc));
      return 1;
    }
    // Workers that see a failed peer stop within a few heartbeats; give them that, then stop them.
    return launch_local_workers(argc, argv, c.dist.nproc, 10);
  }
  const std::string rank_tag = *c.train ? c.dist.rank_tag() : "";
  {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<WarningMark>('*').set_pattern("[%H:%M:%S] " + rank_tag + "%*%v");
    spdlog::set_formatter(std::move(formatter));
  }
  if (!rank_tag.empty()) silence_torch_logging();  // c10d's socket warnings; failures get connex's one line
  // One line each, whatever the text holds (a file name with a newline);
  // torch's own errors without their stack trace.
  try {
    const CoreShare cores{threads_for_this_process(app, threads)};  // may refuse LOCAL_WORLD_SIZE
    cores.apply_default();
    return run_command(c, cores);
  } catch (const c10::Error& e) {
    // a --nproc worker's goes to the launcher, which prints it once
    report_error(rank_tag, printable(e.what_without_backtrace(), 4000));
    return 1;
  } catch (const std::exception& e) {
    report_error(rank_tag, printable(e.what(), 4000));
    return 1;
  }
}
