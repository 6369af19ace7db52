"""Weight quantization for QAT, as pinned in METHOD.md; usable on any torch model.

Imports nothing from the ASR side. Typical use::

    policy = QuantPolicy.from_config({"default": {"bits": 2, "symmetric": False, "group_size": 16}})
    prepare(model, policy)                 # fake-quant on every matched weight
    print(size_report(model, policy).to_markdown())
    write_packed("model.lbq", model, policy)  # b-bit codes + scales, safetensors, no pickle
"""

from lowbit_asr.quant.container import (
    PackedFile,
    PackedTensor,
    is_packed_file,
    read_packed,
    write_packed,
)
from lowbit_asr.quant.fake_quant import (
    QuantizedWeight,
    dequantize,
    fake_quantize,
    quantize,
)
from lowbit_asr.quant.packing import pack_codes, packed_nbytes, unpack_codes
from lowbit_asr.quant.policy import PlannedTensor, PolicyRule, QuantPolicy
from lowbit_asr.quant.prepare import (
    FakeQuantize,
    batched_fake_quant,
    fake_quant_disabled,
    fake_quant_modules,
    is_fake_quant_enabled,
    load_float_state_dict,
    prepare,
    set_fake_quant_enabled,
)
from lowbit_asr.quant.size import SizeReport, SizeRow, size_report
from lowbit_asr.quant.spec import ClipSearch, QuantSpec

__all__ = [
    "ClipSearch",
    "FakeQuantize",
    "PackedFile",
    "PackedTensor",
    "PlannedTensor",
    "PolicyRule",
    "QuantPolicy",
    "QuantSpec",
    "QuantizedWeight",
    "SizeReport",
    "SizeRow",
    "batched_fake_quant",
    "dequantize",
    "fake_quant_disabled",
    "fake_quant_modules",
    "fake_quantize",
    "is_fake_quant_enabled",
    "is_packed_file",
    "load_float_state_dict",
    "pack_codes",
    "packed_nbytes",
    "prepare",
    "quantize",
    "read_packed",
    "set_fake_quant_enabled",
    "size_report",
    "unpack_codes",
    "write_packed",
]
