// Built against an installed connex (tests/packaging/check_install.sh).
#include <connex/connex.h>
#include <torch/torch.h>

#include <iostream>

static_assert(__cplusplus >= 201703L, "connex::connex must bring C++17 to its users");

int main() {
  connex::NeuralNetwork net(connex::GraphSpec::from_edges({{"x", "h"}, {"h", "y"}, {"x", "y"}}, {"x"}, {"y"}),
                            connex::NeuralNetworkOptions().hidden_activation("relu").seed(1));
  auto [edited, positions] = connex::remove_neurons(net, {"h"});
  auto y = edited->forward(torch::ones({3, 1}));
  if (y.sizes() != torch::IntArrayRef({3, 1}) || !torch::isfinite(y).all().item<bool>() ||
      positions.neurons.size() != 3) {
    std::cerr << "consumer: unexpected result " << y << "\n";
    return 1;
  }
  std::cout << "consumer: " << *edited << "\n";
}
