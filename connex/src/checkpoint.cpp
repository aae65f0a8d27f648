#include "connex/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>

#include "connex/config.h"
#include "builtin_operations.h"
#include "config_codec.h"
#include "prebuilt_size.h"
#include "connex/error.h"
#include "dtype.h"
#include "file_io.h"
#include "json_input.h"
#include "optimizer_kinds.h"
#include "saved_optimizer.h"
#include "tensor_file.h"

namespace connex {

using detail::TensorData;
using detail::write_tensor;

namespace {

using nlohmann::json;

constexpr char kMagic[9] = "CONNEXCK";
constexpr size_t kPrefix = 8 + 4 + 8;  // magic, version, header length

// Buffers rebuilt from the structure are not saved; the rest (gradient masks,
// a module activation's buffers) are state.
bool is_derived_buffer(const std::string& name) {
  return has_level_prefix(name) || name.rfind("output_gather", 0) == 0;
}

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // x86-64 and aarch64 are little-endian
  out.append(bytes, sizeof(T));
}
template <typename T>
T get(const std::string& in, size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

// dtype.h's name; null for a dtype a checkpoint cannot hold.
const char* dtype_name(torch::Dtype dtype) {
  const DtypeInfo* info = find_dtype(dtype);
  return info ? info->name : nullptr;
}

std::string dtype_text(torch::Dtype dtype) { return dtype_name(dtype) ? dtype_name(dtype) : c10::toString(dtype); }

std::vector<std::pair<std::string, torch::Tensor>> state_tensors(const NeuralNetwork& network) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : network->named_parameters()) tensors.emplace_back(p.key(), p.value());
  for (const auto& b : network->named_buffers())
    if (!is_derived_buffer(b.key())) tensors.emplace_back(b.key(), b.value());
  return tensors;
}

size_t element_size(const json& config) {
  if (config.contains("options") && config.at("options").is_object() && config.at("options").contains("dtype")) {
    const auto& dtype = config.at("options").at("dtype");
    if (const DtypeInfo* info = dtype.is_string() ? find_dtype(dtype.get<std::string>()) : nullptr) return info->size;
  }
  return 4;
}

bool option_on(const json& config, const char* key) {
  if (!config.contains("options") || !config.at("options").is_object()) return false;
  const auto& options = config.at("options");
  return options.contains(key) && options.at(key).is_boolean() && options.at(key).get<bool>();
}

// A checkpoint must hold every parameter its config's structure needs. A few
// header bytes can declare a huge structure (a prebuilt MLP is four numbers;
// attention parameters grow as L² or n·L² per level), so before building
// anything, compare a lower bound of the parameter bytes with the tensor bytes
// present. Malformed configs pass through: network_from_config names the error.
void check_declared_size(const json& config, size_t data_size, const std::string& path) {
  if (!config.is_object() || !config.contains("graph") || !config.at("graph").is_object()) return;
  const json& graph = config.at("graph");
  const double element = static_cast<double>(element_size(config));
  auto too_big = [&](double values, const char* what) {
    if (values * element > static_cast<double>(data_size))
      fail(
          "load(): {}: its config declares {} of {:.0f} parameter values ({:.0f} bytes) but the file holds only {} "
          "bytes "
          "of tensor data",
          path, what, values, values * element, data_size);
  };
  if (graph.contains("prebuilt")) {
    // Layers of input_size, depth x width, output_size neurons; MLP links consecutive layers, DenseMLP every pair.
    double size[4];
    const char* keys[4] = {"input_size", "output_size", "width", "depth"};
    for (int k = 0; k < 4; ++k) {
      if (!graph.contains(keys[k]) || !graph.at(keys[k]).is_number_integer() || graph.at(keys[k]).get<int64_t>() < 0)
        return;
      size[k] = static_cast<double>(graph.at(keys[k]).get<int64_t>());
    }
    const double in = size[0], out = size[1], width = size[2], depth = size[3];
    if (depth > 0 && width < 1) return;  // rejected by the builder
    const auto& kind = graph.at("prebuilt");
    if (kind != "MLP" && kind != "DenseMLP" && kind != "SparseMLP") return;
    const auto layered = nn::layered_size(in, out, width, depth, kind == "DenseMLP");
    double connections = layered.connections;
    if (kind == "SparseMLP") {
      // The generator's total is the density's share of the MLP's, within one per layer pair.
      if (!graph.contains("density") || !graph.at("density").is_number()) return;
      connections = std::max(0.0, graph.at("density").get<double>() * connections - (depth + 1));
    }
    too_big(connections + layered.neurons - in, "a prebuilt network");  // a weight per connection, a bias per neuron
  }
  if (!option_on(config, "use_topo_self_attention") && !option_on(config, "use_neuron_self_attention")) return;
  // Attention grows as L² or n·L² per level; each technique counts its own
  // parameters. The graph itself is now known to be small.
  std::vector<LevelOperationPtr> operations;
  try {
    operations = builtin_operations(options_from_json(config.at("options"), path));
  } catch (const Error&) {
    return;
  }
  const auto topology = Topology::compile(graph_from_config(graph, path));
  double values = static_cast<double>(topology->num_connections() + topology->num_biases());
  for (const auto& op : operations) values += op->parameter_count(*topology).value_or(0);
  too_big(values, "a network with attention");
}

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
                     const std::string& path, const char* context) {
  const std::string type = optimizer_type_name(optimizer);
  if (type == "other")
    fail("{}: cannot save the optimizer for {}: connex saves the state of {}", context, path,
         list_optimizer_kinds(OptimizerNaming::kTitle));
  const auto names =
      group_parameter_names(optimizer, module, fmt::format("{}: cannot save the optimizer for {}", context, path));
  json groups = json::array(), state = json::object();
  for (size_t g = 0; g < names.size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    for (size_t i = 0; i < names[g].size(); ++i) {
      const std::string& name = names[g][i];
      auto it = optimizer.state().find(c10::guts::to_string(group.params()[i].unsafeGetTensorImpl()));
      if (it == optimizer.state().end()) continue;  // never stepped
      const auto fields = state_fields(*it->second);
      json entry = {{"tensors", json::object()}};
      if (fields.step) entry["step"] = *fields.step;
      for (const auto& [field, tensor] : fields.tensors)
        if (tensor.defined()) entry["tensors"][field] = write_tensor(tensor, data, name + "." + field, context);
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
                              const std::string& path, const char* context, const char* owner) {
  if (!o.is_object() || !o.contains("type") || !o.at("type").is_string() || !o.contains("groups") ||
      !o.at("groups").is_array() || !o.contains("state") || !o.at("state").is_object())
    fail("{}: {}: /optimizer must be {{\"type\": \"...\", \"groups\": [...], \"state\": {{...}}}}", context, path);
  SavedOptimizer saved;
  saved.type = o.at("type").get<std::string>();
  const auto& field_names = saved_state_fields(saved.type, path, context);
  const auto parameters = module.named_parameters();
  std::unordered_set<std::string> grouped;
  for (size_t g = 0; g < o.at("groups").size(); ++g)
    saved.groups.push_back(read_optimizer_group(o.at("groups").at(g), saved.type,
                                                fmt::format("{}: /optimizer/groups/{}", path, g), parameters, grouped,
                                                context, owner));
  for (const auto& [name, entry] : o.at("state").items()) {
    const std::string where = fmt::format("/optimizer/state/{}", name);
    if (!grouped.count(name))
      fail("{}: {}: {} is the state of a parameter that no optimizer group holds", context, path, where);
    saved.state.emplace(
        name, read_parameter_state(entry, saved.type, field_names, parameters[name], data, path, where, context));
  }
  check_state_complete(saved, context, path);
  return saved;
}

}  // namespace detail

namespace detail {

std::string pack_tensor_file(const char (&magic)[9], uint32_t version, const json& header, const std::string& data) {
  const std::string header_text = header.dump();
  std::string file(magic, 8);
  put<uint32_t>(file, version);
  put<uint64_t>(file, header_text.size());
  file += header_text;
  file += data;
  put<uint64_t>(file, fnv1a64(file.data(), file.size()));
  return file;
}

TensorFile unpack_tensor_file(const std::string& file, const char (&magic)[9], const std::string& path,
                              const char* context, const char* what) {
  if (file.size() < 8 || std::memcmp(file.data(), magic, 8) != 0)
    fail("{}: {} is not {} (it does not start with \"{}\")", context, path, what, magic);
  if (file.size() < kPrefix + 8) fail("{}: {} is truncated ({} bytes)", context, path, file.size());
  const uint64_t header_size = get<uint64_t>(file, 12);
  if (header_size > file.size() - kPrefix - 8)
    fail("{}: {} is truncated: its header claims {} bytes but the file has {}", context, path, header_size,
         file.size());
  const uint64_t stored = get<uint64_t>(file, file.size() - 8);
  if (stored != fnv1a64(file.data(), file.size() - 8))
    fail("{}: {} is corrupted: its checksum does not match its contents (truncated or changed bytes)", context, path);
  const size_t data_begin = kPrefix + header_size;
  return {get<uint32_t>(file, 8), std::string_view(file).substr(kPrefix, header_size), data_begin,
          file.size() - 8 - data_begin};
}

json write_tensor(const torch::Tensor& tensor, std::string& data, const std::string& name, const char* context) {
  auto cpu = tensor.detach().to(torch::kCPU).contiguous();
  const char* dtype = dtype_name(cpu.scalar_type());
  if (!dtype)
    fail("{}: tensor \"{}\" has dtype {}, which a checkpoint cannot hold", context, name,
         c10::toString(cpu.scalar_type()));
  const size_t nbytes = cpu.numel() * cpu.element_size();
  json entry = {{"dtype", dtype}, {"shape", cpu.sizes().vec()}, {"offset", data.size()}, {"nbytes", nbytes}};
  data.append(static_cast<const char*>(cpu.data_ptr()), nbytes);
  return entry;
}

torch::Tensor TensorData::read(const json& entry, const torch::Tensor& like, const std::string& what) const {
  try {
    // Checked before converting: a float such as 1e308 does not convert to an integer.
    if (!entry.is_object() || !entry.contains("shape") || !entry.contains("dtype") || !entry.contains("offset") ||
        !entry.contains("nbytes"))
      fail("{}: {}: {} must be {{\"dtype\", \"shape\", \"offset\", \"nbytes\"}}, got {}", context, path, what,
           detail::excerpt(entry));
    const json& shape_json = entry.at("shape");
    if (!shape_json.is_array() ||
        !std::all_of(shape_json.begin(), shape_json.end(), [](const json& v) { return v.is_number_integer(); }) ||
        !entry.at("offset").is_number_unsigned() || !entry.at("nbytes").is_number_unsigned() ||
        !entry.at("dtype").is_string())
      fail(
          "{}: {}: {} is malformed: its shape must be an array of integers, its dtype a string and its offset "
          "and "
          "nbytes non-negative integers",
          context, path, what);
    const auto shape = shape_json.get<std::vector<int64_t>>();
    const auto dtype = entry.at("dtype").get<std::string>();
    const auto offset = entry.at("offset").get<uint64_t>(), nbytes = entry.at("nbytes").get<uint64_t>();
    if (!like.sizes().equals(shape))
      fail("{}: {}: {} has shape [{}] in the file but {} needs [{}]", context, path, what, fmt::join(shape, ", "),
           structure, fmt::join(like.sizes(), ", "));
    if (dtype != dtype_name(like.scalar_type()))
      fail("{}: {}: {} is {} in the file but {} says {}", context, path, what, dtype, dtype_source,
           dtype_name(like.scalar_type()));
    if (nbytes != static_cast<uint64_t>(like.numel() * like.element_size()) || offset > size || nbytes > size - offset)
      fail("{}: {}: {} has an inconsistent byte range", context, path, what);
    return torch::from_blob(const_cast<char*>(file.data() + begin + offset), like.sizes(),
                            torch::TensorOptions().dtype(like.scalar_type()));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("{}: {}: {} is malformed: {}", context, path, what, e.what());
  }
}

void read_tensor_table(const json& table, const TensorData& data,
                       const std::vector<std::pair<std::string, torch::Tensor>>& expected, const std::string& where,
                       const char* structure) {
  std::map<std::string, const json*> saved;
  for (const auto& entry : table) {
    if (!entry.is_object() || !entry.contains("name") || !entry.at("name").is_string())
      fail("{} has a malformed tensor entry {}", where, detail::excerpt(entry));
    if (!saved.emplace(entry.at("name").get<std::string>(), &entry).second)
      fail("{} holds tensor \"{}\" twice", where, entry.at("name").get<std::string>());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : expected) {
    auto it = saved.find(name);
    if (it == saved.end()) fail("{} lacks tensor \"{}\" that {} needs", where, name, structure);
    torch::Tensor into = tensor;
    into.copy_(data.read(*it->second, tensor, fmt::format("tensor \"{}\"", name)));
    saved.erase(it);
  }
  if (!saved.empty()) fail("{} holds tensor \"{}\", which {} does not have", where, saved.begin()->first, structure);
}

}  // namespace detail

void save(const NeuralNetwork& network, const std::string& path, const torch::optim::Optimizer* optimizer,
          const Preprocessing* preprocessing, const nlohmann::json& training) {
  json header;
  if (!training.is_null()) {
    if (!training.is_object())
      fail("save(): {}: the training record must be a JSON object, got {}", path, training.type_name());
    header["training"] = training;
  }
  if (preprocessing) {
    preprocessing->check_fits(network, "save(): " + path + ": the preprocessing");
    header["preprocessing"] = preprocessing->to_json();
  }
  header["config"] = network_config(network, "save()");
  header["tensors"] = json::array();
  std::string data;
  for (const auto& [name, tensor] : state_tensors(network)) {
    json entry = write_tensor(tensor, data, name);
    entry["name"] = name;
    header["tensors"].push_back(std::move(entry));
  }
  if (optimizer) header["optimizer"] = detail::write_optimizer(*network, *optimizer, data, path, "save()");
  write_file_atomically(path, detail::pack_tensor_file(kMagic, kCheckpointVersion, header, data), "save()");
}

Checkpoint load_checkpoint(const std::string& path) { return parse_checkpoint(read_file(path, "load()"), path); }

Checkpoint parse_checkpoint(const std::string& file, const std::string& path) {
  const auto packed = detail::unpack_tensor_file(file, kMagic, path, "load()", "a connex checkpoint");
  const uint32_t version = packed.version;
  if (version != kCheckpointVersion)
    fail(
        "load(): {} has checkpoint format version {}; this connex reads version {}{}", path, version,
        kCheckpointVersion,
        version == 1 ? " (version 1 held optimizer state in torch's pickle format, which connex no longer reads)" : "");

  const json header = detail::parse_json(packed.header, "load(): " + path + "'s header");
  if (!header.is_object() || !header.contains("config") || !header.contains("tensors") ||
      !header.at("tensors").is_array())
    fail("load(): {} has a header without \"config\" and \"tensors\"", path);
  const size_t data_begin = packed.data_begin, data_size = packed.data_size;
  check_declared_size(header.at("config"), data_size, path);

  Checkpoint checkpoint;
  checkpoint.network = network_from_config(header.at("config"), path);
  const TensorData data{file, data_begin, data_size, path};
  torch::NoGradGuard no_grad;
  detail::read_tensor_table(header.at("tensors"), data, state_tensors(checkpoint.network), "load(): " + path,
                            "its network's structure");
  checkpoint.network->sync_frozen();

  if (header.contains("optimizer") && !header.at("optimizer").is_null())
    checkpoint.optimizer =
        detail::read_optimizer(header.at("optimizer"), *checkpoint.network, data, path, "load()", "network");
  if (header.contains("training")) {
    if (!header.at("training").is_object()) fail("load(): {}: /training must be an object", path);
    checkpoint.training = header.at("training");
  }
  if (header.contains("preprocessing"))
    checkpoint.preprocessing = Preprocessing::from_json(header.at("preprocessing"),
                                                        "load(): " + path + ": /preprocessing", checkpoint.network);
  return checkpoint;
}

NeuralNetwork load(const std::string& path) { return load_checkpoint(path).network; }

void load_optimizer_state(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer, const std::string& path,
                          const NeuralNetwork& network) {
  if (!checkpoint.optimizer) fail("load_optimizer_state(): {} holds no optimizer state", path);
  detail::load_saved_optimizer(*checkpoint.optimizer, optimizer, path,
                               network.is_empty() ? *checkpoint.network : *network, "load_optimizer_state()",
                               "network");
}

std::unique_ptr<torch::optim::Optimizer> restore_optimizer(const Checkpoint& checkpoint, const std::string& path,
                                                           const NeuralNetwork& network) {
  if (!checkpoint.optimizer) fail("restore_optimizer(): {} holds no optimizer state", path);
  return detail::restore_saved_optimizer(*checkpoint.optimizer, path,
                                         network.is_empty() ? *checkpoint.network : *network, "restore_optimizer()",
                                         "network");
}

namespace detail {

void load_saved_optimizer(const SavedOptimizer& saved, torch::optim::Optimizer& optimizer, const std::string& path,
                          const torch::nn::Module& module, const char* context, const char* owner) {
  const std::string type = optimizer_type_name(optimizer);
  if (type != saved.type) fail("{}: {} holds {} state, but the optimizer is {}", context, path, saved.type, type);
  if (optimizer.param_groups().size() != saved.groups.size())
    fail("{}: {} holds {} parameter group(s), but the optimizer has {}", context, path, saved.groups.size(),
         optimizer.param_groups().size());
  check_state_complete(saved, context, path);
  const auto names = group_parameter_names(optimizer, module, fmt::format("{}: {}", context, path));

  // Build everything first, then install: an error leaves the optimizer as it was.
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> options;
  std::vector<std::pair<std::string, std::unique_ptr<torch::optim::OptimizerParamState>>> states;
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
        if (!field.second.sizes().equals(p.sizes()) || field.second.scalar_type() != p.scalar_type())
          fail(
              "{}: the optimizer state in {} has a {} {} of shape [{}] for parameter \"{}\", which is {} of shape "
              "[{}]; it belongs to another {}",
              context, path, dtype_text(field.second.scalar_type()), field.first, fmt::join(field.second.sizes(), ", "),
              held[i], dtype_text(p.scalar_type()), fmt::join(p.sizes(), ", "), owner);
        field.second = field.second.to(p.device(), p.scalar_type(), false, /*copy=*/true);
      }
      states.emplace_back(c10::guts::to_string(p.unsafeGetTensorImpl()), make_param_state(fields));
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
