#!/usr/bin/env bash
# Fill carry/wheels/ (git-ignored) with the pure-Python wheels the lent GPU machine lacks, so that
# scripts/gpu_check.sh can install them there without a registry. Run it here, where PyPI is reachable,
# before the device tool's run with carry ['carry'].
#
#   bash scripts/prepare_carry.sh
#
# What the GPU machine has (the device tool's KINDS.md): Python 3.12, torch 2.11, torchvision 0.26, triton 3.6,
# numpy, pyyaml, tqdm, matplotlib, scikit-learn, pytest, pytest-xdist, huggingface-hub, safetensors, tabulate,
# portalocker and a timm of unknown version; no fvcore, iopath, yacs or termcolor. So it gets
#   timm 1.0.31                           the version vssm is written and tested against
#   fvcore + iopath, yacs, termcolor      FLOP counts (vssm.ops.flops); fvcore and iopath have no wheels on PyPI: built here
# One version of each, installed with --no-deps (a second version of a package would stop the install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=carry/wheels
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# the GPU machine's interpreter and platform (wheels for Python 3.12 on x86-64 Linux)
TARGET=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DEST" \
  'timm==1.0.31' 'yacs==0.1.8' 'termcolor==3.3.0'
"$PY" -m pip wheel -q --no-deps -w "$DEST" 'fvcore==0.1.5.post20221221' 'iopath==0.1.10'
for whl in "$DEST"/*.whl; do
  case "$whl" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*.whl) ;;
    *) echo "prepare_carry: $whl is not for Python 3.12 on the GPU machine" >&2; exit 1 ;;
  esac
done
ls -1 "$DEST"
echo "prepare_carry: $(du -sh "$DEST" | cut -f1) in $DEST; the device run names carry ['carry']"
