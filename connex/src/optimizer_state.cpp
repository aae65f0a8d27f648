#include "connex/optimizer_state.h"

#include <torch/torch.h>

#include "connex/error.h"
#include "json_input.h"

#include <cmath>
#include <unordered_set>

namespace connex {

namespace {

std::string state_key(const torch::Tensor& parameter) {
  // The key torch::optim uses for a parameter's state.
  return c10::guts::to_string(parameter.unsafeGetTensorImpl());
}

// How an operation parameter's entries correspond between two networks.
struct KeyedPair {
  const DimKeys* from;
  const DimKeys* to;
};

// Remaps one state tensor shaped like its parameter: survivors move, new entries are zero.
torch::Tensor remap_tensor(const torch::Tensor& old_state, const torch::Tensor& new_parameter,
                           const ParameterRemap::Moved* moved, const KeyedPair* keyed = nullptr) {
  if (!old_state.defined()) return old_state;
  if (keyed) {
    auto fresh = torch::zeros_like(new_parameter, old_state.options());
    copy_keyed(old_state, *keyed->from, fresh, *keyed->to);
    return fresh;
  }
  if (!moved) return old_state.clone();
  auto fresh = torch::zeros_like(new_parameter, old_state.options());
  fresh.index_copy_(0, moved->new_index, old_state.index_select(0, moved->old_index));
  return fresh;
}

std::unique_ptr<torch::optim::OptimizerParamState> remap_state(const torch::optim::OptimizerParamState& state,
                                                               const torch::Tensor& parameter,
                                                               const ParameterRemap::Moved* moved,
                                                               const std::string& name, const KeyedPair* keyed) {
  OptimizerStateFields fields;
  try {
    fields = state_fields(state);
  } catch (const Error&) {
    fail(
        "transfer_optimizer_state(): the state of parameter \"{}\" is of an optimizer connex does not know "
        "(Adam, AdamW, SGD, RMSprop and Adagrad are supported)",
        name);
  }
  for (auto& field : fields.tensors) field.second = remap_tensor(field.second, parameter, moved, keyed);
  return make_param_state(fields);
}

// ------------------------------------------------------------- options JSON

// Reads an options object key by key, checking each value, then rejects keys it did not read.
class OptionsReader {
 public:
  OptionsReader(const nlohmann::json& json, const std::string& where) : json_(json), where_(where) {
    if (!json.is_object())
      fail("load(): {} must be an object of optimizer options, got {}", where, detail::excerpt(json));
  }
  double number(const char* key, double low, double high = HUGE_VAL, bool high_open = false) {
    const auto& value = at(key);
    const double x = value.is_number() ? value.get<double>() : NAN;
    if (!value.is_number() || !(x >= low) || !(high_open ? x < high : x <= high))
      fail("load(): {}/{} must be a number in [{}, {}{}, got {}", where_, key, low, high, high_open ? ")" : "]",
           detail::excerpt(value));
    return x;
  }
  bool boolean(const char* key) {
    const auto& value = at(key);
    if (!value.is_boolean()) fail("load(): {}/{} must be true or false, got {}", where_, key, detail::excerpt(value));
    return value.get<bool>();
  }
  std::tuple<double, double> betas() {
    const auto& value = at("betas");
    auto beta = [&](size_t i) { return value.at(i).is_number() ? value.at(i).get<double>() : NAN; };
    if (!value.is_array() || value.size() != 2 || !(beta(0) >= 0 && beta(0) < 1) || !(beta(1) >= 0 && beta(1) < 1))
      fail("load(): {}/betas must be two numbers in [0, 1), got {}", where_, detail::excerpt(value));
    return {beta(0), beta(1)};
  }
  void done() const {
    for (const auto& item : json_.items())
      if (!read_.count(item.key())) fail("load(): {} has an unknown optimizer option \"{}\"", where_, item.key());
  }

 private:
  const nlohmann::json& at(const char* key) {
    if (!json_.contains(key)) fail("load(): {} lacks the optimizer option \"{}\"", where_, key);
    read_.insert(key);
    return json_.at(key);
  }
  const nlohmann::json& json_;
  const std::string& where_;
  std::unordered_set<std::string> read_;
};

// The type name of an options object ("adam", ...), "other" when unknown.
std::string optimizer_type_of(const torch::optim::OptimizerOptions& options) {
  using namespace torch::optim;
  if (dynamic_cast<const AdamOptions*>(&options)) return "adam";
  if (dynamic_cast<const AdamWOptions*>(&options)) return "adamw";
  if (dynamic_cast<const SGDOptions*>(&options)) return "sgd";
  if (dynamic_cast<const RMSpropOptions*>(&options)) return "rmsprop";
  if (dynamic_cast<const AdagradOptions*>(&options)) return "adagrad";
  return "other";
}

}  // namespace

void transfer_optimizer_state(const torch::optim::Optimizer& old_optimizer, const NeuralNetwork& old_network,
                              torch::optim::Optimizer& new_optimizer, const EditResult& edit) {
  if (typeid(old_optimizer) != typeid(new_optimizer))
    fail("transfer_optimizer_state(): the optimizers differ in type ({} and {})", typeid(old_optimizer).name(),
         typeid(new_optimizer).name());
  std::unordered_map<std::string, torch::Tensor> old_parameters;
  for (const auto& item : old_network->named_parameters()) old_parameters.emplace(item.key(), item.value());
  // Keys of operation parameters, by full name, in both networks.
  std::unordered_map<std::string, const DimKeys*> old_keys, new_keys;
  auto collect = [](const NeuralNetworkImpl& net, std::unordered_map<std::string, const DimKeys*>& into) {
    for (size_t k = 0; k < net.operations().size(); ++k)
      for (const auto& [name, keys] : net.operation_parameters(k).keys())
        into[net.operations()[k]->name() + "." + name] = &keys;
  };
  collect(*old_network, old_keys);
  collect(*edit.network, new_keys);
  std::unordered_set<std::string> in_new_optimizer;
  for (const auto& group : new_optimizer.param_groups())
    for (const auto& p : group.params()) in_new_optimizer.insert(state_key(p));

  // Build every new state first, then install: a failure leaves the new optimizer untouched.
  std::vector<std::pair<std::string, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
  for (const auto& item : edit.network->named_parameters()) {
    const std::string key = state_key(item.value());
    if (!in_new_optimizer.count(key)) continue;
    auto old = old_parameters.find(item.key());
    if (old == old_parameters.end()) continue;
    auto state = old_optimizer.state().find(state_key(old->second));
    if (state == old_optimizer.state().end()) continue;  // the old optimizer never stepped it
    auto moved = edit.parameters.moved.find(item.key());
    const ParameterRemap::Moved* remap = moved == edit.parameters.moved.end() ? nullptr : &moved->second;
    std::optional<KeyedPair> keyed;
    if (old_keys.count(item.key()) && new_keys.count(item.key()))
      keyed = KeyedPair{old_keys[item.key()], new_keys[item.key()]};
    if (!remap && !keyed && !old->second.sizes().equals(item.value().sizes()))
      fail("transfer_optimizer_state(): parameter \"{}\" changed shape but the edit did not say how", item.key());
    states.emplace_back(key, remap_state(*state->second, item.value(), remap, item.key(), keyed ? &*keyed : nullptr));
  }
  for (auto& [key, state] : states) new_optimizer.state()[key] = std::move(state);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& type,
                                                        std::vector<torch::optim::OptimizerParamGroup> groups) {
  using namespace torch::optim;
  state_tensor_names(type);  // rejects an unknown type
  if (groups.empty() || !groups[0].has_options()) fail("make_optimizer(): expected at least one group with options");
  for (size_t g = 0; g < groups.size(); ++g)
    if (!groups[g].has_options() || optimizer_type_of(groups[g].options()) != type)
      fail("make_optimizer(): group {} needs {} options", g, type);
  const auto defaults = groups[0].options().clone();
  const auto& first = *defaults;
  if (type == "adam") return std::make_unique<Adam>(std::move(groups), dynamic_cast<const AdamOptions&>(first));
  if (type == "adamw") return std::make_unique<AdamW>(std::move(groups), dynamic_cast<const AdamWOptions&>(first));
  if (type == "sgd") return std::make_unique<SGD>(std::move(groups), dynamic_cast<const SGDOptions&>(first));
  if (type == "rmsprop")
    return std::make_unique<RMSprop>(std::move(groups), dynamic_cast<const RMSpropOptions&>(first));
  return std::make_unique<Adagrad>(std::move(groups), dynamic_cast<const AdagradOptions&>(first));
}

std::unique_ptr<torch::optim::Optimizer> optimizer_after_edit(const torch::optim::Optimizer& old_optimizer,
                                                              const NeuralNetwork& old_network,
                                                              const EditResult& edit) {
  const std::string type = optimizer_type_name(old_optimizer);
  if (type == "other")
    fail(
        "optimizer_after_edit(): the optimizer is of a type connex does not know (Adam, AdamW, SGD, RMSprop and "
        "Adagrad are)");
  const auto names = group_parameter_names(old_optimizer, old_network, "optimizer_after_edit()");
  const auto parameters = edit.network->named_parameters();
  std::unordered_set<std::string> placed;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < names.size(); ++g) {
    std::vector<torch::Tensor> params;
    for (const auto& name : names[g])
      if (const auto* now = parameters.find(name)) {
        params.push_back(*now);
        placed.insert(name);
      }
    groups.emplace_back(std::move(params), old_optimizer.param_groups()[g].options().clone());
  }
  if (groups.empty()) fail("optimizer_after_edit(): the optimizer has no parameter groups");
  // A parameter the optimizer left out on purpose stays out; only one the old network lacked joins.
  const auto old_parameters = old_network->named_parameters();
  for (const auto& item : parameters)
    if (!placed.count(item.key()) && !old_parameters.contains(item.key())) groups[0].params().push_back(item.value());
  auto next = make_optimizer(type, std::move(groups));
  transfer_optimizer_state(old_optimizer, old_network, *next, edit);
  return next;
}

}  // namespace connex

namespace connex {

std::vector<std::vector<std::string>> group_parameter_names(const torch::optim::Optimizer& optimizer,
                                                            const NeuralNetwork& network, const std::string& context) {
  std::unordered_map<const void*, std::string> by_tensor;
  for (const auto& item : network->named_parameters())
    by_tensor.emplace(item.value().unsafeGetTensorImpl(), item.key());
  std::vector<std::vector<std::string>> names(optimizer.param_groups().size());
  for (size_t g = 0; g < names.size(); ++g)
    for (const auto& p : optimizer.param_groups()[g].params()) {
      auto name = by_tensor.find(p.unsafeGetTensorImpl());
      if (name == by_tensor.end())
        fail(
            "{}: its group {} holds a parameter of shape [{}] that is not one of the network's (build the optimizer "
            "over "
            "the network's parameters)",
            context, g, fmt::join(p.sizes(), ", "));
      names[g].push_back(name->second);
    }
  return names;
}

// Each optimizer's defaults are options of its own kind.
std::string optimizer_type_name(const torch::optim::Optimizer& optimizer) {
  return optimizer_type_of(optimizer.defaults());
}

const std::vector<std::string>& state_tensor_names(const std::string& type) {
  static const std::vector<std::string> adam{"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, sgd{"momentum_buffer"},
      rmsprop{"square_avg", "momentum_buffer", "grad_avg"}, adagrad{"sum"};
  if (type == "adam" || type == "adamw") return adam;
  if (type == "sgd") return sgd;
  if (type == "rmsprop") return rmsprop;
  if (type == "adagrad") return adagrad;
  fail("optimizer state: unknown optimizer type \"{}\" (adam, adamw, sgd, rmsprop and adagrad are known)", type);
}

bool state_has_step(const std::string& type) {
  state_tensor_names(type);  // throws for an unknown type
  return type != "sgd";
}

OptimizerStateFields state_fields(const torch::optim::OptimizerParamState& state) {
  using namespace torch::optim;
  OptimizerStateFields f;
  auto adam_like = [&](const auto& s, const char* type) {
    f.type = type;
    f.step = s.step();
    f.tensors = {{"exp_avg", s.exp_avg()}, {"exp_avg_sq", s.exp_avg_sq()}, {"max_exp_avg_sq", s.max_exp_avg_sq()}};
  };
  if (auto* s = dynamic_cast<const AdamParamState*>(&state))
    adam_like(*s, "adam");
  else if (auto* s = dynamic_cast<const AdamWParamState*>(&state))
    adam_like(*s, "adamw");
  else if (auto* s = dynamic_cast<const SGDParamState*>(&state))
    f.type = "sgd", f.tensors = {{"momentum_buffer", s->momentum_buffer()}};
  else if (auto* s = dynamic_cast<const RMSpropParamState*>(&state)) {
    f.type = "rmsprop", f.step = s->step();
    f.tensors = {
        {"square_avg", s->square_avg()}, {"momentum_buffer", s->momentum_buffer()}, {"grad_avg", s->grad_avg()}};
  } else if (auto* s = dynamic_cast<const AdagradParamState*>(&state)) {
    f.type = "adagrad", f.step = s->step(), f.tensors = {{"sum", s->sum()}};
  } else {
    fail(
        "optimizer state: a parameter's state is of an optimizer connex does not know (Adam, AdamW, SGD, RMSprop and "
        "Adagrad are)");
  }
  return f;
}

std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(const OptimizerStateFields& f) {
  using namespace torch::optim;
  const auto& names = state_tensor_names(f.type);
  if (f.tensors.size() != names.size() || f.step.has_value() != state_has_step(f.type))
    fail("optimizer state: the fields do not match a {} state", f.type);
  for (size_t i = 0; i < names.size(); ++i)
    if (f.tensors[i].first != names[i])
      fail("optimizer state: field {} of a {} state must be {}, got {}", i, f.type, names[i], f.tensors[i].first);
  auto t = [&](size_t i) { return f.tensors[i].second; };
  auto adam_like = [&](auto state) {
    state->step(*f.step).exp_avg(t(0)).exp_avg_sq(t(1)).max_exp_avg_sq(t(2));
    return std::unique_ptr<OptimizerParamState>(std::move(state));
  };
  if (f.type == "adam") return adam_like(std::make_unique<AdamParamState>());
  if (f.type == "adamw") return adam_like(std::make_unique<AdamWParamState>());
  if (f.type == "sgd") {
    auto state = std::make_unique<SGDParamState>();
    state->momentum_buffer(t(0));
    return state;
  }
  if (f.type == "rmsprop") {
    auto state = std::make_unique<RMSpropParamState>();
    state->step(*f.step).square_avg(t(0)).momentum_buffer(t(1)).grad_avg(t(2));
    return state;
  }
  auto state = std::make_unique<AdagradParamState>();
  state->step(*f.step).sum(t(0));
  return state;
}

std::vector<std::string> required_state_fields(const std::string& type, const torch::optim::OptimizerOptions& options) {
  using namespace torch::optim;
  if (type == "adam" || type == "adamw") {
    const bool amsgrad = type == "adam" ? dynamic_cast<const AdamOptions&>(options).amsgrad()
                                        : dynamic_cast<const AdamWOptions&>(options).amsgrad();
    if (amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    return {"exp_avg", "exp_avg_sq"};
  }
  if (type == "sgd") {
    if (dynamic_cast<const SGDOptions&>(options).momentum() != 0) return {"momentum_buffer"};
    return {};
  }
  if (type == "rmsprop") {
    const auto& o = dynamic_cast<const RMSpropOptions&>(options);
    std::vector<std::string> fields{"square_avg"};
    if (o.momentum() > 0) fields.push_back("momentum_buffer");
    if (o.centered()) fields.push_back("grad_avg");
    return fields;
  }
  if (type == "adagrad") return {"sum"};
  state_tensor_names(type);  // throws: unknown type
  return {};
}

bool state_required_for_every_parameter(const std::string& type) { return type == "adagrad"; }

nlohmann::json optimizer_options_to_json(const torch::optim::OptimizerOptions& options) {
  using namespace torch::optim;
  auto adam_like = [](const auto& o) {
    return nlohmann::json{{"lr", o.lr()},
                          {"betas", {std::get<0>(o.betas()), std::get<1>(o.betas())}},
                          {"eps", o.eps()},
                          {"weight_decay", o.weight_decay()},
                          {"amsgrad", o.amsgrad()}};
  };
  if (auto* o = dynamic_cast<const AdamOptions*>(&options)) return adam_like(*o);
  if (auto* o = dynamic_cast<const AdamWOptions*>(&options)) return adam_like(*o);
  if (auto* o = dynamic_cast<const SGDOptions*>(&options))
    return {{"lr", o->lr()},
            {"momentum", o->momentum()},
            {"dampening", o->dampening()},
            {"weight_decay", o->weight_decay()},
            {"nesterov", o->nesterov()}};
  if (auto* o = dynamic_cast<const RMSpropOptions*>(&options))
    return {{"lr", o->lr()},
            {"alpha", o->alpha()},
            {"eps", o->eps()},
            {"weight_decay", o->weight_decay()},
            {"momentum", o->momentum()},
            {"centered", o->centered()}};
  if (auto* o = dynamic_cast<const AdagradOptions*>(&options))
    return {{"lr", o->lr()},
            {"lr_decay", o->lr_decay()},
            {"weight_decay", o->weight_decay()},
            {"initial_accumulator_value", o->initial_accumulator_value()},
            {"eps", o->eps()}};
  fail("optimizer options: of an optimizer connex does not know (Adam, AdamW, SGD, RMSprop and Adagrad are)");
}

std::unique_ptr<torch::optim::OptimizerOptions> optimizer_options_from_json(const std::string& type,
                                                                            const nlohmann::json& json,
                                                                            const std::string& where) {
  using namespace torch::optim;
  state_tensor_names(type);  // rejects an unknown type
  OptionsReader r(json, where);
  std::unique_ptr<OptimizerOptions> out;
  // The ranges torch's optimizer constructors enforce.
  auto adam_like = [&](auto options) {
    options->lr(r.number("lr", 0))
        .betas(r.betas())
        .eps(r.number("eps", 0))
        .weight_decay(r.number("weight_decay", 0))
        .amsgrad(r.boolean("amsgrad"));
    return std::unique_ptr<OptimizerOptions>(std::move(options));
  };
  if (type == "adam")
    out = adam_like(std::make_unique<AdamOptions>());
  else if (type == "adamw")
    out = adam_like(std::make_unique<AdamWOptions>());
  else if (type == "sgd") {
    auto o = std::make_unique<SGDOptions>(r.number("lr", 0));
    o->momentum(r.number("momentum", 0))
        .dampening(r.number("dampening", -HUGE_VAL))
        .weight_decay(r.number("weight_decay", 0))
        .nesterov(r.boolean("nesterov"));
    if (o->nesterov() && (o->momentum() <= 0 || o->dampening() != 0))
      fail("load(): {}: Nesterov momentum needs a momentum above 0 and zero dampening", where);
    out = std::move(o);
  } else if (type == "rmsprop") {
    auto o = std::make_unique<RMSpropOptions>(r.number("lr", 0));
    o->alpha(r.number("alpha", 0))
        .eps(r.number("eps", 0))
        .weight_decay(r.number("weight_decay", 0))
        .momentum(r.number("momentum", 0))
        .centered(r.boolean("centered"));
    out = std::move(o);
  } else {
    auto o = std::make_unique<AdagradOptions>(r.number("lr", 0));
    o->lr_decay(r.number("lr_decay", 0))
        .weight_decay(r.number("weight_decay", 0))
        .initial_accumulator_value(r.number("initial_accumulator_value", 0))
        .eps(r.number("eps", 0));
    out = std::move(o);
  }
  r.done();
  return out;
}

}  // namespace connex
