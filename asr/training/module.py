"""ASRModule: the LightningModule that owns features, augmentation, model, tokenizer and greedy decoding."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from asr.data.dataset import Batch
from asr.decoding import GreedyDecoder
from asr.features import LogMelFeatures, SpecAugment
from asr.metrics import error_counts
from asr.model import BiLSTMCTC
from asr.pretrained import is_pretrained, load_weights, read_config
from asr.text import Tokenizer, normalize_text, tokenizer_from_state_dict
from asr.training.checkpointing import load_checkpoint, validate_description
from asr.training.inter_ctc import InterCTC
from asr.training.optim import fused_option

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "asr"  # plain-data description of the model stored in every checkpoint
RNG_KEY = "rng_states"  # random generator states, so that resume=auto continues the same random streams


class ASRModule(L.LightningModule):
    """Waveforms -> features -> (SpecAugment) -> BiLSTMCTC -> CTC loss; greedy decoding for WER.

    Args:
        tokenizer: maps text to ids; its size fixes the model's output layer.
        features: waveform -> log-Mel front end (runs on the model's device).
        model: a ``BiLSTMCTC``, or a callable (Hydra partial) taking ``input_dim`` and ``num_classes``.
        optimizer: partial taking ``params`` (e.g. ``torch.optim.AdamW`` with ``_partial_: true``).
        scheduler: partial taking ``optimizer`` and ``total_steps``, stepped every optimiser step.
        augment: SpecAugment, applied in training only.
        inter_ctc: an intermediate CTC loss on a lower layer (:mod:`asr.training.inter_ctc`), or ``None``.
        eval_manifests: ``{name: manifest}`` to score after training; stored in checkpoints (absolute paths).
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
        self.tokenizer = tokenizer
        self.features = features
        self.augment = augment
        self.inter_ctc = inter_ctc
        self.model = model if isinstance(model, torch.nn.Module) else self._build_model(model)
        if self.model.config["num_classes"] != tokenizer.num_classes:
            raise ValueError(
                f"model.num_classes={self.model.config['num_classes']} but the tokenizer has "
                f"{tokenizer.num_classes} classes (blank included); leave num_classes to the tokenizer"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decoder = GreedyDecoder(tokenizer)
        # a null path (e.g. the default dev/test pair a LibriSpeech recipe replaces) is skipped
        self.eval_manifests = {k: str(Path(v).resolve()) for k, v in (eval_manifests or {}).items() if v}
        self._counts: dict[str, torch.Tensor] = {}
        self._rng_to_restore: dict[str, Any] | None = None  # random generator states from a checkpoint

    def _build_model(self, factory: Callable[..., BiLSTMCTC]) -> BiLSTMCTC:
        options = self.inter_ctc.model_options() if self.inter_ctc is not None else {}
        try:
            return factory(input_dim=self.features.n_mels, num_classes=self.tokenizer.num_classes, **options)
        except TypeError as err:  # the partial was given a key its class does not take
            raise ValueError(f"cannot build the model from the model.* settings: {err}; compare the keys "
                             f"with the model's file in conf/model/") from None

    @property
    def label_tokenizers(self) -> list[Tokenizer]:
        """Every tokenizer a training label must fit: the model's, then the intermediate CTC's own (if any)."""
        own = self.inter_ctc.tokenizer if self.inter_ctc is not None else None
        return [self.tokenizer] + ([own] if own is not None else [])

    # ----------------------------------------------------------------- model
    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveforms, (B,) sample counts -> (B, T', C) log-probs, (B,) output frame counts."""
        feats, frame_lengths = self.features(audio, audio_lengths)
        if self.augment is not None and self.training:
            feats = self.augment(feats, frame_lengths)
        return self.model(feats, frame_lengths)

    # ------------------------------------------------------ batch transfer
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, Batch) and batch.ids and self.training and self.inter_ctc is not None:
            return self.inter_ctc.add_targets(batch, self.tokenizer)
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Waveforms and targets to ``device``; the lengths stay on the host (see :class:`Batch`)."""
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        moved = {name: getattr(batch, name).to(device, non_blocking=True)
                 for name in ("audio", "targets", "inter_targets") if getattr(batch, name) is not None}
        return batch._replace(**moved)

    def output_frames(self, samples: torch.Tensor) -> torch.Tensor:
        """(N,) waveform sample counts -> (N,) output frames of the model (after subsampling)."""
        return self.model.output_lengths(self.features.output_lengths(samples))

    @property
    def samples_per_frame(self) -> int:
        """Input samples per output frame: the feature hop times the model's subsampling."""
        n = self.features.hop_length * 1_000_000
        return int(round(n / int(self.output_frames(torch.tensor([n]))[0])))

    def ctc_loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """CTC summed over each utterance, averaged over the batch.

        Per-utterance sums (not per-frame means) keep gradients large enough to leave the all-blank
        plateau quickly; ``zero_infinity`` turns an impossible alignment into zero loss instead of inf.
        """
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),  # (B, T, C) -> (T, B, C)
            batch.targets,
            lengths,
            batch.target_lengths,
            blank=0,
            reduction="sum",
            zero_infinity=True,
        )
        return loss / batch.audio.shape[0]

    # ----------------------------------------------------------------- steps
    def train_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's loss and, within it, the last layer's CTC (the same tensor without intermediate CTC)."""
        if self.inter_ctc is not None:
            return self.inter_ctc.loss(self, batch)
        log_probs, lengths = self(batch.audio, batch.audio_lengths)
        loss = self.ctc_loss(log_probs, lengths, batch)
        return loss, loss

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        bsz = batch.audio.shape[0]
        if stage == "train":
            loss, final = self.train_loss(batch)
            if self.inter_ctc is not None:
                self.log("train/ctc_last", final, on_step=True, on_epoch=False, batch_size=bsz)
            # logged, not shown: the progress bar would read it back from the device every step (the throughput
            # callback shows it every few steps)
            self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=bsz)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bsz)
        else:
            log_probs, lengths = self(batch.audio, batch.audio_lengths)
            loss = self.ctc_loss(log_probs, lengths, batch)
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=bsz)
            self._count_errors(stage, log_probs, lengths, batch)
        return loss

    def _count_errors(self, stage: str, log_probs: torch.Tensor, lengths: torch.Tensor, batch: Batch) -> None:
        """Add the batch's word and character edits (greedy decoding) to the stage's running counts."""
        hyps = self.decoder.decode(log_probs, lengths)
        refs = [
            normalize_text(self.tokenizer.decode(t[:n].tolist()))
            for t, n in zip(batch.targets.cpu(), batch.target_lengths.cpu(), strict=True)
        ]
        words, chars = error_counts(refs, hyps)
        counts = torch.tensor([words.errors, words.reference, chars.errors, chars.reference], dtype=torch.float64,
                              device=self.device)
        self._counts[stage] = self._counts.get(stage, torch.zeros_like(counts)) + counts

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        # every file of the batch failed to load (see Batch.dropped): None skips the step
        return self._shared_step(batch, "train") if batch.ids else None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch.ids:
            self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        if batch.ids:
            self._shared_step(batch, "test")

    def _log_error_rates(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is None:
            return
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        # already summed over ranks: sync_dist averages equal values (and keeps Lightning from warning)
        self.log(f"{stage}/wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/cer", float(counts[2] / counts[3].clamp(min=1)), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    # ------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ASRModule was built without an optimizer; it can decode but not train")
        params = [p for p in self.parameters() if p.requires_grad]
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        clips = bool(self._trainer is not None and self.trainer.gradient_clip_val)
        optimizer = self.optimizer_factory(params=params, **fused_option(self.optimizer_factory, precision, clips))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------- checkpoints
    def describe(self) -> dict:
        """Plain data that rebuilds this module for inference (no code is named or executed)."""
        return {
            "tokenizer": self.tokenizer.state_dict(),
            "features": dict(self.features.config),
            "model": dict(self.model.config),
            "eval_manifests": dict(self.eval_manifests),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.describe()
        wer = self.trainer.callback_metrics.get("val/wer") if self._trainer is not None else None
        if wer is not None:  # the last validation's score, also in weights-only files (they keep no callback state)
            checkpoint["val_wer"] = float(wer)
        # dropout and SpecAugment draw from torch's generator: each rank's states, so that a resumed fit draws on
        # every rank what the uninterrupted one would have (Lightning restores none); speed perturbation draws from
        # the seeds the sampler gives each utterance
        states = {"torch": torch.get_rng_state(), "python": random.getstate(),
                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}
        ranks: list[Any] = [states]
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank saves, Lightning writes rank 0's
            ranks = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, states)
        checkpoint[RNG_KEY] = {"ranks": ranks}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each rank takes back its own random generator states (see :meth:`on_save_checkpoint`)."""
        saved = checkpoint.get(RNG_KEY)
        if not saved:
            return
        ranks = saved.get("ranks", [saved])  # older checkpoints held rank 0's states only
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        if len(ranks) != world:
            log.warning("the checkpoint holds the random generator states of %d ranks, this run has %d: dropout and "
                        "SpecAugment will not draw what an uninterrupted run would have", len(ranks), world)
        self._rng_to_restore = ranks[rank % len(ranks)]

    def on_train_start(self) -> None:
        # restored here, not at load time: between the two Lightning builds the loaders and the optimizer
        states, self._rng_to_restore = self._rng_to_restore, None
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    @classmethod
    def from_description(cls, meta: dict[str, Any]) -> ASRModule:
        """An untrained module for inference from a checked description (:meth:`describe`; see
        :func:`asr.training.checkpointing.validate_description`): tokenizer, features and model, nothing to train."""
        return cls(
            tokenizer=tokenizer_from_state_dict(meta["tokenizer"]),
            features=LogMelFeatures(**meta["features"]),
            model=BiLSTMCTC(**meta["model"]),
        )

    @classmethod
    def load_for_inference(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ASRModule:
        """Rebuild a module for decoding from a checkpoint, or from a model folder written by
        ``asr.export format=pretrained`` (:mod:`asr.pretrained`): tensors and plain data only, no code run.

        A folder written with ``quantize=int8`` gives an int8 module (:func:`asr.quantize.quantize_int8`), which
        runs on the CPU only.

        Raises:
            FileNotFoundError: no checkpoint at ``path``, or a file of the folder is missing (named).
            ValueError: the file is corrupt, not an asr checkpoint, or its description has unexpected
                keys or types (see :func:`asr.training.checkpointing.validate_description`); an int8 folder
                asked for on a GPU.
        """
        if is_pretrained(path):
            meta, quantize = read_config(path)
            if quantize and torch.device(map_location).type != "cpu":
                raise ValueError(f"{path} holds an int8 model (config.json: quantize=int8), which runs on the CPU "
                                 f"only; pass device=cpu, or export a float folder for {map_location}")
            return load_weights(cls.from_description(meta), path, quantize).eval()
        ckpt = load_checkpoint(path, map_location=map_location)
        if CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path} is not an asr checkpoint (no '{CHECKPOINT_KEY}' entry)")
        try:
            meta = validate_description(ckpt[CHECKPOINT_KEY])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        module = cls.from_description(meta)
        module.load_state_dict(_inference_weights(ckpt["state_dict"]))
        module.eval_manifests = dict(meta.get("eval_manifests", {}))
        return module.eval()


def _inference_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights for decoding. Checkpoints written before the moving average became a callback
    (:class:`asr.training.regularizers.EMA`) kept it beside the model (``ema_model.module.*``): it takes the place of
    ``model.*``, since that is what validation scored."""
    ema = {k[len("ema_model.module."):]: v for k, v in state_dict.items() if k.startswith("ema_model.module.")}
    if not ema:
        return state_dict
    weights = {k: v for k, v in state_dict.items() if not k.startswith(("model.", "ema_model."))}
    weights.update({f"model.{k}": v for k, v in ema.items()})
    return weights
