"""The main job: quantize → export → run in ONNX Runtime, checked against PyTorch and FP32.

For the FP32 model and every quantization config it prints one table row: perplexity in PyTorch and of the
``.onnx`` in ORT, their relative difference, the change against FP32, average bits per weight and time. It also
checks the FP32 export's logits against PyTorch and that generation with the KV cache equals generation without.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


CHECK_PROMPTS = ["The king is dead; long live", "To be, or not to be, that is", "Once upon a time, in a quiet harbour town,"]


@dataclass
class Row:
    name: str
    avg_bits: float
    ppl_torch: float
    ppl_onnx: float
    quant_seconds: float
    onnx_mb: float




def average_bits(path: Path) -> float:
    """Stored bits per weight of the decoder linears, read off the ``.onnx`` (as ``edgeq bench`` counts them)."""
    import onnx

    from edgeq.bench import linear_storage

    bits, params = linear_storage(onnx.load(str(path), load_external_data=False))
    return bits / params

def logits_check(lm, onnx_path: Path):
    from edgeq.perplexity import torch_logits_fn
    from edgeq.runtime.decoder import OnnxDecoder

    decoder = OnnxDecoder(onnx_path)
    ref = torch_logits_fn(lm.model)
    diffs = []
    for prompt in CHECK_PROMPTS:
        ids = np.asarray(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        diffs.append(float(np.abs(decoder.logits(ids) - ref(ids)).max()))
    return decoder, diffs


def cache_check(decoder, tokenizer, n_tokens: int = 32) -> bool:
    from edgeq.runtime.generate import SamplingConfig, generate

    ids = tokenizer(CHECK_PROMPTS[1], add_special_tokens=False)["input_ids"]
    cfg = SamplingConfig(max_new_tokens=n_tokens, stop_at_eos=False)
    return generate(decoder, ids, cfg, use_cache=True).tokens == generate(decoder, ids, cfg, use_cache=False).tokens


def run_pipeline(args) -> list[Row]:
    from edgeq.cli import eval_onnx, eval_tokens, eval_torch, prompt_ids, quant_config, run_export, run_quantize
    from edgeq.quantize.config import config_from_spec
    from edgeq.models import load_model
    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.runtime.generate import SamplingConfig, generate

    out = Path(args.output)
    lower = not getattr(args, "no_passes", False)
    main = quant_config(args)
    runs = [(f"{args.method}:bits={args.bits},group_size={args.group_size}", main)]
    runs += [(spec, config_from_spec(spec)) for spec in getattr(args, "compare", None) or []]
    started = time.perf_counter()
    lm = load_model(args.model)
    fp_model = copy.deepcopy(lm.model)
    tokens = eval_tokens(lm.tokenizer, args)

    fp_path = run_export(lm.model, lm.tokenizer, out / "fp32" / "model.onnx", "float32", lower=False)
    decoder, diffs = logits_check(lm, fp_path)
    same = cache_check(decoder, lm.tokenizer)
    print(f"FP32 .onnx vs PyTorch logits, max |Δ| on {len(diffs)} prompts: " + ", ".join(f"{d:.2e}" for d in diffs))
    print(f"generation with KV cache == without, 32 greedy tokens: {same}")
    rows = [Row("fp32", average_bits(fp_path), eval_torch(lm.model, tokens, args, "fp32 pytorch").perplexity,
                eval_onnx(fp_path, tokens, args, "fp32 onnx").perplexity, 0.0, fp_path.stat().st_size / 2**20)]

    quant_path = None
    for name, config in runs:
        folder = out / name.replace(":", "-").replace(",", "-").replace("=", "")
        model = copy.deepcopy(fp_model)
        lm.model = model
        _, seconds = run_quantize(lm, config, args, folder)
        path = run_export(model, lm.tokenizer, folder / "model.onnx", "float32", lower=lower)
        quant_path = quant_path or path
        rows.append(Row(name, average_bits(path), eval_torch(model, tokens, args, name + " pytorch").perplexity,
                        eval_onnx(path, tokens, args, name + " onnx").perplexity, seconds, onnx_size_mb(path)))
        print_table(rows, args)

    sample = generate(OnnxDecoder(quant_path, args.device, args.threads), prompt_ids(lm.tokenizer, args.prompt, True),
                      SamplingConfig(max_new_tokens=args.max_new_tokens))
    print(f"\nsample from {quant_path} ({args.prompt!r}):\n  {lm.tokenizer.decode(sample.tokens, skip_special_tokens=True).strip()}")
    print(f"  prefill {sample.prefill_tokens_per_second:.1f} tok/s, decode {sample.decode_tokens_per_second:.1f} tok/s ({args.device})")
    print(f"total {time.perf_counter() - started:.0f} s")
    return rows


def onnx_size_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20


def print_table(rows: list[Row], args) -> None:
    fp = rows[0].ppl_onnx
    print(f"\nPerplexity, {args.text}, {args.window}-token windows (stride {args.stride}, "
          f"{args.max_windows or 'all'} windows)")
    print("| config | avg bits | PPL PyTorch | PPL ONNX (ORT) | ONNX vs PyTorch | vs FP32 | quant time | .onnx MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.avg_bits:.2f} | {r.ppl_torch:.3f} | {r.ppl_onnx:.3f} | "
              f"{(r.ppl_onnx / r.ppl_torch - 1) * 100:+.3f}% | {(r.ppl_onnx / fp - 1) * 100:+.2f}% | "
              f"{r.quant_seconds:.0f} s | {r.onnx_mb:.0f} |")
