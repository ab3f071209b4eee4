#!/usr/bin/env bash
# CI: builds the libFuzzer targets of tests/fuzz (clang, AddressSanitizer + UBSan,
# CPU-only) and runs each from its committed seed corpus. A crash, an uncaught
# exception other than qdit::Error, a sanitizer report, a leak, a timeout or running
# out of memory fails, leaving the input under <build>/crashes/.
#   QDIT_JOBS          parallel compile jobs (default: the number of cores)
#   QDIT_BUILD_DIR     build folder (default: build-fuzz)
#   QDIT_FUZZ_SECONDS  seconds per target (default: 60)
#   QDIT_FUZZ_RUNS     executions per target instead of a time limit
#   QDIT_FUZZ_TARGETS  the targets to run (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
bash scripts/install-deps.sh

jobs=${QDIT_JOBS:-$(nproc)}
build=${QDIT_BUILD_DIR:-build-fuzz}
targets=${QDIT_FUZZ_TARGETS:-fuzz_safetensors fuzz_safetensors_index fuzz_model_config fuzz_tokenizer_encode fuzz_tokenizer_json fuzz_serve_request}
if [ -n "${QDIT_FUZZ_RUNS:-}" ]; then limit=(-runs="$QDIT_FUZZ_RUNS"); else limit=(-max_total_time="${QDIT_FUZZ_SECONDS:-60}"); fi

cmake -B "$build" -S . -DCMAKE_CXX_COMPILER=clang++ -DQDIT_FUZZ=ON -DQDIT_CUDA=OFF \
  -DQDIT_BUILD_TESTS=OFF -DQDIT_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Fuzz -DCMAKE_CXX_FLAGS_FUZZ="-O1 -g"
cmake --build "$build" -j"$jobs" --target $targets

export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
mkdir -p "$build/crashes"
failed=() summary=()
for t in $targets; do
  # New inputs go into the scratch corpus (the first folder); the committed seeds are only read.
  mkdir -p "$build/corpus/$t"
  dict=()
  case $t in fuzz_tokenizer_encode) ;; *) dict=(-dict=tests/fuzz/json.dict) ;; esac
  log="$build/$t.log"
  start=$(date +%s)
  rc=0
  "$build/tests/fuzz/$t" "${limit[@]}" "${dict[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/crashes/$t-" "$build/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  summary+=("$(printf '%-24s %10s executions %5ss  exit %s' "$t" "${execs:-?}" "$(( $(date +%s) - start ))" "$rc")")
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    tail -n 60 "$log"
  fi
done
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzzing failed: ${failed[*]} (inputs in $build/crashes/)"
  exit 1
fi
