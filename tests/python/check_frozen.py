"""What networkx sees of connex's frozen flags: reads DIR/g.json (node-link)
and DIR/g.graphml and prints, for each, the frozen neurons and connections
as one JSON line: {"nodes": [...], "edges": [[u, v], ...]}, ids as text,
sorted.

usage: check_frozen.py DIR
Exit 0 when both files were read, 77 when networkx is missing (ctest's skip
code), 1 otherwise."""
import json
import os
import sys

try:
    import networkx as nx
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)


def frozen(graph):
    nodes = sorted(str(n) for n, d in graph.nodes(data=True) if d.get("frozen") is True)
    edges = sorted([str(u), str(v)] for u, v, d in graph.edges(data=True) if d.get("frozen") is True)
    return {"nodes": nodes, "edges": edges}


def main(folder):
    data = json.load(open(os.path.join(folder, "g.json")))
    data.setdefault("edges", data["links"])  # networkx 2.x reads "links", 3.6 "edges"
    print(json.dumps(frozen(nx.node_link_graph(data))))
    print(json.dumps(frozen(nx.read_graphml(os.path.join(folder, "g.graphml")))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
