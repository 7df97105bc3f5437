"""Word n-gram LM (interpolated Kneser-Ney, ARPA) and lexicon from training transcripts.

    python -m asr.lm manifest=data/an4/train.jsonl out_dir=data/an4/lm order=3
    python -m asr.lm manifest=data/an4/train.jsonl out_dir=data/an4/lm_spell order=6 spell=words.txt
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from asr.cli import user_errors
from asr.lm.ngram import build_lm


@hydra.main(version_base="1.3", config_path="../../conf", config_name="lm")
def main(cfg: DictConfig) -> None:
    manifests = [cfg.manifest] if isinstance(cfg.manifest, str) else list(cfg.manifest)
    with user_errors():
        paths = build_lm(
            manifests,
            cfg.out_dir,
            cfg.order,
            spell=cfg.spell,
            spell_top=cfg.spell_top,
            transcript_repeat=cfg.transcript_repeat,
        )
    print(f"decoder=beam_lm decoder.lexicon={paths['lexicon']} decoder.lm={paths['lm']}")


if __name__ == "__main__":
    main()
