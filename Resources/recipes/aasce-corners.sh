#!/usr/bin/env bash
# Vertebra-corner keypoints on AP spine X-rays (the seed's own task): 17 vertebrae T1..L5 x 4 corners from the 40
# AASCE training images here (../shared/data/aasce_spine_xray). The images are research-only: this recipe and its
# figures are shipped, weights trained on them never are. Mean radial error before and after 1..3 corrections
# (model-revised against hand-only) and the Cobb angles' SMAPE are in each package's card.
#
# On 2 CPU cores one epoch takes about 20-45 s at 384 x 128; the networks need far more epochs than a CPU session
# gives them (see EXPERIMENTS.md): run it where a GPU is (ivdseg uses one when TensorFlow sees it).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
[ -d "$RUNS/kp_aasce384" ] || ivdseg export-keypoints "$RUNS/kp_aasce384" --spec Resources/recipes/aasce-corners.keypoints.json \
    --shape 384,128 --val-fraction 0.15 --test-fraction 0.15 --seed 0
COMMON=(--epochs 300 --patience 40 --batch-size 4 --depth 5 --plane image --name aasce-corners-research-only --overwrite)
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_revise" --mode revise "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt" --mode prompt "${COMMON[@]}"
for mode in revise prompt; do
    ivdseg evaluate-keypoints "$RUNS/kpm_aasce_$mode/model" "$RUNS/kp_aasce384" --split test
done
