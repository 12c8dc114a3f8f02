#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs every test: CTest (GoogleTest suites, the
# install/find_package consumer, the fuzz campaign, the fusedmoe-bench runs), then the Python
# package (pip install . into a venv, with torch and transformers) and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --workflow --preset default

venv=build/python-venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "numpy>=1.24" "pytest==9.2.0"
# torch and transformers (the versions of the GPU machine) run the torch.library op, torch.compile
# and the Hugging Face block-replacement tests on the CPU; FUSEDMOE_TEST_TORCH=0 skips them.
if [ "${FUSEDMOE_TEST_TORCH:-1}" != 0 ]; then
  "$venv/bin/python" -m pip install -q "torch==2.11.0" "transformers==5.17.0"
fi
"$venv/bin/python" -m pip install -q .
"$venv/bin/python" -m pytest -q python/tests
