"""Which weight gets which :class:`QuantSpec`: ordered name rules, first match wins.

Rules match *logical* parameter names (``encoder.layers.0.ff1.linear1.weight``), also on a
model that is already prepared (where the stored name has ``.parametrizations.weight.original``).
Only weights are candidates — parameters with two or more dims whose own name contains
``weight`` (``weight``, ``in_proj_weight``, ``weight_ih_l0`` …): biases (also 2-D ones such as
the attention's ``pos_bias_u``), norm scales and BatchNorm statistics always stay float, as in
the paper.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor, nn

from lowbit_asr.quant.spec import QuantSpec, _reject_unknown_keys

INDIVISIBLE_CHOICES = ("error", "per_channel")


@dataclass(frozen=True)
class PolicyRule:
    """One rule: parameters whose name matches ``pattern`` get ``spec`` (``None`` = float).

    ``pattern`` is a glob (``fnmatch``, ``*`` also crosses dots) matched against the full
    name, or a regular expression (full match) when written ``re:<regex>``.
    """

    pattern: str
    spec: QuantSpec | None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"PolicyRule.pattern must be a non-empty string, got {self.pattern!r}")
        if self.pattern.startswith("re:"):
            try:
                re.compile(self.pattern[3:])
            except re.error as err:
                raise ValueError(f"PolicyRule.pattern {self.pattern!r}: bad regex: {err}") from err

    def matches(self, name: str) -> bool:
        """Whether this rule applies to parameter ``name``."""
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class PlannedTensor:
    """The decision for one candidate weight of a model under a policy."""

    name: str
    """Logical parameter name, e.g. ``encoder.layers.0.ff1.linear1.weight``."""
    shape: tuple[int, ...]
    spec: QuantSpec | None
    """The spec applied (after any per-channel fallback), or ``None`` for float."""
    group_size: int | None
    """Resolved group length g (K when per-channel); ``None`` for float."""
    source: str
    """Why: ``rules[i] '<pattern>'``, ``default``, plus ``(fell back to per_channel)``."""


@dataclass(frozen=True)
class QuantPolicy:
    """Ordered (pattern -> spec | float) rules, first match wins, then ``default``."""

    rules: tuple[PolicyRule, ...] = ()
    """Rules tried in order; the first whose pattern matches decides."""
    default: QuantSpec | None = None
    """Spec for candidate weights no rule matches; ``None`` keeps them float."""
    float_bits: int = 32
    """Bits per element counted (and stored) for tensors that stay float: 32 or 16."""
    indivisible: str = "error"
    """When a group size does not divide K: ``error`` or ``per_channel`` (fall back)."""
    name: str = field(default="", compare=False)
    """Optional label for reports (e.g. the config name)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, PolicyRule):
                raise ValueError(f"QuantPolicy.rules[{i}] must be a PolicyRule, got {rule!r}")
        if self.float_bits not in (16, 32):
            raise ValueError(f"QuantPolicy.float_bits must be 16 or 32, got {self.float_bits!r}")
        if self.indivisible not in INDIVISIBLE_CHOICES:
            raise ValueError(
                f"QuantPolicy.indivisible must be one of {INDIVISIBLE_CHOICES},"
                f" got {self.indivisible!r}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def uniform(cls, spec: QuantSpec | None, **kwargs: Any) -> QuantPolicy:
        """Every candidate weight gets ``spec``."""
        return cls(default=spec, **kwargs)

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> QuantPolicy:
        """Build from plain config (dicts/lists or OmegaConf), as Hydra composes it.

        Shape::

            default: {bits: 4, symmetric: false}     # or null (float)
            float_bits: 32
            indivisible: error
            rules:
              - {pattern: "encoder.*.ff*.weight", spec: {bits: 2, symmetric: false, group_size: 16}}
              - {pattern: "predictor.embedding.weight", spec: null}
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"quantizer config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        _reject_unknown_keys(cls, data)
        raw_rules = data.pop("rules", None) or []
        if isinstance(raw_rules, str | bytes) or not isinstance(raw_rules, Sequence):
            raise ValueError(f"quantizer.rules must be a list, got {raw_rules!r}")
        rules = []
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, Mapping) or set(raw) != {"pattern", "spec"}:
                raise ValueError(
                    f"quantizer.rules[{i}] must be a mapping with exactly the keys 'pattern' and"
                    f" 'spec' (spec: null keeps the tensor float), got {raw!r}"
                )
            spec = raw["spec"]
            try:
                parsed = None if spec is None else QuantSpec.from_config(spec)
                rules.append(PolicyRule(pattern=raw["pattern"], spec=parsed))
            except ValueError as err:
                raise ValueError(f"quantizer.rules[{i}]: {err}") from err
        default = data.pop("default", None)
        try:
            default_spec = None if default is None else QuantSpec.from_config(default)
        except ValueError as err:
            raise ValueError(f"quantizer.default: {err}") from err
        return cls(rules=tuple(rules), default=default_spec, **data)

    def to_config(self) -> dict[str, Any]:
        """Plain-dict form (inverse of :meth:`from_config`)."""
        return {
            "name": self.name,
            "default": None if self.default is None else self.default.to_config(),
            "float_bits": self.float_bits,
            "indivisible": self.indivisible,
            "rules": [
                {"pattern": r.pattern, "spec": None if r.spec is None else r.spec.to_config()}
                for r in self.rules
            ],
        }

    # ---- decisions ----------------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        """True when the policy can quantize nothing."""
        return self.default is None and all(r.spec is None for r in self.rules)

    def match(self, name: str) -> tuple[QuantSpec | None, str]:
        """The spec for ``name`` and which rule (or the default) decided it."""
        for i, rule in enumerate(self.rules):
            if rule.matches(name):
                return rule.spec, f"rules[{i}] {rule.pattern!r}"
        return self.default, "default"

    def plan(self, model: nn.Module) -> list[PlannedTensor]:
        """Decide every candidate weight of ``model``; validate the policy against it.

        Raises ``ValueError`` when a rule matches no candidate weight (a typo must not leave a
        model silently float) or a group size does not divide a tensor (unless
        ``indivisible='per_channel'``). Errors name the rule or the parameter.
        """
        candidates = list(quantizable_weights(model))
        for i, rule in enumerate(self.rules):
            if not any(rule.matches(name) for name, _ in candidates):
                raise ValueError(
                    f"quantizer.rules[{i}] pattern {rule.pattern!r} matches no quantizable weight"
                    f" of {type(model).__name__} (weights with >= 2 dims; e.g."
                    f" {', '.join(n for n, _ in candidates[:3])}, ...)"
                )
        planned = []
        fell_back = 0
        for name, weight in candidates:
            spec, source = self.match(name)
            group_size = None
            if spec is not None:
                k = weight.numel() // weight.shape[0]
                try:
                    group_size = spec.group_size_for(k, name)
                except ValueError as err:
                    if self.indivisible != "per_channel":
                        raise ValueError(
                            f"{err} (spec from {source}; set quantizer.indivisible=per_channel to"
                            " fall back, or add a rule for this tensor)"
                        ) from err
                    spec = replace(spec, group_size=None, sub_channels=None)
                    group_size = k
                    source += " (fell back to per_channel)"
                    fell_back += 1
            planned.append(PlannedTensor(name, tuple(weight.shape), spec, group_size, source))
        if fell_back:
            quantized = sum(p.spec is not None for p in planned)
            warnings.warn(
                f"quantizer {self.name or '(unnamed)'}: {fell_back} of {quantized} quantized"
                " weights fell back to per-channel scales (their group size does not divide"
                " the row; quantizer.indivisible=per_channel)"
                + (": the policy's groups apply to none of them" if fell_back == quantized
                   else ""), stacklevel=2)
        return planned


def logical_name(name: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight``; other names unchanged."""
    return re.sub(r"\.?parametrizations\.([^.]+)\.original$", r".\1", name).lstrip(".")


def is_quantizable(name: str, param: Tensor) -> bool:
    """A weight matrix or kernel: >= 2 dims and ``weight`` in its own (last) name."""
    return param.dim() >= 2 and "weight" in name.rsplit(".", 1)[-1]


def quantizable_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(logical name, float master weight) for every quantization candidate."""
    for name, param in model.named_parameters():
        logical = logical_name(name)
        if is_quantizable(logical, param):
            yield logical, param
