"""Score a checkpoint on manifests: per-split hyps.txt, refs.txt, report.json; a printed WER table.

    python -m asr.evaluate checkpoint=exp/an4/<run>/checkpoints/best.ckpt
    python -m asr.evaluate checkpoint=... manifests='{test: data/an4/test.jsonl}'
    python -m asr.evaluate checkpoint=... testsets=librispeech   # dev/test-clean, dev/test-other
    python -m asr.evaluate checkpoint=... decoder=beam decoder.beam_size=50
    python -m asr.evaluate -m checkpoint=... decoder=beam_lm decoder.lexicon=... decoder.lm=... \
        decoder.lm_weight=0.5,1,1.5,2 decoder.word_score=-1,0,1
    python -m asr.evaluate checkpoint=... quantize=int8   # int8 LSTM and linear layers, on the CPU
    python -m asr.evaluate checkpoint=<asr.export folder> manifests='{test: data/an4/test.jsonl}'

Log-probs are cached per checkpoint and split (``cache_dir``): a decoder sweep costs one forward
pass per split and one search per point.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from asr.cli import user_errors
from asr.inference import model_home
from asr.report.scoring import evaluate_checkpoint, format_table


def register_resolvers() -> None:
    """Register ``${run_dir_of:<checkpoint>}`` (a checkpoint's run dir, or a model folder itself)
    for ``conf/evaluate.yaml``; call it before composing the config (tests that compose it too)."""
    OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(model_home(ckpt)), replace=True)


def _decoder_settings(cfg: DictConfig) -> dict:
    """The decoder group as plain data for reports: its choice name and its settings."""
    name = HydraConfig.get().runtime.choices.get("decoder", "custom")
    plain = OmegaConf.to_container(cfg.decoder, resolve=True)
    settings = {k: v for k, v in plain.items() if not k.startswith("_")}
    return {"name": name, **settings}


def _out_dir(cfg: DictConfig) -> str:
    """Where the splits go: the sweep point's folder in a multirun, else ``out_dir``, else
    ``<run dir>/decode/<decoder>-<quantize>`` without the parts that are greedy or unset."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return hydra_cfg.runtime.output_dir
    if cfg.out_dir:
        return cfg.out_dir
    choice = hydra_cfg.runtime.choices.get("decoder", "greedy")
    name = "-".join(part for part in (choice if choice != "greedy" else "", cfg.quantize or "")
                    if part)
    return str(model_home(cfg.checkpoint) / "decode" / name)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, dict]:
    out_dir = _out_dir(cfg)
    with user_errors():
        reports = evaluate_checkpoint(
            checkpoint=cfg.checkpoint,
            manifests=OmegaConf.to_container(cfg.manifests) if cfg.manifests else None,
            out_dir=out_dir,
            device=cfg.device,
            batch_seconds=cfg.batch_seconds,
            decoder=instantiate(cfg.decoder),
            decoder_settings=_decoder_settings(cfg),
            cache_dir=cfg.cache_dir,
            quantize=cfg.quantize,
        )
    print(format_table(reports))
    print(f"per-split hyps.txt, refs.txt, report.json under {Path(out_dir)}")
    return reports


if __name__ == "__main__":
    register_resolvers()
    main()
