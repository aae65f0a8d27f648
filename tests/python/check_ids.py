"""Reads a network's GraphML and node-link JSON with independent parsers and
prints, as JSON, the node ids each one sees: {"graphml": [...], "node_link": [...]}.
Exit 77 when networkx is missing (the test then skips)."""
import json
import sys
import xml.etree.ElementTree as ET

try:
    import networkx as nx
except ImportError:
    sys.exit(77)

directory = sys.argv[1]
ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
# A strict XML parser first: control characters would make this raise.
root = ET.parse(directory + "/g.graphml").getroot()
graphml_ids = [node.get("id") for node in root.iter("{http://graphml.graphdrawing.org/xmlns}node")]
nx.read_graphml(directory + "/g.graphml")  # and networkx's own reader accepts it
with open(directory + "/g.json", encoding="utf-8") as f:
    data = json.load(f)
data.setdefault("edges", data.get("links", []))
graph = nx.node_link_graph(data, edges="edges") if "edges" in nx.node_link_graph.__code__.co_varnames else nx.node_link_graph(data)
print(json.dumps({"graphml": graphml_ids, "node_link": [str(n) for n in graph.nodes]}))
