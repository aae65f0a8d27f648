#pragma once
// Pieces of connex's one-line error messages that several layers write:
// a tensor's shape, the cause a library exception gives, and an operation's
// step named around what it raised. Internal.
#include <exception>
#include <new>
#include <string>

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "connex/error.h"

namespace connex {

// "[2, 3]"
inline std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Library messages can span lines; a connex error is one line.
inline std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  if (text.size() > 300) {
    size_t cut = 300;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // no half character
    text = text.substr(0, cut) + "...";
  }
  return text;
}

// A library exception's message for a connex error: c10::Error's what()
// carries the C++ stack frames, what_without_backtrace() does not.
inline std::string cause_of(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  return one_line(torch_error ? torch_error->what_without_backtrace() : e.what());
}

// Runs one step of a per-level operation (`call`); an error from within it
// (connex's, torch's or the operation's own) is raised again as one line
// naming the caller, the operation, the step and the level:
//   NeuralNetwork::forward(): operation "gain"'s on_preactivation at level 1: ...
// Running out of memory passes as it is.
template <typename Call>
auto in_operation_step(const char* context, const std::string& operation, const char* step, size_t level, Call&& call) {
  try {
    return call();
  } catch (const Error& e) {
    fail("{}: operation \"{}\"'s {} at level {}: {}", context, operation, step, level, e.what());
  } catch (const c10::OutOfMemoryError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    fail("{}: operation \"{}\"'s {} at level {}: {}", context, operation, step, level, cause_of(e));
  }
}

}  // namespace connex
