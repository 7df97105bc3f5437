"""A word list for the spelling LM (``python -m asr.lm spell=...``), most frequent words first.

    python -m asr.lm.wordlist out=data/lm/words.en.txt lang=en top=100000

writes one word a line with its Zipf frequency after a tab, from the `wordfreq` package's lists
(CC BY-SA 4.0 data; ``pip install 'asr[lm]'``, no download at run time). Any list in that format
(one word a line, most frequent first) serves as well.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from asr.cli import user_errors

log = logging.getLogger(__name__)


def write_wordlist(out: str | os.PathLike, lang: str = "en", top: int = 100_000) -> Path:
    """Write ``wordfreq``'s ``top`` most frequent words of ``lang`` to ``out`` (word, tab, Zipf
    frequency)."""
    try:
        from wordfreq import top_n_list, zipf_frequency
    except ImportError as err:
        raise ImportError("asr.lm.wordlist needs the wordfreq package: "
                          "pip install 'asr[lm]'") from err
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    words = top_n_list(lang, top)
    if not words:
        raise ValueError(f"lang={lang}: wordfreq has no word list for this language")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(f"{w}\t{zipf_frequency(w, lang):.2f}\n" for w in words),
                   encoding="utf-8")
    os.replace(tmp, out)
    log.info("%d words of %s -> %s", len(words), lang, out)
    return out


@hydra.main(version_base="1.3", config_path="../../conf", config_name="wordlist")
def main(cfg: DictConfig) -> None:
    with user_errors():
        path = write_wordlist(cfg.out, cfg.lang, cfg.top)
    print(f"spell={path}")


if __name__ == "__main__":
    main()
