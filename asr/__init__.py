"""asr: a BiLSTM-CTC speech recognition training pipeline (PyTorch Lightning + Hydra).

``from asr import Recognizer`` gives the trained model at work (:mod:`asr.recognizer`).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Recognizer", "Transcript"]


def __getattr__(name: str) -> Any:
    # imported on first use: `import asr.text` stays free of torch's start-up cost
    if name in __all__:
        from asr import recognizer

        return getattr(recognizer, name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
