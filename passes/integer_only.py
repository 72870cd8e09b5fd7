"""The integer-only decoder (I-LLM, issue 6): the exported, fused decoder of a weight-activation quantized model
(W8A8 / W6A6 / W4A4: per-channel weights, symmetric or with zero points, per-token symmetric activation codes,
lowered to ``edgeq::QuantLinear``)
rebuilt from the edgeq integer ops, with no floating point between the token ids and the logits' codes.

Input: the graph after ``quant-linear`` and the fusions (``opset``, ``rms-norm``, ``rotary``, ``swiglu``), in the
exporter's layout (``exporter/llama_graph.py``). The pass reads its parameters by walking the dataflow from the
embedding Gather along the residual stream (norm -> q/k/v -> rotary -> attention -> o_proj -> add -> norm ->
gate/up -> SwiGLU -> down -> add, per layer; final norm -> lm_head MatMul -> logits); anything else is refused
with the node where the walk stopped. Every activation becomes three tensors (int8 codes, per-row int32 mantissa
and int8 exponent, ``custom_ops/README.md`` "Integer-only ops"):

  embedding      Gather of an int8 table and of its per-row scales (the table quantized per row at 8 bits)
  norms          DINorm (gamma as per-channel dyadic scales), codes at the next linears' abits
  q/k/v/o/gate/up/down   DIMatMul (the QuantLinear's integer weights and zero points; scales as dyadics), outputs at 8 bits
                         (v, which the cache holds as it is) or 16 (q/k and gate/up, which DIRotary and DISwiGLU read;
                         o/down, which feed the residual); q with k, and gate with up, as one DIMatMul each
                         (split: two outputs, bit for bit two ops, one pass over the threads);
                 the attention's 1/sqrt(head_dim) is folded into q_proj's scales
  rotary         DIRotary with Q14 cos/sin tables [max_positions, head_dim/2], reading q/k as [B, S, heads*D] and
                 writing [B, heads, S, D]; v takes the same op with rotate=0 (the relayout alone); k's and v's
                 also append to the cache (past in, present out: no Concat)
  Q.K^T, P.V     DIBatchMatMul (trans_b=1 causal and padding-masked; trans_b=0), wide int32 outputs
  softmax        DIClippedSoftmax (causal; clipped to [max - c, max] with each layer's c from the model property
                 ``edgeq.softmax_clip`` that I-LLM's FSBR learns, else no clipping), uint16 probabilities
  heads -> token DIRequant at o_proj's abits;  SiLU(gate)*up  DISwiGLU at down_proj's abits (``rotate_down`` B:
                 DISwiGLU's hadamard=B rotates the row in blocks of B, down_proj takes the rotated weights,
                 requantized per channel; off by default)
  residual adds  DIAdd (16-bit codes)
  lm_head        DIMatMul against the int8 table's rows (tied: the embedding's initializer itself) or lm_head's,
                 reading the final norm's 12-bit codes (int16; fewer bits where the hidden size exceeds
                 DIMatMul's int32 bound at 12), with zero points when the linears' inputs have them (8-bit codes
                 there cost this model 0.4-0.75% of perplexity); 16-bit logit codes
  logits         the only float: int16 codes * m * 2^-e (Cast, Neg, Pow, Mul)

The KV cache is integer: ``past_key_values.{i}.key`` int8 ``[B, kv, P, D]`` plus ``past_key_values.{i}.key.m``
int32 and ``.key.e`` int8 ``[B, kv, P, 1]`` (one scale per token and head; likewise ``.value``), returned as
``present.{i}.key`` / ``.key.m`` / ``.key.e``. ``runtime/decoder.py`` reads these from the session.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgeq.custom_ops import schema
from edgeq.custom_ops.integer_codec import clip_q8, eps_q60, quantize, rotary_tables_for, to_dyadic
from edgeq.custom_ops.reference_integer import CLIP_ONE, di_matmul_max_k
from edgeq.custom_ops.quant_linear_packing import unpack_weights
from edgeq.errors import EdgeqError
from edgeq.exporter.llama_graph import ACT_CLIP_KEY, SOFTMAX_CLIP_KEY
from edgeq.quantize.illm import ACT_CLIP_SITES

INNER_BITS = 8        # codes of activations that feed no linear: v_proj, rotary, KV cache
PROBS_BITS = 16       # the softmax's probabilities (uint16 codes, P.V's left operand): 8-bit codes zero every key below
                      # 1/510 of the row's largest, which cost the trained I-LLM W8A8 more than everything else left
PROJ_BITS = 16        # q/k and gate/up outputs (int16 codes): DIRotary and DISwiGLU requantize them, so they are
                      # rounded once, not twice (PyTorch on this model: 8-bit codes there cost W8A8 0.7%)
RESIDUAL_BITS = 16    # the residual stream and the o/down projections that feed it (int16 codes): a few of its
                      # channels are hundreds of times the rest
HEAD_BITS = 8         # the embedding table / lm_head rows
HEAD_INPUT_BITS = 12  # the final norm's output, lm_head's input (int16 codes; 8-bit ones cost the trained W8A8 ~0.4%)
LOGIT_BITS = 16       # the logits' codes
DEFAULT_MAX_POSITIONS = 8192  # rotary table rows when the model does not say (metadata edgeq.max_positions)
SCALES = (".m", ".e")  # suffixes of a cached tensor's scale inputs/outputs
PAST, PRESENT = "past_key_values.", "present."
INT8, INT32, INT64 = ir.DataType.INT8, ir.DataType.INT32, ir.DataType.INT64


def _fail(problem: str):
    raise EdgeqError(f"integer-only: {problem}")


# ---------------------------------------------------------------------------------------------------------
# Reading the fused float decoder


@dataclass
class Linear:
    W: np.ndarray        # int8 [N, K], signed weight codes
    scales: np.ndarray   # float [N]
    wbits: int
    abits: int
    w_zero: np.ndarray | None = None  # int8 [N]: an asymmetric grid's zero points as signed codes
    act_sym: bool = True  # False: its input codes carry a zero point per token (QuantLinear's act_sym=0)

    def dyadic(self, factor: float = 1.0):
        return to_dyadic(self.scales.astype(np.float64) * factor)


@dataclass
class Layer:
    index: int
    input_norm: np.ndarray
    post_norm: np.ndarray
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    score_scale: float


@dataclass
class Decoder:
    embed: np.ndarray           # float [V, H]
    lm_head: np.ndarray | None  # float [V, H]; None when tied to the embedding
    final_norm: np.ndarray
    eps: float
    inv_freq: np.ndarray
    rope_scaling: float
    layers: list[Layer] = field(default_factory=list)


def _const(value: ir.Value | None, what: str) -> np.ndarray:
    tensor = None if value is None or value.is_graph_input() else ir.convenience.get_const_tensor(value)
    if tensor is None:
        _fail(f"{what} ({value.name if value is not None else 'missing'}) is not a constant")
    return tensor.numpy()


def _readers(value: ir.Value, op_type: str) -> list[ir.Node]:
    return [use.node for use in value.uses() if use.node.op_type == op_type]


def _one(value: ir.Value, op_type: str, what: str) -> ir.Node:
    nodes = _readers(value, op_type)
    if len(nodes) != 1:
        readers = sorted(f"{u.node.op_type} {u.node.name}" for u in value.uses())
        _fail(f"expected one {op_type} reading {value.name} ({what}), found {len(nodes)} among {readers}")
    return nodes[0]


def _linear(node: ir.Node) -> Linear:
    if node.op_type != schema.QUANT_LINEAR.name or node.domain != schema.DOMAIN:
        _fail(f"{node.name} is {node.op_type}, expected edgeq::QuantLinear (run the 'quant-linear' pass first)")
    a = {k: v.value for k, v in node.attributes.items()}
    W = unpack_weights(_const(node.inputs[1], f"{node.name} weights"), a["K"], a["wbits"])
    w_zero = None
    if len(node.inputs) > 3 and node.inputs[3] is not None:  # an asymmetric weight grid: DIMatMul's w_zero
        w_zero = _const(node.inputs[3], f"{node.name} zero points").reshape(-1).astype(np.int8)
    return Linear(W, _const(node.inputs[2], f"{node.name} scales").reshape(-1), a["wbits"], a["abits"], w_zero,
                  bool(a.get("act_sym", 1)))


def _norm(node: ir.Node) -> tuple[np.ndarray, float]:
    return _const(node.inputs[1], f"{node.name} gamma"), node.attributes.get_float("epsilon", 1e-5)


def _heads(linear_out: ir.Value, what: str) -> ir.Value:
    """The [B, heads, S, D] value after a projection's Reshape + Transpose."""
    reshape = _one(linear_out, "Reshape", what)
    return _one(reshape.outputs[0], "Transpose", what).outputs[0]


def _rope(node: ir.Node) -> tuple[np.ndarray, float]:
    """inv_freq and attention scaling from a RotaryEmbedding's cos input: Cast?(Mul?(Cos(pos * inv_freq)))."""
    if node.attributes.get_int("interleaved", 0) != 0:
        _fail(f"{node.name}: interleaved rotary is not converted")
    value, scaling = node.inputs[1], 1.0
    producer = value.producer()
    if producer is not None and producer.op_type == "Cast":
        producer = producer.inputs[0].producer()
    if producer is not None and producer.op_type == "Mul":
        scaling = float(_const(producer.inputs[1], "rope scaling").reshape(()))
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type != "Cos":
        _fail(f"{node.name}: the cos table is not Cos(positions * inv_freq)")
    freqs = producer.inputs[0].producer()
    if freqs is None or freqs.op_type != "Mul":
        _fail(f"{node.name}: rotary frequencies are not positions * inv_freq")
    return _const(freqs.inputs[1], "rope inv_freq").reshape(-1), scaling


def _layer(h: ir.Value, index: int) -> tuple[Layer, ir.Value, tuple]:
    norm1 = _one(h, "RMSNormalization", "input norm")
    x = norm1.outputs[0]
    projections = _readers(x, schema.QUANT_LINEAR.name)
    if len(projections) != 3 or len(x.uses()) != 3:
        _fail(f"{x.name} should feed exactly q/k/v QuantLinears, feeds {sorted(u.node.op_type for u in x.uses())}")
    q = k = v = None
    for node in projections:
        t = _heads(node.outputs[0], "attention heads")
        if _readers(t, "Concat"):
            v = node
        elif _readers(_one(t, "RotaryEmbedding", "rotary").outputs[0], "Concat"):
            k = node
        else:
            q = node
    if None in (q, k, v):
        _fail(f"layer {index}: cannot tell q, k and v apart")
    rotary = _one(_heads(q.outputs[0], "q"), "RotaryEmbedding", "q rotary")
    scores = _one(_one(rotary.outputs[0], "Reshape", "q groups").outputs[0], "MatMul", "Q.K^T")
    scale = _one(scores.outputs[0], "Mul", "score scale")
    masked = _one(scale.outputs[0], "Add", "attention mask")
    probs = _one(masked.outputs[0], "Softmax", "softmax")
    ctx = _one(probs.outputs[0], "MatMul", "P.V")
    ctx = _one(ctx.outputs[0], "Reshape", "context heads")
    ctx = _one(ctx.outputs[0], "Transpose", "context heads")
    ctx = _one(ctx.outputs[0], "Reshape", "context")
    o = _one(ctx.outputs[0], schema.QUANT_LINEAR.name, "o_proj")
    residual = [n for n in _readers(h, "Add") if o.outputs[0] in n.inputs]
    if len(residual) != 1:
        _fail(f"layer {index}: no residual Add of {h.name} and o_proj")
    h1 = residual[0].outputs[0]
    norm2 = _one(h1, "RMSNormalization", "post-attention norm")
    mlp = _readers(norm2.outputs[0], schema.QUANT_LINEAR.name)
    if len(mlp) != 2:
        _fail(f"layer {index}: the post-attention norm feeds {len(mlp)} QuantLinears, expected gate and up")
    glu = _one(mlp[0].outputs[0], "SwiGLU", "SwiGLU (run the 'swiglu' fusion first)")
    gate, up = (value.producer() for value in glu.inputs)
    down = _one(glu.outputs[0], schema.QUANT_LINEAR.name, "down_proj")
    residual = [n for n in _readers(h1, "Add") if down.outputs[0] in n.inputs]
    if len(residual) != 1:
        _fail(f"layer {index}: no residual Add of {h1.name} and down_proj")
    layer = Layer(index, _norm(norm1)[0], _norm(norm2)[0], *(_linear(n) for n in (q, k, v, o, gate, up, down)),
                  score_scale=float(_const(scale.inputs[1], "score scale").reshape(())))
    return layer, residual[0].outputs[0], (_norm(norm1)[1], _rope(rotary))


def read_decoder(model: ir.Model) -> Decoder:
    """The parameters of the fused decoder, walked from the embedding; EdgeqError where the graph differs."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    if "input_ids" not in inputs:
        _fail("the model has no input_ids (not an edgeq decoder export)")
    embed = _one(inputs["input_ids"], "Gather", "embedding")
    table = _const(embed.inputs[0], "embedding table")
    h, layers, rope, eps = embed.outputs[0], [], None, None
    while _readers(h, "Add"):
        layer, h, (eps, rope) = _layer(h, len(layers))
        layers.append(layer)
    if not layers:
        _fail("no decoder layer found after the embedding")
    final = _one(h, "RMSNormalization", "final norm")
    head = _one(final.outputs[0], "MatMul", "lm_head")
    if head.outputs[0].name != "logits" or head.outputs[0] not in list(graph.outputs):
        _fail(f"lm_head {head.name} does not produce the graph output 'logits'")
    w = head.inputs[1]
    producer = w.producer()
    if producer is not None and producer.op_type == "Transpose" and producer.inputs[0] is embed.inputs[0]:
        lm_head = None
    else:
        lm_head = _const(w, "lm_head weight").T
    return Decoder(table, lm_head, _norm(final)[0], eps, rope[0], rope[1], layers)


# ---------------------------------------------------------------------------------------------------------
# Writing the integer graph

Act = tuple  # (codes, mantissas, exponents) ir.Values


class _Builder:
    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self._ids = itertools.count()

    def init(self, name: str, array: np.ndarray) -> ir.Value:
        tensor = ir.tensor(np.ascontiguousarray(array).reshape(np.shape(array)), name=name)  # keeps 0-d arrays
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def ints(self, name: str, values) -> ir.Value:
        return self.init(name, np.asarray(values, np.int64))

    def op(self, op_type: str, inputs, name: str, outputs: int = 1, domain: str = "", **attrs):
        node = ir.node(op_type, inputs, attributes=attrs, domain=domain, num_outputs=outputs,
                       name=f"{name}/{op_type}#{next(self._ids)}")
        for i, value in enumerate(node.outputs):
            value.name = f"{name}/{op_type}" + (f"_{i}" if outputs > 1 else "")
        self.graph.append(node)
        return list(node.outputs) if outputs > 1 else node.outputs[0]

    def di(self, op_type: str, inputs, name: str, act_sym: bool = True, **attrs) -> Act:
        """An integer op; act_sym=False (DINorm, DISwiGLU, DIRequant): asymmetric codes, the Act's fourth value
        the zero points."""
        if not act_sym:
            return tuple(self.op(op_type, list(inputs), name, outputs=4, domain=schema.DOMAIN, act_sym=0, **attrs))
        return tuple(self.op(op_type, list(inputs), name, outputs=3, domain=schema.DOMAIN, **attrs))

    def matmul_inputs(self, x: Act, lin: Linear, name: str, factor: float = 1.0) -> list:
        """DIMatMul's inputs for ``lin`` reading ``x``: its codes, dyadic scales and zero-point inputs."""
        w_m, w_e = lin.dyadic(factor)
        return [*x[:3], self.init(f"{name}.W", lin.W), self.init(f"{name}.w_m", w_m), self.init(f"{name}.w_e", w_e),
                *self.zero_inputs(x, lin.W, name, lin.w_zero)]

    def matmul(self, x: Act, lin: Linear, name: str, obits: int = INNER_BITS, factor: float = 1.0) -> Act:
        N, K = lin.W.shape
        return self.di("DIMatMul", self.matmul_inputs(x, lin, name, factor), name, K=K, N=N, abits=lin.abits,
                       wbits=lin.wbits, obits=obits)

    def matmul_pair(self, x: Act, first: Linear, second: Linear, name: str, obits: int,
                    factor: float = 1.0) -> tuple[Act, Act]:
        """Two linears of one input (q and k, gate and up; ``factor`` scales the first) as one DIMatMul with split,
        bit for bit the two DIMatMuls: a decode step passes over the CPU's threads once for both. Linears of
        different code widths stay two ops."""
        if (first.abits, first.wbits, first.act_sym) != (second.abits, second.wbits, second.act_sym):
            return self.matmul(x, first, f"{name}.first", obits, factor), self.matmul(x, second, f"{name}.second", obits)
        if first.w_zero is None and second.w_zero is None:
            w_zero = None
        else:  # a zero point of 0 leaves a channel's sum exactly as without one
            w_zero = np.concatenate([np.zeros(len(lin.W), np.int8) if lin.w_zero is None else lin.w_zero
                                     for lin in (first, second)])
        # factor folded into the first's scales as Linear.dyadic folds it (float64), so the dyadics are the same
        scales = np.concatenate([first.scales.astype(np.float64) * factor, second.scales.astype(np.float64)])
        pair = Linear(np.concatenate([first.W, second.W]), scales, first.wbits, first.abits, w_zero, first.act_sym)
        N, K = pair.W.shape
        out = self.op("DIMatMul", self.matmul_inputs(x, pair, name), name, outputs=6, domain=schema.DOMAIN, K=K, N=N,
                      abits=pair.abits, wbits=pair.wbits, obits=obits, split=len(first.W))
        return tuple(out[:3]), tuple(out[3:])

    def zero_inputs(self, x: Act, codes: np.ndarray, name: str, w_zero: np.ndarray | None = None) -> list:
        """DIMatMul's optional inputs after w_e: the weights' zero points, and for asymmetric input codes (an Act
        of four) their zero points and sum_k W for the correction."""
        zero = [] if w_zero is None else [self.init(f"{name}.w_zero", w_zero)]
        if len(x) == 4:
            w_sum = codes.astype(np.int64).sum(axis=1).astype(np.int32)
            zero = [zero[0] if zero else None, x[3], self.init(f"{name}.w_sum", w_sum)]
        return zero

    def norm(self, x: Act, gamma: np.ndarray, eps: float, name: str, obits: int, clip: int = CLIP_ONE,
             act_sym: bool = True) -> Act:
        g_m, g_e = to_dyadic(gamma.astype(np.float64))
        return self.di("DINorm", [*x, self.init(f"{name}.g_m", g_m), self.init(f"{name}.g_e", g_e)], name,
                       act_sym=act_sym, eps_q60=eps_q60(eps), obits=obits, **_clip_attr(clip))


def _cache_values(name: str, kv: int, head_dim: int, seq: str) -> list[ir.Value]:
    shapes = (["batch", kv, seq, head_dim], ["batch", kv, seq, 1], ["batch", kv, seq, 1])
    return [ir.Value(name=name + suffix, type=ir.TensorType(t), shape=ir.Shape(s))
            for suffix, t, s in zip(("", *SCALES), (INT8, INT32, INT8), shapes)]


def _clip_attr(clip: int) -> dict:
    return {} if clip == CLIP_ONE else {"clip_q15": clip}


def _act_clips(props, layers: int) -> list[list[int]]:
    """Each layer's ``clip_q15`` per ``ACT_CLIP_SITES`` (input norm, heads, post norm, SwiGLU) from the model property
    ``edgeq.act_clip`` (I-LLM's learned activation clips), else no clipping."""
    sites = len(ACT_CLIP_SITES)
    text = props.get(ACT_CLIP_KEY)
    if text is None:
        return [[CLIP_ONE] * sites for _ in range(layers)]
    rows = [row.split(",") for row in text.split(";")]
    if len(rows) != layers or any(len(r) != sites for r in rows):
        _fail(f"{ACT_CLIP_KEY} must hold {sites} values for each of {layers} layers")
    return [[int(min(CLIP_ONE, max(1, round(float(v) * CLIP_ONE)))) for v in r] for r in rows]


def _softmax_clips(props, layers: int) -> list[int]:
    """Each layer's ``clip_q8`` from the model property ``edgeq.softmax_clip`` (I-LLM's learned ranges), else 0."""
    text = props.get(SOFTMAX_CLIP_KEY)
    if text is None:
        return [0] * layers
    values = text.split(",")
    if len(values) != layers:
        _fail(f"{SOFTMAX_CLIP_KEY} has {len(values)} values for {layers} layers")
    return [clip_q8(float(v)) for v in values]


def hadamard_matrix(n: int, block: int) -> np.ndarray:
    """The orthonormal block-diagonal Walsh-Hadamard matrix [n, n] of ``block`` x ``block`` blocks (Sylvester
    order, the one DISwiGLU's hadamard multiplies by, unnormalized)."""
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return np.kron(np.eye(n // block), h / np.sqrt(block))


def rotated_input(lin: Linear, block: int) -> Linear:
    """``lin`` reading x H instead of x (H: ``hadamard_matrix``): its dequantized weights times H, requantized per
    channel at wbits on the same kind of grid (min-max, with zero points if it had them), the scales divided by
    sqrt(block) because DISwiGLU writes x times the unnormalized matrix."""
    K = lin.W.shape[1]
    if K % block:
        _fail(f"rotate_down={block} does not divide down_proj's {K} inputs")
    zero = 0.0 if lin.w_zero is None else lin.w_zero.astype(np.float64)[:, None]
    W = ((lin.W.astype(np.float64) - zero) * lin.scales.astype(np.float64)[:, None]) @ hadamard_matrix(K, block)
    mid = 1 << (lin.wbits - 1)
    if lin.w_zero is None:
        scale = np.abs(W).max(1) / (mid - 1)
        scale[scale == 0] = 1.0
        codes, w_zero = np.clip(np.round(W / scale[:, None]), 1 - mid, mid - 1), None
    else:
        levels = 2 * mid - 1
        lo, hi = np.minimum(W.min(1), 0), np.maximum(W.max(1), 0)
        scale = (hi - lo) / levels
        scale[scale == 0] = 1.0
        zp = np.round(-lo / scale)
        codes = np.clip(np.round(W / scale[:, None]) + zp[:, None], 0, levels) - mid
        w_zero = (zp - mid).astype(np.int8)
    return dataclasses.replace(lin, W=codes.astype(np.int8), scales=scale / np.sqrt(block), w_zero=w_zero)


def head_input_bits(hidden: int, zero_points: bool) -> int:
    """lm_head's input width: HEAD_INPUT_BITS, or the widest above 8 whose DIMatMul bound takes K = hidden, else 8."""
    fits = [b for b in range(HEAD_INPUT_BITS, 8, -1) if hidden <= di_matmul_max_k(b, False, zero_points)]
    return fits[0] if fits else 8


def build(model: ir.Model, d: Decoder, max_positions: int, rotate_down: int = 0) -> None:
    """Replace ``model``'s graph by the integer-only decoder of ``d`` (same inputs, integer cache); ``rotate_down``:
    the block of the Hadamard rotation of down_proj's input (0: none)."""
    graph, props = model.graph, model.metadata_props
    kv, head_dim = int(props["edgeq.num_kv_heads"]), int(props["edgeq.head_dim"])
    keep = {v.name: v for v in graph.inputs if v.name in ("input_ids", "attention_mask", "position_ids")}
    graph.remove(list(graph), safe=False)
    graph.initializers.clear()
    graph.inputs.clear()
    graph.outputs.clear()
    graph.inputs.extend(keep[n] for n in ("input_ids", "attention_mask", "position_ids"))
    b = _Builder(graph)

    # embedding: the per-row int8 table and its scales, gathered per token
    table = quantize(d.embed, HEAD_BITS)
    table_v = [b.init(f"model.embed_tokens{s}", t) for s, t in zip(("", *SCALES), table)]
    h = tuple(b.op("Gather", [t, keep["input_ids"]], f"model.embed_tokens{s}") for t, s in zip(table_v, ("", *SCALES)))

    cos, sin = rotary_tables_for(d.inv_freq, max_positions, d.rope_scaling)
    cos, sin = b.init("rope.cos_q14", cos), b.init("rope.sin_q14", sin)
    pad = b.op("Cast", [keep["attention_mask"]], "mask/pad", to=ir.DataType.BOOL)
    mask = b.op("Unsqueeze", [pad, b.ints("mask.axes", [1, 2])], "mask")  # [B, 1, 1, T]
    past_names, present = [], []
    clips = _softmax_clips(props, len(d.layers))
    act_clips = _act_clips(props, len(d.layers))
    if rotate_down and any(c[3] != CLIP_ONE for c in act_clips):
        _fail("rotate_down: the SwiGLU output's learned clips (edgeq.act_clip) were trained without the rotation")

    for layer in d.layers:
        i, p = layer.index, f"model.layers.{layer.index}.self_attn"
        x = b.norm(h, layer.input_norm, d.eps, f"model.layers.{i}.input_layernorm", layer.q.abits, act_clips[i][0],
                   layer.q.act_sym)
        q, k = b.matmul_pair(x, layer.q, layer.k, p + ".qk_proj", obits=PROJ_BITS, factor=layer.score_scale)
        v = b.matmul(x, layer.v, p + ".v_proj")
        # The rotary reads the projections' [B, S, heads*D] directly and leaves q and k as [B, heads, S, D]
        # (heads_first), the layout of the cache and of attention; DIBatchMatMul reads a kv head for each group
        # of rep query heads (its batch-dim divisor rule). v takes the same relayout without rotation
        # (rotate=0: codes unchanged, each head row with its token's scale).
        q = b.di("DIRotary", [*q, keep["position_ids"], cos, sin], p + "/q_rope", interleaved=0, obits=INNER_BITS,
                 heads_first=1)
        # k and v leave DIRotary as the present cache: the op copies the past rows ahead of the new ones, so a
        # step has no Concat for each of the cache's six tensors
        cached = {}
        for kind, act, name, rotate in (("key", k, "/k_rope", 1), ("value", v, "/value_heads", 0)):
            past = _cache_values(f"{PAST}{i}.{kind}", kv, head_dim, "past_sequence")
            graph.inputs.extend(past)
            past_names += [x.name for x in past]
            now = b.di("DIRotary", [*act, keep["position_ids"], cos, sin, *past], p + name, interleaved=0,
                       obits=INNER_BITS, heads_first=1, **({} if rotate else {"rotate": 0}))
            for value, want in zip(now, _cache_values(f"{PRESENT}{i}.{kind}", kv, head_dim, "total_sequence")):
                value.name, value.shape, value.type = want.name, want.shape, want.type
            present += now
            cached[kind] = now
        scores = b.di("DIBatchMatMul", [*q, *cached["key"], mask], p + "/scores", trans_b=1, is_causal=1)
        probs = b.di("DIClippedSoftmax", [*scores, mask], p + "/softmax", clip_q8=clips[i], is_causal=1,
                     obits=PROBS_BITS)
        ctx = b.di("DIBatchMatMul", [*probs, *cached["value"]], p + "/ctx", trans_b=0)  # [B, heads, S, D]
        # heads_first: the heads of each token merged from attention's layout, without three Transposes per layer
        ctx = b.di("DIRequant", ctx, p + "/ctx", act_sym=layer.o.act_sym, obits=layer.o.abits, heads_first=1,
                   **_clip_attr(act_clips[i][1]))
        h = b.di("DIAdd", [*h, *b.matmul(ctx, layer.o, p + ".o_proj", obits=RESIDUAL_BITS)],
                 f"model.layers.{i}/residual_attn",
                 obits=RESIDUAL_BITS)
        m = f"model.layers.{i}.mlp"
        x = b.norm(h, layer.post_norm, d.eps, f"model.layers.{i}.post_attention_layernorm", layer.gate.abits,
                   act_clips[i][2], layer.gate.act_sym)
        gate, up = b.matmul_pair(x, layer.gate, layer.up, f"{m}.gate_up_proj", obits=PROJ_BITS)
        rotation = {"hadamard": rotate_down} if rotate_down else {}
        glu = b.di("DISwiGLU", [*gate, *up],
                   m + "/glu", act_sym=layer.down.act_sym, obits=layer.down.abits, **_clip_attr(act_clips[i][3]),
                   **rotation)
        down = rotated_input(layer.down, rotate_down) if rotate_down else layer.down
        h = b.di("DIAdd", [*h, *b.matmul(glu, down, m + ".down_proj", obits=RESIDUAL_BITS)],
                 f"model.layers.{i}/residual_mlp",
                 obits=RESIDUAL_BITS)

    head_sym = d.layers[0].q.act_sym
    head_bits = head_input_bits(d.embed.shape[1], not head_sym)
    h = b.norm(h, d.final_norm, d.eps, "model.norm", head_bits, act_sym=head_sym)
    codes, w_m, w_e = table if d.lm_head is None else quantize(d.lm_head, HEAD_BITS)
    W = table_v[0] if d.lm_head is None else b.init("lm_head.W", codes)  # tied: no second copy of the table
    y, y_m, y_e = b.di("DIMatMul", [*h[:3], W, b.init("lm_head.w_m", w_m.reshape(-1)),
                                    b.init("lm_head.w_e", w_e.reshape(-1)), *b.zero_inputs(h, codes, "lm_head")],
                       "lm_head", K=codes.shape[1], N=codes.shape[0], abits=head_bits, wbits=HEAD_BITS,
                       obits=LOGIT_BITS)
    # The only float arithmetic: logits = y * y_m * 2^-y_e.
    f32 = ir.DataType.FLOAT
    two = b.init("logits.two", np.array(2.0, np.float32))
    step = b.op("Pow", [two, b.op("Neg", [b.op("Cast", [y_e], "logits/e", to=f32)], "logits/e")], "logits/step")
    scale = b.op("Mul", [b.op("Cast", [y_m], "logits/m", to=f32), step], "logits/scale")
    logits = b.op("Mul", [b.op("Cast", [y], "logits/codes", to=f32), scale], "logits")
    logits.name, logits.dtype = "logits", f32
    logits.shape = ir.Shape(["batch", "sequence", d.embed.shape[0]])
    graph.outputs.extend([logits, *present])

    for key in [k for k in model.functions if k[0] == "edgeq.fusion"]:
        del model.functions[key]
    model.opset_imports.pop("edgeq.fusion", None)
    model.opset_imports[schema.DOMAIN] = schema.DOMAIN_VERSION
    props["edgeq.integer_only"] = "1"
    if rotate_down:
        props["edgeq.rotate_down"] = str(rotate_down)
    props["edgeq.cache_scales"] = ",".join(SCALES)


class IntegerOnlyPass(ir.passes.InPlacePass):
    """Fused W-A quantized decoder -> integer-only decoder (edgeq DI* ops, integer KV cache)."""

    def __init__(self, max_positions: int | None = None, rotate_down: int = 0):
        super().__init__()
        self.max_positions = max_positions
        self.rotate_down = rotate_down

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if any(n.domain == schema.DOMAIN and n.op_type.startswith("DI") for n in model.graph):
            return ir.passes.PassResult(model, modified=False)  # already integer-only
        decoder = read_decoder(model)
        positions = self.max_positions or int(model.metadata_props.get("edgeq.max_positions", 0)) or DEFAULT_MAX_POSITIONS
        build(model, decoder, positions, self.rotate_down)
        return ir.passes.PassResult(model, modified=True)
