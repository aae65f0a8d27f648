#include "connex/config.h"

#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <fmt/ranges.h>

#include "config_codec.h"
#include "connex/error.h"
#include "prebuilt_size.h"
#include "dtype.h"
#include "file_io.h"
#include "connex/generators.h"
#include "connex/prebuilt.h"
#include "json_input.h"

namespace connex {

namespace {

using nlohmann::json;

constexpr int kConfigVersion = 1;

std::string builtin_name(const TensorFunction& f, const char* what, const char* context) {
  if (!f.is_builtin())
    fail("{}: {} \"{}\" is a {}; only built-ins ({}) can be written down", context, what, f.name(),
         f.is_module() ? "module" : "custom callable", fmt::join(TensorFunction::builtin_names(), ", "));
  return f.name();
}

int64_t non_negative_int(const json& obj, const std::string& key, const std::string& source, const std::string& path) {
  if (!obj.contains(key)) fail("{}: required key \"{}\" is missing in {}", source, key, path);
  const auto& v = obj.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    fail("{}: {}/{} must be a non-negative integer, got {}", source, path, key, detail::excerpt(v));
  return v.get<int64_t>();
}

}  // namespace

json dropout_to_json(const DropoutSpec& dropout) {
  if (dropout.per_neuron.empty()) return dropout.hidden;
  json neurons = json::array();
  for (const auto& [id, p] : dropout.per_neuron) neurons.push_back({id_to_json(id), p});
  return {{"hidden", dropout.hidden}, {"neurons", neurons}};
}

DropoutSpec dropout_from_json(const json& v, const std::string& source, const std::string& path) {
  if (v.is_number()) return DropoutSpec(v.get<double>());
  if (!v.is_object()) fail("{}: {} must be a number or an object, got {}", source, path, v.type_name());
  DropoutSpec spec(0.0);
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "hidden" && it.key() != "neurons")
      fail("{}: {}/{} is not a key of dropout_p (\"hidden\", \"neurons\")", source, path, it.key());
  if (v.contains("hidden")) {
    if (!v.at("hidden").is_number())
      fail("{}: {}/hidden must be a number, got {}", source, path, v.at("hidden").type_name());
    spec.hidden = v.at("hidden").get<double>();
  }
  if (v.contains("neurons")) {
    const auto& list = v.at("neurons");
    if (!list.is_array()) fail("{}: {}/neurons must be an array of [id, p], got {}", source, path, list.type_name());
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string here = fmt::format("{}/neurons/{}", path, i);
      if (!list[i].is_array() || list[i].size() != 2 || !list[i][1].is_number())
        fail("{}: {} must be a pair [neuron, p], got {}", source, here, detail::excerpt(list[i]));
      spec.per_neuron.emplace_back(id_from_json(list[i][0], source, here + "/0"), list[i][1].get<double>());
    }
  }
  return spec;
}

json options_to_json(const NeuralNetworkOptions& options, const char* context) {
  json out;
  out["hidden_activation"] = builtin_name(options.hidden_activation(), "hidden_activation", context);
  out["output_transformation"] = builtin_name(options.output_transformation(), "output_transformation", context);
  out["dropout_p"] = dropout_to_json(options.dropout_p());
  if (options.topo_sort()) {
    out["topo_sort"] = json::array();
    for (const auto& id : *options.topo_sort()) out["topo_sort"].push_back(id_to_json(id));
  }
  out["seed"] = options.seed();
  out["use_topo_norm"] = options.use_topo_norm();
  out["use_topo_self_attention"] = options.use_topo_self_attention();
  out["use_neuron_self_attention"] = options.use_neuron_self_attention();
  out["use_adaptive_activations"] = options.use_adaptive_activations();
  if (!options.operations().empty())
    fail(
        "{}: user-defined operation \"{}\" cannot be written down; only the built-in techniques can (torch::save "
        "of the network keeps every parameter, its own too, for torch::load into a network built with it)",
        context, options.operations().front()->name());
  if (const DtypeInfo* dtype = find_dtype(options.dtype())) out["dtype"] = dtype->name;
  return out;
}

namespace {

void check_option_keys(const json& json_options, const std::string& source, const std::string& at) {
  static const std::set<std::string> known = {"hidden_activation",
                                              "output_transformation",
                                              "dropout_p",
                                              "topo_sort",
                                              "seed",
                                              "dtype",
                                              "use_topo_norm",
                                              "use_topo_self_attention",
                                              "use_neuron_self_attention",
                                              "use_adaptive_activations"};
  for (auto it = json_options.begin(); it != json_options.end(); ++it)
    if (!known.count(it.key()))
      fail("{}: {}/{} is not an option; the options are {}", source, at, it.key(), fmt::join(known, ", "));
}

std::optional<TensorFunction> function_option(const json& json_options, const char* key, const std::string& source,
                                              const std::string& at) {
  if (!json_options.contains(key)) return std::nullopt;
  const auto& v = json_options.at(key);
  if (!v.is_string()) fail("{}: {}/{} must be a string, got {}", source, at, key, v.type_name());
  try {
    return TensorFunction(v.get<std::string>());
  } catch (const Error& e) {
    fail("{}: {}/{}: {}", source, at, key, e.what());
  }
}

std::vector<NeuronId> topo_sort_from_json(const json& v, const std::string& source, const std::string& at) {
  if (!v.is_array()) fail("{}: {}/topo_sort must be an array, got {}", source, at, v.type_name());
  std::vector<NeuronId> order;
  for (size_t i = 0; i < v.size(); ++i)
    order.push_back(id_from_json(v[i], source, fmt::format("{}/topo_sort/{}", at, i)));
  return order;
}

// A seed at `where`: an unsigned 64-bit integer. JSON reads a whole number
// past that range (or written with an exponent) as a float: told as such.
uint64_t seed_from_json(const json& v, const std::string& source, const std::string& where) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_float() && v.get<double>() >= 0 && std::floor(v.get<double>()) == v.get<double>())
    fail("{}: {} must be a non-negative integer in decimal digits, at most {}, got {}", source, where,
         std::numeric_limits<uint64_t>::max(), detail::excerpt(v));
  fail("{}: {} must be a non-negative integer, got {}", source, where, detail::excerpt(v));
}

std::optional<bool> flag_option(const json& json_options, const char* key, const std::string& source,
                                const std::string& at) {
  if (!json_options.contains(key)) return std::nullopt;
  const auto& v = json_options.at(key);
  if (!v.is_boolean()) fail("{}: {}/{} must be true or false, got {}", source, at, key, detail::excerpt(v));
  return v.get<bool>();
}

c10::ScalarType dtype_from_json(const json& v, const std::string& source, const std::string& at) {
  const DtypeInfo* dtype = v.is_string() ? find_dtype(v.get<std::string>()) : nullptr;
  if (!dtype) fail("{}: {}/dtype must be one of {}, got {}", source, at, dtype_names(), detail::excerpt(v));
  return dtype->type;
}

}  // namespace

NeuralNetworkOptions options_from_json(const json& json_options, const std::string& source, const std::string& at) {
  NeuralNetworkOptions options;
  if (!json_options.is_object()) fail("{}: {} must be an object, got {}", source, at, json_options.type_name());
  check_option_keys(json_options, source, at);
  if (auto f = function_option(json_options, "hidden_activation", source, at)) options.hidden_activation(*f);
  if (auto f = function_option(json_options, "output_transformation", source, at)) options.output_transformation(*f);
  if (json_options.contains("dropout_p"))
    options.dropout_p(dropout_from_json(json_options.at("dropout_p"), source, at + "/dropout_p"));
  if (json_options.contains("topo_sort"))
    options.topo_sort(topo_sort_from_json(json_options.at("topo_sort"), source, at));
  if (json_options.contains("seed")) options.seed(seed_from_json(json_options.at("seed"), source, at + "/seed"));
  if (auto v = flag_option(json_options, "use_topo_norm", source, at)) options.use_topo_norm(*v);
  if (auto v = flag_option(json_options, "use_topo_self_attention", source, at)) options.use_topo_self_attention(*v);
  if (auto v = flag_option(json_options, "use_neuron_self_attention", source, at))
    options.use_neuron_self_attention(*v);
  if (auto v = flag_option(json_options, "use_adaptive_activations", source, at)) options.use_adaptive_activations(*v);
  if (json_options.contains("dtype")) options.dtype(dtype_from_json(json_options.at("dtype"), source, at));
  return options;
}

namespace {

// The options of {"prebuilt": "SparseMLP", ..., "density", "distribution", "seed"}.
nn::SparseLayersOptions sparse_options_from_config(const json& graph, const std::string& source) {
  nn::SparseLayersOptions options;
  if (!graph.contains("density")) fail("{}: required key \"density\" is missing in /graph", source);
  const auto& density = graph.at("density");
  if (!density.is_number() || !(density.get<double>() > 0 && density.get<double>() <= 1))
    fail("{}: /graph/density must be a number in (0, 1], got {}", source, detail::excerpt(density));
  options.density(density.get<double>());
  if (graph.contains("distribution")) {
    // The names are generators.h's (distribution_from_name); the message names the config's path.
    const auto& name = graph.at("distribution");
    auto refuse = [&] {
      fail("{}: /graph/distribution must be \"uniform\", \"erdos_renyi\", \"er\" or \"erk\", got {}", source,
           detail::excerpt(name));
    };
    if (!name.is_string()) refuse();
    try {
      options.distribution(nn::distribution_from_name(name.get<std::string>()));
    } catch (const Error&) {
      refuse();
    }
  }
  if (graph.contains("seed")) options.seed(seed_from_json(graph.at("seed"), source, "/graph/seed"));
  return options;
}

// An MLP's layer sizes, {in, width x depth, out}. The list is made before the generator
// checks the network's size, so a depth past connex's neuron limit (2e9, where the list
// itself would take gigabytes) is refused first; empty hidden layers are listed once, for
// the generator to name.
std::vector<int64_t> sparse_mlp_sizes(int64_t in, int64_t out, int64_t width, int64_t depth,
                                      const std::string& source) {
  if (width > 0 && static_cast<double>(depth) * static_cast<double>(width) > nn::kBuildLimit)
    fail("{}: /graph/depth {} x /graph/width {} is more hidden neurons than connex builds (limit {:.0e})", source,
         depth, width, nn::kBuildLimit);
  std::vector<int64_t> sizes{in};
  sizes.insert(sizes.end(), width > 0 ? depth : std::min<int64_t>(depth, 1), width);
  sizes.push_back(out);
  return sizes;
}

// A key the prebuilt form does not read is a typo (or a "density" on an MLP): refused, not ignored.
void check_prebuilt_keys(const json& graph, bool sparse, const std::string& source) {
  static const std::set<std::string> layered = {"prebuilt", "input_size", "output_size", "width", "depth"};
  static const std::set<std::string> extra = {"density", "distribution", "seed"};
  for (const auto& item : graph.items())
    if (!layered.count(item.key()) && !(sparse && extra.count(item.key())))
      fail(
          "{}: /graph/{} is not a key of a prebuilt {} graph (it takes prebuilt, input_size, output_size, width, "
          "depth{})",
          source, item.key(), detail::excerpt(graph.at("prebuilt")), sparse ? ", density, distribution, seed" : "");
}

}  // namespace

GraphSpec graph_from_config(const json& graph, const std::string& source) {
  if (!graph.is_object()) fail("{}: /graph must be an object, got {}", source, graph.type_name());
  if (!graph.contains("prebuilt")) return GraphSpec::from_json(graph, source, "/graph");
  const auto& kind = graph.at("prebuilt");
  // The kind first: a misspelt one would otherwise be reported as its keys.
  if (kind != "MLP" && kind != "DenseMLP" && kind != "SparseMLP")
    fail("{}: /graph/prebuilt must be \"MLP\", \"DenseMLP\" or \"SparseMLP\", got {}", source, detail::excerpt(kind));
  const int64_t in = non_negative_int(graph, "input_size", source, "/graph"),
                out = non_negative_int(graph, "output_size", source, "/graph");
  const int64_t width = non_negative_int(graph, "width", source, "/graph"),
                depth = non_negative_int(graph, "depth", source, "/graph");
  check_prebuilt_keys(graph, kind == "SparseMLP", source);
  std::optional<nn::SparseLayersOptions> sparse;
  std::vector<int64_t> sizes;
  if (kind == "SparseMLP") {
    sparse = sparse_options_from_config(graph, source);
    sizes = sparse_mlp_sizes(in, out, width, depth, source);
  }
  try {
    if (kind == "MLP") return nn::mlp_spec(in, out, width, depth);
    if (kind == "DenseMLP") return nn::dense_mlp_spec(in, out, width, depth);
    return nn::sparse_layered_spec(sizes, *sparse);
  } catch (const Error& e) {
    fail("{}: /graph: {}", source, e.what());
  }
}

json network_config(const NeuralNetwork& network, const char* context) {
  json config;
  config["format"] = "connex-network";
  config["version"] = kConfigVersion;
  config["graph"] = network->spec().to_json();
  config["options"] = options_to_json(network->options(), context);
  return config;
}

NeuralNetwork network_from_config(const json& config, const std::string& source) {
  if (!config.is_object()) fail("{}: the top level must be an object, got {}", source, config.type_name());
  if (config.contains("format") && config.at("format") != "connex-network")
    fail("{}: /format is {}, not \"connex-network\"", source, detail::excerpt(config.at("format")));
  if (config.contains("version") && config.at("version") != kConfigVersion)
    fail("{}: /version is {}; this connex reads version {}", source, detail::excerpt(config.at("version")),
         kConfigVersion);
  if (detail::is_node_link_graph(config))
    fail("{}: a node-link graph (as export_graph() writes), not a network config; import_graph_json() reads it",
         source);
  if (!config.contains("graph")) fail("{}: required key \"graph\" is missing", source);
  for (auto it = config.begin(); it != config.end(); ++it)
    if (it.key() != "format" && it.key() != "version" && it.key() != "graph" && it.key() != "options")
      fail("{}: /{} is not a key of a network config (format, version, graph, options)", source, it.key());
  GraphSpec spec = graph_from_config(config.at("graph"), source);
  NeuralNetworkOptions options =
      config.contains("options") ? options_from_json(config.at("options"), source) : NeuralNetworkOptions();
  try {
    return NeuralNetwork(spec, options);
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
}

NeuralNetwork load_config(const std::string& path) {
  const json config = detail::parse_json(read_file(path, "load_config()"), "load_config(): " + path);
  return network_from_config(config, path);
}

void save_config(const NeuralNetwork& network, const std::string& path) {
  write_file_atomically(path, network_config(network, "save_config()").dump(2) + "\n", "save_config()");
}

}  // namespace connex
