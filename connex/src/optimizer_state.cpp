#include "connex/optimizer_state.h"

#include <torch/torch.h>

#include "connex/error.h"
#include "json_input.h"
#include "optimizer_key.h"
#include "optimizer_kinds.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <fmt/ranges.h>

#include "remap_copy.h"
namespace connex {

namespace {

// How an operation parameter's entries correspond between two networks.
struct KeyedPair {
  const DimKeys* from;
  const DimKeys* to;
};

// Remaps one state tensor shaped like its parameter: survivors move, new
// entries start at `fresh_value` (what a new optimizer starts them at).
// `checked`: the (new, old) sizes the pairs were checked for, set here when
// they are checked (a parameter's fields share its pairs: checked once).
torch::Tensor remap_tensor(const torch::Tensor& old_state, const torch::Tensor& new_parameter,
                           const ParameterRemap::Moved* moved, const KeyedPair* keyed, double fresh_value,
                           std::pair<int64_t, int64_t>& checked) {
  if (!keyed && !moved) return old_state.clone();
  auto fresh = torch::full_like(new_parameter, fresh_value, old_state.options());
  if (keyed) {
    copy_keyed(old_state, *keyed->from, fresh, *keyed->to);
    return fresh;
  }
  // Index pairs count flattened entries (the same as rows for a 1-D parameter).
  const std::pair<int64_t, int64_t> sizes(fresh.numel(), old_state.numel());
  if (checked != sizes) {
    check_moved_entries(sizes.first, sizes.second, *moved, "transfer_optimizer_state()");
    checked = sizes;
  }
  move_checked_entries(fresh, old_state.contiguous(), *moved);
  return fresh;
}

// The state of `parameter` in a new optimizer whose group holding it has
// `options`, from its state in the old one. A field the old state lacks but
// the new options make step() read (Adam's max_exp_avg_sq once amsgrad is
// on) starts as a new optimizer would start it.
std::unique_ptr<torch::optim::OptimizerParamState> remap_state(const torch::optim::OptimizerParamState& state,
                                                               const torch::Tensor& parameter,
                                                               const ParameterRemap::Moved* moved,
                                                               const std::string& name, const KeyedPair* keyed,
                                                               const torch::optim::OptimizerOptions& options) {
  OptimizerStateFields fields;
  try {
    fields = state_fields(state);
  } catch (const Error&) {
    fail(
        "transfer_optimizer_state(): the state of parameter \"{}\" is of an optimizer connex does not know ({} are "
        "supported)",
        name, list_optimizer_kinds(OptimizerNaming::kTitle));
  }
  const auto required = required_state_fields(fields.type, options);
  std::pair<int64_t, int64_t> checked(-1, -1);
  for (auto& [field, tensor] : fields.tensors) {
    const double fresh = fresh_state_value(fields.type, field, options);
    if (tensor.defined())
      tensor = remap_tensor(tensor, parameter, moved, keyed, fresh, checked);
    else if (std::find(required.begin(), required.end(), field) != required.end())
      tensor = torch::full_like(parameter, fresh);
  }
  return make_param_state(fields);
}

// ------------------------------------------------------------- options JSON

// Reads an options object key by key, checking each value, then rejects keys it did not read.
class OptionsReader {
 public:
  OptionsReader(const nlohmann::json& json, const std::string& where) : json_(json), where_(where) {
    if (!json.is_object()) fail("{} must be an object of optimizer options, got {}", where, detail::excerpt(json));
  }
  double number(const char* key, double low, double high = HUGE_VAL, bool high_open = false) {
    const auto& value = at(key);
    const double x = value.is_number() ? value.get<double>() : NAN;
    if (!value.is_number() || !(x >= low) || !(high_open ? x < high : x <= high))
      fail("{}/{} must be a number in [{}, {}{}, got {}", where_, key, low, high, high_open ? ")" : "]",
           detail::excerpt(value));
    return x;
  }
  bool boolean(const char* key) {
    const auto& value = at(key);
    if (!value.is_boolean()) fail("{}/{} must be true or false, got {}", where_, key, detail::excerpt(value));
    return value.get<bool>();
  }
  std::tuple<double, double> betas() {
    const auto& value = at("betas");
    auto beta = [&](size_t i) { return value.at(i).is_number() ? value.at(i).get<double>() : NAN; };
    if (!value.is_array() || value.size() != 2 || !(beta(0) >= 0 && beta(0) < 1) || !(beta(1) >= 0 && beta(1) < 1))
      fail("{}/betas must be two numbers in [0, 1), got {}", where_, detail::excerpt(value));
    return {beta(0), beta(1)};
  }
  void done() const {
    for (const auto& item : json_.items())
      if (!read_.count(item.key())) fail("{} has an unknown optimizer option \"{}\"", where_, item.key());
  }

 private:
  const nlohmann::json& at(const char* key) {
    if (!json_.contains(key)) fail("{} lacks the optimizer option \"{}\"", where_, key);
    read_.insert(key);
    return json_.at(key);
  }
  const nlohmann::json& json_;
  const std::string& where_;
  std::unordered_set<std::string> read_;
};

// ------------------------------------------------------------- optimizer kinds

namespace optim = torch::optim;

// A parameter state's step (absent when the kind counts none) and its tensors, in the kind's field order.
struct StateValues {
  std::optional<int64_t> step;
  std::vector<torch::Tensor> tensors;
};

// One optimizer connex knows: how to recognise it, make it, and write and
// read its options and per-parameter state. Every per-type decision of this
// file and of the checkpoint is a lookup in optimizer_kinds().
struct OptimizerKind {
  const char* name = "";                   // in checkpoints, the CLI and optimizer_type_name: "adam"
  const char* title = "";                  // in messages: "Adam"
  std::vector<std::string> state_tensors;  // a parameter state's tensor fields, in a fixed order
  bool has_step = true;                    // whether the state counts steps
  bool state_for_every_parameter = false;  // kept for every parameter from the start, so none may be missing
  bool (*is_options)(const optim::OptimizerOptions&) = nullptr;
  bool (*is_state)(const optim::OptimizerParamState&) = nullptr;
  // `defaults` are options of this kind.
  std::unique_ptr<optim::Optimizer> (*make)(std::vector<optim::OptimizerParamGroup> groups,
                                            const optim::OptimizerOptions& defaults) = nullptr;
  nlohmann::json (*options_to_json)(const optim::OptimizerOptions&) = nullptr;
  // Reads every option (in the ranges torch's constructors enforce); `where` names them in messages.
  std::unique_ptr<optim::OptimizerOptions> (*options_from_json)(OptionsReader& reader,
                                                                const std::string& where) = nullptr;
  // The state fields step() reads under these options.
  std::vector<std::string> (*required_fields)(const optim::OptimizerOptions&) = nullptr;
  // Where a new optimizer starts a state field under these options (none: 0).
  double (*fresh_value)(const std::string& field, const optim::OptimizerOptions&) = nullptr;
  StateValues (*read_state)(const optim::OptimizerParamState&) = nullptr;
  std::unique_ptr<optim::OptimizerParamState> (*make_state)(const StateValues&) = nullptr;
};

template <typename T, typename Base>
bool is_a(const Base& x) {
  return dynamic_cast<const T*>(&x) != nullptr;
}

template <typename Optimizer, typename Options>
std::unique_ptr<optim::Optimizer> make_of(std::vector<optim::OptimizerParamGroup> groups,
                                          const optim::OptimizerOptions& defaults) {
  return std::make_unique<Optimizer>(std::move(groups), dynamic_cast<const Options&>(defaults));
}

// Adam and AdamW: the same options and state, in different types.
template <typename Optimizer, typename Options, typename State>
OptimizerKind adam_like(const char* name, const char* title) {
  OptimizerKind kind;
  kind.name = name;
  kind.title = title;
  kind.state_tensors = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  kind.is_options = is_a<Options, optim::OptimizerOptions>;
  kind.is_state = is_a<State, optim::OptimizerParamState>;
  kind.make = make_of<Optimizer, Options>;
  kind.options_to_json = [](const optim::OptimizerOptions& options) -> nlohmann::json {
    const auto& o = dynamic_cast<const Options&>(options);
    return {{"lr", o.lr()},
            {"betas", {std::get<0>(o.betas()), std::get<1>(o.betas())}},
            {"eps", o.eps()},
            {"weight_decay", o.weight_decay()},
            {"amsgrad", o.amsgrad()}};
  };
  kind.options_from_json = [](OptionsReader& r, const std::string&) -> std::unique_ptr<optim::OptimizerOptions> {
    auto o = std::make_unique<Options>();
    o->lr(r.number("lr", 0))
        .betas(r.betas())
        .eps(r.number("eps", 0))
        .weight_decay(r.number("weight_decay", 0))
        .amsgrad(r.boolean("amsgrad"));
    return o;
  };
  kind.required_fields = [](const optim::OptimizerOptions& options) -> std::vector<std::string> {
    if (dynamic_cast<const Options&>(options).amsgrad()) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    return {"exp_avg", "exp_avg_sq"};
  };
  kind.read_state = [](const optim::OptimizerParamState& state) {
    const auto& s = dynamic_cast<const State&>(state);
    return StateValues{s.step(), {s.exp_avg(), s.exp_avg_sq(), s.max_exp_avg_sq()}};
  };
  kind.make_state = [](const StateValues& v) -> std::unique_ptr<optim::OptimizerParamState> {
    auto s = std::make_unique<State>();
    s->step(*v.step).exp_avg(v.tensors[0]).exp_avg_sq(v.tensors[1]).max_exp_avg_sq(v.tensors[2]);
    return s;
  };
  return kind;
}

OptimizerKind sgd() {
  OptimizerKind kind;
  kind.name = "sgd";
  kind.title = "SGD";
  kind.state_tensors = {"momentum_buffer"};
  kind.has_step = false;
  kind.is_options = is_a<optim::SGDOptions, optim::OptimizerOptions>;
  kind.is_state = is_a<optim::SGDParamState, optim::OptimizerParamState>;
  kind.make = make_of<optim::SGD, optim::SGDOptions>;
  kind.options_to_json = [](const optim::OptimizerOptions& options) -> nlohmann::json {
    const auto& o = dynamic_cast<const optim::SGDOptions&>(options);
    return {{"lr", o.lr()},
            {"momentum", o.momentum()},
            {"dampening", o.dampening()},
            {"weight_decay", o.weight_decay()},
            {"nesterov", o.nesterov()}};
  };
  kind.options_from_json = [](OptionsReader& r, const std::string& where) -> std::unique_ptr<optim::OptimizerOptions> {
    auto o = std::make_unique<optim::SGDOptions>(r.number("lr", 0));
    o->momentum(r.number("momentum", 0))
        .dampening(r.number("dampening", -HUGE_VAL))
        .weight_decay(r.number("weight_decay", 0))
        .nesterov(r.boolean("nesterov"));
    if (o->nesterov() && (o->momentum() <= 0 || o->dampening() != 0))
      fail("{}: Nesterov momentum needs a momentum above 0 and zero dampening", where);
    return o;
  };
  kind.required_fields = [](const optim::OptimizerOptions& options) -> std::vector<std::string> {
    if (dynamic_cast<const optim::SGDOptions&>(options).momentum() != 0) return {"momentum_buffer"};
    return {};
  };
  kind.read_state = [](const optim::OptimizerParamState& state) {
    return StateValues{std::nullopt, {dynamic_cast<const optim::SGDParamState&>(state).momentum_buffer()}};
  };
  kind.make_state = [](const StateValues& v) -> std::unique_ptr<optim::OptimizerParamState> {
    auto s = std::make_unique<optim::SGDParamState>();
    s->momentum_buffer(v.tensors[0]);
    return s;
  };
  return kind;
}

OptimizerKind rmsprop() {
  OptimizerKind kind;
  kind.name = "rmsprop";
  kind.title = "RMSprop";
  kind.state_tensors = {"square_avg", "momentum_buffer", "grad_avg"};
  kind.is_options = is_a<optim::RMSpropOptions, optim::OptimizerOptions>;
  kind.is_state = is_a<optim::RMSpropParamState, optim::OptimizerParamState>;
  kind.make = make_of<optim::RMSprop, optim::RMSpropOptions>;
  kind.options_to_json = [](const optim::OptimizerOptions& options) -> nlohmann::json {
    const auto& o = dynamic_cast<const optim::RMSpropOptions&>(options);
    return {{"lr", o.lr()},
            {"alpha", o.alpha()},
            {"eps", o.eps()},
            {"weight_decay", o.weight_decay()},
            {"momentum", o.momentum()},
            {"centered", o.centered()}};
  };
  kind.options_from_json = [](OptionsReader& r, const std::string&) -> std::unique_ptr<optim::OptimizerOptions> {
    auto o = std::make_unique<optim::RMSpropOptions>(r.number("lr", 0));
    o->alpha(r.number("alpha", 0))
        .eps(r.number("eps", 0))
        .weight_decay(r.number("weight_decay", 0))
        .momentum(r.number("momentum", 0))
        .centered(r.boolean("centered"));
    return o;
  };
  kind.required_fields = [](const optim::OptimizerOptions& options) {
    const auto& o = dynamic_cast<const optim::RMSpropOptions&>(options);
    std::vector<std::string> fields{"square_avg"};
    if (o.momentum() > 0) fields.push_back("momentum_buffer");
    if (o.centered()) fields.push_back("grad_avg");
    return fields;
  };
  kind.read_state = [](const optim::OptimizerParamState& state) {
    const auto& s = dynamic_cast<const optim::RMSpropParamState&>(state);
    return StateValues{s.step(), {s.square_avg(), s.momentum_buffer(), s.grad_avg()}};
  };
  kind.make_state = [](const StateValues& v) -> std::unique_ptr<optim::OptimizerParamState> {
    auto s = std::make_unique<optim::RMSpropParamState>();
    s->step(*v.step).square_avg(v.tensors[0]).momentum_buffer(v.tensors[1]).grad_avg(v.tensors[2]);
    return s;
  };
  return kind;
}

OptimizerKind adagrad() {
  OptimizerKind kind;
  kind.name = "adagrad";
  kind.title = "Adagrad";
  kind.state_tensors = {"sum"};
  kind.state_for_every_parameter = true;
  kind.is_options = is_a<optim::AdagradOptions, optim::OptimizerOptions>;
  kind.is_state = is_a<optim::AdagradParamState, optim::OptimizerParamState>;
  kind.make = make_of<optim::Adagrad, optim::AdagradOptions>;
  kind.options_to_json = [](const optim::OptimizerOptions& options) -> nlohmann::json {
    const auto& o = dynamic_cast<const optim::AdagradOptions&>(options);
    return {{"lr", o.lr()},
            {"lr_decay", o.lr_decay()},
            {"weight_decay", o.weight_decay()},
            {"initial_accumulator_value", o.initial_accumulator_value()},
            {"eps", o.eps()}};
  };
  kind.options_from_json = [](OptionsReader& r, const std::string&) -> std::unique_ptr<optim::OptimizerOptions> {
    auto o = std::make_unique<optim::AdagradOptions>(r.number("lr", 0));
    o->lr_decay(r.number("lr_decay", 0))
        .weight_decay(r.number("weight_decay", 0))
        .initial_accumulator_value(r.number("initial_accumulator_value", 0))
        .eps(r.number("eps", 0));
    return o;
  };
  kind.required_fields = [](const optim::OptimizerOptions&) -> std::vector<std::string> { return {"sum"}; };
  kind.fresh_value = [](const std::string&, const optim::OptimizerOptions& options) {
    return dynamic_cast<const optim::AdagradOptions&>(options).initial_accumulator_value();
  };
  kind.read_state = [](const optim::OptimizerParamState& state) {
    const auto& s = dynamic_cast<const optim::AdagradParamState&>(state);
    return StateValues{s.step(), {s.sum()}};
  };
  kind.make_state = [](const StateValues& v) -> std::unique_ptr<optim::OptimizerParamState> {
    auto s = std::make_unique<optim::AdagradParamState>();
    s->step(*v.step).sum(v.tensors[0]);
    return s;
  };
  return kind;
}

// The table: every optimizer connex knows, in the order messages list them.
const std::vector<OptimizerKind>& optimizer_kinds() {
  static const std::vector<OptimizerKind> kinds{
      adam_like<optim::Adam, optim::AdamOptions, optim::AdamParamState>("adam", "Adam"),
      adam_like<optim::AdamW, optim::AdamWOptions, optim::AdamWParamState>("adamw", "AdamW"), sgd(), rmsprop(),
      adagrad()};
  return kinds;
}

// The kind named `type`; null when connex knows none.
const OptimizerKind* find_kind(const std::string& type) {
  for (const auto& kind : optimizer_kinds())
    if (type == kind.name) return &kind;
  return nullptr;
}

const OptimizerKind& kind_named(const std::string& type) {
  if (const auto* kind = find_kind(type)) return *kind;
  fail("optimizer state: unknown optimizer type \"{}\" ({} are known)", type,
       list_optimizer_kinds(OptimizerNaming::kName));
}

// The kind whose options these are (each optimizer's defaults are options of its own kind); null when unknown.
const OptimizerKind* kind_of(const optim::OptimizerOptions& options) {
  for (const auto& kind : optimizer_kinds())
    if (kind.is_options(options)) return &kind;
  return nullptr;
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& type,
                                                        std::vector<torch::optim::OptimizerParamGroup> groups,
                                                        const torch::optim::OptimizerOptions* defaults) {
  const OptimizerKind& kind = kind_named(type);
  if (groups.empty() || !groups[0].has_options()) fail("make_optimizer(): expected at least one group with options");
  for (size_t g = 0; g < groups.size(); ++g)
    if (!groups[g].has_options() || !kind.is_options(groups[g].options()))
      fail("make_optimizer(): group {} needs {} options", g, type);
  if (defaults && !kind.is_options(*defaults)) fail("make_optimizer(): the defaults need {} options", type);
  const auto owned = (defaults ? *defaults : groups[0].options()).clone();
  return kind.make(std::move(groups), *owned);
}

namespace {

using KeysByName = std::unordered_map<std::string, const DimKeys*>;

// Operation parameters' keys, by full name.
KeysByName operation_keys(const NeuralNetworkImpl& net) {
  KeysByName keys;
  for (size_t k = 0; k < net.operations().size(); ++k)
    for (const auto& [name, dim_keys] : net.operation_parameters(k).keys())
      keys[net.operations()[k]->name() + "." + name] = &dim_keys;
  return keys;
}

// The optimizer's type as connex names it ("adam"), else as C++ does.
std::string type_of(const torch::optim::Optimizer& optimizer) {
  const std::string name = optimizer_type_name(optimizer);
  return name == "other" ? typeid(optimizer).name() : name;
}

// The optimizer's parameters, group by group, as `module` names them; a
// parameter the module does not hold is left unnamed ("") and the first such
// is reported in `foreign` (its group too). One walk serves every check below.
struct HeldNames {
  std::vector<std::vector<std::string>> names;
  const torch::Tensor* foreign = nullptr;
  size_t foreign_group = 0;
  bool any = false;  // whether the module holds any of them
};

HeldNames held_names(const torch::optim::Optimizer& optimizer, const torch::nn::Module& module) {
  std::unordered_map<const void*, std::string> by_tensor;
  for (const auto& item : module.named_parameters()) by_tensor.emplace(item.value().unsafeGetTensorImpl(), item.key());
  HeldNames held;
  held.names.resize(optimizer.param_groups().size());
  for (size_t g = 0; g < held.names.size(); ++g)
    for (const auto& p : optimizer.param_groups()[g].params()) {
      auto name = by_tensor.find(p.unsafeGetTensorImpl());
      const bool ours = name != by_tensor.end();
      held.any = held.any || ours;
      if (!ours && !held.foreign) held.foreign = &p, held.foreign_group = g;
      held.names[g].push_back(ours ? name->second : std::string());
    }
  return held;
}

// Fails when `optimizer` holds parameters and none of them is `module`'s (an
// optimizer over the other network of an edit, an easy slip once
// `net = edit.network` ran, would otherwise match nothing and move no state).
// Parameters of other modules may share an optimizer (a head trained beside
// the network): they keep their place and their state.
HeldNames check_holds(const torch::optim::Optimizer& optimizer, const torch::nn::Module& module, const char* context,
                      const char* which, const char* remedy) {
  HeldNames held = held_names(optimizer, module);
  if (held.foreign && !held.any)
    fail("{}: none of {}'s parameters (group {} holds one of shape [{}]) is one of {}", context, which,
         held.foreign_group, fmt::join(held.foreign->sizes(), ", "), remedy);
  return held;
}

// The end of the message for an optimizer over other parameters; `module`
// names what was edited ("network", "HAM").
std::string old_remedy(const char* module) {
  return fmt::format(
      "the old {0}'s; pass the {0} the optimizer was built over (the one before the edit), and carry the optimizer "
      "through each edit in turn (one left behind an earlier edit still holds that edit's old {0})",
      module);
}

// transfer_optimizer_state for any module: `remap` pairs moved entries, and
// parameters keyed in both modules move by key.
void transfer_state(const torch::optim::Optimizer& old_optimizer, const torch::nn::Module& old_module,
                    torch::optim::Optimizer& new_optimizer, const torch::nn::Module& new_module,
                    const ParameterRemap& remap, const KeysByName& old_keys, const KeysByName& new_keys) {
  const char* context = "transfer_optimizer_state()";
  if (typeid(old_optimizer) != typeid(new_optimizer))
    fail("{}: the optimizers differ in type ({} and {})", context, type_of(old_optimizer), type_of(new_optimizer));
  // Parameters of other modules may share the optimizers (see below); one
  // optimizer holding nothing of its network is the slip.
  check_holds(old_optimizer, old_module, context, "the old optimizer", old_remedy("network").c_str());
  check_holds(new_optimizer, new_module, context, "the new optimizer",
              "the edited network's; build it over edit.network's parameters");
  std::unordered_map<std::string, torch::Tensor> old_parameters;
  for (const auto& item : old_module.named_parameters()) old_parameters.emplace(item.key(), item.value());
  std::unordered_map<OptimizerStateKey, torch::Tensor> held_by_new;
  std::unordered_map<OptimizerStateKey, const torch::optim::OptimizerOptions*> options_of;  // its group's
  for (const auto& group : new_optimizer.param_groups())
    for (const auto& p : group.params()) {
      held_by_new.emplace(optimizer_state_key(p), p);
      options_of.emplace(optimizer_state_key(p), &group.options());
    }

  // Build every new state first, then install: a failure leaves the new optimizer untouched.
  std::vector<std::pair<OptimizerStateKey, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
  for (const auto& item : new_module.named_parameters()) {
    const auto key = optimizer_state_key(item.value());
    if (!held_by_new.count(key)) continue;
    auto old = old_parameters.find(item.key());
    if (old == old_parameters.end()) continue;
    auto state = old_optimizer.state().find(optimizer_state_key(old->second));
    if (state == old_optimizer.state().end()) continue;  // the old optimizer never stepped it
    auto moved = remap.moved.find(item.key());
    const ParameterRemap::Moved* pairs = moved == remap.moved.end() ? nullptr : &moved->second;
    std::optional<KeyedPair> keyed;
    auto from = old_keys.find(item.key()), to = new_keys.find(item.key());
    if (from != old_keys.end() && to != new_keys.end()) keyed = KeyedPair{from->second, to->second};
    if (!pairs && !keyed && !old->second.sizes().equals(item.value().sizes()))
      fail("transfer_optimizer_state(): parameter \"{}\" changed shape but the edit did not say how", item.key());
    states.emplace_back(key, remap_state(*state->second, item.value(), pairs, item.key(), keyed ? &*keyed : nullptr,
                                         *options_of.at(key)));
  }
  // A parameter of another module that both optimizers hold (a head trained
  // beside the network) keeps its state as it is.
  std::unordered_set<OptimizerStateKey> of_new_module;
  for (const auto& p : new_module.parameters()) of_new_module.insert(optimizer_state_key(p));
  for (const auto& [key, parameter] : held_by_new) {
    if (of_new_module.count(key)) continue;
    auto state = old_optimizer.state().find(key);
    // Copied, field by field: a state object's clone() shares its tensors,
    // and each optimizer steps its own in place.
    if (state != old_optimizer.state().end())
      states.emplace_back(
          key, remap_state(*state->second, parameter, nullptr, "(another module's)", nullptr, *options_of.at(key)));
  }
  for (auto& [key, state] : states) new_optimizer.state()[key] = std::move(state);
}

// optimizer_after_edit for any module; `context` starts the messages.
std::unique_ptr<torch::optim::Optimizer> after_edit(const torch::optim::Optimizer& old_optimizer,
                                                    const torch::nn::Module& old_module,
                                                    const torch::nn::Module& new_module, const ParameterRemap& remap,
                                                    const KeysByName& old_keys, const KeysByName& new_keys,
                                                    const char* context, const char* module = "network") {
  const std::string type = optimizer_type_name(old_optimizer);
  if (type == "other")
    fail("{}: the optimizer is of a type connex does not know ({} are)", context,
         list_optimizer_kinds(OptimizerNaming::kTitle));
  // An optimizer that already holds the edited module (it followed this
  // edit, or was built over the result): nothing of the old one to move.
  if (const HeldNames held_old = held_names(old_optimizer, old_module);
      held_old.foreign && !held_old.any && held_names(old_optimizer, new_module).any)
    fail(
        "{}: the optimizer already holds the edited {}'s parameters (it follows this edit already, or was built "
        "over the edit's {}); pass the optimizer as it was before the edit",
        context, module, module);
  const auto held = check_holds(old_optimizer, old_module, context, "the optimizer", old_remedy(module).c_str());
  const auto parameters = new_module.named_parameters();
  std::unordered_set<const void*> of_new_module;
  for (const auto& p : parameters) of_new_module.insert(p.value().unsafeGetTensorImpl());
  std::unordered_set<std::string> placed;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < held.names.size(); ++g) {
    std::vector<torch::Tensor> params;
    for (size_t k = 0; k < held.names[g].size(); ++k) {
      const std::string& name = held.names[g][k];
      if (name.empty()) {  // another module's: stays where it is
        const auto& p = old_optimizer.param_groups()[g].params()[k];
        if (of_new_module.count(p.unsafeGetTensorImpl()))
          fail(
              "{}: the optimizer's group {} holds a parameter of the edited {} already; build it over the {} before "
              "the edit",
              context, g, module, module);
        params.push_back(p);
      } else if (const auto* now = parameters.find(name)) {
        params.push_back(*now);
        placed.insert(name);
      }
    }
    groups.emplace_back(std::move(params), old_optimizer.param_groups()[g].options().clone());
  }
  if (groups.empty()) fail("{}: the optimizer has no parameter groups", context);
  // A parameter the optimizer left out on purpose stays out; only one the
  // old module lacked joins, in the first group that holds some of the module.
  size_t home = 0;
  while (home + 1 < held.names.size() &&
         std::all_of(held.names[home].begin(), held.names[home].end(), [](const auto& n) { return n.empty(); }))
    ++home;
  const auto old_parameters = old_module.named_parameters();
  for (const auto& item : parameters)
    if (!placed.count(item.key()) && !old_parameters.contains(item.key()))
      groups[home].params().push_back(item.value());
  auto next = make_optimizer(type, std::move(groups), &old_optimizer.defaults());
  transfer_state(old_optimizer, old_module, *next, new_module, remap, old_keys, new_keys);
  return next;
}

// Fails unless `edit` started from `old_network`'s structure (the same
// compiled topology, or an equal one: a clone's). Passing the edited network
// as the old one, or applying an edit's remap a second time, would otherwise
// move state to the wrong entries.
void check_edit_base(const NeuralNetwork& old_network, const EditResult& edit, const char* context) {
  if (old_network.is_empty() || edit.network.is_empty())
    fail("{}: expected a network and an edit's network, got an empty holder", context);
  if (!edit.base || edit.base == old_network->topology_ptr()) return;
  const Topology &old = old_network->topology(), &base = *edit.base;
  constexpr const char* kRemedy = "pass the network the edit started from, as it was before the edit";
  if (old.num_neurons() != base.num_neurons() || old.num_connections() != base.num_connections())
    fail("{}: the edit was made from another network ({} neurons and {} connections, where this one has {} and {}); {}",
         context, base.num_neurons(), base.num_connections(), old.num_neurons(), old.num_connections(), kRemedy);
  // The same size (a clone's structure passes): name the first difference.
  for (int64_t d = 0; d < old.num_neurons(); ++d)
    if (old.label(d) != base.label(d))
      fail("{}: the edit was made from another network of the same size (its neuron {} is {} here); {}", context,
           base.label(d).str(), old.label(d).str(), kRemedy);
  for (int64_t c = 0; c < old.num_connections(); ++c)
    if (old.conn_source()[c] != base.conn_source()[c] || old.conn_target()[c] != base.conn_target()[c])
      fail("{}: the edit was made from another network of the same size (its connection {} is {} here); {}", context,
           edge_str({base.label(base.conn_source()[c]), base.label(base.conn_target()[c])}),
           edge_str({old.label(old.conn_source()[c]), old.label(old.conn_target()[c])}), kRemedy);
}

}  // namespace

void transfer_optimizer_state(const torch::optim::Optimizer& old_optimizer, const NeuralNetwork& old_network,
                              torch::optim::Optimizer& new_optimizer, const EditResult& edit) {
  check_edit_base(old_network, edit, "transfer_optimizer_state()");
  transfer_state(old_optimizer, *old_network, new_optimizer, *edit.network, edit.parameters,
                 operation_keys(*old_network), operation_keys(*edit.network));
}

std::unique_ptr<torch::optim::Optimizer> optimizer_after_edit(const torch::optim::Optimizer& old_optimizer,
                                                              const NeuralNetwork& old_network,
                                                              const EditResult& edit) {
  check_edit_base(old_network, edit, "optimizer_after_edit()");
  return after_edit(old_optimizer, *old_network, *edit.network, edit.parameters, operation_keys(*old_network),
                    operation_keys(*edit.network), "optimizer_after_edit()");
}

void follow_edit(torch::optim::Optimizer& optimizer, const NeuralNetwork& old_network, const EditResult& edit) {
  check_edit_base(old_network, edit, "follow_edit()");
  auto next = after_edit(optimizer, *old_network, *edit.network, edit.parameters, operation_keys(*old_network),
                         operation_keys(*edit.network), "follow_edit()");
  // after_edit made one group per group of `optimizer`, in order. Past this
  // point nothing throws: the parameters and the state are swapped in.
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g)
    std::swap(optimizer.param_groups()[g].params(), next->param_groups()[g].params());
  std::swap(optimizer.state(), next->state());
}

std::unique_ptr<torch::optim::Optimizer> optimizer_after_module_edit(const torch::optim::Optimizer& old_optimizer,
                                                                     const torch::nn::Module& old_module,
                                                                     const torch::nn::Module& new_module,
                                                                     const ParameterRemap& remap, const char* context,
                                                                     const char* module) {
  return after_edit(old_optimizer, old_module, new_module, remap, {}, {}, context, module);
}

std::vector<std::vector<std::string>> group_parameter_names(const torch::optim::Optimizer& optimizer,
                                                            const torch::nn::Module& module, const std::string& context,
                                                            const char* owner, const std::string& remedy) {
  HeldNames held = held_names(optimizer, module);
  if (held.foreign)
    fail("{}: the optimizer's group {} holds a parameter of shape [{}] that is not one of the {}'s ({})", context,
         held.foreign_group, fmt::join(held.foreign->sizes(), ", "), owner, remedy);
  return std::move(held.names);
}

std::string list_optimizer_kinds(OptimizerNaming naming, const char* last_separator) {
  const auto& kinds = optimizer_kinds();
  std::string out;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (i > 0) out += i + 1 == kinds.size() ? last_separator : ", ";
    out += naming == OptimizerNaming::kTitle ? kinds[i].title : kinds[i].name;
  }
  return out;
}

std::string optimizer_type_name(const torch::optim::Optimizer& optimizer) {
  const auto* kind = kind_of(optimizer.defaults());
  return kind ? kind->name : "other";
}

const std::vector<std::string>& state_tensor_names(const std::string& type) { return kind_named(type).state_tensors; }

bool state_has_step(const std::string& type) { return kind_named(type).has_step; }

OptimizerStateFields state_fields(const torch::optim::OptimizerParamState& state) {
  const auto& kinds = optimizer_kinds();
  const auto kind = std::find_if(kinds.begin(), kinds.end(), [&](const auto& k) { return k.is_state(state); });
  if (kind == kinds.end())
    fail("optimizer state: a parameter's state is of an optimizer connex does not know ({} are)",
         list_optimizer_kinds(OptimizerNaming::kTitle));
  StateValues values = kind->read_state(state);
  OptimizerStateFields f;
  f.type = kind->name;
  f.step = values.step;
  for (size_t i = 0; i < values.tensors.size(); ++i) f.tensors.emplace_back(kind->state_tensors[i], values.tensors[i]);
  return f;
}

std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(const OptimizerStateFields& f) {
  const OptimizerKind& kind = kind_named(f.type);
  const auto& names = kind.state_tensors;
  if (f.tensors.size() != names.size() || f.step.has_value() != kind.has_step)
    fail("optimizer state: the fields do not match a {} state", f.type);
  StateValues values{f.step, {}};
  for (size_t i = 0; i < names.size(); ++i) {
    if (f.tensors[i].first != names[i])
      fail("optimizer state: field {} of a {} state must be {}, got {}", i, f.type, names[i], f.tensors[i].first);
    values.tensors.push_back(f.tensors[i].second);
  }
  return kind.make_state(values);
}

std::vector<std::string> required_state_fields(const std::string& type, const torch::optim::OptimizerOptions& options) {
  return kind_named(type).required_fields(options);
}

double fresh_state_value(const std::string& type, const std::string& field,
                         const torch::optim::OptimizerOptions& options) {
  const OptimizerKind& kind = kind_named(type);
  return kind.fresh_value ? kind.fresh_value(field, options) : 0.0;
}

bool state_required_for_every_parameter(const std::string& type) {
  const auto* kind = find_kind(type);
  return kind && kind->state_for_every_parameter;
}

nlohmann::json optimizer_options_to_json(const torch::optim::OptimizerOptions& options) {
  const auto* kind = kind_of(options);
  if (!kind)
    fail("optimizer options: of an optimizer connex does not know ({} are)",
         list_optimizer_kinds(OptimizerNaming::kTitle));
  return kind->options_to_json(options);
}

std::unique_ptr<torch::optim::OptimizerOptions> optimizer_options_from_json(const std::string& type,
                                                                            const nlohmann::json& json,
                                                                            const std::string& where) {
  const OptimizerKind& kind = kind_named(type);
  OptionsReader reader(json, where);
  auto options = kind.options_from_json(reader, where);
  reader.done();
  return options;
}

}  // namespace connex
