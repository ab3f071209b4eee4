#!/usr/bin/env bash
# Cold start of one image, qdit vs diffusers, in one command on the GPU machine (docs/benchmarks.md):
#   1. cold_start.py write: the full-size Z-Image-Turbo pipeline folder with seeded random weights
#      (the published configs under tests/data; bf16 safetensors via save_pretrained; the committed
#      test tokenizer) in $PIPE_DIR, unless a complete one is there already;
#   2. cold_start.py run: one `qdit generate --device cuda --verbose` process per row (1024x1024,
#      9 steps): int8 with an empty plan cache (builds the cuDNN plans), int8 again (reads them),
#      bf16, then diffusers' ZImagePipeline load + first image in a fresh Python process, and, when
#      `echo 3 > /proc/sys/vm/drop_caches` is allowed, qdit int8 and diffusers with the page cache
#      dropped before each. Each process: load / total (its own summary), GPU peak, host peak RSS and
#      peak anonymous RSS (/proc/PID/status, sampled every 20 ms), plans built / read;
#   3. the table -> $OUT/table.md, $OUT/results.json (with every process's output in $OUT/*.log).
# Run from the repository root or anywhere; logs go to $OUT (default ./cold-logs). Inputs (copied
# to the GPU machine, which has no network):
#   QDIT_BIN  the qdit command-line binary built for sm_90a (default .cold/qdit)
#   QDIT_LIBS folder with the shared libraries the binary needs that the machine lacks
#             (libdnnl.so.2 or libdnnl.so.2.gz, libOpenCL.so.1; default .cold)
#   WHEELS    folder of wheels missing there (diffusers and what it needs beyond the image's
#             packages; default .whl), installed as bench/peers/setup_env.sh does
#   PIPE_DIR  where the pipeline folder is written or reused (default /tmp/zimage_full; 20 GB)
# QDIT_LOAD_THREADS (qdit's file-reading threads, default 4) is passed on to the qdit processes.
# SMOKE=1 writes and runs a reduced pipeline (2 + 1 transformer layers, 2 text-encoder layers,
# 256x256, 2 steps): a check of the whole chain in well under a minute.
# It fits one 600 s device call at full size: about 60 s to write the folder, 10-25 s per qdit
# process, 15-30 s for diffusers, more with the page cache dropped.
set -u -o pipefail
cd "$(dirname "$0")/../.."
O="${OUT:-cold-logs}"
D="${PIPE_DIR:-/tmp/zimage_full}"
[ "${SMOKE:-0}" = 1 ] && D="${PIPE_DIR:-/tmp/zimage_smoke}"
WHEELS="${WHEELS:-.whl}"
QDIT_BIN="${QDIT_BIN:-.cold/qdit}"
QDIT_LIBS="${QDIT_LIBS:-.cold}"
. bench/peers/setup_env.sh  # wheels, qdit's libraries, $O/env.txt (the peers' set-up)
chmod +x "$QDIT_BIN" 2>/dev/null
{ nproc; free -g | head -2; df -h "$(dirname "$D")" | tail -1; } >> "$O/env.txt" 2>&1

echo "[$(date +%T)] pipeline folder $D"
python3 bench/cold_start/cold_start.py write "$D" 2>&1 | tee "$O/write.log" || exit 1
echo "[$(date +%T)] runs"
python3 bench/cold_start/cold_start.py run "$D" "$QDIT_BIN" "$O" 2>&1 | tee "$O/run.log" || exit 1
echo "[$(date +%T)] done"
cat "$O/table.md"
