#include "connex/ham/checkpoint.h"

#include <algorithm>
#include <map>

#include <torch/torch.h>

#include "config_codec.h"
#include "connex/error.h"
#include "connex/ham/edit.h"
#include "dtype.h"
#include "file_io.h"
#include "ham/attach.h"
#include "ham/describe.h"
#include "json_input.h"
#include "saved_optimizer.h"
#include "tensor_file.h"

namespace connex::ham {

namespace {

using nlohmann::json;

constexpr const char (&kMagic)[9] = detail::kHamMagic;

// Index buffers a graph synapse rebuilds from its labels are not saved.
bool is_derived_buffer(const HAMImpl& ham, const std::string& name) {
  for (const auto& s : ham.synapses())
    if (is_graph_synapse(*s.synapse) && name.rfind("synapses." + s.name + ".", 0) == 0) return true;
  return false;
}

std::vector<std::pair<std::string, torch::Tensor>> state_tensors(const HAMImpl& ham) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : ham.named_parameters()) tensors.emplace_back(p.key(), p.value());
  for (const auto& b : ham.named_buffers())
    if (!is_derived_buffer(ham, b.key())) tensors.emplace_back(b.key(), b.value());
  return tensors;
}

const json& member(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) fail("{}: expected a member \"{}\"", where, key);
  return object.at(key);
}

std::vector<int64_t> shape_of(const json& j, const std::string& where) {
  if (!j.is_array() || j.empty())
    fail("{}: expected a shape (an array of positive integers), got {}", where, detail::excerpt(j));
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() < 1)
      fail("{}: expected a shape (an array of positive integers), got {}", where, detail::excerpt(j));
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

// The entries the structure's parameters take (as the synapses and
// Lagrangians size them) and its largest layer, read from the JSON before
// anything is built, so that a crafted header cannot make the loader
// allocate more than the file holds. A malformed part counts 0 here:
// building it is refused anyway.
struct StructureSize {
  double parameters = 0;  // entries
  double largest_layer = 0;
  // add_synapse() probes an attention synapse with scores [2, heads, tokens, tokens]:
  // the largest heads·tokens·tokens, and that synapse's name.
  double largest_scores = 0;
  std::string scored_by;
};

StructureSize structure_size(const json& structure, const std::string& where) {
  StructureSize size;
  std::map<std::string, std::vector<int64_t>> shapes;
  auto count = [](const std::vector<int64_t>& s) {
    double n = 1;
    for (auto d : s) n *= static_cast<double>(d);
    return n;
  };
  auto integer = [](const json& j, const char* key) {
    return j.contains(key) && j.at(key).is_number_integer() ? static_cast<double>(j.at(key).get<int64_t>()) : 0.0;
  };
  const json& layers = member(structure, "layers", where);
  for (size_t k = 0; layers.is_array() && k < layers.size(); ++k) {  // not an array: refused when built
    const json& l = layers[k];
    if (!l.is_object() || !l.contains("name") || !l.at("name").is_string()) continue;
    std::vector<int64_t> shape;
    if (l.contains("neurons") && l.at("neurons").is_array())
      shape = {static_cast<int64_t>(l.at("neurons").size())};
    else if (l.contains("shape"))
      shape = shape_of(l.at("shape"), fmt::format("{}/layers/{}/shape", where, k));
    if (shape.empty()) continue;  // no shape: building the layer is refused
    shapes[l.at("name").get<std::string>()] = shape;
    size.largest_layer = std::max(size.largest_layer, count(shape));
    if (l.contains("lagrangian") && l.at("lagrangian").is_object() &&
        l.at("lagrangian").value("kind", json()) == "layernorm" && !shape.empty())
      size.parameters += 1 + static_cast<double>(shape.back());
  }
  for (const auto& s : member(structure, "synapses", where)) {
    if (!s.is_object() || !s.contains("layers") || !s.at("layers").is_array() || !s.contains("synapse") ||
        !s.at("synapse").is_object())
      continue;
    std::vector<std::vector<int64_t>> joined;
    for (const auto& name : s.at("layers"))
      if (name.is_string() && shapes.count(name.get<std::string>())) joined.push_back(shapes[name.get<std::string>()]);
    const auto& synapse = s.at("synapse");
    if (joined.empty() || !synapse.contains("kind") || !synapse.at("kind").is_string()) continue;
    const std::string kind = synapse.at("kind").get<std::string>();
    const double n1 = count(joined.front()), n2 = count(joined.back());
    if (kind == "linear") {
      size.parameters += n1 * n2 + n2;
    } else if (kind == "bias") {
      size.parameters += n1;
    } else if (kind == "conv2d") {
      const auto& k = synapse.contains("kernel") ? synapse.at("kernel") : json();
      const double kernel = k.is_array() && k.size() == 2 && k[0].is_number_integer() && k[1].is_number_integer()
                                ? static_cast<double>(k[0].get<int64_t>()) * static_cast<double>(k[1].get<int64_t>())
                                : 0.0;
      if (joined.size() == 2 && joined[0].size() == 3 && joined[1].size() == 3)
        size.parameters += static_cast<double>(joined[1][0]) * static_cast<double>(joined[0][0]) * kernel;
    } else if (kind == "attention") {
      const double dims = static_cast<double>(joined.front().back()) + static_cast<double>(joined.back().back());
      size.parameters += integer(synapse, "heads") * integer(synapse, "head_dim") * dims;
      const double scores = integer(synapse, "heads") *
                            (count(joined.front()) / static_cast<double>(joined.front().back())) *
                            (count(joined.back()) / static_cast<double>(joined.back().back()));
      if (scores > size.largest_scores)
        size.largest_scores = scores, size.scored_by = detail::excerpt(s.contains("name") ? s.at("name") : json("?"));
    } else if (kind == "graph" && synapse.contains("connections") && synapse.at("connections").is_array()) {
      size.parameters += static_cast<double>(synapse.at("connections").size());
    }
  }
  return size;
}

}  // namespace

json structure_json(const HAM& ham) {
  json layers = json::array(), synapses = json::array();
  for (const auto& l : ham->layers()) {
    json lagrangian = l.lagrangian->to_json();
    if (lagrangian.is_null())
      fail("ham::save(): layer \"{}\"'s Lagrangian cannot be written down (a callable or a custom module)", l.name);
    json entry = {{"name", l.name}, {"lagrangian", lagrangian}, {"tau", l.tau}};
    if (l.shape.size() == 1) {
      json neurons = json::array();
      for (const auto& id : l.neurons) neurons.push_back(id_to_json(id));
      entry["neurons"] = std::move(neurons);
    } else {
      entry["shape"] = l.shape;
    }
    layers.push_back(std::move(entry));
  }
  for (const auto& s : ham->synapses()) {
    json synapse = s.synapse->to_json();
    if (synapse.is_null()) fail("ham::save(): synapse \"{}\" cannot be written down (a custom module)", s.name);
    synapses.push_back({{"name", s.name}, {"layers", s.layers}, {"synapse", std::move(synapse)}});
  }
  return {{"layers", std::move(layers)}, {"synapses", std::move(synapses)}};
}

HAM from_structure_json(const json& structure, const std::string& where) {
  HAM ham;
  const auto& layers = member(structure, "layers", where);
  const auto& synapses = member(structure, "synapses", where);
  if (!layers.is_array() || !synapses.is_array()) fail("{}: \"layers\" and \"synapses\" must be arrays", where);
  detail::only_keys(structure, {"layers", "synapses"}, "a HAM's structure", where);
  for (size_t k = 0; k < layers.size(); ++k) {
    const std::string at = fmt::format("{}/layers/{}", where, k);
    const auto& l = layers[k];
    detail::only_keys(l, {"name", "tau", "lagrangian", "neurons", "shape"}, "a layer", at);
    if (l.contains("neurons") && l.contains("shape"))
      fail("{}: a layer has \"neurons\" (a 1-D layer's labels) or a \"shape\", not both", at);
    const auto& name = member(l, "name", at);
    const auto& tau = member(l, "tau", at);
    if (!name.is_string() || !tau.is_number()) fail("{}: expected a string \"name\" and a number \"tau\"", at);
    auto lagrangian = lagrangian_from_json(member(l, "lagrangian", at), at + "/lagrangian");
    try {
      if (l.contains("neurons")) {
        const auto& list = l.at("neurons");
        if (!list.is_array()) fail("{}/neurons: expected an array of neuron labels", at);
        std::vector<NeuronId> neurons;
        for (size_t i = 0; i < list.size(); ++i)
          neurons.push_back(id_from_json(list[i], at, fmt::format("/neurons/{}", i)));
        ham->add_labelled_layer(name.get<std::string>(), std::move(neurons), lagrangian, tau.get<double>());
      } else {
        ham->add_layer(name.get<std::string>(), shape_of(member(l, "shape", at), at + "/shape"), lagrangian,
                       tau.get<double>());
      }
    } catch (const Error& e) {
      fail_under(at, e);
    }
  }
  for (size_t k = 0; k < synapses.size(); ++k) {
    const std::string at = fmt::format("{}/synapses/{}", where, k);
    const auto& s = synapses[k];
    detail::only_keys(s, {"name", "layers", "synapse"}, "a synapse entry", at);
    const auto& name = member(s, "name", at);
    const auto& joined = member(s, "layers", at);
    if (!name.is_string() || !joined.is_array()) fail("{}: expected a string \"name\" and an array \"layers\"", at);
    std::vector<std::string> names;
    for (const auto& n : joined) {
      if (!n.is_string()) fail("{}/layers: expected layer names, got {}", at, detail::excerpt(n));
      names.push_back(n.get<std::string>());
    }
    auto synapse = synapse_from_json(member(s, "synapse", at), at + "/synapse");
    try {
      ham->add_synapse(name.get<std::string>(), synapse, std::move(names));
    } catch (const Error& e) {
      fail("{}: {}", at, e.what());
    }
  }
  return ham;
}

void save(const HAM& ham, const std::string& path, const torch::optim::Optimizer* optimizer) {
  if (!ham) fail("ham::save(): expected a HAM, got an empty holder");
  json header = {{"structure", structure_json(ham)}, {"tensors", json::array()}};
  // One dtype for every floating-point tensor: load() builds the HAM and casts it to that one.
  const auto tensors = state_tensors(*ham);
  std::string dtype = "float32", first;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.is_floating_point()) continue;
    const DtypeInfo* info = find_dtype(tensor.scalar_type());
    if (!info)
      fail("ham::save(): {}: tensor \"{}\" has dtype {}, which a checkpoint cannot hold", path, name,
           c10::toString(tensor.scalar_type()));
    if (first.empty()) {
      first = name;
      dtype = info->name;
    } else if (dtype != info->name) {
      fail("ham::save(): {}: tensor \"{}\" is {} but \"{}\" is {}; cast the HAM to one dtype first (ham->to(...))",
           path, name, info->name, first, dtype);
    }
  }
  // Without floating-point tensors: the dtype its to() named, if any.
  if (const auto where = ham->part_options(); first.empty() && where && where->has_dtype()) {
    const DtypeInfo* info = find_dtype(where->dtype().toScalarType());
    if (info) dtype = info->name;
  }
  header["dtype"] = dtype;
  std::string data;
  for (const auto& [name, tensor] : tensors) {
    json entry = detail::write_tensor(tensor, data, name, "ham::save()");
    entry["name"] = name;
    header["tensors"].push_back(std::move(entry));
  }
  // Frozen parameters (requires_grad off) stay frozen.
  for (const auto& p : ham->named_parameters())
    if (!p.value().requires_grad()) header["frozen"].push_back(p.key());
  if (optimizer) header["optimizer"] = detail::write_optimizer(*ham, *optimizer, data, path, "ham::save()", "HAM");
  write_file_atomically(path, detail::pack_tensor_file(kMagic, kCheckpointVersion, header, data), "ham::save()");
}

namespace {

// The bytes of a HAM checkpoint; `context` (the entry point) starts every message.
Checkpoint parse(const std::string& file, const std::string& path, const char* context) {
  const auto packed = detail::unpack_tensor_file(file, kMagic, path, context, "a connex HAM checkpoint");
  if (packed.version != kCheckpointVersion)
    fail("{}: {} has HAM checkpoint format version {}; this connex reads version {}", context, path, packed.version,
         kCheckpointVersion);
  const json header = detail::parse_json(packed.header, fmt::format("{}: {}'s header", context, path));
  const std::string where = fmt::format("{}: {}", context, path);
  if (!header.is_object() || !header.contains("structure") || !header.contains("tensors") ||
      !header.at("tensors").is_array() || !header.contains("dtype") || !header.at("dtype").is_string())
    fail("{} has a header without \"structure\", \"tensors\" and \"dtype\"", where);
  detail::only_keys(header, {"structure", "tensors", "dtype", "frozen", "optimizer"}, "a HAM checkpoint's header",
                    where);
  const DtypeInfo* dtype = find_dtype(header.at("dtype").get<std::string>());
  if (!dtype) fail("{}: unknown dtype {}", where, detail::excerpt(header.at("dtype")));
  // Parameters must fit the tensor bytes present; a layer's probes take two samples of it.
  const StructureSize size = structure_size(header.at("structure"), where + ": /structure");
  if (size.largest_layer > static_cast<double>(int64_t{1} << 28))
    fail("{}: its structure has a layer of {:.0f} entries per sample (at most {} can be loaded)", where,
         size.largest_layer, int64_t{1} << 28);
  if (size.largest_scores > static_cast<double>(int64_t{1} << 28))
    fail("{}: its structure's attention synapse {} scores {:.0f} token pairs per sample (at most {} can be loaded)",
         where, size.scored_by, size.largest_scores, int64_t{1} << 28);
  if (size.parameters * static_cast<double>(dtype->size) > static_cast<double>(packed.data_size) + 1024)
    fail("{}: its structure needs {:.0f} parameter values but the file holds {} bytes of tensors", where,
         size.parameters, packed.data_size);

  const RandomStateKept kept;  // the parts' initial draws are overwritten by the file's tensors
  HAM ham = from_structure_json(header.at("structure"), where + ": /structure");
  // A HAM without floating-point tensors saved as float32 follows the default dtype, as a new one does.
  if (!ham->parameters().empty() || !ham->buffers().empty() || dtype->type != torch::kFloat) ham->to(dtype->type);
  const detail::TensorData data{file,    packed.data_begin,     packed.data_size,    path,
                                context, "the HAM's structure", "the header's dtype"};
  detail::read_tensor_table(header.at("tensors"), data, state_tensors(*ham), where, "its HAM's structure");
  if (header.contains("frozen")) {
    const auto& frozen = header.at("frozen");
    const auto parameters = ham->named_parameters();
    if (!frozen.is_array()) fail("{}: /frozen must list parameter names, got {}", where, detail::excerpt(frozen));
    for (const auto& name : frozen) {
      if (!name.is_string() || !parameters.contains(name.get<std::string>()))
        fail("{}: /frozen names {}, which is not a parameter of its HAM", where, detail::excerpt(name));
      parameters[name.get<std::string>()].requires_grad_(false);
    }
  }
  Checkpoint checkpoint{ham, std::nullopt};
  if (header.contains("optimizer") && !header.at("optimizer").is_null())
    checkpoint.optimizer = detail::read_optimizer(header.at("optimizer"), *ham, data, path, context, "HAM");
  return checkpoint;
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  return parse(read_file(path, "ham::load_checkpoint()"), path, "ham::load_checkpoint()");
}

Checkpoint parse_checkpoint(const std::string& file, const std::string& path) {
  return parse(file, path, "ham::parse_checkpoint()");
}

HAM load(const std::string& path) { return parse(read_file(path, "ham::load()"), path, "ham::load()").ham; }

std::unique_ptr<torch::optim::Optimizer> restore_optimizer(const Checkpoint& checkpoint, const std::string& path,
                                                           const HAM& ham) {
  if (!checkpoint.optimizer) fail("ham::restore_optimizer(): {} holds no optimizer state", path);
  if (!ham && !checkpoint.ham) fail("ham::restore_optimizer(): {}: expected a HAM, got none", path);
  // The state follows the saved HAM's entries: a graph synapse of other
  // connections, as many, would take moments that are not its own.
  if (ham && checkpoint.ham && ham.get() != checkpoint.ham.get()) {
    const std::string difference = Structure::first_difference(Structure::of(*checkpoint.ham), Structure::of(*ham));
    if (!difference.empty())
      fail(
          "ham::restore_optimizer(): {} holds the state of another HAM than the one given ({}); the optimizer state "
          "fits only a HAM of the same structure",
          path, difference);
  }
  return detail::restore_saved_optimizer(*checkpoint.optimizer, path, ham ? *ham : *checkpoint.ham,
                                         "ham::restore_optimizer()", "HAM");
}

}  // namespace connex::ham
