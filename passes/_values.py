"""Small readers of constant values used by the rules' checks."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data when it is a constant that cannot change at run time (not an overridable input)."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def scalar(value: ir.Value | None) -> float | int | None:
    """The single element of a constant, or None."""
    array = const_array(value)
    if array is None or array.size != 1:
        return None
    return array.reshape(()).item()


def ints(value: ir.Value | None) -> list[int] | None:
    array = const_array(value)
    if array is None or array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return [int(v) for v in array.reshape(-1)]
