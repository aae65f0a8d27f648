#include "connex/ham/synapse.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <torch/torch.h>
#include <torch/version.h>
#include <fmt/ranges.h>

#include "config_codec.h"
#include "connex/error.h"
#include "ham/attach.h"
#include "ham/describe.h"
#include "json_input.h"
#include "file_io.h"

namespace connex::ham {

namespace {

using nlohmann::json;

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

torch::Tensor flat(const torch::Tensor& g) { return g.reshape({g.size(0), -1}); }

// "a graph", "an attention": the kind with its article, for messages.
std::string a_kind(const char* kind) { return fmt::format("{} {}", std::strchr("aeiou", kind[0]) ? "an" : "a", kind); }

void expect_layers(const std::vector<LayerView>& layers, size_t low, size_t high, const std::string& synapse,
                   const char* kind) {
  if (layers.size() < low || layers.size() > high)
    fail("add_synapse(): synapse \"{}\": {} synapse joins {} layer{}, got {}", synapse, a_kind(kind),
         low == high ? fmt::format("{}", low) : fmt::format("{} or {}", low, high), high == 1 ? "" : "s",
         layers.size());
}

void expect_rank(const LayerView& layer, size_t rank, const std::string& synapse, const char* kind, const char* shape) {
  if (layer.shape.size() != rank)
    fail("add_synapse(): synapse \"{}\": {} synapse needs layers shaped {}, but layer \"{}\" is [{}]", synapse,
         a_kind(kind), shape, layer.name, fmt::join(layer.shape, ", "));
}

// A synapse whose currents (−∂E/∂g) are written in closed form; its gradients are their negation.
class ClosedFormSynapse : public SynapseImpl {
 public:
  std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& g) override {
    auto d = currents(g);
    for (auto& t : d) t = -t;
    return d;
  }
};

// ------------------------------------------------------------------ linear
class LinearSynapse : public ClosedFormSynapse {
 public:
  explicit LinearSynapse(bool bias) : bias_(bias) {}
  void attach(const std::vector<LayerView>& layers, const std::string& synapse) override {
    expect_layers(layers, 1, 2, synapse, "linear");
    pair_ = layers.size() == 2;
    const int64_t n1 = numel(layers[0].shape), n2 = numel(layers.back().shape);
    weight_ = attach_parameter(*this, "weight",
                               torch::randn({n1, n2}) / std::sqrt(static_cast<double>(std::max<int64_t>(n1, 1))));
    if (bias_) b_ = attach_parameter(*this, "bias", torch::zeros({n2}));
  }
  torch::Tensor energy(const std::vector<torch::Tensor>& g) override {
    auto g1 = flat(g[0]), g2 = flat(g.back());
    auto e = (g1.mm(weight_) * g2).sum(1);
    if (!pair_) e = 0.5 * e;
    if (bias_) e = e + g2.mv(b_);
    return -e;
  }
  std::vector<torch::Tensor> currents(const std::vector<torch::Tensor>& g) override {
    auto g1 = flat(g[0]), g2 = flat(g.back());
    if (!pair_) {
      // ½ (W + Wᵀ) g in one product: n² adds against batch·n² multiply-adds.
      auto symmetric = torch::add(weight_, weight_.t()).mul_(0.5);
      auto c = bias_ ? torch::addmm(b_, g1, symmetric) : g1.mm(symmetric);
      return {c.view(g[0].sizes())};
    }
    auto c2 = bias_ ? torch::addmm(b_, g1, weight_) : g1.mm(weight_);
    return {g2.mm(weight_.t()).view(g[0].sizes()), c2.view(g[1].sizes())};
  }
  std::shared_ptr<SynapseImpl> fresh() const override { return std::make_shared<LinearSynapse>(bias_); }
  json to_json() const override { return {{"kind", "linear"}, {"bias", bias_}}; }
  std::vector<std::pair<std::string, std::vector<int64_t>>> neuron_dims() const override {
    std::vector<std::pair<std::string, std::vector<int64_t>>> dims{{"weight", {0, pair_ ? 1 : 0}}};
    if (bias_) dims.push_back({"bias", {pair_ ? 1 : 0}});
    return dims;
  }
  void pretty_print(std::ostream& stream) const override { stream << describe(to_json()); }

 private:
  bool bias_, pair_ = true;
  torch::Tensor weight_, b_;
};

// -------------------------------------------------------------------- bias
class BiasSynapse : public ClosedFormSynapse {
 public:
  void attach(const std::vector<LayerView>& layers, const std::string& synapse) override {
    expect_layers(layers, 1, 1, synapse, "bias");
    b_ = attach_parameter(*this, "bias", torch::zeros(layers[0].shape));
  }
  torch::Tensor energy(const std::vector<torch::Tensor>& g) override { return -flat(g[0] * b_).sum(1); }
  std::vector<torch::Tensor> currents(const std::vector<torch::Tensor>& g) override { return {b_.expand_as(g[0])}; }
  std::shared_ptr<SynapseImpl> fresh() const override { return std::make_shared<BiasSynapse>(); }
  json to_json() const override { return {{"kind", "bias"}}; }
  std::vector<std::pair<std::string, std::vector<int64_t>>> neuron_dims() const override { return {{"bias", {0}}}; }
  void pretty_print(std::ostream& stream) const override { stream << "bias()"; }

 private:
  torch::Tensor b_;
};

// ------------------------------------------------------------------ conv2d
class Conv2dSynapse : public ClosedFormSynapse {
 public:
  Conv2dSynapse(std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding)
      : kernel_(std::move(kernel)), stride_(std::move(stride)), padding_(std::move(padding)) {}
  void attach(const std::vector<LayerView>& layers, const std::string& synapse) override {
    expect_layers(layers, 2, 2, synapse, "conv2d");
    for (const auto& l : layers) expect_rank(l, 3, synapse, "conv2d", "[channels, height, width]");
    const auto &in = layers[0].shape, &out = layers[1].shape;
    std::vector<int64_t> expected{out[0]}, output_padding;
    for (int d = 0; d < 2; ++d) {
      const int64_t span = in[d + 1] + 2 * padding_[d] - kernel_[d];
      if (span < 0)
        fail("add_synapse(): synapse \"{}\": its {}×{} kernel does not fit layer \"{}\" [{}] with padding {}", synapse,
             kernel_[0], kernel_[1], layers[0].name, fmt::join(in, ", "), padding_[d]);
      expected.push_back(span / stride_[d] + 1);
      output_padding.push_back(in[d + 1] - ((expected.back() - 1) * stride_[d] - 2 * padding_[d] + kernel_[d]));
    }
    if (expected != out)
      fail("add_synapse(): synapse \"{}\": the convolution of layer \"{}\" [{}] is [{}], but layer \"{}\" is [{}]",
           synapse, layers[0].name, fmt::join(in, ", "), fmt::join(expected, ", "), layers[1].name,
           fmt::join(out, ", "));
    output_padding_ = output_padding;
    const double fan_in = static_cast<double>(in[0] * kernel_[0] * kernel_[1]);
    weight_ =
        attach_parameter(*this, "weight", torch::randn({out[0], in[0], kernel_[0], kernel_[1]}) / std::sqrt(fan_in));
  }
  torch::Tensor energy(const std::vector<torch::Tensor>& g) override {
    return -flat(g[1] * torch::conv2d(g[0], weight_, {}, stride_, padding_)).sum(1);
  }
  std::vector<torch::Tensor> currents(const std::vector<torch::Tensor>& g) override {
    return {torch::conv_transpose2d(g[1], weight_, {}, stride_, padding_, output_padding_),
            torch::conv2d(g[0], weight_, {}, stride_, padding_)};
  }
  std::shared_ptr<SynapseImpl> fresh() const override {
    return std::make_shared<Conv2dSynapse>(kernel_, stride_, padding_);
  }
  json to_json() const override {
    return {{"kind", "conv2d"}, {"kernel", kernel_}, {"stride", stride_}, {"padding", padding_}};
  }
  void pretty_print(std::ostream& stream) const override { stream << describe(to_json()); }

 private:
  std::vector<int64_t> kernel_, stride_, padding_, output_padding_;
  torch::Tensor weight_;
};

// --------------------------------------------------------------- attention
class AttentionSynapse : public SynapseImpl {
 public:
  AttentionSynapse(int64_t heads, int64_t head_dim, std::optional<double> beta)
      : heads_(heads), head_dim_(head_dim), given_beta_(beta), beta_(beta.value_or(1 / std::sqrt(double(head_dim)))) {}
  void attach(const std::vector<LayerView>& layers, const std::string& synapse) override {
    expect_layers(layers, 1, 2, synapse, "attention");
    for (const auto& l : layers) expect_rank(l, 2, synapse, "attention", "[tokens, dim]");
    const int64_t dq = layers[0].shape[1], dk = layers.back().shape[1];
    query_ = attach_parameter(*this, "query", torch::randn({heads_, dq, head_dim_}) / std::sqrt(double(dq)));
    key_ = attach_parameter(*this, "key", torch::randn({heads_, dk, head_dim_}) / std::sqrt(double(dk)));
  }
  torch::Tensor energy(const std::vector<torch::Tensor>& g) override {
    auto q = torch::einsum("bnd,hdy->bhny", {g[0], query_});
    auto k = torch::einsum("bnd,hdy->bhny", {g.back(), key_});
    auto scores = beta_ * torch::matmul(q, k.transpose(-1, -2));  // [batch, heads, queries, keys]
    return -torch::logsumexp(scores, -1).sum({1, 2}) / beta_;
  }
  std::shared_ptr<SynapseImpl> fresh() const override {
    return std::make_shared<AttentionSynapse>(heads_, head_dim_, given_beta_);
  }
  json to_json() const override {
    json j = {{"kind", "attention"}, {"heads", heads_}, {"head_dim", head_dim_}};
    if (given_beta_) j["beta"] = *given_beta_;
    return j;
  }
  void pretty_print(std::ostream& stream) const override { stream << describe(to_json()); }

 private:
  int64_t heads_, head_dim_;
  std::optional<double> given_beta_;
  double beta_;
  torch::Tensor query_, key_;
};

// ------------------------------------------------------------------- graph
// M(w) = Σ_c w_c e_row(c) e_col(c)ᵀ as a CSR matrix whose structure is built
// once: each entry e of the structure belongs to a CSR slot and a connection,
// so the values are a gather (and a sum where two entries share a slot: a
// self-loop of a one-layer synapse). Products with it cost O(connections + batch·neurons).
struct SparsePattern {
  torch::Tensor crow, col;   // CSR structure, unique (row, col) slots
  torch::Tensor slot, conn;  // per entry: its slot and its connection
  int64_t rows = 0, cols = 0;
};

SparsePattern make_pattern(const std::vector<int64_t>& row, const std::vector<int64_t>& col,
                           const std::vector<int64_t>& conn, int64_t rows, int64_t cols) {
  const auto entries = static_cast<int64_t>(row.size());
  std::vector<int64_t> order(entries);
  for (int64_t e = 0; e < entries; ++e) order[e] = e;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return row[a] != row[b] ? row[a] < row[b] : col[a] < col[b]; });
  std::vector<int64_t> crow(rows + 1, 0), unique_col, slot(entries);
  for (int64_t k = 0; k < entries; ++k) {
    const int64_t e = order[k];
    if (k == 0 || row[e] != row[order[k - 1]] || col[e] != col[order[k - 1]]) {
      unique_col.push_back(col[e]);
      ++crow[row[e] + 1];
    }
    slot[e] = static_cast<int64_t>(unique_col.size()) - 1;
  }
  for (int64_t r = 0; r < rows; ++r) crow[r + 1] += crow[r];
  return {torch::tensor(crow, torch::kLong),
          torch::tensor(unique_col, torch::kLong),
          torch::tensor(slot, torch::kLong),
          torch::tensor(conn, torch::kLong),
          rows,
          cols};
}

// LibTorch 1.13 warns once per process that sparse CSR tensors are "in
// beta"; they are an internal detail here, so the warning would only puzzle
// users. (The first CSR tensor is made with the process's handler silenced.)
void make_first_csr_silently() {
#if TORCH_VERSION_MAJOR < 2
  struct Silent : c10::WarningHandler {
    void process(const c10::SourceLocation&, const std::string&, const bool) override {}
  };
  static Silent silent;
  c10::Warning::WarningHandlerGuard quiet(&silent);
  at::_sparse_csr_tensor_unsafe(torch::zeros({1}, torch::kLong), torch::zeros({0}, torch::kLong), torch::zeros({0}),
                                {0, 0}, torch::TensorOptions().layout(torch::kSparseCsr));
#endif
}

// [batch, rows] = (M(w) gᵀ)ᵀ for g [batch, cols].
torch::Tensor sparse_times(const SparsePattern& p, const torch::Tensor& weight, const torch::Tensor& g) {
  if (p.col.numel() == 0) return torch::zeros({g.size(0), p.rows}, g.options());
  auto values = torch::zeros({p.col.size(0)}, weight.options()).index_add_(0, p.slot, weight.index_select(0, p.conn));
  static std::once_flag once;
  std::call_once(once, make_first_csr_silently);
  auto m = at::_sparse_csr_tensor_unsafe(p.crow, p.col, values, {p.rows, p.cols},
                                         values.options().layout(torch::kSparseCsr));
  return torch::mm(m, g.t().contiguous()).t().contiguous();
}

// What one product needs: M's pattern, Mᵀ's (for the gradient with respect
// to g), and each connection's row and column in M (for the gradient with
// respect to w); a symmetric M holds each connection at (i, j) and (j, i).
struct ProductOperands {
  const SparsePattern* matrix;
  const SparsePattern* transposed;
  torch::Tensor row_of, col_of;
  bool symmetric;
};

// M(w) g as an autograd function of w and g: backward is a sparse
// product by Mᵀ for g and a per-connection gather for w, so training keeps
// the O(connections) cost.
class SparseProduct : public torch::autograd::Function<SparseProduct> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& weight,
                               const torch::Tensor& g, const ProductOperands* op) {
    const auto& t = *op->transposed;
    ctx->saved_data["t_crow"] = t.crow;
    ctx->saved_data["t_col"] = t.col;
    ctx->saved_data["t_slot"] = t.slot;
    ctx->saved_data["t_conn"] = t.conn;
    ctx->saved_data["t_rows"] = t.rows;
    ctx->saved_data["t_cols"] = t.cols;
    ctx->saved_data["row_of"] = op->row_of;
    ctx->saved_data["col_of"] = op->col_of;
    ctx->saved_data["symmetric"] = op->symmetric;
    ctx->save_for_backward({weight, g});
    return sparse_times(*op->matrix, weight, g);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &weight = saved[0], &g = saved[1];
    const auto& d = ctx->saved_data;
    torch::Tensor grad_weight, grad_g;
    if (ctx->needs_input_grad(1)) {
      const SparsePattern t{d.at("t_crow").toTensor(), d.at("t_col").toTensor(), d.at("t_slot").toTensor(),
                            d.at("t_conn").toTensor(), d.at("t_rows").toInt(),   d.at("t_cols").toInt()};
      grad_g = sparse_times(t, weight, grad[0]);
    }
    if (ctx->needs_input_grad(0)) {
      // ∂/∂w_c of Σ_b,i go[b,i] (M g)[b,i] = Σ_b go[b,row_c] g[b,col_c] (and the mirrored term).
      auto go = grad[0].t().contiguous(), gt = g.t().contiguous();
      const auto &row = d.at("row_of").toTensor(), &col = d.at("col_of").toTensor();
      grad_weight = (go.index_select(0, row) * gt.index_select(0, col)).sum(1);
      if (d.at("symmetric").toBool())
        grad_weight = grad_weight + (go.index_select(0, col) * gt.index_select(0, row)).sum(1);
    }
    return {grad_weight, grad_g, torch::Tensor()};
  }
};

class GraphSynapse : public ClosedFormSynapse {
 public:
  GraphSynapse(std::vector<std::pair<NeuronId, NeuronId>> connections, torch::Tensor weights)
      : labels_(std::move(connections)), initial_(std::move(weights)) {}

  void attach(const std::vector<LayerView>& layers, const std::string& synapse) override {
    expect_layers(layers, 1, 2, synapse, "graph");
    for (const auto& l : layers)
      if (!l.neurons)
        fail(
            "add_synapse(): synapse \"{}\": a graph synapse joins 1-D layers of labelled neurons, but layer \"{}\" is "
            "[{}]",
            synapse, l.name, fmt::join(l.shape, ", "));
    const auto count = static_cast<int64_t>(labels_.size());
    if (initial_.defined() && (initial_.dim() != 1 || initial_.size(0) != count || !initial_.is_floating_point()))
      fail("add_synapse(): synapse \"{}\": expected one floating-point weight per connection ([{}]), got {} [{}]",
           synapse, count, c10::toString(initial_.scalar_type()), fmt::join(initial_.sizes(), ", "));
    if (initial_.defined()) {
      const auto bad = torch::isfinite(initial_).logical_not().nonzero();
      if (bad.numel() > 0) {
        const int64_t k = bad[0][0].item<int64_t>();
        fail("add_synapse(): synapse \"{}\": the weight of connection ({}, {}) is {}", synapse, labels_[k].first,
             labels_[k].second, initial_[k].item<double>());
      }
    }
    one_layer_ = layers.size() == 1;
    auto positions = [](const std::vector<NeuronId>& neurons) {
      std::unordered_map<NeuronId, int64_t, NeuronIdHash> at;
      for (size_t i = 0; i < neurons.size(); ++i) at.emplace(neurons[i], static_cast<int64_t>(i));
      return at;
    };
    const auto first = positions(*layers[0].neurons), second = positions(*layers.back().neurons);
    auto source = torch::empty({count}, torch::kLong), target = torch::empty({count}, torch::kLong);
    auto* s = source.data_ptr<int64_t>();
    auto* t = target.data_ptr<int64_t>();
    std::unordered_set<Edge, EdgeHash> seen;
    for (int64_t c = 0; c < count; ++c) {
      const auto& [i, j] = labels_[c];
      auto a = first.find(i), b = second.find(j);
      if (a == first.end() || b == second.end())
        fail("add_synapse(): synapse \"{}\": connection ({}, {}) names neuron {}, which layer \"{}\" does not have",
             synapse, i, j, a == first.end() ? i : j, a == first.end() ? layers[0].name : layers.back().name);
      if (!seen.insert({i, j}).second || (one_layer_ && i != j && seen.count({j, i})))
        fail("add_synapse(): synapse \"{}\": connection ({}, {}) is listed twice{}", synapse, i, j,
             one_layer_ ? " (directions do not matter within one layer)" : "");
      s[c] = a->second;
      t[c] = b->second;
    }
    source_ = attach_buffer(*this, "source", source);
    target_ = attach_buffer(*this, "target", target);
    // The currents are M g₂ and Mᵀ g₁, with M[i][j] = w_ij; over one layer M is symmetric.
    const int64_t n1 = static_cast<int64_t>(layers[0].neurons->size());
    const int64_t n2 = static_cast<int64_t>(layers.back().neurons->size());
    std::vector<int64_t> rows(s, s + count), cols(t, t + count), conns(count);
    for (int64_t c = 0; c < count; ++c) conns[c] = c;
    if (one_layer_) {
      rows.insert(rows.end(), t, t + count);
      cols.insert(cols.end(), s, s + count);
      conns.insert(conns.end(), conns.begin(), conns.end());
    }
    register_pattern("m", make_pattern(rows, cols, conns, n1, n2), matrix_);
    if (!one_layer_) register_pattern("t", make_pattern(cols, rows, conns, n2, n1), transposed_);
    const SparsePattern* t_of_m = one_layer_ ? &matrix_ : &transposed_;
    first_ = {&matrix_, t_of_m, source_, target_, one_layer_};
    second_ = {&transposed_, &matrix_, target_, source_, false};
    torch::Tensor weight;
    if (initial_.defined()) {
      // In the given dtype: add_synapse() places it like the rest of the HAM
      // (rounding a float64 weight through float32 lost its digits).
      weight = initial_.detach().to(torch::kCPU).clone();
    } else {
      const double neurons =
          static_cast<double>(layers[0].neurons->size() + (one_layer_ ? 0 : layers[1].neurons->size()));
      const double per_neuron = neurons > 0 ? 2.0 * count / neurons : 1.0;
      weight = torch::randn({count}) / std::sqrt(std::max(1.0, per_neuron));
    }
    weight_ = attach_parameter(*this, "weight", weight);
  }

  torch::Tensor energy(const std::vector<torch::Tensor>& g) override {
    auto a = flat(g[0]).index_select(1, source_), b = flat(g.back()).index_select(1, target_);
    return -(a * b * weight_).sum(1);
  }
  std::vector<torch::Tensor> currents(const std::vector<torch::Tensor>& g) override {
    if (one_layer_) return {SparseProduct::apply(weight_, flat(g[0]), &first_).view(g[0].sizes())};
    return {SparseProduct::apply(weight_, flat(g[1]), &first_).view(g[0].sizes()),
            SparseProduct::apply(weight_, flat(g[0]), &second_).view(g[1].sizes())};
  }
  std::shared_ptr<SynapseImpl> fresh() const override {
    return std::make_shared<GraphSynapse>(labels_, torch::Tensor());
  }
  json to_json() const override {
    json connections = json::array();
    for (const auto& [i, j] : labels_) connections.push_back({id_to_json(i), id_to_json(j)});
    return {{"kind", "graph"}, {"connections", std::move(connections)}};
  }
  const std::vector<std::pair<NeuronId, NeuronId>>* connection_labels() const override { return &labels_; }
  // torch's Module::to(dtype) would cast the index buffers too: cast the weight alone.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking) override {
    if (weight_.defined()) weight_.set_data(weight_.to(device, dtype, non_blocking));
    SynapseImpl::to(device, non_blocking);
  }
  void to(torch::Dtype dtype, bool non_blocking) override {
    if (weight_.defined()) weight_.set_data(weight_.to(dtype, non_blocking));
  }
  using SynapseImpl::to;
  void pretty_print(std::ostream& stream) const override { stream << "graph(connections=" << labels_.size() << ")"; }

 private:
  std::vector<std::pair<NeuronId, NeuronId>> labels_;
  torch::Tensor initial_;  // the given weights (kept: a refused add_synapse may attach again)
  void register_pattern(const std::string& prefix, SparsePattern pattern, SparsePattern& into) {
    into = pattern;
    into.crow = attach_buffer(*this, prefix + "_crow", pattern.crow);
    into.col = attach_buffer(*this, prefix + "_col", pattern.col);
    into.slot = attach_buffer(*this, prefix + "_slot", pattern.slot);
    into.conn = attach_buffer(*this, prefix + "_conn", pattern.conn);
  }

  bool one_layer_ = false;
  torch::Tensor source_, target_, weight_;
  SparsePattern matrix_, transposed_;   // M and (for two layers) Mᵀ
  ProductOperands first_{}, second_{};  // M g₂ for the first layer, Mᵀ g₁ for the second
};

std::vector<int64_t> pair_of(const std::vector<int64_t>& v, const char* what, int64_t low) {
  constexpr int64_t high = int64_t{1} << 20;  // far beyond any real kernel; keeps the shape arithmetic exact
  if (v.size() != 2 || v[0] < low || v[1] < low || v[0] > high || v[1] > high)
    fail("conv2d(): expected {} as two integers in [{}, {}], got [{}]", what, low, high, fmt::join(v, ", "));
  return v;
}

}  // namespace

std::vector<torch::Tensor> SynapseImpl::gradients(const std::vector<torch::Tensor>& g) {
  const bool keep_graph = torch::GradMode::is_enabled();
  torch::AutoGradMode enable(true);
  std::vector<torch::Tensor> inputs;
  for (const auto& t : g) inputs.push_back(t.requires_grad() ? t : t.detach().requires_grad_(true));
  auto e = energy(inputs);
  std::vector<torch::Tensor> grads(g.size());
  if (e.requires_grad())
    grads = torch::autograd::grad({e.sum()}, inputs, {}, keep_graph, keep_graph, /*allow_unused=*/true);
  for (size_t k = 0; k < g.size(); ++k)
    if (!grads[k].defined()) grads[k] = torch::zeros_like(g[k]);
  return grads;
}

std::vector<torch::Tensor> SynapseImpl::currents(const std::vector<torch::Tensor>& g) {
  auto d = gradients(g);
  for (auto& t : d) t = -t;
  return d;
}

std::shared_ptr<SynapseImpl> SynapseImpl::fresh() const {
  fail("{}: this synapse does not implement fresh(), which cloning, editing and loading a HAM need", name());
}

bool is_graph_synapse(const SynapseImpl& synapse) { return dynamic_cast<const GraphSynapse*>(&synapse) != nullptr; }

Synapse linear(bool bias) { return std::make_shared<LinearSynapse>(bias); }
Synapse bias() { return std::make_shared<BiasSynapse>(); }
Synapse conv2d(std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding) {
  return std::make_shared<Conv2dSynapse>(pair_of(kernel, "the kernel", 1), pair_of(stride, "the stride", 1),
                                         pair_of(padding, "the padding", 0));
}
Synapse attention(int64_t heads, int64_t head_dim, std::optional<double> beta) {
  if (heads < 1 || head_dim < 1) fail("attention(): expected heads and head_dim ≥ 1, got {} and {}", heads, head_dim);
  if (beta && (!(*beta > 0) || !std::isfinite(*beta))) fail("attention(): expected a finite β > 0, got {}", *beta);
  return std::make_shared<AttentionSynapse>(heads, head_dim, beta);
}
Synapse graph(std::vector<std::pair<NeuronId, NeuronId>> connections, torch::Tensor weights) {
  return std::make_shared<GraphSynapse>(std::move(connections), std::move(weights));
}

Synapse synapse_from_json(const json& j, const std::string& where) {
  const std::string kind = kind_of(j, "a synapse", where);
  auto integers = [&](const char* key) {
    if (!j.contains(key) || !j.at(key).is_array()) fail("{}: {} needs an array \"{}\"", where, kind, key);
    std::vector<int64_t> v;
    for (const auto& x : j.at(key)) {
      if (!x.is_number_integer()) fail("{}: {}'s \"{}\" must hold integers", where, kind, key);
      v.push_back(x.get<int64_t>());
    }
    return v;
  };
  auto integer = [&](const char* key) {
    if (!j.contains(key) || !j.at(key).is_number_integer()) fail("{}: {} needs an integer \"{}\"", where, kind, key);
    return j.at(key).get<int64_t>();
  };
  const char* what = "a synapse";
  if (kind == "linear") detail::only_keys(j, {"kind", "bias"}, what, where);
  if (kind == "bias") detail::only_keys(j, {"kind"}, what, where);
  if (kind == "conv2d") detail::only_keys(j, {"kind", "kernel", "stride", "padding"}, what, where);
  if (kind == "attention") detail::only_keys(j, {"kind", "heads", "head_dim", "beta"}, what, where);
  if (kind == "graph") detail::only_keys(j, {"kind", "connections"}, what, where);
  try {
    if (kind == "linear") {
      if (!j.contains("bias") || !j.at("bias").is_boolean()) fail("{}: linear needs a boolean \"bias\"", where);
      return linear(j.at("bias").get<bool>());
    }
    if (kind == "bias") return bias();
    if (kind == "conv2d") return conv2d(integers("kernel"), integers("stride"), integers("padding"));
    if (kind == "attention") {
      std::optional<double> beta;
      if (j.contains("beta")) {
        if (!j.at("beta").is_number()) fail("{}: attention's \"beta\" must be a number", where);
        beta = j.at("beta").get<double>();
      }
      return attention(integer("heads"), integer("head_dim"), beta);
    }
    if (kind == "graph") {
      if (!j.contains("connections") || !j.at("connections").is_array())
        fail("{}: graph needs an array \"connections\"", where);
      std::vector<std::pair<NeuronId, NeuronId>> connections;
      size_t k = 0;
      for (const auto& c : j.at("connections")) {
        const std::string at = fmt::format("/connections/{}", k++);
        if (!c.is_array() || c.size() != 2)
          fail("{}: {}: expected a pair [i, j], got {}", where, at, detail::excerpt(c));
        connections.emplace_back(id_from_json(c[0], where, at + "/0"), id_from_json(c[1], where, at + "/1"));
      }
      return graph(std::move(connections));
    }
  } catch (const Error& e) {
    fail_under(where, e);
  }
  fail("{}: unknown synapse \"{}\" (expected linear, bias, conv2d, attention or graph)", where, printable(kind));
}

}  // namespace connex::ham
