"""Convert a float32 model to float16 except where half precision changes the result.

Kept in float32 (the "float32 islands"):
  * accumulations and functions of large arguments: Pow, ReduceMean/ReduceSum/ReduceSumSquare/ReduceL2,
    Sqrt, Reciprocal, Cos, Sin. The decomposed RMSNorm squares activations (x^2 overflows half above 256)
    and averages thousands of them; rotary tables take cos/sin of position * frequency, where a half
    position is off by whole units beyond 2048.
  * integer-derived floats: Cast(int -> float) and element-wise/shape ops fed only by islands and constants
    (position * inv_freq, eps additions, table scaling), so those chains keep full precision.
Fused norms (RMSNormalization, SimplifiedLayerNormalization, LayerNormalization) take half inputs and
accumulate in their ``stash_type``, which this pass pins to float32.

Every other float tensor becomes float16: initializers (clipped to +-65504, so a float32 "lowest" mask value
stays finite), Constant/ConstantOfShape values, Cast targets, and the types of the values between them. Casts
are inserted where an island meets half values (one per crossing value). The graph's float inputs and outputs
keep float32 unless ``io_dtype`` says otherwise ("float16" for all, or a {name: dtype} mapping).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

log = logging.getLogger(__name__)

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
KEEP_FLOAT32_OPS = frozenset(("Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Sqrt",
                              "Reciprocal", "Cos", "Sin"))
# Ops that carry an island's precision forward when all their float inputs are islands or constants.
PROPAGATING_OPS = frozenset(("Add", "Sub", "Mul", "Div", "Neg", "Unsqueeze", "Squeeze", "Reshape", "Concat",
                             "Expand", "Identity", "Transpose", "Slice"))
STASHED_NORMS = frozenset(("RMSNormalization", "SimplifiedLayerNormalization", "LayerNormalization"))
TYPE_AGNOSTIC_OPS = frozenset(("Cast", "Shape", "Size"))  # accept any input type; never need a Cast before
IO_DTYPES = {"float32": F32, "float16": F16}


def _is_onnx(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _to_half(tensor: ir.TensorProtocol, name: str | None) -> ir.Tensor:
    array = np.clip(tensor.numpy().astype(np.float32), -FP16_MAX, FP16_MAX).astype(np.float16)
    return ir.tensor(array, name=name)


def float32_islands(graph: ir.Graph, keep_ops: frozenset[str] = KEEP_FLOAT32_OPS) -> set[ir.Node]:
    """The nodes that must compute in float32 (see the module docstring)."""
    islands: set[ir.Node] = set()
    for node in graph:
        if not _is_onnx(node):
            continue
        if node.op_type in keep_ops and any(v is not None and v.dtype == F32 for v in node.outputs):
            islands.add(node)
        elif (node.op_type == "Cast" and node.attributes.get_int("to") == F32 and node.inputs[0] is not None
              and node.inputs[0].dtype is not None and not node.inputs[0].dtype.is_floating_point()):
            islands.add(node)
    changed = True
    while changed:
        changed = False
        for node in graph:
            if node in islands or not _is_onnx(node) or node.op_type not in PROPAGATING_OPS:
                continue
            floats = [v for v in node.inputs if v is not None and v.dtype == F32]
            from_island = [v for v in floats if v.producer() in islands]
            constants = [v for v in floats if v.producer() is None and v.const_value is not None and not v.is_graph_input()]
            if from_island and len(from_island) + len(constants) == len(floats):
                islands.add(node)
                changed = True
    return islands


class ConvertFloat16Pass(ir.passes.InPlacePass):
    """float32 -> float16 outside the float32 islands; graph I/O types chosen by ``io_dtype``."""

    def __init__(self, io_dtype: str | Mapping[str, str] = "float32", keep_ops: frozenset[str] = KEEP_FLOAT32_OPS):
        super().__init__()
        names = io_dtype.values() if isinstance(io_dtype, Mapping) else [io_dtype]
        for d in names:
            if d not in IO_DTYPES:
                raise ValueError(f"fp16 pass: I/O dtype must be one of {list(IO_DTYPES)}, got {d!r}")
        self.io_dtype = io_dtype
        self.keep_ops = frozenset(keep_ops)

    def _io_type(self, name: str) -> ir.DataType:
        if isinstance(self.io_dtype, Mapping):
            return IO_DTYPES[self.io_dtype.get(name, "float32")]
        return IO_DTYPES[self.io_dtype]

    def requires(self, model: ir.Model) -> None:
        untyped = [v.name for n in model.graph for v in n.outputs if v.dtype is None]
        if untyped:
            raise ir.passes.PreconditionError(
                f"fp16 pass needs every value's type; run shape inference first (untyped: {untyped[:3]})")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        islands = float32_islands(graph, self.keep_ops)
        modified = False

        # 1. Retype: every float32 value not computed by an island becomes half.
        for node in graph:
            if node in islands:
                continue
            if _is_onnx(node) and node.op_type == "Cast" and node.attributes.get_int("to") == F32:
                node.attributes["to"] = ir.AttrInt64("to", F16)
            if _is_onnx(node) and node.op_type in ("Constant", "ConstantOfShape") and "value" in node.attributes:
                t = node.attributes["value"].as_tensor()
                if t.dtype == F32:
                    node.attributes["value"] = ir.AttrTensor("value", _to_half(t, t.name))
            if node.op_type in STASHED_NORMS:
                node.attributes["stash_type"] = ir.AttrInt64("stash_type", F32)
            for v in node.outputs:
                if v.dtype == F32:
                    v.dtype = F16
                    modified = True
        for name, init in list(graph.initializers.items()):
            if init.dtype != F32 or init.is_graph_input():
                continue
            if init.uses() and all(user in islands for user, _ in init.uses()):
                continue
            init.const_value = _to_half(init.const_value, name)
            init.dtype = F16
            modified = True
        for v in graph.inputs:
            if v.dtype == F32 and self._io_type(v.name) == F16:
                v.dtype = F16
                modified = True

        # 2. Casts where float32 meets half (inputs of the graph and islands' outputs feeding half nodes, and
        #    half values feeding islands); one Cast per crossing value.
        casts: dict[tuple[int, ir.DataType], ir.Value] = {}

        def cast(value: ir.Value, to: ir.DataType, before: ir.Node) -> ir.Value:
            key = (id(value), to)
            if key not in casts:
                node = ir.node("Cast", [value], {"to": int(to)}, name=f"{value.name}/to_{to.name.lower()}")
                node.outputs[0].name = f"{value.name}/{to.name.lower()}"
                node.outputs[0].dtype = to
                node.outputs[0].shape = value.shape
                graph.insert_before(before, node)
                casts[key] = node.outputs[0]
            return casts[key]

        for node in list(graph):
            if node.op_type in TYPE_AGNOSTIC_OPS and _is_onnx(node):
                continue
            want = F32 if node in islands else F16
            for i, v in enumerate(node.inputs):
                if v is None or v.dtype not in (F32, F16) or v.dtype == want:
                    continue
                node.replace_input_with(i, cast(v, want, node))
                modified = True

        # 3. Graph outputs in the type asked for.
        for i, out in enumerate(list(graph.outputs)):
            if out.dtype not in (F32, F16):
                continue
            want = self._io_type(out.name)
            if out.dtype == want:
                continue
            name = out.name
            out.name = f"{name}/{out.dtype.name.lower()}"
            node = ir.node("Cast", [out], {"to": int(want)}, name=f"{name}/output_cast")
            node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = name, want, out.shape
            graph.append(node)
            graph.outputs[i] = node.outputs[0]
            modified = True

        past = [v for v in graph.inputs if v.name.startswith("past_key_values.")]
        if past and "edgeq.dtype" in model.metadata_props:
            model.metadata_props["edgeq.dtype"] = "float16" if past[0].dtype == F16 else "float32"
        log.info("fp16: %d float32 island node(s), %d cast(s) inserted", len(islands), len(casts))
        return ir.passes.PassResult(model, modified=modified)
