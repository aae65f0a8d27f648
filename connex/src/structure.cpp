#include "connex/structure.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <torch/torch.h>

#include "connex/error.h"
#include "enum_names.h"
#include "file_io.h"
#include "selection.h"
#include "trace_check.h"

namespace connex {

namespace {
// What a PruneScope out of range is told it should be, as C++ spells the values.
constexpr const char* kScopeExpected = "a PruneScope (Global, PerNeuron or PerLevel)";
}  // namespace

const char* prune_scope_name(PruneScope scope) {
  switch (scope) {
    case PruneScope::Global:
      return "global";
    case PruneScope::PerNeuron:
      return "neuron";
    case PruneScope::PerLevel:
      return "level";
  }
  fail("prune_scope_name(): expected {}, got {}", kScopeExpected, static_cast<int>(scope));
}

PruneScope prune_scope_from_name(const std::string& name) {
  if (auto scope = enum_from_name(name, kPruneScopes, prune_scope_name)) return *scope;
  fail("prune_scope_from_name(): expected {}, got \"{}\"", quoted_names(kPruneScopes, prune_scope_name),
       printable(name));
}

GraphQueries::GraphQueries(const NeuralNetwork& network) : topology_(network->topology_ptr()) {
  const Topology& t = *topology_;
  out_offsets_.assign(t.num_neurons() + 1, 0);
  for (int64_t source : t.conn_source()) ++out_offsets_[source + 1];
  std::partial_sum(out_offsets_.begin(), out_offsets_.end(), out_offsets_.begin());
  out_targets_.resize(t.num_connections());
  std::vector<int64_t> fill(out_offsets_.begin(), out_offsets_.end() - 1);
  for (int64_t c = 0; c < t.num_connections(); ++c) out_targets_[fill[t.conn_source()[c]]++] = t.conn_target()[c];
}

int64_t GraphQueries::dense(const NeuronId& id, const char* query) const {
  const int64_t d = topology_->dense_of(id);
  if (d < 0) fail("GraphQueries::{}(): neuron {} is not in the network", query, id);
  return d;
}

std::vector<NeuronId> GraphQueries::successors(const NeuronId& id) const {
  const int64_t d = dense(id, "successors");
  std::vector<NeuronId> out;
  for (int64_t k = out_offsets_[d]; k < out_offsets_[d + 1]; ++k) out.push_back(topology_->label(out_targets_[k]));
  return out;
}

std::vector<NeuronId> GraphQueries::predecessors(const NeuronId& id) const {
  const int64_t d = dense(id, "predecessors");
  const Topology& t = *topology_;
  std::vector<NeuronId> out;
  for (int64_t c = t.in_offsets()[d]; c < t.in_offsets()[d + 1]; ++c) out.push_back(t.label(t.conn_source()[c]));
  return out;
}

int64_t GraphQueries::in_degree(const NeuronId& id) const {
  const int64_t d = dense(id, "in_degree");
  return topology_->in_offsets()[d + 1] - topology_->in_offsets()[d];
}

int64_t GraphQueries::out_degree(const NeuronId& id) const {
  const int64_t d = dense(id, "out_degree");
  return out_offsets_[d + 1] - out_offsets_[d];
}

Role GraphQueries::role(const NeuronId& id) const { return topology_->role(dense(id, "role")); }

// ------------------------------------------------------------ dead neurons

namespace {

// Which neurons the inputs reach and which reach an output. Dense ids run
// level by level and every connection goes to a later level, so one pass
// forward and one backward, level by level, settle both.
struct Reach {
  std::vector<uint8_t> reached, reaching;
  // With an operation that reads a level's inputs together: neurons that
  // reach no output but stay, since removing them (and their connections)
  // would take an input away from a level whose neurons do.
  std::vector<uint8_t> holding;
};

// `whole_levels`: an operation reads each level's inputs together
// (LevelOperation::reads_whole_level(): topo norm, the attentions), so a
// neuron changes every neuron of each level it is an input of.
Reach reach(const Topology& t, bool whole_levels) {
  const int64_t n = t.num_neurons();
  Reach r{std::vector<uint8_t>(n, 0), std::vector<uint8_t>(n, 0), std::vector<uint8_t>(n, 0)};
  for (int64_t d = 0; d < t.num_inputs(); ++d) r.reached[d] = 1;
  for (int64_t d = t.num_inputs(); d < n; ++d)
    for (int64_t c = t.in_offsets()[d]; c < t.in_offsets()[d + 1] && !r.reached[d]; ++c)
      r.reached[d] = r.reached[t.conn_source()[c]];
  std::vector<int64_t> readers(whole_levels ? n : 0, 0);  // per input of a level: its neurons reaching an output
  const auto& in = t.in_offsets();
  const auto& source = t.conn_source();
  for (size_t l = t.levels().size(); l-- > 0;) {
    const Level& level = t.levels()[l];
    bool live = false;
    for (int64_t d = level.begin; d < level.end; ++d) {
      if (t.role(d) == Role::Output) r.reaching[d] = 1;
      if (!r.reaching[d]) continue;
      live = true;
      for (int64_t c = in[d]; c < in[d + 1]; ++c) r.reaching[source[c]] = 1;
    }
    if (!whole_levels || !live) continue;
    for (const int64_t s : level.sources) r.reaching[s] = 1;
    for (int64_t d = level.begin; d < level.end; ++d)
      if (r.reaching[d])
        for (int64_t c = in[d]; c < in[d + 1]; ++c) ++readers[source[c]];
    for (int64_t d = level.begin; d < level.end; ++d)
      if (!r.reaching[d])
        for (int64_t c = in[d]; c < in[d + 1] && !r.holding[d]; ++c) r.holding[d] = readers[source[c]] == 0;
    for (const int64_t s : level.sources) readers[s] = 0;
  }
  return r;
}

bool reads_whole_levels(const NeuralNetwork& network) {
  const auto& operations = network->operations();
  return std::any_of(operations.begin(), operations.end(), [](const auto& op) { return op->reads_whole_level(); });
}

// A neuron no input reaches has a constant value; it is dead when that
// constant can be folded into its successors' biases, which per-level
// operations (techniques) forbid.
bool is_dead(const Topology& t, const Reach& r, int64_t d, bool foldable) {
  return t.role(d) == Role::Hidden && ((!r.reaching[d] && !r.holding[d]) || (!r.reached[d] && foldable));
}

// The eval-mode value of every neuron no input reaches (0 elsewhere), in double.
std::vector<double> constant_values(const NeuralNetwork& network, const Reach& r) {
  const Topology& t = network->topology();
  const auto w = network->weight_tensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const auto b = network->bias_tensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double *weight = w.data_ptr<double>(), *bias = b.data_ptr<double>();
  const auto dtype = network->weight_tensor().scalar_type();
  const auto device = network->weight_tensor().device();
  std::vector<double> value(t.num_neurons(), 0.0);
  torch::NoGradGuard no_grad;
  for (int64_t d = t.num_inputs(); d < t.num_neurons(); ++d) {
    if (r.reached[d] || t.role(d) != Role::Hidden) continue;
    double z = bias[t.bias_index(d)];
    for (int64_t c = t.in_offsets()[d]; c < t.in_offsets()[d + 1]; ++c) z += weight[c] * value[t.conn_source()[c]];
    // On the weights' device: a module activation's parameters moved there with the network.
    value[d] = network->options()
                   .hidden_activation()(torch::full({1}, z, torch::TensorOptions().dtype(dtype).device(device)))
                   .item<double>();
  }
  return value;
}

}  // namespace

namespace {

// The dead neurons' labels, in spec order.
std::vector<NeuronId> dead_labels(const Topology& t, const Reach& r, bool foldable) {
  std::vector<NeuronId> dead;
  for (int64_t i = 0; i < static_cast<int64_t>(t.spec().num_neurons()); ++i) {
    const int64_t d = t.dense_at(i);
    if (is_dead(t, r, d, foldable)) dead.push_back(t.label(d));
  }
  return dead;
}

}  // namespace

std::vector<NeuronId> dead_neurons(const NeuralNetwork& network) {
  const Topology& t = network->topology();
  return dead_labels(t, reach(t, reads_whole_levels(network)), network->operations().empty());
}

std::vector<NeuronId> constant_outputs(const NeuralNetwork& network) {
  const Topology& t = network->topology();
  const Reach r = reach(t, false);
  std::vector<NeuronId> constant;
  for (int64_t d : t.output_ids())
    if (!r.reached[d]) constant.push_back(t.label(d));
  return constant;
}

EditResult remove_dead_neurons(const NeuralNetwork& network) {
  const Topology& t = network->topology();
  const Reach r = reach(t, reads_whole_levels(network));
  const bool foldable = network->operations().empty();
  EditResult result = edit(network).remove_neurons(dead_labels(t, r, foldable)).build();
  // What the removed constant neurons fed into each surviving neuron moves into its bias.
  const auto value = constant_values(network, r);
  const auto w = network->weight_tensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* weight = w.data_ptr<double>();
  for (int64_t d = t.num_inputs(); d < t.num_neurons(); ++d) {
    if (is_dead(t, r, d, foldable)) continue;
    double fed = 0;
    for (int64_t c = t.in_offsets()[d]; c < t.in_offsets()[d + 1]; ++c) {
      const int64_t source = t.conn_source()[c];
      if (is_dead(t, r, source, foldable)) fed += weight[c] * value[source];
    }
    if (fed != 0) result.network->set_bias(t.label(d), result.network->bias(t.label(d)) + fed);
  }
  return result;
}

// ----------------------------------------------------------------- pruning

namespace {

void check_prune_options(const PruneOptions& options) {
  if (options.fraction().has_value() == options.threshold().has_value())
    fail("prune(): expected exactly one of fraction and threshold, got {}", options.fraction() ? "both" : "neither");
  if (options.fraction() && !(*options.fraction() >= 0 && *options.fraction() <= 1))
    fail("prune(): expected a fraction in [0, 1], got {}", *options.fraction());
  if (options.threshold() && !(*options.threshold() >= 0 && std::isfinite(*options.threshold())))
    fail("prune(): expected a finite threshold >= 0, got {}", *options.threshold());
  if (options.keep_min() < 0) fail("prune(): expected keep_min >= 0, got {}", options.keep_min());
  const auto scope = options.scope();
  if (std::find(std::begin(kPruneScopes), std::end(kPruneScopes), scope) == std::end(kPruneScopes))
    fail("prune(): expected {}, got {}", kScopeExpected, static_cast<int>(scope));
  // A threshold removes every candidate below it, in whatever group: a scope
  // with it would change nothing, silently.
  if (options.threshold() && options.scope() != PruneScope::Global)
    fail(
        "prune(): a scope other than Global applies to a fraction (each group's weakest share), got {} with a "
        "threshold, which removes every connection below it in any scope",
        options.scope() == PruneScope::PerNeuron ? "PerNeuron" : "PerLevel");
}

// |w|, or the user's scores: one finite number >= 0 per connection.
torch::Tensor strength(const NeuralNetwork& network, const PruneOptions& options) {
  const auto& scores = options.scores();
  if (!scores.defined()) return network->weight_tensor().detach().abs().to(torch::kCPU, torch::kFloat64).contiguous();
  if (!torch::isFloatingType(scores.scalar_type()))
    fail("prune(): expected floating-point scores, got {} (integer scores rank in steps; convert them)",
         c10::toString(scores.scalar_type()));
  if (scores.dim() != 1 || scores.size(0) != network->num_connections())
    fail("prune(): expected scores of shape [{}] (one per connection), got {}", network->num_connections(),
         c10::str(scores.sizes()));
  auto s = scores.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (!torch::isfinite(s).all().item<bool>() || (s < 0).any().item<bool>())
    fail("prune(): expected finite scores >= 0, got {}", (s < 0).any().item<bool>() ? "a negative one" : "NaN or inf");
  return s;
}

// The connections prune() removes, as indices into the weights: weakest
// first when `ordered` (else in any order, saving a sort where no floor
// needs the order).
std::vector<int64_t> connections_to_prune_at(const NeuralNetwork& network, const PruneOptions& options, bool ordered) {
  check_prune_options(options);
  const Topology& t = network->topology();
  const auto s = strength(network, options);
  const double* score = s.data_ptr<double>();
  // Weakest first, ties in connection order: a strict order, so a selection
  // gives what a stable sort would. A NaN |w| (a diverged weight) ranks as
  // the strongest, never before a number. Each candidate carries its key,
  // so the selection and the sort compare neighbours in memory rather than
  // look up scores all over the weights.
  struct Candidate {
    double key;
    int64_t c;
    bool operator<(const Candidate& o) const { return key != o.key ? key < o.key : c < o.c; }
  };
  // The scope's group of a connection: all one, its target, or its target's level.
  auto group = [&](int64_t c) -> int64_t {
    if (options.scope() == PruneScope::Global) return 0;
    const int64_t target = t.conn_target()[c];
    return options.scope() == PruneScope::PerNeuron ? target : t.level_of(target);
  };
  // Connections are ordered by target and targets by level, so every
  // scope's groups are runs of connection indices. Each group's weakest
  // share is selected (linear time), not the whole group sorted.
  torch::Tensor frozen_mask;
  if (options.keep_frozen()) frozen_mask = network->frozen_connections().contiguous();
  const bool* frozen = frozen_mask.defined() ? frozen_mask.data_ptr<bool>() : nullptr;
  std::vector<Candidate> chosen, candidates;
  if (options.scope() != PruneScope::PerNeuron) candidates.reserve(t.num_connections());
  for (int64_t first = 0; first < t.num_connections();) {
    const int64_t g = group(first);
    int64_t last = first;
    candidates.clear();
    for (; last < t.num_connections() && group(last) == g; ++last)
      if (!(options.protect_outputs() && t.role(t.conn_target()[last]) == Role::Output) && !(frozen && frozen[last]))
        candidates.push_back({std::isnan(score[last]) ? HUGE_VAL : score[last], last});
    const size_t take =
        options.fraction()
            ? static_cast<size_t>(std::llround(*options.fraction() * static_cast<double>(candidates.size())))
            : candidates.size();
    keep_smallest(candidates, take);
    for (const Candidate& candidate : candidates)
      if (!options.threshold() || candidate.key < *options.threshold()) chosen.push_back(candidate);
    first = last;
  }
  // Weakest first across groups (a group's index range precedes the next's,
  // so ties stay in group order), then the floor: a neuron keeps keep_min inputs.
  if (ordered || options.keep_min() > 0) std::sort(chosen.begin(), chosen.end());
  std::vector<int64_t> remaining(t.num_neurons());
  for (int64_t d = 0; d < t.num_neurons(); ++d) remaining[d] = t.in_offsets()[d + 1] - t.in_offsets()[d];
  std::vector<int64_t> pruned;
  for (const Candidate& candidate : chosen) {
    const int64_t target = t.conn_target()[candidate.c];
    if (remaining[target] <= options.keep_min()) continue;
    --remaining[target];
    pruned.push_back(candidate.c);
  }
  return pruned;
}

}  // namespace

std::vector<Edge> connections_to_prune(const NeuralNetwork& network, const PruneOptions& options) {
  const Topology& t = network->topology();
  std::vector<Edge> edges;
  for (int64_t c : connections_to_prune_at(network, options, true))
    edges.emplace_back(t.label(t.conn_source()[c]), t.label(t.conn_target()[c]));
  return edges;
}

torch::Tensor activation_scores(const NeuralNetwork& network, const LevelTrace& trace) {
  const Topology& t = network->topology();
  check_trace(*network, trace, "activation_scores()");
  // The mean |value| of every neuron, then |w| times its source's.
  std::vector<torch::Tensor> means;
  for (const auto& v : trace.values) means.push_back(v.detach().abs().mean(1).to(torch::kCPU, torch::kFloat64));
  auto mean = torch::cat(means);
  auto source = torch::tensor(at::ArrayRef<int64_t>(t.conn_source()), torch::kInt64);
  return network->weight_tensor().detach().abs().to(torch::kCPU, torch::kFloat64) * mean.index_select(0, source);
}

torch::Tensor gradient_scores(const NeuralNetwork& network) {
  const auto& grad = network->weight_tensor().grad();
  if (!grad.defined()) fail("gradient_scores(): the weights have no gradient; call loss.backward() first");
  // LibTorch's zero_grad() fills the gradients with 0 rather than dropping
  // them. Frozen connections' gradients are 0 by design, so only the others count.
  const auto trainable = network->frozen_connections().logical_not().to(grad.device());
  if (trainable.any().item<bool>() && !grad.ne(0).logical_and(trainable).any().item<bool>())
    fail(
        "gradient_scores(): every trainable weight's gradient is 0, so the scores would not rank the connections "
        "(after zero_grad(), call loss.backward() first)");
  return (network->weight_tensor().detach() * grad).abs().to(torch::kCPU, torch::kFloat64);
}

EditResult prune(const NeuralNetwork& network, const PruneOptions& options) {
  return edit(network).remove_connections_at(connections_to_prune_at(network, options, false)).build();
}

}  // namespace connex
