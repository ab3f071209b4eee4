#!/usr/bin/env bash
# CI for the HTTP server and the Python package, run from a clean clone after the main build
# (./build/qdit, built by the README's command): makes a fresh venv with the pinned test
# packages, builds and installs the wheel (`pip install .`, CPU-only), then runs
# tests/python: the OpenAI client against `qdit serve` on loopback, every endpoint and error
# path, and qdit.Pipeline against `qdit generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/qdit ] || { echo "error: build/qdit is missing: build first (cmake -B build -S . && cmake --build build)"; exit 1; }
venv=build/serve-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "$venv/bin/pip" install -q --disable-pip-version-check .
echo "wheel built and installed in $(( $(date +%s) - start )) s"
# From outside the source tree, so `import qdit` is the installed package.
cd tests/python
QDIT_BINARY="$PWD/../../build/qdit" "../../$venv/bin/python" -m pytest -q -p no:cacheprovider .
