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

// How many threads one fused level runs on: torch's intra-op thread count
// (torch::set_num_threads) when connex was compiled with OpenMP (the
// CONNEX_OPENMP build option, on with GCC), else 1. Found by running a
// parallel loop, so it reports what the kernel gets, not what was asked.
int fused_kernel_threads();

}  // namespace connex
