// GraphSpec validation (one test per broken rule) and the compiled Topology.
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "test_util.h"

using namespace connex;
using connex::testing::random_dag;

namespace {

GraphSpec letters_graph() {
  // The A..I graph of the core issue.
  return GraphSpec::from_edges({{"A", "C"},
                                {"B", "C"},
                                {"B", "D"},
                                {"A", "D"},
                                {"C", "E"},
                                {"C", "F"},
                                {"D", "F"},
                                {"E", "G"},
                                {"F", "G"},
                                {"G", "H"},
                                {"G", "I"}},
                               {"A", "B"}, {"H", "I"});
}

}  // namespace

TEST(GraphSpec, AdjacencyKeepsIsolatedNeuronsAndOrder) {
  // Without a neuron list: adjacency keys (a key without successors too),
  // then neurons first named by an edge.
  auto spec = GraphSpec::from_adjacency({{0, {1, 2}}, {1, {3}}, {5, {}}}, {0}, {3});
  EXPECT_EQ(spec.neurons(), (std::vector<NeuronId>{0, 1, 5, 2, 3}));
  EXPECT_EQ(spec.edges().size(), 3u);
  // With one: exactly the list, in its order, isolated neuron 4 included.
  spec = GraphSpec::from_adjacency({{0, {1, 2}}, {1, {3}}, {5, {}}}, {0}, {3}, {4, 3, 2, 1, 0, 5});
  EXPECT_EQ(spec.neurons(), (std::vector<NeuronId>{4, 3, 2, 1, 0, 5}));
  EXPECT_EQ(spec.edges().size(), 3u);
  EXPECT_EQ(spec.role(4), Role::Hidden);
  EXPECT_EQ(spec.role(0), Role::Input);
  EXPECT_EQ(spec.role(3), Role::Output);
}

// A given neuron list is the whole graph: a typo in an edge is an error that
// names the edge and the id, never a new neuron (the issue's "n2OO1").
TEST(GraphSpec, NeuronListIsCompleteSoAnEdgeNamingAnotherIdIsAnError) {
  std::vector<NeuronId> neurons;
  std::vector<Edge> edges;
  for (int k = 0; k < 2000; ++k) neurons.push_back("n" + std::to_string(k));
  for (int k = 1; k < 1999; ++k) edges.emplace_back("n0", neurons[k]);
  const std::vector<Edge> good = edges;
  edges.emplace_back("n1", "n2OO1");  // letter O for zero
  EXPECT_THROW_MSG(GraphSpec::from_edges(edges, {"n0"}, {"n1999"}, neurons),
                   "GraphSpec: edge \"n1\" -> \"n2OO1\" names neuron \"n2OO1\", which is not in the neurons list");
  EXPECT_EQ(GraphSpec::from_edges(good, {"n0"}, {"n1999"}, neurons).num_neurons(), 2000u);
  // The same in the other constructors and forms.
  EXPECT_THROW_MSG(GraphSpec(neurons, edges, {"n0"}, {"n1999"}, "NeuralNetwork()"),
                   "NeuralNetwork(): edge \"n1\" -> \"n2OO1\" names neuron");
  EXPECT_THROW_MSG(GraphSpec::from_adjacency({{0, {1}}, {1, {2, 7}}}, {0}, {2}, {0, 1, 2}),
                   "GraphSpec: edge 1 -> 7 names neuron 7, which is not in the neurons list");
  EXPECT_THROW_MSG(GraphSpec::from_adjacency({{0, {1}}, {1, {2}}, {9, {}}}, {0}, {2}, {0, 1, 2}),
                   "GraphSpec: adjacency key 9 is not in the neurons list");
  // An id of the other kind says so.
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}, {1, "2"}}, {0}, {1}, {0, 1, 2}),
                   "GraphSpec: edge 1 -> \"2\" names neuron \"2\", a string id, but this graph's ids are integers");
  EXPECT_THROW_MSG(GraphSpec::from_adjacency({{"a", {"b"}}, {0, {}}}, {"a"}, {"b"}, {"a", "b"}),
                   "GraphSpec: adjacency key 0 is an integer id, but this graph's ids are strings");
  // Without a list, the edges name the neurons, in order of first appearance.
  EXPECT_EQ(GraphSpec::from_edges({{"b", "c"}, {"a", "c"}}, {"a", "b"}, {"c"}).neurons(),
            (std::vector<NeuronId>{"b", "c", "a"}));
}

// Inputs and outputs never add a neuron, and an id of the other kind than
// the graph's says so instead of "not a neuron of the graph".
TEST(GraphSpec, InputsAndOutputsOfTheOtherIdKindSaySo) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{"a", "b"}}, {0}, {"b"}),
                   "GraphSpec: input neuron 0 is an integer id, but this graph's ids are strings");
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0}, {"1"}),
                   "GraphSpec: output neuron \"1\" is a string id, but this graph's ids are integers");
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0}, {1}, {0, 1, 2, "3"}),
                   "neuron \"3\" is a string but neuron 0 is an integer");
  // An isolated input must be listed: naming it as an input is not enough.
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0, 5}, {1}),
                   "GraphSpec: input neuron 5 is not a neuron of the graph");
  EXPECT_EQ(GraphSpec::from_edges({{0, 1}}, {0, 5}, {1}, {0, 1, 5}).role(5), Role::Input);
}

TEST(GraphSpec, FromJsonNeuronListIsCompleteAndErrorsNameTheEdge) {
  using nlohmann::json;
  EXPECT_THROW_MSG(
      GraphSpec::from_json(
          json::parse(
              R"({"neurons":["n1","n2","n2001"],"edges":[["n1","n2"],["n1","n2OO1"]],"inputs":["n1"],"outputs":["n2"]})"),
          "g.json"),
      "g.json: /edges/1/1: edge \"n1\" -> \"n2OO1\" names neuron \"n2OO1\", which is not in the neurons list");
  EXPECT_THROW_MSG(
      GraphSpec::from_json(json::parse(R"({"neurons":[0,1,2],"edges":[[0,1],["1",2]],"inputs":[0],"outputs":[2]})"),
                           "g.json", "/graph"),
      "g.json: /graph/edges/1/0: edge \"1\" -> 2 names neuron \"1\", a string id, but this graph's ids are integers");
  EXPECT_THROW_MSG(
      GraphSpec::from_json(
          json::parse(R"({"neurons":[0,1,2],"adjacency":{"0":[1],"1":[2],"5":[]},"inputs":[0],"outputs":[2]})"),
          "g.json"),
      "g.json: /adjacency/5: adjacency key 5 is not in the neurons list");
  EXPECT_THROW_MSG(
      GraphSpec::from_json(
          json::parse(R"({"neurons":[0,1,2],"adjacency":{"0":[1,7],"1":[2]},"inputs":[0],"outputs":[2]})"), "g.json"),
      "g.json: /adjacency/0/1: edge 0 -> 7 names neuron 7, which is not in the neurons list");
  EXPECT_THROW_MSG(
      GraphSpec::from_json(json::parse(R"({"neurons":[0,1,0],"edges":[[0,1]],"inputs":[0],"outputs":[1]})"), "g.json"),
      "g.json: neuron 0 is listed twice in the neuron list");
  // The list's kind decides the adjacency keys' kind, so string inputs in an
  // integer graph are named as such.
  EXPECT_THROW_MSG(
      GraphSpec::from_json(json::parse(R"({"neurons":[0,1],"adjacency":{"0":[1]},"inputs":["0"],"outputs":[1]})"),
                           "g.json"),
      "g.json: input neuron \"0\" is a string id, but this graph's ids are integers");
  // A complete list keeps its order and isolated neurons; no list (or an empty one): the edges name the neurons.
  auto listed = GraphSpec::from_json(
      json::parse(R"({"neurons":[3,2,1,0],"adjacency":{"0":[1],"1":[2]},"inputs":[0],"outputs":[2]})"));
  EXPECT_EQ(listed.neurons(), (std::vector<NeuronId>{3, 2, 1, 0}));
  EXPECT_EQ(listed.edges(), (std::vector<Edge>{{0, 1}, {1, 2}}));
  auto unlisted =
      GraphSpec::from_json(json::parse(R"({"neurons":[],"edges":[[1,2],[0,1]],"inputs":[0],"outputs":[2]})"));
  EXPECT_EQ(unlisted.neurons(), (std::vector<NeuronId>{1, 2, 0}));
}

// The batch the validation hands the compile: inputs 0; any other neuron one
// more than its latest predecessor, and at least 1 (the isolated hidden 4).
TEST(GraphSpec, IndexAdjacencyGivesEachNeuronItsTopologicalBatch) {
  const auto spec =
      GraphSpec::from_edges({{0, 2}, {2, 3}, {1, 3}, {3, 5}, {4, 5}, {1, 6}}, {0, 1}, {5, 6}, {0, 1, 2, 3, 4, 5, 6});
  const auto& batch = spec.index_adjacency().batch;
  const std::vector<int64_t> expected{0, 0, 1, 2, 1, 3, 1};
  for (int id = 0; id <= 6; ++id) EXPECT_EQ(batch[spec.index_of(id)], expected[id]) << "neuron " << id;
  const auto topo = Topology::compile(spec);
  for (int id = 0; id <= 6; ++id) EXPECT_EQ(topo->level_of(topo->dense_of(id)), expected[id]) << "neuron " << id;
}

TEST(GraphSpec, DuplicateEdgesCollapse) {
  auto spec = GraphSpec::from_edges({{0, 1}, {0, 1}, {1, 2}}, {0}, {2});
  EXPECT_EQ(spec.edges().size(), 2u);
}

TEST(GraphSpec, RepeatedEdgesKeepTheFirstOfEachInOrder) {
  auto spec = GraphSpec::from_edges({{0, 2}, {0, 1}, {1, 2}, {0, 2}, {3, 2}, {0, 1}}, {0, 3}, {2});
  EXPECT_EQ(spec.edges(), (std::vector<Edge>{{0, 2}, {0, 1}, {1, 2}, {3, 2}}));
  ASSERT_EQ(spec.edge_indices().size(), 4u);
  for (size_t k = 0; k < 4; ++k) {
    EXPECT_EQ(spec.neurons()[spec.edge_indices()[k].first], spec.edges()[k].first);
    EXPECT_EQ(spec.neurons()[spec.edge_indices()[k].second], spec.edges()[k].second);
  }
}

// A list a spec makes on first use (`get` asks for it): threads racing to
// make it, and copies taken meanwhile, must all see one complete list.
template <typename Get, typename List>
void expect_made_once_while_threads_race(const GraphSpec& spec, const Get& get, const List& expected) {
  std::vector<const List*> seen(8);
  std::vector<GraphSpec> copies(8, spec);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      if (t % 2) copies[t] = spec;
      seen[t] = &get(spec);
    });
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(seen[t], seen[0]);
    EXPECT_EQ(get(copies[t]), expected);
  }
  EXPECT_EQ(*seen[0], expected);
}

TEST(GraphSpec, EdgeListIsMadeOnceWhileThreadsRaceForIt) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    const GraphSpec spec = random_dag(rng, {30, 60, 0.3, trial % 2 == 1});
    std::vector<Edge> expected;
    for (const auto& [u, v] : spec.edge_indices()) expected.emplace_back(spec.neurons()[u], spec.neurons()[v]);
    expect_made_once_while_threads_race(
        spec, [](const GraphSpec& s) -> const std::vector<Edge>& { return s.edges(); }, expected);
  }
}

// A patched topology's spec keeps only its successor lists: edge_indices()
// is made from them on first use, once, whichever thread asks first, and
// copies share it. The spec reads back from its JSON as the same graph.
TEST(GraphSpec, PatchedSpecMakesItsEdgePositionsOnceFromItsSuccessors) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    auto base = Topology::compile(random_dag(rng, {30, 60, 0.3, trial % 2 == 1}));
    std::vector<int64_t> removed;
    for (int64_t c = 0; c < base->num_connections(); c += 3) removed.push_back(c);
    ConnectionArray old_connection;
    const auto patched = base->with_connections(removed, {}, {}, old_connection);
    ASSERT_TRUE(patched);
    const GraphSpec& spec = patched->spec();
    std::vector<std::pair<int64_t, int64_t>> expected;
    const auto& adjacency = spec.index_adjacency();
    for (size_t u = 0; u + 1 < adjacency.offsets.size(); ++u)
      for (int64_t e = adjacency.offsets[u]; e < adjacency.offsets[u + 1]; ++e)
        expected.emplace_back(static_cast<int64_t>(u), adjacency.targets[e]);
    ASSERT_EQ(static_cast<int64_t>(expected.size()), patched->num_connections());
    expect_made_once_while_threads_race(
        spec, [](const GraphSpec& s) -> const auto& { return s.edge_indices(); }, expected);
    for (size_t k = 0; k < expected.size(); ++k)
      ASSERT_EQ(spec.edges()[k], Edge(spec.neurons()[expected[k].first], spec.neurons()[expected[k].second]));
    const GraphSpec read_back = GraphSpec::from_json(spec.to_json());
    EXPECT_EQ(read_back.edge_indices(), expected);
    EXPECT_EQ(read_back.index_adjacency().targets, adjacency.targets);
  }
}

TEST(GraphSpec, CopiesAndMovesKeepTheEdgeList) {
  std::mt19937_64 rng(6);
  std::vector<GraphSpec> specs;
  std::vector<std::vector<Edge>> expected;
  for (int k = 0; k < 40; ++k) {
    GraphSpec spec = random_dag(rng, {8, 20, 0.3});
    if (k % 2) (void)spec.edges();  // half of them with the list already made
    std::vector<Edge> edges;
    for (const auto& [u, v] : spec.edge_indices()) edges.emplace_back(spec.neurons()[u], spec.neurons()[v]);
    GraphSpec copy = spec;
    EXPECT_EQ(copy.edges(), edges);
    specs.push_back(std::move(spec));  // the vector grows and moves its specs
    expected.push_back(edges);
  }
  for (size_t k = 0; k < specs.size(); ++k) EXPECT_EQ(specs[k].edges(), expected[k]) << k;
  static_assert(std::is_nothrow_move_constructible_v<GraphSpec>);
}

TEST(GraphSpec, RejectsCycleAndPrintsIt) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 3}, {3, 5}, {5, 7}, {7, 3}, {7, 9}}, {0}, {9}),
                   "the graph has the cycle 3 -> 5 -> 7 -> 3");
}

TEST(GraphSpec, RejectsSelfLoop) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}, {1, 1}, {1, 2}}, {0}, {2}), "cycle 1 -> 1");
}

TEST(GraphSpec, RejectsInputWithIncomingConnection) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}, {1, 2}, {3, 0}}, {0, 3}, {2}),
                   "input neuron 0 has the incoming connection 3 -> 0");
}

TEST(GraphSpec, RejectsOutputWithOutgoingConnection) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}, {1, 2}, {2, 4}}, {0}, {2, 4}),
                   "output neuron 2 has the outgoing connection 2 -> 4");
}

TEST(GraphSpec, RejectsNeuronThatIsInputAndOutput) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0, 1}, {1}), "neuron 1 is both an input and an output");
}

TEST(GraphSpec, RejectsUnknownInput) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0, 7}, {1}), "input neuron 7 is not a neuron of the graph");
}

TEST(GraphSpec, RejectsUnknownOutput) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{"a", "b"}}, {"a"}, {"x"}),
                   "output neuron \"x\" is not a neuron of the graph");
}

TEST(GraphSpec, RejectsEmptyInputs) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {}, {1}), "no input neurons given");
}

TEST(GraphSpec, RejectsEmptyOutputs) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0}, {}), "no output neurons given");
}

TEST(GraphSpec, RejectsDuplicateInput) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 2}, {1, 2}}, {0, 1, 0}, {2}), "input neuron 0 is listed twice");
}

TEST(GraphSpec, RejectsDuplicateOutput) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}, {0, 2}}, {0}, {1, 2, 2}), "output neuron 2 is listed twice");
}

TEST(GraphSpec, RejectsDuplicateInNeuronList) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, 1}}, {0}, {1}, {0, 1, 0}), "neuron 0 is listed twice in the neuron list");
}

TEST(GraphSpec, RejectsMixedIdKinds) {
  EXPECT_THROW_MSG(GraphSpec::from_edges({{0, "a"}}, {0}, {"a"}),
                   "neuron \"a\" is a string but neuron 0 is an integer");
}

// Integer ids written as text (adjacency keys, the CLI's flags): decimal
// digits only, so " 12", "+12" and "012" do not quietly become neuron 12.
TEST(GraphSpec, ParseIntegerReadsDecimalDigitsOnly) {
  EXPECT_EQ(parse_integer("12"), 12);
  EXPECT_EQ(parse_integer("-3"), -3);
  EXPECT_EQ(parse_integer("0"), 0);
  EXPECT_EQ(parse_integer("9223372036854775807"), INT64_MAX);
  EXPECT_EQ(parse_integer("-9223372036854775808"), INT64_MIN);
  for (const char* text : {"", "-", "x", "12a", " 12", "12 ", "+12", "012", "-012", "-0", "1e3", "1.0", "0x10",
                           "9223372036854775808", "99999999999999999999"})
    EXPECT_EQ(parse_integer(text), std::nullopt) << text;
  EXPECT_THROW_MSG(
      GraphSpec::from_json(nlohmann::json::parse(R"({"adjacency":{"0":[1],"01":[2]},"inputs":[0],"outputs":[2]})"),
                           "g.json"),
      "g.json: /adjacency key \"01\" is not an integer, but the graph's other ids are integers");
}

TEST(GraphSpec, FromJsonEdgesAndAdjacency) {
  auto edges = GraphSpec::from_json(
      nlohmann::json::parse(R"({"neurons":[0,1,2,9],"edges":[[0,1],[1,2]],"inputs":[0],"outputs":[2]})"));
  EXPECT_EQ(edges.num_neurons(), 4u);
  auto adjacency =
      GraphSpec::from_json(nlohmann::json::parse(R"({"adjacency":{"0":[1,2],"1":[2]},"inputs":[0],"outputs":[2]})"));
  EXPECT_EQ(adjacency.edges().size(), 3u);
  EXPECT_TRUE(adjacency.neurons()[0].is_integer());
  auto strings =
      GraphSpec::from_json(nlohmann::json::parse(R"({"adjacency":{"a":["b"]},"inputs":["a"],"outputs":["b"]})"));
  EXPECT_EQ(strings.neurons()[1], NeuronId("b"));
  auto round_trip = GraphSpec::from_json(edges.to_json());
  EXPECT_EQ(round_trip.neurons(), edges.neurons());
  EXPECT_EQ(round_trip.edges(), edges.edges());
}

TEST(GraphSpec, FromJsonErrorsNameThePath) {
  using nlohmann::json;
  EXPECT_THROW_MSG(GraphSpec::from_json(json::parse(R"({"edges":[[0,1]],"outputs":[1]})")),
                   "required key \"inputs\" is missing");
  EXPECT_THROW_MSG(GraphSpec::from_json(json::parse(R"({"edges":[[0,1.5]],"inputs":[0],"outputs":[1]})")),
                   "/edges/0/1 must be an integer or a string neuron id");
  EXPECT_THROW_MSG(GraphSpec::from_json(json::parse(R"({"edges":[[0]],"inputs":[0],"outputs":[1]})")),
                   "/edges/0 must be a pair");
  EXPECT_THROW_MSG(GraphSpec::from_json(json::parse(R"({"adjacency":{"x":[1]},"inputs":[0],"outputs":[1]})")),
                   "/adjacency key \"x\" is not an integer");
  EXPECT_THROW_MSG(GraphSpec::from_json(json::parse(R"({"edges":[[0,1]],"inputs":0,"outputs":[1]})")),
                   "/inputs must be an array");
}

TEST(Topology, LetterGraphBatches) {
  auto topo = Topology::compile(letters_graph());
  ASSERT_EQ(topo->depth(), 4);
  std::vector<std::vector<std::string>> batches;
  for (int64_t l = 1; l <= topo->depth(); ++l) {
    std::vector<std::string> batch;
    for (int64_t d = topo->levels()[l].begin; d < topo->levels()[l].end; ++d)
      batch.push_back(topo->label(d).as_string());
    batches.push_back(batch);
  }
  EXPECT_EQ(batches, (std::vector<std::vector<std::string>>{{"C", "D"}, {"E", "F"}, {"G"}, {"H", "I"}}));
}

TEST(Topology, UserTopoSortBreaksTiesWithinALevel) {
  CompileOptions options;
  options.topo_sort = std::vector<NeuronId>{"B", "A", "D", "C", "F", "E", "G", "I", "H"};
  auto topo = Topology::compile(letters_graph(), options);
  EXPECT_EQ(topo->label(topo->levels()[1].begin), NeuronId("D"));
  EXPECT_EQ(topo->label(topo->levels()[4].begin), NeuronId("I"));
  // Inputs keep the input order, whatever the sort says.
  EXPECT_EQ(topo->label(0), NeuronId("A"));
}

TEST(Topology, RejectsTopoSortThatIsNotAPermutation) {
  CompileOptions options;
  options.topo_sort = std::vector<NeuronId>{"A", "B", "C", "D", "E", "F", "G", "H"};
  EXPECT_THROW_MSG(Topology::compile(letters_graph(), options), "neuron \"I\" is missing");
  options.topo_sort = std::vector<NeuronId>{"A", "B", "C", "D", "E", "F", "G", "H", "H"};
  EXPECT_THROW_MSG(Topology::compile(letters_graph(), options), "topo_sort lists neuron \"H\" twice");
  options.topo_sort = std::vector<NeuronId>{"A", "B", "C", "D", "E", "F", "G", "H", "Z"};
  EXPECT_THROW_MSG(Topology::compile(letters_graph(), options), "topo_sort names neuron \"Z\"");
}

TEST(Topology, RejectsTopoSortThatViolatesAnEdge) {
  CompileOptions options;
  options.topo_sort = std::vector<NeuronId>{"A", "B", "C", "D", "F", "G", "E", "H", "I"};
  EXPECT_THROW_MSG(Topology::compile(letters_graph(), options),
                   "topo_sort places \"G\" before \"E\", which violates the edge \"E\" -> \"G\"");
}

TEST(Topology, InvariantsOverRandomGraphs) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    auto spec = random_dag(rng, {3, 40, 0.2, trial % 2 == 1});
    auto topo = Topology::compile(spec);
    ASSERT_EQ(topo->num_neurons(), static_cast<int64_t>(spec.num_neurons()));
    ASSERT_EQ(topo->num_connections(), static_cast<int64_t>(spec.edges().size()));
    // Every connection goes from a lower level to a higher one, and is found by label.
    for (const auto& [u, v] : spec.edges()) {
      int64_t du = topo->dense_of(u), dv = topo->dense_of(v);
      ASSERT_LT(topo->level_of(du), topo->level_of(dv));
      int64_t c = topo->connection_index(du, dv);
      ASSERT_GE(c, 0);
      ASSERT_EQ(topo->conn_source()[c], du);
      ASSERT_EQ(topo->conn_target()[c], dv);
    }
    // Levels are contiguous, hidden before outputs, and every non-input neuron
    // sits exactly one level above its deepest predecessor.
    for (int64_t d = 0; d < topo->num_neurons(); ++d) {
      int64_t deepest = topo->role(d) == Role::Input ? -1 : 0;
      for (int64_t c = topo->in_offsets()[d]; c < topo->in_offsets()[d + 1]; ++c)
        deepest = std::max(deepest, topo->level_of(topo->conn_source()[c]));
      ASSERT_EQ(topo->level_of(d), deepest + 1);
    }
    for (const auto& level : topo->levels())
      for (int64_t d = level.begin; d < level.end; ++d) ASSERT_EQ(topo->role(d) == Role::Output, d >= level.hidden_end);
  }
}

// Each level's sources are the distinct sources of its connections,
// ascending, and each connection's edge_source / edge_target point at its
// source and target; both ways of listing the sources (reading stamps below
// a wide level, sorting those of a narrow one deep in a chain) are taken.
TEST(Topology, LevelPlansOverWideAndDeepGraphs) {
  std::mt19937_64 rng(11);
  std::vector<GraphSpec> specs;
  for (int trial = 0; trial < 100; ++trial)
    specs.push_back(random_dag(rng, {3, 60, 0.1 + 0.004 * trial, trial % 2 == 1}));
  // A chain of 200 with a side input into its end: levels of one connection far above most ids.
  std::vector<Edge> chain;
  for (int i = 0; i < 200; ++i) chain.emplace_back(i, i + 1);
  chain.emplace_back(500, 200);
  specs.push_back(GraphSpec::from_edges(chain, {0, 500}, {200}));
  int scanned = 0, sorted = 0;
  for (const auto& spec : specs) {
    auto topo = Topology::compile(spec);
    for (size_t l = 1; l < topo->levels().size(); ++l) {
      const Level& level = topo->levels()[l];
      std::set<int64_t> distinct(topo->conn_source().begin() + level.conn_begin,
                                 topo->conn_source().begin() + level.conn_end);
      ASSERT_EQ(level.sources, std::vector<int64_t>(distinct.begin(), distinct.end())) << "level " << l;
      // One level's edges and every level's at once agree.
      const LevelEdges edges = topo->level_edges(l), all = topo->level_edges()[l];
      ASSERT_EQ(edges.source, all.source);
      ASSERT_EQ(edges.target, all.target);
      const auto dense = topo->dense_positions(l);
      for (int64_t c = level.conn_begin; c < level.conn_end; ++c) {
        const int64_t k = c - level.conn_begin;
        ASSERT_EQ(level.sources[edges.source[k]], topo->conn_source()[c]);
        ASSERT_EQ(level.begin + edges.target[k], topo->conn_target()[c]);
        ASSERT_EQ(dense[k], edges.target[k] * static_cast<int64_t>(level.sources.size()) + edges.source[k]);
      }
      (level.begin <= 16 * static_cast<int64_t>(level.sources.size()) ? scanned : sorted)++;
    }
  }
  EXPECT_GT(scanned, 100);
  EXPECT_GT(sorted, 100);
}

// Every field of two topologies, the spec's edges as a set.
void expect_same_topology(const Topology& got, const Topology& want) {
  connex::testing::expect_same_compiled_fields(got, want);
  const GraphSpec &gs = got.spec(), &ws = want.spec();
  EXPECT_EQ(gs.neurons(), ws.neurons());
  EXPECT_EQ(gs.inputs(), ws.inputs());
  EXPECT_EQ(gs.outputs(), ws.outputs());
  EXPECT_EQ(std::set<Edge>(gs.edges().begin(), gs.edges().end()), std::set<Edge>(ws.edges().begin(), ws.edges().end()));
  EXPECT_EQ(gs.index_adjacency().offsets, ws.index_adjacency().offsets);
  EXPECT_EQ(gs.index_adjacency().targets, ws.index_adjacency().targets);
  EXPECT_EQ(gs.index_adjacency().batch, ws.index_adjacency().batch);
  // The patched spec lists its edges as its adjacency does.
  std::vector<std::pair<int64_t, int64_t>> listed;
  const auto& adjacency = gs.index_adjacency();
  for (size_t u = 0; u + 1 < adjacency.offsets.size(); ++u)
    for (int64_t e = adjacency.offsets[u]; e < adjacency.offsets[u + 1]; ++e)
      listed.emplace_back(static_cast<int64_t>(u), adjacency.targets[e]);
  EXPECT_EQ(gs.edge_indices(), listed);
}

// Up to `most` distinct absent pairs (source, target) of `base` from `tries`
// random draws, each from a non-output to a non-input of a deeper level.
std::vector<std::pair<int64_t, int64_t>> absent_pairs_up_the_levels(const Topology& base, std::mt19937_64& rng,
                                                                    int tries, size_t most) {
  const int64_t n = base.num_neurons();
  std::set<std::pair<int64_t, int64_t>> chosen;
  std::vector<std::pair<int64_t, int64_t>> added;
  for (int k = 0; k < tries && added.size() < most; ++k) {
    const int64_t s = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
    const int64_t t = std::uniform_int_distribution<int64_t>(0, n - 1)(rng);
    if (base.role(s) == Role::Output || base.role(t) == Role::Input) continue;
    if (base.level_of(s) >= base.level_of(t) || base.connection_index(s, t) >= 0) continue;
    if (chosen.insert({s, t}).second) added.emplace_back(s, t);
  }
  return added;
}

// A topology patched with removed and added connections and added hidden
// neurons is the one compiled from the edited graph, field for field, also
// where neurons change level (up or down) or new neurons join the levels.
// Trials of two kinds: added pairs that follow the base's dense order (and
// new neurons fed from below and feeding above a pivot of their own, new
// ones feeding later new ones), which the patch must take; and pairs drawn
// in any direction, where it must decline every cyclic graph (the editor
// then compiles, which names the cycle) and equal the compiled topology
// wherever it patches.
TEST(Topology, PatchedEqualsCompiledOverRandomEdits) {
  std::mt19937_64 rng(11);
  int patched = 0, declined = 0, moved = 0, grown = 0;
  for (int trial = 0; trial < 600; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    const bool string_ids = trial % 2 == 1, forward = trial % 3 != 2;
    auto spec = random_dag(rng, {4, 40, 0.25, string_ids});
    auto base = Topology::compile(spec);
    const int64_t n = base->num_neurons(), m = base->num_connections();
    auto draw = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
    std::vector<int64_t> removed;
    const double share = std::uniform_real_distribution<double>(0, 0.5)(rng);
    for (int64_t c = 0; c < m; ++c)
      if (std::bernoulli_distribution(share)(rng)) removed.push_back(c);
    std::shuffle(removed.begin(), removed.end(), rng);
    // New neurons, each with a pivot: fed from dense ids before it, feeding ids after it.
    const int64_t k = trial % 4 == 0 ? 0 : draw(1, 4);
    std::vector<NeuronId> fresh;
    std::vector<int64_t> pivot;
    for (int64_t j = 0; j < k; ++j) {
      fresh.push_back(string_ids ? NeuronId("new" + std::to_string(j)) : NeuronId(1000 + j));
      pivot.push_back(draw(base->num_inputs(), n));
    }
    std::sort(pivot.begin(), pivot.end());
    std::set<std::pair<int64_t, int64_t>> chosen;
    std::vector<std::pair<int64_t, int64_t>> added;
    auto offer = [&](int64_t s, int64_t t) {
      if (s == t || (s < n && base->role(s) == Role::Output) || (t < n && base->role(t) == Role::Input)) return;
      if (s < n && t < n && base->connection_index(s, t) >= 0) return;
      if (chosen.insert({s, t}).second) added.emplace_back(s, t);
    };
    for (int tries = 0; tries < 30; ++tries) {
      int64_t s = draw(0, n - 1), t = draw(0, n - 1);
      if (forward && s > t) std::swap(s, t);
      offer(s, t);
    }
    for (int64_t j = 0; j < k; ++j) {
      for (int e = 0; e < 3; ++e) {
        if (forward) {
          if (pivot[j] > 0) offer(draw(0, pivot[j] - 1), n + j);
          if (pivot[j] < n) offer(n + j, draw(pivot[j], n - 1));
        } else {
          offer(draw(0, n - 1), n + j);
          offer(n + j, draw(0, n - 1));
        }
      }
      if (j > 0) offer(n + draw(0, j - 1), n + j);
      if (!forward && j > 0) offer(n + j, n + draw(0, j - 1));
    }
    std::shuffle(added.begin(), added.end(), rng);

    std::set<int64_t> gone(removed.begin(), removed.end());
    auto label = [&](int64_t d) { return d < n ? base->label(d) : fresh[d - n]; };
    std::vector<Edge> edges;
    for (int64_t c = 0; c < m; ++c)
      if (!gone.count(c)) edges.emplace_back(base->label(base->conn_source()[c]), base->label(base->conn_target()[c]));
    for (const auto& [s, t] : added) edges.emplace_back(label(s), label(t));
    std::vector<NeuronId> neurons = spec.neurons();
    neurons.insert(neurons.end(), fresh.begin(), fresh.end());
    std::shared_ptr<const Topology> want;
    try {
      want = Topology::compile(GraphSpec(neurons, edges, spec.inputs(), spec.outputs()));
    } catch (const connex::Error& e) {
      ASSERT_FALSE(forward) << e.what();
      EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos) << e.what();
    }
    ConnectionArray old_connection;
    auto got = base->with_connections(removed, added, {}, old_connection, fresh);
    if (forward) ASSERT_TRUE(got);
    if (!want) ASSERT_FALSE(got);
    if (!got) {
      ++declined;
      continue;
    }
    ++patched;
    grown += k > 0;
    bool levels_kept = true;
    for (int64_t d = 0; d < n; ++d) levels_kept &= want->level_of(want->dense_of(base->label(d))) == base->level_of(d);
    moved += !levels_kept;
    expect_same_topology(*got, *want);
    ASSERT_EQ(static_cast<int64_t>(old_connection.size()), got->num_connections());
    for (int64_t c = 0; c < got->num_connections(); ++c) {
      const int64_t s = base->dense_of(got->label(got->conn_source()[c]));
      const int64_t t = base->dense_of(got->label(got->conn_target()[c]));
      const int64_t was = s < 0 || t < 0 ? -1 : base->connection_index(s, t);
      EXPECT_EQ(old_connection[c], was < 0 || gone.count(was) ? -1 : was);
    }
  }
  EXPECT_GT(patched, 350);
  EXPECT_GT(declined, 50);
  EXPECT_GT(moved, 150);
  EXPECT_GT(grown, 200);
}

// Large enough (over 2^16 connections) that the outgoing runs are sorted in
// parts, one per thread: still the compiled topology, field for field. Each
// level's sources_before counts the sources of the levels before it. In
// the first trials no neuron moves; in the last ones neurons change level
// and new ones join.
TEST(Topology, PatchedEqualsCompiledInParts) {
  struct RestoreThreads {
    int previous = torch::get_num_threads();
    ~RestoreThreads() { torch::set_num_threads(previous); }
  } restore;
  torch::set_num_threads(2);
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 5; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    const bool moving = trial >= 3;
    auto spec = random_dag(rng, {600, 600, 0.5, trial % 2 == 1});
    auto base = Topology::compile(spec);
    ASSERT_GT(base->num_connections(), int64_t{1} << 16);
    // Each neuron keeps one connection from the level before its own, and
    // pairs are added only up the levels: no neuron moves.
    const int64_t n = base->num_neurons();
    std::vector<uint8_t> held(base->num_connections(), 0);
    for (int64_t d = base->num_inputs(); d < n && !moving; ++d)
      for (int64_t c = base->in_offsets()[d]; c < base->in_offsets()[d + 1]; ++c)
        if (base->level_of(base->conn_source()[c]) == base->level_of(d) - 1) {
          held[c] = 1;
          break;
        }
    std::vector<int64_t> removed;
    for (int64_t c = 0; c < base->num_connections(); ++c)
      if (!held[c] && std::bernoulli_distribution(0.3)(rng)) removed.push_back(c);
    std::set<int64_t> gone(removed.begin(), removed.end());
    auto added = absent_pairs_up_the_levels(*base, rng, 20000, 300);
    // New neurons between a neuron and a deeper one (both non-input ends kept valid).
    std::vector<NeuronId> fresh;
    for (int64_t j = 0; moving && j < 40; ++j) {
      const auto [s, t] = added[j];
      fresh.push_back(trial % 2 == 1 ? NeuronId("new" + std::to_string(j)) : NeuronId(10000 + j));
      added.emplace_back(s, n + j);
      added.emplace_back(n + j, t);
    }
    auto label = [&](int64_t d) { return d < n ? base->label(d) : fresh[d - n]; };
    std::vector<Edge> edges;
    for (int64_t c = 0; c < base->num_connections(); ++c)
      if (!gone.count(c)) edges.emplace_back(base->label(base->conn_source()[c]), base->label(base->conn_target()[c]));
    for (const auto& [s, t] : added) edges.emplace_back(label(s), label(t));
    std::vector<NeuronId> neurons = spec.neurons();
    neurons.insert(neurons.end(), fresh.begin(), fresh.end());
    auto want = Topology::compile(GraphSpec(neurons, edges, spec.inputs(), spec.outputs()));
    int64_t moved = 0;
    for (int64_t d = 0; d < n; ++d) moved += want->level_of(want->dense_of(base->label(d))) != base->level_of(d);
    EXPECT_EQ(moved > 0, moving);
    ConnectionArray old_connection;
    auto got = base->with_connections(removed, added, {}, old_connection, fresh);
    ASSERT_TRUE(got);
    expect_same_topology(*got, *want);
    int64_t before = 0;
    for (size_t l = 1; l < got->levels().size(); ++l) {
      EXPECT_EQ(got->levels()[l].sources_before, before);
      before += static_cast<int64_t>(got->levels()[l].sources.size());
    }
  }
}

// A patched spec shares its base's label map and keeps the neurons it
// appends in its own, folded into a whole map once they are many: along a
// chain of patches every label is found at its position, integer labels
// at their own positions or elsewhere alike, and an absent one is not.
TEST(Topology, ChainedPatchesFindEveryNeuronByLabel) {
  const std::vector<NeuronId> neurons{0, 1, 7, 3, 2, 5};  // 0, 1, 3 and 5 sit at their own positions
  const std::vector<Edge> edges{{0, 7}, {1, 7}, {7, 3}, {3, 2}, {2, 5}, {0, 5}};
  auto topo = Topology::compile(GraphSpec(neurons, edges, {0, 1}, {5}));
  for (int step = 0; step < 30; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    const int64_t n = topo->num_neurons();
    const NeuronId fresh = step % 2 == 0 ? NeuronId(n) : NeuronId(1000 + step);  // its own position, or not
    ConnectionArray old_connection;
    topo = topo->with_connections({}, {{topo->dense_of(0), n}, {n, topo->dense_of(5)}}, {}, old_connection, {fresh});
    ASSERT_TRUE(topo);
    const GraphSpec& spec = topo->spec();
    ASSERT_EQ(static_cast<int64_t>(spec.num_neurons()), n + 1);
    for (size_t i = 0; i < spec.num_neurons(); ++i) {
      EXPECT_EQ(spec.index_of(spec.neurons()[i]), static_cast<int64_t>(i)) << spec.neurons()[i];
      EXPECT_EQ(topo->label(topo->dense_of(spec.neurons()[i])), spec.neurons()[i]);
    }
    EXPECT_TRUE(spec.contains(fresh));
    EXPECT_EQ(spec.role(fresh), Role::Hidden);
    for (const NeuronId& absent : {NeuronId(-1), NeuronId(4), NeuronId(n + 2), NeuronId(999)}) {
      EXPECT_EQ(spec.index_of(absent), -1) << absent;
      EXPECT_FALSE(spec.contains(absent)) << absent;
    }
  }
  // The compiled graph agrees label by label.
  const auto compiled = Topology::compile(
      GraphSpec(topo->spec().neurons(), topo->spec().edges(), topo->spec().inputs(), topo->spec().outputs()));
  for (const auto& id : compiled->spec().neurons()) EXPECT_EQ(compiled->dense_of(id), topo->dense_of(id)) << id;
}

// Bad patches are refused with a message naming the culprit.
TEST(Topology, PatchRefusesBadConnections) {
  auto base = Topology::compile(letters_graph());
  const int64_t m = base->num_connections();
  const int64_t a = base->dense_of(NeuronId("A")), c = base->dense_of(NeuronId("C"));
  const int64_t e = base->dense_of(NeuronId("E"));
  const int64_t ac = base->connection_index(a, c);
  ConnectionArray old_connection;
  EXPECT_THROW_MSG(base->with_connections({m}, {}, {}, old_connection),
                   fmt::format("expected connection indices in [0, {}), got {}", m, m));
  EXPECT_THROW_MSG(base->with_connections({ac, ac}, {}, {}, old_connection),
                   "Topology::with_connections(): connection \"A\" -> \"C\" is removed twice");
  EXPECT_THROW_MSG(base->with_connections({}, {{a, c}}, {}, old_connection),
                   "an added connection exists already or is given twice");
  EXPECT_THROW_MSG(base->with_connections({ac}, {{a, c}}, {}, old_connection),
                   "an added connection exists already or is given twice");
  EXPECT_THROW_MSG(base->with_connections({}, {{a, e}, {a, e}}, {}, old_connection),
                   "an added connection exists already or is given twice");
  EXPECT_THROW_MSG(base->with_connections({}, {{e, a}}, {}, old_connection), "would leave an output or enter an input");
  EXPECT_THROW_MSG(
      base->with_connections({}, {{a, -1}}, {}, old_connection),
      fmt::format("expected an added connection between dense ids in [0, {}), got ({}, -1)", base->num_neurons(), a));
  EXPECT_THROW_MSG(
      base->with_connections({}, {}, {}, old_connection, {NeuronId(7)}),
      "Topology::with_connections(): added neuron 7 is an integer, but the graph's neuron ids are strings");
  EXPECT_THROW_MSG(base->with_connections({}, {}, {}, old_connection, {NeuronId("A")}),
                   "Topology::with_connections(): added neuron \"A\" is in the graph already or is given twice");
  EXPECT_THROW_MSG(base->with_connections({}, {}, {}, old_connection, {NeuronId("")}),
                   "Topology::with_connections(): neuron \"\" is empty; string ids must be non-empty, printable UTF-8 "
                   "text");
  EXPECT_THROW_MSG(base->with_connections({}, {}, {}, old_connection, {NeuronId("X"), NeuronId("X")}),
                   "added neuron \"X\" is in the graph already or is given twice");
  // An added neuron's id is its dense id past the base's.
  EXPECT_THROW_MSG(base->with_connections({}, {{a, base->num_neurons()}}, {}, old_connection),
                   fmt::format("got ({}, {})", a, base->num_neurons()));
}

// Regressions found by review.
TEST(GraphSpec, AdjacencyWithEmptyInputsIsAnErrorNotACrash) {
  EXPECT_THROW_MSG(GraphSpec::from_json(nlohmann::json::parse(R"({"inputs":[],"outputs":[1],"adjacency":{"0":[1]}})")),
                   "no input neurons given");
  EXPECT_THROW_MSG(GraphSpec::from_json(nlohmann::json::parse(R"({"inputs":[],"outputs":[],"adjacency":{"0":[1]}})")),
                   "no input neurons given");
}

TEST(GraphSpec, RejectsIdsBeyondTheSigned64BitRange) {
  EXPECT_THROW_MSG(GraphSpec::from_json(nlohmann::json::parse(
                       R"({"edges":[[18446744073709551615,1]],"inputs":[18446744073709551615],"outputs":[1]})")),
                   "/inputs/0 is 18446744073709551615, beyond the 64-bit signed range");
}

TEST(GraphSpec, CsvReaderEdgeCases) {
  auto bom = parse_csv("\xEF\xBB\xBFx,y\n1,2\n", "b.csv");
  EXPECT_EQ(bom.columns[0], "x");
  auto tiny = parse_csv("x\n1e-310\n", "t.csv");
  EXPECT_GT(tiny.rows[0][0], 0.0);
  EXPECT_THROW_MSG(parse_csv("x\n1e400\n", "o.csv"),
                   "o.csv:2: column 1 (\"x\"): 1e400 is beyond the range of a double");
  EXPECT_THROW_MSG(parse_csv("", "e.csv"), "e.csv: the file is empty");
  EXPECT_THROW_MSG(parse_csv("a,a\n1,2\n", "d.csv"), "d.csv:1: the header names column \"a\" twice");
}
