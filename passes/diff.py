"""Structural and numeric differences between two ONNX models, as text or an HTML report.

Structural: nodes are matched by their first output's name (stable across edgeq's exporter and passes, unlike
node names, which carry a running index); a matched node whose inputs or attributes differ is "rewired".
Initializers are matched by name and compared by type, shape and content; I/O by name, type and shape.

Numeric: both models run in ONNX Runtime (``make_session``: exact settings, edgeq ops registered) on the same
feeds (random, seeded, or a tokenized prompt for decoder graphs); every common output gets max/mean absolute
and relative differences, relative to |a| + 1e-6 * max|a| so exact zeros in ``a`` do not divide by zero.
"""

from __future__ import annotations

import hashlib
import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgeq.errors import EdgeqError
from edgeq.runtime.session import check_model_file, make_session

DECODER_DIMS = {"batch": 1, "past_sequence": 0}


def load_checked(path: str | Path) -> onnx.ModelProto:
    """``check_model_file`` then load with external data; every failure is a one-line EdgeqError."""
    path = check_model_file(path)
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise EdgeqError(f"{path}: cannot load ({type(e).__name__}: {e})") from e


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _type_str(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dims = [d.dim_param if d.dim_param else (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return f"{helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else '?'}[{', '.join(dims)}]"


def _tensor_desc(t: onnx.TensorProto) -> str:
    dtype = onnx.TensorProto.DataType.Name(t.data_type).lower()
    return f"{dtype}{list(t.dims)} {_size(_nbytes(t))}"


def _nbytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return t.ByteSize()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _digest(t: onnx.TensorProto) -> str:
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    copy.name = ""
    return hashlib.sha1(copy.SerializeToString()).hexdigest()


@dataclass
class StructuralDiff:
    ops_a: Counter
    ops_b: Counter
    added: list[tuple[str, str]] = field(default_factory=list)  # (first output, op)
    removed: list[tuple[str, str]] = field(default_factory=list)
    rewired: list[tuple[str, str, str]] = field(default_factory=list)  # (first output, op, what changed)
    init_added: list[tuple[str, str]] = field(default_factory=list)  # (name, description)
    init_removed: list[tuple[str, str]] = field(default_factory=list)
    init_changed: list[tuple[str, str, str]] = field(default_factory=list)  # (name, before, after)
    io_changes: list[str] = field(default_factory=list)
    opset_changes: list[str] = field(default_factory=list)
    bytes_a: int = 0
    bytes_b: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.rewired or self.init_added or self.init_removed
                    or self.init_changed or self.io_changes or self.opset_changes)

    @property
    def op_delta(self) -> dict[str, int]:
        keys = sorted(set(self.ops_a) | set(self.ops_b))
        return {k: self.ops_b[k] - self.ops_a[k] for k in keys if self.ops_b[k] != self.ops_a[k]}

    def format(self, max_lines: int = 10) -> str:
        lines = [f"nodes: {sum(self.ops_a.values())} -> {sum(self.ops_b.values())}; "
                 f"initializers: {_size(self.bytes_a)} -> {_size(self.bytes_b)}"]
        if self.empty:
            return lines[0] + "\nno structural differences"
        if self.op_delta:
            lines.append("op counts: " + ", ".join(f"{k} {self.ops_a[k]}->{self.ops_b[k]} ({d:+d})"
                                                     for k, d in self.op_delta.items()))

        def section(title: str, items: list, render) -> None:
            if not items:
                return
            by_op = Counter(i[1] for i in items) if title.startswith("nodes") else None
            summary = f" ({', '.join(f'{k} x{v}' for k, v in by_op.most_common())})" if by_op else ""
            lines.append(f"{title}: {len(items)}{summary}")
            lines.extend("  " + render(i) for i in items[:max_lines])
            if len(items) > max_lines:
                lines.append(f"  ... {len(items) - max_lines} more")

        section("nodes removed", self.removed, lambda i: f"- {i[1]} -> {i[0]}")
        section("nodes added", self.added, lambda i: f"+ {i[1]} -> {i[0]}")
        section("nodes rewired", self.rewired, lambda i: f"~ {i[1]} -> {i[0]}: {i[2]}")
        section("initializers removed", self.init_removed, lambda i: f"- {i[0]}: {i[1]}")
        section("initializers added", self.init_added, lambda i: f"+ {i[0]}: {i[1]}")
        section("initializers changed", self.init_changed, lambda i: f"~ {i[0]}: {i[1]} -> {i[2]}")
        section("inputs/outputs", self.io_changes, lambda i: i)
        section("opsets", self.opset_changes, lambda i: i)
        return "\n".join(lines)


def _node_index(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    index = {}
    for i, node in enumerate(graph.node):
        key = next((o for o in node.output if o), None) or f"{node.name or node.op_type}#{i}"
        index[key] = node
    return index


def _attrs(node: onnx.NodeProto) -> dict[str, bytes]:
    return {a.name: a.SerializeToString() for a in node.attribute}


def structural_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> StructuralDiff:
    d = StructuralDiff(Counter(_op_key(n) for n in a.graph.node), Counter(_op_key(n) for n in b.graph.node))
    na, nb = _node_index(a.graph), _node_index(b.graph)
    for key, node in na.items():
        other = nb.get(key)
        if other is None or _op_key(other) != _op_key(node):
            d.removed.append((key, _op_key(node)))
            if other is not None:
                d.added.append((key, _op_key(other)))
            continue
        changes = []
        if list(node.input) != list(other.input):
            changes.append(f"inputs {list(node.input)} -> {list(other.input)}")
        attrs_a, attrs_b = _attrs(node), _attrs(other)
        if attrs_a != attrs_b:
            changed = sorted(k for k in attrs_a.keys() | attrs_b.keys() if attrs_a.get(k) != attrs_b.get(k))
            changes.append("attributes " + ", ".join(changed))
        if changes:
            d.rewired.append((key, _op_key(node), "; ".join(changes)))
    d.added += [(key, _op_key(n)) for key, n in nb.items() if key not in na]

    ia = {t.name: t for t in a.graph.initializer}
    ib = {t.name: t for t in b.graph.initializer}
    d.bytes_a = sum(_nbytes(t) for t in ia.values())
    d.bytes_b = sum(_nbytes(t) for t in ib.values())
    d.init_removed = [(n, _tensor_desc(t)) for n, t in ia.items() if n not in ib]
    d.init_added = [(n, _tensor_desc(t)) for n, t in ib.items() if n not in ia]
    for name in ia.keys() & ib.keys():
        ta, tb = ia[name], ib[name]
        if (ta.data_type, list(ta.dims)) != (tb.data_type, list(tb.dims)) or _digest(ta) != _digest(tb):
            before, after = _tensor_desc(ta), _tensor_desc(tb)
            d.init_changed.append((name, before, after if after != before else after + " (values differ)"))
    d.init_changed.sort()

    for kind, xa, xb in (("input", a.graph.input, b.graph.input), ("output", a.graph.output, b.graph.output)):
        va = {v.name: _type_str(v) for v in xa if v.name not in ia}
        vb = {v.name: _type_str(v) for v in xb if v.name not in ib}
        d.io_changes += [f"- {kind} {n}: {t}" for n, t in va.items() if n not in vb]
        d.io_changes += [f"+ {kind} {n}: {t}" for n, t in vb.items() if n not in va]
        d.io_changes += [f"~ {kind} {n}: {va[n]} -> {vb[n]}" for n in va if n in vb and va[n] != vb[n]]
    oa = {o.domain or "ai.onnx": o.version for o in a.opset_import}
    ob = {o.domain or "ai.onnx": o.version for o in b.opset_import}
    d.opset_changes = [f"{k}: {oa.get(k, '-')} -> {ob.get(k, '-')}" for k in sorted(oa.keys() | ob.keys())
                       if oa.get(k) != ob.get(k)]
    return d


# ---- numeric ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputDiff:
    name: str
    shape: tuple
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float

    def format(self) -> str:
        return (f"{self.name} {list(self.shape)}: max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, "
                f"max rel {self.max_rel:.3g}, mean rel {self.mean_rel:.3g}")


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray) -> OutputDiff:
    if a.shape != b.shape:
        raise EdgeqError(f"output {name}: shapes differ, {a.shape} vs {b.shape}")
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.size == 0:
        return OutputDiff(name, a.shape, 0.0, 0.0, 0.0, 0.0)
    err = np.abs(a64 - b64)
    floor = 1e-6 * float(np.max(np.abs(a64))) or 1e-30
    rel = err / (np.abs(a64) + floor)
    return OutputDiff(name, a.shape, float(err.max()), float(err.mean()), float(rel.max()), float(rel.mean()))


def _dims(vi: onnx.ValueInfoProto, seq_len: int) -> list[int]:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(DECODER_DIMS.get(d.dim_param, seq_len))
    return dims


def make_feeds(model: onnx.ModelProto, seed: int = 0, seq_len: int = 8, input_ids: np.ndarray | None = None) -> dict:
    """Inputs for ``model``: an edgeq decoder gets a causal batch with an empty KV cache (``input_ids`` or
    random tokens below the vocabulary size); other inputs are seeded random values of their declared types."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    names = {v.name for v in inputs}
    if input_ids is not None:
        seq_len = input_ids.shape[-1]
    feeds = {}
    vocab = next((o.type.tensor_type.shape.dim[-1].dim_value for o in model.graph.output if o.name == "logits"), 0) or 100
    for v in inputs:
        dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        dims = _dims(v, seq_len)
        if v.name == "input_ids":
            feeds[v.name] = (input_ids.reshape(1, -1) if input_ids is not None else rng.integers(0, vocab, dims)).astype(dtype)
        elif v.name == "attention_mask" and "input_ids" in names:
            feeds[v.name] = np.ones((1, seq_len), dtype)
        elif v.name == "position_ids" and "input_ids" in names:
            feeds[v.name] = np.arange(seq_len, dtype=dtype).reshape(1, -1)
        elif np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[v.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[v.name] = rng.integers(0, 10, dims).astype(dtype)
    if input_ids is not None and "input_ids" not in names:
        raise EdgeqError("a prompt was given but the model has no 'input_ids' input")
    return feeds


def tokenize(prompt: str, tokenizer: str) -> np.ndarray:
    """Token ids of ``prompt`` with the tokenizer of a model alias, a Hugging Face folder or a .gguf file."""
    from transformers import AutoTokenizer

    from edgeq.models import ALIASES, resolve_alias

    source = Path(resolve_alias(tokenizer) if tokenizer in ALIASES else tokenizer)
    if not source.exists():
        raise EdgeqError(f"tokenizer not found: {tokenizer} (give a model alias, a Hugging Face folder or a .gguf file)")
    try:
        if source.is_file():
            tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        else:
            tok = AutoTokenizer.from_pretrained(str(source))
    except Exception as e:
        raise EdgeqError(f"{source}: cannot load a tokenizer ({type(e).__name__})") from e
    ids = np.asarray(tok(prompt)["input_ids"], np.int64)
    if ids.size == 0:
        raise EdgeqError("the prompt tokenizes to nothing")
    return ids


def numeric_diff(path_a: str | Path, path_b: str | Path, feeds: dict | None = None, *, seed: int = 0,
                 seq_len: int = 8, input_ids: np.ndarray | None = None, device: str = "cpu") -> list[OutputDiff]:
    """Run both models on the same feeds and compare every output they share (by name)."""
    a, b = load_checked(path_a), load_checked(path_b)
    if feeds is None:
        feeds = make_feeds(a, seed, seq_len, input_ids)
    sa, sb = make_session(path_a, device), make_session(path_b, device)
    names_b = {i.name for i in sb.get_inputs()}
    if names_b != set(feeds):
        raise EdgeqError(f"{path_b}: inputs {sorted(names_b)} differ from {path_a}'s {sorted(feeds)}")
    out_a = [o.name for o in sa.get_outputs()]
    out_b = {o.name for o in sb.get_outputs()}
    common = [n for n in out_a if n in out_b]
    if not common:
        raise EdgeqError(f"{path_a} and {path_b} share no output names")
    try:
        ya = dict(zip(common, sa.run(common, feeds)))
        yb = dict(zip(common, sb.run(common, feeds)))
    except Exception as e:
        raise EdgeqError(f"ONNX Runtime failed while running the models: {str(e).splitlines()[0]}") from e
    return [compare_arrays(n, ya[n], yb[n]) for n in common]


# ---- HTML ---------------------------------------------------------------------------------------------------

def write_html(path: str | Path, name_a: str, name_b: str, diff: StructuralDiff,
               numeric: list[OutputDiff] | None = None) -> None:
    """One self-contained page: op histograms side by side, then the text diff and numeric table."""
    e = html.escape
    keys = sorted(set(diff.ops_a) | set(diff.ops_b), key=lambda k: (-max(diff.ops_a[k], diff.ops_b[k]), k))
    top = max([*diff.ops_a.values(), *diff.ops_b.values(), 1])

    def bar(n: int, cls: str) -> str:
        return f'<div class="bar {cls}" style="width:{100 * n / top:.1f}%"></div>'

    rows = []
    for k in keys:
        ca, cb = diff.ops_a[k], diff.ops_b[k]
        delta = f"{cb - ca:+d}" if ca != cb else ""
        rows.append(f'<tr class="{"changed" if delta else ""}"><td>{e(k)}</td><td class="n">{ca}</td>'
                    f'<td class="h">{bar(ca, "a")}</td><td class="n">{cb}</td><td class="h">{bar(cb, "b")}</td>'
                    f'<td class="n">{delta}</td></tr>')
    numeric_html = ""
    if numeric:
        numeric_html = "<h2>Outputs</h2><table><tr><th>output</th><th>shape</th><th>max abs</th><th>mean abs</th>" \
                       "<th>max rel</th><th>mean rel</th></tr>" + "".join(
            f"<tr><td>{e(o.name)}</td><td>{list(o.shape)}</td><td>{o.max_abs:.3g}</td><td>{o.mean_abs:.3g}</td>"
            f"<td>{o.max_rel:.3g}</td><td>{o.mean_rel:.3g}</td></tr>" for o in numeric) + "</table>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgeq diff</title><style>
body{{font-family:system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}} td.n{{text-align:right}}
td.h{{width:220px}} .bar{{height:12px}} .a{{background:#6a9fd8}} .b{{background:#e0884a}}
tr.changed{{background:#fff6d5}} pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}
</style></head><body><h1>edgeq diff</h1><p>A: {e(name_a)}<br>B: {e(name_b)}</p>
<h2>Op histogram</h2><table><tr><th>op</th><th>A</th><th></th><th>B</th><th></th><th>B-A</th></tr>
{''.join(rows)}</table>{numeric_html}<h2>Structural diff</h2><pre>{e(diff.format(max_lines=50))}</pre></body></html>"""
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as err:
        raise EdgeqError(f"cannot write {path}: {err.strerror}") from err
