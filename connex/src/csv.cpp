#include "connex/csv.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "connex/error.h"
#include "decimal.h"
#include "file_io.h"

namespace connex {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t'; }

// One record (RFC 4180) starting at `pos`: a quoted cell may hold commas,
// doubled quotes ("") and line breaks; spaces around a cell are dropped; a
// line ends with \n, \r\n or a lone \r. Cells are copied once, straight
// from the text (a 200 MB line is not copied line, then cells, then trimmed).
// Returns false at the end of the text; `line_no` counts every line break,
// `first_line` is the record's own line. `blank`: nothing but spaces.
bool next_record(std::string_view text, size_t& pos, int64_t& line_no, const std::string& source,
                 std::vector<std::string>& cells, int64_t& first_line, bool& blank) {
  if (pos >= text.size()) return false;
  cells.clear();
  first_line = ++line_no;
  blank = true;
  for (;;) {
    while (pos < text.size() && is_space(text[pos])) ++pos;
    if (pos < text.size() && text[pos] == '"') {
      blank = false;
      const int64_t opened = line_no;
      std::string cell;
      ++pos;
      for (;;) {
        const size_t quote = text.find('"', pos);
        if (quote == std::string_view::npos)
          fail("{}:{}: column {}: the quoted cell is never closed (a quote inside a quoted cell is written \"\")",
               source, opened, cells.size() + 1);
        for (size_t i = pos; i < quote; ++i)  // line breaks inside the cell still count as lines
          line_no += text[i] == '\n' || (text[i] == '\r' && (i + 1 >= text.size() || text[i + 1] != '\n'));
        cell.append(text.substr(pos, quote - pos));
        pos = quote + 1;
        if (pos < text.size() && text[pos] == '"') {
          cell += '"';
          ++pos;
          continue;
        }
        break;
      }
      while (pos < text.size() && is_space(text[pos])) ++pos;
      if (pos < text.size() && text[pos] != ',' && text[pos] != '\n' && text[pos] != '\r')
        fail(
            "{}:{}: column {}: text after the closing quote of a quoted cell (a quote inside a quoted cell is written "
            "\"\")",
            source, line_no, cells.size() + 1);
      cells.push_back(std::move(cell));
    } else {
      size_t end = text.find_first_of(",\r\n", pos);
      if (end == std::string_view::npos) end = text.size();
      size_t last = end;
      while (last > pos && is_space(text[last - 1])) --last;
      cells.emplace_back(text.substr(pos, last - pos));
      pos = end;
    }
    if (pos < text.size() && text[pos] == ',') {
      ++pos;
      continue;
    }
    blank = blank && cells.size() == 1 && cells[0].empty();
    if (pos < text.size() && text[pos] == '\r') {
      ++pos;
      if (pos < text.size() && text[pos] == '\n') ++pos;  // \r\n
    } else if (pos < text.size() && text[pos] == '\n') {
      ++pos;
    }
    return true;
  }
}

}  // namespace

int64_t CsvTable::column_index(const std::string& name) const {
  for (size_t i = 0; i < columns.size(); ++i)
    if (columns[i] == name) return static_cast<int64_t>(i);
  return -1;
}

namespace {

// The header row's column names; `pos` moves past it and `line_no` counts the lines read.
std::vector<std::string> read_header(const std::string& text, const std::string& source, size_t& pos,
                                     int64_t& line_no) {
  // A UTF-8 byte-order mark (spreadsheets write one) is not part of the first column's name.
  pos = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  std::vector<std::string> cells;
  int64_t first_line = 0;
  bool blank = false;
  while (next_record(text, pos, line_no, source, cells, first_line, blank)) {
    if (blank) continue;
    std::vector<std::string> columns;
    std::unordered_set<std::string> seen;  // linear in the columns: a header may have a million
    for (auto& c : cells) {
      if (c.empty())
        fail("{}:{}: the header has an empty column name (column {})", source, first_line, columns.size() + 1);
      if (!seen.insert(c).second) fail("{}:{}: the header names column \"{}\" twice", source, first_line, printable(c));
      columns.push_back(std::move(c));
    }
    return columns;
  }
  fail("{}: the file is empty (no header row)", source);
}

enum class Cell { Number, NotANumber, NotFinite, OutOfRange };

// What a cell holds; the value in `v` when it is a finite number.
Cell read_cell(const std::string& cell, double& v) {
  const auto number = detail::read_decimal(cell);
  v = number ? number->value : 0.0;
  // Underflow still yields a usable (subnormal or zero) value.
  if (!number) return Cell::NotANumber;
  if (number->overflow) return Cell::OutOfRange;
  return std::isfinite(v) ? Cell::Number : Cell::NotFinite;
}

// "1,5": a number written with a decimal comma (a quoted cell may hold one).
bool decimal_comma(const std::string& cell) {
  const size_t comma = cell.find(',');
  if (comma == std::string::npos || comma == 0 || comma + 1 == cell.size() ||
      cell.find(',', comma + 1) != std::string::npos)
    return false;
  double v = 0;
  std::string point = cell;
  point[comma] = '.';
  return read_cell(point, v) == Cell::Number;
}

// Every record has the header's width. A row one cell too wide in which
// two neighbouring cells read as one number with a decimal comma ("4" then
// "5": 4,5) most likely held such a number unquoted: the message says so,
// with that pair.
void check_width(const std::string& source, int64_t line, size_t columns, const std::vector<std::string>& cells) {
  if (cells.size() == columns) return;
  std::string hint;
  for (size_t j = 0; cells.size() == columns + 1 && j + 1 < cells.size() && hint.empty(); ++j)
    if (decimal_comma(cells[j] + "," + cells[j + 1]))
      hint = fmt::format(" (if {0},{1} in columns {2}-{3} is one number, write it with a decimal point: {0}.{1})",
                         printable(cells[j], 20), printable(cells[j + 1], 20), j + 1, j + 2);
  fail("{}:{}: expected {} columns, got {}{}", source, line, columns, cells.size(), hint);
}

// A cell as a finite number, or the error naming file, line and column.
double parse_number(const std::string& cell, const std::string& source, int64_t line_no, size_t j,
                    const std::string& column) {
  double v = 0;
  const Cell kind = read_cell(cell, v);
  // Cells are quoted and cut in messages: a NUL cut the message short, a 200 MB cell was echoed whole.
  if (kind == Cell::NotANumber)
    fail("{}:{}: column {} (\"{}\"): \"{}\" is not a number{}", source, line_no, j + 1, printable(column),
         printable(cell), decimal_comma(cell) ? " (write decimals with a point: connex reads 1.5, not 1,5)" : "");
  if (kind == Cell::NotFinite)
    fail("{}:{}: column {} (\"{}\"): {} is not a finite number", source, line_no, j + 1, printable(column),
         printable(cell));
  if (kind == Cell::OutOfRange)
    fail("{}:{}: column {} (\"{}\"): {} is beyond the range of a double (about 1.8e308)", source, line_no, j + 1,
         printable(column), printable(cell));
  return v;
}

}  // namespace

bool CsvTable::is_text(size_t column) const { return column < text.size() && !text[column].empty(); }

double CsvTable::number(size_t row, size_t column) const {
  if (!is_text(column)) return rows[row][column];
  return parse_number(text[column][row], source, row_lines[row], column, columns[column]);
}

std::optional<double> CsvTable::try_number(size_t row, size_t column) const {
  if (!is_text(column)) return rows[row][column];
  double v = 0;
  return read_cell(text[column][row], v) == Cell::Number ? std::optional<double>(v) : std::nullopt;
}

std::vector<std::string> csv_columns(const std::string& text, const std::string& source) {
  size_t pos = 0;
  int64_t line_no = 0;
  auto columns = read_header(text, source, pos, line_no);
  // The first record too: a first line that is not a header (sklearn's
  // "rows,features,class names") shows here, not as columns that do not fit.
  std::vector<std::string> cells;
  int64_t first_line = 0;
  bool blank = false;
  while (next_record(text, pos, line_no, source, cells, first_line, blank))
    if (!blank) {
      check_width(source, first_line, columns.size(), cells);
      break;
    }
  return columns;
}

CsvTable parse_csv(const std::string& text, const std::string& source, const std::vector<std::string>& text_columns) {
  CsvTable table;
  table.source = source;
  size_t pos = 0;
  int64_t line_no = 0;
  table.columns = read_header(text, source, pos, line_no);
  std::vector<bool> as_text(table.columns.size(), false);
  std::unordered_map<std::string, size_t> index;  // names are unique (read_header)
  for (size_t j = 0; j < table.columns.size(); ++j) index.emplace(table.columns[j], j);
  for (const auto& name : text_columns) {
    const auto it = index.find(name);
    if (it == index.end()) fail("{}: unknown column \"{}\"", source, name);
    as_text[it->second] = true;
  }
  table.text.resize(table.columns.size());
  std::vector<std::string> cells;
  int64_t first_line = 0;
  bool blank = false;
  while (next_record(text, pos, line_no, source, cells, first_line, blank)) {
    if (blank) continue;
    check_width(source, first_line, table.columns.size(), cells);
    std::vector<double> row(cells.size());
    for (size_t j = 0; j < cells.size(); ++j) {
      if (as_text[j]) {
        row[j] = NAN;
        table.text[j].push_back(std::move(cells[j]));
        continue;
      }
      row[j] = parse_number(cells[j], source, first_line, j, table.columns[j]);
    }
    table.rows.push_back(std::move(row));
    table.row_lines.push_back(first_line);
  }
  if (table.rows.empty()) {
    // One short line ending in .csv is more likely a path given where the text goes.
    const bool path_like =
        text.find('\n') == std::string::npos && text.size() > 4 && text.compare(text.size() - 4, 4, ".csv") == 0;
    fail("{}: the file has a header but no data rows{}", source,
         path_like
             ? fmt::format(" (parse_csv() takes a file's text; read_csv(\"{}\") reads the file)", printable(text, 80))
             : "");
  }
  return table;
}

CsvTable read_csv(const std::string& path) { return parse_csv(read_file(path, "read_csv()"), path); }

}  // namespace connex
