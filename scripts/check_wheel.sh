#!/usr/bin/env bash
# The package as a user installs it (issue 18), next to the editable .venv of scripts/setup.sh:
#   1. builds the sdist, then the wheel from it (`pip wheel --no-deps`, as `python -m build` does), and checks
#      that both carry every file of vssm/ in git, the C++ source the CPU kernel compiles at run time included;
#   2. installs the wheel (not editable) into a venv of its own with the pinned stack (torch from this machine's
#      disk, `pip install -c constraints.txt`, as scripts/setup.sh does);
#   3. with that venv mounted read-only (a private mount namespace; where that is refused, it checks instead that
#      nothing was written into the venv), checks that vssm imports from the venv, that the CPU resolves to the
#      'cpu' backend, whose kernel is built into the user cache ($XDG_CACHE_HOME/torch_extensions), and that
#      small VMamba and GroupMamba models give the same output and input gradient as the editable install, bit
#      for bit.
#
#   bash scripts/check_wheel.sh                 # work folder ${TMPDIR:-/tmp}/vssm_check_wheel, reused if there
#   CHECK_WHEEL_FRESH=1 bash scripts/check_wheel.sh   # remove it first: a new venv and a new kernel build
#
# Reused between runs: the venv's torch (installed once) and the kernel build, whose cache folder is keyed by the
# C++ source, flags and torch (vssm/ops/cpu_kernel.py, build_directory): it is built again when one changes. The
# vssm wheel itself is installed anew on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REF_PY=${PYTHON:-$ROOT/.venv/bin/python}  # the editable install (scripts/setup.sh)
WORK=${CHECK_WHEEL_DIR:-${TMPDIR:-/tmp}/vssm_check_wheel}
VENV=$WORK/venv
BASE_PY=${CHECK_WHEEL_PYTHON:-python3.11}
command -v "$BASE_PY" >/dev/null 2>&1 || BASE_PY=python3
START=$(date +%s)
[ "${CHECK_WHEEL_FRESH:-0}" = 1 ] && rm -rf "$WORK"
rm -rf "$WORK/dist" && mkdir -p "$WORK/dist"

# 1. sdist, wheel from the sdist (setup.py, MANIFEST.in, package_data). The sdist is built from a copy of the
# files git knows (what a fresh clone has): a vssm.egg-info left in the checkout would otherwise add the files
# its SOURCES.txt lists, hiding a missing MANIFEST.in line
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null \
  | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && "$REF_PY" -c 'import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])' \
  "$WORK/dist") > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
"$REF_PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK"/dist/vssm-*.tar.gz >> "$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; exit 1; }
"$REF_PY" scripts/check_wheel.py contents "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/vssm-*.whl)

# 2. the venv: pinned torch once, then this wheel (and the rest of its requirements, pinned) on every run
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
VPY=$VENV/bin/python
TORCH=$(sed -n 's/^torch==//p' constraints.txt)
"$VPY" -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '$TORCH'" 2>/dev/null \
  || "$VPY" -m pip install -q -c constraints.txt torch torchvision
"$VPY" -m pip uninstall -q -y vssm >/dev/null 2>&1 || true
"$VPY" -m pip install -q -c constraints.txt "$WHEEL"
SETUP=$(( $(date +%s) - START ))

# 3. the reference from the editable install (this checkout first on the path), then the wheel, from outside the
# checkout so that only the installed package can be imported
PYTHONPATH="$ROOT" "$REF_PY" scripts/check_wheel.py output "$WORK/editable.pt"
touch "$WORK/installed.stamp"
CHECK=("$VPY" "$ROOT/scripts/check_wheel.py" output "$WORK/wheel.pt" --against "$WORK/editable.pt"
       --installed-in "$VENV")
export XDG_CACHE_HOME=$WORK/cache  # the kernel's user cache (torch's default build root lives under it)
rm -f "$WORK/wheel.pt"
if unshare --mount sh -c 'mount --bind -o ro "$0" "$0"' "$VENV" 2>/dev/null; then
  echo "check_wheel: $VENV mounted read-only"
  (cd "$WORK" && env -u TORCH_EXTENSIONS_DIR -u PYTHONPATH unshare --mount sh -c \
    'mount --bind -o ro "$0" "$0" && exec "$@"' "$VENV" "${CHECK[@]}")
else
  echo "check_wheel: no private mount namespace here; checking that nothing is written into $VENV instead"
  (cd "$WORK" && env -u TORCH_EXTENSIONS_DIR -u PYTHONPATH "${CHECK[@]}")
fi
WRITTEN=$(find "$VENV" -newer "$WORK/installed.stamp" -print -quit)
[ -z "$WRITTEN" ] || { echo "check_wheel: the check wrote into the venv: $WRITTEN"; exit 1; }
echo "check_wheel: passed in $(( $(date +%s) - START )) s (builds and venv ${SETUP} s)"
