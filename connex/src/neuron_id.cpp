#include "connex/neuron_id.h"

#include <charconv>
#include <ostream>

#include "connex/error.h"
#include "file_io.h"
#include "utf8.h"

namespace connex {

std::string NeuronId::str() const {
  if (is_integer()) return std::to_string(as_integer());
  // Escaped as messages escape any text, whole: a message stays one line of
  // valid UTF-8 whatever the id (one not yet checked, or one refused). A
  // backslash or quote is escaped first, so that the id typed as h\t1 and
  // the one holding a tab (printed "h\t1") never look alike, nor a quote
  // inside the id like its end.
  std::string text;
  for (char c : as_string()) {
    if (c == '\\' || c == '"') text += '\\';
    text += c;
  }
  return "\"" + printable(text, std::string::npos) + "\"";
}

std::optional<std::string> id_text_problem(const std::string& text) {
  if (text.empty()) return std::string("is empty");
  for (size_t i = 0; i < text.size();) {
    const auto [len, code] = utf8_char_at(text, i);
    if (len == 0)  // the sequence starting here is none
      return fmt::format("is not valid UTF-8 (byte 0x{:02x} at offset {})", static_cast<unsigned char>(text[i]), i);
    if (code < 0x20 || (code >= 0x7F && code <= 0x9F))
      return fmt::format("contains the control character U+{:04X} at offset {}", code, i);
    if (code == 0xFFFE || code == 0xFFFF)
      return fmt::format("contains the noncharacter U+{:04X} at offset {}", code, i);
    i += len;
  }
  return std::nullopt;
}

void check_id_text(const NeuronId& id, const std::string& context) {
  if (!id.is_integer())
    if (auto problem = id_text_problem(id.as_string()))
      fail("{}: neuron {} {}; string ids must be non-empty, printable UTF-8 text", context, id, *problem);
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
  // from_chars takes no white space and no '+' (stoll took both), but leading
  // zeros: "012" (or "-0") would be 12 (0) here, 10 to C and another key in JSON.
  const size_t digits = text.size() - (!text.empty() && text[0] == '-');
  if (digits == 0 || (text[text.size() - digits] == '0' && text != "0")) return std::nullopt;  // "-0" too
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
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
