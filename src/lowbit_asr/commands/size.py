"""``lowbit-asr size model=… quantizer=…``: print the per-tensor size table of a model.

    lowbit-asr size model=conformer_l quantizer=int2_asym_sc4
    lowbit-asr size checkpoint=runs/float_mini/checkpoints/best.ckpt quantizer=int4_asym

Proof, per layer, of what a quantizer config does: every parameter and buffer with its format,
bits, scale groups and total bits, then the totals in bits, bytes and MB (10^6 bytes).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import QuantPolicy, size_report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="size")
def main(cfg: DictConfig) -> None:
    """Build the model (float; or a checkpoint's, its own architecture and vocabulary),
    resolve the policy against it, print the report."""
    if cfg.checkpoint:
        from lowbit_asr.train.checkpoint import read_checkpoint, restore

        model, name = restore(read_checkpoint(cfg.checkpoint))[0].model, str(cfg.checkpoint)
    else:
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True), cfg.vocab_size)
        name = f"{cfg.model_name} (vocab {cfg.vocab_size})"
    policy = QuantPolicy.from_config(OmegaConf.to_container(cfg.quantizer, resolve=True))
    report = size_report(model, policy)
    if cfg.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"# {policy.name or 'quantizer'} on {name}"
              f" ({count_parameters(model) / 1e6:.2f} M parameters)\n")
        print(report.to_markdown())


if __name__ == "__main__":
    main()
