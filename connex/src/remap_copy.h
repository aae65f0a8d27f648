#pragma once
// The one way a ParameterRemap's pairs move entries: a network's adoption of
// an edited copy's parameters and the optimizer state that follows them.
#include <torch/types.h>

#include "connex/parameter_remap.h"

namespace connex {

// to[new_index[k]] = from[old_index[k]] over flattened entries. On the CPU
// (float or double, contiguous) it is one pass on connex's threads
// (share_work) with no temporary; elsewhere torch's index_select and
// index_copy_. An index out of range throws, naming `context`.
void copy_moved_entries(const torch::Tensor& to, const torch::Tensor& from, const ParameterRemap::Moved& moved,
                        const char* context);

}  // namespace connex
