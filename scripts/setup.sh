#!/usr/bin/env bash
# Installs the Debian packages Flip builds on, when they are missing:
#   Open MPI (libopenmpi-dev openmpi-bin), oneDNN (libdnnl-dev), zlib (zlib1g-dev) and the
#   Fashion-MNIST data set (dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist), and
#   iproute2 (ip netns: the tests on emulated hosts, scripts/cluster.sh), and libjpeg-turbo and
#   libpng (libjpeg62-turbo-dev libpng-dev: decoding ImageNet-format data), and HDF5
#   (libhdf5-dev: Keras weight files).
# Works without a terminal (CI): apt runs non-interactively.
set -euo pipefail
packages=(libopenmpi-dev openmpi-bin libdnnl-dev zlib1g-dev dataset-fashion-mnist pkg-config iproute2
  libjpeg62-turbo-dev libpng-dev libhdf5-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Flip needs Swift 6.x)" >&2; exit 1; }
