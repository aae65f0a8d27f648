#pragma once
// Dynamic sparse training: SET and RigL rewire a sparse network while it
// trains, keeping the number of connections into each level it started with. connex holds
// only the live connections, so a network at 5 % density costs about 5 % of
// the dense arithmetic, unlike masks over dense weights.
//
//   connex::Rewirer rewirer(net, connex::RewireOptions().method(connex::RewireMethod::RigL).end_step(7500));
//   for (int64_t step = 0; step < 10000; ++step) {
//     const bool rewiring = step % 100 == 0 && rewirer.drop_fraction(step) > 0;
//     connex::LevelTrace trace;  // RigL reads the step's values and gradients (copied out: trace only when rewiring)
//     auto loss = loss_fn(rewiring ? net->forward_traced(x, trace) : net->forward(x), y);
//     optimizer->zero_grad(); loss.backward(); optimizer->step();
//     if (!rewiring) continue;
//     auto r = rewirer.rewire(net, step, &trace);
//     optimizer = connex::optimizer_after_edit(*optimizer, net, r);  // survivors keep their moments
//     net = r.network;
//   }
//
// A rewiring drops, in each group (the non-input neurons of one level of the
// network the Rewirer was made for: its levels then, not the rewired
// network's, in which a neuron may have moved), the share drop_fraction(step)
// of its connections with the smallest |w|, and grows as many new ones into
// the same group. Never dropped: a neuron's strongest incoming connection (no
// neuron is left reading nothing), a hidden neuron's strongest outgoing one
// (none is left reaching nothing, dead), and frozen connections. A group drops
// no more than it has absent pairs to grow back: a nearly full group rewires
// fewer (last_report() says how many), a complete one none. New connections
// come only from the levels that already fed the group when the Rewirer was
// made (for a layered network: the layer before), never one that existed
// before this rewiring, and start at weight 0 with zero optimizer moments, so
// the network's function is unchanged by the growth (unless topo norm or an
// attention is on: a new input to a level changes what they read). RigL
// refuses a trace whose values or gradients are not finite (a NaN loss): its
// growth could not match its drops. The groups keep their
// order, so the graph stays acyclic; each keeps its number of connections.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/arg.h>

#include "connex/neural_network.h"
#include "connex/plasticity.h"

namespace connex {

enum class RewireMethod {
  SET,   // grow at random (Mocanu et al. 2018)
  RigL,  // grow where |dL/dw| of the absent connections is largest (Evci et al. 2020)
};
// Every method: the one list the parser and the command line's choices read.
inline constexpr RewireMethod kRewireMethods[] = {RewireMethod::SET, RewireMethod::RigL};
const char* rewire_method_name(RewireMethod method);
// "set" or "rigl" (either case); anything else throws, naming it.
RewireMethod rewire_method_from_name(const std::string& name);

struct RewireOptions {
  TORCH_ARG(RewireMethod, method) = RewireMethod::SET;
  // SET's zeta, RigL's alpha: the share of each group's connections replaced, in [0, 1).
  TORCH_ARG(double, drop_fraction) = 0.3;
  // RigL's T_end: the share decays as alpha/2 * (1 + cos(pi * step / end_step))
  // and is 0 from end_step on. 0: no decay (SET's schedule, for either method;
  // the connex program's --rewire-end defaults to 0.75 of the run for both).
  TORCH_ARG(int64_t, end_step) = 0;
  // SET's random growth: each rewiring draws from (seed, step) alone, so a
  // resumed run rewires exactly as an uninterrupted one.
  TORCH_ARG(uint64_t, seed) = 0;
};

// What a Rewirer fixes when it is made: each group's neurons (group g: the
// neurons of level g then) and the lower groups each may grow from (those
// that fed it then). A resumed run rewires as the uninterrupted one would
// only with the same groups, and a neuron of a random DAG may have moved
// level since (a layered network's never do): save them beside the
// checkpoint (to_json, in its training record) and make the resumed Rewirer
// from them.
struct RewireGroups {
  std::vector<std::vector<NeuronId>> members;    // group -> its neurons; group 0 holds the inputs
  std::vector<std::vector<int64_t>> grows_from;  // group -> the groups it may grow from, ascending, each below it
  // The groups a Rewirer made for `network` now fixes: each level's neurons,
  // and the levels that feed it.
  static RewireGroups of_levels(const NeuralNetwork& network);
  // {"members": [[neuron ids], ...], "grows_from": [[groups], ...]}
  nlohmann::json to_json() const;
  // Checks the form (unknown keys refused); the Rewirer checks the groups
  // against its network. `source`, and the JSON pointer `path` to `json`
  // within it, name it in messages.
  static RewireGroups from_json(const nlohmann::json& json, const std::string& source = "rewire groups",
                                const std::string& path = "");
};

// What one rewiring did.
struct RewireReport {
  int64_t connections_before = 0, connections_after = 0;
  int64_t dropped = 0, grown = 0;
};

class Rewirer {
 public:
  // Fixes the groups and the levels each group may grow from. RigL needs a
  // network without operation_changing_gradients(); any network can use SET.
  explicit Rewirer(const NeuralNetwork& network, RewireOptions options = {});
  // With saved groups (a resumed run's): every neuron of `network` in one
  // group, the inputs alone in group 0, and no connection from a group to an
  // earlier one. A group's connections from groups outside its grows_from
  // (possible only in groups made by hand) may be dropped, never grown back.
  Rewirer(const NeuralNetwork& network, RewireGroups groups, RewireOptions options = {});

  // The share of each group's connections the rewiring at `step` replaces.
  double drop_fraction(int64_t step) const;

  // Rewires `network` (which must hold the neurons the Rewirer was made for,
  // and no connection from a group back to an earlier one: one added since
  // is refused, naming it; it is never modified). RigL needs the trace of a
  // forward pass of `network` after loss.backward(); SET ignores it. A
  // share that rounds to no connection in a group leaves that group as it is.
  EditResult rewire(const NeuralNetwork& network, int64_t step, const LevelTrace* trace = nullptr);

  const RewireOptions& options() const { return options_; }
  const RewireReport& last_report() const { return report_; }
  RewireGroups groups() const { return {members_, group_sources_}; }
  // Its groups (the levels of the network it was made for, or the groups it
  // was given), the inputs' (group 0) included.
  int64_t num_groups() const { return static_cast<int64_t>(group_sources_.size()); }

 private:
  struct Plan;  // what a rewiring removes and adds (sparse_training.cpp)
  void drop(const NeuralNetwork& network, double share, Plan& plan) const;
  void grow_random(const NeuralNetwork& network, Plan& plan);
  void grow_by_gradient(const NeuralNetwork& network, const LevelTrace& trace, Plan& plan) const;
  std::vector<std::vector<int64_t>> dense_groups(const Topology& t, const char* context) const;

  RewireOptions options_;
  int64_t num_neurons_ = 0;                          // the network's when the Rewirer was made
  std::vector<std::vector<NeuronId>> members_;       // group -> its neurons
  std::vector<std::vector<Role>> roles_;             // group -> its neurons' roles then
  std::vector<std::vector<int64_t>> group_sources_;  // group -> the groups that fed it
  std::mt19937_64 random_;
  RewireReport report_;
};

// dL/dw (signed) of connections the network does not have, as if each were
// there with weight 0: the sum over the batch of the source's value times the target's
// pre-activation gradient, read from `trace` (a forward pass after
// loss.backward()). Each edge must run from a lower level to a higher one
// (so adding it would not change the levels) and must not exist; the
// network must have no operation_changing_gradients().
std::vector<double> absent_connection_gradients(const NeuralNetwork& network, const LevelTrace& trace,
                                                const std::vector<Edge>& edges);

// The network's first operation that changes what a connection's gradient
// is (what its weight multiplies, or what z is): any but an activation
// scaling such as adaptive activations (topo norm, the attentions); null
// when there is none.
const LevelOperation* operation_changing_gradients(const NeuralNetworkImpl& network);

}  // namespace connex
