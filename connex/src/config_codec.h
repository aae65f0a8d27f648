#pragma once
// The config's parts as JSON, for the checkpoint, the graph exporters and
// edit scripts. Internal: users read and write whole configs (connex/config.h).
#include <string>

#include <nlohmann/json.hpp>

#include "connex/graph_spec.h"
#include "connex/options.h"

namespace connex {

// A neuron id in JSON: a number for integer ids, a string otherwise. The
// reader names `source` and the JSON `path` when the value is neither.
nlohmann::json id_to_json(const NeuronId& id);
NeuronId id_from_json(const nlohmann::json& value, const std::string& source, const std::string& path);

nlohmann::json options_to_json(const NeuralNetworkOptions& options, const char* context);
// `at`: where the options stand in the file, for messages (a node-link export's are /graph/options).
NeuralNetworkOptions options_from_json(const nlohmann::json& json, const std::string& source,
                                       const std::string& at = "/options");
GraphSpec graph_from_config(const nlohmann::json& graph, const std::string& source);
// dropout_p as a number (every hidden neuron) or {"hidden": p, "neurons": [[id, p], ...]}.
nlohmann::json dropout_to_json(const DropoutSpec& dropout);
DropoutSpec dropout_from_json(const nlohmann::json& json, const std::string& source, const std::string& path);

}  // namespace connex
