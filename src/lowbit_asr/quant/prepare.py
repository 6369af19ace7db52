"""Attach fake quantization to a model's weights with ``torch.nn.utils.parametrize``.

Parametrization works for any module that reads its weight through the attribute at call time:
``nn.Linear``, ``nn.Conv1d/2d`` (depthwise included), ``nn.MultiheadAttention.in_proj_weight``,
``nn.LSTM`` ``weight_ih_l*``/``weight_hh_l*``, ``nn.Embedding`` and custom modules. The float
master weight stays the trained parameter (``<module>.parametrizations.<attr>.original`` in the
state dict); every forward pass reads its quantize-dequantize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lowbit_asr.quant.fake_quant import fake_quantize, fake_quantize_rows
from lowbit_asr.quant.policy import QuantPolicy, logical_name
from lowbit_asr.quant.spec import QuantSpec


class FakeQuantize(nn.Module):
    """Parametrization: weight -> quantize-dequantize(weight) with a straight-through gradient.

    Holds no tensors, so it adds nothing to the state dict. ``enabled = False`` passes the
    float weight through (float warm-up) without rebuilding the model.
    """

    def __init__(self, spec: QuantSpec, group_size: int, name: str) -> None:
        super().__init__()
        self.spec = spec
        self.group_size = group_size
        self.param_name = name
        self.enabled = True
        self.bucket: _Bucket | None = None
        """Set by :func:`prepare` when other weights share this spec and group size."""

    def forward(self, weight: Tensor) -> Tensor:
        """Quantize-dequantize ``weight`` (or pass it through when disabled)."""
        if not self.enabled:
            return weight
        if self.bucket is not None:
            out = self.bucket.fake_quantized(self, weight)
            if out is not None:
                return out
        return fake_quantize(weight, self.spec, self.param_name, self.group_size)

    def extra_repr(self) -> str:
        state = "" if self.enabled else ", disabled"
        return f"{self.spec.short()}, group_size={self.group_size}{state}"


class _Bucket:
    """Weights that share a spec and a group size, fake-quantized together as one
    (sum of O·G, g) tensor: one chain of ~15 element-wise ops for the bucket instead of one per
    weight (a model's ~70 weights made op dispatch most of the fake-quant time on a CPU).

    The first member read in a forward computes every member's weight; the others take theirs
    from the cache, which holds while no master weight has changed (their version counters, which
    every in-place update such as an optimiser step or ``load_state_dict`` increments) and the
    grad mode is the same. Each group is computed exactly as alone (the math is per group), so
    the values are bit-identical to :func:`fake_quantize` per weight. Specs with clip search
    (whose error is summed per tensor or channel) are not bucketed.
    """

    def __init__(self, spec: QuantSpec, group_size: int) -> None:
        self.spec = spec
        self.group_size = group_size
        self.members: list[tuple[FakeQuantize, parametrize.ParametrizationList]] = []
        self._cache: dict[int, tuple[tuple[int, int, bool], Tensor]] = {}

    @staticmethod
    def _key(weight: Tensor) -> tuple[int, int, bool]:
        return id(weight), weight._version, torch.is_grad_enabled()

    def fake_quantized(self, member: FakeQuantize, weight: Tensor) -> Tensor | None:
        """``member``'s quantize-dequantized weight (None when ``weight`` is not its master
        weight: the caller then computes it alone)."""
        cached = self._cache.get(id(member))
        if cached is not None and cached[0] == self._key(weight):
            return cached[1]
        originals = [plist.original for _, plist in self.members]
        if not any(weight is p for p in originals):
            return None
        outputs = fake_quantize_rows(originals, self.spec, self.group_size)
        self._cache = {
            id(m): (self._key(p), out)
            for (m, _), p, out in zip(self.members, originals, outputs, strict=True)
        }
        return self._cache[id(member)][1]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def prepare(model: nn.Module, policy: QuantPolicy) -> nn.Module:
    """Attach :class:`FakeQuantize` to every weight the policy quantizes; returns ``model``.

    Modifies ``model`` in place. Validates the policy first (see :meth:`QuantPolicy.plan`), so
    nothing is attached when the policy is wrong. Preparing twice is an error.
    """
    if any(True for _ in fake_quant_modules(model)):
        raise ValueError(f"{type(model).__name__} is already prepared for fake quantization")
    buckets: dict[tuple[QuantSpec, int], _Bucket] = {}
    for item in policy.plan(model):
        if item.spec is None:
            continue
        module, attr = _owner(model, item.name)
        assert item.group_size is not None
        fq = FakeQuantize(item.spec, item.group_size, item.name)
        parametrize.register_parametrization(module, attr, fq)
        if item.spec.clip_search is None:
            bucket = buckets.setdefault((item.spec, item.group_size),
                                        _Bucket(item.spec, item.group_size))
            bucket.members.append((fq, module.parametrizations[attr]))
    for bucket in buckets.values():
        if len(bucket.members) > 1:
            for fq, _ in bucket.members:
                fq.bucket = bucket
    return model


def fake_quant_modules(model: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    """(logical weight name, its :class:`FakeQuantize`) for every quantized weight."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, FakeQuantize):
                    yield (f"{module_name}.{attr}" if module_name else attr), p


def set_fake_quant_enabled(model: nn.Module, enabled: bool) -> int:
    """Switch fake quantization on or off everywhere in ``model``; returns how many weights."""
    count = 0
    for _, fq in fake_quant_modules(model):
        fq.enabled = enabled
        count += 1
    return count


def is_fake_quant_enabled(model: nn.Module) -> bool:
    """True when the model has fake-quantized weights and all of them are enabled."""
    states = [fq.enabled for _, fq in fake_quant_modules(model)]
    return bool(states) and all(states)


@contextlib.contextmanager
def fake_quant_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which ``model`` runs with float weights; restores each module's state after."""
    saved = [(fq, fq.enabled) for _, fq in fake_quant_modules(model)]
    for fq, _ in saved:
        fq.enabled = False
    try:
        yield model
    finally:
        for fq, state in saved:
            fq.enabled = state


def load_float_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a float model's state dict (``a.weight``) into ``model``, prepared or not.

    Keys are matched by logical name, so a float checkpoint initialises QAT. Missing or
    unexpected keys and shape mismatches raise ``ValueError`` naming the tensors.
    """
    own = model.state_dict()
    by_logical = {logical_name(key): key for key in own}
    missing = sorted(set(by_logical) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(by_logical))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}"
        )
    mismatched = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(own[key].shape)}"
        for name, key in by_logical.items() if state_dict[name].shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(f"shape mismatch (checkpoint vs model): {'; '.join(mismatched[:5])}")
    model.load_state_dict({key: state_dict[name] for name, key in by_logical.items()})
