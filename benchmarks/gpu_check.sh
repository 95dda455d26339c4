#!/usr/bin/env bash
# The GPU checks of issue 15, point 7, in one call of under ten minutes (benchmarks/gpu_check.py does the work):
#   (a) plan hippocampus and a synthetic CT with the default preset for this GPU's memory (and for nnU-Net's
#       8 GB target, where the budget binds), 5 training iterations each: peak torch.cuda.max_memory_allocated
#       against the planned budget (issue: 60-100 %) and against the model's estimate;
#   (b) s/iteration of autoseg's training step against nnU-Net v2.6's on the same plan (medians, alternating);
#   (c) one sliding-window prediction, autoseg against nnUNetv2_predict's engine;
#   (d) issue 17: predict's export resampling on the GPU against SimpleITK on the CPU (s per channel, labels).
# Usage: benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--wheels DIR]
#   --dry-run     CPU only (also the default without CUDA): plans for a fake 80 GB GPU, prints the budget, runs one
#                 iteration of each part on a tiny configuration and writes the results file it would write
#   --out DIR     where gpu_check.json and gpu_check.log go (default: $OUT if set, else benchmarks/results)
#   --wheels DIR  offline wheel folder to install missing packages from (autoseg's dependencies, nnunetv2 2.6.0
#                 and its dependencies); nothing is downloaded. Without nnunetv2, (b) and (c) time autoseg alone
#                 and say so in a SKIP line.
# Environment: PYTHON (default python3), HIPPO_FINGERPRINT (default
#   benchmarks/fingerprints/hippocampus.json), SYNTH_CT (catalogue dataset, default synthetic-ct-large;
#   fingerprinted here from its generator), GPU_CHECK_ITERATIONS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=""
OUT_DIR=${OUT:-benchmarks/results}
WHEELS=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) DRY="--dry-run"; shift ;;
        --out) OUT_DIR=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        *) sed -n 2,17p "$0" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# nnU-Net warns at import without its folders; nothing is read from or written to them here
export nnUNet_raw="$SCRATCH/nnUNet_raw" nnUNet_preprocessed="$SCRATCH/nnUNet_preprocessed" \
    nnUNet_results="$SCRATCH/nnUNet_results"
say() { echo "$@" | tee -a "$LOG"; }
: >"$LOG"

install_offline() {  # install_offline REQUIREMENT...: from --wheels only
    [ -n "$WHEELS" ] || return 1
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$SCRATCH/site" "$@" >>"$LOG" 2>&1 || return 1
    export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
}

if ! "$PY" -c "import torch, autoseg.planning, autoseg.training.loss, nibabel, SimpleITK" 2>>"$LOG"; then
    if ! install_offline -e . || ! "$PY" -c "import autoseg.planning, nibabel, SimpleITK" 2>>"$LOG"; then
        say "FAIL: autoseg or its dependencies cannot be imported with $PY, and could not be installed offline"
        say "      (pass --wheels DIR holding them; see $LOG)"
        exit 2
    fi
fi
if [ -z "$DRY" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device: running the CPU dry run instead"
    DRY="--dry-run"
fi
if ! "$PY" -c "import nnunetv2" 2>/dev/null; then
    install_offline "nnunetv2==2.6.0" && say "installed nnunetv2 2.6.0 from $WHEELS" \
        || say "SKIP (b)/(c) against nnU-Net: nnunetv2 is not installed and cannot be installed offline"
fi

HIPPO=${HIPPO_FINGERPRINT:-benchmarks/fingerprints/hippocampus.json}
CT=${SYNTH_CT:-synthetic-ct-large}
say "fingerprinting $CT (synthesised from its catalogue generator)"
"$PY" -m autoseg fingerprint "$CT" -q --workdir "$SCRATCH/ct" --cache-dir "$SCRATCH/data" -np 8 >>"$LOG" 2>&1
MEMORY=()
if [ -z "$DRY" ]; then
    TOTAL=$("$PY" -c "import torch; print(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))")
    MEMORY=(--gpu-memory-gb "$TOTAL" --gpu-memory-gb 8)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG" || true
else
    MEMORY=(--gpu-memory-gb 80)
fi
"$PY" benchmarks/gpu_check.py $DRY "${MEMORY[@]}" --iterations "${GPU_CHECK_ITERATIONS:-5}" \
    --fingerprint "hippocampus=$HIPPO" --fingerprint "$CT=$SCRATCH/ct/fingerprint.json" \
    --out "$OUT_DIR/gpu_check.json" 2>&1 | tee -a "$LOG"
say "results: $OUT_DIR/gpu_check.json (copy the figures into docs/benchmarks.md, 'GPU check')"
