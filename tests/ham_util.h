#pragma once
// A HAM for the edit tests, on the CPU and CUDA alike: a labelled tanh layer
// "a" (p, q, r, s) and a layer-normed "b" of 3, joined by dense, graph and
// bias synapses, lateral ones within "a" among them. Another Lagrangian for
// "a" or synapse for the dense "aa" makes a twin of another kind.
#include "connex/ham/ham.h"

namespace connex::testing {

inline ham::HAM editable_ham(ham::Lagrangian a = nullptr, ham::Synapse aa = nullptr) {
  namespace H = connex::ham;
  H::HAM ham;
  ham->add_labelled_layer("a", {"p", "q", "r", "s"}, a ? a : H::tanh())
      .add_layer("b", {3}, H::layernorm(1.0, 0.3))
      .add_synapse("ab", H::linear(true), {"a", "b"})
      .add_synapse("aa", aa ? aa : H::linear(), {"a"})
      .add_synapse("lat", H::graph({{"p", "q"}, {"q", "r"}, {"r", "p"}, {"s", "s"}}), {"a"})
      .add_synapse("across", H::graph({{"p", 0}, {"s", 2}}), {"a", "b"})
      .add_synapse("bb", H::bias(), {"b"});
  return ham;
}

}  // namespace connex::testing
