"""Where QuantLinear's CUDA path spends its time: per-kernel CUDA times (torch profiler over an ORT session) for the
kernels named on the command line (EDGEQ_QL_KERNEL values), and the bare cuBLAS int8 / fp16 GEMMs through torch
(event-timed single calls, launch overhead included), same shapes. On the GPU machine, after
`source custom_ops/device/setup.sh`:

    EDGEQ_PDL=0 python3 scripts/profile_quant_linear.py triton cublas
    KINDS=W4A4,W4A4-asym SHAPES=512x4096x4096,512x11008x4096 python3 scripts/profile_quant_linear.py triton
"""
import os, sys, statistics
import numpy as np, torch
import onnxruntime as ort
from edgeq.custom_ops.bench_quant_linear import build_model
from edgeq.custom_ops.library import get_library

def cuda_time(fn, reps=50):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) * 1e3)
    return statistics.median(ts)

lib = os.fspath(get_library("cuda"))
SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ.get("SHAPES", "512x4096x4096,512x11008x4096").split(",")]
KINDS = os.environ.get("KINDS", "W8A8,W4A4").split(",")
for M, K, N in SHAPES:
    a16 = torch.randn(M, K, device="cuda", dtype=torch.float16); w16 = torch.randn(N, K, device="cuda", dtype=torch.float16)
    a8 = torch.randint(-127, 127, (M, K), device="cuda", dtype=torch.int8); w8 = torch.randint(-127, 127, (N, K), device="cuda", dtype=torch.int8)
    t16 = cuda_time(lambda: a16 @ w16.t())
    t8 = cuda_time(lambda: torch._int_mm(a8, w8.t()))
    print(f"M={M} K={K} N={N}: torch fp16 {t16:.1f} us, torch._int_mm {t8:.1f} us", flush=True)
    for kernel in sys.argv[1:]:
        os.environ["EDGEQ_QL_KERNEL"] = kernel
        for kind in KINDS:
            model = build_model(kind, K, N, M, 1, np.float16, seed=1)
            opts = ort.SessionOptions(); opts.register_custom_ops_library(lib)
            s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
            b = s.io_binding()
            x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(0).standard_normal((M, K)).astype(np.float16), "cuda", 0)
            b.bind_ortvalue_input("A", x); b.bind_output("Y0", "cuda")
            for _ in range(5): s.run_with_iobinding(b)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(20): s.run_with_iobinding(b)
                torch.cuda.synchronize()
            for ev in prof.key_averages():
                if ev.device_type == torch.autograd.DeviceType.CUDA or getattr(ev, "self_device_time_total", 0) > 0:
                    print(f"   {kernel} {kind} {ev.key[:90]:90s} n={ev.count:3d} avg {ev.device_time_total / max(ev.count,1):8.1f} us", flush=True)
