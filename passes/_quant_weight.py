"""Reading a block-quantized weight out of ``DequantizeLinear(codes, scales, zeros, axis=0, block_size=g)``.

This is the exporter's form of a quantized linear's weight (``exporter/llama_graph.py``): codes [K, N] (UINT4
for 4-bit, UINT8 with node metadata ``edgeq.bits`` otherwise), scales and zero points [ceil(K/g), N]. Both
lowerings (MatMulNBits and GroupQuantMatMul) start from the same ``QuantSpec`` (decided from types, shapes
and attributes alone, cheap enough for a rule's ``check``) and ``QuantArrays`` (the data, read only in
``rewrite``), and match through the same ``DQMatMulLowering``; QuantLinear's lowering shares the checks on
the product (``use_problem``) and the naming of the new initializers and node.

Re-blocking: a group of g codes sharing (scale, zero) can be cut into blocks of any b dividing g with the
(scale, zero) repeated per block; the dequantized weight is bit-identical. That is how per-channel weights
(g = K, often not a power of two) and groups larger than the kernels' largest block are lowered exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

BITS_KEY = "edgeq.bits"  # written by the exporter on DQ nodes whose codes are stored wider than their width
MIN_BLOCK, MAX_BLOCK = 16, 128  # what both kernels accept (powers of two in between)
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclass(frozen=True)
class QuantSpec:
    """What a DQ weight is, without its data. K, N: the MatMul's reduction and output sizes."""

    K: int
    N: int
    bits: int  # the code width the values fit in (from the storage type or the edgeq.bits metadata)
    group_size: int  # as exported (may exceed K for per-channel weights)
    has_zero_points: bool
    scale_bytes: int = 4  # bytes per scale (float32 or float16)

    def block_size(self, allowed_max: int = MAX_BLOCK) -> int | None:
        """The block in [MIN_BLOCK, allowed_max] that cuts every group exactly and stores the weight in the
        fewest bytes (codes padded to whole blocks + one scale and zero per block); None if no block fits.

        E.g. K=576 in groups of 128: blocks of 128 pad each row to 640 codes, blocks of 64 need no padding
        and cost only 4 more scales per row, so 64 wins.
        """
        candidates = []
        b = MIN_BLOCK
        while b <= allowed_max:
            if self.group_size >= self.K or self.group_size % b == 0:
                n_blocks = math.ceil(self.K / b)
                candidates.append((n_blocks * (b * self.bits / 8 + self.scale_bytes + self.bits / 8), -b))
            b *= 2
        return -min(candidates)[1] if candidates else None


@dataclass
class QuantArrays:
    """The weight as [N, K] codes and [N, n_blocks] scales/zeros, already re-blocked to ``block_size``."""

    codes: np.ndarray  # uint8 [N, K]
    scales: np.ndarray  # float32/float16 [N, n_blocks]
    zeros: np.ndarray  # uint8 [N, n_blocks]
    block_size: int


def _metadata_bits(node: ir.Node) -> int | None:
    raw = node.metadata_props.get(BITS_KEY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def describe(dq: ir.Node) -> QuantSpec | str:
    """The spec of a DQ weight node, or the reason it is not one the lowerings understand."""
    if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return f"{dq.name}: not a DequantizeLinear"
    codes, scales = dq.inputs[0], dq.inputs[1]
    zeros = dq.inputs[2] if len(dq.inputs) > 2 else None
    for role, v in (("codes", codes), ("scales", scales), ("zero points", zeros)):
        if v is not None and ir.convenience.get_const_tensor(v) is None:
            return f"{dq.name}: {role} are not a constant"
        if v is not None and v.is_graph_input():
            return f"{dq.name}: {role} are a graph input (overridable at run time)"
    axis = dq.attributes.get_int("axis", 1)
    block = dq.attributes.get_int("block_size", 0)
    ctensor = ir.convenience.get_const_tensor(codes)
    if len(ctensor.shape) != 2:
        return f"{dq.name}: codes have rank {len(ctensor.shape)}, expected [K, N]"
    K, N = (int(d) for d in ctensor.shape)
    if axis not in (0, -2) or block <= 0:
        return f"{dq.name}: not blocked along K (axis={axis}, block_size={block})"
    stensor = ir.convenience.get_const_tensor(scales)
    if stensor.dtype not in FLOAT_TYPES:
        return f"{dq.name}: scales are {stensor.dtype}, expected float or float16"
    if tuple(stensor.shape) != (math.ceil(K / block), N):
        return f"{dq.name}: scales shape {tuple(stensor.shape)} does not match codes [{K}, {N}] in blocks of {block}"
    if ctensor.dtype == ir.DataType.UINT4:
        bits = 4
    elif ctensor.dtype == ir.DataType.UINT8:
        bits = _metadata_bits(dq) or 8
        if not 2 <= bits <= 8:
            return f"{dq.name}: metadata {BITS_KEY}={dq.metadata_props.get(BITS_KEY)} is not a width in 2..8"
    else:
        return f"{dq.name}: codes are {ctensor.dtype}; only UINT4 and UINT8 codes are lowered"
    if zeros is not None and ir.convenience.get_const_tensor(zeros).dtype != ctensor.dtype:
        return f"{dq.name}: zero points are not of the codes' type"
    return QuantSpec(K=K, N=N, bits=bits, group_size=block, has_zero_points=zeros is not None,
                     scale_bytes=2 if stensor.dtype == ir.DataType.FLOAT16 else 4)


def load(dq: ir.Node, spec: QuantSpec, block_size: int) -> QuantArrays:
    """Read the DQ's data transposed to [N, ...] and re-blocked from ``spec.group_size`` to ``block_size``."""
    codes = ir.convenience.get_const_tensor(dq.inputs[0]).numpy().astype(np.uint8).T  # [N, K]
    scales = ir.convenience.get_const_tensor(dq.inputs[1]).numpy().T  # [N, G]
    if spec.has_zero_points:
        zeros = ir.convenience.get_const_tensor(dq.inputs[2]).numpy().astype(np.uint8).T
    else:
        # DQ's default zero point for unsigned codes is 0; the kernels' default is 2^(bits-1), so be explicit.
        zeros = np.zeros(scales.shape, np.uint8)
    n_blocks = math.ceil(spec.K / block_size)
    # Block b covers codes [b*block_size, ...) which all lie in exported group b*block_size // group_size.
    group_of_block = (np.arange(n_blocks) * block_size) // spec.group_size
    return QuantArrays(
        codes=np.ascontiguousarray(codes),
        scales=np.ascontiguousarray(scales[:, group_of_block]),
        zeros=np.ascontiguousarray(zeros[:, group_of_block]),
        block_size=block_size,
    )


def matmul_input_ok(x: ir.Value, spec: QuantSpec) -> str | None:
    """None when activations ``x`` can feed a [K, N] weight; else the reason."""
    if x.dtype is not None and x.dtype not in FLOAT_TYPES:
        return f"activations {x.name} are {x.dtype}, expected float or float16"
    if x.shape is not None and len(x.shape) >= 1 and isinstance(x.shape[-1], int) and x.shape[-1] != spec.K:
        return f"activations {x.name} end in {x.shape[-1]}, weight has K={spec.K}"
    if x.shape is not None and len(x.shape) < 2:
        return f"activations {x.name} have rank {len(x.shape)}; the kernels take [..., M, K]"
    return None


def use_problem(x: ir.Value, w: ir.Value, spec: QuantSpec) -> tuple[str, ir.Value] | None:
    """Why ``MatMul(x, w)``, w the DQ weight of ``spec``, cannot become one op with packed initializers, and the
    value to blame; None when it can."""
    if len(w.uses()) != 1:
        return "the dequantized weight feeds several nodes; packing it per use would copy it", w
    problem = matmul_input_ok(x, spec)
    if problem:
        return problem, x
    return None


def unique_name(graph: ir.Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first that names no initializer of ``graph``."""
    name, i = base, 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    return name


def weight_name(dq: ir.Node) -> str:
    """The exported weight's name (its codes' without ``.codes``): the stem of what a lowering names after it."""
    return (dq.inputs[0].name or dq.name).removesuffix(".codes")


def initializer(op, dq: ir.Node, array: np.ndarray, suffix: str) -> ir.Value:
    """A new initializer holding ``array``, named ``<weight>.<suffix>`` (made unique in the DQ's graph)."""
    return op.initializer(ir.tensor(array), unique_name(dq.graph, f"{weight_name(dq)}.{suffix}"))


def lowered_node_name(y: ir.Value, dq: ir.Node, op_type: str) -> str:
    """The MatMul's name (producer of ``y``) with ``op_type`` for "MatMul"; the weight's name if it has none."""
    return (y.producer().name or weight_name(dq)).replace("MatMul", op_type, 1)


class DQMatMulLowering(pattern.RewriteRuleClassBase):
    """``MatMul(x, DequantizeLinear(codes, scales[, zeros]))`` with a weight ``describe`` understands, read by
    this MatMul alone: the match of the MatMulNBits and GroupQuantMatMul lowerings. A subclass says which weights
    it does not take (``refuse``) and writes its op (``rewrite``)."""

    def pattern(self, op, x, codes, scales):
        w = op.DequantizeLinear(codes, scales, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["w"])
        return op.MatMul(x, w, _outputs=["y"])

    def refuse(self, spec: QuantSpec) -> str | None:
        """Why this lowering does not take a weight of ``spec`` (its width, its groups); None when it does."""
        return None

    def check(self, context, x, w, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        spec = describe(w.producer())
        if isinstance(spec, str):
            return result.fail(spec, w)
        problem = self.refuse(spec)
        if problem:
            return result.fail(problem, w)
        refused = use_problem(x, w, spec)
        if refused:
            return result.fail(*refused)
        return result
