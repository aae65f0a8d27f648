// The README example as a program (the main job): the 12-neuron network from
// Connex's README, trained on (cos x, sin x) with Adam for 1000 full-batch
// epochs; then connections 1 -> 6 and 2 -> 11 are added and neuron 9 removed,
// every surviving parameter is checked to be unchanged, and training goes on
// for 1000 more epochs with the optimizer's state carried across the edit.
#include <torch/torch.h>

#include <spdlog/spdlog.h>

#include "connex/connex.h"
#include "examples.h"

using connex::apps::train_full_batch;

int main() {
  // A 12-neuron network is all per-op overhead: extra intra-op threads only
  // add synchronisation, so one thread is the fast choice here.
  torch::set_num_threads(1);

  connex::NeuralNetwork network(connex::apps::readme_graph(), connex::NeuralNetworkOptions().hidden_activation("relu"));
  spdlog::info("{}", c10::str(*network));

  const auto [x, y] = connex::apps::toy_data();

  torch::optim::Adam optimizer(network->parameters(), torch::optim::AdamOptions(1e-3));
  const double before = torch::mse_loss(network->forward(x), y).item<double>();
  const double after = train_full_batch(network, optimizer, x, y, 1000, "train", 250);
  spdlog::info("loss {:.6f} -> {:.6f} after 1000 epochs", before, after);

  // Plasticity: one batch of edits, one rebuild.
  auto edit = connex::edit(network).add_connections({{1, 6}, {2, 11}}).remove_neurons({9}).build(/*seed=*/1);
  connex::NeuralNetwork edited = edit.network;
  int kept = 0, changed = 0;
  const auto old_graph = network->weighted_graph();
  for (const auto& c : old_graph.connections) {
    if (c.from == 9 || c.to == 9) continue;
    (edited->weight(c.from, c.to) == c.weight ? kept : changed) += 1;
  }
  for (const auto& n : old_graph.neurons) {
    if (!n.bias || n.id == 9) continue;
    (edited->bias(n.id) == *n.bias ? kept : changed) += 1;
  }
  spdlog::info("edited: {}", c10::str(*edited));
  spdlog::info("surviving parameters kept bit for bit: {} of {}", kept, kept + changed);

  torch::optim::Adam next(edited->parameters(), torch::optim::AdamOptions(1e-3));
  connex::transfer_optimizer_state(optimizer, network, next, edit);
  const double after_edit = torch::mse_loss(edited->forward(x), y).item<double>();
  const double final_loss = train_full_batch(edited, next, x, y, 1000, "train after edit", 250);
  spdlog::info("loss {:.6f} -> {:.6f} after 1000 more epochs", after_edit, final_loss);
  return changed == 0 && final_loss < after_edit ? 0 : 1;
}
