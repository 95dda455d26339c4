#!/bin/bash
# Training-loop seconds per epoch for torch thread / augmentation worker settings (issue 15 point 1).
# Usage: benchmarks/bench_train_threads.sh WORKDIR   (a planned and preprocessed work directory; it is copied)
# Settings are alternated over two rounds; prints the seconds of epochs 1 and 2 of each run. Run on a quiet machine.
set -euo pipefail
source="$1"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/ws"
for f in fingerprint.json plans.json preprocessed reference_labels splits.json; do
    [ -e "$source/$f" ] && cp -r "$source/$f" "$scratch/ws/"
done
for round in 1 2; do
    for setting in "2 1" "2 0" "1 1" "2 2"; do
        set -- $setting
        rm -rf "$scratch/ws/trained"
        OMP_NUM_THREADS=$1 autoseg train 1 -c 3d_fullres --workdir "$scratch/ws" --epochs 3 --iters-per-epoch 50 \
            --val-iters 10 --num-workers "$2" > "$scratch/log.txt" 2>&1
        seconds=$(grep -o 'epoch [12]:.*' "$scratch/log.txt" | grep -o '[0-9.]* s$' | tr '\n' ' ')
        echo "round $round threads $1 workers $2: $seconds"
    done
done
