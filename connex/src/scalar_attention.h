#pragma once
// Softmax attention over sequences of scalars: the core that both attention
// techniques share (techniques.h). For group g (a level, or one neuron of
// it), sample b and position i of the group's L-long sequence:
//
//   o[g, i, b] = Σ_{j ∈ keys(g)} softmax_j(scale_g · q[g, i, b] · k[g, j, b]) · v[g, j, b]
//
// and 0 where keys(g) is empty. Internal.
#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace connex {

// Which positions each group attends to, in CSR form.
struct AttentionKeys {
  std::vector<int64_t> offsets;  // [groups + 1]: group g's keys are positions[offsets[g], offsets[g + 1])
  std::vector<int64_t> positions;
  std::vector<double> scale;  // [groups]: the scores' factor
  // When set, only the keys are queries too: o is 0 at every other position
  // (neuron attention, whose other positions meet a zero weight).
  bool queries_are_keys = false;
};

// q, k, v: [groups, L, batch]; returns o, [groups, L, batch]. On CPU in
// float or double this is one autograd node: it keeps q, k, v, o and one
// softmax normaliser per row for backward (5 values per group, position and
// sample, where the plain formula keeps L per row: the attention weights)
// and recomputes the weights there, without allocating anything L² long.
// Where a query's scores span a few units at most (|q·k| scaled; usual at
// initialisation), its sums are a polynomial for exp (exp_polynomial()) in
// moments of the keys that all queries share, to within a quarter ulp: work
// (queries + keys) times the degree instead of queries × keys exponentials.
// A sample whose scores span more is summed exactly on its own.
// A backward that must be differentiable again (create_graph) takes the
// torch formula's gradients. Elsewhere (CUDA, half precision) it runs
// scalar_attention_reference().
torch::Tensor scalar_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const AttentionKeys& keys);

// The kernel's two passes, for a caller that is itself one autograd
// function (the dense path). q, k, v, o, inv_sum, go and the gradients:
// contiguous CPU float32/float64 tensors [groups, L, batch]. Forward writes
// o and inv_sum at every query of a group with keys (the others are left
// as they are); backward writes dL/dq into gq where a query row has a
// gradient (callers zero gq) and adds dL/dk and dL/dv into gk and gv.
void scalar_attention_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionKeys& keys, torch::Tensor& o, torch::Tensor& inv_sum);
void scalar_attention_backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& o, const torch::Tensor& inv_sum, const torch::Tensor& go,
                               const AttentionKeys& keys, torch::Tensor& gq, torch::Tensor& gk, torch::Tensor& gv);

// Topo self-attention's keys for a level of L sources (one group: every
// position, scaled by 1/sqrt(L)), and its formula (techniques.h) on the
// level's sources s, [L, batch]: s + attention(Wq s + bq, Wk s + bk, Wv s + bv),
// differentiable (again, too).
AttentionKeys topo_attention_keys(int64_t L);
torch::Tensor topo_attention_formula(const torch::Tensor& s, const torch::Tensor& query_weight,
                                     const torch::Tensor& query_bias, const torch::Tensor& key_weight,
                                     const torch::Tensor& key_bias, const torch::Tensor& value_weight,
                                     const torch::Tensor& value_bias);

// How many (query, sample) pairs the kernel's forward has summed by the
// expansion and exactly, since the process started: for tests.
struct AttentionPathCounts {
  int64_t expanded = 0, exact = 0;
};
AttentionPathCounts attention_path_counts();

// The polynomial that stands for exp on [-range, range] in the kernel's
// expansion: its coefficients of x^0 .. x^P, P the least degree whose
// relative error is provably under `tolerance` (Taylor's series economised
// by Chebyshev polynomials); empty when P would exceed 38.
std::vector<double> exp_polynomial(double range, double tolerance);

// The same in torch operations, materialising the [groups, batch, L, L] weights.
torch::Tensor scalar_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const AttentionKeys& keys);

}  // namespace connex
