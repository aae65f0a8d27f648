// Fuzz target: the checkpoint reader (connex/checkpoint.h, parse_checkpoint).
//
// Input: one mode byte, then the checkpoint bytes. Mode bit 0 set: the last 8
// bytes are replaced by the FNV-1a checksum of the rest before parsing, so
// mutations get past the checksum and reach the header, the tensor table and
// the config (without it nearly every mutation stops at the checksum, which
// is itself tested by mode 0). Bit 1 set: when the checkpoint holds an
// optimizer state, restore_optimizer rebuilds it (type, groups, options and
// per-parameter state; parse_checkpoint has checked them, so it must succeed
// or fail with connex::Error). Checkpoint version 1 held
// torch's pickle here, whose reader crashed on crafted bytes (a segfault in
// torch::jit::SourceImporter::loadType found by this target); version 2 is
// connex's own JSON + raw tensor format, read on every input.
//
// On success: forward (shape, dtype, finiteness where provably bounded), and
// writing the network to a checkpoint in memory and parsing that again gives
// bit-identical parameters.
// Caps: none needed in the target. parse_checkpoint itself rejects headers
// that declare more parameter bytes than the file holds (check_declared_size),
// and libFuzzer's -max_len bounds the file.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "file_io.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace connex_fuzz;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  if ((mode & 1) && bytes.size() >= 8) {
    const uint64_t sum = connex::fnv1a64(bytes.data(), bytes.size() - 8);
    std::memcpy(&bytes[bytes.size() - 8], &sum, 8);
  }
  connex::Checkpoint checkpoint;
  if (!guarded("parse_checkpoint", [&] { checkpoint = connex::parse_checkpoint(bytes, "fuzz-ckpt"); })) return 0;
  FUZZ_CHECK(!checkpoint.network.is_empty(), "parse_checkpoint returned no network");
  if ((mode & 2) && checkpoint.optimizer)
    guarded("restore_optimizer", [&] { connex::restore_optimizer(checkpoint, "fuzz-ckpt"); });

  // What the file holds is what a save of the loaded network holds.
  auto& net = checkpoint.network;
  guarded("round trip", [&] {
    // tmpfs when there is one: save() fsyncs, which costs milliseconds on a disk.
    static const std::string dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    const std::string path = dir + "/connex_fuzz_checkpoint_" + std::to_string(::getpid()) + ".ckpt";
    const auto& preprocessing = checkpoint.preprocessing;
    connex::save(net, path, nullptr, preprocessing ? &*preprocessing : nullptr);
    const auto reloaded = connex::load_checkpoint(path);
    auto again = reloaded.network;
    std::remove(path.c_str());
    FUZZ_CHECK(preprocessing.has_value() == reloaded.preprocessing.has_value() &&
                   (!preprocessing || preprocessing->to_json() == reloaded.preprocessing->to_json()),
               "save/load changed the preprocessing");
    auto a = net->named_parameters(), b = again->named_parameters();
    FUZZ_CHECK(a.size() == b.size(), "save/load changed the number of parameter tensors");
    for (const auto& p : a) {
      const auto* q = b.find(p.key());
      FUZZ_CHECK(q && q->sizes().equals(p.value().sizes()), "save/load lost parameter %s", p.key().c_str());
      auto x = p.value().detach().contiguous(), y = q->detach().contiguous();
      FUZZ_CHECK(x.scalar_type() == y.scalar_type() &&
                     (x.numel() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0),
                 "save/load changed the bits of %s", p.key().c_str());
    }
  });
  guarded("forward", [&] { check_forward(net, "parse_checkpoint"); });
  return 0;
}
