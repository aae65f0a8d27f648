#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a CUDA build of PyTorch: build
# the library, the CUDA tests and connex_bench against that PyTorch's
# LibTorch, run the tests, then the benchmark's GPU table.
#
#   scripts/gpu.sh [OUT_DIR]
#
# OUT_DIR (default: $OUT, else build-gpu/out) receives machine.txt,
# configure.log, build.log, cuda_tests.log and bench.log. CONNEX_DEPS_PREFIX
# names a prefix holding fmt, spdlog, nlohmann-json, CLI11 and GoogleTest
# (with their CMake files) where the machine has no Debian packages for them.
# CONNEX_GPU_BENCH_ARGS passes more arguments to connex_bench, split at spaces
# (--only layered).
# CONNEX_GPU_FULL_SUITE=1 also builds and runs every other test on that
# LibTorch, within CONNEX_GPU_SUITE_SECONDS (default 240).
#
#   scripts/gpu.sh --make-deps DIR
#
# copies those packages' files from this Debian machine into DIR/usr (what
# the device tool carries to a GPU machine; then CONNEX_DEPS_PREFIX=DIR/usr).
set -uo pipefail
# Folders the caller names are relative to where it runs, not to the repository.
absolute() { realpath -m -- "$1"; }
if [ "${1:-}" = --make-deps ]; then
  [ -n "${2:-}" ] || { echo "gpu.sh: --make-deps needs a folder" >&2; exit 2; }
  deps=$(absolute "$2")
  packages="libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev"
  for package in $packages; do
    dpkg -L "$package" >/dev/null || { echo "gpu.sh: --make-deps: Debian package $package is not installed" >&2; exit 1; }
  done
  for package in $packages; do dpkg -L "$package"; done | grep -v '^/usr/share/doc\|^/usr/share/lintian\|^/usr/src' |
    sort -u | while read -r file; do
      if [ -f "$file" ] || [ -L "$file" ]; then
        mkdir -p "$deps$(dirname "$file")" && cp -a "$file" "$deps$file" || exit 1
      fi
    done || exit 1
  echo "gpu.sh: CONNEX_DEPS_PREFIX=$deps/usr"
  exit 0
fi
out=$(absolute "${1:-${OUT:-build-gpu/out}}")
[ -z "${CONNEX_DEPS_PREFIX:-}" ] || CONNEX_DEPS_PREFIX=$(absolute "$CONNEX_DEPS_PREFIX")
cd "$(dirname "$0")/.."
mkdir -p "$out"
start=$SECONDS
stamp() { echo "== $1 ($((SECONDS - start)) s)"; }

stamp "machine" >"$out/machine.txt"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  g++ --version | head -1
  cmake --version | head -1
  echo "cores: $(nproc)"
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
} >>"$out/machine.txt" 2>&1
cat "$out/machine.txt"

prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || exit 1
if [ -n "${CONNEX_DEPS_PREFIX:-}" ]; then
  prefix="$CONNEX_DEPS_PREFIX;$prefix"
  # fmt and spdlog are searched before the wheel's headers, which bundle
  # another fmt than the one linked from this prefix: CPATH counts as -I,
  # ahead of every -isystem, but only for a folder not also given as -isystem.
  mkdir -p build-gpu/first
  cp -r "$CONNEX_DEPS_PREFIX/include/fmt" "$CONNEX_DEPS_PREFIX/include/spdlog" build-gpu/first/
  export CPATH="$PWD/build-gpu/first${CPATH:+:$CPATH}"
  export LD_LIBRARY_PATH="$CONNEX_DEPS_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if command -v ninja >/dev/null; then
  generator=Ninja keep_going="-k 0"
else
  generator="Unix Makefiles" keep_going="-k"
fi
build() { cmake --build build-gpu -j "$(nproc)" --target "$@" -- $keep_going; }
stamp "configure"
# GCC's OpenMP off: the wheel bundles its own libgomp, and one runtime per process is enough here.
cmake -S . -B build-gpu -G "$generator" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCONNEX_WITH_DISTRIBUTED=OFF -DCONNEX_BUILD_FUZZERS=OFF -DCONNEX_OPENMP=OFF >"$out/configure.log" 2>&1 || {
  tail -40 "$out/configure.log"
  exit 1
}

stamp "build: library"
if ! build connex >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -60
  exit 1
fi
status=0
stamp "build: CUDA tests and benchmark"
# Never an old build's programs: a failed build leaves none to run.
rm -f build-gpu/tests/connex_cuda_tests build-gpu/apps/connex_bench
if ! build connex_cuda_tests connex_bench >>"$out/build.log" 2>&1; then
  status=1
  grep -E "error" "$out/build.log" | head -40
fi

stamp "CUDA tests"
if [ -x build-gpu/tests/connex_cuda_tests ]; then
  build-gpu/tests/connex_cuda_tests >"$out/cuda_tests.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|error" "$out/cuda_tests.log"
  # A CUDA test skips itself where torch sees no GPU: here that is a failure.
  if grep -q "^\[  SKIPPED \]" "$out/cuda_tests.log"; then
    echo "gpu.sh: CUDA tests skipped: this LibTorch sees no GPU"
    status=1
  fi
else
  status=1
fi
stamp "benchmark"
read -ra bench_args <<<"${CONNEX_GPU_BENCH_ARGS:-}"
if [ -x build-gpu/apps/connex_bench ]; then
  build-gpu/apps/connex_bench --device cuda "${bench_args[@]}" 2>&1 | tee "$out/bench.log" || status=1
else
  status=1
fi

if [ "${CONNEX_GPU_FULL_SUITE:-0}" = 1 ]; then
  stamp "every other test on this LibTorch"
  budget=${CONNEX_GPU_SUITE_SECONDS:-240} suite_start=$SECONDS
  export -f build
  export keep_going
  rm -f build-gpu/tests/connex_tests
  if ! timeout "$budget" bash -c 'build connex_tests' >>"$out/build.log" 2>&1; then
    status=1
    grep -E "error" "$out/build.log" | tail -30
  fi
  if [ -x build-gpu/tests/connex_tests ]; then
    left=$((budget - (SECONDS - suite_start)))
    timeout $((left > 30 ? left : 30)) build-gpu/tests/connex_tests --gtest_brief=1 >"$out/suite.log" 2>&1 || status=1
    tail -30 "$out/suite.log"
  fi
fi
stamp "done"
exit $status
