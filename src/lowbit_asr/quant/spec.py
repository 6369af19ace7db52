"""Quantization settings: small frozen dataclasses that validate on construction.

The math they configure is pinned in METHOD.md (see :mod:`lowbit_asr.quant.fake_quant`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

SCALE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
"""Storage dtypes allowed for scales and asymmetric offsets, by config name."""
SCALE_METHODS = ("minmax", "learned")
"""How a group's scale (and offset) is set: from the group's min/max at every forward pass
(clipped or clip-searched), or ``learned`` (LSQ / LSQ+): parameters trained with the weights,
initialised from min/max (or the clip search)."""


def _require_positive_int(owner: str, name: str, value: Any) -> None:
    # bool is an int subclass; `group_size: true` in a YAML file is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _reject_unknown_keys(cls: type, data: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} got unknown key(s) {unknown}; allowed keys: {sorted(known)}"
        )


@dataclass(frozen=True)
class ClipSearch:
    """Search the clipping coefficient that minimises the L1 quantization error.

    Candidates are ``linspace(1.0, min, steps)``; the best is kept per tensor or, with
    ``per_channel``, per output channel. Runs at every forward pass, without gradient.
    """

    min: float = 0.5
    """Smallest clipping coefficient tried, in (0, 1]."""
    steps: int = 8
    """Number of candidates, including 1.0 (>= 1)."""
    per_channel: bool = False
    """Pick the coefficient per output channel instead of per tensor."""

    def __post_init__(self) -> None:
        if isinstance(self.min, bool) or not isinstance(self.min, int | float):
            raise ValueError(f"ClipSearch.min must be a number in (0, 1], got {self.min!r}")
        if not 0.0 < float(self.min) <= 1.0:
            raise ValueError(f"ClipSearch.min must be in (0, 1], got {self.min!r}")
        _require_positive_int("ClipSearch", "steps", self.steps)
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"ClipSearch.per_channel must be a bool, got {self.per_channel!r}")

    @classmethod
    def from_config(cls, data: ClipSearch | Mapping[str, Any]) -> ClipSearch:
        """Build from a mapping (plain dict or OmegaConf ``DictConfig``)."""
        if isinstance(data, ClipSearch):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"QuantSpec.clip_search must be a mapping or null, got {data!r}")
        data = dict(data)
        _reject_unknown_keys(cls, data)
        return cls(**data)

    def candidates(self) -> list[float]:
        """The clipping coefficients tried, from 1.0 down to ``min``."""
        return torch.linspace(1.0, float(self.min), self.steps, dtype=torch.float64).tolist()


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized (weights only; dim 0 = output channels).

    ``group_size`` / ``sub_channels`` unset means per-channel scales; setting one of them
    cuts each output channel's flattened input dimension K into contiguous groups, each with
    its own scale (and offset when asymmetric).
    """

    bits: int
    """Integer bit width, 1..8. Symmetric needs >= 2 (symmetric 2-bit is ternary)."""
    symmetric: bool = True
    """Zero-preserving grid s*q (True) or affine grid s*q + offset (False)."""
    group_size: int | None = None
    """Sub-channel: contiguous groups of this many input elements per output channel."""
    sub_channels: int | None = None
    """Sub-channel: this many equal groups per output channel (group_size = K / sub_channels)."""
    clip: float = 1.0
    """Fixed clipping coefficient c in (0, 1] applied to the group's range."""
    clip_search: ClipSearch | None = None
    """Search c per forward pass instead of fixing it (then ``clip`` must stay 1.0)."""
    scale_dtype: str = "float16"
    """Stored dtype of scales and offsets: float16, bfloat16 or float32."""
    scale: str = "minmax"
    """``minmax`` (recomputed every forward pass) or ``learned`` (LSQ, Esser et al. 2020; with a
    learned offset when asymmetric, LSQ+, Bhalgat et al. 2020): ``clip``/``clip_search`` then
    set only the initial value."""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"QuantSpec.bits must be an integer in 1..8, got {self.bits!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"QuantSpec.symmetric must be a bool, got {self.symmetric!r}")
        if self.symmetric and self.bits < 2:
            raise ValueError(
                "QuantSpec.symmetric needs bits >= 2 (a symmetric 1-bit grid has only the level 0);"
                " use symmetric: false for 1-bit"
            )
        if self.group_size is not None and self.sub_channels is not None:
            raise ValueError(
                "QuantSpec.group_size and QuantSpec.sub_channels are exclusive: set at most one"
                f" (got group_size={self.group_size!r}, sub_channels={self.sub_channels!r})"
            )
        if self.group_size is not None:
            _require_positive_int("QuantSpec", "group_size", self.group_size)
        if self.sub_channels is not None:
            _require_positive_int("QuantSpec", "sub_channels", self.sub_channels)
        if isinstance(self.clip, bool) or not isinstance(self.clip, int | float):
            raise ValueError(f"QuantSpec.clip must be a number in (0, 1], got {self.clip!r}")
        if not 0.0 < float(self.clip) <= 1.0:
            raise ValueError(f"QuantSpec.clip must be in (0, 1], got {self.clip!r}")
        if self.clip_search is not None:
            object.__setattr__(self, "clip_search", ClipSearch.from_config(self.clip_search))
            if float(self.clip) != 1.0:
                raise ValueError(
                    "QuantSpec.clip and QuantSpec.clip_search are exclusive: with clip_search the"
                    f" coefficient is searched, so leave clip at 1.0 (got clip={self.clip!r})"
                )
        if self.scale not in SCALE_METHODS:
            raise ValueError(f"QuantSpec.scale must be one of {SCALE_METHODS}, got {self.scale!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                f"QuantSpec.scale_dtype must be one of {sorted(SCALE_DTYPES)},"
                f" got {self.scale_dtype!r}"
            )

    @classmethod
    def from_config(cls, data: QuantSpec | Mapping[str, Any]) -> QuantSpec:
        """Build from a mapping (plain dict or OmegaConf ``DictConfig``); unknown keys fail."""
        if isinstance(data, QuantSpec):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a quantization spec must be a mapping, got {data!r}")
        data = dict(data)
        _reject_unknown_keys(cls, data)
        if "bits" not in data:
            raise ValueError("QuantSpec.bits is required")
        if data.get("clip_search") is not None:
            data["clip_search"] = ClipSearch.from_config(data["clip_search"])
        return cls(**data)

    def to_config(self) -> dict[str, Any]:
        """Plain-dict form (inverse of :meth:`from_config`), for YAML/JSON and W&B."""
        return asdict(self)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def learned(self) -> bool:
        """Whether scales (and offsets) are trained parameters."""
        return self.scale == "learned"

    @property
    def qmin(self) -> int:
        """Lowest integer code of the signed grid, -2^(b-1)."""
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Highest integer code of the signed grid, 2^(b-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        """The torch dtype scales and offsets are stored in."""
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def scale_bits(self) -> int:
        """Bits of one stored scale (or offset)."""
        return torch.finfo(self.torch_scale_dtype).bits

    @property
    def values_per_group(self) -> int:
        """Stored floats per group: the scale, plus the offset when asymmetric."""
        return 1 if self.symmetric else 2

    @property
    def granularity(self) -> str:
        """``per_channel``, ``g<N>`` (group size) or ``sc<N>`` (sub-channel count)."""
        if self.group_size is not None:
            return f"g{self.group_size}"
        if self.sub_channels is not None:
            return f"sc{self.sub_channels}"
        return "per_channel"

    def group_size_for(self, k: int, name: str = "weight") -> int:
        """Group length along the flattened input dim of size ``k``; K itself if per-channel.

        Raises ``ValueError`` naming ``name`` when ``k`` is not divisible.
        """
        if self.group_size is not None:
            if k % self.group_size:
                raise ValueError(
                    f"{name}: group_size={self.group_size} does not divide its input size K={k}"
                )
            return self.group_size
        if self.sub_channels is not None:
            if k % self.sub_channels:
                raise ValueError(
                    f"{name}: sub_channels={self.sub_channels} does not divide its input size K={k}"
                )
            return k // self.sub_channels
        return k

    def short(self) -> str:
        """Compact human-readable form, e.g. ``int2-asym-g16-clip0.9-f16`` (``-lsq``: learned)."""
        parts = [f"int{self.bits}", "sym" if self.symmetric else "asym", self.granularity]
        if self.clip_search is not None:
            cs = self.clip_search
            parts.append(f"clipsearch{cs.min:g}x{cs.steps}{'-pc' if cs.per_channel else ''}")
        elif float(self.clip) != 1.0:
            parts.append(f"clip{self.clip:g}")
        parts.append({"float16": "f16", "bfloat16": "bf16", "float32": "f32"}[self.scale_dtype])
        if self.learned:
            parts.append("lsq")
        return "-".join(parts)
