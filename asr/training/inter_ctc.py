"""Intermediate CTC (Lee & Watanabe, 2021) and self-conditioned CTC (Nozaki & Komatsu, 2021):
opt-in training losses on a lower LSTM layer (``inter_ctc=ctc`` or ``self_conditioned``; default
``none``). See docs/training.md.
"""

from __future__ import annotations

from typing import Any

from asr.text import CharTokenizer, Tokenizer


class InterCTC:
    """The settings of one run's intermediate CTC loss (computed by ``ASRModule.train_loss``).

    Args:
        weight: the lower layer's share of the training loss, in (0, 1).
        num_layers: the model's LSTM layers (``${model.num_layers}``).
        layer: the LSTM layer (1-based, below the last) of the loss; ``None``: the middle one.
        tokenizer: ``None`` (the model's units, shared output layer) or ``"char"`` (characters,
            an output layer of its own).
        self_condition: feed that layer's posteriors to the next layer (self-conditioned CTC).

    Raises:
        ValueError: naming the ``inter_ctc.*`` setting at fault.
    """

    def __init__(
        self,
        weight: float,
        num_layers: int,
        layer: int | None = None,
        tokenizer: str | None = None,
        self_condition: bool = False,
    ) -> None:
        if not 0.0 < weight < 1.0:
            raise ValueError(f"inter_ctc.weight must be in (0, 1), got {weight}; inter_ctc=none "
                             "turns it off")
        if num_layers < 2:
            raise ValueError(f"intermediate CTC needs model.num_layers >= 2, got {num_layers}: add "
                             "inter_ctc=none to train one layer")
        # the middle layer: 2 of 3, 1 of 2, 3 of 5
        layer = (num_layers + 1) // 2 if layer is None else layer
        if not 1 <= layer < num_layers:
            raise ValueError(f"inter_ctc.layer must be 1..{num_layers - 1} (below model.num_layers="
                             f"{num_layers}) or null (the middle layer), got {layer}")
        if tokenizer not in (None, "char"):
            raise ValueError(f"inter_ctc.tokenizer must be null or char, got {tokenizer!r}")
        self.weight, self.layer, self.self_condition = (float(weight), int(layer),
                                                        bool(self_condition))
        self.tokenizer: Tokenizer | None = CharTokenizer() if tokenizer == "char" else None

    def model_options(self) -> dict[str, Any]:
        """What the model needs for this loss: its own output layer (``inter_classes``) and the
        self-conditioned layer (``condition_layer``)."""
        options: dict[str, Any] = {}
        if self.tokenizer is not None:
            options["inter_classes"] = self.tokenizer.num_classes
        if self.self_condition:
            options["condition_layer"] = self.layer
        return options
