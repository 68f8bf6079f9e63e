#!/usr/bin/env bash
# Reproduces the bundled disc-centre keypoint model Resources/models/ivd-disc-centres-2d (the Correct points mode)
# from the sample data (../shared/data or IVDSEG_SAMPLE_DATA), both ways of simulating the user, then the
# correction table on the test patients. On 2 CPU cores: about 1 min for the export, about 40 min per training.
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
ivdseg train-keypoints "$RUNS/kp_discs" -o "$RUNS/kpm_discs_revise" --mode revise "${COMMON[@]}"
ivdseg train-keypoints "$RUNS/kp_discs" -o "$RUNS/kpm_discs_prompt" --mode prompt --prompt-share 0.5 "${COMMON[@]}"
# The bundled package is the run whose validation error (before and after one correction) is lower; its card holds
# the test table. The table again, from the package as bundled:
ivdseg evaluate-keypoints Resources/models/ivd-disc-centres-2d "$RUNS/kp_discs" --split test
python Testing/benchmarks/bench_keypoints.py --model Resources/models/ivd-disc-centres-2d
