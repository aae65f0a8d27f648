#pragma once
// UTF-8 as RFC 3629 defines it, for the text connex keeps in JSON (neuron
// ids, column names, class labels) and echoes in messages. Internal.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace connex {

struct Utf8Char {
  size_t length = 0;  // bytes of the sequence at the position; 0: none is valid there
  uint32_t code = 0;  // its code point
};

// The character at text[i]: a stray or cut byte, an overlong form, a
// surrogate or a code point past U+10FFFF is no character (length 0).
inline Utf8Char utf8_char_at(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return {1, c};
  const size_t length = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (length == 0 || i + length > text.size()) return {};
  uint32_t code = c & (0xFF >> (length + 1));
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return {};
    code = code << 6 | (byte(i + k) & 0x3F);
  }
  const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < least[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return {};
  return {length, code};
}

// The offset of the first byte that starts no valid character, or npos when all of `text` is UTF-8.
inline size_t first_non_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = utf8_char_at(text, i).length;
    if (length == 0) return i;
    i += length;
  }
  return std::string_view::npos;
}

}  // namespace connex
