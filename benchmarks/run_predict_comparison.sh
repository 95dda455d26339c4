#!/usr/bin/env bash
# Re-measure predict against nnUNetv2_predict (docs/benchmarks.md, "Prediction speed again"); needs the
# trained hippocampus fold 0 in /work/runs/hippo and nnU-Net v2.6 in /work/nnunet-venv (see bench_predict.py).
set -euo pipefail
cd "$(dirname "$0")/.."
B="python benchmarks/bench_predict.py"
FP32="fp32=--precision float32"
$B setup
$B compare --experiment hippo-accurate-subset --folds 5 --drop-arm "nnU-Net default -npp 1 -nps 1"
$B compare --experiment hippo-accurate --folds 1 --repeats 1 --key hippo-accurate-dice-1fold --drop-arm "nnU-Net default -npp 1 -nps 1" --extra-arm "$FP32"
$B compare --experiment hippo-fast --drop-arm "-npp 1" --extra-arm "$FP32"
$B compare --experiment ct-fast --drop-arm "-npp 1" --extra-arm "$FP32"
$B compare --experiment hippo-accurate-subset --folds 5 --drop-arm "nnU-Net default" --key hippo-accurate-subset-npp1
echo "all done; tables: python benchmarks/bench_predict.py report"
