#pragma once
// Small file helpers shared by the loaders and writers. Not installed: no public header may include it.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace connex {

// Whole file as bytes; throws connex::Error naming the file.
std::string read_file(const std::string& path, const char* context);
// Writes to a temporary file beside `path` (unique per call), flushes and
// fsyncs it, renames it over `path`, then fsyncs the directory: an error or a
// crash before the rename leaves the previous file intact (a SIGKILL may leave
// a stray `path.tmp.*` behind); after it, `path` holds the new bytes whole.
void write_file_atomically(const std::string& path, const std::string& bytes, const char* context);

// FNV-1a, 64 bit: any single changed byte changes it.
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);

namespace testing {

// TEST-ONLY fault injection for write_file_atomically(). While set, every
// write fails at `step` as if that system call had failed with EIO (for
// `write`, after `partial_bytes` bytes reached the temporary file). nullopt
// turns it off. Process-wide; unset, it costs one relaxed atomic load per step.
enum class WriteStep { open_temp, write, fsync_file, rename, fsync_dir };
void set_write_fault(std::optional<WriteStep> step, size_t partial_bytes = 0);

}  // namespace testing
}  // namespace connex
