"""Versioned, frozen method configurations. ``quantize_`` dispatches on the config's type.

Each config names the packed format it produces and the operator it lowers to; the exporter and passes read
only the format, never the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgeq.errors import EdgeqError

MIN_BITS, MAX_BITS = 2, 8


def check_act_bits(abits: int) -> None:
    if abits != 16 and not MIN_BITS <= abits <= MAX_BITS:
        raise EdgeqError(f"activation bits must be 16 (none) or {MIN_BITS}..{MAX_BITS}, got {abits}")


def check_grid(bits: int, group_size: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise EdgeqError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    if group_size != -1 and (group_size < 2 or group_size & (group_size - 1)):
        raise EdgeqError(f"group size must be a power of two (>= 2) or -1 for per-channel, got {group_size}")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """nsamples sequences of seqlen tokens drawn with seed from the calibration text (keyword-only fields)."""

    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0

    def check_calibration(self) -> None:
        if self.nsamples < 1 or self.seqlen < 2:
            raise EdgeqError(f"calibration needs nsamples >= 1 and seqlen >= 2, got {self.nsamples}, {self.seqlen}")


@dataclass(frozen=True, kw_only=True)
class HessianSolve(Calibration):
    """The GPTQ-style column solve shared by GPTQ and SpQR.

    act_order: quantize columns in order of decreasing Hessian diagonal; groups are contiguous in that order and
      the permutation is stored with the weight (the exported graph gathers the activation columns once).
    damp: dampening added to the Hessian diagonal, as a fraction of its mean.
    block_size: columns solved together before the lazy batch update of the rest.
    """

    act_order: bool = True
    damp: float = 0.01
    block_size: int = 128

    def check_solve(self) -> None:
        self.check_calibration()
        if not 0 < self.damp < 1:
            raise EdgeqError(f"damp must be in (0, 1), got {self.damp}")


@dataclass(frozen=True)
class RTNConfig:
    """Round-to-nearest weight-only quantization. Format: ``GroupQuantWeight``.

    bits: code width, 2..8.  group_size: weights per (scale, zero) along the input dimension; -1 = per channel.
    sym: symmetric grid (zero point fixed at 2^(bits-1)) instead of min-max asymmetric.
    abits: 16, or the per-token dynamic activation bits of a weight-activation baseline (needs per-channel
      weights, as ``edgeq::QuantLinear`` takes them; symmetric or not).
    act_sym: symmetric per-token activation codes (the SmoothQuant-style baseline), else a zero point per token.
    Lowers to ``com.microsoft.MatMulNBits`` (4/8 bits), ``edgeq::GroupQuantMatMul`` (other widths) or
    ``edgeq::QuantLinear`` (abits < 16).
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    abits: int = 16
    act_sym: bool = True
    version: int = 1

    def __post_init__(self):
        check_grid(self.bits, self.group_size)
        check_act_bits(self.abits)
        if self.abits < 16 and self.group_size != -1:
            raise EdgeqError("weight-activation RTN needs per-channel weights: group_size=-1")


@dataclass(frozen=True)
class GPTQConfig(HessianSolve):
    """GPTQ (Frantar et al. 2022): column-wise quantization with error feedback through the inverse Hessian.

    bits, group_size, sym: the grid, as in ``RTNConfig``; the solve and calibration fields: ``HessianSolve``.
    Format and lowering as ``RTNConfig``.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    version: int = 1

    def __post_init__(self):
        check_grid(self.bits, self.group_size)
        self.check_solve()


@dataclass(frozen=True)
class SpQRConfig(HessianSolve):
    """SpQR (Dettmers et al. 2023): GPTQ with tiny groups, 3-bit group statistics and exact sparse outliers.

    bits: dense code width.  group_size (β1): weights per first-level (scale, zero), along the input dim.
    stat_bits, stat_group_size (β2): the first-level scales and zeros are quantized to stat_bits in blocks of
      β2 output rows, each block with an fp16 (scale, zero) of its own.
    outlier_threshold (τ): a weight is an outlier when its Hessian-weighted error exceeds τ times the layer's
      mean (``inf`` disables outliers).  target_outliers: if set, τ is raised per layer
      until at most this fraction of its weights are outliers.
    The solve and calibration fields: ``HessianSolve`` (block_size must be a multiple of group_size).
    Format: ``SpQRWeight``; lowers to ``edgeq::SpQRMatMul``.
    """

    bits: int = 3
    group_size: int = 16
    stat_bits: int = 3
    stat_group_size: int = 16
    outlier_threshold: float = 0.2
    target_outliers: float | None = None
    version: int = 1

    def __post_init__(self):
        check_grid(self.bits, self.group_size)
        self.check_solve()
        check_grid(self.stat_bits, self.stat_group_size)
        if self.group_size == -1 or self.stat_group_size == -1:
            raise EdgeqError("SpQR needs finite group sizes (β1, β2)")
        if self.block_size % self.group_size:
            raise EdgeqError(f"SpQR block_size {self.block_size} must be a multiple of group_size {self.group_size}")
        if not self.outlier_threshold > 0:
            raise EdgeqError(f"outlier threshold must be > 0 (inf disables outliers), got {self.outlier_threshold}")
        if self.target_outliers is not None and not 0 <= self.target_outliers < 1:
            raise EdgeqError(f"target outlier fraction must be in [0, 1), got {self.target_outliers}")


@dataclass(frozen=True)
class OmniQuantConfig(Calibration):
    """OmniQuant (Shao et al. 2023): block-wise learned weight clipping (LWC) and equivalent transformation (LET).

    wbits: weight bits.  abits: activation bits; 16 = weight-only (W4A16...), else per-token dynamic
      activation quantization (W8A8, W6A6, W4A4) with per-channel weights.
    sym: symmetric weight grid (zero point 2^(wbits-1)) instead of min-max asymmetric with an integer zero point.
    act_sym: symmetric per-token activation codes instead of asymmetric ones with a zero point per token.
      The defaults are the paper's code: asymmetric weights and activations.
    smooth_down: LET also between up_proj and down_proj (SiLU(gate) * up is linear in up, so a channel scale moves
      from down_proj's input into up_proj's rows exactly, folded like the others). Not in the paper, whose LET
      leaves down_proj's input (the SwiGLU product, LLaMA's worst activation outliers) alone; I-LLM's FSBR
      smooths it. Needs LET on.
    group_size: weight-only group along the input dim (paper: 128); weight-activation configs are per channel.
    let: learn channel scales (LET); None = the paper's choice, on for weight-activation, off for weight-only.
    epochs, lwc_lr, let_lr, weight_decay, batch_size: AdamW training of each block (paper: 20 epochs, 40 for W2).
    alpha: SmoothQuant migration strength of the LET initialisation.
    Calibration fields: ``Calibration`` (paper: 128 x 2048).
    Format: ``GroupQuantWeight`` (+ rewritten norms); lowers to MatMulNBits / GroupQuantMatMul (weight-only) or
    ``edgeq::QuantLinear`` (weight-activation).
    """

    wbits: int = 4
    abits: int = 16
    group_size: int = 128
    let: bool | None = None
    sym: bool = False
    act_sym: bool = False
    smooth_down: bool = False
    epochs: int = 20
    lwc_lr: float = 1e-2
    let_lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 4
    alpha: float = 0.5
    version: int = 1

    def __post_init__(self):
        check_grid(self.wbits, self.group_size)
        self.check_calibration()
        if self.abits != 16 and not MIN_BITS <= self.abits <= MAX_BITS:
            raise EdgeqError(f"activation bits must be 16 (none) or {MIN_BITS}..{MAX_BITS}, got {self.abits}")
        if self.epochs < 0 or self.batch_size < 1:
            raise EdgeqError("epochs must be >= 0 and batch_size >= 1")
        if self.smooth_down and not self.use_let:
            raise EdgeqError("smooth_down is a LET scale: it needs LET on (let=True, or a weight-activation config)")

    @property
    def use_let(self) -> bool:
        return self.abits < 16 if self.let is None else self.let


@dataclass(frozen=True)
class ILLMConfig(OmniQuantConfig):
    """I-LLM (Hu et al. 2024) Fully-Smooth Block Reconstruction: OmniQuant's block trainer with smoothing of every
    activation-weight and activation-activation pair (norm -> q/k/v, norm -> gate/up, v -> o (P.V), q -> k
    (Q.K^T), up -> down (the SwiGLU product)) and a learned clipped-softmax range per layer, trained against a
    forward that simulates the integer-only graph (``passes/integer_only.py``): abits codes on every linear
    input, 8-bit projections, rotary, KV cache, probabilities and residual stream.

    wbits, abits: W8A8 / W6A6 / W4A4 (weights per channel, LWC). sym: a symmetric weight grid; the default is
    min-max with a zero point per channel (DIMatMul's w_zero), 2.4 points better at W6A6 on SmolLM2 and even at
    W8A8 (BENCHMARKS.md). act_sym=False: the linears' input codes carry a zero point per token (DINorm, DIRequant
    and DISwiGLU with act_sym=0, DIMatMul's x_zero; CPU and CUDA kernels).  softmax_clip: initial clipping range
    c of the softmax input ([max - c, max]); learned with clip_lr unless clip_lr = 0; 0 disables clipping.
    act_clip: also learn (at clip_lr, from 1.0) a clip of the per-token range of each activation a linear reads
    (the two norms' outputs, the heads into o_proj, the SwiGLU output), exported as the ops' ``clip_q15``.
    Other fields: ``OmniQuantConfig`` (group_size must stay -1, LET is always on).
    Format: ``GroupQuantWeight`` (+ rewritten norms, + each layer's ``self_attn.softmax_clip`` and, with
    act_clip, ``self_attn.act_clip``: the four clips in the order of ``illm.ACT_CLIP_SITES``); lowers to
    ``edgeq::QuantLinear`` and, with the ``integer-only`` pass, to the DI* ops.
    """

    wbits: int = 8
    abits: int = 8
    group_size: int = -1
    sym: bool = False
    act_sym: bool = True
    softmax_clip: float = 12.0
    clip_lr: float = 1e-2
    act_clip: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.abits == 16 or self.group_size != -1 or self.let is False:
            raise EdgeqError("I-LLM quantizes weights and activations: abits < 16, group_size=-1, let on")
        if not self.act_sym and self.act_clip:
            raise EdgeqError("I-LLM's learned activation clips need symmetric activation codes (act_sym)")
        if self.softmax_clip < 0 or self.clip_lr < 0:
            raise EdgeqError("softmax_clip and clip_lr must be >= 0")


METHODS = {"rtn": RTNConfig, "gptq": GPTQConfig, "spqr": SpQRConfig, "omniquant": OmniQuantConfig, "illm": ILLMConfig}


def config_to_dict(config) -> dict:
    name = next(k for k, v in METHODS.items() if type(config) is v)
    return {"method": name, **asdict(config)}


def config_from_dict(data: dict):
    data = dict(data)
    method = data.pop("method", None)
    if method not in METHODS:
        raise EdgeqError(f"unknown quantization method '{method}' (known: {', '.join(METHODS)})")
    cls = METHODS[method]
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def config_from_spec(spec: str):
    """``METHOD:key=value,...`` (e.g. ``gptq:bits=3,group_size=128``) into that method's config; the one
    spelling of a config on the command line (``--compare``, ``edgeq bench``)."""
    method, _, rest = spec.partition(":")
    if method not in METHODS:
        raise EdgeqError(f"config spec '{spec}': unknown method '{method}' (known: {', '.join(METHODS)})")
    kwargs = parse_spec_args(spec, rest)
    try:
        return METHODS[method](**kwargs)
    except TypeError as e:
        raise EdgeqError(f"config spec '{spec}': {e}") from e


def parse_spec_args(spec: str, text: str) -> dict:
    kwargs = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise EdgeqError(f"config spec '{spec}': '{item}' is not key=value")
        kwargs[key.strip()] = _spec_value(value.strip())
    return kwargs


def _spec_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)
