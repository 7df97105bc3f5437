"""WER mean ± std over runs that differ only by their seed: a single-seed WER is not a result.

    python -m asr.train -m recipe=an4 seed=1,2,3          # 3 runs, then writes seeds.md
    python -m asr.report --seeds exp/an4/multirun_<time>  # the same for any folder of run dirs

Runs are grouped by their Hydra overrides without ``seed`` (one row per other setting per split);
each row averages the greedy ``decode/<split>/report.json``.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run dirs at or under ``root``: folders with ``decode/<split>/report.json`` (decoder sweeps
    left out)."""
    root = Path(root)
    found = {p.parent.parent.parent for p in root.glob("decode/*/report.json")}
    found |= {p.parent.parent.parent for p in root.rglob("*/decode/*/report.json")}
    return sorted(found)


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def run_seed(run: Path) -> int | None:
    """The seed a run trained with: ``run.json``, else ``config.yaml`` or ``.hydra/config.yaml``."""
    info = run / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("seed") is not None:
        return json.loads(info.read_text())["seed"]
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if path.is_file():
            return OmegaConf.load(path).get("seed")
    return None


# overrides that do not change what is trained: runs that differ only in these are one group
NOT_SETTINGS = ("seed", "trainer.enable_progress_bar", "resume")


def collect(root: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """``{settings: [{"run", "seed", "reports": {split: report}}]}``; settings = the overrides
    other than :data:`NOT_SETTINGS`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in find_runs(root):
        settings = " ".join(o for o in _overrides(run)
                            if o.lstrip("+~").split("=")[0] not in NOT_SETTINGS)
        reports = {p.parent.name: json.loads(p.read_text())
                   for p in sorted(run.glob("decode/*/report.json"))}
        groups.setdefault(settings, []).append({"run": run, "seed": run_seed(run),
                                                "reports": reports})
    return groups


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; ``None`` for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _pm(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} ± n/a (1 run)"


def summarize(root: str | os.PathLike) -> str:
    """Markdown table: per settings and split, seeds, WER % and CER % as mean ± std, and WER % per
    seed. The settings column shows the overrides that differ between groups (``-`` for one group).

    Raises:
        FileNotFoundError: no run under ``root`` has a ``decode/<split>/report.json``.
    """
    groups = collect(root)
    if not groups:
        raise FileNotFoundError(
            f"no run with decode/<split>/report.json under {root}: pass the multirun folder of "
            "asr.train (exp/<recipe>/multirun_<time>) once its runs have finished"
        )
    # name each group by the overrides that tell it apart from the others
    common = set.intersection(*(set(g.split()) for g in groups))
    lines = ["| settings | split | seeds | WER mean ± std (%) | CER mean ± std (%) "
             "| WER per seed (%) |", "|---|---|---|---:|---:|---|"]
    for group, runs in sorted(groups.items()):
        settings = " ".join(o for o in group.split() if o not in common)
        runs = sorted(runs, key=lambda r: (r["seed"] is None, r["seed"] or 0))
        for split in sorted({s for r in runs for s in r["reports"]}):
            have = [r for r in runs if split in r["reports"]]
            wers = [100 * r["reports"][split]["wer"] for r in have]
            cers = [100 * r["reports"][split]["cer"] for r in have]
            seeds = ",".join(str(r["seed"]) for r in have)
            per_seed = " ".join(f"{w:.2f}" for w in wers)
            lines.append(f"| {settings or '-'} | {split} | {seeds} | {_pm(wers)} | {_pm(cers)} "
                         f"| {per_seed} |")
    return "\n".join(lines)


def write_summary(root: str | os.PathLike) -> Path:
    """:func:`summarize` into ``<root>/seeds.md``; returns its path."""
    path = Path(root) / "seeds.md"
    path.write_text(
        "WER/CER mean ± sample std over seeds (greedy, best.ckpt); "
        f"rebuild: python -m asr.report --seeds {root}\n\n"
        f"{summarize(root)}\n"
    )
    return path


class SeedsSummary(Callback):
    """Hydra callback: after ``python -m asr.train -m ...``, write and print
    ``<sweep dir>/seeds.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path = write_summary(sweep_dir)
        except FileNotFoundError as err:  # every job failed: their own errors say why
            print(f"no seeds summary: {err}")
            return
        print(f"\n{path.read_text()}summary: {path}")
