"""Seeing a run: report.md and its plots after training, error analysis and alignment after
evaluation, the run facts in the run dir, the TensorBoard logger (on by default) and the seeds
summary, on real runs of the tiny recipe (the committed AN4 fixture)."""

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from asr.report.__main__ import main
from asr.report.alignment import forced_align, token_segments
from asr.report.analysis import align_words, error_analysis, read_trn
from asr.report.run_report import read_metrics
from asr.report.seeds import collect, summarize, write_summary
from asr.text import ctc_collapse
from asr.train import train
from tests.conftest import ROOT, tiny_recipe_overrides, tiny_train_cfg


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A real 3-epoch tiny run (3 steps an epoch): multi-point curves, val after each epoch."""
    out = tmp_path_factory.mktemp("run")
    return out, train(tiny_train_cfg(tiny_dir, out, ["trainer.max_epochs=3"]))


def assert_real_png(path: Path) -> None:
    """The file decodes as an image, and is not blank: many distinct colours, not one flat fill."""
    assert path.is_file(), f"{path} is missing"
    pixels = mpimg.imread(path)  # (H, W, 3|4) floats in [0, 1]
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.02
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20


def report_links(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def test_report_after_training_shows_this_runs_curves(run):
    out, result = run
    images = report_links(out / "report.md")
    pngs = [out / link for link in images if link.startswith("plots/")]
    assert {p.name for p in pngs} >= {"loss.png", "error_rates.png", "lr.png"}
    for png in pngs:
        assert_real_png(png)
    # the curves are this run's: 9 training steps logged every step, one validation per epoch
    series = read_metrics(out / "logs" / "metrics.csv")
    assert len(series["train/loss"]) == 9 and len(series["val/wer"]) == 3 and len(series["lr"]) == 9
    text = (out / "report.md").read_text()
    assert "| epochs / steps | 3 / 9 |" in text
    for split in ("dev", "test"):
        assert f"| {split} | {result['reports'][split]['utterances']} |" in text
        assert f"{100 * result['reports'][split]['wer']:.2f}" in text


def test_run_dir_holds_resolved_config_commit_versions_and_seed(run):
    out, _ = run
    cfg = OmegaConf.load(out / "config.yaml")
    assert "${" not in (out / "config.yaml").read_text()
    assert cfg.seed == 1 and cfg.paths.output_dir == str(out)
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 1
    git_dir = ROOT / ".git"
    if git_dir.exists():
        assert re.fullmatch(r"[0-9a-f]{40}", info["git"]["commit"])
    assert (info["packages"]["torch"] == torch.__version__.split("+")[0]
            and info["torch_build"] == torch.__version__)
    assert info["packages"]["pytorch-lightning"] and info["packages"]["matplotlib"]
    assert (info["epochs"] == 3 and info["steps"] == 9 and info["device"] == "cpu"
            and info["train_seconds"] > 0)
    # both loggers by default: the CSV (report.md's curves) and TensorBoard's event files
    assert ((out / "logs" / "metrics.csv").is_file()
            and any((out / "logs" / "tensorboard").glob("events.*")))


def test_tensorboard_logs_by_default_the_same_scalars_as_the_csv(run, tiny_dir, tmp_path):
    """The default loggers: TensorBoard event files beside logs/metrics.csv, holding the same
    training losses; logger=[csv] turns TensorBoard off."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = run
    events = EventAccumulator(str(out / "logs" / "tensorboard")).Reload()
    csv_loss = read_metrics(out / "logs" / "metrics.csv")["train/loss"]
    tb_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in tb_loss] == [s for s, _ in csv_loss]
    assert [v for _, v in tb_loss] == pytest.approx([v for _, v in csv_loss], rel=1e-6)
    assert {"val/loss", "val/wer", "lr"} <= set(events.Tags()["scalars"])
    train(tiny_train_cfg(tiny_dir, tmp_path, ["logger=[csv]", "eval_manifests=null"]))
    assert ((tmp_path / "logs" / "metrics.csv").is_file()
            and not (tmp_path / "logs" / "tensorboard").exists())


def test_evaluation_lists_worst_utterances_confusions_and_alignment(run):
    out, result = run
    for split in ("dev", "test"):
        split_dir = out / "decode" / split
        errors = (split_dir / "errors.md").read_text()
        assert ("worst utterances" in errors and "top confusions" in errors and "REF:" in errors
                and "HYP:" in errors)
        analysis = json.loads((split_dir / "errors.json").read_text())
        worst = analysis["worst"]
        assert worst and [u["errors"] for u in worst] == sorted((u["errors"] for u in worst),
                                                                reverse=True)
        # the confusion counts, all of them, add up to the split's S/D/I
        ids, refs = read_trn(split_dir / "refs.txt")
        _, hyps = read_trn(split_dir / "hyps.txt")
        full = error_analysis(ids, refs, hyps, top=10**6)
        report = result["reports"][split]
        assert sum(n for *_, n in full["substitutions"]) == report["substitutions"]
        assert sum(n for _, n in full["deletions"]) == report["deletions"]
        assert sum(n for _, n in full["insertions"]) == report["insertions"]
        assert_real_png(split_dir / "alignment.png")
    links = report_links(out / "report.md")
    assert ("decode/test/alignment.png" in links
            and "decode/test/errors.md" in (out / "report.md").read_text())


def test_align_words_marks_errors_sclite_style():
    ref, hyp = "a b c d", "a q c e d"
    import jiwer

    chunks = jiwer.process_words(ref, hyp).alignments[0]
    ref_line, hyp_line, edits = align_words(ref.split(), hyp.split(), chunks)
    assert ref_line == "a B c * d" and hyp_line == "a Q c E d"
    assert edits == [("S", "b", "q"), ("I", "", "e")]


def test_forced_align_path_spells_the_reference():
    torch.manual_seed(0)
    log_probs = torch.randn(40, 29).log_softmax(-1)
    targets = [5, 12, 12, 1, 3]  # a repeat needs a blank between
    path, scores = forced_align(log_probs, targets)
    assert path.shape == scores.shape == (40,)
    assert ctc_collapse(path.tolist()) == targets
    assert [tok for tok, _, _ in token_segments(path)] == targets
    with pytest.raises(ValueError, match="frames"):
        forced_align(log_probs[:5], targets)


def test_report_command_rebuilds_from_run_dir(run, tmp_path, capsys):
    out, _ = run
    (out / "report.md").unlink()
    for png in (out / "plots").glob("*.png"):
        png.unlink()
    main([str(out)])
    assert "report:" in capsys.readouterr().out
    assert len([p for p in report_links(out / "report.md") if p.startswith("plots/")]) >= 3
    for png in (out / "plots").glob("*.png"):
        assert_real_png(png)
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path)])
    assert err.value.code == 2 and "metrics.csv" in capsys.readouterr().err
    dry = subprocess.run(["make", "-n", "report", f"RUN={out}"], cwd=ROOT, capture_output=True,
                         text=True)
    assert f"-m asr.report {out}" in dry.stdout


def test_seeds_summary_is_mean_and_std_over_real_runs(run, tiny_dir, tmp_path, capsys):
    first, first_result = run
    second = tmp_path / "seed2"
    second_result = train(tiny_train_cfg(tiny_dir, second, ["seed=2", "trainer.max_epochs=3"]))
    (tmp_path / "seed1").symlink_to(first, target_is_directory=True)
    groups = collect(tmp_path)
    assert len(groups) == 1 and sorted(r["seed"] for r in next(iter(groups.values()))) == [1, 2]
    # a run started without the progress bar trained the same model: still one group
    (second / ".hydra").mkdir(exist_ok=True)
    (second / ".hydra" / "overrides.yaml").write_text("- seed=2\n"
                                                      "- trainer.enable_progress_bar=false\n")
    assert list(collect(tmp_path)) == [""]
    table = summarize(tmp_path)
    for split in ("dev", "test"):
        wers = [100 * first_result["reports"][split]["wer"],
                100 * second_result["reports"][split]["wer"]]
        row = next(line for line in table.splitlines() if f"| {split} |" in line)
        assert (f"{statistics.fmean(wers):.2f} ± {statistics.stdev(wers):.2f}" in row
                and "| 1,2 |" in row)
    assert write_summary(tmp_path).read_text().count("±") >= 4
    with pytest.raises(FileNotFoundError, match="multirun"):
        summarize(tmp_path / "seed2" / "logs")


@pytest.mark.slow
def test_multirun_over_seeds_prints_summary(tiny_dir, tmp_path):
    """The real command: python -m asr.train -m seed=1,2 ... then the summary from the Hydra
    callback (the summary itself: test_seeds_summary_is_mean_and_std_over_real_runs)."""
    cmd = [
        sys.executable, "-m", "asr.train", "-m", *tiny_recipe_overrides(tiny_dir.parent),
        f"paths.exp_dir={tmp_path}", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false", "seed=1,2",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = next(tmp_path.glob("tiny/multirun_*/seeds.md"))
    assert "| - | test | 1,2 |" in summary.read_text() and "±" in done.stdout


def test_format_errors_lists_as_many_utterances_as_asked_zero_included():
    from asr.report.analysis import format_errors

    analysis = error_analysis(["u1", "u2"], ["a b", "c d"], ["a x", "y d"])
    assert format_errors("dev", analysis, 0).count("errors /") == 0
    assert format_errors("dev", analysis, 1).count("errors /") == 1
    assert format_errors("dev", analysis).count("errors /") == 2
