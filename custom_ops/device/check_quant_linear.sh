#!/usr/bin/env bash
# GPU check of edgeq::QuantLinear, run on the GPU machine from the repository root: its GPU tests, then its
# benchmark against ORT's fp16 MatMul (auto kernel choice, then pinned kernels: TILES at TILE_M); results in $OUT.
# Same machinery as check.sh (read it first); the library comes from $OPSBUILD (default .opsbuild):
#   EDGEQ_CUDA_ARCHS=90a python -m edgeq.custom_ops.device.prepare --dest .opsbuild_ql   # 90a: wgmma kernel
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild_ql"],
#       command="OPSBUILD=.opsbuild_ql bash custom_ops/device/check_quant_linear.sh")
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-gpu-check}
OPSBUILD=${OPSBUILD:-.opsbuild}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

eval "$(bash .device/ort-gpu.sh)" || { echo "ORT-GPU bundle missing: carry .device (see README)"; exit 2; }
python3 -m pip install --no-deps --no-build-isolation -e . -q >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 2; }
[ -f "$OPSBUILD/libedgeq_ops_cuda.so.xz" ] || { echo "no $OPSBUILD/libedgeq_ops_cuda.so.xz: run prepare and carry it"; exit 2; }
mkdir -p /tmp/edgeq-ops && xz -dc "$OPSBUILD/libedgeq_ops_cuda.so.xz" >/tmp/edgeq-ops/libedgeq_ops_cuda.so
export EDGEQ_OPS_LIBRARY_CUDA=/tmp/edgeq-ops/libedgeq_ops_cuda.so

{
  echo "commit: $(cat "$OPSBUILD/COMMIT" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import onnxruntime as o, sys; print('python', sys.version.split()[0], 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/env.txt"

python3 -m pytest -m gpu tests/custom_ops/test_quant_linear_gpu.py -q -p no:cacheprovider -x \
  --junitxml="$OUT/pytest.xml" >"$OUT/pytest.log" 2>&1
tests_rc=$?
tail -n 15 "$OUT/pytest.log"

bench() { python3 -m edgeq.custom_ops.bench_quant_linear --device cuda "$@" 2>&1 | grep -v '^\s*$'; }
bench --out "$OUT/bench.md" ${BENCH_ARGS:-} | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
if [ -z "${NO_TILES:-}" ]; then
  for tile in ${TILES:-mma256 mma128 mma128x64}; do
    bench --kernel "$tile" --m ${TILE_M:-512 2048} --ops W8A8 W4A4 --out "$OUT/bench_$tile.md" | grep 'QuantLinear' | tee -a "$OUT/tiles.log"
  done
fi

{
  echo "# edgeq::QuantLinear: GPU check"
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  echo "pytest -m gpu tests/custom_ops/test_quant_linear_gpu.py: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -n 1) (exit $tests_rc)"
  echo
  cat "$OUT/bench.md" 2>/dev/null || echo "benchmark failed (exit $bench_rc)"
  echo
  cat "$OUT/tiles.log" 2>/dev/null
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $(( tests_rc != 0 || bench_rc != 0 ))
