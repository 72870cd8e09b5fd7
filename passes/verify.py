"""What will run this model, and can it run: every op with its domain and the provider that will execute it,
floating-point ops by type, and whether each edgeq op's library is available.

Providers are read from ONNX Runtime's own kernel registry (``get_all_opkernel_def``): a node runs on the first
requested provider with a kernel for its op, opset version and float type. Otherwise it is an ONNX function
(ORT expands it), a model-local function (inlined; its body is checked the same way), an edgeq op (served by
``edgeq.custom_ops.library``), a float16 node ORT computes in float32 behind inserted Casts, or a problem.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir

import edgeq.custom_ops  # noqa: F401  (edgeq op schemas for shape inference)
from edgeq.custom_ops.schema import DOMAIN as EDGEQ_DOMAIN
from edgeq.custom_ops.schema import OPS as EDGEQ_OPS
from edgeq.errors import EdgeqError
from edgeq.runtime.session import PROVIDERS, check_model_file

log = logging.getLogger(__name__)

# Ops that move or reshape float data without arithmetic; everything else with a float output computes in float.
DATA_MOVEMENT = frozenset(("Reshape", "Transpose", "Concat", "Slice", "Gather", "GatherElements", "Squeeze",
                           "Unsqueeze", "Identity", "Expand", "Split", "Shape", "Size", "Flatten", "Tile", "Pad"))
FLOAT_TYPES = {ir.DataType.FLOAT: "tensor(float)", ir.DataType.FLOAT16: "tensor(float16)",
               ir.DataType.BFLOAT16: "tensor(bfloat16)", ir.DataType.DOUBLE: "tensor(double)"}


@dataclass(frozen=True)
class OpRow:
    domain: str
    op_type: str
    count: int
    provider: str
    float_ops: int  # how many of these nodes compute in floating point


@dataclass
class VerifyReport:
    path: str
    device: str
    opsets: dict[str, int]
    rows: list[OpRow]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def float_ops(self) -> Counter:
        counts = Counter()
        for r in self.rows:
            if r.float_ops:
                counts[r.op_type if r.domain in ("", "ai.onnx") else f"{r.domain}::{r.op_type}"] += r.float_ops
        return counts

    def format(self) -> str:
        opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items()))
        lines = [f"{self.path}: {sum(r.count for r in self.rows)} nodes, opsets: {opsets}, device {self.device}",
                 f"{'domain':<16} {'op':<28} {'count':>5} {'float':>5}  provider"]
        for r in self.rows:
            lines.append(f"{r.domain or 'ai.onnx':<16} {r.op_type:<28} {r.count:>5} {r.float_ops:>5}  {r.provider}")
        total = sum(self.float_ops.values())
        lines.append(f"floating-point ops: {total} (" + ", ".join(f"{k} x{v}" for k, v in self.float_ops.most_common()) + ")")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


class _Kernels:
    """ORT's kernel registry indexed by (domain, op) -> [(provider, (since, until), float types)]."""

    def __init__(self):
        import onnxruntime.capi._pybind_state as ort_c  # the registry ORT itself resolves kernels from

        self.index: dict[tuple[str, str], list[tuple[str, tuple[int, int], set[str]]]] = defaultdict(list)
        for d in ort_c.get_all_opkernel_def():
            types = {t for ts in d.type_constraints.values() for t in ts}
            domain = "" if d.domain == "ai.onnx" else d.domain
            self.index[(domain, d.op_name)].append((d.provider, tuple(d.version_range), types))

    def providers(self, domain: str, op: str, version: int, float_type: str | None) -> tuple[list[str], bool]:
        """(providers with a kernel for this version, whether one of them also takes ``float_type``)."""
        found, typed = [], False
        for provider, (lo, hi), types in self.index.get((domain, op), []):
            if lo <= version <= hi:
                found.append(provider)
                if float_type is None or float_type in types or not any(t in FLOAT_TYPES.values() for t in types):
                    typed = True
        return found, typed


def _float_type(node: ir.Node) -> str | None:
    for v in list(node.inputs) + list(node.outputs):
        if v is not None and v.dtype in FLOAT_TYPES:
            return FLOAT_TYPES[v.dtype]
    return None


def _computes_float(node: ir.Node) -> bool:
    return node.op_type not in DATA_MOVEMENT and any(v.dtype in FLOAT_TYPES for v in node.outputs)


def _library_status(device: str) -> str | None:
    """None when the edgeq op library for ``device`` loads; else why not."""
    try:
        from edgeq.custom_ops.library import get_library

        path = get_library(device)
    except (ImportError, EdgeqError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None if Path(path).is_file() else f"{path} does not exist"


# The logits' dequantization an integer-only graph may end with (codes * m * 2^-e); nothing else computes in float.
OUTPUT_DEQUANT = frozenset(("Cast", "Mul", "Pow", "Neg", "Identity"))


def integer_only_offenders(model: ir.Model) -> list[str]:
    """Why ``model`` is not integer-only between its inputs and its logits: every node on which a graph output
    depends that has a float input or output, except the logits' dequantization (``OUTPUT_DEQUANT`` nodes from
    the output ``logits`` back to Casts of integer values), plus any float graph input or output but ``logits``.
    Empty when the graph is integer-only; with no integer op at all, that is said first."""
    graph = model.graph
    is_float = lambda v: v is not None and v.dtype in FLOAT_TYPES  # noqa: E731
    tail: set[ir.Node] = set()
    logits = next((v for v in graph.outputs if v.name == "logits"), None)
    frontier = [logits.producer()] if logits is not None and logits.producer() is not None else []
    while frontier:
        node = frontier.pop()
        if node in tail or node.op_type not in OUTPUT_DEQUANT or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Cast" and not is_float(node.inputs[0]):
            tail.add(node)  # integer codes or scales into float: where the dequantization starts
            continue
        tail.add(node)
        frontier += [v.producer() for v in node.inputs if is_float(v) and v.producer() is not None]
    # nodes some graph output depends on
    needed: set[ir.Node] = set()
    frontier = [v.producer() for v in graph.outputs if v.producer() is not None]
    while frontier:
        node = frontier.pop()
        if node in needed:
            continue
        needed.add(node)
        frontier += [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
    problems = []
    if not any(n.domain == EDGEQ_DOMAIN and n.op_type.startswith("DI") for n in graph):
        problems.append("no edgeq integer op (DI*) in the graph")
    problems += [f"graph input {v.name} is {v.dtype}" for v in graph.inputs if is_float(v)]
    problems += [f"graph output {v.name} is {v.dtype}" for v in graph.outputs if is_float(v) and v is not logits]
    for node in graph:
        if node not in needed or node in tail:
            continue
        floats = [f"{kind} {v.name} ({v.dtype})" for kind, values in (("input", node.inputs), ("output", node.outputs))
                  for v in values if is_float(v)]
        if floats:
            problems.append(f"{node.name} ({node.op_type}) has float " + ", ".join(floats))
    return problems


def verify_model(path: str | Path, device: str = "cpu", session: bool = True,
                 integer_only: bool = False) -> VerifyReport:
    """Inspect ``path`` (refused with EdgeqError if it is not a readable ONNX model with safe external data).

    integer_only: also fail on anything ``integer_only_offenders`` names (``edgeq verify --integer-only``)."""
    if device not in PROVIDERS:
        raise EdgeqError(f"device must be one of {list(PROVIDERS)}, got {device}")
    path = check_model_file(path)
    try:
        model = ir.load(str(path))
    except Exception as e:
        raise EdgeqError(f"{path}: cannot load ({type(e).__name__}: {e})") from e
    import onnxruntime as ort

    wanted = PROVIDERS[device]
    available = [p for p in wanted if p in ort.get_available_providers()]
    report = VerifyReport(str(path), device, dict(model.opset_imports), [])
    if len(available) < len(wanted):
        report.problems.append(f"this onnxruntime lacks {sorted(set(wanted) - set(available))}; "
                               f"providers below are what it has ({', '.join(available)})")
    try:
        from edgeq.passes.pipeline import infer_shapes

        infer_shapes(model, str(path))
    except EdgeqError as e:
        report.problems.append(str(e))
    kernels = _Kernels()
    library_problem: dict[str, str | None] = {}
    groups: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)

    def place(node: ir.Node, opsets: dict[str, int], where: str) -> str:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain == EDGEQ_DOMAIN:
            if node.op_type not in EDGEQ_OPS:
                report.problems.append(f"{where}{node.name}: {EDGEQ_DOMAIN}::{node.op_type} is not an op of the edgeq "
                                       f"library (it has {', '.join(sorted(EDGEQ_OPS))})")
                return "NO KERNEL"
            if device not in library_problem:
                library_problem[device] = _library_status(device)
            if library_problem[device]:
                report.problems.append(f"{where}{node.name}: {EDGEQ_DOMAIN}::{node.op_type} needs the edgeq op "
                                       f"library, unavailable: {library_problem[device]}")
                return "MISSING edgeq library"
            return f"edgeq library ({device})"
        function = model.functions.get((domain, node.op_type, node.overload))
        if function is not None:
            for inner in function:
                place(inner, dict(function.opset_imports), f"{where}{node.op_type}/")
            return "model function (inlined)"
        version = opsets.get(domain, 1)
        float_type = _float_type(node)
        providers, typed = kernels.providers(domain, node.op_type, version, float_type)
        chosen = next((p for p in available if p in providers), None)
        if chosen and typed:
            return chosen
        if chosen:
            return f"{chosen} (computes in float32: no {float_type} kernel)"
        try:
            if onnx.defs.get_schema(node.op_type, version, domain).has_function:
                return "ONNX function (expanded by ORT)"
        except onnx.defs.SchemaError:
            pass
        report.problems.append(f"{where}{node.name}: no kernel for {domain or 'ai.onnx'}::{node.op_type} "
                               f"(opset {version}) on {', '.join(available) or 'any provider'}")
        return "NO KERNEL"

    for node in model.graph:
        domain = "" if node.domain == "ai.onnx" else node.domain
        groups[(domain, node.op_type)].append((place(node, dict(model.opset_imports), ""), _computes_float(node)))
    if integer_only:
        offenders = integer_only_offenders(model)
        report.problems += [f"not integer-only: {o}" for o in offenders]
        if not offenders:
            report.notes.append("integer-only: no float between the inputs and the logits' dequantization")
    for (domain, op), placed in sorted(groups.items()):
        providers = Counter(p for p, _ in placed)
        report.rows.append(OpRow(domain, op, len(placed), "; ".join(sorted(providers)), sum(f for _, f in placed)))

    if session and not report.problems:
        from edgeq.runtime.session import make_session

        try:
            make_session(path, device=device)
            report.notes.append("ONNX Runtime session created")
        except EdgeqError as e:
            report.problems.append(str(e).splitlines()[0])
    return report
