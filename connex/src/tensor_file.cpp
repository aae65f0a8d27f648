#include "tensor_file.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_set>

#include <torch/torch.h>
#include <fmt/ranges.h>

#include "connex/error.h"
#include "dtype.h"
#include "file_io.h"
#include "json_input.h"

namespace connex {

namespace {

using nlohmann::json;

constexpr size_t kPrefix = 8 + 4 + 8;  // magic, version, header length

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // x86-64 and aarch64 are little-endian
  out.append(bytes, sizeof(T));
}
template <typename T>
T get(const std::string& in, size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

}  // namespace

namespace detail {

std::string pack_tensor_file(const char (&magic)[9], uint32_t version, const json& header, const std::string& data) {
  const std::string header_text = header.dump();
  std::string file(magic, 8);
  put<uint32_t>(file, version);
  put<uint64_t>(file, header_text.size());
  file += header_text;
  file += data;
  put<uint64_t>(file, fnv1a64(file.data(), file.size()));
  return file;
}

TensorFile unpack_tensor_file(const std::string& file, const char (&magic)[9], const std::string& path,
                              const char* context, const char* what) {
  if (file.size() < 8 || std::memcmp(file.data(), magic, 8) != 0)
    fail("{}: {} is not {} (it does not start with \"{}\")", context, path, what, magic);
  if (file.size() < kPrefix + 8) fail("{}: {} is truncated ({} bytes)", context, path, file.size());
  const uint64_t header_size = get<uint64_t>(file, 12);
  if (header_size > file.size() - kPrefix - 8)
    fail("{}: {} is truncated: its header claims {} bytes but the file has {}", context, path, header_size,
         file.size());
  const uint64_t stored = get<uint64_t>(file, file.size() - 8);
  if (stored != fnv1a64(file.data(), file.size() - 8))
    fail("{}: {} is corrupted: its checksum does not match its contents (truncated or changed bytes)", context, path);
  const size_t data_begin = kPrefix + header_size;
  return {get<uint32_t>(file, 8), std::string_view(file).substr(kPrefix, header_size), data_begin,
          file.size() - 8 - data_begin};
}

json write_tensor(const torch::Tensor& tensor, std::string& data, const std::string& name, const char* context) {
  auto cpu = tensor.detach().to(torch::kCPU).contiguous();
  const char* dtype = dtype_name(cpu.scalar_type());
  if (!dtype)
    fail("{}: tensor \"{}\" has dtype {}, which a checkpoint cannot hold", context, name,
         c10::toString(cpu.scalar_type()));
  const size_t nbytes = cpu.numel() * cpu.element_size();
  json entry = {{"dtype", dtype}, {"shape", cpu.sizes().vec()}, {"offset", data.size()}, {"nbytes", nbytes}};
  data.append(static_cast<const char*>(cpu.data_ptr()), nbytes);
  return entry;
}

torch::Tensor TensorData::read(const json& entry, const torch::Tensor& like, const std::string& what) const {
  try {
    // Checked before converting: a float such as 1e308 does not convert to an integer.
    if (!entry.is_object() || !entry.contains("shape") || !entry.contains("dtype") || !entry.contains("offset") ||
        !entry.contains("nbytes"))
      fail("{}: {}: {} must be {{\"dtype\", \"shape\", \"offset\", \"nbytes\"}}, got {}", context, path, what,
           detail::excerpt(entry));
    const json& shape_json = entry.at("shape");
    if (!shape_json.is_array() ||
        !std::all_of(shape_json.begin(), shape_json.end(), [](const json& v) { return v.is_number_integer(); }) ||
        !entry.at("offset").is_number_unsigned() || !entry.at("nbytes").is_number_unsigned() ||
        !entry.at("dtype").is_string())
      fail(
          "{}: {}: {} is malformed: its shape must be an array of integers, its dtype a string and its offset "
          "and "
          "nbytes non-negative integers",
          context, path, what);
    const auto shape = shape_json.get<std::vector<int64_t>>();
    const auto dtype = entry.at("dtype").get<std::string>();
    const auto offset = entry.at("offset").get<uint64_t>(), nbytes = entry.at("nbytes").get<uint64_t>();
    if (!like.sizes().equals(shape))
      fail("{}: {}: {} has shape [{}] in the file but {} needs [{}]", context, path, what, fmt::join(shape, ", "),
           structure, fmt::join(like.sizes(), ", "));
    if (dtype != dtype_name(like.scalar_type()))
      fail("{}: {}: {} is {} in the file but {} says {}", context, path, what, dtype, dtype_source,
           dtype_name(like.scalar_type()));
    if (nbytes != static_cast<uint64_t>(like.numel() * like.element_size()) || offset > size || nbytes > size - offset)
      fail("{}: {}: {} has an inconsistent byte range", context, path, what);
    return torch::from_blob(const_cast<char*>(file.data() + begin + offset), like.sizes(),
                            torch::TensorOptions().dtype(like.scalar_type()));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("{}: {}: {} is malformed: {}", context, path, what, e.what());
  }
}

void read_tensor_table(const json& table, const TensorData& data,
                       const std::vector<std::pair<std::string, torch::Tensor>>& expected, const std::string& where,
                       const char* structure) {
  std::map<std::string, const json*> saved;
  for (const auto& entry : table) {
    if (!entry.is_object() || !entry.contains("name") || !entry.at("name").is_string())
      fail("{} has a malformed tensor entry {}", where, detail::excerpt(entry));
    if (!saved.emplace(entry.at("name").get<std::string>(), &entry).second)
      fail("{} holds tensor \"{}\" twice", where, entry.at("name").get<std::string>());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : expected) {
    auto it = saved.find(name);
    if (it == saved.end()) fail("{} lacks tensor \"{}\" that {} needs", where, name, structure);
    torch::Tensor into = tensor;
    into.copy_(data.read(*it->second, tensor, fmt::format("tensor \"{}\"", name)));
    saved.erase(it);
  }
  if (!saved.empty()) fail("{} holds tensor \"{}\", which {} does not have", where, saved.begin()->first, structure);
}

}  // namespace detail
}  // namespace connex
