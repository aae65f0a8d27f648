#pragma once
// Topo norm's math (techniques.h), shared by its autograd node on the
// per-level path and by the dense path and the fused kernel, which apply it
// themselves. Internal.
#include <vector>

#include <torch/types.h>

#include "tensor_file.h"

namespace connex {

class NeuralNetworkImpl;

// Files written before "gamma" and "beta" were flat name each level's rows
// ("topo_norm.level3_gamma", [sources, 1]): those parts of this network's
// parameters, by their old names; none without topo norm.
std::vector<detail::ParameterPart> topo_norm_level_parts(const NeuralNetworkImpl& network);

// s: [L, batch] -> gamma ⊙ standardise(s) + beta (gamma, beta [L, 1]);
// standardised per sample (a column) when L > 1. In torch operations:
// other devices and dtypes, and gradients that are differentiable again.
torch::Tensor topo_norm_formula(const torch::Tensor& s, const torch::Tensor& gamma, const torch::Tensor& beta);

// The same on contiguous CPU float32/float64 tensors: writes
// normed = (s - mean) * rstd, rstd = 1 / sqrt(var + eps) per sample ([batch])
// and y = gamma ⊙ normed + beta; with L = 1, normed = s and rstd = 1.
void topo_norm_forward(const torch::Tensor& s, const torch::Tensor& gamma, const torch::Tensor& beta,
                       torch::Tensor& normed, torch::Tensor& y, torch::Tensor& rstd);

// Its backward from dy = dL/dy: with g = dy ⊙ gamma, ds = rstd (g - mean_i(g)
// - normed mean_i(g ⊙ normed)) per sample (ds = g with L = 1);
// dgamma = Σ_b dy ⊙ normed, dbeta = Σ_b dy. Writes ds, dgamma and dbeta
// (allocated by the caller).
void topo_norm_backward(const torch::Tensor& dy, const torch::Tensor& normed, const torch::Tensor& gamma,
                        const torch::Tensor& rstd, torch::Tensor& ds, torch::Tensor& dgamma, torch::Tensor& dbeta);

// The loops of both on raw rows, for a caller that lays several levels out
// in one tensor: s, normed, y, dy and ds [L, B] row-major, gamma, beta,
// dgamma and dbeta [L], rstd [B]. ds is written, or added to with `add` (a
// caller's own gradient rows). Compiled for each instruction set
// (vector_clones.h).
void topo_norm_forward_rows(const float* s, const float* gamma, const float* beta, float* normed, float* y, float* rstd,
                            int64_t L, int64_t B);
void topo_norm_forward_rows(const double* s, const double* gamma, const double* beta, double* normed, double* y,
                            double* rstd, int64_t L, int64_t B);
void topo_norm_backward_rows(const float* dy, const float* normed, const float* gamma, const float* rstd, float* ds,
                             bool add, float* dgamma, float* dbeta, int64_t L, int64_t B);
void topo_norm_backward_rows(const double* dy, const double* normed, const double* gamma, const double* rstd,
                             double* ds, bool add, double* dgamma, double* dbeta, int64_t L, int64_t B);

}  // namespace connex
