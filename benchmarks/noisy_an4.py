"""Benchmark (not a test): a model's WER on fixed noisy and reverberant copies of the AN4 test set
(or dev set), and how many words it makes up on audio that holds no speech.

    python benchmarks/noisy_an4.py --checkpoint exp/an4/<run>/checkpoints/best.ckpt [more ...] \
        [--names clean augmented] [--data-dir data/an4] [--out exp/noisy_an4] [--seed 0] \
        [--split test|dev]

``--split dev`` builds the same conditions from the dev set (default ``--out exp/noisy_an4_dev``):
settings such as an interpolation weight are chosen there, and the test copies score them once.

Built once under ``--out`` (kept while the marker's seed and version match; a mismatch rebuilds):

- ``data/<condition>.jsonl`` and ``data/<condition>/<id>.flac`` (16 kHz, 16-bit FLAC; the test
  manifest's keys, ids and texts; durations unchanged):

  - ``clean``: the test manifest itself (not copied);
  - ``babble10``, ``babble5``, ``babble0``: each test utterance mixed (``asr.distortions.mix``,
    exact SNR over the whole utterance) with babble of 3-7 voices, one utterance each of distinct
    TRAIN speakers (AN4's test speakers are not among them; any that were would be left out), at
    10, 5 and 0 dB. The babble of an utterance is the same at the three SNRs (one draw), so the
    three rows differ by the SNR alone;
  - ``reverb``: each test utterance through a simulated shoebox room (pyroomacoustics) with RT60
    drawn uniformly from 0.3-0.8 s (``simulate_room``, ``reverberate``: aligned on the direct
    path, same RMS as the clean utterance);
  - ``white10``: white noise at 10 dB SNR.

  What was drawn per utterance (voices, RT60, ...) is in ``data/<condition>/params.jsonl``.

- ``nonspeech/<category>.jsonl`` and its FLAC files (empty transcripts): 20 clips of 3 s each of
  ``silence`` (digital zeros), ``noise`` (white, pink and brown in turn, RMS drawn from -45 to
  -20 dBFS) and ``music`` (``asr.distortions.melody``, synthetic, RMS drawn from -30 to -15 dBFS).
  A ``recorded`` category is added only with ``--recorded DIR`` (3 s cuts of the audio files in a
  folder of real non-speech recordings, such as MUSAN's music/ and noise/): the machine this was
  written on holds no recorded music or noise (no /usr/share/sounds; the only audio files outside
  the speech corpora are CPython's test tones: a 1 kHz sine and a short synthetic pluck), so by
  default there is none.

Every random draw comes from ``np.random.default_rng([seed, <stream of the condition>, <index of
the utterance or clip>])``: each file is reproducible on its own, and ``--seed`` is unrelated to
the seeds of training augmentation.

Scored per checkpoint with ``asr.evaluate``'s own :func:`evaluate_checkpoint` (greedy decoder; its
per-split hyps.txt, refs.txt and report.json under ``<out>/scores/<name>/``): WER % per
condition, and words output per minute of non-speech audio per category (total hypothesis words
/ total minutes). Prints both as markdown tables (with the change relative to the first
checkpoint when there are several) and writes ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio  # noqa: E402
from asr.cli import user_errors  # noqa: E402
from asr.data.manifest import Utterance, read_manifest  # noqa: E402
from asr.distortions import (  # noqa: E402
    babble,
    colored_noise,
    melody,
    mix,
    reverberate,
    simulate_room,
)

VERSION = 1  # of what the builders write: bump when the audio they make changes
SAMPLE_RATE = 16000
CONDITIONS = ("clean", "babble10", "babble5", "babble0", "reverb", "white10")
BABBLE_SNRS = {"babble10": 10.0, "babble5": 5.0, "babble0": 0.0}
BABBLE_VOICES = (3, 7)  # drawn, both included
RT60 = (0.3, 0.8)
CATEGORIES = ("silence", "noise", "music")
NOISE_DBFS, MUSIC_DBFS = (-45.0, -20.0), (-30.0, -15.0)
# the second number of each generator's seed: one stream per kind of draw; the three babble SNRs
# share one, so an utterance hears the same babble at each
STREAM = {"babble": 1, "reverb": 2, "white10": 3, "silence": 11, "noise": 12, "music": 13,
          "recorded": 14}
PEAK = 0.999  # a mixture louder than this is scaled down (speech and noise alike: same SNR)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".aif", ".aiff", ".au")


def rng_for(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAM[stream], index])


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def speaker_of(u: Utterance) -> str:
    """The manifest's speaker, else AN4's ``<n>-<speaker>-b`` id, else the id itself."""
    if u.speaker:
        return u.speaker
    parts = u.id.split("-")
    return parts[1] if len(parts) == 3 else u.id


@functools.lru_cache(maxsize=512)
def _load(path: str) -> torch.Tensor:
    return load_audio(path, SAMPLE_RATE)


def write_flac(path: Path, wav: torch.Tensor) -> float:
    """Write 16-bit FLAC; a waveform that would clip is scaled down first. Returns the gain."""
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    gain = PEAK / peak if peak > PEAK else 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (wav * gain).numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return gain


def _marker_matches(marker: Path, expected: dict, manifests: dict[str, Path]) -> bool:
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    return (all(recorded.get(k) == v for k, v in expected.items())
            and all(Path(p).is_file() for p in manifests.values()))


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _raw_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def babble_noise(index: int, samples: int, pool: dict[str, list[Utterance]], seed: int
                 ) -> tuple[torch.Tensor, list[str]]:
    """The babble behind test utterance ``index``: 3-7 distinct speakers of ``pool`` (speaker ->
    utterances), one utterance each, at equal RMS; with the ids of the voices."""
    rng = rng_for(seed, "babble", index)
    speakers = sorted(pool)
    count = min(int(rng.integers(BABBLE_VOICES[0], BABBLE_VOICES[1] + 1)), len(speakers))
    chosen = [speakers[i] for i in rng.choice(len(speakers), size=count, replace=False)]
    utts = [pool[s][int(rng.integers(len(pool[s])))] for s in chosen]
    return babble([_load(u.audio_filepath) for u in utts], samples, rng), [u.id for u in utts]


def distort(condition: str, index: int, clean: torch.Tensor, pool: dict[str, list[Utterance]],
            seed: int) -> tuple[torch.Tensor, dict]:
    """Test utterance ``index`` (its clean waveform) in ``condition``; with what was drawn."""
    if condition in BABBLE_SNRS:
        noise, voices = babble_noise(index, clean.numel(), pool, seed)
        return mix(clean, noise, BABBLE_SNRS[condition]), {"voices": voices}
    if condition == "reverb":
        rng = rng_for(seed, "reverb", index)
        rt60 = float(rng.uniform(*RT60))
        return reverberate(clean, simulate_room(rt60, SAMPLE_RATE, rng)), {"rt60": round(rt60, 4)}
    if condition == "white10":
        noise = colored_noise(clean.numel(), "white", rng_for(seed, "white10", index))
        return mix(clean, noise, 10.0), {}
    raise ValueError(f"unknown condition {condition!r}: choose from {', '.join(CONDITIONS)}")


def build_conditions(data_dir: str | Path, out_dir: str | Path, seed: int = 0,
                     conditions: Sequence[str] = CONDITIONS, progress: bool = True,
                     split: str = "test") -> dict[str, Path]:
    """Write the distorted copies of ``<data_dir>/<split>.jsonl`` under ``<out_dir>/data``
    (skipped when its marker says they were made the same way). Returns ``{condition: manifest}``."""
    data_dir, root = Path(data_dir), Path(out_dir) / "data"
    test, train = data_dir / f"{split}.jsonl", data_dir / "train.jsonl"
    for path in (test, train):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: --data-dir must hold the prepared "
                                    f"train.jsonl and {split}.jsonl (python -m asr.prepare "
                                    "recipe=an4)")
    if split == "train":
        raise ValueError("--split train: babble is made from the training speakers; "
                         "choose test or dev")
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}: choose from {', '.join(CONDITIONS)}")
    manifests = {c: (test.resolve() if c == "clean" else root / f"{c}.jsonl") for c in conditions}
    expected = {"version": VERSION, "seed": seed, "split": split, "conditions": list(conditions),
                "sample_rate": SAMPLE_RATE, "test_sha256": file_digest(test),
                "train_sha256": file_digest(train)}
    marker = root / "build.json"
    if _marker_matches(marker, expected, manifests):
        return manifests
    marker.unlink(missing_ok=True)

    utts, rows = read_manifest(test), _raw_rows(test)
    test_speakers = {speaker_of(u) for u in utts}
    pool: dict[str, list[Utterance]] = {}
    for u in read_manifest(train):
        if speaker_of(u) not in test_speakers:
            pool.setdefault(speaker_of(u), []).append(u)
    if not pool:
        raise ValueError(f"{train}: no speaker outside the {split} set to make babble from")
    made = [c for c in conditions if c != "clean"]
    scaled = dict.fromkeys(made, 0)
    params: dict[str, list[dict]] = {c: [] for c in made}
    out_rows: dict[str, list[dict]] = {c: [] for c in made}
    for c in made:
        shutil.rmtree(root / c, ignore_errors=True)
    bar = tqdm(total=len(utts) * len(made), desc="noisy AN4", unit="file", disable=not progress)
    for index, (u, row) in enumerate(zip(utts, rows, strict=True)):
        clean = load_audio(u.audio_filepath, SAMPLE_RATE)
        for c in made:
            wav, drawn = distort(c, index, clean, pool, seed)
            name = f"{c}/{u.id}.flac"
            gain = write_flac(root / name, wav)
            scaled[c] += gain < 1.0
            params[c].append({"id": u.id, **drawn, **({"gain": gain} if gain < 1.0 else {})})
            out_rows[c].append({**row, "audio_filepath": name})
            bar.update()
    bar.close()
    for c in made:
        _write_manifest(root / f"{c}.jsonl", out_rows[c])
        _write_manifest(root / c / "params.jsonl", params[c])
    marker.write_text(json.dumps({**expected, "utterances": len(utts),
                                  "scaled_to_avoid_clipping": scaled}, indent=2) + "\n")
    return manifests


def nonspeech_clip(category: str, index: int, samples: int, seed: int,
                   recorded: Sequence[Path] = ()) -> tuple[torch.Tensor, dict]:
    """Clip ``index`` of a non-speech category; with what was drawn."""
    if category == "silence":
        return torch.zeros(samples), {}
    rng = rng_for(seed, category, index)
    if category == "noise":
        color = ("white", "pink", "brown")[index % 3]
        level = float(rng.uniform(*NOISE_DBFS))
        return colored_noise(samples, color, rng) * 10 ** (level / 20), {"color": color,
                                                                          "dbfs": round(level, 2)}
    if category == "music":
        level = float(rng.uniform(*MUSIC_DBFS))
        return melody(samples, SAMPLE_RATE, rng) * 10 ** (level / 20), {"dbfs": round(level, 2)}
    if category == "recorded":
        path = recorded[int(rng.integers(len(recorded)))]
        wav = load_audio(path, SAMPLE_RATE)
        if wav.numel() < samples:
            wav = torch.cat([wav, torch.zeros(samples - wav.numel())])
        start = int(rng.integers(wav.numel() - samples + 1))
        return wav[start: start + samples], {"source": str(path), "start": start / SAMPLE_RATE}
    raise ValueError(f"unknown non-speech category {category!r}")


def build_nonspeech(out_dir: str | Path, seed: int = 0, clips: int = 20, seconds: float = 3.0,
                    recorded_dir: str | Path | None = None, progress: bool = True
                    ) -> dict[str, Path]:
    """Write the non-speech clips under ``<out_dir>/nonspeech`` (skipped when its marker says they
    were made the same way). Returns ``{category: manifest}``."""
    root = Path(out_dir) / "nonspeech"
    recorded: list[Path] = []
    if recorded_dir is not None:
        if not Path(recorded_dir).is_dir():
            raise FileNotFoundError(f"--recorded {recorded_dir}: no such folder")
        recorded = sorted(p for p in Path(recorded_dir).rglob("*")
                          if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if not recorded:
            raise FileNotFoundError(f"--recorded {recorded_dir}: no audio files in it")
    categories = (*CATEGORIES, "recorded") if recorded else CATEGORIES
    manifests = {c: root / f"{c}.jsonl" for c in categories}
    expected = {"version": VERSION, "seed": seed, "clips": clips, "seconds": seconds,
                "sample_rate": SAMPLE_RATE, "categories": list(categories),
                "recorded": [str(p) for p in recorded]}
    marker = root / "build.json"
    if _marker_matches(marker, expected, manifests):
        return manifests
    marker.unlink(missing_ok=True)
    samples = int(round(seconds * SAMPLE_RATE))
    for c in categories:
        shutil.rmtree(root / c, ignore_errors=True)
        rows, params = [], []
        for index in tqdm(range(clips), desc=f"non-speech {c}", unit="clip",
                          disable=not progress):
            wav, drawn = nonspeech_clip(c, index, samples, seed, recorded)
            name = f"{c}/{c}-{index:02d}.flac"
            gain = write_flac(root / name, wav)
            rows.append({"audio_filepath": name, "duration": samples / SAMPLE_RATE, "text": "",
                         "id": f"{c}-{index:02d}", "speaker": ""})
            params.append({"id": f"{c}-{index:02d}", **drawn,
                           **({"gain": gain} if gain < 1.0 else {})})
        _write_manifest(manifests[c], rows)
        _write_manifest(root / c / "params.jsonl", params)
    marker.write_text(json.dumps(expected, indent=2) + "\n")
    return manifests


def score(checkpoint: str, conditions: dict[str, Path], nonspeech: dict[str, Path],
          out_dir: Path, device: str) -> dict:
    """WER % per condition and hypothesis words per minute per non-speech category, with
    ``asr.evaluate``'s :func:`evaluate_checkpoint` (greedy)."""
    from asr.report.scoring import evaluate_checkpoint

    splits = {**{c: str(p) for c, p in conditions.items()},
              **{f"nonspeech_{c}": str(p) for c, p in nonspeech.items()}}
    reports = evaluate_checkpoint(checkpoint, manifests=splits, out_dir=str(out_dir),
                                  device=device, progress=True)
    wer = {c: 100 * reports[c]["wer"] for c in conditions}
    words, wpm = {}, {}
    for c in nonspeech:
        r = reports[f"nonspeech_{c}"]
        words[c] = r["hits"] + r["substitutions"] + r["insertions"]  # the hypothesis' words
        wpm[c] = words[c] / (r["audio_seconds"] / 60)
    keep = ("utterances", "ref_words", "wer", "cer", "substitutions", "deletions", "insertions",
            "audio_seconds", "forward_seconds", "rtf")
    return {"wer": wer, "words_per_minute": wpm, "nonspeech_words": words,
            "reports": {k: {f: r[f] for f in keep} for k, r in reports.items()}}


def checkpoint_name(path: str) -> str:
    """``<run>`` for ``<run>/checkpoints/<x>.ckpt``, else the file's stem or the folder's name."""
    p = Path(path)
    if p.suffix == ".ckpt":
        return p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
    return p.name


def _cell(value: float, first: float | None, fmt: str) -> str:
    if first is None:
        return format(value, fmt)
    if first == 0:
        return f"{value:{fmt}} (n/a)" if value else f"{value:{fmt}} (+0%)"
    return f"{value:{fmt}} ({100 * (value - first) / first:+.0f}%)"


def markdown_table(title: str, rows: dict[str, dict[str, float]], names: list[str],
                   fmt: str) -> str:
    """``rows``: {row: {checkpoint name: value}}; later checkpoints show their relative change
    from the first."""
    lines = [f"| {title} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row, values in rows.items():
        first = values[names[0]]
        cells = [_cell(values[n], None if i == 0 else first, fmt) for i, n in enumerate(names)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True,
                        help="one or more .ckpt files or model folders")
    parser.add_argument("--names", nargs="+", help="labels of the checkpoints, in order")
    parser.add_argument("--data-dir", default="data/an4",
                        help="folder with the prepared train.jsonl and test.jsonl")
    parser.add_argument("--out", help="default: exp/noisy_an4, or exp/noisy_an4_dev with --split dev")
    parser.add_argument("--split", default="test", choices=("test", "dev"),
                        help="which prepared set to distort (test, or dev to choose settings on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recorded", help="a folder of real non-speech recordings (music, noise): "
                        "adds a `recorded` category cut from them")
    args = parser.parse_args()
    if args.names and len(args.names) != len(args.checkpoint):
        parser.error(f"--names gives {len(args.names)} labels for {len(args.checkpoint)} "
                     "checkpoints")
    missing = [c for c in args.checkpoint if not Path(c).exists()]
    if missing:
        parser.error(f"checkpoint(s) not found: {', '.join(missing)}")
    names = list(args.names or [checkpoint_name(c) for c in args.checkpoint])
    for i, name in enumerate(names):  # unique labels
        if names.index(name) != i:
            names[i] = f"{name}#{i + 1}"
    out = Path(args.out or ("exp/noisy_an4" if args.split == "test" else "exp/noisy_an4_dev"))
    command = shlex.join([sys.executable, *sys.argv])

    with user_errors():
        start = time.perf_counter()
        conditions = build_conditions(args.data_dir, out, args.seed, split=args.split)
        nonspeech = build_nonspeech(out, args.seed, recorded_dir=args.recorded)
        build_seconds = time.perf_counter() - start
        results = {}
        score_seconds = {}
        for name, checkpoint in zip(names, args.checkpoint, strict=True):
            start = time.perf_counter()
            results[name] = score(checkpoint, conditions, nonspeech, out / "scores" / name,
                                  args.device)
            score_seconds[name] = time.perf_counter() - start

    wer = {c: {n: results[n]["wer"][c] for n in names} for c in conditions}
    wpm = {c: {n: results[n]["words_per_minute"][c] for n in names} for c in nonspeech}
    print(f"\n{command}\n")
    print(f"WER % (greedy, asr.evaluate) on the AN4 {args.split} set, seed {args.seed}"
          + (f"; in brackets: change relative to {names[0]}" if len(names) > 1 else "") + "\n")
    print(markdown_table("condition", wer, names, ".2f"))
    minutes = results[names[0]]["reports"]
    print("\nwords output per minute of non-speech audio ("
          + ", ".join(f"{c}: {minutes[f'nonspeech_{c}']['utterances']} clips, "
                      f"{minutes[f'nonspeech_{c}']['audio_seconds'] / 60:.1f} min"
                      for c in nonspeech) + ")\n")
    print(markdown_table("category", wpm, names, ".2f"))
    print(f"\nbuilt (or found) in {build_seconds:.0f} s; scored in "
          + ", ".join(f"{n}: {s:.0f} s" for n, s in score_seconds.items()))
    summary = {
        "command": command, "seed": args.seed, "split": args.split, "version": VERSION,
        "data_dir": str(Path(args.data_dir).resolve()), "device": args.device,
        "checkpoints": dict(zip(names, map(str, args.checkpoint), strict=True)),
        "manifests": {k: str(v) for k, v in {**conditions, **{f"nonspeech_{c}": p for c, p
                                                               in nonspeech.items()}}.items()},
        "wer_percent": wer, "words_per_minute": wpm,
        "nonspeech_words": {c: {n: results[n]["nonspeech_words"][c] for n in names}
                            for c in nonspeech},
        "reports": {n: results[n]["reports"] for n in names},
        "seconds": {"build": round(build_seconds, 1),
                    "score": {n: round(s, 1) for n, s in score_seconds.items()}},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}; per-split hyps and reports under {out / 'scores'}")


if __name__ == "__main__":
    main()
