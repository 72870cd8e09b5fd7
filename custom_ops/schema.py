"""The edgeq custom-op domain: every op's inputs, attributes and types as data, and its ONNX schema.

This module is the single owner of op names and signatures. The exporter and passes build nodes from it, the
tests check kernels against it, and the C++ kernels (``custom_ops/cpu``, ``custom_ops/cuda``) implement exactly
what is written here; ``register_schemas()`` makes ``onnx.checker`` and ``onnx.shape_inference`` accept
graphs that use the ops (``import edgeq.custom_ops`` calls it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import onnx
from onnx import TensorProto, helper

from edgeq.custom_ops.reference_integer import di_matmul_max_k

DOMAIN = "edgeq"
DOMAIN_VERSION = 1


@dataclass(frozen=True)
class Input:
    """One formal input. ``type`` names a type constraint (``"T"``) or a fixed element type (``"tensor(uint8)"``)."""

    name: str
    type: str
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Attribute:
    """One attribute; ``type`` is an ``onnx.AttributeProto`` type, ``check`` refuses a bad value with a reason."""

    name: str
    type: int
    doc: str
    required: bool = True
    check: Callable[[object], str | None] | None = None


@dataclass(frozen=True)
class OpDef:
    """An op of the edgeq domain: signature as data plus an ONNX type/shape inference function."""

    name: str
    doc: str
    inputs: tuple[Input, ...]
    outputs: tuple[Input, ...]
    attributes: tuple[Attribute, ...]
    type_constraints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    infer: Callable[["onnx.shape_inference.InferenceContext"], None] | None = None

    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def check_attributes(self, attrs: dict) -> None:
        """Raise ``ValueError`` naming the op and attribute when a value is missing, unknown or out of range."""
        known = {a.name for a in self.attributes}
        for name in attrs:
            if name not in known:
                raise ValueError(f"{DOMAIN}::{self.name}: unknown attribute '{name}' (known: {sorted(known)})")
        for a in self.attributes:
            if a.name not in attrs:
                if a.required:
                    raise ValueError(f"{DOMAIN}::{self.name}: attribute '{a.name}' is required")
                continue
            if a.check is not None:
                problem = a.check(attrs[a.name])
                if problem:
                    raise ValueError(f"{DOMAIN}::{self.name}: attribute {a.name}={attrs[a.name]!r}: {problem}")

    def make_node(self, inputs: list[str], outputs: list[str], name: str | None = None, **attrs) -> onnx.NodeProto:
        """A NodeProto of this op; an omitted optional input is written as the empty name, as ONNX requires."""
        self.check_attributes(attrs)
        if len(inputs) > len(self.inputs):
            raise ValueError(f"{DOMAIN}::{self.name}: {len(inputs)} inputs given, at most {len(self.inputs)}")
        needed = sum(not i.optional for i in self.inputs)
        if len([x for x in inputs if x]) < needed:
            raise ValueError(f"{DOMAIN}::{self.name}: needs inputs {self.input_names()[:needed]}, got {inputs}")
        return helper.make_node(self.name, inputs, outputs, name=name, domain=DOMAIN, **attrs)


# ---------------------------------------------------------------------------------------------------------
# GroupQuantMatMul

GQMM_BITS = (2, 3, 4, 8)
GQMM_GROUP_SIZES = (16, 32, 64, 128)


def _positive(v) -> str | None:
    return None if isinstance(v, int) and v > 0 else "must be a positive integer"


def _bits(v) -> str | None:
    return None if v in GQMM_BITS else f"must be one of {GQMM_BITS}"


def _group_size(v) -> str | None:
    return None if v in GQMM_GROUP_SIZES else f"must be one of {GQMM_GROUP_SIZES}"


def gqmm_n_groups(K: int, group_size: int) -> int:
    return math.ceil(K / group_size)


def gqmm_group_bytes(bits: int, group_size: int) -> int:
    # group_size is a power of two >= 16, so group_size*bits is always a whole number of bytes.
    return group_size * bits // 8


def _dims(type_proto: onnx.TypeProto) -> list | None:
    """Static dims (int) or symbolic names (str) or None per axis; None when the rank is unknown."""
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _input_dims(ctx, index: int) -> list | None:
    t = ctx.get_input_type(index) if index < ctx.get_num_inputs() and ctx.has_input(index) else None
    return _dims(t) if t is not None else None


def _read_attrs(ctx, op: "OpDef") -> dict:
    """The node's attributes, each checked as ``op`` declares it; an InferenceError names the op and attribute."""
    values = {}
    for a in op.attributes:
        proto = ctx.get_attribute(a.name)
        if proto is None:
            if a.required:
                raise onnx.shape_inference.InferenceError(f"{DOMAIN}::{op.name}: attribute '{a.name}' is required")
            continue
        value = helper.get_attribute_value(proto)
        problem = a.check(value) if a.check is not None else None
        if problem:
            raise onnx.shape_inference.InferenceError(f"{DOMAIN}::{op.name}: attribute {a.name}={value}: {problem}")
        values[a.name] = value
    return values


def _activations(ctx, op: str, K: int):
    """(type, dims) of input 0, the activations [..., K] of a linear; dims is None when the rank is unknown."""
    a_type = ctx.get_input_type(0)
    a_dims = _dims(a_type) if a_type is not None else None
    if a_dims is not None:
        if len(a_dims) < 1:
            raise onnx.shape_inference.InferenceError(f"{op}: A must have rank >= 1, got a scalar")
        if isinstance(a_dims[-1], int) and a_dims[-1] != K:
            raise onnx.shape_inference.InferenceError(f"{op}: A's last dim is {a_dims[-1]}, attribute K is {K}")
    return a_type, a_dims


def _check_input_shapes(ctx, op: str, expected: dict[int, tuple[str, list[int]]]) -> None:
    """Refuse an input whose known rank or static dims differ from ``expected`` (index -> (name, shape))."""
    for index, (name, shape) in expected.items():
        dims = _input_dims(ctx, index)
        if dims is None:
            continue
        if len(dims) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
            raise onnx.shape_inference.InferenceError(f"{op}: {name} has shape {dims}, expected {shape}")


def _set_linear_output(ctx, a_type, a_dims, N: int) -> None:
    """Output 0 of a linear: A's element type, shape A.shape[:-1] + [N]."""
    out = onnx.TypeProto()
    if a_type is not None and a_type.tensor_type.elem_type:
        out.tensor_type.elem_type = a_type.tensor_type.elem_type
    if a_dims is not None:
        shape = out.tensor_type.shape
        for d in a_dims[:-1]:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d:
                dim.dim_param = d
        shape.dim.add().dim_value = N
    ctx.set_output_type(0, out)


def _float_linear(name: str, doc: str, weights: tuple[Input, ...], attributes: tuple[Attribute, ...], infer,
                  a_doc: str = "activations [..., K]") -> OpDef:
    """A linear on float activations: inputs A [..., K] then ``weights``, output Y [..., N], both of type T
    (float or float16)."""
    return OpDef(name=name, doc=doc, inputs=(Input("A", "T", a_doc), *weights), outputs=(Input("Y", "T", "[..., N]"),),
                 attributes=attributes, type_constraints={"T": ("tensor(float)", "tensor(float16)")}, infer=infer)


# K and N of the GroupQuantMatMul and QuantLinear weights (SpQR's K names W's columns, as its weight is stored).
_LINEAR_K_N = (
    Attribute("K", onnx.AttributeProto.INT, "reduction size (A's last dim)", check=_positive),
    Attribute("N", onnx.AttributeProto.INT, "output features (rows of W)", check=_positive),
)


def _infer_group_quant_matmul(ctx) -> None:
    op = f"{DOMAIN}::GroupQuantMatMul"
    attrs = _read_attrs(ctx, GROUP_QUANT_MATMUL)
    K, N, bits, group_size = (attrs[n] for n in ("K", "N", "bits", "group_size"))
    a_type, a_dims = _activations(ctx, op, K)
    n_groups = gqmm_n_groups(K, group_size)
    _check_input_shapes(ctx, op, {
        1: ("B", [N, n_groups, gqmm_group_bytes(bits, group_size)]),
        2: ("scales", [N, n_groups]),
        3: ("zero_points", [N, n_groups]),
    })
    _set_linear_output(ctx, a_type, a_dims, N)


GROUP_QUANT_MATMUL = _float_linear(
    name="GroupQuantMatMul",
    doc=(
        "Y = A @ W^T for k-bit group-quantized W [N, K]: W[n, k] = scales[n, k // g] * (code[n, k] - zp[n, k // g]). "
        "B packs, per (row n, group j), a little-endian bitstream of group_size codes: code i occupies bits "
        "[i*bits, (i+1)*bits) of the group's bytes (4-bit: two codes per byte, low nibble first, as "
        "com.microsoft.MatMulNBits). n_groups = ceil(K / group_size); the last group is zero-padded to a full "
        "group in B and its padded codes are ignored. zero_points absent means 2^(bits-1)."
    ),
    weights=(
        Input("B", "tensor(uint8)", "packed codes [N, n_groups, group_size*bits/8]"),
        Input("scales", "T", "per-group scales [N, n_groups]"),
        Input("zero_points", "tensor(uint8)", "unpacked integer zero points [N, n_groups]", optional=True),
    ),
    attributes=(
        *_LINEAR_K_N,
        Attribute("bits", onnx.AttributeProto.INT, "code width, one of 2, 3, 4, 8", check=_bits),
        Attribute("group_size", onnx.AttributeProto.INT, "codes per scale along K, power of two 16..128", check=_group_size),
    ),
    infer=_infer_group_quant_matmul,
)

# ---------------------------------------------------------------------------------------------------------
# QuantLinear

QL_BITS = tuple(range(2, 9))
# The floor on per-token activation scales, in the activation type (the exporter's ``Max(absmax/qmax, 1e-5)``).
QL_SCALE_FLOOR = 1e-5


def _flag(v) -> str | None:
    return None if v in (0, 1) else "must be 0 or 1"


def _ql_bits(v) -> str | None:
    return None if v in QL_BITS else f"must be an integer in {QL_BITS[0]}..{QL_BITS[-1]}"


def ql_qmax(abits: int) -> int:
    """Largest activation code: symmetric per-token codes lie in [-qmax-1, qmax]."""
    return 2 ** (abits - 1) - 1


def ql_b_shape(K: int, N: int, wbits: int) -> list[int]:
    """B's shape: two signed 4-bit values per byte for wbits <= 4, else one int8 value per byte."""
    return [N, (K + 1) // 2] if wbits <= 4 else [N, K]


def ql_act_levels(abits: int) -> int:
    """Largest asymmetric activation code: codes 0..2^abits-1, stored minus 2^(abits-1) as int8."""
    return 2**abits - 1


def _infer_quant_linear(ctx) -> None:
    op = f"{DOMAIN}::QuantLinear"
    attrs = _read_attrs(ctx, QUANT_LINEAR)
    K, N, wbits = attrs["K"], attrs["N"], attrs["wbits"]
    a_type, a_dims = _activations(ctx, op, K)
    _check_input_shapes(ctx, op, {1: ("B", ql_b_shape(K, N, wbits)), 2: ("w_scales", [N]), 3: ("w_zero", [N]),
                                  4: ("w_sum", [N])})
    _set_linear_output(ctx, a_type, a_dims, N)


QUANT_LINEAR = _float_linear(
    name="QuantLinear",
    doc=(
        "Y = A @ W^T with per-token dynamic symmetric activation quantization and per-output-channel integer "
        "weights, symmetric or with a zero offset per channel (OmniQuant/SmoothQuant W8A8, W6A6, W4A4). Per row m "
        "of A (all scalar steps rounded to T, as the exporter's stock-op chain computes them): qmax = "
        "2^(abits-1)-1, s_x[m] = max(max_k |A[m,k]| / qmax, 1e-5), q[m,k] = clamp(round_half_even(A[m,k] / "
        "s_x[m]), -qmax-1, qmax), z[m] = 0. With act_sym=0 the tokens are quantized asymmetrically (OmniQuant's "
        "rule, the range widened to include 0): L = 2^abits-1, hi = max(max_k A, 0), lo = min(min_k A, 0), "
        "s_x = max((hi - lo) / L, 1e-5), zp = round_half_even(-lo / s_x) (in 0..L), u = clamp(round_half_even(A / "
        "s_x) + zp, 0, L), q = u - 2^(abits-1), z = zp - 2^(abits-1). acc[m,n] = sum_k (q[m,k] - z[m]) * (W[n,k] - "
        "w_zero[n]) exactly (w_zero absent: 0), Y[m,n] = float32(acc) * (s_x[m] * w_scales[n]) in float32, rounded "
        "to T. act_sym=0 needs w_sum[n] = sum_{k<K} W[n,k] (the kernels take z * w_sum from it instead of "
        "re-reading B). An asymmetric grid with codes "
        "c in 0..2^wbits-1 and zero point z is W = c - 2^(wbits-1), w_zero = z - 2^(wbits-1), so both fit int8 "
        "(and W a nibble when wbits <= 4). B holds W as signed integers: for wbits <= 4 two values per "
        "byte, value 2j in the low nibble and 2j+1 in the high nibble of byte j (an odd K leaves the last high "
        "nibble unused), shape [N, ceil(K/2)]; for wbits > 4 one int8 per value, shape [N, K]."
    ),
    weights=(
        Input("B", "tensor(int8)", "signed weights [N, ceil(K/2)] (wbits <= 4, nibble-packed) or [N, K]"),
        Input("w_scales", "T", "per-output-channel weight scales [N]"),
        Input("w_zero", "tensor(int8)", "per-output-channel zero offsets [N] (asymmetric weights)", optional=True),
        Input("w_sum", "tensor(int32)", "sum_k W[n, k] per output channel [N]; required with act_sym=0", optional=True),
    ),
    attributes=(
        *_LINEAR_K_N,
        Attribute("wbits", onnx.AttributeProto.INT, "weight width 2..8; <= 4 selects the nibble-packed B", check=_ql_bits),
        Attribute("abits", onnx.AttributeProto.INT, "activation width 2..8 (qmax = 2^(abits-1)-1)", check=_ql_bits),
        Attribute("act_sym", onnx.AttributeProto.INT, "1 (default): symmetric per-token codes; 0: asymmetric with a "
                  "zero point per token", required=False, check=_flag),
    ),
    infer=_infer_quant_linear,
)


# ---------------------------------------------------------------------------------------------------------
# SpQRMatMul / SpQRDequantize

SPQR_STAT_BITS = tuple(range(1, 9))


def _stat_bits(v) -> str | None:
    return None if v in SPQR_STAT_BITS else f"must be an integer in {SPQR_STAT_BITS[0]}..{SPQR_STAT_BITS[-1]}"


def spqr_weight_shapes(K: int, N: int, bits: int, group_size: int, stat_bits: int, stat_group_size: int
                       ) -> dict[str, list[int]]:
    """Shapes of the SpQR weight inputs fixed by the attributes (``cols`` and ``values`` are [nnz])."""
    n_groups = gqmm_n_groups(K, group_size)
    stat_row_bytes = math.ceil(n_groups * stat_bits / 8)
    return {
        "codes": [N, n_groups, gqmm_group_bytes(bits, group_size)],
        "scale_codes": [N, stat_row_bytes],
        "zero_codes": [N, stat_row_bytes],
        "stats": [math.ceil(N / stat_group_size), n_groups, 4],
        "row_ptr": [N + 1],
    }


SPQR_WEIGHT_INPUTS = (
    Input("codes", "tensor(uint8)", "dense codes [N, G1, group_size*bits/8], G1 = ceil(K/group_size): per (row, "
          "group) a little-endian bitstream of group_size codes (the GroupQuantMatMul layout)"),
    Input("scale_codes", "tensor(uint8)", "first-level scale codes [N, ceil(G1*stat_bits/8)]: per row one "
          "little-endian bitstream, code j in bits [j*stat_bits, (j+1)*stat_bits)"),
    Input("zero_codes", "tensor(uint8)", "first-level zero codes, as scale_codes"),
    Input("stats", "tensor(float16)", "second-level statistics [ceil(N/stat_group_size), G1, 4]: (scale of "
          "scales, zero of scales, scale of zeros, zero of zeros) of row block n // stat_group_size, group j"),
    Input("row_ptr", "tensor(int32)", "outliers in CSR form [N+1]: row n owns [row_ptr[n], row_ptr[n+1]); "
          "row_ptr[0] = 0, nondecreasing, row_ptr[N] = nnz"),
    Input("cols", "tensor(int16)", "outlier columns [nnz], uint16 bits, each < K"),
    Input("values", "tensor(float16)", "outlier corrections [nnz], added to the dense weight (duplicates add up)"),
)
SPQR_ATTRIBUTES = (
    Attribute("K", onnx.AttributeProto.INT, "input features (columns of W)", check=_positive),
    Attribute("N", onnx.AttributeProto.INT, "output features (rows of W)", check=_positive),
    Attribute("bits", onnx.AttributeProto.INT, "dense code width, one of 2, 3, 4, 8", check=_bits),
    Attribute("group_size", onnx.AttributeProto.INT, "β1: codes per first-level (scale, zero) along K, 16..128",
              check=_group_size),
    Attribute("stat_bits", onnx.AttributeProto.INT, "width of the first-level scale and zero codes, 1..8",
              check=_stat_bits),
    Attribute("stat_group_size", onnx.AttributeProto.INT, "β2: rows sharing one set of second-level statistics",
              check=_positive),
)
_SPQR_MATH = (
    "W [N, K] in quantization (permuted) column order: per row n and group j = k // group_size, "
    "s = ss * (scale_code - zs), z = sz * (zero_code - zz) with (ss, zs, sz, zz) = stats[n // stat_group_size, j]; "
    "W[n, k] = s * (code[n, k] - z); then W[n, cols[i]] += values[i] for each outlier i of row n. The last group "
    "of codes is zero-padded to a full group; padded codes are never read."
)


def _spqr_infer(op_name: str, first_weight: int):
    def infer(ctx) -> None:
        op = f"{DOMAIN}::{op_name}"
        attrs = _read_attrs(ctx, OPS[op_name])
        K, N = attrs["K"], attrs["N"]
        shapes = spqr_weight_shapes(**attrs)
        _check_input_shapes(ctx, op, {first_weight + i: (w.name, shapes[w.name])
                                      for i, w in enumerate(SPQR_WEIGHT_INPUTS) if w.name in shapes})
        sparse = [_input_dims(ctx, first_weight + i) for i in (5, 6)]
        for name, dims in zip(("cols", "values"), sparse):
            if dims is not None and len(dims) != 1:
                raise onnx.shape_inference.InferenceError(f"{op}: {name} has shape {dims}, expected [nnz]")
        if all(d is not None and isinstance(d[0], int) for d in sparse) and sparse[0][0] != sparse[1][0]:
            raise onnx.shape_inference.InferenceError(
                f"{op}: cols has {sparse[0][0]} entries, values {sparse[1][0]} (both are [nnz])")
        if first_weight:
            a_type, a_dims = _activations(ctx, op, K)
            _set_linear_output(ctx, a_type, a_dims, N)
        else:
            ctx.set_output_type(0, helper.make_tensor_type_proto(TensorProto.FLOAT, [K, N]))

    return infer


SPQR_MATMUL = _float_linear(
    name="SpQRMatMul",
    doc="Y = A @ W^T for a SpQR weight (Dettmers et al. 2023). " + _SPQR_MATH + " Computed in float32.",
    a_doc="activations [..., K], in W's column order",
    weights=SPQR_WEIGHT_INPUTS,
    attributes=SPQR_ATTRIBUTES,
    infer=_spqr_infer("SpQRMatMul", 1),
)

SPQR_DEQUANTIZE = OpDef(
    name="SpQRDequantize",
    doc="W_T = W^T, float32 [K, N], for a SpQR weight (the exporter's MatMul operand). " + _SPQR_MATH,
    inputs=SPQR_WEIGHT_INPUTS,
    outputs=(Input("W_T", "tensor(float)", "the dequantized weight, transposed: [K, N]"),),
    attributes=SPQR_ATTRIBUTES,
    infer=_spqr_infer("SpQRDequantize", 0),
)


# ---------------------------------------------------------------------------------------------------------
# Integer-only ops (I-LLM, issue 6)
#
# An integer activation is three tensors: codes q int8 [..., C] (uint8/uint16: DIClippedSoftmax's probabilities),
# and a per-row dyadic scale m int32 [..., 1], e int8 [..., 1]: the real value is q * m * 2^-e. Input mantissas
# lie in [1, 2^15) (checked at run time); every output mantissa lies in [2^14, 2^15) unless the int8 exponent
# saturates. Output codes lie in [-qmax, qmax], qmax = 2^(obits-1) - 1. Every op computes in integers only
# (int64 intermediates, rounding half up); the NumPy reference is reference_integer.py, and README.md
# ("Integer-only ops") states each algorithm and its accuracy against float.

DI_MAX_K = (1 << 17) - 1  # int32 accumulation stays exact for K * 128 * 128 < 2^31


def _di_k(v) -> str | None:
    return None if isinstance(v, int) and 0 < v <= DI_MAX_K else f"must be in 1..{DI_MAX_K} (int32 accumulator)"


def _clip_q8(v) -> str | None:
    return None if isinstance(v, int) and 0 <= v < 1 << 16 else "must be in 0..65535 (c * 256; 0: no clipping)"


def _eps_q60(v) -> str | None:
    return None if isinstance(v, int) and 0 <= v < 1 << 61 else "must be in [0, 2^61) (eps * 2^60)"


def _int_activation(name: str, scale: str, what: str, code_type: str = "tensor(int8)") -> tuple[Input, ...]:
    """The three tensors of an integer activation: codes [..., C], mantissas and exponents [..., 1]."""
    return (Input(name, code_type, f"{what}: codes [..., C]"),
            Input(f"{scale}_m", "tensor(int32)", f"{what}: per-row scale mantissas [..., 1], in [1, 2^15)"),
            Input(f"{scale}_e", "tensor(int8)", f"{what}: per-row scale exponents [..., 1]"))


def _channel_scales(name: str, what: str) -> tuple[Input, ...]:
    return (Input(f"{name}_m", "tensor(int32)", f"{what}: per-channel mantissas, |m| < 2^15"),
            Input(f"{name}_e", "tensor(int8)", f"{what}: per-channel exponents (value m * 2^-e)"))


DI_OUTPUTS = _int_activation("Y", "y", "output")
# The ops whose output a linear reads (DINorm, DISwiGLU, DIRequant) may emit asymmetric codes (act_sym=0) with a
# zero point per row, which DIMatMul takes as x_zero.
DI_LINEAR_INPUT_OUTPUTS = (*DI_OUTPUTS, Input("y_zero", "tensor(int32)", "per-row zero points [..., 1] as signed codes "
                                             "(act_sym=0; the value is (Y - y_zero) * scale)", optional=True))
_OBITS = Attribute("obits", onnx.AttributeProto.INT, "output code width 2..8: codes in [-qmax, qmax], "
                   "qmax = 2^(obits-1) - 1", check=_ql_bits)


def _clip_q15(v) -> str | None:
    return None if isinstance(v, int) and 1 <= v <= 1 << 15 else "must be in 1..32768 (c * 2^15; 32768: no clipping)"


# The ops whose output a linear reads (DINorm, DISwiGLU, DIRequant) take a learned clip of their row range.
_CLIP_Q15 = Attribute("clip_q15", onnx.AttributeProto.INT, "activation clip c * 2^15 (default 32768, none): each row "
                      "is quantized over [-c max|v|, c max|v|], values beyond saturating at +-qmax",
                      required=False, check=_clip_q15)


def _zero_or_one(v) -> str | None:
    return None if v in (0, 1) else "must be 0 or 1"


# ... and asymmetric codes: 0 quantizes each row over [min(v, 0), max(v, 0)] into u in [0, 2^obits - 1] with
# zero point zp = round(-min / s), stored as u - 2^(obits-1) and zp - 2^(obits-1) (output y_zero); clip_q15 stays
# at its default.
_ACT_SYM = Attribute("act_sym", onnx.AttributeProto.INT, "1 (default): symmetric codes; 0: asymmetric codes over the "
                     "row's range [min(v, 0), max(v, 0)] with a zero point per row in y_zero", required=False,
                     check=_zero_or_one)


def _set_zero_output(ctx, shape: list | None) -> None:
    """Output 3 (y_zero), when the node has it: int32 [..., 1]."""
    if ctx.get_num_outputs() > 3:
        ctx.set_output_type(3, helper.make_tensor_type_proto(TensorProto.INT32, None if shape is None
                                                             else [*shape[:-1], 1]))


def _check_dims(ctx, op: str, expected: dict) -> None:
    """Refuse an input whose known rank or static dims differ from ``expected`` (index -> (name, shape), where a
    None dim matches anything)."""
    for index, (name, shape) in expected.items():
        dims = _input_dims(ctx, index)
        if dims is None:
            continue
        if len(dims) != len(shape) or any(isinstance(d, int) and isinstance(s, int) and d != s
                                          for d, s in zip(dims, shape)):
            raise onnx.shape_inference.InferenceError(f"{op}: {name} has shape {dims}, expected {shape}")


def _wide_obits(v) -> str | None:
    return None if isinstance(v, int) and 2 <= v <= 16 else "must be in 2..16"


# obits of the ops that may emit 16-bit codes (DIMatMul, DIAdd): Y int8 up to 8 bits, int16 above
_WIDE_OBITS = Attribute("obits", onnx.AttributeProto.INT, "output code width 2..16: codes in [-qmax, qmax], "
                        "qmax = 2^(obits-1) - 1; int8 codes up to 8 bits, int16 above", check=_wide_obits)
_WIDE_CODES = ("tensor(int8)", "tensor(int16)")


def _wide_code(attrs) -> int:
    return TensorProto.INT8 if attrs["obits"] <= 8 else TensorProto.INT16


def _prob_code(attrs) -> int:
    return TensorProto.UINT8 if attrs["obits"] <= 8 else TensorProto.UINT16


def _set_activation_outputs(ctx, code_type: int, shape: list | None) -> None:
    """Outputs 0..2 as an integer activation: codes ``code_type`` of ``shape`` and scales of ``shape[:-1] + [1]``
    (unknown shapes when None)."""
    for index, elem in enumerate((code_type, TensorProto.INT32, TensorProto.INT8)):
        dims = None if shape is None else (shape if index == 0 else [*shape[:-1], 1])
        ctx.set_output_type(index, helper.make_tensor_type_proto(elem, dims))


def _infer_integer(op_name: str, out_last=None, same_shape: tuple[int, ...] = (), expected=None,
                   check_scales: bool = True, code_of=None, out_dims=None):
    """Inference for an op whose outputs are an integer activation: codes of the type declared for output 0
    with input 0's leading dims and last dim ``out_last(attrs)`` (input 0's own when None), or the dims
    ``out_dims(attrs, dims, ctx)``, scales [..., 1]; the codes' type is ``code_of(attrs)`` where given.
    Inputs 1 and 2 must be [..., 1] (unless not ``check_scales``), those in ``same_shape`` must have input 0's
    shape, and ``expected(ctx, attrs, dims)`` gives {index: (name, shape)} for the others."""

    def infer(ctx) -> None:
        op = f"{DOMAIN}::{op_name}"
        opdef = OPS[op_name]
        attrs = _read_attrs(ctx, opdef)
        dims = _input_dims(ctx, 0)
        if dims is not None and len(dims) < 1:
            raise onnx.shape_inference.InferenceError(f"{op}: {opdef.inputs[0].name} must have rank >= 1")
        if dims is not None:
            shapes = {i: (opdef.inputs[i].name, dims) for i in same_shape}
            if check_scales:
                shapes.update({i: (opdef.inputs[i].name, [*dims[:-1], 1]) for i in (1, 2)})
            _check_dims(ctx, op, shapes)
        if expected is not None:
            _check_dims(ctx, op, expected(ctx, attrs, dims))
        last = out_last(attrs) if out_last is not None else (dims[-1] if dims is not None else None)
        code = TensorProto.UINT8 if opdef.outputs[0].type == "tensor(uint8)" else TensorProto.INT8
        if code_of is not None:
            code = code_of(attrs)
        out = None if dims is None else out_dims(attrs, dims, ctx) if out_dims is not None else [*dims[:-1], last]
        _set_activation_outputs(ctx, code, out)
        _set_zero_output(ctx, out)

    return infer


def _matmul_expected(ctx, attrs, dims):
    K, N, abits = attrs["K"], attrs["N"], attrs["abits"]
    op = f"{DOMAIN}::DIMatMul"
    if dims is not None and isinstance(dims[-1], int) and dims[-1] != K:
        raise onnx.shape_inference.InferenceError(f"{op}: X's last dim is {dims[-1]}, attribute K is {K}")
    x_type = ctx.get_input_type(0)
    elem = x_type.tensor_type.elem_type if x_type is not None else 0
    want = TensorProto.INT8 if abits <= 8 else TensorProto.INT16
    if elem and elem != want:
        raise onnx.shape_inference.InferenceError(
            f"{op}: X is {TensorProto.DataType.Name(elem).lower()}, abits={abits} gives "
            f"{TensorProto.DataType.Name(want).lower()} codes")
    w_zero = ctx.get_num_inputs() > 6 and ctx.has_input(6)
    x_zero = ctx.get_num_inputs() > 7 and ctx.has_input(7)
    if x_zero != (ctx.get_num_inputs() > 8 and ctx.has_input(8)):
        raise onnx.shape_inference.InferenceError(f"{op}: x_zero and w_sum come together")
    limit = di_matmul_max_k(abits, w_zero, x_zero)
    if K > limit:
        at = f" at abits={abits}" if abits > 8 else ""
        zeros = " and ".join(n for n, on in (("w_zero", w_zero), ("x_zero", x_zero)) if on)
        raise onnx.shape_inference.InferenceError(f"{op}: K={K}{at}{' with ' + zeros if zeros else ''} exceeds {limit}")
    out = {3: ("W", [N, K]), 4: ("w_m", [N]), 5: ("w_e", [N]), 6: ("w_zero", [N]), 8: ("w_sum", [N])}
    if dims is not None:
        out[7] = ("x_zero", [*dims[:-1], 1])
    return out


def _non_negative(v) -> str | None:
    return None if isinstance(v, int) and v >= 0 else "must be a non-negative integer"


# Y: N channels, or the first split of them
_infer_first_output = _infer_integer("DIMatMul", out_last=lambda a: a.get("split") or a["N"],
                                     expected=_matmul_expected, code_of=_wide_code)


def _infer_matmul(ctx) -> None:
    """One output of N channels, or with split two of split and N - split: all six outputs or the first three."""
    op = f"{DOMAIN}::DIMatMul"
    attrs = _read_attrs(ctx, OPS["DIMatMul"])
    split, N = attrs.get("split", 0), attrs["N"]
    outputs = ctx.get_num_outputs()
    if outputs not in (3, 6) or (outputs == 6) != (split > 0):
        raise onnx.shape_inference.InferenceError(
            f"{op}: split={split} needs {6 if split else 3} outputs (Y, y_m, y_e{', Y2, y2_m, y2_e' if split else ''}), "
            f"got {outputs}")
    if split and split >= N:
        raise onnx.shape_inference.InferenceError(f"{op}: split={split} must be below N={N}")
    _infer_first_output(ctx)
    if split:  # Y2, y2_m, y2_e: the other N - split channels
        dims = _input_dims(ctx, 0)
        for index, elem in enumerate((_wide_code(attrs), TensorProto.INT32, TensorProto.INT8)):
            shape = None if dims is None else [*dims[:-1], N - split if index == 0 else 1]
            ctx.set_output_type(3 + index, helper.make_tensor_type_proto(elem, shape))


DI_MATMUL = OpDef(
    name="DIMatMul",
    doc=(
        "Dynamic integer-only matmul (I-LLM DI-MatMul): Y = X @ W^T, requantized per row. acc = sum_k X*W exactly "
        "in int32 (K <= 131071); per channel P[n] = acc[n] * w_m[n], aligned to the exponent "
        "Ea = min(max w_e, min w_e + 16) (left shifts, exact, for channels within 16 of the smallest exponent; a "
        "rounding right shift beyond); then per row: P is rounded to 31 bits, codes round(P * qmax / max|P|) by "
        "one reciprocal multiply and a rounding shift, scale (max|P| * x_m / qmax) * 2^-(x_e + Ea) normalized to a "
        "15-bit mantissa. abits and wbits declare the code ranges of X and W (for int8 codes not checked: the result "
        "is exact for any int8 codes). abits 9..16 takes int16 X whose codes lie in [-2^(abits-1), 2^(abits-1)) "
        "(x_zero too; checked on the CPU, assumed on the GPU), and K shrinks by a bit per bit above 8 (at 12 bits "
        "with x_zero, K <= 2047). obits 2..16: Y holds int8 codes up to 8 bits and int16 codes above (the requantization "
        "is the same: P rounded to 31 bits, a reciprocal below 2^31, products below 2^62). An asymmetric weight "
        "grid gives w_zero (int8 [N], each channel's zero point as a signed code): acc = sum_k X*(W - w_zero), "
        "computed as X.W - w_zero * sum(X) and exact in int32 for K <= 65535. split (0 < split < N) gives two "
        "outputs: Y, y_m, y_e of channels [0, split) and Y2, y2_m, y2_e of [split, N), each requantized on its own "
        "(Ea, the row's max|P| and scale of its channels only), bit for bit two DIMatMuls of W's two halves: q and "
        "k, or gate and up, of one input in one op."
    ),
    inputs=(*_int_activation("X", "x", "input activation [..., K]", code_type="TX"),
            Input("W", "tensor(int8)", "weight codes [N, K]"), *_channel_scales("w", "weight scales [N]"),
            Input("w_zero", "tensor(int8)", "per-channel weight zero points [N] (asymmetric grid)", optional=True),
            Input("x_zero", "tensor(int32)", "X's per-row zero points [..., 1] (asymmetric codes, act_sym=0 of its "
                  "producer); needs w_sum", optional=True),
            Input("w_sum", "tensor(int32)", "sum_k W[n, k] per channel [N] (with x_zero)", optional=True)),
    outputs=(*_int_activation("Y", "y", "output (with split: channels [0, split))", code_type="TY"),
             *(replace(o, optional=True) for o in
               _int_activation("Y2", "y2", "channels [split, N) (with split)", code_type="TY"))),
    attributes=(
        Attribute("K", onnx.AttributeProto.INT, "reduction size (X's last dim), at most 131071", check=_di_k),
        Attribute("N", onnx.AttributeProto.INT, "output features (rows of W)", check=_positive),
        Attribute("abits", onnx.AttributeProto.INT, "width of X's codes, 2..16: int8 codes up to 8 bits, int16 above",
                  check=_wide_obits),
        Attribute("wbits", onnx.AttributeProto.INT, "declared width of W's codes, 2..8", check=_ql_bits),
        _WIDE_OBITS,
        Attribute("split", onnx.AttributeProto.INT, "0 (one output), or the channels of the first of two outputs, "
                  "0 < split < N", required=False, check=_non_negative),
    ),
    type_constraints={"TX": _WIDE_CODES, "TY": _WIDE_CODES},
    infer=_infer_matmul,
)

DI_EXP = OpDef(
    name="DIExp",
    doc=(
        "Integer exp per row (I-LLM DI-Exp): codes round(qmax * exp(x - max x)) in [0, qmax], scale exp(max x) / "
        "qmax. exp(-d) = 2^-(d log2 e): d * log2(e) as a Q24 fixed-point number (one multiply by "
        "round(log2(e) * 2^30) and a rounding shift), 2^-fraction by a cubic polynomial in Q30 (relative error "
        "< 9e-5), 2^-integer by a rounding right shift."
    ),
    inputs=_int_activation("X", "x", "input activation"),
    outputs=DI_OUTPUTS,
    attributes=(_OBITS,),
    infer=_infer_integer("DIExp"),
)

DI_CLIPPED_SOFTMAX = OpDef(
    name="DIClippedSoftmax",
    doc=(
        "Integer softmax over the last axis (I-LLM DI-ClippedSoftmax) of x clipped to [max - c, max], "
        "c = clip_q8 / 256 (0: no clipping), over the keys that mask (bool, same rank as X, each dim equal or 1; "
        "true = visible) and, with is_causal, the causal rule (key j visible to query i when "
        "j <= i + Skv - Sq, the last two dims being [Sq, Skv]) allow. E = 2^30 * exp(x - max) as in DIExp, "
        "S = sum E; codes P = round(E * qmax / 2^30) in [0, qmax = 2^obits - 1] (uint8 up to 8 bits, uint16 "
        "above: P is declared with that type); per-row scale "
        "2^30 / (S * qmax) as (p_m, p_e), so P * p_m * 2^-p_e is the probability. A row with no visible key is "
        "all zeros. X may hold int8 codes or int32 values (e.g. an unrequantized Q.K^T) with the same scale "
        "tensors. Rows hold fewer than 2^24 keys, and fewer than 2^(34 - obits) above 8 bits (S * qmax < 2^64)."
    ),
    inputs=(Input("X", "T", "scores: codes [..., Skv]"),
            *_int_activation("X", "x", "scores")[1:],
            Input("mask", "tensor(bool)", "visible keys, broadcast to X's shape", optional=True)),
    outputs=_int_activation("P", "p", "probabilities", code_type="TP"),
    attributes=(
        Attribute("clip_q8", onnx.AttributeProto.INT, "clipping range c * 256 (natural-log units), 0 for none",
                  check=_clip_q8),
        Attribute("is_causal", onnx.AttributeProto.INT, "1: also hide keys after the query's position",
                  check=_flag),
        Attribute("obits", onnx.AttributeProto.INT, "probability code width 2..16: codes in [0, 2^obits - 1]",
                  check=_wide_obits),
    ),
    type_constraints={"T": ("tensor(int8)", "tensor(int32)"), "TP": ("tensor(uint8)", "tensor(uint16)")},
    infer=_infer_integer("DIClippedSoftmax", code_of=_prob_code),
)

DI_NORM = OpDef(
    name="DINorm",
    doc=(
        "Integer RMSNorm (I-LLM DI-Norm): y = x / sqrt(mean(x^2) + eps) * gamma, gamma[c] = g_m[c] * 2^-g_e[c], "
        "eps = eps_q60 * 2^-60. Per row: sum q^2 * m^2 normalized to 61 bits and divided by C, eps added at a "
        "common exponent, an exact integer square root (floor) of the 60..62-bit result, the row factor m / rms as "
        "a 15-bit dyadic; then q * g_m (channels aligned as DIMatMul's) is requantized per row. An all-zero row "
        "gives zeros. X may hold int8 or int16 codes (a 16-bit residual stream): an int16 row's sum of squares "
        "(< 2^47) is rounded to 31 bits before the multiply by m^2. obits 2..16: Y holds int8 codes up to 8 bits, "
        "int16 above (the final norm, whose codes lm_head reads at 12 bits; symmetric or asymmetric alike)."
    ),
    inputs=(*_int_activation("X", "x", "input activation", code_type="T"), *_channel_scales("g", "gamma [C]")),
    outputs=(*_int_activation("Y", "y", "output", code_type="TY"), DI_LINEAR_INPUT_OUTPUTS[3]),
    attributes=(Attribute("eps_q60", onnx.AttributeProto.INT, "epsilon * 2^60", check=_eps_q60), _WIDE_OBITS,
                _CLIP_Q15, _ACT_SYM),
    type_constraints={"T": ("tensor(int8)", "tensor(int16)"), "TY": _WIDE_CODES},
    infer=_infer_integer("DINorm", code_of=_wide_code,
                         expected=lambda ctx, a, d: {} if d is None or not isinstance(d[-1], int) else
                         {3: ("g_m", [d[-1]]), 4: ("g_e", [d[-1]])}),
)

def _two_input_op(name: str, doc: str, first: tuple[str, str, str], second: tuple[str, str, str],
                  extra: tuple = ()) -> OpDef:
    """An op of two integer activations of the same shape and code type T (codes name, scale prefix, meaning
    each); ``extra`` attributes besides obits, clip_q15 and act_sym."""
    prefix = second[1]
    return OpDef(
        name=name, doc=doc, inputs=(*_int_activation(*first, code_type="T"), *_int_activation(*second, code_type="T")),
        outputs=DI_LINEAR_INPUT_OUTPUTS, attributes=(_OBITS, _CLIP_Q15, _ACT_SYM, *extra),
        type_constraints={"T": _WIDE_CODES},
        infer=_infer_integer(name, same_shape=(3,), expected=lambda ctx, a, d: {} if d is None else
                             {4: (f"{prefix}_m", [*d[:-1], 1]), 5: (f"{prefix}_e", [*d[:-1], 1])}),
    )


DI_SWIGLU = _two_input_op(
    "DISwiGLU",
    "Integer SwiGLU: y = silu(gate) * up = gate * sigmoid(gate) * up, requantized per row. sigmoid(g) in Q30 "
    "= round(2^60 / (2^30 + E)) for g >= 0 and its complement for g < 0, E = 2^30 exp(-|g|) as in DIExp; "
    "the product q_g * sigmoid * q_u (< 2^44 for int8 codes, < 2^60 for int16: gate and up may be 16-bit "
    "projection outputs, both the same type) is requantized with multiplier m_g * m_u and exponent e_g + e_u + 30. "
    "hadamard B (a power of two dividing C; 0, the default: none): before the requantization the row is rounded "
    "to at most 61 - log2(B) bits and each block of B values multiplied by the unnormalized Walsh-Hadamard matrix "
    "(Sylvester order, integer additions only), spreading the few large channels of the product over the block; the "
    "linear that reads Y takes the rotated weights and the 1/sqrt(B).",
    ("gate", "gate", "gate projection"), ("up", "up", "up projection"),
    extra=(Attribute("hadamard", onnx.AttributeProto.INT, "block of the Walsh-Hadamard rotation of the output row "
                     "(a power of two 2..4096; 0: none)", required=False, check=lambda v: None if v == 0 or (
                         isinstance(v, int) and 2 <= v <= 4096 and v & (v - 1) == 0) else
                     "must be 0 or a power of two in 2..4096"),))

def _rotary_head_dim(ctx, dims) -> int | None:
    """D: X's last dim when X is [B, S, H, D]; twice the tables' last dim when X is [B, S, H*D]."""
    if len(dims) == 4:
        return dims[3] if isinstance(dims[3], int) else None
    table = _input_dims(ctx, 4)
    return 2 * table[1] if table is not None and len(table) == 2 and isinstance(table[1], int) else None


def _rotary_expected(ctx, attrs, dims):
    if dims is None:
        return {}
    if len(dims) not in (3, 4):
        raise onnx.shape_inference.InferenceError(f"{DOMAIN}::DIRotary: X must be [B, S, H, D] or [B, S, H*D], got {dims}")
    D = _rotary_head_dim(ctx, dims)
    if D is not None and D % 2:
        raise onnx.shape_inference.InferenceError(f"{DOMAIN}::DIRotary: head dim D={D} must be even")
    if len(dims) == 3 and D and isinstance(dims[2], int) and dims[2] % D:
        raise onnx.shape_inference.InferenceError(
            f"{DOMAIN}::DIRotary: X's last dim {dims[2]} is not a multiple of the head dim D={D} (2 x the tables')")
    scales = [*dims[:2], None, 1] if len(dims) == 4 else [*dims[:2], 1]
    expected = {1: ("x_m", scales), 2: ("x_e", scales), 3: ("position_ids", dims[:2])}
    for index, name in ((4, "cos"), (5, "sin")):
        expected[index] = (name, [None, D // 2 if D else None])
    given = [i for i in (6, 7, 8) if i < ctx.get_num_inputs() and ctx.has_input(i)]
    if given and len(given) != 3:
        raise onnx.shape_inference.InferenceError(f"{DOMAIN}::DIRotary: past, past_m and past_e come together")
    if given and not attrs.get("heads_first"):
        raise onnx.shape_inference.InferenceError(f"{DOMAIN}::DIRotary: a past cache needs heads_first=1")
    if given:
        heads = _rotary_out_dims(attrs, dims, ctx)[1]
        past = _input_dims(ctx, 6)
        P = past[2] if past is not None and len(past) == 4 else None
        expected.update({6: ("past", [dims[0], heads, None, D]), 7: ("past_m", [dims[0], heads, P, 1]),
                         8: ("past_e", [dims[0], heads, P, 1])})
    return expected


def _rotary_out_dims(attrs, dims, ctx):
    if len(dims) == 3:  # [B, S, H*D] is read as [B, S, H, D]
        D = _rotary_head_dim(ctx, dims)
        heads = dims[2] // D if D and isinstance(dims[2], int) else None
        dims = [dims[0], dims[1], heads, D]
    if not attrs.get("heads_first"):
        return dims
    past = _input_dims(ctx, 6)
    seq = dims[1]
    if past is not None:  # the cache's P rows ahead of the S new ones (unknown unless both are numbers)
        P = past[2] if len(past) == 4 else None
        seq = P + seq if isinstance(P, int) and isinstance(seq, int) else None
    return [dims[0], dims[2], seq, dims[3]]


DI_ROTARY = OpDef(
    name="DIRotary",
    doc=(
        "Integer rotary embedding of X [B, S, H, D] at position_ids [B, S] with fixed-point tables cos, sin "
        "int16 [P, D/2] in Q14 (1.0 = 16384): pairs (i, i + D/2) (interleaved=1: (2i, 2i+1)) use column i and "
        "become (a cos - b sin, b cos + a sin) in integers (< 2^23), requantized per (token, head). Scales of X "
        "are [B, S, H, 1] or [B, S, 1, 1] (one per token); the output's are [B, S, H, 1]. X may also be a "
        "projection's output [B, S, H*D] with per-token scales [B, S, 1]: it is read as [B, S, H, D], D being "
        "twice the tables' last dim, and the output is the same as for that 4-d X. heads_first=1 writes "
        "the output in attention's layout instead: codes [B, H, S, D], scales [B, H, S, 1]. Positions outside "
        "[0, P) are an error. X holds int8 or int16 codes (a projection's 16-bit output: pairs < 2^30); rotate=0 "
        "copies codes and takes int8 only. With heads_first=1 the op may also append to a cache: past int8 "
        "[B, H, P_c, D] with scales past_m, past_e [B, H, P_c, 1] (all three or none) are copied ahead of the new "
        "rows, so the outputs are [B, H, P_c + S, D] and [B, H, P_c + S, 1] (the present cache; P_c may be 0)."
    ),
    inputs=(Input("X", "T", "queries or keys: codes [B, S, H, D] or [B, S, H*D]"),
            Input("x_m", "tensor(int32)", "scale mantissas [B, S, H or 1, 1] (X 4-d) or [B, S, 1], in [1, 2^15)"),
            Input("x_e", "tensor(int8)", "scale exponents, as x_m"),
            Input("position_ids", "tensor(int64)", "positions [B, S]"),
            Input("cos", "tensor(int16)", "cos table [P, D/2], Q14"),
            Input("sin", "tensor(int16)", "sin table [P, D/2], Q14"),
            Input("past", "tensor(int8)", "cached codes [B, H, P_c, D] the output is appended to (heads_first=1)",
                  optional=True),
            Input("past_m", "tensor(int32)", "the cache's scale mantissas [B, H, P_c, 1]", optional=True),
            Input("past_e", "tensor(int8)", "the cache's scale exponents [B, H, P_c, 1]", optional=True)),
    outputs=DI_OUTPUTS,
    attributes=(Attribute("interleaved", onnx.AttributeProto.INT, "0: rotate halves (LLaMA); 1: adjacent pairs",
                          check=_flag), _OBITS,
                Attribute("heads_first", onnx.AttributeProto.INT, "1: output [B, H, S, D] (default 0: [B, S, H, D])",
                          required=False, check=_flag),
                Attribute("rotate", onnx.AttributeProto.INT,
                          "0: neither rotation nor requantization, the codes copied and each (token, head) row "
                          "keeping its token's scale: the same layouts for V (default 1)", required=False,
                          check=_flag)),
    infer=_infer_integer("DIRotary", check_scales=False, expected=_rotary_expected,
                         out_dims=_rotary_out_dims),
    type_constraints={"T": _WIDE_CODES},
)

DI_ADD = OpDef(
    name="DIAdd",
    doc=(
        "Integer residual add: y = a + b for two activations of the same shape with their own per-row scales, "
        "each of int8 or int16 codes (a 16-bit residual stream plus an 8-bit projection). q * m of each side "
        "(< 2^22 for int8, < 2^30 for int16) is brought to the exponent E = min(max(e_a, e_b), min(e_a, e_b) + W), "
        "W = 39 when both sides are int8 and 31 otherwise (left shifts of at most W bits, exact, below 2^61; a "
        "side finer than the window is shifted right, rounded), summed, and requantized per row with exponent E. "
        "obits 2..16: Y holds int8 codes up to 8 bits and int16 codes above."
    ),
    inputs=(*_int_activation("A", "a", "first operand", code_type="TA"),
            *_int_activation("B", "b", "second operand", code_type="TB")),
    outputs=_int_activation("Y", "y", "output", code_type="TY"),
    attributes=(_WIDE_OBITS,),
    type_constraints={"TA": _WIDE_CODES, "TB": _WIDE_CODES, "TY": _WIDE_CODES},
    infer=_infer_integer("DIAdd", same_shape=(3,), code_of=_wide_code,
                         expected=lambda ctx, a, d: {} if d is None else {4: ("b_m", [*d[:-1], 1]),
                                                                         5: ("b_e", [*d[:-1], 1])}),
)

DI_MAX_BATCH_K = (1 << 16) - 1  # DIBatchMatMul: 255 * 128 * K < 2^31, and P.V's int64 sums stay below 2^62


def _infer_batch_matmul(ctx) -> None:
    op = f"{DOMAIN}::DIBatchMatMul"
    attrs = _read_attrs(ctx, DI_BATCH_MATMUL)
    a, b = _input_dims(ctx, 0), _input_dims(ctx, 3)
    out = None
    if a is not None:
        if len(a) < 2:
            raise onnx.shape_inference.InferenceError(f"{op}: A must have rank >= 2 ([..., M, K])")
        _check_dims(ctx, op, {i: (DI_BATCH_MATMUL.inputs[i].name, [*a[:-1], 1]) for i in (1, 2)})
    if a is not None and b is not None:
        if len(b) != len(a):
            raise onnx.shape_inference.InferenceError(f"{op}: B has rank {len(b)}, A has rank {len(a)}")
        k_b, n = (b[-1], b[-2]) if attrs["trans_b"] else (b[-2], b[-1])
        if isinstance(a[-1], int) and isinstance(k_b, int) and a[-1] != k_b:
            raise onnx.shape_inference.InferenceError(f"{op}: A's K is {a[-1]}, B's is {k_b} (trans_b={attrs['trans_b']})")
        for x, y in zip(a[:-2], b[:-2]):
            if isinstance(x, int) and isinstance(y, int) and (y < 1 or x % y):
                raise onnx.shape_inference.InferenceError(
                    f"{op}: B's batch dims {b[:-2]} are not A's {a[:-2]}, 1 or divisors of them")
        _check_dims(ctx, op, {i: (DI_BATCH_MATMUL.inputs[i].name, [*b[:-1], 1]) for i in (4, 5)})
        out = [*a[:-1], n]
    _set_activation_outputs(ctx, TensorProto.INT32, out)


DI_BATCH_MATMUL = OpDef(
    name="DIBatchMatMul",
    doc=(
        "Integer matmul of two activations with per-row scales on both sides (attention in the integer-only "
        "graph); batch dims of B equal A's, 1, or divide them (grouped-query attention: A's index i takes B's "
        "i / (A's dim / B's dim)). trans_b=1 (Q.K^T): B [..., N, K], Y = A @ B^T, exact int32 dot "
        "products times B's row mantissas, aligned (as DIMatMul's channels) over the keys visible through mask "
        "(bool, broadcast to Y) and, with is_causal, the causal rule (key n visible to row m when n <= m + N - M); "
        "hidden keys give 0. trans_b=0 (P.V): B [..., K, N] with its scales along the contraction axis: per row "
        "u[k] = A[m, k] * b_m[k] aligned over the k with A[m, k] != 0 (the common exponent lowered by "
        "max(0, bitlen(sum_k |A[m, k]|) + max shift + 22 - 62), which only uint16 A can need), then "
        "sum_k u[k] * B[k, n] in int64 (< 2^62). The "
        "row is then rounded to at most 30 bits (int32 Y, |Y| <= 2^30) with scale a_m * 2^-(a_e + Ea - shift) "
        "normalized to a 15-bit mantissa: a wide output for DIClippedSoftmax (scores) or DIRequant (contexts)."
    ),
    inputs=(Input("A", "T", "codes [..., M, K] (int8, or uint8/uint16 probabilities: uint16 for trans_b=0)"),
            *_int_activation("A", "a", "left operand")[1:],
            *_int_activation("B", "b", "right operand [..., N, K] (trans_b=1) or [..., K, N], scales per row"),
            Input("mask", "tensor(bool)", "visible keys (trans_b=1), broadcast to Y's shape", optional=True)),
    outputs=_int_activation("Y", "y", "wide output [..., M, N]", code_type="tensor(int32)"),
    attributes=(
        Attribute("trans_b", onnx.AttributeProto.INT, "1: Y = A @ B^T (B's scales per output column); 0: Y = A @ B "
                  "(B's scales along K)", check=_flag),
        Attribute("is_causal", onnx.AttributeProto.INT, "trans_b=1 only: also hide keys after the row's position",
                  required=False, check=_flag),
    ),
    type_constraints={"T": ("tensor(int8)", "tensor(uint8)", "tensor(uint16)")},
    infer=_infer_batch_matmul,
)


def _infer_requant(ctx) -> None:
    op = f"{DOMAIN}::DIRequant"
    attrs = _read_attrs(ctx, DI_REQUANT)
    dims = _input_dims(ctx, 0)
    out = None
    if dims is not None:
        if attrs.get("heads_first") and len(dims) != 4:
            raise onnx.shape_inference.InferenceError(f"{op}: heads_first=1 needs X [B, G, S, D], got rank {len(dims)}")
        if len(dims) < 2:
            raise onnx.shape_inference.InferenceError(f"{op}: X must have rank >= 2 ([..., G, D])")
        _check_dims(ctx, op, {i: (DI_REQUANT.inputs[i].name, [*dims[:-1], 1]) for i in (1, 2)})
        if attrs.get("heads_first"):
            dims = [dims[0], dims[2], dims[1], dims[3]]
        g, d = dims[-2:]
        out = [*dims[:-2], g * d if isinstance(g, int) and isinstance(d, int) else None]
    _set_activation_outputs(ctx, TensorProto.INT8, out)
    _set_zero_output(ctx, out)


DI_REQUANT = OpDef(
    name="DIRequant",
    doc=(
        "Merge rows into one requantized row: X [..., G, D] (int8 or int32, per-row scales [..., G, 1]) becomes "
        "Y [..., G * D] int8 with one scale per row (e.g. attention heads into a token for o_proj). q * m of each "
        "row (< 2^46) is aligned over the G exponents as DIMatMul's channels, then requantized per output row. "
        "heads_first=1 takes attention's layout X [B, G, S, D] (scales [B, G, S, 1]) and gives Y [B, S, G * D], "
        "the result of its transpose [B, S, G, D] without the Transpose nodes."
    ),
    inputs=(Input("X", "T", "codes [..., G, D]"), *_int_activation("X", "x", "rows to merge")[1:]),
    outputs=DI_LINEAR_INPUT_OUTPUTS,
    attributes=(_OBITS, _CLIP_Q15, _ACT_SYM,
                Attribute("heads_first", onnx.AttributeProto.INT, "1: X [B, G, S, D] (default 0: [..., G, D])",
                          required=False, check=_flag)),
    type_constraints={"T": ("tensor(int8)", "tensor(int32)")},
    infer=_infer_requant,
)

INTEGER_OPS = (DI_MATMUL, DI_EXP, DI_CLIPPED_SOFTMAX, DI_NORM, DI_SWIGLU, DI_ROTARY, DI_ADD, DI_BATCH_MATMUL,
               DI_REQUANT)


OPS: dict[str, OpDef] = {op.name: op for op in (GROUP_QUANT_MATMUL, QUANT_LINEAR, SPQR_MATMUL, SPQR_DEQUANTIZE,
                                               *INTEGER_OPS)}

# Element types the kernels accept for T, as TensorProto enums (the C++ side checks the same list).
T_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


def _onnx_schema(op: OpDef) -> onnx.defs.OpSchema:
    OpSchema = onnx.defs.OpSchema
    option = {True: OpSchema.FormalParameterOption.Optional, False: OpSchema.FormalParameterOption.Single}
    params = lambda items: [OpSchema.FormalParameter(i.name, i.type, i.doc, param_option=option[i.optional]) for i in items]
    attr_types = {onnx.AttributeProto.INT: OpSchema.AttrType.INT, onnx.AttributeProto.FLOAT: OpSchema.AttrType.FLOAT,
                  onnx.AttributeProto.STRING: OpSchema.AttrType.STRING, onnx.AttributeProto.INTS: OpSchema.AttrType.INTS}
    schema = OpSchema(
        op.name, DOMAIN, DOMAIN_VERSION, op.doc,
        inputs=params(op.inputs), outputs=params(op.outputs),
        type_constraints=[(name, list(types), "") for name, types in op.type_constraints.items()],
        attributes=[OpSchema.Attribute(a.name, attr_types[a.type], a.doc, required=a.required) for a in op.attributes],
    )
    if op.infer is not None:
        schema.set_type_and_shape_inference_function(op.infer)
    return schema


def register_schemas() -> None:
    """Register every edgeq op with onnx's schema registry; idempotent (a second call changes nothing)."""
    for op in OPS.values():
        try:
            onnx.defs.get_schema(op.name, DOMAIN_VERSION, DOMAIN)
            continue
        except onnx.defs.SchemaError:
            pass
        onnx.defs.register_schema(_onnx_schema(op))


def opset_import() -> onnx.OperatorSetIdProto:
    """The opset entry a model using edgeq ops must carry."""
    return helper.make_opsetid(DOMAIN, DOMAIN_VERSION)
