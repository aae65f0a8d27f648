#include "connex/neuron_id.h"

#include <ostream>

namespace connex {

std::string NeuronId::str() const {
  if (is_integer()) return std::to_string(as_integer());
  // Control bytes shown escaped, so a message stays one line whatever the id.
  std::string out = "\"";
  for (const unsigned char c : as_string())
    out += c < 0x20 || c == 0x7F ? fmt::format("\\x{:02x}", c) : std::string(1, c);
  return out + "\"";
}

std::optional<std::string> id_text_problem(const std::string& text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    // The length of a well-formed UTF-8 sequence starting with c (RFC 3629), 0 when none can.
    const size_t len = c < 0x80                 ? 1
                       : c >= 0xC2 && c <= 0xDF ? 2
                       : c >= 0xE0 && c <= 0xEF ? 3
                       : c >= 0xF0 && c <= 0xF4 ? 4
                                                : 0;
    if (len == 0 || i + len > n) return fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})", c, i);
    uint32_t code = len == 1 ? c : c & (0xFF >> (len + 1));
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80)
        return fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})", p[i + k], i + k);
      code = (code << 6) | (p[i + k] & 0x3F);
    }
    const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < least[len] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
      return fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})", c, i);
    if (code < 0x20 || (code >= 0x7F && code <= 0x9F))
      return fmt::format("contains the control character U+{:04X} at offset {}", code, i);
    if (code == 0xFFFE || code == 0xFFFF)
      return fmt::format("contains the noncharacter U+{:04X} at offset {}", code, i);
    i += len;
  }
  return std::nullopt;
}

std::ostream& operator<<(std::ostream& out, const NeuronId& id) { return out << id.str(); }

std::string NeuronId::plain() const { return is_integer() ? std::to_string(as_integer()) : as_string(); }

size_t NeuronId::hash() const {
  if (is_integer()) return std::hash<int64_t>()(as_integer());
  return std::hash<std::string>()(as_string()) ^ 0x9e3779b97f4a7c15ull;
}

const char* kind_name(NeuronId::Kind kind) { return kind == NeuronId::Kind::Integer ? "an integer" : "a string"; }

std::string edge_str(const Edge& edge) { return edge.first.str() + " -> " + edge.second.str(); }

std::optional<int64_t> parse_integer(const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size() || text.empty()) return std::nullopt;
  return value;
}

std::string join_ids(const std::vector<NeuronId>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += ids[i].str();
  }
  return out + "]";
}

}  // namespace connex
