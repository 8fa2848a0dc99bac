#!/usr/bin/env bash
# Issue 13's GPU figures in one prepared run on a lent machine (one H200, 16 cores), about 6 minutes and up
# to 3 more for the compiled training step (last: if the time runs out, the rest has come back).
#
# Here, first: `bash scripts/gpu_wheels.sh` (MONAI, pydicom and the decoders into .whl/). Then, with the
# device tool: run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600). Each step has its own
# time limit and writes its output to $OUT (what comes back), most important first:
#   predict.txt     bench/predict.py on CUDA at the default batch (64): end to end, model alone, data
#                   alone (target >= 50 %; the model ceiling of 1,751 studies/s was measured at 64)
#   train_step.txt  the training step alone at batch 64, channels-last against contiguous, bf16 and fp32
#   train.txt       the Trainer on phantom studies, 12 workers: images/s and data wait (>= 1,500, < 10 %)
#   scan.txt        the folder scan on 16 worker processes against one (target >= 4x)
#   main_thread.txt the main thread's CPU per study outside the model (budget at the target: 1.14 ms)
#   train_compiled.txt  the training step alone at batch 64, compiled (`twoview train --compile`) against
#                   eager, and how long the compiling took
#   train_cudagraphs.txt  the same in inductor's reduce-overhead mode (CUDA graphs; not an option of
#                   `twoview train` yet: this measures whether it should be)
# `TWOVIEW_GPU_SMOKE=1 bash bench/gpu.sh` runs the same steps tiny and on the CPU, to check the script.
# `bash bench/gpu.sh NAME...` runs only the named steps (say, one that ran out of time in a first run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ]; then  # one wheel at a time: one that does not fit this machine leaves the others in
    for wheel in .whl/*.whl; do
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$wheel" || echo "could not install $wheel" | tee -a "$OUT/machine.txt"
    done
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ "${TWOVIEW_GPU_SMOKE:-0}" = 1 ]; then
    device=cpu studies=8 side=256 workers=2 batch=4 train_studies=16 train_batch=4 train_workers=2 files=60
    arch=tiny size=64 thread_studies=16 backend=aot_eager  # inductor compiles for minutes on a small CPU
else
    device=cuda studies=768 side=1024 workers=15 batch=64 train_studies=256 train_batch=64 train_workers=12
    files=3000 arch=densenet121 size=224 thread_studies=256 backend=inductor
fi

{
    date -u
    nproc
    nvidia-smi -L 2>/dev/null
    python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
    python3 -c 'import monai, pydicom, lightning; print("monai", monai.__version__, "pydicom", pydicom.__version__, "lightning", lightning.__version__)'
} 2>&1 | tee -a "$OUT/machine.txt"

wanted=" $* "  # `bash bench/gpu.sh train_compiled scan` runs only those steps (default: all)
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    [ "$wanted" = "  " ] || [[ "$wanted" == *" $name "* ]] || return 0
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}

step predict 200 python3 bench/predict.py --device "$device" --studies "$studies" --side "$side" \
    --workers "$workers" --batch-size "$batch" --rounds 2
step train_step 120 python3 bench/train.py --steps-only --step-device "$device" --arch "$arch" \
    --size "$size" --batch-size "$train_batch" --step-rounds 3
step train 180 python3 bench/train.py --studies "$train_studies" --epochs 3 --arch "$arch" --size "$size" \
    --batch-size "$train_batch" --workers "$train_workers" --step-rounds 0
step scan 90 python3 bench/scan.py --files "$files" --rounds 3
step main_thread 90 python3 bench/main_thread.py --studies "$thread_studies" --workers "$workers" \
    --batch-size "$batch"
step train_compiled 200 python3 bench/train.py --steps-only --compile --compile-backend "$backend" \
    --step-device "$device" --arch "$arch" --size "$size" --batch-size "$train_batch" --step-rounds 3
if [ "$device" = cuda ]; then  # CUDA graphs take away the launch cost of a DenseNet's many small kernels
    step train_cudagraphs 200 python3 bench/train.py --steps-only --compile --compile-mode reduce-overhead \
        --step-device cuda --arch "$arch" --size "$size" --batch-size "$train_batch" --step-rounds 3
fi
echo "results in $OUT"
