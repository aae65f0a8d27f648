#include "dense_path.h"

#include <typeinfo>

#include <torch/torch.h>

#include "connex/error.h"

#include "connex/techniques.h"
#include "formula_gradients.h"
#include "scalar_attention.h"
#include "topo_norm.h"

namespace connex {

std::shared_ptr<const DensePlan> plan_dense_path(const Topology& topology, const TensorFunction& activation,
                                                 const std::vector<LevelOperationPtr>& operations) {
  const ActivationInfo* info = activation.is_builtin() ? find_activation(activation.name()) : nullptr;
  if (!info || !info->elementwise || !info->apply_in_place || !info->derivative) return nullptr;
  // TopoNorm or TopoSelfAttention itself, not a subclass that may compute something else.
  auto sources = DensePlan::Sources::Plain;
  if (operations.size() == 1 && typeid(*operations[0]) == typeid(TopoNorm))
    sources = DensePlan::Sources::Norm;
  else if (operations.size() == 1 && typeid(*operations[0]) == typeid(TopoSelfAttention))
    sources = DensePlan::Sources::Attention;
  else if (!operations.empty())
    return nullptr;
  auto plan = std::make_shared<DensePlan>();
  plan->neurons = topology.num_neurons();
  plan->inputs = topology.num_inputs();
  plan->activation = info->kind;
  plan->sources = sources;
  plan->outputs = topology.output_ids();
  for (size_t l = 1; l < topology.levels().size(); ++l) {
    const Level& level = topology.levels()[l];
    const auto width = static_cast<int64_t>(level.sources.size());
    if (level.kernel != LevelKernel::DenseView || width == 0 || level.num_connections() != level.size() * width ||
        !level.sources_in_a_run())
      return nullptr;
    plan->steps.push_back({level.begin, level.size(), level.hidden_end - level.begin, level.sources.front(), width,
                           level.conn_begin, level.sources_before});
  }
  return plan;
}

std::vector<int64_t> encode_dense_plan(const DensePlan& plan) {
  std::vector<int64_t> code{plan.neurons, plan.inputs, static_cast<int64_t>(plan.activation),
                            static_cast<int64_t>(plan.sources), static_cast<int64_t>(plan.steps.size())};
  for (const auto& s : plan.steps)
    code.insert(code.end(), {s.begin, s.size, s.hidden, s.source_begin, s.width, s.conn_begin, s.source_row});
  code.insert(code.end(), plan.outputs.begin(), plan.outputs.end());
  return code;
}

DensePlan decode_dense_plan(const std::vector<int64_t>& code) {
  DensePlan plan;
  plan.neurons = code[0];
  plan.inputs = code[1];
  plan.activation = static_cast<Activation>(code[2]);
  plan.sources = static_cast<DensePlan::Sources>(code[3]);
  const int64_t steps = code[4];
  size_t k = 5;
  for (int64_t s = 0; s < steps; ++s, k += 7)
    plan.steps.push_back({code[k], code[k + 1], code[k + 2], code[k + 3], code[k + 4], code[k + 5], code[k + 6]});
  plan.outputs.assign(code.begin() + static_cast<std::ptrdiff_t>(k), code.end());
  return plan;
}

namespace {

using torch::Tensor;
using torch::autograd::variable_list;

Tensor level_weight(const DenseStep& s, const Tensor& weight) {
  return weight.narrow(0, s.conn_begin, s.size * s.width).view({s.size, s.width});
}

Tensor level_bias(const DensePlan& plan, const DenseStep& s, const Tensor& bias) {
  return bias.narrow(0, s.begin - plan.inputs, s.size).unsqueeze(1);
}

// Whether the outputs are one run of dense ids in output order.
bool outputs_in_a_run(const DensePlan& plan) {
  const auto& out = plan.outputs;
  for (size_t k = 1; k < out.size(); ++k)
    if (out[k] != out[0] + static_cast<int64_t>(k)) return false;
  return !out.empty();
}

Tensor output_index(const DensePlan& plan, const torch::Device& device) {
  return torch::tensor(plan.outputs, torch::kLong).to(device);
}

// The output rows of `values` ([neurons, batch]) in output order.
Tensor output_rows(const DensePlan& plan, const Tensor& values) {
  if (outputs_in_a_run(plan)) return values.narrow(0, plan.outputs[0], static_cast<int64_t>(plan.outputs.size()));
  return values.index_select(0, output_index(plan, values.device()));
}

// How many parameter tensors the operation on the sources has: gamma and
// beta, or six per level (the attention's).
size_t operation_parameter_count(const DensePlan& plan) {
  return plan.norm() ? 2 : plan.attention() ? 6 * plan.steps.size() : 0;
}

// Level k's attention parameters start at params[6k]: query, key and value,
// each weight then bias. The three weights (or biases) stacked, so the
// three projections are one matrix product.
template <typename List>
Tensor stacked_attention(const List& params, size_t first, size_t k, bool biases) {
  const size_t p = first + 6 * k + (biases ? 1 : 0);
  return torch::cat({params[p], params[p + 2], params[p + 4]});
}

// The same computation in torch operations, differentiable again (for a
// backward with create_graph). in: x, weight, bias, then the operation's
// parameters.
Tensor dense_formula(const DensePlan& plan, const variable_list& in) {
  const ActivationInfo& act = activation_info(plan.activation);
  const size_t levels = plan.steps.size();
  Tensor values = in[0].t();
  for (size_t k = 0; k < levels; ++k) {
    const DenseStep& s = plan.steps[k];
    auto sources = values.narrow(0, s.source_begin, s.width);
    if (plan.norm())
      sources =
          topo_norm_formula(sources, in[3].narrow(0, s.source_row, s.width), in[4].narrow(0, s.source_row, s.width));
    if (plan.attention()) {
      const size_t p = 3 + 6 * k;
      sources = topo_attention_formula(sources, in[p], in[p + 1], in[p + 2], in[p + 3], in[p + 4], in[p + 5]);
    }
    auto z = torch::addmm(level_bias(plan, s, in[2]), level_weight(s, in[1]), sources);
    if (s.hidden > 0)
      z = s.hidden == s.size
              ? act.apply(z)
              : torch::cat({act.apply(z.narrow(0, 0, s.hidden)), z.narrow(0, s.hidden, s.size - s.hidden)});
    values = torch::cat({values, z});
  }
  return output_rows(plan, values).t();
}

// Saved for backward: values, pre-activations, x (when it requires grad;
// else its copy in values serves the formula), weight, bias, the
// operation's parameters as given, then what the operation computed, rows
// of all levels in one tensor each (level k's from its source_row; on a
// small network each tensor costs more than its arithmetic):
// - the norm: the normed sources, rstd ([levels, batch]) and gamma ⊙ normed + beta;
// - the attention: the projections ([3 Σ sources, batch]: level k's q, k
//   and v rows from 3·source_row), its output o, the softmax normalisers
//   and the sources plus o.
// The last of these is what the levels' weights multiplied.
constexpr size_t kFixedSaved = 5;

// Row r of a contiguous tensor of rows ([rows, batch], or gamma's [rows, 1]).
template <typename T>
T* row(const Tensor& t, int64_t r) {
  return t.data_ptr<T>() + r * t.stride(0);
}

class DenseFunction : public torch::autograd::Function<DenseFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, at::TensorList params, const std::vector<int64_t>& code) {
    const DensePlan plan = decode_dense_plan(code);
    const int64_t source_rows = plan.steps.empty() ? 0 : plan.steps.back().source_row + plan.steps.back().width;
    const size_t expected = operation_parameter_count(plan);
    if (plan.norm() &&
        !(x.is_cpu() && params.size() == 2 && params[0].size(0) == source_rows && params[1].size(0) == source_rows))
      fail("dense_forward(): topo norm expected a CPU network and a gamma and beta of {} rows, got {} tensor(s) on {}",
           source_rows, params.size(), x.device().str());
    if (plan.attention() && !(x.is_cpu() && params.size() == expected))
      fail("dense_forward(): topo self-attention expected a CPU network and {} tensors, got {} tensor(s) on {}",
           expected, params.size(), x.device().str());
    const Tensor gamma = plan.norm() ? params[0].contiguous() : Tensor(),
                 beta = plan.norm() ? params[1].contiguous() : Tensor();
    const ActivationInfo& act = activation_info(plan.activation);
    const int64_t batch = x.size(0);
    auto values = torch::empty({plan.neurons, batch}, weight.options());
    values.narrow(0, 0, plan.inputs).copy_(x.t());
    // Pre-activations of hidden rows, for an activation whose derivative needs them.
    Tensor pre = act.derivative_from_output ? Tensor() : torch::empty({plan.neurons, batch}, weight.options());
    variable_list saved{values, pre, x.requires_grad() ? x : Tensor(), weight, bias};
    saved.insert(saved.end(), params.begin(), params.end());
    Tensor normed, rstd, proj, attended_o, inv_sum, multiplied;
    if (plan.norm()) {
      normed = torch::empty({source_rows, batch}, weight.options());
      rstd = torch::empty({static_cast<int64_t>(plan.steps.size()), batch}, weight.options());
      multiplied = torch::empty_like(normed);
      saved.insert(saved.end(), {normed, rstd, multiplied});
    }
    if (plan.attention()) {
      proj = torch::empty({3 * source_rows, batch}, weight.options());
      attended_o = torch::empty({source_rows, batch}, weight.options());
      inv_sum = torch::empty_like(attended_o);
      multiplied = torch::empty_like(attended_o);
      saved.insert(saved.end(), {proj, attended_o, inv_sum, multiplied});
    }
    for (size_t k = 0; k < plan.steps.size(); ++k) {
      const DenseStep& s = plan.steps[k];
      auto sources = values.narrow(0, s.source_begin, s.width);
      if (plan.norm()) {
        AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "connex_topo_norm_forward", [&] {
          topo_norm_forward_rows(row<scalar_t>(values, s.source_begin), row<scalar_t>(gamma, s.source_row),
                                 row<scalar_t>(beta, s.source_row), row<scalar_t>(normed, s.source_row),
                                 row<scalar_t>(multiplied, s.source_row), row<scalar_t>(rstd, static_cast<int64_t>(k)),
                                 s.width, batch);
        });
      }
      if (plan.attention()) {
        const int64_t L = s.width;
        auto p3 = proj.narrow(0, 3 * s.source_row, 3 * L);
        at::addmm_out(p3, stacked_attention(params, 0, k, true).unsqueeze(1), stacked_attention(params, 0, k, false),
                      sources);
        auto o = attended_o.narrow(0, s.source_row, L).unsqueeze(0);
        auto inv = inv_sum.narrow(0, s.source_row, L).unsqueeze(0);
        scalar_attention_forward(p3.narrow(0, 0, L).unsqueeze(0), p3.narrow(0, L, L).unsqueeze(0),
                                 p3.narrow(0, 2 * L, L).unsqueeze(0), topo_attention_keys(L), o, inv);
        auto out = multiplied.narrow(0, s.source_row, L);
        at::add_out(out, sources, o.squeeze(0));
      }
      if (multiplied.defined()) sources = multiplied.narrow(0, s.source_row, s.width);
      auto out = values.narrow(0, s.begin, s.size);
      at::addmm_out(out, level_bias(plan, s, bias), level_weight(s, weight), sources);
      if (s.hidden == 0) continue;
      auto hidden = out.narrow(0, 0, s.hidden);
      if (pre.defined()) pre.narrow(0, s.begin, s.hidden).copy_(hidden);
      act.apply_in_place(hidden);
    }
    auto y = torch::empty({batch, static_cast<int64_t>(plan.outputs.size())}, weight.options());
    y.t().copy_(output_rows(plan, values));
    ctx->save_for_backward(saved);
    ctx->saved_data["plan"] = code;
    return y;
  }

  static variable_list backward(torch::autograd::AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &values = saved[0], &pre = saved[1], &weight = saved[3], &bias = saved[4];
    const DensePlan plan = decode_dense_plan(ctx->saved_data["plan"].toIntVector());
    const size_t num_params = operation_parameter_count(plan), extra = kFixedSaved + num_params;
    variable_list result(4 + num_params);  // x, weight, bias, the operation's parameters, the plan
    if (!grads[0].defined()) return result;
    if (torch::GradMode::is_enabled()) {  // create_graph: the formula's gradients (formula_gradients.h)
      variable_list inputs(saved.begin() + 2, saved.begin() + static_cast<std::ptrdiff_t>(extra));
      if (!inputs[0].defined()) inputs[0] = values.narrow(0, 0, plan.inputs).t();  // x, a constant
      auto g = formula_gradients(
          inputs, [&plan](const variable_list& in) { return dense_formula(plan, in); }, grads[0]);
      std::copy(g.begin(), g.end(), result.begin());
      return result;
    }
    const Tensor gamma = plan.norm() ? saved[kFixedSaved].contiguous() : Tensor();
    if (plan.norm()) result[3] = torch::empty_like(gamma), result[4] = torch::empty_like(gamma);
    const ActivationInfo& act = activation_info(plan.activation);
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1), need_b = ctx->needs_input_grad(2);
    const int64_t batch = values.size(1);
    // dL/d(value) per neuron; a level's rows are complete once every later level is done.
    auto g = torch::zeros_like(values);
    const auto grad_out = grads[0].t();
    if (outputs_in_a_run(plan))
      g.narrow(0, plan.outputs[0], static_cast<int64_t>(plan.outputs.size())).copy_(grad_out);
    else
      g.index_copy_(0, output_index(plan, g.device()), grad_out);
    Tensor gw = need_w ? torch::empty_like(weight) : Tensor(), gb = need_b ? torch::empty_like(bias) : Tensor();
    // With an operation: dL/d(what the level's weights multiplied), one level at a time.
    Tensor dy_rows;
    if (num_params > 0) {
      int64_t widest = 0;
      for (const DenseStep& s : plan.steps) widest = std::max(widest, s.width);
      dy_rows = torch::empty({widest, batch}, values.options());
    }
    // Sources below `first_needed` need no gradient (the inputs, unless x wants one).
    const int64_t first_needed = need_x ? 0 : plan.inputs;
    for (size_t k = plan.steps.size(); k-- > 0;) {
      const DenseStep& s = plan.steps[k];
      auto gl = g.narrow(0, s.begin, s.size);
      if (s.hidden > 0 && plan.activation != Activation::Identity) {  // dL/dz from dL/d(value)
        auto gh = gl.narrow(0, 0, s.hidden);
        const auto& arg = act.derivative_from_output ? values : pre;
        gh.copy_(act.derivative(gh, arg.narrow(0, s.begin, s.hidden)));
      }
      const auto sources = values.narrow(0, s.source_begin, s.width);
      const auto multiplied = num_params > 0 ? saved.back().narrow(0, s.source_row, s.width) : sources;
      if (need_w) {
        auto gw_level = gw.narrow(0, s.conn_begin, s.size * s.width).view({s.size, s.width});
        at::mm_out(gw_level, gl, multiplied.t());
      }
      if (need_b) {
        auto gb_level = gb.narrow(0, s.begin - plan.inputs, s.size);
        at::sum_out(gb_level, gl, {1});
      }
      const int64_t from = std::max(s.source_begin, first_needed), end = s.source_begin + s.width;
      const auto w = level_weight(s, weight);
      if (num_params == 0) {
        if (from < end) g.narrow(0, from, end - from).addmm_(w.narrow(1, from - s.source_begin, end - from).t(), gl);
        continue;
      }
      auto dy = dy_rows.narrow(0, 0, s.width);
      at::mm_out(dy, w.t(), gl);
      // The sources' gradient goes straight into g's rows (those of inputs
      // that need none too: no one reads them).
      if (plan.norm()) {
        const auto &normed = saved[extra], &rstd = saved[extra + 1];
        AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "connex_topo_norm_backward", [&] {
          topo_norm_backward_rows(row<scalar_t>(dy, 0), row<scalar_t>(normed, s.source_row),
                                  row<scalar_t>(gamma, s.source_row), row<scalar_t>(rstd, static_cast<int64_t>(k)),
                                  row<scalar_t>(g, s.source_begin), true, row<scalar_t>(result[3], s.source_row),
                                  row<scalar_t>(result[4], s.source_row), s.width, batch);
        });
        continue;
      }
      // The attention: dL/dq, dL/dk and dL/dv from dy, then the projections'
      // gradients, and the sources' (the residual's and the projections').
      const int64_t L = s.width;
      const auto p3 = saved[extra].narrow(0, 3 * s.source_row, 3 * L);
      const auto o = saved[extra + 1].narrow(0, s.source_row, L).unsqueeze(0);
      const auto inv = saved[extra + 2].narrow(0, s.source_row, L).unsqueeze(0);
      auto gp = torch::zeros({3 * L, batch}, values.options());
      auto gq = gp.narrow(0, 0, L).unsqueeze(0), gk = gp.narrow(0, L, L).unsqueeze(0),
           gv = gp.narrow(0, 2 * L, L).unsqueeze(0);
      scalar_attention_backward(p3.narrow(0, 0, L).unsqueeze(0), p3.narrow(0, L, L).unsqueeze(0),
                                p3.narrow(0, 2 * L, L).unsqueeze(0), o, inv, dy.unsqueeze(0), topo_attention_keys(L),
                                gq, gk, gv);
      const auto gw3 = torch::mm(gp, sources.t()), gb3 = gp.sum(1);
      for (int64_t m = 0; m < 3; ++m) {
        result[3 + 6 * k + 2 * m] = gw3.narrow(0, m * L, L);
        result[3 + 6 * k + 2 * m + 1] = gb3.narrow(0, m * L, L);
      }
      auto gs = g.narrow(0, s.source_begin, L);
      gs.add_(dy);
      gs.addmm_(stacked_attention(saved, kFixedSaved, k, false).t(), gp);
    }
    if (need_x) result[0] = g.narrow(0, 0, plan.inputs).t().contiguous();
    result[1] = gw, result[2] = gb;
    return result;
  }
};

}  // namespace

torch::Tensor dense_forward(const DensePlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const std::vector<torch::Tensor>& operation_parameters) {
  return DenseFunction::apply(x, weight, bias, at::TensorList(operation_parameters), encode_dense_plan(plan));
}

}  // namespace connex
