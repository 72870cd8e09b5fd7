"""Benchmark of edgeq::SpQRMatMul against ORT's fp16 MatMul, com.microsoft.MatMulNBits (4-bit, block 128) and
edgeq::GroupQuantMatMul (4- and 3-bit, group 128), side by side in one run.

    python -m edgeq.custom_ops.bench_spqr --out spqr.md [--total-mb 256] [--prefill] [--fma]

SpQR as in the paper's LLaMA setting: 3-bit codes, β1 = β2 = 16, 3-bit first-level statistics, 1% outliers at
random rows and columns. Batch-1 decode (M = 1) over LLaMA-7B projection shapes (4096x4096, 4096x11008,
11008x4096), and with --prefill M = 512 at 4096x4096. The method is bench_group_quant's (its machinery is used
here): L copies of the op with their own weights per model (several times the L2), CUDA-graph replay with
device-resident inputs and outputs, median run time over L. GB/s counts every stored byte of the weight: for SpQR
codes, scale and zero codes, second-level statistics, row_ptr, cols and values.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.custom_ops import bench_group_quant as bench
from edgeq.custom_ops.schema import SPQR_MATMUL, opset_import

SPQR = dict(bits=3, group_size=16, stat_bits=3, stat_group_size=16)
OUTLIERS = 0.01


def spqr_weights(rng: np.random.Generator, K: int, N: int, bits: int, group_size: int, stat_bits: int,
                 stat_group_size: int, density: float) -> dict[str, np.ndarray]:
    """Random SpQR weight tensors (every code pattern is valid, so codes are random bytes); statistics keep s
    and z in the usual ranges; about density * N * K outliers at random rows and columns."""
    n_groups = math.ceil(K / group_size)
    stat_bytes = math.ceil(n_groups * stat_bits / 8)
    R = math.ceil(N / stat_group_size)
    smax = 2**stat_bits - 1
    stats = np.stack([rng.uniform(0.5, 2.0, (R, n_groups)) * 0.01 / smax, rng.uniform(-1.0, smax / 2, (R, n_groups)),
                      rng.uniform(0.5, 1.5, (R, n_groups)) * (2**bits - 1) / smax,
                      rng.uniform(0.0, smax / 2, (R, n_groups))], axis=-1).astype(np.float16)
    nnz = int(round(density * N * K))
    rows = np.sort(rng.integers(0, N, nnz))
    return {
        "codes": rng.integers(0, 256, (N, n_groups, group_size * bits // 8), dtype=np.uint8),
        "scale_codes": rng.integers(0, 256, (N, stat_bytes), dtype=np.uint8),
        "zero_codes": rng.integers(0, 256, (N, stat_bytes), dtype=np.uint8),
        "stats": stats,
        "row_ptr": np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=N))]).astype(np.int32),
        "cols": rng.integers(0, K, nnz).astype(np.uint16).view(np.int16),
        "values": (rng.standard_normal(nnz) * 0.01).astype(np.float16),
    }


def build_model(kind: str, K: int, N: int, M: int, copies: int, dtype, seed: int) -> tuple[onnx.ModelProto, int]:
    """bench_group_quant.build_model, plus kind "spqr": `copies` SpQRMatMul nodes with their own random weights."""
    if kind != "spqr":
        return bench.build_model(kind, K, N, M, copies, dtype, seed)
    rng = np.random.default_rng(seed)
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes, inits, outputs = [], [], []
    per_op = 0
    for i in range(copies):
        weights = spqr_weights(rng, K, N, density=OUTLIERS, **SPQR)
        inits += [numpy_helper.from_array(w, f"{name}{i}") for name, w in weights.items()]
        nodes.append(SPQR_MATMUL.make_node(["A", *(f"{name}{i}" for name in weights)], [f"Y{i}"], K=K, N=N, **SPQR))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", elem, [M, N]))
        per_op = sum(w.nbytes for w in weights.values())
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("A", elem, [M, K])], outputs,
                              initializer=inits)
    opsets = [helper.make_opsetid("", 17), opset_import()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9), per_op


KINDS = [("matmul", "fp16 MatMul"), ("nbits4", "MatMulNBits 4b g128"), ("gqmm4", "GroupQuantMatMul 4b g128"),
         ("gqmm3", "GroupQuantMatMul 3b g128"), ("spqr", "SpQRMatMul 3b b16/16 1% outliers")]


def run(out: Path | None, total_mb: int, repeats: int, prefill: bool, fma: bool) -> list[bench.Row]:
    from edgeq.custom_ops.library import get_library

    library = get_library("cuda")
    bandwidth = bench.device_copy_bandwidth()
    plan: bench.Plan = [(1, shape, kind, name, {}) for shape in bench.GPU_SHAPES for kind, name in KINDS]
    if fma:  # GroupQuantMatMul's FMA decode kernel (its float16 default before the tensor-core one)
        plan += [(1, shape, "gqmm4", "GroupQuantMatMul 4b g128 (decode, FMA)", {"EDGEQ_GQMM_KERNEL": "decode"})
                 for shape in bench.GPU_SHAPES]
    if prefill:
        plan += [(512, (4096, 4096), kind, name, {}) for kind, name in KINDS]
    rows = bench.measure(plan, "cuda", library, bandwidth, total_mb, repeats, None, build=build_model)
    bench.report(rows, "cuda", bandwidth, out)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench.argument_parser(__doc__, total_mb=512, total_mb_help="weight MiB per model (default 512)",
                                   repeats=30, with_cpu=False)
    parser.add_argument("--prefill", action="store_true", help="also M=512 at 4096x4096")
    parser.add_argument("--fma", action="store_true", help="also GroupQuantMatMul 4b pinned to the FMA decode kernel")
    args = parser.parse_args(argv)
    run(args.out, args.total_mb, args.repeats, args.prefill, args.fma)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
