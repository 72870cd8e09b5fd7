#!/usr/bin/env bash
# End-to-end GPU check on the GPU machine, from the repository root: calibration on CUDA against the CPU
# (tests/test_quantize_device.py), then decode/prefill tokens/s of random-weight LLaMA-7B-shaped models per
# weight format through ORT's CUDA EP (`edgeq bench synthetic`); results in $OUT.
#
#   python -m edgeq.custom_ops.device.prepare --dest .opsbuild_e2e
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild_e2e"],
#       command="bash custom_ops/device/e2e.sh")
# FORMATS, LAYERS, NEW_TOKENS, ROUNDS override the benchmark's defaults.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-e2e}
OPSBUILD=${OPSBUILD:-.opsbuild_e2e}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

eval "$(bash .device/ort-gpu.sh)" || { echo "ORT-GPU bundle missing: carry .device (see README)"; exit 2; }
python3 -m pip install --no-deps --no-build-isolation -e . -q >/tmp/pip.log 2>&1 || { cat /tmp/pip.log; exit 2; }
mkdir -p /tmp/edgeq-ops && xz -dc "$OPSBUILD/libedgeq_ops_cuda.so.xz" >/tmp/edgeq-ops/libedgeq_ops_cuda.so \
  || { echo "no prebuilt library in $OPSBUILD: run prepare --dest $OPSBUILD and carry it"; exit 2; }
export EDGEQ_OPS_LIBRARY_CUDA=/tmp/edgeq-ops/libedgeq_ops_cuda.so
{
  echo "commit: $(cat "$OPSBUILD/COMMIT" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import onnxruntime as o, torch, transformers, sys; print('python', sys.version.split()[0], 'onnxruntime', o.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"

timeout ${TEST_TIMEOUT:-120} python3 -m pytest -m gpu tests/test_quantize_device.py -q -p no:cacheprovider -rf \
  >"$OUT/pytest.log" 2>&1
tests_rc=$?
tail -n 15 "$OUT/pytest.log"

timeout ${BENCH_TIMEOUT:-400} python3 -m edgeq.cli bench synthetic --device cuda --preset llama-7b \
  --layers ${LAYERS:-4} --formats ${FORMATS:-fp16 nbits4 gqmm3 spqr3} --new-tokens ${NEW_TOKENS:-64} \
  --rounds ${ROUNDS:-3} -o /tmp/edgeq-synthetic 2>&1 | grep -v "it/s\]" | tail -n 30 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
cp /tmp/edgeq-synthetic/synthetic.md "$OUT/" 2>/dev/null
exit $(( tests_rc != 0 || bench_rc != 0 ))
