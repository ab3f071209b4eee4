#!/usr/bin/env bash
# Fetch the CUTLASS C++ headers that the CUDA int8 GEMM needs (header-only; never committed).
#
# They come from the PyPI wheel `nvidia-cutlass` (the wheel ships the C++ headers under
# cutlass_library/source/{include,tools/util/include}). The script downloads the wheel with pip
# (no install), unzips only the headers and prints the folder to pass to CMake:
#
#   scripts/fetch-cutlass.sh [DEST]          # DEST defaults to build/_deps/cutlass
#   cmake -B build-cuda -S . -DQDIT_CUDA=ON -DQDIT_CUTLASS_DIR=build/_deps/cutlass
#
# QDIT_CUTLASS_DIR must hold include/cutlass/cutlass.h and tools/util/include.
set -euo pipefail
VERSION="${CUTLASS_VERSION:-4.2.0.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/build/_deps/cutlass}"
if [[ -f "$DEST/include/cutlass/cutlass.h" && -f "$DEST/VERSION" && "$(cat "$DEST/VERSION")" == "$VERSION" ]]; then
  echo "$DEST"; exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "nvidia-cutlass==$VERSION" >&2
WHEEL="$(ls "$TMP"/nvidia_cutlass-*.whl | head -n1)"
mkdir -p "$TMP/x"
"$PY" - "$WHEEL" "$TMP/x" <<'PYEOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefixes = ("cutlass_library/source/include/", "cutlass_library/source/tools/util/include/")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefixes) and not name.endswith("/"):
            z.extract(name, out)
PYEOF
rm -rf "$DEST"
mkdir -p "$DEST/tools/util"
mv "$TMP/x/cutlass_library/source/include" "$DEST/include"
mv "$TMP/x/cutlass_library/source/tools/util/include" "$DEST/tools/util/include"
echo "$VERSION" > "$DEST/VERSION"
echo "$DEST"
