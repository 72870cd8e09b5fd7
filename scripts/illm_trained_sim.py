"""The integer graph's roundings around a calibrated I-LLM model, in PyTorch: which inner site still costs perplexity.

    python scripts/illm_trained_sim.py out/gpu20w/illm-wbits8-...-integer_only1/quantized --probs float 8 16
    python scripts/illm_trained_sim.py QUANTIZED --probs float --v16        # v (the KV cache's values) at 16 bits
    python scripts/illm_trained_sim.py QUANTIZED --probs float --head       # the int8 table and final-norm codes
    python scripts/illm_trained_sim.py QUANTIZED --probs float --float-inputs down   # down_proj's input codes off
    python scripts/illm_trained_sim.py QUANTIZED --probs float --rotate-down 512      # a block Hadamard on that input

The folded, quantized weights are applied as ``edgeq quantize`` leaves them (``QuantizedLinear`` rounds each linear's
input to its per-token abits codes, with zero points when ``act_sym=false``); each decoder layer then runs the
integer graph's other roundings as ``FSBRBlock.forward`` simulates them: 16-bit residual stream and o/down outputs,
16-bit q/k/gate/up, 8-bit v and rotary outputs (the KV cache), the layer's learned softmax clip, and the
probabilities as ``--probs`` says (float, or 8/16-bit codes of exp(x - max) over the unrounded sum). The embedding
table, the final norm and lm_head stay float unless ``--head``; ``--float-inputs`` leaves the named linears' inputs
unrounded (qkv, o, gate_up, down: which abits site costs what). ``--rotate-down B`` (an experiment, not in the
graph): down_proj's input is rotated by a block-diagonal Walsh-Hadamard matrix of B x B blocks (orthonormal) before
its per-token codes, and its dequantized weights by the same rotation, requantized per output channel with RTN
(min-max, zero point) at the model's weight width: no recalibration. One perplexity per ``--probs`` value on the
bench's eval text and windows.
"""

import argparse
import types

import torch
from torch import nn

from edgeq.cli import DEFAULT_MAX_WINDOWS, EVAL_TEXT, eval_tokens, eval_torch
from edgeq.models import load_model
from edgeq.passes.integer_only import hadamard_matrix
from edgeq.quantize.api import apply_quantized, load_quantized
from edgeq.quantize.illm import clipped_softmax_codes, rotate_half
from edgeq.quantize.grid import dequantize_codes, fit_grid, quantize_codes
from edgeq.quantize.omniquant import fake_quant_tokens


def probabilities(variant: str):
    if variant == "float":
        def softmax(scores, clip):
            shifted = scores - scores.amax(-1, keepdim=True)
            e = torch.exp(torch.maximum(shifted, torch.where(torch.isinf(shifted), shifted, -clip)))
            return e / e.sum(-1, keepdim=True)
        return softmax
    return lambda scores, clip: clipped_softmax_codes(scores, clip, int(variant))


def simulated_layer(layer: nn.Module, cfg, clip: torch.Tensor, softmax, v_bits: int):
    r16 = lambda t: fake_quant_tokens(t, 16)  # noqa: E731
    q8 = lambda t: fake_quant_tokens(t, 8)  # noqa: E731
    at, mlp = layer.self_attn, layer.mlp
    heads_n, kv_n, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, at.head_dim

    def forward(hidden_states, attention_mask=None, position_embeddings=None, **_):
        b, s, _ = hidden_states.shape
        h = r16(hidden_states)
        a = layer.input_layernorm(h)  # the folded gamma: the norms stay float, as DINorm's codes are the linear's input
        split = lambda t, n: t.reshape(b, s, n, head_dim).transpose(1, 2)  # noqa: E731
        q, k = split(r16(at.q_proj(a)), heads_n), split(r16(at.k_proj(a)), kv_n)
        v = split(fake_quant_tokens(at.v_proj(a), v_bits), kv_n)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        q, k = q8(q * cos + rotate_half(q) * sin), q8(k * cos + rotate_half(k) * sin)
        rep = heads_n // kv_n
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        ctx = (softmax(scores, clip) @ v).transpose(1, 2).reshape(b, s, -1)
        h = r16(h + r16(at.o_proj(ctx)))
        a = layer.post_attention_layernorm(h)
        glu = nn.functional.silu(r16(mlp.gate_proj(a))) * r16(mlp.up_proj(a))
        return r16(h + r16(mlp.down_proj(glu)))

    return forward


SITES = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


def rotate_down(linear: nn.Module, block: int) -> None:
    """down_proj computes (x H)(W H)^T = x W^T with x H quantized per token and W H requantized per channel."""
    qw = linear.qweight
    H = torch.from_numpy(hadamard_matrix(linear.in_features, block)).to(linear.weight.dtype)
    W = linear.weight @ H
    scale, zero = fit_grid(W, qw.bits, sym=False)
    linear.weight = dequantize_codes(quantize_codes(W, scale, zero, qw.bits), scale, zero)
    bits, sym = qw.act_bits, qw.act_sym
    qw.act_bits = 0  # the forward below rounds the rotated input instead
    linear.forward = lambda x: nn.functional.linear(fake_quant_tokens(x @ H, bits, sym=sym), linear.weight)


def perplexity(quantized: str, probs: str, v_bits: int, head: bool, float_inputs: tuple[str, ...] = (),
               rotate_block: int = 0) -> float:
    lm = load_model("smollm2-135m")
    model = lm.model.eval()
    _, _, qweights = load_quantized(quantized)
    apply_quantized(model, qweights)
    for layer in model.model.layers:
        for name in (n for site in float_inputs for n in SITES[site]):
            layer.get_submodule(name).qweight.act_bits = 0
        if rotate_block:
            rotate_down(layer.mlp.down_proj, rotate_block)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            clip = qweights[f"model.layers.{i}.self_attn.softmax_clip"].tensor.reshape(())
            layer.forward = simulated_layer(layer, model.config, clip, probabilities(probs), v_bits)
        if head:
            table = model.model.embed_tokens.weight  # tied: the lm_head rows too
            table.copy_(fake_quant_tokens(table, 8))
            final = model.model.norm
            final_forward = final.forward
            final.forward = lambda x: fake_quant_tokens(final_forward(x), 8, sym=False)
    args = types.SimpleNamespace(text=EVAL_TEXT, window=512, stride=512, max_windows=DEFAULT_MAX_WINDOWS)
    with torch.no_grad():
        return eval_torch(model, eval_tokens(lm.tokenizer, args), args, "eval").perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("quantized", help="an I-LLM quantized folder (softmax clip learned)")
    parser.add_argument("--probs", nargs="+", default=["float", "8", "16"], choices=["float", "8", "16"])
    parser.add_argument("--v16", action="store_true", help="v_proj's output (the cached values) at 16 bits, not 8")
    parser.add_argument("--head", action="store_true", help="round the table and the final norm's output too")
    parser.add_argument("--float-inputs", nargs="*", default=[], choices=sorted(SITES),
                        help="leave these linears' input codes unrounded")
    parser.add_argument("--rotate-down", type=int, default=0, metavar="B",
                        help="rotate down_proj's input by a block Hadamard of B x B blocks (experiment)")
    args = parser.parse_args()
    print("| probabilities | v bits | head rounded | float inputs | down rotated | PyTorch PPL |\n"
          "|---|---|---|---|---|---|")
    for probs in args.probs:
        ppl = perplexity(args.quantized, probs, 16 if args.v16 else 8, args.head, tuple(args.float_inputs),
                         args.rotate_down)
        print(f"| {probs} | {16 if args.v16 else 8} | {'yes' if args.head else 'no'} | "
              f"{' '.join(args.float_inputs) or '-'} | {args.rotate_down or '-'} | {ppl:.3f} |", flush=True)


if __name__ == "__main__":
    main()
