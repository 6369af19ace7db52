"""Attach fake quantization to a model's weights with ``torch.nn.utils.parametrize``.

Parametrization works for any module that reads its weight through the attribute at call time:
``nn.Linear``, ``nn.Conv1d/2d`` (depthwise included), ``nn.MultiheadAttention.in_proj_weight``,
``nn.LSTM`` ``weight_ih_l*``/``weight_hh_l*``, ``nn.Embedding`` and custom modules. The float
master weight stays the trained parameter (``<module>.parametrizations.<attr>.original`` in the
state dict); every forward pass reads its quantize-dequantize.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lowbit_asr.quant.fake_quant import (
    fake_quantize,
    fake_quantize_learned,
    fake_quantize_many,
    initial_grid,
    straight_through,
)
from lowbit_asr.quant.policy import QuantPolicy, logical_name
from lowbit_asr.quant.spec import QuantSpec


class FakeQuantize(nn.Module):
    """Parametrization: weight -> quantize-dequantize(weight) with a straight-through gradient.

    With a ``learned`` spec it holds the trained grid: ``scale`` (and ``offset`` when
    asymmetric), float32 parameters (O, G, 1) initialised from the weight's min/max grid (see
    :func:`init_learned_grids`); otherwise no tensors, so it adds nothing to the state dict.
    ``enabled = False`` passes the float weight through (float warm-up) without rebuilding the
    model.
    """

    def __init__(self, spec: QuantSpec, group_size: int, name: str,
                 weight: Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.group_size = group_size
        self.param_name = name
        self.enabled = True
        self._batch: _FakeQuantBatch | None = None  # set inside batched_fake_quant
        if spec.learned:
            if weight is None:
                raise ValueError(f"{name}: learned scales start from the weight; pass it")
            scale, offset = initial_grid(weight, spec, group_size)
            self.scale = nn.Parameter(scale.clone())
            self.offset = None if offset is None else nn.Parameter(offset.clone())

    @torch.no_grad()
    def reset_grid(self, weight: Tensor) -> None:
        """Learned scale (and offset) back to ``weight``'s min/max grid (e.g. after new weights
        were loaded into the model)."""
        if not self.spec.learned:
            return
        scale, offset = initial_grid(weight, self.spec, self.group_size)
        self.scale.copy_(scale)
        if self.offset is not None and offset is not None:
            self.offset.copy_(offset)

    def grid(self) -> tuple[Tensor | None, Tensor | None]:
        """The learned (scale, offset), or (None, None) for a min/max spec."""
        if not self.spec.learned:
            return None, None
        return self.scale, self.offset

    def forward(self, weight: Tensor) -> Tensor:
        """Quantize-dequantize ``weight`` (or pass it through when disabled)."""
        if not self.enabled:
            return weight
        if self.spec.learned:
            return fake_quantize_learned(weight, self.spec, self.group_size, self.scale,
                                         self.offset)
        batch = getattr(self, "_batch", None)  # modules pickled before the attribute had none
        if batch is not None:
            value = batch.value(self, weight)
            if value is not None:
                return straight_through(weight, value)
        return fake_quantize(weight, self.spec, self.param_name, self.group_size)

    def extra_repr(self) -> str:
        state = "" if self.enabled else ", disabled"
        return f"{self.spec.short()}, group_size={self.group_size}{state}"


QUANTIZER_PARAMETER = re.compile(r"(^|\.)parametrizations\.[^.]+\.\d+\.[^.]+$")
"""Names of parameters a parametrization holds (learned scales and offsets), not the model's."""


def is_quantizer_parameter(name: str) -> bool:
    """Whether a state-dict / parameter name is a fake quantizer's own (a learned grid): stored
    as the quantized weight's scales, never as a tensor of its own."""
    return QUANTIZER_PARAMETER.search(name) is not None


def init_learned_grids(model: nn.Module, names: set[str] | None = None) -> int:
    """Learned grids of ``model`` reset to their weight's min/max grid: all, or those whose
    ``scale`` parameter name is in ``names``; how many."""
    count = 0
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            for i, p in enumerate(plist):
                prefix = f"{module_name}.parametrizations.{attr}.{i}".lstrip(".")
                if isinstance(p, FakeQuantize) and p.spec.learned and (
                        names is None or f"{prefix}.scale" in names):
                    p.reset_grid(plist.original)
                    count += 1
    return count


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
    for item in policy.plan(model):
        if item.spec is None:
            continue
        module, attr = _owner(model, item.name)
        assert item.group_size is not None
        parametrize.register_parametrization(
            module, attr, FakeQuantize(item.spec, item.group_size, item.name,
                                       getattr(module, attr).detach())
        )
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


class _FakeQuantBatch:
    """The fake-quantized values of a model's min/max weights inside one
    :func:`batched_fake_quant` scope: computed at the first read of any of them, all at once,
    one :func:`fake_quantize_many` call per spec."""

    def __init__(self, members: list[tuple[FakeQuantize, Tensor]]) -> None:
        self.members = members  # (quantizer, the float weight it reads)
        self.values: dict[int, tuple[Tensor, int, Tensor]] | None = None

    def value(self, fq: FakeQuantize, weight: Tensor) -> Tensor | None:
        """``fq``'s fake-quantized ``weight``, or ``None`` when this batch cannot vouch for it
        (not a member, another tensor than the one collected, or changed in place since)."""
        if self.values is None:
            self._compute()
        assert self.values is not None
        entry = self.values.get(id(fq))
        if entry is None:
            return None
        original, version, value = entry
        if weight is not original or weight._version != version:
            return None
        return value

    def _compute(self) -> None:
        by_spec: dict[QuantSpec, list[tuple[FakeQuantize, Tensor]]] = {}
        for fq, weight in self.members:
            if fq.enabled:
                by_spec.setdefault(fq.spec, []).append((fq, weight))
        self.values = {}
        for spec, items in by_spec.items():
            outs = fake_quantize_many([w for _, w in items], spec,
                                      [fq.group_size for fq, _ in items])
            for (fq, weight), out in zip(items, outs, strict=True):
                self.values[id(fq)] = (weight, weight._version, out)


_BATCH_MEMBERS: weakref.WeakKeyDictionary[nn.Module, list[tuple[FakeQuantize, nn.Module]]] = (
    weakref.WeakKeyDictionary())
"""Per model, its min/max quantizers and their parametrization lists. A quantizer attached
after a model's first scope is not among them and is computed on its own (never wrongly:
:meth:`_FakeQuantBatch.value` answers only for the very tensor it computed)."""


@contextlib.contextmanager
def batched_fake_quant(model: nn.Module) -> Iterator[nn.Module]:
    """Context for one forward pass in which ``model``'s min/max fake-quantized weights are
    computed together, at the first one the forward reads (one call per spec, which
    :func:`~lowbit_asr.quant.fake_quant.use_compiled_fake_quant` turns into one compiled call
    instead of one per weight), each read then returning its value with the straight-through
    gradient. Values and gradients are exactly those of the per-weight path (tested).

    The weights must not change inside the scope; one changed in place (its version counter
    moved) is computed on its own, as outside. Learned scales (LSQ) keep their own path. A
    model without fake quantization, or a scope inside another, changes nothing.
    """
    lists = _BATCH_MEMBERS.get(model)
    if lists is None:  # found once per model: walking ~200 modules costs about a millisecond
        lists = _BATCH_MEMBERS[model] = [
            (p, plist) for module in model.modules() if parametrize.is_parametrized(module)
            for plist in module.parametrizations.values()
            for p in plist if isinstance(p, FakeQuantize) and not p.spec.learned]
    if not lists or any(getattr(fq, "_batch", None) is not None for fq, _ in lists):
        yield model
        return
    # The float weight read now: .to() or a load may have replaced a parametrization's original.
    members = [(fq, plist.original) for fq, plist in lists]
    batch = _FakeQuantBatch(members)
    for fq, _ in members:
        fq._batch = batch
    try:
        yield model
    finally:
        for fq, _ in members:
            fq._batch = None


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

    Keys are matched by logical name, so a float checkpoint initialises QAT. Learned grids of the
    model's fake quantizers that the state dict does not hold start from the loaded weights'
    min/max grid. Missing or unexpected keys and shape mismatches raise ``ValueError`` naming the
    tensors.
    """
    own = model.state_dict()
    by_logical = {logical_name(key): key for key in own}
    grids = {name for name in by_logical if is_quantizer_parameter(name)}
    missing = sorted(set(by_logical) - set(state_dict) - grids)
    unexpected = sorted(set(state_dict) - set(by_logical))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}"
        )
    mismatched = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(own[key].shape)}"
        for name, key in by_logical.items()
        if name in state_dict and state_dict[name].shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(f"shape mismatch (checkpoint vs model): {'; '.join(mismatched[:5])}")
    given = {key: state_dict[name] for name, key in by_logical.items() if name in state_dict}
    absent = grids - set(state_dict)
    model.load_state_dict(given, strict=not absent)  # only absent grids are left out
    if absent:
        init_learned_grids(model, absent)
