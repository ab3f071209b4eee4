#!/usr/bin/env bash
# Fetch C++ dependencies of the CUDA build from their PyPI wheels (never committed).
# pip downloads the wheel (no install) and only the folders listed below are unpacked:
#
#   scripts/fetch-headers.sh cutlass [DEST]          # nvidia-cutlass: CUTLASS/CuTe + tools/util headers
#   scripts/fetch-headers.sh cudnn-frontend [DEST]   # nvidia-cudnn-frontend: cuDNN graph API headers
#   scripts/fetch-headers.sh nccl [DEST]             # nvidia-nccl-cu13: nccl.h and libnccl.so.2
#
# DEST defaults to build/_deps/NAME; the folder is printed on success. Each wheel is pinned by
# version and by the sha256 of its files (every Python / platform variant of that version that qdit
# builds with); a wheel whose hash is not listed is refused. Versions can be overridden with
# CUTLASS_VERSION / CUDNN_FRONTEND_VERSION / NCCL_VERSION, together with the accepted hashes in
# CUTLASS_SHA256 / CUDNN_FRONTEND_SHA256 / NCCL_SHA256 (space-separated). The cuDNN library itself
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
    SHA256S="${CUTLASS_SHA256:-f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6}"
    # wheel folder -> folder under DEST
    MAP="cutlass_library/source/include/=include/ cutlass_library/source/tools/util/include/=tools/util/include/" ;;
  cudnn-frontend)
    PACKAGE=nvidia-cudnn-frontend VERSION="${CUDNN_FRONTEND_VERSION:-1.32.0}" CHECK=include/cudnn_frontend.h
    # x86-64 wheels for CPython 3.10 to 3.14
    SHA256S="${CUDNN_FRONTEND_SHA256:-4f2d6bde0bd272a1bd0dfad2f558327d6e62910c7715a6b118a94480d604a2cf
      c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0 8b354a8e550c083eb247f1eb39a7d69a4a269075f5a01e4fcbd2531680b17239
      93a4c74fc1df77144fafd5aa9e88c4a5ac36412c363860829a0b2e864c6d577d 4b206c8c3dd173dc29921f179fc599afa5dac187eb9163c54551679740534a81}"
    MAP="include/=include/" ;;
  nccl)
    PACKAGE=nvidia-nccl-cu13 VERSION="${NCCL_VERSION:-2.32.3}" CHECK=include/nccl.h
    SHA256S="${NCCL_SHA256:-1459723080ac889d73a26edfa3e04383a7928ab31ac8f0ec43b3ea9548b04ff3}"  # x86-64
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
HASH="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
if ! grep -qw "$HASH" <<<"$SHA256S"; then
  echo "fetch-headers.sh: $(basename "$WHEEL") has sha256 $HASH, which is not pinned for $PACKAGE $VERSION" >&2
  echo "  (a wheel that changed, or another version: set the matching *_SHA256 to accept it)" >&2
  exit 1
fi
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
