#!/usr/bin/env bash
# CI: the CPU test suite built with AddressSanitizer and UndefinedBehaviorSanitizer
# (gcc, -O1, CPU-only, no benchmarks): qdit_tests and the qdit binary its CLI tests
# run. Any sanitizer report fails the test that triggered it.
#   QDIT_JOBS        parallel compile / test jobs (default: the number of cores)
#   QDIT_BUILD_DIR   build folder (default: build-sanitize)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
bash scripts/install-deps.sh

jobs=${QDIT_JOBS:-$(nproc)}
build=${QDIT_BUILD_DIR:-build-sanitize}
flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
cmake -B "$build" -S . -DQDIT_CUDA=OFF -DQDIT_BUILD_BENCH=OFF -DQDIT_BUILD_TESTS=ON \
  -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_CXX_FLAGS_SANITIZE="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS_SANITIZE="-fsanitize=address,undefined"
cmake --build "$build" -j"$jobs" --target qdit qdit_tests

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j"$jobs"
