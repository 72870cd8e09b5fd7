#!/usr/bin/env bash
# Quick start, command 1: set everything up, then run the main job on the real model (SmolLM2-135M):
# GPTQ W4 g128 -> ONNX (MatMulNBits) -> ONNX Runtime, perplexity FP32 vs quantized, and a generated sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec edgeq pipeline "$@"
