#include "connex/optimizer_state.h"

#include <torch/torch.h>

#include "connex/error.h"

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
  auto r = [&](const torch::Tensor& t) { return remap_tensor(t, parameter, moved, keyed); };
  using namespace torch::optim;
  // Adam and AdamW keep the same fields under different types.
  auto adam_like = [&](const auto& s) {
    auto out = std::make_unique<std::decay_t<decltype(s)>>();
    out->step(s.step()).exp_avg(r(s.exp_avg())).exp_avg_sq(r(s.exp_avg_sq())).max_exp_avg_sq(r(s.max_exp_avg_sq()));
    return std::unique_ptr<OptimizerParamState>(std::move(out));
  };
  if (auto* s = dynamic_cast<const AdamParamState*>(&state)) return adam_like(*s);
  if (auto* s = dynamic_cast<const AdamWParamState*>(&state)) return adam_like(*s);
  if (auto* s = dynamic_cast<const SGDParamState*>(&state)) {
    auto out = std::make_unique<SGDParamState>();
    out->momentum_buffer(r(s->momentum_buffer()));
    return out;
  }
  if (auto* s = dynamic_cast<const RMSpropParamState*>(&state)) {
    auto out = std::make_unique<RMSpropParamState>();
    out->step(s->step()).square_avg(r(s->square_avg())).momentum_buffer(r(s->momentum_buffer())).grad_avg(r(s->grad_avg()));
    return out;
  }
  if (auto* s = dynamic_cast<const AdagradParamState*>(&state)) {
    auto out = std::make_unique<AdagradParamState>();
    out->step(s->step()).sum(r(s->sum()));
    return out;
  }
  fail("transfer_optimizer_state(): the state of parameter \"{}\" is of an optimizer connex does not know "
       "(Adam, AdamW, SGD, RMSprop and Adagrad are supported)",
       name);
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
      for (const auto& [name, keys] : net.operation_parameters(k).keys()) into[net.operations()[k]->name() + "." + name] = &keys;
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
    if (old_keys.count(item.key()) && new_keys.count(item.key())) keyed = KeyedPair{old_keys[item.key()], new_keys[item.key()]};
    if (!remap && !keyed && !old->second.sizes().equals(item.value().sizes()))
      fail("transfer_optimizer_state(): parameter \"{}\" changed shape but the edit did not say how", item.key());
    states.emplace_back(key, remap_state(*state->second, item.value(), remap, item.key(), keyed ? &*keyed : nullptr));
  }
  for (auto& [key, state] : states) new_optimizer.state()[key] = std::move(state);
}

}  // namespace connex
