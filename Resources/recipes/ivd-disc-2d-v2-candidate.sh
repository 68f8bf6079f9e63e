#!/usr/bin/env bash
# The version-2 candidate of the bundled disc model, with the honest protocol, from the sample data (../shared/data
# or IVDSEG_SAMPLE_DATA). Not bundled yet: see Resources/recipes/EXPERIMENTS.md. On 2 CPU cores: about 1 min per
# export, 15 min for the leave-one-source-out run, 6 min for the final training.
#
# 1. A dataset split by patient within each source into train / validation / test (15 % each for validation and
#    test, seed 0), slices padded to a square (the choice the leave-one-source-out runs of EXPERIMENTS.md made).
# 2. Leave one source out with the final settings: the estimate of a hospital never seen, kept in the card.
# 3. The final model on every source's training patients, its checkpoint and post-processing chosen on the
#    validation patients, the test patients scored once into the card.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
SETTINGS=(--size 128 --epochs 25 --patience 25 --network unet2d)
[ -d "$RUNS/ds_disc_v2_pad" ] || ivdseg export "$RUNS/ds_disc_v2_pad" --spec Resources/recipes/ivd-disc-2d.export.json \
    --sizes 128,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad128" --by source "${SETTINGS[@]}" --name pad-128 --resume
ivdseg train "$RUNS/ds_disc_v2_pad" -o "$RUNS/disc_v2_pad128" "${SETTINGS[@]}" --name ivd-disc-2d --model-version 2.0.0 \
    --card Resources/recipes/ivd-disc-2d-v2.card.json --crossval "$RUNS/cv_pad128/crossval.json" --overwrite
ivdseg evaluate "$RUNS/disc_v2_pad128/model" "$RUNS/ds_disc_v2_pad" --split test
