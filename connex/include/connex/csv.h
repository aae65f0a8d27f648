#pragma once
// A strict numeric CSV reader for training data: a header row of column
// names, then rows of numbers. Errors name the file, line and column:
//   data.csv:7: column 3 ("petal_width"): "abc" is not a number
#include <optional>
#include <string>
#include <vector>

namespace connex {

struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;       // rows[i][j]: row i, column j (NaN in a text column)
  std::vector<std::vector<std::string>> text;  // text[j]: every cell of a text column j; empty otherwise
  std::vector<int64_t> row_lines;              // the file line of each row, for messages
  std::string source;
  int64_t column_index(const std::string& name) const;  // -1 when absent
  // A cell as a number; a text column's cell is parsed now, with the same
  // rules and message as a number column's. try_number: empty when it is none.
  double number(size_t row, size_t column) const;
  std::optional<double> try_number(size_t row, size_t column) const;
  bool is_text(size_t column) const;  // kept as text (text[column] holds its cells)
};

// Parses text: comma-separated, RFC 4180 quoting (a quoted cell may hold
// commas, line breaks and "" for a quote; "1.5" is a number), lines ending in
// \n, \r\n or \r, blank lines skipped, spaces around cells dropped.
// Rejects NaN/inf cells, short or long rows, empty tables.
// The columns named in `text_columns` (class labels) are kept as text, unparsed.
CsvTable parse_csv(const std::string& text, const std::string& source = "csv",
                   const std::vector<std::string>& text_columns = {});
// The header row's column names, read without parsing the rows; the first
// record is checked to have as many cells.
std::vector<std::string> csv_columns(const std::string& text, const std::string& source = "csv");
CsvTable read_csv(const std::string& path);

}  // namespace connex
