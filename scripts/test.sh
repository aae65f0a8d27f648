#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
bash scripts/fetch-datasets.sh build/datasets
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 900
