"""Measure the passes on a real model: node counts, logits and perplexity before/after, CPU decode speed.

    python -m edgeq.passes.benchmark --model smollm2-135m --out /tmp/passes_bench

Exports FP32 and RTN-W4-g128 decoders, applies the default pipeline with and without the fusions, and prints
a Markdown report (the numbers in BENCHMARKS.md's "Passes" section come from it). Timings are medians of
``--repeats`` interleaved greedy generations of ``--new-tokens`` tokens after a 128-token prompt, on
``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgeq.passes.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", required=True, help="folder for the exported and optimized models")
    p.add_argument("--windows", type=int, default=4, help="512-token perplexity windows of shakespeare-eval")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-only", action="store_true", help="only time decoding of the models already in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from edgeq.exporter.llama_graph import build_decoder_model
    from edgeq.models import load_model
    from edgeq.passes.diff import structural_diff
    from edgeq.passes.pipeline import default_pipeline
    from edgeq.perplexity import perplexity
    from edgeq.quantize.api import quantize_
    from edgeq.quantize.config import RTNConfig
    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.text import read_text, tokenize

    out = Path(args.out)
    if args.speed_only:
        names = ("fp32", "fp32+fusions", "w4", "w4+default", "w4+default+fusions")
        return time_decoding({n: out / (n.replace("+", "_") + ".onnx") for n in names}, args)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    tokens = tokenize(lm.tokenizer, read_text("shakespeare-eval"))
    paths: dict[str, Path] = {}
    reports = {}
    paths["fp32"] = _save(build_decoder_model(lm.model), out / "fp32.onnx")
    quantize_(lm.model, RTNConfig(4, 128))
    w4 = build_decoder_model(lm.model)
    paths["w4"] = _save(w4, out / "w4.onnx")
    for name, source, fusions in (("w4+default", w4, False), ("w4+default+fusions", w4, True),
                                  ("fp32+fusions", onnx.load(str(paths["fp32"])), True)):
        result = default_pipeline(source, fusions=fusions)
        reports[name] = result
        paths[name] = _save(result.to_proto(), out / (name.replace("+", "_") + ".onnx"))
    del lm

    lines = ["| model | nodes | MatMul | DequantizeLinear | MatMulNBits | initializers MiB |", "|---|---|---|---|---|---|"]
    for name, path in paths.items():
        proto = onnx.load(str(path))
        counts = {}
        for n in proto.graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        mib = sum(len(t.raw_data) for t in proto.graph.initializer) / 2**20
        lines.append(f"| {name} | {len(proto.graph.node)} | {counts.get('MatMul', 0)} | "
                     f"{counts.get('DequantizeLinear', 0)} | {counts.get('MatMulNBits', 0)} | {mib:.1f} |")
    print("\n".join(lines))
    print("\nper-pass report, w4 + default pipeline + fusions:\n" + reports["w4+default+fusions"].format())
    d = structural_diff(onnx.load(str(paths["fp32"])), onnx.load(str(paths["w4"])))
    print("\nedgeq diff fp32.onnx w4.onnx:\n" + d.format(max_lines=3))

    decoders = {name: OnnxDecoder(path, threads=args.threads) for name, path in paths.items()}
    prompt = tokens[:128]
    logits = {name: dec.logits(prompt) for name, dec in decoders.items()}
    ppl = {name: perplexity(dec.logits, tokens, 512, 512, args.windows, desc=name).perplexity
           for name, dec in decoders.items()}
    print(f"\n| comparison | logits max abs diff (128 tokens) | perplexity ({args.windows}x512 tokens) |")
    print("|---|---|---|")
    for ref, new in (("w4", "w4+default"), ("w4", "w4+default+fusions"), ("fp32", "fp32+fusions")):
        diff = float(np.abs(logits[ref] - logits[new]).max())
        rel = ppl[new] / ppl[ref] - 1
        print(f"| {ref} -> {new} | {diff:.2e} | {ppl[ref]:.4f} -> {ppl[new]:.4f} ({rel:+.5%}) |")

    del decoders  # time_decoding opens its own sessions
    time_decoding(paths, args)


def time_decoding(paths: dict[str, Path], args) -> None:
    """Greedy decode speed of each model, in interleaved rounds: on a shared machine load drifts over minutes,
    and every model sees the same drift. The prompt is fixed synthetic ids (speed does not depend on them)."""
    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.runtime.generate import SamplingConfig, generate

    order = ("fp32", "fp32+fusions", "w4", "w4+default", "w4+default+fusions")
    decoders = {name: OnnxDecoder(paths[name], threads=args.threads) for name in order}
    prompt = (np.arange(128) * 37) % 20000 + 100
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False)
    speeds = {name: [] for name in order}
    prefill = {name: [] for name in order}
    for _ in range(args.repeats):
        for name in order:
            g = generate(decoders[name], prompt, cfg)
            speeds[name].append(g.decode_tokens_per_second)
            prefill[name].append(g.prefill_seconds)
    print(f"\n| model | decode tok/s, median (best) of {args.repeats}, {args.threads} thread(s) | "
          f"prefill 128 tokens, ms median |")
    print("|---|---|---|")
    for name in order:
        print(f"| {name} | {statistics.median(speeds[name]):.1f} ({max(speeds[name]):.1f}) | "
              f"{1000 * statistics.median(prefill[name]):.0f} |")


if __name__ == "__main__":
    main()
