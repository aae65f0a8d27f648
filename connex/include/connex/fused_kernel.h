#pragma once
// The fused CPU path: the whole network's forward and backward as one
// autograd function over the flat connection layout, instead of a few torch
// ops per level. Per level, neurons run in parallel; each computes its
// pre-activation as a sum of weight × source row (contiguous over the batch
// dimension), and backward gathers each neuron's gradient from its outgoing
// connections (grouped by source), so no two threads write the same row.
// It pays where per-op overhead dominates (small networks) and where levels
// are sparse; dense layered networks stay on the matmul path. The network
// chooses it (NeuralNetworkImpl::uses_fused_kernel); its plan lives in
// connex/src/fused_plan.h.
namespace connex {

// The threads the fused kernel shares each level among, from a pool of its
// own (not torch's OpenMP pool). 0, the default, follows torch's intra-op
// setting (torch::set_num_threads); n > 0 sets it apart, so that torch's
// own operations (the loss, the optimizer) can run on one thread while the
// kernel runs on n. That is what the `connex` CLI does: on a machine where
// other processes hold cores, torch's parallel regions wait for every
// thread at their end and slowed training many times over, while the
// kernel's pool measures and runs serially while sharing does not pay.
void set_fused_kernel_threads(int threads);
int fused_kernel_threads();

}  // namespace connex
