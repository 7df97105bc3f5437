"""CTC forced alignment of a reference to the model's output, and its picture over the
posteriorgram."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from matplotlib.figure import Figure  # drawn straight to files: no pyplot, no display backend

from asr.text import Tokenizer
from asr.timing import forced_align, token_segments  # noqa: F401 (re-exported here)


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
    """Save a PNG: the posteriorgram with the forced-alignment path of ``reference`` on it, and
    below it each aligned token's probability over time.

    Args:
        log_probs: (T, C) log-probabilities of one utterance.
        reference: its normalised transcript.
        frame_seconds: duration of one output frame (after subsampling), for the time axis.
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
    top.set_yticks(range(probs.shape[0]), [_symbol(tokenizer, c) for c in range(probs.shape[0])],
                   fontsize=6)
    top.set_ylabel("token")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title or "CTC posteriorgram and forced alignment")
    bottom.plot(t, scores.exp(), lw=0.8, color="gray")
    for tok, start, end in token_segments(frames):
        bottom.axvspan(start * frame_seconds, end * frame_seconds, alpha=0.25, color="tab:orange")
        bottom.text((start + end) / 2 * frame_seconds, 1.05, _symbol(tokenizer, tok), ha="center",
                    fontsize=8)
    bottom.set_ylim(0, 1.2)
    bottom.set_ylabel("p(aligned)")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def sample_index(refs: list[str], log_probs: list[torch.Tensor]) -> int | None:
    """The utterance to picture: of those long enough to align, the one of median length (None if
    none)."""
    ok = [i for i, (r, lp) in enumerate(zip(refs, log_probs, strict=True))
          if r.strip() and lp.shape[0] > 2 * len(r)]
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
    """``<split_dir>/alignment.png`` for the :func:`sample_index` utterance of a split; None when
    none fits."""
    i = sample_index(refs, log_probs)
    if i is None:
        return None
    return plot_alignment(log_probs[i], refs[i], tokenizer, Path(split_dir) / "alignment.png",
                          frame_seconds, title=f"{Path(split_dir).name} / {ids[i]}: \"{refs[i]}\"")
