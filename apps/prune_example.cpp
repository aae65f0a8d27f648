// Pruning example (after Connex's example notebook): train DenseMLP(1, 2, 128, 4)
// on (cos x, sin x) for 500 epochs, read the weighted graph, remove every
// connection whose |w| is below a threshold, and train 500 more epochs.
//
//   prune_example [threshold=0.05] [epochs=500]
#include <cstdlib>

#include <torch/torch.h>

#include <spdlog/spdlog.h>

#include "connex/connex.h"
#include "examples.h"

using connex::apps::train_full_batch;

int main(int argc, char** argv) {
  const double threshold = argc > 1 ? std::atof(argv[1]) : 0.05;
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 500;
  // Dense 128-wide layers: the matmuls are big enough for both cores.
  torch::set_num_threads(2);

  const auto [x, y] = connex::apps::toy_data();
  auto network = connex::nn::DenseMLP(1, 2, 128, 4, connex::NeuralNetworkOptions().hidden_activation("relu"));
  torch::optim::Adam optimizer(network->parameters(), torch::optim::AdamOptions(1e-3));
  const double trained = train_full_batch(network, optimizer, x, y, epochs, "train", 100);
  spdlog::info("trained:  {} connections, loss {:.6f}", network->num_connections(), trained);

  std::vector<connex::Edge> weak;
  for (const auto& c : network->weighted_graph().connections)
    if (std::abs(c.weight) < threshold) weak.emplace_back(c.from, c.to);
  auto edit = connex::edit(network).remove_connections(weak).build();
  connex::NeuralNetwork pruned = edit.network;
  torch::optim::Adam next(pruned->parameters(), torch::optim::AdamOptions(1e-3));
  connex::transfer_optimizer_state(optimizer, network, next, edit);
  const double after_prune = [&] {
    torch::NoGradGuard no_grad;
    return torch::mse_loss(pruned->forward(x), y).item<double>();
  }();
  spdlog::info("pruned:   {} connections (removed {} with |w| < {}), loss {:.6f}", pruned->num_connections(),
               weak.size(), threshold, after_prune);
  const double retrained = train_full_batch(pruned, next, x, y, epochs, "retrain", 100);
  spdlog::info("retrained: {} connections, loss {:.6f}", pruned->num_connections(), retrained);
  // Self-check: the edit removed exactly the weak connections, and training went on from it.
  const bool ok = pruned->num_connections() == network->num_connections() - static_cast<int64_t>(weak.size()) &&
                  retrained < after_prune;
  return ok ? 0 : 1;
}
