"""Average the weights of several checkpoints of one run.

    python -m asr.average checkpoints=[<run dir>/checkpoints/a.ckpt,<run dir>/checkpoints/b.ckpt]
    python -m asr.average run_dir=exp/an4/<run> last=5       # the 5 with the highest global step
    python -m asr.average run_dir=exp/an4/<run> best=5       # the 5 best by their recorded score
    python -m asr.average checkpoints=[clean.ckpt,finetuned.ckpt] weights=[0.75,0.25]
    python -m asr.average checkpoints=[clean.ckpt,finetuned.ckpt] weights=[0.25,0.75] \
        module_weights={frontend:[0.75,0.25]}   # other weights for some modules

The result loads like any checkpoint (``python -m asr.evaluate checkpoint=<output>``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from asr.cli import user_errors
from asr.training.averaging import average_checkpoints, select_checkpoints


@hydra.main(version_base="1.3", config_path="../conf", config_name="average")
def main(cfg: DictConfig) -> None:
    with user_errors():
        if cfg.checkpoints:
            paths = [str(p) for p in OmegaConf.to_container(cfg.checkpoints)]
        elif cfg.weights or cfg.module_weights:
            raise ValueError("weights= and module_weights= go with checkpoints=[a.ckpt,b.ckpt] "
                             "(one weight each)")
        elif cfg.run_dir:
            paths = select_checkpoints(cfg.run_dir, cfg.last, cfg.best)
        else:
            raise ValueError(
                "give checkpoints=[a.ckpt,b.ckpt] or run_dir=exp/<recipe>/<run> with last=N or "
                "best=N"
            )
        kind = (f"last{cfg.last}" if cfg.last else f"best{cfg.best}" if cfg.best
                else f"avg{len(paths)}")
        output = cfg.output or str(Path(paths[-1]).parent / f"averaged_{kind}.ckpt")
        module_weights = cfg.module_weights
        if module_weights is not None and not isinstance(module_weights, DictConfig):
            raise ValueError(f"module_weights={module_weights}: give a mapping, "
                             "module_weights={frontend:[0.75,0.25]}")
        average_checkpoints(
            paths, output, None if cfg.weights is None else list(cfg.weights),
            None if module_weights is None else {
                str(k): list(v) for k, v in OmegaConf.to_container(module_weights).items()},
        )
    print(f"averaged {len(paths)} checkpoints -> {output}")


if __name__ == "__main__":
    main()
