"""Python side of the export test: load connex's TorchScript file with
torch.jit.load and its node-link JSON with networkx, and reproduce the
outputs the C++ network computed.

usage: check_exports.py DIR   (DIR holds model.pt, graph.json, cases.json)
Exit 0 when both agree with the C++ outputs within 1e-6, 77 when torch or
networkx is missing (ctest's skip code), 1 otherwise."""
import json
import math
import os
import sys

try:
    import networkx as nx
    import torch
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: max(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0))),
    "silu": lambda z: z / (1.0 + math.exp(-z)),
    "tanh": math.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + math.exp(-z)),
}


def networkx_forward(graph, x):
    """Evaluates the weighted graph one neuron at a time, in topological order."""
    options = graph.graph["options"]
    act = ACTIVATIONS[options["hidden_activation"]]
    value = dict(zip(graph.graph["inputs"], x))
    for n in nx.topological_sort(graph):
        if n in value:
            continue
        z = graph.nodes[n]["bias"] + sum(graph.edges[u, n]["weight"] * value[u] for u in graph.predecessors(n))
        value[n] = z if graph.nodes[n]["role"] == "output" else act(z)
    out = [value[n] for n in graph.graph["outputs"]]
    t = options["output_transformation"]
    if t in ("softmax", "log_softmax"):
        m = max(out)
        s = sum(math.exp(v - m) for v in out)
        out = [math.exp(v - m) / s for v in out] if t == "softmax" else [v - m - math.log(s) for v in out]
    return out


def main(folder):
    cases = json.load(open(os.path.join(folder, "cases.json")))
    module = torch.jit.load(os.path.join(folder, "model.pt"))
    data = json.load(open(os.path.join(folder, "graph.json")))
    data.setdefault("edges", data["links"])  # networkx 2.x reads "links", 3.6 "edges"
    graph = nx.node_link_graph(data)
    x = torch.tensor(cases["x"], dtype=torch.float64)
    expected = torch.tensor(cases["y"], dtype=torch.float64)
    scripted = module(x.to(getattr(torch, cases["dtype"]))).double()
    err_script = (scripted - expected).abs().max().item()
    by_graph = torch.tensor([networkx_forward(graph, row) for row in cases["x"]], dtype=torch.float64)
    err_graph = (by_graph - expected).abs().max().item()
    print(f"torch {torch.__version__}, networkx {nx.__version__}: "
          f"torch.jit error {err_script:.3g}, networkx error {err_graph:.3g}")
    return 0 if err_script <= 1e-6 and err_graph <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
