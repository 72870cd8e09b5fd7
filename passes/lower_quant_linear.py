"""Lower the exporter's weight-activation linear to ``edgeq::QuantLinear`` (OmniQuant W8A8, W6A6, W4A4, ...).

The exporter writes per-token dynamic activation quantization in stock ops, then the weight's DequantizeLinear
(``exporter/llama_graph.py``: ``fake_quant_tokens`` and ``linear``):

    absmax = ReduceMax(Abs(x), axes=[-1], keepdims=1)
    scale  = Max(Div(absmax, qmax), 1e-5)                      qmax = 2^(abits-1) - 1
    q      = Clip(Round(Div(x, scale)), -qmax-1, qmax)        (metadata edgeq.act_bits = abits)
    y      = MatMul(Mul(q, scale), DequantizeLinear(codes, scales, zeros, axis=0, block_size=K))

with one scale and one zero point per output channel (``AsymQuantLinearLowering`` takes the asymmetric chain
with a zero point per token, the op's act_sym=0). QuantLinear computes exactly that with integer codes
(``edgeq.custom_ops.schema.QUANT_LINEAR``; zero points other than 2^(wbits-1) become its ``w_zero`` input): the
codes are the same bits, and the integer dot products differ from the float MatMul only by the float rounding
of the latter. Anything else (a grouped weight, another qmax, floor, axis or rounding) is refused with the
reason, and the later lowerings (MatMulNBits, GroupQuantMatMul) then take the weight and leave the stock-op
chain in place.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.custom_ops import schema
from edgeq.custom_ops.quant_linear_packing import from_codes, unpack_weights
from edgeq.passes import _quant_weight as qw
from edgeq.passes._rules import RulePass

OP = schema.QUANT_LINEAR
ACT_BITS_KEY = "edgeq.act_bits"  # written by the exporter on the Clip of the activation chain
NP_TYPES = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16}


def _scalar(value: ir.Value) -> np.ndarray | None:
    """The single element of a constant (any rank with one element), else None."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    array = tensor.numpy()
    return array.reshape(()) if array.size == 1 else None


def _act_bits(clip: ir.Node, hi: float) -> int | str:
    """abits from the Clip's metadata, else from its upper bound; or why neither names a width in 2..8."""
    raw = clip.metadata_props.get(ACT_BITS_KEY)
    if raw is not None:
        try:
            bits = int(raw)
        except ValueError:
            return f"metadata {ACT_BITS_KEY}={raw!r} is not an integer"
    else:
        bits = int(np.log2(hi + 1)) + 1 if hi >= 1 else 0
    if bits not in schema.QL_BITS:
        return f"activation width {bits} is not in {schema.QL_BITS[0]}..{schema.QL_BITS[-1]}"
    return bits


def _last_axis(x: ir.Value, axes: ir.Value) -> bool:
    axes_tensor = ir.convenience.get_const_tensor(axes)
    rank = x.shape.rank() if x.shape is not None else None
    last = {-1} | ({rank - 1} if rank else set())
    return axes_tensor is not None and axes_tensor.numpy().size == 1 and int(axes_tensor.numpy().reshape(())) in last


def _constants(values: dict[str, ir.Value], result: pattern.MatchResult) -> dict[str, np.ndarray] | pattern.MatchResult:
    consts = {name: _scalar(v) for name, v in values.items()}
    for name, value in consts.items():
        if value is None:
            return result.fail(f"the chain's {name} is not a one-element constant", values[name])
    return consts


def _weight_problem(x: ir.Value, w: ir.Value, result: pattern.MatchResult) -> pattern.MatchResult:
    """The checks on the DequantizeLinear weight both chains share: per channel, with zero points, constant."""
    dq = w.producer()
    spec = qw.describe(dq)
    if isinstance(spec, str):
        return result.fail(spec, w)
    if spec.group_size < spec.K:
        return result.fail(f"weight quantized in groups of {spec.group_size} along K={spec.K}; QuantLinear takes "
                           "one scale per output channel", w)
    if not spec.has_zero_points:
        return result.fail("weight has no zero points; the lowering reads unsigned codes with explicit ones (as the "
                           "exporter writes them)", w)
    if ir.convenience.get_const_tensor(dq.inputs[1]).dtype != x.dtype:
        return result.fail(f"weight scales are not of the activations' type {x.dtype}", w)
    refused = qw.use_problem(x, w, spec)
    if refused:
        return result.fail(*refused)
    return result


def _quant_linear(op, x: ir.Value, w: ir.Value, y: ir.Value, abits: int, act_sym: bool):
    dq = w.producer()
    spec = qw.describe(dq)
    codes = ir.convenience.get_const_tensor(dq.inputs[0]).numpy().astype(np.uint8).T  # [N, K]
    zeros = ir.convenience.get_const_tensor(dq.inputs[2]).numpy().reshape(-1)
    B, w_zero = from_codes(codes, zeros, spec.bits)
    w_scales = np.ascontiguousarray(ir.convenience.get_const_tensor(dq.inputs[1]).numpy().reshape(spec.N))
    optional = [] if w_zero is None else [qw.initializer(op, dq, w_zero, "ql_zero")]
    attrs = {}
    if not act_sym:
        w_sum = unpack_weights(B, spec.K, spec.bits).astype(np.int32).sum(axis=1, dtype=np.int32)
        optional = [optional[0] if optional else None, qw.initializer(op, dq, w_sum, "ql_sum")]
        attrs["act_sym"] = 0
    return op.op(
        OP.name,
        x,
        qw.initializer(op, dq, B, "ql_B"),
        qw.initializer(op, dq, w_scales, "ql_scales"),
        *optional,
        K=spec.K,
        N=spec.N,
        wbits=spec.bits,
        abits=abits,
        **attrs,
        _domain=schema.DOMAIN,
        _version=schema.DOMAIN_VERSION,
        _name=qw.lowered_node_name(y, dq, OP.name),
    )


class QuantLinearLowering(pattern.RewriteRuleClassBase):
    """Per-token symmetric fake-quant chain + MatMul(., DQ per-channel const)  ==>  edgeq::QuantLinear."""

    def pattern(self, op, x, axes, qmax, floor, lo, hi, codes, w_scales):
        absmax = op.ReduceMax(op.Abs(x), axes, _allow_other_attributes=True, _outputs=["absmax"])
        scale = op.Max(op.Div(absmax, qmax), floor)
        q = op.Clip(op.Round(op.Div(x, scale)), lo, hi, _outputs=["q"])
        w = op.DequantizeLinear(codes, w_scales, _allow_other_inputs=True, _allow_other_attributes=True,
                                _outputs=["w"])
        return op.MatMul(op.Mul(q, scale), w, _outputs=["y"])

    def check(self, context, x, axes, qmax, floor, lo, hi, absmax, q, w, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in NP_TYPES:
            return result.fail(f"activations {x.name} are {x.dtype}, expected float or float16", x)
        T = NP_TYPES[x.dtype]
        if absmax.producer().attributes.get_int("keepdims", 1) != 1:
            return result.fail("the per-token absmax drops its axis (keepdims=0)", absmax)
        if not _last_axis(x, axes):
            return result.fail("the absmax is not taken over the last axis only (per token)", axes)
        values = {"qmax": qmax, "floor": floor, "lo": lo, "hi": hi}
        consts = _constants(values, result)
        if isinstance(consts, pattern.MatchResult):
            return consts
        abits = _act_bits(q.producer(), float(consts["hi"]))
        if isinstance(abits, str):
            return result.fail(abits, q)
        expected_qmax = schema.ql_qmax(abits)
        for name, want in (("qmax", expected_qmax), ("hi", expected_qmax), ("lo", -expected_qmax - 1)):
            if float(consts[name]) != want:
                return result.fail(f"{abits}-bit activations need {name}={want}, the chain has {float(consts[name])}",
                                   values[name])
        if T(consts["floor"]) != T(schema.QL_SCALE_FLOOR):
            return result.fail(f"scale floor {float(consts['floor']):g} is not the op's {schema.QL_SCALE_FLOOR:g}", floor)
        return _weight_problem(x, w, result)

    def rewrite(self, op, x, q, w, y, **_):
        abits = _act_bits(q.producer(), float(_scalar(q.producer().inputs[2])))
        return _quant_linear(op, x, w, y, abits, act_sym=True)


class AsymQuantLinearLowering(pattern.RewriteRuleClassBase):
    """Per-token asymmetric fake-quant chain (the exporter's ``fake_quant_tokens_asym``) + MatMul(., DQ per-channel
    const)  ==>  edgeq::QuantLinear with act_sym=0:

        hi = Max(ReduceMax(x, [-1]), 0)   lo = Min(ReduceMin(x, [-1]), 0)
        s  = Max(Div(Sub(hi, lo), L), 1e-5)          zp = Round(Div(Neg(lo), s))        L = 2^abits - 1
        u  = Clip(Add(Round(Div(x, s)), zp), 0, L)   y  = MatMul(Mul(Sub(u, zp), s), DequantizeLinear(...))
    """

    def pattern(self, op, x, axes_hi, axes_lo, zero_hi, zero_lo, levels, floor, c_lo, c_hi, codes, w_scales):
        hi = op.Max(op.ReduceMax(x, axes_hi, _allow_other_attributes=True, _outputs=["xmax"]), zero_hi)
        lo = op.Min(op.ReduceMin(x, axes_lo, _allow_other_attributes=True, _outputs=["xmin"]), zero_lo)
        scale = op.Max(op.Div(op.Sub(hi, lo), levels), floor)
        zp = op.Round(op.Div(op.Neg(lo), scale))
        u = op.Clip(op.Add(op.Round(op.Div(x, scale)), zp), c_lo, c_hi, _outputs=["u"])
        w = op.DequantizeLinear(codes, w_scales, _allow_other_inputs=True, _allow_other_attributes=True,
                                _outputs=["w"])
        return op.MatMul(op.Mul(op.Sub(u, zp), scale), w, _outputs=["y"])

    def check(self, context, x, axes_hi, axes_lo, zero_hi, zero_lo, levels, floor, c_lo, c_hi, xmax, xmin, u, w,
              **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in NP_TYPES:
            return result.fail(f"activations {x.name} are {x.dtype}, expected float or float16", x)
        T = NP_TYPES[x.dtype]
        for reduced, axes in ((xmax, axes_hi), (xmin, axes_lo)):
            if reduced.producer().attributes.get_int("keepdims", 1) != 1:
                return result.fail("a per-token min/max drops its axis (keepdims=0)", reduced)
            if not _last_axis(x, axes):
                return result.fail("a per-token min/max is not taken over the last axis only", axes)
        values = {"zero (max)": zero_hi, "zero (min)": zero_lo, "levels": levels, "floor": floor, "clip low": c_lo,
                  "clip high": c_hi}
        consts = _constants(values, result)
        if isinstance(consts, pattern.MatchResult):
            return consts
        abits = _act_bits(u.producer(), float(consts["clip high"]) // 2)
        if isinstance(abits, str):
            return result.fail(abits, u)
        want = {"zero (max)": 0, "zero (min)": 0, "levels": schema.ql_act_levels(abits), "clip low": 0,
                "clip high": schema.ql_act_levels(abits)}
        for name, value in want.items():
            if float(consts[name]) != value:
                return result.fail(f"{abits}-bit asymmetric activations need {name}={value}, the chain has "
                                   f"{float(consts[name])}", values[name])
        if T(consts["floor"]) != T(schema.QL_SCALE_FLOOR):
            return result.fail(f"scale floor {float(consts['floor']):g} is not the op's {schema.QL_SCALE_FLOOR:g}", floor)
        return _weight_problem(x, w, result)

    def rewrite(self, op, x, u, w, y, **_):
        abits = _act_bits(u.producer(), float(_scalar(u.producer().inputs[2])) // 2)
        return _quant_linear(op, x, w, y, abits, act_sym=False)


class LowerQuantLinearPass(RulePass):
    """Every exporter weight-activation linear (per-token A, per-channel W) becomes QuantLinear."""

    def __init__(self):
        super().__init__([QuantLinearLowering.rule(), AsymQuantLinearLowering.rule()])
