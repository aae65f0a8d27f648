#include "connex/torchscript_export.h"

#include <sstream>

#include <torch/script.h>
#include <torch/torch.h>

#include "connex/dataset.h"
#include "connex/error.h"
#include "connex/file_io.h"

namespace connex {

namespace {

// The TorchScript expression applying a built-in to `x`.
std::string scripted(const TensorFunction& f, const char* what, const std::string& x) {
  if (!f.is_builtin())
    fail("export_torchscript(): {} \"{}\" is a {} and cannot be exported; only built-ins can be scripted", what,
         f.name(), f.is_module() ? "module" : "custom callable");
  const std::string& n = f.name();
  if (n == "identity") return x;
  if (n == "softmax" || n == "log_softmax") return fmt::format("torch.{}({}, -1)", n, x);
  return fmt::format("torch.{}({})", n, x);
}

// The scripted module: buffers plus generated source. Built in one place so
// the source and the buffers it names cannot drift apart.
struct Script {
  std::ostringstream code;
  std::vector<std::pair<std::string, torch::Tensor>> buffers;

  std::string buffer(const std::string& name, torch::Tensor t) {
    buffers.emplace_back(name, std::move(t));
    return "self." + name;
  }
};

std::string gather_expr(Script& s, const GatherPlan& plan, const std::string& prefix) {
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
void write_input_checks(Script& s, const NeuralNetwork& network, const Preprocessing* preprocessing) {
  const int64_t n = network->num_inputs();
  const auto dtype = network->weight_tensor().scalar_type();
  auto& c = s.code;
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

Script build_script(const NeuralNetwork& network, const Preprocessing* preprocessing) {
  const Topology& topo = network->topology();
  const auto& options = network->options();
  Script s;
  const auto weight = network->weight_tensor().detach().to(torch::kCPU);
  const auto bias = network->bias_tensor().detach().to(torch::kCPU);
  // The four techniques have scripted forms; user operations do not.
  bool norm = false, topo_attention = false, neuron_attention = false, adaptive = false;
  const OperationModuleImpl *norm_p = nullptr, *topo_p = nullptr, *neuron_p = nullptr, *adaptive_p = nullptr;
  for (size_t k = 0; k < network->operations().size(); ++k) {
    const std::string& name = network->operations()[k]->name();
    const auto* params = &network->operation_parameters(k);
    if (name == "topo_norm")
      norm = true, norm_p = params;
    else if (name == "topo_self_attention")
      topo_attention = true, topo_p = params;
    else if (name == "neuron_self_attention")
      neuron_attention = true, neuron_p = params;
    else if (name == "adaptive_activation")
      adaptive = true, adaptive_p = params;
    else
      fail(
          "export_torchscript(): user-defined operation \"{}\" has no TorchScript form; only the built-in techniques "
          "can be exported",
          name);
  }
  auto op_tensor = [](const OperationModuleImpl* m, const std::string& name) {
    return m->get(name).detach().to(torch::kCPU).clone();
  };
  // Validate both functions before writing any code.
  scripted(options.hidden_activation(), "hidden_activation", "z");
  scripted(options.output_transformation(), "output_transformation", "y");

  auto& c = s.code;
  c << "def forward(self, x: Tensor) -> Tensor:\n";
  write_input_checks(s, network, preprocessing);
  c << "    batch = x.size(0)\n"
    << "    p0 = x.t().contiguous()\n";
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    const std::string L = "L" + std::to_string(l) + "_";
    const int64_t size = level.size(), width = static_cast<int64_t>(level.sources.size());
    const std::string b = s.buffer(L + "bias", bias.narrow(0, topo.bias_index(level.begin), size).unsqueeze(1).clone());
    const std::string P = "level" + std::to_string(l) + "_";
    if (level.kernel == LevelKernel::BiasOnly) {
      c << fmt::format("    z = {}.expand([{}, batch])\n", b, size);
    } else {
      c << fmt::format("    s = {}\n", gather_expr(s, level.gather, L + "g"));
      auto w = weight.narrow(0, level.conn_begin, level.num_connections());
      if (norm) {
        if (width > 1)
          c << "    m = s.mean(0, True)\n"
            << "    s = (s - m) / torch.sqrt((s - m).pow(2).mean(0, True) + 1e-05)\n";
        c << fmt::format("    s = {} * s + {}\n", s.buffer(L + "norm_gamma", op_tensor(norm_p, P + "gamma")),
                         s.buffer(L + "norm_beta", op_tensor(norm_p, P + "beta")));
      }
      if (topo_attention) {
        for (const char* m : {"query", "key", "value"})
          c << fmt::format("    {} = torch.addmm({}, {}, s)\n", m[0],
                           s.buffer(L + "ta_" + m + "_b", op_tensor(topo_p, P + m + "_bias").unsqueeze(1)),
                           s.buffer(L + "ta_" + m + "_w", op_tensor(topo_p, P + m + "_weight")));
        c << fmt::format("    a = torch.softmax(q.t().unsqueeze(2) * k.t().unsqueeze(1) / {}, 2)\n",
                         std::sqrt(static_cast<double>(width)))
          << "    s = s + torch.bmm(a, v.t().unsqueeze(2)).squeeze(2).t()\n";
      }
      // Dense weights of the batch, for the matmul kernels and neuron attention.
      auto dense = torch::zeros({size * width}, w.options());
      std::vector<int64_t> pos(level.edge_source.size());
      for (size_t k = 0; k < pos.size(); ++k) pos[k] = level.edge_target[k] * width + level.edge_source[k];
      dense.index_put_({torch::tensor(pos, torch::kLong)}, w);
      dense = dense.view({size, width});
      if (neuron_attention) {
        auto outside = torch::ones({size * width}, torch::kBool)
                           .index_fill_(0, torch::tensor(pos, torch::kLong), false)
                           .view({1, size, 1, width});
        auto fan_in = (~outside).sum(3).clamp_min(1).to(w.scalar_type()).sqrt().view({1, size, 1, 1});
        c << fmt::format("    xn = s.t().unsqueeze(1).expand([batch, {}, {}])\n", size, width);
        for (const char* m : {"query", "key", "value"})
          c << fmt::format("    {} = torch.einsum(\"nij,bnj->bni\", [{}, xn]) + {}\n", m[0],
                           s.buffer(L + "na_" + m + "_w", op_tensor(neuron_p, P + m + "_weight")),
                           s.buffer(L + "na_" + m + "_b", op_tensor(neuron_p, P + m + "_bias")));
        const std::string mask = s.buffer(L + "na_outside", outside);
        c << fmt::format("    e = (q.unsqueeze(3) * k.unsqueeze(2) / {}).masked_fill({}, {})\n",
                         s.buffer(L + "na_scale", fan_in), mask,
                         w.scalar_type() == torch::kDouble ? "-1.7976931348623157e+308" : "-3.4028234663852886e+38")
          << fmt::format("    a = torch.softmax(e, 3).masked_fill({}, 0.0)\n", mask)
          << "    xn = xn + torch.matmul(a, v.unsqueeze(3)).squeeze(3)\n"
          << fmt::format("    z = (xn * {}.unsqueeze(0)).sum(2).t() + {}\n", s.buffer(L + "W", dense), b);
      } else if (level.kernel == LevelKernel::EdgeList) {
        c << fmt::format("    z = {}.expand([{}, batch]).index_add(0, {}, s.index_select(0, {}) * {})\n", b, size,
                         s.buffer(L + "target", torch::tensor(level.edge_target, torch::kLong)),
                         s.buffer(L + "source", torch::tensor(level.edge_source, torch::kLong)),
                         s.buffer(L + "w", w.unsqueeze(1).clone()));
      } else {
        // Inference needs no gradient through the scatter: bake the dense matrix.
        c << fmt::format("    z = torch.addmm({}, {}, s)\n", b, s.buffer(L + "W", dense));
      }
    }
    const int64_t hidden = level.hidden_end - level.begin;
    // The activation of the hidden rows, adaptive (a·σ(b·z)) when switched on.
    auto activate = [&](const std::string& zh) {
      if (!adaptive) return scripted(options.hidden_activation(), "hidden_activation", zh);
      const int64_t first = topo.bias_index(level.begin);
      const std::string a = s.buffer(L + "ad_a", op_tensor(adaptive_p, "a").narrow(0, first, hidden).clone());
      const std::string bb = s.buffer(L + "ad_b", op_tensor(adaptive_p, "b").narrow(0, first, hidden).clone());
      return a + " * " + scripted(options.hidden_activation(), "hidden_activation", "(" + bb + " * " + zh + ")");
    };
    if (hidden == size)
      c << fmt::format("    p{} = {}\n", l, activate("z"));
    else if (hidden == 0)
      c << fmt::format("    p{} = z\n", l);
    else
      c << fmt::format("    p{} = torch.cat([{}, z.narrow(0, {}, {})], 0)\n", l,
                       activate(fmt::format("z.narrow(0, 0, {})", hidden)), hidden, size - hidden);
  }
  c << fmt::format("    y = {}.t()\n", gather_expr(s, topo.output_gather(), "out_g"))
    << fmt::format("    y = {}\n", scripted(options.output_transformation(), "output_transformation", "y"))
    << "    if single:\n"
    << "        y = y.squeeze(0)\n"
    << "    return y\n";
  return s;
}

}  // namespace

std::string torchscript_source(const NeuralNetwork& network, const Preprocessing* preprocessing) {
  if (preprocessing) preprocessing->check_fits(network, "torchscript_source(): the preprocessing");
  return build_script(network, preprocessing).code.str();
}

void export_torchscript(const NeuralNetwork& network, const std::string& path, const Preprocessing* preprocessing) {
  if (preprocessing) preprocessing->check_fits(network, "export_torchscript(): the preprocessing");
  Script script = build_script(network, preprocessing);
  std::ostringstream bytes;
  try {
    torch::jit::Module module("connex_network");
    for (const auto& [name, tensor] : script.buffers) module.register_buffer(name, tensor);
    // What a deployed model's user needs to feed it and read it: column names and class labels.
    auto names = [](const std::vector<std::string>& v) { return c10::IValue(c10::List<std::string>(v)); };
    const auto strings = c10::ListType::ofStrings();
    const Preprocessing none;
    const Preprocessing& p = preprocessing ? *preprocessing : none;
    module.register_attribute("feature_names", strings, names(p.features));
    module.register_attribute("target_names", strings, names(p.targets));
    module.register_attribute("class_labels", strings, names(p.classes));
    module.define(script.code.str());
    module.eval();
    module.save(bytes);
  } catch (const std::exception& e) {
    fail("export_torchscript(): cannot script the network for {}: {}", path, e.what());
  }
  write_file_atomically(path, bytes.str(), "export_torchscript()");
}

}  // namespace connex
