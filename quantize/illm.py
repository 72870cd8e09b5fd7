"""I-LLM's Fully-Smooth Block Reconstruction (Hu et al. 2024, "I-LLM: Efficient Integer-Only Inference for
Fully-Quantized Low-Bit Large Language Models"), on OmniQuant's block trainer (``omniquant.train_block``).

What FSBR adds to OmniQuant's LET/LWC:

* smoothing of every pair the integer graph multiplies, each an exact equivalent transformation folded into the
  weights and norms (the exported graph has no extra ops): norm -> q/k/v (``s_qkv``), norm -> gate/up
  (``s_fc``), the attention's P.V through v -> o (``s_vo``), Q.K^T through q -> k per rotary pair (``s_qk``),
  and the SwiGLU product through up -> down (``s_ud``: SiLU(g) * u is linear in u, so a channel scale of u
  moves into down_proj's columns; the gate stays, as the sigmoid is not scale-equivariant);
* a learned clipped-softmax range c per layer (softmax of the scores clipped to [max - c, max]), written as
  ``self_attn.softmax_clip`` beside the packed weights, exported as the model property ``edgeq.softmax_clip``
  and read by the ``integer-only`` pass into ``DIClippedSoftmax``'s ``clip_q8``;
* a training forward that simulates the integer-only graph (``passes/integer_only.py``) instead of the float
  one: the block input, each residual add (DIAdd) and the o/down projections feeding it as 16-bit per-token
  codes, the norms' outputs at the linears' abits (DINorm), q/k/gate/up outputs at 16 bits and v at 8
  (DIMatMul), q and k again at 8 bits per (token, head) after the rotary (DIRotary), v per token as the cache
  holds it, unrounded scores, probabilities as 16-bit codes of exp(x - max) over the unrounded sum
  (DIClippedSoftmax), the heads requantized at o_proj's abits (DIRequant), the SwiGLU output at down_proj's
  abits (DISwiGLU). Every rounding passes the gradient straight through.

* with ``act_clip``, a learned clip of each token's range for the four activations a linear reads
  (``ACT_CLIP_SITES``), written as ``self_attn.act_clip``, exported as the model property ``edgeq.act_clip``
  and read by the ``integer-only`` pass into those ops' ``clip_q15``;
* with ``act_sym=False``, those four activations quantized with a zero point per token (OmniQuant's asymmetric
  rule), which the pass lowers to DINorm / DIRequant / DISwiGLU ``act_sym=0`` and DIMatMul's ``x_zero``
  (W4A4 on SmolLM2: 314 against 928 symmetric, BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeq.quantize.formats.float_weight import FloatWeight
from edgeq.quantize.omniquant import TransformedBlock, fake_quant_tokens, round_ste, train_block

# the activations a linear reads, in the order of self_attn.act_clip: DINorm (input norm -> q/k/v), DIRequant (heads
# -> o_proj), DINorm (post norm -> gate/up), DISwiGLU (-> down_proj)
ACT_CLIP_SITES = ("input_norm", "heads", "post_norm", "glu")
INNER_BITS = 8  # passes.integer_only.INNER_BITS: v_proj, rotary, KV cache
PROBS_BITS = 16  # passes.integer_only.PROBS_BITS: the softmax's probabilities
PROJ_BITS = 16  # passes.integer_only.PROJ_BITS: the q/k and gate/up outputs (requantized by rotary / SwiGLU)
RESIDUAL_BITS = 16  # passes.integer_only.RESIDUAL_BITS: the residual stream and the o/down outputs added to it


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def clipped_softmax_codes(scores: torch.Tensor, clip: torch.Tensor | None, bits: int = PROBS_BITS) -> torch.Tensor:
    """DIClippedSoftmax in float: scores clipped to [max - c, max], probabilities as codes round(qmax * exp(x -
    max)) times 1 / (qmax * sum exp(x - max)); masked scores are -inf."""
    top = scores.amax(dim=-1, keepdim=True).detach()
    shifted = scores - top
    if clip is not None:
        shifted = torch.maximum(shifted, torch.where(torch.isinf(shifted), shifted, -clip))
    e = torch.exp(shifted)
    qmax = 2**bits - 1
    return round_ste(e * qmax) / (qmax * e.sum(dim=-1, keepdim=True))


class FSBRBlock(TransformedBlock):
    """``TransformedBlock`` with every smoothing pair, a learned softmax clip and the integer graph's forward."""

    simulates_activations = True

    def __init__(self, layer: nn.Module, config, input_absmax: dict[str, torch.Tensor], use_let: bool = True):
        super().__init__(layer, config, input_absmax, use_let=True, smooth_down=True)
        self.eps = layer.input_layernorm.variance_epsilon
        self.scaling = layer.self_attn.scaling
        self.learn_clip = config.softmax_clip > 0
        self.clip_softmax = nn.Parameter(torch.tensor(float(config.softmax_clip)),
                                         requires_grad=self.learn_clip and config.clip_lr > 0)
        self.learn_act_clip = config.act_clip
        self.clip_act = nn.Parameter(torch.ones(len(ACT_CLIP_SITES)),
                                     requires_grad=config.act_clip and config.clip_lr > 0)

    def forward(self, x: torch.Tensor, position_embeddings=None, attention_mask=None, **_) -> torch.Tensor:
        p, bits, sym = self.quantized(), self.config.abits, self.config.act_sym
        clips = self.clip_act if self.learn_act_clip else [None] * len(ACT_CLIP_SITES)
        q8 = lambda t: fake_quant_tokens(t, INNER_BITS)  # noqa: E731
        p16 = lambda t: fake_quant_tokens(t, PROJ_BITS)  # noqa: E731
        r16 = lambda t: fake_quant_tokens(t, RESIDUAL_BITS)  # noqa: E731
        lin = lambda t, name: nn.functional.linear(t, p[f"{name}.weight"])  # noqa: E731
        b, s, _ = x.shape
        h = r16(x)
        a = fake_quant_tokens(self.rms_norm(h, p["input_layernorm.weight"]), bits, clips[0], sym)
        heads = lambda t, n: t.reshape(b, s, n, self.head_dim).transpose(1, 2)  # noqa: E731
        q = heads(p16(lin(a, "self_attn.q_proj")), self.num_heads)
        k = heads(p16(lin(a, "self_attn.k_proj")), self.num_kv)
        v = heads(q8(lin(a, "self_attn.v_proj")), self.num_kv)  # per token over every kv head, as cached
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q = q8(q * cos + rotate_half(q) * sin)
        k = q8(k * cos + rotate_half(k) * sin)
        rep = self.num_heads // self.num_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) * self.scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        else:
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        probs = clipped_softmax_codes(scores, self.clip_softmax if self.learn_clip else None)
        ctx = fake_quant_tokens((probs @ v).transpose(1, 2).reshape(b, s, -1), bits, clips[1], sym)
        h = r16(h + r16(lin(ctx, "self_attn.o_proj")))
        a = fake_quant_tokens(self.rms_norm(h, p["post_attention_layernorm.weight"]), bits, clips[2], sym)
        glu = nn.functional.silu(p16(lin(a, "mlp.gate_proj"))) * p16(lin(a, "mlp.up_proj"))
        return r16(h + r16(lin(fake_quant_tokens(glu, bits, clips[3], sym), "mlp.down_proj")))

    def rms_norm(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * gamma

    @torch.no_grad()
    def fold(self) -> dict:
        out = super().fold()
        if self.learn_clip:
            out["self_attn.softmax_clip"] = FloatWeight(self.clip_softmax.detach().reshape(1).clone())
        if self.learn_act_clip:
            out["self_attn.act_clip"] = FloatWeight(self.clip_act.detach().clamp(2.0**-15, 1.0).clone())
        return out


def fsbr_block(layer: nn.Module, runner, config) -> dict:
    """One decoder block through FSBR; the folded, packed weights, norms and softmax clip."""
    return train_block(layer, runner, config, make_block=FSBRBlock)
