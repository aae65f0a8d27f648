#include "connex/torchscript_export.h"

#include <sstream>

#include <torch/script.h>
#include <torch/torch.h>
#include <fmt/ranges.h>

#include "activation.h"
#include "connex/dataset.h"
#include "connex/error.h"
#include "file_io.h"
#include "messages.h"

namespace connex {

namespace {

// The TorchScript expression applying a built-in to `x`.
std::string scripted(const TensorFunction& f, const char* what, const std::string& x) {
  if (!f.is_builtin())
    fail("export_torchscript(): {} \"{}\" is a {} and cannot be exported; only built-ins can be scripted", what,
         f.name(), f.is_module() ? "module" : "custom callable");
  return fmt::format(fmt::runtime(find_activation(f.name())->torchscript), x);
}

std::string gather_expr(ScriptWriter& s, const GatherPlan& plan, const std::string& prefix) {
  std::vector<std::string> parts;
  for (size_t k = 0; k < plan.segments.size(); ++k) {
    const Segment& seg = plan.segments[k];
    const std::string piece = "p" + std::to_string(seg.level);
    if (seg.whole)
      parts.push_back(piece);
    else if (seg.contiguous())
      parts.push_back(fmt::format("{}.narrow(0, {}, {})", piece, seg.begin, seg.end - seg.begin));
    else
      parts.push_back(fmt::format("{}.index_select(0, {})", piece,
                                  s.buffer(prefix + std::to_string(k), torch::tensor(seg.local, torch::kLong))));
  }
  std::string values =
      parts.size() == 1 ? parts[0] : "torch.cat([" + fmt::format("{}", fmt::join(parts, ", ")) + "], 0)";
  if (!plan.order.empty())
    values = fmt::format("{}.index_select(0, {})", values,
                         s.buffer(prefix + "order", torch::tensor(plan.order, torch::kLong)));
  return values;
}

// The forward's first lines: shape and dtype checks with connex's own message,
// a cast to the network's dtype where one is safe, and the preprocessing.
void write_input_checks(ScriptWriter& s, const NeuralNetwork& network, const Preprocessing* preprocessing) {
  const int64_t n = network->num_inputs();
  const auto dtype = network->weight_tensor().scalar_type();
  auto& c = s.stream();
  // `assert` is TorchScript syntax (AssertionError), available without Python's builtins.
  c << "    assert (x.dim() == 1 or x.dim() == 2) and x.size(-1) == " << n
    << ", \"connex network: expected an input of shape [batch, " << n << "] or [" << n << "], got \" + str(x.size())\n"
    << "    assert not x.is_complex(), \"connex network: expected a real-valued input, got a complex tensor\"\n"
    << "    single = x.dim() == 1\n"
    << "    if single:\n"
    << "        x = x.unsqueeze(0)\n";
  // Standardized in float64, as training did, then cast (raw values may not fit a narrow dtype).
  // (A dtype is no value for the C++ script compiler: empty buffers carry them.)
  if (preprocessing && preprocessing->standardizes()) {
    const auto options = torch::TensorOptions(torch::kFloat64);
    c << fmt::format("    x = (x.to({}.dtype) - {}) / {}\n", s.buffer("raw_dtype", torch::empty({0}, options)),
                     s.buffer("feature_mean", torch::tensor(preprocessing->mean, options)),
                     s.buffer("feature_scale", torch::tensor(preprocessing->scale, options)));
  }
  c << fmt::format("    x = x.to({}.dtype)\n", s.buffer("input_dtype", torch::empty({0}, torch::TensorOptions(dtype))));
}

// Every operation must have a TorchScript form; checked before any code is written.
void check_scriptable(const NeuralNetwork& network) {
  for (const auto& op : network->operations())
    if (!op->scriptable())
      fail(
          "export_torchscript(): user-defined operation \"{}\" has no TorchScript form; give it one by overriding "
          "LevelOperation::scriptable() and the script_* methods of the stages it changes",
          op->name());
}

// One level in the script: its buffers are named "L<l>_...", and each
// operation writes its stages through `contexts[k]`.
struct LevelScript {
  const NeuralNetwork& network;
  const Level& level;
  size_t l;
  std::string L;
  int64_t size, width, first_bias;
  std::vector<LevelContext> contexts;  // one per operation

  LevelScript(const NeuralNetwork& net, size_t level_index)
      : network(net),
        level(net->topology().levels()[level_index]),
        l(level_index),
        L("L" + std::to_string(level_index) + "_"),
        size(level.size()),
        width(static_cast<int64_t>(level.sources.size())),
        first_bias(net->topology().bias_index(level.begin)) {
    for (size_t k = 0; k < net->operations().size(); ++k)
      contexts.push_back({static_cast<int64_t>(l), level, net->topology(), net->operation_parameters(k),
                          level_prefix(l), level.sources_before});
  }
  const LevelOperation& op(size_t k) const { return *network->operations()[k]; }
  size_t ops() const { return contexts.size(); }
  // Operation k writes its `step` with the level's buffer prefix; an error
  // from within it names the operation, the step and the level.
  template <typename Call>
  auto write(ScriptWriter& s, size_t k, const char* step, Call&& call) const {
    struct Prefixed {  // the prefix for the call's extent, whichever way it leaves
      ScriptWriter& s;
      ~Prefixed() { s.set_prefix(""); }
    } prefixed{s};
    s.set_prefix(L);
    return in_operation_step("export_torchscript()", op(k).name(), step, l, [&] { return call(op(k), contexts[k]); });
  }
};

// `z` = the level's pre-activations, from its bias buffer `b` and its weights:
// the sources, each operation's on_inputs, then the affine step (or the
// operation that replaces it), then each operation's on_preactivation.
void write_pre_activations(ScriptWriter& s, const LevelScript& ls, const torch::Tensor& weight, const std::string& b) {
  const Level& level = ls.level;
  if (level.kernel == LevelKernel::BiasOnly) {
    s.line(fmt::format("z = {}.expand([{}, batch])", b, ls.size));
  } else {
    s.line(fmt::format("s = {}", gather_expr(s, level.gather, ls.L + "g")));
    for (size_t k = 0; k < ls.ops(); ++k)
      ls.write(s, k, "script_on_inputs",
               [&](const LevelOperation& op, const LevelContext& ctx) { op.script_on_inputs(s, ctx); });
    auto w = weight.narrow(0, level.conn_begin, level.num_connections());
    const LevelEdges edges = ls.network->topology().level_edges(ls.l);
    // Dense weights of the level, for the matmul kernels and operations that
    // replace the affine step (never made for an edge-list level without one:
    // [size, width] of a large sparse level would not fit).
    auto dense = [&] {
      auto d = torch::zeros({ls.size * ls.width}, w.options());
      d.index_put_({torch::tensor(edges.dense_positions(ls.width), torch::kLong)}, w);
      return d.view({ls.size, ls.width});
    };
    std::optional<size_t> affine;
    for (size_t k = 0; k < ls.ops(); ++k)
      if (ls.op(k).replaces_affine()) affine = k;
    if (affine) {
      ls.write(s, *affine, "script_replace_affine", [&](const LevelOperation& op, const LevelContext& ctx) {
        op.script_replace_affine(s, ctx, dense(), b);
      });
    } else if (level.kernel == LevelKernel::EdgeList) {
      s.line(fmt::format("z = {}.expand([{}, batch]).index_add(0, {}, s.index_select(0, {}) * {})", b, ls.size,
                         s.buffer(ls.L + "target", torch::tensor(edges.target, torch::kLong)),
                         s.buffer(ls.L + "source", torch::tensor(edges.source, torch::kLong)),
                         s.buffer(ls.L + "w", w.unsqueeze(1))));
    } else {
      // Inference needs no gradient through the scatter: bake the dense matrix.
      s.line(fmt::format("z = torch.addmm({}, {}, s)", b, s.buffer(ls.L + "W", dense())));
    }
  }
  for (size_t k = 0; k < ls.ops(); ++k)
    ls.write(s, k, "script_on_preactivation",
             [&](const LevelOperation& op, const LevelContext& ctx) { op.script_on_preactivation(s, ctx); });
}

// `p<l>` = the level's values: its hidden rows activated (or as the operation
// that replaces the activation says), its output rows as they are.
void write_values(ScriptWriter& s, const LevelScript& ls, const TensorFunction& activation) {
  const int64_t hidden = ls.level.hidden_end - ls.level.begin;
  auto activate = [&](const std::string& zh) {
    const auto plain = [&](const std::string& x) { return scripted(activation, "hidden_activation", x); };
    for (size_t k = 0; k < ls.ops(); ++k)
      if (ls.op(k).replaces_activation())
        return ls.write(s, k, "script_replace_activation", [&](const LevelOperation& op, const LevelContext& ctx) {
          return op.script_replace_activation(s, ctx, zh, plain);
        });
    return plain(zh);
  };
  if (hidden == ls.size)
    s.line(fmt::format("p{} = {}", ls.l, activate("z")));
  else if (hidden == 0)
    s.line(fmt::format("p{} = z", ls.l));
  else
    s.line(fmt::format("p{} = torch.cat([{}, z.narrow(0, {}, {})], 0)", ls.l,
                       activate(fmt::format("z.narrow(0, 0, {})", hidden)), hidden, ls.size - hidden));
}

// The forward, level by level: p<l> holds level l's values as [neurons, batch].
ScriptWriter build_script(const NeuralNetwork& network, const Preprocessing* preprocessing) {
  const Topology& topo = network->topology();
  const auto& options = network->options();
  ScriptWriter s;
  const auto weight = network->weight_tensor().detach().to(torch::kCPU);
  const auto bias = network->bias_tensor().detach().to(torch::kCPU);
  // Validate the operations and both functions before writing any code.
  check_scriptable(network);
  scripted(options.hidden_activation(), "hidden_activation", "z");
  scripted(options.output_transformation(), "output_transformation", "y");

  s.stream() << "def forward(self, x: Tensor) -> Tensor:\n";
  write_input_checks(s, network, preprocessing);
  s.line("batch = x.size(0)");
  s.line("p0 = x.t().contiguous()");
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const LevelScript ls(network, l);
    const std::string b = s.buffer(ls.L + "bias", bias.narrow(0, ls.first_bias, ls.size).unsqueeze(1));
    write_pre_activations(s, ls, weight, b);
    write_values(s, ls, options.hidden_activation());
  }
  s.line(fmt::format("y = {}.t()", gather_expr(s, topo.output_gather(), "out_g")));
  s.line(fmt::format("y = {}", scripted(options.output_transformation(), "output_transformation", "y")));
  s.line("if single:");
  s.line("    y = y.squeeze(0)");
  s.line("return y");
  return s;
}

}  // namespace

std::string torchscript_source(const NeuralNetwork& network, const Preprocessing* preprocessing) {
  if (preprocessing) preprocessing->check_fits(network, "torchscript_source(): the preprocessing");
  return build_script(network, preprocessing).source();
}

void export_torchscript(const NeuralNetwork& network, const std::string& path, const Preprocessing* preprocessing) {
  if (preprocessing) preprocessing->check_fits(network, "export_torchscript(): the preprocessing");
  ScriptWriter script = build_script(network, preprocessing);
  std::ostringstream bytes;
  try {
    torch::jit::Module module("connex_network");
    for (const auto& [name, tensor] : script.buffers()) module.register_buffer(name, tensor);
    // What a deployed model's user needs to feed it and read it: column names and class labels.
    auto names = [](const std::vector<std::string>& v) { return c10::IValue(c10::List<std::string>(v)); };
    const auto strings = c10::ListType::ofStrings();
    const Preprocessing none;
    const Preprocessing& p = preprocessing ? *preprocessing : none;
    module.register_attribute("feature_names", strings, names(p.features));
    module.register_attribute("target_names", strings, names(p.targets));
    // One per output: an output added after training is named as it has no class.
    module.register_attribute(
        "class_labels", strings,
        names(p.task == Task::Classification ? p.output_names(network) : std::vector<std::string>{}));
    // As a scripted torch.nn.Module has: Python's m.training and torch.jit.freeze read it, and
    // train()/eval() set it (the forward never reads it: the file is always in eval mode).
    module.register_attribute("training", c10::BoolType::get(), false);
    module.define(script.source());
    module.eval();
    module.save(bytes);
  } catch (const std::exception& e) {
    fail("export_torchscript(): cannot script the network for {}: {}", path, e.what());
  }
  write_file_atomically(path, bytes.str(), "export_torchscript()");
}

}  // namespace connex
