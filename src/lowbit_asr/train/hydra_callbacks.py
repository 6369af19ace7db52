"""Hydra callbacks: the frontier is written when a multirun sweep ends."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lowbit_asr.train.frontier import log_frontier_to_wandb, write_frontier

log = logging.getLogger(__name__)


class FrontierOnMultirunEnd(Callback):
    """After the last job of a sweep, write frontier.csv/.md/.png into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Hydra hook; a sweep whose every job failed still gets its failure list."""
        sweep_dir = config.hydra.sweep.dir
        try:
            paths = write_frontier(sweep_dir)
        except FileNotFoundError as err:
            log.warning("no frontier: %s", err)
            return
        log.info("frontier written: %s", ", ".join(str(p) for p in paths.values()))
        wandb_cfg = config.get("logger", {}).get("wandb", {})
        mode = str(wandb_cfg.get("mode", "offline"))
        try:  # the frontier files are written either way; W&B is a copy of them
            log_frontier_to_wandb(paths, mode=mode)
        except Exception as err:  # noqa: BLE001 - a W&B failure must not lose the sweep's end
            log.warning("frontier not logged to W&B: %s", err)
