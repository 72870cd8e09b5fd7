"""Which rounding of the integer-only graph costs W8A8 the most, on the real model in PyTorch:

    python scripts/illm_site_ablation.py            # every site on, then each site off in turn, then all off
    python scripts/illm_site_ablation.py --wide probs qkv gate_up --act-zero   # one run: those sites at 16 bits,
                                                    # linear inputs with a zero point per token

The decoder runs I-LLM's simulation of the integer graph as of stop 15 (``quantize/illm.py``'s
``FSBRBlock.forward``; since stop 18 the graph keeps q/k and gate/up at 16 bits: ``--wide qkv gate_up``, v aside)
around RTN W8 per-channel weights with zero points (the
integer-only default grid), no calibration. Each site below can be switched off (left in float) to see what its
rounding costs in perplexity on the bench's eval text and windows:

  linear_in  the abits per-token codes every linear reads (W8A8 itself, not specific to the integer graph)
  qkv        8-bit codes of the q/k/v projections' outputs
  rope       8-bit codes after the rotary embedding (what the KV cache holds)
  probs      8-bit probabilities out of the softmax
  gate_up    8-bit codes of the gate/up projections' outputs
  residual   16-bit codes of the residual stream and the o/down outputs added to it
  head       the 8-bit embedding table, final-norm output and lm_head rows
"""

import argparse
import types

import torch
from torch import nn

from edgeq.cli import DEFAULT_MAX_WINDOWS, EVAL_TEXT, eval_tokens, eval_torch
from edgeq.models import load_model
from edgeq.quantize.grid import fit_grid
from edgeq.quantize.illm import INNER_BITS, RESIDUAL_BITS, clipped_softmax_codes, rotate_half
from edgeq.quantize.omniquant import fake_quant_tokens

SITES = ("linear_in", "qkv", "rope", "probs", "gate_up", "residual", "head")
ABITS, WBITS, HEAD_BITS = 8, 8, 8


def dequantized(w: torch.Tensor, bits: int) -> torch.Tensor:
    scale, zero = fit_grid(w, bits, sym=False)
    codes = torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, 2**bits - 1)
    return (codes - zero[:, None]) * scale[:, None]


def simulated_layer(layer: nn.Module, cfg, on: set, wide: set = frozenset(), act_zero: bool = False):
    """The layer's forward as the integer graph rounds it; sites not in ``on`` stay float, sites in ``wide`` round
    to 16 bits; ``act_zero``: the linear inputs' per-token codes have a zero point (OmniQuant's asymmetric rule)."""
    def round_if(site, bits, sym=True):
        bits = 16 if site in wide else bits
        return (lambda t: fake_quant_tokens(t, bits, sym=sym)) if site in on else (lambda t: t)
    a_in = round_if("linear_in", ABITS, sym=not act_zero)
    q8, g8 = round_if("qkv", INNER_BITS), round_if("gate_up", INNER_BITS)
    rope8, r16 = round_if("rope", INNER_BITS), round_if("residual", RESIDUAL_BITS)
    heads_n, kv_n = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads_n
    at, mlp = layer.self_attn, layer.mlp

    def norm(x, module):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon) * module.weight

    def forward(hidden_states, attention_mask=None, position_embeddings=None, **_):
        b, s, _ = hidden_states.shape
        h = r16(hidden_states)
        a = a_in(norm(h, layer.input_layernorm))
        split = lambda t, n: t.reshape(b, s, n, head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = (split(q8(proj(a)), n) for proj, n in ((at.q_proj, heads_n), (at.k_proj, kv_n), (at.v_proj, kv_n)))
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q, k = rope8(q * cos + rotate_half(q) * sin), rope8(k * cos + rotate_half(k) * sin)
        rep = heads_n // kv_n
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            scores = scores + attention_mask
        else:
            scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        probs = (clipped_softmax_codes(scores, None, 16 if "probs" in wide else INNER_BITS) if "probs" in on
                 else torch.softmax(scores, -1))
        ctx = a_in((probs @ v).transpose(1, 2).reshape(b, s, -1))
        h = r16(h + r16(at.o_proj(ctx)))
        a = a_in(norm(h, layer.post_attention_layernorm))
        glu = nn.functional.silu(g8(mlp.gate_proj(a))) * g8(mlp.up_proj(a))
        return r16(h + r16(mlp.down_proj(a_in(glu))))

    return forward


def perplexity(on: set, wide: set = frozenset(), act_zero: bool = False) -> float:
    lm = load_model("smollm2-135m")
    model = lm.model.eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for module in (*layer.self_attn.children(), *layer.mlp.children()):
                if isinstance(module, nn.Linear):
                    module.weight.copy_(dequantized(module.weight, WBITS))
            layer.forward = simulated_layer(layer, model.config, on, wide, act_zero)
        if "head" in on:
            table = model.model.embed_tokens.weight  # tied: the lm_head rows too
            table.copy_(fake_quant_tokens(table, HEAD_BITS))
            final = model.model.norm
            final_forward = final.forward
            final.forward = lambda x: fake_quant_tokens(final_forward(x), HEAD_BITS)
    args = types.SimpleNamespace(text=EVAL_TEXT, window=512, stride=512, max_windows=DEFAULT_MAX_WINDOWS)
    with torch.no_grad():
        return eval_torch(model, eval_tokens(lm.tokenizer, args), args, "eval").perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wide", nargs="*", choices=SITES, help="one run, every site on, these at 16 bits")
    parser.add_argument("--act-zero", action="store_true", help="(with --wide) zero points on the linear inputs")
    args = parser.parse_args()
    runs = [("all sites", set(SITES), set())] + [(f"all but {s}", set(SITES) - {s}, set()) for s in SITES] + \
        [("none", set(), set())]
    if args.wide is not None:
        runs = [(f"all sites, 16-bit: {', '.join(args.wide) or '-'}" + (", activation zero points" if args.act_zero
                                                                         else ""), set(SITES), set(args.wide))]
    print("| rounding sites on | PyTorch PPL |\n|---|---|")
    for name, on, wide in runs:
        print(f"| {name} | {perplexity(on, wide, args.act_zero and args.wide is not None):.3f} |", flush=True)


if __name__ == "__main__":
    main()
