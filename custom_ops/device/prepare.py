"""Builds the CUDA op library here and stages it in .opsbuild/ for the GPU machine (which cannot build it).

    python -m edgeq.custom_ops.device.prepare [--force]

Writes .opsbuild/libedgeq_ops_cuda.so.xz (sm_90 only, stripped and xz-compressed, to fit the 64 MiB a device call
carries beside the 58 MiB ORT-GPU bundle; check.sh unpacks it) and .opsbuild/COMMIT (the commit and whether the
tree was dirty, for the results table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from edgeq.custom_ops import library

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--dest", type=Path, default=ROOT / ".opsbuild")
    args = parser.parse_args(argv)
    # Hopper machine code only (plus its PTX): the full sm_80+sm_90 build does not fit beside the 58 MiB ORT-GPU
    # bundle in one call's 64 MiB.
    os.environ.setdefault("EDGEQ_CUDA_ARCHS", "90")
    built = library.build("cuda", force=args.force)
    args.dest.mkdir(parents=True, exist_ok=True)
    target = args.dest / "libedgeq_ops_cuda.so"
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", "-o", str(target), str(built)], check=True)
    else:
        shutil.copy2(built, target)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
