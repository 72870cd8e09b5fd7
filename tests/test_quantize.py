"""Quantizers: grid facts, GPTQ beating RTN on correlated inputs, act-order bookkeeping, checkpoints."""

import copy

import pytest
import torch

from edgeq.errors import EdgeqError
from edgeq.quantize.api import apply_quantized, load_quantized, quantize_, save_quantized
from edgeq.quantize.config import GPTQConfig, RTNConfig
from edgeq.quantize.gptq import GPTQ
from edgeq.quantize.rtn import rtn_quantize
from tests.conftest import make_tiny_llama


@pytest.mark.parametrize("bits,group,sym", [(2, 16, False), (3, 32, False), (4, 128, False), (4, 64, True), (8, -1, False), (5, 16, True)])
def test_rtn_error_is_at_most_half_a_step(bits, group, sym):
    torch.manual_seed(bits)
    w = torch.randn(24, 200)  # 200 is not a multiple of any group: the last group is short
    qw = rtn_quantize(w, RTNConfig(bits, group, sym))
    g = 200 if group == -1 else group
    assert qw.num_groups == -(-200 // g)
    assert int(qw.codes.max()) <= 2**bits - 1
    step = qw.scales.repeat_interleave(g, 1)[:, :200]
    assert torch.all((qw.dequantize() - w).abs() <= step / 2 + 1e-6)
    if sym:
        assert torch.all(qw.zeros == 2 ** (bits - 1))


@pytest.mark.parametrize("bad", [dict(bits=1), dict(bits=9), dict(group_size=48), dict(group_size=0)])
def test_bad_grid_is_refused(bad):
    with pytest.raises(EdgeqError, match="bits|group size"):
        RTNConfig(**bad)
    with pytest.raises(EdgeqError, match="bits|group size"):
        GPTQConfig(**bad)


def correlated_inputs(n=2048, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * torch.linspace(0.05, 2.0, k)  # uneven, correlated channels
    return torch.randn(n, k, generator=g) @ mix


@pytest.mark.parametrize("bits,group,act_order", [(4, 32, True), (3, -1, False), (2, 16, True)])
def test_gptq_output_error_below_rtn(bits, group, act_order):
    x = correlated_inputs()
    w = torch.randn(48, 96)
    solver = GPTQ(w)
    for chunk in x.split(512):
        solver.add_batch(chunk)
    qg = solver.quantize(bits, group, False, act_order, 0.01, 32)
    qr = rtn_quantize(w, RTNConfig(bits, group))
    err = lambda q: ((x @ q.dequantize().T - x @ w.T) ** 2).mean()  # noqa: E731
    assert err(qg) < 0.8 * err(qr)


def test_act_order_permutation_is_consistent():
    x = correlated_inputs(512, 64)
    w = torch.randn(16, 64)
    solver = GPTQ(w)
    solver.add_batch(x)
    qw = solver.quantize(4, 16, False, True, 0.01, 16)
    assert qw.perm is not None and sorted(qw.perm.tolist()) == list(range(64))
    # y computed the way the exported graph does it (gather activations, permuted weights) equals x @ W_deq.T
    y_graph = x[:, qw.perm] @ qw.dequantize_permuted().T
    torch.testing.assert_close(y_graph, x @ qw.dequantize().T, rtol=1e-5, atol=1e-4)


def test_gptq_checkpoints_resume_without_recomputing(tmp_path, monkeypatch):
    calib = torch.randint(0, 300, (8, 32))
    cfg = GPTQConfig(bits=3, group_size=16, nsamples=8, seqlen=32)
    first = quantize_(make_tiny_llama(), cfg, calib, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("layer_*.safetensors")) == ["layer_000.safetensors", "layer_001.safetensors"]

    def must_not_run(*a, **k):
        raise AssertionError("a checkpointed layer was quantized again")

    import edgeq.quantize.sequential as sequential

    monkeypatch.setattr(GPTQ, "quantize", must_not_run)
    # every layer checkpointed (a run finished elsewhere): not even the calibration forward runs
    monkeypatch.setattr(sequential, "capture_first_layer_inputs", must_not_run)
    first_model, again_model = make_tiny_llama(), make_tiny_llama()
    apply_quantized(first_model, first)
    again = quantize_(again_model, cfg, calib, checkpoint_dir=tmp_path)
    assert first.keys() == again.keys() and len(first) == 14
    for name in first:
        assert torch.equal(first[name].codes, again[name].codes)
    ids = torch.randint(0, 300, (1, 12))
    torch.testing.assert_close(again_model(ids).logits, first_model(ids).logits)
    with pytest.raises(EdgeqError, match="another config"):
        quantize_(make_tiny_llama(), GPTQConfig(bits=4, nsamples=8, seqlen=32), calib, checkpoint_dir=tmp_path)


def test_save_load_apply_round_trip(tmp_path):
    model = make_tiny_llama()
    qweights = quantize_(model, RTNConfig(4, 32))
    save_quantized(tmp_path, qweights, RTNConfig(4, 32), "tiny")
    config, source, loaded = load_quantized(tmp_path)
    assert config == RTNConfig(4, 32) and source == "tiny"
    fresh = make_tiny_llama()
    apply_quantized(fresh, loaded)
    ids = torch.randint(0, 300, (1, 12))
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits)


def test_damaged_checkpoint_is_refused(tmp_path):
    with pytest.raises(EdgeqError, match="not an edgeq quantized model"):
        load_quantized(tmp_path)
    (tmp_path / "edgeq_quant.json").write_text("{not json")
    with pytest.raises(EdgeqError, match="not valid JSON"):
        load_quantized(tmp_path)


def test_quantized_model_differs_from_fp_but_stays_close():
    model = make_tiny_llama()
    fp = copy.deepcopy(model)
    quantize_(model, GPTQConfig(bits=4, group_size=32, nsamples=8, seqlen=32), torch.randint(0, 300, (8, 32)))
    ids = torch.randint(0, 300, (1, 16))
    a, b = model(ids).logits, fp(ids).logits
    rel = ((a - b).norm() / b.norm()).item()
    assert 0 < rel < 0.2


def test_shared_inputs_are_collected_once():
    from edgeq.quantize.sequential import capture_first_layer_inputs, collect_inputs

    model = make_tiny_llama()
    runner = capture_first_layer_inputs(model, torch.randint(0, 300, (4, 16)), batch_size=2)
    seen = []
    owner = collect_inputs(model.model.layers[0], runner, lambda name, x: seen.append(name))
    assert owner["self_attn.k_proj"] == owner["self_attn.v_proj"] == "self_attn.q_proj"
    assert owner["mlp.up_proj"] == "mlp.gate_proj" and owner["mlp.down_proj"] == "mlp.down_proj"
    assert seen == ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"] * 2  # two batches


def test_weight_activation_rtn_baseline():
    with pytest.raises(EdgeqError, match="per-channel weights: group_size=-1"):
        RTNConfig(4, 128, abits=4)
    qw = rtn_quantize(torch.randn(8, 64), RTNConfig(4, -1, sym=True, abits=4))
    assert qw.act_bits == 4 and qw.group_size == 64 and torch.all(qw.zeros == 8)
    asym = rtn_quantize(torch.randn(8, 64), RTNConfig(4, -1, sym=False, abits=4))
    assert asym.act_bits == 4 and not torch.all(asym.zeros == 8)


def test_checkpoints_record_each_layers_time(tmp_path):
    from edgeq.quantize.config import config_to_dict
    from edgeq.quantize.sequential import LayerCheckpoints

    cfg = GPTQConfig(bits=4, group_size=16, nsamples=8, seqlen=32)
    quantize_(make_tiny_llama(), cfg, torch.randint(0, 300, (8, 32)), checkpoint_dir=tmp_path)
    seconds = LayerCheckpoints(tmp_path, config_to_dict(cfg)).seconds()
    assert seconds is not None and seconds > 0
    assert LayerCheckpoints(None, {}).seconds() is None
