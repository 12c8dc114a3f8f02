#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs every test: CTest (GoogleTest suites, the
# install/find_package consumer, the fuzz campaign, the fusedmoe-bench runs), the CPU suite again
# under the address, leak and undefined-behaviour sanitizers, then the Python
# package (pip install . into a venv, with torch and transformers) and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --workflow --preset default
# The CPU backend (the oracle) and the tools again under AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer (CMakePresets.json: `sanitize`, build-sanitize/, no CUDA; ~6 minutes on
# 2 cores); FUSEDMOE_TEST_SANITIZE=0 skips it.
if [ "${FUSEDMOE_TEST_SANITIZE:-1}" != 0 ]; then
  cmake --workflow --preset sanitize
fi

venv=build/python-venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "numpy>=1.24" "pytest==9.2.0"
# torch and transformers (the versions of the GPU machine) run the torch.library op, torch.compile
# and the Hugging Face block-replacement tests on the CPU; FUSEDMOE_TEST_TORCH=0 skips them.
if [ "${FUSEDMOE_TEST_TORCH:-1}" != 0 ]; then
  "$venv/bin/python" -m pip install -q "torch==2.11.0" "transformers==5.17.0"
fi
# Without a GPU the package's CUDA code cannot run (its tests skip) and the CMake build above has compiled that
# code already: the package then leaves it out, which saves CI a second CUDA build (~12 of its minutes). On a GPU
# machine the package builds the CUDA backend as always.
package_args=()
if ! nvidia-smi -L >/dev/null 2>&1; then package_args=(--config-settings=cmake.define.FUSEDMOE_CUDA=OFF); fi
"$venv/bin/python" -m pip install -q "${package_args[@]}" .
"$venv/bin/python" -m pytest -q python/tests
