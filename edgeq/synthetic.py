"""Random-weight Llama models of real shapes, for speed benchmarks of the compiled graphs.

Speed does not depend on what the weights are, only on their format and shapes, so a LLaMA-7B-shaped model with a
few layers and random packed weights measures what a real one would, without its 13 GB download. Each format
fills every decoder linear with random codes of that format (SpQR: random bilevel statistics and a given share of
outliers in random places; group-quant: random codes, scales and zero points), then goes through the same
export and passes as a quantized model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edgeq.errors import EdgeqError

PRESETS = {
    # name: (hidden, intermediate, heads, kv heads, vocab)
    "llama-7b": (4096, 11008, 32, 32, 32000),
    "tiny": (64, 160, 4, 2, 256),  # for tests
}

# format name -> what it stands for (the table's row label says the same)
FORMATS = {
    "fp16": "fp16 weights, ORT MatMul",
    "nbits4": "4-bit g128 asymmetric, com.microsoft.MatMulNBits",
    "gqmm3": "3-bit g128 asymmetric, edgeq::GroupQuantMatMul",
    "spqr3": "SpQR 3-bit β1=β2=16, 3-bit stats, 1% outliers, act-order permutation, edgeq::SpQRMatMul",
    "illm8": "I-LLM integer-only W8A8 (per-channel RTN weights, per-token activations), edgeq DI ops",
}


def random_llama(preset: str, layers: int, dtype: torch.dtype = torch.float16, seed: int = 0):
    """A LlamaForCausalLM of ``preset``'s shapes with ``layers`` decoder layers and small random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise EdgeqError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    hidden, inter, heads, kv_heads, vocab = PRESETS[preset]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, num_hidden_layers=layers, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model


def random_group_quant(n: int, k: int, bits: int, group_size: int, gen: torch.Generator):
    from edgeq.quantize.formats.group_quant import GroupQuantWeight

    groups = math.ceil(k / group_size)
    return GroupQuantWeight(
        codes=torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8),
        scales=(torch.rand(n, groups, generator=gen) * 0.01 + 0.001).half().float(),
        zeros=torch.randint(0, 2**bits, (n, groups), generator=gen, dtype=torch.uint8),
        bits=bits, group_size=group_size)


def random_spqr(n: int, k: int, gen: torch.Generator, bits: int = 3, group_size: int = 16, stat_bits: int = 3,
                stat_group_size: int = 16, outliers: float = 0.01):
    """A SpQRWeight with random codes and statistics and ``outliers`` of its weights as sparse corrections."""
    from edgeq.quantize.formats.spqr import SpQRWeight

    g1, r = math.ceil(k / group_size), math.ceil(n / stat_group_size)
    stats = torch.empty(r, g1, 4)
    stats[..., 0] = torch.rand(r, g1, generator=gen) * 0.002 + 0.0005  # scale of scales
    stats[..., 1] = -1.0                                                 # zero of scales: keeps scales > 0
    stats[..., 2] = 1.0                                                  # scale of zeros
    stats[..., 3] = 0.0                                                  # zero of zeros
    nnz = int(round(outliers * n * k))
    flat = torch.randperm(n * k, generator=gen)[:nnz].sort().values  # row-major order = CSR order
    rows, cols = flat // k, flat % k
    row_ptr = torch.zeros(n + 1, dtype=torch.int32)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return SpQRWeight(
        codes=torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8),
        scale_codes=torch.randint(0, 2**stat_bits, (n, g1), generator=gen, dtype=torch.uint8),
        zero_codes=torch.randint(0, 2**stat_bits, (n, g1), generator=gen, dtype=torch.uint8),
        stats=stats.half(), row_ptr=row_ptr, cols=cols, values=(torch.randn(nnz, generator=gen) * 0.05).half(),
        bits=bits, group_size=group_size, stat_bits=stat_bits, stat_group_size=stat_group_size,
        perm=torch.randperm(k, generator=gen))


def fill_linears(model, fmt: str, seed: int = 0) -> None:
    """Replace every decoder linear of ``model`` by a random weight of format ``fmt`` (``fp16`` leaves them;
    ``illm8`` quantizes the random float weights W8A8, which is as fast and gives the integer pass what it reads)."""
    from edgeq.quantize.modules import apply_to_layer, decoder_linears

    if fmt not in FORMATS:
        raise EdgeqError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt == "fp16":
        return
    if fmt == "illm8":
        from edgeq.quantize.api import quantize_
        from edgeq.quantize.config import RTNConfig

        quantize_(model, RTNConfig(bits=8, group_size=-1, sym=True, abits=8), None)
        return
    gen = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        qweights = {}
        for name, linear in decoder_linears(layer).items():
            n, k = linear.weight.shape
            if fmt == "spqr3":
                qweights[name] = random_spqr(n, k, gen)
            else:
                qweights[name] = random_group_quant(n, k, {"nbits4": 4, "gqmm3": 3}[fmt], 128, gen)
        apply_to_layer(layer, qweights)


def build(preset: str, layers: int, fmt: str, out: Path, seed: int = 0) -> Path:
    """Export a random ``preset`` model in format ``fmt`` to ``out/<fmt>/model.onnx`` (fp16 graph, default passes;
    ``illm8``: the integer-only graph, whose export is float32 before the pass)."""
    from edgeq.cli import integer_only_passes, lowering_passes
    from edgeq.exporter.export import export

    path = out / fmt / "model.onnx"
    if path.exists():
        return path
    model = random_llama(preset, layers, torch.float32, seed)
    fill_linears(model, fmt, seed)
    if fmt == "illm8":
        return export(model, None, path, dtype="float32", external=True, transform=integer_only_passes)
    return export(model, None, path, dtype="float16", external=True, transform=lowering_passes)


def linear_bytes(path: Path) -> int:
    """Bytes of the weights the decoder linears read in the compiled graph (what decode streams per token)."""
    import onnx

    from edgeq.bench import linear_storage

    bits, _ = linear_storage(onnx.load(str(path), load_external_data=False))
    return bits // 8


def cmd_bench_synthetic(args) -> None:
    from edgeq.bench import measure_speed
    from edgeq.op_profile import write_profiles

    out = Path(args.output)
    paths = [build(args.preset, args.layers, fmt, out) for fmt in args.formats]
    rows = measure_speed(paths, args)
    fp = next((r.decode_tokens_per_second for r, f in zip(rows, args.formats) if f == "fp16"), None)
    lines = [f"Random-weight {args.preset}, {args.layers} layers, fp16 activations (illm8: integer codes), device {args.device}, "
             f"prompt {args.prompt_tokens}, {args.new_tokens} new tokens, median of {args.rounds} rounds", "",
             "| format | linear weights MB | prefill tok/s | decode tok/s | decode vs fp16 |", "|---|---|---|---|---|"]
    for fmt, r, p in zip(args.formats, rows, paths):
        rel = f"{r.decode_tokens_per_second / fp:.2f}x" if fp else "n/a"
        lines.append(f"| {fmt}: {FORMATS[fmt]} | {linear_bytes(p) / 2**20:.0f} | {r.prefill_tokens_per_second:.1f} | "
                     f"{r.decode_tokens_per_second:.1f} | {rel} |")
    report = "\n".join(lines)
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.md").write_text(report + "\n")
    write_profiles(paths, args.formats, args, out)


def register(bsub) -> None:
    from edgeq.bench import add_timing_args

    p = bsub.add_parser("synthetic", help="decode/prefill tokens/s of random-weight models of real shapes, per format",
                        description=__doc__)
    p.add_argument("--preset", default="llama-7b", choices=sorted(PRESETS), help="model shapes (default: llama-7b)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers (default: 4)")
    p.add_argument("--formats", nargs="+", default=["fp16", "nbits4", "spqr3"], choices=list(FORMATS),
                   help="weight formats to compare (default: fp16 nbits4 spqr3)")
    p.add_argument("-o", "--output", default="out/synthetic", help="models and synthetic.md go here")
    add_timing_args(p)
    p.set_defaults(func=cmd_bench_synthetic)
