#!/usr/bin/env bash
# Fetch C++ dependencies of the CUDA build from their PyPI wheels (never committed).
# pip downloads the wheel (no install) and only the folders listed below are unpacked:
#
#   scripts/fetch-headers.sh cutlass [DEST]          # nvidia-cutlass: CUTLASS/CuTe + tools/util headers
#   scripts/fetch-headers.sh cudnn-frontend [DEST]   # nvidia-cudnn-frontend: cuDNN graph API headers
#   scripts/fetch-headers.sh nccl [DEST]             # nvidia-nccl-cu13: nccl.h and libnccl.so.2
#
# DEST defaults to build/_deps/NAME; the folder is printed on success. Versions can be overridden
# with CUTLASS_VERSION / CUDNN_FRONTEND_VERSION / NCCL_VERSION. The cuDNN library itself
# (libcudnn.so.9) comes from the CUDA installation or the system. qdit loads libnccl.so.2 at run
# time (dlopen), so the build needs only nccl.h; the library is unpacked beside it as one place a
# multi-GPU run can load it from (docs/usage.md: QDIT_NCCL_LIBRARY).
set -euo pipefail
NAME="${1:?usage: fetch-headers.sh cutlass|cudnn-frontend|nccl [DEST]}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${2:-$ROOT/build/_deps/$NAME}"
case "$NAME" in
  cutlass)
    PACKAGE=nvidia-cutlass VERSION="${CUTLASS_VERSION:-4.2.0.0}" CHECK=include/cutlass/cutlass.h
    # wheel folder -> folder under DEST
    MAP="cutlass_library/source/include/=include/ cutlass_library/source/tools/util/include/=tools/util/include/" ;;
  cudnn-frontend)
    PACKAGE=nvidia-cudnn-frontend VERSION="${CUDNN_FRONTEND_VERSION:-1.32.0}" CHECK=include/cudnn_frontend.h
    MAP="include/=include/" ;;
  nccl)
    PACKAGE=nvidia-nccl-cu13 VERSION="${NCCL_VERSION:-2.32.3}" CHECK=include/nccl.h
    MAP="nvidia/nccl/include/=include/ nvidia/nccl/lib/libnccl.so=lib/libnccl.so" ;;
  *) echo "fetch-headers.sh: unknown dependency '$NAME' (cutlass, cudnn-frontend, nccl)" >&2; exit 2 ;;
esac
if [[ -f "$DEST/$CHECK" && -f "$DEST/VERSION" && "$(cat "$DEST/VERSION")" == "$VERSION" ]]; then
  echo "$DEST"; exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "$PACKAGE==$VERSION" >&2
WHEEL="$(ls "$TMP"/*.whl | head -n1)"
"$PY" - "$WHEEL" "$TMP/x" $MAP <<'PYEOF'
import os, shutil, sys, zipfile
wheel, out, pairs = sys.argv[1], sys.argv[2], [p.split("=") for p in sys.argv[3:]]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        for src, dst in pairs:
            if name.startswith(src) and not name.endswith("/"):
                target = os.path.join(out, dst + name[len(src):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as f, open(target, "wb") as g:
                    shutil.copyfileobj(f, g, 1 << 20)
PYEOF
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$TMP/x" "$DEST"
echo "$VERSION" > "$DEST/VERSION"
echo "$DEST"
