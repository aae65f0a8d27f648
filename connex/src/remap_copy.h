#pragma once
// The one way a ParameterRemap's pairs move entries: a network's adoption of
// an edited copy's parameters and the optimizer state that follows them.
#include <torch/types.h>

#include "connex/parameter_remap.h"

namespace connex {

// Throws, naming `context`, unless the pairs have equal lengths and every
// new index lies in [0, to_size) and every old one in [0, from_size).
void check_moved_entries(int64_t to_size, int64_t from_size, const ParameterRemap::Moved& moved, const char* context);

// to[new_index[k]] = from[old_index[k]] over flattened entries, after
// check_moved_entries() (a refused remap moves nothing). On the CPU (float
// or double, contiguous) it is one pass on connex's threads (share_work)
// with no temporary; elsewhere torch's index_select and index_copy_.
void copy_moved_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved& moved,
                        const char* context);
// copy_moved_entries() less the check, for pairs that passed it for tensors
// of these sizes (an optimizer's state fields share their parameter's pairs).
void move_checked_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved& moved);

}  // namespace connex
