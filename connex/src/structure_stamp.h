#pragma once
// torch::save(module) and torch::load(module) match tensors by name alone
// (torch::load takes each archived tensor, resized, in place of the
// module's): an archive of another graph would load into this one, each
// weight onto another connection, and a HAM's graph synapse would take the
// other graph's wiring under its own labels. The modules whose tensors a
// structure gives meaning to (NeuralNetwork, ham::HAM) write that
// structure's stamp beside them and refuse an archive whose stamp differs,
// before any of their tensors is read (a parent module reads its own
// tensors, and its earlier children's, first). Internal.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "connex/error.h"
#include "connex/neuron_id.h"
#include "file_io.h"

namespace connex {

// FNV-1a over values fed one by one, each with its length or kind, so that
// no two sequences run together.
class Fingerprint {
 public:
  void add(int64_t value) { hash_ = fnv1a64(&value, sizeof value, hash_); }
  void add(const std::string& text) {
    add(static_cast<int64_t>(text.size()));
    hash_ = fnv1a64(text.data(), text.size(), hash_);
  }
  void add(const NeuronId& id) {
    add(id.is_integer() ? 0 : 1);
    if (id.is_integer())
      add(id.as_integer());
    else
      add(id.as_string());
  }
  // Each parameter's name and shape, by name (what torch::load fills; the
  // module's order follows the order its parts were added in).
  void add_parameters(const torch::nn::Module& module) {
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& p : module.named_parameters()) shapes.emplace(p.key(), p.value().sizes().vec());
    for (const auto& [name, shape] : shapes) {
      add(name);
      add(static_cast<int64_t>(shape.size()));
      for (const int64_t size : shape) add(size);
    }
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = fnv1a64(nullptr, 0);
};

// The archive's key for the stamp.
inline constexpr const char* kStructureStampKey = "connex_structure";

// Module::save of `module`'s own tensors and children, then the stamp.
inline void save_with_stamp(const torch::nn::Module& module, torch::serialize::OutputArchive& archive,
                            const std::string& stamp) {
  module.torch::nn::Module::save(archive);
  archive.write(kStructureStampKey, c10::IValue(stamp));
}

// Refuses an archive stamped with another structure than `here`, this
// module's, before Module::load reads any of its tensors; `context`
// ("NeuralNetwork::load()") starts the message, `what` names the structure
// and `remedy` ends it. An archive without a stamp (written before connex
// wrote one) loads as torch always loaded it.
inline void load_with_stamp(torch::nn::Module& module, torch::serialize::InputArchive& archive, const std::string& here,
                            const char* context, const char* what, const char* remedy) {
  c10::IValue saved;
  if (archive.try_read(kStructureStampKey, saved) && !(saved.isString() && saved.toStringRef() == here))
    fail(
        "{}: the archive holds the tensors of another {} ({}) than this one ({}); torch::load fills tensors by name "
        "alone: {}",
        context, what, saved.isString() ? saved.toStringRef() : std::string("an unreadable stamp"), here, remedy);
  module.torch::nn::Module::load(archive);
}

}  // namespace connex
