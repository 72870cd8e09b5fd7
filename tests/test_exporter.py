"""Exporter: the ONNX decoder equals the PyTorch model, with and without cache, quantized or not."""

import copy

import numpy as np
import onnx
import pytest
import torch

from edgeq.exporter.export import export
from edgeq.exporter.llama_graph import OPSET, build_decoder_model
from edgeq.quantize.api import quantize_
from edgeq.quantize.config import GPTQConfig, RTNConfig
from edgeq.runtime.decoder import OnnxDecoder
from tests.conftest import make_tiny_llama


def exported(model, tmp_path, **kw):
    return OnnxDecoder(export(model, None, tmp_path / "model.onnx", **kw))


def torch_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask)).logits.numpy()


def test_fp32_logits_match_pytorch(tiny_llama, tmp_path):
    dec = exported(tiny_llama, tmp_path)
    ids = np.random.default_rng(0).integers(0, 300, (2, 11))
    logits, present = dec.step(ids, dec.empty_cache(2))
    np.testing.assert_allclose(logits, torch_logits(tiny_llama, ids), atol=1e-4)
    assert present[0].shape == (2, 2, 11, 16)


def test_left_padded_batch_matches_pytorch(tiny_llama, tmp_path):
    dec = exported(tiny_llama, tmp_path)
    ids = np.random.default_rng(1).integers(1, 300, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :4] = 0
    logits, _ = dec.step(ids, dec.empty_cache(2), mask)
    ref = torch_logits(tiny_llama, ids, mask)
    # padded positions are garbage in both; compare the real ones
    np.testing.assert_allclose(logits[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(logits[1, 4:], ref[1, 4:], atol=1e-4)
    assert np.isfinite(logits).all()


def test_cache_steps_equal_one_full_pass(tiny_llama, tmp_path):
    dec = exported(tiny_llama, tmp_path)
    ids = np.random.default_rng(2).integers(0, 300, (1, 10))
    full, _ = dec.step(ids, dec.empty_cache(1))
    cache = dec.empty_cache(1)
    first, cache = dec.step(ids[:, :6], cache)
    steps = [first]
    for t in range(6, 10):
        out, cache = dec.step(ids[:, t : t + 1], cache)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("config", [RTNConfig(4, 32), RTNConfig(3, 16), RTNConfig(8, -1, sym=True),
                                    GPTQConfig(4, 16, nsamples=8, seqlen=32), GPTQConfig(2, 32, nsamples=8, seqlen=32)])
def test_quantized_export_matches_quantized_pytorch(config, tmp_path):
    model = make_tiny_llama()
    fp = copy.deepcopy(model)
    quantize_(model, config, torch.randint(0, 300, (8, 32)))
    proto = build_decoder_model(model)
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 14  # 2 layers x 7 projections
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.name.split("/")[0].endswith("_proj")]
    assert len(gathers) == (14 if getattr(config, "act_order", False) else 0)
    dec = exported(model, tmp_path)
    ids = np.random.default_rng(3).integers(0, 300, (1, 13))
    logits = dec.logits(ids[0])
    np.testing.assert_allclose(logits, torch_logits(model, ids)[0], atol=1e-4)
    assert np.abs(logits - torch_logits(fp, ids)[0]).max() > 1e-3  # the quantization is really in the graph


def test_graph_facts(tiny_llama):
    proto = build_decoder_model(tiny_llama)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] >= OPSET >= 21
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["past_key_values.0.key"] == ["batch", 2, "past_sequence", 16]
    assert [o.name for o in proto.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]


def test_fp16_export_close_to_fp32(tiny_llama, tmp_path):
    dec16 = exported(tiny_llama, tmp_path, dtype="float16")
    assert dec16.empty_cache(1)[0].dtype == np.float16
    ids = np.random.default_rng(4).integers(0, 300, (1, 8))
    ref = torch_logits(tiny_llama, ids)[0]
    out = dec16.logits(ids[0])
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-2


def test_external_data_round_trip(tiny_llama, tmp_path):
    path = export(tiny_llama, None, tmp_path / "ext" / "model.onnx", external=True)
    assert (tmp_path / "ext" / "model.onnx.data").stat().st_size > 100_000
    assert path.stat().st_size < 100_000
    ids = np.arange(7)
    np.testing.assert_allclose(OnnxDecoder(path).logits(ids), torch_logits(tiny_llama, ids[None])[0], atol=1e-4)


@pytest.mark.parametrize("act_sym", [True, False], ids=["symmetric", "asymmetric"])
def test_weight_activation_export_matches_pytorch(tmp_path, act_sym):
    from edgeq.quantize.config import OmniQuantConfig

    model = make_tiny_llama()
    quantize_(model, OmniQuantConfig(wbits=4, abits=6, epochs=1, nsamples=8, seqlen=32, act_sym=act_sym),
              torch.randint(0, 300, (8, 32)))
    proto = build_decoder_model(model)
    rounds = [n for n in proto.graph.node if n.op_type == "Round"]
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert len(clips) == 14 and len(rounds) == (14 if act_sym else 28)  # the asymmetric chain rounds its zero point
    props = [{p.key: p.value for p in n.metadata_props} for n in clips]
    assert all(p["edgeq.act_bits"] == "6" and p.get("edgeq.act_sym", "1") == ("1" if act_sym else "0") for p in props)
    dec = exported(model, tmp_path)
    ids = np.random.default_rng(7).integers(0, 300, (1, 16))
    # the same rounding in both; an activation exactly at a rounding boundary may still differ by one step
    np.testing.assert_allclose(dec.logits(ids[0]), torch_logits(model, ids)[0], atol=2e-3)
