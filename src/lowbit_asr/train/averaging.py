"""An exponential moving average (EMA) of the weights, validated, checkpointed and tested.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` does the bookkeeping (a
:class:`torch.optim.swa_utils.AveragedModel` beside the module, the averaged weights swapped in
for every validation and copied in when training ends; in a checkpoint ``state_dict`` holds the
averaged weights and ``current_model_state`` the trained ones, so a resumed run continues both).
What it lacks for this model is an update that leaves integer buffers intact: the front end's
``stats_count`` and BatchNorm's ``num_batches_tracked`` are int64, and torch's EMA function
rounds ``decay * n + (1 - decay) * n`` back into them (n - 1 for most n). Here floating tensors
are lerped (exact for a constant, e.g. the front end's frozen mean and std) and the others
copied. And before its first update (``optim.ema_start_step``) the average is the trained
weights, not the initial ones Lightning's callback would validate and checkpoint until then.

The averaging does not touch the trained weights, the optimiser or any random generator: a run
with it trains the same weights, step for step, as one without it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

CURRENT_WEIGHTS_KEY = "current_model_state"
"""Where a checkpoint of a run with weight averaging keeps the trained (not averaged) weights
(Lightning's :class:`WeightAveraging` name; ``state_dict`` holds the averaged ones)."""


def ema_update(decay: float):
    """An ``AveragedModel`` ``multi_avg_fn``: ``ema += (1 - decay) * (current - ema)`` on
    floating tensors, a copy on the others (counters)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], _n_averaged: Tensor) -> None:
        if torch.is_floating_point(averaged[0]):  # AveragedModel groups tensors by dtype
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    return update


class EmaWeights(WeightAveraging):
    """EMA of every parameter and buffer from optimiser step ``start_step`` on (the first
    update copies the weights), updated after every step."""

    def __init__(self, decay: float, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        super().__init__(use_buffers=True, multi_avg_fn=ema_update(decay))
        self.decay = decay
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimiser step from ``start_step`` (0-based) on; never at epoch ends."""
        return step_idx is not None and step_idx >= self.start_step

    def _follow_until_started(self, pl_module: L.LightningModule) -> None:
        """Before the first update the average is the trained weights (the first update copies
        them anyway, so this changes nothing that follows)."""
        average = self._average_model
        if average is not None and int(average.n_averaged) == 0:
            average.module.load_state_dict(pl_module.state_dict())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validate the average (the trained weights before it starts)."""
        self._follow_until_started(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """``state_dict`` = the average (the trained weights before it starts)."""
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state plus the settings, so that a resumed run can be checked against
        them."""
        return {**super().state_dict(), "decay": self.decay, "start_step": self.start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume an average kept with other settings (it would silently mix two)."""
        saved = (state_dict.get("decay", self.decay), state_dict.get("start_step", self.start_step))
        if saved != (self.decay, self.start_step):
            raise ValueError(
                f"the checkpoint's weight average was kept with optim.ema_decay={saved[0]},"
                f" optim.ema_start_step={saved[1]}; this run asks for {self.decay},"
                f" {self.start_step}")
        super().load_state_dict(state_dict)
