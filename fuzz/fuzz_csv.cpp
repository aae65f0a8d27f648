// Fuzz target: the CSV reader (connex/csv.h).
//
// bytes -> parse_csv. On success: at least one column and one row, every row
// as wide as the header, every cell finite, one line number per row and
// strictly increasing, column_index consistent with the header.
#include <cmath>

#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace connex_fuzz;
  const std::string text(reinterpret_cast<const char*>(data), size);
  connex::CsvTable table;
  if (!guarded("parse_csv", [&] { table = connex::parse_csv(text, "fuzz.csv"); })) return 0;
  FUZZ_CHECK(!table.columns.empty() && !table.rows.empty(), "an accepted table is empty");
  FUZZ_CHECK(table.row_lines.size() == table.rows.size(), "%zu line numbers for %zu rows", table.row_lines.size(),
             table.rows.size());
  for (size_t i = 0; i < table.rows.size(); ++i) {
    FUZZ_CHECK(table.rows[i].size() == table.columns.size(), "row %zu has %zu cells for %zu columns", i,
               table.rows[i].size(), table.columns.size());
    for (double v : table.rows[i]) FUZZ_CHECK(std::isfinite(v), "row %zu holds a non-finite value", i);
    FUZZ_CHECK(table.row_lines[i] >= 2 && (i == 0 || table.row_lines[i] > table.row_lines[i - 1]),
               "row %zu has line number %lld", i, static_cast<long long>(table.row_lines[i]));
  }
  for (size_t j = 0; j < table.columns.size(); ++j) {
    FUZZ_CHECK(!table.columns[j].empty(), "column %zu has an empty name", j);
    FUZZ_CHECK(table.column_index(table.columns[j]) == static_cast<int64_t>(j), "column \"%s\" is not unique",
               table.columns[j].c_str());
  }
  return 0;
}
