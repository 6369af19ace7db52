"""LightningModule (loss, metrics, optimisation), callbacks, frontier logging."""
