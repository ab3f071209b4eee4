#!/usr/bin/env bash
# One device call comparing two builds of the CUDA code, run from the repository root on the GPU
# machine. BASE and NEW are folders holding each build's bench_zimage_step and qdit_cuda_tests;
# LIBS (optional) holds shared libraries the GPU machine lacks (*.gz are unpacked first). Logs go
# to $OUT (default ./device-logs).
#   1. the full-size Z-Image step bench of the two builds, alternated ROUNDS times (default 2):
#      ms/step and the output hash for bf16 and int8 (equal hashes: bit-identical outputs);
#   2. each build's CUDA tests (the printed errors of the encoder tests against transformers and
#      the CPU are equal when the text encoder's output did not change);
#   3. compute-sanitizer memcheck over NEW's CUDA tests.
set -u -o pipefail
B="${BASE:?BASE: the first build's folder}" N="${NEW:?NEW: the second build's folder}"
O="${OUT:-device-logs}"
mkdir -p "$O"
if [ -n "${LIBS:-}" ]; then
  for f in "$LIBS"/*.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
  export LD_LIBRARY_PATH="$(cd "$LIBS" && pwd):${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; date -u; } > "$O/env.txt" 2>&1
for b in "$B" "$N"; do ldd "$b/bench_zimage_step" "$b/qdit_cuda_tests" | grep -i "not found"; done >> "$O/env.txt"
cat "$O/env.txt"
echo "== step bench (alternating)"
for r in $(seq "${ROUNDS:-2}"); do
  for b in "$B" "$N"; do
    echo "-- $b round $r"
    "$b/bench_zimage_step" --mode both ${STEP_ARGS:-} 2>&1 | tee -a "$O/step_$(basename "$b").log" | grep -E "ms/step|hash"
  done
done
echo "== tests"
for b in "$B" "$N"; do
  "$b/qdit_cuda_tests" > "$O/tests_$(basename "$b").log" 2>&1
  echo "$b: rc=$? $(grep -cE '^\[       OK' "$O/tests_$(basename "$b").log") ok, $(grep -cE '^\[  FAILED  \] [A-Z]' "$O/tests_$(basename "$b").log") failed"
  grep -E '^\[  FAILED' "$O/tests_$(basename "$b").log" | head -20
done
grep -hE '^\[ (causal_lm|model_bias_bf16)' "$O/tests_$(basename "$B").log" > "$O/encoder_base.txt"
grep -hE '^\[ (causal_lm|model_bias_bf16)' "$O/tests_$(basename "$N").log" > "$O/encoder_new.txt"
if cmp -s "$O/encoder_base.txt" "$O/encoder_new.txt"; then echo "encoder lines: identical ($(wc -l < "$O/encoder_new.txt"))"
else echo "encoder lines differ:"; diff "$O/encoder_base.txt" "$O/encoder_new.txt" | head -20; fi
echo "== memcheck"
timeout "${MEMCHECK_S:-240}" compute-sanitizer --tool memcheck --leak-check no "$N/qdit_cuda_tests" ${MEMCHECK_FILTER:-} > "$O/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|^\[  PASSED|^\[  FAILED" "$O/memcheck.log" | head
