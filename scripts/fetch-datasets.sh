#!/usr/bin/env bash
# Extracts the real tabular data sets that Debian's python3-sklearn package
# ships (iris, wine, breast cancer, and the 8×8 digit images as digits.csv:
# 64 pixel columns p0..p63 with values 0..16, then the digit) into DIR (default build/datasets), without
# installing the package and its dependencies. Used by the CLI tests and the
# classification figures in the README. Each file gets the header row the
# CLI's CSV reader wants: sklearn's tables start with "rows,features,class
# names", which becomes f0,...,f(n-1),label; the class column holds 0, 1, ...
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/datasets}
mkdir -p "$dir"
# Done when every file is there with its header row (an older extraction kept sklearn's first line).
headed() { [ -s "$dir/$1" ] && [ "$(head -c 3 "$dir/$1")" = "$2" ]; }
headed iris.csv f0, && headed wine_data.csv f0, && headed breast_cancer.csv f0, && headed digits.csv p0, && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download python3-sklearn >/dev/null 2>&1) || { echo "fetch-datasets: cannot download python3-sklearn; dataset tests will skip" >&2; exit 0; }
dpkg-deb --fsys-tarfile "$tmp"/python3-sklearn_*.deb |
  tar -x -C "$tmp" --wildcards './usr/lib/python3/dist-packages/sklearn/datasets/data/*.csv' \
    './usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz'
src="$tmp/usr/lib/python3/dist-packages/sklearn/datasets/data"
for f in iris.csv wine_data.csv breast_cancer.csv; do
  features=$(head -n 1 "$src/$f" | cut -d, -f2)
  {
    for i in $(seq 0 $((features - 1))); do printf 'f%d,' "$i"; done
    echo label
    tail -n +2 "$src/$f"
  } >"$dir/$f.tmp"
  mv "$dir/$f.tmp" "$dir/$f"
done
# digits.csv.gz has no header row; the CLI's CSV reader wants one.
{
  for i in $(seq 0 63); do printf 'p%d,' "$i"; done
  echo digit
  gzip -dc "$src/digits.csv.gz"
} >"$dir/digits.csv.tmp"
mv "$dir/digits.csv.tmp" "$dir/digits.csv"
echo "fetch-datasets: $(ls "$dir" | tr '\n' ' ')in $dir"
