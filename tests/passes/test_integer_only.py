"""The integer-only decoder (passes/integer_only.py, issue 6) on the tiny Llama quantized W8A8 (RTN, per-channel
symmetric weights, 8-bit per-token activations): exact op counts, ``verify --integer-only``, ORT with the edgeq
CPU library, logits that track the float W8A8 graph, and a KV-cache decode equal to a full prefill bit for bit."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import make_tiny_llama

LAYERS = 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgeq.cli import integer_only_passes, lowering_passes
    from edgeq.exporter.export import export
    from edgeq.passes.pipeline import DEFAULT_PASSES, FUSION_PASSES, run_pipeline
    from edgeq.quantize.api import quantize_
    from edgeq.quantize.config import RTNConfig

    torch.manual_seed(0)
    model = make_tiny_llama(layers=LAYERS)
    quantize_(model, RTNConfig(bits=8, group_size=-1, sym=True, abits=8), None)
    folder = tmp_path_factory.mktemp("integer_only")
    fused = lambda proto: run_pipeline(proto, [*DEFAULT_PASSES, *FUSION_PASSES]).to_proto()  # noqa: E731
    return {"model": model,
            "float": export(model, None, folder / "float" / "model.onnx", transform=fused),
            "lowered": export(model, None, folder / "lowered" / "model.onnx", transform=lowering_passes),
            "integer": export(model, None, folder / "integer" / "model.onnx", transform=integer_only_passes)}


def test_op_counts(exported):
    counts = Counter((n.domain, n.op_type) for n in onnx.load(exported["integer"]).graph.node)
    di = {op: n for (domain, op), n in counts.items() if domain == "edgeq"}
    assert di == {"DIMatMul": 5 * LAYERS + 1, "DINorm": 2 * LAYERS + 1, "DIRotary": 3 * LAYERS, "DIAdd": 2 * LAYERS,
                  "DISwiGLU": LAYERS, "DIClippedSoftmax": LAYERS, "DIRequant": LAYERS,
                  "DIBatchMatMul": 2 * LAYERS}  # Q.K^T and P.V per layer; lm_head is a DIMatMul
    floats = {op: n for (domain, op), n in counts.items() if op in ("Cast", "Mul", "Pow", "Neg")}
    assert floats == {"Cast": 4, "Mul": 2, "Pow": 1, "Neg": 1}  # the mask's bool Cast + the logits' dequant
    for op in ("MatMul", "Softmax", "RMSNormalization", "QuantLinear", "Add", "Sigmoid", "Cos", "Sin"):
        assert all(o != op for _, o in counts), op
    # no data movement per layer: DIRotary reads q, k and v straight from their projections and leaves them in
    # [B, H, S, D] (v with rotate=0), k and v appended to the past cache (the present outputs come from it), Q.K^T /
    # P.V read grouped kv heads without a repeat, and DIRequant (heads_first) merges the context's heads from that
    # layout, with no Transpose back
    requants = [n for n in onnx.load(exported["integer"]).graph.node if n.op_type == "DIRequant"]
    assert all({a.name: a.i for a in n.attribute}.get("heads_first") == 1 for n in requants)
    moves = {op: counts[("", op)] for op in ("Reshape", "Expand", "Transpose", "Concat", "Unsqueeze")}
    assert moves == {"Reshape": 0, "Expand": 0, "Transpose": 0, "Concat": 0, "Unsqueeze": 1}  # the mask
    proto = onnx.load(exported["integer"])
    writers = {o: n for n in proto.graph.node for o in n.output}
    for out in proto.graph.output:
        if out.name.startswith("present."):
            node = writers[out.name]
            assert node.op_type == "DIRotary" and node.input[6].startswith("past_key_values."), out.name
    # the tied lm_head reads the embedding's int8 table itself, not a copy
    proto = onnx.load(exported["integer"])
    gather = next(n for n in proto.graph.node if n.op_type == "Gather" and n.input[0].endswith("embed_tokens"))
    head = next(n for n in proto.graph.node if n.op_type == "DIMatMul" and n.name.startswith("lm_head"))
    assert head.input[3] == gather.input[0]
    assert [a.i for a in head.attribute if a.name == "obits"] == [16]
    # the final norm's 12-bit codes (int16) are lm_head's input
    attrs = {a.name: a.i for a in head.attribute}
    final = next(n for n in proto.graph.node if n.output[0] == head.input[0])
    assert final.op_type == "DINorm" and attrs["abits"] == 12
    assert [a.i for a in final.attribute if a.name == "obits"] == [12]
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    assert types[head.input[0]] == onnx.TensorProto.INT16
    # q/k and gate/up leave 16-bit codes for DIRotary / DISwiGLU to requantize once; v is cached as it comes
    obits = {n.name.split("/")[0].rsplit(".", 1)[-1]: next(a.i for a in n.attribute if a.name == "obits")
             for n in proto.graph.node if n.op_type == "DIMatMul" and n.name.startswith("model.layers.0.")}
    assert obits == {"qk_proj": 16, "v_proj": 8, "o_proj": 16, "gate_up_proj": 16, "down_proj": 16}
    # q with k and gate with up: one DIMatMul each, split at q's and gate's channels, Y2 feeding k's DIRotary / up
    model = exported["model"].model
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    splits = {n.name.split("/")[0].rsplit(".", 1)[-1]: {a.name: a.i for a in n.attribute}
              for n in proto.graph.node if n.op_type == "DIMatMul" and n.name.startswith("model.layers.0.")}
    assert (splits["qk_proj"]["split"], splits["qk_proj"]["N"]) == (attn.q_proj.out_features,
                                                                   attn.q_proj.out_features + attn.k_proj.out_features)
    assert (splits["gate_up_proj"]["split"], splits["gate_up_proj"]["N"]) == (mlp.gate_proj.out_features,
                                                                             2 * mlp.up_proj.out_features)
    assert all("split" not in splits[name] for name in ("v_proj", "o_proj", "down_proj"))
    readers = {i: n for n in proto.graph.node for i in n.input}
    qk = next(n for n in proto.graph.node if n.name.startswith("model.layers.0.self_attn.qk_proj"))
    assert [readers[o].op_type for o in qk.output[::3]] == ["DIRotary", "DIRotary"]


def test_paired_projections_change_no_bit(exported, tmp_path, monkeypatch):
    """The graph with q/k and gate/up as two DIMatMuls each gives the paired graph's logits and cache bit for bit."""
    from edgeq.cli import integer_only_passes
    from edgeq.exporter.export import export
    from edgeq.passes import integer_only
    from edgeq.runtime.decoder import OnnxDecoder

    def two_ops(self, x, first, second, name, obits, factor=1.0):
        return self.matmul(x, first, f"{name}.first", obits, factor), self.matmul(x, second, f"{name}.second", obits)

    monkeypatch.setattr(integer_only._Builder, "matmul_pair", two_ops)
    unpaired = export(exported["model"], None, tmp_path / "model.onnx", transform=integer_only_passes)
    counts = Counter(n.op_type for n in onnx.load(unpaired).graph.node)
    assert counts["DIMatMul"] == 7 * LAYERS + 1
    ids = np.random.default_rng(3).integers(0, 300, (2, 12))
    outs = []
    for path in (exported["integer"], unpaired):
        dec = OnnxDecoder(path)
        logits, cache = dec.step(ids[:, :9], dec.empty_cache(2))
        step, cache = dec.step(ids[:, 9:10], cache)
        outs.append([logits, step, *cache])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_head_input_bits_narrow_for_wide_models():
    from edgeq.passes.integer_only import head_input_bits

    assert head_input_bits(576, True) == 12 and head_input_bits(2047, True) == 12
    assert head_input_bits(4096, True) == 10 and head_input_bits(4096, False) == 12  # LLaMA-7B's hidden size
    assert head_input_bits(8192, False) == 11 and head_input_bits(1 << 16, True) == 8


def test_verify_integer_only_accepts_the_integer_graph_and_refuses_the_float_one(exported, capsys):
    from edgeq.passes.cli import main
    from edgeq.passes.verify import verify_model

    report = verify_model(exported["integer"], integer_only=True)
    assert report.ok, report.format()
    assert main(["verify", "--integer-only", str(exported["integer"])]) == 0
    for graph in ("float", "lowered"):
        report = verify_model(exported[graph], integer_only=True, session=False)
        assert not report.ok
        assert report.problems[0] == "not integer-only: no edgeq integer op (DI*) in the graph"
        offenders = " ".join(report.problems)
        for op in ("(MatMul)", "(Softmax)", "(QuantLinear)", "(Gather)", "graph output present.0.key"):
            assert op in offenders, (graph, op)
        assert main(["verify", "--integer-only", "--no-session", str(exported[graph])]) == 2
    assert verify_model(exported["lowered"], session=False).ok  # without the flag, float graphs are fine


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_logits_track_the_float_w8a8_graph(exported):
    from edgeq.runtime.decoder import OnnxDecoder

    ids = np.random.default_rng(0).integers(0, 300, (2, 32))
    y_float = OnnxDecoder(exported["lowered"]).step(ids, OnnxDecoder(exported["lowered"]).empty_cache(2))[0]
    dec = OnnxDecoder(exported["integer"])
    y_int = dec.step(ids, dec.empty_cache(2))[0]
    # Seen: cosine >= 0.9994, argmax agreement 0.96 (this random model's top logits are near ties), max error
    # 2.3% of the logit range; the integer graph also quantizes the embedding, the residual stream, q/k/v, the
    # KV cache and lm_head to 8 bits, which the float W8A8 graph keeps in float.
    assert cosine(y_int, y_float).min() > 0.999
    assert (y_int.argmax(-1) == y_float.argmax(-1)).mean() >= 0.9
    assert np.abs(y_int - y_float).max() <= 0.05 * np.abs(y_float).max()


def test_cache_decode_equals_full_prefill_exactly(exported):
    from edgeq.runtime.decoder import OnnxDecoder

    dec = OnnxDecoder(exported["integer"])
    ids = np.random.default_rng(1).integers(0, 300, (1, 20))
    full, _ = dec.step(ids, dec.empty_cache(1))
    assert [c.dtype for c in dec.empty_cache(1)[:3]] == [np.int8, np.int32, np.int8]
    logits, cache = dec.step(ids[:, :12], dec.empty_cache(1))
    np.testing.assert_array_equal(logits, full[:, :12])
    for t in range(12, 20):  # one token at a time through the integer KV cache
        logits, cache = dec.step(ids[:, t:t + 1], cache)
        np.testing.assert_array_equal(logits[:, 0], full[:, t])
    assert cache[0].dtype == np.int8 and cache[0].shape == (1, 2, 20, 16)
    assert cache[1].dtype == np.int32 and cache[1].shape == (1, 2, 20, 1)


def test_the_pass_refuses_an_unfused_graph():
    from edgeq.errors import EdgeqError
    from edgeq.exporter.llama_graph import build_decoder_model
    from edgeq.passes.pipeline import DEFAULT_PASSES, run_pipeline
    from edgeq.quantize.api import quantize_
    from edgeq.quantize.config import RTNConfig

    model = make_tiny_llama(layers=1)
    quantize_(model, RTNConfig(bits=8, group_size=-1, sym=True, abits=8), None)
    with pytest.raises(EdgeqError, match="integer-only: expected one RMSNormalization"):
        run_pipeline(build_decoder_model(model), [*DEFAULT_PASSES, "integer-only"])


def export_one_layer(tmp_path, config, rotate_down: int = 0):
    """A one-layer tiny Llama quantized with ``config``, exported as the lowered float graph and the integer one."""
    from functools import partial

    from edgeq.cli import integer_only_passes, lowering_passes
    from edgeq.exporter.export import export
    from edgeq.quantize.api import quantize_

    torch.manual_seed(0)
    model = make_tiny_llama(layers=1)
    quantize_(model, config, None)
    return (export(model, None, tmp_path / "lowered" / "model.onnx", transform=lowering_passes),
            export(model, None, tmp_path / "integer" / "model.onnx",
                   transform=partial(integer_only_passes, rotate_down=rotate_down)))


def assert_decode_equals_prefill(dec, ids, prompt: int, total: int):
    """Tokens prompt..total-1 one at a time through the integer KV cache give the prefill's logits bit for bit."""
    full, _ = dec.step(ids[:1, :total], dec.empty_cache(1))
    logits, cache = dec.step(ids[:1, :prompt], dec.empty_cache(1))
    for t in range(prompt, total):
        logits, cache = dec.step(ids[:1, t:t + 1], cache)
        np.testing.assert_array_equal(logits[:, 0], full[:, t])


def assert_integer_tracks_float(lowered, integer):
    """The integer graph is integer-only and its logits track the float graph's; returns its decoder and ids."""
    from edgeq.passes.verify import verify_model
    from edgeq.runtime.decoder import OnnxDecoder

    assert verify_model(integer, integer_only=True).ok
    ids = np.random.default_rng(0).integers(0, 300, (2, 32))
    y_float = OnnxDecoder(lowered).step(ids, OnnxDecoder(lowered).empty_cache(2))[0]
    dec = OnnxDecoder(integer)
    y_int = dec.step(ids, dec.empty_cache(2))[0]
    assert cosine(y_int, y_float).min() > 0.999
    assert np.abs(y_int - y_float).max() <= 0.05 * np.abs(y_float).max()
    return dec, ids


def test_asymmetric_weights_become_dimatmul_zero_points(tmp_path):
    """QuantLinear's zero offsets (w_zero, an asymmetric per-channel grid) go to DIMatMul's w_zero: every linear
    keeps them, the graph stays integer-only, and its logits track the float W8A8 graph of the same weights."""
    from edgeq.quantize.config import RTNConfig

    lowered, integer = export_one_layer(tmp_path, RTNConfig(bits=8, group_size=-1, sym=False, abits=8))
    proto = onnx.load(integer)
    inits = {t.name: t for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "DIMatMul" and not n.name.startswith("lm_head")]
    assert len(matmuls) == 5  # q/k and gate/up paired
    for n in matmuls:
        assert len(n.input) == 7 and n.input[6] in inits, n.name
        zero = onnx.numpy_helper.to_array(inits[n.input[6]])
        assert zero.dtype == np.int8 and zero.ndim == 1
        assert len(np.unique(zero)) > 1  # real per-channel zero points, not the symmetric grid's
    assert_integer_tracks_float(lowered, integer)


def test_asymmetric_activations_carry_zero_points_into_dimatmul(tmp_path):
    """QuantLinear's act_sym=0 (a zero point per token) becomes DINorm / DIRequant / DISwiGLU with act_sym=0 and
    their y_zero feeding DIMatMul's x_zero (with w_sum); the graph stays integer-only, a KV-cache decode equals the
    prefill bit for bit, and its logits track the float graph of the same weights."""
    from edgeq.quantize.config import RTNConfig

    lowered, integer = export_one_layer(tmp_path, RTNConfig(bits=8, group_size=-1, sym=False, abits=8, act_sym=False))
    proto = onnx.load(integer)
    inits = {t.name for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    asym = [n for n in proto.graph.node if n.op_type in ("DINorm", "DIRequant", "DISwiGLU")
            and any(a.name == "act_sym" and a.i == 0 for a in n.attribute)]
    # the final norm too: lm_head reads its codes with their zero points
    assert sorted(n.op_type for n in asym) == ["DINorm", "DINorm", "DINorm", "DIRequant", "DISwiGLU"]
    matmuls = [n for n in proto.graph.node if n.op_type == "DIMatMul"]
    assert len(matmuls) == 6 and matmuls[-1].name.startswith("lm_head")
    for n in matmuls:
        assert len(n.input) == 9 and n.input[8] in inits, n.name
        assert producers[n.input[7]] in asym and list(producers[n.input[7]].output).index(n.input[7]) == 3
    assert_decode_equals_prefill(*assert_integer_tracks_float(lowered, integer), 8, 12)


@pytest.mark.parametrize("sym", [True, False])
def test_rotated_down_input(tmp_path, sym):
    """rotate_down: DISwiGLU rotates its row in Hadamard blocks and down_proj reads it with its weights rotated and
    requantized per channel; the graph stays integer-only, its logits track the float graph of the same weights and a
    KV-cache decode equals the prefill bit for bit."""
    from edgeq.quantize.config import RTNConfig

    config = RTNConfig(bits=8, group_size=-1, sym=sym, abits=8, act_sym=sym)
    lowered, integer = export_one_layer(tmp_path, config, rotate_down=32)
    proto = onnx.load(integer)
    glu = [n for n in proto.graph.node if n.op_type == "DISwiGLU"]
    assert [a.i for n in glu for a in n.attribute if a.name == "hadamard"] == [32]
    assert {p.key: p.value for p in proto.metadata_props}["edgeq.rotate_down"] == "32"
    assert_decode_equals_prefill(*assert_integer_tracks_float(lowered, integer), 6, 10)


@pytest.mark.parametrize("zero_points", [False, True])
def test_rotated_input_weights_undo_the_rotation(zero_points):
    """The requantized rotated weights, times the unnormalized rotation DISwiGLU applies, give back the weights within
    their grid's rounding; a block that does not divide K is refused."""
    from edgeq.errors import EdgeqError
    from edgeq.passes.integer_only import Linear, hadamard_matrix, rotated_input

    rng = np.random.default_rng(4)
    W = rng.integers(-100, 101, (12, 96)).astype(np.int8)
    lin = Linear(W, rng.uniform(0.01, 0.02, 12), wbits=8, abits=8,
                 w_zero=rng.integers(-5, 6, 12).astype(np.int8) if zero_points else None)
    rot = rotated_input(lin, 32)
    real = lambda x: (x.W.astype(float) - (0 if x.w_zero is None else x.w_zero[:, None])) * x.scales[:, None]  # noqa: E731
    back = real(rot) @ (hadamard_matrix(96, 32) * np.sqrt(32)).T  # x H_unnorm (W_r / sqrt(B))^T = x W^T
    step = float((rot.scales * np.sqrt(32)).max())
    assert np.abs(back - real(lin)).max() <= step * np.sqrt(32) / 2 + 1e-12
    with pytest.raises(EdgeqError, match="rotate_down=64 does not divide down_proj's 96 inputs"):
        rotated_input(lin, 64)
