// Associative memories (connex/ham) on the real 8×8 digits (scripts/fetch-datasets.sh writes digits.csv: columns
// p0..p63 with pixels 0..16, then digit). The first 1,400 rows are stored/trained on, the other 397 are the test set.
//
//  1. Retrieval: a dense associative memory (image layer, softmax memory layer, W holding the 1,400 stored images
//     as columns, bias −½|ξ|² per memory) completes corrupted test images by descending its energy, with the visible
//     pixels clamped. The baselines are a trivial fill (each pixel's training mean) and a classic pairwise Hopfield
//     network (±1 pixels, Hebbian W with zero diagonal, tanh Lagrangian with a large gain and dt = 1: synchronous sign
//     updates).
//  2. Classification: a HAM with the image clamped, a relu hidden layer and a softmax label layer, trained with
//     Adam by backpropagating through its unrolled descent.
//
//   ham_digits [digits.csv = build/datasets/digits.csv]   (--help: usage)
//
// Prints a table of the figures and exits 1 when a sanity check fails, 2 when the data cannot be read, 77 (skipped)
// when the file is missing.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "connex/csv.h"
#include "connex/error.h"
#include "connex/ham/ham.h"
#include "connex/openblas.h"

namespace ham = connex::ham;
using torch::Tensor;

namespace {

constexpr uint64_t kSeed = 0;
constexpr int64_t kPixels = 64;
constexpr int64_t kTrainRows = 1400;

struct Digits {
  Tensor pixels;  // [rows, 64] float, 0..16
  Tensor labels;  // [rows] int64
};

Digits load_digits(const std::string& path) {
  const auto table = connex::read_csv(path);
  if (table.columns.size() != kPixels + 1 || table.columns.back() != "digit")
    connex::fail("{}: expected 65 columns p0..p63,digit, found {}", path, table.columns.size());
  const auto rows = static_cast<int64_t>(table.rows.size());
  if (rows <= kTrainRows) connex::fail("{}: {} rows, need more than {}", path, rows, kTrainRows);
  Digits digits{torch::empty({rows, kPixels}), torch::empty({rows}, torch::kInt64)};
  auto pixels = digits.pixels.accessor<float, 2>();
  auto labels = digits.labels.accessor<int64_t, 1>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < kPixels; ++j) pixels[i][j] = static_cast<float>(table.rows[i][j]);
    labels[i] = static_cast<int64_t>(table.rows[i][kPixels]);
  }
  return digits;
}

// The HAMs see pixels in [-1, 1]: 0 (pixel value 8) is "no evidence", so a masked pixel that starts at 0 adds
// nothing to a memory's input x·ξ.
Tensor to_unit(const Tensor& pixels) { return pixels / 8 - 1; }
Tensor to_pixels(const Tensor& unit) { return (unit + 1) * 8; }
// What the classic Hopfield network stores and sees: the sign of the unit pixel (pixel ≥ 8 -> +1).
Tensor binarise(const Tensor& pixels) { return (pixels >= 8).to(torch::kFloat) * 2 - 1; }

// The linear synapses draw their own parameters; the memories are written into them instead, by name
// ("weight" W [size₁, size₂], "bias" [size₂]: connex/ham/synapse.h).
void set_parameters(const ham::HAM& model, const std::string& synapse,
                    const std::vector<std::pair<std::string, Tensor>>& values) {
  torch::NoGradGuard no_grad;
  auto parameters = model->synapse(synapse).synapse->named_parameters();
  for (const auto& [name, value] : values) parameters[name].copy_(value);
}

// A corrupted test set: where the descent starts, which pixels it must hold (undefined: none) and which pixels
// are scored (the corrupted ones).
struct Corruption {
  std::string name;
  Tensor start;    // [test, 64], unit pixels
  Tensor visible;  // [test, 64] bool, or undefined
  Tensor scored;   // [test, 64] bool
};

Corruption mask(std::string name, const Tensor& unit, const Tensor& masked) {
  return {std::move(name), unit.masked_fill(masked, 0), ~masked, masked};
}

struct Score {
  double error;      // mean |settled − true| over the scored pixels, in 0..16 units
  double retrieved;  // fraction whose nearest stored image has the right digit
};

Score score(const Tensor& settled_unit, const Corruption& corruption, const Tensor& test_pixels,
            const Tensor& test_labels, const Tensor& stored_unit, const Tensor& stored_labels) {
  const auto scored = corruption.scored.to(torch::kFloat);
  const double error =
      ((to_pixels(settled_unit) - test_pixels).abs() * scored).sum().item<double>() / scored.sum().item<double>();
  const auto nearest = torch::cdist(settled_unit, stored_unit).argmin(1);
  const double retrieved = (stored_labels.index({nearest}) == test_labels).to(torch::kFloat).mean().item<double>();
  return {error, retrieved};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  connex::restart_with_openblas_settings(argv);  // a HAM's descent is matrix products (connex/openblas.h)
  const auto started = std::chrono::steady_clock::now();
  const std::string path = argc > 1 ? argv[1] : "build/datasets/digits.csv";
  if (path == "--help" || path == "-h") {
    std::printf(
        "usage: ham_digits [digits.csv]\n\n"
        "Associative memories (connex/ham) on the 8x8 digit images of digits.csv (default\n"
        "build/datasets/digits.csv; scripts/fetch-datasets.sh writes it). Prints a table of retrieval\n"
        "errors for corrupted test images (dense HAM, classic Hopfield network, trivial fill), a HAM\n"
        "classifier's test accuracy and the sanity checks.\n"
        "Exits 0 when every check passes, 1 when one fails, 2 when the data cannot be read, 77 when\n"
        "the file is missing.\n");
    return 0;
  }
  if (!std::filesystem::exists(path)) {
    std::fprintf(stderr, "ham_digits: dataset %s not found (scripts/fetch-datasets.sh writes it)\n", path.c_str());
    return 77;  // ctest: skipped
  }
  Digits digits;
  try {
    digits = load_digits(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ham_digits: %s\n", e.what());  // read_csv's messages name the file too
    return 2;
  }
  const double load_seconds = seconds_since(started);
  torch::set_num_threads(2);
  torch::manual_seed(kSeed);  // the synapses' initial weights
  auto generator = at::make_generator<at::CPUGeneratorImpl>(kSeed);

  const auto train_pixels = digits.pixels.slice(0, 0, kTrainRows), test_pixels = digits.pixels.slice(0, kTrainRows);
  const auto train_labels = digits.labels.slice(0, 0, kTrainRows), test_labels = digits.labels.slice(0, kTrainRows);
  const auto train_unit = to_unit(train_pixels), test_unit = to_unit(test_pixels);
  const int64_t tests = test_pixels.size(0);
  std::vector<std::string> failures;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) failures.push_back(what);
  };

  // ---- 1. Retrieval -------------------------------------------------------------------------------------------
  // Dense associative memory: memory μ holds stored image ξ_μ as column μ of W and bias b_μ = −½|ξ_μ|², so its
  // input x·ξ_μ − ½|ξ_μ|² = ½|x|² − ½|x − ξ_μ|² ranks the memories by distance to the image (without the bias the
  // descent drifts towards the memories of largest norm). E = ½|x|² + Σ_memory (⟨m, g⟩ − logsumexp(βm)/β)
  // − xᵀ W g − b·g with g = softmax(βm): the image settles on a softmax-weighted blend of the nearest memories.
  constexpr double kBeta = 2.0;
  ham::HAM dense;
  dense->add_layer("image", {kPixels}, ham::identity())
      .add_layer("memory", {kTrainRows}, ham::softmax(kBeta))
      .add_synapse("store", ham::linear(/*bias=*/true), {"image", "memory"});
  set_parameters(dense, "store", {{"weight", train_unit.t()}, {"bias", -0.5 * train_unit.pow(2).sum(1)}});
  const auto dense_options = ham::DescentOptions().steps(15).dt(0.5).record_energy(true);

  // Classic Hopfield network as a one-layer HAM: E = −½ gᵀ W g with g = tanh(10 x); with dt = 1 each step sets
  // x = W g, so g ≈ sign(W g): synchronous sign updates of the ±1 pixels.
  const auto stored_binary = binarise(train_pixels);
  auto hebbian = stored_binary.t().mm(stored_binary) / kPixels;
  hebbian.fill_diagonal_(0);
  ham::HAM hopfield;
  hopfield->add_layer("image", {kPixels}, ham::tanh(10.0)).add_synapse("hebbian", ham::linear(), {"image"});
  set_parameters(hopfield, "hebbian", {{"weight", hebbian}});
  const auto hopfield_options = ham::DescentOptions().steps(20).dt(1.0);

  std::vector<Corruption> corruptions;
  for (const int64_t hidden : {16, 32}) {  // exactly 25% / 50% of each image's pixels, drawn per image
    const auto picked = std::get<1>(torch::rand({tests, kPixels}, generator).topk(hidden, 1));
    const auto masked = torch::zeros({tests, kPixels}, torch::kBool).scatter_(1, picked, true);
    corruptions.push_back(mask(fmt::format("{}% pixels masked", hidden * 100 / kPixels), test_unit, masked));
  }
  corruptions.push_back(
      mask("bottom half masked", test_unit, (torch::arange(kPixels) >= kPixels / 2).expand({tests, kPixels})));
  // Noise: every pixel moves (σ = 0.5 unit = 4 pixel values) and nothing is held.
  corruptions.push_back({"gaussian noise sd 4", test_unit + 0.5 * torch::randn({tests, kPixels}, generator), Tensor(),
                         torch::ones({tests, kPixels}, torch::kBool)});

  const auto mean_fill = train_unit.mean(0).expand({tests, kPixels});
  std::vector<std::array<Score, 3>> retrieval;  // trivial, dense HAM, Hopfield
  double energy_rise = 0, clamp_drift = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& c : corruptions) {
      ham::Clamps clamps;
      if (c.visible.defined()) clamps["image"] = c.visible;
      // Trivial: the training mean in the masked pixels; for noise, the noisy image as it is.
      const auto trivial = c.visible.defined() ? torch::where(c.scored, mean_fill, test_unit) : c.start;

      auto x = dense->init_states(tests);
      x["image"] = c.start;
      const auto descent = dense->descend(x, dense_options, clamps);
      const auto& settled = descent.states.at("image");
      // The descent must never raise the energy (up to float rounding) and never move a held pixel.
      const auto& energy = descent.energy;
      const double rise =
          (energy.slice(0, 1) - energy.slice(0, 0, -1)).max().item<double>() / (1 + energy.abs().max().item<double>());
      energy_rise = std::max(energy_rise, rise);
      if (c.visible.defined())
        clamp_drift = std::max(clamp_drift, (settled - c.start).abs().masked_select(c.visible).max().item<double>());

      // The Hopfield network only sees ±1 pixels: the visible ones binarised, the masked ones 0 (undecided).
      auto h = hopfield->init_states(tests);
      h["image"] = c.visible.defined() ? binarise(test_pixels).masked_fill(c.scored, 0) : c.start;
      const auto recalled = hopfield->activations(hopfield->descend(h, hopfield_options, clamps).states).at("image");

      retrieval.push_back({score(trivial, c, test_pixels, test_labels, train_unit, train_labels),
                           score(settled, c, test_pixels, test_labels, train_unit, train_labels),
                           score(recalled, c, test_pixels, test_labels, stored_binary, train_labels)});
    }
  }
  const double retrieval_seconds = seconds_since(started) - load_seconds;

  // ---- 2. Classifier ------------------------------------------------------------------------------------------
  // The image is held; the hidden and label layers settle for a few steps, and the label layer's state is read
  // as logits (its activation is their softmax). Training differentiates through the unrolled steps.
  constexpr int64_t kHidden = 128, kEpochs = 15, kBatch = 50;
  ham::HAM classifier;
  classifier->add_layer("image", {kPixels}, ham::identity())
      .add_layer("hidden", {kHidden}, ham::relu())
      .add_layer("label", {10}, ham::softmax())
      .add_synapse("features", ham::linear(/*bias=*/true), {"image", "hidden"})
      .add_synapse("readout", ham::linear(/*bias=*/true), {"hidden", "label"});
  const auto classify_options = ham::DescentOptions().steps(6).dt(0.5);
  auto classify = [&](const Tensor& images) {
    auto x = classifier->init_states(images.size(0));
    x["image"] = images;
    return classifier->descend(x, classify_options, {{"image", Tensor()}}).states.at("label");
  };
  auto test_accuracy = [&] {
    torch::NoGradGuard no_grad;
    return (classify(test_unit).argmax(1) == test_labels).to(torch::kFloat).mean().item<double>();
  };
  const double untrained_accuracy = test_accuracy();
  torch::optim::Adam optimizer(classifier->parameters(), torch::optim::AdamOptions(3e-3));
  double loss_sum = 0;
  for (int64_t epoch = 1; epoch <= kEpochs; ++epoch) {
    const auto order = torch::randperm(kTrainRows, generator);
    loss_sum = 0;
    for (int64_t begin = 0; begin < kTrainRows; begin += kBatch) {
      const auto rows = order.slice(0, begin, begin + kBatch);
      optimizer.zero_grad();
      auto loss = torch::cross_entropy_loss(classify(train_unit.index({rows})), train_labels.index({rows}));
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
    }
  }
  const double final_loss = loss_sum / ((kTrainRows + kBatch - 1) / kBatch);
  const double accuracy = test_accuracy();
  const double classifier_seconds = seconds_since(started) - load_seconds - retrieval_seconds;

  // ---- Report -------------------------------------------------------------------------------------------------
  fmt::print("connex/ham on {}: {} stored/training images, {} test images\n\n", path, kTrainRows, tests);
  fmt::print("Retrieval: error = mean |settled - true| over the corrupted pixels (0..16 pixel units);\n");
  fmt::print("class = the stored image nearest the settled one shows the test image's digit.\n");
  fmt::print("{:<20} | {:^15} | {:^15} | {:^16}\n", "corruption", "trivial fill", "dense HAM", "classic Hopfield");
  fmt::print("{:<20} | {:>6} {:>8} | {:>6} {:>8} | {:>6} {:>9}\n", "", "error", "class", "error", "class", "error",
             "class");
  for (size_t i = 0; i < corruptions.size(); ++i) {
    const auto& r = retrieval[i];
    fmt::print("{:<20} | {:6.2f} {:8.3f} | {:6.2f} {:8.3f} | {:6.2f} {:9.3f}\n", corruptions[i].name, r[0].error,
               r[0].retrieved, r[1].error, r[1].retrieved, r[2].error, r[2].retrieved);
  }
  fmt::print(
      "(dense HAM: {} memories, softmax beta {}, {} steps of dt {}; Hopfield: Hebbian W over the same images "
      "binarised, tanh(10x), {} steps of dt {}; trivial: training mean per pixel, or the noisy image)\n\n",
      kTrainRows, kBeta, dense_options.steps(), dense_options.dt(), hopfield_options.steps(), hopfield_options.dt());
  fmt::print(
      "Classifier: image (held) -> {} relu -> 10 softmax, {} steps of dt {}, Adam 3e-3, {} epochs of "
      "batches of {}\n",
      kHidden, classify_options.steps(), classify_options.dt(), kEpochs, kBatch);
  fmt::print("test accuracy {:.3f} (untrained {:.3f}), last epoch's mean loss {:.4f}\n\n", accuracy, untrained_accuracy,
             final_loss);
  fmt::print("Largest relative energy rise in a dense descent step {:.1e}; largest drift of a held pixel {:.1e}\n",
             energy_rise, clamp_drift);
  fmt::print("Time: reading {:.1f} s, retrieval {:.1f} s, classifier {:.1f} s, total {:.1f} s\n", load_seconds,
             retrieval_seconds, classifier_seconds, seconds_since(started));

  // ---- Sanity checks ------------------------------------------------------------------------------------------
  const auto& masked25 = retrieval[0];
  check(masked25[1].error < 0.75 * masked25[0].error, "dense HAM's 25%-masked error is not well below the mean fill's");
  check(masked25[1].retrieved > 0.85, "dense HAM retrieves fewer than 85% of 25%-masked digits to the right class");
  for (size_t i = 0; i < corruptions.size(); ++i)
    check(retrieval[i][1].error < retrieval[i][2].error,
          "dense HAM's error is not below the Hopfield network's for " + corruptions[i].name);
  check(energy_rise < 1e-5, "a dense descent step raised the energy");
  check(clamp_drift == 0, "a held pixel moved");
  check(accuracy > 0.8, "classifier test accuracy is not above 0.8");
  for (const auto& f : failures) fmt::print(stderr, "check failed: {}\n", f);
  if (failures.empty()) fmt::print("All checks passed.\n");
  return failures.empty() ? 0 : 1;
}
