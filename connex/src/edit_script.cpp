#include "connex/edit_script.h"

#include <fmt/ranges.h>

#include "config_codec.h"
#include "connex/error.h"
#include "json_input.h"

namespace connex {

namespace {

using nlohmann::json;

constexpr const char* kStepNames[] = {"add_connections",    "remove_connections", "add_input_neurons",
                                      "add_hidden_neurons", "add_output_neurons", "remove_neurons",
                                      "set_dropout_p"};

}  // namespace

const char* EditScript::name_of(Kind kind) { return kStepNames[static_cast<int>(kind)]; }

EditScript& EditScript::add_connections(std::vector<Edge> edges) {
  steps_.push_back({Kind::AddConnections, std::move(edges), {}, {}});
  return *this;
}
EditScript& EditScript::remove_connections(std::vector<Edge> edges) {
  steps_.push_back({Kind::RemoveConnections, std::move(edges), {}, {}});
  return *this;
}
EditScript& EditScript::add_input_neurons(std::vector<NeuronId> ids) {
  steps_.push_back({Kind::AddInputs, {}, std::move(ids), {}});
  return *this;
}
EditScript& EditScript::add_hidden_neurons(std::vector<NeuronId> ids) {
  steps_.push_back({Kind::AddHidden, {}, std::move(ids), {}});
  return *this;
}
EditScript& EditScript::add_output_neurons(std::vector<NeuronId> ids) {
  steps_.push_back({Kind::AddOutputs, {}, std::move(ids), {}});
  return *this;
}
EditScript& EditScript::remove_neurons(std::vector<NeuronId> ids) {
  steps_.push_back({Kind::RemoveNeurons, {}, std::move(ids), {}});
  return *this;
}
EditScript& EditScript::set_dropout_p(DropoutSpec dropout) {
  steps_.push_back({Kind::SetDropout, {}, {}, std::move(dropout)});
  return *this;
}

NetworkEditor EditScript::apply(const NeuralNetwork& network) const {
  NetworkEditor editor(network);
  for (const auto& step : steps_) {
    switch (step.kind) {
      case Kind::AddConnections:
        editor.add_connections(step.edges);
        break;
      case Kind::RemoveConnections:
        editor.remove_connections(step.edges);
        break;
      case Kind::AddInputs:
        editor.add_input_neurons(step.ids);
        break;
      case Kind::AddHidden:
        editor.add_hidden_neurons(step.ids);
        break;
      case Kind::AddOutputs:
        editor.add_output_neurons(step.ids);
        break;
      case Kind::RemoveNeurons:
        editor.remove_neurons(step.ids);
        break;
      case Kind::SetDropout:
        editor.set_dropout_p(step.dropout);
        break;
    }
  }
  return editor;
}

json EditScript::to_json() const {
  json out = json::array();
  for (const auto& step : steps_) {
    json value;
    if (step.kind == Kind::SetDropout) {
      value = dropout_to_json(step.dropout);
    } else if (step.kind == Kind::AddConnections || step.kind == Kind::RemoveConnections) {
      value = json::array();
      for (const auto& [from, to] : step.edges) value.push_back({id_to_json(from), id_to_json(to)});
    } else {
      value = json::array();
      for (const auto& id : step.ids) value.push_back(id_to_json(id));
    }
    out.push_back({{name_of(step.kind), std::move(value)}});
  }
  return out;
}

EditScript EditScript::from_json(const json& in, const std::string& source) {
  if (!in.is_array()) fail("{}: the top level must be an array of steps, got {}", source, in.type_name());
  EditScript script;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string path = fmt::format("/{}", i);
    const json& step = in[i];
    if (!step.is_object() || step.size() != 1)
      fail("{}: {} must be an object with one key (the step's name), got {}", source, path, detail::excerpt(step));
    const std::string& name = step.begin().key();
    const json& value = step.begin().value();
    const std::string here = path + "/" + name;
    int kind = -1;
    for (int k = 0; k < static_cast<int>(std::size(kStepNames)); ++k)
      if (name == kStepNames[k]) kind = k;
    if (kind < 0)
      fail("{}: {}: unknown step \"{}\"; the steps are {}", source, path, name, fmt::join(kStepNames, ", "));
    Step parsed{static_cast<Kind>(kind), {}, {}, {}};
    if (parsed.kind == Kind::SetDropout) {
      parsed.dropout = dropout_from_json(value, source, here);
    } else {
      if (!value.is_array()) fail("{}: {} must be an array, got {}", source, here, value.type_name());
      const bool edges = parsed.kind == Kind::AddConnections || parsed.kind == Kind::RemoveConnections;
      for (size_t j = 0; j < value.size(); ++j) {
        const std::string at = fmt::format("{}/{}", here, j);
        if (!edges) {
          parsed.ids.push_back(id_from_json(value[j], source, at));
          continue;
        }
        if (!value[j].is_array() || value[j].size() != 2)
          fail("{}: {} must be a pair [from, to], got {}", source, at, detail::excerpt(value[j]));
        parsed.edges.emplace_back(id_from_json(value[j][0], source, at + "/0"),
                                  id_from_json(value[j][1], source, at + "/1"));
      }
    }
    script.steps_.push_back(std::move(parsed));
  }
  return script;
}

}  // namespace connex
