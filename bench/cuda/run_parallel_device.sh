#!/usr/bin/env bash
# One device call for the multi-GPU code: the collective, row-split and split-model CUDA tests, a
# compute-sanitizer memcheck of them, and the full-size split step (bench_zimage_parallel) over
# every visible GPU, or, on a one-GPU machine, with the ranks sharing GPU 0 (--local 1: a check
# that the full-size path runs, not a multi-GPU time). Run from the repository root with the
# binaries of BUILD (default build) copied along; logs go to $OUT (or ./device-logs).
# libnccl.so.2: $QDIT_NCCL_LIBRARY if set, else the one of the Python nvidia-nccl package (PyTorch
# installs it), else the library path.
set -u -o pipefail
B="${BUILD:-build}"
T="${TESTS:-$B/qdit_cuda_tests}"
O="${OUT:-device-logs}"
F="${FILTER:-CudaCommunicator.*:CudaSplitLinear.*:CudaZImageParallel.*}"
mkdir -p "$O"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
if [[ -z "${QDIT_NCCL_LIBRARY:-}" ]]; then
  lib="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)"
  [[ -n "$lib" && -f "$lib" ]] && export QDIT_NCCL_LIBRARY="$lib"
fi
GPUS="$(nvidia-smi -L 2>/dev/null | wc -l)"
{ nvidia-smi -L; nvidia-smi topo -m; echo "QDIT_NCCL_LIBRARY=${QDIT_NCCL_LIBRARY:-}"; date -u; } > "$O/env.txt" 2>&1
ldd "$T" "$B/bench_zimage_parallel" | grep -i "not found" >> "$O/env.txt"
cat "$O/env.txt"
echo "== tests"; "$T" --gtest_filter="$F" 2>&1 | tee "$O/parallel-tests.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED)|Failure|vs one GPU|error" | head -60
# Without the NCCL tests: NCCL's own initialization asks the runtime for kernel images of other
# architectures (cudaFuncGetAttributes), and memcheck counts each refusal as an API error.
echo "== memcheck"; timeout 300 compute-sanitizer --tool memcheck --leak-check no "$T" --gtest_filter="$F-CudaCommunicator.Nccl*:CudaZImageParallel.TwoGpus*" > "$O/parallel-memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$O/parallel-memcheck.log" | head
if [[ "$GPUS" -ge 2 ]]; then
  echo "== bench over $GPUS GPUs"; "$B/bench_zimage_parallel" --gpus "$GPUS" ${BENCH_ARGS:-} 2>&1 | tee "$O/parallel-bench.log"
else
  echo "== bench, 2 ranks on GPU 0"; "$B/bench_zimage_parallel" --gpus 2 --local 1 --steps 3 ${BENCH_ARGS:-} 2>&1 | tee "$O/parallel-bench.log"
fi
