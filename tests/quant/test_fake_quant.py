"""Numerics of fake quantization against an independent numpy float64 reference (METHOD.md)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lowbit_asr.quant import ClipSearch, QuantSpec, dequantize, fake_quantize, quantize
from lowbit_asr.quant.fake_quant import (
    compiled_fake_quant,
    fake_quantize_many,
    straight_through,
    use_compiled_fake_quant,
)

# ---- independent reference, float64, written from METHOD.md's formulas ------------------------


def _store(x: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Round float64 values to the storage dtype (nearest even) and back to float64."""
    if scale_dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if scale_dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    assert scale_dtype == "bfloat16"
    # bfloat16 = the top 16 bits of float32, rounded to nearest even.
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


_TINY = {"float32": np.finfo(np.float32).tiny, "float16": np.finfo(np.float16).tiny,
         "bfloat16": np.finfo(np.float32).tiny}
_EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def reference(w: np.ndarray, bits: int, symmetric: bool, group: int | None, clip: float,
              scale_dtype: str) -> dict[str, np.ndarray]:
    """METHOD.md in float64: returns t (pre-rounding code value), q, scale, Ŵ; shapes (O,G,g)."""
    out = w.shape[0]
    w2 = w.reshape(out, -1).astype(np.float64)
    k = w2.shape[1]
    g = group or k
    w3 = w2.reshape(out, k // g, g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        s = _store(clip * np.abs(w3).max(-1, keepdims=True) / qmax, scale_dtype)
        s = np.where(s == 0, _TINY[scale_dtype], s)
        t = w3 / s
        q = np.clip(np.floor(t + 0.5), qmin, qmax)
        return {"t": t, "q": q, "scale": s, "w_hat": s * q}
    wmax, wmin = w3.max(-1, keepdims=True), w3.min(-1, keepdims=True)
    xmax, xmin = clip * wmax, clip * wmin
    s = _store((xmax - xmin) / (2**bits - 1), scale_dtype)
    degenerate = s == 0
    s = np.where(degenerate, _TINY[scale_dtype], s)
    xmin = np.where(degenerate, wmin, xmin)
    zp = qmin - xmin / s
    offset = _store(-s * zp, scale_dtype)  # stored form of -s·zp
    zp = -offset / s  # the zero point the stored grid implies
    t = w3 / s + zp
    q = np.clip(np.floor(t + 0.5), qmin, qmax)
    return {"t": t, "q": q, "scale": s, "offset": offset, "w_hat": s * (q - zp)}


def _weights(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Mixed magnitudes per channel, as trained weights have; some outliers.
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)),
                                                      generator=g).add(0.05)
    w.view(-1)[:: max(1, w.numel() // 7)] *= 4.0
    return w


GRID = [
    case for case in itertools.product(
        [1, 2, 3, 4, 8],  # bits
        [True, False],  # symmetric
        [None, 8, 32],  # group size (None = per-channel over K = 64)
        [1.0, 0.8],  # clip
        ["float16", "float32", "bfloat16"],
    )
    if not (case[1] and case[0] == 1)  # symmetric 1-bit is invalid (see test_spec)
]


@pytest.mark.parametrize("bits,symmetric,group,clip,scale_dtype", GRID)
def test_matches_float64_reference(bits, symmetric, group, clip, scale_dtype):
    spec = QuantSpec(bits, symmetric=symmetric, group_size=group, clip=clip,
                     scale_dtype=scale_dtype)
    w = _weights((24, 4, 16), seed=bits * 100 + (group or 0))  # conv-like: K = 64
    ref = reference(w.numpy(), bits, symmetric, group, clip, scale_dtype)

    qw = quantize(w, spec)
    w_hat = fake_quantize(w, spec)
    # The training path and the stored form agree exactly.
    assert torch.equal(w_hat, dequantize(qw))
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype

    # Scales agree to within one unit of the storage dtype (float32 vs float64 arithmetic
    # before the final rounding may land on the neighbouring representable value).
    np.testing.assert_allclose(qw.scale.float().numpy(), ref["scale"], rtol=2 * _EPS[scale_dtype])
    if not symmetric:
        # offset = xmin - s·qmin: its rounding error scales with |xmin| + |s·qmin| <= 3 max|W|.
        np.testing.assert_allclose(qw.offset.float().numpy(), ref["offset"], rtol=0,
                                   atol=8 * _EPS[scale_dtype] * np.abs(w.numpy()).max())

    codes = qw.codes.numpy().astype(np.float64)
    mismatch = codes != ref["q"]
    # Codes may only differ where the reference value sits on a rounding tie (x.5).
    frac = ref["t"] - np.floor(ref["t"])
    near_tie = np.abs(frac - 0.5) < 5e-3
    assert not (mismatch & ~near_tie).any(), "codes differ away from a rounding tie"
    assert mismatch.mean() < 0.01

    w_hat_g = w_hat.reshape(ref["w_hat"].shape).double().numpy()
    tol = 8 * _EPS[scale_dtype] * np.abs(w.numpy()).max() + 1e-6
    np.testing.assert_allclose(w_hat_g[~mismatch], ref["w_hat"][~mismatch], rtol=0, atol=tol)


@pytest.mark.parametrize("bits,symmetric", [(2, True), (2, False), (3, False), (4, True),
                                            (4, False), (8, False), (1, False)])
@pytest.mark.parametrize("group", [None, 16])
def test_distinct_levels_per_group(bits, symmetric, group):
    spec = QuantSpec(bits, symmetric=symmetric, group_size=group)
    w = _weights((32, 64), seed=1)
    qw = quantize(w, spec)
    w_hat = fake_quantize(w, spec).reshape(qw.codes.shape)
    limit = 3 if (symmetric and bits == 2) else 2**bits
    levels = [len(torch.unique(grp)) for grp in w_hat.reshape(-1, w_hat.shape[-1])]
    assert max(levels) <= limit
    codes = torch.unique(qw.codes)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    if symmetric and bits == 2:
        # Symmetric 2-bit is ternary: the code -2 is never used.
        assert set(codes.tolist()) <= {-1, 0, 1}
    elif not symmetric:
        # Asymmetric maps each group's min and max onto qmin and qmax: both ends are used.
        flat = qw.codes.reshape(-1, qw.codes.shape[-1])
        assert (flat.min(-1).values == spec.qmin).all() and (flat.max(-1).values == spec.qmax).all()
        if bits <= 3:
            assert set(codes.tolist()) == set(range(spec.qmin, spec.qmax + 1))


@pytest.mark.parametrize("bits,symmetric", [(2, True), (2, False), (4, True), (4, False),
                                            (8, True), (8, False), (1, False)])
@pytest.mark.parametrize("group", [None, 8])
def test_error_within_half_step(bits, symmetric, group):
    spec = QuantSpec(bits, symmetric=symmetric, group_size=group, scale_dtype="float32")
    w = _weights((16, 48), seed=2)
    qw = quantize(w, spec)
    err = (fake_quantize(w, spec) - w).abs().reshape(qw.codes.shape)
    # With clip = 1 every weight lies inside the grid's range, so rounding is the only error.
    bound = qw.scale.float() / 2  # (O, G, 1)
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("spec", [
    QuantSpec(2, symmetric=False, group_size=8),
    QuantSpec(4, symmetric=True, sub_channels=4),
    QuantSpec(3, symmetric=False, group_size=16, clip_search=ClipSearch(0.5, 6)),
])
def test_changing_one_weight_changes_only_its_group(spec):
    w = _weights((8, 32), seed=3)
    w_hat = fake_quantize(w, spec)
    g = spec.group_size_for(32)
    w2 = w.clone()
    w2[5, 13] += 3.0
    w2_hat = fake_quantize(w2, spec)
    changed = (w_hat != w2_hat).reshape(8, 32 // g, g).any(-1)
    expected = torch.zeros_like(changed)
    expected[5, 13 // g] = True
    if spec.clip_search is not None and not spec.clip_search.per_channel:
        # A per-tensor clip search may pick another coefficient for all groups: only the
        # group of the changed weight is guaranteed to change, the rest may too.
        assert changed[5, 13 // g]
    else:
        assert torch.equal(changed, expected)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_constant_groups_reproduce_exactly(bits, clip):
    # Asymmetric: a constant group has range 0 (s = 0) and must come back exactly.
    w = torch.full((4, 16), 0.3712345)
    w[1] = -2.5
    w[2] = 0.0
    w[3, 8:] = 1e-3  # one constant sub-channel group next to a varying one
    w[3, :8] = torch.linspace(-1, 1, 8)
    spec = QuantSpec(bits, symmetric=False, group_size=8, clip=clip, scale_dtype="float32")
    w_hat = fake_quantize(w, spec)
    assert torch.equal(w_hat[:3], w[:3])
    assert torch.equal(w_hat[3, 8:], w[3, 8:])
    # With float16 storage a constant group is exact when its value is representable.
    w16 = torch.full((2, 8), 0.375)
    assert torch.equal(fake_quantize(w16, QuantSpec(bits, symmetric=False)), w16)


@pytest.mark.parametrize("spec", [
    QuantSpec(2), QuantSpec(2, symmetric=False), QuantSpec(8, group_size=4),
    QuantSpec(4, symmetric=False, sub_channels=2, clip=0.5),
    QuantSpec(2, symmetric=False, clip_search=ClipSearch(per_channel=True)),
    QuantSpec(2, scale_dtype="bfloat16", clip_search=ClipSearch()),
])
def test_zeros_and_tiny_values_never_nan(spec):
    zeros = torch.zeros(6, 16)
    assert torch.equal(fake_quantize(zeros, spec), zeros)
    tiny = torch.full((6, 16), 1e-30)
    tiny[::2] *= -1
    out = fake_quantize(tiny, spec)
    assert torch.isfinite(out).all()
    assert (out - tiny).abs().max() < 1e-4
    huge = torch.randn(6, 16) * 1e6  # beyond float16's range: scales saturate, no inf
    assert torch.isfinite(fake_quantize(huge, spec)).all()


def test_straight_through_gradient_is_identity_inside_range():
    spec = QuantSpec(2, symmetric=False, group_size=8)
    w = _weights((8, 32), seed=4).requires_grad_(True)
    upstream = torch.randn(8, 32)
    (fake_quantize(w, spec) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


def test_gradient_flows_through_clip_search_and_half_precision():
    spec = QuantSpec(4, clip_search=ClipSearch(min=0.6, steps=5, per_channel=True))
    w = _weights((8, 32), seed=5).to(torch.bfloat16).requires_grad_(True)
    out = fake_quantize(w, spec)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def _l1(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    diff = (a.double() - b.double()).abs()
    return diff.sum() if dims is None else diff.sum(dim=dims)


@pytest.mark.parametrize("symmetric,bits", [(True, 2), (False, 2), (False, 4)])
@pytest.mark.parametrize("group", [None, 8])
def test_clip_search_picks_l1_minimal_candidate_per_tensor(symmetric, bits, group):
    search = ClipSearch(min=0.4, steps=12)
    spec = QuantSpec(bits, symmetric=symmetric, group_size=group, clip_search=search)
    w = _weights((16, 32), seed=6)
    chosen = fake_quantize(w, spec)
    candidates = [fake_quantize(w, QuantSpec(bits, symmetric=symmetric, group_size=group,
                                             clip=c)) for c in search.candidates()]
    errors = torch.stack([_l1(w, c, None) for c in candidates])
    best = int(torch.argmin(errors))
    assert torch.equal(chosen, candidates[best])
    assert _l1(w, chosen, None) <= errors.min()
    # Searching helps at 2 bits on outlier-heavy weights: the best c is not 1.0.
    if bits == 2 and group is None:
        assert best > 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_picks_l1_minimal_candidate_per_channel(symmetric):
    search = ClipSearch(min=0.5, steps=8, per_channel=True)
    spec = QuantSpec(2, symmetric=symmetric, group_size=8, clip_search=search)
    w = _weights((16, 32), seed=7)
    chosen = fake_quantize(w, spec)
    candidates = torch.stack([
        fake_quantize(w, QuantSpec(2, symmetric=symmetric, group_size=8, clip=c))
        for c in search.candidates()
    ])  # (C, O, K)
    errors = (candidates.double() - w.double()).abs().sum(-1)  # (C, O)
    best = errors.argmin(0)  # (O,)
    expected = candidates[best, torch.arange(16)]
    assert torch.equal(chosen, expected)
    assert len(set(best.tolist())) > 1, "channels should disagree on the best coefficient"


def test_clip_search_matches_quantize_stored_form():
    spec = QuantSpec(2, symmetric=False, sub_channels=4,
                     clip_search=ClipSearch(min=0.5, steps=8, per_channel=True))
    w = _weights((12, 3, 8), seed=8)
    assert torch.equal(fake_quantize(w, spec), dequantize(quantize(w, spec)))


def test_group_size_must_divide():
    with pytest.raises(ValueError, match=r"encoder\.w: group_size=5 does not divide .*K=16"):
        fake_quantize(torch.randn(3, 16), QuantSpec(4, group_size=5), name="encoder.w")
    with pytest.raises(ValueError, match="sub_channels=3"):
        quantize(torch.randn(3, 16), QuantSpec(4, sub_channels=3))
    with pytest.raises(ValueError, match=">= 2 dims"):
        fake_quantize(torch.randn(16), QuantSpec(4))


# ---- the compiled path (trainer.compile_fake_quant) --------------------------------------------


@pytest.fixture
def compiled():
    """use_compiled_fake_quant on for one test, off afterwards whatever happens."""
    use_compiled_fake_quant(True)
    try:
        yield
    finally:
        use_compiled_fake_quant(False)


@pytest.mark.parametrize(("shape", "spec"), [
    # float16 scales and offsets: the round trip Inductor drops without emulate_precision_casts
    ((48, 40), QuantSpec(bits=2, symmetric=False, group_size=8)),
    ((24, 4, 5), QuantSpec(bits=4, symmetric=True)),  # a convolution, per channel, symmetric
    ((40, 32), QuantSpec(bits=8, symmetric=False, group_size=16, scale_dtype="bfloat16",
                         clip=0.9)),
    ((33, 16), QuantSpec(bits=3, symmetric=False, scale_dtype="float32")),
])
def test_compiled_fake_quant_equals_eager_bit_for_bit(compiled, shape, spec):
    torch.manual_seed(0)
    weight = torch.randn(shape) * 0.05
    weight[0] = 0.25  # a constant row: the offset keeps its value
    weight[1, :4] = 0.0
    use_compiled_fake_quant(False)
    eager = fake_quantize(weight, spec)
    use_compiled_fake_quant(True)
    leaf = weight.clone().requires_grad_(True)
    out = fake_quantize(leaf, spec)
    assert compiled_fake_quant()
    assert torch.equal(out, eager)  # exactly what quantize/dequantize (the export) give
    assert torch.equal(out, dequantize(quantize(weight, spec)))
    grad = torch.randn(shape)
    out.backward(grad)
    assert torch.equal(leaf.grad, grad)  # still the straight-through estimator


@pytest.mark.parametrize("compile_on", [False, True])
def test_fake_quantize_many_equals_fake_quantize_per_weight(compile_on):
    torch.manual_seed(1)
    spec = QuantSpec(bits=2, symmetric=False, group_size=8)  # float16 grid: the casts matter
    weights = [torch.randn(48, 40) * 0.05, torch.randn(24, 16, 3) * 0.1, torch.randn(7, 5)]
    weights[0][0] = 0.25  # a constant row
    sizes = [8, 8, 5]  # the third per channel (K = 5)
    expected = [fake_quantize(w, spec, group_size=g) for w, g in zip(weights, sizes, strict=True)]
    use_compiled_fake_quant(compile_on)
    try:
        leaves = [w.clone().requires_grad_(True) for w in weights]
        outs = fake_quantize_many(leaves, spec, sizes)
        assert compiled_fake_quant() == compile_on
    finally:
        use_compiled_fake_quant(False)
    assert all(torch.equal(o, e) for o, e in zip(outs, expected, strict=True))
    assert not any(o.requires_grad for o in outs)  # values only; straight_through attaches them
    grad = torch.randn(48, 40)
    straight_through(leaves[0], outs[0]).backward(grad)
    assert torch.equal(leaves[0].grad, grad)
    with pytest.raises(ValueError, match="does not match weight"):
        straight_through(leaves[1], outs[0])
