"""``asr.Recognizer``: a trained model at work, without Lightning.

    from asr import Recognizer

    recognizer = Recognizer.load("exp/an4/<run>/checkpoints/best.ckpt")  # or a model folder
    for t in recognizer.transcribe(["a.wav", "b.flac"]):
        print(t.text, [(w.word, w.start, w.end) for w in t.words])

Training (:class:`asr.training.module.ASRModule`) holds one and adds augmentation, the losses and
the optimiser; evaluation, transcription, export and the report use it as it is.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

from asr.audio import bad_samples, load_audio
from asr.decoding import Decoder, GreedyDecoder
from asr.features import LogMelFeatures
from asr.model import BiLSTMCTC
from asr.model_files import (
    CONFIG,
    DERIVED,
    is_model_folder,
    read_checkpoint,
    read_folder_config,
    read_folder_tensors,
    recognizer_state,
    saved_quantization,
    write_folder,
)
from asr.quantize import (
    check_quantize,
    float_state,
    int8_weights,
    is_quantized,
    load_int8_weights,
    quantize_int8,
)
from asr.text import Tokenizer, tokenizer_from_state_dict
from asr.timing import Word, frame_energy_db, snap_to_sound, transcript_words

Audio = str | os.PathLike | np.ndarray | torch.Tensor
DecoderChoice = Decoder | Callable[[Tokenizer], Decoder] | None


@dataclass(frozen=True)
class Transcript:
    """What :meth:`Recognizer.transcribe` gives for one input: the text, the audio's duration in
    seconds, and its words with start and end (seconds) and confidence."""

    text: str
    duration: float
    words: list[Word] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"duration": round(self.duration, 3), "text": self.text,
                "words": [w.as_dict() for w in self.words]}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """(S,) samples of an audio file at ``sample_rate``; an error naming the file if unusable."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    wav = load_audio(path, sample_rate)
    if wav.numel() == 0:
        raise ValueError(f"{path}: the file holds no audio samples")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{path}: the audio holds NaN or infinite samples")
    return wav


class Recognizer(nn.Module):
    """Waveforms -> log-Mel features (with CMVN) -> BiLSTM-CTC -> log-probs -> text.

    Args:
        features: the front end (its settings and, for global CMVN, statistics travel with it).
        model: the acoustic model; its output size must be the tokenizer's class count.
        tokenizer: ids <-> text.
    """

    def __init__(self, features: LogMelFeatures, model: BiLSTMCTC, tokenizer: Tokenizer) -> None:
        super().__init__()
        if model.config["num_classes"] != tokenizer.num_classes:
            raise ValueError(
                f"model.num_classes={model.config['num_classes']} but the tokenizer has "
                f"{tokenizer.num_classes} classes (blank included); leave num_classes to the "
                "tokenizer")
        self.features, self.model, self.tokenizer = features, model, tokenizer
        self.decoder = GreedyDecoder(tokenizer)
        # the manifests a training run scored this model on (read from a checkpoint)
        self.eval_manifests: dict[str, str] = {}

    # ------------------------------------------------------------------------------ shapes
    @property
    def sample_rate(self) -> int:
        return int(self.features.config["sample_rate"])

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def output_frames(self, samples: torch.Tensor) -> torch.Tensor:
        """(N,) waveform sample counts -> (N,) output frames (after subsampling)."""
        return self.model.output_lengths(self.features.output_lengths(samples))

    @property
    def samples_per_frame(self) -> int:
        """Input samples per output frame: the feature hop times the model's subsampling."""
        n = self.features.hop_length * 1_000_000
        return int(round(n / int(self.output_frames(torch.tensor([n]))[0])))

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame: the one rule for every time axis (word times, plots)."""
        return self.samples_per_frame / self.sample_rate

    # ----------------------------------------------------------------------------- running
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, S) waveforms, (B,) sample counts -> (B, T', C) log-probs, (B,) output frames."""
        return self.model(*self.features(audio, lengths))

    @torch.inference_mode()
    def log_probs(self, audio: Sequence[torch.Tensor] | torch.Tensor,
                  lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-utterance (T, C) float32 log-probs on the CPU, one forward pass for the batch.

        Args:
            audio: 1-D waveforms at :attr:`sample_rate`, or a padded (B, S) batch with ``lengths``.
            lengths: (B,) sample counts of a padded batch.
        """
        if lengths is None:
            waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in audio]
            lengths = torch.tensor([w.numel() for w in waves])
            audio = nn.utils.rnn.pad_sequence(waves, batch_first=True)  # (B, S)
        log_probs, out = self(audio.to(self.device), lengths.to(self.device))  # (B, T, C), (B,)
        log_probs, out = log_probs.float().cpu(), out.cpu()
        return [log_probs[i, : int(n)].clone() for i, n in enumerate(out)]

    @torch.inference_mode()
    def long_log_probs(self, wav: torch.Tensor, chunk_seconds: float = 30.0,
                       overlap_seconds: float = 1.0, search_seconds: float = 5.0,
                       batch_seconds: float = 200.0) -> torch.Tensor:
        """(S,) waveform of any length -> (T, C) log-probs, run in pieces and stitched.

        Pieces of at most ``chunk_seconds`` are cut at the quietest frame of the last
        ``search_seconds`` (:func:`split_points`); each runs with ``overlap_seconds`` of its
        neighbours' audio on both sides and keeps only its own frames.
        """
        stride = self.samples_per_frame
        cuts = split_points(wav, self.sample_rate, stride, chunk_seconds, search_seconds)
        ctx = int(overlap_seconds * self.sample_rate) // stride * stride
        pieces = []  # (context start, context end, frames to skip, frames to keep or None: all)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            s, e = max(0, a - ctx), min(wav.numel(), b + ctx)
            pieces.append((s, e, (a - s) // stride,
                           None if i == len(cuts) - 2 else (b - a) // stride))
        per_batch = max(1, int(batch_seconds // (chunk_seconds + 2 * overlap_seconds)))
        out = []
        for k in range(0, len(pieces), per_batch):
            group = pieces[k : k + per_batch]
            for (_, _, skip, keep), valid in zip(
                    group, self.log_probs([wav[s:e] for s, e, _, _ in group]), strict=True):
                out.append(valid[skip:] if keep is None else valid[skip : skip + keep])
        return torch.cat(out)

    def transcribe(self, audio: Audio | Sequence[Audio], decoder: DecoderChoice = None,
                   word_times: str = "audio", sample_rate: int | None = None,
                   **chunking: float) -> Transcript | list[Transcript]:
        """Transcribe audio files or waveforms: text, duration and timed words.

        Args:
            audio: a path (anything soundfile reads; any rate, channels averaged) or a 1-D
                waveform (numpy or torch, at ``sample_rate``), or a list of them.
            decoder: ``None`` (greedy), a decoder, or a callable that makes one from the
                tokenizer (e.g. ``functools.partial(BeamSearchDecoder, beam_size=20)``).
            word_times: ``audio``: CTC spikes moved onto the words' sound
                (:func:`asr.timing.snap_to_sound`); ``spike``: the spike frames as they are.
            sample_rate: the rate of waveforms given as arrays (default: the model's).
            chunking: ``chunk_seconds``, ``overlap_seconds``, ``search_seconds``,
                ``batch_seconds`` of :meth:`long_log_probs`.

        Returns:
            one :class:`Transcript` per input: a list for a list, else one.

        Raises:
            FileNotFoundError, ValueError, RuntimeError: an input cannot be read (named).
        """
        check_options(word_times, chunking)
        dec = self.decoder_for(decoder)
        many = isinstance(audio, (list, tuple))
        out = [self._transcribe(self._waveform(a, sample_rate), dec, word_times, chunking)
               for a in (audio if many else [audio])]
        return out if many else out[0]

    def decoder_for(self, decoder: DecoderChoice) -> Decoder:
        """The decoder ``transcribe`` uses for ``decoder`` (see there)."""
        if decoder is None:
            return self.decoder
        if hasattr(decoder, "decode") and not isinstance(decoder, type):
            return decoder
        return decoder(self.tokenizer)

    def _waveform(self, audio: Audio, sample_rate: int | None) -> torch.Tensor:
        if isinstance(audio, (str, os.PathLike)):
            return read_audio(audio, self.sample_rate)
        wav = torch.as_tensor(np.asarray(audio) if isinstance(audio, np.ndarray) else audio)
        if wav.dim() != 1 or bad_samples(wav) is not None:
            raise ValueError(f"a waveform must be 1-D, non-empty and finite; got shape "
                             f"{tuple(wav.shape)}")
        wav = wav.float()
        rate = sample_rate or self.sample_rate
        if rate != self.sample_rate:
            wav = AF.resample(wav, rate, self.sample_rate)
        return wav

    def _transcribe(self, wav: torch.Tensor, dec: Decoder, word_times: str,
                    chunking: dict[str, float]) -> Transcript:
        return self.transcript(wav, self.long_log_probs(wav, **chunking), dec, word_times)

    def transcript(self, wav: torch.Tensor, log_probs: torch.Tensor, dec: Decoder,
                   word_times: str = "audio") -> Transcript:
        """The :class:`Transcript` of one waveform from its (T, C) log-probs (computed alone or
        in a batch): the decoded text and its timed words."""
        text = dec.decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]
        words = transcript_words(log_probs, self.tokenizer, text, self.frame_seconds)
        if word_times == "audio":
            energy = frame_energy_db(wav, self.samples_per_frame, log_probs.shape[0])
            words = snap_to_sound(words, energy, self.frame_seconds)
        duration = wav.numel() / self.sample_rate  # the last frame may reach past the audio's end
        return Transcript(text, duration, [w.clipped(duration) for w in words])

    # ------------------------------------------------------------------------------- files
    def describe(self) -> dict[str, Any]:
        """Plain data that rebuilds this recognizer (no code is named)."""
        return {"tokenizer": self.tokenizer.state_dict(), "features": dict(self.features.config),
                "model": dict(self.model.config)}

    @classmethod
    def from_description(cls, meta: dict[str, Any]) -> Recognizer:
        """An untrained recognizer from :meth:`describe`'s data (checked by the caller)."""
        return cls(LogMelFeatures(**meta["features"]), BiLSTMCTC(**meta["model"]),
                   tokenizer_from_state_dict(meta["tokenizer"]))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             quantize: str | None = None) -> Recognizer:
        """A recognizer from a ``.ckpt`` of ``asr.train`` or a model folder of ``asr.export``.

        Args:
            path: the checkpoint file or the folder (float or int8).
            device: ``cpu``, ``cuda``, ``auto`` (CUDA if present; the CPU for int8).
            quantize: ``int8``: dynamic int8 LSTM and linear layers (CPU only); ``None``: as stored.

        Raises:
            FileNotFoundError, ValueError: naming the file and what is wrong with it.
        """
        quantize = check_quantize(quantize) or saved_quantization(path)
        dev = resolve_device("cpu" if quantize and str(device) == "auto" else device)
        if quantize and dev.type != "cpu":
            raise ValueError(f"{path}: int8 weights run on the CPU only; pass "
                             f"device=cpu, or use the float model on {dev}")
        if is_model_folder(path):
            meta, saved = read_folder_config(path)
            recognizer = cls.from_description(meta)
            _load_folder_weights(recognizer, path, saved)
        else:
            ckpt = read_checkpoint(path)
            recognizer = cls.from_description(ckpt["asr"])
            recognizer.load_state_dict(recognizer_state(ckpt))
            recognizer.eval_manifests = dict(ckpt["asr"].get("eval_manifests", {}))
        if quantize:
            quantize_int8(recognizer)
        return recognizer.to(dev).eval()

    def save_pretrained(self, folder: str | os.PathLike, quantize: str | None = None,
                        info: dict[str, Any] | None = None) -> Path:
        """Write a model folder (:mod:`asr.model_files`) that :meth:`load` reads.

        Args:
            quantize: ``int8``: int8 weights, one scale per row (from a copy; ``self`` is kept).
            info: plain JSON kept in ``config.json`` under ``training``.
        """
        if is_quantized(self) and not check_quantize(quantize):
            raise ValueError("the model's weights are int8 (it was loaded from an int8 folder): "
                             "save it with quantize=int8, or save the float model")
        tensors = (int8_weights(quantize_int8(copy.deepcopy(self).cpu())) if quantize
                   else self.state_dict())
        info = {"eval_manifests": dict(self.eval_manifests), **(info or {})}
        return write_folder(folder, self.describe(), tensors, quantize, info)



def check_options(word_times: str, chunking: dict[str, float]) -> None:
    """A ValueError (TypeError for an unknown name) naming a bad :meth:`Recognizer.transcribe`
    setting."""
    if word_times not in ("audio", "spike"):
        raise ValueError(f"word_times must be 'audio' or 'spike', got {word_times!r}")
    known = {"chunk_seconds", "overlap_seconds", "search_seconds", "batch_seconds"}
    if set(chunking) - known:
        raise TypeError(f"unexpected arguments {sorted(set(chunking) - known)}")
    if chunking.get("chunk_seconds", 1) <= 0 or min(
            chunking.get("overlap_seconds", 0), chunking.get("search_seconds", 0)) < 0:
        raise ValueError(f"need chunk_seconds > 0, overlap_seconds >= 0, search_seconds >= 0; "
                         f"got {chunking}")


def _load_folder_weights(recognizer: Recognizer, folder: str | os.PathLike,
                         quantize: str | None) -> None:
    """Give ``recognizer`` the weights of ``<folder>/model.safetensors`` (int8 ones make it
    int8), or a ValueError naming what does not fit."""
    tensors = read_folder_tensors(folder)
    try:
        used = load_int8_weights(recognizer, tensors) if quantize else set()
        state = {k: v for k, v in float_state(recognizer).items() if not k.startswith(DERIVED)}
        missing, extra = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state) - used)
        wrong = sorted(k for k in set(state) & set(tensors) if state[k].shape != tensors[k].shape)
        if missing or extra or wrong:
            raise ValueError(f"missing tensors {missing[:5]}, unexpected {extra[:5]}, "
                             f"misshapen {wrong[:5]}")
        with torch.no_grad():
            for k, v in state.items():  # state_dict() tensors share the parameters' storage
                v.copy_(tensors[k])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{Path(folder) / 'model.safetensors'} does not hold the weights of the "
                         f"model {Path(folder) / CONFIG} describes ({str(err).strip()[:300]}); "
                         "export the model folder again") from None


def split_points(wav: torch.Tensor, sample_rate: int, stride: int, chunk_seconds: float,
                 search_seconds: float) -> list[int]:
    """Cut positions (samples, multiples of ``stride``) so that no piece is longer than
    ``chunk_seconds``: each at the start of the quietest ``stride``-long frame in the last
    ``search_seconds`` of its piece (0: fixed windows). Returns ``[0, cut_1, ..., len(wav)]``."""
    n = wav.numel()
    max_len = max(stride, int(chunk_seconds * sample_rate) // stride * stride)
    search = int(search_seconds * sample_rate) // stride * stride
    cuts = [0]
    while n - cuts[-1] > max_len:
        end = cuts[-1] + max_len
        lo = max(cuts[-1] + stride, end - search)
        if lo < end:
            energy = wav[lo:end].reshape(-1, stride).pow(2).mean(dim=1)  # (frames,)
            cuts.append(lo + int(energy.argmin()) * stride)
        else:
            cuts.append(end)
    cuts.append(n)
    return cuts
