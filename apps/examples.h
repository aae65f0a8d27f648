#pragma once
// What connex's programs share: the README's network (readme_network.h), the
// toy regression set, and the example programs' full-batch training loop.
#include <cmath>
#include <utility>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "connex/connex.h"
#include "progress_bar.h"
#include "readme_network.h"

namespace connex::apps {

// The toy regression set: `rows` values x evenly over [0, 2π] ([rows, 1]) and
// the targets (cos x, sin x) ([rows, 2]).
inline std::pair<torch::Tensor, torch::Tensor> toy_data(int64_t rows = 250) {
  auto x = torch::linspace(0, 2 * M_PI, rows).unsqueeze(1);
  return {x, torch::cat({torch::cos(x), torch::sin(x)}, 1)};
}

// Full-batch MSE training for `epochs` with a progress bar (a log line every
// `log_every` epochs when not on a terminal); returns the final loss.
inline double train_full_batch(NeuralNetwork& net, torch::optim::Optimizer& optimizer, const torch::Tensor& x,
                               const torch::Tensor& y, int epochs, const char* label, int log_every) {
  ProgressBar bar(epochs, label);
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(net->forward(x), y);
    loss.backward();
    optimizer.step();
    const double value = loss.item<double>();
    bar.update(epoch, value);
    if (!bar.is_tty() && epoch % log_every == 0) spdlog::info("{} epoch {:4d}  loss {:.6f}", label, epoch, value);
  }
  torch::NoGradGuard no_grad;
  return torch::mse_loss(net->forward(x), y).item<double>();
}

}  // namespace connex::apps
