#!/usr/bin/env bash
# Fetches a pinned cuobjdump (from NVIDIA's `nvidia-cuda-cuobjdump` wheel) into third_party/sass-tools/ (git-ignored),
# for bench/sass_diff.py on a machine whose CUDA toolkit lacks it: CUOBJDUMP=third_party/sass-tools/cuobjdump.
# Safe to re-run: does nothing when already unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
version=13.5.37
sha256=38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58
dest=third_party/sass-tools
if [ -x "$dest/cuobjdump" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cuda-cuobjdump==${version}"
wheel=$(ls "$tmp"/nvidia_cuda_cuobjdump-*.whl)
echo "${sha256}  ${wheel}" | sha256sum --check --quiet
python3 -m zipfile -e "$wheel" "$tmp/x"
mkdir -p "$dest"
install -m 755 "$(find "$tmp/x" -type f -name cuobjdump | head -1)" "$dest/cuobjdump"
echo "cuobjdump ${version} in $dest (CUOBJDUMP=$dest/cuobjdump python3 bench/sass_diff.py OLD NEW)"
