#pragma once
// The size of a prebuilt network, in closed form: for checks that must run
// before anything is built (a depth near int64's maximum would never finish a
// loop). Doubles, so no size can overflow.

namespace connex::nn {

struct LayeredSize {
  double neurons = 0, connections = 0;
};
// Layers of `in`, `depth` × `width` and `out` neurons; an MLP links
// consecutive layers, a DenseMLP (`dense`) every layer to every later one.
LayeredSize layered_size(double in, double out, double width, double depth, bool dense);

}  // namespace connex::nn
