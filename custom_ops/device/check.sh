#!/usr/bin/env bash
# GPU check of the edgeq op library, run on the GPU machine from the repository root:
#   GPU-marked tests of tests/custom_ops, then the GroupQuantMatMul benchmark; results in $OUT.
#
# That machine has no network and cannot fetch ORT's headers, so the CUDA library is built here first and
# carried (see custom_ops/README.md, "GPU workflow"):
#   python -m edgeq.custom_ops.device.prepare          # builds, strips, copies to .opsbuild/
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild"],
#       command="bash custom_ops/device/check.sh")
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-gpu-check}
OPSBUILD=${OPSBUILD:-.opsbuild}
source custom_ops/device/setup.sh

# Tests first; the benchmark runs even when some fail, so one call gives both.
python3 -m pytest -m gpu tests/custom_ops -q -p no:cacheprovider --junitxml="$OUT/pytest.xml" >"$OUT/pytest.log" 2>&1
tests_rc=$?
tail -n 25 "$OUT/pytest.log"

python3 -m edgeq.custom_ops.bench_group_quant --device cuda ${BENCH_ARGS:---prefill} --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

{
  echo "# edgeq custom ops: GPU check"
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  echo "pytest -m gpu tests/custom_ops: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -n 1) (exit $tests_rc)"
  echo
  cat "$OUT/bench.md" 2>/dev/null || echo "benchmark failed (exit $bench_rc)"
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $(( tests_rc != 0 || bench_rc != 0 ))
