"""Benchmark (not a test): how right the word times of ``asr.transcribe`` are, on real speech.

    python benchmarks/word_times.py --checkpoint exp/an4/<run>/checkpoints/best.ckpt \
        [--manifest data/an4/test.jsonl] [--librispeech ../shared/data/librispeech-samples/LibriSpeech]

Three checks, each printed as a table:

1. Against forced alignment: per utterance of the manifest, the decoded words (greedy, as ``asr.transcribe``
   times them) against torchaudio's CTC forced alignment of the *reference* through the same log-probs; for the
   words both have (matched in order), ``|start difference|`` and ``|end difference|`` in ms, median and 90th
   percentile.
2. Against the sound (model-free): the spike-based times of a BiLSTM-CTC can sit away from the speech. Speech onset
   and offset per utterance from frame energy (the first and last output frame within 30 dB of the loudest); first
   word start minus onset and last word end minus offset (signed: median, 10th and 90th percentile, ms), with the
   spike times (``word_times=spike``) and moved onto the sound (``word_times=audio``, the default).
3. Concatenations at known offsets: utterances put back to back in one file (``--group`` of them), transcribed by
   ``asr.transcribe.transcribe`` (default settings) with ``--chunk-seconds`` so that the file is cut into pieces; its
   words are matched in order to the words of each utterance transcribed alone, which says whose words they are, and
   must lie inside that utterance's span. Printed: the share inside, the largest excursion outside, and |start -
   (start alone + offset)|.

With ``--librispeech``, checks 1-3 run on the LibriSpeech utterances too, using the forced alignment of the
reference as the "decoded" words when the model's vocabulary is not LibriSpeech's (an AN4 model): then only the
timeline (chunking, offsets, drift from the sound) is checked, not recognition.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.recognizer import Recognizer  # noqa: E402
from asr.text import normalize_text  # noqa: E402
from asr.timing import frame_energy_db, reference_words, snap_to_sound, transcript_words  # noqa: E402
from asr.transcribe import transcribe  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def matched(a: list, b: list) -> list[tuple]:
    """Pairs of words equal in both lists, in order (difflib on the word strings)."""
    sm = difflib.SequenceMatcher(a=[w.word for w in a], b=[w.word for w in b], autojunk=False)
    return [(a[i + k], b[j + k]) for i, j, n in sm.get_matching_blocks() for k in range(n)]


def load_utterances(args: argparse.Namespace) -> dict[str, list[tuple[str, str, float]]]:
    """``{set name: [(audio path, normalised reference, seconds)]}``."""
    sets = {Path(args.manifest).stem: [(u.audio_filepath, normalize_text(u.text), u.duration)
                                       for u in read_manifest(args.manifest)]}
    if args.librispeech and Path(args.librispeech).is_dir():
        utts = []
        for trans in sorted(Path(args.librispeech).rglob("*.trans.txt")):
            for line in trans.read_text().splitlines():
                uid, text = line.split(" ", 1)
                flac = trans.parent / f"{uid}.flac"
                utts.append((str(flac), normalize_text(text), sf.info(flac).duration))
        sets["librispeech-samples"] = utts
    return sets


def check_alignment(module: Recognizer, utts: list, use_reference: bool) -> dict[str, list[float]]:
    """Checks 1 and 2 over ``utts``; returns lists of ms differences by name."""
    sr, spf = module.features.config["sample_rate"], module.samples_per_frame
    fs = spf / sr
    out: dict[str, list[float]] = {k: [] for k in ("start", "end", "onset_spike", "onset_audio", "offset_spike",
                                                    "offset_audio")}
    for path, ref, _ in utts:
        wav = load_audio(path, sr)
        lp = module.long_log_probs(wav)
        if not ref or lp.shape[0] < 2 * len(ref.split()):
            continue
        ref_words = reference_words(lp, module.tokenizer, ref, fs)
        text = ref if use_reference else module.decoder.decode(lp[None], torch.tensor([lp.shape[0]]))[0]
        hyp = transcript_words(lp, module.tokenizer, text, fs)
        pairs = matched(hyp, ref_words)
        out["start"] += [1000 * abs(h.start - r.start) for h, r in pairs]
        out["end"] += [1000 * abs(h.end - r.end) for h, r in pairs]
        energy = frame_energy_db(wav, spf, lp.shape[0])
        loud = (energy > -30).nonzero().flatten()  # not the detector snap_to_sound uses: within 30 dB of the peak
        if hyp and loud.numel():
            onset, offset, seconds = float(loud[0]) * fs, (float(loud[-1]) + 1) * fs, wav.numel() / sr
            for name, words in (("spike", hyp), ("audio", snap_to_sound(hyp, energy, fs))):
                out[f"onset_{name}"].append(1000 * (words[0].start - onset))
                out[f"offset_{name}"].append(1000 * (min(words[-1].end, seconds) - offset))
    return out


def check_concatenation(checkpoint: str, module: Recognizer, utts: list, group: int, chunk: float,
                        use_reference: bool) -> dict[str, float]:
    """Check 3: utterances back to back, transcribed as one file cut into ``chunk``-second pieces; its words are
    matched (in order) to the words of each utterance transcribed alone, which says whose words they are."""
    sr = module.features.config["sample_rate"]
    fs = module.samples_per_frame / sr
    inside = total = alone_total = pieces = files = 0
    excursion, diffs = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for g in range(0, len(utts) - group + 1, group):
            part = utts[g : g + group]
            wavs = [load_audio(p, sr) for p, _, _ in part]
            offsets = np.cumsum([0] + [w.numel() / sr for w in wavs])
            path = Path(tmp) / f"concat{g}.flac"
            sf.write(path, torch.cat(wavs).numpy(), sr)
            files, pieces = files + 1, pieces + int(np.ceil(offsets[-1] / chunk))
            if use_reference:  # the model cannot recognise these words: time the reference through the chunks
                lp = module.long_log_probs(torch.cat(wavs), chunk_seconds=chunk,
                                    search_seconds=min(5.0, chunk / 2))
                text = " ".join(r for _, r, _ in part)
                words = [w.as_dict() for w in reference_words(lp, module.tokenizer, text, fs)]
            else:
                (res,) = transcribe(checkpoint, [str(path)], device="cpu", chunk_seconds=chunk,
                                    search_seconds=min(5.0, chunk / 2))
                words = res["words"]
            if use_reference:
                each = [[w.as_dict() for w in reference_words(module.long_log_probs(x), module.tokenizer, r, fs)]
                        for x, (_, r, _) in zip(wavs, part, strict=True)]
            else:
                each = [r["words"] for r in transcribe(checkpoint, [p for p, _, _ in part], device="cpu")]
            alone = [(i, w) for i, ws in enumerate(each) for w in ws]
            alone_total += len(alone)
            sm = difflib.SequenceMatcher(a=[w["word"] for w in words], b=[w["word"] for _, w in alone], autojunk=False)
            for a, b, n in sm.get_matching_blocks():
                for k in range(n):
                    w, (i, x) = words[a + k], alone[b + k]
                    lo, hi = offsets[i], offsets[i + 1]
                    total += 1
                    inside += lo <= w["start"] and w["end"] <= hi + 1e-3
                    excursion = max(excursion, lo - w["start"], w["end"] - hi)
                    diffs.append(1000 * abs(w["start"] - (x["start"] + lo)))
    return {"files": files, "pieces": pieces, "words matched": f"{total}/{alone_total}",
            "inside own utterance %": 100 * inside / max(total, 1),
            "largest excursion ms": 1000 * max(excursion, 0.0),
            "|start - alone start| median ms": pct(diffs, 50), "p90 ms": pct(diffs, 90)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", default="data/an4/test.jsonl")
    ap.add_argument("--librispeech", default="../shared/data/librispeech-samples/LibriSpeech")
    ap.add_argument("--group", type=int, default=10, help="utterances per concatenated file")
    ap.add_argument("--chunk-seconds", type=float, default=8.0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    module = Recognizer.load(args.checkpoint).eval()
    for name, utts in load_utterances(args).items():
        known = sum(not module.tokenizer.unknown_chars(r) for _, r, _ in utts)
        # an AN4 word model spells LibriSpeech's words with letters it never learnt: time the references
        use_reference = name != Path(args.manifest).stem
        a = check_alignment(module, utts, use_reference)
        print(f"\n## {name}: {len(utts)} utterances, {sum(d for *_, d in utts) / 60:.1f} min"
              f"{' (reference words timed: the model does not know this vocabulary)' if use_reference else ''}"
              f" [{known} spellable]")
        print("| check | n | median ms | p90 ms |\n|---|---:|---:|---:|")
        for key, label in (("start", "decoded vs forced-aligned reference: |start diff|"),
                           ("end", "decoded vs forced-aligned reference: |end diff| (spike ends)")):
            print(f"| {label} | {len(a[key])} | {pct(a[key], 50):.0f} | {pct(a[key], 90):.0f} |")
        print("\n| drift from the sound (signed) | n | median ms | p10 ms | p90 ms |\n|---|---:|---:|---:|---:|")
        for key, label in (("onset_spike", "first word start - speech onset, word_times=spike"),
                           ("onset_audio", "first word start - speech onset, word_times=audio"),
                           ("offset_spike", "last word end - speech offset, word_times=spike"),
                           ("offset_audio", "last word end - speech offset, word_times=audio")):
            v = a[key]
            print(f"| {label} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 10):.0f} | {pct(v, 90):.0f} |")
        group = min(args.group, len(utts))
        c = check_concatenation(args.checkpoint, module, utts, group, args.chunk_seconds, use_reference)
        print(f"\nconcatenations of {group} utterances, transcribed in pieces of <= {args.chunk_seconds} s: "
              + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()))


if __name__ == "__main__":
    main()
