#include "connex/graph_export.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include <torch/torch.h>

#include "connex/config.h"
#include "connex/error.h"
#include "connex/file_io.h"

namespace connex {

namespace {

using nlohmann::json;


std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string dot_quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '\n') {
      out += "\\n";  // a line break inside a DOT label
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Full precision, so an exported value reads back bit-identical.
std::string number(double v) { return fmt::format("{}", v); }

}  // namespace

json to_node_link_json(const NeuralNetwork& network) {
  const WeightedGraph g = network->weighted_graph();
  json out;
  out["directed"] = true;
  out["multigraph"] = false;
  json graph;
  graph["inputs"] = json::array();
  for (const auto& id : g.inputs) graph["inputs"].push_back(id_to_json(id));
  graph["outputs"] = json::array();
  for (const auto& id : g.outputs) graph["outputs"].push_back(id_to_json(id));
  graph["options"] = options_to_json(network->options(), "to_node_link_json()");
  graph["format"] = "connex-weighted-graph";
  graph["version"] = 1;
  if (!g.operation_parameters.empty()) {
    json params = json::object();
    for (const auto& t : g.operation_parameters) params[t.name] = {{"shape", t.shape}, {"values", t.values}};
    graph["operation_parameters"] = params;
  }
  out["graph"] = graph;
  out["nodes"] = json::array();
  for (const auto& n : g.neurons) {
    json node{{"id", id_to_json(n.id)}, {"role", role_name(n.role)}, {"dropout_p", n.dropout_p}, {"level", n.level}};
    if (n.bias) node["bias"] = *n.bias;
    out["nodes"].push_back(node);
  }
  out["links"] = json::array();
  for (const auto& c : g.connections)
    out["links"].push_back({{"source", id_to_json(c.from)}, {"target", id_to_json(c.to)}, {"weight", c.weight}});
  return out;
}

NeuralNetwork from_node_link_json(const json& in, const std::string& source) {
  auto need = [&](const json& obj, const char* key, const std::string& path) -> const json& {
    if (!obj.is_object() || !obj.contains(key)) fail("{}: required key \"{}\" is missing in {}", source, key, path.empty() ? "the top level" : path);
    return obj.at(key);
  };
  const json& graph = need(in, "graph", "");
  const json& nodes = need(in, "nodes", "");
  // networkx writes "links" (2.x) or "edges" (3.4+).
  const json& links = in.contains("links") ? in.at("links") : need(in, "edges", "");
  if (!nodes.is_array()) fail("{}: /nodes must be an array", source);
  if (!links.is_array()) fail("{}: /links must be an array", source);

  auto check_id = [&](const json& v, const std::string& path) -> const json& {
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail("{}: {} is {}, beyond the 64-bit signed range of integer neuron ids", source, path, v.dump());
    if (!v.is_number_integer() && !v.is_string())
      fail("{}: {} must be an integer or a string neuron id, got {}", source, path, v.dump());
    return v;
  };
  json spec_json;
  spec_json["inputs"] = need(graph, "inputs", "/graph");
  spec_json["outputs"] = need(graph, "outputs", "/graph");
  spec_json["neurons"] = json::array();
  for (size_t i = 0; i < nodes.size(); ++i)
    spec_json["neurons"].push_back(check_id(need(nodes[i], "id", fmt::format("/nodes/{}", i)), fmt::format("/nodes/{}/id", i)));
  spec_json["edges"] = json::array();
  for (size_t i = 0; i < links.size(); ++i) {
    const std::string path = fmt::format("/links/{}", i);
    spec_json["edges"].push_back({check_id(need(links[i], "source", path), path + "/source"),
                                  check_id(need(links[i], "target", path), path + "/target")});
  }
  GraphSpec spec = GraphSpec::from_json(spec_json, source, "/graph");
  std::vector<Edge> raw_edges;  // in file order, repeats included
  for (const auto& pair : spec_json["edges"])
    raw_edges.emplace_back(pair[0].is_number_integer() ? NeuronId(pair[0].get<int64_t>()) : NeuronId(pair[0].get<std::string>()),
                           pair[1].is_number_integer() ? NeuronId(pair[1].get<int64_t>()) : NeuronId(pair[1].get<std::string>()));
  NeuralNetworkOptions options = graph.contains("options") ? options_from_json(graph.at("options"), source) : NeuralNetworkOptions();
  NeuralNetwork network(spec, options);

  // A value must be finite in the network's dtype (1e300 would load as inf in float32).
  const double max_value = network->options().dtype() == torch::kFloat64 ? std::numeric_limits<double>::max()
                         : network->options().dtype() == torch::kFloat16 ? 65504.0
                         : network->options().dtype() == torch::kBFloat16 ? 3.3895313892515355e38  // float's max rounds up to inf
                                                                          : static_cast<double>(std::numeric_limits<float>::max());
  auto fits = [&](double v) { return std::isfinite(v) && std::abs(v) <= max_value; };
  // Values: set through the flat tensors (one write per tensor, not per value).
  const Topology& topo = network->topology();
  auto weights = network->weight_tensor().detach().to(torch::kFloat64).contiguous();
  auto biases = network->bias_tensor().detach().to(torch::kFloat64).contiguous();
  double* w = weights.data_ptr<double>();
  double* b = biases.data_ptr<double>();
  // Edges may repeat in the file; the last value of a repeated edge wins.
  for (size_t i = 0; i < links.size(); ++i) {
    // from_json validated every id; look each up through the spec's own labels.
    const auto& [u, v] = raw_edges[i];
    const auto& weight = need(links[i], "weight", fmt::format("/links/{}", i));
    if (!weight.is_number()) fail("{}: /links/{}/weight must be a number, got {}", source, i, weight.dump());
    if (!fits(weight.get<double>())) fail("{}: /links/{}/weight {} does not fit the network's dtype", source, i, weight.dump());
    w[topo.connection_index(topo.dense_of(u), topo.dense_of(v))] = weight.get<double>();
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t d = topo.dense_of(spec.neurons()[i]);  // nodes are the spec's neuron list, in order
    if (topo.role(d) == Role::Input) continue;
    const auto& bias = need(nodes[i], "bias", fmt::format("/nodes/{}", i));
    if (!bias.is_number()) fail("{}: /nodes/{}/bias must be a number, got {}", source, i, bias.dump());
    if (!fits(bias.get<double>())) fail("{}: /nodes/{}/bias {} does not fit the network's dtype", source, i, bias.dump());
    b[topo.bias_index(d)] = bias.get<double>();
  }
  torch::NoGradGuard no_grad;
  network->weight_tensor().copy_(weights);
  network->bias_tensor().copy_(biases);
  if (graph.contains("operation_parameters")) {
    const auto& saved = graph.at("operation_parameters");
    if (!saved.is_object()) fail("{}: /graph/operation_parameters must be an object", source);
    auto named = network->named_parameters();
    for (auto it = saved.begin(); it != saved.end(); ++it) {
      const std::string path = "/graph/operation_parameters/" + it.key();
      auto* target = it.key().find('.') == std::string::npos ? nullptr : named.find(it.key());
      if (!target) fail("{}: {} names no operation parameter of this network", source, path);
      try {
        const auto numbers = it.value().at("values").get<std::vector<double>>();
        for (size_t k = 0; k < numbers.size(); ++k)  // as for weights and biases: 1e300 would load as inf in float32
          if (!fits(numbers[k])) fail("{}: {}/values/{} {} does not fit the network's dtype", source, path, k, numbers[k]);
        auto values = torch::tensor(numbers, torch::kFloat64);
        const json& shape_json = it.value().at("shape");  // a float such as 1e308 does not convert to int64
        if (!shape_json.is_array() || !std::all_of(shape_json.begin(), shape_json.end(), [](const json& v) { return v.is_number_integer(); }))
          fail("{}: {}/shape must be an array of integers, got {}", source, path, shape_json.dump());
        const auto shape = shape_json.get<std::vector<int64_t>>();
        if (!target->sizes().equals(shape) || values.numel() != target->numel())
          fail("{}: {} has shape [{}] but the network needs [{}]", source, path, fmt::join(shape, ", "), fmt::join(target->sizes(), ", "));
        target->copy_(values.view(shape));
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        fail("{}: {} is malformed: {}", source, path, e.what());
      }
    }
  }
  return network;
}

std::string to_graphml(const NeuralNetwork& network) {
  const WeightedGraph g = network->weighted_graph();
  std::ostringstream out;
  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\">\n"
      << "  <key id=\"role\" for=\"node\" attr.name=\"role\" attr.type=\"string\"/>\n"
      << "  <key id=\"bias\" for=\"node\" attr.name=\"bias\" attr.type=\"double\"/>\n"
      << "  <key id=\"dropout_p\" for=\"node\" attr.name=\"dropout_p\" attr.type=\"double\"/>\n"
      << "  <key id=\"level\" for=\"node\" attr.name=\"level\" attr.type=\"int\"/>\n"
      << "  <key id=\"weight\" for=\"edge\" attr.name=\"weight\" attr.type=\"double\"/>\n"
      << "  <graph id=\"connex\" edgedefault=\"directed\">\n";
  for (const auto& n : g.neurons) {
    out << "    <node id=\"" << xml_escape(n.id.plain()) << "\"><data key=\"role\">" << role_name(n.role) << "</data>";
    if (n.bias) out << "<data key=\"bias\">" << number(*n.bias) << "</data>";
    out << "<data key=\"dropout_p\">" << number(n.dropout_p) << "</data><data key=\"level\">" << n.level << "</data></node>\n";
  }
  for (const auto& c : g.connections)
    out << "    <edge source=\"" << xml_escape(c.from.plain()) << "\" target=\"" << xml_escape(c.to.plain())
        << "\"><data key=\"weight\">" << number(c.weight) << "</data></edge>\n";
  out << "  </graph>\n</graphml>\n";
  return out.str();
}

std::string to_dot(const NeuralNetwork& network) {
  const WeightedGraph g = network->weighted_graph();
  double max_abs = 1e-12;
  for (const auto& c : g.connections) max_abs = std::max(max_abs, std::abs(c.weight));
  std::ostringstream out;
  out << "digraph connex {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n";
  for (const auto& n : g.neurons) {
    const char* shape = n.role == Role::Input ? "box" : n.role == Role::Output ? "doublecircle" : "circle";
    const char* fill = n.role == Role::Input ? "#e0f0ff" : n.role == Role::Output ? "#ffe8cc" : "#f4f4f4";
    std::string label = n.id.plain();
    if (n.bias) label += fmt::format("\nb={:.3g}", *n.bias);
    out << "  " << dot_quote(n.id.plain()) << " [shape=" << shape << ", style=filled, fillcolor=\"" << fill
        << "\", label=" << dot_quote(label) << "];\n";
  }
  // Inputs on the left, outputs on the right.
  out << "  { rank=source;";
  for (const auto& id : g.inputs) out << " " << dot_quote(id.plain()) << ";";
  out << " }\n  { rank=sink;";
  for (const auto& id : g.outputs) out << " " << dot_quote(id.plain()) << ";";
  out << " }\n";
  for (const auto& c : g.connections) {
    const double strength = std::abs(c.weight) / max_abs;
    out << "  " << dot_quote(c.from.plain()) << " -> " << dot_quote(c.to.plain()) << " [penwidth="
        << fmt::format("{:.2f}", 0.3 + 3.7 * strength) << ", color=\"" << (c.weight >= 0 ? "#1f5fbf" : "#c0392b")
        << "\", tooltip=\"" << fmt::format("{:.6g}", c.weight) << "\"];\n";
  }
  out << "}\n";
  return out.str();
}

void export_graph(const NeuralNetwork& network, const std::string& path) {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::string text;
  if (ends_with(".json"))
    text = to_node_link_json(network).dump(1) + "\n";
  else if (ends_with(".graphml"))
    text = to_graphml(network);
  else if (ends_with(".dot") || ends_with(".gv"))
    text = to_dot(network);
  else
    fail("export_graph(): cannot tell the format of {} from its extension (use .json, .graphml or .dot)", path);
  write_file_atomically(path, text, "export_graph()");
}

NeuralNetwork import_graph_json(const std::string& path) {
  json in;
  try {
    in = json::parse(read_file(path, "import_graph_json()"));
  } catch (const json::parse_error& e) {
    fail("import_graph_json(): {} is not valid JSON: {}", path, e.what());
  }
  return from_node_link_json(in, path);
}

}  // namespace connex
