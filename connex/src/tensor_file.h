#pragma once
// The file layout connex's checkpoints share (networks: "CONNEXCK",
// connex::ham: "CONNEXHM"): an 8-byte magic, a u32 format version, a u64
// header length, a JSON header, the raw tensor bytes, and a u64 FNV-1a
// checksum of everything before it (little-endian). Internal.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace connex::detail {

// Each kind's magic, its file's first 8 bytes (programs tell files apart by them).
inline constexpr char kNetworkMagic[9] = "CONNEXCK";
inline constexpr char kHamMagic[9] = "CONNEXHM";
// Whether `head` (a file's first bytes) starts with `magic`.
inline bool has_magic(std::string_view head, const char (&magic)[9]) { return head.substr(0, 8) == magic; }

std::string pack_tensor_file(const char (&magic)[9], uint32_t version, const nlohmann::json& header,
                             const std::string& data);

struct TensorFile {
  uint32_t version;
  std::string_view header;  // the header's text, to parse once the version is known
  size_t data_begin, data_size;
};
// Checks the magic, the sizes and the checksum; `context` starts the messages
// ("load()"), `what` names the format ("a connex checkpoint").
TensorFile unpack_tensor_file(const std::string& file, const char (&magic)[9], const std::string& path,
                              const char* context, const char* what);

// Appends a tensor's bytes to `data` and returns its table entry (without a name).
nlohmann::json write_tensor(const torch::Tensor& tensor, std::string& data, const std::string& name,
                            const char* context = "save()");

// The tensor bytes of a file and how to read a table entry from them.
struct TensorData {
  const std::string& file;
  size_t begin, size;
  const std::string& path;
  const char* context = "load()";                     // starts the messages
  const char* structure = "the network's structure";  // what dictates the shapes
  const char* dtype_source = "the config";            // what dictates the dtype

  // A view of the entry's bytes, which must have exactly `like`'s shape and
  // dtype; `what` names the entry in messages. The view lives as long as `file`.
  torch::Tensor read(const nlohmann::json& entry, const torch::Tensor& like, const std::string& what) const;
};

// A parameter that older files hold in parts, each under its own name: the
// rows [first_row, first_row + rows) of the parameter `whole` (topo norm's
// flat parameters, held per level before 2026-12).
struct ParameterPart {
  std::string name, whole;
  int64_t first_row = 0, rows = 0;
};

// Fills each tensor of `expected` (by name) from the file's table (an array
// of entries with a "name") and refuses a malformed or repeated entry, a
// tensor the table lacks and one it holds that nobody expects. `where`
// starts the messages ("load(): FILE"); `structure` names what needs the
// tensors ("its network's structure").
void read_tensor_table(const nlohmann::json& table, const TensorData& data,
                       const std::vector<std::pair<std::string, torch::Tensor>>& expected, const std::string& where,
                       const char* structure);

}  // namespace connex::detail
