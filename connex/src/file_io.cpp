#include "connex/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "connex/error.h"

namespace connex {

namespace {

// Test-only fault injection (see file_io.h): -1 when off.
std::atomic<int> g_fault_step{-1};
std::atomic<size_t> g_fault_partial{0};

// True (with errno = EIO) when the test hook says this step fails.
bool injected(testing::WriteStep step) {
  if (g_fault_step.load(std::memory_order_relaxed) != static_cast<int>(step)) return false;
  errno = EIO;
  return true;
}

}  // namespace

namespace testing {
void set_write_fault(std::optional<WriteStep> step, size_t partial_bytes) {
  g_fault_partial.store(partial_bytes);
  g_fault_step.store(step ? static_cast<int>(*step) : -1);
}
}  // namespace testing

std::string read_file(const std::string& path, const char* context) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open {}: {}", context, path, std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) fail("{}: cannot read {}", context, path);
  return bytes.str();
}

void write_file_atomically(const std::string& path, const std::string& bytes, const char* context) {
  using testing::WriteStep;
  // Unique per call: two threads saving to one path must not share a temporary.
  static std::atomic<uint64_t> counter{0};
  const std::string temp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const int fd = injected(WriteStep::open_temp) ? -1 : ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("{}: cannot create {}: {}", context, temp, std::strerror(errno));
  auto give_up = [&](const char* what, bool close_fd) {
    const std::string why = std::strerror(errno);
    if (close_fd) ::close(fd);
    ::unlink(temp.c_str());
    fail("{}: cannot {} {}: {}", context, what, path, why);
  };
  const bool write_fault = injected(WriteStep::write);
  const size_t limit = write_fault ? std::min(bytes.size(), g_fault_partial.load()) : bytes.size();
  size_t written = 0;
  while (written < limit) {
    const ssize_t n = ::write(fd, bytes.data() + written, limit - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      give_up("write", true);
    }
    written += static_cast<size_t>(n);
  }
  if (write_fault) {
    errno = EIO;
    give_up("write", true);
  }
  if (injected(WriteStep::fsync_file) || ::fsync(fd) != 0) give_up("write", true);
  if (::close(fd) != 0) give_up("write", false);
  if (injected(WriteStep::rename) || std::rename(temp.c_str(), path.c_str()) != 0) give_up("replace", false);
  // Make the rename itself durable. Past this point `path` already holds the
  // new bytes whole, so a failure here reports but cannot restore the old file.
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {  // an unreadable directory cannot be synced; the rename stands
    const bool synced = !injected(WriteStep::fsync_dir) && (::fsync(dir_fd) == 0 || errno == EINVAL);
    const std::string why = std::strerror(errno);
    ::close(dir_fd);
    if (!synced)
      fail("{}: wrote {} but cannot sync its directory: {}; the new contents are in place but may not survive a power loss",
           context, path, why);
  }
}

uint64_t fnv1a64(const void* data, size_t size, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

}  // namespace connex
