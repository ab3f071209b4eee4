#!/usr/bin/env bash
# Qwen-Image DiT step (one true-CFG step, 1024x1024, 256 / 40 text tokens), qdit vs peers, in one
# command on the GPU machine (see docs/benchmarks.md):
#   1. qdit: bench_qwen_image_step, bf16 / int8 / int8 with img_mlp kept (CUDA graph), then the
#      int8 and bf16 steps' time per region (--profile 1);
#   2. qwen_image_peers.py run: diffusers bf16 eager and regional torch.compile, torchao int8 dynamic;
#   3. the table (qwen_image_peers.py report) -> $OUT/table.md.
# Inputs (copied to the GPU machine), as for bench/peers/run.sh:
#   WHEELS    folder of wheels missing there (diffusers, torchao, importlib_metadata, lazy_importer): .whl
#   QDIT_BIN  bench_qwen_image_step built for sm_90a: .peers/bench_qwen_image_step
#   QDIT_LIBS folder with libdnnl.so.2(.gz) and libOpenCL.so.1, which the binary links: .peers
#   DEADLINE  seconds since the start by which the peers stop starting new work (optional)
# SMOKE=1: 2 blocks, 3 timed steps.
set -u -o pipefail
cd "$(dirname "$0")/../.."
O="${OUT:-peers-logs}"
D="${PEERS_DIR:-/tmp/qwen_image_peers}"
WHEELS="${WHEELS:-.whl}"
QDIT_BIN="${QDIT_BIN:-.peers/bench_qwen_image_step}"
QDIT_LIBS="${QDIT_LIBS:-.peers}"
mkdir -p "$D"
. bench/peers/setup_env.sh

steps=10; layers=60
[ "${SMOKE:-0}" = 1 ] && steps=3 && layers=2
echo "[$(date +%T)] qdit"
"$QDIT_BIN" --mode all --steps "$steps" --layers "$layers" 2>&1 | tee "$O/qdit.log"
"$QDIT_BIN" --mode int8 --steps 2 --layers "$layers" --profile 1 2>&1 | tee "$O/qdit_profile.log"
"$QDIT_BIN" --mode bf16 --steps 2 --layers "$layers" --profile 1 2>&1 | tee -a "$O/qdit_profile.log"
[ -n "${DEADLINE:-}" ] && export DEADLINE_EPOCH=$(( $(date +%s) + DEADLINE - SECONDS ))
echo "[$(date +%T)] peers"
python3 bench/peers/qwen_image_peers.py run "$D" 2>&1 | tee "$O/peers.log"
echo "[$(date +%T)] report"
python3 bench/peers/qwen_image_peers.py report "$D" "$O/qdit.log" 2>&1 | tee "$O/report.log"
cp "$D/peers.json" "$D/table.md" "$O/" 2>/dev/null
exit 0
