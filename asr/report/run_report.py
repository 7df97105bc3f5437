"""A run's report: ``report.md`` and its PNG curves, and ``report.html``, built from what the run
dir holds.

    python -m asr.report exp/an4/<run>          # (re)build <run>/report.md and <run>/report.html
    make report RUN=exp/an4/<run>

What each part shows and where it is read from: see docs/report.md.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from matplotlib.figure import Figure  # drawn straight to files: no pyplot, no display backend
from omegaconf import DictConfig, OmegaConf

from asr.report.analysis import analyse_decode_dir, format_errors
from asr.report.html import SplitView, build_html


def read_metrics(csv_path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``logs/metrics.csv`` (Lightning's CSVLogger) -> ``{metric: [(step, value), ...]}``, empty
    cells skipped; ``epoch`` is a series like the others."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for key, value in row.items():
                if key == "step" or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: per-step CTC loss is noisy, its trend is what one reads."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


# (file, title, y label, [(metric, legend label, scale)], log y)
PLOTS = (
    ("loss.png", "CTC loss", "loss per utterance",
     [("train/loss", "train", 1.0), ("val/loss", "val", 1.0)], True),
    ("error_rates.png", "validation error rates", "%",
     [("val/wer", "WER", 100.0), ("val/cer", "CER", 100.0)], False),
    ("lr.png", "learning rate", "lr", [("lr", "lr", 1.0)], False),
    ("throughput.png", "training throughput", "audio seconds / second",
     [("perf/audio_sec_per_sec", "audio s/s", 1.0)], False),
)


def plot_curves(series: dict[str, list[tuple[int, float]]],
                out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per entry of :data:`PLOTS` whose metrics the run logged; returns the files
    written."""
    written = []
    for name, title, ylabel, lines, log_y in PLOTS:
        present = [(m, label, scale) for m, label, scale in lines if series.get(m)]
        if not present:
            continue
        fig = Figure(figsize=(7, 3.6))
        ax = fig.subplots()
        for i, (metric, label, scale) in enumerate(present):
            color = f"C{i}"
            steps = [s for s, _ in series[metric]]
            values = [v * scale for _, v in series[metric]]
            if metric.startswith("train/") and len(values) > 20:
                ax.plot(steps, values, lw=0.6, alpha=0.3, color=color)
                ax.plot(steps, _smooth(values, max(len(values) // 25, 2)), lw=1.4, color=color,
                        label=f"{label} (smoothed)")
            else:
                marker = "o" if len(values) < 60 else None
                ax.plot(steps, values, lw=1.4, marker=marker, ms=3, color=color, label=label)
        if log_y and all(v > 0 for m, _, _ in present for _, v in series[m]):
            ax.set_yscale("log")
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        written.append(path)
    return written


def find_input(run_dir: Path, path: str) -> Path | None:
    """A file the run was given (a manifest) as written, else relative to where the run was
    started (the project root above ``exp/<recipe>/<run>``); None when neither exists."""
    parents = run_dir.resolve().parents
    for candidate in (Path(path), *([parents[2] / path] if len(parents) > 2 else [])):
        if candidate.is_file():
            return candidate
    return None


def _audio_hours(run_dir: Path, config: DictConfig) -> float | None:
    """Training hours from ``data_check.json``, else from the train manifest in ``config.yaml``."""
    check = run_dir / "data_check.json"
    if check.is_file():
        train = json.loads(check.read_text()).get("train", {})
        if "hours" in train:
            return float(train["hours"])
    manifest = OmegaConf.select(config, "data.train_manifest", throw_on_resolution_failure=False)
    path = find_input(run_dir, manifest) if manifest else None
    if path is None:
        return None
    with open(path) as f:
        return sum(json.loads(line)["duration"] for line in f if line.strip()) / 3600


def _wer_table(reports: dict[str, dict]) -> list[str]:
    lines = ["| split | utts | words | WER % | CER % | sub | del | ins |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in reports.items():
        lines.append(f"| {name} | {r['utterances']} | {r['ref_words']} | {100 * r['wer']:.2f} "
                     f"| {100 * r['cer']:.2f} | {r['substitutions']} | {r['deletions']} "
                     f"| {r['insertions']} |")
    return lines


def _facts(run: Path, series: dict, info: dict, config: DictConfig,
           reports: dict) -> list[tuple[str, str]]:
    """The facts table of report.md: audio, epochs, time, throughput, device, seed, commit."""
    steps = info.get("steps", max((s + 1 for v in series.values() for s, _ in v), default=0))
    epochs = info.get("epochs", int(max((e for _, e in series.get("epoch", [])), default=-1)) + 1)
    hours = _audio_hours(run, config)
    wall = info.get("train_seconds")
    # hours x epochs is what the fit read only when it read whole epochs
    whole_epochs = (OmegaConf.select(config, "trainer.limit_train_batches", default=None)
                    in (None, 1.0))
    measured = [v for _, v in series.get("perf/audio_sec_per_sec", [])]
    return [
        ("run dir", str(run)),
        ("training audio", f"{hours:.2f} h" if hours is not None else "unknown"),
        ("epochs / steps", f"{epochs} / {steps}"),
        ("training wall time",
         f"{wall / 60:.1f} min ({wall:.0f} s)" if wall else "unknown (no run.json)"),
        ("throughput (training steps)",
         f"{sorted(measured)[len(measured) // 2]:.0f} audio s/s (median)"
         if measured else "not logged"),
        ("throughput (whole fit, incl. validation)",
         f"{hours * 3600 * epochs / wall:.0f} audio s/s"
         if hours and wall and whole_epochs else "unknown"),
        ("device",
         info.get("device") or next((r.get("device") for r in reports.values()), "unknown")),
        ("seed", str(info.get("seed", OmegaConf.select(config, "seed", default="unknown")))),
        ("git commit", f"{info['git']['commit']}{' (dirty)' if info['git'].get('dirty') else ''}"
         if info.get("git", {}).get("commit") else "unknown"),
    ]


def _split_views(run: Path, reports: dict) -> list[SplitView]:
    """Per scored split: its report, error analysis (rebuilt from refs.txt/hyps.txt), manifest and
    alignment.png."""
    views = []
    for split, report in reports.items():
        split_dir = run / "decode" / split
        has_trn = (split_dir / "refs.txt").is_file() and (split_dir / "hyps.txt").is_file()
        alignment = split_dir / "alignment.png"
        views.append(SplitView(
            name=split, report=report, analysis=analyse_decode_dir(split_dir) if has_trn else None,
            manifest=find_input(run, report["manifest"]) if report.get("manifest") else None,
            alignment=alignment if alignment.is_file() else None,
        ))
    return views


def _error_sections(splits: list[SplitView], worst: int) -> list[str]:
    """Per split: the worst utterances and top confusions, and the alignment picture."""
    lines: list[str] = []
    for view in splits:
        split, analysis = view.name, view.analysis
        if analysis is not None:
            lines += ["", f"## Errors: {split}", "",
                      format_errors(split, analysis, worst).replace("### ", "#### "),
                      "", f"All listed in [decode/{split}/errors.md](decode/{split}/errors.md)."]
        if view.alignment is not None:
            lines += ["", f"![{split} alignment](decode/{split}/alignment.png)"]
    return lines


def build_report(run_dir: str | os.PathLike, worst: int = 5) -> Path:
    """(Re)build ``<run_dir>/report.md``, its PNGs (``<run_dir>/plots/``) and ``report.html``
    beside it (:mod:`asr.report.html`); returns the path of ``report.md``.

    Args:
        run_dir: ``exp/<recipe>/<run>``, with ``logs/metrics.csv`` and, after evaluation,
            ``decode/<split>/``.
        worst: how many worst utterances per split the report shows (``errors.md`` has more).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``logs/metrics.csv`` (not a training run dir).
    """
    run = Path(run_dir)
    csv_path = run / "logs" / "metrics.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist: pass a run dir written by asr.train "
                                "(exp/<recipe>/<run>)")
    series = read_metrics(csv_path)
    plots = plot_curves(series, run / "plots")
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    config_file = next((p for p in (run / "config.yaml", run / ".hydra" / "config.yaml")
                        if p.is_file()), None)
    config = OmegaConf.load(config_file) if config_file else OmegaConf.create()
    reports = {p.parent.name: json.loads(p.read_text())
               for p in sorted((run / "decode").glob("*/report.json"))}

    facts = _facts(run, series, info, config, reports)
    splits = _split_views(run, reports)
    title = f"Run report: {OmegaConf.select(config, 'name', default=run.parent.name)} / {run.name}"
    rebuild = f"python -m asr.report {run}"
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items() if v)
    lines = [f"# {title}", "", f"Rebuild with `{rebuild}`.", "", "## Facts", "", "| | |",
             "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    if packages:
        lines += ["", "Packages: " + packages]
    lines += ["", "## Final WER (best.ckpt, greedy)", ""]
    lines += (_wer_table(reports) if reports
              else ["no decode/<split>/report.json yet: run asr.evaluate"])
    lines += ["", "## Curves", ""]
    lines += ([f"![{p.stem}](plots/{p.name})" for p in plots]
              or ["logs/metrics.csv holds no curves yet"])
    lines += _error_sections(splits, worst)
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page = build_html(title, facts + ([("packages", packages)] if packages else []), plots,
                      splits, worst,
                      sample_rate=OmegaConf.select(config, "features.sample_rate", default=None),
                      rebuild=rebuild)
    path.with_name("report.html").write_text(page, encoding="utf-8")
    return path
