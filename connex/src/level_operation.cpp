#include "connex/level_operation.h"

#include <torch/torch.h>

#include "connex/error.h"

namespace connex {

OperationModuleImpl::OperationModuleImpl(const OperationParameters& declared) {
  for (const auto& [name, p] : declared) {
    if (name.find('.') != std::string::npos) fail("LevelOperation: parameter name \"{}\" contains a dot", name);
    if (!p.value.defined()) fail("LevelOperation: parameter \"{}\" is an undefined tensor", name);
    // A key names each index of its dimension: edits carry entries by it.
    if (static_cast<int64_t>(p.dim_keys.size()) > p.value.dim())
      fail("LevelOperation: parameter \"{}\" has {} dimension keys for {} dimensions", name, p.dim_keys.size(),
           p.value.dim());
    for (size_t k = 0; k < p.dim_keys.size(); ++k) {
      const auto& key = p.dim_keys[k];
      if (!key) continue;
      if (static_cast<int64_t>(key->size()) != p.value.size(static_cast<int64_t>(k)))
        fail("LevelOperation: parameter \"{}\"'s dimension {} has {} labels for {} entries", name, k, key->size(),
             p.value.size(static_cast<int64_t>(k)));
      if (!key->runs.empty() && key->runs.size() != key->labels.size())
        fail("LevelOperation: parameter \"{}\"'s dimension {} has {} labels but {} runs", name, k, key->labels.size(),
             key->runs.size());
    }
    keys_[name] = p.dim_keys;
    shapes_[name] = {p.value.sizes().vec(), p.value.scalar_type()};
  }
  reset();
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : declared) tensors_.at(name).copy_(p.value);
}

void OperationModuleImpl::reset() {
  tensors_.clear();
  for (const auto& [name, shape] : shapes_)
    tensors_[name] = register_parameter(name, torch::zeros(shape.first, torch::TensorOptions().dtype(shape.second)));
}

void OperationModuleImpl::pretty_print(std::ostream& stream) const {
  int64_t values = 0;
  for (const auto& entry : tensors_) values += entry.second.numel();
  stream << "connex::OperationModule(tensors=" << tensors_.size() << ", values=" << values << ")";
}

std::string ScriptWriter::buffer(const std::string& name, const torch::Tensor& value) {
  buffers_.emplace_back(prefix_ + name, value.detach().to(torch::kCPU).clone());
  return "self." + prefix_ + name;
}

const torch::Tensor& OperationModuleImpl::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    // Name what the operation did declare, so a misspelt name or a wrong
    // level prefix shows at once.
    std::string held;
    int listed = 0;
    for (const auto& entry : tensors_) {
      if (listed == 6) {
        held += fmt::format(", … ({} in all)", tensors_.size());
        break;
      }
      held += (listed++ ? ", \"" : "\"") + entry.first + "\"";
    }
    fail("LevelOperation: no parameter \"{}\"; the operation declared {}", name,
         held.empty() ? std::string("none") : held);
  }
  return it->second;
}

namespace {

struct RunLabelHash {
  size_t operator()(const std::pair<int64_t, NeuronId>& key) const {
    return key.second.hash() * 1000003u ^ std::hash<int64_t>()(key.first);
  }
};

}  // namespace

int64_t copy_keyed(const torch::Tensor& from, const DimKeys& from_keys, torch::Tensor& to, const DimKeys& to_keys) {
  torch::NoGradGuard no_grad;
  if (from_keys.size() != to_keys.size() || from.dim() != to.dim()) return -1;
  // Most edits leave most levels alone: identical keys (and sizes) are a plain
  // copy, one op instead of a dozen index builds and scatters.
  if (from_keys == to_keys && from.sizes().equals(to.sizes())) {
    to.copy_(from);
    return to.numel();
  }
  // For each dimension, the new indices that survive and their old indices.
  std::vector<torch::Tensor> new_index, old_index;
  for (size_t k = 0; k < to_keys.size(); ++k) {
    std::vector<int64_t> ni, oi;
    if (to_keys[k] && from_keys[k]) {
      const DimKey &from_key = *from_keys[k], &to_key = *to_keys[k];
      std::unordered_map<std::pair<int64_t, NeuronId>, int64_t, RunLabelHash> where;
      for (size_t i = 0; i < from_key.size(); ++i)
        where.emplace(std::make_pair(from_key.run(i), from_key.labels[i]), static_cast<int64_t>(i));
      for (size_t i = 0; i < to_key.size(); ++i) {
        auto it = where.find({to_key.run(i), to_key.labels[i]});
        if (it != where.end()) ni.push_back(static_cast<int64_t>(i)), oi.push_back(it->second);
      }
    } else if (!to_keys[k] && !from_keys[k] && from.size(static_cast<int64_t>(k)) == to.size(static_cast<int64_t>(k))) {
      for (int64_t i = 0; i < to.size(static_cast<int64_t>(k)); ++i) ni.push_back(i), oi.push_back(i);
    } else {
      return -1;
    }
    new_index.push_back(torch::tensor(ni, torch::kLong).to(to.device()));
    old_index.push_back(torch::tensor(oi, torch::kLong).to(from.device()));
  }
  // Select the surviving block from the old tensor, then scatter it into the new one.
  torch::Tensor block = from;
  for (size_t k = 0; k < old_index.size(); ++k) block = block.index_select(static_cast<int64_t>(k), old_index[k]);
  block = block.to(to.device(), to.scalar_type());
  if (new_index.empty()) {
    to.copy_(block);
  } else {
    c10::List<c10::optional<torch::Tensor>> grid;
    for (const auto& m : torch::meshgrid(new_index, "ij")) grid.push_back(m);
    to.index_put_(grid, block);
  }
  return block.numel();
}

int64_t transfer_operation_parameters(const OperationModuleImpl& from, OperationModuleImpl& to) {
  int64_t copied = 0;
  for (const auto& [name, new_keys] : to.keys()) {
    auto old_it = from.keys().find(name);
    if (old_it == from.keys().end()) continue;
    torch::Tensor target = to.get(name);
    copied += std::max<int64_t>(0, copy_keyed(from.get(name), old_it->second, target, new_keys));
  }
  return copied;
}

}  // namespace connex
