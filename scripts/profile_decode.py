"""Where a CPU decode step of an integer-only graph goes, by `perf` (Linux perf with DWARF call graphs): decode steps
after a 128-token prompt are sampled and each sample is put in one bucket: the int8 GEMM kernels, the DI ops' input
checks and ORT's input/output queries under PrepareIntegerOp, the rest of each DI kernel, and everything outside
the DI ops (ORT's executor, Concat, the Python loop).

    python scripts/profile_decode.py out/int/model.onnx [THREADS]      # STEPS=300 for more samples
"""

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from edgeq.runtime.decoder import OnnxDecoder

SAMPLE_HZ = 2000  # perf samples a second per thread
OPS = "DIMatMul DIExp DIClippedSoftmax DINorm DISwiGLU DIRotary DIAdd DIBatchMatMul DIRequant".split()  # DiOp order


def record(model: str, threads: int, data: str, steps: int = 80) -> float:
    d = OnnxDecoder(model, threads=threads)
    vocab = d.session.get_outputs()[0].shape[-1]
    _, cache = d.step(np.random.default_rng(0).integers(1, vocab, (1, 128)), d.empty_cache(1))
    token = np.array([[vocab // 2]])
    for _ in range(10):
        d.step(token, cache)
    perf = subprocess.Popen(["perf", "record", "--call-graph", "dwarf,16384", "-F", str(SAMPLE_HZ), "-o", data,
                             "-p", str(os.getpid())], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    start = time.perf_counter()
    for _ in range(steps):
        d.step(token, cache)
    ms = (time.perf_counter() - start) / steps * 1e3
    perf.send_signal(signal.SIGINT)
    perf.wait()
    return ms


def samples(data: str):
    text = subprocess.run(["perf", "script", "-i", data, "-F", "tid,ip,sym,dso"], capture_output=True, text=True).stdout
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if len(lines) > 1:
            yield lines[0].split()[0], lines[1:]  # the thread, its frames (leaf first)


def bucket(frames: list[str]) -> tuple[str, str]:
    chain = " ".join(frames)
    op = re.search(r"DiOp\)(\d)", chain)
    where = OPS[int(op.group(1))] if op else "outside the DI ops"
    if "Gemm" in frames[0] or "Tile" in frames[0]:
        return where, "int8 GEMM"
    if any(k in chain for k in ("PrepareIntegerOp", "checks::", "ReadActivation")):
        return where, "inputs/outputs and checks"
    return where, "kernel" if op else "ORT, Python"


def frame_name(frame: str) -> str:
    """'ORT' for the stripped ORT library, else the library's short name and the function."""
    if "onnxruntime" in frame:
        return "ORT"
    name = re.sub(r"^\S+\s+", "", frame)
    name = re.sub(r"edgeq::(cpu::)?(\(anonymous namespace\)::)?", "", name)
    return re.sub(r"\s*\(/.*", "", name)[:60]


def checks_callers(frames: list[str]) -> tuple[str, str]:
    """Within the 'inputs/outputs and checks' bucket: the leaf and the innermost edgeq function above it."""
    caller = next((frame_name(f) for f in frames if "libedgeq" in f and "checks::Input" not in f
                   and "ConstValueImpl" not in f), "?")
    return frame_name(frames[0]), caller


def main(model: str, threads: int) -> None:
    callers = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        steps = int(os.environ.get("STEPS", 80))
        ms = record(model, threads, data, steps=steps)
        counts, per_thread = collections.Counter(), collections.Counter()
        for tid, frames in samples(data):
            where, kind = bucket(frames)
            counts[where, kind] += 1
            per_thread[tid, kind] += 1
            if kind == "inputs/outputs and checks":
                callers[checks_callers(frames)] += 1
    total = sum(counts.values())
    print(f"{model}: {ms:.2f} ms per decode step under perf, {threads} thread(s), {total} samples")
    by_kind = collections.Counter()
    for (where, kind), n in counts.items():
        by_kind[kind] += n
    print("| part | share of samples |\n|---|---:|")
    for kind, n in by_kind.most_common():
        print(f"| {kind} | {100 * n / total:.1f}% |")
    # Each thread's time per step by part: with two threads, how much of the second one works and how much waits
    # in ORT's pool.
    kinds = [k for k, _ in by_kind.most_common()]
    print("\n| thread | " + " | ".join(f"{k}, ms/step" for k in kinds) + " |\n|---|" + "---:|" * len(kinds))
    for tid in sorted({t for t, _ in per_thread}, key=lambda t: -sum(per_thread[t, k] for k in kinds)):
        print(f"| {tid} | " + " | ".join(f"{per_thread[tid, k] / SAMPLE_HZ / steps * 1e3:.2f}" for k in kinds) + " |")
    print("\n| op | share | of which |\n|---|---:|---|")
    per_op = collections.Counter()
    for (where, _), n in counts.items():
        per_op[where] += n
    for where, n in per_op.most_common():
        parts = ", ".join(f"{k} {100 * v / total:.1f}%" for (w, k), v in counts.most_common() if w == where)
        print(f"| {where} | {100 * n / total:.1f}% | {parts} |")
    print("\nInputs/outputs and checks, by leaf and calling edgeq function (ORT's own code is stripped):\n"
          "| leaf | under | share |\n|---|---|---:|")
    for (leaf, caller), n in callers.most_common(8):
        print(f"| {leaf} | {caller} | {100 * n / total:.2f}% |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
