#!/usr/bin/env bash
# The main job: install what is missing, build, then with the `connex`
# program: train the README network (embedded default), apply the README's
# edit (add 1 -> 6 and 2 -> 11, remove neuron 9; optimizer state carried),
# train on, and export a PNG drawing and a TorchScript file.
#   scripts/run.sh [OUT_DIR]   (default: runs/readme)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
out=${1:-runs/readme}
connex=./build/apps/connex
mkdir -p "$out"
$connex train --epochs 1000 --out "$out/trained" --overwrite
$connex edit "$out/trained/model.ckpt" --add-connection 1:6 --add-connection 2:11 --remove-neuron 9 --seed 1 \
  --out "$out/edited.ckpt"
$connex train "$out/edited.ckpt" --epochs 1000 --out "$out/retrained" --overwrite
$connex export "$out/retrained/model.ckpt" --format png --out "$out/network.png"
$connex export "$out/retrained/model.ckpt" --format torchscript --out "$out/network.pt"
$connex inspect "$out/retrained/model.ckpt"
cat <<DONE

Main job done. Files:
  $out/trained/      first training run (model.ckpt, metrics.csv, metrics.json, config.json)
  $out/edited.ckpt   after the README edit
  $out/retrained/    training continued after the edit
  $out/network.png   the final network drawn by Graphviz (blue: w > 0, red: w < 0)
  $out/network.pt    TorchScript module (torch::jit::load / torch.jit.load)
DONE
