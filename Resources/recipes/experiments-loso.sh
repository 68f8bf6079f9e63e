#!/usr/bin/env bash
# The leave-one-source-out experiments of Resources/recipes/EXPERIMENTS.md, from the sample data (../shared/data or
# IVDSEG_SAMPLE_DATA). Each row: one `ivdseg crossval --by source` (3 trainings: every source left out once);
# its table is RUNS/<experiment>/crossval.md. Stopped runs continue with the same command (--resume).
# On 2 CPU cores: about 12 min per experiment at 128 px.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
SPEC=Resources/recipes/ivd-disc-2d.export.json
BASE=(--by source --size 128 --epochs 25 --patience 25 --network unet2d --progress jsonl --resume)
[ -d "$RUNS/ds_disc_v2" ] || ivdseg export "$RUNS/ds_disc_v2" --spec $SPEC --sizes 128,256 --val-fraction 0.15 \
    --test-fraction 0.15 --seed 0 --progress none
[ -d "$RUNS/ds_disc_v2_pad" ] || ivdseg export "$RUNS/ds_disc_v2_pad" --spec $SPEC --sizes 128,256 --val-fraction 0.15 \
    --test-fraction 0.15 --seed 0 --resize pad --progress none
ivdseg crossval "$RUNS/ds_disc_v2" -o "$RUNS/cv_baseline128" "${BASE[@]}" --name baseline-unet2d-128
ivdseg crossval "$RUNS/ds_disc_v2" -o "$RUNS/cv_scanner128" "${BASE[@]}" --augmentation scanner --name scanner-128
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad128" "${BASE[@]}" --name pad-128
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad_scanner128" "${BASE[@]}" --augmentation scanner \
    --name pad-scanner-128
[ -d "$RUNS/ds_spine_v2_pad" ] || ivdseg export "$RUNS/ds_spine_v2_pad" --spec Resources/recipes/ivd-spine-2d.export.json \
    --sizes 128,256 --val-fraction 0.15 --test-fraction 0.15 --seed 0 --resize pad --progress none
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad_wide128" "${BASE[@]}" --base-filters 32 --name pad-wide-128
# context classes: vertebra and spinal canal where a source labels them (masked out of the loss where it does not)
ivdseg crossval "$RUNS/ds_spine_v2_pad" -o "$RUNS/cv_pad_context128" "${BASE[@]}" --name pad-context-128
# other networks of the registry, same settings (aspect kept, 128 px; the last --network given is the one used)
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad_deeplab128" "${BASE[@]}" --network deeplabv3plus \
    --name pad-deeplab-128
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad_resse128" "${BASE[@]}" --network res_se_unet --name pad-resse-128
# the two-stage recipe (128 -> 256 px) of the bundled model, for both input modes
S2=(--by source --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --network unet2d --progress jsonl --resume)
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad256" "${S2[@]}" --init-from "$RUNS/cv_pad128" --name pad-256
ivdseg crossval "$RUNS/ds_disc_v2" -o "$RUNS/cv_baseline256" "${S2[@]}" --init-from "$RUNS/cv_baseline128" \
    --name baseline-256
ivdseg crossval "$RUNS/ds_spine_v2_pad" -o "$RUNS/cv_pad_context256" "${S2[@]}" --init-from "$RUNS/cv_pad_context128" \
    --name pad-context-256
# neighbouring-slice context (2.5D): each slice with one neighbour on each side as input channels, context classes
ivdseg crossval "$RUNS/ds_spine_v2_pad" -o "$RUNS/cv_pad_context_slices128" "${BASE[@]}" --context-slices 1 \
    --name pad-context-slices-128
# repeats of the "aspect kept" 128 px row with other seeds (the folds are the same), then the ensemble of two runs
for seed in 0 1; do
    ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad128_seed$seed" "${BASE[@]}" --seed $seed --name pad-128-seed$seed
done
[ -f "$RUNS/cv_pad128_ens01/crossval.json" ] || ivdseg ensemble "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad128_ens01" \
    --crossvals "$RUNS/cv_pad128_seed0" "$RUNS/cv_pad128_seed1" --by source --name pad-128-ensemble --overwrite
# how batches draw on the sources: trained on all three sources' training patients, so that each source's validation
# patients say which sampling fits every source (the mean of the three sources' validation Dice chooses); the chosen
# one then through the 256 px stage (against the bundled 2.0.0) and cross-validated by source at 128 px
ONE=(--size 128 --epochs 25 --patience 25 --network unet2d --progress jsonl --seed 0)
for s in slices sqrt equal; do
    [ -f "$RUNS/ss_${s}128/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v2_pad" -o "$RUNS/ss_${s}128" "${ONE[@]}" \
        --source-sampling $s --name ss-$s-128 --overwrite
done
[ -f "$RUNS/ss_sqrt256/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v2_pad" -o "$RUNS/ss_sqrt256" \
    --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --network unet2d --progress jsonl \
    --init-from "$RUNS/ss_sqrt128/model" --source-sampling sqrt --name ss-sqrt-256 --overwrite
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_pad128_sqrt" "${BASE[@]}" --source-sampling sqrt --name pad-128-sqrt
# 24 base filters (4.4 M parameters; float16 weights keep the package under 20 MB): both stages on every source's
# training patients (against 2.0.0 on the validation patients), then both stages left out by source
W24=(--network unet2d --base-filters 24 --progress jsonl --seed 0)
[ -f "$RUNS/w24_128/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v2_pad" -o "$RUNS/w24_128" "${W24[@]}" \
    --size 128 --epochs 25 --patience 25 --name w24-128 --overwrite
[ -f "$RUNS/w24_256/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v2_pad" -o "$RUNS/w24_256" "${W24[@]}" \
    --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --weights float16 --init-from "$RUNS/w24_128/model" \
    --name w24-256 --overwrite
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_w24_128" "${BASE[@]}" --base-filters 24 --name w24-128
ivdseg crossval "$RUNS/ds_disc_v2_pad" -o "$RUNS/cv_w24_256" "${S2[@]}" --base-filters 24 --weights float16 \
    --init-from "$RUNS/cv_w24_128" --name w24-256
# the third source's slice 0 listed as unannotated (its empty mask shows discs): the recipe of the bundled model, both
# stages on every source's training patients and both stages left out by source, on that export
[ -d "$RUNS/ds_disc_v3_pad" ] || ivdseg export "$RUNS/ds_disc_v3_pad" \
    --spec Resources/recipes/ivd-disc-2d-unannotated.export.json --sizes 128,256 --val-fraction 0.15 \
    --test-fraction 0.15 --seed 0 --resize pad --progress none
V3=(--network unet2d --progress jsonl --seed 0)
[ -f "$RUNS/disc_v3_pad128/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/disc_v3_pad128" \
    "${V3[@]}" --size 128 --epochs 25 --patience 25 --name v3-128 --overwrite
[ -f "$RUNS/disc_v3_pad256/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/disc_v3_pad256" \
    "${V3[@]}" --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --init-from "$RUNS/disc_v3_pad128/model" \
    --name v3-256 --overwrite
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_v3_pad128" "${BASE[@]}" --name v3-128
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_v3_pad256" "${S2[@]}" --init-from "$RUNS/cv_v3_pad128" --name v3-256
# a longer first stage (75 epochs, patience 25: early stopping and the halving of the learning rate decide, on the
# validation patients) on the same export; the 256 px stage as before
[ -f "$RUNS/long_pad128/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/long_pad128" \
    "${V3[@]}" --size 128 --epochs 75 --patience 25 --name long-128 --overwrite
[ -f "$RUNS/long_pad256/model/model.json" ] || ivdseg train "$RUNS/ds_disc_v3_pad" -o "$RUNS/long_pad256" \
    "${V3[@]}" --size 256 --epochs 12 --patience 6 --learning-rate 3e-4 --init-from "$RUNS/long_pad128/model" \
    --name long-256 --overwrite
LONG=(--by source --size 128 --epochs 75 --patience 25 --network unet2d --progress jsonl --resume)
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long128" "${LONG[@]}" --name long-128
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long256" "${S2[@]}" --init-from "$RUNS/cv_long128" --name long-256
# the longer first stage repeated with another seed (initial weights, batch order, augmentation and the validation
# patients each fold draws): how much of its gain over the 25-epoch rows holds
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long128_s1" "${LONG[@]}" --seed 1 --name long-128-s1
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long256_s1" "${S2[@]}" --seed 1 --init-from "$RUNS/cv_long128_s1" \
    --name long-256-s1
# the two seeds averaged fold by fold (each fold's two models one network, scored on the fold's held-out source)
[ -f "$RUNS/cv_long256_ens01/crossval.json" ] || ivdseg ensemble "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long256_ens01" \
    --crossvals "$RUNS/cv_long256" "$RUNS/cv_long256_s1" --progress none
# the scanner augmentation preset with the longer first stage (at 25 epochs it did not pay; session 13)
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long128_scanner" "${LONG[@]}" --augmentation scanner \
    --name long-128-scanner
ivdseg crossval "$RUNS/ds_disc_v3_pad" -o "$RUNS/cv_long256_scanner" "${S2[@]}" --augmentation scanner \
    --init-from "$RUNS/cv_long128_scanner" --name long-256-scanner
