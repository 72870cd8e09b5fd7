"""Lower the exporter's SpQR linear, ``MatMul(x, edgeq::SpQRDequantize(...))``, to ``edgeq::SpQRMatMul``.

The exporter (``exporter/llama_graph.py``: ``spqr_weight``) writes the weight as ``SpQRDequantize`` of the
stored SpQR tensors, W^T float32 [K, N], cast to the activations' type in float16 graphs:

    y = MatMul(x, SpQRDequantize(codes, scale_codes, zero_codes, stats, row_ptr, cols, values))
    y = MatMul(x, Cast(SpQRDequantize(...), to=FLOAT16))                                   (float16 graphs)

``SpQRMatMul(x, <the same seven inputs>)`` computes the same product without materialising W (both ops'
contract: ``edgeq.custom_ops.schema``), so the rule only rewires: the weight initializers are shared, not
copied, and the attributes are the dequantizer's. A column permutation stays where the exporter put it, a
``Gather`` on x before the MatMul. In float16 graphs the product is computed in float32 from half
activations and rounded once, where the unlowered graph rounds W to half first: the lowered one is the
closer to float64 of the two.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.custom_ops import schema
from edgeq.passes._rules import RulePass

OP = schema.SPQR_MATMUL
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


class SpQRMatMulLowering(pattern.RewriteRuleClassBase):
    """MatMul(x, [Cast](SpQRDequantize(w...)))  ==>  edgeq::SpQRMatMul(x, w...)."""

    def __init__(self):
        # The dequantized weight may have other readers (a second MatMul, anything else): each MatMul is lowered
        # on its own and the dequantizer goes only when nothing reads it any more (dead-code removal).
        super().__init__(remove_nodes=False)

    def pattern(self, op, x, codes, scale_codes, zero_codes, stats, row_ptr, cols, values):
        w = op.SpQRDequantize(codes, scale_codes, zero_codes, stats, row_ptr, cols, values, _domain=schema.DOMAIN,
                              _allow_other_attributes=True, _outputs=["w"])
        weight = pattern.OrValue([op.Cast(w, _allow_other_attributes=True, _outputs=["cast"]), w], tag_var="casted",
                                 tag_values=[True, False])
        return op.MatMul(x, weight, _outputs=["y"])

    def check(self, context, x, w, y, casted, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype not in FLOAT_TYPES:
            return result.fail(f"activations {x.name} are {x.dtype}, expected float or float16", x)
        if y.dtype is not None and y.dtype != x.dtype:
            return result.fail(f"the product {y.name} is {y.dtype}, the activations {x.dtype}", y)
        if not casted and x.dtype != ir.DataType.FLOAT:
            return result.fail(f"activations {x.name} are {x.dtype} but the float32 weight is not cast", x)
        attrs = _attributes(w.producer())
        if isinstance(attrs, str):
            return result.fail(attrs, w)
        if x.shape is not None and len(x.shape) >= 1 and isinstance(x.shape[-1], int) and x.shape[-1] != attrs["K"]:
            return result.fail(f"activations {x.name} end in {x.shape[-1]}, the weight has K={attrs['K']}", x)
        return result

    def rewrite(self, op, x, w, y, codes, scale_codes, zero_codes, stats, row_ptr, cols, values, **_):
        dequantize = w.producer()
        return op.op(
            OP.name,
            x, codes, scale_codes, zero_codes, stats, row_ptr, cols, values,
            **_attributes(dequantize),
            _domain=schema.DOMAIN,
            _version=schema.DOMAIN_VERSION,
            _name=(y.producer().name or dequantize.name).replace("MatMul", OP.name, 1),
        )


def _attributes(dequantize: ir.Node) -> dict[str, int] | str:
    """The SpQRDequantize node's attributes, or why SpQRMatMul cannot take them."""
    attrs = {name: a.value for name, a in dequantize.attributes.items()}
    try:
        OP.check_attributes(attrs)
    except ValueError as e:
        return f"{dequantize.name}: {e}"
    return attrs


class LowerSpQRMatMulPass(RulePass):
    """Every MatMul of an edgeq::SpQRDequantize weight (cast or not) becomes one edgeq::SpQRMatMul."""

    def __init__(self):
        super().__init__([SpQRMatMulLowering.rule()])
