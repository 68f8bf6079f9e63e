#!/usr/bin/env bash
# Reproduces the bundled lumbosacral-disc locator Resources/models/ivd-lumbosacral-2d, the anchor of
# `ivdseg segment --levels`, from the sample data (../shared/data or IVDSEG_SAMPLE_DATA). On 2 CPU cores: about
# 1 min for the labels and the export, 5 min for the training, 1 min for the level evaluation.
#
# 1. SPIDER's lowest disc (above the sacrum) becomes "lumbosacral disc" (derive_lumbosacral_labels.py);
#    ivd_lumbar_t2's label 1 is L5-S1 already.
# 2. The same patient split as the disc model's (seed 0, 15 % validation, 15 % test within each source).
# 3. Training; its checkpoint is chosen on the validation patients.
# 4. Level accuracy and disc-centre error with the bundled disc model on the test patients, reported once.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
python Resources/recipes/derive_lumbosacral_labels.py "$RUNS/lumbosacral_data"
[ -d "$RUNS/ds_lumbosacral" ] || ivdseg export "$RUNS/ds_lumbosacral" --spec "$RUNS/lumbosacral_data/spec.json" \
    --sizes 128 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad
ivdseg train "$RUNS/ds_lumbosacral" -o "$RUNS/lumbosacral128" --size 128 --epochs 25 --patience 25 --base-filters 8 \
    --network unet2d --name ivd-lumbosacral-2d --model-version 1.0.0 \
    --card Resources/recipes/ivd-lumbosacral-2d.card.json --overwrite
# With the locator in place (Resources/models/ivd-lumbosacral-2d, named by the disc model's card):
# the review threshold is chosen on the validation patients and written into the disc model's card,
# then levels, centre error and the review flag are reported once on the test patients.
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split val --choose-review-threshold --model Resources/models/ivd-disc-2d
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split test --model Resources/models/ivd-disc-2d \
    --json "$RUNS/levels_test.json"
python Testing/benchmarks/bench_segment.py --model "$RUNS/lumbosacral128/model" --record
