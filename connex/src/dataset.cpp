#include "connex/dataset.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "file_io.h"
#include "dtype.h"
#include "enum_names.h"
#include "json_input.h"
#include "utf8.h"

namespace connex {

namespace {

// Names for a message: the first ten, then how many there are (a header of
// 10^6 columns was listed whole), each with control bytes escaped and cut.
std::string join(const std::vector<std::string>& names) {
  constexpr size_t kShown = 10;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) out += (i ? ", " : "") + printable(names[i], 40);
  if (names.size() > kShown) out += fmt::format(", … ({} in all)", names.size());
  return out;
}

// Integer labels name their class by index: "0", "1", ...
std::vector<std::string> index_classes(int64_t n) {
  std::vector<std::string> classes;
  for (int64_t i = 0; i < n; ++i) classes.push_back(std::to_string(i));
  return classes;
}

struct Columns {
  std::vector<int64_t> features, targets;
};

// Names a file must hold: a model's (`trained`) or the flags' (options).
struct Wanted {
  const std::vector<std::string>& names;
  const char* what;  // "feature" or "target"
  bool trained;
};

// Fails naming every wanted name the file lacks, each with its role, in one
// message (a file short of two columns used to name the first only): the
// options' names, then the model's.
void require_columns(const std::vector<std::string>& columns, const std::string& source,
                     std::initializer_list<Wanted> wanted) {
  std::set<std::string> said;  // a name in both lists is named once
  std::vector<std::string> messages;
  for (const bool trained : {false, true}) {
    std::vector<std::string> parts, all;
    std::string what;
    for (const auto& w : wanted) {
      if (w.trained != trained) continue;
      std::vector<std::string> missing;
      for (const auto& name : w.names)
        if (std::find(columns.begin(), columns.end(), name) == columns.end() && said.insert(name).second)
          missing.push_back("\"" + printable(name, 40) + "\"");
      if (missing.empty()) continue;
      parts.push_back(fmt::format("{} column{} {}", w.what, missing.size() > 1 ? "s" : "", listed(missing, "and")));
      all.insert(all.end(), missing.begin(), missing.end());
      what = w.what;
    }
    if (all.empty()) continue;
    if (!trained)
      messages.push_back(all.size() == 1 ? "unknown column " + all[0] : "unknown " + listed(parts, "and"));
    else
      messages.push_back(all.size() == 1 ? fmt::format("no column {}, a {} the model was trained on", all[0], what)
                                         : fmt::format("no {} that the model was trained on", listed(parts, "or")));
  }
  if (!messages.empty()) fail("{}: {}; the columns are {}", source, fmt::join(messages, "; "), join(columns));
}

// Which columns are features and which targets, checked against the network's sizes.
Columns choose_columns(const std::vector<std::string>& columns, const std::string& source, int64_t n_in, int64_t n_out,
                       Task task, const TableOptions& options, const std::optional<Preprocessing>& fitted) {
  const int64_t n_cols = static_cast<int64_t>(columns.size());
  auto index = [&](const std::string& name) {  // of a name require_columns() found
    return static_cast<int64_t>(std::find(columns.begin(), columns.end(), name) - columns.begin());
  };
  auto names = [&](const std::vector<int64_t>& idx) {
    std::vector<std::string> out;
    for (int64_t j : idx) out.push_back(columns[j]);
    return out;
  };
  Columns c;
  const bool own_targets = !options.targets().empty() || !fitted, own_features = !options.features().empty() || !fitted;
  const auto& target_names = own_targets ? options.targets() : fitted->targets;
  const auto& feature_names = own_features ? options.features() : fitted->features;
  require_columns(columns, source, {{target_names, "target", !own_targets}, {feature_names, "feature", !own_features}});
  // What the user most likely forgot, when the default columns do not fit.
  std::string hint;
  const bool default_columns = options.targets().empty() && options.features().empty() && !fitted;
  if (default_columns && task == Task::Regression && n_cols - 1 == n_in)
    hint = fmt::format(
        "; if \"{}\" holds class labels, set the task to classification (then the other {} columns are the features)",
        columns.back(), n_in);
  for (const auto& name : target_names) c.targets.push_back(index(name));
  if (c.targets.empty()) {
    const int64_t want = task == Task::Classification ? 1 : n_out;
    if (want >= n_cols)
      fail("{}: has {} columns, too few for {} target column(s) and at least one feature{}", source, n_cols, want,
           hint);
    for (int64_t j = n_cols - want; j < n_cols; ++j) c.targets.push_back(j);
  }
  for (const auto& name : feature_names) c.features.push_back(index(name));
  if (c.features.empty())
    for (int64_t j = 0; j < n_cols; ++j)
      if (std::find(c.targets.begin(), c.targets.end(), j) == c.targets.end()) c.features.push_back(j);
  for (int64_t j : c.features)
    if (std::find(c.targets.begin(), c.targets.end(), j) != c.targets.end())
      fail("{}: column \"{}\" is named both as a feature and as a target", source, columns[j]);
  for (const auto* list : {&c.features, &c.targets}) {
    std::vector<bool> named(columns.size(), false);
    for (int64_t j : *list) {
      // A chosen column's name is recorded (JSON, UTF-8 only); the others may be anything.
      if (const size_t bad = first_non_utf8(columns[j]); bad != std::string::npos)
        fail(
            "{}: column {} (\"{}\"): the name is not UTF-8 (byte 0x{:02x}); connex records the names of the columns "
            "it uses in JSON: convert the file to UTF-8",
            source, j + 1, printable(columns[j]), static_cast<unsigned char>(columns[j][bad]));
      if (named[j])
        fail("{}: column \"{}\" is named twice as a {}", source, columns[j],
             list == &c.features ? "feature" : "target");
      named[j] = true;
    }
  }

  if (static_cast<int64_t>(c.features.size()) != n_in)
    fail("{}: {} feature columns ({}) but the network has {} inputs{}", source, c.features.size(),
         join(names(c.features)), n_in, hint);
  if (task == Task::Classification && c.targets.size() != 1)
    fail("{}: classification takes one label column, {} were named ({})", source, c.targets.size(),
         join(names(c.targets)));
  if (task == Task::Regression && static_cast<int64_t>(c.targets.size()) != n_out)
    fail("{}: {} target columns ({}) but the network has {} outputs{}", source, c.targets.size(),
         join(names(c.targets)), n_out, hint);
  if (fitted) {
    if (names(c.features) != fitted->features)
      fail("{}: the features ({}) differ from those the model was trained on ({})", source, join(names(c.features)),
           join(fitted->features));
    if (names(c.targets) != fitted->targets)
      fail("{}: the targets ({}) differ from those the model was trained on ({})", source, join(names(c.targets)),
           join(fitted->targets));
  }
  return c;
}

Task task_of(const TableOptions& options, const std::optional<Preprocessing>& fitted, const std::string& source) {
  if (!fitted) return options.task().value_or(Task::Regression);
  if (options.task() && *options.task() != fitted->task)
    fail("{}: the model was trained for {}, not {}", source, task_name(fitted->task), task_name(*options.task()));
  if (options.standardize() && *options.standardize() != fitted->standardizes())
    fail("{}: the model was trained on {}", source,
         fitted->standardizes() ? "standardized features; reading them raw (standardize false) would change its inputs"
                                : "unstandardized features; standardizing now would change its inputs");
  return fitted->task;
}

// Class indices of a label column, and the class names (fitted ones when given).
std::pair<torch::Tensor, std::vector<std::string>> class_labels(const CsvTable& csv, int64_t j, int64_t n_out,
                                                                const std::optional<Preprocessing>& fitted) {
  const int64_t rows = static_cast<int64_t>(csv.rows.size());
  const bool text = csv.is_text(j);
  auto cell = [&](int64_t i) { return text ? csv.text[j][i] : fmt::format("{}", csv.rows[i][j]); };
  auto where = [&](int64_t i) {
    return fmt::format("{}:{}: column {} (\"{}\")", csv.source, csv.row_lines[i], j + 1, csv.columns[j]);
  };
  int64_t numbers = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (text && csv.text[j][i].empty()) fail("{}: the class label is empty", where(i));
    if (text && first_non_utf8(csv.text[j][i]) != std::string::npos)
      fail("{}: the class label \"{}\" is not UTF-8; connex keeps class names in JSON: convert the file to UTF-8",
           where(i), printable(csv.text[j][i]));
    numbers += csv.try_number(i, j).has_value();
  }
  // A column of numbers with a stray word (or the reverse) is a data error, not a new class.
  if (numbers > 0 && numbers < rows) {
    const bool want_number = 2 * numbers >= rows;
    int64_t i = 0;
    while (csv.try_number(i, j).has_value() == want_number) ++i;
    fail("{}: \"{}\" is not a class label like the others ({})", where(i), cell(i),
         want_number ? "integer output indices" : "names");
  }
  const bool numeric =
      fitted ? fitted->classes == index_classes(static_cast<int64_t>(fitted->classes.size())) : numbers == rows;

  auto y = torch::empty({rows}, torch::kLong);
  auto ya = y.accessor<int64_t, 1>();
  if (numeric) {  // integer labels are output indices
    const int64_t classes = fitted ? static_cast<int64_t>(fitted->classes.size()) : n_out;
    for (int64_t i = 0; i < rows; ++i) {
      const auto v = csv.try_number(i, j);
      if (!v || *v != std::floor(*v) || *v < 0 || *v >= static_cast<double>(classes))
        fail("{}: {} is not an integer class label in [0, {}) (the network has {} outputs)", where(i), cell(i), classes,
             n_out);
      ya[i] = static_cast<int64_t>(*v);
    }
    return {y, fitted ? fitted->classes : index_classes(n_out)};
  }
  std::vector<std::string> classes;
  if (fitted) {
    classes = fitted->classes;
  } else {  // text labels: one output per distinct label, in sorted order
    const std::set<std::string> distinct(csv.text[j].begin(), csv.text[j].end());
    classes.assign(distinct.begin(), distinct.end());
    if (static_cast<int64_t>(classes.size()) > n_out)
      fail("{}: column \"{}\" has {} distinct class labels but the network has {} outputs", csv.source, csv.columns[j],
           classes.size(), n_out);
  }
  for (int64_t i = 0; i < rows; ++i) {
    // A column parsed as numbers against named classes: its cells' text (none kept).
    const std::string label = cell(i);
    const auto it = std::find(classes.begin(), classes.end(), label);
    if (it == classes.end())
      fail("{}: \"{}\" is not one of the classes the model was trained on ({})", where(i), label, join(classes));
    ya[i] = it - classes.begin();
  }
  return {y, classes};
}

// The largest |value| a cell may hold to be predicted from in `dtype`: its
// largest finite value.
double largest_value(torch::Dtype dtype) {
  const DtypeInfo* info = find_dtype(dtype);
  return info ? info->max : static_cast<double>(std::numeric_limits<float>::max());
}

// The largest |value| a cell may hold to be trained on in `dtype`: squared
// errors and sums of squares must stay finite, so the square root of the
// dtype's largest value (float32: 1.8e19, float64: 1.3e154). Beyond it, a
// non-finite loss would look like a learning-rate problem.
double largest_trainable(torch::Dtype dtype) { return std::sqrt(largest_value(dtype)); }

constexpr const char* kSquaresStayFinite = ", so that squared errors stay finite";

// The first entry of `values` [rows, columns] that is NaN or beyond
// `limit` in size, as (row, column); none when every entry is within.
std::optional<std::pair<int64_t, int64_t>> first_beyond(const torch::Tensor& values, double limit) {
  const auto beyond = (~(values.abs() <= limit)).nonzero();
  if (beyond.size(0) == 0) return std::nullopt;
  return std::make_pair(beyond[0][0].item<int64_t>(), beyond[0][1].item<int64_t>());
}

// `limit`: the largest |cell|; `in` says for what ("to train on in Float"),
// `why` why the limit (kSquaresStayFinite, or "" for a dtype's range).
torch::Tensor numeric_columns(const CsvTable& csv, const std::vector<int64_t>& columns, double limit,
                              const std::string& in, const char* why, const std::string& hint = "") {
  const int64_t rows = static_cast<int64_t>(csv.rows.size()), n = static_cast<int64_t>(columns.size());
  auto x = torch::empty({rows, n}, torch::kFloat64);
  auto xa = x.accessor<double, 2>();
  try {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < n; ++k) {
        const double v = csv.number(i, columns[k]);
        if (std::abs(v) > limit)
          fail(
              "{}:{}: column {} (\"{}\"): {} is too large {} (|value| must stay below {:.2g}{}); rescale the "
              "column",
              csv.source, csv.row_lines[i], columns[k] + 1, printable(csv.columns[columns[k]]), v, in, limit, why);
        xa[i][k] = v;
      }
  } catch (const Error& e) {
    if (hint.empty()) throw;
    throw Error(e.what() + hint);
  }
  return x;
}

// Names a cell of the raw rows for an error: (row, column, whether a target).
using CellName = std::function<std::string(int64_t, int64_t, bool)>;

// What a checked value is for, in messages.
enum class Use { Train, Standardize, Standardized };

// Fails at the first value of `values` (a table's features or float
// targets) that is not finite or too large to train on in `dtype` (to
// standardize: in float64); `raw` holds what a standardized value came from.
void check_trainable(const torch::Tensor& values, const torch::Tensor& raw, Use use, bool targets, torch::Dtype dtype,
                     const CellName& cell) {
  const double limit = largest_trainable(dtype);
  const auto at = first_beyond(values, limit);
  if (!at) return;
  const auto [i, k] = *at;
  const double value = values[i][k].item<double>(), given = raw[i][k].item<double>();
  const std::string where = cell(i, k, targets);
  if (!std::isfinite(given)) fail("{}: {} is not a finite number", where, given);
  if (use == Use::Standardized && !std::isfinite(value))
    fail("{}: {} standardizes to {}; check the preprocessing's mean and scale for it", where, given, value);
  fail("{}: {} {} too large {} (|value| must stay below {:.2g}{}); rescale the column", where, given,
       use == Use::Standardized ? fmt::format("standardizes to {:.3g},", value) : std::string("is"),
       use == Use::Standardize ? std::string("to standardize") : fmt::format("to train on in {}", c10::toString(dtype)),
       limit, kSquaresStayFinite);
}

// The dtype a table's values take: the options', else `fallback`; one a
// network can hold (an integer dtype would truncate every value).
torch::Dtype table_dtype(const TableOptions& options, torch::Dtype fallback, const std::string& source) {
  const auto dtype = options.dtype().value_or(fallback);
  if (!find_dtype(dtype))
    fail("{}: the table's dtype must be one of {}, got {}", source, dtype_names(), c10::toString(dtype));
  return dtype;
}

// Splits raw rows (checked by the caller: trainable in float64 where they
// are standardized, else in the table's dtype, options.dtype(), which the
// caller sets), fits the standardization on the training rows (unless
// fitted), applies it to all and checks what the network gets.
Table make_table(torch::Tensor raw, torch::Tensor targets, const TableOptions& options, Preprocessing preprocessing,
                 bool fit, std::string source, const CellName& cell) {
  const int64_t rows = raw.size(0);
  const auto dtype = *options.dtype();
  const bool standardized = fit ? options.standardize().value_or(false) : preprocessing.standardizes();
  auto [train_rows, validation_rows] = split_rows(rows, options.validation_fraction(), options.seed());
  if (fit && standardized) {
    if (train_rows.numel() == 0) fail("{}: no training rows to fit the standardization on", source);
    // A constant column (or a single row) has no spread: leave its scale alone.
    const auto train = raw.index_select(0, train_rows);
    auto std = train.std(0, /*unbiased=*/true);
    std = torch::where(torch::isfinite(std) & (std > 1e-12), std, torch::ones_like(std));
    const auto mean = train.mean(0);
    preprocessing.mean.assign(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
    preprocessing.scale.assign(std.data_ptr<double>(), std.data_ptr<double>() + std.numel());
  }
  const auto scaled = preprocessing.apply(raw);
  if (standardized) check_trainable(scaled, raw, Use::Standardized, false, dtype, cell);
  const auto inputs = scaled.to(dtype);
  if (targets.is_floating_point()) targets = targets.to(dtype);
  Table table;
  table.train = TableDataset(inputs.index_select(0, train_rows), targets.index_select(0, train_rows));
  table.validation = TableDataset(inputs.index_select(0, validation_rows), targets.index_select(0, validation_rows));
  table.preprocessing = std::move(preprocessing);
  table.source = std::move(source);
  return table;
}

std::vector<double> numbers(const nlohmann::json& json, const std::string& where, const char* key, size_t size,
                            bool positive) {
  const auto& v = json.at(key);
  std::vector<double> out;
  if (!v.is_array() || v.size() != size)
    fail("{}/{} must be an array of {} numbers, got {}", where, key, size, detail::excerpt(v));
  for (size_t k = 0; k < size; ++k) {
    const double x = v[k].is_number() ? v[k].get<double>() : NAN;
    if (!std::isfinite(x) || (positive && !(x > 0)))
      fail("{}/{}/{} must be a finite number{}, got {}", where, key, k, positive ? " > 0" : "", detail::excerpt(v[k]));
    out.push_back(x);
  }
  return out;
}

std::vector<std::string> strings(const nlohmann::json& json, const std::string& where, const char* key) {
  if (!json.contains(key)) return {};
  const auto& v = json.at(key);
  if (!v.is_array()) fail("{}/{} must be an array of strings", where, key);
  std::vector<std::string> out;
  for (size_t k = 0; k < v.size(); ++k) {
    if (!v[k].is_string()) fail("{}/{}/{} must be a string, got {}", where, key, k, detail::excerpt(v[k]));
    out.push_back(v[k].get<std::string>());
  }
  return out;
}

// The positions of the columns a trained model names (`what`: "feature" or
// "target"), in its order.
std::vector<int64_t> columns_named(const CsvTable& csv, const std::vector<std::string>& names, const char* what) {
  require_columns(csv.columns, csv.source, {{names, what, true}});
  std::vector<int64_t> positions;
  for (const auto& name : names) positions.push_back(csv.column_index(name));
  return positions;
}

// A regression's target columns, each cell small enough that its squared
// error stays finite in `dtype` (`use`: "train on", "score"); float64.
torch::Tensor float_targets(const CsvTable& csv, const std::vector<int64_t>& columns, torch::Dtype dtype,
                            const char* use, const std::string& hint = "") {
  return numeric_columns(csv, columns, largest_trainable(dtype), fmt::format("to {} in {}", use, c10::toString(dtype)),
                         kSquaresStayFinite, hint);
}

}  // namespace

const char* task_name(Task task) { return task == Task::Classification ? "classification" : "regression"; }

void Preprocessing::check_standardization(const std::string& where) const {
  if (!standardizes()) return;
  if (mean.size() != features.size() || scale.size() != features.size())
    fail("{}: the standardization has {} means and {} scales for {} features", where, mean.size(), scale.size(),
         features.size());
  // What a checkpoint could not hold: load() refuses it (from_json's checks).
  for (size_t k = 0; k < features.size(); ++k) {
    if (!std::isfinite(mean[k]))
      fail("{}: the mean of feature \"{}\" is {}, not a finite number", where, printable(features[k]), mean[k]);
    if (!(std::isfinite(scale[k]) && scale[k] > 0))
      fail("{}: the scale of feature \"{}\" is {}, not a finite number > 0", where, printable(features[k]), scale[k]);
  }
}

torch::Tensor Preprocessing::apply(const torch::Tensor& raw) const {
  if (raw.dim() != 2 || raw.size(1) != static_cast<int64_t>(features.size()))
    fail("Preprocessing::apply(): expected raw rows [rows, {}] ({}), got [{}]", features.size(), join(features),
         fmt::join(raw.sizes(), ", "));
  // Standardized values are fractions: integer rows would hold them truncated.
  if (!raw.is_floating_point())
    fail(
        "Preprocessing::apply(): expected floating-point raw rows, got {}; convert them first (raw.to(torch::kDouble))",
        c10::toString(raw.scalar_type()));
  check_standardization("Preprocessing::apply()");
  if (!standardizes()) return raw;
  const auto options = torch::TensorOptions(raw.scalar_type()).device(raw.device());
  return (raw - torch::tensor(mean, torch::kFloat64).to(options)) / torch::tensor(scale, torch::kFloat64).to(options);
}

nlohmann::json Preprocessing::to_json() const {
  nlohmann::json out{{"task", task_name(task)}, {"features", features}, {"targets", targets}};
  if (standardizes()) out["standardize"] = {{"mean", mean}, {"scale", scale}};
  if (task == Task::Classification) out["classes"] = classes;
  return out;
}

Preprocessing Preprocessing::from_json(const nlohmann::json& json, const std::string& where,
                                       const NeuralNetwork& network) {
  if (!json.is_object()) fail("{} must be an object, got {}", where, detail::excerpt(json));
  for (const auto& item : json.items())
    if (item.key() != "task" && item.key() != "features" && item.key() != "targets" && item.key() != "standardize" &&
        item.key() != "classes")
      fail("{} has an unknown key \"{}\"", where, item.key());
  Preprocessing p;
  const auto task = json.value("task", nlohmann::json());
  if (task == "classification")
    p.task = Task::Classification;
  else if (task != "regression")
    fail("{}/task must be \"regression\" or \"classification\", got {}", where, detail::excerpt(task));
  p.features = strings(json, where, "features");
  p.targets = strings(json, where, "targets");
  p.classes = strings(json, where, "classes");
  if (json.contains("standardize")) {
    const auto& s = json.at("standardize");
    if (!s.is_object() || !s.contains("mean") || !s.contains("scale") || s.size() != 2)
      fail("{}/standardize must be {{\"mean\": [...], \"scale\": [...]}}", where);
    p.mean = numbers(s, where + "/standardize", "mean", p.features.size(), false);
    p.scale = numbers(s, where + "/standardize", "scale", p.features.size(), true);
  }
  p.check_fits(network, where);
  return p;
}

void Preprocessing::check_fits(const NeuralNetwork& network, const std::string& where) const {
  if (static_cast<int64_t>(features.size()) != network->num_inputs())
    fail("{}: names {} feature(s) for a network with {} inputs", where, features.size(), network->num_inputs());
  check_standardization(where);
  if (task == Task::Classification) {
    if (targets.size() != 1) fail("{}: classification takes one label column, got {}", where, targets.size());
    if (classes.empty() || static_cast<int64_t>(classes.size()) > network->num_outputs())
      fail("{}: names {} class(es) for a network with {} outputs", where, classes.size(), network->num_outputs());
    if (std::set<std::string>(classes.begin(), classes.end()).size() != classes.size())
      fail("{}: names a class twice", where);
  } else {
    if (static_cast<int64_t>(targets.size()) != network->num_outputs())
      fail("{}: names {} target(s) for a network with {} outputs", where, targets.size(), network->num_outputs());
    if (!classes.empty()) fail("{}: a regression has no classes", where);
  }
  std::set<std::string> features_seen, targets_seen;
  for (const auto& name : features)
    if (!features_seen.insert(name).second) fail("{}: names feature column \"{}\" twice", where, printable(name));
  for (const auto& name : targets) {
    if (!targets_seen.insert(name).second) fail("{}: names target column \"{}\" twice", where, printable(name));
    if (features_seen.count(name))
      fail("{}: names column \"{}\" both as a feature and as a target", where, printable(name));
  }
}

std::vector<std::string> Preprocessing::output_names(const NeuralNetwork& network) const {
  const auto& named = task == Task::Classification ? classes : targets;
  std::vector<std::string> names;
  for (int64_t k = 0; k < network->num_outputs(); ++k)
    names.push_back(k < static_cast<int64_t>(named.size()) ? named[k]
                                                           : "output " + network->output_neurons()[k].plain());
  return names;
}

TableDataset::TableDataset(torch::Tensor inputs, torch::Tensor targets)
    : inputs_(std::move(inputs)), targets_(std::move(targets)) {
  if (inputs_.dim() != 2 || targets_.dim() < 1 || targets_.size(0) != inputs_.size(0))
    fail("TableDataset: expected inputs [rows, features] and targets with as many rows, got [{}] and [{}]",
         fmt::join(inputs_.sizes(), ", "), fmt::join(targets_.sizes(), ", "));
}

torch::data::Example<> TableDataset::get(size_t index) {
  const int64_t i = static_cast<int64_t>(index);
  if (i >= inputs_.size(0)) fail("TableDataset: row {} of {}", index, inputs_.size(0));
  return {inputs_[i], targets_[i]};
}

torch::optional<size_t> TableDataset::size() const {
  return inputs_.defined() ? static_cast<size_t>(inputs_.size(0)) : 0;
}

std::pair<torch::Tensor, torch::Tensor> split_rows(int64_t rows, double validation_fraction, uint64_t seed) {
  if (!(validation_fraction >= 0 && validation_fraction < 1))
    fail("split_rows(): the validation fraction must be in [0, 1), got {}", validation_fraction);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto order = torch::randperm(rows, generator, torch::kLong);
  const int64_t held =
      validation_fraction > 0 ? std::max<int64_t>(1, std::llround(static_cast<double>(rows) * validation_fraction)) : 0;
  if (rows == 0) fail("split_rows(): there are no rows to split");
  if (held >= rows)
    fail("split_rows(): a validation fraction of {} leaves no training rows ({} row{} in all)", validation_fraction,
         rows, rows == 1 ? "" : "s");
  return {order.narrow(0, held, rows - held), order.narrow(0, 0, held)};
}

Table table_from_csv(const CsvTable& csv, const NeuralNetwork& network, const TableOptions& given,
                     const std::optional<Preprocessing>& fitted) {
  for (size_t i = 0; i < csv.rows.size(); ++i)
    if (csv.rows[i].size() != csv.columns.size())
      fail("{}: row {} has {} cells for {} columns", csv.source, i, csv.rows[i].size(), csv.columns.size());
  for (size_t j = 0; j < csv.columns.size(); ++j)
    if (csv.is_text(j) && csv.text[j].size() != csv.rows.size())
      fail("{}: text column \"{}\" has {} cells for {} rows", csv.source, csv.columns[j], csv.text[j].size(),
           csv.rows.size());
  if (csv.row_lines.size() != csv.rows.size())
    fail("{}: {} line numbers for {} rows", csv.source, csv.row_lines.size(), csv.rows.size());
  TableOptions options = given;
  options.dtype(table_dtype(options, network->weight_tensor().scalar_type(), csv.source));
  const Task task = task_of(options, fitted, csv.source);
  const int64_t n_out = network->num_outputs();
  const Columns c = choose_columns(csv.columns, csv.source, network->num_inputs(), n_out, task, options, fitted);
  Preprocessing p = fitted.value_or(Preprocessing{});
  p.task = task;
  p.features.clear(), p.targets.clear();
  for (int64_t j : c.features) p.features.push_back(csv.columns[j]);
  for (int64_t j : c.targets) p.targets.push_back(csv.columns[j]);
  torch::Tensor y;
  if (task == Task::Classification)
    std::tie(y, p.classes) = class_labels(csv, c.targets[0], n_out, fitted);
  else {
    // Text in the default target column is most likely a class label.
    const bool guessed = !fitted && !options.task() && c.targets.size() == 1;
    y = float_targets(csv, c.targets, *options.dtype(), "train on",
                      guessed ? fmt::format("; if \"{}\" holds class labels, set the task to classification",
                                            csv.columns[c.targets[0]])
                              : "");
  }
  // Standardized features are scaled in float64 first, then in range.
  const bool standardized = fitted ? fitted->standardizes() : options.standardize().value_or(false);
  const auto feature_dtype = standardized ? torch::kFloat64 : *options.dtype();
  const auto cell = [&](int64_t i, int64_t k, bool target) {
    const int64_t j = target ? c.targets[k] : c.features[k];
    return fmt::format("{}:{}: column {} (\"{}\")", csv.source, csv.row_lines[i], j + 1, printable(csv.columns[j]));
  };
  return make_table(
      numeric_columns(csv, c.features, largest_trainable(feature_dtype),
                      standardized ? "to standardize" : fmt::format("to train on in {}", c10::toString(feature_dtype)),
                      kSquaresStayFinite),
      y, options, std::move(p), !fitted, csv.source, cell);
}

Table read_table(const std::string& path, const NeuralNetwork& network, const TableOptions& options,
                 const std::optional<Preprocessing>& fitted) {
  const std::string text = read_file(path, "read_table()");
  // Only the features must be numbers: the other columns are read as text
  // (class labels may be names, unused columns may hold anything, and a
  // regression's text cell gets a message that suggests the task).
  const auto columns = csv_columns(text, path);
  const Columns c = choose_columns(columns, path, network->num_inputs(), network->num_outputs(),
                                   task_of(options, fitted, path), options, fitted);
  std::vector<std::string> text_columns;
  for (size_t j = 0; j < columns.size(); ++j)
    if (std::find(c.features.begin(), c.features.end(), static_cast<int64_t>(j)) == c.features.end())
      text_columns.push_back(columns[j]);
  return table_from_csv(parse_csv(text, path, text_columns), network, options, fitted);
}

torch::Tensor read_inputs(const CsvTable& csv, const NeuralNetwork& network,
                          const std::optional<Preprocessing>& fitted) {
  if (fitted) fitted->check_fits(network, "read_inputs()");
  const auto& columns = csv.columns;
  std::vector<int64_t> features;
  if (fitted) {
    features = columns_named(csv, fitted->features, "feature");
  } else {
    if (static_cast<int64_t>(columns.size()) != network->num_inputs())
      fail(
          "{}: {} columns ({}) but the network has {} inputs; without the preprocessing of a model trained on a "
          "CSV, every column is an input",
          csv.source, columns.size(), join(columns), network->num_inputs());
    for (int64_t j = 0; j < static_cast<int64_t>(columns.size()); ++j) features.push_back(j);
  }
  // Prediction squares nothing: a cell need only be within the dtype's
  // range, standardized (in float64) or not.
  const auto dtype = network->weight_tensor().scalar_type();
  const bool standardized = fitted && fitted->standardizes();
  const auto raw_dtype = standardized ? torch::kFloat64 : dtype;
  const auto raw =
      numeric_columns(csv, features, largest_value(raw_dtype), fmt::format("for {}", c10::toString(raw_dtype)), "");
  if (!fitted) return raw.to(dtype);
  const auto scaled = fitted->apply(raw);
  const double limit = largest_value(dtype);
  if (const auto at = first_beyond(scaled, limit)) {  // NaN too (0/0 of a hand-made zero scale)
    const auto [i, k] = *at;
    fail("{}:{}: column {} (\"{}\"): {} standardizes to {:.3g}, beyond the range of {} (|value| below {:.2g})",
         csv.source, csv.row_lines[i], features[k] + 1, printable(csv.columns[features[k]]), raw[i][k].item<double>(),
         scaled[i][k].item<double>(), c10::toString(dtype), limit);
  }
  return scaled.to(dtype);
}

torch::Tensor read_targets(const CsvTable& csv, const NeuralNetwork& network, const Preprocessing& fitted) {
  fitted.check_fits(network, "read_targets()");
  const auto targets = columns_named(csv, fitted.targets, "target");
  if (fitted.task == Task::Classification) return class_labels(csv, targets[0], network->num_outputs(), fitted).first;
  const auto dtype = network->weight_tensor().scalar_type();
  return float_targets(csv, targets, dtype, "score").to(dtype);
}

torch::Tensor read_inputs(const std::string& path, const NeuralNetwork& network,
                          const std::optional<Preprocessing>& fitted) {
  const std::string text = read_file(path, "read_inputs()");
  // The columns not read as inputs stay text: anything may stand in them.
  std::vector<std::string> text_columns;
  if (fitted)
    for (const auto& name : csv_columns(text, path))
      if (std::find(fitted->features.begin(), fitted->features.end(), name) == fitted->features.end())
        text_columns.push_back(name);
  return read_inputs(parse_csv(text, path, text_columns), network, fitted);
}

Table table_from_tensors(const torch::Tensor& inputs, const torch::Tensor& targets, const TableOptions& options,
                         const std::optional<Preprocessing>& fitted) {
  if (inputs.dim() != 2 || !inputs.is_floating_point())
    fail("table_from_tensors(): expected floating inputs [rows, features], got {} [{}]",
         c10::toString(inputs.scalar_type()), fmt::join(inputs.sizes(), ", "));
  if (inputs.size(0) == 0) fail("table_from_tensors(): expected at least one row, got none");
  const Task task = task_of(options, fitted, "table_from_tensors()");
  const bool labels = task == Task::Classification;
  if (targets.dim() < 1 || targets.size(0) != inputs.size(0) ||
      (labels ? targets.dim() != 1 || targets.scalar_type() != torch::kLong
              : targets.dim() != 2 || !targets.is_floating_point()))
    fail("table_from_tensors(): expected {} targets [{}] for {} rows, got {} [{}]", labels ? "int64" : "floating",
         labels ? "rows" : "rows, outputs", inputs.size(0), c10::toString(targets.scalar_type()),
         fmt::join(targets.sizes(), ", "));
  Preprocessing p = fitted.value_or(Preprocessing{});
  if (!fitted) {
    p.task = task;
    for (int64_t k = 0; k < inputs.size(1); ++k) p.features.push_back("x" + std::to_string(k));
    if (labels) {
      if (targets.numel() && targets.min().item<int64_t>() < 0)
        fail("table_from_tensors(): class labels must be >= 0, got {}", targets.min().item<int64_t>());
      p.targets = {"label"};
      p.classes = index_classes(targets.numel() ? targets.max().item<int64_t>() + 1 : 0);
    } else {
      for (int64_t k = 0; k < targets.size(1); ++k) p.targets.push_back("y" + std::to_string(k));
    }
  } else if (static_cast<int64_t>(fitted->features.size()) != inputs.size(1)) {
    fail("table_from_tensors(): {} feature columns, but the preprocessing names {}", inputs.size(1),
         fitted->features.size());
  } else if (!labels && static_cast<int64_t>(fitted->targets.size()) != targets.size(1)) {
    fail("table_from_tensors(): {} target columns, but the preprocessing names {}", targets.size(1),
         fitted->targets.size());
  } else if (labels && targets.numel() &&
             (targets.min().item<int64_t>() < 0 ||
              targets.max().item<int64_t>() >= static_cast<int64_t>(fitted->classes.size()))) {
    fail("table_from_tensors(): class labels must be in [0, {}) (the preprocessing's classes), got [{}, {}]",
         fitted->classes.size(), targets.min().item<int64_t>(), targets.max().item<int64_t>());
  }
  const auto cell = [&p](int64_t i, int64_t k, bool target) {
    return fmt::format("table_from_tensors(): row {}, {} {} (\"{}\")", i, target ? "target" : "feature", k,
                       printable(target ? p.targets[k] : p.features[k]));
  };
  // The checks a CSV's cells get as they are read (numeric_columns).
  TableOptions checked = options;
  checked.dtype(table_dtype(options, torch::kFloat32, "table_from_tensors()"));
  // Data, not a graph's leaves: a table holds no autograd history.
  const auto raw = inputs.detach().to(torch::kCPU, torch::kFloat64), y = targets.detach().cpu();
  const bool standardized = fitted ? fitted->standardizes() : options.standardize().value_or(false);
  check_trainable(raw, raw, standardized ? Use::Standardize : Use::Train, false,
                  standardized ? torch::kFloat64 : *checked.dtype(), cell);
  if (y.is_floating_point()) check_trainable(y, y, Use::Train, true, *checked.dtype(), cell);
  return make_table(raw, y, checked, p, !fitted, "tensors", cell);
}

}  // namespace connex
