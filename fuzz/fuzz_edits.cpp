// Fuzz target: plasticity edits (connex/plasticity.h).
//
// Input bytes, read front to back (missing bytes read as 0):
//   [0] network: 0-1 the README network (integer ids 0..11), 2 a random DAG
//       with integer ids, 3 a random DAG with string ids (seed: byte [1])
//   [2] bit 0-3: topo norm, topo self-attention (only with bit 2 of [0]),
//       neuron self-attention (only with bit 3 of [0]), adaptive activations;
//       bit 4: float64; bit 5: one editor for all edits (else one free
//       function per edit); bit 6-7: hidden activation. (The attention
//       techniques cost most per edit, so they are on in a quarter of the
//       inputs that ask, not half.)
//   then up to 6 edits: a kind byte, then arguments (neuron ids: an existing
//   neuron, a fresh id, an id of the wrong kind, or an extreme one; edges may
//   create cycles or touch inputs/outputs; dropout p may lie outside [0, 1]).
//
// Checked after every accepted edit (free functions: against the network
// before the edit; editor: against the original): the old network's
// parameters and buffers unchanged (compared with a copy taken before), every
// surviving connection's weight and neuron's bias bit-identical (by label),
// technique parameters of surviving entries bit-identical (free functions),
// no shared storage, the structural effect of the edit, forward shape and
// finiteness. A rejected edit must throw connex::Error and leave the network
// (or the editor: a build before and after the rejected call gives the same
// network) unchanged.
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include "../apps/readme_network.h"
#include "../tests/operation_entries.h"
#include "fuzz_common.h"

namespace {

using connex::Edge;
using connex::EdgeHash;
using connex::NeuralNetwork;
using connex::NeuronId;
using connex::NeuronIdHash;

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  bool empty() const { return n == 0; }
};

connex::GraphSpec readme_spec() { return connex::apps::readme_graph(); }

// A small random DAG: 4-12 neurons, 1-2 inputs, 1-2 outputs, edges forward in a hidden order.
connex::GraphSpec random_spec(uint8_t seed, bool strings) {
  std::mt19937 rng(seed);
  const int n = 4 + static_cast<int>(rng() % 9);
  const int n_in = 1 + static_cast<int>(rng() % 2), n_out = 1 + static_cast<int>(rng() % 2);
  auto id = [&](int k) { return strings ? NeuronId("n" + std::to_string(k)) : NeuronId(k); };
  std::vector<NeuronId> neurons, inputs, outputs;
  std::vector<Edge> edges;
  for (int i = 0; i < n; ++i) neurons.push_back(id(i));
  for (int i = 0; i < n_in; ++i) inputs.push_back(id(i));
  for (int i = n - n_out; i < n; ++i) outputs.push_back(id(i));
  for (int i = 0; i < n - n_out; ++i)
    for (int j = std::max(i + 1, n_in); j < n; ++j)
      if (rng() % 3 == 0) edges.emplace_back(id(i), id(j));
  return connex::GraphSpec(neurons, edges, inputs, outputs);
}

// Copies of every parameter and buffer, to prove a network was not touched.
using Snapshot = std::vector<std::pair<std::string, torch::Tensor>>;
Snapshot snapshot(const NeuralNetwork& net) {
  Snapshot s;
  for (const auto& p : net->named_parameters()) s.emplace_back(p.key(), p.value().detach().clone());
  for (const auto& b : net->named_buffers()) s.emplace_back(b.key(), b.value().detach().clone());
  return s;
}
bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  if (a.numel() == 0) return true;
  if (a.is_contiguous() && b.is_contiguous())  // the usual case: no detach or copy (each a dispatched op)
    return std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0;
  auto x = a.detach().contiguous(), y = b.detach().contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}
void check_unchanged(const NeuralNetwork& net, const Snapshot& before, const char* what) {
  auto params = net->named_parameters();
  auto buffers = net->named_buffers();
  FUZZ_CHECK(params.size() + buffers.size() == before.size(), "%s: the network's tensors changed in number", what);
  for (const auto& [name, tensor] : before) {
    const torch::Tensor* now = params.find(name);
    if (!now) now = buffers.find(name);
    FUZZ_CHECK(now && same_bits(*now, tensor), "%s: tensor %s of the network changed", what, name.c_str());
  }
}

bool bits_equal(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Every connection and neuron of `after` that exists in `before` and is not
// excluded keeps its weight / bias bit for bit.
void check_carried(const NeuralNetwork& before, const NeuralNetwork& after,
                   const std::unordered_set<NeuronId, NeuronIdHash>& fresh_neurons,
                   const std::unordered_set<Edge, EdgeHash>& fresh_edges, const char* what) {
  const auto old_graph = before->weighted_graph(), new_graph = after->weighted_graph();
  std::unordered_map<Edge, double, EdgeHash> weights;
  for (const auto& c : old_graph.connections) weights.emplace(Edge{c.from, c.to}, c.weight);
  std::unordered_map<NeuronId, std::optional<double>, NeuronIdHash> biases;
  for (const auto& n : old_graph.neurons) biases.emplace(n.id, n.bias);
  for (const auto& c : new_graph.connections) {
    if (fresh_neurons.count(c.from) || fresh_neurons.count(c.to) || fresh_edges.count({c.from, c.to})) continue;
    auto it = weights.find({c.from, c.to});
    if (it == weights.end()) continue;
    FUZZ_CHECK(bits_equal(it->second, c.weight), "%s: weight %s changed from %.17g to %.17g", what,
               connex::edge_str({c.from, c.to}).c_str(), it->second, c.weight);
    FUZZ_CHECK(bits_equal(after->weight(c.from, c.to), c.weight), "%s: weight(%s) disagrees with weighted_graph()",
               what, connex::edge_str({c.from, c.to}).c_str());
  }
  for (const auto& n : new_graph.neurons) {
    if (fresh_neurons.count(n.id)) continue;
    auto it = biases.find(n.id);
    if (it == biases.end() || !it->second || !n.bias) continue;  // new, or an input (no bias)
    FUZZ_CHECK(bits_equal(*it->second, *n.bias), "%s: bias of %s changed from %.17g to %.17g", what, n.id.str().c_str(),
               *it->second, *n.bias);
    FUZZ_CHECK(bits_equal(after->bias(n.id), *n.bias), "%s: bias(%s) disagrees with weighted_graph()", what,
               n.id.str().c_str());
  }
}

// Technique parameters: every entry of `after` whose labels (per dimension)
// all exist in `before`, under the same parameter name, keeps its value.
void check_operation_parameters(const NeuralNetwork& before, const NeuralNetwork& after, const char* what) {
  connex::testing::for_each_surviving_operation_entry(
      before, after, [&](const std::string& operation, const std::string& name, int64_t flat, double now, double was) {
        FUZZ_CHECK(bits_equal(now, was), "%s: %s.%s entry %lld changed", what, operation.c_str(), name.c_str(),
                   static_cast<long long>(flat));
      });
}

void check_no_shared_storage(const NeuralNetwork& a, const NeuralNetwork& b, const char* what) {
  std::unordered_set<const void*> storages;
  for (const auto& p : a->parameters())
    if (p.numel() > 0) storages.insert(p.storage().data());
  for (const auto& p : b->parameters())
    if (p.numel() > 0)
      FUZZ_CHECK(!storages.count(p.storage().data()), "%s: the edited network shares a parameter's storage", what);
}

// ------------------------------------------------------------- decoding

struct Decoder {
  Reader& in;
  bool strings;
  std::vector<NeuronId> pool;  // neurons known to exist (plus ids added so far)

  NeuronId id() {
    const uint8_t b = in.byte();
    if (b < 150 && !pool.empty()) return pool[b % pool.size()];
    if (b < 220) {  // fresh, from a small set so that later edits can name it again
      const int k = (b - 150) % 24;
      return strings ? NeuronId("f" + std::to_string(k)) : NeuronId(100 + k);
    }
    if (b < 240) return strings ? NeuronId(int64_t{b}) : NeuronId("w" + std::to_string(b % 4));  // the wrong kind
    switch (b % 8) {
      case 0:
        return NeuronId(std::numeric_limits<int64_t>::min());
      case 1:
        return NeuronId(std::numeric_limits<int64_t>::max());
      case 2:
        return NeuronId(int64_t{-1});
      case 3:
        return NeuronId(std::string());
      case 4:
        return NeuronId("0");
      case 5:
        return NeuronId(std::string("n\0x", 3));
      default:
        return strings ? NeuronId("n0") : NeuronId(0);
    }
  }
  std::vector<NeuronId> ids(int max) {
    std::vector<NeuronId> out;
    const int n = 1 + in.byte() % max;
    for (int i = 0; i < n; ++i) out.push_back(id());
    return out;
  }
  Edge edge(const std::vector<Edge>& existing) {
    const uint8_t b = in.byte();
    if (b < 128 && !existing.empty()) return existing[b % existing.size()];
    NeuronId u = id();
    return {u, id()};
  }
  std::vector<Edge> edges(const std::vector<Edge>& existing) {
    std::vector<Edge> out;
    const int n = 1 + in.byte() % 3;
    for (int i = 0; i < n; ++i) out.push_back(edge(existing));
    return out;
  }
  connex::Adjacency adjacency(const std::vector<Edge>& existing) {
    // One or two sources, each with its targets; from existing edges or not.
    connex::Adjacency out;
    const int n = 1 + in.byte() % 2;
    for (int i = 0; i < n; ++i) {
      const Edge first = edge(existing);
      std::vector<NeuronId> targets{first.second};
      if (in.byte() & 1) targets.push_back(id());
      out.emplace_back(first.first, targets);
    }
    return out;
  }
  connex::DropoutSpec dropout() {
    const uint8_t b = in.byte();
    auto p_of = [](uint8_t v) { return v == 255 ? 1.0 : v == 254 ? std::nan("") : v / 200.0 - 0.05; };
    if (b & 1) return connex::DropoutSpec(p_of(in.byte()));
    std::vector<std::pair<NeuronId, double>> map;
    const int n = 1 + (b >> 1) % 2;
    for (int i = 0; i < n; ++i) {
      NeuronId who = id();
      map.emplace_back(who, p_of(in.byte()));
    }
    return connex::DropoutSpec(map);
  }
};

enum Kind {
  AddEdges,
  AddAdjacency,
  RemoveEdges,
  RemoveAdjacency,
  AddInputs,
  AddHidden,
  AddOutputs,
  RemoveNeurons,
  Dropout,
  kKinds
};

const char* kind_name(int k) {
  static const char* names[] = {
      "add_connections",   "add_connections(adjacency)", "remove_connections", "remove_connections(adjacency)",
      "add_input_neurons", "add_hidden_neurons",         "add_output_neurons", "remove_neurons",
      "set_dropout_p"};
  return names[k];
}

std::vector<Edge> edges_of(const connex::Adjacency& adjacency) {
  std::vector<Edge> out;
  for (const auto& [u, vs] : adjacency)
    for (const auto& v : vs) out.emplace_back(u, v);
  return out;
}

// The arguments of one edit, decoded once so that the free function and the
// editor paths apply the same thing.
struct Edit {
  int kind = 0;
  std::vector<Edge> edges;
  connex::Adjacency adjacency;
  std::vector<NeuronId> ids;
  connex::DropoutSpec dropout;
  uint64_t seed = 0;
};

Edit decode(Decoder& dec, const NeuralNetwork& current) {
  Edit e;
  e.kind = dec.in.byte() % kKinds;
  e.seed = dec.in.byte();
  const auto& existing = current->spec().edges();
  switch (e.kind) {
    case AddEdges:
    case RemoveEdges:
      e.edges = dec.edges(existing);
      break;
    case AddAdjacency:
    case RemoveAdjacency:
      e.adjacency = dec.adjacency(existing);
      break;
    case AddInputs:
    case AddOutputs:
      e.ids = dec.ids(2);
      break;
    case AddHidden:
      e.ids = dec.ids(3);
      break;
    case RemoveNeurons:
      e.ids = dec.ids(2);
      break;
    case Dropout:
      e.dropout = dec.dropout();
      break;
  }
  return e;
}

void apply(connex::NetworkEditor& editor, const Edit& e) {
  switch (e.kind) {
    case AddEdges:
      editor.add_connections(e.edges);
      break;
    case AddAdjacency:
      editor.add_connections(e.adjacency);
      break;
    case RemoveEdges:
      editor.remove_connections(e.edges);
      break;
    case RemoveAdjacency:
      editor.remove_connections(e.adjacency);
      break;
    case AddInputs:
      editor.add_input_neurons(e.ids);
      break;
    case AddHidden:
      editor.add_hidden_neurons(e.ids);
      break;
    case AddOutputs:
      editor.add_output_neurons(e.ids);
      break;
    case RemoveNeurons:
      editor.remove_neurons(e.ids);
      break;
    case Dropout:
      editor.set_dropout_p(e.dropout);
      break;
  }
}

// The free function for one edit; also checks what the edit did to the structure.
NeuralNetwork apply_free(const NeuralNetwork& net, const Edit& e) {
  const char* what = kind_name(e.kind);
  NeuralNetwork next{nullptr};
  const auto& spec = net->spec();
  switch (e.kind) {
    case AddEdges:
    case AddAdjacency: {
      next = e.kind == AddEdges ? connex::add_connections(net, e.edges, e.seed)
                                : connex::add_connections(net, e.adjacency, e.seed);
      const auto added = e.kind == AddEdges ? e.edges : edges_of(e.adjacency);
      std::unordered_set<Edge, EdgeHash> all(spec.edges().begin(), spec.edges().end());
      all.insert(added.begin(), added.end());
      FUZZ_CHECK(next->num_connections() == static_cast<int64_t>(all.size()), "%s: %lld connections, expected %zu",
                 what, static_cast<long long>(next->num_connections()), all.size());
      for (const auto& edge : added) next->weight(edge.first, edge.second);  // throws (a finding) if absent
      break;
    }
    case RemoveEdges:
    case RemoveAdjacency: {
      next = e.kind == RemoveEdges ? connex::remove_connections(net, e.edges)
                                   : connex::remove_connections(net, e.adjacency);
      const auto removed = e.kind == RemoveEdges ? e.edges : edges_of(e.adjacency);
      std::unordered_set<Edge, EdgeHash> gone(removed.begin(), removed.end());
      FUZZ_CHECK(next->num_connections() == net->num_connections() - static_cast<int64_t>(gone.size()),
                 "%s: %lld connections left of %lld after removing %zu", what,
                 static_cast<long long>(next->num_connections()), static_cast<long long>(net->num_connections()),
                 gone.size());
      for (const auto& edge : next->spec().edges())
        FUZZ_CHECK(!gone.count(edge), "%s: a removed connection survived", what);
      break;
    }
    case AddInputs:
    case AddHidden:
    case AddOutputs: {
      next = e.kind == AddInputs   ? connex::add_input_neurons(net, e.ids, e.seed)
             : e.kind == AddHidden ? connex::add_hidden_neurons(net, e.ids, e.seed)
                                   : connex::add_output_neurons(net, e.ids, e.seed);
      const connex::Role role = e.kind == AddInputs   ? connex::Role::Input
                                : e.kind == AddHidden ? connex::Role::Hidden
                                                      : connex::Role::Output;
      for (const auto& id : e.ids)
        FUZZ_CHECK(next->spec().contains(id) && next->spec().role(id) == role, "%s: %s missing or of the wrong role",
                   what, id.str().c_str());
      FUZZ_CHECK(next->num_connections() == net->num_connections(), "%s: connections changed", what);
      if (e.kind == AddInputs)
        FUZZ_CHECK(
            std::equal(spec.inputs().begin(), spec.inputs().end(), next->input_neurons().end() - spec.inputs().size()),
            "%s: the existing inputs are not last", what);
      if (e.kind == AddOutputs)
        FUZZ_CHECK(std::equal(spec.outputs().begin(), spec.outputs().end(), next->output_neurons().begin()),
                   "%s: the existing outputs are not first", what);
      break;
    }
    case RemoveNeurons: {
      auto [edited, positions] = connex::remove_neurons(net, e.ids);
      next = edited;
      std::unordered_set<NeuronId, NeuronIdHash> gone(e.ids.begin(), e.ids.end());
      for (const auto& id : e.ids) FUZZ_CHECK(!next->spec().contains(id), "%s: %s survived", what, id.str().c_str());
      auto check_remap = [&](const std::vector<NeuronId>& old_list, const std::vector<NeuronId>& new_list,
                             const std::vector<int64_t>& remap, const char* list) {
        FUZZ_CHECK(remap.size() == old_list.size(), "%s: remap of %s has %zu entries for %zu", what, list, remap.size(),
                   old_list.size());
        for (size_t i = 0; i < old_list.size(); ++i) {
          if (gone.count(old_list[i])) {
            FUZZ_CHECK(remap[i] == -1, "%s: removed %s kept position %lld in %s", what, old_list[i].str().c_str(),
                       static_cast<long long>(remap[i]), list);
          } else {
            FUZZ_CHECK(
                remap[i] >= 0 && remap[i] < static_cast<int64_t>(new_list.size()) && new_list[remap[i]] == old_list[i],
                "%s: %s's position in %s is wrong", what, old_list[i].str().c_str(), list);
          }
        }
      };
      check_remap(spec.inputs(), next->input_neurons(), positions.inputs, "inputs");
      check_remap(spec.outputs(), next->output_neurons(), positions.outputs, "outputs");
      check_remap(spec.neurons(), next->spec().neurons(), positions.neurons, "neurons");
      break;
    }
    case Dropout: {
      next = connex::set_dropout_p(net, e.dropout);
      std::unordered_map<NeuronId, double, NeuronIdHash> asked;  // a repeated neuron: the last value counts
      for (const auto& [id, p] : e.dropout.per_neuron) asked[id] = p;
      for (const auto& [id, p] : asked)
        FUZZ_CHECK(bits_equal(next->dropout_p(id), p), "%s: dropout of %s is %g, asked %g", what, id.str().c_str(),
                   next->dropout_p(id), p);
      if (e.dropout.per_neuron.empty()) {
        for (const auto& id : next->hidden_neurons())
          FUZZ_CHECK(next->dropout_p(id) == e.dropout.hidden, "%s: dropout of hidden %s is %g, asked %g", what,
                     id.str().c_str(), next->dropout_p(id), e.dropout.hidden);
        for (const auto* list : {&next->input_neurons(), &next->output_neurons()})
          for (const auto& id : *list)
            FUZZ_CHECK(next->dropout_p(id) == 0.0, "%s: dropout of input/output %s is %g", what, id.str().c_str(),
                       next->dropout_p(id));
      }
      FUZZ_CHECK(next->num_connections() == net->num_connections(), "%s: connections changed", what);
      break;
    }
  }
  return next;
}

void check_edited(const NeuralNetwork& before, const Snapshot& before_snapshot, const NeuralNetwork& after,
                  const std::unordered_set<NeuronId, NeuronIdHash>& fresh_neurons,
                  const std::unordered_set<Edge, EdgeHash>& fresh_edges, bool operation_parameters, const char* what) {
  check_unchanged(before, before_snapshot, what);
  check_no_shared_storage(before, after, what);
  FUZZ_CHECK(after->options().dtype() == before->options().dtype(), "%s: dtype changed", what);
  FUZZ_CHECK(after->options().hidden_activation().name() == before->options().hidden_activation().name(),
             "%s: the activation changed", what);
  FUZZ_CHECK(after->operations().size() == before->operations().size(), "%s: the techniques changed", what);
  check_carried(before, after, fresh_neurons, fresh_edges, what);
  for (const auto& id : after->spec().neurons()) {
    const double p = after->dropout_p(id);
    FUZZ_CHECK(p >= 0.0 && p <= 1.0, "%s: neuron %s has dropout p %g, outside [0, 1]", what, id.str().c_str(), p);
  }
  if (operation_parameters) check_operation_parameters(before, after, what);
  connex::NeuralNetwork copy = after;
  connex_fuzz::check_forward(copy, what, /*single=*/false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace connex_fuzz;
  Reader in{data, size};
  const uint8_t which = in.byte(), seed = in.byte(), flags = in.byte();
  const bool strings = which % 4 == 3;
  static const char* activations[] = {"relu", "gelu", "tanh", "sigmoid"};
  auto make = [&] {
    auto options = connex::NeuralNetworkOptions()
                       .use_topo_norm(flags & 1)
                       .use_topo_self_attention((flags & 2) && (which & 4))
                       .use_neuron_self_attention((flags & 4) && (which & 8))
                       .use_adaptive_activations(flags & 8)
                       .dtype(flags & 16 ? torch::kFloat64 : torch::kFloat32)
                       .hidden_activation(activations[flags >> 6])
                       .seed(seed);
    return NeuralNetwork(which % 4 < 2 ? readme_spec() : random_spec(seed, strings), options);
  };
  const bool one_editor = flags & 32;
  // Starting networks are built once per (network, seed, flags) and kept with
  // a snapshot taken at construction: every input that starts from one checks
  // that it is still bit-identical, so an edit that wrote into its original
  // would be caught by the next input too. (Building costs more than most edits.)
  static std::map<std::tuple<int, int, int>, std::pair<NeuralNetwork, Snapshot>> cache;
  const auto key =
      std::make_tuple(which % 4 < 2 ? 0 : which % 4, seed,
                      (flags & ~(32 | 2 | 4)) | (flags & 2 && which & 4 ? 2 : 0) | (flags & 4 && which & 8 ? 4 : 0));
  auto cached = cache.find(key);
  if (cached == cache.end()) {
    if (cache.size() >= 4096) cache.clear();
    NeuralNetwork net = make();
    cached = cache.emplace(key, std::make_pair(net, snapshot(net))).first;
  }
  NeuralNetwork original = cached->second.first;
  const Snapshot& original_snapshot = cached->second.second;
  check_unchanged(original, original_snapshot, "a cached starting network");

  Decoder dec{in, strings, original->spec().neurons()};
  constexpr int kMaxEdits = 6;

  if (!one_editor) {
    NeuralNetwork current = original;
    Snapshot current_snapshot = original_snapshot;
    for (int k = 0; k < kMaxEdits && !in.empty(); ++k) {
      dec.pool = current->spec().neurons();
      const Edit e = decode(dec, current);
      NeuralNetwork next{nullptr};
      if (!guarded(kind_name(e.kind), [&] { next = apply_free(current, e); })) {
        check_unchanged(current, current_snapshot, "a rejected edit");
        continue;
      }
      check_edited(current, current_snapshot, next, {}, {}, /*operation_parameters=*/true, kind_name(e.kind));
      current = next;
      current_snapshot = snapshot(current);
    }
    check_unchanged(original, original_snapshot, "after the edits");
    return 0;
  }

  // One editor: each call is checked against the graph as the previous calls
  // left it; a rejected call changes nothing, so building before and after it
  // gives the same network.
  connex::NetworkEditor editor = connex::edit(original);
  std::unordered_set<NeuronId, NeuronIdHash> touched_neurons;  // removed at some point: no claim on their values
  std::unordered_set<Edge, EdgeHash> touched_edges;
  const uint64_t build_seed = in.byte();
  bool compared_rejection = false;
  for (int k = 0; k < kMaxEdits && !in.empty(); ++k) {
    const Edit e = decode(dec, original);
    std::optional<connex::NetworkEditor> before;
    if (!compared_rejection) before.emplace(editor);
    if (guarded(kind_name(e.kind), [&] { apply(editor, e); })) {
      for (const auto& id : e.ids) dec.pool.push_back(id);
      if (e.kind == RemoveNeurons) touched_neurons.insert(e.ids.begin(), e.ids.end());
      if (e.kind == RemoveEdges) touched_edges.insert(e.edges.begin(), e.edges.end());
      if (e.kind == RemoveAdjacency)
        for (const auto& edge : edges_of(e.adjacency)) touched_edges.insert(edge);
      continue;
    }
    if (compared_rejection) continue;  // the comparison builds twice: once per input is enough
    compared_rejection = true;
    std::optional<connex::EditResult> a, b;
    const bool built_before = guarded("build", [&] { a.emplace(before->build(build_seed)); });
    const bool built_after = guarded("build", [&] { b.emplace(editor.build(build_seed)); });
    FUZZ_CHECK(built_before == built_after, "rejected %s: build() %s before the call but %s after", kind_name(e.kind),
               built_before ? "succeeded" : "failed", built_after ? "succeeded" : "failed");
    if (built_before) {
      FUZZ_CHECK(a->network->spec().to_json() == b->network->spec().to_json(), "rejected %s changed the editor's graph",
                 kind_name(e.kind));
      auto pa = a->network->named_parameters(), pb = b->network->named_parameters();
      for (const auto& p : pa) {
        const auto* q = pb.find(p.key());
        FUZZ_CHECK(q && same_bits(p.value(), *q), "rejected %s changed the editor's %s", kind_name(e.kind),
                   p.key().c_str());
      }
    }
  }
  std::optional<connex::EditResult> result;
  if (guarded("build", [&] { result.emplace(editor.build(build_seed)); }))
    check_edited(original, original_snapshot, result->network, touched_neurons, touched_edges,
                 /*operation_parameters=*/touched_neurons.empty() && touched_edges.empty(), "edit().build()");
  check_unchanged(original, original_snapshot, "after the edits");
  return 0;
}
