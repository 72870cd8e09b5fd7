"""ONNX Runtime sessions for edgeq models: providers, the edgeq op library, and exact-by-default settings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx

from edgeq.errors import EdgeqError

log = logging.getLogger(__name__)

EDGEQ_DOMAIN = "edgeq"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def check_model_file(path: str | Path) -> Path:
    """Refuse a missing, non-ONNX or truncated file, or external data outside the model's folder, before ORT sees it."""
    load_checked(path)
    return Path(path)


def load_checked(path: str | Path) -> onnx.ModelProto:
    """``check_model_file``'s checks; returns the model without its external data, for callers that inspect it."""
    path = Path(path)
    if not path.is_file():
        raise EdgeqError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EdgeqError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
    if not model.graph.node:
        raise EdgeqError(f"{path}: ONNX model has no nodes (truncated or not an ONNX file)")
    folder = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise EdgeqError(f"{path}: initializer {tensor.name} is external but names no location")
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise EdgeqError(f"{path}: external data path '{location}' escapes the model's folder")
        if not target.is_file():
            raise EdgeqError(f"{path}: external data file '{location}' is missing")
    return model


def uses_edgeq_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain == EDGEQ_DOMAIN for n in model.graph.node)


def make_session(path: str | Path, device: str = "cpu", threads: int | None = None, fast_int8_activations: bool = False,
                 profile_prefix: str | None = None):
    """An ``InferenceSession`` for ``path``; the edgeq op library is registered when the graph uses edgeq ops.

    fast_int8_activations: let ORT fuse DequantizeLinear+MatMul into MatMulNBits with int8 activations
    (accuracy level 4). Off by default so ORT computes what PyTorch computes.
    profile_prefix: turn ORT's profiler on, its JSON going to ``<prefix>_<date>.json`` (``end_profiling``).
    """
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise EdgeqError(f"device must be one of {list(PROVIDERS)}, got {device}")
    model = load_checked(path)
    path = Path(path)
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise EdgeqError("device 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider; this onnxruntime has none")
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4" if fast_int8_activations else "0")
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if uses_edgeq_ops(model):
        from edgeq.custom_ops.library import get_library

        opts.register_custom_ops_library(os.fspath(get_library(device)))
    try:
        return ort.InferenceSession(os.fspath(path), opts, providers=PROVIDERS[device])
    except Exception as e:
        raise EdgeqError(f"{path}: ONNX Runtime refused the model: {e}") from e
