#pragma once
// Test helpers shared by the plasticity, invariant and bad-input tests:
// snapshots of a network (by label, and bit for bit), and random sequences of
// valid edits.
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <set>
#include <string>
#include <vector>

#include "test_util.h"

namespace connex::testing {

// Whether two doubles have the same bits (0.0 and -0.0 differ; NaN equals itself).
inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Every (edge -> weight) and (neuron -> bias) of a network, by label.
struct Snapshot {
  std::map<std::pair<std::string, std::string>, double> weights;
  std::map<std::string, double> biases;
};
inline Snapshot snapshot(const NeuralNetwork& net) {
  Snapshot s;
  const auto graph = net->weighted_graph();
  for (const auto& c : graph.connections) s.weights[{c.from.str(), c.to.str()}] = c.weight;
  for (const auto& n : graph.neurons)
    if (n.bias) s.biases[n.id.str()] = *n.bias;
  return s;
}

// Every weight and bias of `after` whose label exists in `before` has the same
// bits. Returns the number of entries compared.
inline int64_t expect_survivors_identical(const Snapshot& before, const Snapshot& after) {
  int64_t compared = 0;
  for (const auto& [edge, w] : after.weights) {
    auto it = before.weights.find(edge);
    if (it == before.weights.end()) continue;
    EXPECT_TRUE(same_bits(w, it->second)) << edge.first << " -> " << edge.second << ": " << w << " != " << it->second;
    ++compared;
  }
  for (const auto& [id, b] : after.biases) {
    auto it = before.biases.find(id);
    if (it == before.biases.end()) continue;
    EXPECT_TRUE(same_bits(b, it->second)) << "bias of " << id << ": " << b << " != " << it->second;
    ++compared;
  }
  return compared;
}

// The network still has exactly the snapshot's values and computes y_before on x.
inline void expect_same_network(NeuralNetwork a, const Snapshot& before, const torch::Tensor& x,
                                const torch::Tensor& y_before) {
  auto now = snapshot(a);
  ASSERT_EQ(now.weights, before.weights);
  ASSERT_EQ(now.biases, before.biases);
  ASSERT_TRUE(torch::equal(a->forward(x), y_before));
}

// Everything a network holds, bit for bit: every named parameter and buffer
// (technique parameters, gradient masks and index buffers included), its
// structure, its dropout probabilities and its training flag.
class StateSnapshot {
 public:
  explicit StateSnapshot(const NeuralNetwork& net) {
    for (const auto& p : net->named_parameters()) tensors_[p.key()] = p.value().detach().to(torch::kCPU).clone();
    for (const auto& b : net->named_buffers())
      tensors_["buffer:" + b.key()] = b.value().detach().to(torch::kCPU).clone();
    structure_ = describe(net);
  }
  // Adds a gtest failure for every difference; returns whether there was none.
  bool expect_same(const NeuralNetwork& net) const {
    bool same = true;
    std::map<std::string, torch::Tensor> now;
    for (const auto& p : net->named_parameters()) now[p.key()] = p.value().detach().to(torch::kCPU);
    for (const auto& b : net->named_buffers()) now["buffer:" + b.key()] = b.value().detach().to(torch::kCPU);
    if (now.size() != tensors_.size()) {
      ADD_FAILURE() << "the network had " << tensors_.size() << " parameters and buffers, now " << now.size();
      same = false;
    }
    for (const auto& [name, before] : tensors_) {
      auto it = now.find(name);
      if (it == now.end()) {
        ADD_FAILURE() << name << " disappeared";
        same = false;
      } else if (!bit_identical(before, it->second)) {
        ADD_FAILURE() << name << " changed";
        same = false;
      }
    }
    const std::string structure = describe(net);
    if (structure != structure_) {
      ADD_FAILURE() << "the structure changed:\n" << structure_ << "\nnow:\n" << structure;
      same = false;
    }
    return same;
  }

  static bool bit_identical(const torch::Tensor& a, const torch::Tensor& b) {
    if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
    if (a.numel() == 0) return true;  // empty tensors may have no storage (memcmp of null is UB)
    auto ac = a.contiguous(), bc = b.contiguous();
    return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.numel() * ac.element_size()) == 0;
  }

 private:
  static std::string describe(const NeuralNetwork& net) {
    std::ostringstream out;
    const auto& spec = net->spec();
    out << "neurons:";
    for (const auto& id : spec.neurons()) out << ' ' << id.str() << "(p=" << net->dropout_p(id) << ")";
    out << "\nedges:";
    for (const auto& [u, v] : spec.edges()) out << ' ' << u.str() << "->" << v.str();
    out << "\ninputs:";
    for (const auto& id : spec.inputs()) out << ' ' << id.str();
    out << "\noutputs:";
    for (const auto& id : spec.outputs()) out << ' ' << id.str();
    out << "\ntraining: " << net->is_training() << "\n" << *net;
    return out.str();
  }
  std::map<std::string, torch::Tensor> tensors_;
  std::string structure_;
};

// ------------------------------------------------------ random edit sequences

struct RandomEditPlan {
  int edits = 0;                         // editor calls made
  std::map<std::string, int> kinds;      // how many of each kind
  int64_t neurons = 0, connections = 0;  // what build() must give
};

// Records `n_edits` random edits into `editor`, an editor of `net`: adding
// connections (one or two per call, existing ones included, which are
// ignored), removing connections, adding input, hidden (sometimes wired in at
// once) and output neurons, removing neurons, and setting dropout (a number or
// a per-neuron map). Each edit is valid against the graph as it stands after
// the previous ones — acyclicity included, and no connection added back that
// this edit removed (build() first for that) — so build() must succeed.
inline RandomEditPlan random_edit_sequence(const NeuralNetwork& net, NetworkEditor& editor, std::mt19937_64& rng,
                                           int n_edits) {
  const auto& spec = net->spec();
  const bool strings = spec.id_kind() == NeuronId::Kind::String;
  std::vector<NeuronId> live = spec.neurons();
  std::map<NeuronId, Role> roles;
  for (const auto& id : live) roles[id] = spec.role(id);
  std::set<std::pair<NeuronId, NeuronId>> edges(spec.edges().begin(), spec.edges().end());
  std::set<std::pair<NeuronId, NeuronId>> removed;  // base connections this edit removed
  int next_id = 1000;
  auto new_id = [&] { return strings ? NeuronId("new" + std::to_string(next_id++)) : NeuronId(next_id++); };
  auto pick = [&](const std::vector<NeuronId>& v) {
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
  };
  // Whether `to` is reachable from `from` over the current edges.
  auto reaches = [&](const NeuronId& from, const NeuronId& to) {
    std::set<NeuronId> seen{from};
    std::vector<NeuronId> stack{from};
    while (!stack.empty()) {
      auto n = stack.back();
      stack.pop_back();
      if (n == to) return true;
      for (const auto& [a, b] : edges)
        if (a == n && seen.insert(b).second) stack.push_back(b);
    }
    return false;
  };
  // A random connection that may be added now, if one is found in a few tries.
  auto addable = [&](std::pair<NeuronId, NeuronId>& edge) {
    for (int attempt = 0; attempt < 8; ++attempt) {
      auto u = pick(live), v = pick(live);
      if (u == v || roles[v] == Role::Input || roles[u] == Role::Output || removed.count({u, v}) || reaches(v, u))
        continue;
      edge = {u, v};
      return true;
    }
    return false;
  };
  RandomEditPlan plan;
  for (int e = 0; e < n_edits; ++e) {
    switch (std::uniform_int_distribution<int>(0, 6)(rng)) {
      case 0: {
        std::vector<Edge> batch;
        const int count = std::uniform_int_distribution<int>(1, 2)(rng);
        for (int k = 0; k < count; ++k) {
          std::pair<NeuronId, NeuronId> edge;
          if (!addable(edge)) break;
          batch.push_back(edge);
          edges.insert(edge);  // the second edge of the batch must not close a cycle with the first
        }
        if (batch.empty()) break;
        editor.add_connections(batch);
        ++plan.kinds["add_connections"];
        break;
      }
      case 1: {
        if (edges.empty()) break;
        auto it = edges.begin();
        std::advance(it, std::uniform_int_distribution<size_t>(0, edges.size() - 1)(rng));
        editor.remove_connections({*it});
        removed.insert(*it);
        edges.erase(it);
        ++plan.kinds["remove_connections"];
        break;
      }
      case 2: {
        auto id = new_id();
        editor.add_hidden_neurons({id});
        live.push_back(id), roles[id] = Role::Hidden;
        ++plan.kinds["add_hidden_neurons"];
        if (rng() % 2) {  // wire it in: from a non-output, to a non-input
          std::vector<Edge> wires;
          auto u = pick(live), v = pick(live);
          if (u != id && roles[u] != Role::Output) wires.emplace_back(u, id);
          if (v != id && roles[v] != Role::Input && !(wires.size() && reaches(v, u))) wires.emplace_back(id, v);
          if (!wires.empty()) {
            editor.add_connections(wires);
            for (const auto& w : wires) edges.insert(w);
            ++plan.kinds["add_connections"];
          }
        }
        break;
      }
      case 3: {
        auto id = new_id();
        editor.add_input_neurons({id});
        live.push_back(id), roles[id] = Role::Input;
        ++plan.kinds["add_input_neurons"];
        break;
      }
      case 4: {
        auto id = new_id();
        editor.add_output_neurons({id});
        live.push_back(id), roles[id] = Role::Output;
        ++plan.kinds["add_output_neurons"];
        break;
      }
      case 5: {
        auto victim = pick(live);
        int same_role = 0;
        for (const auto& id : live) same_role += roles[id] == roles[victim];
        if (roles[victim] != Role::Hidden && same_role < 2) break;
        editor.remove_neurons({victim});
        live.erase(std::find(live.begin(), live.end(), victim));
        for (auto it = edges.begin(); it != edges.end();)
          it = (it->first == victim || it->second == victim) ? edges.erase(it) : std::next(it);
        ++plan.kinds["remove_neurons"];
        break;
      }
      case 6:
        if (rng() % 2)
          editor.set_dropout_p(0.1);
        else
          editor.set_dropout_p(DropoutSpec({{pick(live), 0.25}}));
        ++plan.kinds["set_dropout_p"];
        break;
    }
  }
  for (const auto& [kind, count] : plan.kinds) plan.edits += count;
  plan.neurons = static_cast<int64_t>(live.size());
  plan.connections = static_cast<int64_t>(edges.size());
  return plan;
}

}  // namespace connex::testing
