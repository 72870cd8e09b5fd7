"""Build the ONNX graph of a Llama-family decoder with a KV cache directly from the model's weights.

Why not ``torch.onnx.export``: tracing the Hugging Face cache objects is fragile across transformers releases,
and the passes need stable, predictable names and patterns. Like onnxruntime-genai's model builder, we write
the graph op by op, in the decomposed form the torch exporter emits (RMSNorm as Pow/ReduceMean/Sqrt/Div,
rotary as Slice/Neg/Concat, SiLU as x·Sigmoid(x)), so the fusion passes see what they would see from torch.

Graph signature (B = batch, S = new tokens, P = cached tokens, T = P + S):
  inputs  input_ids [B,S] int64, attention_mask [B,T] int64, position_ids [B,S] int64,
          past_key_values.{i}.key / .value [B, kv_heads, P, head_dim]
  outputs logits [B,S,vocab] float32, present.{i}.key / .value [B, kv_heads, T, head_dim]

A quantized linear becomes ``MatMul(x, DequantizeLinear(codes, scale, zero, axis=0, block_size=g))`` (SpQR:
``MatMul(x, edgeq::SpQRDequantize(...))``), preceded by
``Gather(x, perm, axis=-1)`` when its columns were quantized in a permuted order. 4-bit codes are stored as
UINT4; other widths as UINT8 with the width in the node's metadata ``edgeq.bits``. Weight-activation linears
first fake-quantize x per token in stock ops (Abs/ReduceMax/Div/Max/Round/Clip/Mul; the Clip carries
``edgeq.act_bits``). Stock ONNX Runtime runs these graphs as they are (SpQR needs the edgeq library); the
passes turn them into ``MatMulNBits`` / ``edgeq::GroupQuantMatMul`` / ``edgeq::SpQRMatMul`` / ``edgeq::QuantLinear``.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import EdgeqError
from edgeq.quantize.modules import QuantizedLinear

OPSET = 21
EDGEQ_DOMAIN = "edgeq"
BITS_KEY = "edgeq.bits"
ACT_BITS_KEY = "edgeq.act_bits"
ACT_SYM_KEY = "edgeq.act_sym"  # "0" on the Clip of an asymmetric per-token chain
SOFTMAX_CLIP_KEY = "edgeq.softmax_clip"  # per layer, comma-separated: c of softmax over [max - c, max]
ACT_CLIP_KEY = "edgeq.act_clip"  # per layer (";"-separated), its clips of the activations linears read (",")
# SpQRDequantize / SpQRMatMul weight inputs, in order (the SpQRWeight on-disk tensors)
SPQR_INPUTS = ("codes", "scale_codes", "zero_codes", "stats", "row_ptr", "cols", "values")
STATIC_ROPE_TYPES = ("default", "llama3", "linear", "yarn")
FLOAT_TYPES = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}


def pack_uint4(values: np.ndarray) -> bytes:
    """Two 4-bit values per byte, first value in the low nibble (the ONNX UINT4 layout)."""
    flat = values.astype(np.uint8).ravel()
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


class GraphBuilder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self, dtype: str):
        self.dtype, self.np_dtype = FLOAT_TYPES[dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attrs):
        outs = [f"{name}/{op_type}_{i}" if outputs > 1 else f"{name}/{op_type}" for i in range(outputs)]
        node = helper.make_node(op_type, inputs, outs, name=f"{name}/{op_type}#{next(self._ids)}", domain=domain, **attrs)
        self.nodes.append(node)
        return outs if outputs > 1 else outs[0]

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        return self.add_initializer(name, tensor.detach().float().numpy().astype(self.np_dtype))

    def const(self, name: str, value, dtype=None) -> str:
        return self.add_initializer(name, np.asarray(value, dtype=dtype or self.np_dtype))


def _rope_tables(model):
    rotary = model.model.rotary_emb
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise EdgeqError(f"rotary embedding type '{rope_type}' depends on sequence length; not exportable yet")
    return rotary.inv_freq.detach().float().numpy(), float(getattr(rotary, "attention_scaling", 1.0))


class LlamaExporter:
    def __init__(self, model, dtype: str = "float32"):
        if dtype not in FLOAT_TYPES:
            raise EdgeqError(f"export dtype must be one of {list(FLOAT_TYPES)}, got {dtype}")
        self.model = model
        self.cfg = model.config
        self.g = GraphBuilder(dtype)
        self.num_heads = self.cfg.num_attention_heads
        self.num_kv = self.cfg.num_key_value_heads
        self.head_dim = getattr(self.cfg, "head_dim", None) or self.cfg.hidden_size // self.num_heads

    # ---- building blocks -------------------------------------------------------------------------------
    def rms_norm(self, x: str, weight: torch.Tensor, name: str) -> str:
        g = self.g
        if g.dtype != TensorProto.FLOAT:  # accumulate the mean square in float32, as transformers does
            x = g.op("Cast", [x], name + "/up", to=TensorProto.FLOAT)
        sq = g.op("Pow", [x, self.f32(name + ".two", 2.0)], name)
        mean = g.op("ReduceMean", [sq, self.axes_last], name, keepdims=1)
        var = g.op("Add", [mean, self.f32(name + ".eps", self.cfg.rms_norm_eps)], name)
        std = g.op("Sqrt", [var], name)
        normed = g.op("Div", [x, std], name)
        if g.dtype != TensorProto.FLOAT:
            normed = g.op("Cast", [normed], name + "/down", to=g.dtype)
        return g.op("Mul", [normed, g.weight(name + ".weight", weight)], name)

    def f32(self, name: str, value: float) -> str:
        return self.g.const(name, value, np.float32 if self.g.dtype != TensorProto.FLOAT else None)

    def linear(self, x: str, module, name: str) -> str:
        g = self.g
        if isinstance(module, QuantizedLinear):
            qw = module.qweight
            if qw.perm is not None:
                x = g.op("Gather", [x, g.const(name + ".perm", qw.perm.numpy(), np.int64)], name, axis=-1)
            if getattr(qw, "act_bits", 0):
                x = self.fake_quant_tokens(x, qw.act_bits, name, sym=qw.act_sym)
            if qw.FORMAT == "group_quant":
                w = self.group_quant_weight(qw, name)
            elif qw.FORMAT == "spqr":
                w = self.spqr_weight(qw, name)
            else:
                raise EdgeqError(f"{name}: the exporter cannot lower weight format '{qw.FORMAT}'")
        else:
            w = g.weight(name + ".weight", module.weight.T)
        y = g.op("MatMul", [x, w], name)
        if getattr(module, "bias", None) is not None:
            y = g.op("Add", [y, g.weight(name + ".bias", module.bias)], name)
        return y

    def group_quant_weight(self, qw, name: str) -> str:
        """W.T [K, N] as DequantizeLinear of the codes, blocked along K (stock ONNX, runs anywhere)."""
        g = self.g
        codes = qw.codes.numpy().T  # [K, N]: the layout DequantizeLinear(axis=0) blocks along K
        zeros = qw.zeros.numpy().T
        if qw.bits == 4:
            g.initializers.append(helper.make_tensor(name + ".codes", TensorProto.UINT4, codes.shape, pack_uint4(codes), raw=True))
            g.initializers.append(helper.make_tensor(name + ".zeros", TensorProto.UINT4, zeros.shape, pack_uint4(zeros), raw=True))
        else:
            g.add_initializer(name + ".codes", np.ascontiguousarray(codes))
            g.add_initializer(name + ".zeros", np.ascontiguousarray(zeros))
        scales = g.weight(name + ".scales", qw.scales.T)
        w = g.op("DequantizeLinear", [name + ".codes", scales, name + ".zeros"], name, axis=0, block_size=qw.group_size)
        helper.set_metadata_props(g.nodes[-1], {BITS_KEY: str(qw.bits)})
        return w

    def spqr_weight(self, qw, name: str) -> str:
        """W.T [K, N] through ``edgeq::SpQRDequantize`` of the stored SpQR tensors (the pass fuses it into
        ``edgeq::SpQRMatMul``)."""
        g = self.g
        tensors = qw.to_tensors(name)
        inputs = [g.add_initializer(f"{name}.{key}", tensors[f"{name}.{key}"].numpy()) for key in SPQR_INPUTS]
        n, k = qw.shape
        w = g.op("SpQRDequantize", inputs, name, domain=EDGEQ_DOMAIN, K=k, N=n, bits=qw.bits, group_size=qw.group_size,
                 stat_bits=qw.stat_bits, stat_group_size=qw.stat_group_size)
        if g.dtype != TensorProto.FLOAT:
            w = g.op("Cast", [w], name + "/w", to=g.dtype)
        return w

    def fake_quant_tokens(self, x: str, bits: int, name: str, sym: bool = True) -> str:
        """Per-token dynamic quantization of x in stock ops: what ``edgeq::QuantLinear`` does inside (``sym``:
        symmetric codes, else its act_sym=0 rule with a zero point per token)."""
        g = self.g
        p = name + "/act_quant"
        if not sym:
            return self.fake_quant_tokens_asym(x, bits, p)
        qmax = 2 ** (bits - 1) - 1
        absmax = g.op("ReduceMax", [g.op("Abs", [x], p), self.axes_last], p, keepdims=1)
        scale = g.op("Max", [g.op("Div", [absmax, g.const(p + ".qmax", float(qmax))], p), g.const(p + ".floor", 1e-5)], p)
        q = g.op("Clip", [g.op("Round", [g.op("Div", [x, scale], p + "/q")], p), g.const(p + ".lo", float(-qmax - 1)),
                          g.const(p + ".hi", float(qmax))], p)
        node = g.nodes[-1]
        helper.set_metadata_props(node, {ACT_BITS_KEY: str(bits)})
        return g.op("Mul", [q, scale], p + "/dq")

    def fake_quant_tokens_asym(self, x: str, bits: int, p: str) -> str:
        g = self.g
        levels = float(2**bits - 1)
        zero = g.const(p + ".zero", 0.0)
        hi = g.op("Max", [g.op("ReduceMax", [x, self.axes_last], p, keepdims=1), zero], p + "/hi")
        lo = g.op("Min", [g.op("ReduceMin", [x, self.axes_last], p, keepdims=1), zero], p + "/lo")
        scale = g.op("Max", [g.op("Div", [g.op("Sub", [hi, lo], p), g.const(p + ".levels", levels)], p),
                             g.const(p + ".floor", 1e-5)], p)
        zp = g.op("Round", [g.op("Div", [g.op("Neg", [lo], p), scale], p + "/zp")], p + "/zp")
        u = g.op("Clip", [g.op("Add", [g.op("Round", [g.op("Div", [x, scale], p + "/q")], p), zp], p),
                          g.const(p + ".lo", 0.0), g.const(p + ".hi", levels)], p)
        helper.set_metadata_props(g.nodes[-1], {ACT_BITS_KEY: str(bits), ACT_SYM_KEY: "0"})
        return g.op("Mul", [g.op("Sub", [u, zp], p + "/dq"), scale], p + "/dq")

    # ---- the decoder ------------------------------------------------------------------------------------
    def shared_inputs(self):
        """Rotary cos/sin [B,1,S,D] and the additive attention mask [B,1,1,S,T], computed once for all layers."""
        g = self.g
        self.axes_last = g.const("const.axes_last", [-1], np.int64)
        inv_freq, scaling = _rope_tables(self.model)
        pos = g.op("Cast", ["position_ids"], "rope", to=TensorProto.FLOAT)
        pos = g.op("Unsqueeze", [pos, self.axes_last], "rope")
        freqs = g.op("Mul", [pos, g.const("rope.inv_freq", inv_freq, np.float32)], "rope")
        emb = g.op("Concat", [freqs, freqs], "rope", axis=-1)
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.op(fn, [emb], "rope")
            if scaling != 1.0:
                t = g.op("Mul", [t, g.const(f"rope.scaling_{fn}", scaling, np.float32)], "rope/" + fn)
            if g.dtype != TensorProto.FLOAT:
                t = g.op("Cast", [t], "rope/" + fn, to=g.dtype)
            tables.append(g.op("Unsqueeze", [t, g.const(f"rope.axis_{fn}", [1], np.int64)], "rope/" + fn))
        self.cos, self.sin = tables

        seq = g.op("Shape", ["input_ids"], "mask/seq", start=1, end=2)
        total = g.op("Shape", ["attention_mask"], "mask/total", start=1, end=2)
        past = g.op("Sub", [total, seq], "mask/past")
        one = g.const("mask.one", 1, np.int64)
        zero = g.const("mask.zero", 0, np.int64)
        scalar = lambda t, n: g.op("Squeeze", [t], n)  # noqa: E731
        rows = g.op("Range", [scalar(past, "mask/p"), scalar(total, "mask/t"), one], "mask/rows")
        cols = g.op("Range", [zero, scalar(total, "mask/t2"), one], "mask/cols")
        rows = g.op("Unsqueeze", [rows, self.axes_last], "mask/rows")
        causal = g.op("LessOrEqual", [cols, rows], "mask")  # [S, T]
        pad = g.op("Cast", ["attention_mask"], "mask/pad", to=TensorProto.BOOL)
        pad = g.op("Unsqueeze", [pad, g.const("mask.pad_axes", [1, 2, 3], np.int64)], "mask/pad")  # [B,1,1,1,T]
        allowed = g.op("And", [causal, pad], "mask")  # [B,1,1,S,T]
        lowest = np.finfo(g.np_dtype).min  # not -inf: a fully masked (padding) row must stay finite
        self.mask = g.op("Where", [allowed, g.const("mask.open", 0.0), g.const("mask.closed", lowest)], "mask")

    def rotate(self, x: str, name: str) -> str:
        g = self.g
        half = self.head_dim // 2
        x1 = g.op("Slice", [x, g.const(name + ".s0", [0], np.int64), g.const(name + ".s1", [half], np.int64), self.axes_last], name + "/lo")
        x2 = g.op("Slice", [x, g.const(name + ".s2", [half], np.int64), g.const(name + ".s3", [self.head_dim], np.int64), self.axes_last], name + "/hi")
        rotated = g.op("Concat", [g.op("Neg", [x2], name), x1], name, axis=-1)
        return g.op("Add", [g.op("Mul", [x, self.cos], name + "/cos"), g.op("Mul", [rotated, self.sin], name + "/sin")], name)

    def heads(self, x: str, n: int, name: str) -> str:
        g = self.g
        x = g.op("Reshape", [x, g.const(name + ".shape", [0, 0, n, self.head_dim], np.int64)], name)
        return g.op("Transpose", [x], name, perm=[0, 2, 1, 3])

    def attention(self, x: str, attn, i: int) -> str:
        g = self.g
        p = f"model.layers.{i}.self_attn"
        q = self.rotate(self.heads(self.linear(x, attn.q_proj, p + ".q_proj"), self.num_heads, p + "/q"), p + "/q_rope")
        k = self.rotate(self.heads(self.linear(x, attn.k_proj, p + ".k_proj"), self.num_kv, p + "/k"), p + "/k_rope")
        v = self.heads(self.linear(x, attn.v_proj, p + ".v_proj"), self.num_kv, p + "/v")
        present_k = f"present.{i}.key"
        present_v = f"present.{i}.value"
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [present_k], name=p + "/cache_k", axis=2))
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [present_v], name=p + "/cache_v", axis=2))
        # Grouped-query attention without copying K/V: queries [B,kv,rep,S,D] against keys [B,kv,1,T,D].
        rep = self.num_heads // self.num_kv
        q5 = g.op("Reshape", [q, g.const(p + ".q5", [0, self.num_kv, rep, -1, self.head_dim], np.int64)], p + "/q5")
        axis2 = g.const(p + ".axis2", [2], np.int64)
        k5 = g.op("Unsqueeze", [present_k, axis2], p + "/k5")
        v5 = g.op("Unsqueeze", [present_v, axis2], p + "/v5")
        kt = g.op("Transpose", [k5], p + "/kt", perm=[0, 1, 2, 4, 3])
        scores = g.op("MatMul", [q5, kt], p + "/scores")
        scores = g.op("Mul", [scores, g.const(p + ".scale", self.head_dim**-0.5)], p + "/scores")
        scores = g.op("Add", [scores, self.mask], p + "/scores")
        probs = g.op("Softmax", [scores], p, axis=-1)
        ctx = g.op("MatMul", [probs, v5], p + "/ctx")
        ctx = g.op("Reshape", [ctx, g.const(p + ".ctx4", [0, self.num_heads, -1, self.head_dim], np.int64)], p + "/ctx4")
        ctx = g.op("Transpose", [ctx], p + "/ctx", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const(p + ".ctx3", [0, 0, self.num_heads * self.head_dim], np.int64)], p + "/ctx3")
        return self.linear(ctx, attn.o_proj, p + ".o_proj")

    def mlp(self, x: str, mlp, i: int) -> str:
        g = self.g
        p = f"model.layers.{i}.mlp"
        gate = self.linear(x, mlp.gate_proj, p + ".gate_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], p + "/silu")], p + "/silu")
        up = self.linear(x, mlp.up_proj, p + ".up_proj")
        return self.linear(g.op("Mul", [act, up], p + "/glu"), mlp.down_proj, p + ".down_proj")

    def build(self) -> onnx.ModelProto:
        g, cfg, m = self.g, self.cfg, self.model.model
        self.shared_inputs()
        embed = g.weight("model.embed_tokens.weight", m.embed_tokens.weight)
        h = g.op("Gather", [embed, "input_ids"], "model.embed_tokens")
        for i, layer in enumerate(m.layers):
            p = f"model.layers.{i}"
            a = self.attention(self.rms_norm(h, layer.input_layernorm.weight, p + ".input_layernorm"), layer.self_attn, i)
            h = g.op("Add", [h, a], p + "/residual_attn")
            f = self.mlp(self.rms_norm(h, layer.post_attention_layernorm.weight, p + ".post_attention_layernorm"), layer.mlp, i)
            h = g.op("Add", [h, f], p + "/residual_mlp")
        h = self.rms_norm(h, m.norm.weight, "model.norm")
        lm_head = self.model.lm_head
        if lm_head.weight is m.embed_tokens.weight or getattr(cfg, "tie_word_embeddings", False):
            head_w = g.op("Transpose", [embed], "lm_head/tied", perm=[1, 0])
        else:
            head_w = g.weight("lm_head.weight", lm_head.weight.T)
        logits = g.op("MatMul", [h, head_w], "lm_head")
        if g.dtype != TensorProto.FLOAT:
            logits = g.op("Cast", [logits], "lm_head/out", to=TensorProto.FLOAT)
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
        return self._model(embed)

    def _model(self, embed) -> onnx.ModelProto:
        g, cfg = self.g, self.cfg
        cache = ["batch", self.num_kv, "past_sequence", self.head_dim]
        present = ["batch", self.num_kv, "total_sequence", self.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", cfg.vocab_size])]
        for i in range(cfg.num_hidden_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", g.dtype, cache))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", g.dtype, present))
        graph = helper.make_graph(g.nodes, "edgeq_decoder", inputs, outputs, g.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        if any(n.domain == EDGEQ_DOMAIN for n in g.nodes):
            opsets.append(helper.make_opsetid(EDGEQ_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgeq")
        model.ir_version = 10
        eos = getattr(cfg, "eos_token_id", None)
        props = {
            "edgeq.num_layers": str(cfg.num_hidden_layers),
            "edgeq.num_kv_heads": str(self.num_kv),
            "edgeq.head_dim": str(self.head_dim),
            "edgeq.dtype": "float16" if g.dtype == TensorProto.FLOAT16 else "float32",
            "edgeq.eos_token_id": str(eos[0] if isinstance(eos, list) else eos),
            "edgeq.max_positions": str(getattr(cfg, "max_position_embeddings", 0) or 0),
        }
        clips = [getattr(layer.self_attn, "softmax_clip", None) for layer in self.model.model.layers]
        if any(c is not None for c in clips):  # I-LLM's learned softmax ranges (0: none), for the integer-only pass
            props[SOFTMAX_CLIP_KEY] = ",".join("0" if c is None else repr(float(c.reshape(()))) for c in clips)
        act = [getattr(layer.self_attn, "act_clip", None) for layer in self.model.model.layers]
        if any(c is not None for c in act):  # I-LLM's learned activation clips (1: none), for the integer-only pass
            sites = next(c.numel() for c in act if c is not None)
            props[ACT_CLIP_KEY] = ";".join(",".join(repr(float(v)) for v in (c.reshape(-1).tolist() if c is not None
                                                                               else [1.0] * sites)) for c in act)
        helper.set_model_props(model, props)
        return model


def build_decoder_model(model, dtype: str = "float32") -> onnx.ModelProto:
    """The ONNX decoder (with KV cache) of a loaded Llama-family model; quantized linears become DQ→MatMul."""
    with torch.no_grad():
        return LlamaExporter(model, dtype).build()
