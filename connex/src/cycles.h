#pragma once
// Cycle finding over index graphs, for GraphSpec and the editor's messages.
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace connex {

// One directed cycle of the graph over `num_nodes` nodes (0..n-1) and `edges`,
// as a closed node path [a, b, ..., a], or nullopt for a DAG. O(V + E).
std::optional<std::vector<int64_t>> find_cycle(int64_t num_nodes,
                                               const std::vector<std::pair<int64_t, int64_t>>& edges);

}  // namespace connex
