"""Runtime: generation with and without cache, sampling rules, perplexity against an independent reference."""

import numpy as np
import pytest
import torch

from edgeq.errors import EdgeqError
from edgeq.exporter.export import export
from edgeq.perplexity import perplexity, torch_logits_fn, window_spans
from edgeq.runtime.decoder import OnnxDecoder
from edgeq.runtime.generate import SamplingConfig, choose, generate
from edgeq.runtime.session import check_model_file


@pytest.fixture
def decoder(tiny_llama, tmp_path):
    return OnnxDecoder(export(tiny_llama, None, tmp_path / "model.onnx"))


def test_generation_with_cache_equals_without(decoder):
    cfg = SamplingConfig(max_new_tokens=24, stop_at_eos=False)
    with_cache = generate(decoder, [5, 17, 33, 2], cfg, use_cache=True)
    assert with_cache.tokens == generate(decoder, [5, 17, 33, 2], cfg, use_cache=False).tokens
    assert len(with_cache.tokens) == 24 and with_cache.decode_tokens_per_second > 0


def test_device_bound_cache_gives_the_same_tokens(decoder):
    # the IO-binding path a CUDA session uses, run with the cache bound on the CPU
    cfg = SamplingConfig(max_new_tokens=16, stop_at_eos=False)
    plain = generate(decoder, [5, 17, 33, 2], cfg)
    decoder.cache_device = "cpu"
    bound = generate(decoder, [5, 17, 33, 2], cfg)
    assert bound.tokens == plain.tokens
    logits, cache = decoder.step(np.array([[5, 17]]), decoder.empty_cache(1))
    assert not isinstance(cache[0], np.ndarray) and cache[0].shape()[2] == 2


def test_greedy_generation_matches_pytorch(decoder, tiny_llama):
    ref = tiny_llama.generate(torch.tensor([[5, 17, 33]]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    out = generate(decoder, [5, 17, 33], SamplingConfig(max_new_tokens=12, stop_at_eos=False))
    assert out.tokens == ref[0, 3:].tolist()


def test_sampling_respects_top_k_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.array([5.0, 4.0, 1.0, 0.0, -1.0])
    picks = {choose(logits, SamplingConfig(top_k=2), rng) for _ in range(200)}
    assert picks == {0, 1}
    # p(0) ~ 0.72: top_p 0.5 keeps only the first token
    assert {choose(logits, SamplingConfig(top_k=0, top_p=0.5), rng) for _ in range(50)} == {0}
    with pytest.raises(EdgeqError, match="top_p"):
        SamplingConfig(top_p=0)


def test_window_spans_score_each_token_at_most_once():
    for n, w, s in [(1000, 128, 128), (1000, 128, 64), (129, 128, 32), (50, 128, 128)]:
        scored = []
        spans = window_spans(n, w, s, None)
        for begin, end, first in spans:
            assert begin < first <= end and end - begin <= w
            scored.extend(range(first, end))
        assert scored == sorted(set(scored)) and scored[-1] == n - 1
        if s < w:  # overlapping windows give every token context
            assert scored == list(range(1, n))
        else:  # disjoint windows cannot score their first token (as in transformers' perplexity guide)
            assert len(scored) == n - len(spans)


def test_perplexity_matches_cross_entropy(tiny_llama):
    tokens = np.random.default_rng(5).integers(0, 300, 200)
    got = perplexity(torch_logits_fn(tiny_llama), tokens, window=200, stride=200)
    with torch.no_grad():
        logits = tiny_llama(torch.as_tensor(tokens)[None]).logits[0].double()
    ref = torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(tokens[1:])).exp().item()
    assert got.perplexity == pytest.approx(ref, rel=1e-6) and got.tokens_scored == 199


def test_onnx_and_pytorch_perplexity_agree(decoder, tiny_llama):
    tokens = np.random.default_rng(6).integers(0, 300, 300)
    a = perplexity(decoder.logits, tokens, window=64, stride=32)
    b = perplexity(torch_logits_fn(tiny_llama), tokens, window=64, stride=32)
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-5)


def test_model_file_checks(tmp_path, tiny_llama):
    with pytest.raises(EdgeqError, match="not found"):
        check_model_file(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf at all \xff\xfe")
    with pytest.raises(EdgeqError, match="junk.onnx"):
        check_model_file(junk)
    path = export(tiny_llama, None, tmp_path / "ext" / "model.onnx", external=True)
    truncated = tmp_path / "ext" / "half.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EdgeqError, match="half.onnx"):
        check_model_file(truncated)
    (tmp_path / "ext" / "model.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(EdgeqError, match="missing"):
        check_model_file(path)
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../elsewhere.data"
    onnx.save(proto, str(path))
    with pytest.raises(EdgeqError, match="escapes"):
        check_model_file(path)
