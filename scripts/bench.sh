#!/usr/bin/env bash
# Installs dependencies, builds, and runs fusedmoe-bench (arguments are passed through; with
# none it runs the small default: qwen3-30b-a3b with 32 experts at 1, 16 and 64 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --preset default >/dev/null
cmake --build --preset default >/dev/null
exec build/tools/fusedmoe-bench "$@"
