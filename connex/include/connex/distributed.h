#pragma once
// Data-parallel training on torch's distributed engine (c10d).
//
// Every rank (process) holds a replica of one network. `Group` joins the
// ranks through a rendezvous store (TCPStore on MASTER_ADDR:MASTER_PORT, or a
// FileStore on a shared file) and a c10d process group: Gloo for CPU tensors,
// NCCL for CUDA ones (when LibTorch was built with it). `DataParallel` keeps
// the replicas equal: rank 0's parameters are broadcast at the start, after
// each backward pass the gradients are averaged in one flat all-reduce, every
// rank steps the same optimizer, and an edit decided on rank 0 is sent as an
// EditScript and applied on every rank, then checked by a checksum.
//
// Failure: every rank sends heartbeats through the store. When a collective
// fails (a peer's connection closed, or the timeout passed) the error is a
// connex::Error that names the ranks whose heartbeats stopped. Before a
// collective the ranks compare what they send (name, element count, dtype),
// so replicas of different networks or ranks in different collectives are
// refused by name rather than left to abort inside Gloo. Broadcasts and
// barriers compare every call, an all-reduce its first call of a name; its
// later calls carry the count and name in their own message, so a replica
// edited on one rank alone is refused on every rank, its gradients unchanged.
//
// Thread use: call a Group's collectives from one thread. Several Groups (one
// rank each, on threads of their own) may share a process, as the tests run them.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/version.h>
#include <torch/torch.h>

#include "connex/edit_script.h"
#include "connex/neural_network.h"

namespace connex::distributed {

// The object that runs the collectives: a ProcessGroup in LibTorch 1.x, a
// per-device Backend (ProcessGroupGloo / ProcessGroupNCCL) from 2.0 on.
#if TORCH_VERSION_MAJOR >= 2
using CollectiveGroup = c10d::Backend;
#else
using CollectiveGroup = c10d::ProcessGroup;
#endif

struct GroupOptions {
  TORCH_ARG(int, rank) = 0;
  TORCH_ARG(int, world_size) = 1;
  // Rendezvous over TCP: rank 0 hosts the store on this address and port.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int, master_port) = 29500;
  // Non-empty: rendezvous through this file (on a file system every rank sees) instead of TCP.
  TORCH_ARG(std::string, file_store) = "";
  // Gloo: the address this rank's connections listen on (e.g. "127.0.0.1" when
  // every rank runs on this machine); it wins over GLOO_SOCKET_IFNAME. Empty: that
  // variable's interface when set, else 127.0.0.1 for a loopback master_addr over
  // TCP, else the address of this host's name.
  TORCH_ARG(std::string, gloo_address) = "";
  // How long joining and each collective may wait for the other ranks.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::seconds(60);
  // Heartbeat period; a rank silent for 4 periods counts as lost.
  TORCH_ARG(std::chrono::milliseconds, heartbeat_interval) = std::chrono::milliseconds(250);
  // CPU: Gloo. CUDA: NCCL (each rank uses the device given here).
  TORCH_ARG(torch::Device, device) = torch::kCPU;

  // RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT as torchrun sets them; unset ones keep the defaults.
 public:  // (TORCH_ARG leaves the struct in private mode)
  static GroupOptions from_environment();
};

class Group {
 public:
  // Blocks until every rank has joined; throws connex::Error after `timeout`.
  explicit Group(const GroupOptions& options);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int world_size() const;
  const GroupOptions& options() const;
  std::string backend() const;  // "gloo" or "nccl"
  const c10::intrusive_ptr<CollectiveGroup>& process_group() const;

  // Collectives, in place; tensors may live on any device (they are moved to
  // the backend's device and back). `what` names the operation in errors.
  void all_reduce_sum(torch::Tensor& tensor, const char* what);
  void all_reduce_max(torch::Tensor& tensor, const char* what);
  void broadcast(torch::Tensor& tensor, int root, const char* what);
  // Rank `root`'s bytes, on every rank (the argument is ignored elsewhere).
  std::string broadcast_bytes(const std::string& bytes, int root, const char* what);
  void barrier(const char* what);
  // Every rank's `row` (of one length on every rank) as a [world_size,
  // row.size()] int64 CPU tensor whose row r is rank r's: a small table of
  // settings or checksums that each rank compares itself.
  torch::Tensor gather_rows(const std::vector<int64_t>& row, const char* what);

  // The ranks other than this one whose heartbeats have stopped (waits a few
  // heartbeat periods to see). Used to explain a failed collective.
  std::vector<int> lost_ranks();

 private:
  friend class DataParallel;
  // all_reduce_sum() of a buffer's entries from framed_header() on, whose
  // head it overwrites: no copy of the data (average_gradients() packs the
  // gradients there). The buffer's entries are unspecified when it throws.
  static int64_t framed_header();
  void all_reduce_sum_framed(torch::Tensor& buffer, const char* what);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class DataParallel {
 public:
  explicit DataParallel(Group& group) : group_(group) {}
  Group& group() const { return group_; }

  // Copies rank 0's parameters and buffers into this replica.
  void broadcast_parameters(NeuralNetwork& network);
  // Replaces every parameter's gradient by its mean over the ranks: the
  // gradients are packed into one flat buffer, all-reduced once, unpacked.
  // A parameter without a gradient counts as zero.
  void average_gradients(NeuralNetwork& network);
  // FNV-1a over the bytes of every parameter and buffer (and the optimizer's
  // state tensors, when given), in a fixed order.
  static uint64_t checksum(const NeuralNetwork& network, const torch::optim::Optimizer* optimizer = nullptr);
  // Throws connex::Error unless every rank has the same checksum; returns it.
  uint64_t check_replicas_identical(const NeuralNetwork& network, const torch::optim::Optimizer* optimizer,
                                    const char* context);
  // Applies rank 0's `script` on every rank (other ranks' scripts are
  // ignored) with `seed`, which every rank must pass alike (it is not sent;
  // another draws other new weights, refused by the closing checksum).
  // Every rank gets the same network.
  EditResult apply_edit(const NeuralNetwork& network, const EditScript& script, uint64_t seed);

 private:
  Group& group_;
};

}  // namespace connex::distributed
