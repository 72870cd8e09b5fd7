"""LowerQuantLinearPass: the exporter's weight-activation linear -> edgeq::QuantLinear, and its refusals."""

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.quant_linear_packing import unpack_weights
from edgeq.custom_ops.reference import quant_linear, quant_linear_rounded, quantize_tokens, quantize_tokens_asym
from edgeq.exporter.llama_graph import ACT_BITS_KEY, ACT_SYM_KEY, BITS_KEY, pack_uint4
from edgeq.passes._rules import why_not
from edgeq.passes.lower_quant_linear import LowerQuantLinearPass
from edgeq.passes.pipeline import default_pipeline
from tests.passes.helpers import from_proto, ops, run

CHAIN = Counter({"Abs": 1, "ReduceMax": 1, "Div": 2, "Max": 1, "Round": 1, "Clip": 1, "Mul": 1,
                 "DequantizeLinear": 1, "MatMul": 1})


def act_quant_linear(K, N, wbits, abits, *, rng, dtype=np.float32, batch=(2, 3), group=None, zeros="symmetric",
                     qmax=None, floor=1e-5, metadata=True, chain_only=False, act_sym=True):
    """The exporter's ``fake_quant_tokens`` (``act_sym=False``: ``fake_quant_tokens_asym``) + ``linear`` for one
    layer, as ONNX (stock ops only).

    Returns (model, codes [K, N] uint8, scales [G, N]). ``group``/``zeros``/``qmax``/``floor`` bend the pattern
    the ways the pass must refuse; ``chain_only`` outputs the integer codes (q, or u) instead of y.
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    group = group or K
    G = -(-K // group)
    codes = rng.integers(0, 2**wbits, (K, N)).astype(np.uint8)
    scales = (rng.random((G, N)) * 0.02 + 0.005).astype(dtype)
    if zeros == "symmetric":
        zero = np.full((G, N), 2 ** (wbits - 1), np.uint8)
    elif zeros == "random":
        zero = rng.integers(0, 2**wbits, (G, N)).astype(np.uint8)
    else:
        zero = None
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype), name)  # noqa: E731
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"), c("floor", floor),
             numpy_helper.from_array(scales, "w.scales")]
    if wbits == 4:
        inits.append(helper.make_tensor("w.codes", TensorProto.UINT4, codes.shape, pack_uint4(codes), raw=True))
        if zero is not None:
            inits.append(helper.make_tensor("w.zeros", TensorProto.UINT4, zero.shape, pack_uint4(zero), raw=True))
    else:
        inits.append(numpy_helper.from_array(codes, "w.codes"))
        if zero is not None:
            inits.append(numpy_helper.from_array(zero, "w.zeros"))
    chain = sym_chain(abits, qmax, metadata, c) if act_sym else asym_chain(abits, c)
    inits += chain.inits
    nodes = chain.nodes
    if chain_only:
        out = helper.make_tensor_value_info(chain.codes, elem, [*batch, K])
    else:
        dq = helper.make_node("DequantizeLinear", ["w.codes", "w.scales"] + (["w.zeros"] if zero is not None else []),
                              ["w"], name="w/DequantizeLinear", axis=0, block_size=group)
        if wbits not in (4, 8):
            helper.set_metadata_props(dq, {BITS_KEY: str(wbits)})
        nodes += [*chain.dequant, dq, helper.make_node("MatMul", ["xq", "w"], ["y"], name="w/MatMul")]
        out = helper.make_tensor_value_info("y", elem, [*batch, N])
    graph = helper.make_graph(nodes, "wa_linear", [helper.make_tensor_value_info("x", elem, [*batch, K])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, codes, scales


@dataclasses.dataclass
class Chain:
    """One per-token activation chain from x: its constants, nodes, the name of its integer codes, and the nodes
    that turn those codes back into the MatMul's input ``xq``."""

    inits: list
    nodes: list
    codes: str
    dequant: list


def sym_chain(abits, qmax, metadata, c) -> Chain:
    q_hi = 2 ** (abits - 1) - 1
    clip = helper.make_node("Clip", ["r", "lo", "hi"], ["q"], name="act/Clip")
    if metadata:
        helper.set_metadata_props(clip, {ACT_BITS_KEY: str(abits)})
    nodes = [
        helper.make_node("Abs", ["x"], ["ax"], name="act/Abs"),
        helper.make_node("ReduceMax", ["ax", "axes"], ["absmax"], name="act/ReduceMax", keepdims=1),
        helper.make_node("Div", ["absmax", "qmax"], ["s0"], name="act/Div"),
        helper.make_node("Max", ["s0", "floor"], ["scale"], name="act/Max"),
        helper.make_node("Div", ["x", "scale"], ["xs"], name="act/q/Div"),
        helper.make_node("Round", ["xs"], ["r"], name="act/Round"),
        clip,
    ]
    inits = [c("qmax", float(qmax or q_hi)), c("lo", float(-q_hi - 1)), c("hi", float(q_hi))]
    return Chain(inits, nodes, "q", [helper.make_node("Mul", ["q", "scale"], ["xq"], name="act/dq/Mul")])


def asym_chain(abits, c) -> Chain:
    levels = float(2**abits - 1)
    clip = helper.make_node("Clip", ["uz", "lo", "hi"], ["u"], name="act/Clip")
    helper.set_metadata_props(clip, {ACT_BITS_KEY: str(abits), ACT_SYM_KEY: "0"})
    nodes = [
        helper.make_node("ReduceMax", ["x", "axes"], ["xmax"], name="act/ReduceMax", keepdims=1),
        helper.make_node("Max", ["xmax", "zero"], ["hi_"], name="act/hi"),
        helper.make_node("ReduceMin", ["x", "axes"], ["xmin"], name="act/ReduceMin", keepdims=1),
        helper.make_node("Min", ["xmin", "zero"], ["lo_"], name="act/lo"),
        helper.make_node("Sub", ["hi_", "lo_"], ["span"], name="act/Sub"),
        helper.make_node("Div", ["span", "levels"], ["s0"], name="act/Div"),
        helper.make_node("Max", ["s0", "floor"], ["scale"], name="act/Max"),
        helper.make_node("Neg", ["lo_"], ["nlo"], name="act/Neg"),
        helper.make_node("Div", ["nlo", "scale"], ["zq"], name="act/zp/Div"),
        helper.make_node("Round", ["zq"], ["zp"], name="act/zp/Round"),
        helper.make_node("Div", ["x", "scale"], ["xs"], name="act/q/Div"),
        helper.make_node("Round", ["xs"], ["r"], name="act/Round"),
        helper.make_node("Add", ["r", "zp"], ["uz"], name="act/Add"),
        clip,
    ]
    inits = [c("zero", 0.0), c("levels", levels), c("lo", 0.0), c("hi", levels)]
    dequant = [helper.make_node("Sub", ["u", "zp"], ["uq"], name="act/dq/Sub"),
               helper.make_node("Mul", ["uq", "scale"], ["xq"], name="act/dq/Mul")]
    return Chain(inits, nodes, "u", dequant)


ASYM_CHAIN = Counter({"ReduceMax": 1, "ReduceMin": 1, "Max": 2, "Min": 1, "Sub": 2, "Div": 3, "Neg": 1, "Round": 2,
                      "Add": 1, "Clip": 1, "Mul": 1, "DequantizeLinear": 1, "MatMul": 1})


@pytest.mark.parametrize("zeros", ["symmetric", "random"])
@pytest.mark.parametrize("wbits, abits", [(8, 8), (4, 4), (6, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_lowers_the_asymmetric_chain_and_matches_the_reference(wbits, abits, dtype, zeros):
    """act_sym=0 with w_sum = sum_k W; the op's bits are the reference's, close to ORT on the original graph."""
    K, N = 96, 40
    rng = np.random.default_rng(wbits * 10 + abits + 1)
    proto, codes, scales = act_quant_linear(K, N, wbits, abits, rng=rng, dtype=dtype, zeros=zeros, act_sym=False)
    assert ops(from_proto(proto)) == ASYM_CHAIN
    result = LowerQuantLinearPass()(from_proto(proto))
    assert ops(result.model) == Counter({"QuantLinear": 1})
    node = next(iter(result.model.graph))
    assert {k: a.value for k, a in node.attributes.items()} == {"K": K, "N": N, "wbits": wbits, "abits": abits,
                                                                 "act_sym": 0}
    B, w_scales, w_zero, w_sum = (None if v is None else v.const_value.numpy() for v in node.inputs[1:])
    assert (w_zero is None) == (zeros == "symmetric")
    assert w_sum.dtype == np.int32 and np.array_equal(w_sum, unpack_weights(B, K, wbits).astype(np.int64).sum(1))
    x = activations(rng, K, dtype) + np.asarray(0.5, dtype)  # off-centre rows: the zero points matter
    (y_before,) = run(proto, {"x": x})
    (y_after,) = run(result.model, {"x": x})
    np.testing.assert_array_equal(y_after, quant_linear_rounded(x, B, w_scales, K, N, wbits, abits, w_zero, act_sym=False))
    tol = 1e-5 if dtype == np.float32 else 2e-2
    assert np.abs(y_after.astype(np.float64) - y_before).max() <= tol * np.abs(y_before).max()


@pytest.mark.parametrize("abits", [8, 4])
def test_the_asymmetric_chain_in_ort_gives_the_ops_codes(abits):
    """float32: ORT's chain computes u = q + 2^(abits-1), the reference's codes, bit for bit."""
    rng = np.random.default_rng(abits + 40)
    proto, _, _ = act_quant_linear(200, 8, 8, abits, rng=rng, batch=(16,), chain_only=True, act_sym=False)
    x = activations(rng, 200, np.float32, batch=(16,)) + np.float32(0.3)
    (u,) = run(proto, {"x": x})
    q, _, _ = quantize_tokens_asym(x, abits)
    np.testing.assert_array_equal(u, q.astype(np.float32) + 2 ** (abits - 1))


def activations(rng, K, dtype, batch=(2, 3)):
    # Rows of very different magnitude, one with an outlier, one tiny enough for the scale floor to act.
    x = rng.standard_normal((*batch, K)) * rng.choice([0.01, 1.0, 30.0], (*batch, 1))
    x.reshape(-1, K)[0, 0] = 200.0
    x.reshape(-1, K)[-1] *= 1e-5
    return x.astype(dtype)


def ort_cpu_codes(x, abits):
    """The codes ORT's CPU provider computes from the exporter's chain. For float32, the op's own rule. For
    float16 it has no Abs/ReduceMax/Div/Max kernels and runs them in float32 behind inserted Casts: the scale is
    never rounded to float16, only the quotient is (Round and Clip have float16 kernels). The op follows the
    graph's ONNX meaning (every step in float16, as the CUDA provider and torch compute it), so a few codes
    near a .5 boundary land one step apart."""
    if x.dtype == np.float32:
        return quantize_tokens(x, abits)[0]
    qmax = 2 ** (abits - 1) - 1
    x32 = x.astype(np.float32)
    s32 = np.maximum(np.abs(x32).max(-1, keepdims=True) / np.float32(qmax), np.float32(np.float16(1e-5)))
    return np.clip(np.rint((x32 / s32).astype(np.float16)), -qmax - 1, qmax).astype(np.int8)


@pytest.mark.parametrize("zeros", ["symmetric", "random"])
@pytest.mark.parametrize("wbits, abits", [(8, 8), (6, 6), (4, 4), (4, 8), (3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_lowers_the_exporter_chain_and_matches_ort_on_the_original(wbits, abits, dtype, zeros):
    K, N = 96, 40
    rng = np.random.default_rng(wbits * 10 + abits)
    proto, codes, scales = act_quant_linear(K, N, wbits, abits, rng=rng, dtype=dtype, zeros=zeros)
    model = from_proto(proto)
    assert ops(model) == CHAIN
    result = LowerQuantLinearPass()(model)
    assert result.modified
    assert ops(result.model) == Counter({"QuantLinear": 1})
    node = next(iter(result.model.graph))
    assert node.domain == "edgeq"
    assert {k: a.value for k, a in node.attributes.items()} == {"K": K, "N": N, "wbits": wbits, "abits": abits}
    B, w_scales, *rest = (v.const_value.numpy() for v in node.inputs[1:])
    assert B.dtype == np.int8 and B.shape == ((N, K // 2) if wbits <= 4 else (N, K))
    assert np.array_equal(unpack_weights(B, K, wbits), codes.T.astype(np.int16) - 2 ** (wbits - 1))
    assert w_scales.dtype == dtype and np.array_equal(w_scales, scales[0])
    zero = next(t for t in proto.graph.initializer if t.name == "w.zeros")
    zero = numpy_helper.to_array(zero).reshape(-1).astype(np.int16)  # UINT4 unpacks to uint8 codes
    w_zero = rest[0] if rest else None
    if zeros == "symmetric":
        assert w_zero is None  # the optional input stays absent
    else:
        assert w_zero.dtype == np.int8 and np.array_equal(w_zero, zero - 2 ** (wbits - 1))

    x = activations(rng, K, dtype)
    (y_before,) = run(proto, {"x": x})
    (y_after,) = run(result.model, {"x": x})
    ref = quant_linear(x, B, w_scales, K, N, wbits, abits, w_zero)
    assert y_after.dtype == dtype and y_after.shape == (2, 3, N)
    # The lowered graph rounds an exact integer sum once. The original rounds q*s_x and the dequantized weights
    # to T and sums K products in T: at most (K+2) units of roundoff of sum|terms| (the textbook dot-product
    # bound; eps is two units). On top come the one-step code flips of ORT's float16 chain (ort_cpu_codes):
    # each moves y[m, n] by at most s_x[m] * max|W[n]|. float32 has none; float16 has under 1% of codes.
    eps = np.finfo(dtype).eps
    q, s = quantize_tokens(x, abits)
    flips = ort_cpu_codes(x, abits) != q
    assert flips.mean() <= 0.01 if dtype == np.float16 else not flips.any()
    W = (unpack_weights(B, K, wbits).astype(np.float64) - (0 if w_zero is None else w_zero[:, None])) \
        * w_scales.astype(np.float64)[:, None]
    terms = (np.abs(q).astype(np.float64) * s.astype(np.float64)) @ np.abs(W).T
    flip_bound = flips.sum(-1, keepdims=True) * s.astype(np.float64) * np.abs(W).max(axis=1)
    tiny = float(np.finfo(dtype).smallest_subnormal)  # the absolute roundoff where T's values are subnormal
    bound = (K + 2) * (eps * terms + tiny) + flip_bound
    assert np.all(np.abs(y_after.astype(np.float64) - y_before.astype(np.float64)) <= bound)
    assert np.all(np.abs(y_after.astype(np.float64) - ref) <= eps * np.abs(ref) + tiny)


@pytest.mark.parametrize("abits", [8, 6, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_the_chain_in_ort_gives_the_ops_codes(abits, dtype):
    """float32: ORT's Div/Round/Clip reproduce the op's codes bit for bit. float16: exactly ``ort_cpu_codes``,
    one step from the op's in under 1% of places."""
    rng = np.random.default_rng(abits)
    proto, _, _ = act_quant_linear(200, 8, 8, abits, rng=rng, dtype=dtype, batch=(16,), chain_only=True)
    x = activations(rng, 200, dtype, batch=(16,))
    (q,) = run(proto, {"x": x})
    assert np.array_equal(q, ort_cpu_codes(x, abits).astype(dtype))
    ours = quantize_tokens(x, abits)[0]
    if dtype == np.float32:
        assert np.array_equal(q, ours.astype(dtype))
    else:
        assert np.abs(q.astype(np.int16) - ours).max() <= 1 and np.mean(q != ours) <= 0.01


def test_every_linear_of_a_shared_input_gets_its_own_op():
    """q/k/v read one normalized x, each through its own chain (the exporter writes one per linear)."""
    rng = np.random.default_rng(7)
    protos = [act_quant_linear(64, 16, 8, 8, rng=rng)[0] for _ in range(3)]
    graph = protos[0].graph
    for i, p in enumerate(protos[1:], 1):
        for n in p.graph.node:
            n.name = f"{n.name}{i}"
            n.input[:] = [x if x == "x" else f"{x}{i}" for x in n.input]
            n.output[:] = [f"{o}{i}" for o in n.output]
        for t in p.graph.initializer:
            t.name = f"{t.name}{i}"
        graph.node.extend(p.graph.node)
        graph.initializer.extend(p.graph.initializer)
        graph.output.extend([helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, 3, 16])])
    model = from_proto(protos[0])
    assert ops(model) == Counter({k: 3 * v for k, v in CHAIN.items()})
    x = activations(rng, 64, np.float32)
    before = run(protos[0], {"x": x})
    result = LowerQuantLinearPass()(model)
    assert ops(result.model) == Counter({"QuantLinear": 3})
    for y, y0 in zip(run(result.model, {"x": x}), before):
        assert np.abs(y - y0).max() <= 1e-5 * np.abs(y0).max()


@pytest.mark.parametrize("kwargs, reason", [
    (dict(zeros=None), "no zero points"),
    (dict(group=32), "groups of 32 along K=64"),
    (dict(qmax=100), "8-bit activations need qmax=127, the chain has 100.0"),
    (dict(floor=1e-6), "scale floor 1e-06 is not the op's 1e-05"),
])
def test_refuses_deviations_and_says_why(kwargs, reason):
    rng = np.random.default_rng(3)
    proto, _, _ = act_quant_linear(64, 16, 8, 8, rng=rng, **kwargs)
    model = from_proto(proto)
    pass_ = LowerQuantLinearPass()
    assert not pass_(model).modified
    assert ops(model) == CHAIN - (Counter() if kwargs.get("zeros", 1) is not None else Counter())
    assert reason in why_not(pass_.rules, model)


def test_width_from_the_clip_bound_without_metadata():
    rng = np.random.default_rng(4)
    proto, _, _ = act_quant_linear(64, 16, 6, 6, rng=rng, metadata=False)
    result = LowerQuantLinearPass()(from_proto(proto))
    node = next(iter(result.model.graph))
    assert node.op_type == "QuantLinear" and node.attributes["abits"].value == 6


def test_default_pipeline_lowers_it_before_matmulnbits_and_falls_back_when_refused():
    rng = np.random.default_rng(5)
    lowered = default_pipeline(act_quant_linear(64, 16, 4, 4, rng=rng)[0])
    assert ops(lowered.model) == Counter({"QuantLinear": 1})
    assert lowered.report("quant-linear").modified and not lowered.report("matmul-nbits").modified
    # A grouped 4-bit weight is MatMulNBits' (the stock-op activation chain stays, exact as exported).
    proto = act_quant_linear(64, 16, 4, 4, rng=rng, group=32)[0]
    fallback = default_pipeline(proto)
    assert ops(fallback.model) == CHAIN - Counter({"DequantizeLinear": 1, "MatMul": 1}) + Counter({"MatMulNBits": 1})
    x = activations(rng, 64, np.float32)
    (y0,) = run(proto, {"x": x})
    (y1,) = run(fallback.model, {"x": x})
    assert np.abs(y1 - y0).max() <= 1e-5 * np.abs(y0).max()
    onnx.checker.check_model(fallback.to_proto())
