#!/usr/bin/env bash
# Data-parallel scaling on this machine: the same training run (fixed global
# batch) as 1 process and as N processes (Gloo on loopback), each given an
# equal share of the cores. Prints steps/s, the speed-up and the scaling
# efficiency (speed-up / N), all measured in this one run.
#   bash scripts/bench-distributed.sh [N=2] [epochs=40]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2}
EPOCHS=${2:-40}
CONNEX=${CONNEX:-build/apps/connex}
[ -x "$CONNEX" ] || { echo "bench-distributed: $CONNEX is missing; run scripts/build.sh" >&2; exit 1; }
CORES=$(nproc)
share=$(( CORES / N > 0 ? CORES / N : 1 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 4096 rows, 16 features, 4 targets; an MLP 16 -> 256 -> 256 -> 256 -> 4 (148k connections).
awk 'BEGIN { srand(7); for (j = 0; j < 16; ++j) printf "x%d,", j; print "y0,y1,y2,y3";
             for (i = 0; i < 4096; ++i) { s = 0; for (j = 0; j < 16; ++j) { v = 2 * rand() - 1; s += v * (j % 3 - 1); printf "%.6f,", v }
                                          printf "%.6f,%.6f,%.6f,%.6f\n", sin(s), cos(s), s * s / 16, s / 4 } }' > "$work/data.csv"
cat > "$work/net.json" <<'JSON'
{"graph": {"prebuilt": "MLP", "input_size": 16, "output_size": 4, "width": 256, "depth": 3},
 "options": {"hidden_activation": "relu", "seed": 1}}
JSON

# --threads gives each process its cores; connex hands them to torch's pool or
# to OpenBLAS's (Debian's LibTorch calls the system BLAS), whichever the
# network's path uses, and one thread to the other (CoreShare in
# apps/cli/main.cpp). OPENBLAS_NUM_THREADS only matters to older builds.
run() {  # label, threads, extra train args... -> steps/s
  local label=$1 threads=$2; shift 2
  OPENBLAS_NUM_THREADS=$threads "$CONNEX" --threads "$threads" train "$work/net.json" --data "$work/data.csv" --epochs "$EPOCHS" --batch-size 1024 --lr 0.001 "$@" \
    > "$work/$label.log" 2>&1 || { cat "$work/$label.log" >&2; exit 1; }
  grep -o '[0-9.]* steps/s' "$work/$label.log" | head -1 | cut -d' ' -f1
}

share=$share
one_all=$(run one_all "$CORES")
one_share=$(run one_share "$share")
many=$(run many "$share" --nproc "$N")  # every worker: cores / N threads
echo "data-parallel training: MLP 16-256-256-256-4, global batch 1024, $EPOCHS epochs, $CORES cores, $(uname -m)"
printf '%-44s %10s\n' "configuration" "steps/s"
printf '%-44s %10.1f\n' "1 process, $CORES threads" "$one_all"
printf '%-44s %10.1f\n' "1 process, $share thread(s) (one rank's share)" "$one_share"
printf '%-44s %10.1f\n' "$N processes (Gloo), $share thread(s) each" "$many"
awk -v a="$one_all" -v s="$one_share" -v m="$many" -v n="$N" 'BEGIN {
  printf "speed-up of %d processes over 1 process with all cores: %.2fx (scaling efficiency %.0f%%)\n", n, m / a, 100 * m / a;
  printf "speed-up of %d processes over 1 process with one share:  %.2fx (scaling efficiency %.0f%%)\n", n, m / s, 100 * m / s / n }'
