"""CTC forced alignment of a reference to the model's output, and its picture over the posteriorgram."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torchaudio.functional as AF
from matplotlib.figure import Figure  # figures drawn straight to files: no pyplot, no display backend

from asr.text import Tokenizer, ctc_min_frames


def forced_align(log_probs: torch.Tensor, targets: list[int], blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Best CTC path of ``targets`` through one utterance's log-probs (torchaudio's ``forced_align``).

    Args:
        log_probs: (T, C) log-probabilities of one utterance.
        targets: token ids of the reference (no blank).
        blank: index of the CTC blank.

    Returns:
        (T,) token id per frame (``blank`` between tokens) and (T,) its log-probability.

    Raises:
        ValueError: the reference is empty or needs more frames than the utterance has.
    """
    need = ctc_min_frames(targets)
    if not targets or need > log_probs.shape[0]:
        raise ValueError(
            f"cannot align {len(targets)} tokens ({need - len(targets)} repeats) to {log_probs.shape[0]} frames: "
            "CTC needs at least one frame per token plus one per repeat"
        )
    with warnings.catch_warnings():  # torchaudio marks the function deprecated; it is still the reference one
        warnings.simplefilter("ignore")
        path, scores = AF.forced_align(
            log_probs.float().unsqueeze(0),  # (T, C) -> (1, T, C)
            torch.tensor([targets], dtype=torch.int32),
            torch.tensor([log_probs.shape[0]], dtype=torch.int32),
            torch.tensor([len(targets)], dtype=torch.int32),
            blank=blank,
        )
    return path[0], scores[0]


def token_segments(path: torch.Tensor, blank: int = 0) -> list[tuple[int, int, int]]:
    """(T,) frame labels -> ``[(token id, first frame, last frame + 1)]`` for each non-blank run."""
    segments: list[tuple[int, int, int]] = []
    prev = blank
    for t, tok in enumerate(path.tolist()):
        if tok != blank and tok == prev:
            segments[-1] = (tok, segments[-1][1], t + 1)
        elif tok != blank:
            segments.append((tok, t, t + 1))
        prev = tok
    return segments


def _symbol(tokenizer: Tokenizer, token: int) -> str:
    if token == 0:
        return "∅"  # blank
    text = tokenizer.decode([token])
    return "|" if text.strip() == "" else text.strip()


def plot_alignment(
    log_probs: torch.Tensor,
    reference: str,
    tokenizer: Tokenizer,
    path: str | os.PathLike,
    frame_seconds: float,
    title: str = "",
) -> Path:
    """Save a PNG: the posteriorgram (frames x tokens) with the forced-alignment path of ``reference`` on it,
    and below it each aligned token's probability over time.

    Args:
        log_probs: (T, C) log-probabilities of one utterance.
        reference: its normalised transcript.
        tokenizer: the checkpoint's tokenizer (ids <-> symbols).
        path: where the PNG goes.
        frame_seconds: duration of one output frame (after subsampling), for the time axis.
        title: figure title (e.g. the utterance id).
    """
    targets = tokenizer.encode(reference)
    frames, scores = forced_align(log_probs, targets)
    probs = log_probs.float().exp().T.numpy()  # (T, C) -> (C, T)
    seconds = log_probs.shape[0] * frame_seconds
    fig = Figure(figsize=(11, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.imshow(probs, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
               extent=(0, seconds, -0.5, probs.shape[0] - 0.5))
    t = (torch.arange(len(frames)) + 0.5) * frame_seconds
    keep = frames != 0
    top.scatter(t[keep], frames[keep], s=10, c="red", marker="s", label="forced alignment")
    top.set_yticks(range(probs.shape[0]), [_symbol(tokenizer, c) for c in range(probs.shape[0])], fontsize=6)
    top.set_ylabel("token")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title or "CTC posteriorgram and forced alignment")
    bottom.plot(t, scores.exp(), lw=0.8, color="gray")
    for tok, start, end in token_segments(frames):
        bottom.axvspan(start * frame_seconds, end * frame_seconds, alpha=0.25, color="tab:orange")
        bottom.text((start + end) / 2 * frame_seconds, 1.05, _symbol(tokenizer, tok), ha="center", fontsize=8)
    bottom.set_ylim(0, 1.2)
    bottom.set_ylabel("p(aligned)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def sample_index(refs: list[str], log_probs: list[torch.Tensor]) -> int | None:
    """The utterance to picture: of those long enough to align, the one of median length (None if none)."""
    ok = [i for i, (r, lp) in enumerate(zip(refs, log_probs, strict=True)) if r.strip() and lp.shape[0] > 2 * len(r)]
    if not ok:
        return None
    ok.sort(key=lambda i: (log_probs[i].shape[0], i))
    return ok[len(ok) // 2]


def save_sample_alignment(
    split_dir: str | os.PathLike,
    ids: list[str],
    refs: list[str],
    log_probs: list[torch.Tensor],
    tokenizer: Tokenizer,
    frame_seconds: float,
) -> Path | None:
    """``<split_dir>/alignment.png`` for the :func:`sample_index` utterance of a split; None when none fits."""
    i = sample_index(refs, log_probs)
    if i is None:
        return None
    return plot_alignment(log_probs[i], refs[i], tokenizer, Path(split_dir) / "alignment.png", frame_seconds,
                          title=f"{Path(split_dir).name} / {ids[i]}: \"{refs[i]}\"")
