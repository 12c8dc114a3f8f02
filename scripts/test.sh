#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs every test: CTest (GoogleTest suites, the
# install/find_package consumer, the fuzz campaign, the fusedmoe-bench runs), then the Python
# package (pip install . into a venv) and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --workflow --preset default

venv=build/python-venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "numpy>=1.24" "pytest==9.2.0"
"$venv/bin/python" -m pip install -q .
"$venv/bin/python" -m pytest -q python/tests
