"""OmniQuant: LET keeps the FP function, folding is exact, LWC packs what it trains, training lowers the loss."""

import copy

import pytest
import torch

from edgeq.quantize.api import load_quantized, quantize_, save_quantized
from edgeq.quantize.config import OmniQuantConfig, RTNConfig
from edgeq.quantize.modules import QuantizedLinear
from edgeq.quantize.omniquant import LearnedClipping, TransformedBlock, fake_quant_tokens
from edgeq.quantize.sequential import capture_first_layer_inputs
from tests.conftest import make_tiny_llama


def block_inputs(model, n=4, length=24):
    runner = capture_first_layer_inputs(model, torch.randint(0, 300, (n, length)), batch_size=n)
    return runner.inputs[0], runner.layer_kwargs[0]


def randomized_let(layer, smooth_down=False):
    cfg = OmniQuantConfig(wbits=4, abits=8, smooth_down=smooth_down)
    absmax = {n: torch.rand(layer.get_submodule(n).weight.shape[1]) + 0.5
              for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")}
    block = TransformedBlock(layer, cfg, absmax, use_let=True)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.startswith("s_"):
                p.copy_(torch.rand_like(p) * 2 + 0.25)  # far from identity
    return block


@pytest.mark.parametrize("smooth_down", [False, True])
def test_let_preserves_the_fp_block(smooth_down):
    model = make_tiny_llama()
    layer = model.model.layers[0]
    x, kwargs = block_inputs(model)
    ref = layer(x, **kwargs)
    block = randomized_let(layer, smooth_down)
    assert hasattr(block, "s_ud") == smooth_down
    out = torch.func.functional_call(layer, block.transformed(), (x,), kwargs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("smooth_down", [False, True])
def test_fold_writes_the_same_function_into_the_block(smooth_down):
    model = make_tiny_llama()
    layer = model.model.layers[0]
    x, kwargs = block_inputs(model)
    ref = layer(x, **kwargs).detach()
    original_norm = layer.input_layernorm.weight.detach().clone()
    original_down = layer.mlp.down_proj.weight.detach().clone()
    block = randomized_let(layer, smooth_down)
    packed = block.fold()
    assert not torch.allclose(layer.input_layernorm.weight, original_norm)  # the scales really moved
    assert torch.allclose(layer.mlp.down_proj.weight, original_down) != smooth_down
    torch.testing.assert_close(layer(x, **kwargs), ref, rtol=1e-4, atol=1e-5)
    assert set(packed) == {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                           "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


@pytest.mark.parametrize("bits,group,sym", [(4, 32, False), (3, 16, False), (4, -1, True), (2, 64, False)])
def test_lwc_pack_equals_its_fake_quant(bits, group, sym):
    w = torch.randn(12, 100)
    lwc = LearnedClipping(tuple(w.shape), bits, group, sym)
    with torch.no_grad():
        lwc.upper.uniform_(-1, 4)
        lwc.lower.uniform_(-1, 4)
    packed = lwc.pack(w)
    torch.testing.assert_close(packed.dequantize(), lwc(w), rtol=0, atol=1e-6)
    assert int(packed.codes.max()) < 2**bits


def test_lwc_gradients_reach_the_clipping_strengths():
    w = torch.randn(8, 64)
    lwc = LearnedClipping(tuple(w.shape), 3, 16)
    ((lwc(w) - w) ** 2).sum().backward()
    assert lwc.upper.grad.abs().sum() > 0 and lwc.lower.grad.abs().sum() > 0


def test_per_token_activation_quantization():
    x = torch.randn(3, 5, 40)
    q = fake_quant_tokens(x, 4)
    scale = x.abs().amax(-1, keepdim=True) / 7
    assert torch.allclose(q / scale, (q / scale).round(), atol=1e-4)
    assert ((q - x).abs() <= scale / 2 + 1e-6).all()


@pytest.mark.parametrize("wbits,abits,group", [(3, 16, 16), (4, 4, 128)])
def test_training_beats_no_training_and_round_trips(tmp_path, wbits, abits, group):
    base = make_tiny_llama()
    calib = torch.randint(0, 300, (16, 48), generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 300, (4, 48), generator=torch.Generator().manual_seed(2))
    # the objective OmniQuant minimises: the block's output error on its calibration inputs (layer 0: FP inputs)
    runner = capture_first_layer_inputs(base, calib, batch_size=4)
    fp_out = runner.run(base.model.layers[0])
    err = lambda m: sum(((a - b) ** 2).mean().item() for a, b in zip(runner.run(m.model.layers[0]), fp_out))  # noqa: E731
    untrained, trained = copy.deepcopy(base), copy.deepcopy(base)
    quantize_(untrained, OmniQuantConfig(wbits=wbits, abits=abits, group_size=group, epochs=0, nsamples=16, seqlen=48), calib)
    cfg = OmniQuantConfig(wbits=wbits, abits=abits, group_size=group, epochs=8, nsamples=16, seqlen=48)
    qweights = quantize_(trained, cfg, calib, checkpoint_dir=tmp_path / "ck")
    assert err(trained) < err(untrained)
    if abits < 16:
        q = trained.model.layers[0].self_attn.q_proj
        assert isinstance(q, QuantizedLinear) and q.qweight.act_bits == abits and q.qweight.group_size == 64
    save_quantized(tmp_path / "q", qweights, cfg, "tiny")
    _, _, loaded = load_quantized(tmp_path / "q")
    from edgeq.quantize.api import apply_quantized

    fresh = make_tiny_llama()
    apply_quantized(fresh, loaded)
    torch.testing.assert_close(fresh(ids).logits, trained(ids).logits)


def test_weight_only_default_is_lwc_only():
    assert not OmniQuantConfig(wbits=3).use_let and OmniQuantConfig(wbits=4, abits=4).use_let
    with pytest.raises(Exception, match="activation bits"):
        OmniQuantConfig(abits=1)
    assert RTNConfig  # the baseline config stays importable next to it


def test_smooth_down_needs_let():
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match="smooth_down is a LET scale"):
        OmniQuantConfig(wbits=4, abits=16, smooth_down=True)
    assert OmniQuantConfig(wbits=4, abits=16, let=True, smooth_down=True).smooth_down
