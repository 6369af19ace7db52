"""Typed configuration of the Conformer RNN-T: plain dataclasses, one docstring per field.

The YAML files under ``conf/model/`` mirror these classes field by field. Both ways of loading
them work and give the same object:

    ModelConfig(**yaml_dict)                                # nested dicts are converted
    OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), yaml_cfg))

Validation happens in ``__post_init__`` and every error names the offending field with its
dotted path (``encoder.d_model``), so a bad YAML fails at build time with a readable message.
The vocabulary size is not part of the config: it comes from the tokenizer at runtime
(``build_model(cfg, vocab_size)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbit_asr.data.audio import N_MELS
from lowbit_asr.schema import coerce

SUBSAMPLING_FACTORS = (4, 6, 8)
"""Supported time reduction factors of the convolutional front end."""

DECODING_METHODS = ("greedy", "beam")
"""Supported search algorithms."""

PREDICTOR_KINDS = ("lstm", "stateless")
"""Prediction networks: an LSTM over the whole label history, or a stateless one that sees only
the last ``context_size`` labels (Ghodsi et al. 2020; icefall's transducer decoder)."""

RNNT_LOSS_IMPLS = ("torchaudio", "torch", "pruned")
"""Implementations of the RNN-T loss: torchaudio's fused kernel and ``rnnt_loss.rnnt_nll`` on
the full lattice, or the pruned loss (``RNNT._pruned_losses``)."""

NORMALISATIONS = ("global", "utterance", "utterance_mvn")
"""``global``: subtract the train mean; ``utterance``: subtract each utterance's own mean (per
bin, over its frames: cepstral mean normalisation, which removes a voice's or a channel's fixed
spectral tilt and level). Both divide by the train standard deviation. ``utterance_mvn``: the
utterance's own mean and standard deviation per bin (mean and variance normalisation: also
equalises how much each bin moves, which differs between synthesis methods and voices)."""

UTTERANCE_STD_FLOOR = 1e-2
"""Smallest per-bin standard deviation ``utterance_mvn`` divides by (a constant bin, e.g. a
digital-silence floor, stays 0 instead of blowing up)."""


def _require_positive(obj: object, prefix: str, *names: str) -> None:
    """Raise ``ValueError`` naming ``prefix.name`` when an integer field is not >= 1."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{prefix}.{name} must be a positive integer, got {value!r}")


def _require_probability(obj: object, prefix: str, *names: str) -> None:
    """Raise ``ValueError`` naming ``prefix.name`` when a rate is outside [0, 1)."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{prefix}.{name} must be in [0, 1), got {value!r}")


def check_lifter(value: object, bins: int, name: str) -> None:
    """``value`` must be 0 (off) or a coefficient count in 1..``bins``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= bins:
        raise ValueError(f"{name} must be an integer in 0..{bins} (0 = off), got {value!r}")


@dataclass
class FrontEndConfig:
    """How the model turns log-mel frames into its input (``model/frontend.py``). The train
    statistics themselves are model state (buffers), set from the training data."""

    normalisation: str = "global"
    """``global``: subtract the train mean per bin; ``utterance``: each utterance's own mean
    (removes a voice's level and spectral tilt); both divide by the train std.
    ``utterance_mvn``: the utterance's own mean and std per bin."""
    cepstral_lifter: int = 0
    """Keep the first this-many DCT coefficients of each normalised log-mel frame (0 = off):
    smooths pitch harmonics out of the spectral envelope, the MFCC habit for speaker
    robustness."""

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"frontend.normalisation must be one of {NORMALISATIONS}, "
                f"got {self.normalisation!r}"
            )
        check_lifter(self.cepstral_lifter, N_MELS, "frontend.cepstral_lifter")


@dataclass
class EncoderConfig:
    """Conformer encoder (Gulati et al. 2020) with a Conv2d subsampling front end."""

    feat_dim: int = 80
    """Input feature bins per frame (log-mel filterbank size)."""
    subsampling_factor: int = 4
    """Time reduction of the front end: 4 (two stride-2 convs), 6 (strides 2, 3), 8 (three)."""
    subsampling_channels: int | None = None
    """Channels of the subsampling convolutions; ``None`` means ``d_model``."""
    d_model: int = 144
    """Width of the residual stream of every block."""
    num_layers: int = 16
    """Number of Conformer blocks."""
    num_heads: int = 4
    """Self-attention heads; must divide ``d_model``."""
    ff_expansion: int = 4
    """Hidden width of each macaron feed-forward module, as a multiple of ``d_model``."""
    conv_kernel: int = 31
    """Depthwise convolution kernel size in frames (odd or even; padding keeps length)."""
    dropout: float = 0.1
    """Dropout on residual branches, after the front-end projection and inside feed-forwards."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities."""

    def __post_init__(self) -> None:
        p = "encoder"
        _require_positive(
            self, p, "feat_dim", "d_model", "num_layers", "num_heads", "ff_expansion", "conv_kernel"
        )
        if self.subsampling_channels is not None:
            _require_positive(self, p, "subsampling_channels")
        if self.subsampling_factor not in SUBSAMPLING_FACTORS:
            raise ValueError(
                f"{p}.subsampling_factor must be one of {SUBSAMPLING_FACTORS}, "
                f"got {self.subsampling_factor!r}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"{p}.d_model={self.d_model} must be divisible by {p}.num_heads={self.num_heads}"
            )
        if (self.d_model // self.num_heads) % 2:
            # The sinusoidal table interleaves sin/cos, so d_model must be even; the per-head
            # width being even guarantees that and keeps heads symmetric.
            raise ValueError(
                f"{p}.d_model / {p}.num_heads = {self.d_model // self.num_heads} must be even"
            )
        _require_probability(self, p, "dropout", "attention_dropout")


@dataclass
class PredictorConfig:
    """RNN-T prediction network: token embedding, then an LSTM stack (``kind: lstm``) or a
    causal convolution over the last ``context_size`` tokens (``kind: stateless``)."""

    kind: str = "lstm"
    """``lstm`` | ``stateless`` (see ``PREDICTOR_KINDS``)."""
    embed_dim: int = 320
    """Token embedding width (blank id 0 doubles as the start-of-sequence input)."""
    hidden_dim: int = 320
    """The predictor output width: the LSTM's hidden width, or the stateless convolution's
    output channels."""
    num_layers: int = 1
    """LSTM layers (1 or 2); ``stateless`` has one convolution and takes only 1."""
    context_size: int = 2
    """``stateless`` only: tokens the convolution sees (the last emitted one and the
    ``context_size - 1`` before it; blanks before the start). ``lstm`` takes only the default."""
    dropout: float = 0.1
    """Dropout after the embedding, between LSTM layers and after the LSTM or convolution."""

    def __post_init__(self) -> None:
        p = "predictor"
        if self.kind not in PREDICTOR_KINDS:
            raise ValueError(f"{p}.kind must be one of {PREDICTOR_KINDS}, got {self.kind!r}")
        _require_positive(self, p, "embed_dim", "hidden_dim", "num_layers", "context_size")
        if self.num_layers > 2:
            raise ValueError(f"{p}.num_layers must be 1 or 2, got {self.num_layers}")
        if self.kind == "stateless" and self.num_layers != 1:
            raise ValueError(
                f"{p}.num_layers is the LSTM's depth; kind=stateless has one convolution,"
                f" got num_layers={self.num_layers}")
        if self.kind == "lstm" and self.context_size != 2:
            raise ValueError(
                f"{p}.context_size applies to kind=stateless (an LSTM sees every earlier"
                f" token), got context_size={self.context_size} with kind=lstm")
        _require_probability(self, p, "dropout")


@dataclass
class JoinerConfig:
    """RNN-T joint network: project both streams to ``dim``, add, tanh, project to vocab."""

    dim: int = 320
    """Width of the joint space."""

    def __post_init__(self) -> None:
        _require_positive(self, "joiner", "dim")


@dataclass
class DecodingConfig:
    """Search used by ``RNNT.decode`` (evaluation-time only; no parameters)."""

    method: str = "greedy"
    """``greedy`` (batched over utterances) or ``beam`` (time-synchronous beam search)."""
    beam_size: int = 4
    """Hypotheses kept per frame by beam search; beam 1 reproduces greedy exactly."""
    max_symbols_per_frame: int = 5
    """Cap on non-blank symbols emitted at one encoder frame (both methods)."""
    rescore: bool = True
    """Beam only: re-rank final beam + greedy hypothesis by exact log P(y|x) (never worse)."""

    def __post_init__(self) -> None:
        p = "decoding"
        if self.method not in DECODING_METHODS:
            raise ValueError(f"{p}.method must be one of {DECODING_METHODS}, got {self.method!r}")
        _require_positive(self, p, "beam_size", "max_symbols_per_frame")
        if not isinstance(self.rescore, bool):
            raise ValueError(f"{p}.rescore must be true or false, got {self.rescore!r}")


@dataclass
class PrunedLossConfig:
    """Pruned RNN-T loss (``rnnt_loss_impl: pruned``), with icefall's defaults.

    ``loss = simple_scale * simple + pruned_scale * pruned (+ ctc_weight * ctc)``: the simple
    loss trains two extra projections (encoder -> V, predictor -> V) whose additive lattice
    chooses, per frame, the ``prune_range`` label positions the real joiner is evaluated at.
    During the first ``warmup_steps`` optimiser steps the scales move linearly from (1.0, 0.1)
    to (``simple_loss_scale``, 1.0), as icefall's transducer recipes do (the pruning bounds are
    poor until the simple loss has learnt something).
    """

    prune_range: int = 5
    """Label positions per frame kept in the pruned lattice (>= 2; U+1 or more prunes nothing)."""
    simple_loss_scale: float = 0.5
    """Weight of the simple (additive-joiner) loss after warm-up."""
    lm_scale: float = 0.25
    """Share of the LM-only log-probabilities in the simple lattice (k2's ``lm_only_scale``)."""
    am_scale: float = 0.0
    """Share of the AM-only log-probabilities in the simple lattice (k2's ``am_only_scale``)."""
    warmup_steps: int = 2000
    """Optimiser steps over which the loss scales move to their final values (0 = none). A run
    initialised from a float checkpoint (``init.mode=float_ckpt``, e.g. QAT) skips the warm-up:
    its simple joiner is already trained."""

    def __post_init__(self) -> None:
        p = "pruned"
        if not isinstance(self.prune_range, int) or self.prune_range < 2:
            raise ValueError(f"{p}.prune_range must be an integer >= 2, got {self.prune_range!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"{p}.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        for name in ("simple_loss_scale", "lm_scale", "am_scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{p}.{name} must be a number in [0, 1], got {value!r}")
        if self.lm_scale + self.am_scale > 1:
            raise ValueError(
                f"{p}.lm_scale + {p}.am_scale must be <= 1, got {self.lm_scale + self.am_scale}")

    def scales(self, step: int | None) -> tuple[float, float]:
        """(simple, pruned) loss scales at optimiser step ``step`` (None = after warm-up)."""
        if step is None or step >= self.warmup_steps:
            return float(self.simple_loss_scale), 1.0
        frac = step / self.warmup_steps
        return 1.0 - frac * (1.0 - self.simple_loss_scale), 0.1 + 0.9 * frac


@dataclass
class ModelConfig:
    """Conformer RNN-T: front end, encoder, predictor, joiner, optional CTC head, loss and
    search knobs."""

    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    """Feature normalisation (its statistics are buffers of the model)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Conformer encoder."""
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    """Prediction network."""
    joiner: JoinerConfig = field(default_factory=JoinerConfig)
    """Joint network."""
    ctc_weight: float = 0.0
    """Weight of the auxiliary CTC loss (``loss = rnnt + ctc_weight * ctc``); 0 builds no head."""
    joint_chunk_size: int = 0
    """Utterances per joint-network chunk in the loss (0 = whole batch); see ``RNNT.forward``."""
    rnnt_loss_impl: str = "torchaudio"
    """``torchaudio`` (fused C++ kernel), ``torch`` (autograd; the loss ~3.5x faster on CPU), both
    on the full lattice, or ``pruned`` (the pruned RNN-T loss, settings under ``pruned``)."""
    pruned: PrunedLossConfig = field(default_factory=PrunedLossConfig)
    """Pruned-loss settings; only ``rnnt_loss_impl: pruned`` reads them (set otherwise: refused)."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """Search settings used by ``RNNT.decode``."""

    def __post_init__(self) -> None:
        self.frontend = coerce(self.frontend, FrontEndConfig, "frontend")
        self.encoder = coerce(self.encoder, EncoderConfig, "encoder")
        self.predictor = coerce(self.predictor, PredictorConfig, "predictor")
        self.joiner = coerce(self.joiner, JoinerConfig, "joiner")
        self.decoding = coerce(self.decoding, DecodingConfig, "decoding")
        self.pruned = coerce(self.pruned, PrunedLossConfig, "pruned")
        if not isinstance(self.ctc_weight, int | float) or self.ctc_weight < 0:
            raise ValueError(f"ctc_weight must be a number >= 0, got {self.ctc_weight!r}")
        if self.rnnt_loss_impl not in RNNT_LOSS_IMPLS:
            raise ValueError(
                f"rnnt_loss_impl must be one of {RNNT_LOSS_IMPLS}, got {self.rnnt_loss_impl!r}"
            )
        if not isinstance(self.joint_chunk_size, int) or self.joint_chunk_size < 0:
            raise ValueError(
                f"joint_chunk_size must be an integer >= 0, got {self.joint_chunk_size!r}"
            )
        if self.rnnt_loss_impl != "pruned" and self.pruned != PrunedLossConfig():
            raise ValueError(
                "pruned.* is read only with rnnt_loss_impl=pruned (it is"
                f" {self.rnnt_loss_impl!r}); drop the pruned settings or set rnnt_loss_impl=pruned")
        if self.rnnt_loss_impl == "pruned" and self.joint_chunk_size:
            raise ValueError(
                "joint_chunk_size applies to the full lattice; with rnnt_loss_impl=pruned the"
                " lattice is already prune_range / (U+1) of it: set joint_chunk_size=0")
