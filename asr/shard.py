"""Write a manifest as tar shards (WebDataset layout) to train from at scale, or verify shards.

    python -m asr.shard manifest=data/librispeech/train-960h.jsonl out=data/shards/train-960h \
        [shard_seconds=1000]
    python -m asr.shard verify=data/shards/train-960h
    python -m asr.train recipe=librispeech-960h data.train_shards=data/shards/train-960h

A run cut short, started again with the same settings, continues from the first incomplete shard.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from asr.cli import user_errors
from asr.data.shards import INDEX, verify_shards, write_shards


@hydra.main(version_base="1.3", config_path="../conf", config_name="shard")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        if cfg.verify:
            problems = verify_shards(cfg.verify)
            for p in problems:
                print(p)
            if problems:
                raise ValueError(f"{len(problems)} shards of {cfg.verify} failed the check; write "
                                 f"them again (delete them and their .json, then run python -m "
                                 f"asr.shard again, same settings)")
            print(f"{cfg.verify}: every shard matches {INDEX}")
            return
        if not cfg.manifest or not cfg.out:
            raise ValueError("give manifest=<train.jsonl> out=<folder> (or verify=<folder>)")
        index = write_shards(cfg.manifest, cfg.out, cfg.shard_seconds, cfg.shuffle, cfg.seed)
    size = sum(s["bytes"] for s in index["shards"])
    print(f"{cfg.out}: {len(index['shards'])} shards, {index['utterances']} utterances, "
          f"{index['seconds'] / 3600:.2f} h, {size / 2**20:.1f} MB; train with "
          f"data.train_shards={cfg.out}")


if __name__ == "__main__":
    main()
