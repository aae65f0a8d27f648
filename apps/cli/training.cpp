#include "training.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <limits>
#include <sstream>

#include <spdlog/spdlog.h>
#include <fmt/ranges.h>

#include "../examples.h"
#include "../progress_bar.h"
#include "enum_names.h"
#include "file_io.h"

namespace connex::cli {

void require_file(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) fail("{}: no such file", path);
}

Table load_dataset(const DataOptions& options, const NeuralNetwork& network, const std::optional<Preprocessing>& fitted,
                   const std::string& command) {
  if (!options.path.empty()) {
    require_file(options.path);
    try {
      return read_table(options.path, network, options.table, fitted);
    } catch (const Error& e) {
      // The library's hint in the program's terms: the flag that sets the task.
      std::string message = e.what();
      const std::string hint = "set the task to classification";
      const auto at = message.find(hint);
      if (at == std::string::npos) throw;
      fail("{}", message.replace(at, hint.size(), "add --task classification"));
    }
  }
  const int64_t n_in = network->num_inputs(), n_out = network->num_outputs();
  if (options.table.task() == Task::Classification || (fitted && fitted->task == Task::Classification))
    fail("{}: classification needs --data FILE.csv (the built-in toy set is a regression)", command);
  if (n_in != 1 || n_out != 2)
    fail(
        "{}: the built-in toy data has 1 feature and 2 targets (cos x, sin x), but the network has {} inputs and {} "
        "outputs; give --data",
        command, n_in, n_out);
  const std::vector<std::string> features{"x"}, targets{"cos_x", "sin_x"};
  if (fitted && (fitted->features != features || fitted->targets != targets))
    fail(
        "{}: the model was trained on a CSV (features {}; targets {}), not on the toy set, and the checkpoint does not "
        "name the file (only a run of train --out records it; edited and pruned checkpoints do not); give --data",
        command, fmt::join(fitted->features, ", "), fmt::join(fitted->targets, ", "));
  const auto [x, y] = apps::toy_data();
  Table table = table_from_tensors(x, y, options.table, fitted);
  table.preprocessing.features = features;
  table.preprocessing.targets = targets;
  table.source = "toy (cos x, sin x)";
  return table;
}

namespace {

// The CLI's optimizers: the library makes them and knows their kinds; the CLI
// chooses which it offers and their options.
struct OptimizerChoice {
  const char* name;  // the library's kind name
  const char* note;  // after the name in --help
  std::unique_ptr<torch::optim::OptimizerOptions> (*options)(double lr);
};

const std::vector<OptimizerChoice>& optimizer_choice_table() {
  using Options = std::unique_ptr<torch::optim::OptimizerOptions>;
  static const std::vector<OptimizerChoice> choices{
      {"adam", "", [](double lr) -> Options { return std::make_unique<torch::optim::AdamOptions>(lr); }},
      {"adamw", "", [](double lr) -> Options { return std::make_unique<torch::optim::AdamWOptions>(lr); }},
      {"sgd", " (momentum 0.9)", [](double lr) -> Options {
         return std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr).momentum(0.9));
       }}};
  return choices;
}

// The choices as "a, b or c", each as `item` writes it.
template <typename Item>
std::string choice_list(Item item) {
  std::vector<std::string> said;
  for (const auto& choice : optimizer_choice_table()) said.push_back(item(choice));
  return listed(said, "or");
}

}  // namespace

std::vector<std::string> optimizer_choices() {
  std::vector<std::string> names;
  for (const auto& choice : optimizer_choice_table()) names.push_back(choice.name);
  return names;
}

std::string describe_optimizer_choices() {
  return choice_list([](const OptimizerChoice& c) { return std::string(c.name) + c.note; });
}

std::unique_ptr<torch::optim::Optimizer> fresh_optimizer(const std::string& name, NeuralNetwork& network, double lr) {
  for (const auto& choice : optimizer_choice_table())
    if (name == choice.name) {
      std::vector<torch::optim::OptimizerParamGroup> groups;
      groups.emplace_back(network->parameters(), choice.options(lr));
      return make_optimizer(name, std::move(groups));
    }
  fail("--optimizer must be {}, got \"{}\"", choice_list([](const OptimizerChoice& c) { return std::string(c.name); }),
       name);
}

torch::Tensor loss_of(const NeuralNetwork& network, const torch::Tensor& out, const torch::Tensor& y, Task task) {
  if (task == Task::Regression) {
    // LibTorch 1.13 has no bfloat16 MSE on the CPU: such a network's loss is taken in float32.
    if (out.scalar_type() == torch::kBFloat16) return torch::mse_loss(out.to(torch::kFloat), y.to(torch::kFloat));
    return torch::mse_loss(out, y);
  }
  // The outputs are logits, probabilities or log-probabilities, by the network's transformation.
  const auto& t = network->options().output_transformation();
  if (t.is_softmax()) return torch::nll_loss(torch::log(out.clamp_min(1e-12)), y);
  if (t.is_log_softmax()) return torch::nll_loss(out, y);
  return torch::cross_entropy_loss(out, y);
}

std::pair<double, double> evaluate(NeuralNetwork& network, const torch::Tensor& x, const torch::Tensor& y, Task task) {
  torch::NoGradGuard no_grad;
  const bool was_training = network->is_training();
  network->eval();
  auto out = network->forward(x);
  const double loss = loss_of(network, out, y, task).item<double>();
  const double metric = task == Task::Regression ? loss : out.argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
  network->train(was_training);
  return {loss, metric};
}

void warn_about_cut_outputs(const NeuralNetwork& pruned, const std::string& command, const std::string& remedy) {
  const auto cut = constant_outputs(pruned);
  if (cut.empty()) return;
  std::vector<std::string> named;
  for (size_t k = 0; k < cut.size() && k < 5; ++k) named.push_back(cut[k].str());
  spdlog::warn("{}: {} of {} outputs ({}{}) no longer depend on any input: their values are constants; {}", command,
               cut.size(), pruned->num_outputs(), fmt::join(named, ", "), cut.size() > named.size() ? ", ..." : "",
               remedy);
}

int64_t frozen_count(const NeuralNetwork& network) { return network->frozen_connections().sum().item<int64_t>(); }

std::string frozen_note(int64_t frozen) {
  if (frozen == 0) return "";
  return frozen == 1 ? "; 1 frozen connection was not a candidate"
                     : fmt::format("; {} frozen connections were not candidates", frozen);
}

void say_how_the_rule_chose(const NeuralNetwork& network, const PruneOptions& options, size_t chosen,
                            const std::string& command, const std::string& rule_flag, const std::string& floor_flag,
                            const std::string& scope_flag) {
  // What the rule alone chose: one selection serves both notes.
  const size_t unfloored =
      options.keep_min() == 0 ? chosen : connections_to_prune(network, PruneOptions(options).keep_min(0)).size();
  if (unfloored > chosen) {
    const std::string kept =
        fmt::format("{}: {} {} kept {} of the {} connections that {} chose{}", command, floor_flag, options.keep_min(),
                    unfloored - chosen, unfloored, rule_flag, chosen == 0 ? ": nothing is removed" : "");
    if (chosen == 0)
      spdlog::warn("{}", kept);
    else
      spdlog::info("{}", kept);
  }
  if (!options.fraction() || options.scope() == PruneScope::Global) return;
  const int64_t scoped = static_cast<int64_t>(unfloored);
  const int64_t overall = static_cast<int64_t>(
      connections_to_prune(network, PruneOptions(options).keep_min(0).scope(PruneScope::Global)).size());
  if (std::abs(scoped - overall) <= std::max<int64_t>(1, overall / 100)) return;
  const char* group = prune_scope_name(options.scope());
  spdlog::info(
      "{}: {} {} rounds {} {} to whole connections {} by {} (halves up): {} chosen, where {} of all the candidates "
      "would be {}",
      command, scope_flag, group, rule_flag, *options.fraction(), group, group, scoped, *options.fraction(), overall);
}

void write_run(const std::string& out, const NeuralNetwork& network, const torch::optim::Optimizer& optimizer,
               const Progress& progress, const std::optional<Preprocessing>& preprocessing) {
  namespace fs = std::filesystem;
  fs::create_directories(out);
  // model.ckpt is the record (it holds the epoch and the whole history) and
  // is written last: after a failed write the other files may be one
  // checkpoint ahead of it, never behind, and each of their rows names its epoch.
  write_file_atomically((fs::path(out) / "metrics.csv").string(), metrics_csv(progress.history), "train");
  write_file_atomically((fs::path(out) / "metrics.json").string(), metrics_json(progress.history), "train");
  try {
    save_config(network, (fs::path(out) / "config.json").string());
  } catch (const Error& e) {
    spdlog::warn("config.json not written: {}", e.what());
  }
  save(network, (fs::path(out) / "model.ckpt").string(), &optimizer, preprocessing ? &*preprocessing : nullptr,
       progress.to_json());
}

std::vector<std::string> run_files_out_of_step(const std::string& dir, const Checkpoint& checkpoint) {
  namespace fs = std::filesystem;
  const auto model = fs::path(dir) / "model.ckpt";
  const Progress progress =
      checkpoint.training.is_null() ? Progress{} : Progress::from_json(checkpoint.training, model.string());
  std::string config;
  try {
    config = network_config(checkpoint.network, "train").dump(2) + "\n";
  } catch (const Error&) {
    // No JSON form (write_run warned and wrote none): any config.json is another write's.
  }
  const std::pair<const char*, std::string> expected[] = {{"metrics.csv", metrics_csv(progress.history)},
                                                          {"metrics.json", metrics_json(progress.history)},
                                                          {"config.json", config}};
  std::vector<std::string> stale;
  for (const auto& [name, text] : expected) {
    const auto path = fs::path(dir) / name;
    std::error_code ec;
    if (!fs::exists(path, ec)) continue;  // never written, or removed by the user: nothing to mislead
    std::string found;
    try {
      found = read_file(path.string(), "train", 64 * text.size() + (1 << 20));
    } catch (const Error&) {
      found.clear();  // unreadable or far too large: not this checkpoint's
    }
    if (found == text && !text.empty()) continue;
    std::string where;
    if (std::string(name) == "metrics.csv") {  // its last row names the epoch it was written at
      const size_t end = found.find_last_not_of('\n');
      const size_t start = end == std::string::npos ? 0 : found.rfind('\n', end) + 1;
      const auto epoch = parse_integer(found.substr(start, found.find(',', start) - start));
      if (epoch) where = fmt::format(" (it ends at epoch {})", *epoch);
    }
    stale.push_back(fmt::format("{}{}", name, where));
  }
  return stale;
}

namespace {

nlohmann::json state_json(const torch::Tensor& state) {
  if (!state.defined()) return nullptr;
  const auto bytes = state.contiguous();
  const auto* data = bytes.data_ptr<uint8_t>();
  return std::vector<uint8_t>(data, data + bytes.numel());
}

torch::Tensor state_from_json(const nlohmann::json& json, const std::string& where, const char* key) {
  if (!json.contains(key) || json.at(key).is_null()) return {};
  const auto& v = json.at(key);
  if (!v.is_array()) fail("{}: /training/{} must be an array of bytes", where, key);
  auto state = torch::empty({static_cast<int64_t>(v.size())}, torch::kUInt8);
  auto* data = state.data_ptr<uint8_t>();
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_unsigned() || v[i].get<uint64_t>() > 255)
      fail("{}: /training/{}/{} must be a byte", where, key, i);
    data[i] = static_cast<uint8_t>(v[i].get<uint64_t>());
  }
  return state;
}

// Restores a generator's state; a state of another size or form is the file's fault.
void set_generator_state(at::Generator& generator, const torch::Tensor& state, const std::string& where,
                         const char* what) {
  try {
    generator.set_state(state);
  } catch (const std::exception&) {
    fail("{}: /training/{} is not a generator state", where, what);
  }
}

// Whether `value` is a name the library's parser (rewire_method_from_name,
// prune_scope_from_name) reads: a record uses the library's names.
template <typename Parse>
bool library_name(const nlohmann::json& value, Parse parse) {
  if (!value.is_string()) return false;
  try {
    parse(value.get<std::string>());
    return true;
  } catch (const Error&) {
    return false;
  }
}

// A run's rewiring settings (absent in runs without --rewire).
RewireSettings rewire_from_json(const nlohmann::json& json, const std::string& where) {
  const std::string expected =
      fmt::format("{{\"method\": {}, \"every\": N >= 1, \"drop_fraction\": in [0, 1), \"end_step\": N >= 0}}",
                  quoted_names(kRewireMethods, rewire_method_name));
  auto integer = [&](const char* key, int64_t low) {
    if (!json.contains(key) || !json.at(key).is_number_integer() || json.at(key).get<int64_t>() < low)
      fail("{}: /training/rewire must be {}", where, expected);
    return json.at(key).get<int64_t>();
  };
  if (!json.is_object() || !json.contains("method") || !library_name(json.at("method"), rewire_method_from_name) ||
      !json.contains("drop_fraction") || !json.at("drop_fraction").is_number())
    fail("{}: /training/rewire must be {}", where, expected);
  RewireSettings r;
  // The canonical name ("set", "rigl"), which the CLI compares with --rewire.
  r.method = rewire_method_name(rewire_method_from_name(json.at("method").get<std::string>()));
  r.every = integer("every", 1);
  r.end_step = integer("end_step", 0);
  r.drop_fraction = json.at("drop_fraction").get<double>();
  if (!(r.drop_fraction >= 0 && r.drop_fraction < 1)) fail("{}: /training/rewire must be {}", where, expected);
  if (json.contains("groups"))  // absent in checkpoints of earlier versions
    r.groups = RewireGroups::from_json(json.at("groups"), where, "/training/rewire/groups");
  return r;
}

}  // namespace

std::string PruneSchedule::rule_said() const {
  return fmt::format("{} scope{}", prune_scope_name(scope), keep_min > 0 ? fmt::format(", keep-min {}", keep_min) : "");
}

std::string PruneSchedule::said() const {
  return fmt::format("{:g} of the connections ({}) after epoch {}", fraction, rule_said(), at_epoch);
}

nlohmann::json PruneSchedule::to_json() const {
  return {{"at_epoch", at_epoch}, {"fraction", fraction}, {"scope", prune_scope_name(scope)}, {"keep_min", keep_min}};
}

PruneSchedule PruneSchedule::from_json(const nlohmann::json& json, const std::string& where) {
  const bool ok = json.is_object() && json.contains("at_epoch") && json.at("at_epoch").is_number_integer() &&
                  json.at("at_epoch").get<int64_t>() >= 1 &&
                  json.at("at_epoch").get<int64_t>() <= std::numeric_limits<int>::max() && json.contains("fraction") &&
                  json.at("fraction").is_number() && json.at("fraction").get<double>() > 0 &&
                  json.at("fraction").get<double>() <= 1 && json.contains("scope") &&
                  library_name(json.at("scope"), prune_scope_from_name) && json.contains("keep_min") &&
                  json.at("keep_min").is_number_integer() && json.at("keep_min").get<int64_t>() >= 0;
  if (!ok)
    fail(
        "{}: /training/prune must be {{\"at_epoch\": N in [1, {}], \"fraction\": in (0, 1], \"scope\": {}, "
        "\"keep_min\": N >= 0}}, got {}",
        where, std::numeric_limits<int>::max(), quoted_names(kPruneScopes, prune_scope_name),
        json.dump().substr(0, 120));
  return {json.at("at_epoch").get<int>(), json.at("fraction").get<double>(),
          prune_scope_from_name(json.at("scope").get<std::string>()), json.at("keep_min").get<int64_t>()};
}

nlohmann::json Progress::to_json() const {
  nlohmann::json out{{"epoch", epoch},           {"batch", batch},         {"batch_loss", batch_loss},
                     {"steps", steps},           {"seconds", seconds},     {"seed", seed},
                     {"batch_size", batch_size}, {"val_split", val_split}, {"history", metrics_csv(history)}};
  if (!data.empty()) {
    out["data"] = {{"path", data}, {"bytes", data_bytes}, {"modified", data_modified}};
    if (!data_hash.empty()) out["data"]["hash"] = data_hash;
  }
  out["shuffle_state"] = state_json(shuffle_state);
  out["dropout_state"] = state_json(dropout_state);
  if (rewire.active()) {
    out["rewire"] = {{"method", rewire.method},
                     {"every", rewire.every},
                     {"drop_fraction", rewire.drop_fraction},
                     {"end_step", rewire.end_step}};
    if (rewire.groups) out["rewire"]["groups"] = rewire.groups->to_json();
  }
  if (prune.at_epoch > epoch) out["prune"] = prune.to_json();  // still to come
  return out;
}

Progress Progress::from_json(const nlohmann::json& json, const std::string& where) {
  Progress p;
  auto number = [&](const char* key, double low) {
    const auto& v = json.contains(key) ? json.at(key) : nlohmann::json();
    if (!v.is_number() || !(v.get<double>() >= low) || !std::isfinite(v.get<double>()))
      fail("{}: /training/{} must be a finite number >= {}, got {}", where, key, low,
           v.is_primitive() ? v.dump().substr(0, 40) : v.type_name());
    return v;
  };
  p.epoch = number("epoch", 0).get<int>();
  p.batch = number("batch", 0).get<int64_t>();
  p.batch_loss = number("batch_loss", -HUGE_VAL).get<double>();
  p.steps = number("steps", 0).get<int64_t>();
  p.seconds = number("seconds", 0).get<double>();
  p.seed = number("seed", 0).get<uint64_t>();
  p.batch_size = number("batch_size", 0).get<int64_t>();
  p.val_split = number("val_split", 0).get<double>();
  if (json.contains("data")) {  // absent in checkpoints of the toy set and of earlier versions
    const auto& d = json.at("data");
    auto hex16 = [](const nlohmann::json& h) {
      return h.is_string() && h.get<std::string>().size() == 16 &&
             h.get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos;
    };
    // The hash is absent in checkpoints of earlier versions.
    if (!d.is_object() || !d.contains("path") || !d.at("path").is_string() || !d.contains("bytes") ||
        !d.at("bytes").is_number_integer() || !d.contains("modified") || !d.at("modified").is_number_integer() ||
        (d.contains("hash") && !hex16(d.at("hash"))))
      fail(
          "{}: /training/data must be {{\"path\": \"...\", \"bytes\": N, \"modified\": N, \"hash\": \"16 hex "
          "digits\"}}",
          where);
    p.data = d.at("path").get<std::string>();
    p.data_bytes = d.at("bytes").get<int64_t>();
    p.data_modified = d.at("modified").get<int64_t>();
    if (d.contains("hash")) p.data_hash = d.at("hash").get<std::string>();
  }
  p.shuffle_state = state_from_json(json, where, "shuffle_state");
  p.dropout_state = state_from_json(json, where, "dropout_state");
  if (json.contains("rewire")) p.rewire = rewire_from_json(json.at("rewire"), where);
  if (json.contains("prune")) p.prune = PruneSchedule::from_json(json.at("prune"), where);
  // The history as metrics.csv holds it: one string, not a JSON value per number.
  const auto& history = json.contains("history") ? json.at("history") : nlohmann::json();
  if (!history.is_string()) fail("{}: /training/history must be the text of a metrics.csv", where);
  const auto columns = {"epoch", "train_loss", "val_loss", "val_metric", "seconds"};
  const std::string text = history.get<std::string>();
  if (text.find('\n') + 1 < text.size()) {  // rows after the header
    const CsvTable table =
        parse_csv(text, where + ": /training/history", std::vector<std::string>(columns.begin(), columns.end()));
    if (table.columns != std::vector<std::string>(columns.begin(), columns.end()))
      fail("{}: /training/history must have the columns epoch,train_loss,val_loss,val_metric,seconds", where);
    for (size_t i = 0; i < table.rows.size(); ++i) {
      auto value = [&](size_t j) { return table.text[j][i].empty() ? NAN : table.number(i, j); };
      const double epoch = value(0);
      if (!(epoch == static_cast<double>(p.history.size() + 1)))
        fail("{}: /training/history row {} is epoch {}, expected {}", where, i + 1, epoch, p.history.size() + 1);
      p.history.push_back({static_cast<int>(epoch), value(1), value(2), value(3), value(4)});
    }
  }
  if (static_cast<int>(p.history.size()) != p.epoch)
    fail("{}: /training/history has {} epochs for a run at epoch {}", where, p.history.size(), p.epoch);
  return p;
}

namespace {

// Size and modification time (ns since the epoch) of a file; {-1, -1} when it cannot be read.
std::pair<int64_t, int64_t> file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {-1, -1};
  return {static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// FNV-1a 64 of a regular file's bytes as 16 hex digits; "" for anything
// else (reading a FIFO would block; the data's reader refuses it) and when
// it cannot be read.
std::string file_hash(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::vector<char> chunk(1 << 16);
  uint64_t hash = 0xcbf29ce484222325ull;
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    hash = fnv1a64(chunk.data(), static_cast<size_t>(in.gcount()), hash);
  }
  return in.bad() ? std::string() : fmt::format("{:016x}", hash);
}

}  // namespace

std::string Progress::data_path(const std::string& path) {
  return path.empty() ? std::string() : std::filesystem::absolute(path).lexically_normal().string();
}

void Progress::set_data(const std::string& path, const std::optional<std::string>& hash) {
  data = data_path(path);
  std::tie(data_bytes, data_modified) = data.empty() ? std::pair<int64_t, int64_t>{0, 0} : file_stamp(data);
  data_hash = data.empty() ? std::string() : hash ? *hash : file_hash(data);
}

std::string Progress::data_changed(std::optional<std::string>* hash) const {
  if (data.empty()) return "";
  const auto [bytes, modified] = file_stamp(data);
  if (bytes < 0) return "it is gone";
  if (bytes != data_bytes) return fmt::format("it has {} bytes now, {} then", bytes, data_bytes);
  // The bytes decide where the record has them: a touched or copied file is
  // the same data, and a rewrite that kept the size and time is not.
  if (!data_hash.empty()) {
    const std::string now = file_hash(data);
    if (hash) *hash = now;
    if (now.empty()) return kUnreadable;
    return now == data_hash ? "" : "its bytes differ from the recorded ones";
  }
  if (modified != data_modified) return "it was modified since";
  return "";
}

namespace {

#if defined(CONNEX_WITH_DISTRIBUTED)
// Data parallel: every rank draws the same permutation (same seed) and takes
// its contiguous share of each batch; gradients are averaged over the ranks
// and only rank 0 reports and writes. Without a group: rank 0 of 1.
class Replicas {
 public:
  explicit Replicas(const TrainOptions& options) : dp_(options.data_parallel) {
    if (dp_) {
      rank_ = dp_->group().rank();
      ranks_ = dp_->group().world_size();
    }
  }
  int rank() const { return rank_; }
  int ranks() const { return ranks_; }
  void average_gradients(NeuralNetwork& network) const { dp_->average_gradients(network); }
  // The sum over every rank: one small all-reduce.
  double sum(double value, const char* what) const {
    if (!dp_) return value;
    auto sum = torch::tensor({value}, torch::kFloat64);
    dp_->group().all_reduce_sum(sum, what);
    return sum.item<double>();
  }
  // Rank 0's script, applied on every rank.
  EditResult apply_edit(const NeuralNetwork& network, const EditScript& script, uint64_t seed) const {
    return dp_ ? dp_->apply_edit(network, script, seed) : script.build(network, seed);
  }
  void check_identical(const NeuralNetwork& network, const torch::optim::Optimizer* optimizer,
                       const char* context) const {
    if (dp_) dp_->check_replicas_identical(network, optimizer, context);
  }

 private:
  distributed::DataParallel* dp_;
  int rank_ = 0, ranks_ = 1;
};
#else
// One process: rank 0 of 1, with nothing to share.
class Replicas {
 public:
  explicit Replicas(const TrainOptions&) {}
  int rank() const { return 0; }
  int ranks() const { return 1; }
  void average_gradients(NeuralNetwork&) const {}
  double sum(double value, const char*) const { return value; }
  EditResult apply_edit(const NeuralNetwork& network, const EditScript& script, uint64_t seed) const {
    return script.build(network, seed);
  }
  void check_identical(const NeuralNetwork&, const torch::optim::Optimizer*, const char*) const {}
};
#endif

// The shuffle generator, going on from the one that drew the table's split of
// `rows` rows, or from where a stopped run left it; torch's default generator
// (dropout masks) likewise.
at::Generator restore_generators(const TrainOptions& options, const Progress& progress, int64_t rows) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  torch::randperm(rows, generator, torch::kLong);
  const std::string where = "the checkpoint's progress";
  if (progress.shuffle_state.defined()) set_generator_state(generator, progress.shuffle_state, where, "shuffle_state");
  if (progress.dropout_state.defined()) {
    auto dropout = at::detail::getDefaultCPUGenerator();
    set_generator_state(dropout, progress.dropout_state, where, "dropout_state");
  }
  return generator;
}

// An epoch's `count` batches of `size` of the `rows` training rows (the last may be smaller).
struct Batches {
  int64_t rows = 0, size = 0, count = 0;
};

Batches plan_batches(int64_t rows, const TrainOptions& options, const Progress& progress, int ranks) {
  Batches b;
  b.rows = rows;
  b.size = options.batch_size > 0 ? std::min(options.batch_size, rows) : rows;
  b.count = (rows + b.size - 1) / b.size;
  if (progress.batch >= b.count)
    fail("train: the checkpoint stopped after batch {} of an epoch, but this data has {} batches per epoch",
         progress.batch, b.count);
  const int64_t last = rows % b.size == 0 ? b.size : rows % b.size;
  if (std::min(b.size, last) < ranks)
    fail("train: a batch of {} row{} cannot be shared by {} ranks; use a larger --batch-size or fewer processes",
         std::min(b.size, last), std::min(b.size, last) == 1 ? "" : "s", ranks);
  return b;
}

// One call of train(): its steps, over the state they share.
class Trainer {
 public:
  // Restores the generators, moves the data to the device, plans the batches.
  Trainer(NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer>& optimizer, const Table& data,
          const TrainOptions& options, Progress& progress)
      : network_(network),
        optimizer_(optimizer),
        options_(options),
        progress_(progress),
        replicas_(options),
        n_val_(data.validation.inputs().size(0)),
        generator_(restore_generators(options, progress, data.train.inputs().size(0) + n_val_)),
        first_epoch_(progress.epoch + 1),
        last_epoch_(progress.epoch + options.epochs),
        seconds_before_(progress.seconds) {
    const auto dtype = network->weight_tensor().scalar_type();
    auto prepare = [&](const torch::Tensor& t) { return (t.is_floating_point() ? t.to(dtype) : t).to(options.device); };
    result_.val_x = prepare(data.validation.inputs());
    result_.val_y = prepare(data.validation.targets());
    result_.train_x = prepare(data.train.inputs());
    result_.train_y = prepare(data.train.targets());
    batches_ = plan_batches(data.train.inputs().size(0), options, progress, replicas_.ranks());
    plan_rewiring();
    remember_frozen();
  }

  TrainResult run() {
    bar_.emplace(reporter() ? options_.epochs : 0, "train");
    start_ = std::chrono::steady_clock::now();
    network_->train();
    for (int epoch = first_epoch_; epoch <= last_epoch_; ++epoch) {
      const EpochMetrics m = record_epoch(epoch, train_epoch());
      report(epoch, m);
      if (epoch == progress_.prune.at_epoch) prune(epoch);
      if (reporter() && options_.checkpoint_every > 0 && epoch % options_.checkpoint_every == 0 &&
          !options_.out.empty())
        write_run(options_.out, network_, *optimizer_, progress_, options_.preprocessing);
      if (stop_requested() && epoch < last_epoch_) throw Stopped{static_cast<int>(*options_.stop), progress_};
    }
    return result_;
  }

 private:
  bool reporter() const { return replicas_.rank() == 0; }
  bool stop_requested() const { return options_.stop && *options_.stop; }
  double elapsed() const {
    return seconds_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  // The rest of the epoch (all of it unless a stopped run left it midway); its
  // loss summed over every rank's rows. A stop request throws Stopped between batches.
  double train_epoch() {
    const auto epoch_start = generator_.get_state();
    const auto perm = batches_.size < batches_.rows
                          ? torch::randperm(batches_.rows, generator_, torch::kLong).to(options_.device)
                          : torch::Tensor();
    double total = progress_.batch_loss;
    for (int64_t k = progress_.batch; k < batches_.count; ++k) {
      total += step(perm, k);
      if (stop_requested() && k + 1 < batches_.count) {  // mid-epoch: remember where
        progress_.batch = k + 1;
        progress_.batch_loss = total;
        progress_.shuffle_state = epoch_start;
        progress_.dropout_state = at::detail::getDefaultCPUGenerator().get_state();
        progress_.seconds = elapsed();
        throw Stopped{static_cast<int>(*options_.stop), progress_};
      }
    }
    progress_.batch = 0;
    progress_.batch_loss = 0;
    return replicas_.sum(total, "train: epoch loss");
  }

  // This rank's share of batch k: its rows, and how many of the batch's `size` rows they are.
  struct Share {
    torch::Tensor x, y;
    int64_t rows, size;
  };
  Share share_of_batch(const torch::Tensor& perm, int64_t k) const {
    const int rank = replicas_.rank(), ranks = replicas_.ranks();
    const int64_t b = k * batches_.size, size = std::min(batches_.size, batches_.rows - b);
    const int64_t first = b + size * rank / ranks, share = b + size * (rank + 1) / ranks - first;
    auto xb = result_.train_x, yb = result_.train_y;
    if (perm.defined() || ranks > 1) {
      auto idx = perm.defined()
                     ? perm.narrow(0, first, share)
                     : torch::arange(first, first + share, torch::TensorOptions(torch::kLong).device(options_.device));
      xb = xb.index_select(0, idx);
      yb = yb.index_select(0, idx);
    }
    return {xb, yb, share, size};
  }

  // One optimizer step on batch k (this rank's share of it); its loss summed
  // over the share's rows. Then the rewiring due after it, if any.
  double step(const torch::Tensor& perm, int64_t k) {
    const auto started = std::chrono::steady_clock::now();
    const Share s = share_of_batch(perm, k);
    const int64_t next = progress_.steps + 1;
    const bool rewire = rewirer_ && next % progress_.rewire.every == 0 && rewirer_->drop_fraction(next) > 0;
    // RigL reads the step's per-level values and gradients (the traced forward copies them out).
    std::optional<LevelTrace> trace;
    optimizer_->zero_grad();
    const bool traced = rewire && rewirer_->options().method() == RewireMethod::RigL;
    auto out = traced ? network_->forward_traced(s.x, trace.emplace()) : network_->forward(s.x);
    auto loss = loss_of(network_, out, s.y, options_.task);
    const int ranks = replicas_.ranks();
    if (ranks > 1) {
      // Scaled by share * ranks / size, so that the average of the ranks'
      // gradients is the gradient of the whole batch's mean loss, for any split.
      (loss * (static_cast<double>(s.rows) * ranks / static_cast<double>(s.size))).backward();
      replicas_.average_gradients(network_);
    } else {
      loss.backward();
    }
    optimizer_->step();
    hold_frozen();
    ++result_.steps, ++progress_.steps;
    const double total = loss.item<double>() * static_cast<double>(s.rows);
    if (options_.after_step) options_.after_step(network_, std::chrono::steady_clock::now() - started, s.rows);
    if (rewire) {
      // A rewiring ranks the weights (RigL the step's gradients too): after
      // a non-finite loss there is nothing to rank, and the epoch's check would come too late.
      if (!std::isfinite(total))
        fail("train: the loss was {} at step {}, where a rewiring was due; lower --lr{}", loss.item<double>(), next,
             options_.out.empty() ? "" : " (files already in --out are kept as they were)");
      rewire_after(next, trace ? &*trace : nullptr);
    }
    return total;
  }

  // The Rewirer of progress_.rewire, made once per call: with the groups
  // the run saved, else (a first run, or a network edited since) from the
  // network's levels. Sets the end step first when options_.rewire_end asks.
  void plan_rewiring() {
    RewireSettings& r = progress_.rewire;
    if (!r.active()) return;
    // A call of no steps fixes no end (0 in the record): the run that continues it does.
    const int64_t here = options_.epochs * batches_.count - progress_.batch, total = progress_.steps + here;
    if (options_.rewire_end && here > 0)
      r.end_step = std::max<int64_t>(1, std::llround(*options_.rewire_end * static_cast<double>(total)));
    const auto options = RewireOptions()
                             .method(rewire_method_from_name(r.method))
                             .drop_fraction(r.drop_fraction)
                             .end_step(r.end_step)
                             .seed(options_.seed);
    if (r.groups) {
      try {
        rewirer_.emplace(network_, *r.groups, options);
      } catch (const Error& e) {
        spdlog::warn("rewiring: the run's saved groups do not fit the network ({}); made anew from its levels",
                     e.what());
      }
    }
    if (!rewirer_) rewirer_.emplace(network_, options);
    r.groups = rewirer_->groups();
    say_planned_rewirings();
  }

  // One line on what this call's steps will rewire, and a warning when that
  // is nothing (full batches, a resumed run past the end, a zero share).
  void say_planned_rewirings() const {
    const RewireSettings& r = progress_.rewire;
    const int64_t first = progress_.steps + 1,
                  last = progress_.steps + options_.epochs * batches_.count - progress_.batch;
    int64_t planned = 0;
    for (int64_t s = (first + r.every - 1) / r.every * r.every; s <= last; s += r.every)
      planned += rewirer_->drop_fraction(s) > 0;
    const std::string end = r.end_step > 0 ? fmt::format("none from step {}", r.end_step) : "its end not fixed yet";
    if (r.end_step > 0 && first > r.end_step) {
      spdlog::info(
          "rewiring: {} ended at step {}, before this run's steps {} to {} (--rewire-end F sets a new end at F of "
          "all the steps)",
          r.method, r.end_step, first, last);
      return;
    }
    if (planned > 0) {
      spdlog::info("rewiring: {} every {} steps, drop fraction {:.3g}, {}: {} rewiring(s) in steps {} to {}", r.method,
                   r.every, r.drop_fraction, end, planned, first, last);
      return;
    }
    spdlog::warn(
        "train: --rewire {} will not rewire in this run (steps {} to {}; every {} steps, drop fraction {:.3g}, {}): {}",
        r.method, first, last, r.every, r.drop_fraction, end,
        last < first          ? "this run takes no steps; the run that continues it fixes the end and rewires"
        : r.drop_fraction > 0 ? "lower --rewire-every, train in mini-batches with --batch-size, or give --rewire-end"
                              : "a drop fraction of 0 moves nothing; give --drop-fraction above 0");
  }

  // Rewires after optimizer step `step`; the optimizer's state follows the surviving connections.
  void rewire_after(int64_t step, const LevelTrace* trace) {
    EditResult edited = rewirer_->rewire(network_, step, trace);
    auto next = optimizer_after_edit(*optimizer_, network_, edited);
    const RewireReport& r = rewirer_->last_report();
    // The scheduled share, and what it came to: a nearly full level drops
    // fewer (no more than it has absent pairs to grow back).
    if (reporter())
      spdlog::info(
          "rewire step {} ({}, drop fraction {:.3g}): {} connections, {} dropped ({:.3g} of them), {} grown, {} after",
          step, progress_.rewire.method, rewirer_->drop_fraction(step), r.connections_before, r.dropped,
          r.connections_before > 0 ? static_cast<double>(r.dropped) / r.connections_before : 0.0, r.grown,
          r.connections_after);
    replace_network(edited.network, std::move(next), "train: after rewiring");
  }

  // Checks the epoch's loss and parameters, validates, and records the epoch in the progress.
  EpochMetrics record_epoch(int epoch, double total) {
    EpochMetrics m;
    m.epoch = epoch;
    m.train_loss = total / static_cast<double>(batches_.rows);
    if (!std::isfinite(m.train_loss)) fail("train: the loss became {} at epoch {}; lower --lr", m.train_loss, epoch);
    // A step can leave infinite weights after a finite loss: nothing non-finite is ever written.
    for (const auto& p : network_->named_parameters())
      if (!torch::isfinite(p.value()).all().item<bool>())
        fail("train: parameter \"{}\" became non-finite (inf or nan) at epoch {}; lower --lr{}", p.key(), epoch,
             options_.out.empty() ? "" : " (files already in --out are kept as they were)");
    if (n_val_ > 0 && reporter())
      std::tie(m.val_loss, m.val_metric) = evaluate(network_, result_.val_x, result_.val_y, options_.task);
    m.seconds = elapsed();
    progress_.history.push_back(m);
    progress_.epoch = epoch;
    progress_.seconds = m.seconds;
    progress_.shuffle_state = generator_.get_state();
    progress_.dropout_state = at::detail::getDefaultCPUGenerator().get_state();
    return m;
  }

  void report(int epoch, const EpochMetrics& m) {
    std::string extra;
    if (n_val_ > 0)
      extra = options_.task == Task::Classification ? fmt::format("val acc {:.4f}", m.val_metric)
                                                    : fmt::format("val mse {:.6f}", m.val_metric);
    const int done = epoch - first_epoch_ + 1;
    if (reporter()) bar_->update(done, m.train_loss, extra);
    if (reporter() && !bar_->is_tty() &&
        (done == 1 || epoch == last_epoch_ || done % std::max(1, options_.epochs / 10) == 0))
      spdlog::info("epoch {:>5}/{}  loss {:.6f}  {}  {:.1f} epochs/s", epoch, last_epoch_, m.train_loss, extra,
                   done / std::max(m.seconds - seconds_before_, 1e-9));
  }

  // Replaces the network and the optimizer. Decided on rank 0 (every rank
  // holds the same weights anyway) and applied on every rank; the optimizer
  // state follows the survivors.
  void prune(int epoch) {
    EditScript prune;
    const PruneOptions rule = progress_.prune.options();
    if (reporter()) {
      const auto weak = connections_to_prune(network_, rule);
      // Named as the prune's: its settings may be the run's record's rather than this command's flags.
      say_how_the_rule_chose(network_, rule, weak.size(), fmt::format("train: epoch {}", epoch), "the prune's fraction",
                             "the prune's keep-min", "the prune's scope");
      prune.remove_connections(weak);
    }
    EditResult edited = replicas_.apply_edit(network_, prune, options_.seed);
    auto next = optimizer_after_edit(*optimizer_, network_, edited);
    if (reporter()) {
      const int64_t frozen = frozen_count(network_);
      spdlog::info("epoch {}: pruned {} of {} connections (|w| smallest first, {}{})", epoch,
                   network_->num_connections() - edited.network->num_connections(), network_->num_connections(),
                   progress_.prune.rule_said(), frozen_note(frozen));
      warn_about_cut_outputs(edited.network, "train",
                             rule.keep_min() > 0 ? "a smaller --prune-fraction helps"
                                                 : "a smaller --prune-fraction or --prune-keep-min 1 helps");
      if (epoch == last_epoch_)
        spdlog::info(
            "epoch {}: this run's last, so no epoch trains the pruned network (the epochs' figures and the final "
            "validation figure are from before the prune, the final training loss from after it){}",
            epoch,
            options_.out.empty() ? "; without --out it is not saved" : "; a resumed run with --epochs trains it on");
    }
    replace_network(edited.network, std::move(next), "train: after pruning");
  }

  // Frozen entries keep their values exactly: a zero gradient alone does
  // not stop an optimizer's carried moments or weight decay from moving them.
  struct Frozen {
    torch::Tensor index, values;  // positions in the flat tensor, their values when training began
  };
  static Frozen frozen_of(const torch::Tensor& mask, const torch::Tensor& parameter) {
    if (!mask.any().item<bool>()) return {};
    auto index = mask.nonzero().view(-1).to(parameter.device());
    return {index, parameter.detach().index_select(0, index).clone()};
  }
  void remember_frozen() {
    frozen_weights_ = frozen_of(network_->frozen_connections(), network_->weight_tensor());
    frozen_biases_ = frozen_of(network_->frozen_biases(), network_->bias_tensor());
  }
  void hold_frozen() {
    torch::NoGradGuard no_grad;
    if (frozen_weights_.index.defined())
      network_->weight_tensor().index_copy_(0, frozen_weights_.index, frozen_weights_.values);
    if (frozen_biases_.index.defined())
      network_->bias_tensor().index_copy_(0, frozen_biases_.index, frozen_biases_.values);
  }

  void replace_network(const NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer> optimizer,
                       const char* context) {
    network_ = network;
    optimizer_ = std::move(optimizer);
    remember_frozen();
    network_->train();
    if (options_.on_network_replaced) options_.on_network_replaced(network_);
    replicas_.check_identical(network_, optimizer_.get(), context);
  }

  NeuralNetwork& network_;
  std::unique_ptr<torch::optim::Optimizer>& optimizer_;
  const TrainOptions& options_;
  Progress& progress_;
  const Replicas replicas_;
  const int64_t n_val_;
  at::Generator generator_;
  const int first_epoch_, last_epoch_;
  const double seconds_before_;
  std::optional<apps::ProgressBar> bar_;
  Batches batches_;
  std::optional<Rewirer> rewirer_;
  Frozen frozen_weights_, frozen_biases_;
  TrainResult result_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

TrainResult train(NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer>& optimizer, const Table& data,
                  const TrainOptions& options, Progress& progress) {
  Trainer trainer(network, optimizer, data, options, progress);
  return trainer.run();
}

// Written as text row by row: a DOM of a long history costs ~10x its text.
std::string metrics_json(const std::vector<EpochMetrics>& history) {
  std::string out = "[";
  auto value = [](double v) { return std::isfinite(v) ? fmt::format("{}", v) : std::string("null"); };
  for (size_t i = 0; i < history.size(); ++i) {
    const auto& m = history[i];
    out += fmt::format(
        "{}\n {{\"epoch\": {}, \"train_loss\": {}, \"val_loss\": {}, \"val_metric\": {}, \"seconds\": {}}}",
        i ? "," : "", m.epoch, value(m.train_loss), value(m.val_loss), value(m.val_metric), value(m.seconds));
  }
  return out + "\n]\n";
}

std::string metrics_csv(const std::vector<EpochMetrics>& history) {
  std::ostringstream out;
  out << "epoch,train_loss,val_loss,val_metric,seconds\n";
  auto cell = [](double v) { return std::isnan(v) ? std::string() : fmt::format("{}", v); };
  for (const auto& m : history)
    out << m.epoch << "," << cell(m.train_loss) << "," << cell(m.val_loss) << "," << cell(m.val_metric) << ","
        << cell(m.seconds) << "\n";
  return out.str();
}

}  // namespace connex::cli
