#pragma once
// A HAM for the edit tests, on the CPU and CUDA alike: a labelled tanh layer
// "a" (p, q, r, s) and a layer-normed "b" of 3, joined by dense, graph and
// bias synapses, lateral ones within "a" among them.
#include "connex/ham/ham.h"

namespace connex::testing {

inline ham::HAM editable_ham() {
  namespace H = connex::ham;
  H::HAM ham;
  ham->add_labelled_layer("a", {"p", "q", "r", "s"}, H::tanh())
      .add_layer("b", {3}, H::layernorm(1.0, 0.3))
      .add_synapse("ab", H::linear(true), {"a", "b"})
      .add_synapse("aa", H::linear(), {"a"})
      .add_synapse("lat", H::graph({{"p", "q"}, {"q", "r"}, {"r", "p"}, {"s", "s"}}), {"a"})
      .add_synapse("across", H::graph({{"p", 0}, {"s", 2}}), {"a", "b"})
      .add_synapse("bb", H::bias(), {"b"});
  return ham;
}

}  // namespace connex::testing
