#include "saved_optimizer.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "file_io.h"
#include "json_input.h"
#include "optimizer_key.h"
#include "optimizer_kinds.h"

namespace connex {

using detail::TensorData;
using detail::write_tensor;

namespace {

using nlohmann::json;

// Throws unless torch's step() can run on the saved state: every field it
// reads under a group's options is there, and an optimizer that keeps a state
// for every parameter (Adagrad) has one for each. Checked when a file is
// parsed and again when a state is loaded (it may have been grafted from
// another checkpoint); `operation` starts the message, `path` names the file.
void check_state_complete(const SavedOptimizer& saved, const char* operation, const std::string& path) {
  std::map<std::string, std::vector<std::string>> required;  // by parameter, under its group's options
  for (const auto& group : saved.groups) {
    const auto fields = required_state_fields(
        saved.type, *optimizer_options_from_json(saved.type, group.options, fmt::format("{}: {}", operation, path)));
    for (const auto& name : group.parameters) {
      required[name] = fields;
      if (state_required_for_every_parameter(saved.type) && !saved.state.count(name))
        fail("{}: {}: /optimizer/state lacks the state of parameter \"{}\" ({} keeps one for every parameter)",
             operation, path, name, saved.type);
    }
  }
  for (const auto& [name, state] : saved.state) {
    auto needed = required.find(name);
    if (needed == required.end()) continue;  // parse_checkpoint rejects state of an ungrouped parameter
    for (const auto& [field, tensor] : state.tensors)
      if (!tensor.defined() && std::find(needed->second.begin(), needed->second.end(), field) != needed->second.end())
        fail("{}: {}: /optimizer/state/{}/tensors lacks \"{}\", which {}'s step reads under this group's options",
             operation, path, name, field, saved.type);
  }
}

}  // namespace

namespace detail {

json write_optimizer(const torch::nn::Module& module, const torch::optim::Optimizer& optimizer, std::string& data,
                     const std::string& path, const char* context, const char* owner) {
  const std::string type = optimizer_type_name(optimizer);
  if (type == "other")
    fail("{}: cannot save the optimizer for {}: connex saves the state of {}", context, path,
         list_optimizer_kinds(OptimizerNaming::kTitle));
  const auto names = group_parameter_names(
      optimizer, module, fmt::format("{}: cannot save the optimizer for {}", context, path), owner,
      fmt::format("a checkpoint keeps the optimizer state of the {}'s parameters only", owner));
  json groups = json::array(), state = json::object();
  for (size_t g = 0; g < names.size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    for (size_t i = 0; i < names[g].size(); ++i) {
      const std::string& name = names[g][i];
      auto it = optimizer.state().find(optimizer_state_key(group.params()[i]));
      if (it == optimizer.state().end()) continue;  // never stepped
      const torch::Tensor& p = group.params()[i];
      const auto fields = state_fields(*it->second);
      json entry = {{"tensors", json::object()}};
      if (fields.step) entry["step"] = *fields.step;
      for (const auto& [field, tensor] : fields.tensors) {
        if (!tensor.defined()) continue;
        if (!tensor.sizes().equals(p.sizes()))
          fail("{}: cannot save the optimizer for {}: its {} of parameter \"{}\" has shape [{}], the parameter [{}]",
               context, path, field, name, fmt::join(tensor.sizes(), ", "), fmt::join(p.sizes(), ", "));
        // A state follows its parameter's dtype, as torch's load_state_dict
        // makes it (moments left in float32 by a network moved to double).
        entry["tensors"][field] =
            write_tensor(tensor.scalar_type() == p.scalar_type() ? tensor : tensor.to(p.scalar_type()), data,
                         name + "." + field, context);
      }
      state[name] = entry;
    }
    groups.push_back({{"options", optimizer_options_to_json(group.options())}, {"parameters", names[g]}});
  }
  return {{"type", type}, {"groups", groups}, {"state", state}};
}

}  // namespace detail

namespace {

// The state fields of a saved optimizer type; an unknown type is an error that lists the known ones.
const std::vector<std::string>& saved_state_fields(const std::string& type, const std::string& path,
                                                   const char* context) {
  try {
    return state_tensor_names(type);
  } catch (const Error&) {
    fail("{}: {}: /optimizer/type \"{}\" is not an optimizer connex knows ({})", context, path, type,
         list_optimizer_kinds(OptimizerNaming::kName, ", "));
  }
}

// One /optimizer/groups entry; `grouped` collects the parameters the groups name, each at most once.
SavedOptimizer::Group read_optimizer_group(const json& group, const std::string& type, const std::string& where,
                                           const torch::OrderedDict<std::string, torch::Tensor>& parameters,
                                           std::unordered_set<std::string>& grouped, const char* context,
                                           const char* owner) {
  if (!group.is_object() || !group.contains("options") || !group.contains("parameters") ||
      !group.at("parameters").is_array())
    fail("{}: {} must be {{\"options\": {{...}}, \"parameters\": [names]}}", context, where);
  optimizer_options_from_json(type, group.at("options"),
                              fmt::format("{}: {}/options", context, where));  // checks every option
  SavedOptimizer::Group out{group.at("options"), {}};
  for (const auto& name : group.at("parameters")) {
    if (!name.is_string() || !parameters.contains(name.get<std::string>()))
      fail("{}: {}/parameters names {}, which is not a parameter of the {}", context, where, detail::excerpt(name),
           owner);
    if (!grouped.insert(name.get<std::string>()).second)
      fail("{}: {}/parameters names \"{}\" a second time", context, where, name.get<std::string>());
    out.parameters.push_back(name.get<std::string>());
  }
  return out;
}

// One parameter's /optimizer/state entry: its step count where the type keeps one, and its tensors.
OptimizerStateFields read_parameter_state(const json& entry, const std::string& type,
                                          const std::vector<std::string>& field_names, const torch::Tensor& parameter,
                                          const TensorData& data, const std::string& path, const std::string& where,
                                          const char* context) {
  if (!entry.is_object() || !entry.contains("tensors") || !entry.at("tensors").is_object())
    fail("{}: {}: {} must be {{\"step\": n, \"tensors\": {{...}}}}", context, path, where);
  OptimizerStateFields fields;
  fields.type = type;
  if (state_has_step(type)) {
    if (!entry.contains("step") || !entry.at("step").is_number_unsigned() ||
        entry.at("step").get<uint64_t>() > uint64_t{1} << 62)
      fail("{}: {}: {}/step must be a non-negative integer", context, path, where);
    fields.step = entry.at("step").get<int64_t>();
  } else if (entry.contains("step")) {
    fail("{}: {}: {}/step: a {} state counts no steps", context, path, where, type);
  }
  for (const auto& [field, tensor_entry] : entry.at("tensors").items())
    if (std::find(field_names.begin(), field_names.end(), field) == field_names.end())
      fail("{}: {}: {}/tensors/{} is not a field of the {} state ({})", context, path, where, field, type,
           fmt::join(field_names, ", "));
  for (const auto& field : field_names) {
    torch::Tensor value;
    if (entry.at("tensors").contains(field))
      value = data.read(entry.at("tensors").at(field), parameter.detach(),
                        fmt::format("optimizer state {}/tensors/{}", where, field))
                  .clone();
    fields.tensors.emplace_back(field, value);
  }
  return fields;
}

}  // namespace

namespace detail {

SavedOptimizer read_optimizer(const json& o, const torch::nn::Module& module, const TensorData& data,
                              const std::string& path, const char* context, const char* owner,
                              const std::vector<ParameterPart>& parts) {
  if (!o.is_object() || !o.contains("type") || !o.at("type").is_string() || !o.contains("groups") ||
      !o.at("groups").is_array() || !o.contains("state") || !o.at("state").is_object())
    fail("{}: {}: /optimizer must be {{\"type\": \"...\", \"groups\": [...], \"state\": {{...}}}}", context, path);
  SavedOptimizer saved;
  saved.type = o.at("type").get<std::string>();
  const auto& field_names = saved_state_fields(saved.type, path, context);
  const auto parameters = module.named_parameters();
  std::unordered_map<std::string, const ParameterPart*> part_named;
  for (const auto& part : parts) part_named.emplace(part.name, &part);
  std::unordered_set<std::string> grouped;
  std::unordered_set<std::string> placed_wholes;  // a whole joins the first group that lists one of its parts
  for (size_t g = 0; g < o.at("groups").size(); ++g) {
    json group = o.at("groups").at(g);
    if (!part_named.empty() && group.is_object() && group.contains("parameters") && group.at("parameters").is_array()) {
      json names = json::array();
      for (const auto& name : group.at("parameters")) {
        auto part = name.is_string() ? part_named.find(name.get<std::string>()) : part_named.end();
        if (part == part_named.end())
          names.push_back(name);
        else if (placed_wholes.insert(part->second->whole).second)
          names.push_back(part->second->whole);
      }
      group["parameters"] = std::move(names);
    }
    saved.groups.push_back(read_optimizer_group(group, saved.type, fmt::format("{}: /optimizer/groups/{}", path, g),
                                                parameters, grouped, context, owner));
  }
  std::map<std::string, OptimizerStateFields> joined;  // the parts' state, by whole parameter
  std::map<std::string, int64_t> lowest_part;          // the first row of the part whose step `joined` holds
  for (const auto& [name, entry] : o.at("state").items()) {
    const std::string where = fmt::format("/optimizer/state/{}", name);
    auto part_it = part_named.find(name);
    const ParameterPart* part = part_it == part_named.end() ? nullptr : part_it->second;
    if (!grouped.count(part ? part->whole : name))
      fail("{}: {}: {} is the state of a parameter that no optimizer group holds", context, path, where);
    if (!part) {
      saved.state.emplace(
          name, read_parameter_state(entry, saved.type, field_names, parameters[name], data, path, where, context));
      continue;
    }
    const torch::Tensor& whole = parameters[part->whole];
    auto fields = read_parameter_state(entry, saved.type, field_names, whole.narrow(0, part->first_row, part->rows),
                                       data, path, where, context);
    auto [into, first] = joined.try_emplace(part->whole);
    if (first) {
      // Rows no part holds start where a new optimizer starts them, under the whole's group's options.
      const auto group = std::find_if(saved.groups.begin(), saved.groups.end(), [&](const auto& g) {
        return std::find(g.parameters.begin(), g.parameters.end(), part->whole) != g.parameters.end();
      });
      const auto options =
          optimizer_options_from_json(saved.type, group->options, fmt::format("{}: {}: {}", context, path, where));
      into->second.type = fields.type;
      for (const auto& [field, tensor] : fields.tensors)
        into->second.tensors.emplace_back(
            field, tensor.defined()
                       ? torch::full_like(whole, fresh_state_value(saved.type, field, *options), tensor.options())
                       : torch::Tensor());
    }
    // The step (one per tensor) is level 1's: the part of the lowest rows.
    auto& lowest = lowest_part[part->whole];
    if (first || part->first_row < lowest) lowest = part->first_row, into->second.step = fields.step;
    for (size_t f = 0; f < fields.tensors.size() && f < into->second.tensors.size(); ++f)
      if (fields.tensors[f].second.defined() && into->second.tensors[f].second.defined())
        into->second.tensors[f].second.narrow(0, part->first_row, part->rows).copy_(fields.tensors[f].second);
  }
  for (auto& [name, fields] : joined) saved.state.emplace(name, std::move(fields));
  check_state_complete(saved, context, path);
  return saved;
}

}  // namespace detail

namespace detail {

void load_saved_optimizer(const SavedOptimizer& saved, torch::optim::Optimizer& optimizer, const std::string& path,
                          const torch::nn::Module& module, const char* context, const char* owner) {
  const std::string type = optimizer_type_name(optimizer);
  if (type != saved.type) fail("{}: {} holds {} state, but the optimizer is {}", context, path, saved.type, type);
  if (optimizer.param_groups().size() != saved.groups.size())
    fail("{}: {} holds {} parameter group(s), but the optimizer has {}", context, path, saved.groups.size(),
         optimizer.param_groups().size());
  check_state_complete(saved, context, path);
  const auto names = group_parameter_names(
      optimizer, module, fmt::format("{}: {}", context, path), owner,
      fmt::format("build the optimizer over the {0}'s parameters; for one over another {0} of this structure, pass "
                  "that {0} too",
                  owner));

  // Build everything first, then install: an error leaves the optimizer as it was.
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> options;
  std::vector<std::pair<OptimizerStateKey, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
  for (size_t g = 0; g < saved.groups.size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    const std::vector<std::string>& held = names[g];
    auto sorted = [](std::vector<std::string> v) {
      std::sort(v.begin(), v.end());
      return v;
    };
    if (sorted(held) != sorted(saved.groups[g].parameters))
      fail("{}: group {} of the optimizer holds parameters [{}] but the one in {} holds [{}]", context, g,
           fmt::join(held, ", "), path, fmt::join(saved.groups[g].parameters, ", "));
    for (size_t i = 0; i < held.size(); ++i) {
      const torch::Tensor& p = group.params()[i];
      auto state = saved.state.find(held[i]);
      if (state == saved.state.end()) continue;
      OptimizerStateFields fields = state->second;
      for (auto& field : fields.tensors) {
        if (!field.second.defined()) continue;
        // parse_checkpoint checked these against the saved network; a grafted state is checked here.
        if (!field.second.sizes().equals(p.sizes()))
          fail(
              "{}: the optimizer state in {} has {} of shape [{}] for parameter \"{}\", which is of shape [{}]; it "
              "belongs to another {}",
              context, path, field.first, fmt::join(field.second.sizes(), ", "), held[i], fmt::join(p.sizes(), ", "),
              owner);
        // Of the parameter's dtype and device, as torch's load_state_dict makes
        // it: a float network's state resumes a copy moved to double.
        field.second = field.second.to(p.device(), p.scalar_type(), false, /*copy=*/true);
      }
      states.emplace_back(optimizer_state_key(p), make_param_state(fields));
    }
    options.push_back(
        optimizer_options_from_json(saved.type, saved.groups[g].options, fmt::format("{}: {}", context, path)));
  }
  optimizer.state().clear();
  for (auto& [key, state] : states) optimizer.state()[key] = std::move(state);
  for (size_t g = 0; g < options.size(); ++g) optimizer.param_groups()[g].set_options(std::move(options[g]));
}

std::unique_ptr<torch::optim::Optimizer> restore_saved_optimizer(const SavedOptimizer& saved, const std::string& path,
                                                                 const torch::nn::Module& module, const char* context,
                                                                 const char* owner) {
  const auto parameters = module.named_parameters();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < saved.groups.size(); ++g) {
    std::vector<torch::Tensor> params;
    for (const auto& name : saved.groups[g].parameters) {
      const auto* p = parameters.find(name);
      if (!p)
        fail("{}: group {} in {} holds parameter \"{}\", which the {} does not have", context, g, path, name, owner);
      params.push_back(*p);
    }
    groups.emplace_back(std::move(params), optimizer_options_from_json(saved.type, saved.groups[g].options,
                                                                       fmt::format("{}: {}", context, path)));
  }
  if (groups.empty()) fail("{}: {} holds an optimizer without parameter groups", context, path);
  auto optimizer = make_optimizer(saved.type, std::move(groups));
  load_saved_optimizer(saved, *optimizer, path, module, context, owner);
  return optimizer;
}

}  // namespace detail
}  // namespace connex
