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

from edgeq.custom_ops import schema
from edgeq.custom_ops.packing import pack_codes
from edgeq.passes import _quant_weight as qw
from edgeq.passes._rules import RulePass

OP = schema.GROUP_QUANT_MATMUL
DEFAULT_WIDTHS = (2, 3)


class GroupQuantMatMulLowering(qw.DQMatMulLowering):
    """DQ(codes UINT8 with edgeq.bits in ``widths``) -> MatMul  ==>  edgeq::GroupQuantMatMul."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        unknown = set(widths) - set(schema.GQMM_BITS)
        if unknown:
            raise ValueError(f"{schema.DOMAIN}::{OP.name} takes widths {schema.GQMM_BITS}, not {sorted(unknown)}")
        super().__init__(name=f"GroupQuantMatMulLowering(widths={tuple(widths)})")
        self.widths = tuple(widths)

    def refuse(self, spec: qw.QuantSpec) -> str | None:
        if spec.bits not in self.widths:
            return f"{spec.bits}-bit codes; this pass lowers widths {self.widths}"
        if spec.block_size(max(schema.GQMM_GROUP_SIZES)) is None:
            return f"group size {spec.group_size} cannot be cut into groups of {schema.GQMM_GROUP_SIZES}"
        return None

    def rewrite(self, op, x, w, y, **_):
        dq = w.producer()
        spec = qw.describe(dq)
        arrays = qw.load(dq, spec, spec.block_size(max(schema.GQMM_GROUP_SIZES)))
        packed = pack_codes(arrays.codes, spec.bits, arrays.block_size)
        return op.op(
            OP.name,
            x,
            qw.initializer(op, dq, packed, "gq_B"),
            qw.initializer(op, dq, arrays.scales, "gq_scales"),
            qw.initializer(op, dq, arrays.zeros, "gq_zeros"),
            K=spec.K,
            N=spec.N,
            bits=spec.bits,
            group_size=arrays.block_size,
            _domain=schema.DOMAIN,
            _version=schema.DOMAIN_VERSION,
            _name=qw.lowered_node_name(y, dq, OP.name),
        )


class LowerGroupQuantMatMulPass(RulePass):
    """Every DQ+MatMul of a width in ``widths`` with groups that re-block to 16..128 becomes GroupQuantMatMul."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__([GroupQuantMatMulLowering.rule(widths=tuple(widths))])
