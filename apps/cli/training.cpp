#include "training.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <cmath>
#include <sstream>

#include <spdlog/spdlog.h>

#include "../progress_bar.h"
#include "connex/file_io.h"

namespace connex::cli {

Table load_dataset(const DataOptions& options, const NeuralNetwork& network, const std::optional<Preprocessing>& fitted,
                   const std::string& command) {
  if (!options.path.empty()) return read_table(options.path, network, options.table, fitted);
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
    fail("{}: the model was trained on the columns {} of a CSV, not on the toy set; give --data", command,
         fmt::join(fitted->features, ", "));
  const auto x = torch::linspace(0, 2 * M_PI, 250).unsqueeze(1);
  Table table = table_from_tensors(x, torch::cat({torch::cos(x), torch::sin(x)}, 1), options.table, fitted);
  table.preprocessing.features = features;
  table.preprocessing.targets = targets;
  table.source = "toy (cos x, sin x)";
  return table;
}

std::unique_ptr<torch::optim::Optimizer> fresh_optimizer(const std::string& name, NeuralNetwork& network, double lr) {
  if (name == "adam") return std::make_unique<torch::optim::Adam>(network->parameters(), torch::optim::AdamOptions(lr));
  if (name == "adamw")
    return std::make_unique<torch::optim::AdamW>(network->parameters(), torch::optim::AdamWOptions(lr));
  if (name == "sgd")
    return std::make_unique<torch::optim::SGD>(network->parameters(), torch::optim::SGDOptions(lr).momentum(0.9));
  fail("--optimizer must be adam, adamw or sgd, got \"{}\"", name);
}

torch::Tensor loss_of(const NeuralNetwork& network, const torch::Tensor& out, const torch::Tensor& y, Task task) {
  if (task == Task::Regression) return torch::mse_loss(out, y);
  // The outputs are logits, probabilities or log-probabilities, by the network's transformation.
  const auto& t = network->options().output_transformation().name();
  if (t == "softmax") return torch::nll_loss(torch::log(out.clamp_min(1e-12)), y);
  if (t == "log_softmax") return torch::nll_loss(out, y);
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

std::vector<Edge> weakest_connections(const NeuralNetwork& network, std::optional<double> threshold,
                                      std::optional<double> fraction) {
  const auto graph = network->weighted_graph();
  std::vector<std::pair<double, Edge>> by_strength;
  for (const auto& c : graph.connections) by_strength.push_back({std::abs(c.weight), {c.from, c.to}});
  std::stable_sort(by_strength.begin(), by_strength.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Edge> weak;
  if (threshold) {
    for (const auto& [w, e] : by_strength)
      if (w < *threshold) weak.push_back(e);
  } else if (fraction) {
    const auto count = static_cast<size_t>(std::llround(*fraction * static_cast<double>(by_strength.size())));
    for (size_t i = 0; i < count; ++i) weak.push_back(by_strength[i].second);
  }
  return weak;
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

}  // namespace

nlohmann::json Progress::to_json() const {
  nlohmann::json out{{"epoch", epoch},           {"batch", batch},         {"batch_loss", batch_loss},
                     {"steps", steps},           {"seconds", seconds},     {"seed", seed},
                     {"batch_size", batch_size}, {"val_split", val_split}, {"history", metrics_csv(history)}};
  if (!data.empty()) out["data"] = {{"path", data}, {"bytes", data_bytes}, {"modified", data_modified}};
  out["shuffle_state"] = state_json(shuffle_state);
  out["dropout_state"] = state_json(dropout_state);
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
    if (!d.is_object() || !d.contains("path") || !d.at("path").is_string() || !d.contains("bytes") ||
        !d.at("bytes").is_number_integer() || !d.contains("modified") || !d.at("modified").is_number_integer())
      fail("{}: /training/data must be {{\"path\": \"...\", \"bytes\": N, \"modified\": N}}", where);
    p.data = d.at("path").get<std::string>();
    p.data_bytes = d.at("bytes").get<int64_t>();
    p.data_modified = d.at("modified").get<int64_t>();
  }
  p.shuffle_state = state_from_json(json, where, "shuffle_state");
  p.dropout_state = state_from_json(json, where, "dropout_state");
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

}  // namespace

void Progress::set_data(const std::string& path) {
  data = path.empty() ? std::string() : std::filesystem::absolute(path).lexically_normal().string();
  std::tie(data_bytes, data_modified) = data.empty() ? std::pair<int64_t, int64_t>{0, 0} : file_stamp(data);
}

std::string Progress::data_changed() const {
  if (data.empty()) return "";
  const auto [bytes, modified] = file_stamp(data);
  if (bytes < 0) return "it is gone";
  if (bytes != data_bytes) return fmt::format("it has {} bytes now, {} then", bytes, data_bytes);
  if (modified != data_modified) return "it was modified since";
  return "";
}

TrainResult train(NeuralNetwork& network, std::unique_ptr<torch::optim::Optimizer>& optimizer, const Table& data,
                  const TrainOptions& options, Progress& progress) {
  TrainResult result;
  const int64_t n_val = data.validation.inputs().size(0), n = data.train.inputs().size(0) + n_val;
  // The shuffles go on from the generator that drew the table's split, or
  // from where a stopped run left it.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  torch::randperm(n, generator, torch::kLong);
  const std::string where = "the checkpoint's progress";
  if (progress.shuffle_state.defined()) set_generator_state(generator, progress.shuffle_state, where, "shuffle_state");
  if (progress.dropout_state.defined()) {
    auto dropout = at::detail::getDefaultCPUGenerator();
    set_generator_state(dropout, progress.dropout_state, where, "dropout_state");
  }
  const auto dtype = network->weight_tensor().scalar_type();
  auto prepare = [&](const torch::Tensor& t) { return (t.is_floating_point() ? t.to(dtype) : t).to(options.device); };
  result.val_x = prepare(data.validation.inputs());
  result.val_y = prepare(data.validation.targets());
  result.train_x = prepare(data.train.inputs());
  result.train_y = prepare(data.train.targets());
  const int64_t n_train = n - n_val;
  const int64_t batch = options.batch_size > 0 ? std::min(options.batch_size, n_train) : n_train;
  const int64_t batches = (n_train + batch - 1) / batch;
  if (progress.batch >= batches)
    fail("train: the checkpoint stopped after batch {} of an epoch, but this data has {} batches per epoch",
         progress.batch, batches);
  const bool metric_is_accuracy = options.task == Task::Classification;

  // Data parallel: every rank draws the same permutation (same seed) and
  // takes its contiguous share of each batch. Each rank's mean loss is scaled
  // by share * ranks / batch, so that the average of the ranks' gradients is
  // the gradient of the whole batch's mean loss, for any split.
  int rank = 0, ranks = 1;
#if defined(CONNEX_WITH_DISTRIBUTED)
  auto* dp = options.data_parallel;
  if (dp) rank = dp->group().rank(), ranks = dp->group().world_size();
#endif
  const int64_t last_batch = n_train % batch == 0 ? batch : n_train % batch;
  if (std::min(batch, last_batch) < ranks)
    fail("train: a batch of {} rows cannot be shared by {} ranks; use a larger --batch-size or fewer processes",
         std::min(batch, last_batch), ranks);
  const bool reporter = rank == 0;

  const int first_epoch = progress.epoch + 1, last_epoch = progress.epoch + options.epochs;
  apps::ProgressBar bar(reporter ? options.epochs : 0, "train");
  const auto start = std::chrono::steady_clock::now();
  const double seconds_before = progress.seconds;
  auto elapsed = [&] {
    return seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  network->train();
  for (int epoch = first_epoch; epoch <= last_epoch; ++epoch) {
    const auto epoch_start = generator.get_state();
    const auto perm =
        batch < n_train ? torch::randperm(n_train, generator, torch::kLong).to(options.device) : torch::Tensor();
    double total = progress.batch_loss;
    for (int64_t k = progress.batch; k < batches; ++k) {
      const int64_t b = k * batch, size = std::min(batch, n_train - b);
      const int64_t first = b + size * rank / ranks, share = b + size * (rank + 1) / ranks - first;
      auto xb = result.train_x, yb = result.train_y;
      if (perm.defined() || ranks > 1) {
        auto idx = perm.defined()
                       ? perm.narrow(0, first, share)
                       : torch::arange(first, first + share, torch::TensorOptions(torch::kLong).device(options.device));
        xb = xb.index_select(0, idx), yb = yb.index_select(0, idx);
      }
      optimizer->zero_grad();
      auto loss = loss_of(network, network->forward(xb), yb, options.task);
      if (ranks > 1) {
        (loss * (static_cast<double>(share) * ranks / static_cast<double>(size))).backward();
#if defined(CONNEX_WITH_DISTRIBUTED)
        dp->average_gradients(network);
#endif
      } else {
        loss.backward();
      }
      optimizer->step();
      ++result.steps, ++progress.steps;
      total += loss.item<double>() * static_cast<double>(share);
      if (options.stop && *options.stop && k + 1 < batches) {  // mid-epoch: remember where
        progress.batch = k + 1, progress.batch_loss = total, progress.shuffle_state = epoch_start;
        progress.dropout_state = at::detail::getDefaultCPUGenerator().get_state();
        progress.seconds = elapsed();
        throw Stopped{static_cast<int>(*options.stop), progress};
      }
    }
    progress.batch = 0, progress.batch_loss = 0;
#if defined(CONNEX_WITH_DISTRIBUTED)
    if (dp) {  // the epoch's loss over every rank's rows: one small all-reduce per epoch
      auto sum = torch::tensor({total}, torch::kFloat64);
      dp->group().all_reduce_sum(sum, "train: epoch loss");
      total = sum.item<double>();
    }
#endif
    EpochMetrics m;
    m.epoch = epoch;
    m.train_loss = total / static_cast<double>(n_train);
    if (!std::isfinite(m.train_loss)) fail("train: the loss became {} at epoch {}; lower --lr", m.train_loss, epoch);
    // A step can leave infinite weights after a finite loss: nothing non-finite is ever written.
    for (const auto& p : network->named_parameters())
      if (!torch::isfinite(p.value()).all().item<bool>())
        fail("train: parameter \"{}\" became non-finite (inf or nan) at epoch {}; lower --lr{}", p.key(), epoch,
             options.out.empty() ? "" : " (files already in --out are kept as they were)");
    if (n_val > 0 && reporter)
      std::tie(m.val_loss, m.val_metric) = evaluate(network, result.val_x, result.val_y, options.task);
    m.seconds = elapsed();
    progress.history.push_back(m);
    progress.epoch = epoch;
    progress.seconds = m.seconds;
    progress.shuffle_state = generator.get_state();
    progress.dropout_state = at::detail::getDefaultCPUGenerator().get_state();
    std::string extra;
    if (n_val > 0)
      extra = metric_is_accuracy ? fmt::format("val acc {:.4f}", m.val_metric)
                                 : fmt::format("val mse {:.6f}", m.val_metric);
    const int done = epoch - first_epoch + 1;
    if (reporter) bar.update(done, m.train_loss, extra);
    if (reporter && !bar.is_tty() && (done == 1 || epoch == last_epoch || done % std::max(1, options.epochs / 10) == 0))
      spdlog::info("epoch {:>5}/{}  loss {:.6f}  {}  {:.1f} epochs/s", epoch, last_epoch, m.train_loss, extra,
                   done / std::max(m.seconds - seconds_before, 1e-9));

    if (epoch == options.prune_at_epoch && options.prune_fraction > 0) {
      // Decided on rank 0 (every rank holds the same weights anyway) and
      // applied on every rank; the optimizer state follows the survivors.
      EditScript prune;
      if (reporter) prune.remove_connections(weakest_connections(network, std::nullopt, options.prune_fraction));
#if defined(CONNEX_WITH_DISTRIBUTED)
      EditResult edited = dp ? dp->apply_edit(network, prune, options.seed) : prune.build(network, options.seed);
#else
      EditResult edited = prune.build(network, options.seed);
#endif
      auto next = optimizer_after_edit(*optimizer, network, edited);
      if (reporter)
        spdlog::info("epoch {}: pruned {} of {} connections (|w| smallest first)", epoch,
                     network->num_connections() - edited.network->num_connections(), network->num_connections());
      network = edited.network;
      optimizer = std::move(next);
      network->train();
      if (options.on_network_replaced) options.on_network_replaced(network);
#if defined(CONNEX_WITH_DISTRIBUTED)
      if (dp) dp->check_replicas_identical(network, optimizer.get(), "train: after pruning");
#endif
    }
    if (reporter && options.checkpoint_every > 0 && epoch % options.checkpoint_every == 0 && !options.out.empty())
      write_run(options.out, network, *optimizer, progress, options.preprocessing);
    if (options.stop && *options.stop && epoch < last_epoch) throw Stopped{static_cast<int>(*options.stop), progress};
  }
  return result;
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
