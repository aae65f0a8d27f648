#!/usr/bin/env bash
# The main job: install what is missing, build, and run the README example
# (train the 12-neuron network, edit it, train on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
exec ./build/apps/readme_example "$@"
