#!/usr/bin/env bash
# Builds the whole project and its test suite with AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/ and runs every test there.
# LibTorch itself is not instrumented; leaks are not reported because
# LibTorch keeps global allocations alive until exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-asan -j"$(nproc)"
bash scripts/fetch-datasets.sh build-asan/datasets
cd build-asan
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j"$(nproc)" --timeout 1800 "$@"
