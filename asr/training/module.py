"""ASRModule: the LightningModule that trains an :class:`asr.recognizer.Recognizer`, adding
augmentation, the CTC loss(es), the validation WER and the optimiser."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from asr.data.dataset import Batch
from asr.decoding import Decoder
from asr.features import LogMelFeatures, SpecAugment
from asr.metrics import error_counts
from asr.model import BiLSTMCTC
from asr.model_files import CHECKPOINT_KEY, CHECKPOINT_VERSION, migrate
from asr.recognizer import Recognizer
from asr.text import Tokenizer
from asr.training.inter_ctc import InterCTC
from asr.training.optim import fused_option

log = logging.getLogger(__name__)

RNG_KEY = "rng_states"  # random generator states, so that resume=auto continues the same streams


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC summed over each utterance, averaged over the batch.

    Per-utterance sums (not per-frame means) keep gradients large enough to leave the all-blank
    plateau quickly; ``zero_infinity`` makes an impossible alignment a zero loss, not inf.
    """
    loss = F.ctc_loss(
        log_probs.transpose(0, 1),  # (B, T, C) -> (T, B, C)
        targets, lengths, target_lengths, blank=0, reduction="sum", zero_infinity=True,
    )
    return loss / log_probs.shape[0]


def batch_error_counts(decoder: Decoder, log_probs: torch.Tensor | None,
                       lengths: torch.Tensor | None, batch: Batch) -> torch.Tensor:
    """Word errors, reference words, character errors, reference characters of a batch's greedy
    hypotheses (a dropped utterance scores as empty); summed over a split: the validation WER,
    by the rule ``asr.evaluate`` applies."""
    hyps = decoder.decode(log_probs, lengths) if batch.ids else []
    refs = list(batch.texts) + [f.text for f in batch.dropped]
    words, chars = error_counts(refs, hyps + [""] * len(batch.dropped))
    return torch.tensor([words.errors, words.reference, chars.errors, chars.reference],
                        dtype=torch.float64)


class ASRModule(L.LightningModule):
    """Waveforms -> Recognizer (features, SpecAugment in training, BiLSTM-CTC) -> CTC loss.

    Args:
        tokenizer: maps text to ids; its size fixes the model's output layer.
        features: waveform -> log-Mel front end (runs on the model's device).
        model: a ``BiLSTMCTC``, or a partial taking ``input_dim`` and ``num_classes``.
        optimizer: partial taking ``params`` (e.g. ``torch.optim.AdamW``, ``_partial_: true``).
        scheduler: partial taking ``optimizer`` and ``total_steps``, stepped every optimiser step.
        augment: SpecAugment, applied in training only.
        inter_ctc: intermediate CTC on a lower layer (:mod:`asr.training.inter_ctc`), or ``None``.
        eval_manifests: ``{name: manifest}`` to score after training; kept in checkpoints.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        features: LogMelFeatures,
        model: BiLSTMCTC | Callable[..., BiLSTMCTC],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        augment: SpecAugment | None = None,
        inter_ctc: InterCTC | None = None,
        eval_manifests: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            model = _build_model(model, features, tokenizer, inter_ctc)
        self.recognizer = Recognizer(features, model, tokenizer)
        self.augment = augment
        self.inter_ctc = inter_ctc
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # a null path (e.g. the default dev/test pair a LibriSpeech recipe replaces) is skipped
        self.eval_manifests = {k: str(Path(v).resolve()) for k, v in (eval_manifests or {}).items()
                               if v}
        self._counts: dict[str, torch.Tensor] = {}
        self._rng_to_restore: dict[str, Any] | None = None  # generator states from a checkpoint

    @property
    def label_tokenizers(self) -> list[Tokenizer]:
        """Every tokenizer a training label must fit: the model's, then the intermediate CTC's."""
        own = self.inter_ctc.tokenizer if self.inter_ctc is not None else None
        return [self.recognizer.tokenizer] + ([own] if own is not None else [])

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """Waveforms and targets to ``device``; the lengths stay on the host (:class:`Batch`)."""
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        moved = {name: getattr(batch, name).to(device, non_blocking=True)
                 for name in ("audio", "targets", "inter_targets")
                 if getattr(batch, name) is not None}
        return batch._replace(**moved)

    # ----------------------------------------------------------------- steps
    def train_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's loss and, within it, the last layer's CTC (the same tensor without
        intermediate CTC): ``(1 - w) * CTC(last layer) + w * CTC(layer)`` with it."""
        feats, frames = self.recognizer.features(batch.audio, batch.audio_lengths)
        if self.augment is not None:
            feats = self.augment(feats, frames)
        inter = self.inter_ctc
        if inter is None:
            log_probs, lengths = self.recognizer.model(feats, frames)
            loss = ctc_loss(log_probs, lengths, batch.targets, batch.target_lengths)
            return loss, loss
        log_probs, layer_log_probs, lengths = self.recognizer.model(feats, frames, inter.layer)
        final = ctc_loss(log_probs, lengths, batch.targets, batch.target_lengths)
        own = inter.tokenizer is not None  # the layer has labels of its own (made by the dataset)
        targets = (batch.inter_targets, batch.inter_target_lengths) if own else (
            batch.targets, batch.target_lengths)
        return (1 - inter.weight) * final + inter.weight * ctc_loss(layer_log_probs, lengths,
                                                                     *targets), final

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if not batch.ids:  # every file of the batch failed to load: None skips the step
            return None
        bsz = batch.audio.shape[0]
        loss, final = self.train_loss(batch)
        if self.inter_ctc is not None:
            self.log("train/ctc_last", final, on_step=True, on_epoch=False, batch_size=bsz)
        # logged, not shown: the progress bar would read it back from the device every step
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=bsz)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                 batch_size=bsz)
        return loss

    def _eval_step(self, batch: Batch, stage: str) -> None:
        log_probs = lengths = None
        if batch.ids:
            log_probs, lengths = self.recognizer(batch.audio, batch.audio_lengths)
            # a text the tokenizer cannot encode has an empty label: scored, but not in the loss
            keep = [i for i, (t, n) in enumerate(zip(batch.texts, batch.target_lengths.tolist(),
                                                      strict=True)) if n or not t]
            if keep:
                rows = slice(None) if len(keep) == len(batch.ids) else torch.tensor(keep)
                loss = ctc_loss(log_probs[rows], lengths[rows], batch.targets[rows],
                                batch.target_lengths[rows])
                self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(keep))
        counts = batch_error_counts(self.recognizer.decoder, log_probs, lengths, batch)
        self._counts[stage] = self._counts.get(stage, 0) + counts

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_error_rates(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is None:
            return
        counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum")
        # summed over ranks already: sync_dist averages equal values (and keeps Lightning quiet)
        self.log(f"{stage}/wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True,
                 sync_dist=True)
        self.log(f"{stage}/cer", float(counts[2] / counts[3].clamp(min=1)), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    # ------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ASRModule was built without an optimizer; it can decode but not "
                               "train")
        params = [p for p in self.parameters() if p.requires_grad]
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        clips = bool(self._trainer is not None and self.trainer.gradient_clip_val)
        optimizer = self.optimizer_factory(
            params=params, **fused_option(self.optimizer_factory, precision, clips))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {**self.recognizer.describe(),
                                      "eval_manifests": dict(self.eval_manifests),
                                      "format_version": CHECKPOINT_VERSION}
        wer = self.trainer.callback_metrics.get("val/wer") if self._trainer is not None else None
        if wer is not None:  # the last validation's score, also in weights-only files
            checkpoint["val_wer"] = float(wer)
        # dropout and SpecAugment draw from torch's generator: each rank's states, so that a
        # resumed fit draws what the uninterrupted one would have (Lightning restores none)
        states = {"torch": torch.get_rng_state(), "python": random.getstate(),
                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}
        ranks: list[Any] = [states]
        if self._trainer is not None and self.trainer.world_size > 1:  # Lightning writes rank 0's
            ranks = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, states)
        checkpoint[RNG_KEY] = {"ranks": ranks}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Bring the checkpoint's layout up to date before Lightning loads its weights; each rank
        takes back its own random generator states."""
        migrate(checkpoint)
        saved = checkpoint.get(RNG_KEY)
        if not saved:
            return
        ranks = saved["ranks"]
        rank, world = ((self.trainer.global_rank, self.trainer.world_size)
                       if self._trainer is not None else (0, 1))
        if len(ranks) != world:
            log.warning("the checkpoint holds the random generator states of %d ranks, this run "
                        "has %d: dropout and SpecAugment will not draw what an uninterrupted run "
                        "would have", len(ranks), world)
        self._rng_to_restore = ranks[rank % len(ranks)]

    def on_train_start(self) -> None:
        # restored here, not at load time: between the two Lightning builds loaders and optimiser
        states, self._rng_to_restore = self._rng_to_restore, None
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _build_model(factory: Callable[..., BiLSTMCTC], features: LogMelFeatures, tokenizer: Tokenizer,
                 inter_ctc: InterCTC | None) -> BiLSTMCTC:
    options = inter_ctc.model_options() if inter_ctc is not None else {}
    try:
        return factory(input_dim=features.n_mels, num_classes=tokenizer.num_classes, **options)
    except TypeError as err:  # the partial was given a key its class does not take
        raise ValueError(f"cannot build the model from the model.* settings: {err}; compare the "
                         "keys with the model's file in conf/model/") from None
