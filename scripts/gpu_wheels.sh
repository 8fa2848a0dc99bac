#!/usr/bin/env bash
# Fetch, here, the wheels a lent GPU machine lacks for bench/gpu.sh, into .whl/ (ignored by git).
#
# The machine (see the device tool's README) has Python 3.12, torch, Lightning, torchmetrics, numpy,
# Pillow, scipy, matplotlib and safetensors, but not MONAI, pydicom or the pylibjpeg decoders. The
# versions are this project's locked ones. Then, with the device tool:
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
locked() { grep -i "^$1==" requirements.lock | head -1; }
platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
    manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for name in monai pydicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg pylibjpeg-rle pyjpegls; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$(locked "$name")"
done
ls -l .whl
du -sh .whl
