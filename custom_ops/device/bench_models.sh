#!/usr/bin/env bash
# GPU speed of every method's compiled .onnx on the real model (issue 7, `edgeq bench speed` on the GPU machine),
# from the repository root. The .onnx files are too big to carry, so they are built there: the GGUF is staged in
# two calls (shared/device/stage.py), the eval and calibration texts ride with the second, then this script
# compiles each config with `edgeq bench quality` (calibration on the GPU; perplexity on a few windows as a
# sanity check) and times them all with `edgeq bench speed --device cuda`; results in $OUT.
#
#   python3 ../shared/device/stage.py .stage <the SmolLM2 .gguf>       # .stage/00, .stage/01
#   python -c '...read_text...' > .stage/text/{eval,calib}.txt           # see custom_ops/README.md, "GPU workflow"
#   python -m edgeq.custom_ops.device.prepare --dest .opsbuild_models
#   run(carry=[".stage/00"], command="bash .stage/00/unstage.sh")
#   run(carry=[".stage/01", ".stage/text"], command="bash .stage/01/unstage.sh && cp -r .stage/text /tmp/edgeq-stage/")
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".device/wheels",
#              ".opsbuild_models"], command="bash custom_ops/device/bench_models.sh")
# (back to back: the machine keeps /tmp for 30 s after a call.) CONFIGS, MAX_WINDOWS, ROUNDS override the defaults.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-models}
OPSBUILD=${OPSBUILD:-.opsbuild_models}
source custom_ops/device/staged_model.sh

CONFIGS=${CONFIGS:-"fp32 rtn:bits=4,group_size=128 ort-rtn:bits=4,block_size=128 ort-hqq:bits=4,block_size=64
  ort-kquant:bits=4,block_size=32 gptq:bits=4,group_size=128 gptq:bits=3,group_size=128
  spqr:bits=3,group_size=16,outlier_threshold=0.5,target_outliers=0.005
  rtn:bits=8,group_size=-1,sym=true,abits=8 rtn:bits=8,group_size=-1,sym=true,abits=8,integer_only=1
  omniquant:wbits=3,group_size=128,epochs=2,nsamples=16"}
timeout ${QUALITY_TIMEOUT:-360} python3 -m edgeq.cli bench quality --model "$MODEL" \
  --text "$STAGE/text/eval.txt" --calib "$STAGE/text/calib.txt" --max-windows ${MAX_WINDOWS:-4} \
  --device cuda --calib-device cuda -o /tmp/edgeq-bq --configs $CONFIGS 2>&1 | grep -v "it/s\]\|s/it\]" | tail -n 25
cp /tmp/edgeq-bq/quality.md /tmp/edgeq-bq/quality.json "$OUT/" 2>/dev/null

timeout ${SPEED_TIMEOUT:-200} python3 -m edgeq.cli bench speed --device cuda -o /tmp/edgeq-bq --rounds ${ROUNDS:-3} 2>&1 \
  | grep -v "it/s\]" | tail -n 20
rc=${PIPESTATUS[0]}
cp /tmp/edgeq-bq/speed.md /tmp/edgeq-bq/speed.json /tmp/edgeq-bq/speed.png "$OUT/" 2>/dev/null
exit $rc
