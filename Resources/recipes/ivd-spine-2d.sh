#!/usr/bin/env bash
# The spine package (disc, vertebra, spinal canal) from the sample data (../shared/data or IVDSEG_SAMPLE_DATA): the
# recipe of the bundled disc model 2.1.0 (slices padded to a square; the third source's slice 0 unannotated; 128 px
# for up to 75 epochs, patience 25, then 256 px for 12) with the context classes each source labels; a class a source
# lacks is masked out of the loss on its slices. On 2 CPU cores: about 1 min for the export, 70 + 50 min for the two
# leave-one-source-out runs, about 30 min for stage 1, 20 min for stage 2, 6 min for the timing, 5 min for the
# levels.
# (Session 8's first version, 25 first-stage epochs on the export without the unannotated slice, is the row
# "aspect kept + context classes, 128 -> 256 px" of EXPERIMENTS.md.)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
STAGE1=(--size 128 --epochs 75 --patience 25 --network unet2d)
STAGE2=(--size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --network unet2d)
CARD=(--card Resources/recipes/ivd-spine-2d.card.json)
[ -d "$RUNS/ds_spine_v3_pad" ] || ivdseg export "$RUNS/ds_spine_v3_pad" --spec Resources/recipes/ivd-spine-2d.export.json \
    --sizes 128,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad
ivdseg crossval "$RUNS/ds_spine_v3_pad" -o "$RUNS/cv_ctxlong128" --by source "${STAGE1[@]}" --name ctxlong-128 --resume
ivdseg crossval "$RUNS/ds_spine_v3_pad" -o "$RUNS/cv_ctxlong256" --by source "${STAGE2[@]}" \
    --init-from "$RUNS/cv_ctxlong128" --name ctxlong-256 --resume
ivdseg train "$RUNS/ds_spine_v3_pad" -o "$RUNS/spine_long128" "${STAGE1[@]}" --name ivd-spine-2d-stage1 \
    --model-version 1.0.0 "${CARD[@]}" --crossval "$RUNS/cv_ctxlong128/crossval.json" --overwrite
ivdseg train "$RUNS/ds_spine_v3_pad" -o "$RUNS/spine_long256" "${STAGE2[@]}" --init-from "$RUNS/spine_long128/model" \
    --name ivd-spine-2d --model-version 1.0.0 "${CARD[@]}" --crossval "$RUNS/cv_ctxlong256/crossval.json" --overwrite
ivdseg evaluate "$RUNS/spine_long256/model" "$RUNS/ds_spine_v3_pad" --split val --choose-tta
ivdseg evaluate "$RUNS/spine_long256/model" "$RUNS/ds_spine_v3_pad" --split test --record
python Testing/benchmarks/bench_segment.py --model "$RUNS/spine_long256/model" --record
# its disc table (heights, disc height index, signal ratio) against the manual labels' table, on the test patients
ivdseg evaluate-measurements "$RUNS/ds_spine_v3_pad" --model "$RUNS/spine_long256/model" --split test --record
# The review threshold of the disc levels, chosen on the validation patients, then the levels reported once on the
# test patients (the dataset of Resources/recipes/ivd-lumbosacral-2d.sh).
[ -d "$RUNS/ds_lumbosacral" ] || { python Resources/recipes/derive_lumbosacral_labels.py "$RUNS/lumbosacral_data" &&
    ivdseg export "$RUNS/ds_lumbosacral" --spec "$RUNS/lumbosacral_data/spec.json" --sizes 128 --val-fraction 0.15 \
        --test-fraction 0.15 --seed 0 --resize pad; }
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split val --choose-review-threshold --model "$RUNS/spine_long256/model"
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split test --model "$RUNS/spine_long256/model" \
    --json "$RUNS/levels_test_spine.json"
