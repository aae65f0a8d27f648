#pragma once
// Small file helpers shared by the loaders and writers.
#include <string>

namespace connex {

// Whole file as bytes; throws connex::Error naming the file.
std::string read_file(const std::string& path, const char* context);
// Writes to a temporary file beside `path`, flushes and fsyncs it, then
// renames it over `path`: a crash or error leaves the previous file intact.
void write_file_atomically(const std::string& path, const std::string& bytes, const char* context);

// FNV-1a, 64 bit: any single changed byte changes it.
uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0xcbf29ce484222325ull);

}  // namespace connex
