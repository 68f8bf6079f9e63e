#!/usr/bin/env bash
# Reproduces the bundled disc model Resources/models/ivd-disc-2d (version 2.1.0) from the sample data
# (../shared/data or IVDSEG_SAMPLE_DATA), with the honest protocol. On 2 CPU cores: about 1 min for the export,
# 60 + 60 min for the two leave-one-source-out runs, 25 min for stage 1, 20 min for stage 2, 6 min for the timing.
#
# 1. A dataset split by patient within each source into train / validation / test (15 % each for validation and
#    test, seed 0), slices padded to a square (the choice the leave-one-source-out runs of EXPERIMENTS.md made);
#    the third source's slice 0, whose mask is empty though it shows discs, is listed as unannotated.
# 2. Leave one source out with the same two stages (each stage-2 fold starts from its own stage-1 fold): the
#    estimate of a hospital never seen, kept in the card.
# 3. Stage 1 at 128 px (up to 75 epochs; it stops after 25 without a better validation Dice), then stage 2
#    fine-tunes it at 256 px, on every source's training patients; checkpoints and post-processing are chosen on
#    the validation patients, and the test patients are scored once, by the final package, into its card.
# 4. Test-time augmentation, enabled only if the validation patients gain from it; the test patients scored again
#    as shipped; the inference time of a 67-slice volume on this machine, into the card.
# 5. The review threshold of the disc levels (below); the disc table against the manual labels' (the test patients).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
STAGE1=(--size 128 --epochs 75 --patience 25 --network unet2d)
STAGE2=(--size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --network unet2d)
CARD=(--card Resources/recipes/ivd-disc-2d.card.json)
[ -d "$RUNS/ds_disc_v3_pad" ] || ivdseg export "$RUNS/ds_disc_v3_pad" \
    --spec Resources/recipes/ivd-disc-2d-unannotated.export.json --sizes 128,256 --val-fraction 0.15 \
    --test-fraction 0.15 --seed 0 --resize pad
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long128" --by source "${STAGE1[@]}" --name long-128 --resume
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long256" --by source "${STAGE2[@]}" --init-from "$RUNS/cv_long128" \
    --name long-256 --resume
ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/disc_long128" "${STAGE1[@]}" --name ivd-disc-2d-stage1 \
    --model-version 2.1.0 "${CARD[@]}" --crossval "$RUNS/cv_long128/crossval.json" --overwrite
ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/disc_long256" "${STAGE2[@]}" --init-from "$RUNS/disc_long128/model" \
    --name ivd-disc-2d --model-version 2.1.0 "${CARD[@]}" --crossval "$RUNS/cv_long256/crossval.json" --overwrite
ivdseg evaluate "$RUNS/disc_long256/model" "$RUNS/ds_disc_v3_pad" --split val --choose-tta
# the test patients scored once more, as shipped (with the test-time augmentation if the validation chose it)
ivdseg evaluate "$RUNS/disc_long256/model" "$RUNS/ds_disc_v3_pad" --split test --record
python Testing/benchmarks/bench_segment.py --model "$RUNS/disc_long256/model" --record
# its disc table's heights against the manual labels' on the same test patients, in the export that also labels
# vertebrae and canal (the split is the same patient for patient)
[ -d "$RUNS/ds_spine_v3_pad" ] || ivdseg export "$RUNS/ds_spine_v3_pad" --spec Resources/recipes/ivd-spine-2d.export.json \
    --sizes 128,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad
ivdseg evaluate-measurements "$RUNS/ds_spine_v3_pad" --model "$RUNS/disc_long256/model" --split test --record
# 5. The review threshold of the disc levels, chosen on the validation patients as the model ships (test-time
#    augmentation averages probabilities, so it changes the uncertainty the threshold is compared with), then the
#    levels reported once on the test patients (the dataset of Resources/recipes/ivd-lumbosacral-2d.sh).
[ -d "$RUNS/ds_lumbosacral" ] || { python Resources/recipes/derive_lumbosacral_labels.py "$RUNS/lumbosacral_data" &&
    ivdseg export "$RUNS/ds_lumbosacral" --spec "$RUNS/lumbosacral_data/spec.json" --sizes 128 --val-fraction 0.15 \
        --test-fraction 0.15 --seed 0 --resize pad; }
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split val --choose-review-threshold --model "$RUNS/disc_long256/model"
ivdseg evaluate-levels "$RUNS/ds_lumbosacral" --split test --model "$RUNS/disc_long256/model" --json "$RUNS/levels_test.json"
