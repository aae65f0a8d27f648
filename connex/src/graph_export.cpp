#include "connex/graph_export.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/config.h"
#include "config_codec.h"
#include "connex/error.h"
#include "dtype.h"
#include "file_io.h"
#include "id_messages.h"
#include "json_input.h"
#include "topo_norm.h"

namespace connex {

namespace {

using nlohmann::json;

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
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
    if (n.frozen) node["frozen"] = true;  // only where frozen, as networkx users would write it
    out["nodes"].push_back(node);
  }
  out["links"] = json::array();
  for (const auto& c : g.connections) {
    json link{{"source", id_to_json(c.from)}, {"target", id_to_json(c.to)}, {"weight", c.weight}};
    if (c.frozen) link["frozen"] = true;
    out["links"].push_back(link);
  }
  return out;
}

namespace {

// Reads the parts of a networkx node-link document; its messages name the
// document (`source`) and the place in it.
struct NodeLinkReader {
  const std::string& source;

  const json& need(const json& obj, const char* key, const std::string& path) const {
    if (!obj.is_object() || !obj.contains(key))
      fail("{}: required key \"{}\" is missing in {}", source, key, path.empty() ? "the top level" : path);
    return obj.at(key);
  }
  const json& check_id(const json& v, const std::string& path) const {
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail("{}: {} is {}, beyond the 64-bit signed range of integer neuron ids", source, path, detail::excerpt(v));
    if (!v.is_number_integer() && !v.is_string())
      fail("{}: {} must be an integer or a string neuron id, got {}", source, path, detail::excerpt(v));
    return v;
  }
  static NeuronId to_id(const json& v) {
    return v.is_number_integer() ? NeuronId(v.get<int64_t>()) : NeuronId(v.get<std::string>());
  }
  // "frozen": optional, true or false; absent means not frozen.
  bool is_frozen(const json& obj, const std::string& path) const {
    if (!obj.contains("frozen")) return false;
    const json& flag = obj.at("frozen");
    if (!flag.is_boolean()) fail("{}: {}/frozen must be true or false, got {}", source, path, detail::excerpt(flag));
    return flag.get<bool>();
  }
};

// A value must be finite in the network's dtype (1e300 would load as inf in float32).
bool fits(double v, double max_value) { return std::isfinite(v) && std::abs(v) <= max_value; }

// The graph's structure; `raw_edges` receives the links in file order, repeats included.
GraphSpec read_structure(const NodeLinkReader& r, const json& graph, const json& nodes, const json& links,
                         std::vector<Edge>& raw_edges) {
  json spec_json;
  spec_json["inputs"] = r.need(graph, "inputs", "/graph");
  spec_json["outputs"] = r.need(graph, "outputs", "/graph");
  spec_json["neurons"] = json::array();
  std::unordered_set<NeuronId, NeuronIdHash> node_ids;
  for (size_t i = 0; i < nodes.size(); ++i) {
    spec_json["neurons"].push_back(
        r.check_id(r.need(nodes[i], "id", fmt::format("/nodes/{}", i)), fmt::format("/nodes/{}/id", i)));
    node_ids.insert(r.to_id(spec_json["neurons"].back()));
  }
  // Every link joins two nodes (networkx writes them all); an id missing from
  // /nodes is an error here, named by its place in /links.
  const NeuronId::Kind kind = nodes.empty() ? NeuronId::Kind::Integer : r.to_id(spec_json["neurons"].front()).kind();
  spec_json["edges"] = json::array();
  for (size_t i = 0; i < links.size(); ++i) {
    const std::string path = fmt::format("/links/{}", i);
    const json& from = r.check_id(r.need(links[i], "source", path), path + "/source");
    const json& to = r.check_id(r.need(links[i], "target", path), path + "/target");
    raw_edges.emplace_back(r.to_id(from), r.to_id(to));
    for (const auto& [id, end] :
         {std::pair{raw_edges.back().first, "/source"}, std::pair{raw_edges.back().second, "/target"}})
      if (!node_ids.count(id))
        fail("{}: {}{}: {}", r.source, path, end,
             unlisted_endpoint(raw_edges.back(), id, nodes.empty() ? id.kind() : kind, "/nodes"));
    spec_json["edges"].push_back({from, to});
  }
  return GraphSpec::from_json(spec_json, r.source, "/graph");
}

// A node's "role", "dropout_p" and "level", which the export writes for
// networkx users, follow from /graph (its inputs, outputs and options) and
// the links: one that says otherwise was edited by hand and would be
// silently ignored, so it is refused. Absent ones are fine.
void check_derived_attributes(const NodeLinkReader& r, const NeuralNetworkImpl& network, int64_t d, const json& node,
                              size_t i) {
  const Topology& topo = network.topology();
  const NeuronId& id = topo.label(d);
  if (node.contains("role")) {
    const json& role = node.at("role");
    if (!role.is_string() || role.get<std::string>() != role_name(topo.role(d)))
      fail("{}: /nodes/{}/role is {}, but neuron {}'s role is {}: roles come from /graph/inputs and /graph/outputs",
           r.source, i, detail::excerpt(role), id, role_name(topo.role(d)));
  }
  if (node.contains("dropout_p")) {
    const json& p = node.at("dropout_p");
    const double expected = network.dropout_p(id);
    if (!p.is_number() || p.get<double>() != expected)
      fail("{}: /nodes/{}/dropout_p is {}, but neuron {}'s dropout_p is {}: dropout comes from /graph/options",
           r.source, i, detail::excerpt(p), id, expected);
  }
  if (node.contains("level")) {
    const json& level = node.at("level");
    if (!level.is_number_integer() || level.get<int64_t>() != topo.level_of(d))
      fail(
          "{}: /nodes/{}/level is {}, but neuron {}'s level is {}: levels follow from the links (after editing them, "
          "leave \"level\" out)",
          r.source, i, detail::excerpt(level), id, topo.level_of(d));
  }
}

// The weights and biases of the links and nodes, and which of them are frozen.
void read_values(const NodeLinkReader& r, NeuralNetwork& network, const GraphSpec& spec, const json& nodes,
                 const json& links, const std::vector<Edge>& raw_edges) {
  const double max_value = find_dtype(network->options().dtype())->max;
  // Values: set through the flat tensors (one write per tensor, not per value).
  const Topology& topo = network->topology();
  auto weights = network->weight_tensor().detach().to(torch::kFloat64).contiguous();
  auto biases = network->bias_tensor().detach().to(torch::kFloat64).contiguous();
  double* w = weights.data_ptr<double>();
  double* b = biases.data_ptr<double>();
  std::vector<char> link_frozen(topo.num_connections(), 0);  // by connection index
  std::vector<Edge> frozen_connections;
  std::vector<NeuronId> frozen_neurons;
  // A repeated link counts once (as a repeated edge does); one that says
  // another weight or frozen flag than the first is refused.
  std::vector<int64_t> link_of(topo.num_connections(), -1);  // by connection index: its first link in the file
  for (size_t i = 0; i < links.size(); ++i) {
    // from_json validated every id; look each up through the spec's own labels.
    const auto& [u, v] = raw_edges[i];
    const int64_t at = topo.connection_index(topo.dense_of(u), topo.dense_of(v));
    const auto& weight = r.need(links[i], "weight", fmt::format("/links/{}", i));
    if (!weight.is_number())
      fail("{}: /links/{}/weight must be a number, got {}", r.source, i, detail::excerpt(weight));
    if (!fits(weight.get<double>(), max_value))
      fail("{}: /links/{}/weight {} does not fit the network's dtype", r.source, i, detail::excerpt(weight));
    const char frozen = r.is_frozen(links[i], fmt::format("/links/{}", i)) ? 1 : 0;
    if (link_of[at] >= 0) {
      if (w[at] != weight.get<double>() || link_frozen[at] != frozen)
        fail("{}: /links/{} gives {} another {} than /links/{}; give each connection once", r.source, i,
             edge_str({u, v}), w[at] != weight.get<double>() ? "weight" : "frozen flag", link_of[at]);
      continue;
    }
    link_of[at] = static_cast<int64_t>(i);
    w[at] = weight.get<double>();
    link_frozen[at] = frozen;
  }
  for (const auto& [u, v] : spec.edges())
    if (link_frozen[topo.connection_index(topo.dense_of(u), topo.dense_of(v))]) frozen_connections.emplace_back(u, v);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const int64_t d = topo.dense_of(spec.neurons()[i]);  // nodes are the spec's neuron list, in order
    check_derived_attributes(r, *network, d, nodes[i], i);
    const bool frozen = r.is_frozen(nodes[i], fmt::format("/nodes/{}", i));
    if (topo.role(d) == Role::Input) {
      if (frozen)
        fail("{}: /nodes/{}/frozen is true, but input neuron {} has no bias to freeze", r.source, i, spec.neurons()[i]);
      if (nodes[i].contains("bias"))
        fail("{}: /nodes/{}/bias is given, but input neuron {} has no bias (it passes its input on)", r.source, i,
             spec.neurons()[i]);
      continue;
    }
    if (frozen) frozen_neurons.push_back(spec.neurons()[i]);
    const auto& bias = r.need(nodes[i], "bias", fmt::format("/nodes/{}", i));
    if (!bias.is_number()) fail("{}: /nodes/{}/bias must be a number, got {}", r.source, i, detail::excerpt(bias));
    if (!fits(bias.get<double>(), max_value))
      fail("{}: /nodes/{}/bias {} does not fit the network's dtype", r.source, i, detail::excerpt(bias));
    b[topo.bias_index(d)] = bias.get<double>();
  }
  torch::NoGradGuard no_grad;
  network->weight_tensor().copy_(weights);
  network->bias_tensor().copy_(biases);
  if (!frozen_connections.empty() || !frozen_neurons.empty()) network->freeze(frozen_connections, frozen_neurons);
}

// /graph/operation_parameters: the techniques' parameters, by their names in the network.
void read_operation_parameters(const NodeLinkReader& r, NeuralNetwork& network, const json* saved) {
  const std::string& source = r.source;
  // Every operation parameter the options call for (by its name in the
  // network): one the file leaves out would start afresh, silently.
  std::set<std::string> wanted, techniques;
  for (size_t k = 0; k < network->operations().size(); ++k)
    for (const auto& p : network->operation_parameters(k).named_parameters()) {
      wanted.insert(network->operations()[k]->name() + "." + p.key());
      techniques.insert(network->operations()[k]->name());
    }
  if (!saved) {
    if (!wanted.empty())
      fail(
          "{}: /graph/options turn on {}, but /graph/operation_parameters, which holds their trained values, is "
          "missing (they would start afresh); export the trained network again",
          source, fmt::join(techniques, ", "));
    return;
  }
  if (!saved->is_object()) fail("{}: /graph/operation_parameters must be an object", source);
  const double max_value = find_dtype(network->options().dtype())->max;
  torch::NoGradGuard no_grad;
  auto named = network->named_parameters();
  // An older file names a parameter's rows level by level: then every part is wanted, in place of the whole.
  const auto level_parts = topo_norm_level_parts(*network);
  std::unordered_map<std::string, torch::Tensor> parts;
  for (const auto& part : level_parts) {
    parts.emplace(part.name, named[part.whole].narrow(0, part.first_row, part.rows));
    if (!saved->contains(part.name)) continue;
    if (saved->contains(part.whole))
      fail("{}: /graph/operation_parameters names both {} and its rows {}; give one or the other", source, part.whole,
           part.name);
    wanted.erase(part.whole);
  }
  for (const auto& part : level_parts)
    if (!wanted.count(part.whole) && !saved->contains(part.whole)) wanted.insert(part.name);
  for (auto it = saved->begin(); it != saved->end(); ++it) {
    const std::string path = "/graph/operation_parameters/" + it.key();
    auto* target = it.key().find('.') == std::string::npos ? nullptr : named.find(it.key());
    if (!target && parts.count(it.key())) target = &parts.at(it.key());
    if (!target) fail("{}: {} names no operation parameter of this network", source, path);
    wanted.erase(it.key());
    try {
      const auto numbers = it.value().at("values").get<std::vector<double>>();
      for (size_t k = 0; k < numbers.size(); ++k)  // as for weights and biases: 1e300 would load as inf in float32
        if (!fits(numbers[k], max_value))
          fail("{}: {}/values/{} {} does not fit the network's dtype", source, path, k, numbers[k]);
      auto values = torch::tensor(numbers, torch::kFloat64);
      const json& shape_json = it.value().at("shape");  // a float such as 1e308 does not convert to int64
      if (!shape_json.is_array() ||
          !std::all_of(shape_json.begin(), shape_json.end(), [](const json& v) { return v.is_number_integer(); }))
        fail("{}: {}/shape must be an array of integers, got {}", source, path, detail::excerpt(shape_json));
      const auto shape = shape_json.get<std::vector<int64_t>>();
      if (!target->sizes().equals(shape) || values.numel() != target->numel())
        fail("{}: {} has shape [{}] but the network needs [{}]", source, path, fmt::join(shape, ", "),
             fmt::join(target->sizes(), ", "));
      target->copy_(values.view(shape));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("{}: {} is malformed: {}", source, path, e.what());
    }
  }
  if (!wanted.empty())
    fail("{}: /graph/operation_parameters has no entry \"{}\", which /graph/options call for", source, *wanted.begin());
}

}  // namespace

NeuralNetwork from_node_link_json(const json& in, const std::string& source) {
  const NodeLinkReader r{source};
  const json& graph = r.need(in, "graph", "");
  const json& nodes = r.need(in, "nodes", "");
  // networkx writes "links" (2.x) or "edges" (3.4+); a file with both would say two things.
  if (in.contains("links") && in.contains("edges") && in.at("links") != in.at("edges"))
    fail("{}: has both /links and /edges, and they differ (networkx writes one or the other); keep one", source);
  const json& links = in.contains("links") ? in.at("links") : r.need(in, "edges", "");
  if (!nodes.is_array()) fail("{}: /nodes must be an array", source);
  if (!links.is_array()) fail("{}: /links must be an array", source);
  std::vector<Edge> raw_edges;
  GraphSpec spec = read_structure(r, graph, nodes, links, raw_edges);
  NeuralNetworkOptions options = graph.contains("options")
                                     ? options_from_json(graph.at("options"), source, "/graph/options")
                                     : NeuralNetworkOptions();
  NeuralNetwork network(spec, options);
  read_values(r, network, spec, nodes, links, raw_edges);
  read_operation_parameters(r, network,
                            graph.contains("operation_parameters") ? &graph.at("operation_parameters") : nullptr);
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
      << "  <key id=\"frozen\" for=\"node\" attr.name=\"frozen\" attr.type=\"boolean\"/>\n"
      << "  <key id=\"weight\" for=\"edge\" attr.name=\"weight\" attr.type=\"double\"/>\n"
      << "  <key id=\"frozen_edge\" for=\"edge\" attr.name=\"frozen\" attr.type=\"boolean\"/>\n"
      << "  <graph id=\"connex\" edgedefault=\"directed\">\n";
  for (const auto& n : g.neurons) {
    out << "    <node id=\"" << xml_escape(n.id.plain()) << "\"><data key=\"role\">" << role_name(n.role) << "</data>";
    if (n.bias) out << "<data key=\"bias\">" << number(*n.bias) << "</data>";
    out << "<data key=\"dropout_p\">" << number(n.dropout_p) << "</data><data key=\"level\">" << n.level << "</data>";
    if (n.frozen) out << "<data key=\"frozen\">true</data>";
    out << "</node>\n";
  }
  for (const auto& c : g.connections) {
    out << "    <edge source=\"" << xml_escape(c.from.plain()) << "\" target=\"" << xml_escape(c.to.plain())
        << "\"><data key=\"weight\">" << number(c.weight) << "</data>";
    if (c.frozen) out << "<data key=\"frozen_edge\">true</data>";
    out << "</edge>\n";
  }
  out << "  </graph>\n</graphml>\n";
  return out.str();
}

namespace {

// "1,117": counts in messages and drawings.
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

// "size=..., dpi=..." graph attributes that bound a rendered drawing, or nothing.
std::string bound_attributes(const DotOptions& options) {
  std::string attrs;
  if (options.max_inches > 0) attrs += fmt::format("  size=\"{0},{0}\";\n", options.max_inches);
  if (options.dpi > 0) attrs += fmt::format("  dpi={};\n", options.dpi);
  return attrs;
}

std::string full_dot(const NeuralNetwork& network, const std::string& graph_attributes) {
  const WeightedGraph g = network->weighted_graph();
  double max_abs = 1e-12;
  for (const auto& c : g.connections) max_abs = std::max(max_abs, std::abs(c.weight));
  std::ostringstream out;
  out << "digraph connex {\n  rankdir=LR;\n" << graph_attributes << "  node [fontname=\"Helvetica\", fontsize=10];\n";
  for (const auto& n : g.neurons) {
    const char* shape = n.role == Role::Input ? "box" : n.role == Role::Output ? "doublecircle" : "circle";
    const char* fill = n.role == Role::Input ? "#e0f0ff" : n.role == Role::Output ? "#ffe8cc" : "#f4f4f4";
    std::string label = n.id.plain();
    if (n.bias) label += fmt::format("\nb={:.3g}", *n.bias);
    out << "  " << dot_quote(n.id.plain()) << " [shape=" << shape
        << ", style=" << (n.frozen ? "\"filled,dashed\"" : "filled") << ", fillcolor=\"" << fill
        << "\", label=" << dot_quote(label) << "];\n";
  }
  // Inputs on the left, outputs on the right, each top to bottom in the
  // user's order: an invisible chain fixes the order within the rank, which
  // dot would otherwise choose to shorten edges.
  const auto rank = [&](const char* side, const std::vector<NeuronId>& ids) {
    out << "  { rank=" << side << ";";
    for (const auto& id : ids) out << " " << dot_quote(id.plain()) << ";";
    if (ids.size() > 1) {
      out << " ";
      for (size_t k = 0; k < ids.size(); ++k) out << (k ? " -> " : "") << dot_quote(ids[k].plain());
      out << " [style=invis];";
    }
    out << " }\n";
  };
  rank("source", g.inputs);
  rank("sink", g.outputs);
  for (const auto& c : g.connections) {
    const double strength = std::abs(c.weight) / max_abs;
    out << "  " << dot_quote(c.from.plain()) << " -> " << dot_quote(c.to.plain())
        << " [penwidth=" << fmt::format("{:.2f}", 0.3 + 3.7 * strength) << ", color=\""
        << (c.weight >= 0 ? "#1f5fbf" : "#c0392b") << "\", tooltip=\"" << fmt::format("{:.6g}", c.weight) << "\""
        << (c.frozen ? ", style=dashed" : "") << "];\n";
  }
  out << "}\n";
  return out.str();
}

struct Summary {
  std::string dot;
  int64_t levels = 0, per_box = 1;
};

// The neurons and inner connections of one box: a run of `per_box` consecutive levels.
struct SummaryBox {
  int64_t inputs = 0, hidden = 0, outputs = 0, frozen_biases = 0, inner = 0, inner_frozen = 0;
};

// The connections from one box to another.
struct SummaryArrow {
  int64_t count = 0, frozen = 0;
  double sum = 0, sum_abs = 0;
};

struct SummaryCounts {
  int64_t boxes = 0, per_box = 1;
  std::vector<SummaryBox> box;
  std::vector<SummaryArrow> arrow;  // [from * boxes + to]
  double max_mean_abs = 1e-12;
};

torch::Tensor cpu_float64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64).contiguous(); }

int64_t box_of(const Topology& topo, int64_t dense, int64_t per_box) { return topo.level_of(dense) / per_box; }

void count_neurons(const Topology& topo, const double* bias_mask, SummaryCounts& counts) {
  for (int64_t d = 0; d < topo.num_neurons(); ++d) {
    SummaryBox& b = counts.box[box_of(topo, d, counts.per_box)];
    switch (topo.role(d)) {
      case Role::Input:
        ++b.inputs;
        continue;
      case Role::Hidden:
        ++b.hidden;
        break;
      case Role::Output:
        ++b.outputs;
        break;
    }
    b.frozen_biases += bias_mask[topo.bias_index(d)] == 0.0;
  }
}

void count_connections(const Topology& topo, const double* w, const double* weight_mask, SummaryCounts& counts) {
  for (int64_t c = 0; c < topo.num_connections(); ++c) {
    const int64_t from = box_of(topo, topo.conn_source()[c], counts.per_box);
    const int64_t to = box_of(topo, topo.conn_target()[c], counts.per_box);
    const bool frozen = weight_mask[c] == 0.0;
    if (from == to) {
      ++counts.box[from].inner;
      counts.box[from].inner_frozen += frozen;
      continue;
    }
    SummaryArrow& a = counts.arrow[from * counts.boxes + to];
    ++a.count;
    a.frozen += frozen;
    a.sum += w[c];
    a.sum_abs += std::abs(w[c]);
  }
  for (const auto& a : counts.arrow)
    if (a.count) counts.max_mean_abs = std::max(counts.max_mean_abs, a.sum_abs / a.count);
}

// Works on the topology and the flat tensors, not weighted_graph(): a network
// worth summarising may have millions of connections.
SummaryCounts count_boxes_and_arrows(const NeuralNetwork& network, int64_t boxes, int64_t per_box) {
  const Topology& topo = network->topology();
  SummaryCounts counts;
  counts.boxes = boxes;
  counts.per_box = per_box;
  counts.box.resize(boxes);
  counts.arrow.resize(boxes * boxes);
  const auto buffers = network->named_buffers();
  const auto weights = cpu_float64(network->weight_tensor()),
             biases_mask = cpu_float64(*buffers.find("bias_grad_mask"));
  const auto weights_mask = cpu_float64(*buffers.find("weight_grad_mask"));
  count_neurons(topo, biases_mask.data_ptr<double>(), counts);
  count_connections(topo, weights.data_ptr<double>(), weights_mask.data_ptr<double>(), counts);
  return counts;
}

std::string plural(int64_t n, const char* one, const char* many) { return grouped(n) + " " + (n == 1 ? one : many); }

void write_summary_header(std::ostringstream& out, const Topology& topo, int64_t per_box,
                          const std::string& graph_attributes) {
  out << "digraph connex_summary {\n  rankdir=LR;\n"
      << graph_attributes << "  labelloc=t;\n  fontname=\"Helvetica\";\n  label="
      << dot_quote(fmt::format("{}, {}, depth {}: one box per {}", plural(topo.num_neurons(), "neuron", "neurons"),
                               plural(topo.num_connections(), "connection", "connections"), topo.depth(),
                               per_box == 1 ? std::string("level") : grouped(per_box) + " levels"))
      << ";\n  node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=10];\n"
      << "  edge [fontname=\"Helvetica\", fontsize=9];\n";
}

void write_box_nodes(std::ostringstream& out, const SummaryCounts& counts, int64_t levels) {
  for (int64_t k = 0; k < counts.boxes; ++k) {
    const SummaryBox& b = counts.box[k];
    const int64_t first = k * counts.per_box, last = std::min(levels, first + counts.per_box) - 1;
    std::string label = first == last ? fmt::format("level {}", first) : fmt::format("levels {}-{}", first, last);
    if (b.inputs) label += "\n" + plural(b.inputs, "input", "inputs");
    if (b.hidden) label += "\n" + grouped(b.hidden) + " hidden";
    if (b.outputs) label += "\n" + plural(b.outputs, "output", "outputs");
    if (b.frozen_biases) label += "\n" + plural(b.frozen_biases, "frozen bias", "frozen biases");
    if (b.inner) label += "\n" + plural(b.inner, "connection", "connections") + " within";
    if (b.inner_frozen) label += fmt::format(" ({} frozen)", grouped(b.inner_frozen));
    const char* fill = b.hidden == 0 && b.outputs == 0  ? "#e0f0ff"
                       : b.hidden == 0 && b.inputs == 0 ? "#ffe8cc"
                                                        : "#f4f4f4";
    out << "  b" << k << " [fillcolor=\"" << fill << "\", label=" << dot_quote(label) << "];\n";
  }
}

void write_box_arrows(std::ostringstream& out, const SummaryCounts& counts) {
  for (int64_t from = 0; from < counts.boxes; ++from)
    for (int64_t to = 0; to < counts.boxes; ++to) {
      const SummaryArrow& a = counts.arrow[from * counts.boxes + to];
      if (a.count == 0) {
        // Keep the boxes in level order even where no connection joins them.
        if (to == from + 1) out << "  b" << from << " -> b" << to << " [style=invis];\n";
        continue;
      }
      const double mean_abs = a.sum_abs / a.count;
      std::string label = plural(a.count, "connection", "connections") + fmt::format("\nmean |w| {:.3g}", mean_abs);
      if (a.frozen) label += fmt::format("\n{} frozen", grouped(a.frozen));
      out << "  b" << from << " -> b" << to
          << " [penwidth=" << fmt::format("{:.2f}", 0.5 + 3.5 * mean_abs / counts.max_mean_abs) << ", color=\""
          << (a.sum >= 0 ? "#1f5fbf" : "#c0392b") << "\", label=" << dot_quote(label)
          << (a.frozen == a.count ? ", style=dashed" : "") << "];\n";
    }
}

Summary summary_dot(const NeuralNetwork& network, int64_t max_boxes, const std::string& graph_attributes) {
  if (max_boxes < 1) fail("to_summary_dot(): max_boxes must be at least 1, got {}", max_boxes);
  const Topology& topo = network->topology();
  Summary summary;
  summary.levels = topo.depth() + 1;
  summary.per_box = (summary.levels + max_boxes - 1) / max_boxes;
  const int64_t boxes = (summary.levels + summary.per_box - 1) / summary.per_box;
  const SummaryCounts counts = count_boxes_and_arrows(network, boxes, summary.per_box);
  std::ostringstream out;
  write_summary_header(out, topo, summary.per_box, graph_attributes);
  write_box_nodes(out, counts, summary.levels);
  write_box_arrows(out, counts);
  out << "}\n";
  summary.dot = out.str();
  return summary;
}

}  // namespace

std::string to_dot(const NeuralNetwork& network) { return full_dot(network, ""); }

std::string to_summary_dot(const NeuralNetwork& network, int64_t max_boxes) {
  return summary_dot(network, max_boxes, "").dot;
}

DotDrawing draw_dot(const NeuralNetwork& network, const DotOptions& options) {
  if (!(options.max_inches >= 0) || options.dpi < 0)
    fail("draw_dot(): max_inches and dpi must not be negative, got {} and {}", options.max_inches, options.dpi);
  DotDrawing drawing;
  const int64_t neurons = network->num_neurons(), connections = network->num_connections();
  drawing.summary = neurons > options.max_neurons || connections > options.max_connections;
  if (!drawing.summary) {
    drawing.dot = full_dot(network, bound_attributes(options));
    drawing.description = fmt::format("all {} neurons, {} connections", grouped(neurons), grouped(connections));
    return drawing;
  }
  const Summary summary = summary_dot(network, 40, bound_attributes(options));
  drawing.dot = summary.dot;
  drawing.description = fmt::format("summary of {} neurons, {} connections in {} levels", grouped(neurons),
                                    grouped(connections), grouped(summary.levels));
  if (summary.per_box > 1) drawing.description += fmt::format(" ({} per box)", grouped(summary.per_box));
  drawing.reason = fmt::format("full drawings above {} neurons or {} connections are unreadable",
                               grouped(options.max_neurons), grouped(options.max_connections));
  return drawing;
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
  const json in = detail::parse_json(read_file(path, "import_graph_json()"), "import_graph_json(): " + path);
  return from_node_link_json(in, path);
}

}  // namespace connex
