"""MUSAN and RIRS_NOISES: download and extract the recordings used to augment training audio.

MUSAN (OpenSLR 17) holds music, noise and babble speech to mix into utterances; RIRS_NOISES
(OpenSLR 28) holds room impulse responses to reverberate them. Neither has transcripts, so there
is no manifest: the result is a folder of WAV files. Each extraction is marked done under
``<data_dir>/.done/`` so a rerun skips it, and an archive already in the download folder is used
without the network (as long as it verifies). Layouts: see docs/data.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from asr.data.download import download, extract_tar, extract_zip

log = logging.getLogger(__name__)

MUSAN_URL = "https://www.openslr.org/resources/17/musan.tar.gz"
# MD5 published by OpenSLR, the one Kaldi/wespeaker/icefall recipes check (about 11 GB)
MUSAN_CHECKSUMS = ("md5:0c472d4fc0c5141eca47ad1ffeb2a7df",)
MUSAN_PARTS = ("music", "noise", "speech")
RIRS_URL = "https://www.openslr.org/resources/28/rirs_noises.zip"
# MD5 published by OpenSLR (resources/28/checksum.md5; about 1.3 GB)
RIRS_CHECKSUMS = ("md5:e6f48e257286e05de56413b4779d8ffb",)
# either one makes the archive usable: simulated RIRs, or real RIRs with isotropic noises
RIRS_PARTS = ("simulated_rirs", "real_rirs_isotropic_noises")


def _fetch(name: str, archive_name: str, folder_name: str, parts: Sequence[str], need_all: bool,
           extract: Callable[..., Path], data_dir: str | os.PathLike,
           download_dir: str | os.PathLike, url: str, checksums: Sequence[str] | None,
           progress: bool) -> Path:
    """Download ``archive_name`` (verified, resumable), extract it into ``data_dir`` and check
    that ``<folder_name>/`` holds ``parts`` (all of them, or one with ``need_all=False``); skipped
    when marked done and the folder is still there."""
    data_dir = Path(data_dir)
    folder = data_dir / folder_name
    mark = data_dir / ".done" / f"{name}.extracted"
    if mark.exists() and folder.is_dir():
        return folder
    archive = download(url, Path(download_dir) / archive_name, checksums, progress=progress,
                       checksum_setting=f"{name}_checksums")
    log.info("extracting %s into %s", archive, data_dir)
    extract(archive, data_dir, progress=progress)
    missing = [f"{folder_name}/{p}/" for p in parts if not (folder / p).is_dir()]
    if missing and (need_all or len(missing) == len(parts)):
        what = "no " + ", ".join(missing) if need_all else "neither " + " nor ".join(missing)
        raise ValueError(
            f"{archive} holds {what}: it is not the official {archive_name} (check the "
            f"{name}_url setting, delete the file and run again)"
        )
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    return folder


def fetch_musan(
    data_dir: str | os.PathLike,
    download_dir: str | os.PathLike,
    url: str = MUSAN_URL,
    checksums: Sequence[str] | None = MUSAN_CHECKSUMS,
    progress: bool = True,
) -> Path:
    """Download (unless cached) and extract MUSAN, unless done.

    Args:
        data_dir: the archive is extracted here (``<data_dir>/musan/``).
        download_dir: cache of downloaded archives (``musan.tar.gz``).
        url: where to fetch ``musan.tar.gz`` (a mirror or file:// works too).
        checksums: the archive must match one of these (``"md5:<hex>"`` / ``"sha256:<hex>"``);
            ``None``: unchecked.

    Returns:
        ``<data_dir>/musan``, holding ``music/``, ``noise/`` and ``speech/``.

    Raises:
        DownloadError: the download failed or matches none of ``checksums``.
        ValueError: the archive is unsafe to extract, or lacks the three folders.
    """
    return _fetch("musan", "musan.tar.gz", "musan", MUSAN_PARTS, True, extract_tar, data_dir,
                  download_dir, url, checksums, progress)


def fetch_rirs(
    data_dir: str | os.PathLike,
    download_dir: str | os.PathLike,
    url: str = RIRS_URL,
    checksums: Sequence[str] | None = RIRS_CHECKSUMS,
    progress: bool = True,
) -> Path:
    """Download (unless cached) and extract RIRS_NOISES, unless done.

    Args:
        data_dir: the archive is extracted here (``<data_dir>/RIRS_NOISES/``).
        download_dir: cache of downloaded archives (``rirs_noises.zip``).
        url: where to fetch ``rirs_noises.zip`` (a mirror or file:// works too).
        checksums: the archive must match one of these; ``None``: unchecked.

    Returns:
        ``<data_dir>/RIRS_NOISES``, holding ``simulated_rirs/``,
        ``real_rirs_isotropic_noises/`` and ``pointsource_noises/``.

    Raises:
        DownloadError: the download failed or matches none of ``checksums``.
        ValueError: the archive is unsafe to extract, or holds neither RIR folder.
    """
    return _fetch("rirs", "rirs_noises.zip", "RIRS_NOISES", RIRS_PARTS, False, extract_zip,
                  data_dir, download_dir, url, checksums, progress)
