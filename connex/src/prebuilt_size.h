#pragma once
// The size of a prebuilt network, in closed form: for checks that must run
// before anything is built (a depth near int64's maximum would never finish a
// loop). Doubles, so no size can overflow.
#include <string>

namespace connex::nn {

// connex builds at most this many neurons, and as many connections.
constexpr double kBuildLimit = 2e9;
// Refuses, before anything is built, a network over the limit or over this
// machine's memory ("<context>: 3e+08 neurons and 3e+16 connections is more
// than connex builds (limit 2e+09 each)"): a typo such as width 1e8 must be an
// error, not bad_alloc or an hour of work.
void check_buildable(const std::string& context, double neurons, double connections);
// The same for the neurons alone, before the connections can be counted.
void check_neuron_count(const std::string& context, double neurons);

struct LayeredSize {
  double neurons = 0, connections = 0;
};
// Layers of `in`, `depth` × `width` and `out` neurons; an MLP links
// consecutive layers, a DenseMLP (`dense`) every layer to every later one.
LayeredSize layered_size(double in, double out, double width, double depth, bool dense);

}  // namespace connex::nn
