"""Decode-step time of several decoders side by side, in rounds interleaved across them, on the CPU: each spec is
MODEL[@OPS_LIBRARY][#THREADS] (an op library other than the current build for an A/B of two builds; intra-op
threads, default 2). After a 128-token prefill each round runs N decode steps from the same cache per spec; prints
each spec's median step time and its per-round ratio to the first spec (median and quartiles), which cancels this
shared VM's drift between rounds better than a ratio of medians. Before each spec's steps the harness waits GAP
seconds (default edgeq bench's pause, 0.1): ORT's idle workers spin for tens of milliseconds after a session's last parallel loop, and
without the wait the previous spec's spinning worker takes a core from the next spec (BENCHMARKS.md, stop 25).

    python scripts/decode_steps.py out/fp32/model.onnx out/int/model.onnx#1 out/int/model.onnx@/tmp/old/libedgeq_ops_cpu.so
    ROUNDS=30 STEPS=8 GAP=0.1 python scripts/decode_steps.py ...
"""

import os
import sys
import time

import numpy as np

from edgeq.bench import SPIN_GAP_S
from edgeq.runtime.decoder import OnnxDecoder


def parse(spec: str) -> tuple[str, str, int]:
    spec, _, threads = spec.partition("#")
    model, _, library = spec.partition("@")
    return model, library, int(threads or 2)


def main(specs: list[str]) -> None:
    rounds, steps = int(os.environ.get("ROUNDS", 30)), int(os.environ.get("STEPS", 8))
    gap = float(os.environ.get("GAP", SPIN_GAP_S))
    decoders = []
    for spec in specs:
        model, library, threads = parse(spec)
        # the op library is picked when a session is made: set or clear the override for this one
        if library:
            os.environ["EDGEQ_OPS_LIBRARY_CPU"] = library
        else:
            os.environ.pop("EDGEQ_OPS_LIBRARY_CPU", None)
        decoders.append(OnnxDecoder(model, threads=threads))
    vocab = min(d.session.get_outputs()[0].shape[-1] for d in decoders)
    prompt = np.random.default_rng(0).integers(1, vocab, (1, 128))
    caches = [d.step(prompt, d.empty_cache(1))[1] for d in decoders]
    token = np.array([[vocab // 2]])
    ms = np.zeros((len(decoders), rounds))
    for r in range(rounds):
        for i, d in enumerate(decoders):
            time.sleep(gap)
            cache, start = caches[i], time.perf_counter()
            for _ in range(steps):
                _, cache = d.step(token, cache)
            ms[i, r] = (time.perf_counter() - start) / steps * 1e3
    print(f"{rounds} rounds x {steps} decode steps after a 128-token prompt, {gap:g} s between specs")
    print(f"| spec | median ms/step | tok/s | vs {specs[0]} (per-round median, quartiles) |\n|---|---:|---:|---|")
    for spec, row in zip(specs, ms):
        ratio = ms[0] / row
        print(f"| {spec} | {np.median(row):.2f} | {1e3 / np.median(row):.1f} | {np.median(ratio):.2f}x "
              f"({np.percentile(ratio, 25):.2f}-{np.percentile(ratio, 75):.2f}) |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
