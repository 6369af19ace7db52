"""The packed model file: b-bit codes, scales and float tensors in safetensors, no pickle.

A packed file holds a model's inference state exactly as :func:`~lowbit_asr.quant.size_report`
counts it (METHOD.md): every quantized weight as dense-packed b-bit codes plus its scales (and
asymmetric offsets) in the spec's ``scale_dtype``, every other parameter and persistent buffer
as floats of ``policy.float_bits`` (integer buffers at their own width). Reading it dequantizes
with :func:`~lowbit_asr.quant.dequantize`, the function fake quantization shares, so the loaded
weights equal the weights seen in training bit for bit.

Layout (format ``lowbit-asr.packed``, version 1): a `safetensors` file — an 8-byte little-endian
header length, a JSON header, then raw little-endian data; reading it runs no code — whose
tensors are a few flat *blobs*, one per storage kind, each holding its tensors' bytes one after
another in table order:

    codes       uint8    every quantized weight's codes (:func:`pack_codes`, byte-aligned per
                         tensor: ceil(numel·b / 8) bytes each)
    float16     …        scales then offsets (O·G each) of every weight whose scale_dtype it is,
    bfloat16             and the flattened float tensors when it is ``float<float_bits>``
    float32
    int64 …              integer buffers (BatchNorm's ``num_batches_tracked``), own width

and whose ``__metadata__`` (JSON strings) says what lies where:

    format    ``lowbit-asr.packed``                 version  ``1``
    tensors   {"specs": [QuantSpec configs], "rows": [[name, shape, format, nbytes], …]}:
              ``format`` is an index into ``specs`` (quantized) or a dtype name (stored as is);
              ``nbytes`` the tensor's bytes in the file (codes + scales + offsets, or values)
    policy    the :class:`QuantPolicy` config             extra  the caller's JSON (ASR: config)
    sha256    digest of the blobs and the other metadata: a flipped bit in either is an error

Why blobs and not one safetensors entry per tensor: an entry costs ~100 header bytes, which
for ``conformer_tiny`` (233 tensors, 371 entries) is 38 KB — 3 % of its 1.17 MB int2 size.
Blobs keep the header at a few hundred bytes plus the table, so file bytes / accounted bytes
stays below 1.02 even at 2 bits per channel.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit_asr.quant.fake_quant import QuantizedWeight, dequantize, quantize
from lowbit_asr.quant.packing import pack_codes, packed_nbytes, unpack_codes
from lowbit_asr.quant.policy import QuantPolicy, logical_name
from lowbit_asr.quant.prepare import fake_quant_modules, is_quantizer_parameter
from lowbit_asr.quant.size import _persistent_buffers
from lowbit_asr.quant.spec import QuantSpec

FORMAT = "lowbit-asr.packed"
"""Format magic, the ``format`` metadata entry of every packed file."""
VERSION = 1
"""Layout version written; readers refuse any other."""
CODES = "codes"
"""Name of the blob of dense-packed codes (uint8)."""
MAX_HEADER_BYTES = 100_000_000
"""Largest JSON header read (safetensors' own limit): a corrupted length allocates nothing."""
METADATA_KEYS = ("format", "version", "tensors", "policy", "extra", "sha256")
"""Every ``__metadata__`` entry of a packed file, no more, no less."""

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Dtypes a blob may have, by name (the blob's name); ``codes`` is uint8."""


@dataclass(frozen=True)
class PackedTensor:
    """One row of a packed file's table: a tensor of the model and how it is stored."""

    name: str
    """Logical name (``encoder.layers.0.ff1.linear1.weight``), the plain model's state key."""
    shape: tuple[int, ...]
    spec: QuantSpec | None
    """How it is quantized (after any per-channel fallback), or ``None`` when stored as is."""
    dtype: str
    """Blob of its values: ``spec.scale_dtype`` when quantized, else its storage dtype."""
    nbytes: int
    """Bytes the table records for it (codes + scales + offsets, or values)."""

    @property
    def numel(self) -> int:
        """Elements of the tensor."""
        return math.prod(self.shape)

    @property
    def group_size(self) -> int | None:
        """Group length g along the flattened K (K when per-channel); ``None`` unquantized."""
        if self.spec is None:
            return None
        return self.spec.group_size_for(self.numel // self.shape[0], self.name)

    @property
    def groups(self) -> int:
        """Scale groups O·G (0 when unquantized)."""
        return 0 if self.spec is None else self.numel // (self.group_size or 1)

    @property
    def code_nbytes(self) -> int:
        """Bytes of its dense-packed codes in the ``codes`` blob (0 when unquantized)."""
        return 0 if self.spec is None else packed_nbytes(self.numel, self.spec.bits)

    @property
    def values(self) -> int:
        """Elements it occupies in its ``dtype`` blob: scales (+ offsets), or its values."""
        return self.numel if self.spec is None else self.groups * self.spec.values_per_group

    @property
    def implied_nbytes(self) -> int:
        """Bytes its shape and format imply: what ``nbytes`` must be."""
        return self.code_nbytes + self.values * STORAGE_DTYPES[self.dtype].itemsize

    @property
    def format(self) -> str:
        """``QuantSpec.short()`` when quantized, else the storage dtype."""
        return self.dtype if self.spec is None else self.spec.short()


@dataclass(frozen=True)
class PackedFile:
    """What a packed file says about itself (its tensors are returned separately)."""

    path: Path
    version: int
    tensors: tuple[PackedTensor, ...]
    """The table, in file order."""
    policy: QuantPolicy
    """The quantizer policy the model was packed under."""
    extra: dict[str, Any]
    """The writer's own metadata (for lowbit-asr: model config, tokenizer, feature stats)."""
    file_bytes: int
    header_bytes: int
    """The 8-byte length and the JSON header: the file's bytes beyond its tensors' data."""

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data (Σ nbytes): at least the accounted size."""
        return sum(t.nbytes for t in self.tensors)


# ---- writing ---------------------------------------------------------------------------------
def stored_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(logical name, tensor) for every parameter and persistent buffer, as size_report counts.

    Parameters come first (float master weights of a prepared model under their logical name),
    then buffers, each in module order.
    """
    params = [(logical_name(name), p.detach()) for name, p in model.named_parameters()
              if not is_quantizer_parameter(name)]  # learned grids are stored as scales
    return params + [(name, b.detach()) for name, b in _persistent_buffers(model)]


def _check_prepared(model: nn.Module, planned: Mapping[str, Any]) -> None:
    """A prepared model must fake-quantize exactly as the policy packs, or the file would lie."""
    for name, fq in fake_quant_modules(model):
        plan = planned.get(name)
        if plan is None or plan.spec != fq.spec or plan.group_size != fq.group_size:
            packs = "float" if plan is None or plan.spec is None else plan.spec.short()
            raise ValueError(
                f"{name}: the model fake-quantizes it as {fq.spec.short()} (group_size"
                f" {fq.group_size}) but the policy packs it as {packs}: pack a prepared model"
                " with the policy it was prepared with"
            )
        if not fq.enabled:
            raise ValueError(
                f"{name}: fake quantization is disabled, so the model computes with float weights"
                " that the packed file would not hold; enable it first (set_fake_quant_enabled)"
            )


def pack_state(
    model: nn.Module, policy: QuantPolicy
) -> tuple[dict[str, Tensor], list[PackedTensor]]:
    """The blobs and table that store ``model`` (float or prepared) under ``policy``.

    Quantized weights go through :func:`quantize` (clip search included) with the spec and
    group size :meth:`QuantPolicy.plan` resolves — the same as ``prepare`` and ``size_report``.
    """
    planned = {p.name: p for p in policy.plan(model)}
    _check_prepared(model, planned)
    grids = {name: fq.grid() for name, fq in fake_quant_modules(model)}
    codes: list[Tensor] = []
    parts: dict[str, list[Tensor]] = defaultdict(list)
    table: list[PackedTensor] = []
    float_dtype = f"float{policy.float_bits}"
    for name, tensor in stored_tensors(model):
        plan = planned.get(name)
        if plan is not None and plan.spec is not None:
            if plan.spec.learned and name not in grids:
                raise ValueError(f"{name}: {plan.spec.short()} has learned scales, which only a"
                                 " model prepared (and trained) with the policy holds")
            scale, offset = grids.get(name, (None, None))
            qw = quantize(tensor, plan.spec, name, plan.group_size, scale, offset)  # (O, G, g)
            codes.append(pack_codes(qw.codes, plan.spec.bits))
            parts[plan.spec.scale_dtype].append(qw.scale.reshape(-1))  # (O·G,)
            if qw.offset is not None:
                parts[plan.spec.scale_dtype].append(qw.offset.reshape(-1))  # (O·G,)
            row = PackedTensor(name, tuple(tensor.shape), plan.spec, plan.spec.scale_dtype, 0)
        else:
            dtype = (
                float_dtype
                if tensor.is_floating_point()
                else str(tensor.dtype).removeprefix("torch.")
            )
            if dtype not in STORAGE_DTYPES:
                raise ValueError(f"{name}: cannot store a tensor of dtype {tensor.dtype}")
            parts[dtype].append(tensor.reshape(-1).to(STORAGE_DTYPES[dtype]))
            row = PackedTensor(name, tuple(tensor.shape), None, dtype, 0)
        table.append(replace(row, nbytes=row.implied_nbytes))
    blobs = {dtype: torch.cat(values) for dtype, values in parts.items()}
    if codes:
        blobs[CODES] = torch.cat(codes)
    # The reader expects no blob for a kind that holds nothing (e.g. only empty tensors).
    return {name: blob for name, blob in blobs.items() if blob.numel()}, table


def _safetensors() -> Any:
    """``safetensors.torch``, imported when a file is written or read: ``lowbit_asr.quant``
    itself needs torch and numpy alone (safetensors comes with the ``asr`` extra)."""
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError("packed files need safetensors: pip install 'lowbit-asr[asr]' (or"
                          " pip install safetensors)") from err
    return safetensors.torch


def _digest(blobs: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over every blob (name, dtype, bytes) and every metadata entry but the digest."""
    h = hashlib.sha256()
    for name in sorted(blobs):
        blob = blobs[name].contiguous()
        h.update(f"{name}\0{blob.dtype}\0{blob.numel()}\0".encode())
        h.update(blob.view(torch.uint8).numpy())  # (nbytes,), hashed without a copy
    for key in sorted(metadata):
        if key != "sha256":
            h.update(f"{key}\0{metadata[key]}\0".encode())
    return h.hexdigest()


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not JSON-serialisable: {err}") from err


def write_packed(
    path: str | Path, model: nn.Module, policy: QuantPolicy, extra: Mapping[str, Any] | None = None
) -> PackedFile:
    """Write ``model`` packed under ``policy`` to ``path`` (atomically); returns its description.

    ``extra`` is any JSON-serialisable mapping the reader gets back unchanged.
    """
    path = Path(path)
    blobs, table = pack_state(model, policy)
    spec_ids: dict[QuantSpec, int] = {}
    rows = []
    for t in table:
        fmt: int | str = t.dtype
        if t.spec is not None:
            fmt = spec_ids.setdefault(t.spec, len(spec_ids))
        rows.append([t.name, list(t.shape), fmt, t.nbytes])
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "tensors": _json({"specs": [s.to_config() for s in spec_ids], "rows": rows}, "table"),
        "policy": _json(policy.to_config(), "policy"),
        "extra": _json(dict(extra or {}), "extra metadata"),
    }
    metadata["sha256"] = _digest(blobs, metadata)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _safetensors().save_file(blobs, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    file_bytes = path.stat().st_size
    return PackedFile(
        path,
        VERSION,
        tuple(table),
        policy,
        dict(extra or {}),
        file_bytes,
        file_bytes - sum(t.nbytes for t in table),
    )


# ---- reading ---------------------------------------------------------------------------------
def is_packed_file(path: str | Path) -> bool:
    """True when ``path`` starts like a packed file: an 8-byte header length, then ``{``.

    That is safetensors' layout, which a torch checkpoint (a zip, ``PK``, or a pickle, ``\\x80``)
    never has; :func:`read_packed` then checks the format magic inside.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and length <= min(MAX_HEADER_BYTES, size - 8)


def _header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header of ``data`` and the byte where the payload starts."""
    if len(data) < 9:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, not even a header")
    if data[8:9] != b"{":
        raise ValueError(
            f"{path}: not a lowbit-asr packed file (a packed file is safetensors: an 8-byte"
            f" header length, then a JSON header; this one starts with {data[:12]!r}). Training"
            " checkpoints (.ckpt) are read by lowbit_asr.train.checkpoint.read_checkpoint"
        )
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: corrupted: header length {length} exceeds {MAX_HEADER_BYTES}")
    if 8 + length > len(data):
        raise ValueError(
            f"{path}: truncated: the header needs {length} bytes after its length, the file has"
            f" {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: corrupted header: not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupted header: JSON {type(header).__name__}, not an object")
    return header, 8 + length


def _payload_size(path: Path, header: Mapping[str, Any]) -> int:
    """Bytes of data the header's entries describe (the largest end offset)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise ValueError(f"{path}: corrupted header: tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    return end


def _metadata(path: Path, header: Mapping[str, Any]) -> dict[str, str]:
    """The ``__metadata__`` strings, with magic and version checked first."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: not a lowbit-asr packed file: no __metadata__ of strings")
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a lowbit-asr packed file: format magic {metadata.get('format')!r},"
            f" expected {FORMAT!r}"
        )
    if metadata.get("version") != str(VERSION):
        raise ValueError(
            f"{path}: unsupported packed format version {metadata.get('version')!r}; this code"
            f" reads version {VERSION}"
        )
    missing = [k for k in METADATA_KEYS if k not in metadata]
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if missing or unknown:
        raise ValueError(f"{path}: metadata: missing key(s) {missing}, unknown key(s) {unknown}")
    return metadata


def _parse_json(path: Path, metadata: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata key {key!r} is not valid JSON ({err})") from err
    if not isinstance(value, kind):
        raise ValueError(f"{path}: metadata key {key!r} must be a JSON {kind.__name__}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _table(path: Path, raw: Mapping[str, Any]) -> tuple[PackedTensor, ...]:
    """Parse and check the ``tensors`` table: every row's bytes must be what it implies."""
    specs_raw, rows = raw.get("specs"), raw.get("rows")
    if not isinstance(specs_raw, list) or not isinstance(rows, list):
        raise ValueError(f"{path}: metadata key 'tensors' needs the lists 'specs' and 'rows'")
    specs = []
    for i, spec in enumerate(specs_raw):
        try:
            specs.append(QuantSpec.from_config(spec))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: metadata 'tensors' specs[{i}]: {err}") from err
    table: list[PackedTensor] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{path}: metadata 'tensors' rows[{i}]"
        if not isinstance(row, list) or len(row) != 4 or not isinstance(row[0], str) or not row[0]:
            raise ValueError(f"{where}: expected [name, shape, format, nbytes], got {row!r}")
        name, shape, fmt, nbytes = row
        where = f"{path}: tensor {name!r}"
        if name in seen:
            raise ValueError(f"{where}: listed twice")
        seen.add(name)
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise ValueError(f"{where}: shape must be a list of sizes, got {shape!r}")
        if not _is_count(nbytes):
            raise ValueError(f"{where}: nbytes must be a count, got {nbytes!r}")
        if _is_count(fmt) and fmt < len(specs):
            spec: QuantSpec | None = specs[fmt]
            dtype = specs[fmt].scale_dtype
            if len(shape) < 2 or math.prod(shape) == 0:
                raise ValueError(f"{where}: a quantized weight needs >= 2 non-empty dims: {shape}")
        elif isinstance(fmt, str) and fmt in STORAGE_DTYPES:
            spec, dtype = None, fmt
        else:
            raise ValueError(
                f"{where}: format {fmt!r} is neither an index into specs (0..{len(specs) - 1})"
                f" nor one of {sorted(STORAGE_DTYPES)}"
            )
        tensor = PackedTensor(name, tuple(shape), spec, dtype, nbytes)
        try:
            implied = tensor.implied_nbytes  # also checks that the group size divides K
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        if implied != nbytes:
            raise ValueError(
                f"{where}: wrong size: the table records {nbytes} bytes, shape {list(shape)}"
                f" as {tensor.format} implies {implied}"
            )
        table.append(tensor)
    return tuple(table)


def _expected_blobs(table: tuple[PackedTensor, ...]) -> dict[str, tuple[torch.dtype, int]]:
    """Blob name -> (dtype, elements) that the table implies."""
    expected: dict[str, tuple[torch.dtype, int]] = {}
    for t in table:
        if t.spec is not None:
            _, n = expected.get(CODES, (torch.uint8, 0))
            expected[CODES] = (torch.uint8, n + t.code_nbytes)
        _, n = expected.get(t.dtype, (STORAGE_DTYPES[t.dtype], 0))
        expected[t.dtype] = (STORAGE_DTYPES[t.dtype], n + t.values)
    return {name: v for name, v in expected.items() if v[1] > 0}


def _check_blobs(path: Path, blobs: Mapping[str, Tensor], table: tuple[PackedTensor, ...]) -> None:
    expected = _expected_blobs(table)
    missing = sorted(set(expected) - set(blobs))
    if missing:
        raise ValueError(
            f"{path}: missing tensor(s) {missing}: the table stores"
            f" {', '.join(f'{n} ({expected[n][1]} × {expected[n][0]})' for n in missing)} there"
        )
    unexpected = sorted(set(blobs) - set(expected))
    if unexpected:
        raise ValueError(f"{path}: unexpected tensor(s) {unexpected} that the table does not use")
    for name, (dtype, numel) in expected.items():
        blob = blobs[name]
        if blob.dtype != dtype or blob.dim() != 1 or blob.numel() != numel:
            raise ValueError(
                f"{path}: tensor {name!r} has the wrong size: {tuple(blob.shape)} {blob.dtype},"
                f" the table implies ({numel},) {dtype}"
            )


def _unpack(blobs: Mapping[str, Tensor], table: tuple[PackedTensor, ...]) -> dict[str, Tensor]:
    """Dequantized (float32) or stored tensors by name, in table order."""
    state: dict[str, Tensor] = {}
    code_pos = 0
    pos: dict[str, int] = defaultdict(int)
    for t in table:
        values = blobs[t.dtype][pos[t.dtype] : pos[t.dtype] + t.values]
        pos[t.dtype] += t.values
        if t.spec is None:
            state[t.name] = values.reshape(t.shape).clone()
            continue
        packed = blobs[CODES][code_pos : code_pos + t.code_nbytes]
        code_pos += t.code_nbytes
        g = t.group_size
        assert g is not None
        out_channels, groups = t.shape[0], t.groups
        qw = QuantizedWeight(
            codes=unpack_codes(packed, t.spec.bits, t.numel).reshape(out_channels, -1, g),
            scale=values[:groups].reshape(out_channels, -1, 1),  # (O, G, 1)
            offset=None if t.spec.symmetric else values[groups:].reshape(out_channels, -1, 1),
            shape=t.shape,
            spec=t.spec,
        )
        state[t.name] = dequantize(qw)
    return state


def read_packed(path: str | Path) -> tuple[dict[str, Tensor], PackedFile]:
    """Read, validate and unpack a packed file: (state dict, its description).

    Quantized weights come back dequantized to float32 by :func:`dequantize` (equal to the
    fake-quant weights); other tensors in their stored dtype. Every check fails with a
    ``ValueError`` naming the file and the key or tensor: truncation, header corruption, format
    magic, version, metadata, table rows, missing/unexpected/wrongly sized tensors, checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed file: no such file {path}")
    data = path.read_bytes()
    header, start = _header(path, data)
    metadata = _metadata(path, header)
    needed = _payload_size(path, header)
    if len(data) - start < needed:
        raise ValueError(
            f"{path}: truncated: its header describes {needed} bytes of tensor data, the file"
            f" holds {len(data) - start}"
        )
    if len(data) - start > needed:
        raise ValueError(f"{path}: corrupted: {len(data) - start - needed} bytes after the data")
    table = _table(path, _parse_json(path, metadata, "tensors", dict))
    policy_raw = _parse_json(path, metadata, "policy", dict)
    try:
        policy = QuantPolicy.from_config(policy_raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: metadata 'policy': {err}") from err
    extra = _parse_json(path, metadata, "extra", dict)
    try:
        blobs = _safetensors().load(data)
    except Exception as err:  # safetensors' own checks: dtypes, shapes vs offsets, overlaps
        raise ValueError(f"{path}: corrupted safetensors data ({err})") from err
    del data
    _check_blobs(path, blobs, table)
    if _digest(blobs, metadata) != metadata["sha256"]:
        raise ValueError(
            f"{path}: corrupted: sha256 of its tensors and metadata does not match the recorded"
            " one (flipped bits or an edited file)"
        )
    described = PackedFile(path, VERSION, table, policy, extra, path.stat().st_size, start)
    return _unpack(blobs, table), described
