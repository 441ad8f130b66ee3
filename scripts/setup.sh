#!/usr/bin/env bash
# Set up .venv with the pinned torch / timm stack (constraints.txt), vssm (editable) and its dev, tools, deploy
# and OpenMMLab extras.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# exact versions from constraints.txt (setup.py itself states ranges, for installs into other environments)
PIN=(-c constraints.txt)
TORCH=$(sed -n 's/^torch==//p' constraints.txt)
if ! $VPY -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '$TORCH'" 2>/dev/null; then
  $VPY -m pip install -q --upgrade pip
  $VPY -m pip install -q "${PIN[@]}" torch torchvision
fi
if ! $VPY -c "import vssm, timm, fvcore, pytest, sklearn, matplotlib, hypothesis" 2>/dev/null; then
  $VPY -m pip install -q "${PIN[@]}" -e '.[dev,tools]'
fi
# the deploy extra: ONNX export (onnx, onnxscript) and onnxruntime for tools/export.py and its tests
if ! $VPY -c "import onnx, onnxscript, onnxruntime" 2>/dev/null; then
  $VPY -m pip install -q "${PIN[@]}" -e '.[deploy]'
fi
if [ -f scripts/install_mm.sh ] && [ "${VSSM_SKIP_MM:-0}" != "1" ]; then
  bash scripts/install_mm.sh "$VPY"
fi
# first imports write caches (yapf's grammar pickle under mmengine, the fused CPU scan's C++ build): do them
# once here, so parallel test workers never race on a half-written file
$VPY - <<'PY'
import importlib.util
from vssm.ops.cpu_kernel import load_extension
load_extension()
if importlib.util.find_spec('mmengine') is not None:
    import mmengine.config  # noqa: F401
PY
echo "vssm environment ready: $VPY"
