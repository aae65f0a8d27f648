#!/usr/bin/env bash
# The README's dynamic sparse training table: dense MLP against a static
# sparse network, SET and RigL at several densities, validation accuracy as
# mean ± std over seeds, on a real table (scripts/fetch-datasets.sh).
#   scripts/sparse-results.sh [BUILD_DIR] [SEEDS] [EPOCHS] [digits|breast_cancer]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seeds=${2:-5}
epochs=${3:-30}
set_name=${4:-digits}
connex="$build/apps/connex"
case "$set_name" in
  # file, inputs, classes, hidden width, batch, rewire every, description, features (raw or --standardize)
  digits) spec=(digits.csv 64 10 256 64 100 "digits (1,797 images 8×8, 10 classes)" raw) ;;
  breast_cancer) spec=(breast_cancer.csv 30 2 128 32 50 "breast cancer (569 × 30, 2 classes)" --standardize) ;;
  *) echo "sparse-results: expected digits or breast_cancer, got $set_name" >&2; exit 2 ;;
esac
bash scripts/fetch-datasets.sh "$build/datasets" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data="$build/datasets/${spec[0]}"
cat >"$work/mlp.json" <<JSON
{"graph": {"prebuilt": "MLP", "input_size": ${spec[1]}, "output_size": ${spec[2]}, "width": ${spec[3]}, "depth": 2},
 "options": {"hidden_activation": "relu"}}
JSON
common=(--data "$data" --task classification --val-split 0.3 --batch-size "${spec[4]}" --lr 0.003)
[ "${spec[7]}" = --standardize ] && common+=(--standardize)

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
echo "| 100 % (dense MLP) | $(( spec[1] * spec[3] + spec[3] * spec[3] + spec[3] * spec[2] )) | $(row dense) | | |"
for d in 0.2 0.1 0.05 0.02; do
  conns=$("$connex" --threads 1 train "$work/mlp.json" "${common[@]}" --epochs 0 --density "$d" --seed 1 2>&1 |
            sed -n "s/.*network of \([0-9]*\) connections.*/\1/p" | head -1)
  echo "| $(awk -v d="$d" 'BEGIN{printf "%g %%", 100*d}') | ${conns:-?} | $(row static --density "$d") |" \
       "$(row set --density "$d" --rewire set --rewire-every "${spec[5]}") |" \
       "$(row rigl --density "$d" --rewire rigl --rewire-every "${spec[5]}") |"
done
echo
echo "${spec[6]}, 70/30 split, MLP ${spec[1]}-${spec[3]}-${spec[3]}-${spec[2]} relu, Adam 0.003, batch ${spec[4]},"
echo "$epochs epochs, $seeds seeds; rewiring every ${spec[5]} steps, drop fraction 0.3 decaying by a cosine to 0 at 75 % of the run."
