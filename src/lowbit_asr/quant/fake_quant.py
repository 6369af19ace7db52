"""Weight quantization as pinned in METHOD.md: grids, sub-channel groups, clipping, STE.

One function, :func:`quantize`, produces the stored form (integer codes, scale, offset) of a
weight; :func:`dequantize` maps it back; :func:`fake_quantize` is their composition with a
straight-through gradient, used during training. Because fake-quant and export share
:func:`quantize`, a packed model dequantizes to exactly the weights seen in training.

Layout: dim 0 of a weight is the output channel O; the remaining dims are flattened (C order)
into K; K is cut into G = K / g contiguous groups of g elements, so a weight is handled as a
``(O, G, g)`` tensor. Per-channel is the special case G = 1, g = K.

Scales (and asymmetric offsets) are rounded to ``spec.scale_dtype`` *before* the codes are
computed, so the codes are the nearest points of the grid that is actually stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit_asr.quant.spec import QuantSpec


@dataclass(frozen=True)
class QuantizedWeight:
    """The stored form of one quantized weight.

    ``codes`` holds signed integers in ``[qmin, qmax]`` with shape ``(O, G, g)``; ``scale`` and
    ``offset`` (``None`` when symmetric) have shape ``(O, G, 1)`` and ``spec.scale_dtype``.
    The weight is ``scale * codes + offset``, reshaped to ``shape``.
    """

    codes: Tensor
    scale: Tensor
    offset: Tensor | None
    shape: tuple[int, ...]
    spec: QuantSpec

    @property
    def num_groups(self) -> int:
        """Number of (scale[, offset]) groups, O * G."""
        return self.scale.shape[0] * self.scale.shape[1]


def grouped_view(weight: Tensor, group_size: int) -> Tensor:
    """View ``weight`` (O, ...) as (O, G, g) with g = ``group_size`` along the flattened K."""
    out_channels = weight.shape[0]
    k = weight.numel() // out_channels
    return weight.reshape(out_channels, k // group_size, group_size)  # (O, G, g)


def _round_to_storage(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Round float32 ``x`` to ``dtype`` (saturating, never inf) and return it as float32."""
    if dtype == torch.float32:
        return x
    limit = torch.finfo(dtype).max
    return x.clamp(-limit, limit).to(dtype).to(torch.float32)


def _grid(w: Tensor, spec: QuantSpec, clip: float | Tensor) -> tuple[Tensor, Tensor | None]:
    """Stored scale and offset, as float32 values of ``spec.scale_dtype``, for groups ``w``.

    ``w``: (O, G, g) float32. ``clip``: a float or a tensor broadcastable to (O, G, 1).
    Returns scale (O, G, 1) and offset (O, G, 1) or ``None`` when symmetric.
    """
    dtype = spec.torch_scale_dtype
    tiny = torch.finfo(dtype).tiny
    if spec.symmetric:
        amax = w.abs().amax(dim=-1, keepdim=True)  # (O, G, 1)
        scale = _round_to_storage(amax * (clip / spec.qmax), dtype)
        # All-zero group: any positive scale reproduces it exactly and avoids 0/0.
        return scale.clamp_min_(tiny), None

    wmin, wmax = torch.aminmax(w, dim=-1, keepdim=True)  # (O, G, 1) each, one pass
    scale = _round_to_storage((wmax - wmin) * (clip / (2**spec.bits - 1)), dtype)
    constant = scale == 0
    # A constant group (s = 0) keeps its value as the offset, unclipped, so it stays exact.
    xmin = torch.where(constant, wmin, wmin * clip)
    scale = scale.clamp_min_(tiny)
    # offset = -s * zp with zp = qmin - xmin / s  =>  offset = xmin - s * qmin
    offset = _round_to_storage(xmin - scale * spec.qmin, dtype)
    return scale, offset


def _codes(w: Tensor, scale: Tensor, offset: Tensor | None, spec: QuantSpec) -> Tensor:
    """Round-half-up codes of ``w`` on the stored grid, as float32 in [qmin, qmax]."""
    x = w / scale if offset is None else (w - offset).div_(scale)
    return x.add_(0.5).floor_().clamp_(spec.qmin, spec.qmax)


def _dequantize_groups(codes: Tensor, scale: Tensor, offset: Tensor | None) -> Tensor:
    out = codes * scale
    return out if offset is None else out.add_(offset)


def _fake_quant_groups(
    w: Tensor, spec: QuantSpec, clip: float | Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Quantize-dequantize of float32 groups ``w`` (O, G, g); allocates one tensor of w's size.

    Returns Ŵ (O, G, g) and the stored grid it used: scale and offset (O, G, 1) or ``None``.
    """
    scale, offset = _grid(w, spec, clip)
    x = _codes(w, scale, offset, spec)
    x.mul_(scale)
    return (x if offset is None else x.add_(offset)), scale, offset


def _search_clip(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor, Tensor | None]:
    """Try every clip candidate; return the best (O, G, g) dequantized groups and their grid.

    The L1 error sum |W - Ŵ| is compared per tensor or per output channel. On ties the larger
    coefficient (earlier candidate) wins. Returns (Ŵ groups, scale, offset or ``None``), the
    grid being the chosen candidate's own (O, G, 1) values: :func:`quantize` codes with it
    rather than recomputing it from the coefficient, which as a float32 tensor can round the
    scale one ulp away from the Python-float path and move a code.
    """
    search = spec.clip_search
    assert search is not None
    best: tuple[Tensor, Tensor, Tensor | None] | None = None
    best_err = torch.empty(0)
    for c in search.candidates():
        w_hat, scale, offset = _fake_quant_groups(w, spec, c)
        err_groups = (w - w_hat).abs_()
        if search.per_channel:
            err = err_groups.sum(dim=(1, 2))  # (O,)
        else:
            err = err_groups.sum().reshape(1)  # (1,)
        if best is None:
            best, best_err = (w_hat, scale, offset), err
            continue
        better = err < best_err  # (O,) or (1,)
        if search.per_channel:
            sel = better.view(-1, 1, 1)
            best = (
                torch.where(sel, w_hat, best[0]),
                torch.where(sel, scale, best[1]),
                None if offset is None or best[2] is None else torch.where(sel, offset, best[2]),
            )
            best_err = torch.where(better, err, best_err)
        elif bool(better):
            best, best_err = (w_hat, scale, offset), err
    assert best is not None
    return best


def resolve_group_size(weight: Tensor, spec: QuantSpec, name: str = "weight") -> int:
    """Group length g for ``weight`` under ``spec`` (K when per-channel); checks divisibility."""
    if weight.dim() < 2:
        raise ValueError(f"{name}: only weights with >= 2 dims are quantized, got {weight.dim()}-D")
    return spec.group_size_for(weight.numel() // weight.shape[0], name)


@torch.no_grad()
def initial_grid(weight: Tensor, spec: QuantSpec, group_size: int) -> tuple[Tensor, Tensor | None]:
    """The min/max grid of ``weight`` (clipped, or clip-searched, as ``spec`` says): scale and
    offset (O, G, 1) float32, values of ``spec.scale_dtype``. A learned grid starts here."""
    w = grouped_view(weight.detach().to(torch.float32), group_size)  # (O, G, g)
    if spec.clip_search is not None:
        _, scale, offset = _search_clip(w, spec)
        return scale, offset
    return _grid(w, spec, float(spec.clip))


def stored_grid(spec: QuantSpec, scale: Tensor, offset: Tensor | None,
                ) -> tuple[Tensor, Tensor | None]:
    """A learned scale and offset as stored: positive scale, both rounded to
    ``spec.scale_dtype`` (float32 values). Fake quantization and export both use this."""
    dtype = spec.torch_scale_dtype
    stored = _round_to_storage(scale.detach().to(torch.float32).clamp_min(torch.finfo(dtype).tiny),
                               dtype)
    stored = stored.clamp_min(torch.finfo(dtype).tiny)  # a scale that rounds to 0 stays positive
    if offset is None:
        return stored, None
    return stored, _round_to_storage(offset.detach().to(torch.float32), dtype)


@torch.no_grad()
def quantize(
    weight: Tensor, spec: QuantSpec, name: str = "weight", group_size: int | None = None,
    scale: Tensor | None = None, offset: Tensor | None = None,
) -> QuantizedWeight:
    """Quantize ``weight`` (O, ...) to its stored form (codes, scale, offset).

    ``group_size`` may be passed when already resolved; otherwise it follows from ``spec``.
    With clip search the coefficient is chosen here exactly as during training. A ``learned``
    spec needs the trained ``scale`` (and ``offset`` when asymmetric), (O, G, 1).
    """
    g = resolve_group_size(weight, spec, name) if group_size is None else group_size
    w = grouped_view(weight.detach().to(torch.float32), g)  # (O, G, g)
    if spec.learned:
        if scale is None or (offset is None) != spec.symmetric:
            raise ValueError(f"{name}: {spec.short()} has learned scales: pass its trained scale"
                             + ("" if spec.symmetric else " and offset")
                             + " (a prepared model holds them)")
        scale, offset = stored_grid(spec, scale, offset)
    elif scale is not None or offset is not None:
        raise ValueError(f"{name}: {spec.short()} computes its scales from the weights;"
                         " a given scale or offset is for learned scales only")
    elif spec.clip_search is not None:
        _, scale, offset = _search_clip(w, spec)
    else:
        scale, offset = _grid(w, spec, float(spec.clip))
    codes = _codes(w, scale, offset, spec).to(torch.int8)
    dtype = spec.torch_scale_dtype
    return QuantizedWeight(
        codes=codes,
        scale=scale.to(dtype),
        offset=None if offset is None else offset.to(dtype),
        shape=tuple(weight.shape),
        spec=spec,
    )


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """Weights of a :class:`QuantizedWeight`, in its original shape."""
    scale = qw.scale.to(torch.float32)
    offset = None if qw.offset is None else qw.offset.to(torch.float32)
    out = _dequantize_groups(qw.codes.to(torch.float32), scale, offset)
    return out.reshape(qw.shape).to(dtype)


def _fake_quant_forward(weight: Tensor, spec: QuantSpec, group_size: int) -> Tensor:
    """Quantize-dequantize of ``weight`` (any shape, any float dtype), no gradient."""
    w = grouped_view(weight.to(torch.float32), group_size)  # (O, G, g); a view if float32
    if spec.clip_search is not None:
        w_hat, _, _ = _search_clip(w, spec)
    else:
        w_hat, _, _ = _fake_quant_groups(w, spec, float(spec.clip))
    return w_hat.reshape(weight.shape).to(weight.dtype)


def _fake_quant_many(weights: list[Tensor], spec: QuantSpec,
                     group_sizes: tuple[int, ...]) -> list[Tensor]:
    """:func:`_fake_quant_forward` of each weight (one spec), as one function to compile."""
    return [_fake_quant_forward(w, spec, g) for w, g in zip(weights, group_sizes, strict=True)]


_compiled_forward = None  # the torch.compile wrappers, built once (their graphs are cached on them)
_compiled_many = None
_use_compiled = False  # set by use_compiled_fake_quant


def use_compiled_fake_quant(enabled: bool = True) -> None:
    """Run the min/max fake quantization (no clip search, no learned scales) through
    ``torch.compile``.

    Inductor fuses the ~8 passes over a weight (min/max, scale, codes, dequantize) into one
    kernel. The values stay bit-identical to the eager ones (tested), because Inductor's CPU
    code is built without unsafe-math flags or FP contraction (torch 2.14) and
    ``emulate_precision_casts`` keeps the float16 rounding of the scales and offsets (without it
    Inductor drops the float32 -> float16 -> float32 round trip and codes move by whole steps).
    Costs a compilation at the first step: seconds per weight shape and spec for
    :func:`fake_quantize`, one larger graph per spec (and set of shapes) for
    :func:`fake_quantize_many`, which ``batched_fake_quant`` uses; needs a C++ compiler on the
    CPU. Process-wide, like ``torch.set_num_threads``. Clip search stays eager:
    its error sums depend on the summation order, which Inductor's kernels need not share with
    the eager :func:`quantize` of the export (min and max do not); so do learned scales (LSQ),
    whose backward is autograd's.
    """
    global _compiled_forward, _compiled_many, _use_compiled
    if enabled and _compiled_forward is None:
        # Every weight shape x spec is its own static graph (a dynamic-shape kernel ran slower
        # in benchmarks/qat_overhead.py); the recompile limit (8 per function by default) must
        # allow them all, or the rest silently run eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        options = {"emulate_precision_casts": True}
        _compiled_forward = torch.compile(_fake_quant_forward, dynamic=False, options=options)
        _compiled_many = torch.compile(_fake_quant_many, dynamic=False, options=options)
    _use_compiled = enabled


def compiled_fake_quant() -> bool:
    """Whether :func:`use_compiled_fake_quant` is on."""
    return _use_compiled


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: identity (straight-through estimator).

    The gradient passes unchanged everywhere, clipped weights included, so a weight clipped
    now can move back inside the range later. Nothing is saved for backward.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, spec: QuantSpec, group_size: int) -> Tensor:  # type: ignore[override]
        compiled = _use_compiled and spec.clip_search is None
        forward = _compiled_forward if compiled else _fake_quant_forward
        return forward(weight, spec, group_size)  # type: ignore[misc]

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return grad_output, None, None


def fake_quantize_many(weights: list[Tensor], spec: QuantSpec,
                       group_sizes: list[int] | tuple[int, ...]) -> list[Tensor]:
    """Quantize-dequantize of several weights that share ``spec``, without gradients: for
    each, the value :func:`fake_quantize` gives it (bit for bit; tested).

    With :func:`use_compiled_fake_quant` and a min/max spec this is one compiled call for all
    of them: one guard check and one generated C++ wrapper instead of one per weight, which at
    ~70 weights of a few thousand to a few hundred thousand elements is much of what the
    per-weight compiled calls cost (22 -> 14 ms a step in ``benchmarks/qat_overhead.py``,
    conformer_tiny). Otherwise each weight is computed as :func:`fake_quantize` does.
    """
    sizes = tuple(group_sizes)
    with torch.no_grad():
        if _use_compiled and spec.clip_search is None:
            return _compiled_many(list(weights), spec, sizes)  # type: ignore[misc]
        return _fake_quant_many(list(weights), spec, sizes)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` (a fake-quantized ``weight`` computed beforehand, without gradient).
    Backward: the gradient goes to ``weight`` unchanged, as :class:`_FakeQuantSTE`'s does."""

    @staticmethod
    def forward(ctx, weight: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output, None


def straight_through(weight: Tensor, value: Tensor) -> Tensor:
    """``value`` with the straight-through gradient to ``weight`` (same shape and dtype):
    how a weight fake-quantized by :func:`fake_quantize_many` enters the autograd graph."""
    if value.shape != weight.shape or value.dtype != weight.dtype:
        raise ValueError(f"straight_through: value {tuple(value.shape)} {value.dtype} does not"
                         f" match weight {tuple(weight.shape)} {weight.dtype}")
    return _StraightThrough.apply(weight, value)


def lsq_gradient_scale(spec: QuantSpec, group_size: int) -> float:
    """LSQ's gradient scale for a group's step size, 1 / sqrt(n · Q_P) (Esser et al. 2020,
    section 2.2), with n the group's elements and Q_P its positive levels: ``qmax`` on the
    symmetric grid, 2^b − 1 steps across an asymmetric one (whose offset places the range)."""
    levels = spec.qmax if spec.symmetric else 2**spec.bits - 1
    return 1.0 / math.sqrt(group_size * max(levels, 1))


def fake_quantize_learned(weight: Tensor, spec: QuantSpec, group_size: int, scale: Tensor,
                          offset: Tensor | None) -> Tensor:
    """LSQ (symmetric) / LSQ+ (asymmetric) quantize-dequantize with trained ``scale`` and
    ``offset`` (O, G, 1).

    Forward: exactly :func:`dequantize` of :func:`quantize` with the same scale and offset (the
    values used are their stored, rounded form). Backward (round = straight-through), with
    x = (w − offset) / scale: the weight gets the gradient where qmin ≤ x ≤ qmax and none where
    clipped; the scale gets (q − x) inside and qmin/qmax where clipped; the offset gets the
    clipped part; both scaled by :func:`lsq_gradient_scale`.
    """
    w = grouped_view(weight.to(torch.float32), group_size)  # (O, G, g)
    stored_scale, stored_offset = stored_grid(spec, scale, offset)
    g = lsq_gradient_scale(spec, group_size)
    # The value is exactly the stored one (x - x = 0); the gradient reaches the parameter,
    # scaled by g, straight through the rounding to scale_dtype.
    s = stored_scale + (scale * g - (scale * g).detach())
    o = None if offset is None else stored_offset + (offset * g - (offset * g).detach())
    x = (w / s) if o is None else (w - o) / s
    # Clamp, then round half up straight through: the gradient passes where qmin <= x <= qmax
    # (LSQ's condition is on x, not on its rounding); the value is _codes' clamp(floor(x + .5)).
    clamped = x.clamp(spec.qmin, spec.qmax)
    q = clamped + (torch.floor(clamped.detach() + 0.5) - clamped.detach())
    out = q * s if o is None else q * s + o
    return out.reshape(weight.shape).to(weight.dtype)


def fake_quantize(
    weight: Tensor, spec: QuantSpec, name: str = "weight", group_size: int | None = None
) -> Tensor:
    """Quantize-dequantize ``weight`` with a straight-through gradient.

    Same shape and dtype as ``weight``; equal to ``dequantize(quantize(weight, spec))``.
    """
    g = resolve_group_size(weight, spec, name) if group_size is None else group_size
    return _FakeQuantSTE.apply(weight, spec, g)

