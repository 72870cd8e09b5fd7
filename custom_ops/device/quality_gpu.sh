#!/usr/bin/env bash
# Perplexity of calibrated configs on the GPU machine (`edgeq bench quality`, calibration on the GPU, each .onnx
# scored in ORT's CUDA EP with the edgeq library), for calibration budgets that take hours on a CPU. From the
# repository root, after the model and texts are staged (the first two calls in bench_models.sh's header):
#
#   run(carry=[".device/onnxruntime-gpu-1.31.1-cp312-sm90.tar.xz", ".device/ort-gpu.sh", ".device/wheels",
#              ".opsbuild_q"], command="OPSBUILD=.opsbuild_q GROUPS_SPEC='fp32 illm:...; omniquant:...' \
#              bash custom_ops/device/quality_gpu.sh")
#
# GROUPS_SPEC: config lists separated by ';'. Each list runs as its own `bench quality` process in its own folder
# (/tmp/edgeq-bq-<i>), all at once: one small model's calibration leaves most of the GPU idle. Finished configs
# and calibrated layers stay in /tmp, so a call made right after this one (the machine keeps /tmp for 30 s) with
# the same GROUPS_SPEC resumes where a timeout stopped it. Results: $OUT/results.txt (every result.json so far)
# and $OUT/log-<i>.txt.
set -uo pipefail
OUT=${OUT:-/tmp/edgeq-quality}
OPSBUILD=${OPSBUILD:-.opsbuild_q}
source custom_ops/device/staged_model.sh
[ -n "${GROUPS_SPEC:-}" ] || { echo "GROUPS_SPEC is empty"; exit 2; }

IFS=';' read -ra groups <<<"$GROUPS_SPEC"
pids=()
for i in "${!groups[@]}"; do
  # shellcheck disable=SC2086  # a group is a space-separated list of config specs
  timeout "${QUALITY_TIMEOUT:-520}" python3 -m edgeq.cli bench quality \
    --model "$MODEL" --text "$STAGE/text/eval.txt" \
    --calib "$STAGE/text/calib.txt" --device cuda --calib-device cuda -o "/tmp/edgeq-bq-$i" \
    --configs ${groups[$i]} >"$OUT/log-$i.txt" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
for f in /tmp/edgeq-bq-*/*/result.json; do
  [ -f "$f" ] && { echo "== $f"; cat "$f"; echo; }
done >"$OUT/results.txt"
for i in "${!groups[@]}"; do
  # progress bars repaint one line: keep the last repaint of each
  tr '\r' '\n' <"$OUT/log-$i.txt" | grep -v "it/s\]\|s/it\]" | tail -n 40 >"$OUT/log-$i.tail" && mv "$OUT/log-$i.tail" "$OUT/log-$i.txt"
done
cat "$OUT/results.txt"
exit $rc
