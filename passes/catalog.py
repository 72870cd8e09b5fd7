"""The named passes: what ``edgeq optimize --passes`` and ``run_pipeline`` accept, with their options.

Kept free of heavy imports (each pass module is imported when its pass is built) so that registering the CLI
commands costs nothing at ``edgeq`` start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_OPSET = 23


@dataclass(frozen=True)
class PipelineOptions:
    """Knobs of the named passes.

    accuracy_level: MatMulNBits ``accuracy_level`` (0 = exact; 4 = int8 activations, faster, not exact).
    opset: ONNX opset the 'opset' pass raises the model to (the fusions need >= 23).
    io_dtype: graph input/output float type after the 'fp16' pass: "float32", "float16" or {name: dtype}.
    rotate_down: the 'integer-only' pass's Hadamard block on down_proj's input (0: none; ``IntegerOnlyPass``).
    """

    accuracy_level: int = 0
    opset: int = DEFAULT_OPSET
    io_dtype: str | Mapping[str, str] = "float32"
    rotate_down: int = 0


@dataclass(frozen=True)
class PassSpec:
    name: str
    help: str
    make: Callable[[PipelineOptions], object]  # -> an onnx_ir pass


def _matmul_nbits(o: PipelineOptions):
    from edgeq.passes.lower_matmul_nbits import LowerMatMulNBitsPass

    return LowerMatMulNBitsPass(o.accuracy_level)


def _quant_linear(o: PipelineOptions):
    from edgeq.passes.lower_quant_linear import LowerQuantLinearPass

    return LowerQuantLinearPass()


def _group_quant(o: PipelineOptions):
    from edgeq.passes.lower_group_quant_matmul import LowerGroupQuantMatMulPass

    return LowerGroupQuantMatMulPass()


def _spqr(o: PipelineOptions):
    from edgeq.passes.lower_spqr_matmul import LowerSpQRMatMulPass

    return LowerSpQRMatMulPass()


def _fold(o: PipelineOptions):
    from edgeq.passes.fold_constants import FoldConstantsPass

    return FoldConstantsPass()


def _dead(o: PipelineOptions):
    from edgeq.passes.fold_constants import RemoveDeadPass

    return RemoveDeadPass()


def _opset(o: PipelineOptions):
    from edgeq.passes.upgrade_opset import UpgradeOpsetPass

    return UpgradeOpsetPass(o.opset)


def _rms_norm(o: PipelineOptions):
    from edgeq.passes.fuse_rms_norm import FuseRmsNormPass

    return FuseRmsNormPass()


def _rotary(o: PipelineOptions):
    from edgeq.passes.fuse_rotary import FuseRotaryPass

    return FuseRotaryPass()


def _swiglu(o: PipelineOptions):
    from edgeq.passes.fuse_swiglu import FuseSwiGluPass

    return FuseSwiGluPass()


def _integer_only(o: PipelineOptions):
    from edgeq.passes.integer_only import IntegerOnlyPass

    return IntegerOnlyPass(rotate_down=o.rotate_down)


def _fp16(o: PipelineOptions):
    from edgeq.passes.to_fp16 import ConvertFloat16Pass

    return ConvertFloat16Pass(o.io_dtype)


PASSES: dict[str, PassSpec] = {
    spec.name: spec
    for spec in (
        PassSpec("quant-linear", "per-token act-quant chain + per-channel DQ+MatMul -> edgeq::QuantLinear",
                 _quant_linear),
        PassSpec("matmul-nbits", "4..8-bit DequantizeLinear+MatMul -> com.microsoft.MatMulNBits", _matmul_nbits),
        PassSpec("group-quant", "2/3-bit DequantizeLinear+MatMul -> edgeq::GroupQuantMatMul", _group_quant),
        PassSpec("spqr-matmul", "MatMul of edgeq::SpQRDequantize (cast or not) -> edgeq::SpQRMatMul", _spqr),
        PassSpec("fold", "constant folding (onnxscript optimizer; DequantizeLinear is never folded)", _fold),
        PassSpec("dead", "remove unused nodes, initializers, functions and opset imports", _dead),
        PassSpec("opset", f"raise the ONNX opset (default {DEFAULT_OPSET}, needed by the fusions)", _opset),
        PassSpec("rms-norm", "decomposed RMSNorm -> RMSNormalization (opset 23)", _rms_norm),
        PassSpec("rotary", "rotate_half rotary embedding -> RotaryEmbedding (opset 23)", _rotary),
        PassSpec("swiglu", "x*Sigmoid(x)*up -> edgeq.fusion::SwiGLU (model-local function)", _swiglu),
        PassSpec("fp16", "float32 -> float16 except norm accumulations and rotary tables", _fp16),
        PassSpec("integer-only", "fused W-A quantized decoder -> edgeq DI* integer ops, integer KV cache (opt-in; "
                 "after quant-linear and the fusions)", _integer_only),
    )
}
# quant-linear first: matmul-nbits would otherwise take the DQ+MatMul of weight-activation linears.
DEFAULT_PASSES = ("quant-linear", "matmul-nbits", "group-quant", "spqr-matmul", "fold", "dead")
FUSION_PASSES = ("opset", "rms-norm", "rotary", "swiglu")
# The integer-only decoder (opt-in): the lowering and fusions it reads, then the conversion.
INTEGER_ONLY_PASSES = (*DEFAULT_PASSES, *FUSION_PASSES, "integer-only", "dead")
