#include "connex/ham/edit.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "connex/level_operation.h"
#include "ham/attach.h"
#include "ham/describe.h"
#include "id_messages.h"
#include "optimizer_kinds.h"
#include "file_io.h"

namespace connex::ham {

using Connections = std::vector<std::pair<NeuronId, NeuronId>>;

struct Editor::Step {
  enum class Kind { add_neurons, remove_neurons, add_connections, remove_connections } kind;
  std::string target;  // a layer or a synapse
  std::vector<NeuronId> neurons;
  Connections connections;
  torch::Tensor weights;
};

namespace {

// The structure an edit works on: neuron lists and graph connections, by name.
struct Draft {
  std::map<std::string, std::vector<NeuronId>> neurons;  // 1-D layers
  std::map<std::string, Connections> connections;        // graph synapses
  // Weights the user gave to new connections, by synapse and label.
  std::map<std::string, std::map<std::pair<NeuronId, NeuronId>, double>> given;
  // What earlier steps removed: parameters follow labels, so one added back
  // in the same edit would come back with its old values.
  std::map<std::string, std::unordered_set<NeuronId, NeuronIdHash>> removed_neurons;
  std::map<std::string, std::set<std::pair<NeuronId, NeuronId>>> removed_connections;  // canonical labels
};

// A one-layer graph synapse does not orient its connections.
std::pair<NeuronId, NeuronId> canonical(const std::pair<NeuronId, NeuronId>& c, bool one_layer) {
  if (one_layer && c.second < c.first) return {c.second, c.first};
  return c;
}

}  // namespace

Editor::Editor(HAM ham) : ham_(std::move(ham)) {
  if (!ham_) fail("ham::edit(): expected a HAM, got an empty holder");
}

Editor& Editor::add_neurons(const std::string& layer, std::vector<NeuronId> neurons) {
  steps_.push_back(std::make_shared<Step>(Step{Step::Kind::add_neurons, layer, std::move(neurons), {}, {}}));
  return *this;
}
Editor& Editor::remove_neurons(const std::string& layer, std::vector<NeuronId> neurons) {
  steps_.push_back(std::make_shared<Step>(Step{Step::Kind::remove_neurons, layer, std::move(neurons), {}, {}}));
  return *this;
}
Editor& Editor::add_connections(const std::string& synapse, Connections connections, torch::Tensor weights) {
  steps_.push_back(std::make_shared<Step>(
      Step{Step::Kind::add_connections, synapse, {}, std::move(connections), std::move(weights)}));
  return *this;
}
Editor& Editor::remove_connections(const std::string& synapse, Connections connections) {
  steps_.push_back(
      std::make_shared<Step>(Step{Step::Kind::remove_connections, synapse, {}, std::move(connections), {}}));
  return *this;
}

namespace {

const char* step_name(Editor::Step const& step) {
  switch (step.kind) {
    case Editor::Step::Kind::add_neurons:
      return "add_neurons";
    case Editor::Step::Kind::remove_neurons:
      return "remove_neurons";
    case Editor::Step::Kind::add_connections:
      return "add_connections";
    case Editor::Step::Kind::remove_connections:
      return "remove_connections";
  }
  return "";
}

bool joins(const SynapseConnection& s, const std::string& layer) {
  return std::find(s.layers.begin(), s.layers.end(), layer) != s.layers.end();
}

void apply(const HAMImpl& ham, Draft& draft, const Editor::Step& step, size_t index) {
  const std::string where =
      fmt::format("ham::edit(): step {} ({} \"{}\")", index + 1, step_name(step), printable(step.target));
  using Kind = Editor::Step::Kind;
  if (step.kind == Kind::add_neurons || step.kind == Kind::remove_neurons) {
    bool known = false;
    for (const auto& l : ham.layers()) known = known || l.name == step.target;
    if (!known) fail("{}: there is no layer \"{}\"", where, printable(step.target));
    auto it = draft.neurons.find(step.target);
    if (it == draft.neurons.end())
      fail("{}: only the neurons of a 1-D layer can be edited; layer \"{}\" is [{}]", where, step.target,
           fmt::join(ham.layer(step.target).shape, ", "));
    for (const auto& s : ham.synapses())
      if (joins(s, step.target) && s.synapse->neuron_dims().empty() && !is_graph_synapse(*s.synapse) &&
          (!s.synapse->parameters().empty() || !s.synapse->buffers().empty()))
        fail(
            "{}: synapse \"{}\" joins layer \"{}\" and cannot follow neuron edits (it has parameters but names "
            "none of them in neuron_dims())",
            where, s.name, step.target);
    auto& neurons = it->second;
    std::unordered_set<NeuronId, NeuronIdHash> present(neurons.begin(), neurons.end()), listed;
    for (const auto& id : step.neurons) {
      if (!listed.insert(id).second) fail("{}: neuron {} is listed twice", where, id);
      if (step.kind == Kind::add_neurons && present.count(id))
        fail("{}: layer \"{}\" already has neuron {}", where, step.target, id);
      if (step.kind == Kind::add_neurons && draft.removed_neurons[step.target].count(id))
        fail("{}: neuron {} was removed earlier in this edit; build() first, then add it anew", where, id);
      if (step.kind == Kind::remove_neurons && !present.count(id))
        fail("{}: layer \"{}\" has no neuron {}", where, step.target, id);
      if (step.kind == Kind::add_neurons && !id.is_integer())
        if (auto problem = id_text_problem(id.as_string())) fail("{}: neuron {}: {}", where, id, *problem);
      if (step.kind == Kind::add_neurons && id.kind() != neurons.front().kind())
        fail("{}: {}", where, kinds_differ(id, neurons.front(), "layer"));
    }
    if (step.kind == Kind::add_neurons) {
      neurons.insert(neurons.end(), step.neurons.begin(), step.neurons.end());
      return;
    }
    if (listed.size() == neurons.size()) fail("{}: it would leave layer \"{}\" without neurons", where, step.target);
    draft.removed_neurons[step.target].insert(listed.begin(), listed.end());
    neurons.erase(std::remove_if(neurons.begin(), neurons.end(), [&](const NeuronId& id) { return listed.count(id); }),
                  neurons.end());
    // A removed neuron takes its graph connections with it.
    for (const auto& s : ham.synapses()) {
      if (!is_graph_synapse(*s.synapse)) continue;
      auto& list = draft.connections[s.name];
      auto gone = [&](const std::pair<NeuronId, NeuronId>& c) {
        return (s.layers[0] == step.target && listed.count(c.first)) ||
               (s.layers.back() == step.target && listed.count(c.second));
      };
      list.erase(std::remove_if(list.begin(), list.end(), gone), list.end());
    }
    return;
  }
  const SynapseConnection* synapse = nullptr;
  for (const auto& s : ham.synapses())
    if (s.name == step.target) synapse = &s;
  if (!synapse) fail("{}: there is no synapse \"{}\"", where, printable(step.target));
  if (!is_graph_synapse(*synapse->synapse))
    fail("{}: synapse \"{}\" is not a graph synapse; only a graph synapse has single connections", where, step.target);
  const bool one_layer = synapse->layers.size() == 1;
  auto& list = draft.connections[step.target];
  std::unordered_map<NeuronId, std::unordered_set<NeuronId, NeuronIdHash>, NeuronIdHash> present;
  for (const auto& c : list) {
    auto k = canonical(c, one_layer);
    present[k.first].insert(k.second);
  }
  auto has = [&](const std::pair<NeuronId, NeuronId>& k) {
    auto it = present.find(k.first);
    return it != present.end() && it->second.count(k.second);
  };
  std::set<std::pair<NeuronId, NeuronId>> listed;
  for (const auto& c : step.connections) {
    const auto k = canonical(c, one_layer);
    if (!listed.insert(k).second) fail("{}: connection ({}, {}) is listed twice", where, c.first, c.second);
  }
  if (step.kind == Kind::add_connections) {
    const auto& first = draft.neurons.at(synapse->layers[0]);
    const auto& second = draft.neurons.at(synapse->layers.back());
    const std::unordered_set<NeuronId, NeuronIdHash> in_first(first.begin(), first.end()),
        in_second(second.begin(), second.end());
    if (step.weights.defined() &&
        (step.weights.dim() != 1 || step.weights.size(0) != static_cast<int64_t>(step.connections.size()) ||
         !step.weights.is_floating_point()))
      fail("{}: expected one floating-point weight per connection ([{}]), got {} [{}]", where, step.connections.size(),
           c10::toString(step.weights.scalar_type()), fmt::join(step.weights.sizes(), ", "));
    auto weights = step.weights.defined() ? step.weights.detach().to(torch::kCPU, torch::kDouble) : torch::Tensor();
    for (size_t k = 0; k < step.connections.size(); ++k) {
      const auto& c = step.connections[k];
      if (!in_first.count(c.first))
        fail("{}: connection ({}, {}) names neuron {}, which layer \"{}\" does not have", where, c.first, c.second,
             c.first, synapse->layers[0]);
      if (!in_second.count(c.second))
        fail("{}: connection ({}, {}) names neuron {}, which layer \"{}\" does not have", where, c.first, c.second,
             c.second, synapse->layers.back());
      if (has(canonical(c, one_layer)))
        fail("{}: synapse \"{}\" already has connection ({}, {})", where, step.target, c.first, c.second);
      if (draft.removed_connections[step.target].count(canonical(c, one_layer)))
        fail("{}: connection ({}, {}) was removed earlier in this edit; build() first, then add it anew", where,
             c.first, c.second);
      if (weights.defined()) {
        const double w = weights[k].item<double>();
        if (!std::isfinite(w)) fail("{}: the weight of connection ({}, {}) is {}", where, c.first, c.second, w);
        draft.given[step.target][canonical(c, one_layer)] = w;
      }
    }
    list.insert(list.end(), step.connections.begin(), step.connections.end());
    return;
  }
  for (const auto& c : step.connections)
    if (!has(canonical(c, one_layer)))
      fail("{}: synapse \"{}\" has no connection ({}, {})", where, step.target, c.first, c.second);
  draft.removed_connections[step.target].insert(listed.begin(), listed.end());
  list.erase(
      std::remove_if(list.begin(), list.end(),
                     [&](const std::pair<NeuronId, NeuronId>& c) { return listed.count(canonical(c, one_layer)); }),
      list.end());
}

// For each entry of `to` (flattened), the entry of `from` with the same keys, or −1.
torch::Tensor keyed_sources(const torch::Tensor& from, const DimKeys& from_keys, const torch::Tensor& to,
                            const DimKeys& to_keys) {
  auto index = torch::arange(from.numel(), torch::kLong).view(from.sizes());
  auto sources = torch::full(to.sizes(), -1, torch::kLong);
  if (copy_keyed(index, from_keys, sources, to_keys) < 0)
    fail("ham::edit(): a parameter shaped [{}] cannot follow the edit to [{}]", fmt::join(from.sizes(), ", "),
         fmt::join(to.sizes(), ", "));
  return sources.view(-1);
}

}  // namespace

EditResult Editor::build() const {
  const HAMImpl& old = *ham_;
  Draft draft;
  for (const auto& l : old.layers())
    if (l.shape.size() == 1) draft.neurons[l.name] = l.neurons;
  for (const auto& s : old.synapses())
    if (is_graph_synapse(*s.synapse)) draft.connections[s.name] = *s.synapse->connection_labels();
  for (size_t k = 0; k < steps_.size(); ++k) apply(old, draft, *steps_[k], k);

  torch::NoGradGuard no_grad;
  auto next = std::make_shared<HAMImpl>();
  // A HAM without parameters keeps the dtype and device its to() named.
  if (const auto where = old.part_options(); where && old.parameters().empty()) move_to(*next, *where);
  for (const auto& l : old.layers()) {
    if (l.shape.size() == 1)
      next->add_labelled_layer(l.name, draft.neurons.at(l.name), l.lagrangian->fresh(), l.tau);
    else
      next->add_layer(l.name, l.shape, l.lagrangian->fresh(), l.tau);
  }
  for (const auto& s : old.synapses()) {
    auto labels = draft.connections.find(s.name);
    next->add_synapse(s.name, labels != draft.connections.end() ? graph(labels->second) : s.synapse->fresh(), s.layers);
  }

  // Each parameter's keys: the neuron labels of the layers its dims follow.
  auto keys_of = [](const HAMImpl& ham) {
    std::unordered_map<std::string, DimKeys> keys;
    auto labels = [&](const std::string& layer) -> std::optional<std::vector<NeuronId>> {
      const auto& l = ham.layer(layer);
      if (l.shape.size() != 1) return std::nullopt;
      return l.neurons;
    };
    for (const auto& l : ham.layers())
      for (const auto& [name, dim] : l.lagrangian->neuron_dims()) {
        DimKeys k(static_cast<size_t>(dim) + 1);
        k[dim] = labels(l.name);
        keys["layers." + l.name + "." + name] = k;
      }
    for (const auto& s : ham.synapses())
      for (const auto& [name, dims] : s.synapse->neuron_dims()) {
        DimKeys k;
        for (auto slot : dims) k.push_back(slot < 0 ? std::nullopt : labels(s.layers[slot]));
        keys["synapses." + s.name + "." + name] = k;
      }
    return keys;
  };
  const auto old_keys = keys_of(old), new_keys = keys_of(*next);
  std::unordered_map<std::string, const SynapseConnection*> graphs;  // by weight name
  for (const auto& s : next->synapses())
    if (is_graph_synapse(*s.synapse)) graphs["synapses." + s.name + ".weight"] = &s;

  EditResult result;
  const auto old_parameters = old.named_parameters();
  for (auto& item : next->named_parameters()) {
    const auto& from = old_parameters[item.key()];
    auto to = item.value();
    to.set_data(to.to(from.device(), from.scalar_type()));
    to.set_requires_grad(from.requires_grad());
    torch::Tensor sources;  // per new entry, its old entry or −1
    auto graph_it = graphs.find(item.key());
    if (graph_it != graphs.end()) {
      const auto& s = *graph_it->second;
      const bool one_layer = s.layers.size() == 1;
      const auto& old_labels = *old.synapse(s.name).synapse->connection_labels();
      const auto& new_labels = *s.synapse->connection_labels();
      std::map<std::pair<NeuronId, NeuronId>, int64_t> old_at;
      for (size_t c = 0; c < old_labels.size(); ++c) old_at[canonical(old_labels[c], one_layer)] = c;
      const auto given = draft.given.find(s.name);
      sources = torch::full({static_cast<int64_t>(new_labels.size())}, -1, torch::kLong);
      auto* src = sources.data_ptr<int64_t>();
      to.zero_();  // a new connection starts at 0 unless given
      for (size_t c = 0; c < new_labels.size(); ++c) {
        const auto k = canonical(new_labels[c], one_layer);
        auto it = old_at.find(k);
        if (it != old_at.end()) {
          src[c] = it->second;
        } else if (given != draft.given.end() && given->second.count(k)) {
          to[c] = given->second.at(k);
        }
      }
    } else if (new_keys.count(item.key()) &&
               !(new_keys.at(item.key()) == old_keys.at(item.key()) && from.sizes().equals(to.sizes()))) {
      sources = keyed_sources(from, old_keys.at(item.key()), to, new_keys.at(item.key()));
    } else {
      if (!from.sizes().equals(to.sizes()))
        fail(
            "ham::edit(): parameter \"{}\" would change from [{}] to [{}], but its owner does not say how its entries "
            "follow the neurons (neuron_dims())",
            item.key(), fmt::join(from.sizes(), ", "), fmt::join(to.sizes(), ", "));
      to.copy_(from);
      continue;
    }
    auto kept = (sources >= 0).nonzero().view(-1);
    ParameterRemap::Moved moved{kept.to(to.device()), sources.index_select(0, kept).to(from.device())};
    to.view(-1).index_copy_(0, moved.new_index, from.reshape(-1).index_select(0, moved.old_index));
    result.parameters.moved.emplace(item.key(), std::move(moved));
  }
  // Index buffers were rebuilt by the synapses; other buffers carry over.
  const auto old_buffers = old.named_buffers();
  for (auto& item : next->named_buffers()) {
    const auto* from = old_buffers.find(item.key());
    if (!from) continue;
    if (from->is_floating_point() && from->sizes().equals(item.value().sizes()))
      item.value().set_data(from->clone());
    else
      item.value().set_data(item.value().to(from->device()));
  }
  next->train(old.is_training());
  result.ham = HAM(next);
  result.base = std::make_shared<const Structure>(Structure::of(old));
  return result;
}

namespace {

// Mixes a label's hash into a fingerprint (splitmix64's finaliser: every
// input bit reaches every output bit, so order and content both count).
uint64_t mix(uint64_t fingerprint, const NeuronId& id) {
  uint64_t x = fingerprint ^ (NeuronIdHash()(id) + 0x9E3779B97F4A7C15ULL);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// A part's class, without its namespaces or template arguments
// ("GraphSynapse"): what its parameters mean. From its type, not
// Module::name(), which a user may set and which is made on its first call.
std::string class_of(const torch::nn::Module& part) {
  std::string name = c10::demangle(typeid(part).name());
  name = name.substr(0, name.find('<'));
  const size_t colons = name.rfind("::");
  return colons == std::string::npos ? name : name.substr(colons + 2);
}

// A Lagrangian's kind as its checkpoint names it ("softmax"; one class
// holds the built-in ones, and their to_json() is small), else its class.
std::string lagrangian_kind(const LagrangianImpl& lagrangian) {
  const nlohmann::json written = lagrangian.to_json();
  if (written.is_object() && written.contains("kind") && written.at("kind").is_string())
    return written.at("kind").get<std::string>();
  return class_of(lagrangian);
}

}  // namespace

Structure Structure::of(const HAMImpl& ham) {
  Structure structure;
  for (const auto& l : ham.layers()) {
    Part part{l.name, l.shape, {}, static_cast<int64_t>(l.neurons.size()), 0, lagrangian_kind(*l.lagrangian)};
    for (const auto& id : l.neurons) part.fingerprint = mix(part.fingerprint, id);
    structure.layers.push_back(std::move(part));
  }
  for (const auto& s : ham.synapses()) {
    // Not to_json(): a graph synapse's lists every connection.
    Part part{s.name, {}, s.layers, 0, 0, class_of(*s.synapse)};
    if (const auto* connections = s.synapse->connection_labels()) {
      part.labels = static_cast<int64_t>(connections->size());
      for (const auto& [i, j] : *connections) part.fingerprint = mix(mix(part.fingerprint, i), j);
    }
    structure.synapses.push_back(std::move(part));
  }
  return structure;
}

std::string Structure::first_difference(const Structure& base, const Structure& here) {
  auto names = [](const std::vector<Structure::Part>& parts) {
    std::vector<std::string> out;
    for (const auto& part : parts) out.push_back(part.name);
    return fmt::format("{}", fmt::join(out, ", "));
  };
  if (names(base.layers) != names(here.layers))
    return fmt::format("its layers are {}, here {}", names(base.layers), names(here.layers));
  if (names(base.synapses) != names(here.synapses))
    return fmt::format("its synapses are {}, here {}", names(base.synapses), names(here.synapses));
  for (size_t k = 0; k < base.layers.size(); ++k) {
    const auto &was = base.layers[k], &is = here.layers[k];
    if (was.labels > 0 && is.labels > 0 && was.labels != is.labels)
      return fmt::format("its layer \"{}\" has {} neurons, here {}", was.name, was.labels, is.labels);
    if (was.shape != is.shape)
      return fmt::format("its layer \"{}\" is [{}], here [{}]", was.name, fmt::join(was.shape, ", "),
                         fmt::join(is.shape, ", "));
    if (was.fingerprint != is.fingerprint)
      return fmt::format("its layer \"{}\" has other neuron labels, as many", was.name);
    if (was.kind != is.kind)
      return fmt::format("its layer \"{}\" has Lagrangian {}, here {}", was.name, was.kind, is.kind);
  }
  for (size_t k = 0; k < base.synapses.size(); ++k) {
    const auto &was = base.synapses[k], &is = here.synapses[k];
    if (was.joined != is.joined)
      return fmt::format("its synapse \"{}\" joins {}, here {}", was.name, fmt::join(was.joined, ", "),
                         fmt::join(is.joined, ", "));
    if (was.kind != is.kind)
      return fmt::format("its synapse \"{}\" is of class {}, here {}", was.name, was.kind, is.kind);
    if (was.labels != is.labels)
      return fmt::format("its synapse \"{}\" has {} connections, here {}", was.name, was.labels, is.labels);
    if (was.fingerprint != is.fingerprint)
      return fmt::format("its synapse \"{}\" has other connections, as many", was.name);
  }
  return {};
}

std::unique_ptr<torch::optim::Optimizer> optimizer_after_edit(const torch::optim::Optimizer& old_optimizer,
                                                              const HAM& old_ham, const EditResult& edit) {
  if (!old_ham || !edit.ham) fail("ham::optimizer_after_edit(): expected two HAMs, got an empty holder");
  if (edit.base) {
    const auto difference = Structure::first_difference(*edit.base, Structure::of(*old_ham));
    if (!difference.empty())
      fail(
          "ham::optimizer_after_edit(): the edit was made from another HAM ({}); pass the HAM the edit started from, "
          "as it was before the edit",
          difference);
  }
  return optimizer_after_module_edit(old_optimizer, *old_ham, *edit.ham, edit.parameters, "ham::optimizer_after_edit()",
                                     "HAM");
}

}  // namespace connex::ham
