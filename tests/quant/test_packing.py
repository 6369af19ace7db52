"""Dense bit packing: exact round trip, the byte count the size accounting assumes, bad input."""

from __future__ import annotations

import pytest
import torch

from lowbit_asr.quant import QuantSpec, dequantize, quantize
from lowbit_asr.quant.fake_quant import QuantizedWeight
from lowbit_asr.quant.packing import pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("numel", [1, 7, 64, 1001])
def test_round_trip_is_exact_and_dense(bits, numel):
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (numel,), generator=g,
                          dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel * bits // 8)
    assert packed.numel() == packed_nbytes(numel, bits)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_layout_is_little_endian_four_per_byte_at_two_bits():
    # codes -2, -1, 0, 1 -> unsigned 0, 1, 2, 3 -> bits 00 10 01 11 (LSB first) = 0b11100100
    assert pack_codes(torch.tensor([-2, -1, 0, 1], dtype=torch.int8), 2).tolist() == [0b11100100]
    # 4-bit: two per byte, the first value in the low nibble: -8 -> 0, 7 -> 15
    assert pack_codes(torch.tensor([-8, 7], dtype=torch.int8), 4).tolist() == [0xF0]


def test_quantized_weight_survives_packing():
    spec = QuantSpec(3, symmetric=False, group_size=8)
    qw = quantize(torch.randn(16, 24), spec)
    packed = pack_codes(qw.codes, spec.bits)
    codes = unpack_codes(packed, spec.bits, qw.codes.numel()).reshape(qw.codes.shape)
    restored = QuantizedWeight(codes, qw.scale, qw.offset, qw.shape, spec)
    assert torch.equal(dequantize(restored), dequantize(qw))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"outside the 2-bit grid \[-2, 1\]"):
        pack_codes(torch.tensor([2], dtype=torch.int8), 2)
    with pytest.raises(ValueError, match="bits must be an integer in 1..8"):
        pack_codes(torch.zeros(3, dtype=torch.int8), 9)
    packed = pack_codes(torch.zeros(10, dtype=torch.int8), 3)
    with pytest.raises(ValueError, match="expected 4 uint8 bytes for 10 3-bit values, got 3"):
        unpack_codes(packed[:3], 3, 10)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(packed.to(torch.int16), 3, 10)
