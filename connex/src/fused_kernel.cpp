#include "connex/fused_kernel.h"

#include <cmath>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "connex/error.h"

namespace connex {

namespace {

enum class Act { Identity, Relu, Gelu, Silu, Tanh, Sigmoid };

std::optional<Act> act_of(const TensorFunction& f) {
  if (!f.is_builtin()) return std::nullopt;
  const auto& n = f.name();
  if (n == "identity") return Act::Identity;
  if (n == "relu") return Act::Relu;
  if (n == "gelu") return Act::Gelu;
  if (n == "silu") return Act::Silu;
  if (n == "tanh") return Act::Tanh;
  if (n == "sigmoid") return Act::Sigmoid;
  return std::nullopt;
}

template <typename T>
inline T apply(Act a, T z) {
  switch (a) {
    case Act::Identity: return z;
    case Act::Relu: return z > T(0) ? z : T(0);
    case Act::Gelu: return T(0.5) * z * (T(1) + std::erf(z * T(M_SQRT1_2)));
    case Act::Silu: return z / (T(1) + std::exp(-z));
    case Act::Tanh: return std::tanh(z);
    case Act::Sigmoid: return T(1) / (T(1) + std::exp(-z));
  }
  return z;
}

template <typename T>
inline T derivative(Act a, T z) {
  switch (a) {
    case Act::Identity: return T(1);
    case Act::Relu: return z > T(0) ? T(1) : T(0);
    case Act::Gelu: return T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2))) + z * std::exp(T(-0.5) * z * z) * T(0.3989422804014327);
    case Act::Silu: {
      const T s = T(1) / (T(1) + std::exp(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    case Act::Tanh: {
      const T t = std::tanh(z);
      return T(1) - t * t;
    }
    case Act::Sigmoid: {
      const T s = T(1) / (T(1) + std::exp(-z));
      return s * (T(1) - s);
    }
  }
  return T(1);
}

// Rows of a level per parallel task: enough work per task to beat the
// scheduling cost, judged by connections × batch.
int64_t grain_for(const Level& level, int64_t batch) {
  const int64_t work = std::max<int64_t>(1, level.num_connections() * batch + level.size() * batch);
  const int64_t per_row = std::max<int64_t>(1, work / std::max<int64_t>(1, level.size()));
  return std::max<int64_t>(1, 32768 / per_row);
}

// Keeps the topology alive for as long as the autograd graph needs it: a
// one-byte tensor whose deleter drops the shared_ptr.
torch::Tensor hold(const std::shared_ptr<const Topology>& topology) {
  auto* holder = new std::shared_ptr<const Topology>(topology);
  return torch::from_blob(holder, {1}, [](void* p) { delete static_cast<std::shared_ptr<const Topology>*>(p); },
                          torch::TensorOptions().dtype(torch::kUInt8));
}
const Topology& held(const torch::Tensor& t) { return **static_cast<std::shared_ptr<const Topology>*>(t.data_ptr()); }

template <typename T>
void run_forward(const Topology& topo, Act act, const T* w, const T* b, T* V, T* Z, int64_t B) {
  const auto& src = topo.conn_source();
  const auto& in = topo.in_offsets();
  const int64_t n_in = topo.num_inputs();
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    at::parallel_for(level.begin, level.end, grain_for(level, B), [&](int64_t first, int64_t last) {
      for (int64_t d = first; d < last; ++d) {
        T* z = Z + (d - n_in) * B;
        const T bias = b[d - n_in];
        for (int64_t k = 0; k < B; ++k) z[k] = bias;
        for (int64_t c = in[d]; c < in[d + 1]; ++c) {
          const T wc = w[c];
          const T* v = V + src[c] * B;
          for (int64_t k = 0; k < B; ++k) z[k] += wc * v[k];
        }
        T* out = V + d * B;
        if (topo.role(d) == Role::Hidden)
          for (int64_t k = 0; k < B; ++k) out[k] = apply(act, z[k]);
        else
          for (int64_t k = 0; k < B; ++k) out[k] = z[k];
      }
    });
  }
}

template <typename T>
void run_backward(const Topology& topo, Act act, const T* w, const T* V, const T* Z, T* G /*grad wrt V, outputs preset*/,
                  T* GZ, T* gw, T* gb, T* gx, int64_t B) {
  const auto& src = topo.conn_source();
  const auto& tgt = topo.conn_target();
  const auto& in = topo.in_offsets();
  const auto& out_off = topo.out_offsets();
  const auto& out_conn = topo.out_connections();
  const int64_t n_in = topo.num_inputs();
  // Gradient of a neuron's value: its external part plus every consumer's pre-activation gradient.
  auto gather_value_grad = [&](int64_t d, T* g) {
    for (int64_t k = out_off[d]; k < out_off[d + 1]; ++k) {
      const int64_t c = out_conn[k];
      const T wc = w[c];
      const T* gz = GZ + (tgt[c] - n_in) * B;
      for (int64_t j = 0; j < B; ++j) g[j] += wc * gz[j];
    }
  };
  for (size_t l = topo.levels().size() - 1; l >= 1; --l) {
    const Level& level = topo.levels()[l];
    at::parallel_for(level.begin, level.end, grain_for(level, B), [&](int64_t first, int64_t last) {
      for (int64_t d = first; d < last; ++d) {
        T* g = G + d * B;
        gather_value_grad(d, g);
        T* gz = GZ + (d - n_in) * B;
        const T* z = Z + (d - n_in) * B;
        if (topo.role(d) == Role::Hidden)
          for (int64_t j = 0; j < B; ++j) gz[j] = g[j] * derivative(act, z[j]);
        else
          for (int64_t j = 0; j < B; ++j) gz[j] = g[j];
        T sum = 0;
        for (int64_t j = 0; j < B; ++j) sum += gz[j];
        gb[d - n_in] = sum;
        for (int64_t c = in[d]; c < in[d + 1]; ++c) {
          const T* v = V + src[c] * B;
          T dot = 0;
          for (int64_t j = 0; j < B; ++j) dot += gz[j] * v[j];
          gw[c] = dot;
        }
      }
    });
  }
  at::parallel_for(0, n_in, 16, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) {
      T* g = gx + d * B;
      for (int64_t j = 0; j < B; ++j) g[j] = 0;
      gather_value_grad(d, g);
    }
  });
}

class FusedNetwork : public torch::autograd::Function<FusedNetwork> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x_t, torch::Tensor weight,
                               torch::Tensor bias, torch::Tensor topology_holder, torch::Tensor output_ids, int64_t act) {
    const Topology& topo = held(topology_holder);
    const int64_t B = x_t.size(1), N = topo.num_neurons(), n_in = topo.num_inputs();
    auto V = torch::empty({N, B}, x_t.options());
    auto Z = torch::empty({N - n_in, B}, x_t.options());
    V.narrow(0, 0, n_in).copy_(x_t);
    auto w = weight.contiguous(), b = bias.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x_t.scalar_type(), "connex_fused_forward", [&] {
      run_forward<scalar_t>(topo, static_cast<Act>(act), w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                            V.data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(), B);
    });
    ctx->save_for_backward({w, V, Z, topology_holder, output_ids});
    ctx->saved_data["act"] = act;
    return V.index_select(0, output_ids);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &w = saved[0], &V = saved[1], &Z = saved[2];
    const Topology& topo = held(saved[3]);
    const Act act = static_cast<Act>(ctx->saved_data["act"].toInt());
    const int64_t B = V.size(1), N = topo.num_neurons(), n_in = topo.num_inputs();
    auto G = torch::zeros({N, B}, V.options());
    G.index_add_(0, saved[4], grads[0].contiguous());
    auto GZ = torch::empty({N - n_in, B}, V.options());
    auto gw = torch::empty_like(w), gb = torch::empty({N - n_in}, V.options()), gx = torch::empty({n_in, B}, V.options());
    AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "connex_fused_backward", [&] {
      run_backward<scalar_t>(topo, act, w.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(),
                             G.data_ptr<scalar_t>(), GZ.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(),
                             gx.data_ptr<scalar_t>(), B);
    });
    return {gx, gw, gb, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool fused_supports(const TensorFunction& activation) { return act_of(activation).has_value(); }

FusedPlan make_fused_plan(const std::shared_ptr<const Topology>& topology, const TensorFunction& activation) {
  auto act = act_of(activation);
  if (!act) fail("fused_forward(): activation \"{}\" is not a built-in the fused kernel knows", activation.name());
  return {hold(topology), torch::tensor(topology->output_ids(), torch::kLong), static_cast<int64_t>(*act)};
}

torch::Tensor fused_forward(const FusedPlan& plan, const torch::Tensor& x_t, const torch::Tensor& weight,
                            const torch::Tensor& bias) {
  return FusedNetwork::apply(x_t.contiguous(), weight, bias, plan.topology_holder, plan.output_ids, plan.activation);
}

}  // namespace connex
