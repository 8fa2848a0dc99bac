#!/usr/bin/env bash
# Reproduce the bundled demo model from scratch: generate phantom studies, train full-size DenseNet121
# branches, evaluate on held-out phantoms, and export the best weights as float16.
#   bash scripts/train_demo.sh [WORK_DIR]        (default WORK_DIR: runs/demo)
# Knobs (environment): STUDIES (1500), TEST_STUDIES (300), EPOCHS (8), SIZE (512 px phantoms),
# PRECISION (bf16-mixed; use 32-true on CPUs without bfloat16), WORKERS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/twoview ] && PATH="$PWD/.venv/bin:$PATH"  # scripts/install.sh's environment, activated or not
work=${1:-runs/demo}
studies=${STUDIES:-1500}
mkdir -p "$work"
[ -f "$work/train/labels.csv" ] || twoview sample-data --out "$work/train" --studies "$studies" --seed 1000 --size "${SIZE:-512}"
[ -f "$work/test/labels.csv" ] || twoview sample-data --out "$work/test" --studies "${TEST_STUDIES:-300}" --seed 2000 --size "${SIZE:-512}"
if [ -f "$work/run/checkpoints/last.ckpt" ] && [ ! -f "$work/run/report.md" ]; then
  twoview train --resume "$work/run"
elif [ ! -f "$work/run/report.md" ]; then
  twoview train --manifest "$work/train/labels.csv" --out "$work/run" --start scratch --arch densenet121 \
    --image-size 224 --epochs "${EPOCHS:-8}" --batch-size 16 --lr 1e-3 --warmup-epochs 0.5 --ramp-epochs 3 \
    --view-dropout 0.25 --patience 4 --precision "${PRECISION:-bf16-mixed}" --workers "${WORKERS:-2}"
fi
twoview evaluate --manifest "$work/test/labels.csv" --model "$work/run/best.safetensors" -o "$work/eval" --bootstrap 1000
python - "$work/run/best.safetensors" sample_data/models/demo.safetensors <<'PY'
import sys, torch
from models.checkpoint import load, save
save(load(sys.argv[1]), sys.argv[2], dtype=torch.float16)
print("demo model written to", sys.argv[2])
PY
