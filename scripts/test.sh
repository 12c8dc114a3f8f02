#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs every test (CTest: GoogleTest suites, the
# install/find_package consumer, the fusedmoe-bench sweep over every preset and scheme).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --workflow --preset default
