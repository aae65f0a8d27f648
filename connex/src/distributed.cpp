#include "connex/distributed.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef CONNEX_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <fmt/ranges.h>

#include "connex/error.h"
#include "file_io.h"
#include "connex/optimizer_state.h"
#include "decimal.h"
#include "json_input.h"
#include "messages.h"
#include "optimizer_key.h"

namespace connex::distributed {

namespace {

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 || address == "::1";
}

std::string heartbeat_key(int rank) { return "connex/heartbeat/" + std::to_string(rank); }
std::string joined_key(int rank) { return "connex/joined/" + std::to_string(rank); }

// "rank 1", "ranks 1, 2"
std::string ranks_text(const std::vector<int>& ranks) {
  return fmt::format("rank{} {}", ranks.size() > 1 ? "s" : "", fmt::join(ranks, ", "));
}

// ------------------------------------------------------- Group's set-up steps

void check_group_options(const GroupOptions& options) {
  const int rank = options.rank(), size = options.world_size();
  if (size < 1) fail("Group: world_size must be at least 1, got {}", size);
  if (rank < 0 || rank >= size) fail("Group: rank {} is outside [0, {}) (world_size {})", rank, size, size);
  if (options.timeout().count() <= 0) fail("Group: timeout must be positive, got {} ms", options.timeout().count());
  if (options.heartbeat_interval().count() <= 0)
    fail("Group: heartbeat_interval must be positive, got {} ms", options.heartbeat_interval().count());
}

// Where the group meets, for errors: "host:port" or "file PATH".
std::string store_address(const GroupOptions& options) {
  return options.file_store().empty() ? fmt::format("{}:{}", options.master_addr(), options.master_port())
                                      : "file " + options.file_store();
}

c10::intrusive_ptr<c10d::Store> make_tcp_store(const GroupOptions& options) {
  if (options.master_port() < 1 || options.master_port() > 65535)
    fail("Group: master_port must be in [1, 65535], got {}", options.master_port());
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(options.master_port());
  store_options.isServer = options.rank() == 0;
  store_options.numWorkers = static_cast<size_t>(options.world_size());
  // Not here: TCPStore's wait for the workers gives up silently after the
  // whole timeout, and Gloo would wait another. Gloo's rendezvous below
  // waits for every rank, and its failure says which are missing.
  store_options.waitWorkers = false;
  store_options.timeout = options.timeout();
  return c10::make_intrusive<c10d::TCPStore>(options.master_addr(), store_options);
}

// The group's key-value store: a shared file, or TCP hosted by rank 0.
c10::intrusive_ptr<c10d::Store> connect_store(const GroupOptions& options, const std::string& where) {
  const int rank = options.rank(), size = options.world_size();
  try {
    if (options.file_store().empty()) return make_tcp_store(options);
    auto store = c10::make_intrusive<c10d::FileStore>(options.file_store(), size);
    store->setTimeout(options.timeout());
    return store;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::string cause = cause_of(e);
    if (rank == 0 && options.file_store().empty() && cause.find("errno: 98") != std::string::npos)
      fail("rank 0 of {}: could not host the group's store on port {}: the port is in use", size,
           options.master_port());
    fail("rank {} of {}: could not join the group at {} within {} ms: {}", rank, size, where, options.timeout().count(),
         cause);
  }
}

// Announced before the process group's rendezvous, so that a timeout there can name who never came.
void announce_joined(c10d::Store& store, const GroupOptions& options, const std::string& where) {
  try {
    store.set(joined_key(options.rank()), std::vector<uint8_t>{1});
  } catch (const std::exception& e) {
    fail("rank {} of {}: could not join the group at {}: {}", options.rank(), options.world_size(), where, cause_of(e));
  }
}

struct ConnectedBackend {
  c10::intrusive_ptr<CollectiveGroup> process_group;
  std::string name;
  torch::Device device = torch::kCPU;
};

ConnectedBackend make_nccl_group(const c10::intrusive_ptr<c10d::Store>& store, const GroupOptions& options) {
#ifdef CONNEX_WITH_NCCL
  auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
  nccl_options->timeout = options.timeout();
  return {c10::make_intrusive<c10d::ProcessGroupNCCL>(store, options.rank(), options.world_size(), nccl_options),
          "nccl", options.device()};
#else
  (void)store;
  fail("Group: device {} needs the NCCL backend, but this LibTorch has no CUDA; train on the CPU (Gloo)",
       options.device().str());
#endif
}

ConnectedBackend make_gloo_group(const c10::intrusive_ptr<c10d::Store>& store, const GroupOptions& options) {
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
  // The address other ranks reach this one on: the one given, an interface named
  // as in torch (GLOO_SOCKET_IFNAME), loopback for a local run, else this host's name.
  if (!options.gloo_address().empty())
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(options.gloo_address()));
  else if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface && *interface)
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  else if (is_loopback(options.master_addr()) && options.file_store().empty())
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  gloo_options->threads = 2;
  return {c10::make_intrusive<c10d::ProcessGroupGloo>(store, options.rank(), options.world_size(), gloo_options),
          "gloo", torch::kCPU};
}

// A failed rendezvous: names the ranks that never announced themselves, else gives the cause.
[[noreturn]] void fail_rendezvous(c10d::Store& store, const GroupOptions& options, const std::string& where,
                                  const std::exception& e) {
  const int rank = options.rank(), size = options.world_size();
  std::vector<int> missing;
  try {
    for (int r = 0; r < size; ++r)
      if (!store.check({joined_key(r)})) missing.push_back(r);
  } catch (const std::exception&) {
    // The store itself is gone (its host, rank 0, stopped): the cause says so.
  }
  if (!missing.empty())
    fail("rank {} of {}: {} did not join the group at {} within {} ms", rank, size, ranks_text(missing), where,
         options.timeout().count());
  fail("rank {} of {}: could not connect the {} process group through {}: {}", rank, size,
       options.device().is_cuda() ? "NCCL" : "Gloo", where, cause_of(e));
}

// The process group's rendezvous: NCCL for a CUDA device, else Gloo.
ConnectedBackend connect_process_group(const c10::intrusive_ptr<c10d::Store>& store, const GroupOptions& options,
                                       const std::string& where) {
  try {
    return options.device().is_cuda() ? make_nccl_group(store, options) : make_gloo_group(store, options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail_rendezvous(*store, options, where, e);
  }
}

}  // namespace

GroupOptions GroupOptions::from_environment() {
  GroupOptions options;
  if (auto v = detail::environment_int("WORLD_SIZE", 1, 1 << 20)) options.world_size(*v);
  if (auto v = detail::environment_int("RANK", 0, 1 << 20)) options.rank(*v);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) options.master_addr(addr);
  if (auto v = detail::environment_int("MASTER_PORT", 1, 65535)) options.master_port(*v);
  return options;
}

// ------------------------------------------------------------------- Group

struct Group::Impl {
  GroupOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<CollectiveGroup> process_group;
  std::string backend;
  torch::Device device = torch::kCPU;

  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;

  void beat() {
    const std::string key = heartbeat_key(options.rank());
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        if (wake.wait_for(lock, options.heartbeat_interval(), [&] { return stopping; })) return;
      }
      try {
        store->add(key, 1);
      } catch (const std::exception&) {
        return;  // the store's host (rank 0) is gone; lost_ranks() reports it
      }
    }
  }

  // The other ranks whose heartbeat counters do not move over 4 periods.
  std::vector<int> lost_ranks() {
    const int size = options.world_size();
    std::vector<int64_t> before(size), after(size);
    try {
      for (int r = 0; r < size; ++r) before[r] = store->add(heartbeat_key(r), 0);
      std::this_thread::sleep_for(4 * options.heartbeat_interval());
      for (int r = 0; r < size; ++r) after[r] = store->add(heartbeat_key(r), 0);
    } catch (const std::exception&) {
      // Over TCP the store lives in rank 0: if it cannot be reached, rank 0 is gone.
      if (options.file_store().empty() && options.rank() != 0) return {0};
      return {};
    }
    std::vector<int> lost;
    for (int r = 0; r < size; ++r)
      if (r != options.rank() && after[r] == before[r]) lost.push_back(r);
    return lost;
  }

  // Runs one collective; any failure becomes an error naming the lost ranks.
  void run(const char* what, const std::function<c10::intrusive_ptr<c10d::Work>()>& start) {
    try {
      start()->wait();
    } catch (const std::exception& e) {
      const std::string cause = cause_of(e);
      const auto lost = lost_ranks();
      const int size = options.world_size();
      if (!lost.empty())
        fail("{}: lost rank {} of {} (no heartbeat for {} ms); rank {} stops. Cause: {}", what, fmt::join(lost, ", "),
             size, 4 * options.heartbeat_interval().count(), options.rank(), cause);
      fail(
          "{}: the collective failed on rank {} of {} while every other rank still sends heartbeats "
          "(one may be stuck or calling a different collective): {}",
          what, options.rank(), size, cause);
    }
  }

  // Before a collective the ranks state what they are about to run (its
  // name, element count and dtype) in a table of one size on every rank: a
  // replica of another network, or a rank in another collective, is named
  // here, where gloo would abort the process on a message of a length it
  // does not expect. A small all-reduce more: before every broadcast and
  // barrier, and before an all-reduce the first time its name is seen
  // (reduce() compares its later calls inside their own message).
  void agree(const char* what, int64_t numel, torch::ScalarType dtype) {
    const int size = options.world_size(), me = options.rank();
    const int64_t mine[3] = {static_cast<int64_t>(fnv1a64(what, std::strlen(what)) >> 2), numel,
                             static_cast<int64_t>(dtype)};
    const auto stated = rows(mine, 3, what);
    const auto at = stated.accessor<int64_t, 2>();
    auto payload = [](int64_t n, int64_t type) {
      return fmt::format("{} element{} of {}", n, n == 1 ? "" : "s",
                         c10::toString(static_cast<torch::ScalarType>(type)));
    };
    for (int r = 0; r < size; ++r) {
      if (at[r][0] != mine[0])
        fail(
            "{}: rank {} of {} runs another collective ({}) where rank {} runs this one ({}); every rank must make "
            "the same calls in the same order",
            what, r, size, payload(at[r][1], at[r][2]), me, payload(numel, mine[2]));
      if (at[r][1] != numel || at[r][2] != mine[2])
        fail(
            "{}: rank {} of {} sends {} where rank {} sends {}; the ranks must hold replicas of one network and run "
            "with the same arguments",
            what, r, size, payload(at[r][1], at[r][2]), me, payload(numel, mine[2]));
    }
  }

  // An all-reduce in a frame: after the first call of a name (stated apart,
  // by agree()), its first message has a length every rank knows (the
  // count they last agreed on, plus a header) and its header states the
  // tensor's element count and name in 4-bit digits, reduced with the data:
  // a sum carries each digit and its square (every rank's digit is the same
  // exactly when W * sum(d^2) == sum(d)^2), a maximum each digit and its
  // negation. So a rank whose count changed alone (a replica edited on one
  // rank) is found by every rank in the same message, and then named by
  // agree(), before gloo meets messages of other lengths; stating the count
  // in a small all-reduce of its own every step more than doubled a small
  // network's step on loopback. Not caught: a rank that changes the dtype
  // alone, or runs another collective (a broadcast, or an all-reduce of
  // another name whose last count differs) after the first call.
  static constexpr int kDigits = 16, kHeader = 2 * kDigits;  // 12 digits of the count, 4 of the name
  using Key = std::pair<std::string, int>;                   // (name, dtype)
  std::map<Key, int64_t> frames;                             // the count last agreed, per key
  // Gloo, where a digit's squares summed over the ranks stay exact.
  bool frameable(torch::ScalarType dtype) const {
    if (!device.is_cpu()) return false;
    const int64_t most = int64_t{options.world_size()} * 15 * 15;
    return dtype == torch::kFloat64 || dtype == torch::kLong ||
           ((dtype == torch::kFloat32 || dtype == torch::kInt) && most < (int64_t{1} << 24));
  }
  // Otherwise stated apart: with Gloo every call; with NCCL (whose ranks
  // wait for the timeout on a mismatch rather than abort) when the count
  // changed on this rank, since its statement syncs the host each time.
  void reduce_unframed(torch::Tensor& data, const char* what, c10d::ReduceOp::RedOpType op) {
    const Key key{what, static_cast<int>(data.scalar_type())};
    const int64_t n = data.numel();
    const auto known = frames.find(key);
    if (device.is_cpu() || known == frames.end() || known->second != n) {
      agree(what, n, data.scalar_type());
      frames[key] = n;
    }
    all_reduce(data, what, op);
  }

  // Reduces `buffer`, [kHeader + n] contiguous, in place: its data from
  // kHeader on, with the statement that reduce() writes into its head. When
  // refused, its data may be partly reduced: callers pass a buffer of their
  // own and copy the data out after.
  void reduce(torch::Tensor& buffer, const char* what, c10d::ReduceOp::RedOpType op) {
    const auto dtype = buffer.scalar_type();
    const int64_t n = buffer.numel() - kHeader;
    TORCH_INTERNAL_ASSERT(n >= 0, "a framed buffer holds the header");
    auto data = buffer.narrow(0, kHeader, n);
    if (!frameable(dtype)) return reduce_unframed(data, what, op);
    const Key key{what, static_cast<int>(dtype)};
    auto known = frames.find(key);
    if (known == frames.end()) {
      agree(what, n, dtype);
      known = frames.emplace(key, n).first;
    }
    double header[kHeader];
    const uint64_t name = fnv1a64(what, std::strlen(what));
    for (int i = 0; i < kDigits; ++i) {
      const double d =
          static_cast<double>(i < 12 ? (static_cast<uint64_t>(n) >> (4 * i)) & 15 : (name >> (4 * (i - 12))) & 15);
      header[2 * i] = d;
      header[2 * i + 1] = op == c10d::ReduceOp::SUM ? d * d : -d;
    }
    buffer.narrow(0, 0, kHeader).copy_(torch::from_blob(header, {kHeader}, torch::kFloat64));
    // The first message: the head and the agreed count's worth of data
    // (padded with zeros when this rank's count is smaller).
    const int64_t frame = known->second, k = std::min(n, frame);
    torch::Tensor first = buffer.narrow(0, 0, kHeader + k);
    if (k < frame) first = torch::cat({first, torch::zeros({frame - k}, buffer.options())});
    all_reduce(first, what, op);
    const auto stated = first.narrow(0, 0, kHeader).to(torch::kCPU, torch::kFloat64).contiguous();
    const double* s = stated.data_ptr<double>();
    for (int i = 0; i < kDigits; ++i) {
      const bool same = op == c10d::ReduceOp::SUM ? options.world_size() * s[2 * i + 1] == s[2 * i] * s[2 * i]
                                                  : s[2 * i] == -s[2 * i + 1];
      if (same) continue;
      agree(what, n, dtype);  // every rank saw it: each names the ranks that differ
      fail("{}: the ranks' statements of this all-reduce differ, though a comparison found them alike", what);
    }
    known->second = n;  // the same on every rank, as the header proved (also if what follows fails)
    if (k < frame) buffer.narrow(0, kHeader, k).copy_(first.narrow(0, kHeader, k));
    if (n > k) {
      auto rest = data.narrow(0, k, n - k);
      all_reduce(rest, what, op);
    }
  }

  // reduce() for a tensor of any shape, left unchanged when refused.
  void reduce_tensor(torch::Tensor& tensor, const char* what, c10d::ReduceOp::RedOpType op) {
    if (!frameable(tensor.scalar_type())) return reduce_unframed(tensor, what, op);
    const int64_t n = tensor.numel();
    auto buffer = torch::empty({kHeader + n}, tensor.options());
    buffer.narrow(0, kHeader, n).copy_(tensor.reshape({-1}));
    reduce(buffer, what, op);
    tensor.copy_(buffer.narrow(0, kHeader, n).view(tensor.sizes()));
  }

  // Every rank's row of k values, unstated (the callers state it): each rank
  // fills its own row of a table of zeros, and a sum over the ranks fills them all.
  torch::Tensor rows(const int64_t* row, int64_t k, const char* what) {
    auto table = torch::zeros({options.world_size(), k}, torch::kLong);
    std::copy(row, row + k, table[options.rank()].data_ptr<int64_t>());
    std::vector<torch::Tensor> tensors{table.to(device)};
    run(what, [&] { return process_group->allreduce(tensors); });
    return tensors[0].to(torch::kCPU);
  }

  // An all-reduce without the statement before it (the callers make it).
  void all_reduce(torch::Tensor& tensor, const char* what, c10d::ReduceOp op) {
    on_device(tensor, [&](torch::Tensor& t) {
      std::vector<torch::Tensor> tensors{t};
      c10d::AllreduceOptions options;
      options.reduceOp = op;
      run(what, [&] { return process_group->allreduce(tensors, options); });
    });
  }

  // Moves a tensor to the backend's device for a collective and back.
  template <typename F>
  void on_device(torch::Tensor& tensor, F&& op) {
    if (tensor.device() == device && tensor.is_contiguous()) {
      op(tensor);
      return;
    }
    auto staged = tensor.to(device).contiguous();
    op(staged);
    tensor.copy_(staged);
  }
};

Group::Group(const GroupOptions& options) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.options = options;
  check_group_options(options);
  const std::string where = store_address(options);
  m.store = connect_store(options, where);
  announce_joined(*m.store, options, where);
  auto backend = connect_process_group(m.store, options, where);
  m.process_group = std::move(backend.process_group);
  m.backend = std::move(backend.name);
  m.device = backend.device;
  m.store->add(heartbeat_key(options.rank()), 1);
  m.heartbeat = std::thread([&m] { m.beat(); });
}

Group::~Group() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
}

int Group::rank() const { return impl_->options.rank(); }
int Group::world_size() const { return impl_->options.world_size(); }
const GroupOptions& Group::options() const { return impl_->options; }
std::string Group::backend() const { return impl_->backend; }
const c10::intrusive_ptr<CollectiveGroup>& Group::process_group() const { return impl_->process_group; }

std::vector<int> Group::lost_ranks() { return impl_->lost_ranks(); }

void Group::all_reduce_sum(torch::Tensor& tensor, const char* what) {
  impl_->reduce_tensor(tensor, what, c10d::ReduceOp::SUM);
}

void Group::all_reduce_max(torch::Tensor& tensor, const char* what) {
  impl_->reduce_tensor(tensor, what, c10d::ReduceOp::MAX);
}

int64_t Group::framed_header() { return Impl::kHeader; }

void Group::all_reduce_sum_framed(torch::Tensor& buffer, const char* what) {
  impl_->reduce(buffer, what, c10d::ReduceOp::SUM);
}

void Group::broadcast(torch::Tensor& tensor, int root, const char* what) {
  impl_->agree(what, tensor.numel(), tensor.scalar_type());
  impl_->on_device(tensor, [&](torch::Tensor& t) {
    std::vector<torch::Tensor> tensors{t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->run(what, [&] { return impl_->process_group->broadcast(tensors, options); });
  });
}

std::string Group::broadcast_bytes(const std::string& bytes, int root, const char* what) {
  auto size = torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kLong);
  broadcast(size, root, what);
  auto data = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (rank() == root && !bytes.empty()) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
  broadcast(data, root, what);
  return std::string(static_cast<const char*>(data.data_ptr()), static_cast<size_t>(data.numel()));
}

void Group::barrier(const char* what) {
  impl_->agree(what, 0, torch::kByte);
  impl_->run(what, [&] { return impl_->process_group->barrier(); });
}

torch::Tensor Group::gather_rows(const std::vector<int64_t>& row, const char* what) {
  // Stated every time: a rank whose row changed length must not be the only one stating it.
  impl_->agree(what, static_cast<int64_t>(row.size()), torch::kLong);
  if (row.empty()) return torch::zeros({world_size(), 0}, torch::kLong);  // nothing to sum
  return impl_->rows(row.data(), static_cast<int64_t>(row.size()), what);
}

// ------------------------------------------------------------ DataParallel

void DataParallel::broadcast_parameters(NeuralNetwork& network) {
  torch::NoGradGuard no_grad;
  for (auto& p : network->parameters()) {
    auto data = p.detach();
    group_.broadcast(data, 0, "broadcast_parameters()");
  }
  for (auto& b : network->buffers()) {
    auto data = b.detach();
    group_.broadcast(data, 0, "broadcast_parameters()");
  }
}

void DataParallel::average_gradients(NeuralNetwork& network) {
  torch::NoGradGuard no_grad;
  auto parameters = network->parameters();
  if (parameters.empty()) return;
  // Parameters of one dtype and device share a bucket: one all-reduce each
  // (one in all for a plain network: `weight` and `bias` plus any technique's).
  std::map<std::pair<int, std::string>, std::vector<torch::Tensor>> buckets;
  for (auto& p : parameters) buckets[{static_cast<int>(p.scalar_type()), p.device().str()}].push_back(p);
  // Each bucket packed after the room reduce() states the count in, and
  // every gradient written only when every bucket is reduced: a refusal
  // leaves them all as they were.
  const int64_t head = Group::framed_header();
  std::vector<torch::Tensor> buffers;
  for (auto& [key, members] : buckets) {
    int64_t total = 0;
    for (auto& p : members) total += p.numel();
    auto buffer = torch::empty({head + total}, members.front().options());
    int64_t offset = head;
    for (auto& p : members) {
      auto slot = buffer.narrow(0, offset, p.numel());
      if (p.grad().defined())
        slot.copy_(p.grad().reshape(-1));
      else
        slot.zero_();  // a parameter without a gradient counts as zero
      offset += p.numel();
    }
    group_.all_reduce_sum_framed(buffer, "average_gradients()");
    buffers.push_back(std::move(buffer));
  }
  const double scale = 1.0 / group_.world_size();
  size_t b = 0;
  for (auto& [key, members] : buckets) {
    auto& buffer = buffers[b++];
    buffer.mul_(scale);
    int64_t offset = head;
    for (auto& p : members) {
      const auto mean = buffer.narrow(0, offset, p.numel()).view_as(p);
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();
      offset += p.numel();
    }
  }
}

uint64_t DataParallel::checksum(const NeuralNetwork& network, const torch::optim::Optimizer* optimizer) {
  uint64_t hash = fnv1a64(nullptr, 0);
  auto add = [&](const torch::Tensor& t) {
    const auto cpu = t.detach().to(torch::kCPU).contiguous();
    hash = fnv1a64(cpu.data_ptr(), static_cast<size_t>(cpu.numel()) * cpu.element_size(), hash);
  };
  for (const auto& p : network->parameters()) add(p);
  for (const auto& b : network->buffers()) add(b);
  if (optimizer) {
    // Every parameter's step and state tensors, in parameter order.
    for (const auto& group : optimizer->param_groups())
      for (const auto& p : group.params()) {
        auto it = optimizer->state().find(optimizer_state_key(p));
        if (it == optimizer->state().end()) continue;
        const auto fields = state_fields(*it->second);
        const int64_t step = fields.step.value_or(-1);
        hash = fnv1a64(&step, sizeof step, hash);
        for (const auto& field : fields.tensors)
          if (field.second.defined()) add(field.second);
      }
  }
  return hash;
}

uint64_t DataParallel::check_replicas_identical(const NeuralNetwork& network, const torch::optim::Optimizer* optimizer,
                                                const char* context) {
  const uint64_t mine = checksum(network, optimizer);
  const auto table = group_.gather_rows({static_cast<int64_t>(mine)}, context);
  const auto at = table.accessor<int64_t, 2>();
  auto of = [&](int r) { return static_cast<uint64_t>(at[r][0]); };
  const int size = group_.world_size();
  std::vector<int> differ;
  for (int r = 1; r < size; ++r)
    if (of(r) != of(0)) differ.push_back(r);
  if (!differ.empty())
    fail("{}: replicas differ: rank{} {} {} a checksum of {:016x}, rank 0 {:016x}", context,
         differ.size() > 1 ? "s" : "", fmt::join(differ, ", "), differ.size() > 1 ? "have" : "has", of(differ.front()),
         of(0));
  return mine;
}

EditResult DataParallel::apply_edit(const NeuralNetwork& network, const EditScript& script, uint64_t seed) {
  const std::string bytes =
      group_.broadcast_bytes(group_.rank() == 0 ? script.to_json().dump() : std::string(), 0, "apply_edit()");
  const std::string what = "apply_edit(): rank 0's edit script";
  const EditScript agreed = EditScript::from_json(detail::parse_json(bytes, what), what);
  EditResult result = agreed.build(network, seed);
  check_replicas_identical(result.network, nullptr, "apply_edit()");
  return result;
}

}  // namespace connex::distributed
