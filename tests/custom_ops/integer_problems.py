"""Random problems and one-node models for the integer-only ops (DIMatMul, DIExp, DIClippedSoftmax, DINorm,
DISwiGLU, DIRotary, DIAdd, DIBatchMatMul, DIRequant), shared by their CPU, reference and bad-input tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgeq.custom_ops import reference_integer as ri
from edgeq.custom_ops.schema import OPS, opset_import

from .conftest import CUDA, cuda_available, session

WIDTHS = [(8, 8), (6, 6), (4, 4)]  # W8A8, W6A6, W4A4
# obits 2..16: Y int8 up to 8 bits, int16 above (DIClippedSoftmax's P: uint8, uint16), typed by the graph
WIDE_OUTPUT_OPS = ("DIMatMul", "DIAdd", "DIClippedSoftmax", "DINorm")


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


def model(op: str, arrays: list, name: str = "n0", y_type: int | None = None, constants: tuple = (),
          **attrs) -> onnx.ModelProto:
    """A one-node model of edgeq ``op`` with every input a graph input of dynamic shape (so wrong shapes reach
    the kernel's own checks), except the input indices in ``constants``, stored as initializers (the kernel may
    check those once, at session creation); ``arrays`` follows the op's inputs, None for an omitted optional one. The Y of
    DIMatMul, DINorm and DIAdd and DIClippedSoftmax's P are declared with the element type obits gives (ORT takes
    it from the graph), or ``y_type``."""
    opdef = OPS[op]
    names = [i.name if a is not None else "" for i, a in zip(opdef.inputs, arrays)]
    while names and not names[-1]:
        names.pop()
    # the optional zero-point output (y_zero) only with asymmetric codes, DIMatMul's second part only with split
    outs = [o for o in opdef.outputs if not o.optional or attrs.get("act_sym", 1) == 0 or attrs.get("split", 0)]
    node = helper.make_node(op, names, [o.name for o in outs], domain="edgeq", name=name, **attrs)
    inputs = [helper.make_tensor_value_info(i.name, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
              for n, (i, a) in enumerate(zip(opdef.inputs, arrays)) if a is not None and n not in constants]
    initializers = [numpy_helper.from_array(np.asarray(arrays[n]), opdef.inputs[n].name) for n in constants]
    outputs = [helper.make_empty_tensor_value_info(o.name) for o in outs]
    if op in WIDE_OUTPUT_OPS:
        if y_type is None:
            narrow, wide = ((onnx.TensorProto.UINT8, onnx.TensorProto.UINT16) if op == "DIClippedSoftmax" else
                            (onnx.TensorProto.INT8, onnx.TensorProto.INT16))
            y_type = narrow if attrs.get("obits", 8) <= 8 else wide
        for index in (0, 3) if attrs.get("split", 0) else (0,):
            outputs[index] = helper.make_tensor_value_info(opdef.outputs[index].name, y_type, None)
    graph = helper.make_graph([node], op, inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the ops run: the op library and ORT's execution providers (the CPU ops, or the CUDA ops with the CPU
    ones beside them as ORT requires)."""

    library: object
    providers: tuple = ("CPUExecutionProvider",)


def _library(device: str):
    from edgeq.custom_ops.library import get_library

    return get_library(device)


GPU = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu with CUDA")]


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=GPU)])
def target(request) -> Target:
    """Every test taking it runs on the CPU ops and (on a GPU machine) on the CUDA ops: same problems, same bits."""
    return Target(_library(request.param), CUDA if request.param == "cuda" else ("CPUExecutionProvider",))


# The dot-product kernels each target can pin: EDGEQ_DIMATMUL_KERNEL on the CPU, EDGEQ_DI_GEMM on CUDA.
GEMM_KERNELS = [("cpu", k) for k in ("vnni", "avx512", "avx2", "scalar")] + \
    [pytest.param(("cuda", k), marks=GPU, id=f"cuda-{k}") for k in ("cublas", "rows", "tiled")]


@pytest.fixture(params=GEMM_KERNELS, ids=lambda p: p if isinstance(p, str) else "-".join(p))
def matmul_kernel(request, monkeypatch) -> Target:
    """A target with its DIMatMul/DIBatchMatMul GEMM kernel pinned (read at session creation); skips a CPU kernel
    the build lacks."""
    device, kernel = request.param
    monkeypatch.setenv("EDGEQ_DIMATMUL_KERNEL" if device == "cpu" else "EDGEQ_DI_GEMM", kernel)
    t = Target(_library(device), ("CPUExecutionProvider",) if device == "cpu" else CUDA)
    x = activation(np.random.default_rng(0), (1, 3))
    try:
        run(t, "DIMatMul", [*x, np.ones((1, 3), np.int8), np.ones(1, np.int32), np.zeros(1, np.int8)],
            K=3, N=1, abits=8, wbits=8, obits=8)
    except Exception as e:  # noqa: BLE001
        if "this build has no" not in str(e):
            raise
        pytest.skip(f"this build has no {kernel} kernel")
    return t


def run(target, op: str, arrays: list, threads: int = 2, y_type: int | None = None, constants: tuple = (),
        **attrs) -> list[np.ndarray]:
    """The op in ORT on ``target`` (a Target, or an op library for the CPU ops); ``constants``: see ``model``."""
    t = target if isinstance(target, Target) else Target(target)
    feeds = {i.name: a for n, (i, a) in enumerate(zip(OPS[op].inputs, arrays)) if a is not None and n not in constants}
    return session(model(op, arrays, y_type=y_type, constants=constants, **attrs), t.library, t.providers,
                   threads=threads).run(None, feeds)


REFERENCE = {
    "DIMatMul": lambda a, obits, K=None, N=None, abits=8, wbits=None, split=0: ri.di_matmul(
        *a[:6], obits, *a[6:7], x_zero=a[7] if len(a) > 7 else None, abits=abits, split=split),
    "DIExp": lambda a, obits: ri.di_exp(*a, obits),
    "DIClippedSoftmax": lambda a, **kw: ri.di_clipped_softmax(*a, **kw),
    "DINorm": lambda a, **kw: ri.di_norm(*a, **kw),
    "DISwiGLU": lambda a, obits, clip_q15=ri.CLIP_ONE, act_sym=1, hadamard=0: ri.di_swiglu(*a, obits, clip_q15, act_sym,
                                                                                        hadamard),
    "DIRotary": lambda a, **kw: ri.di_rotary(*a, **kw),
    "DIAdd": lambda a, obits: ri.di_add(*a, obits),
    "DIBatchMatMul": lambda a, **kw: ri.di_batch_matmul(*a, **kw),
    "DIRequant": lambda a, obits, clip_q15=ri.CLIP_ONE, act_sym=1, heads_first=0: ri.di_requant(*a, obits, clip_q15,
                                                                                              act_sym, heads_first),
}


def reference(op: str, arrays: list, **attrs):
    return REFERENCE[op](arrays, **attrs)


def assert_bit_exact(library, op: str, arrays: list, constants: tuple = (), **attrs) -> list[np.ndarray]:
    """Runs the op in ORT and its reference; codes, mantissas and exponents must be identical (dtype included)."""
    got = run(library, op, arrays, constants=constants, **attrs)
    want = reference(op, arrays, **attrs)
    assert len(got) == len(want), (len(got), len(want))
    names = ("codes", "m", "e", "zero") if len(want) <= 4 else ("codes", "m", "e", "codes2", "m2", "e2")  # split
    for name, g, w in zip(names[:len(want)], got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w, err_msg=f"{op}: {name}")
    return got
