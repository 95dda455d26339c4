#!/usr/bin/env bash
# Re-measure predict against nnUNetv2_predict (docs/benchmarks.md, "Prediction speed again").
# Usage: benchmarks/run_predict_comparison.sh ROOT WORKDIR DATASET CT_IMAGE NNUNET_VENV NNUNET_PLANS
#   ROOT          benchmark folder (created; results in ROOT/results.json)
#   WORKDIR       autoseg work directory with fold 0 of 3d_fullres trained (e.g. runs/hippo)
#   DATASET       its raw dataset folder (imagesTr, labelsTr), e.g. DATA/hippocampus
#   CT_IMAGE      a CT image, e.g. DATA/totalsegmentator_examples/nifti/example_ct.nii.gz
#   NNUNET_VENV   nnU-Net v2.6's own venv (pip install torch==2.13.0 nnunetv2==2.6.0)
#   NNUNET_PLANS  nnU-Net's nnUNetPlans.json for the dataset (nnUNet_preprocessed/Dataset004_Hippocampus/...)
set -euo pipefail
if [ "$#" -ne 6 ]; then sed -n 3,9p "$0" >&2; exit 2; fi
ROOT=$1
cd "$(dirname "$0")/.."
python benchmarks/bench_predict_setup.py --root "$ROOT" --workdir "$2" --dataset "$3" --ct-image "$4" \
    --nnunet-venv "$5" --nnunet-plans "$6"
C="python benchmarks/bench_predict_compare.py --root $ROOT"
FP32="fp32=--precision float32"
$C --experiment hippo-accurate-subset --folds 5 --drop-arm "nnU-Net default -npp 1 -nps 1"
$C --experiment hippo-accurate --folds 1 --repeats 1 --key hippo-accurate-dice-1fold \
    --drop-arm "nnU-Net default -npp 1 -nps 1" --extra-arm "$FP32"
$C --experiment hippo-fast --drop-arm "-npp 1" --extra-arm "$FP32"
$C --experiment ct-fast --drop-arm "-npp 1" --extra-arm "$FP32"
$C --experiment hippo-accurate-subset --folds 5 --drop-arm "nnU-Net default" --key hippo-accurate-subset-npp1
python benchmarks/bench_predict_profile.py --root "$ROOT" --preset fast
python benchmarks/bench_predict_report.py "$ROOT/results.json"
