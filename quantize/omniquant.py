"""OmniQuant (Shao et al., "OmniQuant: Omnidirectionally Calibrated Quantization for Large Language Models").

Per decoder block, with the FP weights frozen, two sets of parameters are learned by AdamW to minimise the MSE
between the quantized block's output and the FP block's output on calibration sequences:

* Learnable Weight Clipping (LWC): per quantization group, clipping strengths γ, β through a sigmoid, so the
  grid spans [σ(β)·min W, σ(γ)·max W] instead of the raw min-max (initialised at σ(4) ≈ 0.98).
* Learnable Equivalent Transformation (LET): per-channel scales that move difficulty between activations and
  weights without changing the FP function: before q/k/v (folded into the input RMSNorm), before gate/up
  (folded into the post-attention RMSNorm), between v and o (folded into both), and between q and k
  (per rotary pair, so the rotation commutes). Initialised SmoothQuant-style, s = max|X|^α / max|W|^(1-α).
  Llama's RMSNorm has no bias, so the paper's channel shift would add bias nodes; edgeq keeps scales only and
  the exported graph has no extra ops.

Weight-activation configs (abits < 16) also fake-quantize every linear's input per token (dynamic; with a zero
point per token unless ``act_sym``, as the paper's code does) during training, as the ``edgeq::QuantLinear``
kernel does at inference. After training the LET scales are folded into the weights and norms and the weights
are quantized with the learned clipping into the ordinary group format, so export and kernels are those of the
other methods.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from edgeq.errors import EdgeqError
from edgeq.quantize.formats.float_weight import FloatWeight
from edgeq.quantize.formats.group_quant import GroupQuantWeight

log = logging.getLogger(__name__)

LWC_INIT = 4.0
SCALE_FLOOR = 1e-5


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """[N, K] -> [N * G, group], zero-padding K up to a whole number of groups."""
    n, k = w.shape
    pad = (-k) % group
    if pad:
        w = torch.cat([w, w.new_zeros(n, pad)], dim=1)
    return w.reshape(-1, group)


class LearnedClipping(nn.Module):
    """LWC for one weight [N, K]: a (γ, β) pair per group; the grid keeps 0 representable (integer zero point)."""

    def __init__(self, shape: tuple[int, int], bits: int, group_size: int, sym: bool = False):
        super().__init__()
        n, k = shape
        self.bits, self.sym, self.k = bits, sym, k
        self.group = k if group_size == -1 else group_size
        groups = n * math.ceil(k / self.group)
        self.upper = nn.Parameter(torch.full((groups, 1), LWC_INIT))
        self.lower = nn.Parameter(torch.full((groups, 1), LWC_INIT))

    def grid(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(grouped weights, scale, integer zero point) of the clipped grid, differentiable in γ, β."""
        g = grouped(w, self.group)
        maxq = 2**self.bits - 1
        hi = torch.sigmoid(self.upper) * g.amax(dim=1, keepdim=True).clamp(min=0)
        lo = torch.sigmoid(self.lower) * g.amin(dim=1, keepdim=True).clamp(max=0)
        if self.sym:
            hi = torch.maximum(hi, -lo)
            scale = (2 * hi / maxq).clamp(min=SCALE_FLOOR)
            zero = torch.full_like(scale, (maxq + 1) // 2)
        else:
            scale = ((hi - lo) / maxq).clamp(min=SCALE_FLOOR)
            zero = torch.clamp(round_ste(-lo / scale), 0, maxq)
        return g, scale, zero

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weights (STE through the rounding)."""
        n, k = w.shape
        g, scale, zero = self.grid(w)
        q = torch.clamp(round_ste(g / scale) + zero, 0, 2**self.bits - 1)
        return ((q - zero) * scale).reshape(n, -1)[:, :k]

    @torch.no_grad()
    def pack(self, w: torch.Tensor) -> GroupQuantWeight:
        n, k = w.shape
        g, scale, zero = self.grid(w)
        codes = torch.clamp(torch.round(g / scale) + zero, 0, 2**self.bits - 1)
        return GroupQuantWeight(
            codes=codes.reshape(n, -1)[:, :k].to(torch.uint8),
            scales=scale.reshape(n, -1).float(),
            zeros=zero.reshape(n, -1).to(torch.uint8),
            bits=self.bits,
            group_size=self.group,
        )


def fake_quant_tokens(x: torch.Tensor, bits: int, clip: torch.Tensor | None = None, sym: bool = True) -> torch.Tensor:
    """Per-token dynamic quantization of activations (STE), as ``edgeq::QuantLinear`` does: symmetric, or with a
    zero point per token over the range [min(x, 0), max(x, 0)] (``sym=False``, its ``act_sym=0``). ``clip``
    (symmetric only; in (0, 1], learnable) shrinks each token's range to clip * max|x|, the values beyond
    saturating."""
    if not sym:
        if clip is not None:
            raise EdgeqError("a learned activation clip needs symmetric per-token codes")
        levels = 2**bits - 1
        hi, lo = x.amax(dim=-1, keepdim=True).clamp(min=0), x.amin(dim=-1, keepdim=True).clamp(max=0)
        scale = ((hi - lo) / levels).clamp(min=SCALE_FLOOR)
        zero = round_ste(-lo / scale)
        return (torch.clamp(round_ste(x / scale) + zero, 0, levels) - zero) * scale
    qmax = 2 ** (bits - 1) - 1
    top = x.abs().amax(dim=-1, keepdim=True)
    if clip is not None:
        top = top * clip.clamp(2.0**-15, 1.0)
    scale = (top / qmax).clamp(min=SCALE_FLOOR)
    return torch.clamp(round_ste(x / scale), -qmax - 1, qmax) * scale


class TransformedBlock(nn.Module):
    """A decoder block whose forward applies LET (channel scales) and LWC (clipped fake-quant) to its FP weights.

    The FP block is only read: ``forward`` calls it with substituted parameters (``torch.func.functional_call``),
    so its own tensors never change until ``fold``.
    """

    # True where ``forward`` quantizes the linears' inputs itself (no activation hooks needed)
    simulates_activations = False

    def __init__(self, layer: nn.Module, config, input_absmax: dict[str, torch.Tensor], use_let: bool,
                 smooth_down: bool | None = None):
        """smooth_down: also learn a scale between up_proj's rows and down_proj's columns (SiLU(g) * u is linear
        in u, so the SwiGLU product moves into down_proj exactly); needs ``use_let``. None: the config's."""
        super().__init__()
        if smooth_down is None:
            smooth_down = getattr(config, "smooth_down", False)
        attn = layer.self_attn
        self.layer = layer
        self.config = config
        self.names = [name for name, _ in layer.named_modules() if name.endswith("_proj")]
        self.num_heads = layer.self_attn.config.num_attention_heads
        self.num_kv = layer.self_attn.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.use_let = use_let
        group = -1 if config.abits < 16 else config.group_size
        self.clipping = nn.ModuleDict({
            name.replace(".", "/"): LearnedClipping(tuple(layer.get_submodule(name).weight.shape), config.wbits,
                                                    group, sym=config.sym)
            for name in self.names
        })
        if use_let:
            w = lambda n: layer.get_submodule(n).weight.detach()  # noqa: E731
            self.s_qkv = nn.Parameter(smooth_scale(input_absmax["self_attn.q_proj"],
                                                   torch.cat([w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")]), config.alpha))
            self.s_fc = nn.Parameter(smooth_scale(input_absmax["mlp.gate_proj"],
                                                  torch.cat([w("mlp.gate_proj"), w("mlp.up_proj")]), config.alpha))
            self.s_vo = nn.Parameter(smooth_scale(self.expand_kv(input_absmax["self_attn.o_proj"], reduce=True),
                                                  self.expand_kv(w("self_attn.o_proj"), reduce=True, dim=1), config.alpha))
            self.s_qk = nn.Parameter(torch.ones(self.num_kv, self.head_dim // 2))
            if smooth_down:
                self.s_ud = nn.Parameter(smooth_scale(input_absmax["mlp.down_proj"], w("mlp.down_proj"), config.alpha))

    # ---- channel bookkeeping for grouped-query attention -------------------------------------------------
    def expand_kv(self, t: torch.Tensor, reduce: bool = False, dim: int = 0) -> torch.Tensor:
        """Map between the kv-head channel space (kv·d) and the query-head space (h·d) along ``dim``.

        expand: repeat each kv head's channels for its query heads; reduce: max over the query heads sharing one.
        """
        rep = self.num_heads // self.num_kv
        t = t.movedim(dim, 0)
        if reduce:
            out = t.reshape(self.num_kv, rep, self.head_dim, *t.shape[1:]).abs().amax(dim=1)
        else:
            out = t.reshape(self.num_kv, 1, self.head_dim, *t.shape[1:]).expand(self.num_kv, rep, self.head_dim, *t.shape[1:])
        return out.reshape(-1, *t.shape[1:]).movedim(0, dim)

    def qk_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per q row, per k row) scales; rotary pairs (d, d + D/2) share one scale so RoPE commutes."""
        per_kv = torch.cat([self.s_qk, self.s_qk], dim=1)  # [kv, D]
        return self.expand_kv(per_kv.reshape(-1)), per_kv.reshape(-1)

    def transformed(self) -> dict[str, torch.Tensor]:
        """FP weights and norms after the equivalent transformation (the block computes the same function)."""
        layer = self.layer
        p = {f"{n}.weight": layer.get_submodule(n).weight for n in self.names}
        p["input_layernorm.weight"] = layer.input_layernorm.weight
        p["post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        if not self.use_let:
            return p
        for n in ("q_proj", "k_proj", "v_proj"):
            p[f"self_attn.{n}.weight"] = p[f"self_attn.{n}.weight"] * self.s_qkv[None, :]
        p["input_layernorm.weight"] = p["input_layernorm.weight"] / self.s_qkv
        for n in ("gate_proj", "up_proj"):
            p[f"mlp.{n}.weight"] = p[f"mlp.{n}.weight"] * self.s_fc[None, :]
        p["post_attention_layernorm.weight"] = p["post_attention_layernorm.weight"] / self.s_fc
        p["self_attn.v_proj.weight"] = p["self_attn.v_proj.weight"] / self.s_vo[:, None]
        p["self_attn.o_proj.weight"] = p["self_attn.o_proj.weight"] * self.expand_kv(self.s_vo)[None, :]
        q_scale, k_scale = self.qk_scales()
        p["self_attn.q_proj.weight"] = p["self_attn.q_proj.weight"] * q_scale[:, None]
        p["self_attn.k_proj.weight"] = p["self_attn.k_proj.weight"] / k_scale[:, None]
        if hasattr(self, "s_ud"):
            p["mlp.up_proj.weight"] = p["mlp.up_proj.weight"] / self.s_ud[:, None]
            p["mlp.down_proj.weight"] = p["mlp.down_proj.weight"] * self.s_ud[None, :]
        return p

    def quantized(self) -> dict[str, torch.Tensor]:
        p = self.transformed()
        for n in self.names:
            p[f"{n}.weight"] = self.clipping[n.replace(".", "/")](p[f"{n}.weight"])
        return p

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        out = torch.func.functional_call(self.layer, self.quantized(), (x,), kwargs)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def fold(self) -> dict:
        """Write the transformed norms and weights into the FP block; return the packed weights and norms."""
        p = self.transformed()
        out = {}
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            self.layer.get_parameter(name).copy_(p[name])
            out[name.removesuffix(".weight")] = FloatWeight(p[name].detach().clone())
        for n in self.names:
            w = p[f"{n}.weight"].detach()
            self.layer.get_submodule(n).weight.copy_(w)
            out[n] = self.clipping[n.replace(".", "/")].pack(w)
        return out


def smooth_scale(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^α / max|W_:,j|^(1-α), the LET initialisation."""
    w_absmax = weight.abs().amax(dim=0).clamp(min=SCALE_FLOOR)
    return (act_absmax.clamp(min=SCALE_FLOOR).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=SCALE_FLOOR).detach().clone()


def linear_input_absmax(layer: nn.Module, runner) -> dict[str, torch.Tensor]:
    """Per input channel max |x| of each linear over the calibration activations (the LET initialisation)."""
    from edgeq.quantize.sequential import collect_inputs

    stats: dict[str, torch.Tensor] = {}

    def sink(name, x):
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m

    owner = collect_inputs(layer, runner, sink)
    return {name: stats[source] for name, source in owner.items()}


def activation_quant_hooks(layer: nn.Module, bits: int, sym: bool = True) -> list:
    return [
        module.register_forward_pre_hook(lambda m, args: (fake_quant_tokens(args[0], bits, sym=sym), *args[1:]))
        for name, module in layer.named_modules() if name.endswith("_proj")
    ]


def train_block(layer: nn.Module, runner, config, make_block=TransformedBlock) -> dict:
    """Learn LWC (and LET) for one block against the FP block's outputs; return the folded, packed weights.

    make_block(layer, config, input_absmax, use_let) builds the trained block (``TransformedBlock`` or a
    subclass); parameters named ``s_*`` train at ``let_lr``, ``clip*`` at ``config.clip_lr``.
    """
    block = make_block(layer, config, linear_input_absmax(layer, runner) if config.use_let else {}, config.use_let)
    block.to(next(layer.parameters()).device)  # the learned parameters live where the block runs
    for p in layer.parameters():
        p.requires_grad_(False)
    lwc = list(block.clipping.parameters())
    named = [(n, p) for n, p in block.named_parameters() if p.requires_grad]
    let = [p for n, p in named if n.startswith("s_")]
    clip = [p for n, p in named if n.startswith("clip_")]
    groups = [{"params": lwc, "lr": config.lwc_lr}] + ([{"params": let, "lr": config.let_lr}] if let else [])
    groups += [{"params": clip, "lr": config.clip_lr}] if clip else []
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    hooks = (activation_quant_hooks(layer, config.abits, config.act_sym)
             if config.abits < 16 and not block.simulates_activations else [])
    batches = [(x, kw, y) for x, kw, y in zip(runner.inputs, runner.layer_kwargs, runner.targets)]
    generator = torch.Generator().manual_seed(config.seed)
    try:
        first = last = None
        for epoch in range(config.epochs):
            total = 0.0
            for i in torch.randperm(len(batches), generator=generator).tolist():
                x, kwargs, y = batches[i]
                with torch.enable_grad():
                    loss = nn.functional.mse_loss(block(x, **kwargs), y)
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
                with torch.no_grad():  # LET scales must stay positive to be folded, clipping ranges too
                    for p in let + clip:
                        p.clamp_(min=SCALE_FLOOR)
                total += loss.item()
            last = total / len(batches)
            first = last if first is None else first
        if config.epochs:
            log.info("%s block: loss %.3e -> %.3e over %d epochs", type(block).__name__, first, last, config.epochs)
    finally:
        for h in hooks:
            h.remove()
    out = block.fold()
    if config.abits < 16:
        for qw in out.values():
            if hasattr(qw, "act_bits"):
                qw.act_bits = config.abits
                qw.act_sym = config.act_sym
    return out
