#!/usr/bin/env bash
# The smoke subset (tests/smoke) on the floors of setup.py: torch 2.13.0 (its CPU wheel is on this machine's disk)
# and timm 1.0.29, in a venv of its own beside .venv. Import, every family's forward + backward at a small
# size, the plan-scan op's opcheck, a compiled training step, and the fused C++ CPU kernel built against it.
# tests/test_package.py checks that the defaults below are setup.py's floors.
#
#   bash scripts/smoke_old_torch.sh              # venv in ${TMPDIR:-/tmp}/vssm_smoke_torch2.13.0, reused if there
#   SMOKE_FRESH=1 bash scripts/smoke_old_torch.sh   # remove that venv first
#
# torchvision: the PyPI wheel matching torch 2.13 (0.28.0) links torch's CUDA libraries, so its C++ ops do not
# load beside the CPU torch; tests/smoke/conftest.py lets timm import its pure-Python parts anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_VERSION=${SMOKE_TORCH:-2.13.0}
TORCHVISION_VERSION=${SMOKE_TORCHVISION:-0.28.0}
TIMM_VERSION=${SMOKE_TIMM:-1.0.29}
BASE_PY=${SMOKE_PYTHON:-python3.11}
command -v "$BASE_PY" >/dev/null 2>&1 || BASE_PY=python3
VENV=${SMOKE_VENV:-${TMPDIR:-/tmp}/vssm_smoke_torch$TORCH_VERSION}
START=$(date +%s)

[ "${SMOKE_FRESH:-0}" = 1 ] && rm -rf "$VENV"
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
VPY=$VENV/bin/python
have() {  # have DIST VERSION: installed at exactly that version (metadata only)
  "$VPY" -c 'import sys; from importlib.metadata import version
sys.exit(version(sys.argv[1]).split("+")[0] != sys.argv[2])' "$1" "$2" 2>/dev/null
}
have torch "$TORCH_VERSION" || "$VPY" -m pip install -q "torch==$TORCH_VERSION"
# --no-deps: both would pull a CUDA torch of their own
have torchvision "$TORCHVISION_VERSION" || "$VPY" -m pip install -q --no-deps "torchvision==$TORCHVISION_VERSION"
have timm "$TIMM_VERSION" || "$VPY" -m pip install -q --no-deps "timm==$TIMM_VERSION"
"$VPY" -c 'import numpy, yaml, huggingface_hub, safetensors, PIL, pytest' 2>/dev/null \
  || "$VPY" -m pip install -q numpy pyyaml huggingface_hub safetensors pillow pytest
SETUP=$(( $(date +%s) - START ))
echo "smoke_old_torch: $("$VPY" -c 'import sys, torch; from importlib.metadata import version; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, timm {version(sys.argv[1])}")' timm), venv ready in ${SETUP} s"

# vssm from this checkout (not installed: scripts/check_wheel.sh tests the wheel); its C++ CPU kernel builds into the venv.
# pytest's summary line (with its time) closes the output
PYTHONPATH="$ROOT" TORCH_EXTENSIONS_DIR="$VENV/torch_extensions" \
  exec "$VPY" -m pytest -q -p no:cacheprovider tests/smoke "$@"
