# Sourced by the GPU-machine scripts that run the real model (bench_models.sh, quality_gpu.sh), from the repository
# root, after OUT and OPSBUILD are set: setup.sh, the wheels the machine lacks (gguf), and MODEL, the GGUF staged in
# STAGE (default /tmp/edgeq-stage; bench_models.sh's header has the two staging calls), or exit 2.
STAGE=${STAGE:-/tmp/edgeq-stage}
source custom_ops/device/setup.sh
python3 -m pip install --no-deps -q .device/wheels/*.whl >/dev/null 2>&1
MODEL="$STAGE/files/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$MODEL" ] || { echo "model not staged in $STAGE (see bench_models.sh's header)"; exit 2; }
