"""Fuse the decomposed RMSNorm into ONNX ``RMSNormalization`` (opset 23; ORT runs it as one kernel).

Matched (the torch / edgeq exporter form; alternatives are written inside the one pattern):
    x32   = Cast(x, to=FLOAT)                      optional: half models accumulate in float32
    ms    = ReduceMean(Pow(x32, 2) | Mul(x32, x32), axes=[-1], keepdims=1)
    rms   = Sqrt(Add(ms, eps))
    y     = Div(x32, rms) | Mul(x32, Reciprocal(rms))
    y     = Cast(y, to=x.dtype)                    optional, present iff the first Cast is
    out   = Mul(y, scale) | Mul(scale, y)
Replaced by ``RMSNormalization(x, scale, axis=-1, epsilon=eps, stash_type=FLOAT)``: the mean of squares is
accumulated in float32 whatever the input type, which is what the Cast pair expresses.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.passes._rules import RulePass
from edgeq.passes._values import ints, scalar

OPSET = 23
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


class RmsNormFusion(pattern.RewriteRuleClassBase):
    # The last node cannot be an alternative in onnxscript's matcher, so the operand order of the final
    # Mul is a rule parameter; everything above it is alternatives inside the pattern.
    def __init__(self, scale_first: bool):
        super().__init__(name=f"RmsNormFusion(scale_first={scale_first})")
        self.scale_first = scale_first

    def pattern(self, op, x, exponent, axes, eps, scale, compute_type, out_type):
        xc = pattern.OrValue([op.Cast(x, to=compute_type), x])
        square = pattern.OrValue([op.Pow(xc, exponent), op.Mul(xc, xc)])
        mean = op.ReduceMean(square, axes, _outputs=["mean"])
        rms = op.Sqrt(pattern.OrValue([op.Add(mean, eps), op.Add(eps, mean)]))
        normed = pattern.OrValue([op.Div(xc, rms), op.Mul(xc, op.Reciprocal(rms))])
        normed = pattern.OrValue([op.Cast(normed, to=out_type), normed])
        return op.Mul(scale, normed) if self.scale_first else op.Mul(normed, scale)

    def check(self, context, x, exponent, axes, eps, scale, compute_type, out_type, mean, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in FLOATS:
            return result.fail(f"input is {x.dtype}, not a float type", x)
        if exponent is not None and scalar(exponent) != 2:
            return result.fail("the square is Pow with an exponent other than 2", exponent)
        rank = x.shape.rank() if x.shape is not None else None
        reduce_axes = ints(axes)
        if reduce_axes != [-1] and not (rank is not None and reduce_axes == [rank - 1]):
            return result.fail("ReduceMean is not over the last axis", axes)
        reduce = mean.producer()
        if reduce.attributes.get_int("keepdims", 1) != 1:
            return result.fail("ReduceMean drops the reduced axis", mean)
        if not isinstance(scalar(eps), float):
            return result.fail("epsilon is not a constant float scalar", eps)
        if (compute_type is None) != (out_type is None):
            return result.fail("the input is cast up but the result is not cast back (or the reverse)", x)
        if compute_type is not None:
            if compute_type.as_int() not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
                return result.fail("accumulation type is not float32/float64", x)
            if out_type.as_int() != x.dtype:
                return result.fail("the result is cast to a type other than the input's", x)
        if scale.dtype not in FLOATS:
            return result.fail(f"scale is {scale.dtype}", scale)
        if scale.shape is not None and scale.shape.rank() != 1:
            return result.fail("scale is not a vector over the normalized axis", scale)
        return result

    def rewrite(self, op, x, eps, scale, compute_type, **_):
        stash = compute_type.as_int() if compute_type is not None else ir.DataType.FLOAT
        return op.RMSNormalization(x, scale, axis=-1, epsilon=float(scalar(eps)), stash_type=int(stash))


class FuseRmsNormPass(RulePass):
    """Decomposed RMSNorm -> one RMSNormalization node (needs ONNX opset >= 23)."""

    def __init__(self):
        super().__init__([RmsNormFusion.rule(scale_first=False), RmsNormFusion.rule(scale_first=True)], min_opset=OPSET)
