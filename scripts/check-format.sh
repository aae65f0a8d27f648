#!/usr/bin/env bash
# Fails, naming the files, when any C++ file of the project is not as
# clang-format (.clang-format: Google style, 120 columns) would write it.
# Fix with: clang-format -i FILE...   Run by ctest as format.check.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || { echo "check-format: clang-format is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.h')
else
  mapfile -t files < <(find apps connex fuzz tests \( -name '*.cpp' -o -name '*.h' \) -print)
fi
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  clang-format --dry-run --Werror "$f" > /dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "check-format: ${#bad[@]} file(s) not formatted: ${bad[*]} (clang-format -i them)" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
