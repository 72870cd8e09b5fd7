"""Writing an ONNX model to disk, with its weights in an external data file when it would pass protobuf's 2 GB."""

from __future__ import annotations

from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2**31 - 1
# Headroom for the graph itself: a model whose initializers come this close goes external.
EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> Path:
    """Save and check ``model``; ``external=None`` chooses external data only when the model needs it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        external = initializer_bytes(model) > EXTERNAL_THRESHOLD
    data_file = path.with_name(path.name + ".data")
    if data_file.exists():
        data_file.unlink()  # onnx appends to an existing data file
    if external:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=1024)
    else:
        onnx.save_model(model, path)
    onnx.checker.check_model(str(path), full_check=False)
    return path
