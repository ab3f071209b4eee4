#!/usr/bin/env bash
# Z-Image DiT step, qdit vs peers, in one command on the GPU machine (see docs/benchmarks.md):
#   1. zimage_peers.py base: seeded random weights saved with save_pretrained + inputs to $PEERS_DIR,
#      diffusers bf16 eager (the reference output) and torch.compile;
#   2. qdit bf16 / int8 on that checkpoint and those inputs (bench_zimage_peer);
#   3. zimage_peers.py torchao: int8 dynamic and fp8 row-wise dynamic (eager, compiled), same files;
#   4. the comparison table (zimage_peers.py report) -> $OUT/table.md, $OUT/results.json.
# Run from anywhere; logs go to $OUT (default ./peers-logs). Inputs (copied to the GPU machine):
#   WHEELS   folder of wheels missing there (diffusers, torchao, importlib_metadata, lazy_importer): .whl
#   QDIT_BIN bench_zimage_peer built for sm_90a: .peers/bench_zimage_peer
#   QDIT_LIBS folder with libdnnl.so.2(.gz) and libOpenCL.so.1, which the binary links: .peers
# SMOKE=1 runs a 2-layer model with 3 timed steps (a check of the whole chain).
set -u -o pipefail
cd "$(dirname "$0")/../.."
O="${OUT:-peers-logs}"
D="${PEERS_DIR:-/tmp/zimage_peers}"
WHEELS="${WHEELS:-.whl}"
QDIT_BIN="${QDIT_BIN:-.peers/bench_zimage_peer}"
QDIT_LIBS="${QDIT_LIBS:-.peers}"
mkdir -p "$D"
. bench/peers/setup_env.sh

python3 bench/peers/zimage_peers.py base "$D" 2>&1 | tee "$O/base.log" || exit 1
steps=10; [ "${SMOKE:-0}" = 1 ] && steps=3
echo "[$(date +%T)] qdit"
"$QDIT_BIN" --model "$D/transformer" --inputs "$D/inputs.safetensors" --out "$D/qdit_out.safetensors" \
  --steps "$steps" --warmup 3 2>&1 | tee "$D/qdit.log" "$O/qdit.log"
# DEADLINE (seconds since the start, optional) bounds the torchao stage so that the report still runs.
left=100000; [ -n "${DEADLINE:-}" ] && left=$(( DEADLINE - SECONDS - 25 ))
if [ "$left" -gt 10 ]; then
  echo "[$(date +%T)] torchao (${left} s at most)"
  timeout "$left" python3 bench/peers/zimage_peers.py torchao "$D" 2>&1 | tee "$O/torchao.log"
else
  echo "no time left for torchao"
fi
echo "[$(date +%T)] report"
python3 bench/peers/zimage_peers.py report "$D" 2>&1 | tee "$O/report.log" || exit 1
cp "$D/table.md" "$D/results.json" "$O/"
