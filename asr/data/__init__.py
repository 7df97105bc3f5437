"""Data: manifests, the dataset and its sampler, the DataModule, corpus layouts and downloads."""
