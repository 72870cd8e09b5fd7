# Sourced by the GPU-machine check scripts, from the repository root: the ORT-GPU bundle on PYTHONPATH, edgeq
# installed --no-deps, the carried op library unpacked and named by EDGEQ_OPS_LIBRARY_CUDA, and $OUT/env.txt (the
# commit the library was built from, the GPU, onnxruntime). Needs OPSBUILD (the carried folder) and OUT set.
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
eval "$(bash .device/ort-gpu.sh)" || { echo "ORT-GPU bundle missing: carry .device (see README)"; exit 2; }
python3 -m pip install --no-deps --no-build-isolation -e . -q >/tmp/pip.log 2>&1 || { cat /tmp/pip.log; exit 2; }
if [ -f "$OPSBUILD/libedgeq_ops_cuda.so.xz" ]; then
  mkdir -p /tmp/edgeq-ops && xz -dc "$OPSBUILD/libedgeq_ops_cuda.so.xz" >/tmp/edgeq-ops/libedgeq_ops_cuda.so
  export EDGEQ_OPS_LIBRARY_CUDA=/tmp/edgeq-ops/libedgeq_ops_cuda.so
else
  export EDGEQ_OPS_LIBRARY_CUDA=$PWD/$OPSBUILD/libedgeq_ops_cuda.so
fi
[ -f "$EDGEQ_OPS_LIBRARY_CUDA" ] || { echo "no prebuilt library in $OPSBUILD: run prepare --dest $OPSBUILD and carry it"; exit 2; }
# The machine's copy of the tree may carry a stale .git: results name the commit prepare stamped instead.
export EDGEQ_COMMIT=$(cut -d' ' -f1 "$OPSBUILD/COMMIT" 2>/dev/null || echo unknown)
{
  echo "commit: $(cat "$OPSBUILD/COMMIT" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import onnxruntime as o, sys; print('python', sys.version.split()[0], 'onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/env.txt"
