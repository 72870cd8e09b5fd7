"""Where a decode step's time goes: ORT's profiler over a few greedy steps, kernel time summed per op type.

The profiler adds its own cost to every node, so the absolute times are inflated; the shares and the calls per
step are what it is for (which op to make faster, how many nodes a step runs).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import defaultdict
from pathlib import Path


@dataclasses.dataclass
class OpTime:
    op_type: str
    calls_per_step: float
    us_per_step: float
    share: float


@dataclasses.dataclass
class StepProfile:
    steps: int
    step_ms: float          # mean wall time of a decode run (the profiler's model_run events)
    kernel_ms: float        # the kernel time of a step, summed over its nodes
    ops: list[OpTime]


def summarize(events: list[dict]) -> StepProfile:
    """Decode steps of one ``profile_decode`` run: every model_run after the first three (a two-token warm-up, then
    the prompt), and the node kernel times inside them, per op type."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode = runs[3:]  # the warm-up's prompt and step, then the prompt
    if not decode:
        raise ValueError("the profile holds no decode step (fewer than two runs)")
    start = decode[0]["ts"]
    total, calls = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            total[op] += e["dur"]
            calls[op] += 1
    n = len(decode)
    kernel_us = sum(total.values()) / n
    ops = [OpTime(op, calls[op] / n, total[op] / n, total[op] / n / kernel_us if kernel_us else 0.0)
           for op in sorted(total, key=total.get, reverse=True)]
    return StepProfile(n, sum(e["dur"] for e in decode) / n / 1000, kernel_us / 1000, ops)


def profile_decode(path: Path, device: str, threads: int | None, prompt_tokens: int, steps: int) -> StepProfile:
    """Profile ``steps`` greedy decode steps of ``path`` after a random prompt (``bench speed``'s)."""
    import numpy as np

    from edgeq.runtime.decoder import OnnxDecoder
    from edgeq.runtime.generate import SamplingConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        decoder = OnnxDecoder(path, device, threads, profile_prefix=str(Path(tmp) / "profile"))
        vocab = decoder.session.get_outputs()[0].shape[-1]
        prompt = np.random.default_rng(0).integers(1, vocab, prompt_tokens).tolist()
        generate(decoder, prompt[:8], SamplingConfig(max_new_tokens=2, stop_at_eos=False))  # warm-up, not counted
        generate(decoder, prompt, SamplingConfig(max_new_tokens=steps + 1, stop_at_eos=False))
        with open(decoder.session.end_profiling()) as f:
            return summarize(json.load(f))


def profile_table(name: str, p: StepProfile, top: int = 12) -> str:
    lines = [f"{name}: {p.steps} decode steps, {p.step_ms:.2f} ms per step (profiled), kernels {p.kernel_ms:.2f} ms, "
             f"{sum(o.calls_per_step for o in p.ops):.0f} nodes per step", "",
             "| op | calls / step | µs / step | share of kernel time |", "|---|---|---|---|"]
    lines += [f"| {o.op_type} | {o.calls_per_step:.0f} | {o.us_per_step:.0f} | {o.share:.1%} |" for o in p.ops[:top]]
    rest = p.ops[top:]
    if rest:
        lines.append(f"| {len(rest)} others | {sum(o.calls_per_step for o in rest):.0f} | "
                     f"{sum(o.us_per_step for o in rest):.0f} | {sum(o.share for o in rest):.1%} |")
    return "\n".join(lines)


def write_profiles(paths: list[Path], names: list[str], args, out: Path) -> None:
    """``--profile-steps``: each model's table, printed and written to ``out/op-profile.md`` (nothing when 0)."""
    if not args.profile_steps:
        return
    report = "\n\n".join(profile_table(name, profile_decode(p, args.device, args.threads, args.prompt_tokens,
                                                               args.profile_steps)) for p, name in zip(paths, names))
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "op-profile.md").write_text(f"Device {args.device}, threads {args.threads or 'default'}, prompt "
                                       f"{args.prompt_tokens} tokens\n\n{report}\n")
