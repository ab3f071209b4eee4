#!/usr/bin/env bash
# End-to-end text-to-image table (issue: Qwen-Image end to end), qdit vs diffusers' pipeline, on one GPU
# (see docs/benchmarks.md, "End-to-end text-to-image"):
#   for each MODEL: write the full-size pipeline folder with random weights (once; the other model's
#   folder is deleted first), then the rows qdit bf16 / int8 / int8 with img_mlp (Qwen-Image) or
#   feed_forward (Z-Image) kept, diffusers bf16 eager / regional compile, then qdit int8 with FP8
#   attention, int8 with the text encoder offloaded (generate only) and, for Qwen-Image, int8 with the
#   modulation weights on the GPU (--offload none; by default they stay in host memory) and int8 with
#   --vae-tiling (generate only); the tables -> $OUT/table.md.
# Rows finished in an earlier call on the same machine are kept (ROOT/results-MODEL.json), so a model
# that does not fit one call goes on in the next: run the same command again.
# Inputs (copied to the GPU machine), the same files as bench/cold_start/run.sh:
#   MODEL     qwen-image, zimage or all (default all; one 600 s call will likely hold only one)
#   WHEELS    folder of wheels missing there (diffusers 0.42.1, importlib_metadata): .whl
#   QDIT_BIN  the qdit CLI built with CUDA for sm_90a: .cold/qdit
#   QDIT_LIBS folder with libdnnl.so.2(.gz) and libOpenCL.so.1, which the binary links: .cold
#   ROOT      where the pipeline folders, images and results go (Qwen-Image needs 58.5 GB free there, Z-Image 21.5 GB): /tmp/e2e
#   DEADLINE  seconds since the start after which no row starts and running ones are stopped (optional)
#   ROW_S     seconds a row needs at least to be started (default 200 Qwen-Image, 60 Z-Image)
#   ROWS      semicolon-separated row names (as in the table) to run, the others skipped (optional)
# SMOKE=1: reduced models (Qwen-Image: the committed tiny pipeline's configs; Z-Image: cold_start.py's),
# 256x256, 2 steps; with DEVICE=cpu it runs without a GPU (a CPU build of qdit as QDIT_BIN; torch,
# diffusers and transformers importable).
set -u -o pipefail
cd "$(dirname "$0")/../.."
O="${OUT:-e2e-logs}"
ROOT="${ROOT:-/tmp/e2e}"
MODEL="${MODEL:-all}"
WHEELS="${WHEELS:-.whl}"
QDIT_BIN="${QDIT_BIN:-.cold/qdit}"
QDIT_LIBS="${QDIT_LIBS:-.cold}"
case "$MODEL" in all) models="zimage qwen-image" ;; qwen-image|zimage) models="$MODEL" ;;
  *) echo "error: MODEL=$MODEL: allowed values are qwen-image, zimage, all" >&2; exit 2 ;; esac
if [ "${DEVICE:-cuda}" = cpu ]; then
  mkdir -p "$O"; export PYTHONUNBUFFERED=1
else
  . bench/peers/setup_env.sh
  chmod +x "$QDIT_BIN" 2>/dev/null
fi
[ -n "${DEADLINE:-}" ] && export DEADLINE_EPOCH=$(( $(date +%s) + DEADLINE - SECONDS ))
rc=0
for m in $models; do
  echo "[$(date +%T)] $m"
  python3 bench/e2e/e2e.py run "$m" "$ROOT" "$QDIT_BIN" "$O" 2>&1 | tee "$O/$m.log" || rc=1
done
exit $rc
