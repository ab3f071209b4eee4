#!/usr/bin/env bash
# Installs the Debian packages qdit builds with (nothing when they are all present).
# The CUDA backend additionally needs the CUDA toolkit (nvcc); without it the
# build is CPU-only.
set -euo pipefail
pkgs=(cmake make g++ nlohmann-json3-dev libcli11-dev libfmt-dev libdnnl-dev libopenblas-dev
      libgtest-dev libbenchmark-dev libpng-dev libpcre2-dev libicu-dev pkg-config
      libcpp-httplib-dev python3-venv python3-dev)
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
