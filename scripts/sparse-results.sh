#!/usr/bin/env bash
# The README's dynamic sparse training table: dense MLP against a static
# sparse network, SET and RigL at several densities, validation accuracy as
# mean ± std over seeds, on the 8×8 digit images (scripts/fetch-datasets.sh).
#   scripts/sparse-results.sh [BUILD_DIR] [SEEDS] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seeds=${2:-5}
epochs=${3:-30}
connex="$build/apps/connex"
data="$build/datasets/digits.csv"
bash scripts/fetch-datasets.sh "$build/datasets" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/mlp.json" <<'JSON'
{"graph": {"prebuilt": "MLP", "input_size": 64, "output_size": 10, "width": 256, "depth": 2},
 "options": {"hidden_activation": "relu"}}
JSON
common=(--data "$data" --task classification --val-split 0.3 --batch-size 64 --lr 0.003)

# One run: prints its validation accuracy.
run() {
  "$connex" --threads 1 train "$work/mlp.json" "${common[@]}" --epochs "$epochs" "$@" 2>&1 | sed -n 's/.*validation accuracy \([0-9.]*\).*/\1/p' | tail -1
}
# mean ± std (sample) of the numbers on stdin, as percentages.
stats() { awk '{s+=$1; q+=$1*$1; n++} END {m=s/n; v=(n>1)?(q-n*m*m)/(n-1):0; if (v<0) v=0; printf "%.1f ± %.1f", 100*m, 100*sqrt(v)}'; }

row() {  # label, then the flags of the run
  local label=$1; shift
  local accs=""
  for seed in $(seq 1 "$seeds"); do accs+="$(run --seed "$seed" "$@")"$'\n'; done
  local got
  got=$(printf '%s' "$accs" | grep -c . || true)
  [ "$got" = "$seeds" ] || { echo "sparse-results: $label $*: $got of $seeds runs finished" >&2; exit 1; }
  printf '%s' "$accs" | stats
}

echo "| density | connections | static sparse | SET | RigL |"
echo "| --- | --- | --- | --- | --- |"
echo "| 100 % (dense MLP) | 84,480 | $(row dense) | | |"
for d in 0.2 0.1 0.05 0.02; do
  conns=$("$connex" --threads 1 train "$work/mlp.json" "${common[@]}" --epochs 0 --density "$d" --seed 1 2>&1 |
            sed -n "s/.*network of \([0-9]*\) connections.*/\1/p" | head -1)
  echo "| $(awk -v d="$d" 'BEGIN{printf "%g %%", 100*d}') | ${conns:-?} | $(row static --density "$d") |" \
       "$(row set --density "$d" --rewire set) | $(row rigl --density "$d" --rewire rigl) |"
done
echo
echo "digits (1,797 images 8×8, 10 classes), 70/30 split, MLP 64-256-256-10 relu, Adam 0.003, batch 64,"
echo "$epochs epochs, $seeds seeds; rewiring every 100 steps, drop fraction 0.3 decaying by a cosine to 0 at 75 % of the run."
