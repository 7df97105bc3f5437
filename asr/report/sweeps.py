"""A decoder sweep's summary: WER per split by the swept settings (``asr.evaluate -m ...``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_summary(sweep_dir: str | os.PathLike) -> str:
    """WER per split for every point of a decoder sweep (``<sweep_dir>/<job>/<split>/report.json``).

    Columns are the decoder settings that differ between points, then one WER column per split;
    rows are sorted by the settings.
    """
    points: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(sweep_dir).glob("*/*/report.json")):
        report = json.loads(path.read_text())
        points.setdefault(str(path.parent.parent), {})[report["split"]] = report
    if not points:
        return f"no report.json under {sweep_dir}"
    settings = {job: next(iter(r.values()))["decoder"] for job, r in points.items()}
    keys = sorted({k for s in settings.values() for k in s})
    varying = ([k for k in keys if len({json.dumps(s.get(k)) for s in settings.values()}) > 1]
               or ["name"])
    splits = sorted({split for r in points.values() for split in r})
    head = " | ".join([*varying, *(f"{s} WER %" for s in splits), "job"])
    rows = [head, " | ".join("---" for _ in [*varying, *splits, "job"])]

    def order(job: str) -> list[tuple]:  # numbers numerically, anything else by its text
        values = [settings[job].get(k) for k in varying]
        return [(0, v, "") if isinstance(v, int | float) else (1, 0, json.dumps(v)) for v in values]

    for job in sorted(points, key=order):
        wers = [f"{100 * points[job][s]['wer']:.2f}" if s in points[job] else "-" for s in splits]
        rows.append(" | ".join([*(str(settings[job].get(k)) for k in varying), *wers,
                                Path(job).name]))
    return "\n".join(rows)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write and print ``<sweep dir>/summary.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = sweep_summary(sweep_dir)
        (sweep_dir / "summary.md").write_text(table + "\n")
        print(f"\n{table}\nsummary: {sweep_dir / 'summary.md'}")
