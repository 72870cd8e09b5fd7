#!/usr/bin/env bash
# GPU check of the edgeq op library, run on the GPU machine from the repository root: the GPU-marked tests of
# tests/custom_ops (each file in its own process, so a CUDA fault in one cannot take the others down), then the
# GroupQuantMatMul benchmark; results in $OUT.
#
# That machine has no network and cannot fetch ORT's headers, so the CUDA library is built here first and
# carried (see custom_ops/README.md, "GPU workflow"):
#   python -m edgeq.custom_ops.device.prepare          # builds, strips, copies to .opsbuild/
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild"],
#       command="bash custom_ops/device/check.sh")
# Knobs (environment): OPSBUILD (the carried folder), TESTS (test files; "" skips the tests), PYTEST_K (a -k
# selection), TEST_TIMEOUT (seconds per file), BENCH_ARGS (bench_group_quant's arguments; default --prefill),
# BENCH_TIMEOUT.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-gpu-check}
OPSBUILD=${OPSBUILD:-.opsbuild}
source custom_ops/device/setup.sh

# Tests first; the benchmark runs even when some fail, so one call gives both.
tests_rc=0
: >"$OUT/pytest.log"
for file in ${TESTS-$(grep -lE "pytest.mark.gpu|integer_problems import" tests/custom_ops/test_*.py)}; do
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest -m gpu "$file" -q -p no:cacheprovider -rf ${PYTEST_K:+-k "$PYTEST_K"} \
    >>"$OUT/pytest.log" 2>&1
  rc=$?
  [ $rc -eq 5 ] && rc=0  # nothing selected in this file
  echo "$file: exit $rc, $(grep -E '(passed|failed|error|deselected)' "$OUT/pytest.log" | tail -n 1)" | tee -a "$OUT/tests.txt"
  [ $rc -ne 0 ] && tests_rc=$rc
done

timeout ${BENCH_TIMEOUT:-400} python3 -m edgeq.custom_ops.bench_group_quant --device cuda ${BENCH_ARGS:---prefill} \
  --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

{
  echo "# edgeq custom ops: GPU check"
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  cat "$OUT/tests.txt" 2>/dev/null
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 60
  echo
  cat "$OUT/bench.md" 2>/dev/null || echo "benchmark failed (exit $bench_rc)"
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $(( tests_rc != 0 || bench_rc != 0 ))
