#!/usr/bin/env bash
# Installs the Debian packages connex needs, only those missing. Idempotent.
# An optimized BLAS matters: Debian's LibTorch calls the system libblas.so.3,
# and the reference BLAS is ~10x slower than OpenBLAS on dense layers.
set -euo pipefail
packages=(
  build-essential cmake ccache pkg-config
  libtorch-dev libopenblas0-pthread
  libfmt-dev libspdlog-dev nlohmann-json3-dev libgtest-dev libcli11-dev libgloo-dev
  graphviz python3-torch python3-networkx clang-format
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case "$blas" in
  *openblas*) ;;
  *) echo "install-deps: warning: libblas.so.3 is $blas, not OpenBLAS; dense layers will be ~10x slower" >&2 ;;
esac
