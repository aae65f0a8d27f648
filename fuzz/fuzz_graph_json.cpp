// Fuzz target: node-link weighted-graph JSON import (connex/graph_export.h).
//
// bytes -> nlohmann::json::parse (syntax errors are skipped) -> size caps on
// /nodes and /links (fuzz_common.h) -> from_node_link_json -> when a network
// results: every parameter finite, forward (shape, dtype, finiteness where provably bounded), a
// training forward + backward, and export -> import must give back the same
// graph and bit-identical weights and biases.
#include <cstring>

#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace connex_fuzz;
  json in;
  if (!parse_json(data, size, in)) return 0;
  if (in.is_object()) {
    // Count nodes and links as a GraphSpec's neurons and edges.
    json as_spec = json::object();
    if (in.contains("nodes") && in.at("nodes").is_array()) as_spec["neurons"] = in.at("nodes");
    if (in.contains("links") && in.at("links").is_array())
      as_spec["edges"] = in.at("links");
    else if (in.contains("edges") && in.at("edges").is_array())
      as_spec["edges"] = in.at("edges");
    static const json null_options;
    const json* options = &null_options;
    if (in.contains("graph") && in.at("graph").is_object() && in.at("graph").contains("options"))
      options = &in.at("graph").at("options");
    if (!within_caps(as_spec, *options)) return 0;
  }
  connex::NeuralNetwork net{nullptr};
  if (!guarded("from_node_link_json", [&] { net = connex::from_node_link_json(in, "fuzz-graph"); })) return 0;
  FUZZ_CHECK(!net.is_empty(), "from_node_link_json returned an empty holder");
  // The importer rejects values that do not fit the dtype: every parameter is finite.
  for (const auto& p : net->named_parameters())
    FUZZ_CHECK(p.value().numel() == 0 || torch::isfinite(p.value()).all().item<bool>(),
               "imported parameter %s holds a non-finite value", p.key().c_str());

  // Export and import again: the same structure and the same values, bit for bit.
  json out;
  FUZZ_CHECK(guarded("to_node_link_json", [&] { out = connex::to_node_link_json(net); }),
             "to_node_link_json() rejected an imported network");
  connex::NeuralNetwork again{nullptr};
  FUZZ_CHECK(guarded("from_node_link_json(exported)", [&] { again = connex::from_node_link_json(out, "exported"); }),
             "the exported graph does not import back");
  FUZZ_CHECK(again->spec().to_json() == net->spec().to_json(), "export/import changed the graph");
  auto a = net->named_parameters(), b = again->named_parameters();
  FUZZ_CHECK(a.size() == b.size(), "export/import changed the number of parameter tensors");
  for (const auto& p : a) {
    const auto* q = b.find(p.key());
    FUZZ_CHECK(q && q->sizes().equals(p.value().sizes()), "export/import lost parameter %s", p.key().c_str());
    // Values travel as JSON doubles: exact for every floating dtype.
    auto x = p.value().detach().to(torch::kFloat64).contiguous(), y = q->detach().to(torch::kFloat64).contiguous();
    FUZZ_CHECK(
        x.numel() == 0 || std::memcmp(x.data_ptr<double>(), y.data_ptr<double>(), x.numel() * sizeof(double)) == 0,
        "export/import changed values of %s", p.key().c_str());
  }

  guarded("forward", [&] { check_forward(net, "from_node_link_json"); });
  guarded("backward", [&] { check_backward(net, "from_node_link_json"); });
  return 0;
}
