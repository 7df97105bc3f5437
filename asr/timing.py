"""When each word was said, and how sure the model was: word times and confidences from a CTC path.

Words take the frames of the greedy path where they agree with it, and are force-aligned in the gaps
between; :func:`snap_to_sound` moves CTC spikes onto the words' sound. A word's confidence is the
smallest peak posterior of its tokens. See docs/model.md.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import asdict, dataclass

import torch
import torchaudio.functional as AF

from asr.text import CharTokenizer, Tokenizer, WordTokenizer, ctc_min_frames


@dataclass
class Word:
    """One word of a transcript: seconds from the start of the audio, and confidence in (0, 1]."""

    word: str
    start: float
    end: float
    confidence: float

    def clipped(self, seconds: float) -> Word:
        """This word with its times cut at ``seconds`` (the end of the audio)."""
        return Word(self.word, min(self.start, seconds), min(self.end, seconds), self.confidence)

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def forced_align(log_probs: torch.Tensor, targets: list[int],
                 blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Best CTC path of ``targets`` through one utterance's log-probs: torchaudio's Viterbi.

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
            f"cannot align {len(targets)} tokens ({need - len(targets)} repeats) to "
            f"{log_probs.shape[0]} frames: CTC needs at least one frame per token plus one "
            "per repeat"
        )
    with warnings.catch_warnings():  # torchaudio marks it deprecated; it is still the reference one
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


def _role(tokenizer: Tokenizer, token: int) -> str:
    """How a token sits in words: ``word`` (a whole word), ``space`` (between words), ``start``
    (begins a word: a SentencePiece piece with ``▁``) or ``cont`` (continues the current word)."""
    if isinstance(tokenizer, WordTokenizer):
        if token == tokenizer._space:
            return "space"
        return "word" if token <= len(tokenizer.words) else "cont"
    if isinstance(tokenizer, CharTokenizer):
        return "space" if tokenizer.decode([token]) == " " else "cont"
    return "start" if tokenizer.sp.id_to_piece(token - 1).startswith("▁") else "cont"


def group_words(tokenizer: Tokenizer,
                segments: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Token segments -> one list of segments per word, as ``tokenizer.decode`` splits words."""
    words: list[list[tuple[int, int, int]]] = []
    open_word = False
    for seg in segments:
        role = _role(tokenizer, seg[0])
        if role == "space":
            open_word = False
        elif role == "word":
            words.append([seg])
            open_word = False
        elif role == "start" or not open_word:
            words.append([seg])
            open_word = True
        else:
            words[-1].append(seg)
    # a lone "▁" is no word
    return [w for w in words if tokenizer.decode([s[0] for s in w]).strip()]


def _words_of(
    tokenizer: Tokenizer, groups: list[list[tuple[int, int, int]]], probs: torch.Tensor,
    frame_seconds: float
) -> list[Word]:
    """Times and confidences of words' token segments (:func:`group_words`), (T, C) posteriors."""
    out = []
    for group in groups:
        peaks = [float(probs[a:b, tok].max()) for tok, a, b in group]
        text = tokenizer.decode([s[0] for s in group]).strip()
        out.append(Word(text, group[0][1] * frame_seconds, group[-1][2] * frame_seconds,
                        min(peaks)))
    return out


def greedy_words(log_probs: torch.Tensor, tokenizer: Tokenizer,
                 frame_seconds: float) -> list[Word]:
    """Words of the greedy (argmax) path of (T, C) log-probs, with times and confidences."""
    groups = group_words(tokenizer, token_segments(log_probs.argmax(dim=-1)))  # (T,) argmax path
    return _words_of(tokenizer, groups, log_probs.float().exp(), frame_seconds)


def _align_gap(
    log_probs: torch.Tensor, tokenizer: Tokenizer, words: list[str], first: int, end: int
) -> list[tuple[int, int, int]]:
    """Token segments of ``words`` force-aligned to frames ``[first, end)``, or spread evenly."""
    ids = tokenizer.encode(" ".join(words))  # a character model's spaces are tokens it emits too
    frames = log_probs.shape[0]
    first = min(first, frames - 1)
    end = min(max(end, first + 1), frames)
    try:
        path, _ = forced_align(log_probs[first:end], ids)
        return [(tok, a + first, b + first) for tok, a, b in token_segments(path)]
    except ValueError:  # too few frames: an even share each, marked unsure by their posteriors
        width = (end - first) / len(ids)
        starts = [first + int(i * width) for i in range(len(ids))]
        return [(tok, a, min(max(first + int((i + 1) * width), a + 1), frames))
                for i, (tok, a) in enumerate(zip(ids, starts, strict=True))]


def transcript_words(
    log_probs: torch.Tensor, tokenizer: Tokenizer, text: str, frame_seconds: float
) -> list[Word]:
    """Times and confidences of the words of ``text``, any decoder's output for (T, C) log-probs."""
    greedy = group_words(tokenizer, token_segments(log_probs.argmax(dim=-1)))
    greedy_text = [tokenizer.decode([s[0] for s in g]).strip() for g in greedy]
    words = text.split()
    groups: list[list[tuple[int, int, int]]] = []
    prev_end = 0  # first frame after the last matched word
    matcher = difflib.SequenceMatcher(a=greedy_text, b=words, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            groups += greedy[a0:a1]
            prev_end = greedy[a1 - 1][-1][2]
        elif b1 > b0:  # words the greedy path lacks: aligned between their matched neighbours
            nxt = greedy[a1][0][1] if a1 < len(greedy) else log_probs.shape[0]
            groups += group_words(tokenizer, _align_gap(log_probs, tokenizer, words[b0:b1],
                                                        prev_end, nxt))
    return _words_of(tokenizer, groups, log_probs.float().exp(), frame_seconds)


def reference_words(log_probs: torch.Tensor, tokenizer: Tokenizer, text: str,
                    frame_seconds: float) -> list[Word]:
    """The words of ``text`` (a reference) force-aligned to all of (T, C) log-probs."""
    words = text.split()
    if not words:
        return []
    groups = group_words(tokenizer, _align_gap(log_probs, tokenizer, words, 0, log_probs.shape[0]))
    return _words_of(tokenizer, groups, log_probs.float().exp(), frame_seconds)


def frame_energy_db(wav: torch.Tensor, samples_per_frame: int, frames: int) -> torch.Tensor:
    """(S,) waveform -> (frames,) energy of each output frame in dB below the loudest (<= 0)."""
    n = min(frames * samples_per_frame, wav.numel())
    padded = torch.zeros(frames * samples_per_frame)
    padded[:n] = wav[:n].float()
    power = padded.reshape(frames, samples_per_frame).pow(2).mean(dim=1) + 1e-10
    db = 10 * torch.log10(power)
    return db - db.max()


def speech_frames(energy_db: torch.Tensor, margin_db: float = 10.0,
                  floor_db: float = -35.0) -> torch.Tensor:
    """(T,) bool: louder than ``floor_db`` and than the noise floor (10th pct.) + ``margin_db``."""
    noise = float(torch.quantile(energy_db, 0.1)) if energy_db.numel() else 0.0
    return energy_db > max(noise + margin_db, floor_db)


def snap_to_sound(
    words: list[Word], energy_db: torch.Tensor, frame_seconds: float, max_seconds: float = 1.0,
    gap_frames: int = 2
) -> list[Word]:
    """Move CTC-spike word times onto the sound, between the neighbouring words.

    A word in a quiet frame starts at the next speech frame; each word ends where its speech does
    (gaps up to ``gap_frames`` bridged, at most ``max_seconds`` long). See docs/model.md.

    Args:
        words: words in time order (:func:`transcript_words`).
        energy_db: (T,) output-frame energies, :func:`frame_energy_db`.
    """
    speech = speech_frames(energy_db).tolist()
    frames, span = len(speech), max(1, int(round(max_seconds / frame_seconds)))
    out = []
    for i, w in enumerate(words):
        start, end = int(round(w.start / frame_seconds)), int(round(w.end / frame_seconds))
        limit = min(int(round(words[i + 1].start / frame_seconds))
                    if i + 1 < len(words) else frames, frames)
        if start < frames and not speech[start]:
            loud = next((t for t in range(start, min(limit, start + span)) if speech[t]), None)
            if loud is not None:
                start, end = loud, max(end, loud + 1)
        t, quiet = end, 0
        while t < min(limit, start + span) and quiet <= gap_frames:
            quiet = 0 if speech[t] else quiet + 1
            t += 1
            if quiet == 0:
                end = t
        out.append(Word(w.word, start * frame_seconds, max(end, start + 1) * frame_seconds,
                        w.confidence))
    return out
