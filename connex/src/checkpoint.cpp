#include "connex/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include <torch/torch.h>

#include "connex/config.h"
#include "connex/error.h"
#include "connex/file_io.h"

namespace connex {

namespace {

using nlohmann::json;

constexpr char kMagic[8] = {'C', 'O', 'N', 'N', 'E', 'X', 'C', 'K'};
constexpr size_t kPrefix = 8 + 4 + 8;  // magic, version, header length

// Buffers rebuilt from the structure are not saved; the rest (gradient masks,
// a module activation's buffers) are state.
bool is_derived_buffer(const std::string& name) {
  return name.rfind("level", 0) == 0 || name.rfind("output_gather", 0) == 0;
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

const char* dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: return nullptr;
  }
}

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
    if (dtype == "float64") return 8;
    if (dtype == "float16" || dtype == "bfloat16") return 2;
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
// attention parameters grow as L² or n·L² per batch), so before building
// anything, compare a lower bound of the parameter bytes with the tensor bytes
// present. Malformed configs pass through: network_from_config names the error.
void check_declared_size(const json& config, size_t data_size, const std::string& path) {
  if (!config.is_object() || !config.contains("graph") || !config.at("graph").is_object()) return;
  const json& graph = config.at("graph");
  const double element = static_cast<double>(element_size(config));
  auto too_big = [&](double values, const char* what) {
    if (values * element > static_cast<double>(data_size))
      fail("load(): {}: its config declares {} of {:.0f} parameter values ({:.0f} bytes) but the file holds only {} bytes "
           "of tensor data", path, what, values, values * element, data_size);
  };
  if (graph.contains("prebuilt")) {
    // Layers of input_size, depth x width, output_size neurons; MLP links consecutive layers, DenseMLP every pair.
    double size[4];
    const char* keys[4] = {"input_size", "output_size", "width", "depth"};
    for (int k = 0; k < 4; ++k) {
      if (!graph.contains(keys[k]) || !graph.at(keys[k]).is_number_integer() || graph.at(keys[k]).get<int64_t>() < 0) return;
      size[k] = static_cast<double>(graph.at(keys[k]).get<int64_t>());
    }
    const double in = size[0], out = size[1], width = size[2], depth = size[3];
    if (depth > 0 && width < 1) return;  // rejected by the builder
    double connections;
    if (graph.at("prebuilt") == "MLP")
      connections = depth == 0 ? in * out : in * width + (depth - 1) * width * width + width * out;
    else if (graph.at("prebuilt") == "DenseMLP")
      connections = depth * width * in + width * width * depth * (depth - 1) / 2 + out * (in + depth * width);
    else
      return;
    too_big(connections + width * depth + out, "a prebuilt network");
  }
  if (!option_on(config, "use_topo_self_attention") && !option_on(config, "use_neuron_self_attention")) return;
  // Attention parameters (techniques.h): 3 (L² + L) per batch, or 3 n (L² + L)
  // per batch of n neurons; the graph itself is now known to be small.
  const auto topology = Topology::compile(graph_from_config(graph, path));
  double values = static_cast<double>(topology->num_connections() + topology->num_biases());
  for (size_t l = 1; l < topology->levels().size(); ++l) {
    const Level& level = topology->levels()[l];
    const double L = static_cast<double>(level.sources.size()), n = static_cast<double>(level.size());
    if (option_on(config, "use_topo_self_attention")) values += 3 * (L * L + L);
    if (option_on(config, "use_neuron_self_attention")) values += 3 * n * (L * L + L);
  }
  too_big(values, "a network with attention");
}

}  // namespace

std::string optimizer_type_name(const torch::optim::Optimizer& optimizer) {
  using namespace torch::optim;
  if (dynamic_cast<const Adam*>(&optimizer)) return "adam";
  if (dynamic_cast<const AdamW*>(&optimizer)) return "adamw";
  if (dynamic_cast<const SGD*>(&optimizer)) return "sgd";
  if (dynamic_cast<const RMSprop*>(&optimizer)) return "rmsprop";
  if (dynamic_cast<const Adagrad*>(&optimizer)) return "adagrad";
  return "other";
}

void save(const NeuralNetwork& network, const std::string& path, const torch::optim::Optimizer* optimizer) {
  json header;
  header["config"] = network_config(network, "save()");
  header["tensors"] = json::array();
  std::string data;
  for (const auto& [name, tensor] : state_tensors(network)) {
    auto cpu = tensor.detach().to(torch::kCPU).contiguous();
    const char* dtype = dtype_name(cpu.scalar_type());
    if (!dtype) fail("save(): tensor \"{}\" has dtype {}, which a checkpoint cannot hold", name, c10::toString(cpu.scalar_type()));
    const size_t nbytes = cpu.numel() * cpu.element_size();
    header["tensors"].push_back({{"name", name}, {"dtype", dtype}, {"shape", cpu.sizes().vec()}, {"offset", data.size()}, {"nbytes", nbytes}});
    data.append(static_cast<const char*>(cpu.data_ptr()), nbytes);
  }
  if (optimizer) {
    std::ostringstream bytes;
    try {
      torch::serialize::OutputArchive archive;
      optimizer->save(archive);
      archive.save_to(bytes);
    } catch (const std::exception& e) {
      fail("save(): cannot serialize the optimizer for {}: {}", path, e.what());
    }
    const std::string blob = bytes.str();
    header["optimizer"] = {{"offset", data.size()}, {"nbytes", blob.size()}, {"type", optimizer_type_name(*optimizer)}};
    data += blob;
  }
  const std::string header_text = header.dump();
  std::string file(kMagic, 8);
  put<uint32_t>(file, kCheckpointVersion);
  put<uint64_t>(file, header_text.size());
  file += header_text;
  file += data;
  put<uint64_t>(file, fnv1a64(file.data(), file.size()));
  write_file_atomically(path, file, "save()");
}

Checkpoint load_checkpoint(const std::string& path) { return parse_checkpoint(read_file(path, "load()"), path); }

Checkpoint parse_checkpoint(const std::string& file, const std::string& path) {
  if (file.size() < 8 || std::memcmp(file.data(), kMagic, 8) != 0)
    fail("load(): {} is not a connex checkpoint (it does not start with \"CONNEXCK\")", path);
  if (file.size() < kPrefix + 8) fail("load(): {} is truncated ({} bytes)", path, file.size());
  const uint64_t header_size = get<uint64_t>(file, 12);
  if (header_size > file.size() - kPrefix - 8)
    fail("load(): {} is truncated: its header claims {} bytes but the file has {}", path, header_size, file.size());
  const uint64_t stored = get<uint64_t>(file, file.size() - 8);
  if (stored != fnv1a64(file.data(), file.size() - 8))
    fail("load(): {} is corrupted: its checksum does not match its contents (truncated or changed bytes)", path);
  const uint32_t version = get<uint32_t>(file, 8);
  if (version != kCheckpointVersion)
    fail("load(): {} has checkpoint format version {}; this connex reads version {}", path, version, kCheckpointVersion);

  json header;
  try {
    header = json::parse(file.begin() + kPrefix, file.begin() + kPrefix + header_size);
  } catch (const std::exception& e) {
    fail("load(): {} has an unreadable header: {}", path, e.what());
  }
  if (!header.is_object() || !header.contains("config") || !header.contains("tensors") || !header.at("tensors").is_array())
    fail("load(): {} has a header without \"config\" and \"tensors\"", path);
  const size_t data_begin = kPrefix + header_size, data_size = file.size() - 8 - data_begin;
  check_declared_size(header.at("config"), data_size, path);

  Checkpoint checkpoint;
  checkpoint.network = network_from_config(header.at("config"), path);
  auto expected = state_tensors(checkpoint.network);
  std::map<std::string, const json*> saved;
  for (const auto& entry : header.at("tensors")) {
    if (!entry.is_object() || !entry.contains("name") || !entry.at("name").is_string())
      fail("load(): {} has a malformed tensor entry {}", path, entry.dump());
    if (!saved.emplace(entry.at("name").get<std::string>(), &entry).second)
      fail("load(): {} holds tensor \"{}\" twice", path, entry.at("name").get<std::string>());
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : expected) {
    auto it = saved.find(name);
    if (it == saved.end()) fail("load(): {} lacks tensor \"{}\" that its network's structure needs", path, name);
    const json& entry = *it->second;
    try {
      // Checked before converting: a float such as 1e308 does not convert to an integer.
      const json& shape_json = entry.at("shape");
      if (!shape_json.is_array() || !std::all_of(shape_json.begin(), shape_json.end(), [](const json& v) { return v.is_number_integer(); }) ||
          !entry.at("offset").is_number_unsigned() || !entry.at("nbytes").is_number_unsigned())
        fail("load(): {}: tensor entry \"{}\" is malformed: its shape must be an array of integers and its offset and nbytes "
             "non-negative integers", path, name);
      const auto shape = shape_json.get<std::vector<int64_t>>();
      const auto dtype = entry.at("dtype").get<std::string>();
      const auto offset = entry.at("offset").get<uint64_t>(), nbytes = entry.at("nbytes").get<uint64_t>();
      if (!tensor.sizes().equals(shape))
        fail("load(): {}: tensor \"{}\" has shape [{}] in the file but the network's structure needs [{}]", path,
             name, fmt::join(shape, ", "), fmt::join(tensor.sizes(), ", "));
      if (dtype != dtype_name(tensor.scalar_type()))
        fail("load(): {}: tensor \"{}\" is {} in the file but the config says {}", path, name, dtype, dtype_name(tensor.scalar_type()));
      if (nbytes != static_cast<uint64_t>(tensor.numel() * tensor.element_size()) || offset > data_size || nbytes > data_size - offset)
        fail("load(): {}: tensor \"{}\" has an inconsistent byte range", path, name);
      auto source = torch::from_blob(const_cast<char*>(file.data() + data_begin + offset), tensor.sizes(),
                                     torch::TensorOptions().dtype(tensor.scalar_type()));
      tensor.copy_(source);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("load(): {}: tensor entry \"{}\" is malformed: {}", path, name, e.what());
    }
    saved.erase(it);
  }
  checkpoint.network->sync_frozen();
  if (!saved.empty())
    fail("load(): {} holds tensor \"{}\", which its network's structure does not have", path, saved.begin()->first);

  if (header.contains("optimizer") && !header.at("optimizer").is_null()) {
    const auto& o = header.at("optimizer");
    if (!o.is_object() || !o.contains("offset") || !o.at("offset").is_number_unsigned() || !o.contains("nbytes") ||
        !o.at("nbytes").is_number_unsigned() || (o.contains("type") && !o.at("type").is_string()))
      fail("load(): {}: /optimizer must be {{\"offset\": n, \"nbytes\": n, \"type\": \"...\"}}, got {}", path, o.dump());
    const auto offset = o.at("offset").get<uint64_t>(), nbytes = o.at("nbytes").get<uint64_t>();
    if (offset > data_size || nbytes > data_size - offset) fail("load(): {}: the optimizer state has an inconsistent byte range", path);
    checkpoint.optimizer_state = file.substr(data_begin + offset, nbytes);
    checkpoint.optimizer_type = o.value("type", std::string("other"));
  }
  return checkpoint;
}

NeuralNetwork load(const std::string& path) { return load_checkpoint(path).network; }

void load_optimizer_state(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer, const std::string& path) {
  if (checkpoint.optimizer_state.empty()) fail("load_optimizer_state(): {} holds no optimizer state", path);
  // A failed load leaves the optimizer as it was: torch's loader may have
  // replaced part of its state (or its groups' options) before it failed.
  std::ostringstream previous;
  {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(previous);
  }
  auto restore = [&] {
    std::istringstream bytes(previous.str());
    torch::serialize::InputArchive archive;
    archive.load_from(bytes);
    optimizer.state().clear();
    optimizer.load(archive);
  };
  try {
    std::istringstream bytes(checkpoint.optimizer_state);
    torch::serialize::InputArchive archive;
    archive.load_from(bytes);
    optimizer.load(archive);
  } catch (const std::exception& e) {
    const auto* torch_error = dynamic_cast<const c10::Error*>(&e);  // what() would append a C++ backtrace
    const std::string why = torch_error ? torch_error->what_without_backtrace() : e.what();
    restore();
    fail("load_optimizer_state(): the optimizer state in {} does not fit this optimizer: {}", path, why);
  }
  // torch's loader does not compare the state's shapes with the parameters': do it here.
  size_t index = 0;
  for (const auto& group : optimizer.param_groups())
    for (const auto& p : group.params()) {
      auto it = optimizer.state().find(c10::guts::to_string(p.unsafeGetTensorImpl()));
      if (it != optimizer.state().end()) {
        std::vector<torch::Tensor> tensors;
        using namespace torch::optim;
        if (auto* s = dynamic_cast<AdamParamState*>(it->second.get())) tensors = {s->exp_avg(), s->exp_avg_sq(), s->max_exp_avg_sq()};
        if (auto* s = dynamic_cast<AdamWParamState*>(it->second.get())) tensors = {s->exp_avg(), s->exp_avg_sq(), s->max_exp_avg_sq()};
        if (auto* s = dynamic_cast<SGDParamState*>(it->second.get())) tensors = {s->momentum_buffer()};
        if (auto* s = dynamic_cast<RMSpropParamState*>(it->second.get())) tensors = {s->square_avg(), s->momentum_buffer(), s->grad_avg()};
        if (auto* s = dynamic_cast<AdagradParamState*>(it->second.get())) tensors = {s->sum()};
        for (const auto& t : tensors)
          if (t.defined() && !t.sizes().equals(p.sizes())) {
            const std::string shape = fmt::format("[{}]", fmt::join(t.sizes(), ", "));
            restore();
            fail("load_optimizer_state(): the optimizer state in {} has shape {} for parameter {} of shape [{}]; it belongs to another network",
                 path, shape, index, fmt::join(p.sizes(), ", "));
          }
      }
      ++index;
    }
}

}  // namespace connex
