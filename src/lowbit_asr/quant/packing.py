"""Dense bit packing of integer codes: b-bit codes stored in exactly ceil(n·b / 8) bytes.

Codes in the signed grid [qmin, qmax] are shifted to [0, 2^b − 1] and written as one little-endian
bit stream (value i occupies bits i·b … i·b + b − 1), so 2-bit codes pack four per byte, 4-bit
two per byte, and 3-bit codes straddle byte boundaries without waste. This is the storage the
size accounting counts (METHOD.md); the packed-model container builds on it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits occupy."""
    _check_bits(bits)
    return (numel * bits + 7) // 8


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack signed codes (any shape, values in [−2^(b−1), 2^(b−1) − 1]) into a uint8 tensor.

    Raises ``ValueError`` when a code lies outside the grid (it could not be stored).
    """
    _check_bits(bits)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = codes.detach().reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise ValueError(f"codes outside the {bits}-bit grid [{qmin}, {qmax}]")
    unsigned = (flat - qmin).to(torch.uint8).numpy()  # (n,) in [0, 2^b - 1]
    planes = (unsigned[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, b), LSB first
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` signed int8 codes (flat)."""
    _check_bits(bits)
    expected = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed codes: expected {expected} uint8 bytes for {numel} {bits}-bit values,"
            f" got {packed.numel()} {packed.dtype} in {packed.dim()}-D"
        )
    stream = np.unpackbits(packed.numpy(), bitorder="little")[: numel * bits]
    planes = stream.reshape(numel, bits).astype(np.int16)  # (n, b)
    unsigned = planes @ (1 << np.arange(bits, dtype=np.int16))  # (n,)
    return torch.from_numpy((unsigned - 2 ** (bits - 1)).astype(np.int8))
