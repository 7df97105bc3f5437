"""ASRModule: the LightningModule that owns features, augmentation, model, tokenizer and greedy decoding."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import jiwer
import pytorch_lightning as L
import torch
import torch.nn.functional as F

from asr.checkpointing import load_checkpoint, validate_description
from asr.data import Batch
from asr.decoding import GreedyDecoder
from asr.features import LogMelFeatures, SpecAugment
from asr.model import BiLSTMCTC
from asr.text import Tokenizer, normalize_text, tokenizer_from_state_dict

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
        ema_decay: keep an exponential moving average of the model's weights, updated after every training
            step (decay ``min(ema_decay, (1 + n) / (10 + n))`` at update ``n``, so early averages do not drag
            in the random initialisation). Validation, best-checkpoint selection and every later use of the
            checkpoint (evaluate, transcribe, export) then run the averaged weights. ``None``: no average.
        inter_ctc_weight: intermediate CTC (Lee & Watanabe, 2021): in training, the loss is
            ``(1 - w) * CTC(last layer) + w * CTC(LSTM layer inter_ctc_layer)``, both through the shared output
            layer. 0 turns it off; validation and decoding always use the last layer.
        inter_ctc_layer: the LSTM layer (1-based, below the last) of the intermediate loss.
        inter_tokenizer: the intermediate loss's own units (e.g. characters under a sub-word model: hierarchical
            CTC), predicted by the model's own intermediate output layer (``model.inter_classes``); ``None``: the
            main tokenizer's units through the shared output layer.
        weight_noise: standard deviation of Gaussian noise added to every weight matrix of the model for each
            training step's forward and backward pass, and taken off before the optimiser step (Graves et al.
            2013), from epoch ``weight_noise_start_epoch`` on. 0 = off.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        features: LogMelFeatures,
        model: BiLSTMCTC | Callable[..., BiLSTMCTC],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        augment: SpecAugment | None = None,
        ema_decay: float | None = None,
        inter_ctc_weight: float = 0.0,
        inter_ctc_layer: int = 1,
        inter_tokenizer: Tokenizer | None = None,
        weight_noise: float = 0.0,
        weight_noise_start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.features = features
        self.augment = augment
        self.model = (
            model
            if isinstance(model, torch.nn.Module)
            else model(input_dim=features.n_mels, num_classes=tokenizer.num_classes)
        )
        if self.model.config["num_classes"] != tokenizer.num_classes:
            raise ValueError(
                f"model.num_classes={self.model.config['num_classes']} but the tokenizer has "
                f"{tokenizer.num_classes} classes (blank included); leave num_classes to the tokenizer"
            )
        if not 0.0 <= inter_ctc_weight < 1.0:
            raise ValueError(f"inter_ctc.weight must be in [0, 1), got {inter_ctc_weight}")
        self.inter_ctc_weight, self.inter_ctc_layer = float(inter_ctc_weight), int(inter_ctc_layer)
        if self.inter_ctc_weight > 0 and not 1 <= self.inter_ctc_layer < self.model.config["num_layers"]:
            raise ValueError(f"inter_ctc.layer must be 1..{self.model.config['num_layers'] - 1} "
                             f"(below model.num_layers={self.model.config['num_layers']}), got {inter_ctc_layer}")
        condition_layer = self.model.config.get("condition_layer", 0)
        if condition_layer and self.inter_ctc_weight > 0 and self.inter_ctc_layer != condition_layer:
            raise ValueError(f"the model is self-conditioned on layer {condition_layer}: its intermediate CTC loss "
                             f"must be on that layer (inter_ctc.layer={condition_layer}), got {self.inter_ctc_layer}")
        if weight_noise < 0:
            raise ValueError(f"optim.weight_noise must be >= 0, got {weight_noise}")
        self.weight_noise, self.weight_noise_start_epoch = float(weight_noise), int(weight_noise_start_epoch)
        self._noise: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.inter_tokenizer = inter_tokenizer
        inter_classes = self.model.config.get("inter_classes")
        if inter_tokenizer is not None and inter_classes != inter_tokenizer.num_classes:
            raise ValueError(f"inter_ctc.tokenizer has {inter_tokenizer.num_classes} classes but the model's "
                             f"intermediate output layer has {inter_classes}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ema_model: torch.optim.swa_utils.AveragedModel | None = None
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise ValueError(f"optim.ema_decay must be in (0, 1) or null, got {ema_decay}")
            self.ema_model = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=_ema_update(ema_decay))
            self.ema_model.requires_grad_(False)  # not trained: kept out of the optimiser and of DDP's reducer
        self.decoder = GreedyDecoder(tokenizer)
        self.eval_manifests: dict[str, str] = {}
        self._counts: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- model
    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveforms, (B,) sample counts -> (B, T', C) log-probs, (B,) output frame counts."""
        feats, frame_lengths = self.features(audio, audio_lengths)
        if self.augment is not None and self.training:
            feats = self.augment(feats, frame_lengths)
        if self.ema_model is not None and not self.training:
            return self.ema_model.module(feats, frame_lengths)
        return self.model(feats, frame_lengths)

    def output_frames(self, samples: torch.Tensor) -> torch.Tensor:
        """(N,) waveform sample counts -> (N,) output frames of the model (after subsampling)."""
        return self.model.output_lengths(self.features.output_lengths(samples))

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
        if self.inter_ctc_weight == 0:
            log_probs, lengths = self(batch.audio, batch.audio_lengths)
            loss = self.ctc_loss(log_probs, lengths, batch)
            return loss, loss
        feats, frame_lengths = self.features(batch.audio, batch.audio_lengths)
        if self.augment is not None:
            feats = self.augment(feats, frame_lengths)
        log_probs, inter, lengths = self.model.forward_with_intermediate(feats, frame_lengths, self.inter_ctc_layer)
        final = self.ctc_loss(log_probs, lengths, batch)
        inter_batch = batch if self.inter_tokenizer is None else self._retokenize(batch, self.inter_tokenizer)
        w = self.inter_ctc_weight
        return (1 - w) * final + w * self.ctc_loss(inter, lengths, inter_batch), final

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        if stage == "train" and self.inter_ctc_weight > 0:
            loss, final = self.train_loss(batch)
            self.log("train/ctc_last", final, on_step=True, on_epoch=False, batch_size=batch.audio.shape[0])
        else:
            log_probs, lengths = self(batch.audio, batch.audio_lengths)
            loss = self.ctc_loss(log_probs, lengths, batch)
        bsz = batch.audio.shape[0]
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bsz)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bsz)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=bsz)
            hyps = self.decoder.decode(log_probs, lengths)
            refs = [
                self.tokenizer.decode(t[:n].tolist())
                for t, n in zip(batch.targets.cpu(), batch.target_lengths.cpu(), strict=True)
            ]
            refs = [normalize_text(r) for r in refs]
            w = jiwer.process_words(refs, hyps)
            c = jiwer.process_characters(refs, hyps)
            counts = torch.tensor(
                [
                    w.substitutions + w.deletions + w.insertions,
                    w.hits + w.substitutions + w.deletions,
                    c.substitutions + c.deletions + c.insertions,
                    c.hits + c.substitutions + c.deletions,
                ],
                dtype=torch.float64,
                device=self.device,
            )
            self._counts[stage] = self._counts.get(stage, torch.zeros_like(counts)) + counts
        return loss

    def _retokenize(self, batch: Batch, tokenizer: Tokenizer) -> Batch:
        """``batch`` with its targets re-encoded by ``tokenizer`` (the text decoded from the main tokenizer's ids)."""
        ids = [
            tokenizer.encode(self.tokenizer.decode(t[:n]))
            for t, n in zip(batch.targets.tolist(), batch.target_lengths.tolist(), strict=True)
        ]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long, device=batch.targets.device)
        targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.long, device=batch.targets.device)
        for row, i in enumerate(ids):
            targets[row, : len(i)] = torch.tensor(i, dtype=torch.long)
        return batch._replace(targets=targets, target_lengths=lengths)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        # every file of the batch failed to load (see Batch.dropped): None skips the step
        return self._shared_step(batch, "train") if batch.ids else None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.weight_noise > 0 and self.current_epoch >= self.weight_noise_start_epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.requires_grad and p.dim() >= 2:
                        noise = torch.randn_like(p) * self.weight_noise
                        p.add_(noise)
                        self._noise.append((p, noise))

    def _remove_weight_noise(self) -> None:
        with torch.no_grad():
            for p, noise in self._noise:
                p.sub_(noise)
        self._noise = []

    def on_after_backward(self) -> None:
        self._remove_weight_noise()  # the gradients were taken at the noisy weights; the step updates the clean ones

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._remove_weight_noise()  # a skipped step (no backward) still leaves clean weights
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)

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
        self.log(f"{stage}/wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True)
        self.log(f"{stage}/cer", float(counts[2] / counts[3].clamp(min=1)))

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    # ------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ASRModule was built without an optimizer; it can decode but not train")
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params, **self._fused_option())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused_option(self) -> dict[str, bool]:
        """``fused=True`` for Adam/AdamW whose config leaves ``fused`` null, unless the precision is ``*-mixed``.

        The fused kernels update all parameters in one call (the AN4 model on 2 CPU cores: 16 -> 2.6 ms a step,
        ``benchmarks/step_parts.py``), but
        Lightning cannot clip the gradients of a fused optimiser under mixed precision, so there it stays off."""
        factory = self.optimizer_factory
        if getattr(factory, "func", None) not in (torch.optim.Adam, torch.optim.AdamW):
            return {}
        keywords = getattr(factory, "keywords", {})
        if keywords.get("fused") is not None or keywords.get("foreach"):
            return {}
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        return {"fused": not precision.endswith("-mixed")}

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
        checkpoint[RNG_KEY] = {  # dropout, SpecAugment (torch) and speed perturbation (random) draw from these
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed fit draws the random numbers the uninterrupted one would have (Lightning restores none)."""
        states = checkpoint.get(RNG_KEY)
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    @classmethod
    def load_for_inference(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ASRModule:
        """Rebuild a module from a checkpoint for decoding: tensors only (``weights_only``), no code run.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
            ValueError: the file is corrupt, not an asr checkpoint, or its description has unexpected
                keys or types (see :func:`asr.checkpointing.validate_description`).
        """
        ckpt = load_checkpoint(path, map_location=map_location)
        if CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{path} is not an asr checkpoint (no '{CHECKPOINT_KEY}' entry)")
        try:
            meta = validate_description(ckpt[CHECKPOINT_KEY])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        tokenizer = tokenizer_from_state_dict(meta["tokenizer"])
        module = cls(
            tokenizer=tokenizer,
            features=LogMelFeatures(**meta["features"]),
            model=BiLSTMCTC(**meta["model"]),
        )
        module.load_state_dict(_inference_weights(ckpt["state_dict"]))
        module.eval_manifests = dict(meta.get("eval_manifests", {}))
        return module.eval()


def _ema_update(decay: float) -> Callable[..., None]:
    """``multi_avg_fn`` for AveragedModel: EMA with the decay ramped up over the first updates."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


def _inference_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights for decoding: the moving average (``ema_model.module.*``) in place of ``model.*``
    when training kept one, since that is what validation scored."""
    ema = {k[len("ema_model.module."):]: v for k, v in state_dict.items() if k.startswith("ema_model.module.")}
    if not ema:
        return state_dict
    weights = {k: v for k, v in state_dict.items() if not k.startswith(("model.", "ema_model."))}
    weights.update({f"model.{k}": v for k, v in ema.items()})
    return weights
