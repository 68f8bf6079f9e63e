#!/usr/bin/env bash
# The spine package (disc, vertebra, spinal canal) from the sample data (../shared/data or IVDSEG_SAMPLE_DATA):
# the disc model's recipe with the context classes each source labels; a class a source lacks is masked out of the
# loss on its slices. On 2 CPU cores: about 1 min for the export, 15 min for the leave-one-source-out run at
# 128 px, 6 min for stage 1, 30 min for stage 2, 2 min for the timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
[ -d "$RUNS/ds_spine_v2_pad" ] || ivdseg export "$RUNS/ds_spine_v2_pad" --spec Resources/recipes/ivd-spine-2d.export.json \
    --sizes 128,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad
ivdseg crossval "$RUNS/ds_spine_v2_pad" -o "$RUNS/cv_pad_context128" --by source --size 128 --epochs 25 --patience 25 \
    --network unet2d --name pad-context-128 --resume
ivdseg train "$RUNS/ds_spine_v2_pad" -o "$RUNS/spine_v2_pad128" --size 128 --epochs 25 --patience 25 --network unet2d \
    --name ivd-spine-2d-stage1 --model-version 1.0.0 --card Resources/recipes/ivd-spine-2d.card.json \
    --crossval "$RUNS/cv_pad_context128/crossval.json" --overwrite
ivdseg train "$RUNS/ds_spine_v2_pad" -o "$RUNS/spine_v2_pad256" --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 \
    --network unet2d --init-from "$RUNS/spine_v2_pad128/model" --name ivd-spine-2d --model-version 1.0.0 \
    --card Resources/recipes/ivd-spine-2d.card.json --crossval "$RUNS/cv_pad_context128/crossval.json" --overwrite
python Testing/benchmarks/bench_segment.py --model "$RUNS/spine_v2_pad256/model" --record
