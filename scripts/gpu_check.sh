#!/usr/bin/env bash
# One command that proves the GPU path (issue 10): build kernels/, run the GPU tests, time the plan scan and whole
# models, and write one report. Made for the lent GPU machine (Python 3.12, torch 2.11, no package registry):
#
#   bash scripts/gpu_check.sh             # on the GPU machine: the device tool's run, with carry ['carry']
#   bash scripts/gpu_check.sh --dry-run   # on a CPU at tiny shapes (Triton interpreted): proves the script (CI)
#
# It uses $PYTHON (default: the machine's python3) and installs nothing from a registry: wheels carried in
# carry/wheels/ (scripts/prepare_carry.sh) go into a folder of their own, put first on PYTHONPATH. Every part
# has its own time limit, a failing part does not stop the others, and the limits are also cut to a total
# budget (GPU_CHECK_BUDGET, 450 s) so the whole run ends within 8 minutes on an H100/H200.
# Output: $OUT (the device tool's folder) or ./gpu_report/: report.md, tests.csv, scan.csv, models.csv,
# report.png, gpu_check.log (scripts/gpu_report.py writes them). The exit status is 0 when every part passed.
#
# Knobs (environment): PYTHON, OUT, GPU_CHECK_BUDGET (s), GPU_CHECK_ONLY="part part" (rerun some parts),
# GPU_TEST_WORKERS (pytest-xdist workers on the GPU, 4), TORCH_CUDA_ARCH_LIST (default: the device's),
# VIM_BATCH (batch of the 1248² Vim/DeiT runs, 32), VSSM_GPU_CHECK_BUILD=1 (also build kernels/ in a dry run),
# GPU_CHECK_KEEP_WORK=1 (keep the work folder: junit files, per-part logs and CSVs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  '') ;;
  *) echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$ROOT/gpu_report}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vssm_gpu_check.XXXXXX")
mkdir -p "$OUT_DIR" "$WORK/logs" "$WORK/site" "$WORK/ext"
# the report keeps what matters (gpu_check.log holds every part's output); GPU_CHECK_KEEP_WORK=1 keeps the rest
[ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
: > "$WORK/parts.tsv"
# carried wheels and the built extension come before the machine's packages (a newer timm there loses to ours)
export PYTHONPATH="$WORK/ext:$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
# on the GPU the budget keeps the run inside 8 minutes; a dry run on a slow shared CPU gets twice each limit
BUDGET=${GPU_CHECK_BUDGET:-$([ "$DRY" = 1 ] && echo 900 || echo 450)}
LIMIT_SCALE=$([ "$DRY" = 1 ] && echo 2 || echo 1)
REPORT_RESERVE=20  # seconds kept for the report at the end

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1  # Triton's CPU interpreter: the fused kernels run, slowly, at tiny shapes
fi

log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

# part NAME LIMIT CMD...: run CMD under its own time limit (cut to what is left of the budget), output in
# logs/NAME.log, status in parts.tsv (name, exit code, seconds, limit)
part() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE ))
  shift 2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    printf '%s\tskip\t0\t0\tnot selected by GPU_CHECK_ONLY\n' "$name" >> "$WORK/parts.tsv"
    return 0
  fi
  local left=$(( START + BUDGET - REPORT_RESERVE - $(date +%s) ))
  if [ "$left" -lt 5 ]; then
    printf '%s\tskip\t0\t0\tno time left in the %s s budget\n' "$name" "$BUDGET" >> "$WORK/parts.tsv"
    log "$name: skipped, no time left"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name: start (limit ${limit} s)"
  local t0 rc
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$dt" "$limit" >> "$WORK/parts.tsv"
  if [ "$rc" = 0 ]; then
    log "$name: ok, ${dt} s"
  else
    log "$name: FAILED (exit $rc; 124 = time limit), ${dt} s; last lines:"
    tail -n 5 "$WORK/logs/$name.log" | cut -c1-300 | sed 's/^/    /'
  fi
  return 0
}

skip() {  # skip NAME WHY
  printf '%s\tskip\t0\t0\t%s\n' "$1" "$2" >> "$WORK/parts.tsv"
  log "$1: skipped ($2)"
}

log "vssm GPU check$([ "$DRY" = 1 ] && echo ' (dry run, CPU, tiny shapes)'); python: $PY; work: $WORK; report: $OUT_DIR"

# ------------------------------------------------------------------------------------------ environment
part env 60 "$PY" scripts/gpu_report.py env --output "$WORK/env.json"

WHEELS=(carry/wheels/*.whl)
if [ -e "${WHEELS[0]}" ]; then
  # --no-deps: exactly the carried wheels (scripts/prepare_carry.sh lists them); one version of each
  part wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${WHEELS[@]}"
else
  skip wheels 'no carry/wheels/*.whl; the machine packages are used as they are'
fi

# ------------------------------------------------------------------------------- build kernels/ (background)
# the CUDA C++ extension builds while the tests that do not need it run (nvcc uses a few cores; pytest waits
# on Triton's compiler): the build is off the critical path
if [ "$DRY" = 1 ] && [ "${VSSM_GPU_CHECK_BUILD:-0}" != 1 ]; then
  skip build 'dry run; CI compiles kernels/ in tests/test_cuda_ext.py::test_extension_builds'
  BUILD_PID=''
else
  ARCHS=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' \
    2>/dev/null || echo '8.0;9.0+PTX')}
  BUILD_CMD=(env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="$ARCHS" "$PY" -m pip install -v --no-index --no-deps
             --no-build-isolation --no-cache-dir --target "$WORK/ext" ./kernels)
  echo "${BUILD_CMD[*]}" > "$WORK/build_cmd.txt"
  part build 150 "${BUILD_CMD[@]}" &
  BUILD_PID=$!
fi

# ----------------------------------------------------------------------------------------------- GPU tests
mapfile -t GPU_FILES < <(grep -l 'mark\.gpu' tests/test_*.py tests/*/test_*.py 2>/dev/null)
EXT_FILES=(); MAIN_FILES=()
for f in "${GPU_FILES[@]}"; do
  if [ "$f" = tests/test_cuda_ext.py ]; then EXT_FILES+=("$f"); else MAIN_FILES+=("$f"); fi
done
PYTEST=("$PY" -m pytest -m gpu -v -rfE -p no:cacheprovider --continue-on-collection-errors)
if [ "$DRY" = 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then
  PYTEST+=(-n "${GPU_TEST_WORKERS:-4}")
fi
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  PYTEST+=(--timeout 120)  # one hanging test must not take the whole part's time (and its junit file)
fi
if [ "${#MAIN_FILES[@]}" -gt 0 ]; then
  part tests 150 "${PYTEST[@]}" --junitxml "$WORK/junit_tests.xml" "${MAIN_FILES[@]}"
else
  skip tests 'no test file has gpu-marked tests'
fi
[ -n "$BUILD_PID" ] && wait "$BUILD_PID"
if [ "${#EXT_FILES[@]}" -gt 0 ]; then
  part tests_cuda_ext 90 "${PYTEST[@]}" --junitxml "$WORK/junit_tests_cuda_ext.xml" "${EXT_FILES[@]}"
fi

# ------------------------------------------------------------------------------------------ scan benchmark
if [ "$DRY" = 1 ]; then
  SCAN=("$PY" tools/benchmark_scan.py --device cpu --smoke --batch 1 --dtype float32)
else
  SCAN=("$PY" tools/benchmark_scan.py --dtype bfloat16 --warmup 3 --iters 10)
fi
SCAN+=(--impls fused cuda unfused --skip-missing --keep-going)

# ---------------------------------------------------------------------------------------- model benchmark
BENCH=("$PY" tools/benchmark.py --channels-last --no-flops)
VMAMBA=(--model vmamba_tiny_s1l8)
if [ "$DRY" = 1 ]; then
  # float32: bfloat16 autocast is slow on CPUs without bf16 units; the AMP path is covered by the GPU tests
  BENCH+=(--device cpu --precision float32 --num-warm-iter 0 --num-bench-iter 1)
  IMG=32; INFER_B=1; TRAIN_B=2; VIM_B=1; VIM_SIZE=32; COMPILE=(--torchcompile aot_eager)
  VMAMBA+=(--model-kwargs 'depths=(1,1,1,1)' dims=16)  # compile traces the model: keep it small on a CPU
else
  BENCH+=(--precision amp --amp-dtype bfloat16 --num-warm-iter 3 --num-bench-iter 10)
  IMG=224; INFER_B=128; TRAIN_B=64; VIM_B=${VIM_BATCH:-32}; VIM_SIZE=1248; COMPILE=(--torchcompile)
fi
MODELS_224=(--model vmamba_tiny_s1l8 mambavision_tiny convnext_tiny swin_tiny_patch4_window7_224 --img-size "$IMG")

# the goals' figures first, so a short budget drops the extras
part scan_cls224 75 "${SCAN[@]}" --shape-set cls224 --csv "$WORK/scan_cls224.csv"
part models_infer 60 "${BENCH[@]}" "${MODELS_224[@]}" --bench inference -b "$INFER_B" \
  --results-file "$WORK/models_infer.csv"
part models_train 60 "${BENCH[@]}" "${MODELS_224[@]}" --bench train -b "$TRAIN_B" \
  --results-file "$WORK/models_train.csv"
part models_vim 45 "${BENCH[@]}" --model vim_tiny deit_tiny_patch16_224 --img-size "$VIM_SIZE" \
  --bench inference -b "$VIM_B" --results-file "$WORK/models_vim.csv"
part scan_det800 45 "${SCAN[@]}" --shape-set det800 --csv "$WORK/scan_det800.csv"
part models_compile 90 "${BENCH[@]}" "${VMAMBA[@]}" --img-size "$IMG" "${COMPILE[@]}" --bench inference -b "$INFER_B" \
  --results-file "$WORK/models_compile.csv"
# DeiT as the Vim paper timed it: explicit attention instead of the fused SDPA kernel
part models_vim_naive_attn 30 env TIMM_FUSED_ATTN=0 "${BENCH[@]}" --model deit_tiny_patch16_224 \
  --img-size "$VIM_SIZE" --bench inference -b "$VIM_B" --results-file "$WORK/models_vim_naive_attn.csv"
# the SSD (Mamba-2) scan per vmamba_tiny_m2 layer shape, and its training step against VMamba-T s1l8 (issue 22)
if [ "$DRY" = 1 ]; then
  SSD=("$PY" tools/benchmark_ssd.py --smoke)
else
  SSD=("$PY" tools/benchmark_ssd.py --device cuda --batch 128 --dtype bfloat16 --impls fast triton --warmup 3 --iters 10)
fi
part scan_ssd 45 "${SSD[@]}"
part models_train_m2 60 "${BENCH[@]}" --model vmamba_tiny_m2 vmamba_tiny_s1l8 --img-size "$IMG" --bench train \
  -b "$TRAIN_B" --results-file "$WORK/models_train_m2.csv"

# ------------------------------------------------------------------------------------------------ report
REPORT=("$PY" scripts/gpu_report.py report --work "$WORK" --out "$OUT_DIR" --started "$START")
[ "$DRY" = 1 ] && REPORT+=(--dry-run --require-complete)  # CI: every part ran and every section has figures
timeout 60 "${REPORT[@]}"
rc=$?
log "done in $(( $(date +%s) - START )) s; report: $OUT_DIR/report.md"
if [ ! -s "$OUT_DIR/report.md" ] || [ "$rc" != 0 ]; then
  log "report: exit $rc$([ -s "$OUT_DIR/report.md" ] || echo ', report.md not written')"
  exit 1
fi
# exit 1 when a part failed or timed out (skipped parts are fine)
awk -F'\t' '$2 != "skip" && $2 != "0" { bad = 1 } END { exit bad }' "$WORK/parts.tsv"
