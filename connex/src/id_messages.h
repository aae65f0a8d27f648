#pragma once
// Messages for an id that is not one of a graph's neurons, shared by the
// GraphSpec readers and the node-link importer so every form says the same:
// an id of the other kind (7 in a graph of string ids) says so, since the
// plain "not in the list" would hide why.
#include <string>

#include <fmt/format.h>

#include "connex/neuron_id.h"

namespace connex {

inline const char* kind_plural(NeuronId::Kind kind) { return kind == NeuronId::Kind::Integer ? "integers" : "strings"; }

// "is an integer id, but this graph's ids are strings"
inline std::string kind_clash(const NeuronId& id, NeuronId::Kind graph_kind) {
  return fmt::format("is {} id, but this graph's ids are {}", kind_name(id.kind()), kind_plural(graph_kind));
}

// "neuron "a" is a string but neuron 1 is an integer; all neuron ids of a
// <whole> must be of one kind": `id` against the first id of its graph or layer.
inline std::string kinds_differ(const NeuronId& id, const NeuronId& first, const char* whole) {
  return fmt::format("neuron {} is {} but neuron {} is {}; all neuron ids of a {} must be of one kind", id,
                     kind_name(id.kind()), first, kind_name(first.kind()), whole);
}

// `edge 1 -> 9 names neuron 9, which is not in <list>`, or, for an id of the
// other kind, `edge 1 -> "9" names neuron "9", a string id, but this graph's ids are integers`.
inline std::string unlisted_endpoint(const Edge& edge, const NeuronId& id, NeuronId::Kind graph_kind,
                                     const char* list) {
  if (id.kind() != graph_kind)
    return fmt::format("edge {} names neuron {}, {} id, but this graph's ids are {}", edge_str(edge), id,
                       kind_name(id.kind()), kind_plural(graph_kind));
  return fmt::format("edge {} names neuron {}, which is not in {}", edge_str(edge), id, list);
}

}  // namespace connex
