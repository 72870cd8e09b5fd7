"""Named passes run in order, with shape inference and ``onnx.checker`` after each, and a report of what changed.

    result = run_pipeline(model, ["matmul-nbits", "group-quant", "fold", "dead"])
    print(result.format())        # per pass: nodes removed/added by op type, initializer bytes before/after
    onnx_model = result.to_proto()

``default_pipeline`` is what the main job applies after export. The fusions are behind ``fusions=True``
until they are proven on every supported model. A failing pass, or a pass that leaves a model that does
not type-check, raises ``EdgeqError`` naming the pass.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

import edgeq.custom_ops  # noqa: F401  (registers the edgeq op schemas with onnx: checker and shape inference)
from edgeq.errors import EdgeqError
from edgeq.passes.catalog import DEFAULT_PASSES, FUSION_PASSES, INTEGER_ONLY_PASSES, PASSES, PassSpec, PipelineOptions

__all__ = ["DEFAULT_PASSES", "FUSION_PASSES", "INTEGER_ONLY_PASSES", "PASSES", "PassSpec", "PipelineOptions", "PassReport",
           "PipelineResult", "run_pipeline", "default_pipeline", "infer_shapes", "check"]

log = logging.getLogger(__name__)


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def op_histogram(model: ir.Model) -> Counter:
    """Nodes of the main graph by op type (custom domains spelled ``domain::Op``)."""
    return Counter(_op_key(n) for n in model.graph)


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


@dataclass
class PassReport:
    name: str
    modified: bool
    seconds: float
    nodes_before: Counter
    nodes_after: Counter
    bytes_before: int
    bytes_after: int

    @property
    def removed(self) -> dict[str, int]:
        return dict(sorted((self.nodes_before - self.nodes_after).items()))

    @property
    def added(self) -> dict[str, int]:
        return dict(sorted((self.nodes_after - self.nodes_before).items()))

    def format(self) -> str:
        head = (f"{self.name}: {'modified' if self.modified else 'unchanged'}, "
                f"{sum(self.nodes_before.values())} -> {sum(self.nodes_after.values())} nodes, "
                f"initializers {_mib(self.bytes_before)} -> {_mib(self.bytes_after)}, {self.seconds:.2f} s")
        lines = [head]
        if self.removed:
            lines.append("  removed: " + ", ".join(f"{k} x{v}" for k, v in self.removed.items()))
        if self.added:
            lines.append("  added:   " + ", ".join(f"{k} x{v}" for k, v in self.added.items()))
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass
class PipelineResult:
    model: ir.Model
    reports: list[PassReport] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.reports)

    def report(self, name: str) -> PassReport:
        return next(r for r in self.reports if r.name == name)

    def format(self) -> str:
        return "\n".join(r.format() for r in self.reports)

    def to_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)


def infer_shapes(model: ir.Model, where: str) -> None:
    """onnx shape inference in strict mode, merged into the IR; an inconsistency raises naming ``where``."""
    from onnx_ir.passes.common import _c_api_utils  # lends onnx the model without its weights' bytes

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)

    try:
        inferred = ir.from_proto(_c_api_utils.call_onnx_api(infer, model))
    except Exception as e:
        raise EdgeqError(f"{where}: shape inference failed: {_first_line(e)}") from e
    known = ir.convenience.create_value_mapping(inferred.graph)
    for name, value in ir.convenience.create_value_mapping(model.graph).items():
        found = known.get(name)
        if found is None:
            continue
        # Fill gaps only: what the IR already knows (graph I/O's named dims, shapes carried over by
        # rewrites) is at least as precise as onnx's answer, which invents names like "unk__3".
        if found.dtype is not None and value.dtype is None:
            value.dtype = found.dtype
        if found.shape is not None and value.shape is None:
            value.shape = found.shape


def check(model: ir.Model, where: str) -> None:
    try:
        common_passes.CheckerPass(full_check=False)(model)
    except Exception as e:
        cause = e.__cause__ or e
        raise EdgeqError(f"{where}: onnx.checker refused the model: {_first_line(cause)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _keep_declared_output_shapes(model: ir.Model, declared: dict[str, ir.Shape]) -> None:
    """Removing an Identity before a graph output hands the output name to an inner value, whose inferred
    shape may be vaguer ("unk__3" for "sequence"); the model's signature keeps its declared dims."""
    for value in model.graph.outputs:
        shape = declared.get(value.name)
        if shape is not None and (value.shape is None or value.shape.rank() == shape.rank()):
            value.shape = shape


def run_pipeline(model: ir.Model | onnx.ModelProto, names: Sequence[str], options: PipelineOptions | None = None,
                 *, verify: bool = True) -> PipelineResult:
    """Run the named passes in order on ``model`` (an ``ir.Model`` is changed in place).

    verify: shape inference + onnx.checker before the first pass and after each (off only for speed).
    """
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise EdgeqError(f"unknown pass(es) {unknown}; known: {', '.join(PASSES)}")
    options = options or PipelineOptions()
    if isinstance(model, onnx.ModelProto):
        model = ir.from_proto(model)
    result = PipelineResult(model)
    # Rules read types and shapes (head size, dtypes), so the exporter's bare graph is typed first.
    infer_shapes(model, "input model")
    declared = {v.name: v.shape for v in model.graph.outputs if v.shape is not None}
    for name in names:
        before, bytes_before = op_histogram(model), initializer_bytes(model)
        start = time.perf_counter()
        try:
            pass_result = PASSES[name].make(options)(model)
        except EdgeqError:
            raise
        except Exception as e:
            raise EdgeqError(f"pass '{name}' failed: {type(e).__name__}: {_first_line(e)}") from e
        seconds = time.perf_counter() - start
        _keep_declared_output_shapes(model, declared)
        if verify:
            infer_shapes(model, f"after pass '{name}'")
            check(model, f"after pass '{name}'")
        report = PassReport(name, pass_result.modified, seconds, before, op_histogram(model), bytes_before,
                            initializer_bytes(model))
        log.info("%s", report.format())
        result.reports.append(report)
    return result


def default_pipeline(model: ir.Model | onnx.ModelProto, *, fusions: bool = False, accuracy_level: int = 0,
                     verify: bool = True) -> PipelineResult:
    """After export: lower quantized weights to MatMulNBits / GroupQuantMatMul, fold, drop dead code.

    fusions: also raise the opset to 23 and fuse RMSNorm, rotary embedding and SwiGLU.
    """
    names = list(DEFAULT_PASSES) + (list(FUSION_PASSES) if fusions else [])
    return run_pipeline(model, names, PipelineOptions(accuracy_level=accuracy_level), verify=verify)
