#pragma once
// A strict numeric CSV reader for training data: a header row of column
// names, then rows of numbers. Errors name the file, line and column:
//   data.csv:7: column 3 ("petal_width"): "abc" is not a number
#include <string>
#include <vector>

namespace connex {

struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;  // rows[i][j]: row i, column j
  std::vector<int64_t> row_lines;         // the file line of each row, for messages
  std::string source;
  int64_t column_index(const std::string& name) const;  // -1 when absent
};

// Parses text (comma-separated; blank lines skipped; quotes around header
// names allowed). Rejects NaN/inf cells, short or long rows, empty tables.
CsvTable parse_csv(const std::string& text, const std::string& source = "csv");
CsvTable read_csv(const std::string& path);

}  // namespace connex
