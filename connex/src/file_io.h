#pragma once
// Small file helpers shared by the loaders and writers, and by connex's own
// programs and tests (through the connex_internal target). Internal: no public
// header may include it.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace connex {

// Whole file as bytes; throws connex::Error naming the file. Refuses what is
// not a regular file (a FIFO, a device, a directory) without blocking, and a
// file larger than `max_bytes`, before reading it.
constexpr uint64_t kMaxReadBytes = uint64_t{4} << 30;  // 4 GiB
std::string read_file(const std::string& path, const char* context, uint64_t max_bytes = kMaxReadBytes);
// Writes to a temporary file beside `path` (unique per call), flushes and
// fsyncs it, renames it over `path`, then fsyncs the directory: an error or a
// crash before the rename leaves the previous file intact (a SIGKILL may leave
// a stray `path.tmp.*` behind); after it, `path` holds the new bytes whole.
// When `path` is a symlink, all this happens where it points (beside and over
// its target, created if the link dangles): the link stays.
// A replaced file keeps its permissions, and one its user may not write is
// refused (check_replaceable), as cp refuses it: the rename alone would do it.
void write_file_atomically(const std::string& path, const std::string& bytes, const char* context);
// Throws "<context>: cannot write <path>: Permission denied" when `path` (or
// what its symlink points to) is a file its user may not write: for a caller
// that checks its outputs before the work that ends in writing them.
void check_replaceable(const std::string& path, const char* context);
// Where write_file_atomically(path) lands: `path`, or through its symlinks
// (40 hops at most) the file the last one points to.
std::string write_destination(const std::string& path);

// `text` made safe for a one-line message: control bytes and bytes that are
// not UTF-8 escaped (\n, \t, \r, \0, \xNN), as are the characters that
// break lines (C1 controls, U+2028, U+2029: \uNNNN), cut after `max_bytes`
// (at a UTF-8 boundary) with "…", so an error never echoes a 200 MB cell or a raw NUL.
std::string printable(std::string_view text, size_t max_bytes = 80);

// A new directory beside `path` (`path.tmp.XXXXXX`, mode 0700, made by
// mkdtemp), for a program that writes files of its own (Graphviz's dot):
// nobody else can plant a name in it. Removed with all it holds when
// destroyed, on every path.
class PrivateDirectory {
 public:
  PrivateDirectory(const std::string& beside, const char* context);
  ~PrivateDirectory();
  PrivateDirectory(const PrivateDirectory&) = delete;
  PrivateDirectory& operator=(const PrivateDirectory&) = delete;
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// FNV-1a, 64 bit: any single changed byte changes it.
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);

namespace fault_injection {

// TEST-ONLY fault injection for write_file_atomically(). While set, every
// write fails at `step` as if that system call had failed with EIO (for
// `write`, after `partial_bytes` bytes reached the temporary file). nullopt
// turns it off. Process-wide; unset, it costs one relaxed atomic load per step.
enum class WriteStep { open_temp, write, fsync_file, rename, fsync_dir };
void set_write_fault(std::optional<WriteStep> step, size_t partial_bytes = 0);

}  // namespace fault_injection
}  // namespace connex
