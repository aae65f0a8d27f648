#pragma once
// Umbrella header: everything a connex user needs.
#include "connex/error.h"
#include "connex/graph_spec.h"
#include "connex/neural_network.h"
#include "connex/neuron_id.h"
#include "connex/optimizer_state.h"
#include "connex/options.h"
#include "connex/plasticity.h"
#include "connex/prebuilt.h"
#include "connex/tensor_function.h"
#include "connex/topology.h"
#include "connex/weighted_graph.h"
