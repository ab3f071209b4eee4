#!/usr/bin/env bash
# Fetch the cuDNN frontend C++ headers (header-only; never committed) that the CUDA attention uses.
#
# They come from the PyPI wheel `nvidia-cudnn-frontend` (the wheel ships them under include/). The
# script downloads the wheel with pip (no install), unzips only the headers and prints the folder:
#
#   scripts/fetch-cudnn-frontend.sh [DEST]   # DEST defaults to build/_deps/cudnn-frontend
#
# QDIT_CUDNN_FRONTEND_DIR must hold include/cudnn_frontend.h. The library itself (libcudnn.so.9)
# comes from the CUDA installation or the system.
set -euo pipefail
VERSION="${CUDNN_FRONTEND_VERSION:-1.32.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/build/_deps/cudnn-frontend}"
if [[ -f "$DEST/include/cudnn_frontend.h" && -f "$DEST/VERSION" && "$(cat "$DEST/VERSION")" == "$VERSION" ]]; then
  echo "$DEST"; exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "nvidia-cudnn-frontend==$VERSION" >&2
WHEEL="$(ls "$TMP"/nvidia_cudnn_frontend-*.whl | head -n1)"
mkdir -p "$TMP/x"
"$PY" - "$WHEEL" "$TMP/x" <<'PYEOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("include/") and not name.endswith("/"):
            z.extract(name, out)
PYEOF
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$TMP/x/include" "$DEST/include"
echo "$VERSION" > "$DEST/VERSION"
echo "$DEST"
