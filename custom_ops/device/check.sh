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
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

eval "$(bash .device/ort-gpu.sh)" || { echo "ORT-GPU bundle missing: carry .device (see README)"; exit 2; }
python3 -m pip install --no-deps --no-build-isolation -e . -q >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 2; }
if [ -f .opsbuild/libedgeq_ops_cuda.so.xz ]; then
  mkdir -p /tmp/edgeq-ops && xz -dc .opsbuild/libedgeq_ops_cuda.so.xz >/tmp/edgeq-ops/libedgeq_ops_cuda.so
  export EDGEQ_OPS_LIBRARY_CUDA=/tmp/edgeq-ops/libedgeq_ops_cuda.so
else
  export EDGEQ_OPS_LIBRARY_CUDA=$PWD/.opsbuild/libedgeq_ops_cuda.so
fi
[ -f "$EDGEQ_OPS_LIBRARY_CUDA" ] || { echo "no prebuilt library in .opsbuild: run prepare and carry .opsbuild"; exit 2; }

{
  echo "commit: $(cat .opsbuild/COMMIT 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import onnxruntime as o, sys; print('python', sys.version.split()[0], 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/env.txt"

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
