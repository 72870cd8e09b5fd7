#!/usr/bin/env bash
# End-to-end GPU check on the GPU machine, from the repository root: calibration on CUDA against the CPU
# (tests/test_quantize_device.py), then decode/prefill tokens/s of random-weight LLaMA-7B-shaped models per
# weight format through ORT's CUDA EP (`edgeq bench synthetic`); results in $OUT.
#
#   python -m edgeq.custom_ops.device.prepare --dest .opsbuild_e2e
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild_e2e"],
#       command="bash custom_ops/device/e2e.sh")
# FORMATS, LAYERS, NEW_TOKENS, ROUNDS override the benchmark's defaults; OP_TESTS adds op-library GPU test files.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-e2e}
OPSBUILD=${OPSBUILD:-.opsbuild_e2e}
source custom_ops/device/setup.sh
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/env.txt"

timeout ${TEST_TIMEOUT:-120} python3 -m pytest -m gpu tests/test_quantize_device.py -q -p no:cacheprovider -rf \
  >"$OUT/pytest.log" 2>&1
tests_rc=$?
tail -n 15 "$OUT/pytest.log"

timeout ${BENCH_TIMEOUT:-400} python3 -m edgeq.cli bench synthetic --device cuda --preset llama-7b \
  --layers ${LAYERS:-4} --formats ${FORMATS:-fp16 nbits4 gqmm3 spqr3} --new-tokens ${NEW_TOKENS:-64} \
  --rounds ${ROUNDS:-3} -o /tmp/edgeq-synthetic 2>&1 | grep -v "it/s\]" | tail -n 30 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
cp /tmp/edgeq-synthetic/synthetic.md "$OUT/" 2>/dev/null

# OP_TESTS: GPU test files of the op library to run after, each in its own process and time slot
for file in ${OP_TESTS:-}; do
  timeout ${OP_TEST_TIMEOUT:-90} python3 -m pytest -m gpu "$file" -q -p no:cacheprovider -rf >>"$OUT/op_tests.log" 2>&1
  rc=$?
  echo "$file: exit $rc ($(grep -E '[0-9]+ (passed|failed)' "$OUT/op_tests.log" | tail -n 1))" | tee -a "$OUT/op_tests.txt"
  [ $rc -ne 0 ] && tests_rc=$rc
done
exit $(( tests_rc != 0 || bench_rc != 0 ))
