#include "connex/prebuilt.h"

#include <unistd.h>

#include <new>

#include "connex/error.h"
#include "prebuilt_size.h"

namespace connex::nn {

namespace {

GraphSpec build_layers(const char* name, int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                       bool dense);

}  // namespace

void check_neuron_count(const std::string& context, double neurons) {
  if (neurons > kBuildLimit)
    fail("{}: {:.3g} neurons is more than connex builds (limit {:.0e})", context, neurons, kBuildLimit);
}

void check_buildable(const std::string& context, double neurons, double connections) {
  if (neurons > kBuildLimit || connections > kBuildLimit)
    fail("{}: {:.3g} neurons and {:.3g} connections is more than connex builds (limit {:.0e} each)", context, neurons,
         connections, kBuildLimit);
  // Under the limit, memory decides: the edge list, the graph's indexes and
  // the compiled topology take about this much per connection and neuron. A
  // neuron may be a level of its own (a chain), whose tables cost more: an
  // MLP of width 1 and depth 1e6 took 1.4 GB, 1.4 KB a neuron.
  constexpr double kBytesPerConnection = 256, kBytesPerNeuron = 1536;
  const double needed = connections * kBytesPerConnection + neurons * kBytesPerNeuron;
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (memory > 0 && needed > memory)
    fail(
        "{}: {:.3g} neurons and {:.3g} connections need about {:.3g} GB of memory to build; this machine has {:.3g} "
        "GB",
        context, neurons, connections, needed / 1e9, memory / 1e9);
}

LayeredSize layered_size(double in, double out, double width, double depth, bool dense) {
  if (depth == 0) return {in + out, in * out};
  const double connections =
      dense ? depth * width * in + width * width * depth * (depth - 1) / 2 + out * (in + depth * width)
            : in * width + (depth - 1) * width * width + width * out;
  return {in + width * depth + out, connections};
}

namespace {

// Layers of consecutive integer ids; `dense` links every layer to every later one.
GraphSpec layered_spec(const char* name, int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                       bool dense) {
  if (input_size < 1 || output_size < 1 || depth < 0 || (depth > 0 && width < 1))
    fail("{}(): sizes must be positive (input_size={}, output_size={}, width={}, depth={})", name, input_size,
         output_size, width, depth);
  // Counted in closed form (a loop over a depth near int64's maximum never ends).
  const auto [neurons, connections] = layered_size(static_cast<double>(input_size), static_cast<double>(output_size),
                                                   static_cast<double>(width), static_cast<double>(depth), dense);
  check_buildable(std::string(name) + "()", neurons, connections);
  try {
    return build_layers(name, input_size, output_size, width, depth, dense);
  } catch (const std::bad_alloc&) {
    fail("{}(): out of memory building {:.3g} neurons and {:.3g} connections", name, neurons, connections);
  }
}

GraphSpec build_layers(const char* name, int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                       bool dense) {
  std::vector<std::vector<NeuronId>> layers;
  int64_t next = 0;
  auto layer = [&](int64_t size) {
    std::vector<NeuronId> ids;
    for (int64_t i = 0; i < size; ++i) ids.emplace_back(next++);
    layers.push_back(std::move(ids));
  };
  layer(input_size);
  for (int64_t k = 0; k < depth; ++k) layer(width);
  layer(output_size);

  std::vector<Edge> edges;
  for (size_t to = 1; to < layers.size(); ++to)
    for (size_t from = dense ? 0 : to - 1; from < to; ++from)
      for (const auto& v : layers[to])
        for (const auto& u : layers[from]) edges.emplace_back(u, v);
  std::vector<NeuronId> all;
  for (const auto& l : layers) all.insert(all.end(), l.begin(), l.end());
  return GraphSpec(std::move(all), std::move(edges), layers.front(), layers.back(), name);
}

}  // namespace

GraphSpec mlp_spec(int64_t input_size, int64_t output_size, int64_t width, int64_t depth) {
  return layered_spec("MLP", input_size, output_size, width, depth, false);
}

GraphSpec dense_mlp_spec(int64_t input_size, int64_t output_size, int64_t width, int64_t depth) {
  return layered_spec("DenseMLP", input_size, output_size, width, depth, true);
}

NeuralNetwork MLP(int64_t input_size, int64_t output_size, int64_t width, int64_t depth, NeuralNetworkOptions options) {
  return NeuralNetwork(mlp_spec(input_size, output_size, width, depth), std::move(options));
}

NeuralNetwork DenseMLP(int64_t input_size, int64_t output_size, int64_t width, int64_t depth,
                       NeuralNetworkOptions options) {
  return NeuralNetwork(dense_mlp_spec(input_size, output_size, width, depth), std::move(options));
}

}  // namespace connex::nn
