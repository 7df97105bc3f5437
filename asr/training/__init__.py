"""Training: the LightningModule, its callbacks, checkpoints, model selection and optimiser schedules."""
