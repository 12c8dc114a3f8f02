#!/usr/bin/env bash
# Fetches pinned cuobjdump and nvdisasm (cuobjdump -sass runs nvdisasm from its own folder) from NVIDIA's
# `nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels into third_party/sass-tools/ (git-ignored), for
# bench/sass_diff.py on a machine whose CUDA toolkit lacks them; sass_diff.py looks there last.
# Safe to re-run: does nothing when both are unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
version=13.5.37
dest=third_party/sass-tools
if [ -x "$dest/cuobjdump" ] && [ -x "$dest/nvdisasm" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
for tool in cuobjdump:38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58 \
            nvdisasm:d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca; do
  name=${tool%%:*} sha256=${tool#*:}
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cuda-${name}==${version}"
  wheel=$(ls "$tmp"/nvidia_cuda_"${name}"-*.whl)
  echo "${sha256}  ${wheel}" | sha256sum --check --quiet
  python3 -m zipfile -e "$wheel" "$tmp/$name"
  install -m 755 "$(find "$tmp/$name" -type f -name "$name" | head -1)" "$dest/$name"
done
echo "cuobjdump and nvdisasm ${version} in $dest (python3 bench/sass_diff.py OLD NEW finds them)"
