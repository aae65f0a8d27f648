#pragma once
// A neuron's label: an integer or a string, exactly one kind per graph.
// Labels are what users see and what parameters are keyed by across edits;
// dense integer positions are an internal detail of a compiled Topology.
#include <cstdint>
#include <functional>
#include <optional>
#include <iosfwd>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

namespace connex {

class NeuronId {
 public:
  enum class Kind { Integer, String };

  NeuronId() : value_(int64_t{0}) {}
  NeuronId(int value) : value_(int64_t{value}) {}              // NOLINT: implicit by design
  NeuronId(long value) : value_(int64_t{value}) {}             // NOLINT
  NeuronId(long long value) : value_(int64_t{value}) {}        // NOLINT
  NeuronId(std::string value) : value_(std::move(value)) {}    // NOLINT
  NeuronId(const char* value) : value_(std::string(value)) {}  // NOLINT

  Kind kind() const { return value_.index() == 0 ? Kind::Integer : Kind::String; }
  bool is_integer() const { return kind() == Kind::Integer; }
  int64_t as_integer() const { return std::get<int64_t>(value_); }
  const std::string& as_string() const { return std::get<std::string>(value_); }

  // Integers print bare, strings quoted, so `"7"` and `7` never look alike in a message.
  std::string str() const;
  // The label without quotes, for file formats that store it as text.
  std::string plain() const;

  friend bool operator==(const NeuronId& a, const NeuronId& b) { return a.value_ == b.value_; }
  friend bool operator!=(const NeuronId& a, const NeuronId& b) { return !(a == b); }
  // Integers sort before strings; within a kind, natural order.
  friend bool operator<(const NeuronId& a, const NeuronId& b) { return a.value_ < b.value_; }

  size_t hash() const;

 private:
  std::variant<int64_t, std::string> value_;
};

// Prints str(): `std::cout << id`, as messages show it.
std::ostream& operator<<(std::ostream& out, const NeuronId& id);

const char* kind_name(NeuronId::Kind kind);
// Why a string id is not acceptable text, or nothing when it is: ids must be
// non-empty (an empty one is an unset variable, not a name) and valid UTF-8
// without control characters (U+0000-U+001F, U+007F-U+009F) or the
// noncharacters U+FFFE and U+FFFF, so that every export format (DOT,
// GraphML, node-link JSON) writes and reads them back unchanged.
std::optional<std::string> id_text_problem(const std::string& text);
// Throws "<context>: neuron <id> <problem>; string ids must be ..." when `id`
// is a string whose text id_text_problem() refuses.
void check_id_text(const NeuronId& id, const std::string& context);

// A directed connection from `first` to `second`.
using Edge = std::pair<NeuronId, NeuronId>;

std::string edge_str(const Edge& edge);  // "7 -> 3"

struct NeuronIdHash {
  size_t operator()(const NeuronId& id) const { return id.hash(); }
};
struct EdgeHash {
  size_t operator()(const Edge& e) const { return e.first.hash() * 1000003u ^ e.second.hash(); }
};

// The whole of `text` as a base-10 integer in int64_t's range: digits, an
// optional leading '-', no leading 0 ("12", "-3", "0" yes; "12a", "", "x",
// " 12", "+12", "012", "1e3", "99999999999999999999" no).
std::optional<int64_t> parse_integer(const std::string& text);

// "[1, 2, 3]" — for messages.
std::string join_ids(const std::vector<NeuronId>& ids);

}  // namespace connex

template <>
struct fmt::formatter<connex::NeuronId> : fmt::formatter<std::string> {
  template <typename Ctx>
  auto format(const connex::NeuronId& id, Ctx& ctx) const {
    return fmt::formatter<std::string>::format(id.str(), ctx);
  }
};
