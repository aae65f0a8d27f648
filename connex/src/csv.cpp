#include "connex/csv.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <algorithm>

#include "connex/error.h"
#include "connex/file_io.h"

namespace connex {

namespace {

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> cells;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    cells.push_back(trim(line.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return cells;
}

}  // namespace

int64_t CsvTable::column_index(const std::string& name) const {
  for (size_t i = 0; i < columns.size(); ++i)
    if (columns[i] == name) return static_cast<int64_t>(i);
  return -1;
}

namespace {

// The header row's column names; `pos` moves past it and `line_no` counts the lines read.
std::vector<std::string> read_header(const std::string& text, const std::string& source, size_t& pos, int64_t& line_no) {
  // A UTF-8 byte-order mark (spreadsheets write one) is not part of the first column's name.
  pos = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (trim(line).empty()) {
      if (end == text.size()) break;
      continue;
    }
    std::vector<std::string> columns;
    for (auto& c : split(line)) {
      if (c.size() >= 2 && c.front() == '"' && c.back() == '"') c = c.substr(1, c.size() - 2);
      if (c.empty()) fail("{}:{}: the header has an empty column name (column {})", source, line_no, columns.size() + 1);
      if (std::find(columns.begin(), columns.end(), c) != columns.end())
        fail("{}:{}: the header names column \"{}\" twice", source, line_no, c);
      columns.push_back(c);
    }
    return columns;
  }
  fail("{}: the file is empty (no header row)", source);
}

// A cell as a finite number, or the error naming file, line and column.
double parse_number(const std::string& cell, const std::string& source, int64_t line_no, size_t j, const std::string& column) {
  char* stop = nullptr;
  errno = 0;
  const double v = cell.empty() ? 0.0 : std::strtod(cell.c_str(), &stop);
  // ERANGE on underflow still yields a usable (subnormal or zero) value; on overflow it is ±HUGE_VAL.
  if (cell.empty() || stop != cell.c_str() + cell.size() || (errno == ERANGE && std::abs(v) == HUGE_VAL))
    fail("{}:{}: column {} (\"{}\"): \"{}\" is not a number", source, line_no, j + 1, column, cell);
  if (!std::isfinite(v)) fail("{}:{}: column {} (\"{}\"): {} is not a finite number", source, line_no, j + 1, column, cell);
  return v;
}

}  // namespace

double CsvTable::number(size_t row, size_t column) const {
  if (text[column].empty()) return rows[row][column];
  return parse_number(text[column][row], source, row_lines[row], column, columns[column]);
}

std::vector<std::string> csv_columns(const std::string& text, const std::string& source) {
  size_t pos = 0;
  int64_t line_no = 0;
  return read_header(text, source, pos, line_no);
}

CsvTable parse_csv(const std::string& text, const std::string& source, const std::vector<std::string>& text_columns) {
  CsvTable table;
  table.source = source;
  size_t pos = 0;
  int64_t line_no = 0;
  table.columns = read_header(text, source, pos, line_no);
  std::vector<bool> as_text(table.columns.size(), false);
  for (const auto& name : text_columns) {
    const int64_t j = table.column_index(name);
    if (j < 0) fail("{}: unknown column \"{}\"", source, name);
    as_text[j] = true;
  }
  table.text.resize(table.columns.size());
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (trim(line).empty()) {
      if (end == text.size()) break;
      continue;
    }
    auto cells = split(line);
    if (cells.size() != table.columns.size())
      fail("{}:{}: expected {} columns, got {}", source, line_no, table.columns.size(), cells.size());
    std::vector<double> row(cells.size());
    for (size_t j = 0; j < cells.size(); ++j) {
      const std::string& cell = cells[j];
      if (as_text[j]) {
        row[j] = NAN;
        table.text[j].push_back(cell);
        continue;
      }
      const double v = parse_number(cell, source, line_no, j, table.columns[j]);
      row[j] = v;
    }
    table.rows.push_back(std::move(row));
    table.row_lines.push_back(line_no);
    if (end == text.size()) break;
  }
  if (table.rows.empty()) fail("{}: the file has a header but no data rows", source);
  return table;
}

CsvTable read_csv(const std::string& path) { return parse_csv(read_file(path, "read_csv()"), path); }

}  // namespace connex
