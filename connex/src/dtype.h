#pragma once
// The dtypes a network can hold, one row each: the name configs and
// checkpoints write, the bytes per element and the largest finite value.
#include <array>
#include <cstddef>
#include <limits>
#include <string>

#include <c10/core/ScalarType.h>
#include <fmt/format.h>

namespace connex {

struct DtypeInfo {
  const char* name;
  c10::ScalarType type;
  size_t size;  // bytes per element
  double max;   // largest finite value; the lowest is -max
};

// In the order messages list them.
inline constexpr std::array<DtypeInfo, 4> kDtypes = {{
    {"float32", c10::ScalarType::Float, 4, static_cast<double>(std::numeric_limits<float>::max())},
    {"float64", c10::ScalarType::Double, 8, std::numeric_limits<double>::max()},
    {"float16", c10::ScalarType::Half, 2, 65504.0},
    {"bfloat16", c10::ScalarType::BFloat16, 2, 3.3895313892515355e38},  // float's max rounds up to inf
}};

// The row of a network dtype; null for any other scalar type or name.
inline const DtypeInfo* find_dtype(c10::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return &d;
  return nullptr;
}
inline const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

// A network dtype's name ("float32"); null for any other scalar type.
inline const char* dtype_name(c10::ScalarType type) {
  const DtypeInfo* info = find_dtype(type);
  return info ? info->name : nullptr;
}

// The dtypes connex's own CPU kernels (the fused network, the techniques')
// compute in: float32 and float64.
inline bool kernel_dtype(c10::ScalarType type) {
  return type == c10::ScalarType::Float || type == c10::ScalarType::Double;
}

// Why a network of this dtype cannot run forward on the CPU ("" where it
// can): LibTorch 1.13 has no float16 CPU kernels for its operations.
inline std::string cpu_forward_refusal(c10::ScalarType type) {
  return type == c10::ScalarType::Half
             ? "float16 does not run on the CPU in LibTorch 1.13; use bfloat16, float32 or float64"
             : "";
}

// "float32, float64, float16, bfloat16", for messages.
inline std::string dtype_names() {
  std::string names;
  for (const auto& d : kDtypes) names += names.empty() ? d.name : fmt::format(", {}", d.name);
  return names;
}

}  // namespace connex
