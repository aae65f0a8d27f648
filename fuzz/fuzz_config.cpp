// Fuzz target: a JSON network config (connex/config.h).
//
// bytes -> nlohmann::json::parse (syntax errors are skipped) -> size caps
// (fuzz_common.h: at most 256 neurons / 4096 connections, 48 / 512 with an
// attention technique) -> network_from_config -> when a network results:
// forward on a small batch (shape, dtype, finiteness where the values are
// provably bounded), a training forward + backward, and the config written
// back by network_config must rebuild a network with the same structure and
// bit-identical parameters (same seed).
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace connex_fuzz;
  json config;
  if (!parse_json(data, size, config)) return 0;
  if (config.is_object() && config.contains("graph")) {
    static const json null_options;
    if (!within_caps(config.at("graph"), config.contains("options") ? config.at("options") : null_options)) return 0;
  }
  connex::NeuralNetwork net{nullptr};
  if (!guarded("network_from_config", [&] { net = connex::network_from_config(config, "fuzz-config"); })) return 0;
  FUZZ_CHECK(!net.is_empty(), "network_from_config returned an empty holder");

  guarded("forward", [&] { check_forward(net, "network_from_config"); });
  guarded("backward", [&] { check_backward(net, "network_from_config"); });

  // Round trip: what connex writes down, connex reads back as the same network.
  json written;
  FUZZ_CHECK(guarded("network_config", [&] { written = connex::network_config(net); }),
             "network_config() rejected a network that network_from_config built");
  connex::NeuralNetwork again{nullptr};
  FUZZ_CHECK(guarded("network_from_config(written)", [&] { again = connex::network_from_config(written, "written"); }),
             "the written config does not load back: %s", written.dump().c_str());
  FUZZ_CHECK(again->spec().to_json() == net->spec().to_json(), "round trip changed the graph");
  auto a = net->named_parameters(), b = again->named_parameters();
  FUZZ_CHECK(a.size() == b.size(), "round trip changed the number of parameter tensors");
  for (const auto& p : a) {
    const auto* q = b.find(p.key());
    FUZZ_CHECK(q && q->sizes().equals(p.value().sizes()) && torch::equal(*q, p.value()),
               "round trip changed parameter %s (same seed must give the same values)", p.key().c_str());
  }
  return 0;
}
