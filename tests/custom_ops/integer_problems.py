"""Random problems and one-node models for the integer-only ops (DIMatMul, DIExp, DIClippedSoftmax, DINorm,
DISwiGLU, DIRotary, DIAdd, DIBatchMatMul, DIRequant), shared by their CPU, reference and bad-input tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.schema import OPS, opset_import

from .conftest import session

WIDTHS = [(8, 8), (6, 6), (4, 4)]  # W8A8, W6A6, W4A4
WIDE_OUTPUT_OPS = ("DIMatMul", "DIAdd")  # obits 2..16: Y int8 up to 8 bits, int16 above, typed by the graph


def activation(rng: np.random.Generator, shape, bits: int = 8, *, e_range=(-4, 40), saturate: bool = False,
               full_mantissas: bool = False):
    """An integer activation (q, m, e): codes over the signed range of ``bits`` (with ``saturate``, each row holds
    both int8 limits, -128 and 127, whatever ``bits``), normalized mantissas (any in [1, 2**15) when
    ``full_mantissas``), exponents in ``e_range``."""
    shape = tuple(shape)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, shape)
    if saturate and shape[-1] >= 2:
        q[..., 0], q[..., -1] = -128, 127
    lead = (*shape[:-1], 1)
    m = rng.integers(1 if full_mantissas else 1 << 14, 1 << 15, lead)
    e = rng.integers(e_range[0], e_range[1] + 1, lead)
    return q.astype(np.int8), m.astype(np.int32), e.astype(np.int8)


def activation16(rng: np.random.Generator, shape, *, e_range=(-4, 40), saturate: bool = False,
                 full_mantissas: bool = False):
    """An integer activation of int16 codes over [-32767, 32767] (with ``saturate``, each row holds both ends)."""
    q, m, e = activation(rng, shape, e_range=e_range, full_mantissas=full_mantissas)
    q = rng.integers(-32767, 32768, np.shape(q))
    if saturate and q.shape[-1] >= 2:
        q[..., 0], q[..., -1] = -32767, 32767
    return q.astype(np.int16), m, e


def channel_scales(rng: np.random.Generator, n: int, *, spread: int = 6, signed: bool = False):
    """Per-channel dyadic scales (m int32 [n], e int8 [n]) with exponents spread over ``spread`` + 1 values."""
    m = rng.integers(1 << 14, 1 << 15, n)
    if signed:
        m *= rng.choice([-1, 1], n)
    e = rng.integers(8, 9 + spread, n)
    return m.astype(np.int32), e.astype(np.int8)


def model(op: str, arrays: list, name: str = "n0", y_type: int | None = None, **attrs) -> onnx.ModelProto:
    """A one-node model of edgeq ``op`` with every input a graph input of dynamic shape (so wrong shapes reach
    the kernel's own checks); ``arrays`` follows the op's inputs, None for an omitted optional one. DIMatMul's and
    DIAdd's Y is declared with the element type obits gives (ORT takes it from the graph), or ``y_type``."""
    opdef = OPS[op]
    names = [i.name if a is not None else "" for i, a in zip(opdef.inputs, arrays)]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, [o.name for o in opdef.outputs], domain="edgeq", name=name, **attrs)
    inputs = [helper.make_tensor_value_info(i.name, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
              for i, a in zip(opdef.inputs, arrays) if a is not None]
    outputs = [helper.make_empty_tensor_value_info(o.name) for o in opdef.outputs]
    if op in WIDE_OUTPUT_OPS:
        if y_type is None:
            y_type = onnx.TensorProto.INT8 if attrs.get("obits", 8) <= 8 else onnx.TensorProto.INT16
        outputs[0] = helper.make_tensor_value_info(opdef.outputs[0].name, y_type, None)
    graph = helper.make_graph([node], op, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def run(library, op: str, arrays: list, threads: int = 2, y_type: int | None = None, **attrs) -> list[np.ndarray]:
    feeds = {i.name: a for i, a in zip(OPS[op].inputs, arrays) if a is not None}
    return session(model(op, arrays, y_type=y_type, **attrs), library, threads=threads).run(None, feeds)


REFERENCE = {
    "DIMatMul": lambda a, obits, K=None, N=None, abits=None, wbits=None: ri.di_matmul(*a, obits),
    "DIExp": lambda a, obits: ri.di_exp(*a, obits),
    "DIClippedSoftmax": lambda a, **kw: ri.di_clipped_softmax(*a, **kw),
    "DINorm": lambda a, **kw: ri.di_norm(*a, **kw),
    "DISwiGLU": lambda a, obits: ri.di_swiglu(*a, obits),
    "DIRotary": lambda a, **kw: ri.di_rotary(*a, **kw),
    "DIAdd": lambda a, obits: ri.di_add(*a, obits),
    "DIBatchMatMul": lambda a, **kw: ri.di_batch_matmul(*a, **kw),
    "DIRequant": lambda a, obits: ri.di_requant(*a, obits),
}


def reference(op: str, arrays: list, **attrs):
    return REFERENCE[op](arrays, **attrs)


def assert_bit_exact(library, op: str, arrays: list, **attrs) -> list[np.ndarray]:
    """Runs the op in ORT and its reference; codes, mantissas and exponents must be identical (dtype included)."""
    got = run(library, op, arrays, **attrs)
    want = reference(op, arrays, **attrs)
    for name, g, w in zip(("codes", "m", "e"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w, err_msg=f"{op}: {name}")
    return got
