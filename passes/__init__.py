"""Graph passes: turn the exporter's plain ONNX decoder into an edge deployment.

One rule (or one job) per module, each an onnx-ir pass returning ``PassResult(model, modified)``:
  lower_matmul_nbits        DQ+MatMul (4..8 bit) -> com.microsoft.MatMulNBits
  lower_group_quant_matmul  DQ+MatMul (2/3 bit)  -> edgeq::GroupQuantMatMul
  fold_constants            constant folding, dead nodes/initializers
  upgrade_opset             ONNX opset 21 -> 23 (the fusions' ops)
  fuse_rms_norm / fuse_rotary / fuse_swiglu   decomposed patterns -> one node each
  to_fp16                   float32 -> float16 outside float32 islands
``pipeline`` runs named passes (``catalog``) with shape inference and onnx.checker after each and reports
what each changed; ``verify`` and ``diff`` inspect and compare models; ``cli`` adds ``edgeq verify``,
``edgeq diff`` and ``edgeq optimize``.
"""
