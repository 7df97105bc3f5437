"""Fetch the augmentation corpora and print the setting that uses each.

    python -m asr.prepare_noise corpus=musan          # <data_dir>/musan/{music,noise,speech}
    python -m asr.prepare_noise corpus=rirs           # <data_dir>/RIRS_NOISES/simulated_rirs, ...
    python -m asr.prepare_noise corpus=[musan,rirs]

Settings: conf/prepare_noise.yaml (``musan_url``, ``musan_checksums``, ``rirs_url``, ...).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from asr.cli import user_errors
from asr.data.corpora.noise import fetch_musan, fetch_rirs
from asr.data.download import DownloadError

CORPORA = {"musan": fetch_musan, "rirs": fetch_rirs}


def corpora(value: object) -> list[str]:
    """The corpus setting as a list of names (one name or a list), checked."""
    is_list = isinstance(value, ListConfig | list | tuple)
    names = list(value) if is_list else [] if value is None else [value]
    if not names or any(n not in CORPORA for n in names):
        shown = names if is_list else value
        what = "corpus is not set" if value is None else f"corpus={shown}"
        raise ValueError(f"{what}: choose corpus=musan, corpus=rirs or corpus=[musan,rirs]")
    return list(dict.fromkeys(names))


def usage(name: str, folder: Path) -> str:
    """``<name>: <folder>  (use: <the augmentation setting that reads it>)``."""
    folder = folder.resolve()
    if name == "musan":
        return f"musan: {folder}  (use: audio_augment.noise.folder={folder})"
    return f"rirs: {folder}  (use: audio_augment.reverb.rir_folder={folder / 'simulated_rirs'})"


def fetch(cfg: DictConfig, name: str) -> Path:
    """One corpus fetched with its ``<name>_url`` and ``<name>_checksums`` settings."""
    checksums = cfg.get(f"{name}_checksums")
    if isinstance(checksums, str):  # musan_checksums=md5:<hex>, without the brackets
        checksums = [checksums]
    return CORPORA[name](cfg.data_dir, cfg.download_dir, url=cfg[f"{name}_url"],
                         checksums=None if checksums is None else list(checksums),
                         progress=cfg.progress)


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_noise")
def main(cfg: DictConfig) -> None:
    with user_errors(DownloadError):
        for name in corpora(cfg.corpus):
            print(usage(name, fetch(cfg, name)), flush=True)


if __name__ == "__main__":
    main()
