#!/usr/bin/env bash
# Installs the Debian packages qdit builds with (nothing when they are all present).
# The CUDA backend additionally needs the CUDA toolkit (nvcc); without it the
# build is CPU-only.
set -euo pipefail
# ocl-icd-opencl-dev: Debian's oneDNN CMake package looks for OpenCL's headers and library (it
# only recommends them, so --no-install-recommends leaves them out). libcpp-httplib-dev: qdit serve;
# python3-venv / python3-dev: the Python package and the server's tests.
pkgs=(cmake make g++ nlohmann-json3-dev libcli11-dev libfmt-dev libdnnl-dev ocl-icd-opencl-dev
      libopenblas-dev libgtest-dev libbenchmark-dev libpng-dev libpcre2-dev libicu-dev pkg-config
      libcpp-httplib-dev python3-venv python3-dev
      clang libclang-rt-14-dev)  # clang and its sanitizer / libFuzzer runtimes: .ci/fuzz.sh
# A CUDA build fetches header libraries from their wheels (scripts/fetch-headers.sh): pip.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  pkgs+=(python3 python3-pip)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
