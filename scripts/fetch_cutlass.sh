#!/usr/bin/env bash
# Fetches the pinned CUTLASS/CuTe headers from the published `nvidia-cutlass` wheel (it ships
# them under cutlass_library/source/include) into third_party/cutlass-<version>/ (git-ignored).
# The CUDA backend's CMake looks there. Safe to re-run: does nothing when already unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.2.0.0
sha256=f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6
dest=third_party/cutlass-${version}
if [ -f "$dest/include/cutlass/cutlass.h" ] && [ -f "$dest/util/include/cutlass/util/packed_stride.hpp" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==${version}"
wheel=$(ls "$tmp"/nvidia_cutlass-*.whl)
echo "${sha256}  ${wheel}" | sha256sum --check --quiet
python3 - "$wheel" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist()
                               if n.startswith(("cutlass_library/source/include/",
                                                "cutlass_library/source/tools/util/include/"))])
PY
rm -rf "$dest" && mkdir -p "$dest/util"
mv "$tmp/x/cutlass_library/source/include" "$dest/include"
mv "$tmp/x/cutlass_library/source/tools/util/include" "$dest/util/include"
echo "CUTLASS ${version} headers in $dest"
