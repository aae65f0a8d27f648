#include "fused_plan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "activation.h"
#include "connex/error.h"
#include "connex/neural_network.h"
#include "formula_gradients.h"
#include "scratch_memory.h"
#include "topo_norm.h"
#include "vector_clones.h"
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
      return z <= T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu
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
      return z <= T(0) ? T(0) : T(1);  // passed at NaN, as threshold_backward
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
      return y <= T(0) ? T(0) : T(1);
    case Act::Tanh:
      return T(1) - y * y;
    case Act::Sigmoid:
      return y * (T(1) - y);
    default:
      return T(1);
  }
}

// Rows per parallel task: enough work per task to beat the scheduling
// cost, judged by connections × batch.
int64_t grain_for(int64_t connections, int64_t rows, int64_t batch) {
  const int64_t work = std::max<int64_t>(1, connections * batch + rows * batch);
  const int64_t per_row = std::max<int64_t>(1, work / std::max<int64_t>(1, rows));
  return std::max<int64_t>(1, 32768 / per_row);
}
int64_t grain_for(const Level& level, int64_t batch) { return grain_for(level.num_connections(), level.size(), batch); }

// With topo norm, a level's weights multiply its sources' normed rows, one
// row per (level, source) in topo norm's order (Level::sources_before), not
// the sources' values: forward reads row conn_row[c] for connection c, and
// backward runs each such row's connections as a source's, in row order.
struct NormLayout {
  std::vector<int64_t> conn_row;     // connection c's normed row
  std::vector<int64_t> row_offsets;  // row r's connections: [row_offsets[r], row_offsets[r + 1]) below
  std::vector<int64_t> row_targets;  // their target neurons, ascending within a row
  std::vector<int64_t> row_conn;     // their connection indices
  int64_t rows = 0;                  // Σ_l sources of level l
  int64_t widest_scattered = 0;      // sources of the widest level whose sources are not one run of ids
};

int64_t width_of(const Level& level) { return static_cast<int64_t>(level.sources.size()); }

NormLayout make_norm_layout(const Topology& topo) {
  NormLayout norm;
  const auto& levels = topo.levels();
  norm.conn_row.resize(static_cast<size_t>(topo.num_connections()));
  const std::vector<LevelEdges> edges = topo.level_edges();
  for (size_t l = 1; l < levels.size(); ++l) {
    const Level& level = levels[l];
    for (int64_t c = level.conn_begin; c < level.conn_end; ++c)
      norm.conn_row[c] = level.sources_before + edges[l].source[c - level.conn_begin];
    norm.rows = level.sources_before + width_of(level);
    if (!level.sources_in_a_run()) norm.widest_scattered = std::max(norm.widest_scattered, width_of(level));
  }
  // Connections are in target order, so a counting sort by row keeps each row's targets ascending.
  norm.row_offsets.assign(static_cast<size_t>(norm.rows) + 1, 0);
  for (int64_t r : norm.conn_row) ++norm.row_offsets[r + 1];
  for (int64_t r = 0; r < norm.rows; ++r) norm.row_offsets[r + 1] += norm.row_offsets[r];
  std::vector<int64_t> next(norm.row_offsets.begin(), norm.row_offsets.end() - 1);
  norm.row_targets.resize(norm.conn_row.size());
  norm.row_conn.resize(norm.conn_row.size());
  const auto& target = topo.conn_target();
  for (int64_t c = 0; c < topo.num_connections(); ++c) {
    const int64_t k = next[norm.conn_row[c]]++;
    norm.row_targets[k] = target[c];
    norm.row_conn[k] = c;
  }
  return norm;
}

// What the kernel reads besides the tensors, made once per network: the
// topology (whose out_targets() backward reads in sequence), topo norm's
// rows when the network norms, and the scratch memory its steps reuse.
struct Layout {
  std::shared_ptr<const Topology> topology;
  std::optional<NormLayout> norm;
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
// for large graphs, short enough not to evict rows of small ones. Rows that
// fit in a core's L2 come fast without: there the prefetches (one per cache
// line of a row) only took load slots, 10-15 % of a train step of the
// 256-1024-1024-10 network at batch 128 (1.2 MB of rows), while they halve
// the backward of the 1M-connection DAG (26 MB). So a pass asks ahead only
// when the network's rows exceed kPrefetchAbove bytes.
constexpr int64_t kPrefetchAhead = 16;
constexpr int64_t kPrefetchAbove = 2 << 20;
// Backward reads weights in place up to this many bytes of them (see FusedNetwork::backward).
constexpr int64_t kWeightsInPlaceUpTo = 1 << 20;
// Backward's register tiles (source_pass): this many vectors of the batch,
// in this width only (AVX-512's 32 registers hold them). FusedNetwork::
// backward asks the same to know whether a batch runs them.
constexpr int kSourceTileWidth = 64;
constexpr int64_t kSourceTileVectors = 8;

template <typename T>
__attribute__((always_inline)) inline void prefetch_row(const T* row, int64_t n) {
  for (int64_t k = 0; k < n; k += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + k);
}

// Sums with eight independent partial sums, in a fixed order: a single
// running sum is a chain of dependent additions the compiler may not reorder.
template <typename T>
__attribute__((always_inline)) inline T sum_of(const T* __restrict x, int64_t n) {
  T part[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) part[u] += x[j + u];
  for (; j < n; ++j) part[0] += x[j];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// W bytes of T as one GCC vector, W the register width of the instruction
// set a row function is compiled for (64 with AVX-512, 32 with AVX2, 16 in
// x86-64's SSE2 baseline: run_rows below): one register per vector. The
// batch loops are written on it, so each instruction set's code is fixed
// rather than left to the auto-vectoriser (which split an 8-way partial sum
// into shuffles and scalar adds). Vectors wider than the registers, as one
// 64-byte width for every set was, GCC lowers piecewise, and stores of them
// went through the stack and general registers in the AVX2 code.
template <typename T, int W>
struct Lanes {
  typedef T V __attribute__((vector_size(W)));
  static constexpr int64_t n = W / static_cast<int64_t>(sizeof(T));
  __attribute__((always_inline)) static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  __attribute__((always_inline)) static void store(T* p, const V& v) { std::memcpy(p, &v, sizeof v); }
  // Every lane x (a -0.0 stays -0.0, which 0 + x would not keep).
  __attribute__((always_inline)) static V broadcast(T x) {
    V v;
    for (int64_t i = 0; i < n; ++i) v[i] = x;
    return v;
  }
  // The lanes' sum in a fixed pairwise order: lane i += lane i + w for
  // w = n/2, ..., 1. In registers: summed through an array, GCC spilled it
  // to the stack and added the last lanes one by one; the halves are added
  // down to 16 bytes, which every set shuffles in one instruction.
  __attribute__((always_inline)) static T sum(const V& v);
  // sum() of four vectors into out[0..3], the same additions in the same
  // order, the last steps shared: the four 16-byte pieces are transposed as
  // they are summed.
  __attribute__((always_inline)) static void sum4(const V& p0, const V& p1, const V& p2, const V& p3, T* out);
};

#if defined(__GNUC__) && !defined(__clang__)
template <typename T>
struct Narrow {
  typedef T V16 __attribute__((vector_size(16)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I Mask __attribute__((vector_size(16)));  // __builtin_shuffle's lane picks for V16
};
// A vector's halves added, then those halves', down to 16 bytes.
template <typename T, int W>
__attribute__((always_inline)) inline typename Narrow<T>::V16 to_16_bytes(const typename Lanes<T, W>::V& v) {
  if constexpr (W == 16) {
    return v;
  } else {
    typename Lanes<T, W / 2>::V a, b;
    std::memcpy(&a, &v, W / 2);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + W / 2, W / 2);
    return to_16_bytes<T, W / 2>(a + b);
  }
}
template <typename T, int W>
inline T Lanes<T, W>::sum(const V& v) {
  using M = typename Narrow<T>::Mask;
  auto q = to_16_bytes<T, W>(v);
  if constexpr (sizeof(T) == 4) {
    q += __builtin_shuffle(q, M{2, 3, 0, 1});
    q += __builtin_shuffle(q, M{1, 0, 3, 2});
    return q[0];
  } else {
    return q[0] + q[1];
  }
}
template <typename T, int W>
inline void Lanes<T, W>::sum4(const V& p0, const V& p1, const V& p2, const V& p3, T* out) {
  using M = typename Narrow<T>::Mask;
  const auto q0 = to_16_bytes<T, W>(p0), q1 = to_16_bytes<T, W>(p1), q2 = to_16_bytes<T, W>(p2),
             q3 = to_16_bytes<T, W>(p3);
  if constexpr (sizeof(T) == 4) {
    const auto a = __builtin_shuffle(q0, q1, M{0, 1, 4, 5}) + __builtin_shuffle(q0, q1, M{2, 3, 6, 7});
    const auto b = __builtin_shuffle(q2, q3, M{0, 1, 4, 5}) + __builtin_shuffle(q2, q3, M{2, 3, 6, 7});
    const auto r = __builtin_shuffle(a, b, M{0, 2, 4, 6}) + __builtin_shuffle(a, b, M{1, 3, 5, 7});
    std::memcpy(out, &r, 16);
  } else {
    const auto a = __builtin_shuffle(q0, q1, M{0, 2}) + __builtin_shuffle(q0, q1, M{1, 3});
    const auto b = __builtin_shuffle(q2, q3, M{0, 2}) + __builtin_shuffle(q2, q3, M{1, 3});
    std::memcpy(out, &a, 16);
    std::memcpy(out + 2, &b, 16);
  }
}
#else
// Other compilers (clang: the fuzzers' build) have no __builtin_shuffle
// with computed masks; the same additions through an array.
template <typename T, int W>
inline T Lanes<T, W>::sum(const V& v) {
  T x[n];
  std::memcpy(x, &v, sizeof v);
  for (int64_t width = n / 2; width >= 1; width /= 2)
    for (int64_t i = 0; i < width; ++i) x[i] += x[i + width];
  return x[0];
}
template <typename T, int W>
inline void Lanes<T, W>::sum4(const V& p0, const V& p1, const V& p2, const V& p3, T* out) {
  out[0] = sum(p0), out[1] = sum(p1), out[2] = sum(p2), out[3] = sum(p3);
}
#endif

// z = bias + the weighted sum of connections [c0, c1)'s source rows. The
// terms are added one by one in connection order: a connection of weight 0
// (from a finite source) added or removed anywhere leaves every partial sum,
// and so the output, bit-identical up to the sign of a zero (function-
// preserving growth).
//
// M vectors of z from lane k on: the sums stay in registers across the
// connections, each connection one multiply-add per vector.
template <int M, typename T, int W>
__attribute__((always_inline)) inline void weighted_tile(T* __restrict z, T bias, const T* w, const int64_t* src,
                                                         int64_t c0, int64_t c1, const T* V, int64_t B, int64_t k,
                                                         int64_t prefetch_end) {
  using L = Lanes<T, W>;
  using Vec = typename L::V;
  constexpr int64_t n = L::n;
  Vec acc[M];
  for (int i = 0; i < M; ++i) acc[i] = L::broadcast(bias);
  for (int64_t c = c0; c < c1; ++c) {
    if (c + kPrefetchAhead < prefetch_end) prefetch_row(V + src[c + kPrefetchAhead] * B, B);
    const T wc = w[c];
    const T* v = V + src[c] * B + k;
    for (int i = 0; i < M; ++i) acc[i] += wc * L::load(v + i * n);
  }
  for (int i = 0; i < M; ++i) L::store(z + k + i * n, acc[i]);
}

// The whole row: tiles of eight vectors, then of four, two and one (each a
// pass over the connections), then the lanes left. Eight vectors of sums
// take half the registers of AVX2 and SSE2 too (sixteen each), where the
// tiles ran 5-15 % faster than four connections a pass over the row.
template <typename T, int W>
__attribute__((always_inline)) inline void weighted_sum(T* __restrict z, T bias, const T* w, const int64_t* src,
                                                        int64_t c0, int64_t c1, const T* V, int64_t B,
                                                        int64_t prefetch_end) {
  using L = Lanes<T, W>;
  constexpr int64_t n = L::n;
  int64_t k = 0;
  // The first pass over the connections asks ahead for whole rows.
  for (; k + 8 * n <= B; k += 8 * n, prefetch_end = 0)
    weighted_tile<8, T, W>(z, bias, w, src, c0, c1, V, B, k, prefetch_end);
  if (k + 4 * n <= B)
    weighted_tile<4, T, W>(z, bias, w, src, c0, c1, V, B, k, prefetch_end), k += 4 * n, prefetch_end = 0;
  if (k + 2 * n <= B)
    weighted_tile<2, T, W>(z, bias, w, src, c0, c1, V, B, k, prefetch_end), k += 2 * n, prefetch_end = 0;
  if (k + n <= B) weighted_tile<1, T, W>(z, bias, w, src, c0, c1, V, B, k, prefetch_end), k += n, prefetch_end = 0;
  if (k == B) return;
  T tail[n];
  for (int64_t j = k; j < B; ++j) tail[j - k] = bias;
  for (int64_t c = c0; c < c1; ++c) {
    if (c + kPrefetchAhead < prefetch_end) prefetch_row(V + src[c + kPrefetchAhead] * B, B);
    const T wc = w[c];
    const T* v = V + src[c] * B;
    for (int64_t j = k; j < B; ++j) tail[j - k] += wc * v[j];
  }
  for (int64_t j = k; j < B; ++j) z[j] = tail[j - k];
}

// out = act(z) over a row, the activation chosen once per row so that each
// case is a loop of its own the compiler can vectorise.
template <typename T>
__attribute__((always_inline)) inline void activate(Act act, const T* z, T* out, int64_t B) {  // out may be z
  switch (act) {
    case Act::Relu:
      for (int64_t k = 0; k < B; ++k) out[k] = z[k] <= T(0) ? T(0) : z[k];
      return;
    case Act::Identity:
      for (int64_t k = 0; k < B; ++k) out[k] = z[k];
      return;
    default:
      for (int64_t k = 0; k < B; ++k) out[k] = apply(act, z[k]);
  }
}

// What one level's pass reads and writes. Z (pre-activations of the
// non-input neurons) is null when the derivative follows from the output;
// the sums are then formed in V's row itself. sa and sb (null, or one entry
// per non-input neuron): a hidden neuron's value is sa·act(sb·z) (adaptive
// activations; Z is then kept). Backward: see run_backward.
//
// The rows the weights multiply are S's: row src[c] for connection c in
// forward; in backward, "source" d's connections are [out_off[d],
// out_off[d + 1]) of out_tgt (their targets) and its row is S's row d. S is
// V, with the topology's arrays, or with topo norm (norm non-null) the
// normed rows Y (NormLayout).
template <typename T>
struct Pass {
  const Topology* topo;
  Act act;
  const T *w, *b, *sa, *sb;  // forward: w in connection order
  T *V, *Z;
  T *G, *gw, *gb, *gsa, *gsb, *gx;
  const T* S;
  const int64_t *src, *out_off, *out_tgt;
  // Backward: where outgoing connection k's weight and gradient sit in w
  // and gw (out_connections(), or NormLayout::row_conn, in connection
  // order), or null when the caller put both in outgoing order.
  const int64_t* w_at;
  // Topo norm: its layout, parameters and rows (topo_norm.h): normed and Y
  // [norm rows, batch], rstd [levels after the inputs, batch]; dY, dL/dY
  // ([norm rows, batch]), and gamma's and beta's gradients; gathered
  // ([widest_scattered, batch]) holds a level's sources that are not one run.
  const NormLayout* norm;
  const T *gamma, *beta;
  T *normed, *Y, *rstd, *dY, *ggamma, *gbeta, *gathered;
  int64_t B;
  bool prefetch;  // the rows exceed kPrefetchAbove bytes
  int lanes;      // fused_kernel_lanes(): the vectors' width in bytes

  // Backward: outgoing connection k's place in w and gw.
  int64_t at(int64_t k) const { return w_at ? w_at[k] : k; }
  // Its weight gradient over one run of the batch: the first run writes it, later ones add theirs.
  void put_weight_gradient(int64_t k, T dot, bool first) const {
    T& slot = gw[at(k)];
    slot = first ? dot : slot + dot;
  }
};

template <typename T, int W>
__attribute__((always_inline)) inline void forward_rows(const Pass<T>& p, int64_t first, int64_t last) {
  const Topology& topo = *p.topo;
  const int64_t* in = topo.in_offsets().data();
  const int64_t n_in = topo.num_inputs(), prefetch_end = p.prefetch ? topo.num_connections() : 0, B = p.B;
  for (int64_t d = first; d < last; ++d) {
    T* out = p.V + d * B;
    T* z = p.Z ? p.Z + (d - n_in) * B : out;
    weighted_sum<T, W>(z, p.b[d - n_in], p.w, p.src, in[d], in[d + 1], p.S, B, prefetch_end);
    if (topo.role(d) == Role::Hidden && p.sa) {
      const T a = p.sa[d - n_in], s = p.sb[d - n_in];
      for (int64_t k = 0; k < B; ++k) out[k] = s * z[k];
      activate(p.act, out, out, B);
      for (int64_t k = 0; k < B; ++k) out[k] *= a;
    } else if (topo.role(d) == Role::Hidden) {
      activate(p.act, z, out, B);
    } else if (p.Z)
      for (int64_t k = 0; k < B; ++k) out[k] = z[k];
  }
}

// M vectors of the batch from lane j0 on, over all of neuron d's outgoing
// connections: g's and v's vectors stay in registers while each consumer's
// gradient row is read once and used twice, for d's value gradient g and for
// the connection's weight gradient (its dot with d's value row), which the
// first tile writes and later ones add to. Four connections a pass; g's terms
// are added in connection order, as in forward.
template <int M, typename T, int W>
__attribute__((always_inline)) inline void source_tile(const Pass<T>& p, int64_t k0, int64_t end, const T* v,
                                                       T* __restrict g, int64_t j0, int64_t prefetch_end) {
  using L = Lanes<T, W>;
  using Vec = typename L::V;
  constexpr int64_t n = L::n;
  const int64_t* tgt = p.out_tgt;
  const int64_t B = p.B;
  const bool first = j0 == 0;
  Vec gv[M], vv[M];
  for (int i = 0; i < M; ++i) gv[i] = L::load(g + j0 + i * n), vv[i] = L::load(v + j0 + i * n);
  int64_t k = k0;
  for (; k + 4 <= end; k += 4) {
    for (int64_t a = 0; a < 4; ++a)
      if (k + a + kPrefetchAhead < prefetch_end) prefetch_row(p.G + tgt[k + a + kPrefetchAhead] * B, B);
    const T w0 = p.w[p.at(k)], w1 = p.w[p.at(k + 1)], w2 = p.w[p.at(k + 2)], w3 = p.w[p.at(k + 3)];
    const T *gz0 = p.G + tgt[k] * B + j0, *gz1 = p.G + tgt[k + 1] * B + j0, *gz2 = p.G + tgt[k + 2] * B + j0,
            *gz3 = p.G + tgt[k + 3] * B + j0;
    Vec p0 = {}, p1 = {}, p2 = {}, p3 = {};
    for (int i = 0; i < M; ++i) {
      const Vec a0 = L::load(gz0 + i * n), a1 = L::load(gz1 + i * n), a2 = L::load(gz2 + i * n),
                a3 = L::load(gz3 + i * n);
      gv[i] = gv[i] + w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3;
      p0 += a0 * vv[i];
      p1 += a1 * vv[i];
      p2 += a2 * vv[i];
      p3 += a3 * vv[i];
    }
    T dot[4];
    L::sum4(p0, p1, p2, p3, dot);
    for (int a = 0; a < 4; ++a) p.put_weight_gradient(k + a, dot[a], first);
  }
  for (; k < end; ++k) {
    if (k + kPrefetchAhead < prefetch_end) prefetch_row(p.G + tgt[k + kPrefetchAhead] * B, B);
    const T wc = p.w[p.at(k)];
    const T* gz = p.G + tgt[k] * B + j0;
    Vec part = {};
    for (int i = 0; i < M; ++i) {
      const Vec a = L::load(gz + i * n);
      gv[i] += wc * a;
      part += a * vv[i];
    }
    const T dot = L::sum(part);
    p.put_weight_gradient(k, dot, first);
  }
  for (int i = 0; i < M; ++i) L::store(g + j0 + i * n, gv[i]);
}

// Neuron d's outgoing connections (see source_tile): with AVX-512's 32
// registers, the batch in tiles of eight vectors, then what is left (all of
// it in narrower vectors) in one pass that reads g and v from L1. Smaller
// tiles, one pass each over the connections, were slower at batch 64 and
// 250; with sixteen registers (AVX2, SSE2) even a tile of four vectors
// spilled and ran 8-12 % slower than the pass.
template <typename T, int W>
__attribute__((always_inline)) inline void source_pass(const Pass<T>& p, int64_t d, T* __restrict g) {
  const int64_t* tgt = p.out_tgt;
  const int64_t B = p.B, begin = p.out_off[d], end = p.out_off[d + 1];
  int64_t prefetch_end = p.prefetch ? p.topo->num_connections() : 0;  // the first pass asks ahead for whole rows
  const T* __restrict v = p.S + d * B;
  using L = Lanes<T, W>;
  using Vec = typename L::V;
  constexpr int64_t n = L::n;
  int64_t j0 = 0;
  if constexpr (W == kSourceTileWidth)
    for (; j0 + kSourceTileVectors * n <= B; j0 += kSourceTileVectors * n, prefetch_end = 0)
      source_tile<kSourceTileVectors, T, W>(p, begin, end, v, g, j0, prefetch_end);
  if (j0 == B && B > 0) return;  // an empty batch still writes zero weight gradients below
  const bool first = j0 == 0;
  int64_t k = begin;
  for (; k + 4 <= end; k += 4) {
    for (int64_t a = 0; a < 4; ++a)
      if (k + a + kPrefetchAhead < prefetch_end) prefetch_row(p.G + tgt[k + a + kPrefetchAhead] * B, B);
    const T w0 = p.w[p.at(k)], w1 = p.w[p.at(k + 1)], w2 = p.w[p.at(k + 2)], w3 = p.w[p.at(k + 3)];
    const T *gz0 = p.G + tgt[k] * B, *gz1 = p.G + tgt[k + 1] * B, *gz2 = p.G + tgt[k + 2] * B,
            *gz3 = p.G + tgt[k + 3] * B;
    Vec p0 = {}, p1 = {}, p2 = {}, p3 = {};
    int64_t j = j0;
    for (; j + n <= B; j += n) {
      const Vec vj = L::load(v + j), a0 = L::load(gz0 + j), a1 = L::load(gz1 + j), a2 = L::load(gz2 + j),
                a3 = L::load(gz3 + j);
      L::store(g + j, L::load(g + j) + w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3);
      p0 += a0 * vj;
      p1 += a1 * vj;
      p2 += a2 * vj;
      p3 += a3 * vj;
    }
    T dot[4];
    L::sum4(p0, p1, p2, p3, dot);
    for (; j < B; ++j) {
      g[j] = g[j] + w0 * gz0[j] + w1 * gz1[j] + w2 * gz2[j] + w3 * gz3[j];
      dot[0] += gz0[j] * v[j];
      dot[1] += gz1[j] * v[j];
      dot[2] += gz2[j] * v[j];
      dot[3] += gz3[j] * v[j];
    }
    for (int a = 0; a < 4; ++a) p.put_weight_gradient(k + a, dot[a], first);
  }
  for (; k < end; ++k) {
    if (k + kPrefetchAhead < prefetch_end) prefetch_row(p.G + tgt[k + kPrefetchAhead] * B, B);
    const T wc = p.w[p.at(k)];
    const T* __restrict gz = p.G + tgt[k] * B;
    Vec part = {};
    int64_t j = j0;
    for (; j + n <= B; j += n) {
      const Vec gzj = L::load(gz + j);
      L::store(g + j, L::load(g + j) + wc * gzj);
      part += gzj * L::load(v + j);
    }
    T dot = L::sum(part);
    for (; j < B; ++j) {
      g[j] += wc * gz[j];
      dot += gz[j] * v[j];
    }
    p.put_weight_gradient(k, dot, first);
  }
}

// Neuron d's row of G from dL/d(value) to dL/dz, and its bias gradient.
template <typename T, int W>
__attribute__((always_inline)) inline void to_pre_activation(const Pass<T>& p, int64_t d) {
  const Topology& topo = *p.topo;
  const int64_t n_in = topo.num_inputs(), B = p.B;
  const Act act = p.act;
  T* __restrict g = p.G + d * B;
  if (topo.role(d) == Role::Hidden && p.sa) {
    // v = a·act(s·z): dv/da = act(s·z), dv/ds = a·act'(s·z)·z, dv/dz = a·act'(s·z)·s.
    const T* __restrict z = p.Z + (d - n_in) * B;
    const T a = p.sa[d - n_in], s = p.sb[d - n_in];
    T da = 0, ds = 0;
    int64_t j = 0;
    if (act == Act::Relu) {  // the common case in lanes: act(u) = u·[u > 0], act'(u) = [u > 0]
      using L = Lanes<T, W>;
      using Vec = typename L::V;
      Vec va = {}, vs = {};
      for (; j + L::n <= B; j += L::n) {
        const Vec zj = L::load(z + j), u = s * zj, gv = L::load(g + j);
        const Vec gu = u <= T(0) ? Vec{} : gv * a;
        va += gv * (u <= T(0) ? Vec{} : u);
        vs += gu * zj;
        L::store(g + j, gu * s);
      }
      da = L::sum(va);
      ds = L::sum(vs);
    }
    for (; j < B; ++j) {
      const T u = s * z[j], gv = g[j];
      da += gv * apply(act, u);
      // relu's gradient is passed or stopped, as torch's (no Inf·0 = NaN in the lanes or here).
      const T gu = act == Act::Relu ? (u <= T(0) ? T(0) : gv * a) : gv * a * derivative(act, u);
      ds += gu * z[j];
      g[j] = gu * s;
    }
    p.gsa[d - n_in] = da;
    p.gsb[d - n_in] = ds;
  } else if (topo.role(d) == Role::Hidden) {
    if (p.Z) {
      const T* __restrict z = p.Z + (d - n_in) * B;
      for (int64_t j = 0; j < B; ++j) g[j] *= derivative(act, z[j]);
    } else if (act == Act::Relu) {
      const T* __restrict y = p.V + d * B;
      for (int64_t j = 0; j < B; ++j) g[j] = y[j] <= T(0) ? T(0) : g[j];
    } else {
      const T* __restrict y = p.V + d * B;
      for (int64_t j = 0; j < B; ++j) g[j] *= derivative_at_output(act, y[j]);
    }
  }
  p.gb[d - n_in] = sum_of(g, B);
}

template <typename T, int W>
__attribute__((always_inline)) inline void backward_rows(const Pass<T>& p, int64_t first, int64_t last) {
  for (int64_t d = first; d < last; ++d) {
    T* __restrict g = p.G + d * p.B;
    if (p.topo->role(d) != Role::Output) std::fill(g, g + p.B, T(0));  // output rows hold the seed
    source_pass<T, W>(p, d, g);
    to_pre_activation<T, W>(p, d);
  }
}

// Topo norm's backward: rows [first, last) of dY, each a normed row's
// connections gathered (source_pass), with their weight gradients.
template <typename T, int W>
__attribute__((always_inline)) inline void normed_rows(const Pass<T>& p, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    T* __restrict g = p.dY + r * p.B;
    std::fill(g, g + p.B, T(0));
    source_pass<T, W>(p, r, g);
  }
}

// Inputs: their rows of G (zero) collect the gradient, which goes out as
// column d of gx, [batch, inputs] like the input itself, when the input wants
// one (gx null otherwise).
template <typename T, int W>
__attribute__((always_inline)) inline void input_rows(const Pass<T>& p, int64_t first, int64_t last) {
  const int64_t n_in = p.topo->num_inputs(), B = p.B;
  if (!p.norm)  // with topo norm, the levels' norms have added the inputs' gradient to their rows
    for (int64_t d = first; d < last; ++d) {
      T* g = p.G + d * B;
      std::fill(g, g + B, T(0));  // an input is never an output: no seed to keep
      source_pass<T, W>(p, d, g);
    }
  // Sample by sample, so each writes its inputs as one run: a column at a
  // time wrote one value per cache line, up to a third of a sparse step.
  if (p.gx)
    for (int64_t j = 0; j < B; ++j)
      for (int64_t d = first; d < last; ++d) p.gx[j * n_in + d] = p.G[d * B + j];
}

// Which rows a pass runs: Backward's are neurons' (gathering their
// outgoing connections, then to dL/dz); with topo norm, Activations' take
// rows of G already gathered to dL/dz and Normed's are dY's.
enum class Part { Forward, Backward, Inputs, Activations, Normed };

// The rows of a pass in vectors of W bytes.
template <typename T, int W>
__attribute__((always_inline)) inline void run_rows(Part part, const Pass<T>& p, int64_t first, int64_t last) {
  switch (part) {
    case Part::Forward:
      return forward_rows<T, W>(p, first, last);
    case Part::Backward:
      return backward_rows<T, W>(p, first, last);
    case Part::Inputs:
      return input_rows<T, W>(p, first, last);
    case Part::Activations:
      for (int64_t d = first; d < last; ++d) to_pre_activation<T, W>(p, d);
      return;
    case Part::Normed:
      return normed_rows<T, W>(p, first, last);
  }
}
// Compiled for each instruction set in its register width (vector_clones.h)
// and chosen per pass (Pass::lanes): 2-4x as many lanes as the baseline.
template <typename T>
CONNEX_TARGET_AVX512 void rows_in_64_bytes(Part part, const Pass<T>& p, int64_t first, int64_t last) {
  run_rows<T, 64>(part, p, first, last);
}
template <typename T>
CONNEX_TARGET_AVX2 void rows_in_32_bytes(Part part, const Pass<T>& p, int64_t first, int64_t last) {
  run_rows<T, 32>(part, p, first, last);
}
template <typename T>
void rows_in_16_bytes(Part part, const Pass<T>& p, int64_t first, int64_t last) {
  run_rows<T, 16>(part, p, first, last);
}
template <typename T>
void rows_of(Part part, const Pass<T>& p, int64_t first, int64_t last) {
  switch (p.lanes) {
    case 64:
      return rows_in_64_bytes(part, p, first, last);
    case 32:
      return rows_in_32_bytes(part, p, first, last);
    default:
      return rows_in_16_bytes(part, p, first, last);
  }
}

// Topo norm over level l's sources (one thread: the mean and variance of a
// sample span the level's rows): their rows of V, or a copy gathered
// where they are not one run, to normed and Y.
template <typename T>
void norm_forward(const Pass<T>& p, const Level& level, size_t l) {
  const int64_t L = width_of(level), r0 = level.sources_before, B = p.B;
  if (L == 0) return;
  const T* s = p.V + level.sources.front() * B;
  if (!level.sources_in_a_run()) {
    for (int64_t i = 0; i < L; ++i)
      std::memcpy(p.gathered + i * B, p.V + level.sources[i] * B, sizeof(T) * static_cast<size_t>(B));
    s = p.gathered;
  }
  topo_norm_forward_rows(s, p.gamma + r0, p.beta + r0, p.normed + r0 * B, p.Y + r0 * B,
                         p.rstd + static_cast<int64_t>(l - 1) * B, L, B);
}

// Its backward: dY's rows of level l to the sources' rows of G (added), and
// gamma's and beta's gradients.
template <typename T>
void norm_backward(const Pass<T>& p, const Level& level, size_t l) {
  const int64_t L = width_of(level), r0 = level.sources_before, B = p.B;
  if (L == 0) return;
  const bool run = level.sources_in_a_run();
  T* ds = run ? p.G + level.sources.front() * B : p.gathered;
  topo_norm_backward_rows(p.dY + r0 * B, p.normed + r0 * B, p.gamma + r0, p.rstd + static_cast<int64_t>(l - 1) * B, ds,
                          run, p.ggamma + r0, p.gbeta + r0, L, B);
  if (!run)
    for (int64_t i = 0; i < L; ++i) {
      T* g = p.G + level.sources[i] * B;
      for (int64_t j = 0; j < B; ++j) g[j] += ds[i * B + j];
    }
}

template <typename T>
void run_forward(const Pass<T>& p) {
  const auto& levels = p.topo->levels();
  for (size_t l = 1; l < levels.size(); ++l) {
    if (p.norm) norm_forward(p, levels[l], l);
    share_work(levels[l].begin, levels[l].end, grain_for(levels[l], p.B),
               [&](int64_t first, int64_t last) { rows_of(Part::Forward, p, first, last); });
  }
}

// Backward over the connections in out_connections() order, each source's
// run in turn, reading the weights from p.w and writing their gradients to
// p.gw through p.w_at (see Pass). p.G arrives holding the gradient with respect
// to the outputs' values (zero elsewhere); p.gx ([batch, inputs], or null
// when x needs none) receives the input gradient; each non-input row becomes, in place, the gradient
// with respect to that neuron's pre-activation once its consumers are done.
// With sa and sb (see Pass), gsa and gsb receive their gradients (zero for
// outputs, whose entries are unused).
//
// With topo norm, G arrives zero but for the outputs' seed and collects
// each neuron's dL/d(value) level by level, from the last: a level's rows
// to dL/dz (its consumers' norms have all added theirs), then its normed
// rows' connections into dY, then its norm into its sources' rows.
template <typename T>
void run_backward(const Pass<T>& p) {
  const auto& levels = p.topo->levels();
  for (size_t l = levels.size() - 1; l >= 1; --l) {
    const Level& level = levels[l];
    if (!p.norm) {
      share_work(level.begin, level.end, grain_for(level, p.B),
                 [&](int64_t first, int64_t last) { rows_of(Part::Backward, p, first, last); });
      continue;
    }
    share_work(level.begin, level.end, grain_for(0, level.size(), p.B),
               [&](int64_t first, int64_t last) { rows_of(Part::Activations, p, first, last); });
    const int64_t r0 = level.sources_before, L = width_of(level);
    share_work(r0, r0 + L, grain_for(level.num_connections(), L, p.B),
               [&](int64_t first, int64_t last) { rows_of(Part::Normed, p, first, last); });
    norm_backward(p, level, l);
  }
  share_work(0, p.topo->num_inputs(), 16, [&](int64_t first, int64_t last) { rows_of(Part::Inputs, p, first, last); });
}

// The kernel's function in torch operations, whose gradients are
// differentiable again (a backward with create_graph, formula_gradients.h).
// in: x, weight, bias, scale_a, scale_b, gamma, beta (empty where off).
torch::Tensor fused_formula(const Topology& topo, Act act, const torch::autograd::variable_list& in) {
  const auto &x = in[0], &w = in[1], &b = in[2], &sa = in[3], &sb = in[4], &gamma = in[5], &beta = in[6];
  const ActivationInfo& info = activation_info(act);
  const int64_t n_in = topo.num_inputs(), B = x.size(0);
  torch::Tensor values = x.t();  // [neurons so far, batch]
  const std::vector<LevelEdges> edges = topo.level_edges();
  for (size_t l = 1; l < topo.levels().size(); ++l) {
    const Level& level = topo.levels()[l];
    const int64_t size = level.size(), hidden = level.hidden_end - level.begin;
    torch::Tensor z = b.narrow(0, level.begin - n_in, size).unsqueeze(1).expand({size, B});
    if (level.num_connections() > 0) {
      torch::Tensor rows;  // what each connection's weight multiplies
      if (gamma.numel() > 0) {
        const int64_t r0 = level.sources_before, L = width_of(level);
        rows = topo_norm_formula(values.index_select(0, torch::tensor(level.sources, torch::kLong)),
                                 gamma.narrow(0, r0, L), beta.narrow(0, r0, L))
                   .index_select(0, torch::tensor(edges[l].source, torch::kLong));
      } else {
        rows = values.index_select(
            0, torch::tensor(at::ArrayRef<int64_t>(topo.conn_source()).slice(level.conn_begin, level.num_connections()),
                             torch::kLong));
      }
      const auto terms = w.narrow(0, level.conn_begin, level.num_connections()).unsqueeze(1) * rows;
      z = z + torch::zeros({size, B}, x.options()).index_add(0, torch::tensor(edges[l].target, torch::kLong), terms);
    }
    torch::Tensor out = z;
    if (hidden > 0) {
      const auto zh = z.narrow(0, 0, hidden);
      const auto h = sa.numel() > 0 ? sa.narrow(0, level.begin - n_in, hidden) *
                                          info.apply(sb.narrow(0, level.begin - n_in, hidden) * zh)
                                    : info.apply(zh);
      out = hidden == size ? h : torch::cat({h, z.narrow(0, hidden, size - hidden)});
    }
    values = torch::cat({values, out});
  }
  return values.index_select(0, torch::tensor(topo.output_ids(), torch::kLong)).t();
}

// The whole network as one autograd node. It takes x as [batch, inputs] and
// returns [batch, outputs], moving values in and out of its [neurons, batch]
// layout itself: for a small network each tensor op saved (transposes,
// copies, an output gather, and their backward nodes) is a measurable part
// of a training step.
class FusedNetwork : public torch::autograd::Function<FusedNetwork> {
 public:
  // traced_z (one leaf per level after the inputs, [level size, batch];
  // empty when not traced) receive the pre-activations, traced_values (null
  // when not traced) each level's values: LevelTrace's. Backward returns
  // dL/dz as traced_z's gradients (not with create_graph, whose formula
  // has no pre-activation leaves).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight,
                               torch::Tensor bias, torch::Tensor scale_a, torch::Tensor scale_b, torch::Tensor gamma_in,
                               torch::Tensor beta_in, at::TensorList traced_z, torch::Tensor layout_holder, int64_t act,
                               std::vector<torch::Tensor>* traced_values) {
    const Layout& layout = held(layout_holder);
    const Topology& topo = *layout.topology;
    const int64_t B = x.size(0), N = topo.num_neurons(), n_in = topo.num_inputs();
    const auto& outputs = topo.output_ids();
    const int64_t n_out = static_cast<int64_t>(outputs.size());
    auto V = scratch_tensor(layout, {N, B}, x.options());
    const bool scaled = scale_a.numel() > 0;
    const bool traced = traced_values != nullptr;
    auto Z = derivative_from_output(static_cast<Act>(act)) && !scaled && !traced
                 ? torch::Tensor()
                 : scratch_tensor(layout, {N - n_in, B}, x.options());
    auto y = torch::empty({B, n_out}, x.options());
    auto w = weight.contiguous(), b = bias.contiguous();
    auto sa = scaled ? scale_a.contiguous() : torch::Tensor(), sb = scaled ? scale_b.contiguous() : torch::Tensor();
    const NormLayout* norm = layout.norm ? &*layout.norm : nullptr;
    torch::Tensor gamma = gamma_in, beta = beta_in;
    if (norm && !(gamma.numel() == norm->rows && beta.numel() == norm->rows))
      fail("fused_forward(): topo norm expected a gamma and beta of {} rows, got {} and {}", norm->rows, gamma.numel(),
           beta.numel());
    torch::Tensor normed, Y, rstd, gathered;
    if (norm) {
      gamma = gamma.contiguous(), beta = beta.contiguous();
      normed = scratch_tensor(layout, {norm->rows, B}, x.options());
      Y = scratch_tensor(layout, {norm->rows, B}, x.options());
      rstd = scratch_tensor(layout, {static_cast<int64_t>(topo.levels().size()) - 1, B}, x.options());
      gathered = scratch_tensor(layout, {norm->widest_scattered, B}, x.options());
    }
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "connex_fused_forward", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* vp = V.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n_in; ++i)
        for (int64_t k = 0; k < B; ++k) vp[i * B + k] = xp[k * n_in + i];
      Pass<scalar_t> p{};
      p.topo = &topo;
      p.act = static_cast<Act>(act);
      p.w = w.data_ptr<scalar_t>();
      p.b = b.data_ptr<scalar_t>();
      p.sa = scaled ? sa.data_ptr<scalar_t>() : nullptr;
      p.sb = scaled ? sb.data_ptr<scalar_t>() : nullptr;
      p.V = vp;
      p.Z = Z.defined() ? Z.data_ptr<scalar_t>() : nullptr;
      p.S = vp;
      p.src = topo.conn_source().data();
      if (norm) {
        p.norm = norm;
        p.gamma = gamma.data_ptr<scalar_t>();
        p.beta = beta.data_ptr<scalar_t>();
        p.normed = normed.data_ptr<scalar_t>();
        p.Y = Y.data_ptr<scalar_t>();
        p.rstd = rstd.data_ptr<scalar_t>();
        p.gathered = gathered.data_ptr<scalar_t>();
        p.S = p.Y;
        p.src = norm->conn_row.data();
      }
      p.B = B;
      p.prefetch = std::max(N, norm ? norm->rows : 0) * B * static_cast<int64_t>(sizeof(scalar_t)) > kPrefetchAbove;
      p.lanes = fused_kernel_lanes();
      run_forward(p);
      if (traced) {  // each level's rows, contiguous in V and Z
        const auto& levels = topo.levels();
        traced_values->resize(levels.size());
        for (size_t l = 0; l < levels.size(); ++l) {
          const int64_t begin = levels[l].begin, rows = levels[l].end - levels[l].begin;
          (*traced_values)[l] = V.narrow(0, begin, rows).clone();
          if (l > 0)
            std::memcpy(traced_z[l - 1].data_ptr<scalar_t>(), Z.data_ptr<scalar_t>() + (begin - n_in) * B,
                        sizeof(scalar_t) * rows * B);
        }
      }
      scalar_t* yp = y.data_ptr<scalar_t>();
      for (int64_t j = 0; j < n_out; ++j)
        for (int64_t k = 0; k < B; ++k) yp[k * n_out + j] = vp[outputs[j] * B + k];
    });
    // Then the inputs as given, for a backward with create_graph (x only when it wants a gradient).
    ctx->save_for_backward({w, V, Z, layout_holder, sa, sb, gamma, normed, Y, rstd,
                            x.requires_grad() ? x : torch::Tensor(), weight, bias, scale_a, scale_b, gamma_in,
                            beta_in});
    ctx->saved_data["act"] = act;
    ctx->saved_data["traced"] = static_cast<int64_t>(traced_z.size());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &w = saved[0], &V = saved[1], &Z = saved[2];
    const Layout& layout = held(saved[3]);
    const Topology& topo = *layout.topology;
    const Act act = static_cast<Act>(ctx->saved_data["act"].toInt());
    const int64_t n_in = topo.num_inputs();
    // Grad mode is on in backward only for create_graph: the kernel's
    // gradients would be constants, so the formula's are taken (the traced
    // pre-activations then get none).
    if (torch::GradMode::is_enabled()) {
      torch::autograd::variable_list inputs(saved.begin() + 10, saved.end());
      if (!inputs[0].defined()) inputs[0] = V.narrow(0, 0, n_in).t();  // x, a constant
      auto result = formula_gradients(
          inputs, [&](const torch::autograd::variable_list& in) { return fused_formula(topo, act, in); }, grads[0]);
      result.resize(result.size() + static_cast<size_t>(ctx->saved_data["traced"].toInt()) + 3);
      return result;
    }
    const auto &sa = saved[4], &sb = saved[5], &gamma = saved[6], &normed = saved[7], &Y = saved[8], &rstd = saved[9];
    const bool scaled = sa.defined();  // saved only when scaled
    const NormLayout* norm = normed.defined() ? &*layout.norm : nullptr;
    const int64_t B = V.size(1), N = topo.num_neurons();
    const auto& outputs = topo.output_ids();
    const int64_t n_out = static_cast<int64_t>(outputs.size());
    const auto gy = grads[0].contiguous();  // [batch, outputs]
    auto G = scratch_tensor(layout, {N, B}, V.options());
    auto gw = torch::empty_like(w), gb = torch::empty({N - n_in}, V.options()),
         gx = ctx->needs_input_grad(0) ? torch::empty({B, n_in}, V.options()) : torch::Tensor();
    auto gsa = scaled ? torch::zeros_like(sa) : torch::Tensor(), gsb = scaled ? torch::zeros_like(sb) : torch::Tensor();
    // Topo norm: rows no level has (none without sources) keep a zero gradient.
    auto ggamma = norm ? torch::zeros_like(gamma) : torch::Tensor(),
         gbeta = norm ? torch::zeros_like(saved[16]) : torch::Tensor();
    auto dY = norm ? scratch_tensor(layout, {norm->rows, B}, V.options()) : torch::Tensor(),
         gathered = norm ? scratch_tensor(layout, {norm->widest_scattered, B}, V.options()) : torch::Tensor();
    // Where backward runs its tiles (source_pass) over up to 1 MiB of
    // weights (a core's L2 here), they are read, and their gradients
    // written, where they are: a gather into outgoing order and a scatter
    // back took 11 % of a step at 10 % density (132k connections, batch 128;
    // in place, the backward 12-15 % less on one or two threads), while a
    // tile's work hides the scattered accesses. Without tiles (batch 64,
    // narrower vectors) in place was as fast or 8 % slower; at 30 % (1.6 MB)
    // 10 % faster on one thread but 7 % slower on two; and the 1M-connection
    // DAG's backward (4 MB) took 1.7x as long, the accesses missing among
    // the rows' prefetches: there the two passes, which keep many misses in
    // flight, stay.
    const int lanes = fused_kernel_lanes();
    const bool tiles = lanes == kSourceTileWidth &&
                       B * static_cast<int64_t>(V.element_size()) >= kSourceTileVectors * kSourceTileWidth;
    const bool in_place = tiles && w.numel() * static_cast<int64_t>(w.element_size()) <= kWeightsInPlaceUpTo;
    auto w_out = in_place ? torch::Tensor() : scratch_tensor(layout, {w.numel()}, w.options()),
         gw_out = in_place ? torch::Tensor() : scratch_tensor(layout, {w.numel()}, w.options());
    const int64_t* out_conn = norm ? norm->row_conn.data() : topo.out_connections().data();
    AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "connex_fused_backward", [&] {
      const scalar_t* gyp = gy.data_ptr<scalar_t>();
      scalar_t* Gp = G.data_ptr<scalar_t>();
      if (norm)  // G collects dL/d(value) from the levels' norms: zero but for the seed below
        share_work(0, N, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, B)),
                   [&](int64_t first, int64_t last) { std::fill(Gp + first * B, Gp + last * B, scalar_t(0)); });
      for (int64_t j = 0; j < n_out; ++j)
        for (int64_t k = 0; k < B; ++k) Gp[outputs[j] * B + k] = gyp[k * n_out + j];
      const scalar_t* wp = w.data_ptr<scalar_t>();
      if (!in_place) {
        scalar_t* wo = w_out.data_ptr<scalar_t>();
        share_work(0, w.numel(), 1 << 14, [&](int64_t first, int64_t last) {
          for (int64_t k = first; k < last; ++k) wo[k] = wp[out_conn[k]];
        });
      }
      Pass<scalar_t> p{};
      p.topo = &topo;
      p.act = act;
      p.w = in_place ? wp : w_out.data_ptr<scalar_t>();
      p.w_at = in_place ? out_conn : nullptr;
      p.sa = scaled ? sa.data_ptr<scalar_t>() : nullptr;
      p.sb = scaled ? sb.data_ptr<scalar_t>() : nullptr;
      p.V = V.data_ptr<scalar_t>();
      p.Z = Z.defined() ? Z.data_ptr<scalar_t>() : nullptr;
      p.G = Gp;
      p.gw = in_place ? gw.data_ptr<scalar_t>() : gw_out.data_ptr<scalar_t>();
      p.gb = gb.data_ptr<scalar_t>();
      p.gsa = scaled ? gsa.data_ptr<scalar_t>() : nullptr;
      p.gsb = scaled ? gsb.data_ptr<scalar_t>() : nullptr;
      p.gx = gx.defined() ? gx.data_ptr<scalar_t>() : nullptr;
      p.S = p.V;
      p.out_off = topo.out_offsets().data();
      p.out_tgt = topo.out_targets().data();
      if (norm) {
        p.norm = norm;
        p.gamma = gamma.data_ptr<scalar_t>();
        p.normed = normed.data_ptr<scalar_t>();
        p.rstd = rstd.data_ptr<scalar_t>();
        p.dY = dY.data_ptr<scalar_t>();
        p.ggamma = ggamma.data_ptr<scalar_t>();
        p.gbeta = gbeta.data_ptr<scalar_t>();
        p.gathered = gathered.data_ptr<scalar_t>();
        p.S = Y.data_ptr<scalar_t>();
        p.out_off = norm->row_offsets.data();
        p.out_tgt = norm->row_targets.data();
      }
      p.B = B;
      p.prefetch = std::max(N, norm ? norm->rows : 0) * B * static_cast<int64_t>(sizeof(scalar_t)) > kPrefetchAbove;
      p.lanes = lanes;
      run_backward(p);
      if (!in_place) {
        const scalar_t* go = gw_out.data_ptr<scalar_t>();
        scalar_t* gp = gw.data_ptr<scalar_t>();
        share_work(0, w.numel(), 1 << 14, [&](int64_t first, int64_t last) {
          for (int64_t k = first; k < last; ++k) gp[out_conn[k]] = go[k];
        });
      }
    });
    torch::autograd::variable_list result{gx, gw, gb, gsa, gsb, ggamma, gbeta};
    if (ctx->saved_data["traced"].toInt() > 0)  // dL/dz: each level's rows of G, which backward left as such
      for (size_t l = 1; l < topo.levels().size(); ++l) {
        const Level& level = topo.levels()[l];
        result.push_back(G.narrow(0, level.begin, level.end - level.begin).clone());
      }
    result.resize(result.size() + 3);  // nothing for the layout, the activation and the values
    return result;
  }
};

}  // namespace

namespace {
std::atomic<int> lanes_asked{0};
}  // namespace

int fused_kernel_lanes() {
  const int asked = lanes_asked.load(std::memory_order_relaxed);
  return asked ? asked : widest_vector_bytes();
}
void set_fused_kernel_lanes(int bytes) {
  if (bytes != 0 && bytes != 16 && bytes != 32 && bytes != 64)
    fail("set_fused_kernel_lanes(): expected 0, 16, 32 or 64 bytes, got {}", bytes);
  if (bytes > widest_vector_bytes())
    fail("set_fused_kernel_lanes(): this processor's vectors are at most {} bytes, got {}", widest_vector_bytes(),
         bytes);
  lanes_asked.store(bytes, std::memory_order_relaxed);
}

void set_fused_kernel_threads(int threads) {
  if (threads < 0 || threads > 1024) fail("set_fused_kernel_threads(): expected 0 to 1024 threads, got {}", threads);
  set_share_work_threads(threads);
}

int fused_kernel_threads() { return share_work_threads(); }

bool fused_supports(const TensorFunction& activation) { return act_of(activation).has_value(); }

FusedPlan make_fused_plan(const std::shared_ptr<const Topology>& topology, const TensorFunction& activation,
                          bool norm) {
  auto act = act_of(activation);
  if (!act) fail("make_fused_plan(): activation \"{}\" is not a built-in the fused kernel knows", activation.name());
  auto layout = std::make_shared<Layout>();
  layout->topology = topology;
  if (norm) {
    layout->norm = make_norm_layout(*topology);
    // A step holds up to eleven blocks (the norm's rows, their gradient and
    // gathered copies besides the values): keep them all from step to step.
    layout->scratch = std::make_shared<ScratchMemory>(12);
  }
  return {hold(std::move(layout)), static_cast<int64_t>(*act), norm};
}

torch::Tensor fused_forward(const FusedPlan& plan, const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, const FusedOperations& operations, LevelTrace* trace) {
  const auto &scale_a = operations.scale_a, &scale_b = operations.scale_b;
  if (plan.norm != operations.gamma.defined())
    fail("fused_forward(): the plan {} topo norm, got {} gamma", plan.norm ? "has" : "has no",
         operations.gamma.defined() ? "a" : "no");
  // Autograd records every tensor input's device: an operation that is off is an empty tensor, not an undefined one.
  const auto none = torch::empty({0}, weight.options());
  std::vector<torch::Tensor> traced_z;
  if (trace) {
    const Topology& topo = *held(plan.layout_holder).topology;
    // As on the per-level path, the pre-activations take part in autograd only where it records.
    const auto wants = [](const torch::Tensor& t) { return t.defined() && t.requires_grad(); };
    const bool gradients =
        torch::GradMode::is_enabled() && (wants(x) || wants(weight) || wants(bias) || wants(scale_a) ||
                                          wants(scale_b) || wants(operations.gamma) || wants(operations.beta));
    for (size_t l = 1; l < topo.levels().size(); ++l)
      traced_z.push_back(
          torch::empty({topo.levels()[l].size(), x.size(0)}, weight.options()).requires_grad_(gradients));
  }
  std::vector<torch::Tensor> values;
  const auto given = [&none](const torch::Tensor& t) { return t.defined() ? t : none; };
  auto y = FusedNetwork::apply(x.contiguous(), weight, bias, given(scale_a), given(scale_b), given(operations.gamma),
                               given(operations.beta), at::TensorList(traced_z), plan.layout_holder, plan.activation,
                               trace ? &values : nullptr);
  if (trace) {
    trace->values = std::move(values);
    trace->preactivations.assign(1, torch::Tensor());
    trace->preactivations.insert(trace->preactivations.end(), traced_z.begin(), traced_z.end());
    trace->topology = held(plan.layout_holder).topology;
  }
  return y;
}

}  // namespace connex
