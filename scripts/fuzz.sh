#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) with clang, libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer into build-fuzz/ (connex itself instrumented;
# LibTorch is not), then runs each target, or the ones named, and prints per
# target the executions, seconds and result.
#
#   bash scripts/fuzz.sh                      # every target, 60 s each
#   bash scripts/fuzz.sh --time 600 edits     # one target, 10 minutes
#   bash scripts/fuzz.sh --runs 1000000 csv   # a fixed number of inputs
#   bash scripts/fuzz.sh --workers 2 --runs 1000000 edits # 2 processes, 500,000 inputs each
#   bash scripts/fuzz.sh --fork 2 --runs 1000000 config   # libFuzzer -fork=2
#   bash scripts/fuzz.sh --build-only
#
# Each target fuzzes a working copy of its seed corpus, build-fuzz/corpus/<target>
# (seeded from tests/fuzz_corpus/<target>, which is never written to; new
# inputs accumulate in the copy between runs). Crashing inputs land in
# build-fuzz/artifacts/<target>/, logs in build-fuzz/logs/<target>.log. To keep
# a finding, copy its input into tests/fuzz_corpus/<target>/ and add a test.
# --workers N runs N independent processes on the shared corpus (-reload=1),
# each with runs/N inputs (or the whole time), logs <target>.<k>.log; the
# executions printed are their sum. For a target whose inputs are slow to run
# (edits, ~10 ms each under ASan) this is far faster than -fork, which
# restarts its jobs, each loading LibTorch and a corpus slice, every few seconds.
# Leaks are not reported: LibTorch keeps global allocations alive until exit.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(config graph_json checkpoint csv edits)
limit=(-max_total_time=60)
fork=""
workers=1
build_only=0
targets=()
while (($#)); do
  case "$1" in
    --time) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    --fork) fork="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (targets: ${all_targets[*]})" >&2; exit 2; }
done

bash scripts/install-deps.sh
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz.sh: installing clang and libclang-rt-dev (libFuzzer)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-dev ||
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev
fi

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCONNEX_BUILD_TESTS=OFF -DCONNEX_BUILD_APPS=OFF -DCONNEX_BUILD_FUZZERS=ON -DCONNEX_FUZZ_ENGINE=libfuzzer >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
((build_only)) && exit 0

mkdir -p build-fuzz/logs
# malloc_context_size=0: no allocation stack per malloc. ASan's stack depot
# grows with every distinct stack and, after ~10 minutes of fuzz_edits, took
# 42% of the time (the rate fell from ~115 to ~40 inputs/s); a report still
# shows where the bad access happened (replay the input for the allocation).
export ASAN_OPTIONS=detect_leaks=0:malloc_context_size=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# One torch thread per process: inputs are tiny, and parallel workers share the cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
summary=()
status=0
for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$t artifacts=build-fuzz/artifacts/$t log=build-fuzz/logs/$t.log
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz_corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  args=(-rss_limit_mb=4096 -timeout=60 -print_final_stats=1 -artifact_prefix="$artifacts/")
  [ -f "fuzz/$t.dict" ] && args+=(-dict="fuzz/$t.dict")
  [ -n "$fork" ] && args+=(-fork="$fork" -ignore_crashes=0)
  each=("${limit[@]}")
  if ((workers > 1)); then
    [[ "${limit[0]}" == -runs=* ]] && each=(-runs=$(( (${limit[0]#-runs=} + workers - 1) / workers )))
    args+=(-reload=1)
  fi
  echo "fuzz.sh: fuzz_$t ${each[*]} ${args[*]} $corpus  x$workers  (log: $log)"
  start=$(date +%s)
  rc=0
  if ((workers > 1)); then
    rm -f "${log%.log}".[0-9]*.log
    pids=()
    for k in $(seq 1 "$workers"); do
      build-fuzz/fuzz/fuzz_"$t" "${each[@]}" "${args[@]}" "$corpus" >"${log%.log}.$k.log" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    cat "${log%.log}".[0-9]*.log >"$log"
  else
    build-fuzz/fuzz/fuzz_"$t" "${each[@]}" "${args[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  fi
  seconds=$(($(date +%s) - start))
  # "Done N runs in S second(s)" per process (summed); with -fork, the last "#N" status line.
  runs=$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | awk '{ n += $1 } END { if (NR) print n }')
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  result=ok
  if ((rc)); then
    result="FINDING (exit $rc; see $log and $artifacts/)"
    status=1
  fi
  rate=$(awk -v r="${runs:-0}" -v s="$seconds" 'BEGIN { printf "%.0f", (s > 0 ? r / s : r) }')
  summary+=("$(printf '%-11s %12s %8s %8s  %s' "$t" "${runs:-?}" "$seconds" "$rate" "$result")")
done
echo
echo "fuzz.sh: target        executions  seconds  execs/s  result"
printf '  %s\n' "${summary[@]}"
exit $status
