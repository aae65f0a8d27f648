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
#include "topo_norm.h"

namespace connex {

using detail::TensorData;
using detail::write_tensor;

namespace {

using nlohmann::json;

constexpr const char (&kMagic)[9] = detail::kNetworkMagic;

// Per-level buffers (dropout's rates, made from the options) are not saved;
// the rest (gradient masks, a module activation's buffers) are state.
bool is_derived_buffer(const std::string& name) { return has_level_prefix(name); }

std::vector<std::pair<std::string, torch::Tensor>> state_tensors(const NeuralNetwork& network) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : network->named_parameters()) tensors.emplace_back(p.key(), p.value());
  for (const auto& b : network->named_buffers())
    if (!is_derived_buffer(b.key())) tensors.emplace_back(b.key(), b.value());
  return tensors;
}

// What the file holds under each name: the network's state tensors, but
// where it holds a parameter in parts (an older file), those parts.
std::vector<std::pair<std::string, torch::Tensor>> tensors_in_file(const NeuralNetwork& network, const json& table,
                                                                   const std::vector<detail::ParameterPart>& parts) {
  auto tensors = state_tensors(network);
  std::unordered_set<std::string> held;
  for (const auto& entry : table)
    if (entry.is_object() && entry.contains("name") && entry.at("name").is_string())
      held.insert(entry.at("name").get<std::string>());
  std::unordered_set<std::string> split;
  for (const auto& part : parts)
    if (!held.count(part.whole) && held.count(part.name)) split.insert(part.whole);
  if (split.empty()) return tensors;
  std::unordered_map<std::string, torch::Tensor> whole;
  for (auto it = tensors.begin(); it != tensors.end();)
    if (split.count(it->first)) {
      whole.emplace(it->first, it->second);
      it = tensors.erase(it);
    } else {
      ++it;
    }
  for (const auto& part : parts)
    if (split.count(part.whole))
      tensors.emplace_back(part.name, whole.at(part.whole).narrow(0, part.first_row, part.rows));
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
void check_declared_size(const json& config, size_t data_size, const std::string& path, const char* context) {
  if (!config.is_object() || !config.contains("graph") || !config.at("graph").is_object()) return;
  const json& graph = config.at("graph");
  const double element = static_cast<double>(element_size(config));
  auto too_big = [&](double values, const char* what) {
    if (values * element > static_cast<double>(data_size))
      fail(
          "{}: {}: its config declares {} of {:.0f} parameter values ({:.0f} bytes) but the file holds only {} "
          "bytes of tensor data",
          context, path, what, values, values * element, data_size);
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

}  // namespace

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
  if (optimizer) header["optimizer"] = detail::write_optimizer(*network, *optimizer, data, path, "save()", "network");
  write_file_atomically(path, detail::pack_tensor_file(kMagic, kCheckpointVersion, header, data), "save()");
}

namespace {

// The bytes of a checkpoint file; `context` (the entry point: "load()",
// "load_checkpoint()", "parse_checkpoint()") starts every message.
Checkpoint parse(const std::string& file, const std::string& path, const char* context) {
  const auto packed = detail::unpack_tensor_file(file, kMagic, path, context, "a connex checkpoint");
  const uint32_t version = packed.version;
  if (version != kCheckpointVersion)
    fail(
        "{}: {} has checkpoint format version {}; this connex reads version {}{}", context, path, version,
        kCheckpointVersion,
        version == 1 ? " (version 1 held optimizer state in torch's pickle format, which connex no longer reads)" : "");

  const json header = detail::parse_json(packed.header, fmt::format("{}: {}'s header", context, path));
  if (!header.is_object() || !header.contains("config") || !header.contains("tensors") ||
      !header.at("tensors").is_array())
    fail("{}: {} has a header without \"config\" and \"tensors\"", context, path);
  const size_t data_begin = packed.data_begin, data_size = packed.data_size;
  check_declared_size(header.at("config"), data_size, path, context);

  Checkpoint checkpoint;
  checkpoint.network = network_from_config(header.at("config"), path);
  const TensorData data{file, data_begin, data_size, path, context};
  torch::NoGradGuard no_grad;
  const auto parts = topo_norm_level_parts(*checkpoint.network);
  detail::read_tensor_table(header.at("tensors"), data,
                            tensors_in_file(checkpoint.network, header.at("tensors"), parts),
                            fmt::format("{}: {}", context, path), "its network's structure");
  checkpoint.network->sync_frozen();

  if (header.contains("optimizer") && !header.at("optimizer").is_null())
    checkpoint.optimizer =
        detail::read_optimizer(header.at("optimizer"), *checkpoint.network, data, path, context, "network", parts);
  if (header.contains("training")) {
    if (!header.at("training").is_object()) fail("{}: {}: /training must be an object", context, path);
    checkpoint.training = header.at("training");
  }
  if (header.contains("preprocessing"))
    checkpoint.preprocessing = Preprocessing::from_json(
        header.at("preprocessing"), fmt::format("{}: {}: /preprocessing", context, path), checkpoint.network);
  return checkpoint;
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  return parse(read_file(path, "load_checkpoint()"), path, "load_checkpoint()");
}

Checkpoint parse_checkpoint(const std::string& file, const std::string& path) {
  return parse(file, path, "parse_checkpoint()");
}

NeuralNetwork load(const std::string& path) { return parse(read_file(path, "load()"), path, "load()").network; }

namespace {

// The network the saved state goes onto. The state follows checkpoint.network's
// weight and bias order, so a network given in its place must lay its
// parameters out the same way: the same neurons in the same order and the same
// connections, or the moments would land on other connections. Where the
// counts differ the shapes differ too, and the optimizer's checks name them.
const NeuralNetworkImpl& network_for_state(const Checkpoint& checkpoint, const NeuralNetwork& given,
                                           const std::string& path, const char* context) {
  if (!checkpoint.optimizer) fail("{}: {} holds no optimizer state", context, path);
  if (checkpoint.network.is_empty()) {
    if (given.is_empty()) fail("{}: {} holds no network; pass the one the optimizer state belongs to", context, path);
    return *given;
  }
  if (given.is_empty()) return *checkpoint.network;
  const Topology& saved = checkpoint.network->topology();
  const Topology& other = given->topology();
  if (&saved == &other || saved.num_neurons() != other.num_neurons() || saved.num_inputs() != other.num_inputs() ||
      saved.num_connections() != other.num_connections())
    return *given;
  const char* fits = "the optimizer state fits only a network of the same structure";
  for (int64_t n = 0; n < saved.num_neurons(); ++n) {
    if (saved.label(n) != other.label(n))
      fail("{}: the network given has neuron {} where {}'s network has {} (position {} of the compiled order); {}",
           context, other.label(n), path, saved.label(n), n, fits);
    if (saved.role(n) != other.role(n)) {
      auto a = [](Role role) { return fmt::format("{} {}", role == Role::Hidden ? "a" : "an", role_name(role)); };
      fail("{}: neuron {} is {} neuron in the network given but {} in {}'s network; {}", context, saved.label(n),
           a(other.role(n)), a(saved.role(n)), path, fits);
    }
  }
  // The outputs' order decides no parameter of connex's, but a user's operation may lay its own out by it.
  if (saved.output_ids() != other.output_ids())
    fail("{}: the network given lists its outputs in another order than {}'s network; {}", context, path, fits);
  for (int64_t c = 0; c < saved.num_connections(); ++c)
    if (saved.conn_source()[c] != other.conn_source()[c] || saved.conn_target()[c] != other.conn_target()[c])
      fail("{}: the network given has connection {} -> {} where {}'s network has {} -> {} (weight {}); {}", context,
           other.label(other.conn_source()[c]), other.label(other.conn_target()[c]), path,
           saved.label(saved.conn_source()[c]), saved.label(saved.conn_target()[c]), c, fits);
  return *given;
}

}  // namespace

void load_optimizer_state(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer, const std::string& path,
                          const NeuralNetwork& network) {
  const char* context = "load_optimizer_state()";
  const NeuralNetworkImpl& target = network_for_state(checkpoint, network, path, context);
  detail::load_saved_optimizer(*checkpoint.optimizer, optimizer, path, target, context, "network");
}

std::unique_ptr<torch::optim::Optimizer> restore_optimizer(const Checkpoint& checkpoint, const std::string& path,
                                                           const NeuralNetwork& network) {
  const char* context = "restore_optimizer()";
  const NeuralNetworkImpl& target = network_for_state(checkpoint, network, path, context);
  return detail::restore_saved_optimizer(*checkpoint.optimizer, path, target, context, "network");
}

}  // namespace connex
