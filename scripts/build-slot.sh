#!/usr/bin/env bash
# Compiler launcher that bounds how many compilations of one kind run at once, whatever `-j`
# says: `build-slot.sh DIR N command...` waits for one of N lock files under DIR (flock), then
# runs the command holding it. CMake sets it as the launch rule of every compile (see
# CMakeLists.txt: QDIT_COMPILE_JOBS, QDIT_CUDA_COMPILE_JOBS), so `cmake --build build -j` on a
# small machine queues the compilers instead of running out of memory.
set -u
dir=$1 n=$2
shift 2
mkdir -p "$dir"
while :; do
  for ((i = 0; i < n; ++i)); do
    exec {fd}>"$dir/slot$i"
    if flock -n "$fd"; then
      exec "$@"   # the lock stays held by the open descriptor until the compiler exits
    fi
    exec {fd}>&-
  done
  sleep 0.2
done
