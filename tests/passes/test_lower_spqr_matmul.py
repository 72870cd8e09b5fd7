"""LowerSpQRMatMulPass: MatMul(x, [Cast](edgeq::SpQRDequantize)) -> edgeq::SpQRMatMul, alone and in the default
pipeline on a SpQR-quantized tiny Llama (fp32 and fp16 exports) against PyTorch."""

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.reference import spqr_weight
from edgeq.custom_ops.schema import SPQR_WEIGHT_INPUTS, opset_import
from edgeq.exporter.llama_graph import build_decoder_model
from edgeq.passes.lower_spqr_matmul import LowerSpQRMatMulPass
from edgeq.passes.pipeline import default_pipeline
from edgeq.passes.verify import verify_model
from edgeq.quantize.api import quantize_
from edgeq.quantize.config import SpQRConfig
from tests.conftest import TINY_TEXT, decoder_feeds, make_tiny_llama
from tests.custom_ops.spqr_problems import random_problem
from tests.passes.helpers import from_proto, ops, run

WEIGHTS = [f"w.{i.name}" for i in SPQR_WEIGHT_INPUTS]
K, N = 100, 24


def spqr_linear(dtype=np.float32, *, perm=False, second_use=None, seed=0):
    """The exporter's SpQR linear: [Gather(x, perm)] -> MatMul(x, [Cast](SpQRDequantize(w...))).

    second_use: "matmul" (another MatMul of the same weight) or "add" (the weight also feeds an Add).
    Returns (model, problem, W [N, K] float64 in the original column order).
    """
    rng = np.random.default_rng(seed)
    p = random_problem(rng, (2, 3), K, N, 3, 16, 3, 16, density=0.03)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(a, name) for name, a in zip(WEIGHTS, p.weights)]
    nodes, x = [], "x"
    W = spqr_weight(*p.weights, **p.attrs)
    if perm:
        order = rng.permutation(K).astype(np.int64)
        inits.append(numpy_helper.from_array(order, "w.perm"))
        nodes.append(helper.make_node("Gather", ["x", "w.perm"], ["x_perm"], name="w/Gather", axis=-1))
        x = "x_perm"
        full = np.empty_like(W)
        full[:, order] = W
        W = full
    nodes.append(helper.make_node("SpQRDequantize", WEIGHTS, ["w_t"], name="w/SpQRDequantize", domain="edgeq",
                                  **p.attrs))
    w = "w_t"
    if dtype == np.float16:
        nodes.append(helper.make_node("Cast", ["w_t"], ["w_half"], name="w/w/Cast", to=TensorProto.FLOAT16))
        w = "w_half"
    nodes.append(helper.make_node("MatMul", [x, w], ["y"], name="w/MatMul"))
    outputs = [helper.make_tensor_value_info("y", elem, [2, 3, N])]
    if second_use == "matmul":
        nodes.append(helper.make_node("MatMul", [x, w], ["y2"], name="w/MatMul2"))
        outputs.append(helper.make_tensor_value_info("y2", elem, [2, 3, N]))
    elif second_use == "add":
        nodes.append(helper.make_node("Add", [w, w], ["w2"], name="w/Add"))
        outputs.append(helper.make_tensor_value_info("w2", elem, [K, N]))
    graph = helper.make_graph(nodes, "spqr_linear", [helper.make_tensor_value_info("x", elem, [2, 3, K])], outputs,
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), opset_import()], ir_version=10)
    return proto, p, W


def lowered(proto):
    model = from_proto(proto)
    return model, LowerSpQRMatMulPass()(model)


def spqr_node(model):
    return next(n for n in model.graph if n.op_type == "SpQRMatMul")


def before_and_after(proto, model, dtype=np.float32, seed=0):
    """The outputs of the graph before and after the pass for one random x, and that x in float64."""
    x = np.random.default_rng(seed).standard_normal((2, 3, K)).astype(dtype)
    return run(proto, {"x": x}), run(model, {"x": x}), x.astype(np.float64)


def rel(y, ref):
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref))


def test_float32_linear_becomes_one_spqr_matmul_on_the_same_initializers():
    proto, p, W = spqr_linear()
    model, result = lowered(proto)
    assert result.modified
    assert ops(model) == Counter({"SpQRMatMul": 1})
    node = spqr_node(model)
    assert node.domain == "edgeq" and node.name == "w/SpQRMatMul"
    assert [v.name for v in node.inputs] == ["x", *WEIGHTS]
    assert {k: a.value for k, a in node.attributes.items()} == p.attrs
    assert sorted(model.graph.initializers) == sorted(WEIGHTS)  # shared, not copied
    (before,), (after,), x = before_and_after(proto, model, seed=1)
    ref = x @ W.T
    assert after.dtype == np.float32
    assert rel(before, ref) <= 1e-6 and rel(after, ref) <= 1e-6 and rel(after, before) <= 2e-6


def test_float16_linear_takes_the_cast_along():
    proto, p, W = spqr_linear(np.float16)
    model, result = lowered(proto)
    assert result.modified
    assert ops(model) == Counter({"SpQRMatMul": 1})
    (before,), (after,), x = before_and_after(proto, model, np.float16, seed=2)
    ref = x @ W.T
    assert after.dtype == np.float16
    # The lowered op rounds once (float32 inside); the graph rounded W to half first.
    assert rel(after, ref) <= 1e-3 and rel(before, ref) <= 2e-3 and rel(after, before) <= 2e-3


def test_keeps_the_act_order_gather():
    proto, _, W = spqr_linear(perm=True)
    model, result = lowered(proto)
    assert ops(model) == Counter({"Gather": 1, "SpQRMatMul": 1})
    _, (after,), x = before_and_after(proto, model, seed=3)
    assert rel(after, x @ W.T) <= 1e-6


def test_a_weight_used_twice_becomes_two_ops_on_one_set_of_initializers():
    proto, _, W = spqr_linear(np.float16, second_use="matmul")
    model, result = lowered(proto)
    assert ops(model) == Counter({"SpQRMatMul": 2})
    assert sorted(model.graph.initializers) == sorted(WEIGHTS)
    _, (y, y2), x = before_and_after(proto, model, np.float16, seed=4)
    np.testing.assert_array_equal(y, y2)
    assert rel(y, x @ W.T) <= 1e-3


def test_the_dequantizer_stays_while_something_else_reads_the_weight():
    proto, _, _ = spqr_linear(second_use="add")
    model, result = lowered(proto)
    assert result.modified
    assert ops(model) == Counter({"SpQRMatMul": 1, "SpQRDequantize": 1, "Add": 1})
    before, after, _ = before_and_after(proto, model, seed=5)
    np.testing.assert_array_equal(before[1], after[1])
    assert rel(after[0], before[0]) <= 2e-6


def test_a_weight_on_the_left_of_the_matmul_is_left_alone():
    proto, _, _ = spqr_linear()
    graph = proto.graph
    graph.node[-1].CopyFrom(helper.make_node("MatMul", ["w_t", "z"], ["y"], name="w/MatMul"))
    graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [N, 5]))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [K, 5]))
    model, result = lowered(proto)
    assert not result.modified
    assert ops(model) == Counter({"SpQRDequantize": 1, "MatMul": 1})


# ---------------------------------------------------------------------------------------------- end to end

LAYERS, LINEARS = 2, 14
SPQR = SpQRConfig(3, 16, stat_bits=3, stat_group_size=16, outlier_threshold=0.2, nsamples=8, seqlen=32)


@pytest.fixture(scope="module")
def spqr_llama(tiny_tokenizer):
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), layers=LAYERS)
    fp = copy.deepcopy(model)
    calib = torch.from_numpy(np.random.default_rng(0).integers(0, len(tiny_tokenizer), (8, 32)))
    packed = quantize_(model, SPQR, calib)
    assert sum(w.nnz for w in packed.values()) > 0  # outliers are really in the graph
    return model, fp, packed


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer):
    return np.asarray(tiny_tokenizer(TINY_TEXT[:600])["input_ids"], np.int64)[None, :96]


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    logp = logits[0, :-1].astype(np.float64)
    logp = logp - logp.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(logp)), ids[0, 1:]].mean()))


# Seen (logit range ~2.3, the quantization moves logits by ~0.4): float32 9e-7 from PyTorch, perplexity equal to
# 1e-8; float16 1.4e-3 (half activations against PyTorch's float32), perplexity 2e-5.
@pytest.mark.parametrize("dtype, atol, ppl_rtol", [("float32", 1e-5, 1e-6), ("float16", 5e-3, 1e-3)])
def test_spqr_llama_through_the_default_pipeline_matches_pytorch(spqr_llama, tokens, dtype, atol, ppl_rtol):
    model, fp, _ = spqr_llama
    proto = build_decoder_model(model, dtype)
    assert ops(proto)["SpQRDequantize"] == LINEARS
    result = default_pipeline(proto)
    report = result.report("spqr-matmul")
    assert report.modified
    removed = {"edgeq::SpQRDequantize": LINEARS, "MatMul": LINEARS} | ({"Cast": LINEARS} if dtype == "float16" else {})
    assert report.removed == removed
    assert report.added == {"edgeq::SpQRMatMul": LINEARS}
    assert report.bytes_after == report.bytes_before  # the same initializers
    after = ops(result.model)
    assert after["SpQRMatMul"] == LINEARS and "SpQRDequantize" not in after
    assert all(n.domain == "edgeq" for n in result.model.graph if n.op_type == "SpQRMatMul")

    feeds = decoder_feeds(model.config, tokens, np.float16 if dtype == "float16" else np.float32)
    lowered_logits = run(result.model, feeds)[0].astype(np.float32)
    unlowered_logits = run(proto, feeds)[0].astype(np.float32)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(tokens)).logits.numpy()
        fp_logits = fp(torch.from_numpy(tokens)).logits.numpy()
    for logits in (lowered_logits, unlowered_logits):
        np.testing.assert_allclose(logits, torch_logits, atol=atol, rtol=0)
        assert abs(perplexity(logits, tokens) / perplexity(torch_logits, tokens) - 1) <= ppl_rtol
    assert np.abs(torch_logits - fp_logits).max() > 10 * atol  # the quantization is really in the graph


def test_verify_places_the_lowered_ops_on_the_edgeq_library(spqr_llama, tmp_path):
    path = tmp_path / "spqr.onnx"
    onnx.save(default_pipeline(build_decoder_model(spqr_llama[0])).to_proto(), path)
    report = verify_model(path)
    assert report.ok, report.format()
    rows = {(r.domain, r.op_type): r for r in report.rows}
    assert rows[("edgeq", "SpQRMatMul")].count == LINEARS
    assert rows[("edgeq", "SpQRMatMul")].provider == "edgeq library (cpu)"
    assert "ONNX Runtime session created" in report.notes


def test_verify_refuses_an_op_the_edgeq_library_does_not_have(tmp_path):
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    graph = helper.make_graph([helper.make_node("SpQRMatMull", ["x"], ["y"], domain="edgeq", name="typo")], "g",
                              [f("x")], [f("y")])
    path = tmp_path / "typo.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), opset_import()]), path)
    report = verify_model(path, session=False)
    assert report.rows[0].provider == "NO KERNEL"
    assert any("typo: edgeq::SpQRMatMull is not an op of the edgeq library" in p for p in report.problems)


def test_bench_counts_every_stored_byte_of_the_lowered_linears(spqr_llama):
    from edgeq.bench import linear_storage

    model, _, packed = spqr_llama
    bits, params = linear_storage(default_pipeline(build_decoder_model(model)).to_proto())
    assert params == sum(w.shape[0] * w.shape[1] for w in packed.values())
    # SpQRWeight.storage_bits counts exactly the on-disk tensors: the graph has all but the 6-int32 format
    # header, and holds the permutation as Gather's int64 indices instead of 16-bit.
    header = 6 * 32
    perm = sum(48 * w.shape[1] for w in packed.values() if w.perm is not None)
    assert bits == sum(w.storage_bits() - header for w in packed.values()) + perm
