"""``export``: a loaded (possibly quantized) model to a deployable folder: ``model.onnx`` + its tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import onnx

from edgeq.exporter.llama_graph import build_decoder_model
from edgeq.exporter.save import save_model

log = logging.getLogger(__name__)


def export(model, tokenizer, out_path: str | Path, dtype: str = "float32", external: bool | None = None,
           transform: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None) -> Path:
    """Build, optionally ``transform`` (the passes, handed in by the caller), check and save."""
    out_path = Path(out_path)
    proto = build_decoder_model(model, dtype)
    if transform is not None:
        proto = transform(proto)
    save_model(proto, out_path, external)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_path.parent)
    log.info("exported %s (%d nodes)", out_path, len(proto.graph.node))
    return out_path
