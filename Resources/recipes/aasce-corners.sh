#!/usr/bin/env bash
# Vertebra-corner keypoints on AP spine X-rays (the seed's own task): 17 vertebrae T1..L5 x 4 corners from the 40
# AASCE training images here (../shared/data/aasce_spine_xray; patients split 28 / 6 / 6). The images are
# research-only: this recipe and its figures are shipped, weights trained on them never are. The mean radial error
# before and after 1..3 corrections (model-revised against hand-only) and the Cobb angles' SMAPE are in each card.
#
# On 2 CPU cores: each prompt run 20-40 min (180-270 epochs of 6-20 s at 384 x 128), each revise fine-tuning 5-10 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
[ -d "$RUNS/kp_aasce384" ] || ivdseg export-keypoints "$RUNS/kp_aasce384" --spec Resources/recipes/aasce-corners.keypoints.json \
    --shape 384,128 --val-fraction 0.15 --test-fraction 0.15 --seed 0
COMMON=(--batch-size 4 --depth 5 --base-filters 8 --sigma 4 --plane image --name aasce-corners-research-only --overwrite)
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 "${COMMON[@]}"
# then the seed's revising user, starting from the prompt model
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_revise" --mode revise \
    --init-from "$RUNS/kpm_aasce_prompt/model" --epochs 60 --patience 20 --learning-rate 5e-4 "${COMMON[@]}"
# the same two runs with the hints also fed, max-pooled, to every deeper stage of the U-Net (--hints-every-scale)
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_revise_es" --mode revise --hints-every-scale \
    --init-from "$RUNS/kpm_aasce_prompt_es/model" --epochs 60 --patience 20 --learning-rate 5e-4 "${COMMON[@]}"
# two rows of EXPERIMENTS.md that the validation images did not choose: fewer hints per sample, the focal heatmap loss
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_mh3" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale --max-hints 3 "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_focal" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale --loss focal "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_morph" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale --morphology-weight 1 "${COMMON[@]}"
# it had not localised when patience 40 stopped it (epoch 49, best 9): resumed with more patience (--resume keeps the
# state of every whole epoch; only --epochs and --patience may change), it stopped at 109, still not localised
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_morph" --mode prompt --epochs 300 --patience 100 \
    --learning-rate 2e-3 --hints-every-scale --morphology-weight 1 "${COMMON[@]/--overwrite/--resume}"
# a tenth of the weight: it localised slowly, then not further (best epoch 102, stopped at 142)
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_morph01" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale --morphology-weight 0.1 "${COMMON[@]}"
# a hundredth of the weight from the start (session 11): it localised, but the revisions lost their lead
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_prompt_es_morph001" --mode prompt --epochs 300 --patience 40 \
    --learning-rate 2e-3 --hints-every-scale --morphology-weight 0.01 "${COMMON[@]}"
# the morphology term on a network that already localises: the focal run fine-tuned with and without it (at weight
# 100 the term added about 0.9 to a first-epoch loss of 15: the focal loss sums over each heatmap's pixels)
FT=(--mode prompt --loss focal --hints-every-scale --init-from "$RUNS/kpm_aasce_prompt_es_focal/model" --epochs 60
    --patience 20 --learning-rate 5e-4)
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_focal_ft" "${FT[@]}" "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_focal_ft_morph" "${FT[@]}" --morphology-weight 100 "${COMMON[@]}"
# the heatmaps decoded as one chain (the package's weights unchanged; the validation images chose the chain and its
# weight; session 11, when the chain was the only structure)
ivdseg fit-chain "$RUNS/kpm_aasce_prompt_es_focal/model" "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_focal_chain" \
    --structure chain --overwrite
ivdseg fit-chain "$RUNS/kpm_aasce_focal_ft/model" "$RUNS/kp_aasce384" -o "$RUNS/kpm_aasce_focal_ft_chain" \
    --structure chain --overwrite
ivdseg evaluate-keypoints "$RUNS/kpm_aasce_focal_chain" "$RUNS/kp_aasce384" --split test
ivdseg evaluate-keypoints "$RUNS/kpm_aasce_focal_ft_chain" "$RUNS/kp_aasce384" --split test
# session 12: the validation images choose among one peak each, the chain and columns (each corner tied to the same
# corner of the vertebra above), as a training today does at its end; they chose columns for all four networks
for run in kpm_aasce_prompt_es_focal kpm_aasce_focal_ft kpm_aasce_prompt_es kpm_aasce_prompt_revise_es; do
    ivdseg fit-chain "$RUNS/$run/model" "$RUNS/kp_aasce384" -o "$RUNS/${run}_cols" --overwrite
    ivdseg evaluate-keypoints "$RUNS/${run}_cols" "$RUNS/kp_aasce384" --split val
    ivdseg evaluate-keypoints "$RUNS/${run}_cols" "$RUNS/kp_aasce384" --split test
done
for run in kpm_aasce_prompt kpm_aasce_prompt_revise kpm_aasce_prompt_es kpm_aasce_prompt_revise_es \
    kpm_aasce_prompt_es_mh3 kpm_aasce_prompt_es_focal kpm_aasce_prompt_es_morph kpm_aasce_prompt_es_morph01 kpm_aasce_prompt_es_morph001 \
    kpm_aasce_focal_ft kpm_aasce_focal_ft_morph; do
    ivdseg evaluate-keypoints "$RUNS/$run/model" "$RUNS/kp_aasce384" --split test
done
