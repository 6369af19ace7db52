"""Model size as METHOD.md counts it: the x-axis of every size-vs-WER frontier.

    bits = Σ quantized weights [numel·b + groups·bits(scale_dtype)·(1 sym | 2 asym)]
         + Σ float tensors     [numel·float_bits]

over every parameter and every persistent buffer (BatchNorm statistics included). Integer
buffers (e.g. BatchNorm's ``num_batches_tracked``) are counted at their own width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lowbit_asr.quant.policy import QuantPolicy, logical_name
from lowbit_asr.quant.prepare import is_quantizer_parameter
from lowbit_asr.quant.spec import QuantSpec


@dataclass(frozen=True)
class SizeRow:
    """Storage of one tensor."""

    name: str
    kind: str
    """``param`` or ``buffer``."""
    shape: tuple[int, ...]
    numel: int
    format: str
    """``float32``/``float16``/``int64`` … for unquantized tensors, else ``QuantSpec.short()``."""
    bits: int
    """Bits per element (the integer width when quantized)."""
    groups: int
    """Scale groups (0 for unquantized tensors)."""
    scale_bits: int
    """Bits of scales and offsets together (0 for unquantized tensors)."""
    source: str
    """Which policy rule decided it (``-`` for tensors that are never quantized)."""

    @property
    def total_bits(self) -> int:
        """numel·bits + scale_bits."""
        return self.numel * self.bits + self.scale_bits

    @property
    def quantized(self) -> bool:
        """True when stored as integers plus scales."""
        return self.groups > 0


@dataclass(frozen=True)
class SizeReport:
    """Per-tensor rows and totals (bits, bytes, MB = 10^6 bytes)."""

    rows: tuple[SizeRow, ...]
    policy_name: str = ""

    @property
    def total_bits(self) -> int:
        """Σ total_bits over every row."""
        return sum(r.total_bits for r in self.rows)

    @property
    def total_bytes(self) -> int:
        """total_bits / 8, rounded up."""
        return math.ceil(self.total_bits / 8)

    @property
    def total_mb(self) -> float:
        """Bytes / 10^6."""
        return self.total_bytes / 1e6

    @property
    def float32_bytes(self) -> int:
        """Size of the same tensors all in float32 (integer buffers at their width)."""
        bits = sum(r.numel * (r.bits if r.format.startswith("int") and not r.quantized else 32)
                   for r in self.rows)
        return math.ceil(bits / 8)

    @property
    def quantized_params(self) -> int:
        """Number of weight elements stored as integers."""
        return sum(r.numel for r in self.rows if r.quantized)

    @property
    def float_params(self) -> int:
        """Number of parameter elements stored as floats."""
        return sum(r.numel for r in self.rows if r.kind == "param" and not r.quantized)

    @property
    def bits_per_quantized_weight(self) -> float:
        """Average bits per quantized weight element, scale overhead included (0 if none)."""
        n = self.quantized_params
        return sum(r.total_bits for r in self.rows if r.quantized) / n if n else 0.0

    def summary(self) -> dict[str, Any]:
        """Totals as a flat dict (for JSON, CSV and W&B)."""
        return {
            "policy": self.policy_name,
            "total_bits": self.total_bits,
            "total_bytes": self.total_bytes,
            "total_mb": self.total_mb,
            "float32_bytes": self.float32_bytes,
            "compression_vs_float32": self.float32_bytes / max(self.total_bytes, 1),
            "quantized_params": self.quantized_params,
            "float_params": self.float_params,
            "bits_per_quantized_weight": self.bits_per_quantized_weight,
        }

    def to_dict(self) -> dict[str, Any]:
        """Rows and summary as plain data."""
        return {"summary": self.summary(), "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        """Markdown table, one row per tensor, then the totals."""
        head = (
            "| tensor | kind | shape | format | bits | groups | scale bits | total bits |\n"
            "|---|---|---|---|---:|---:|---:|---:|"
        )
        lines = [head]
        for r in self.rows:
            shape = "×".join(map(str, r.shape)) or "scalar"
            lines.append(
                f"| {r.name} | {r.kind} | {shape} | {r.format} | {r.bits} | {r.groups} |"
                f" {r.scale_bits} | {r.total_bits} |"
            )
        s = self.summary()
        lines.append("")
        lines.append(
            f"**Total: {s['total_bits']:,} bits = {s['total_bytes']:,} bytes ="
            f" {s['total_mb']:.4f} MB** (float32: {s['float32_bytes'] / 1e6:.4f} MB,"
            f" ×{s['compression_vs_float32']:.2f} smaller); {s['quantized_params']:,} quantized"
            f" weights at {s['bits_per_quantized_weight']:.3f} bits each incl. scales,"
            f" {s['float_params']:,} float parameters."
        )
        return "\n".join(lines)


def quantized_bits(numel: int, spec: QuantSpec, group_size: int) -> tuple[int, int, int]:
    """Storage of one quantized weight of ``numel`` elements in groups of ``group_size``:
    (groups, scale bits, total bits) = (numel/g, groups·bits(scale_dtype)·(1|2),
    numel·b + scale bits). The one place this formula is written (``size_report`` and the
    bit allocator both use it)."""
    groups = numel // group_size
    scale_bits = groups * spec.scale_bits * spec.values_per_group
    return groups, scale_bits, numel * spec.bits + scale_bits


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for module_name, module in model.named_modules():
        for attr, buf in module.named_buffers(recurse=False):
            if buf is None or attr in module._non_persistent_buffers_set:
                continue
            out.append((f"{module_name}.{attr}" if module_name else attr, buf))
    return out


def size_report(model: nn.Module, policy: QuantPolicy) -> SizeReport:
    """Size of ``model`` stored under ``policy`` (float or already prepared model alike)."""
    planned = {p.name: p for p in policy.plan(model)}
    rows: list[SizeRow] = []
    float_format = f"float{policy.float_bits}"
    for raw_name, param in model.named_parameters():
        if is_quantizer_parameter(raw_name):
            continue  # a learned grid: counted as its weight's scales and offsets
        name = logical_name(raw_name)
        shape, numel = tuple(param.shape), param.numel()
        plan = planned.get(name)
        if plan is not None and plan.spec is not None:
            spec = plan.spec
            assert plan.group_size is not None
            groups, scale_bits, _ = quantized_bits(numel, spec, plan.group_size)
            rows.append(SizeRow(name, "param", shape, numel, spec.short(), spec.bits, groups,
                                scale_bits, plan.source))
        else:
            source = plan.source if plan is not None else "-"
            rows.append(SizeRow(name, "param", shape, numel, float_format, policy.float_bits,
                                0, 0, source))
    for name, buf in _persistent_buffers(model):
        if buf.is_floating_point():
            fmt, bits = float_format, policy.float_bits
        else:
            fmt, bits = str(buf.dtype).removeprefix("torch."), buf.element_size() * 8
        rows.append(SizeRow(name, "buffer", tuple(buf.shape), buf.numel(), fmt, bits, 0, 0, "-"))
    return SizeReport(rows=tuple(rows), policy_name=policy.name)
