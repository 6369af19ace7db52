"""``lowbit-asr export checkpoint=… [out=model.lbq]``: the packed low-bit file of a checkpoint.

    lowbit-asr export checkpoint=runs/qat_mini/<date>/checkpoints/best.ckpt out=int2.lbq
    lowbit-asr evaluate checkpoint=int2.lbq dataset.root=…      # same WER as the checkpoint

Quantized weights are stored in their bit width with their scales, everything else as the size
accounting counts it (``lowbit-asr size``), so the file is the reported size plus a small header;
prints file bytes against accounted bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.packed import SUFFIX, export_packed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Pack the checkpoint, print its size against the accounted size."""
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_suffix(SUFFIX)
    report = export_packed(cfg.checkpoint, out)
    print(report.to_markdown())
    print(
        f"\n{report.file_bytes:,} bytes on disk = accounted {report.accounted_bytes:,}"
        f" × {report.ratio:.4f} (header {report.header_bytes:,} bytes); written to {out}"
    )
    return {
        "out": str(out),
        "file_bytes": report.file_bytes,
        "accounted_bytes": report.accounted_bytes,
        "ratio": report.ratio,
    }


if __name__ == "__main__":
    main()
