"""The real SmolLM2-135M: export fidelity, the KV cache, and quantized lowering (needs the model package)."""

import copy

import numpy as np
import pytest

from edgeq.exporter.export import export
from edgeq.pipeline import CHECK_PROMPTS, cache_check, logits_check

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2():
    from edgeq.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def fp32_onnx(smollm2, tmp_path_factory):
    return export(smollm2.model, smollm2.tokenizer, tmp_path_factory.mktemp("fp32") / "model.onnx")


def test_architecture(smollm2):
    cfg = smollm2.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == ("llama", 30, 576, 3)


def test_fp32_onnx_logits_and_cache(smollm2, fp32_onnx):
    decoder, diffs = logits_check(smollm2, fp32_onnx)
    assert len(diffs) == len(CHECK_PROMPTS) and max(diffs) <= 1e-3, diffs
    assert cache_check(decoder, smollm2.tokenizer, n_tokens=32)


def test_rtn_w4_lowers_all_210_linears(smollm2, tmp_path):
    import onnx

    from edgeq.cli import lowering_passes
    from edgeq.quantize.api import quantize_
    from edgeq.quantize.config import RTNConfig
    from edgeq.runtime.decoder import OnnxDecoder

    model = copy.deepcopy(smollm2.model)
    quantize_(model, RTNConfig(4, 128))
    path = export(model, None, tmp_path / "model.onnx")
    before = OnnxDecoder(path).logits(np.arange(100, 140))
    path = export(model, None, tmp_path / "lowered" / "model.onnx", transform=lowering_passes)
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 210 and ops.count("DequantizeLinear") == 0
    after = OnnxDecoder(path).logits(np.arange(100, 140))
    np.testing.assert_allclose(after, before, atol=2e-3)
