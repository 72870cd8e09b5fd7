"""The pipeline on a tiny exported Llama: exact replacements, identical outputs, reports, failures naming the pass."""

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeq.errors import EdgeqError
from edgeq.exporter.llama_graph import build_decoder_model
from edgeq.passes import catalog
from edgeq.passes.pipeline import default_pipeline, run_pipeline
from edgeq.quantize.api import quantize_
from edgeq.quantize.config import GPTQConfig, RTNConfig
from tests.conftest import TINY_TEXT, decoder_feeds, make_tiny_llama
from tests.passes.helpers import ops, run

LAYERS = 2
LINEARS = 7 * LAYERS


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer):
    return np.asarray(tiny_tokenizer(TINY_TEXT[:600])["input_ids"], np.int64)[None, :96]


def export(config=None, vocab=300, calib=None):
    model = make_tiny_llama(vocab_size=vocab, layers=LAYERS)
    if config is not None:
        quantize_(model, config, calib_ids=calib)
    return model.config, build_decoder_model(model)


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    logits = logits[0, :-1].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(logp)), ids[0, 1:]].mean()))


def outputs(model, config, ids):
    return run(model, decoder_feeds(config, ids))


@pytest.fixture(scope="module")
def w4(tiny_tokenizer):
    return export(RTNConfig(4, 32), vocab=len(tiny_tokenizer))


def test_default_pipeline_replaces_exactly_the_quantized_linears(w4, tokens):
    config, proto = w4
    before = ops(proto)
    assert before["DequantizeLinear"] == LINEARS
    result = default_pipeline(proto)
    lowering = result.report("matmul-nbits")
    assert lowering.modified
    assert lowering.removed == {"DequantizeLinear": LINEARS, "MatMul": LINEARS}
    assert lowering.added == {"com.microsoft::MatMulNBits": LINEARS}
    assert not result.report("group-quant").modified
    after = ops(result.model)
    assert after["MatMulNBits"] == LINEARS and after["MatMul"] == before["MatMul"] - LINEARS
    assert "DequantizeLinear" not in after
    # Outputs keep their names and declared shapes.
    assert [v.name for v in result.model.graph.outputs] == [o.name for o in proto.graph.output]
    assert str(result.model.graph.outputs[0].shape) == "[batch,sequence,%d]" % config.vocab_size
    a, b = outputs(proto, config, tokens), outputs(result.model, config, tokens)
    assert abs(perplexity(b[0], tokens) / perplexity(a[0], tokens) - 1) <= 1e-3
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, atol=1e-4, rtol=0)


def test_reports_count_nodes_and_initializer_bytes(w4):
    _, proto = w4
    result = default_pipeline(proto)
    lowering = result.report("matmul-nbits")
    assert sum(lowering.nodes_before.values()) - sum(lowering.nodes_after.values()) == LINEARS
    # UINT4 codes + float32 scales + UINT4 zeros -> packed uint8 codes + float32 scales + packed zeros: same bytes
    # up to row padding of the zero points.
    assert lowering.bytes_after == pytest.approx(lowering.bytes_before, rel=0.05)
    text = result.format()
    assert "matmul-nbits: modified" in text and f"com.microsoft::MatMulNBits x{LINEARS}" in text


def test_fusions_leave_one_node_per_operator_and_the_same_outputs(w4, tokens):
    config, proto = w4
    result = default_pipeline(proto, fusions=True)
    after = ops(result.model)
    assert after["RMSNormalization"] == 2 * LAYERS + 1
    assert after["RotaryEmbedding"] == 2 * LAYERS
    assert after["SwiGLU"] == LAYERS
    assert after["Cos"] == after["Sin"] == 1
    for gone in ("Pow", "ReduceMean", "Sqrt", "Div", "Neg", "Slice", "Sigmoid"):
        assert gone not in after
    a, b = outputs(proto, config, tokens), outputs(result.model, config, tokens)
    assert abs(perplexity(b[0], tokens) / perplexity(a[0], tokens) - 1) <= 1e-3
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, atol=1e-4, rtol=0)


def test_two_bit_weights_become_group_quant_matmul(tiny_tokenizer, tokens):
    config, proto = export(RTNConfig(2, 32), vocab=len(tiny_tokenizer))
    result = default_pipeline(proto)
    assert result.report("group-quant").added == {"edgeq::GroupQuantMatMul": LINEARS}
    assert not result.report("matmul-nbits").modified
    a, b = outputs(proto, config, tokens), outputs(result.model, config, tokens)
    assert abs(perplexity(b[0], tokens) / perplexity(a[0], tokens) - 1) <= 1e-3
    np.testing.assert_allclose(b[0], a[0], atol=1e-4, rtol=0)


def test_act_order_gathers_survive(tiny_tokenizer, tokens):
    calib = np.random.default_rng(0).integers(0, len(tiny_tokenizer), (4, 32))
    cfg = GPTQConfig(4, 32, act_order=True, nsamples=4, seqlen=32)
    config, proto = export(cfg, vocab=len(tiny_tokenizer), calib=calib)
    gathers = ops(proto)["Gather"]
    assert gathers > LINEARS  # perms (one per linear) plus the embedding
    result = default_pipeline(proto)
    assert ops(result.model)["Gather"] == gathers and ops(result.model)["MatMulNBits"] == LINEARS
    np.testing.assert_allclose(outputs(result.model, config, tokens)[0], outputs(proto, config, tokens)[0],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("fusions", [False, True], ids=["decomposed", "fused"])
def test_fp16_pass_on_the_decoder(w4, tokens, fusions):
    config, proto = w4
    names = ["matmul-nbits", "fold", "dead"] + (list(catalog.FUSION_PASSES) if fusions else []) + ["fp16"]
    model = run_pipeline(proto, names).model
    if fusions:
        norms = [n for n in model.graph if n.op_type == "RMSNormalization"]
        assert len(norms) == 2 * LAYERS + 1
        assert all(n.outputs[0].dtype == ir.DataType.FLOAT16 for n in norms)
        assert all(n.attributes["stash_type"].value == ir.DataType.FLOAT for n in norms)
    assert model.graph.initializers["model.embed_tokens.weight"].dtype == ir.DataType.FLOAT16
    assert all(v.dtype == ir.DataType.FLOAT for v in model.graph.inputs if v.name.startswith("past"))
    a, b = outputs(proto, config, tokens), outputs(model, config, tokens)
    assert b[0].dtype == np.float32
    assert abs(perplexity(b[0], tokens) / perplexity(a[0], tokens) - 1) <= 1e-2
    np.testing.assert_allclose(b[0], a[0], atol=2e-2, rtol=0)


def test_unknown_pass_is_refused():
    with pytest.raises(EdgeqError, match="unknown pass"):
        run_pipeline(onnx.ModelProto(), ["no-such-pass"])


def test_a_pass_that_breaks_the_model_is_named(monkeypatch, w4):
    class DropFirstNode(ir.passes.InPlacePass):
        def call(self, model):
            model.graph.remove(next(iter(model.graph)), safe=False)
            return ir.passes.PassResult(model, True)

    monkeypatch.setitem(catalog.PASSES, "broken", catalog.PassSpec("broken", "test", lambda o: DropFirstNode()))
    with pytest.raises(EdgeqError, match="after pass 'broken'"):
        run_pipeline(w4[1], ["matmul-nbits", "broken"])


def test_a_pass_that_raises_is_named(monkeypatch, w4):
    def boom(o):
        raise RuntimeError("kaput")

    monkeypatch.setitem(catalog.PASSES, "boom", catalog.PassSpec("boom", "test", boom))
    with pytest.raises(EdgeqError, match="pass 'boom' failed: RuntimeError: kaput"):
        run_pipeline(w4[1], ["boom"])


def test_fusions_on_a_half_export(tiny_tokenizer, tokens):
    # The exporter's float16 graph casts up around each norm; the fused op takes half in and accumulates in
    # float32 itself (stash_type), so the Cast pairs go with the pattern.
    model = make_tiny_llama(vocab_size=len(tiny_tokenizer), layers=LAYERS)
    quantize_(model, RTNConfig(4, 32))
    proto = build_decoder_model(model, "float16")
    result = default_pipeline(proto, fusions=True)
    assert result.report("rms-norm").removed["Cast"] == 2 * (2 * LAYERS + 1)
    assert ops(result.model)["RMSNormalization"] == 2 * LAYERS + 1
    feeds = decoder_feeds(model.config, tokens, np.float16)
    a, b = run(proto, feeds), run(result.model, feeds)
    assert abs(perplexity(b[0], tokens) / perplexity(a[0], tokens) - 1) <= 1e-3
    np.testing.assert_allclose(b[0], a[0], atol=5e-3, rtol=0)  # half rounding of a few intermediate values
