"""Lower ``MatMul(x, DequantizeLinear(codes, scales, zeros))`` to ``edgeq::GroupQuantMatMul`` (2 and 3 bits).

The op, its packed layout and its shape inference belong to ``edgeq.custom_ops.schema``; the bit packing to
``edgeq.custom_ops.packing``. This rule only reads the DQ weight, re-blocks groups the op cannot take
(larger than 128, or one group per row) into groups it can, and wires the initializers:
  B            uint8 [N, n_groups, group_size*bits/8]
  scales       T [N, n_groups]
  zero_points  uint8 [N, n_groups]   (unpacked)
4- and 8-bit weights go to MatMulNBits unless this pass is asked to take them (``widths``).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgeq.custom_ops import schema
from edgeq.custom_ops.packing import pack_codes
from edgeq.passes import _quant_weight as qw
from edgeq.passes._rules import RulePass
from edgeq.passes.lower_matmul_nbits import unique_name

OP = schema.GROUP_QUANT_MATMUL
DEFAULT_WIDTHS = (2, 3)


class GroupQuantMatMulLowering(pattern.RewriteRuleClassBase):
    """DQ(codes UINT8 with edgeq.bits in ``widths``) -> MatMul  ==>  edgeq::GroupQuantMatMul."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        unknown = set(widths) - set(schema.GQMM_BITS)
        if unknown:
            raise ValueError(f"{schema.DOMAIN}::{OP.name} takes widths {schema.GQMM_BITS}, not {sorted(unknown)}")
        super().__init__(name=f"GroupQuantMatMulLowering(widths={tuple(widths)})")
        self.widths = tuple(widths)

    def pattern(self, op, x, codes, scales):
        w = op.DequantizeLinear(codes, scales, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["w"])
        return op.MatMul(x, w, _outputs=["y"])

    def check(self, context, x, w, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        spec = qw.describe(w.producer())
        if isinstance(spec, str):
            return result.fail(spec, w)
        if spec.bits not in self.widths:
            return result.fail(f"{spec.bits}-bit codes; this pass lowers widths {self.widths}", w)
        if spec.block_size(max(schema.GQMM_GROUP_SIZES)) is None:
            return result.fail(f"group size {spec.group_size} cannot be cut into groups of {schema.GQMM_GROUP_SIZES}", w)
        if len(w.uses()) != 1:
            return result.fail("the dequantized weight feeds several nodes; packing it per use would copy it", w)
        problem = qw.matmul_input_ok(x, spec)
        if problem:
            return result.fail(problem, x)
        return result

    def rewrite(self, op, x, w, y, **_):
        dq = w.producer()
        spec = qw.describe(dq)
        arrays = qw.load(dq, spec, spec.block_size(max(schema.GQMM_GROUP_SIZES)))
        packed = pack_codes(arrays.codes, spec.bits, arrays.block_size)
        graph = dq.graph
        base = (dq.inputs[0].name or dq.name).removesuffix(".codes")
        return op.op(
            OP.name,
            x,
            op.initializer(ir.tensor(packed), unique_name(graph, f"{base}.gq_B")),
            op.initializer(ir.tensor(arrays.scales), unique_name(graph, f"{base}.gq_scales")),
            op.initializer(ir.tensor(arrays.zeros), unique_name(graph, f"{base}.gq_zeros")),
            K=spec.K,
            N=spec.N,
            bits=spec.bits,
            group_size=arrays.block_size,
            _domain=schema.DOMAIN,
            _version=schema.DOMAIN_VERSION,
            _name=(y.producer().name or base).replace("MatMul", OP.name, 1),
        )


class LowerGroupQuantMatMulPass(RulePass):
    """Every DQ+MatMul of a width in ``widths`` with groups that re-block to 16..128 becomes GroupQuantMatMul."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__([GroupQuantMatMulLowering.rule(widths=tuple(widths))])
