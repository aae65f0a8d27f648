#include "file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>

#include <fmt/ranges.h>

#include "connex/error.h"
#include "json_input.h"
#include "utf8.h"

namespace connex {

namespace {

// Test-only fault injection (see file_io.h): -1 when off.
std::atomic<int> g_fault_step{-1};
std::atomic<size_t> g_fault_partial{0};

// True (with errno = EIO) when the test hook says this step fails.
bool injected(fault_injection::WriteStep step) {
  if (g_fault_step.load(std::memory_order_relaxed) != static_cast<int>(step)) return false;
  errno = EIO;
  return true;
}

// After a create beside `path` failed with errno: where the reason is that
// its directory is missing (or is a file), says so in the user's terms (a
// temporary's name means nothing to them).
void fail_on_missing_directory(const std::string& path, const char* context) {
  if (errno != ENOENT && errno != ENOTDIR) return;
  const std::string dir = std::filesystem::path(path).parent_path().string();
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) fail("{}: cannot write {}: {} is not a directory", context, path, dir);
  fail("{}: cannot write {}: its directory {} does not exist", context, path, dir);
}

// 16 hex digits nobody can predict (a counter alone would let another user
// plant a symlink at the next name).
std::string random_suffix() {
  static std::mutex mutex;
  static std::mt19937_64 engine = [] {
    std::random_device device;
    std::seed_seq seq{device(), device(), device(), device(), static_cast<unsigned>(::getpid())};
    return std::mt19937_64(seq);
  }();
  std::lock_guard<std::mutex> lock(mutex);
  return fmt::format("{:016x}", engine());
}

}  // namespace

namespace fault_injection {
void set_write_fault(std::optional<WriteStep> step, size_t partial_bytes) {
  g_fault_partial.store(partial_bytes);
  g_fault_step.store(step ? static_cast<int>(*step) : -1);
}
}  // namespace fault_injection

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}

}  // namespace

std::string read_file(const std::string& path, const char* context, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses
  // anything but a regular file (a FIFO blocked forever, /dev/zero was read
  // until memory ran out).
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open {}: {}", context, path, std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    fail("{}: cannot read {}: {}", context, path, why);
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    fail("{}: {} is {}, not a regular file", context, path, file_kind(info.st_mode));
  }
  auto too_large = [&](uint64_t size) {
    ::close(fd);
    fail("{}: {} is {} bytes, more than the {} connex reads", context, path, size, max_bytes);
  };
  if (static_cast<uint64_t>(info.st_size) > max_bytes) too_large(static_cast<uint64_t>(info.st_size));
  std::string bytes(static_cast<size_t>(info.st_size), '\0');
  size_t done = 0;
  char chunk[65536];
  for (;;) {  // the size fstat gave, then whatever a growing file added
    const bool tail = done >= bytes.size();
    const ssize_t n = tail ? ::read(fd, chunk, sizeof chunk) : ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      fail("{}: cannot read {}: {}", context, path, why);
    }
    if (n == 0) break;
    if (tail) {
      if (done + static_cast<size_t>(n) > max_bytes) too_large(done + static_cast<size_t>(n));
      bytes.append(chunk, static_cast<size_t>(n));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return bytes;
}

std::string write_destination(const std::string& path) {
  std::filesystem::path resolved = path;
  std::error_code link_error;
  for (int hops = 0; hops < 40 && std::filesystem::is_symlink(resolved, link_error); ++hops) {
    const auto target = std::filesystem::read_symlink(resolved, link_error);
    if (link_error) break;
    resolved = target.is_absolute() ? target : resolved.parent_path() / target;
  }
  return resolved.string();
}

namespace {

// Whether `path` (a write destination, its symlinks followed) is a file a
// write would replace, and its status then; throws when its user may not write it.
bool replaced_file(const std::string& path, const std::string& path_given, const char* context, struct stat& existing) {
  if (::stat(path.c_str(), &existing) != 0 || !S_ISREG(existing.st_mode)) return false;
  if (::access(path.c_str(), W_OK) != 0 && (errno == EACCES || errno == EPERM || errno == EROFS))
    fail("{}: cannot write {}: {}", context, path_given, std::strerror(errno));
  return true;
}

}  // namespace

void check_replaceable(const std::string& path_given, const char* context) {
  struct stat existing {};
  replaced_file(write_destination(path_given), path_given, context, existing);
}

void write_file_atomically(const std::string& path_given, const std::string& bytes, const char* context) {
  using fault_injection::WriteStep;
  // A symlink stays a link: the file it points to is written, or created
  // when the link dangles (the rename would otherwise put a plain file in
  // the link's place). Messages name what the caller gave, but for a
  // missing directory, which is the target's.
  const std::string path = write_destination(path_given);
  // A replaced file keeps its permissions (not set-id bits, as cp without -p).
  struct stat existing {};
  const bool replaces = replaced_file(path, path_given, context, existing);
  // Created exclusively under an unpredictable name: O_EXCL|O_NOFOLLOW never
  // opens what is already there, so a file or symlink planted at the name
  // cannot be written through; a taken name just means drawing another.
  std::string temp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    temp = path + ".tmp." + std::to_string(::getpid()) + "." + random_suffix();
    fd = injected(WriteStep::open_temp)
             ? -1
             : ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && (errno != EEXIST || attempt == 100)) {
      fail_on_missing_directory(path, context);
      fail("{}: cannot write {}: creating the temporary {} failed: {}", context, path_given, temp,
           std::strerror(errno));
    }
  }
  auto give_up = [&](const char* what, bool close_fd) {
    const std::string why = std::strerror(errno);
    if (close_fd) ::close(fd);
    ::unlink(temp.c_str());
    fail("{}: cannot {} {}: {}", context, what, path_given, why);
  };
  if (replaces && ::fchmod(fd, existing.st_mode & 0777) != 0) give_up("write", true);
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
      fail(
          "{}: wrote {} but cannot sync its directory: {}; the new contents are in place but may not survive a power "
          "loss",
          context, path_given, why);
  }
}

std::string printable(std::string_view text, size_t max_bytes) {
  std::string out;
  const size_t end = std::min(text.size(), max_bytes);
  size_t i = 0;
  while (i < end) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const auto [length, code] = utf8_char_at(text, i);
    if (length > 1) {
      if (i + length > end) break;  // no half character
      // C1 controls (NEL among them) and the line and paragraph separators break lines too.
      if (code <= 0x9F || code == 0x2028 || code == 0x2029)
        out += fmt::format("\\u{:04x}", code);
      else
        out.append(text.substr(i, length));
      i += length;
      continue;
    }
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\r')
      out += "\\r";
    else if (c == 0)
      out += "\\0";
    else if (length == 0 || c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
    ++i;
  }
  if (i < text.size()) out += "…";
  return out;
}

namespace detail {

nlohmann::json parse_json(std::string_view text, const std::string& what) {
  // A linear scan first. For depth: the parser itself is iterative, but the
  // value it would build could not be dumped or described safely. For keys:
  // an object keeps one value per key, so a key given twice (a hand-edited
  // config) would silently lose a value; nlohmann's parse callback, which
  // could see them, took quadratic time on large files. In valid JSON a ':'
  // outside strings follows its key, the last string closed; an object's
  // keys are compared when it closes, decoded where they hold an escape
  // ("se\u0065d" is "seed"). A repeat is reported only once the text parsed:
  // in invalid JSON the scan's idea of keys means nothing.
  struct Key {
    std::string_view text;  // as written, between the quotes
    size_t at = 0;          // byte of its opening quote
    bool escaped = false;   // holds a backslash: then compared as `decoded`
    std::string decoded;
    std::string_view name() const { return escaped ? std::string_view(decoded) : text; }
  };
  struct Container {
    bool object = false;
    std::vector<Key> keys;
    size_t items = 0;  // an array's commas so far: the index of its current item
  };
  size_t depth = 0;
  bool in_string = false, escaped = false, fresh_string = false;
  size_t string_begin = 0, string_end = 0;
  std::vector<Container> open(1);                        // by depth; 0 is outside everything
  std::optional<std::pair<std::string, size_t>> repeat;  // the JSON path of the first key given twice, its byte
  // A JSON pointer (RFC 6901): '~' and '/' in a key written ~0 and ~1.
  auto pointer_step = [](std::string_view key) {
    std::string step = "/";
    for (const char c : key) step += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
    return step;
  };
  auto path_to = [&](size_t below) {
    std::string path;
    for (size_t d = 1; d < below; ++d)
      path += open[d].object ? pointer_step(open[d].keys.empty() ? "" : open[d].keys.back().name())
                             : "/" + std::to_string(open[d].items);
    return path;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
        fresh_string = true;
        string_end = i;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      string_begin = i + 1;
    } else if (c == ':') {
      if (open[depth].object && fresh_string) {  // elsewhere the parser refuses it below
        Key key{text.substr(string_begin, string_end - string_begin), string_begin - 1, false, {}};
        key.escaped = key.text.find('\\') != std::string_view::npos;
        if (key.escaped) try {
            key.decoded = nlohmann::json::parse(text.substr(key.at, key.text.size() + 2)).get<std::string>();
          } catch (const nlohmann::json::exception&) {  // a bad escape: the parser says so below
          }
        open[depth].keys.push_back(std::move(key));
      }
    } else if (c == ',') {
      ++open[depth].items;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) fail("{} nests JSON deeper than {} levels (at byte {})", what, kMaxJsonDepth, i);
      if (open.size() == depth) open.emplace_back();
      open[depth].object = c == '{';
      open[depth].keys.clear();
      open[depth].items = 0;
    } else if ((c == ']' || c == '}') && depth > 0) {
      auto& keys = open[depth].keys;
      if (!repeat && keys.size() > 1) {
        std::vector<const Key*> sorted;
        for (const auto& key : keys) sorted.push_back(&key);
        std::stable_sort(sorted.begin(), sorted.end(),
                         [](const Key* a, const Key* b) { return a->name() < b->name(); });
        const Key* second = nullptr;  // the earliest second mention of a key
        for (size_t k = 1; k < sorted.size(); ++k)
          if (sorted[k]->name() == sorted[k - 1]->name() && (!second || sorted[k]->at < second->at)) second = sorted[k];
        if (second) repeat.emplace(path_to(depth) + pointer_step(second->name()), second->at);
      }
      --depth;
    }
    if (!std::isspace(static_cast<unsigned char>(c))) fresh_string = c == '"';
  }
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not valid JSON: {}", what, printable(e.what(), 200));
  }
  if (repeat) {
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(repeat->second), '\n');
    fail("{}: {} is given twice (line {}); JSON keeps only one of the values: remove one", what,
         printable(repeat->first, 120), line);
  }
  return doc;
}

namespace {

void append_excerpt(const nlohmann::json& v, std::string& out, size_t budget, int depth) {
  if (out.size() > budget) return;
  if (v.is_array() || v.is_object()) {
    const bool array = v.is_array();
    if (depth >= 8) {
      out += array ? "[…]" : "{…}";
      return;
    }
    out += array ? '[' : '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out.size() <= budget; ++it) {
      if (!first) out += ',';
      first = false;
      if (!array)
        out += nlohmann::json(it.key().substr(0, budget + 1))
                   .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
               ":";
      append_excerpt(*it, out, budget, depth + 1);
    }
    out += array ? ']' : '}';
  } else if (v.is_string()) {
    // Cut before dumping: a 200 MB string is never copied whole.
    const auto& s = v.get_ref<const std::string&>();
    out += nlohmann::json(s.substr(0, budget + 1)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    out += v.dump();
  }
}

}  // namespace

std::string excerpt(const nlohmann::json& value, size_t max_bytes) {
  std::string out;
  append_excerpt(value, out, max_bytes, 0);
  return printable(out, max_bytes);
}

void only_keys(const nlohmann::json& object, std::initializer_list<const char*> keys, const char* what,
               const std::string& where) {
  if (!object.is_object()) return;
  for (auto it = object.begin(); it != object.end(); ++it)
    if (std::none_of(keys.begin(), keys.end(), [&](const char* key) { return it.key() == key; }))
      fail("{}: {} is not a key of {} ({})", where, excerpt(it.key(), 40), what, fmt::join(keys, ", "));
}

}  // namespace detail

PrivateDirectory::PrivateDirectory(const std::string& beside, const char* context) {
  std::string pattern = beside + ".tmp.XXXXXX";
  if (!::mkdtemp(pattern.data())) {
    fail_on_missing_directory(beside, context);
    fail("{}: cannot create a temporary directory beside {}: {}", context, beside, std::strerror(errno));
  }
  path_ = pattern;
}

PrivateDirectory::~PrivateDirectory() {
  std::error_code ignored;  // a destructor cannot report; the directory is ours alone
  std::filesystem::remove_all(path_, ignored);
}

uint64_t fnv1a64(const void* data, size_t size, uint64_t hash) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

}  // namespace connex
