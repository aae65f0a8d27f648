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
#include "connex/checkpoint.h"
#include "connex/config.h"
#include "connex/graph_export.h"
#include "connex/torchscript_export.h"
#include "connex/csv.h"
#include "connex/techniques.h"
#include "connex/edit_script.h"
#include "connex/fused_kernel.h"
#if defined(CONNEX_WITH_DISTRIBUTED)
#include "connex/distributed.h"
#endif
