#pragma once
// The 12-neuron network of Connex's README, in code and as a config: one copy
// for connex's programs, tests and fuzzers.
#include "connex/graph_spec.h"

namespace connex::apps {

// The 12-neuron network of Connex's README: input 0, outputs 3 and 11.
inline GraphSpec readme_graph() {
  return GraphSpec::from_adjacency({{0, {1, 2, 3}},
                                    {1, {4}},
                                    {2, {4, 5}},
                                    {4, {6}},
                                    {5, {7}},
                                    {6, {8, 9}},
                                    {7, {10}},
                                    {8, {11}},
                                    {9, {11}},
                                    {10, {11}}},
                                   /*inputs=*/{0}, /*outputs=*/{3, 11});
}

// The same network as a connex config: what `connex train` trains without one.
constexpr const char* kReadmeConfig = R"({
  "format": "connex-network", "version": 1,
  "graph": {"adjacency": {"0": [1, 2, 3], "1": [4], "2": [4, 5], "4": [6], "5": [7], "6": [8, 9],
                          "7": [10], "8": [11], "9": [11], "10": [11]},
            "inputs": [0], "outputs": [3, 11]},
  "options": {"hidden_activation": "relu"}
})";

}  // namespace connex::apps
