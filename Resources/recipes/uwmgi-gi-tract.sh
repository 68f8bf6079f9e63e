#!/usr/bin/env bash
# Multi-organ segmentation from an RLE mask table: the UW-Madison GI tract challenge (Kaggle, 2022), the seed's
# multi-organ project. Give the folder of the Kaggle download (train.csv and train/); the data is research-only and
# is not in ../shared/data (its 36 re-processed slices there serve the tests). Overlapping classes (one sigmoid output
# each), images as stored, 2.5D input (two neighbouring slices on each side), a U-Net on an EfficientNet-B0 encoder,
# a split by case (the days of one case together), empty slices kept. The test report has Dice, IoU and the
# challenge's score (0.4 x Dice + 0.6 x (1 - 3D Hausdorff / diagonal)).
#
#   bash Resources/recipes/uwmgi-gi-tract.sh /data/uw-madison-gi-tract-image-segmentation [RUNS] [efficientnetb0_notop.h5]
#
# The optional third argument is a local file of ImageNet weights for the encoder (nothing is downloaded).
set -euo pipefail
ROOT=$(cd "${1:?give the folder of the Kaggle download (train.csv, train/)}" && pwd)
cd "$(dirname "$0")/../.."
RUNS=${2:-runs}
WEIGHTS=()
[ -n "${3:-}" ] && WEIGHTS=(--encoder-weights "$3")
mkdir -p "$RUNS"
sed "s#UWMGI_ROOT#$ROOT#" Resources/recipes/uwmgi-gi-tract.export.json > "$RUNS/uwmgi.export.json"
[ -d "$RUNS/ds_uwmgi" ] || ivdseg export "$RUNS/ds_uwmgi" --spec "$RUNS/uwmgi.export.json" --sizes 256 --resize pad \
    --val-fraction 0.15 --test-fraction 0.15 --seed 0
RESUME=()
[ -f "$RUNS/uwmgi_b0/checkpoints/last.keras" ] && RESUME=(--resume)  # a stopped run continues
ivdseg train "$RUNS/ds_uwmgi" -o "$RUNS/uwmgi_b0" --network efficientnet_b0_unet --size 256 --context-slices 2 \
    --epochs 30 --patience 8 --batch-size 16 --name uwmgi-gi-tract-research-only "${WEIGHTS[@]}" "${RESUME[@]}"
ivdseg evaluate "$RUNS/uwmgi_b0/model" "$RUNS/ds_uwmgi" --split test
