#!/usr/bin/env bash
# GPU check of SpQRMatMul and GroupQuantMatMul, run on the GPU machine from the repository root: their GPU-marked
# tests (each file in its own process, so a CUDA fault in one cannot take the other down), then bench_spqr (SpQR
# side by side with fp16 MatMul, MatMulNBits 4b and GroupQuantMatMul 4b/3b); results in $OUT (8 files at most).
#
# The library is built here and carried (see custom_ops/README.md, "GPU workflow"), in its own folder:
#   python -m edgeq.custom_ops.device.prepare --dest .opsbuild_spqr
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".opsbuild_spqr"],
#       command="bash custom_ops/device/check_spqr.sh")
# BENCH_ARGS overrides the benchmark's arguments (default: --prefill --fma --total-mb 256); TESTS="" skips tests,
# PYTEST_K selects tests by keyword; NCU=1 adds Nsight Compute on the decode kernels.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-gpu-check}
OPSBUILD=${OPSBUILD:-.opsbuild_spqr}
source custom_ops/device/setup.sh

tests_rc=0
: >"$OUT/pytest.log"
for file in ${TESTS-tests/custom_ops/test_spqr_gpu.py tests/custom_ops/test_group_quant_matmul_gpu.py}; do
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest -m gpu "$file" -q -p no:cacheprovider -rf ${PYTEST_K:+-k "$PYTEST_K"} \
    >>"$OUT/pytest.log" 2>&1
  rc=$?
  echo "$file: exit $rc" | tee -a "$OUT/tests.txt"
  tail -n 3 "$OUT/pytest.log"
  [ $rc -ne 0 ] && tests_rc=$rc
done

timeout ${BENCH_TIMEOUT:-300} python3 -m edgeq.custom_ops.bench_spqr ${BENCH_ARGS:---prefill --fma --total-mb 256} \
  --out "$OUT/bench_spqr.md" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

# NCU=1: Nsight Compute on the two tensor-core decode kernels at batch 1 (SpQR 3b and GroupQuantMatMul 4b,
# 4096x11008), one model each, no CUDA graph; the report goes to $OUT/ncu.txt.
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
  cat >/tmp/ncu_decode.py <<'PY'
import os
import numpy as np
import onnxruntime as ort
from edgeq.custom_ops import bench_spqr
lib = os.environ["EDGEQ_OPS_LIBRARY_CUDA"]
for kind in ("spqr", "gqmm4"):
    model, _ = bench_spqr.build_model(kind, 4096, 11008, 1, 1, np.float16, 0)
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(lib)
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float16)
    for _ in range(2):
        s.run(None, {"A": a})
PY
  timeout ${NCU_TIMEOUT:-120} "$NCU_BIN" --clock-control none --kernel-name regex:MmaDecode --launch-skip 1 \
    --launch-count 3 --section SpeedOfLight --section MemoryWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section Occupancy --section LaunchStats python3 /tmp/ncu_decode.py >"$OUT/ncu.txt" 2>&1
  echo "ncu: exit $? ($NCU_BIN)"; grep -E "Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Achieved Occupancy" "$OUT/ncu.txt" | head -n 40
fi

{
  echo "# edgeq custom ops: SpQRMatMul / GroupQuantMatMul GPU check"
  echo
  sed 's/^/    /' "$OUT/env.txt"
  echo
  cat "$OUT/tests.txt" 2>/dev/null
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | head -n 60
  echo
  cat "$OUT/bench_spqr.md" 2>/dev/null || echo "benchmark failed (exit $bench_rc)"
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $(( tests_rc != 0 || bench_rc != 0 ))
