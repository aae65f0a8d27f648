#pragma once
// HAM checkpoints: one file holding a HAM's structure (layers, Lagrangians,
// synapses, connections, neuron and connection labels, as JSON) and all its
// parameters. The layout is that of network checkpoints (connex/checkpoint.h)
// under the magic "CONNEXHM": checksummed, every declared size checked before
// anything is built, written atomically, and every failure to read raises
// connex::Error naming the file.
#include <string>

#include <nlohmann/json.hpp>

#include "connex/ham/ham.h"

namespace connex::ham {

constexpr uint32_t kCheckpointVersion = 1;

// Throws (before touching `path`) when a Lagrangian or synapse cannot be
// written down (a callable, a custom module).
void save(const HAM& ham, const std::string& path);
HAM load(const std::string& path);
// The same from the file's bytes; `source` names them in messages.
HAM parse_checkpoint(const std::string& bytes, const std::string& source = "checkpoint");
// The structure alone, as the checkpoint's header holds it.
nlohmann::json structure_json(const HAM& ham);
HAM from_structure_json(const nlohmann::json& structure, const std::string& where);

}  // namespace connex::ham
