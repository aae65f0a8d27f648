#include "fused_plan.h"

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "activation.h"
#include "connex/error.h"
#include "scratch_memory.h"
#include "work_share.h"

namespace connex {

namespace {

using Act = Activation;

// The built-in's kind when the kernel has its math (activation.h's `fused`).
std::optional<Act> act_of(const TensorFunction& f) {
  const ActivationInfo* a = f.is_builtin() ? find_activation(f.name()) : nullptr;
  if (!a || !a->fused) return std::nullopt;
  return a->kind;
}

template <typename T>
inline T apply(Act a, T z) {
  switch (a) {
    case Act::Identity:
      return z;
    case Act::Relu:
      return z > T(0) ? z : T(0);
    case Act::Gelu:
      return T(0.5) * z * (T(1) + std::erf(z * T(M_SQRT1_2)));
    case Act::Silu:
      return z / (T(1) + std::exp(-z));
    case Act::Tanh:
      return std::tanh(z);
    case Act::Sigmoid:
      return T(1) / (T(1) + std::exp(-z));
    default:  // not fused
      return z;
  }
}

template <typename T>
inline T derivative(Act a, T z) {
  switch (a) {
    case Act::Identity:
      return T(1);
    case Act::Relu:
      return z > T(0) ? T(1) : T(0);
    case Act::Gelu:
      return T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2))) + z * std::exp(T(-0.5) * z * z) * T(0.3989422804014327);
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
    default:  // not fused
      return T(1);
  }
}

// Where the derivative follows from the output (activation.h), the kernel
// keeps no pre-activations for backward: one [neurons, batch] array less to
// write and read back.
bool derivative_from_output(Act a) { return activation_info(a).derivative_from_output; }

template <typename T>
inline T derivative_at_output(Act a, T y) {
  switch (a) {
    case Act::Relu:
      return y > T(0) ? T(1) : T(0);
    case Act::Tanh:
      return T(1) - y * y;
    case Act::Sigmoid:
      return y * (T(1) - y);
    default:
      return T(1);
  }
}

// Rows of a level per parallel task: enough work per task to beat the
// scheduling cost, judged by connections × batch.
int64_t grain_for(const Level& level, int64_t batch) {
  const int64_t work = std::max<int64_t>(1, level.num_connections() * batch + level.size() * batch);
  const int64_t per_row = std::max<int64_t>(1, work / std::max<int64_t>(1, level.size()));
  return std::max<int64_t>(1, 32768 / per_row);
}

// What the kernel reads besides the tensors, made once per network: the
// topology (whose out_targets() backward reads in sequence) and the scratch
// memory its steps reuse.
struct Layout {
  std::shared_ptr<const Topology> topology;
  std::shared_ptr<ScratchMemory> scratch = std::make_shared<ScratchMemory>();
};

// Keeps the layout alive for as long as the autograd graph needs it: a
// one-byte tensor whose deleter drops the shared_ptr.
torch::Tensor hold(std::shared_ptr<const Layout> layout) {
  auto* holder = new std::shared_ptr<const Layout>(std::move(layout));
  return torch::from_blob(
      holder, {1}, [](void* p) { delete static_cast<std::shared_ptr<const Layout>*>(p); },
      torch::TensorOptions().dtype(torch::kUInt8));
}
const Layout& held(const torch::Tensor& t) { return **static_cast<std::shared_ptr<const Layout>*>(t.data_ptr()); }

// An array on the layout's scratch memory, uninitialised; the block goes
// back to the pool when the last tensor using it is freed.
torch::Tensor scratch_tensor(const Layout& layout, at::IntArrayRef shape, const torch::TensorOptions& options) {
  size_t bytes = options.dtype().itemsize();
  for (int64_t n : shape) bytes *= static_cast<size_t>(n);
  std::shared_ptr<ScratchMemory> pool = layout.scratch;
  const ScratchMemory::Block block = pool->take(bytes);
  try {
    return torch::from_blob(
        block.data, shape, [pool, block](void*) { pool->give_back(block); }, options);
  } catch (...) {
    pool->give_back(block);
    throw;
  }
}

// Rows are read at random places (a connection's source row in forward, its
// consumer's gradient row in backward), so each read would wait on memory;
// asking for the row a few connections ahead keeps several misses in flight.
// The distance is tuned on the sparse benchmarks (BENCHMARKS.md): far enough
// for large graphs, short enough not to evict rows of small ones.
constexpr int64_t kPrefetchAhead = 16;

template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + k);
}

// Sums with eight independent partial sums, in a fixed order: a single
// running sum is a chain of dependent additions the compiler may not reorder.
template <typename T>
inline T sum_of(const T* __restrict x, int64_t n) {
  T part[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) part[u] += x[j + u];
  for (; j < n; ++j) part[0] += x[j];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// z = bias + the weighted sum of connections [c0, c1)'s source rows.
template <typename T>
inline void weighted_sum(T* __restrict z, T bias, const T* w, const int64_t* src, int64_t c0, int64_t c1, const T* V,
                         int64_t B, int64_t num_conn) {
  for (int64_t k = 0; k < B; ++k) z[k] = bias;
  for (int64_t c = c0; c < c1; ++c) {
    if (c + kPrefetchAhead < num_conn) prefetch_row(V + src[c + kPrefetchAhead] * B, B);
    const T wc = w[c];
    const T* __restrict v = V + src[c] * B;
    for (int64_t k = 0; k < B; ++k) z[k] += wc * v[k];
  }
}

// Z (pre-activations of the non-input neurons) is null when the derivative
// follows from the output; the sums are then formed in V's row itself.
// sa and sb (null, or one entry per non-input neuron): a hidden neuron's
// value is sa·act(sb·z) (adaptive activations; Z is then kept).
template <typename T>
void run_forward(const Topology& topo, Act act, const T* w, const T* b, const T* sa, const T* sb, T* V, T* Z,
                 int64_t B) {
  const int64_t* src = topo.conn_source().data();
  const int64_t* in = topo.in_offsets().data();
  const int64_t n_in = topo.num_inputs(), num_conn = topo.num_connections();
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    share_work(level.begin, level.end, grain_for(level, B), [&](int64_t first, int64_t last) {
      for (int64_t d = first; d < last; ++d) {
        T* out = V + d * B;
        T* z = Z ? Z + (d - n_in) * B : out;
        weighted_sum(z, b[d - n_in], w, src, in[d], in[d + 1], V, B, num_conn);
        if (topo.role(d) == Role::Hidden && sa) {
          const T a = sa[d - n_in], s = sb[d - n_in];
          for (int64_t k = 0; k < B; ++k) out[k] = a * apply(act, s * z[k]);
        } else if (topo.role(d) == Role::Hidden) {
          for (int64_t k = 0; k < B; ++k) out[k] = apply(act, z[k]);
        } else if (Z)
          for (int64_t k = 0; k < B; ++k) out[k] = z[k];
      }
    });
  }
}

// Backward over the connections in out_connections() order: w_out holds the
// weights in that order, gw_out receives the weight gradients in it (the
// caller scatters them back). G arrives holding the gradient with respect to
// the outputs' values (zero elsewhere); gx ([batch, inputs]) receives the
// input gradient; each non-input row becomes, in place,
// the gradient with respect to that neuron's pre-activation once its
// consumers are done. Z is null when the derivative follows from the output.
// With sa and sb (see run_forward), gsa and gsb receive their gradients
// (zero for outputs, whose entries are unused).
// Kept in one piece: it is the backward hot loop, and source_pass stays a local lambda so it inlines into both passes.
template <typename T>
void run_backward(const Layout& layout, Act act, const T* w_out, const T* V, const T* Z, const T* sa, const T* sb, T* G,
                  T* gw_out, T* gb, T* gsa, T* gsb, T* gx, int64_t B) {
  T* const GZ = G;  // rows of finished neurons: pre-activation gradients
  const Topology& topo = *layout.topology;
  const int64_t* tgt = topo.out_targets().data();
  const int64_t* out_off = topo.out_offsets().data();
  const int64_t n_in = topo.num_inputs(), num_conn = topo.num_connections();
  // One pass over a neuron's outgoing connections reads each consumer's
  // pre-activation gradient row once and uses it twice: for this neuron's
  // value gradient g, and for the connection's weight gradient (its dot with
  // this neuron's own value row, which stays in L1). Consumers sit in later
  // levels, so their rows are final when this neuron's level runs.
  auto source_pass = [&](int64_t d, T* __restrict g) {
    const T* __restrict v = V + d * B;
    for (int64_t k = out_off[d]; k < out_off[d + 1]; ++k) {
      if (k + kPrefetchAhead < num_conn) prefetch_row(GZ + tgt[k + kPrefetchAhead] * B, B);
      const T wc = w_out[k];
      const T* __restrict gz = GZ + tgt[k] * B;
      T part[8] = {};
      int64_t j = 0;
      for (; j + 8 <= B; j += 8)
        for (int u = 0; u < 8; ++u) {
          g[j + u] += wc * gz[j + u];
          part[u] += gz[j + u] * v[j + u];
        }
      for (; j < B; ++j) {
        g[j] += wc * gz[j];
        part[0] += gz[j] * v[j];
      }
      gw_out[k] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    }
  };
  for (size_t l = topo.levels().size() - 1; l >= 1; --l) {
    const Level& level = topo.levels()[l];
    share_work(level.begin, level.end, grain_for(level, B), [&](int64_t first, int64_t last) {
      for (int64_t d = first; d < last; ++d) {
        T* __restrict g = G + d * B;
        if (topo.role(d) != Role::Output) std::fill(g, g + B, T(0));  // output rows hold the seed
        source_pass(d, g);
        if (topo.role(d) == Role::Hidden && sa) {
          // v = a·act(s·z): dv/da = act(s·z), dv/ds = a·act'(s·z)·z, dv/dz = a·act'(s·z)·s.
          const T* __restrict z = Z + (d - n_in) * B;
          const T a = sa[d - n_in], s = sb[d - n_in];
          T da = 0, ds = 0;
          for (int64_t j = 0; j < B; ++j) {
            const T u = s * z[j], gv = g[j];
            da += gv * apply(act, u);
            const T gu = gv * a * derivative(act, u);
            ds += gu * z[j];
            g[j] = gu * s;
          }
          gsa[d - n_in] = da;
          gsb[d - n_in] = ds;
        } else if (topo.role(d) == Role::Hidden) {
          if (Z) {
            const T* __restrict z = Z + (d - n_in) * B;
            for (int64_t j = 0; j < B; ++j) g[j] *= derivative(act, z[j]);
          } else {
            const T* __restrict y = V + d * B;
            for (int64_t j = 0; j < B; ++j) g[j] *= derivative_at_output(act, y[j]);
          }
        }
        gb[d - n_in] = sum_of(g, B);
      }
    });
  }
  // Inputs: their rows of G (zero) collect the gradient, which goes out as
  // column d of gx, [batch, inputs] like the input itself.
  share_work(0, n_in, 16, [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d) {
      T* g = G + d * B;
      std::fill(g, g + B, T(0));  // an input is never an output: no seed to keep
      source_pass(d, g);
      for (int64_t j = 0; j < B; ++j) gx[j * n_in + d] = g[j];
    }
  });
}

// The whole network as one autograd node. It takes x as [batch, inputs] and
// returns [batch, outputs], moving values in and out of its [neurons, batch]
// layout itself: for a small network each tensor op saved (transposes,
// copies, an output gather, and their backward nodes) is a measurable part
// of a training step.
class FusedNetwork : public torch::autograd::Function<FusedNetwork> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight,
                               torch::Tensor bias, torch::Tensor scale_a, torch::Tensor scale_b,
                               torch::Tensor layout_holder, int64_t act) {
    const Layout& layout = held(layout_holder);
    const Topology& topo = *layout.topology;
    const int64_t B = x.size(0), N = topo.num_neurons(), n_in = topo.num_inputs();
    const auto& outputs = topo.output_ids();
    const int64_t n_out = static_cast<int64_t>(outputs.size());
    auto V = scratch_tensor(layout, {N, B}, x.options());
    const bool scaled = scale_a.numel() > 0;
    auto Z = derivative_from_output(static_cast<Act>(act)) && !scaled
                 ? torch::Tensor()
                 : scratch_tensor(layout, {N - n_in, B}, x.options());
    auto y = torch::empty({B, n_out}, x.options());
    auto w = weight.contiguous(), b = bias.contiguous();
    auto sa = scaled ? scale_a.contiguous() : torch::Tensor(), sb = scaled ? scale_b.contiguous() : torch::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "connex_fused_forward", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* vp = V.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n_in; ++i)
        for (int64_t k = 0; k < B; ++k) vp[i * B + k] = xp[k * n_in + i];
      run_forward<scalar_t>(topo, static_cast<Act>(act), w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                            scaled ? sa.data_ptr<scalar_t>() : nullptr, scaled ? sb.data_ptr<scalar_t>() : nullptr, vp,
                            Z.defined() ? Z.data_ptr<scalar_t>() : nullptr, B);
      scalar_t* yp = y.data_ptr<scalar_t>();
      for (int64_t j = 0; j < n_out; ++j)
        for (int64_t k = 0; k < B; ++k) yp[k * n_out + j] = vp[outputs[j] * B + k];
    });
    ctx->save_for_backward({w, V, Z, layout_holder, sa, sb});
    ctx->saved_data["act"] = act;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // Grad mode is on in backward only for create_graph. The kernel's
    // gradients would come back as constants: second derivatives silently
    // missing, so it refuses.
    if (torch::GradMode::is_enabled())
      fail(
          "NeuralNetwork: the fused kernel's gradients cannot be differentiated again (a backward with "
          "create_graph); build the network with NeuralNetworkOptions().execution(ExecutionOptions().fused(false))");
    auto saved = ctx->get_saved_variables();
    const auto &w = saved[0], &V = saved[1], &Z = saved[2];
    const Layout& layout = held(saved[3]);
    const auto &sa = saved[4], &sb = saved[5];
    const bool scaled = sa.defined();  // saved only when scaled
    const Topology& topo = *layout.topology;
    const Act act = static_cast<Act>(ctx->saved_data["act"].toInt());
    const int64_t B = V.size(1), N = topo.num_neurons(), n_in = topo.num_inputs();
    const auto& outputs = topo.output_ids();
    const int64_t n_out = static_cast<int64_t>(outputs.size());
    const auto gy = grads[0].contiguous();  // [batch, outputs]
    auto G = scratch_tensor(layout, {N, B}, V.options());
    auto gw = torch::empty_like(w), gb = torch::empty({N - n_in}, V.options()),
         gx = torch::empty({B, n_in}, V.options());
    auto gsa = scaled ? torch::zeros_like(sa) : torch::Tensor(), gsb = scaled ? torch::zeros_like(sb) : torch::Tensor();
    auto w_out = scratch_tensor(layout, {w.numel()}, w.options()),
         gw_out = scratch_tensor(layout, {w.numel()}, w.options());
    const int64_t* out_conn = topo.out_connections().data();
    AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "connex_fused_backward", [&] {
      const scalar_t* gyp = gy.data_ptr<scalar_t>();
      scalar_t* Gp = G.data_ptr<scalar_t>();
      for (int64_t j = 0; j < n_out; ++j)
        for (int64_t k = 0; k < B; ++k) Gp[outputs[j] * B + k] = gyp[k * n_out + j];
      const scalar_t* wp = w.data_ptr<scalar_t>();
      scalar_t* wo = w_out.data_ptr<scalar_t>();
      share_work(0, w.numel(), 1 << 14, [&](int64_t first, int64_t last) {
        for (int64_t k = first; k < last; ++k) wo[k] = wp[out_conn[k]];
      });
      run_backward<scalar_t>(layout, act, wo, V.data_ptr<scalar_t>(), Z.defined() ? Z.data_ptr<scalar_t>() : nullptr,
                             scaled ? sa.data_ptr<scalar_t>() : nullptr, scaled ? sb.data_ptr<scalar_t>() : nullptr, Gp,
                             gw_out.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(),
                             scaled ? gsa.data_ptr<scalar_t>() : nullptr, scaled ? gsb.data_ptr<scalar_t>() : nullptr,
                             gx.data_ptr<scalar_t>(), B);
      const scalar_t* go = gw_out.data_ptr<scalar_t>();
      scalar_t* gp = gw.data_ptr<scalar_t>();
      share_work(0, w.numel(), 1 << 14, [&](int64_t first, int64_t last) {
        for (int64_t k = first; k < last; ++k) gp[out_conn[k]] = go[k];
      });
    });
    return {gx, gw, gb, gsa, gsb, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void set_fused_kernel_threads(int threads) {
  if (threads < 0 || threads > 1024) fail("set_fused_kernel_threads(): expected 0 to 1024 threads, got {}", threads);
  set_share_work_threads(threads);
}

int fused_kernel_threads() { return share_work_threads(); }

bool fused_supports(const TensorFunction& activation) { return act_of(activation).has_value(); }

FusedPlan make_fused_plan(const std::shared_ptr<const Topology>& topology, const TensorFunction& activation) {
  auto act = act_of(activation);
  if (!act) fail("make_fused_plan(): activation \"{}\" is not a built-in the fused kernel knows", activation.name());
  auto layout = std::make_shared<Layout>();
  layout->topology = topology;
  return {hold(std::move(layout)), static_cast<int64_t>(*act)};
}

torch::Tensor fused_forward(const FusedPlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const torch::Tensor& scale_a, const torch::Tensor& scale_b) {
  // Autograd records every tensor input's device: no scaling is an empty tensor, not an undefined one.
  const auto none = scale_a.defined() ? torch::Tensor() : torch::empty({0}, weight.options());
  return FusedNetwork::apply(x.contiguous(), weight, bias, scale_a.defined() ? scale_a : none,
                             scale_b.defined() ? scale_b : none, plan.layout_holder, plan.activation);
}

}  // namespace connex
