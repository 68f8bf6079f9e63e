#!/usr/bin/env bash
# Reproduces the bundled model Resources/models/ivd-disc-2d (version 1.0.0) from the sample data (../shared/data or
# IVDSEG_SAMPLE_DATA), with the two-way split it was made with (--test-fraction 0: no test patients).
# On 2 CPU cores: about 1 min export, 17 min stage 1, 40 min stage 2.
# Stage 1 is the reference baseline (plain U-Net, 128 px); stage 2 fine-tunes it at 256 px.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
ivdseg export "$RUNS/ds_disc" --spec Resources/recipes/ivd-disc-2d.export.json --val-fraction 0.15 --test-fraction 0 --overwrite
ivdseg train "$RUNS/ds_disc" -o "$RUNS/baseline128" --size 128 --epochs 25 --patience 25 --network unet2d \
    --name baseline-unet2d-128 --overwrite
ivdseg train "$RUNS/ds_disc" -o "$RUNS/disc256" --size 256 --network unet2d --init-from "$RUNS/baseline128/model" \
    --epochs 12 --patience 6 --learning-rate 3e-4 --name ivd-disc-2d --model-version 1.0.0 \
    --card Resources/recipes/ivd-disc-2d.card.json --overwrite
ivdseg evaluate "$RUNS/baseline128/model" "$RUNS/ds_disc"
ivdseg evaluate "$RUNS/disc256/model" "$RUNS/ds_disc"
