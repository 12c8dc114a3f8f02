#!/usr/bin/env bash
# Installs what the build and tests need (Debian/Ubuntu): a C++20 compiler, CMake >= 3.25,
# Ninja, GoogleTest, Python 3 with venv (the Python package's tests). Packages already present
# are left alone. The CUDA backend needs the CUDA toolkit (nvcc), which is not installed here.
set -euo pipefail
need=()
command -v g++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
command -v python3 >/dev/null || need+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
cmake_version=$(cmake --version | head -1 | awk '{print $3}')
if [ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -1)" != "3.25" ]; then
  echo "fusedmoe needs CMake >= 3.25, found $cmake_version" >&2
  exit 1
fi
