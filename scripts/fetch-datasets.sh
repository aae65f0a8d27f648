#!/usr/bin/env bash
# Extracts the real tabular data sets that Debian's python3-sklearn package
# ships (iris, wine, breast cancer, and the 8×8 digit images as digits.csv:
# 64 pixel columns p0..p63 with values 0..16, then the digit) into DIR (default build/datasets), without
# installing the package and its dependencies. Used by the CLI tests and the
# classification figures in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/datasets}
mkdir -p "$dir"
[ -s "$dir/iris.csv" ] && [ -s "$dir/wine_data.csv" ] && [ -s "$dir/breast_cancer.csv" ] && [ -s "$dir/digits.csv" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download python3-sklearn >/dev/null 2>&1) || { echo "fetch-datasets: cannot download python3-sklearn; dataset tests will skip" >&2; exit 0; }
dpkg-deb --fsys-tarfile "$tmp"/python3-sklearn_*.deb |
  tar -x -C "$tmp" --wildcards './usr/lib/python3/dist-packages/sklearn/datasets/data/*.csv' \
    './usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz'
src="$tmp/usr/lib/python3/dist-packages/sklearn/datasets/data"
for f in iris.csv wine_data.csv breast_cancer.csv; do
  cp "$src/$f" "$dir/$f"
done
# digits.csv.gz has no header row; the CLI's CSV reader wants one.
{
  for i in $(seq 0 63); do printf 'p%d,' "$i"; done
  echo digit
  gzip -dc "$src/digits.csv.gz"
} >"$dir/digits.csv.tmp"
mv "$dir/digits.csv.tmp" "$dir/digits.csv"
echo "fetch-datasets: $(ls "$dir" | tr '\n' ' ')in $dir"
