"""asr: a BiLSTM-CTC speech recognition training pipeline (PyTorch Lightning + Hydra)."""

__version__ = "0.1.0"
