"""Builds the CUDA op library here and stages it in .opsbuild/ for the GPU machine (which cannot build it).

    python -m edgeq.custom_ops.device.prepare [--force]

With Triton installed here (`pip install -e .[cuda-build]`) the build includes QuantLinear's Triton GEMM.

Writes .opsbuild/libedgeq_ops_cuda.so.xz (sm_90 only, stripped, its embedded PTX zeroed, xz-compressed, to fit the
64 MiB a device call carries beside the 58 MiB ORT-GPU bundle; check.sh unpacks it) and .opsbuild/COMMIT (the commit
and whether the tree was dirty, for the results table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
from pathlib import Path

from edgeq.custom_ops import library, triton_quant_linear

ROOT = Path(__file__).resolve().parents[2]


FATBIN_MAGIC = 0xBA55ED50
FATBIN_PTX = 1


def zero_ptx(path: Path) -> int:
    """Zero the payload of every PTX entry in the ELF's .nv_fatbin section, in place; returns the bytes zeroed.

    The carried build holds sm_90 machine code, which the driver loads on the H100/H200 without looking at the
    PTX; zeroed, the PTX (a sixth of the library) compresses to nothing. Entry headers stay, so the containers
    still parse.
    """
    data = bytearray(path.read_bytes())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    fatbin = next((h for h in headers if data[names + h[0]:data.index(b"\0", names + h[0])] == b".nv_fatbin"), None)
    if fatbin is None:
        return 0
    p, end, zeroed = fatbin[4], fatbin[4] + fatbin[5], 0
    while p + 16 <= end:
        magic, _, header_size, body_size = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:
            p += 8
            continue
        q, body_end = p + header_size, p + header_size + body_size
        while q < body_end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, q)
            if kind == FATBIN_PTX:
                data[q + entry_header:q + entry_header + payload] = bytes(payload)
                zeroed += payload
            q += entry_header + payload
        p = (body_end + 7) & ~7
    path.write_bytes(data)
    return zeroed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--dest", type=Path, default=ROOT / ".opsbuild")
    args = parser.parse_args(argv)
    # Hopper machine code only (plus its PTX): the full sm_80+sm_90 build does not fit beside the 58 MiB ORT-GPU
    # bundle in one call's 64 MiB.
    os.environ.setdefault("EDGEQ_CUDA_ARCHS", "90")
    os.environ.setdefault("EDGEQ_CUDA_LINEINFO", "0")  # line tables were 3/4 of the carried xz (4.6 -> 1.3 MiB); 1 for ncu source views
    built = library.build("cuda", force=args.force)
    args.dest.mkdir(parents=True, exist_ok=True)
    target = args.dest / "libedgeq_ops_cuda.so"
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", "-o", str(target), str(built)], check=True)
    else:
        shutil.copy2(built, target)
    zero_ptx(target)
    packed = target.with_name(target.name + ".xz")
    with open(packed, "wb") as out:
        subprocess.run(["xz", "-9e", "-c", str(target)], stdout=out, check=True)
    target.unlink()
    target = packed
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "custom_ops"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    (args.dest / "COMMIT").write_text(f"{commit}{' (custom_ops modified)' if dirty else ''}\n")
    print(target, f"{target.stat().st_size / 2**20:.1f} MiB")
    triton = triton_quant_linear.triton_version()
    print(f"QuantLinear's Triton GEMM: {'included (Triton ' + triton + ')' if triton else 'left out (no Triton here)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
