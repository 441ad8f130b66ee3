#!/usr/bin/env bash
# Install the OpenMMLab stack for vssm.mm (mmdet / mmseg backbones) into the python given as $1:
#   mmengine==0.10.7, mmcv==2.1.0, mmdet==3.3.0, mmsegmentation==1.2.2, ftfy, regex, pycocotools.
# Installs only what is missing; safe to run again.
#
# mmcv: PyPI has only its source. A prebuilt wheel is taken from ../shared/wheels (relative to the repo)
# when that folder has one for this python. Otherwise the sdist is built here against the installed torch,
# which needs (DESIGN §5): setuptools<81 (its setup.py imports pkg_resources; this downgrades setuptools in
# the environment), --no-build-isolation (its setup.py imports torch), and -std=c++20 (today's torch
# headers; mmcv's setup.py hard-codes c++14/17, so the unpacked sdist is patched). A CPU build takes about
# 40 minutes on 2 cores; MAX_JOBS sets the parallelism. The shared wheel has CPU ops only, so where torch sees
# a GPU (or FORCE_CUDA=1) mmcv is built from source with its CUDA ops; MMCV_FROM_SOURCE=1 forces the build.
set -euo pipefail
PY=${1:?usage: install_mm.sh /path/to/python}
cd "$(dirname "$0")/.."
WHEELS="$(pwd)/../shared/wheels"
PIP=("$PY" -m pip install -q)
FIND=()
[ -d "$WHEELS" ] && FIND=(--find-links "$WHEELS")

# have DIST [VERSION]: the distribution is installed (at exactly VERSION); metadata only, no slow imports
have() {
  "$PY" -c 'import sys; from importlib.metadata import version
v = version(sys.argv[1]); sys.exit(len(sys.argv) > 2 and v != sys.argv[2])' "$@" 2>/dev/null
}

MMCV_SRC=''
trap '[ -n "$MMCV_SRC" ] && rm -rf "$MMCV_SRC"' EXIT  # the unpacked sdist, also on failure or interrupt

build_mmcv_from_source() {
  echo "install_mm: building mmcv 2.1.0 from source against this torch (about 40 min on 2 cores for CPU ops)"
  MMCV_SRC=$(mktemp -d)
  "${PIP[@]}" 'setuptools<81' wheel ninja
  local url
  url=$(curl -sfL https://pypi.org/simple/mmcv/ | grep -o 'https://[^"#]*/mmcv-2\.1\.0\.tar\.gz' | head -1)
  curl -sfL -o "$MMCV_SRC/mmcv-2.1.0.tar.gz" "$url"
  tar -xzf "$MMCV_SRC/mmcv-2.1.0.tar.gz" -C "$MMCV_SRC"
  sed -i 's/std=c++1[47]/std=c++20/g; s/std:c++1[47]/std:c++20/g' "$MMCV_SRC/mmcv-2.1.0/setup.py"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install ${PIP_VERBOSE:+-v} --no-build-isolation \
    "$MMCV_SRC/mmcv-2.1.0"
}

have mmengine 0.10.7 || "${PIP[@]}" 'mmengine==0.10.7'
# mmengine 0.10.7 resolves 'mmdet::' / 'mmseg::' config bases through pkg_resources, gone from setuptools>=81
"$PY" -W ignore -c 'import pkg_resources' 2>/dev/null || "${PIP[@]}" 'setuptools<81'
# the distribution 'mmcv' is the full build with compiled ops ('mmcv-lite' is a different one)
if ! have mmcv 2.1.0; then
  if [ "${MMCV_FROM_SOURCE:-0}" = 1 ] || [ "${FORCE_CUDA:-0}" = 1 ] \
     || "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    build_mmcv_from_source
  elif "${PIP[@]}" "${FIND[@]}" --only-binary mmcv 'mmcv==2.1.0'; then
    echo "install_mm: mmcv 2.1.0 from a prebuilt wheel"
  else
    build_mmcv_from_source
  fi
fi
# mmdet / mmseg pin mmcv<2.2.0, so the mmcv above is kept
have mmdet 3.3.0 || "${PIP[@]}" "${FIND[@]}" 'mmdet==3.3.0'
have mmsegmentation 1.2.2 || "${PIP[@]}" "${FIND[@]}" 'mmsegmentation==1.2.2'
for dist in ftfy regex pycocotools; do
  have "$dist" || "${PIP[@]}" "$dist"
done
echo "install_mm: mmengine 0.10.7, mmcv 2.1.0, mmdet 3.3.0, mmsegmentation 1.2.2 ready for $PY"
