"""LibriSpeech: download the official archives, extract them safely, write a manifest per subset.

Each stage is marked done under ``<data_dir>/.done/`` so a rerun skips it; durations come from the
FLAC headers. Unusable utterances go to ``<data_dir>/rejected.jsonl`` with the reason. Layout and
stages: see docs/data.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from asr.audio import probe_audio
from asr.data.datamodule import ASRDataModule
from asr.data.download import download, extract_tar
from asr.data.manifest import Utterance, read_manifest, write_manifest

log = logging.getLogger(__name__)

BASE_URL = "https://www.openslr.org/resources/12"
LM_BASE_URL = "https://www.openslr.org/resources/11"
# SHA-256 of the official archives, as published with torchaudio's datasets/librispeech.py.
SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
SUBSETS = tuple(SHA256)
EVAL_SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other")
# Resource 11 (n-gram LMs, lexicon, vocabulary) for decoding. No published checksums were found,
# so they are fetched unverified (None) rather than against a guessed value.
LM_FILES: dict[str, list[str] | None] = {
    "3-gram.arpa.gz": None,
    "3-gram.pruned.1e-7.arpa.gz": None,
    "3-gram.pruned.3e-7.arpa.gz": None,
    "4-gram.arpa.gz": None,
    "librispeech-lexicon.txt": None,
    "librispeech-vocab.txt": None,
}


def _check_subsets(subsets: Sequence[str], setting: str) -> list[str]:
    bad = [s for s in subsets if s not in SHA256]
    if bad:
        raise ValueError(f"{setting}: unknown LibriSpeech subset(s) {bad}; "
                         f"choose from {list(SUBSETS)}")
    return list(subsets)


def subset_dir(corpus_dir: str | os.PathLike, subset: str) -> Path:
    """``<corpus_dir>/<subset>``, or ``<corpus_dir>/LibriSpeech/<subset>`` (either root works)."""
    corpus_dir = Path(corpus_dir)
    for cand in (corpus_dir / subset, corpus_dir / "LibriSpeech" / subset):
        if cand.is_dir():
            return cand
    return corpus_dir / "LibriSpeech" / subset


def fetch_subset(
    subset: str,
    data_dir: str | os.PathLike,
    download_dir: str | os.PathLike,
    base_url: str = BASE_URL,
    retries: int = 5,
    progress: bool = True,
) -> Path:
    """Download (verified, resumable) and extract one subset under ``data_dir``, unless done.

    Returns:
        The subset's folder, ``<data_dir>/LibriSpeech/<subset>``.
    """
    _check_subsets([subset], "subset")
    data_dir = Path(data_dir)
    marks = data_dir / ".done"
    marks.mkdir(parents=True, exist_ok=True)
    if not (marks / f"{subset}.extracted").exists():
        archive = download(
            f"{base_url.rstrip('/')}/{subset}.tar.gz", Path(download_dir) / f"{subset}.tar.gz",
            checksums=[f"sha256:{SHA256[subset]}"], retries=retries, progress=progress,
        )
        log.info("extracting %s into %s", archive, data_dir)
        extract_tar(archive, data_dir, progress=progress)
        if not (data_dir / "LibriSpeech" / subset).is_dir():
            raise ValueError(
                f"{archive} holds no LibriSpeech/{subset}/ folder; it is not the official archive "
                f"(check the base_url/mirror setting, delete the file and run again)"
            )
        (marks / f"{subset}.extracted").touch()
    return data_dir / "LibriSpeech" / subset


def fetch_lm(
    lm_dir: str | os.PathLike,
    files: Sequence[str] = tuple(LM_FILES),
    base_url: str = LM_BASE_URL,
    retries: int = 5,
    progress: bool = True,
) -> dict[str, str]:
    """Download the LibriSpeech n-gram LMs, lexicon and vocabulary (resource 11) for LM decoding.

    Returns:
        ``{file name: local path}``.
    """
    unknown = [f for f in files if f not in LM_FILES]
    if unknown:
        raise ValueError(f"lm files {unknown} are not part of resource 11; "
                         f"choose from {list(LM_FILES)}")
    return {
        f: str(download(f"{base_url.rstrip('/')}/{f}", Path(lm_dir) / f, checksums=LM_FILES[f],
                        retries=retries, progress=progress))
        for f in files
    }


def _read_chapter(chapter: str) -> tuple[list[dict], list[dict]]:
    """One ``<spk>/<chapter>`` folder -> (utterance dicts with absolute paths, rejected dicts)."""
    folder = Path(chapter)
    spk, chap = folder.parent.name, folder.name
    texts: dict[str, str] = {}
    repeated: set[str] = set()
    rejected: list[dict] = []
    trans = folder / f"{spk}-{chap}.trans.txt"
    if trans.is_file():
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if uid in texts:  # which line is its transcript? neither: the utterance is left out
                reason = f"{trans.name}:{lineno}: repeated id (the utterance is left out)"
                rejected.append({"id": uid, "audio_filepath": "", "reason": reason})
                repeated.add(uid)
            texts[uid] = text.strip()
    utts = []
    flacs = {p.stem: p for p in folder.glob("*.flac")}
    for uid in sorted(flacs.keys() | texts.keys()):
        if uid in repeated:
            continue
        path = flacs.get(uid)
        reason = None
        if path is None:
            reason = f"{trans.name} lists {uid} but {uid}.flac is missing"
        elif uid not in texts:
            reason = (f"no transcript line for {uid} in {trans.name}" if trans.is_file()
                      else "no trans.txt")
        elif not uid.startswith(f"{spk}-{chap}-"):
            reason = f"id {uid} does not belong in folder {spk}/{chap}"
        elif not texts[uid]:
            reason = "empty transcript"
        else:
            # header + the last samples: catches empty and truncated files
            info, reason = probe_audio(path)
            if info is not None:
                frames, rate = info.frames, info.samplerate
        if reason:
            where = str(path or folder / f"{uid}.flac")
            rejected.append({"id": uid, "audio_filepath": where, "reason": reason})
            continue
        utts.append({"audio_filepath": str(path), "duration": round(frames / rate, 4),
                     "text": texts[uid], "id": uid, "speaker": spk})
    return utts, rejected


def read_subset(
    folder: str | os.PathLike, workers: int = 0, progress: bool = True, desc: str = "prepare"
) -> tuple[list[Utterance], list[dict]]:
    """Every utterance of a LibriSpeech subset folder (``<folder>/<spk>/<chapter>/``), by id.

    Args:
        folder: the subset folder, e.g. ``.../LibriSpeech/dev-clean``.
        workers: processes reading FLAC headers (0 = as many as CPUs, 1 = in this process).

    Returns:
        (utterances with absolute audio paths, rejected ``{"id", "audio_filepath", "reason"}``).
    """
    chapters = sorted(str(c) for c in Path(folder).glob("*/*") if c.is_dir())
    if not chapters:
        raise FileNotFoundError(
            f"{folder} holds no <speaker>/<chapter>/ folders: not a LibriSpeech subset "
            f"(check data.root)"
        )
    workers = workers or os.cpu_count() or 1
    utts: list[Utterance] = []
    rejected: list[dict] = []
    bar = tqdm(total=len(chapters), desc=desc, unit="chapter", disable=not progress, leave=False)
    if workers == 1:
        results = map(_read_chapter, chapters)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(chapters)))
        results = pool.map(_read_chapter, chapters,
                           chunksize=max(1, len(chapters) // (workers * 8)))
    try:
        for u, r in results:
            utts.extend(Utterance(**d) for d in u)
            rejected.extend(r)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    utts.sort(key=lambda u: u.id)
    return utts, rejected


def _relative(utts: list[Utterance], base: Path) -> list[Utterance]:
    """Paths under ``base`` are written relative to it (the manifests move with the data folder)."""
    out = []
    for u in utts:
        p = Path(u.audio_filepath)
        if p.is_relative_to(base):
            u = Utterance(str(p.relative_to(base)), u.duration, u.text, u.id, u.speaker)
        out.append(u)
    return out


def prepare(
    data_dir: str,
    download_dir: str,
    subsets: Sequence[str] = SUBSETS,
    train_subsets: Sequence[str] = ("train-clean-100",),
    train_name: str = "train",
    root: str | None = None,
    base_url: str = BASE_URL,
    lm: bool = False,
    lm_base_url: str = LM_BASE_URL,
    stages: Sequence[str] = ("download", "manifests"),
    workers: int = 0,
    retries: int = 5,
    progress: bool = True,
) -> dict[str, str]:
    """Download (unless ``root`` holds a copy), extract and write ``<data_dir>/<subset>.jsonl``.

    Also writes ``<data_dir>/<train_name>.jsonl`` (the training subsets together) and
    ``rejected.jsonl``. Finished stages are marked in ``<data_dir>/.done/`` and skipped on a rerun.

    Args:
        data_dir: manifests, markers and (when downloading) the extracted corpus go here.
        download_dir: cache of the downloaded archives (one already there is not fetched again).
        subsets: subsets to prepare (all seven by default).
        train_subsets: subsets that make up the training manifest (must be in ``subsets``).
        train_name: its file name without ``.jsonl`` (recipes on different subsets keep their own).
        root: an existing LibriSpeech copy (the folder holding ``train-clean-100/`` etc., or its
            parent): nothing is downloaded, manifests point into it.
        base_url: where the archives of resource 12 are fetched (e.g. a mirror).
        lm: also fetch the n-gram LMs and lexicon (resource 11) into ``<data_dir>/lm``.
        lm_base_url: where resource 11 is fetched.
        stages: ``download`` (fetch + extract) and/or ``manifests``.
        workers: processes reading FLAC headers (0 = one per CPU).
        retries: download attempts (with doubling back-off) before giving up.

    Returns:
        ``{subset: manifest path, ..., train_name: path}`` (only what the stages produced).
    """
    subsets, train_subsets = _check_settings(subsets, train_subsets, stages, root)
    data = Path(data_dir)
    (data / ".done").mkdir(parents=True, exist_ok=True)
    if "download" in stages:
        if not root:
            for s in subsets:
                fetch_subset(s, data, download_dir, base_url, retries, progress)
        if lm and not (data / ".done" / "lm.downloaded").exists():
            fetch_lm(data / "lm", base_url=lm_base_url, retries=retries, progress=progress)
            (data / ".done" / "lm.downloaded").touch()
    if "manifests" not in stages:
        return {}
    corpus = Path(root) if root else data
    out = {s: write_subset_manifest(s, corpus, data, workers, progress) for s in subsets}
    _gather_rejected(data, subsets)
    out[train_name] = _concatenate(data / f"{train_name}.jsonl", [out[s] for s in train_subsets])
    return out


def _check_settings(
    subsets: Sequence[str], train_subsets: Sequence[str], stages: Sequence[str], root: str | None
) -> tuple[list[str], list[str]]:
    """:func:`prepare`'s settings, checked: known subsets, training subsets among them, known
    stages, and a ``root`` that holds every subset."""
    subsets = _check_subsets(subsets, "prepare.subsets")
    train_subsets = _check_subsets(train_subsets, "prepare.train_subsets")
    missing = [s for s in train_subsets if s not in subsets]
    if missing:
        raise ValueError(f"prepare.train_subsets {missing} are not in prepare.subsets {subsets}; "
                         f"add them")
    unknown = set(stages) - {"download", "manifests"}
    if unknown:
        raise ValueError(f"prepare.stages: unknown stage(s) {sorted(unknown)}; "
                         f"use download and/or manifests")
    absent = [s for s in subsets if not subset_dir(root, s).is_dir()] if root else []
    if absent:
        raise FileNotFoundError(
            f"data.root={root} lacks the subset folder(s) {absent}; point data.root at the folder "
            f"holding them (e.g. /datasets/LibriSpeech), or set data.root=null to download them"
        )
    return subsets, train_subsets


def write_subset_manifest(subset: str, corpus: Path, data: Path, workers: int,
                          progress: bool) -> str:
    """``<data>/<subset>.jsonl`` (paths relative to ``data`` where they lie under it) and its
    rejects, unless a marker says they were made from this same copy of the corpus."""
    manifest, mark = data / f"{subset}.jsonl", data / ".done" / f"{subset}.prepared"
    source = str(corpus.resolve())
    if manifest.exists() and mark.exists() and mark.read_text() == source:
        return str(manifest)
    folder = subset_dir(corpus, subset)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; run the download stage first "
                                f"(or set data.root)")
    utts, rejected = read_subset(folder, workers=workers, progress=progress,
                                 desc=f"prepare {subset}")
    write_manifest(manifest, _relative(utts, data.resolve()))
    with (data / f"{subset}.rejected.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({**r, "subset": subset}) + "\n" for r in rejected)
    log.info("librispeech %s: %d utterances, %.1f h, %d rejected -> %s", subset, len(utts),
             sum(u.duration for u in utts) / 3600, len(rejected), manifest)
    mark.write_text(source)
    return str(manifest)


def _gather_rejected(data: Path, subsets: Sequence[str]) -> None:
    """``<data>/rejected.jsonl``: every subset's rejects with their reasons."""
    rejected = [json.loads(x) for s in subsets
                for x in (data / f"{s}.rejected.jsonl").read_text().splitlines() if x]
    with (data / "rejected.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejected)
    if rejected:
        log.warning("librispeech: rejected %d utterances, reasons in %s", len(rejected),
                    data / "rejected.jsonl")


def _concatenate(path: Path, manifests: Sequence[str]) -> str:
    """The training subsets' manifests as one, atomically (lines copied: all share ``data_dir`` as
    their base)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for m in manifests:
            f.write(Path(m).read_text(encoding="utf-8"))
    os.replace(tmp, path)
    return str(path)


class LibriSpeechDataModule(ASRDataModule):
    """:class:`~asr.data.datamodule.ASRDataModule` over :func:`prepare`'s manifests of ``root``.

    Guards against stale manifests: when ``root`` is set, the training manifest must point into
    it, or ``setup`` says how to redo the manifests.

    Args:
        root: an existing LibriSpeech folder, or None when the recipe downloads the corpus.
        **kwargs: the arguments of :class:`~asr.data.datamodule.ASRDataModule`.
    """

    def __init__(self, root: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root

    def setup(self, stage: str | None = None) -> None:
        if self.root and stage in (None, "fit"):
            first = read_manifest(self.train_manifest)[:1]
            base = Path(self.root).resolve()
            if first and not Path(first[0].audio_filepath).resolve().is_relative_to(base):
                raise ValueError(
                    f"{self.train_manifest} points at {first[0].audio_filepath}, not into "
                    f"data.root={self.root}; "
                    f"delete {Path(self.train_manifest).parent / '.done'} "
                    f"to prepare the manifests again"
                )
        super().setup(stage)
