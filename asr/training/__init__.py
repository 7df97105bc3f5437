"""Training: the LightningModule, callbacks, checkpoints, model selection, optimiser schedules."""
