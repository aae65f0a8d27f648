#include "scalar_attention.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "dtype.h"
#include "formula_gradients.h"
#include "vector_clones.h"
#include "work_share.h"

namespace connex {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// exp(x) for float in a form the compiler vectorises: 2^n · p(r), with
// n = round(x / ln 2) taken from the low mantissa bits of x / ln 2 + 1.5·2^23,
// r = x - n·ln 2 (ln 2 in two parts, so r is exact) and p Cephes' degree-6
// polynomial for exp on [-ln 2 / 2, ln 2 / 2]: within 2 ulp of std::exp.
// Clamped to [-87, 88], where 2^n stays a normal float.
__attribute__((always_inline)) inline float exp_vectorisable(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kShift = 12582912.0f;  // 1.5·2^23, bits 0x4B400000
  const float shifted = x * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits - 0x4B400000 + 127) * (1 << 23);
  float power;
  std::memcpy(&power, &bits, sizeof power);
  return p * power;
}

__attribute__((always_inline)) inline float exp_of(float x) { return exp_vectorisable(x); }
inline double exp_of(double x) { return std::exp(x); }

// One call's tensors as pointers. Element (g, i, b) of a [groups, L, batch]
// tensor is at (g·L + i)·B + b, so a position's samples are contiguous: the
// passes vectorise over samples, with no sums across lanes. The unit of work
// is one group and a chunk of up to kChunk samples: 64 runs 10-15 % faster
// on one thread than 32 or 16 (fewer loop trips per term), and leaves topo
// attention at batch 64 one unit per level, serial.
constexpr int64_t kChunk = 64;

template <typename T>
struct Pass {
  int64_t L = 0, B = 0;
  const int64_t* offsets = nullptr;
  const int64_t* positions = nullptr;
  const double* scale = nullptr;
  bool queries_are_keys = false;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  T *o = nullptr, *inv_sum = nullptr;  // written by forward, read by backward
  const T* go = nullptr;
  T *gq = nullptr, *gk = nullptr, *gv = nullptr;

  int64_t chunks() const { return (B + kChunk - 1) / kChunk; }
  int64_t row(int64_t g, int64_t i) const { return (g * L + i) * B; }
};

// One unit: group g, samples [b0, b0 + nb).
struct Unit {
  int64_t g, b0, nb;
  const int64_t* keys;
  int64_t num_keys, num_queries;
  int64_t query(int64_t c, bool queries_are_keys) const { return queries_are_keys ? keys[c] : c; }
};

template <typename T>
Unit unit_of(const Pass<T>& a, int64_t u) {
  Unit unit;
  unit.g = u / a.chunks();
  unit.b0 = (u % a.chunks()) * kChunk;
  unit.nb = std::min(kChunk, a.B - unit.b0);
  unit.keys = a.positions + a.offsets[unit.g];
  unit.num_keys = a.offsets[unit.g + 1] - a.offsets[unit.g];
  unit.num_queries = a.queries_are_keys ? unit.num_keys : a.L;
  return unit;
}

// Per sample, the largest and smallest key: a query's largest score t·k_j is
// at one of them, so no pass over the scores finds it. Returns whether the
// unit's keys and values are all finite (the expansion's sums need them).
template <typename T>
__attribute__((always_inline)) inline bool key_range(const Pass<T>& a, const Unit& u, T* k_max, T* k_min) {
  for (int64_t b = 0; b < u.nb; ++b) {
    k_max[b] = -std::numeric_limits<T>::infinity();
    k_min[b] = std::numeric_limits<T>::infinity();
  }
  T check = 0;  // NaN once a product with 0 is
  for (int64_t c = 0; c < u.num_keys; ++c) {
    const int64_t r = a.row(u.g, u.keys[c]) + u.b0;
    const T* kr = a.k + r;
    const T* vr = a.v + r;
#pragma omp simd reduction(+ : check)
    for (int64_t b = 0; b < u.nb; ++b) {
      k_max[b] = std::max(k_max[b], kr[b]);
      k_min[b] = std::min(k_min[b], kr[b]);
      check += kr[b] * 0 + vr[b] * 0;
    }
  }
  return check == 0;
}

// A query's scale·q and the key of its largest score, per sample. A score
// less the largest is then t·(k_j - that key): rounded relative to itself,
// not to t·k_j (keys near 20 against t near 60 lost 4 digits of the weights).
template <typename T>
__attribute__((always_inline)) inline void query_scores(const Pass<T>& a, const Unit& u, int64_t i, const T* k_max,
                                                        const T* k_min, T* t, T* k_top) {
  const T scale = static_cast<T>(a.scale[u.g]);
  const T* qr = a.q + a.row(u.g, i) + u.b0;
#pragma omp simd
  for (int64_t b = 0; b < u.nb; ++b) {
    t[b] = scale * qr[b];
    k_top[b] = t[b] >= 0 ? k_max[b] : k_min[b];
  }
}

// The moment expansion. Centred on the midpoint c of a sample's keys and
// scaled by their half spread h, a key is k_j = c + h·λ_j with |λ_j| ≤ 1,
// and a score t·k_j = t·c + s·λ_j with s = t·h. t·c is the same for every
// key of a query, so it cancels in the softmax: query i's weights are
// exp(s_i·λ_j) / Σ_j exp(s_i·λ_j), where |s_i·λ_j| ≤ R_i = |s_i|. With a
// polynomial Σ_p c_p x^p of degree P in place of e^x on [-R, R] (Taylor's
// series economised, CapPolynomial), every sum over the keys is a
// polynomial in s whose coefficients (moments such as Σ_j λ_j^p v_j) all
// queries share, and every sum over the queries (dk, dv) one in λ_j: work
// (queries + keys)·P instead of queries·keys exponentials. Every term of
// the softmax's sums is positive, and P is the least degree whose error,
// relative to e^x, is provably under a quarter ulp of the dtype (relative
// to the sums of |terms| for the signed ones). The powers are summed in
// double: for x near -R their terms reach e^(2R) times the result, which
// costs float nothing up to R = 5 and double inputs at most ~1e-13 up to
// their cap of 3.5. A query's sample past the cap (training sharpens
// attention: R of 15 and more occur) takes the exact sums, one exponential
// per key, beside the others (UnitPlan).
// (query, sample) pairs summed by the expansion, and exactly (attention_path_counts()).
std::atomic<int64_t> path_counts[2];

constexpr int kMaxTerms = 40;  // P + 2 at most: the moments go one degree beyond P

// A sum per term and sample. Within an array of these, one starts 192
// bytes after the last modulo 4 KiB: a loop storing row p of one and
// loading row p of the next would otherwise meet false store-to-load
// dependencies (4K aliasing), which cost backward's accumulation over the
// queries a third of its time.
struct TermRows {
  double row[kMaxTerms][kChunk];
  double skew[24];
};

// The caps, tolerances and costs per dtype. The costs are nanoseconds per
// sample, forward and backward together, timed on the development machine
// (AVX-512; a probe of this function at L = 97): per score of the exact
// sums, per term per key or query of the expansion, per expanded query, per
// score of a sample summed alone, and per key of a sample's copies.
template <typename T>
struct ExpansionLimits;
template <>
struct ExpansionLimits<float> {
  static constexpr double kMaxRange = 5.0, kTolerance = 1.5e-8;
  static constexpr double kScoreCost = 0.8, kTermCost = 0.85, kQueryCost = 3, kSampleCost = 1.3, kCopyCost = 4;
};
template <>
struct ExpansionLimits<double> {
  static constexpr double kMaxRange = 3.5, kTolerance = 2.8e-17;
  static constexpr double kScoreCost = 10, kTermCost = 2.9, kQueryCost = 25, kSampleCost = 10,
                          kCopyCost = 4;  // std::exp is scalar
};

// The caps a unit chooses among for R_i, with the degree each needs.
constexpr double kCaps[] = {0.125, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5};
constexpr int kNumCaps = sizeof kCaps / sizeof kCaps[0];

// The polynomial that stands for exp on [-R, R] at a cap: Taylor's series
// economised (Lanczos): from degree kSeries, whose remainder is far below
// any tolerance, the top power c_n x^n is removed by subtracting
// c_n·R^n·2^(1-n)·T_n(x/R) (T_n the Chebyshev polynomial), which moves the
// value on [-R, R] by at most |c_n|·R^n·2^(1-n), while the sum of these
// moves and the remainder, relative to e^x ≥ e^-R, stays under the
// tolerance. Rigorous like Taylor's own bound (for the polynomial before
// its coefficients are rounded to double, which costs a float nothing and
// double ~1e-16·e^(2R), as it cost Taylor's), and of lower degree: in float
// 5 at R = 1/8 as Taylor's, 5 for 7 at 1/4, 9 for 11 at 1, 20 for 28 at 5.
// Computed in long double. No polynomial for a range or tolerance ≤ 0.
struct CapPolynomial {
  int degree = -1;                              // -1: more than kMaxTerms - 2
  std::array<double, kMaxTerms> coefficient{};  // of x^p, p ≤ degree
};

inline CapPolynomial economised_exp(double range, double tolerance) {
  if (!(range > 0) || !(tolerance > 0) || !std::isfinite(range)) return {};
  constexpr int kSeries = 60;
  using Real = long double;
  const Real R = range, e_R = std::exp(R);
  std::array<Real, kSeries + 1> c{};
  c[0] = 1;
  for (int p = 1; p <= kSeries; ++p) c[p] = c[p - 1] / p;
  Real moved = e_R * std::pow(R, kSeries + 1) * c[kSeries] / (kSeries + 1);  // Taylor's remainder
  // chebyshev[n][k]: the coefficient of t^k in T_n(t).
  std::vector<std::array<Real, kSeries + 1>> chebyshev(kSeries + 1);
  chebyshev[0][0] = 1;
  chebyshev[1][1] = 1;
  for (int n = 2; n <= kSeries; ++n)
    for (int k = 0; k <= n; ++k) chebyshev[n][k] = (k > 0 ? 2 * chebyshev[n - 1][k - 1] : 0) - chebyshev[n - 2][k];
  int n = kSeries;
  for (; n > 0; --n) {
    const Real scale = c[n] * std::pow(R, n) / std::pow(Real(2), n - 1);
    if ((moved + std::abs(scale)) * e_R > tolerance) break;
    for (int k = n; k >= 0; k -= 2) c[k] -= scale * chebyshev[n][k] / std::pow(R, k);
    moved += std::abs(scale);
  }
  CapPolynomial poly;
  if (moved * e_R > tolerance || n + 2 > kMaxTerms) return poly;
  poly.degree = n;
  for (int p = 0; p <= n; ++p) poly.coefficient[static_cast<size_t>(p)] = static_cast<double>(c[p]);
  return poly;
}

template <typename T>
const std::array<CapPolynomial, kNumCaps>& cap_polynomials() {
  static const auto table = [] {
    std::array<CapPolynomial, kNumCaps> polys{};
    for (int c = 0; c < kNumCaps; ++c)
      if (kCaps[c] <= ExpansionLimits<T>::kMaxRange)
        polys[c] = economised_exp(kCaps[c], ExpansionLimits<T>::kTolerance);
    return polys;
  }();
  return table;
}

// Per sample, the keys' midpoint c, half spread h and 1/h (0 where h is:
// equal keys, every λ = 0).
template <typename T>
__attribute__((always_inline)) inline void centre(const Unit& u, const T* k_max, const T* k_min, double* mid,
                                                  double* half, double* inv_half) {
#pragma omp simd
  for (int64_t b = 0; b < u.nb; ++b) {
    mid[b] = (static_cast<double>(k_max[b]) + k_min[b]) / 2;
    half[b] = (static_cast<double>(k_max[b]) - k_min[b]) / 2;
    inv_half[b] = half[b] > 0 ? 1 / half[b] : 0;
  }
}

// How a unit's queries are summed. A query row (one query over the unit's
// samples) is either summed exactly, vectorised over the samples, or by the
// expansion; then its samples whose R = |s| lies above the expansion's cap
// (a few, usually: one sharp sample made a whole row exact before) are
// summed exactly one by one, vectorised over the keys, from copies of their
// keys and values laid out sample by sample.
template <typename T>
struct UnitPlan {
  int cap = -1, degree = -1;            // the expansion's cap (an index into kCaps) and degree; -1 when no row takes it
  const double* coefficient = nullptr;  // of the cap's polynomial (CapPolynomial)
  std::vector<uint8_t> level;           // [queries × nb]: a sample's least cap index (kNumCaps: none, or NaN)
  std::vector<uint8_t> expanded;        // [queries]: 1 where the row takes the expansion
  std::vector<int32_t> counts;          // [queries × (kNumCaps + 1)]: a row's samples at or above each cap index
  std::vector<int64_t> samples;         // the samples that some expanded row sums exactly, ascending
  std::vector<int64_t> slot;            // [nb]: a sample's index in samples, or -1
  std::vector<T> kt, vt, gkt, gvt;      // [samples × keys]: their keys, values and gradients, sample by sample
  std::vector<double> rows;             // backward: up to kRowBlock expanded rows, kRowTerms × kChunk each

  const uint8_t* levels(int64_t c, int64_t nb) const { return level.data() + c * nb; }
  // Whether expanded row c sums sample b exactly.
  bool exact_sample(int64_t c, int64_t b, int64_t nb) const { return level[c * nb + b] > cap; }
  int32_t exact_samples(int64_t c) const { return counts[c * (kNumCaps + 1) + cap + 1]; }
};

// The plan for a unit. Each sample's least cap by its R = |scale·q|·h; then
// of the caps (kMaxRange at most), the cheapest by ExpansionLimits' costs,
// each row taking the cheaper of its exact sums and the expansion with its
// samples above the cap summed one by one. Non-finite keys or values keep
// every row exact (their infinities are NaN in a polynomial). Forward and
// backward plan alike from the same q, k and v.
template <typename T>
__attribute__((always_inline)) inline void plan_unit(const Pass<T>& a, const Unit& u, bool finite, const double* half,
                                                     UnitPlan<T>& plan) {
  using Limits = ExpansionLimits<T>;
  const auto& polys = cap_polynomials<T>();
  const int64_t nq = u.num_queries, nb = u.nb, width = kNumCaps + 1;
  plan.cap = plan.degree = -1;
  plan.coefficient = nullptr;
  plan.expanded.assign(static_cast<size_t>(nq), 0);
  plan.samples.clear();
  if (!finite) return;
  plan.level.resize(static_cast<size_t>(nq * nb));
  plan.counts.assign(static_cast<size_t>(nq * width), 0);
  uint8_t sample_top[kChunk] = {};  // a sample's largest level over the rows
  // R is taken as |q|·hs in T, hs = |scale|·h·(1 + 2^-20) and at least
  // T's least normal value: the margin covers T's roundings, so the R taken
  // is never below the expansion's |s| (its bound holds), and float
  // compares 16 samples at a time.
  T hs[kChunk], caps[kNumCaps];
  const double scale = std::abs(a.scale[u.g]);
  for (int64_t b = 0; b < nb; ++b)
    hs[b] = std::max(static_cast<T>(scale * half[b] * (1 + 0x1p-20)), std::numeric_limits<T>::min());
  for (int cap = 0; cap < kNumCaps; ++cap) caps[cap] = static_cast<T>(kCaps[cap]);
  for (int64_t c = 0; c < nq; ++c) {
    const T* qr = a.q + a.row(u.g, u.query(c, a.queries_are_keys)) + u.b0;
    uint8_t* lv = plan.level.data() + c * nb;
    T r[kChunk], top = 0;
    int nan = 0;
#pragma omp simd reduction(max : top) reduction(| : nan)
    for (int64_t b = 0; b < nb; ++b) {
      r[b] = std::abs(qr[b]) * hs[b];
      top = std::max(top, r[b]);
      nan |= !(r[b] == r[b]);
    }
    // Only the caps below the row's largest R can be passed (NaN passes none).
    int above = 0;
    if (nan) above = kNumCaps;
    while (above < kNumCaps && !(top <= caps[above])) ++above;
    int32_t* count = plan.counts.data() + c * width;
    count[0] = static_cast<int32_t>(nb);
    for (int64_t b = 0; b < nb; ++b) lv[b] = 0;
    for (int cap = 0; cap < above; ++cap) {
      const T bound = caps[cap];
      int32_t n = 0;
#pragma omp simd reduction(+ : n)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t passed = !(r[b] <= bound);
        lv[b] += passed;
        n += passed;
      }
      count[cap + 1] = n;
    }
#pragma omp simd
    for (int64_t b = 0; b < nb; ++b) sample_top[b] = std::max(sample_top[b], lv[b]);
  }
  const double keys = static_cast<double>(u.num_keys), samples = static_cast<double>(nb);
  const double exact_row = samples * keys * Limits::kScoreCost;
  // Row c's cost by the expansion at `cap`, its samples above the cap summed alone.
  auto expanded_row = [&](int cap, int64_t c) {
    return samples * ((polys[cap].degree + 2) * Limits::kTermCost + Limits::kQueryCost) +
           plan.counts[c * width + cap + 1] * keys * Limits::kSampleCost;
  };
  double best_cost = static_cast<double>(nq) * exact_row;
  for (int cap = 0; cap < kNumCaps && polys[cap].degree >= 0; ++cap) {
    double cost = samples * keys * (polys[cap].degree + 2) * Limits::kTermCost, copied = 0;
    for (int64_t c = 0; c < nq; ++c) cost += std::min(exact_row, expanded_row(cap, c));
    for (int64_t b = 0; b < nb; ++b) copied += sample_top[b] > cap;
    cost += copied * keys * Limits::kCopyCost;
    if (cost < best_cost) best_cost = cost, plan.cap = cap;
  }
  if (plan.cap < 0) return;
  plan.degree = polys[plan.cap].degree;
  plan.coefficient = polys[plan.cap].coefficient.data();
  bool alone[kChunk] = {};  // whether some expanded row sums the sample alone
  for (int64_t c = 0; c < nq; ++c) {
    if (exact_row <= expanded_row(plan.cap, c)) continue;
    plan.expanded[static_cast<size_t>(c)] = 1;
    if (plan.exact_samples(c) == 0) continue;
    for (int64_t b = 0; b < nb; ++b) alone[b] |= plan.exact_sample(c, b, nb);
  }
  plan.slot.assign(static_cast<size_t>(nb), -1);
  for (int64_t b = 0; b < nb; ++b)
    if (alone[b]) {
      plan.slot[static_cast<size_t>(b)] = static_cast<int64_t>(plan.samples.size());
      plan.samples.push_back(b);
    }
}

// The copies of the keys and values of the plan's samples, and zeroed
// gradients for them when `gradients`.
template <typename T>
__attribute__((always_inline)) inline void copy_samples(const Pass<T>& a, const Unit& u, UnitPlan<T>& plan,
                                                        bool gradients) {
  const auto n = static_cast<int64_t>(plan.samples.size());
  if (n == 0) return;
  const int64_t keys = u.num_keys;
  plan.kt.resize(static_cast<size_t>(n * keys));
  plan.vt.resize(static_cast<size_t>(n * keys));
  for (int64_t j = 0; j < keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0;
    for (int64_t s = 0; s < n; ++s) {
      plan.kt[static_cast<size_t>(s * keys + j)] = a.k[r + plan.samples[static_cast<size_t>(s)]];
      plan.vt[static_cast<size_t>(s * keys + j)] = a.v[r + plan.samples[static_cast<size_t>(s)]];
    }
  }
  if (gradients) {
    plan.gkt.assign(static_cast<size_t>(n * keys), T(0));
    plan.gvt.assign(static_cast<size_t>(n * keys), T(0));
  }
}

// Adds the plan's samples' key and value gradients into gk and gv.
template <typename T>
__attribute__((always_inline)) inline void add_sample_gradients(const Pass<T>& a, const Unit& u,
                                                                const UnitPlan<T>& plan) {
  const auto n = static_cast<int64_t>(plan.samples.size());
  const int64_t keys = u.num_keys;
  for (int64_t j = 0; j < keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0;
    for (int64_t s = 0; s < n; ++s) {
      a.gk[r + plan.samples[static_cast<size_t>(s)]] += plan.gkt[static_cast<size_t>(s * keys + j)];
      a.gv[r + plan.samples[static_cast<size_t>(s)]] += plan.gvt[static_cast<size_t>(s * keys + j)];
    }
  }
}

// to[p] = f[p]·from[p] for p ≤ degree, per sample, in order of p (so
// from = to + 1 shifts in place): the rows Horner's scheme reads.
__attribute__((always_inline)) inline void scale_terms(const double (*from)[kChunk], const double* f, int degree,
                                                       int64_t nb, double (*to)[kChunk]) {
  for (int p = 0; p <= degree; ++p) {
    const double fp = f[p];
#pragma omp simd
    for (int64_t b = 0; b < nb; ++b) to[p][b] = from[p][b] * fp;
  }
}

// Σ_p c[p]·x^p for p ≤ degree, per sample.
__attribute__((always_inline)) inline void horner(const double (*c)[kChunk], int degree, const double* x, int64_t nb,
                                                  double* out) {
#pragma omp simd
  for (int64_t b = 0; b < nb; ++b) out[b] = c[degree][b];
  for (int p = degree - 1; p >= 0; --p) {
#pragma omp simd
    for (int64_t b = 0; b < nb; ++b) out[b] = out[b] * x[b] + c[p][b];
  }
}

// The register loops below (key_moments_lanes, query_sums_lanes) keep
// their sums for kLanes samples in registers while keys or query rows
// stream by, which needs the number of terms at compile time: the whole
// kLanes-sample blocks of [0, nb) go to f(n, b0), n a
// std::integral_constant<int, terms>, where terms ≤ kMax. Returns the
// first sample left to the caller's own loop (every one where terms > kMax).
constexpr int64_t kLanes = 8;  // doubles in an AVX-512 register

template <typename F, int... k>
__attribute__((always_inline)) inline void with_terms(int terms, int64_t b0, F& f, std::integer_sequence<int, k...>) {
  ((terms == k + 1 ? f(std::integral_constant<int, k + 1>(), b0) : void()), ...);
}

template <int kMax, typename F>
__attribute__((always_inline)) inline int64_t lane_blocks(int terms, int64_t nb, F&& f) {
  int64_t b0 = 0;
  if (terms <= kMax)
    for (; b0 + kLanes <= nb; b0 += kLanes) with_terms(terms, b0, f, std::make_integer_sequence<int, kMax>());
  return b0;
}

// Samples [b0, b0 + kLanes) of key_moments with its sums in registers: the
// loop over the keys holds 2·kTerms vectors and stores nothing (storing the
// rows for every key bound the loop on stores).
constexpr int kRegisterTerms = 14;  // most terms kept in registers (two rows each)

template <int kTerms, typename T>
__attribute__((always_inline)) inline void key_moments_lanes(const Pass<T>& a, const Unit& u, int64_t b0,
                                                             const double* mid, const double* inv_half,
                                                             double (*z)[kChunk], double (*y)[kChunk]) {
  double zs[kTerms][kLanes] = {}, ys[kTerms][kLanes] = {};
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0 + b0;
    const T* kr = a.k + r;
    const T* vr = a.v + r;
#pragma omp simd
    for (int64_t b = 0; b < kLanes; ++b) {
      const double lambda = (kr[b] - mid[b0 + b]) * inv_half[b0 + b];
      double power = 1, vp = vr[b];
      for (int p = 0; p < kTerms; ++p) {
        zs[p][b] += power;
        ys[p][b] += vp;
        power *= lambda;
        vp *= lambda;
      }
    }
  }
  for (int p = 0; p < kTerms; ++p)
    for (int64_t b = 0; b < kLanes; ++b) {
      z[p][b0 + b] = zs[p][b];
      y[p][b0 + b] = ys[p][b];
    }
}

// z[p] = Σ_j λ_j^p and y[p] = Σ_j λ_j^p v_j over the unit's keys, p < terms.
template <typename T>
__attribute__((always_inline)) inline void key_moments(const Pass<T>& a, const Unit& u, const double* mid,
                                                       const double* inv_half, int terms, double (*z)[kChunk],
                                                       double (*y)[kChunk]) {
  const int64_t b0 = lane_blocks<kRegisterTerms>(
      terms, u.nb, [&](auto n, int64_t at) __attribute__((always_inline)) {
        key_moments_lanes<decltype(n)::value>(a, u, at, mid, inv_half, z, y);
      });
  if (b0 == u.nb) return;
  for (int p = 0; p < terms; ++p)
    for (int64_t b = b0; b < u.nb; ++b) z[p][b] = y[p][b] = 0;
  double lambda[kChunk], power[kChunk], vp[kChunk];
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0;
    const T* kr = a.k + r;
    const T* vr = a.v + r;
#pragma omp simd
    for (int64_t b = b0; b < u.nb; ++b) {
      lambda[b] = (kr[b] - mid[b]) * inv_half[b];
      power[b] = 1;
      vp[b] = vr[b];
    }
    for (int p = 0; p < terms; ++p) {
#pragma omp simd
      for (int64_t b = b0; b < u.nb; ++b) {
        z[p][b] += power[b];
        y[p][b] += vp[b];
        power[b] *= lambda[b];
        vp[b] *= lambda[b];
      }
    }
  }
}

// Query i by the exact sums: o_i and 1/Σ_j exp(t·k_j - m), m the largest score.
template <typename T>
__attribute__((always_inline)) inline void forward_exact(const Pass<T>& a, const Unit& u, int64_t i, const T* k_max,
                                                         const T* k_min) {
  T t[kChunk], k_top[kChunk], sum[kChunk], acc[kChunk];
  query_scores(a, u, i, k_max, k_min, t, k_top);
  for (int64_t b = 0; b < u.nb; ++b) sum[b] = acc[b] = 0;
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const T* kr = a.k + a.row(u.g, u.keys[j]) + u.b0;
    const T* vr = a.v + a.row(u.g, u.keys[j]) + u.b0;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      const T e = exp_of(t[b] * (kr[b] - k_top[b]));
      sum[b] += e;
      acc[b] += e * vr[b];
    }
  }
  T* orow = a.o + a.row(u.g, i) + u.b0;
  T* srow = a.inv_sum + a.row(u.g, i) + u.b0;
#pragma omp simd
  for (int64_t b = 0; b < u.nb; ++b) {
    srow[b] = T(1) / sum[b];
    orow[b] = acc[b] * srow[b];
  }
}

// Sample b of query i by the exact sums, from the plan's copies of its keys
// and values (kt, vt: keys long) and its largest and smallest key: what
// forward_exact computes in lane b.
template <typename T>
__attribute__((always_inline)) inline void forward_sample(const Pass<T>& a, const Unit& u, int64_t i, int64_t b,
                                                          const T* kt, const T* vt, T k_max_b, T k_min_b) {
  const int64_t r = a.row(u.g, i) + u.b0 + b;
  const T t = static_cast<T>(a.scale[u.g]) * a.q[r];
  const T k_top_b = t >= 0 ? k_max_b : k_min_b;  // as query_scores
  T sum = 0, acc = 0;
#pragma omp simd reduction(+ : sum, acc)
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const T e = exp_of(t * (kt[j] - k_top_b));
    sum += e;
    acc += e * vt[j];
  }
  a.inv_sum[r] = T(1) / sum;
  a.o[r] = acc * a.inv_sum[r];
}

// Forward: o_i = Σ_p c_p s^p y_p / Σ_p c_p s^p z_p for an expanded query,
// and the normaliser as the exact sums keep it (relative to the largest
// score, which lies |s| above t·c): e^|s| / Σ_j exp(s·λ_j).
template <typename T>
__attribute__((always_inline)) inline void forward_unit(const Pass<T>& a, const Unit& u, UnitPlan<T>& plan) {
  if (u.num_keys == 0) return;  // o stays 0
  T k_max[kChunk], k_min[kChunk];
  double mid[kChunk], half[kChunk], inv_half[kChunk], s[kChunk], den[kChunk], num[kChunk];
  TermRows moments[2];
  auto &z = moments[0].row, &y = moments[1].row;
  const bool finite = key_range(a, u, k_max, k_min);
  centre(u, k_max, k_min, mid, half, inv_half);
  plan_unit(a, u, finite, half, plan);
  const int degree = plan.degree;
  const double* f = plan.coefficient;
  if (degree >= 0) {
    key_moments(a, u, mid, inv_half, degree + 1, z, y);
    scale_terms(z, f, degree, u.nb, z);
    scale_terms(y, f, degree, u.nb, y);
  }
  copy_samples(a, u, plan, false);
  int64_t summed_exactly = 0;
  const double scale = a.scale[u.g];
  for (int64_t c = 0; c < u.num_queries; ++c) {
    const int64_t i = u.query(c, a.queries_are_keys);
    if (!plan.expanded[static_cast<size_t>(c)]) {
      forward_exact(a, u, i, k_max, k_min);
      summed_exactly += u.nb;
      continue;
    }
    const int64_t r = a.row(u.g, i) + u.b0;
    const T* qr = a.q + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) s[b] = scale * qr[b] * half[b];
    horner(z, degree, s, u.nb, den);
    horner(y, degree, s, u.nb, num);
    T* orow = a.o + r;
    T* srow = a.inv_sum + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      const double inv = 1 / den[b];  // one division of doubles, not two
      orow[b] = static_cast<T>(num[b] * inv);
      srow[b] = static_cast<T>(exp_of(static_cast<T>(std::abs(s[b]))) * inv);
    }
    if (plan.exact_samples(c) == 0) continue;
    summed_exactly += plan.exact_samples(c);
    for (int64_t b = 0; b < u.nb; ++b) {
      if (!plan.exact_sample(c, b, u.nb)) continue;
      const int64_t at = plan.slot[static_cast<size_t>(b)] * u.num_keys;
      forward_sample(a, u, i, b, plan.kt.data() + at, plan.vt.data() + at, k_max[b], k_min[b]);
    }
  }
  path_counts[0].fetch_add(u.num_queries * u.nb - summed_exactly, std::memory_order_relaxed);
  path_counts[1].fetch_add(summed_exactly, std::memory_order_relaxed);
}

// Backward's sums over the expanded query rows: A[p] = Σ_i w_i s_i^p,
// B[p] = Σ_i wt_i s_i^p, C[p] = Σ_i wto_i s_i^p for p ≤ degree, from
// `count` rows of (w, wt, wto, s) at `rows`, added to A, B and C. Lane
// blocks of up to kRegisterQueryTerms terms keep the 3·terms sums in
// registers while the rows stream by (as key_moments_lanes).
constexpr int kRowTerms = 4;        // w, wt, wto, s
constexpr int64_t kRowBlock = 128;  // rows summed at a time: 256 KiB

template <int kTerms>
__attribute__((always_inline)) inline void query_sums_lanes(const double* rows, int64_t count, int64_t b0,
                                                            double (*A)[kChunk], double (*B)[kChunk],
                                                            double (*C)[kChunk]) {
  double as[kTerms][kLanes] = {}, bs[kTerms][kLanes] = {}, cs[kTerms][kLanes] = {};
  for (int64_t e = 0; e < count; ++e) {
    const double* row = rows + e * kRowTerms * kChunk + b0;
#pragma omp simd
    for (int64_t b = 0; b < kLanes; ++b) {
      double w = row[b], wt = row[kChunk + b], wto = row[2 * kChunk + b];
      const double s = row[3 * kChunk + b];
      for (int p = 0; p < kTerms; ++p) {
        as[p][b] += w;
        bs[p][b] += wt;
        cs[p][b] += wto;
        w *= s;
        wt *= s;
        wto *= s;
      }
    }
  }
  for (int p = 0; p < kTerms; ++p)
    for (int64_t b = 0; b < kLanes; ++b) {
      A[p][b0 + b] += as[p][b];
      B[p][b0 + b] += bs[p][b];
      C[p][b0 + b] += cs[p][b];
    }
}

constexpr int kRegisterQueryTerms = 10;  // 30 sums; more spill

__attribute__((always_inline)) inline void query_sums(double* rows, int64_t count, int degree, int64_t nb,
                                                      double (*A)[kChunk], double (*B)[kChunk], double (*C)[kChunk]) {
  const int terms = degree + 1;
  const int64_t b0 = lane_blocks<kRegisterQueryTerms>(
      terms, nb, [&](auto n, int64_t at) __attribute__((always_inline)) {
        query_sums_lanes<decltype(n)::value>(rows, count, at, A, B, C);
      });
  if (b0 == nb) return;
  for (int64_t e = 0; e < count; ++e) {
    double* w = rows + e * kRowTerms * kChunk;
    double *wt = w + kChunk, *wto = w + 2 * kChunk;
    const double* s = w + 3 * kChunk;
    for (int p = 0; p < terms; ++p) {
#pragma omp simd
      for (int64_t b = b0; b < nb; ++b) {
        A[p][b] += w[b];
        B[p][b] += wt[b];
        C[p][b] += wto[b];
        w[b] *= s[b];
        wt[b] *= s[b];
        wto[b] *= s[b];
      }
    }
  }
}

// With a_ij the weights and o_i = Σ_j a_ij v_j: ∂o_i/∂score_ij =
// a_ij (v_j - o_i), so for an upstream gradient g_i and t_i = scale·q_i
//   dq_i = scale·g_i (Σ_j a_ij k_j v_j - o_i Σ_j a_ij k_j),
//   dk_j = Σ_i a_ij g_i t_i (v_j - o_i),   dv_j = Σ_i a_ij g_i.
// The exact sums recompute the weights from the scores, the largest score
// and 1/Σ, and take dq with the keys less their midpoint c (Σ_j a_ij = 1,
// so c drops out): keys far from 0 would otherwise cancel in float.
template <typename T>
__attribute__((always_inline)) inline void backward_exact(const Pass<T>& a, const Unit& u, int64_t i, const T* k_max,
                                                          const T* k_min, const T* k_mid) {
  T t[kChunk], k_top[kChunk], gt[kChunk], ak[kChunk], akv[kChunk];
  const T* gi = a.go + a.row(u.g, i) + u.b0;
  bool flows = false;  // a position whose output nothing reads (a zero weight) sends nothing back
  for (int64_t b = 0; b < u.nb; ++b) flows |= gi[b] != 0;
  if (!flows) return;
  query_scores(a, u, i, k_max, k_min, t, k_top);
  const T* oi = a.o + a.row(u.g, i) + u.b0;
  const T* inv = a.inv_sum + a.row(u.g, i) + u.b0;
  for (int64_t b = 0; b < u.nb; ++b) {
    gt[b] = gi[b] * t[b];
    ak[b] = akv[b] = 0;
  }
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0;
    const T* kr = a.k + r;
    const T* vr = a.v + r;
    T* gkr = a.gk + r;
    T* gvr = a.gv + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      const T w = exp_of(t[b] * (kr[b] - k_top[b])) * inv[b];
      const T wk = w * (kr[b] - k_mid[b]);
      ak[b] += wk;
      akv[b] += wk * vr[b];
      gvr[b] += w * gi[b];
      gkr[b] += w * (vr[b] - oi[b]) * gt[b];
    }
  }
  const T scale = static_cast<T>(a.scale[u.g]);
  T* gq = a.gq + a.row(u.g, i) + u.b0;
#pragma omp simd
  for (int64_t b = 0; b < u.nb; ++b) gq[b] = scale * gi[b] * (akv[b] - oi[b] * ak[b]);
}

// Sample b of query i by the exact sums, from the plan's copies (kt, vt)
// into its gradient copies (gkt, gvt) and dq: what backward_exact computes in lane b.
template <typename T>
__attribute__((always_inline)) inline void backward_sample(const Pass<T>& a, const Unit& u, int64_t i, int64_t b,
                                                           const T* kt, const T* vt, T* gkt, T* gvt, T k_max_b,
                                                           T k_min_b, T k_mid_b) {
  const int64_t r = a.row(u.g, i) + u.b0 + b;
  const T g = a.go[r];
  a.gq[r] = 0;
  if (g == 0) return;
  const T scale = static_cast<T>(a.scale[u.g]);
  const T t = scale * a.q[r], inv = a.inv_sum[r], o = a.o[r], gt = g * t;
  const T k_top_b = t >= 0 ? k_max_b : k_min_b;  // as query_scores
  T ak = 0, akv = 0;
#pragma omp simd reduction(+ : ak, akv)
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const T w = exp_of(t * (kt[j] - k_top_b)) * inv;
    const T wk = w * (kt[j] - k_mid_b);
    ak += wk;
    akv += wk * vt[j];
    gvt[j] += w * g;
    gkt[j] += w * (vt[j] - o) * gt;
  }
  a.gq[r] = scale * g * (akv - o * ak);
}

// Backward by the expansion, with ρ_i = 1/Σ_j exp(s_i·λ_j) recomputed from
// the moments and a_ij = ρ_i exp(s_i·λ_j). In λ (k = c + h·λ; the c terms
// cancel in dq):
//   dq_i = scale·h·g_i ρ_i Σ_p c_p s_i^p (y_{p+1} - o_i z_{p+1}),
//   dv_j = Σ_p c_p λ_j^p A_p,   dk_j = Σ_p c_p λ_j^p (v_j B_p - C_p),
// with A_p = Σ_i s_i^p ρ_i g_i, B_p = Σ_i s_i^p ρ_i g_i t_i and
// C_p = Σ_i s_i^p ρ_i g_i t_i o_i over the expanded queries (t_i itself,
// not s_i/h: h may be 0); the other queries add their exact terms.
template <typename T>
__attribute__((always_inline)) inline void backward_unit(const Pass<T>& a, const Unit& u, UnitPlan<T>& plan) {
  if (u.num_keys == 0) return;  // the gradients stay 0
  T k_max[kChunk], k_min[kChunk], k_mid[kChunk];
  double mid[kChunk], half[kChunk], inv_half[kChunk], den[kChunk], sk[kChunk], skv[kChunk];
  double lambda[kChunk], sa[kChunk], sb[kChunk], sc[kChunk], keep[kChunk];
  TermRows moments[3], sums[3];
  auto &z = moments[0].row, &y = moments[1].row, &z1 = moments[2].row;
  auto &A = sums[0].row, &B = sums[1].row, &C = sums[2].row;
  const bool finite = key_range(a, u, k_max, k_min);
  centre(u, k_max, k_min, mid, half, inv_half);
  for (int64_t b = 0; b < u.nb; ++b) k_mid[b] = static_cast<T>(mid[b]);
  plan_unit(a, u, finite, half, plan);
  const int degree = plan.degree;
  const double* f = plan.coefficient;
  if (degree >= 0) {
    key_moments(a, u, mid, inv_half, degree + 2, z, y);
    // The rows of den, sk and skv below: f[p]·z[p], f[p]·z[p+1], f[p]·y[p+1].
    scale_terms(z + 1, f, degree, u.nb, z1);
    scale_terms(z, f, degree, u.nb, z);
    scale_terms(y + 1, f, degree, u.nb, y);
    for (int p = 0; p <= degree; ++p)
      for (int64_t b = 0; b < u.nb; ++b) A[p][b] = B[p][b] = C[p][b] = 0;
    plan.rows.resize(static_cast<size_t>(std::min(u.num_queries, kRowBlock) * kRowTerms * kChunk));
  }
  int64_t expanded_rows = 0;
  copy_samples(a, u, plan, true);
  const double scale = a.scale[u.g];
  for (int64_t c = 0; c < u.num_queries; ++c) {
    const int64_t i = u.query(c, a.queries_are_keys);
    if (!plan.expanded[static_cast<size_t>(c)]) {
      backward_exact(a, u, i, k_max, k_min, k_mid);
      continue;
    }
    const int64_t r = a.row(u.g, i) + u.b0;
    const T *qr = a.q + r, *gi = a.go + r, *oi = a.o + r;
    const bool some_exact = plan.exact_samples(c) > 0;
    const uint8_t* lv = plan.levels(c, u.nb);
    const int cap = plan.cap;
    if (expanded_rows == kRowBlock) {  // the rows stay in L2
      query_sums(plan.rows.data(), expanded_rows, degree, u.nb, A, B, C);
      expanded_rows = 0;
    }
    double* w = plan.rows.data() + expanded_rows++ * kRowTerms * kChunk;
    double *wt = w + kChunk, *wto = w + 2 * kChunk, *s = w + 3 * kChunk;
    // A sample summed exactly adds nothing to the moments: s = 0 keeps its
    // terms finite (its own s may overflow them), and its weight is 0.
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      keep[b] = some_exact && lv[b] > cap ? 0.0 : 1.0;
      s[b] = keep[b] > 0 ? scale * qr[b] * half[b] : 0.0;
    }
    horner(z, degree, s, u.nb, den);
    horner(z1, degree, s, u.nb, sk);
    horner(y, degree, s, u.nb, skv);
    T* gq = a.gq + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      w[b] = keep[b] > 0 ? gi[b] / den[b] : 0.0;  // g_i ρ_i
      gq[b] = static_cast<T>(scale * half[b] * w[b] * (skv[b] - oi[b] * sk[b]));
      wt[b] = keep[b] > 0 ? w[b] * (scale * qr[b]) : 0.0;  // 0, not 0 · a non-finite query
      wto[b] = wt[b] * oi[b];
    }
    if (!some_exact) continue;
    for (int64_t b = 0; b < u.nb; ++b) {
      if (!plan.exact_sample(c, b, u.nb)) continue;
      const int64_t at = plan.slot[static_cast<size_t>(b)] * u.num_keys;
      backward_sample(a, u, i, b, plan.kt.data() + at, plan.vt.data() + at, plan.gkt.data() + at, plan.gvt.data() + at,
                      k_max[b], k_min[b], k_mid[b]);
    }
  }
  if (!plan.samples.empty()) add_sample_gradients(a, u, plan);
  if (degree < 0) return;
  query_sums(plan.rows.data(), expanded_rows, degree, u.nb, A, B, C);
  scale_terms(A, f, degree, u.nb, A);
  scale_terms(B, f, degree, u.nb, B);
  scale_terms(C, f, degree, u.nb, C);
  for (int64_t j = 0; j < u.num_keys; ++j) {
    const int64_t r = a.row(u.g, u.keys[j]) + u.b0;
    const T* kr = a.k + r;
    const T* vr = a.v + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) lambda[b] = (kr[b] - mid[b]) * inv_half[b];
    horner(A, degree, lambda, u.nb, sa);
    horner(B, degree, lambda, u.nb, sb);
    horner(C, degree, lambda, u.nb, sc);
    T* gkr = a.gk + r;
    T* gvr = a.gv + r;
#pragma omp simd
    for (int64_t b = 0; b < u.nb; ++b) {
      gvr[b] += static_cast<T>(sa[b]);
      gkr[b] += static_cast<T>(vr[b] * sb[b] - sc[b]);
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void forward_units(const Pass<T>& a, int64_t first, int64_t last) {
  UnitPlan<T> plan;
  for (int64_t index = first; index < last; ++index) forward_unit(a, unit_of(a, index), plan);
}

template <typename T>
__attribute__((always_inline)) inline void backward_units(const Pass<T>& a, int64_t first, int64_t last) {
  UnitPlan<T> plan;
  for (int64_t index = first; index < last; ++index) backward_unit(a, unit_of(a, index), plan);
}

// The float passes again for AVX2 with FMA and for AVX-512 (vector_clones.h).

CONNEX_VECTOR_CLONES void forward_float(const Pass<float>& a, int64_t first, int64_t last) {
  forward_units(a, first, last);
}
CONNEX_VECTOR_CLONES void backward_float(const Pass<float>& a, int64_t first, int64_t last) {
  backward_units(a, first, last);
}
void forward_pass(const Pass<float>& a, int64_t first, int64_t last) { forward_float(a, first, last); }
void backward_pass(const Pass<float>& a, int64_t first, int64_t last) { backward_float(a, first, last); }
void forward_pass(const Pass<double>& a, int64_t first, int64_t last) { forward_units(a, first, last); }
void backward_pass(const Pass<double>& a, int64_t first, int64_t last) { backward_units(a, first, last); }

// The keys as the passes read them: pointers into an AttentionKeys or into
// the tensors the autograd node keeps.
struct KeysView {
  const int64_t *offsets, *positions;
  const double* scale;
  int64_t groups, num_keys;
  bool queries_are_keys;
};

KeysView view_of(const AttentionKeys& keys) {
  return {keys.offsets.data(),
          keys.positions.data(),
          keys.scale.data(),
          static_cast<int64_t>(keys.scale.size()),
          static_cast<int64_t>(keys.positions.size()),
          keys.queries_are_keys};
}

template <typename T>
Pass<T> pass_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const KeysView& keys) {
  Pass<T> a;
  a.L = q.size(1);
  a.B = q.size(2);
  a.offsets = keys.offsets;
  a.positions = keys.positions;
  a.scale = keys.scale;
  a.queries_are_keys = keys.queries_are_keys;
  a.q = q.data_ptr<T>();
  a.k = k.data_ptr<T>();
  a.v = v.data_ptr<T>();
  return a;
}

template <typename T>
void run_units(const Pass<T>& a, int64_t groups, int64_t num_keys, void (*pass)(const Pass<T>&, int64_t, int64_t)) {
  // Chunks of about 64k scores: a unit has (keys) × (queries) × kChunk of them.
  const double keys = static_cast<double>(num_keys) / static_cast<double>(std::max<int64_t>(groups, 1));
  const double per_unit = std::max(1.0, keys * (a.queries_are_keys ? keys : static_cast<double>(a.L)) * kChunk);
  share_work(0, groups * a.chunks(), std::max<int64_t>(1, static_cast<int64_t>(65536.0 / per_unit)),
             [&](int64_t first, int64_t last) { pass(a, first, last); });
}

// The two passes on contiguous tensors: forward writes o and inv_sum
// wherever a group has keys; backward writes gq where a query row has a
// gradient (callers zero it) and adds into gk and gv.
void forward_into(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const KeysView& keys,
                  torch::Tensor& o, torch::Tensor& inv_sum) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "connex_scalar_attention_forward", [&] {
    Pass<scalar_t> a = pass_of<scalar_t>(q, k, v, keys);
    a.o = o.data_ptr<scalar_t>();
    a.inv_sum = inv_sum.data_ptr<scalar_t>();
    run_units<scalar_t>(a, keys.groups, keys.num_keys, forward_pass);
  });
}

void backward_into(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& o,
                   const torch::Tensor& inv_sum, const torch::Tensor& go, const KeysView& keys, torch::Tensor& gq,
                   torch::Tensor& gk, torch::Tensor& gv) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "connex_scalar_attention_backward", [&] {
    Pass<scalar_t> a = pass_of<scalar_t>(q, k, v, keys);
    a.o = const_cast<scalar_t*>(o.data_ptr<scalar_t>());
    a.inv_sum = const_cast<scalar_t*>(inv_sum.data_ptr<scalar_t>());
    a.go = go.data_ptr<scalar_t>();
    a.gq = gq.data_ptr<scalar_t>();
    a.gk = gk.data_ptr<scalar_t>();
    a.gv = gv.data_ptr<scalar_t>();
    run_units<scalar_t>(a, keys.groups, keys.num_keys, backward_pass);
  });
}

// Backward with create_graph: the torch formula's gradients (formula_gradients.h).
variable_list differentiable_backward(const variable_list& saved, bool queries_are_keys, const torch::Tensor& go) {
  AttentionKeys keys;
  const auto& offsets = saved[5];
  const auto& positions = saved[6];
  const auto& scale = saved[7];
  keys.offsets.assign(offsets.data_ptr<int64_t>(), offsets.data_ptr<int64_t>() + offsets.numel());
  keys.positions.assign(positions.data_ptr<int64_t>(), positions.data_ptr<int64_t>() + positions.numel());
  keys.scale.assign(scale.data_ptr<double>(), scale.data_ptr<double>() + scale.numel());
  keys.queries_are_keys = queries_are_keys;
  auto result = formula_gradients(
      {saved[0], saved[1], saved[2]},
      [&](const variable_list& qkv) { return scalar_attention_reference(qkv[0], qkv[1], qkv[2], keys); }, go);
  result.resize(7);  // nothing for the keys' tensors
  return result;
}

KeysView tensor_keys(const torch::Tensor& offsets, const torch::Tensor& positions, const torch::Tensor& scale,
                     bool queries_are_keys) {
  return {offsets.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
          scale.data_ptr<double>(),    scale.numel(),
          positions.numel(),           queries_are_keys};
}

class ScalarAttention : public torch::autograd::Function<ScalarAttention> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, const torch::Tensor& offsets, const torch::Tensor& positions,
                               const torch::Tensor& scale, bool queries_are_keys) {
    const int64_t groups = q_in.size(0), L = q_in.size(1);
    TORCH_INTERNAL_ASSERT(offsets.numel() == groups + 1 && scale.numel() == groups &&
                          offsets.data_ptr<int64_t>()[groups] == positions.numel());
    auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    for (int64_t c = 0; c < positions.numel(); ++c)
      TORCH_INTERNAL_ASSERT(positions.data_ptr<int64_t>()[c] >= 0 && positions.data_ptr<int64_t>()[c] < L);
    auto o = torch::zeros_like(q), inv_sum = torch::zeros_like(q);
    forward_into(q, k, v, tensor_keys(offsets, positions, scale, queries_are_keys), o, inv_sum);
    // The inputs as given: a contiguous copy made here (grad mode is off)
    // would not lead back to them when backward must be differentiable.
    ctx->save_for_backward({q_in, k_in, v_in, o, inv_sum, offsets, positions, scale});
    ctx->saved_data["queries_are_keys"] = queries_are_keys;
    return o;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto q = saved[0].contiguous(), k = saved[1].contiguous(), v = saved[2].contiguous();
    const auto &o = saved[3], &inv_sum = saved[4], &offsets = saved[5], &positions = saved[6], &scale = saved[7];
    const bool queries_are_keys = ctx->saved_data["queries_are_keys"].toBool();
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), {}, {}, {}, {}};
    if (torch::GradMode::is_enabled()) return differentiable_backward(saved, queries_are_keys, grads[0]);
    const auto go = grads[0].contiguous();
    auto gq = torch::zeros_like(q), gk = torch::zeros_like(k), gv = torch::zeros_like(v);
    backward_into(q, k, v, o, inv_sum, go, tensor_keys(offsets, positions, scale, queries_are_keys), gq, gk, gv);
    return {gq, gk, gv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The keys as a [groups, L] mask.
torch::Tensor key_mask(const AttentionKeys& keys, int64_t L, const torch::TensorOptions& options) {
  const int64_t groups = static_cast<int64_t>(keys.scale.size());
  std::vector<int64_t> flat;
  flat.reserve(keys.positions.size());
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t c = keys.offsets[g]; c < keys.offsets[g + 1]; ++c) flat.push_back(g * L + keys.positions[c]);
  return torch::zeros({groups * L}, options.dtype(torch::kBool))
      .index_fill_(0, torch::tensor(flat, torch::kLong).to(options.device()), true)
      .view({groups, L});
}

}  // namespace

torch::Tensor scalar_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const AttentionKeys& keys) {
  if (!q.device().is_cpu() || !kernel_dtype(q.scalar_type())) return scalar_attention_reference(q, k, v, keys);
  auto scale = torch::tensor(keys.scale, torch::kFloat64);
  return ScalarAttention::apply(q, k, v, torch::tensor(keys.offsets, torch::kLong),
                                torch::tensor(keys.positions, torch::kLong), scale, keys.queries_are_keys);
}

void scalar_attention_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const AttentionKeys& keys, torch::Tensor& o, torch::Tensor& inv_sum) {
  forward_into(q, k, v, view_of(keys), o, inv_sum);
}

void scalar_attention_backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& o, const torch::Tensor& inv_sum, const torch::Tensor& go,
                               const AttentionKeys& keys, torch::Tensor& gq, torch::Tensor& gk, torch::Tensor& gv) {
  backward_into(q, k, v, o, inv_sum, go, view_of(keys), gq, gk, gv);
}

AttentionKeys topo_attention_keys(int64_t L) {
  AttentionKeys keys;
  keys.offsets = {0, L};
  keys.positions.resize(static_cast<size_t>(L));
  std::iota(keys.positions.begin(), keys.positions.end(), 0);
  keys.scale = {1.0 / std::sqrt(static_cast<double>(L))};
  return keys;
}

torch::Tensor topo_attention_formula(const torch::Tensor& s, const torch::Tensor& query_weight,
                                     const torch::Tensor& query_bias, const torch::Tensor& key_weight,
                                     const torch::Tensor& key_bias, const torch::Tensor& value_weight,
                                     const torch::Tensor& value_bias) {
  // Per sample q[:, b] = Wq s[:, b] + bq: one matrix product for the batch.
  auto project = [&s](const torch::Tensor& weight, const torch::Tensor& bias) {
    return torch::addmm(bias.unsqueeze(1), weight, s).unsqueeze(0);
  };
  return s + scalar_attention(project(query_weight, query_bias), project(key_weight, key_bias),
                              project(value_weight, value_bias), topo_attention_keys(s.size(0)))
                 .squeeze(0);
}

AttentionPathCounts attention_path_counts() { return {path_counts[0].load(), path_counts[1].load()}; }

std::vector<double> exp_polynomial(double range, double tolerance) {
  const CapPolynomial poly = economised_exp(range, tolerance);
  return {poly.coefficient.begin(), poly.coefficient.begin() + (poly.degree + 1)};
}

torch::Tensor scalar_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const AttentionKeys& keys) {
  const int64_t groups = q.size(0), L = q.size(1);
  const auto mask = key_mask(keys, L, q.options());  // [groups, L]
  const auto scale = torch::tensor(keys.scale, q.options().dtype(torch::kFloat64)).to(q.scalar_type());
  // scores[g, b, i, j] = scale_g q[g, i, b] k[g, j, b]
  auto qt = q.permute({0, 2, 1}).unsqueeze(3), kt = k.permute({0, 2, 1}).unsqueeze(2);
  auto scores = qt * kt * scale.view({groups, 1, 1, 1});
  // The dtype's lowest finite value, not -inf: a group without keys then
  // gets a finite (uniform) row, zeroed below, and no NaN reaches backward.
  const auto outside = ~mask.view({groups, 1, 1, L});
  scores = scores.masked_fill(outside, -find_dtype(q.scalar_type())->max);
  auto attention = torch::softmax(scores, 3).masked_fill(outside, 0.0);
  auto o = torch::matmul(attention, v.permute({0, 2, 1}).unsqueeze(3)).squeeze(3).permute({0, 2, 1});  // [g, L, b]
  if (keys.queries_are_keys) o = o.masked_fill(~mask.unsqueeze(2), 0.0);
  return o;
}

}  // namespace connex
