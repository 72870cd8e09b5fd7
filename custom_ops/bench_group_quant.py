"""Benchmark of edgeq::GroupQuantMatMul against ORT's fp16/fp32 MatMul and com.microsoft.MatMulNBits.

    python -m edgeq.custom_ops.bench_group_quant --device cuda --out results.md
    python -m edgeq.custom_ops.bench_group_quant --device cpu

Batch-1 decode (M=1) over LLaMA-7B projection shapes (K x N = 4096x4096, 4096x11008, 11008x4096; on the CPU the
same shapes halved). Every op is timed inside ORT: each model holds L copies of the op with their own weights
(together several times the GPU's L2), all fed the same activation, and on CUDA the run is one CUDA-graph replay
with device-resident inputs and outputs, so launch overheads are out and the weights come from DRAM. Reported:
time per call, GB/s of weight bytes (codes + scales + zero points), and on CUDA the percentage of the measured
device-to-device copy bandwidth (bytes read + written). On CUDA the time per call is the slope between a replay of
L copies and one of about L/4 copies, so that the replay's own fixed overhead is not spread over the ops; the
replay's time over L is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops.packing import pack_codes
from edgeq.custom_ops.schema import GROUP_QUANT_MATMUL, opset_import

GPU_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
CPU_SHAPES = [(2048, 2048), (2048, 5504), (5504, 2048)]


@dataclass
class Row:
    shape: str
    M: int
    op: str
    copies: int
    us_per_call: float
    weight_bytes: int
    gbps: float
    pct_bandwidth: float | None
    mode: str
    replay_us: float | None = None  # cuda: the L-copy replay's time over L (per-replay overhead included)


def _rng_bytes(rng, shape, high):
    return rng.integers(0, high, shape, dtype=np.uint8)


def build_model(kind: str, K: int, N: int, M: int, copies: int, dtype, seed: int) -> tuple[onnx.ModelProto, int]:
    """A model with `copies` independent ops of `kind` on one input A [M, K]; returns it and weight bytes per op."""
    rng = np.random.default_rng(seed)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes, inits, outputs = [], [], []
    per_op = 0
    for i in range(copies):
        y = f"Y{i}"
        if kind == "matmul":
            w = (rng.standard_normal((K, N), dtype=np.float32) * 0.02).astype(dtype)
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            nodes.append(helper.make_node("MatMul", ["A", f"W{i}"], [y]))
            per_op = w.nbytes
        elif kind == "nbits4":
            group = 128
            n_groups = math.ceil(K / group)
            B = _rng_bytes(rng, (N, n_groups, group // 2), 256)
            scales = (rng.random(N * n_groups, dtype=np.float32) * 0.01).astype(dtype)
            zp = _rng_bytes(rng, (N * math.ceil(n_groups / 2),), 256)
            inits += [numpy_helper.from_array(B, f"B{i}"), numpy_helper.from_array(scales, f"S{i}"),
                      numpy_helper.from_array(zp, f"Z{i}")]
            nodes.append(helper.make_node("MatMulNBits", ["A", f"B{i}", f"S{i}", f"Z{i}"], [y], domain="com.microsoft",
                                          K=K, N=N, bits=4, block_size=group, accuracy_level=0))
            per_op = B.nbytes + scales.nbytes + zp.nbytes
        else:  # gqmm<bits>
            bits, group = int(kind[4:]), 128
            n_groups = math.ceil(K / group)
            if i == 0:
                codes = _rng_bytes(rng, (N, K), 2**bits)
                first = pack_codes(codes, bits, group)
            # Copies get fresh random bytes: the same content in every copy would still be separate buffers,
            # but fresh bytes rule out any cleverness downstream.
            B = first if i == 0 else _rng_bytes(rng, first.shape, 256)
            scales = (rng.random((N, n_groups), dtype=np.float32) * 0.01).astype(dtype)
            zp = _rng_bytes(rng, (N, n_groups), 2**bits)
            inits += [numpy_helper.from_array(B, f"B{i}"), numpy_helper.from_array(scales, f"S{i}"),
                      numpy_helper.from_array(zp, f"Z{i}")]
            nodes.append(GROUP_QUANT_MATMUL.make_node(["A", f"B{i}", f"S{i}", f"Z{i}"], [y], K=K, N=N, bits=bits,
                                                      group_size=group))
            per_op = B.nbytes + scales.nbytes + zp.nbytes
        outputs.append(helper.make_tensor_value_info(y, elem, [M, N]))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("A", elem, [M, K])], outputs,
                              initializer=inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1), opset_import()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9), per_op


def device_copy_bandwidth() -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written (torch, events, median)."""
    import torch

    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times) / 1e9


def time_model(model: onnx.ModelProto, device: str, library: Path, M: int, K: int, dtype, repeats: int,
               threads: int | None) -> tuple[float, str]:
    """Median seconds of one run of the whole model, and the mode it ran in."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(os.fspath(library))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        opts.intra_op_num_threads = threads
    a_host = np.random.default_rng(0).standard_normal((M, K)).astype(dtype)
    blob = model.SerializeToString()
    if device == "cpu":
        s = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        for _ in range(3):
            s.run(None, {"A": a_host})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            s.run(None, {"A": a_host})
            times.append(time.perf_counter() - t0)
        return statistics.median(times), "cpu"
    for graph in ("1", "0"):
        try:
            s = ort.InferenceSession(blob, opts, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": graph}),
                                                            "CPUExecutionProvider"])
            binding = s.io_binding()
            a = ort.OrtValue.ortvalue_from_numpy(a_host, "cuda", 0)
            binding.bind_ortvalue_input("A", a)
            outs = []
            for o in s.get_outputs():
                outs.append(ort.OrtValue.ortvalue_from_shape_and_type(o.shape, dtype, "cuda", 0))
                binding.bind_ortvalue_output(o.name, outs[-1])
            for _ in range(3):
                s.run_with_iobinding(binding)
            binding.synchronize_outputs()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run_with_iobinding(binding)
                binding.synchronize_outputs()
                times.append(time.perf_counter() - t0)
            return statistics.median(times), "cuda-graph" if graph == "1" else "cuda"
        except Exception as e:  # a provider that cannot capture still gives a number, marked as such
            if graph == "0":
                raise
            print(f"  (CUDA graph capture failed: {str(e).splitlines()[0][:200]}; timing without)")
    raise AssertionError("unreachable")


KERNEL_VARIABLES = ("EDGEQ_GQMM_KERNEL", "EDGEQ_SPQR_KERNEL")

# One measurement: (M, (K, N), kind for the model builder, name in the table, kernel pins {variable: kernel}).
Plan = list[tuple[int, tuple[int, int], str, str, dict[str, str]]]


def measure(plan: Plan, device: str, library: Path, bandwidth: float | None, total_mb: int, repeats: int,
            threads: int | None, build=build_model) -> list[Row]:
    """Times every entry of ``plan``; ``build(kind, K, N, M, copies, dtype, seed)`` returns (model, bytes per op)."""
    dtype = np.float16 if device == "cuda" else np.float32
    rows = []
    for M, (K, N), kind, name, pins in plan:
        # The kernel variables are read when a session is created: they pin one CUDA kernel for this model.
        for variable in KERNEL_VARIABLES:
            os.environ.pop(variable, None)
        os.environ.update(pins)
        _, per_op = build(kind, K, N, M, 1, dtype, seed=0)
        copies = max(2, min(64, math.ceil(total_mb * 2**20 / per_op)))
        model, per_op = build(kind, K, N, M, copies, dtype, seed=1)
        seconds, mode = time_model(model, device, library, M, K, dtype, repeats, threads)
        per_call = replay = seconds / copies
        if device == "cuda":
            # A replay costs a fixed host/launch overhead besides its L ops (tens of µs: several µs per op at
            # L = 12). The per-call time is the slope between L and a quarter as many copies (both beyond L2).
            few = max(1, min(copies - 1, math.ceil(total_mb / 4 * 2**20 / per_op)))
            model, _ = build(kind, K, N, M, few, dtype, seed=2)
            seconds_few, _ = time_model(model, device, library, M, K, dtype, repeats, threads)
            per_call = (seconds - seconds_few) / (copies - few)
        gbps = per_op / per_call / 1e9
        row = Row(f"{K}x{N}", M, name, copies, per_call * 1e6, per_op, gbps,
                  100 * gbps / bandwidth if bandwidth else None, mode,
                  replay * 1e6 if device == "cuda" else None)
        rows.append(row)
        print(f"  {row.shape:>11} M={M:<4} {name:<40} {row.us_per_call:9.2f} us"
              + (f" (replay/L {row.replay_us:.2f})" if row.replay_us is not None else "") + f"  {gbps:8.1f} GB/s"
              + (f"  {row.pct_bandwidth:5.1f}%" if bandwidth else "") + f"  [{copies} copies, {mode}]", flush=True)
    for variable in KERNEL_VARIABLES:
        os.environ.pop(variable, None)
    return rows


def emit(table: str, out: Path | None, record: dict) -> None:
    """Prints the markdown ``table``; with ``out``, writes it there and ``record`` as JSON beside it (.json)."""
    print(table)
    if out is not None:
        out.write_text(table)
        out.with_suffix(".json").write_text(json.dumps(record, indent=1))


def report(rows: list[Row], device: str, bandwidth: float | None, out: Path | None) -> str:
    """Prints the markdown table and writes it (and a .json beside it) to ``out``."""
    table = format_table(rows, device, bandwidth)
    emit(table, out, {"device": device, "bandwidth_gbps": bandwidth, "rows": [asdict(r) for r in rows]})
    return table


def run(device: str, out: Path | None, total_mb: int, repeats: int, threads: int | None, prefill: bool,
        kernels: tuple[str, ...] = ("decode",)) -> list[Row]:
    from edgeq.custom_ops.library import get_library

    library = get_library(device)
    bandwidth = device_copy_bandwidth() if device == "cuda" else None
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    dense = "fp16 MatMul" if device == "cuda" else "fp32 MatMul"
    kinds = [("matmul", dense), ("nbits4", "MatMulNBits 4b g128"), ("gqmm4", "GroupQuantMatMul 4b g128"),
             ("gqmm3", "GroupQuantMatMul 3b g128")]
    plan: Plan = [(1, shape, kind, name, {}) for shape in shapes for kind, name in kinds]
    if device == "cuda":  # GroupQuantMatMul pinned to each of `kernels` (EDGEQ_GQMM_KERNEL), beside the automatic choice
        plan += [(1, shape, kind, f"{name} ({kernel})", {"EDGEQ_GQMM_KERNEL": kernel})
                 for shape in shapes for kernel in kernels for kind, name in kinds[2:]]
    if prefill and device == "cuda":
        plan += [(512, (4096, 4096), kind, name, {}) for kind, name in kinds]
    rows = measure(plan, device, library, bandwidth, total_mb, repeats, threads)
    report(rows, device, bandwidth, out)
    return rows


def machine_description(device: str) -> str:
    if device == "cuda":
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            name = "unknown GPU"
        return name
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def format_table(rows: list[Row], device: str, bandwidth: float | None) -> str:
    """Markdown table; "x dense" is the dense MatMul's time (same shape and M, same run) over the row's."""
    import onnxruntime as ort

    dense = {(r.shape, r.M): r.us_per_call for r in rows if r.op.endswith(" MatMul")}
    lines = [f"device: {machine_description(device)}; onnxruntime {ort.__version__}"]
    if bandwidth:
        lines.append(f"measured device-to-device copy bandwidth: {bandwidth:.0f} GB/s (read + write)")
    if any(r.replay_us is not None for r in rows):
        lines.append("us/call: the slope between replays of L and about L/4 copies; replay/L: one replay over L")
    lines += ["", "| K x N | M | op | us/call | weight GB/s | % of copy bw | x dense | copies | mode | replay/L us |",
              "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        pct = f"{r.pct_bandwidth:.1f}" if r.pct_bandwidth is not None else "-"
        base = dense.get((r.shape, r.M))
        speedup = f"{base / r.us_per_call:.2f}" if base else "-"
        replay = f"{r.replay_us:.2f}" if r.replay_us is not None else "-"
        lines.append(f"| {r.shape} | {r.M} | {r.op} | {r.us_per_call:.2f} | {r.gbps:.1f} | {pct} | {speedup} | "
                     f"{r.copies} | {r.mode} | {replay} |")
    return "\n".join(lines) + "\n"


def argument_parser(doc: str, *, total_mb: int | None, total_mb_help: str, repeats: int,
                    with_cpu: bool = True) -> argparse.ArgumentParser:
    """The options the op benchmarks share, in this order: --device (only ``with_cpu``; else CUDA only), --out,
    --total-mb, --repeats, --threads (only ``with_cpu``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if with_cpu:
        parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--out", type=Path, help="write the markdown table here (and a .json beside it)")
    parser.add_argument("--total-mb", type=int, default=total_mb, help=total_mb_help)
    parser.add_argument("--repeats", type=int, default=repeats)
    if with_cpu:
        parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, total_mb=None, repeats=30, total_mb_help="weight MiB per model, copies of "
                             "the op filling it (default: 512 cuda, 64 cpu)")
    parser.add_argument("--prefill", action="store_true", help="also M=512 at 4096x4096 (cuda)")
    parser.add_argument("--kernels", nargs="*", default=["decode"],
                        help="cuda: also time GroupQuantMatMul pinned to these kernels (EDGEQ_GQMM_KERNEL names)")
    args = parser.parse_args(argv)
    total = args.total_mb or (512 if args.device == "cuda" else 64)
    run(args.device, args.out, total, args.repeats, args.threads, args.prefill, tuple(args.kernels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
