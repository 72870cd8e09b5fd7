#!/usr/bin/env bash
# Quick start, command 2 (and what CI runs): set everything up, then run the test suite.
# GPU tests are marked `gpu` and skip themselves where no CUDA execution provider exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m pytest -q -p no:cacheprovider "$@"
