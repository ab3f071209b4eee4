#!/usr/bin/env bash
# One device call: environment check, CUDA tests, compute-sanitizer memcheck on them, GEMM benchmark.
# Run from the repository root on the GPU machine with the binaries of BUILD (default build-gemm)
# copied along; logs go to $OUT (or ./device-logs). TESTS names the test executable: qdit_cuda_tests
# now also holds the Z-Image CUDA tests, which need libdnnl.so.2 (not on the GPU machine); a test
# binary of tests/cuda/test_cuda_{int8_gemm,quantize}.cpp alone needs only libcublasLt.
set -u -o pipefail
B="${BUILD:-build-gemm}"
T="${TESTS:-$B/qdit_cuda_tests}"
O="${OUT:-device-logs}"
mkdir -p "$O"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv;
  nvcc --version | tail -2; date -u; } > "$O/env.txt" 2>&1
ldd "$T" "$B/bench_gemm" | grep -i "not found" >> "$O/env.txt"
cuobjdump --dump-sass "$B/bench_gemm" 2>/dev/null | grep -oE "\b(IGMMA|IMMA|HGMMA)[.A-Z0-9x]*" | sort | uniq -c > "$O/sass.txt"
cat "$O/env.txt" | tail -8; cat "$O/sass.txt"
echo "== tests"; "$T" 2>&1 | tee "$O/tests.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED)|Failure|error|bound|differ" | head -40
echo "== memcheck"; timeout 300 compute-sanitizer --tool memcheck --leak-check no "$T" ${MEMCHECK_FILTER:-} > "$O/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$O/memcheck.log" | head
echo "== bench"; "$B/bench_gemm" ${BENCH_ARGS:-} 2>&1 | tee "$O/bench.log"
