#!/usr/bin/env bash
# Reproduces the bundled disc-centre keypoint model Resources/models/ivd-disc-centres-2d (the Correct points mode)
# from the sample data (../shared/data or IVDSEG_SAMPLE_DATA): the two ways of simulating the user compared at 16
# base filters, then the bundled size (8 base filters, under 20 MB) in the way the validation patients chose.
# On 2 CPU cores: about 1 min for the export, 20-40 min per training.
#
# The split (seed 0, 15 % validation, 15 % test within each source) puts the same patients in test as the disc
# model's: the keypoint export uses the same source names and patient order.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
[ -d "$RUNS/kp_discs" ] || ivdseg export-keypoints "$RUNS/kp_discs" --spec Resources/recipes/ivd-disc-centres.keypoints.json \
    --shape 256,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0
COMMON=(--epochs 40 --patience 12 --batch-size 8 --depth 5 --plane sagittal --name ivd-disc-centres-2d
        --model-version 1.0.0 --card Resources/recipes/ivd-disc-centres-2d.card.json --overwrite)
# The comparison of EXPERIMENTS.md (16 base filters: 7.8 M parameters, 62 MB, too large to bundle)
ivdseg train-keypoints "$RUNS/kp_discs" -o "$RUNS/kpm_discs_revise" --mode revise "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_discs" -o "$RUNS/kpm_discs_prompt" --mode prompt --prompt-share 0.5 "${COMMON[@]}"
# The bundled package: 'prompt' (lower validation error before and after one correction), 8 base filters
ivdseg train-keypoints "$RUNS/kp_discs" -o "$RUNS/kpm_discs_prompt8" --mode prompt --prompt-share 0.5 --base-filters 8 \
    "${COMMON[@]}"
# cp -r "$RUNS/kpm_discs_prompt8/model" Resources/models/ivd-disc-centres-2d   (1.0.0)
# 1.1.0: the same weights; the heatmaps decoded as one chain (the steps between consecutive disc centres fitted to
# the training points), which the validation patients chose over one peak each. A training today makes this choice
# itself at its end; for the 1.0.0 package it was made afterwards:
ivdseg fit-chain "$RUNS/kpm_discs_prompt8/model" "$RUNS/kp_discs" -o "$RUNS/kpm_discs_prompt8_chain" --model-version 1.1.0 \
    --overwrite
# cp -r "$RUNS/kpm_discs_prompt8_chain" Resources/models/ivd-disc-centres-2d   (1.1.0)
ivdseg evaluate-keypoints "$RUNS/kpm_discs_prompt8_chain" "$RUNS/kp_discs" --split test
python Testing/benchmarks/bench_keypoints.py --model "$RUNS/kpm_discs_prompt8_chain"
