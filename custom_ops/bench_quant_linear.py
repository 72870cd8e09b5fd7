"""Benchmark of edgeq::QuantLinear (W8A8, W4A4; symmetric and with OmniQuant's zero offsets) against ORT's dense MatMul,
side by side in one run.

    python -m edgeq.custom_ops.bench_quant_linear --device cuda --out results.md     # H100: fp16 MatMul
    python -m edgeq.custom_ops.bench_quant_linear --device cpu --threads 2           # CPU: fp32 MatMul

LLaMA-7B projection shapes (K x N = 4096x4096, 4096x11008, 11008x4096; on the CPU 2048x2048, 2048x5504,
5504x2048) at M = 1, 8, 64, 512, 2048 tokens (CPU: 1 and 128). Every op is timed inside ORT the way
bench_group_quant times it: a model holds several copies of the op with their own weights (together well
over the GPU's L2 while M is small), all fed one activation A, and on CUDA one run is a CUDA-graph replay with
device-resident inputs and outputs. QuantLinear's time includes its per-token quantization of A. Reported:
microseconds per op, effective TOPS (2*M*N*K / time) and the speedup over the dense MatMul of the same run.
EDGEQ_QL_KERNEL pins one CUDA kernel (``--kernel``) to compare tiles.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.bench_group_quant import argument_parser, emit, machine_description, time_model
from edgeq.custom_ops.schema import QUANT_LINEAR, opset_import

GPU_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
CPU_SHAPES = [(2048, 2048), (2048, 5504), (5504, 2048)]
GPU_M = (1, 8, 64, 512, 2048)
CPU_M = (1, 128)
# (wbits, abits, asymmetric): "-asym" is OmniQuant's default, zero offsets per channel and per token (act_sym=0)
KINDS = {"matmul": None, "W8A8": (8, 8, False), "W4A4": (4, 4, False), "W8A8-asym": (8, 8, True),
         "W4A4-asym": (4, 4, True)}


@dataclass
class Row:
    shape: str
    M: int
    op: str
    copies: int
    us_per_call: float
    tops: float
    speedup: float | None  # dense MatMul time / this op's time, same shape and M
    mode: str


def weights(kind: str, K: int, N: int, dtype, rng: np.random.Generator) -> list[np.ndarray]:
    if kind == "matmul":
        return [((rng.random((K, N), dtype=np.float32) - 0.5) * 0.04).astype(dtype)]
    wbits, _, asym = KINDS[kind]
    row_bytes = (K + 1) // 2 if wbits <= 4 else K
    # Random bytes are valid weights of either width: two nibbles, or one int8 in the full 8-bit range.
    B = np.frombuffer(rng.bytes(N * row_bytes), np.int8).reshape(N, row_bytes)
    out = [B, (rng.random(N, dtype=np.float32) * 0.01 + 0.001).astype(dtype)]
    if asym:
        lo = -(1 << (wbits - 1))
        out += [rng.integers(lo, -lo, N).astype(np.int8), rng.integers(-1000, 1000, N).astype(np.int32)]
    return out


def build_model(kind: str, K: int, N: int, M: int, copies: int, dtype, seed: int) -> onnx.ModelProto:
    """`copies` independent ops of `kind` on one input A [M, K], each with weights of its own."""
    rng = np.random.default_rng(seed)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes, inits, outputs = [], [], []
    for i in range(copies):
        arrays = weights(kind, K, N, dtype, rng)
        names = [f"W{i}_{j}" for j in range(len(arrays))]
        inits += [numpy_helper.from_array(a, n) for a, n in zip(arrays, names)]
        if kind == "matmul":
            nodes.append(helper.make_node("MatMul", ["A", *names], [f"Y{i}"]))
        else:
            wbits, abits, asym = KINDS[kind]
            nodes.append(QUANT_LINEAR.make_node(["A", *names], [f"Y{i}"], K=K, N=N, wbits=wbits, abits=abits,
                                                **({"act_sym": 0} if asym else {})))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", elem, [M, N]))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("A", elem, [M, K])], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), opset_import()], ir_version=9)


def weight_bytes(kind: str, K: int, N: int, dtype) -> int:
    return sum(a.nbytes for a in weights(kind, 16, 16, dtype, np.random.default_rng(0))) * K * N // 256


def copies_for(kind: str, K: int, N: int, M: int, dtype, total_mb: int) -> int:
    """Enough copies that the weights of one run exceed the cache (while M is small, weights are the traffic);
    at large M the op is compute-bound and three copies average the launch edges away."""
    if M >= 512:
        return 3
    return max(2, min(32, math.ceil(total_mb * 2**20 / weight_bytes(kind, K, N, dtype))))


def run(device: str, out: Path | None, total_mb: int, repeats: int, threads: int | None, kernel: str | None,
        ms: tuple[int, ...] | None, kinds: tuple[str, ...] = tuple(KINDS)) -> list[Row]:
    from edgeq.custom_ops.library import get_library

    library = get_library(device)
    if kernel:
        os.environ["EDGEQ_QL_KERNEL"] = kernel  # read at session creation
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    dtype = np.float16 if device == "cuda" else np.float32
    dense = "fp16 MatMul" if device == "cuda" else "fp32 MatMul"
    rows = []
    for K, N in shapes:
        for M in ms or (GPU_M if device == "cuda" else CPU_M):
            base = None
            for kind in kinds:
                copies = copies_for(kind, K, N, M, dtype, total_mb)
                model = build_model(kind, K, N, M, copies, dtype, seed=K + N + M)
                seconds, mode = time_model(model, device, library, M, K, dtype, repeats, threads)
                per_call = seconds / copies
                base = per_call if kind == "matmul" else base
                name = dense if kind == "matmul" else f"QuantLinear {kind}" + (f" ({kernel})" if kernel else "")
                row = Row(f"{K}x{N}", M, name, copies, per_call * 1e6, 2 * M * N * K / per_call / 1e12,
                          base / per_call if kind != "matmul" and base else None, mode)
                rows.append(row)
                print(f"  {row.shape:>11} M={M:<5} {name:<24} {row.us_per_call:10.2f} us {row.tops:8.3g} TOPS"
                      + (f"  x{row.speedup:.2f}" if row.speedup else "") + f"  [{copies} copies, {mode}]", flush=True)
    emit(format_table(rows, device, threads), out, {"device": device, "rows": [asdict(r) for r in rows]})
    return rows


def format_table(rows: list[Row], device: str, threads: int | None) -> str:
    import onnxruntime as ort

    dense = "fp16 MatMul" if device == "cuda" else "fp32 MatMul"
    lines = [f"device: {machine_description(device)}; onnxruntime {ort.__version__}"
             + (f"; {threads} intra-op threads" if threads else ""), "",
             ""]
    kinds = [k for k in KINDS if k != "matmul" and any(r.op.split(" (")[0] == f"QuantLinear {k}" for r in rows)]
    lines[-1] = (f"| K x N | M | {dense} us | " + " | ".join(f"{k} us | {k} speedup" for k in kinds) + " | "
                 + " | ".join(f"{k} TOPS" for k in kinds) + " |")
    lines.append("|---|---:|---:|" + "---:|" * (3 * len(kinds)))
    by_key: dict[tuple[str, int], dict[str, Row]] = {}
    for r in rows:
        by_key.setdefault((r.shape, r.M), {})[r.op.split(" (")[0]] = r
    for (shape, M), ops in by_key.items():
        d = ops.get(dense)
        ql = [ops.get(f"QuantLinear {k}") for k in kinds]
        cell = lambda r, f: f(r) if r else "-"  # noqa: E731
        lines.append(f"| {shape} | {M} | {cell(d, lambda r: f'{r.us_per_call:.1f}')} | "
                     + " | ".join(f"{cell(r, lambda r: f'{r.us_per_call:.1f}')} | "
                                  f"{cell(r and r.speedup and r, lambda r: f'{r.speedup:.2f}x')}" for r in ql)
                     + " | " + " | ".join(cell(r, lambda r: f"{r.tops:.3g}") for r in ql) + " |")
    modes = sorted({r.mode for r in rows})
    lines.append("")
    lines.append(f"timing mode: {', '.join(modes)}; copies per model: {sorted({r.copies for r in rows})}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, total_mb=None, repeats=20,
                             total_mb_help="weight MiB per model at M < 512 (default: 160 cuda, 48 cpu)")
    parser.add_argument("--kernel", default=None, help="EDGEQ_QL_KERNEL for the QuantLinear models (cuda)")
    parser.add_argument("--m", type=int, nargs="*", default=None, help="token counts (default: 1 8 64 512 2048 / 1 128)")
    parser.add_argument("--ops", nargs="*", choices=list(KINDS), default=list(KINDS),
                        help="which ops to time (default: all; speedups need 'matmul')")
    args = parser.parse_args(argv)
    total = args.total_mb or (160 if args.device == "cuda" else 48)
    run(args.device, args.out, total, args.repeats, args.threads, args.kernel, tuple(args.m) if args.m else None,
        tuple(args.ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
