#include "dense_path.h"

#include <typeinfo>

#include <torch/torch.h>

#include "connex/error.h"

#include "connex/techniques.h"
#include "formula_gradients.h"
#include "topo_norm.h"

namespace connex {

std::shared_ptr<const DensePlan> plan_dense_path(const Topology& topology, const TensorFunction& activation,
                                                 const std::vector<LevelOperationPtr>& operations) {
  const ActivationInfo* info = activation.is_builtin() ? find_activation(activation.name()) : nullptr;
  if (!info || !info->elementwise || !info->apply_in_place || !info->derivative) return nullptr;
  // TopoNorm itself, not a subclass that may compute something else.
  const bool norm = operations.size() == 1 && typeid(*operations[0]) == typeid(TopoNorm);
  if (!operations.empty() && !norm) return nullptr;
  auto plan = std::make_shared<DensePlan>();
  plan->neurons = topology.num_neurons();
  plan->inputs = topology.num_inputs();
  plan->activation = info->kind;
  plan->norm = norm;
  plan->outputs = topology.output_ids();
  for (size_t l = 1; l < topology.levels().size(); ++l) {
    const Level& level = topology.levels()[l];
    const auto width = static_cast<int64_t>(level.sources.size());
    if (level.kernel != LevelKernel::DenseView || width == 0 || level.num_connections() != level.size() * width ||
        level.sources.back() - level.sources.front() + 1 != width)
      return nullptr;
    plan->steps.push_back({level.begin, level.size(), level.hidden_end - level.begin, level.sources.front(), width,
                           level.conn_begin, level.sources_before});
  }
  return plan;
}

std::vector<int64_t> encode_dense_plan(const DensePlan& plan) {
  std::vector<int64_t> code{plan.neurons, plan.inputs, static_cast<int64_t>(plan.activation), plan.norm ? 1 : 0,
                            static_cast<int64_t>(plan.steps.size())};
  for (const auto& s : plan.steps)
    code.insert(code.end(), {s.begin, s.size, s.hidden, s.source_begin, s.width, s.conn_begin, s.norm_row});
  code.insert(code.end(), plan.outputs.begin(), plan.outputs.end());
  return code;
}

DensePlan decode_dense_plan(const std::vector<int64_t>& code) {
  DensePlan plan;
  plan.neurons = code[0];
  plan.inputs = code[1];
  plan.activation = static_cast<Activation>(code[2]);
  plan.norm = code[3] != 0;
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

// The same computation in torch operations, differentiable again (for a
// backward with create_graph). in: x, weight, bias, then the norm's gamma and beta.
Tensor dense_formula(const DensePlan& plan, const variable_list& in) {
  const ActivationInfo& act = activation_info(plan.activation);
  const size_t levels = plan.steps.size();
  Tensor values = in[0].t();
  for (size_t k = 0; k < levels; ++k) {
    const DenseStep& s = plan.steps[k];
    auto sources = values.narrow(0, s.source_begin, s.width);
    if (plan.norm)
      sources = topo_norm_formula(sources, in[3].narrow(0, s.norm_row, s.width), in[4].narrow(0, s.norm_row, s.width));
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
// else its copy in values serves the formula), weight, bias, the norm's gamma
// and beta (undefined without it), then with the norm every level's normed
// sources (level k's rows from its norm_row), rstd ([levels, batch]) and what
// the levels' weights multiplied (gamma ⊙ normed + beta, rows as normed's):
// three tensors rather than three per level, since on a small network each
// tensor costs more than its arithmetic.
constexpr size_t kFixedSaved = 7;

// Row r of a contiguous tensor of rows ([rows, batch], or gamma's [rows, 1]).
template <typename T>
T* row(const Tensor& t, int64_t r) {
  return t.data_ptr<T>() + r * t.stride(0);
}

class DenseFunction : public torch::autograd::Function<DenseFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, at::TensorList norm, const std::vector<int64_t>& code) {
    const DensePlan plan = decode_dense_plan(code);
    const int64_t norm_size = plan.steps.empty() ? 0 : plan.steps.back().norm_row + plan.steps.back().width;
    if (plan.norm && !(x.is_cpu() && norm.size() == 2 && norm[0].size(0) == norm_size && norm[1].size(0) == norm_size))
      fail("dense_forward(): topo norm expected a CPU network and a gamma and beta of {} rows, got {} tensor(s) on {}",
           norm_size, norm.size(), x.device().str());
    const Tensor gamma_in = plan.norm ? norm[0] : Tensor(), beta_in = plan.norm ? norm[1] : Tensor();
    const Tensor gamma = plan.norm ? gamma_in.contiguous() : Tensor(),
                 beta = plan.norm ? beta_in.contiguous() : Tensor();
    const ActivationInfo& act = activation_info(plan.activation);
    const int64_t batch = x.size(0);
    auto values = torch::empty({plan.neurons, batch}, weight.options());
    values.narrow(0, 0, plan.inputs).copy_(x.t());
    // Pre-activations of hidden rows, for an activation whose derivative needs them.
    Tensor pre = act.derivative_from_output ? Tensor() : torch::empty({plan.neurons, batch}, weight.options());
    variable_list saved{values, pre, x.requires_grad() ? x : Tensor(), weight, bias, gamma_in, beta_in};
    Tensor normed, rstd, scaled;
    if (plan.norm) {
      normed = torch::empty({norm_size, batch}, weight.options());
      scaled = torch::empty_like(normed);
      rstd = torch::empty({static_cast<int64_t>(plan.steps.size()), batch}, weight.options());
      saved.insert(saved.end(), {normed, rstd, scaled});
    }
    for (size_t k = 0; k < plan.steps.size(); ++k) {
      const DenseStep& s = plan.steps[k];
      auto sources = values.narrow(0, s.source_begin, s.width);
      if (plan.norm) {
        AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "connex_topo_norm_forward", [&] {
          topo_norm_forward_rows(row<scalar_t>(values, s.source_begin), row<scalar_t>(gamma, s.norm_row),
                                 row<scalar_t>(beta, s.norm_row), row<scalar_t>(normed, s.norm_row),
                                 row<scalar_t>(scaled, s.norm_row), row<scalar_t>(rstd, static_cast<int64_t>(k)),
                                 s.width, batch);
        });
        sources = scaled.narrow(0, s.norm_row, s.width);
      }
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
    variable_list result(plan.norm ? 6 : 4);  // x, weight, bias, (gamma, beta,) the plan
    if (!grads[0].defined()) return result;
    if (torch::GradMode::is_enabled()) {  // create_graph: the formula's gradients (formula_gradients.h)
      variable_list inputs(saved.begin() + 2, saved.begin() + static_cast<std::ptrdiff_t>(plan.norm ? 7 : 5));
      if (!inputs[0].defined()) inputs[0] = values.narrow(0, 0, plan.inputs).t();  // x, a constant
      auto g = formula_gradients(
          inputs, [&plan](const variable_list& in) { return dense_formula(plan, in); }, grads[0]);
      std::copy(g.begin(), g.end(), result.begin());
      return result;
    }
    const Tensor gamma = plan.norm ? saved[5].contiguous() : Tensor();
    if (plan.norm) result[3] = torch::empty_like(gamma), result[4] = torch::empty_like(gamma);
    const ActivationInfo& act = activation_info(plan.activation);
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1), need_b = ctx->needs_input_grad(2);
    // dL/d(value) per neuron; a level's rows are complete once every later level is done.
    auto g = torch::zeros_like(values);
    const auto grad_out = grads[0].t();
    if (outputs_in_a_run(plan))
      g.narrow(0, plan.outputs[0], static_cast<int64_t>(plan.outputs.size())).copy_(grad_out);
    else
      g.index_copy_(0, output_index(plan, g.device()), grad_out);
    Tensor gw = need_w ? torch::empty_like(weight) : Tensor(), gb = need_b ? torch::empty_like(bias) : Tensor();
    Tensor dy_rows;  // with the norm: dL/d(a level's normed sources), one level at a time
    if (plan.norm) {
      int64_t widest = 0;
      for (const DenseStep& s : plan.steps) widest = std::max(widest, s.width);
      dy_rows = torch::empty({widest, values.size(1)}, values.options());
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
      // What the level's weights multiplied: its sources, or their normed form.
      const auto sources =
          plan.norm ? saved[kFixedSaved + 2].narrow(0, s.norm_row, s.width) : values.narrow(0, s.source_begin, s.width);
      if (need_w) {
        auto gw_level = gw.narrow(0, s.conn_begin, s.size * s.width).view({s.size, s.width});
        at::mm_out(gw_level, gl, sources.t());
      }
      if (need_b) {
        auto gb_level = gb.narrow(0, s.begin - plan.inputs, s.size);
        at::sum_out(gb_level, gl, {1});
      }
      const int64_t from = std::max(s.source_begin, first_needed), end = s.source_begin + s.width;
      const auto w = level_weight(s, weight);
      if (!plan.norm) {
        if (from < end) g.narrow(0, from, end - from).addmm_(w.narrow(1, from - s.source_begin, end - from).t(), gl);
        continue;
      }
      auto dy = dy_rows.narrow(0, 0, s.width);
      at::mm_out(dy, w.t(), gl);
      // The sources' gradient goes straight into g's rows (those of inputs
      // that need none too: no one reads them).
      const auto &normed = saved[kFixedSaved], &rstd = saved[kFixedSaved + 1];
      AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "connex_topo_norm_backward", [&] {
        topo_norm_backward_rows(row<scalar_t>(dy, 0), row<scalar_t>(normed, s.norm_row),
                                row<scalar_t>(gamma, s.norm_row), row<scalar_t>(rstd, static_cast<int64_t>(k)),
                                row<scalar_t>(g, s.source_begin), true, row<scalar_t>(result[3], s.norm_row),
                                row<scalar_t>(result[4], s.norm_row), s.width, values.size(1));
      });
    }
    if (need_x) result[0] = g.narrow(0, 0, plan.inputs).t().contiguous();
    result[1] = gw, result[2] = gb;
    return result;
  }
};

}  // namespace

torch::Tensor dense_forward(const DensePlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const torch::Tensor& gamma, const torch::Tensor& beta) {
  std::vector<torch::Tensor> norm;  // an undefined tensor cannot be an input of an autograd function
  if (gamma.defined()) norm = {gamma, beta};
  return DenseFunction::apply(x, weight, bias, at::TensorList(norm), encode_dense_plan(plan));
}

}  // namespace connex
