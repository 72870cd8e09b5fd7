"""`edgeq build-ops`: build (or rebuild) the edgeq op library now instead of on first use."""

from __future__ import annotations

import argparse

from edgeq.custom_ops import library


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``build-ops`` subcommand to an argparse ``subparsers`` object; its handler is ``args.func``."""
    parser = subparsers.add_parser(
        "build-ops", help="build the edgeq custom-op library for ONNX Runtime",
        description="Compile the edgeq op library into the build cache (a no-op when the cached build is current). "
                    "Headers: ORT_INCLUDE_DIR, the system include path, else libonnxruntime-dev from Debian.")
    parser.add_argument("--device", choices=library.DEVICES, default="cpu",
                        help="cpu: C++ kernels only; cuda: also the CUDA kernels (needs nvcc)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache holds this exact build")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    path = library.build(args.device, force=args.force)
    print(path)
    return 0
