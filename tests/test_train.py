"""Training on the committed AN4 fixture (``recipe=tiny``) with a real Lightning Trainer on CPU (a
few steps), the research options added on top of it, and the train/evaluate command lines."""

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf.errors import ConfigAttributeError
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from asr.data.dataset import AudioDataset, collate
from asr.data.manifest import Utterance, read_manifest
from asr.recognizer import Recognizer
from asr.report.scoring import evaluate_checkpoint
from asr.text import CharTokenizer
from asr.train import build_trainer, instantiate_all, train
from asr.training.averaging import AverageBest
from asr.training.regularizers import ema_update
from tests.conftest import ROOT, compose_train, tiny_recipe_overrides, tiny_train_cfg


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _column(run: Path, key: str) -> list[str]:
    """The non-empty values of one column of the run's metrics.csv."""
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index(key)
    return [r.split(",")[col] for r in rows[1:] if r.split(",")[col]]


class _SeenCallbacks(L.Callback):
    """Records the callback types of the Trainer a run really used."""

    def __init__(self) -> None:
        self.types: list[type] = []

    def on_train_start(self, trainer, pl_module):
        self.types = [type(c) for c in trainer.callbacks]


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    seen = _SeenCallbacks()
    result = train(tiny_train_cfg(tiny_dir, out), extra_callbacks=[seen])
    return out, result, seen


def test_train_writes_checkpoints_logs_and_reports(trained, tiny_dir):
    out, result, _ = trained
    assert ((out / "checkpoints" / "best.ckpt").is_file()
            and (out / "checkpoints" / "last.ckpt").is_file())
    assert result["best_checkpoint"] == str(out / "checkpoints" / "best.ckpt")
    metrics = (out / "logs" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for key in ("train/loss", "lr", "val/loss", "val/wer", "val/cer"):
        assert key in header
    for split in ("dev", "test"):
        report = json.loads((out / "decode" / split / "report.json").read_text())
        assert report == result["reports"][split]
        hyps = (out / "decode" / split / "hyps.txt").read_text().splitlines()
        refs = (out / "decode" / split / "refs.txt").read_text().splitlines()
        assert (len(hyps) == len(refs) == report["utterances"]
                == len(read_manifest(tiny_dir / f"{split}.jsonl")))
        assert (report["ref_words"]
                == report["hits"] + report["substitutions"] + report["deletions"])
    assert result["reports"]["test"]["utterances"] == 4


def test_progress_bar_off_trains_without_a_progress_bar_callback(trained, tiny_dir, tmp_path):
    """trainer.enable_progress_bar=false (the tests' setting) leaves the progress bar callback out
    of the run; on, the callbacks group's bar (Rich by default, tqdm when its _target_ says so) is
    in."""
    _, _, seen = trained
    assert seen.types and not [t for t in seen.types if issubclass(t, ProgressBar)]
    for extra, kind in [([], RichProgressBar),
                        (["callbacks.progress_bar._target_="
                          "pytorch_lightning.callbacks.TQDMProgressBar"], TQDMProgressBar)]:
        cfg = tiny_train_cfg(tiny_dir, tmp_path, ["trainer.enable_progress_bar=true", *extra])
        trainer = build_trainer(cfg, instantiate_all(cfg.callbacks), {})
        assert [type(c) for c in trainer.callbacks if isinstance(c, ProgressBar)] == [kind]
    cfg = tiny_train_cfg(tiny_dir, tmp_path)
    assert not [c for c in build_trainer(cfg, instantiate_all(cfg.callbacks), {}).callbacks
                if isinstance(c, ProgressBar)]


def test_evaluate_reproduces_training_report(trained, tmp_path):
    out, result, _ = trained
    reports = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path), progress=False)
    for split in ("dev", "test"):
        for key in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances"):
            assert reports[split][key] == result["reports"][split][key]
        assert ((tmp_path / split / "hyps.txt").read_text()
                == (out / "decode" / split / "hyps.txt").read_text())


def test_checkpoint_loads_weights_only_and_decodes(trained):
    out, _, _ = trained
    ckpt = _load(out / "checkpoints" / "best.ckpt")
    # the recipe's
    assert ckpt["asr"]["model"]["hidden_size"] == 64 and ckpt["asr"]["tokenizer"]["type"] == "char"
    module = Recognizer.load(out / "checkpoints" / "best.ckpt")
    assert not module.training
    log_probs, lengths = module(torch.zeros(1, 16000), torch.tensor([16000]))
    assert (log_probs.shape[-1] == module.tokenizer.num_classes
            and int(lengths) == log_probs.shape[1])


def test_resume_auto_continues_from_last(tiny_dir, tmp_path):
    first = train(tiny_train_cfg(tiny_dir, tmp_path, ["trainer.max_epochs=1"]))
    assert first["epochs"] == 1
    again = train(tiny_train_cfg(tiny_dir, tmp_path, ["trainer.max_epochs=2", "resume=auto"]))
    assert again["epochs"] == 2
    # 3 steps x 2 epochs: none replayed
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
    rows = (tmp_path / "logs" / "metrics.csv").read_text()
    epoch_col = rows.splitlines()[0].split(",").index("epoch")
    # the curves before the resume
    assert {r.split(",")[epoch_col] for r in rows.splitlines()[1:]} == {"0", "1"}
    # killed after the last epoch's last.ckpt (during the final evaluation): resume=auto has no
    # step left to train, and still ends with the run's curves, its evaluation and its report
    (tmp_path / "report.md").unlink()
    third = train(tiny_train_cfg(tiny_dir, tmp_path, ["trainer.max_epochs=2", "resume=auto"]))
    assert (third["epochs"] == 2
            and _load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6)
    assert (tmp_path / "logs" / "metrics.csv").read_text() == rows
    assert (third["reports"]["test"]["wer"] == again["reports"]["test"]["wer"]
            and (tmp_path / "report.md").is_file())


def test_misspelled_key_is_named():
    with pytest.raises(ConfigCompositionException, match="num_layerz"):
        compose_train(["model.num_layerz=2"])
    with pytest.raises((ConfigCompositionException, ConfigAttributeError), match="recipe"):
        compose_train(["recipe=nope"])


def test_issue_override_keys_exist():
    cfg = compose_train(["recipe=an4", "model.num_layers=2", "optim.lr=3e-3",
                         "trainer.max_epochs=5"])
    assert (cfg.model.num_layers == 2 and cfg.optim.optimizer.lr == 3e-3
            and cfg.trainer.max_epochs == 5)


def _run(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# keeps the default suite within 5 minutes on 2 cores; CI runs it (make test-slow)
@pytest.mark.slow
def test_cli_multirun_sweep(tiny_dir, tmp_path):
    proc = _run(["-m", "asr.train", "-m", *tiny_recipe_overrides(tiny_dir.parent),
                 "optim.lr=1e-3,3e-3", f"paths.exp_dir={tmp_path}", "model.hidden_size=16",
                 "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                 "trainer.enable_progress_bar=false"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted(Path(tmp_path).glob("tiny/multirun_*/*/checkpoints/best.ckpt"))
    assert len(ckpts) == 2
    lrs = sorted(_load(c)["optimizer_states"][0]["param_groups"][0]["initial_lr"] for c in ckpts)
    assert lrs == [1e-3, 3e-3]
    assert proc.stdout.count("WER %") == 2
    # the multirun's Hydra callback: one row per learning rate and split
    seeds = next(tmp_path.glob("tiny/multirun_*/seeds.md")).read_text()
    assert "optim.lr=0.001 | test | 1 |" in seeds and "optim.lr=0.003 | dev | 1 |" in seeds
    # each run printed its own table: the test row holds its report's WER (evaluate's command line
    # on the same checkpoint: test_end_to_end.py)
    for ckpt in ckpts:
        report = json.loads((ckpt.parent.parent / "decode" / "test" / "report.json").read_text())
        assert re.search(rf"^test\s+4\s+4\s+{100 * report['wer']:.2f}\s", proc.stdout, re.M)


def test_resume_auto_without_a_run_dir_names_the_fix(tiny_dir, tmp_path):
    """resume=auto without hydra.run.dir: Hydra names a new dir by the time, which holds no
    last.ckpt; rather than a silent fresh start, one line naming the setting and the newest run of
    the recipe that has a last.ckpt."""
    for run, mtime in (("2026-01-01_00-00-00", 1_000_000), ("2026-01-02_00-00-00", 2_000_000),
                       ("2026-01-03_00-00-00", None)):
        ckpt = tmp_path / "exp" / "tiny" / run / "checkpoints" / "last.ckpt"
        if mtime is None:  # the newest folder holds no last.ckpt: not the one to continue
            ckpt.parent.mkdir(parents=True)
            continue
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    proc = _run(["-m", "asr.train", *tiny_recipe_overrides(tiny_dir.parent),
                 f"paths.exp_dir={tmp_path / 'exp'}", "resume=auto"], cwd=ROOT, timeout=300)
    newest = tmp_path / "exp" / "tiny" / "2026-01-02_00-00-00"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "hydra.run.dir was not given" in proc.stderr and f"with one is {newest}" in proc.stderr
    assert "add hydra.run.dir=<the run to continue>" in proc.stderr


def test_cli_errors_are_one_line(tmp_path):
    """evaluate's own error; train's: test_faults.py (a missing manifest, a mistyped model key),
    and a misspelt key is Hydra's composition error (test_misspelled_key_is_named)."""
    proc = _run(["-m", "asr.evaluate", f"checkpoint={tmp_path}/missing.ckpt"], cwd=ROOT)
    assert (proc.returncode == 2 and "missing.ckpt does not exist" in proc.stderr
            and "Traceback" not in proc.stderr)


def test_bf16_autocast_path_on_cpu(tiny_dir, tmp_path):
    """The GPU recipes' precision (bf16-mixed) runs on CPU too: features and CTC stay fp32, loss
    finite."""
    result = train(tiny_train_cfg(tiny_dir, tmp_path,
                                  ["trainer.precision=bf16-mixed", "eval_manifests=null"]))
    ckpt = _load(result["best_checkpoint"])
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values()
               if v.is_floating_point())
    module = Recognizer.load(result["best_checkpoint"]).train()
    audio = torch.randn(2, 16000) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = module.features(audio, torch.tensor([16000, 12000]))
        log_probs, lengths = module(audio, torch.tensor([16000, 12000]))
    assert feats.dtype == torch.float32 and log_probs.dtype == torch.float32
    assert torch.isfinite(log_probs).all() and result["reports"] == {}
    assert all(float(x) == float(x) for x in _column(tmp_path, "train/loss"))  # no NaN logged
    # the guard clips (not Lightning, which refuses to for a fused optimiser under mixed
    # precision): fused AdamW
    last = _load(Path(result["best_checkpoint"]).with_name("last.ckpt"))
    assert last["optimizer_states"][0]["param_groups"][0]["fused"] is True


# -------------------------------------------------------------------------- callbacks=[default,ema]
def test_weight_average_is_what_checkpoints_and_decoding_use(tiny_dir, tmp_path):
    """callbacks=[default,ema]: the average lags the trained weights, is what the checkpoint's
    state_dict holds (the raw weights go to current_model_state), survives a resume, and is the
    model Recognizer.load returns."""
    cfg = ["callbacks=[default,ema]", "callbacks.ema.decay=0.9", "eval_manifests=null"]
    train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    ckpt = _load(tmp_path / "checkpoints" / "last.ckpt")
    assert int(ckpt["averaging_state"]["n_averaged"]) == 3  # one update per step
    name = "model.lstm.layers.0.fwd.weight_hh_l0"
    key = f"recognizer.{name}"
    assert key in ckpt["state_dict"] and not torch.equal(ckpt["state_dict"][key],
                                                         ckpt["current_model_state"][key])

    module = Recognizer.load(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.equal(module.state_dict()[name], ckpt["state_dict"][key])

    again = train(tiny_train_cfg(tiny_dir, tmp_path,
                                 [*cfg, "trainer.max_epochs=2", "resume=auto"]))
    assert again["epochs"] == 2
    resumed = _load(tmp_path / "checkpoints" / "last.ckpt")
    assert int(resumed["averaging_state"]["n_averaged"]) == 6  # counted on from the checkpoint
    assert resumed["global_step"] == 6

    # the k best epochs' weights-only files would hold the raw weights, not the average: refused
    # before training
    with pytest.raises(ValueError,
                       match="callbacks.average_best and callbacks.ema do not combine"):
        train(tiny_train_cfg(tiny_dir, tmp_path / "both",
                             ["callbacks=[default,ema,average_best]"]))
    assert not (tmp_path / "both" / "checkpoints").exists()


def test_weight_average_update_rule():
    update = ema_update(0.9)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(1))  # decay min(0.9, 2/11): early updates mostly copy
    assert torch.allclose(averaged[0], torch.full((3,), 1 - 2 / 11))
    averaged = [torch.zeros(3)]
    update(averaged, current, torch.tensor(1000))  # later: the configured decay
    assert torch.allclose(averaged[0], torch.full((3,), 0.1))
    with pytest.raises(InstantiationException,
                       match=r"callbacks.ema.decay must be in \(0, 1\)"):
        instantiate_all(compose_train(["recipe=tiny", "callbacks=[default,ema]",
                                       "callbacks.ema.decay=1.0",
                                       "paths.output_dir=unused"]).callbacks)


def test_last_checkpoint_is_written_every_epoch_even_without_a_new_best(tiny_dir, tmp_path):
    """resume=auto must lose at most one epoch: last.ckpt follows every epoch, not only the
    improving ones (Lightning 2.6's save_last=True writes it only when best.ckpt is written)."""

    # runs before the checkpoint callbacks (Lightning puts those last)
    class WorseEachEpoch(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            trainer.callback_metrics["val/wer"] = torch.tensor(float(trainer.current_epoch))

    train(tiny_train_cfg(tiny_dir, tmp_path, ["trainer.max_epochs=3", "eval_manifests=null"]),
          extra_callbacks=[WorseEachEpoch()])
    # val/wer 0 after epoch 1, never beaten
    assert _load(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 3
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 9  # 3 steps x 3 epochs


def test_global_normalisation_statistics_travel_with_the_checkpoint(tiny_dir, tmp_path):
    """features.normalize=global: statistics from the training manifest, written to
    global_stats.json, saved in best.ckpt and used by evaluate (which reproduces training's
    table)."""
    result = train(tiny_train_cfg(tiny_dir, tmp_path,
                                  ["features.normalize=global", "global_stats_utterances=20"]))
    stats = json.loads((tmp_path / "global_stats.json").read_text())
    assert stats["utterances"] == 20 and len(stats["mean"]) == len(stats["std"]) == 80
    module = Recognizer.load(result["best_checkpoint"])
    assert torch.allclose(module.features.global_mean, torch.tensor(stats["mean"]))
    assert torch.allclose(module.features.global_std, torch.tensor(stats["std"]))
    assert not torch.allclose(module.features.global_std, torch.ones(80))
    again = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path / "again"),
                                progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


# ------------------------------------------------------------------------------------ inter_ctc=...
def test_intermediate_ctc_loss_in_training(tiny_dir, tmp_path):
    """inter_ctc=ctc: the logged training loss mixes the last layer's CTC (train/ctc_last) with
    layer 1's; settings out of range fail before any data is read for training, naming the
    setting."""
    cfg = ["inter_ctc=ctc", "inter_ctc.weight=0.5", "inter_ctc.layer=1", "eval_manifests=null"]
    train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    totals = [float(x) for x in _column(tmp_path, "train/loss")]
    lasts = [float(x) for x in _column(tmp_path, "train/ctc_last")]
    assert len(totals) == len(lasts) == 3 and all(abs(t - la) > 1e-3
                                                  for t, la in zip(totals, lasts, strict=True))
    with pytest.raises(InstantiationException,
                       match=r"inter_ctc.layer must be 1..1 \(below model.num_layers=2\)"):
        train(tiny_train_cfg(tiny_dir, tmp_path / "bad", ["inter_ctc=ctc", "inter_ctc.layer=2"]))
    with pytest.raises(InstantiationException, match="needs model.num_layers >= 2"):
        train(tiny_train_cfg(tiny_dir, tmp_path / "one", ["inter_ctc=ctc", "model.num_layers=1"]))
    assert (not (tmp_path / "bad" / "checkpoints").exists()
            and not (tmp_path / "one" / "checkpoints").exists())


def test_without_intermediate_ctc_only_the_final_loss_is_logged(trained):
    out, _, _ = trained
    assert (_column(out, "train/loss")
            and "train/ctc_last" not in (out / "logs" / "metrics.csv").read_text())


def test_self_conditioned_ctc_trains_and_decodes_from_its_checkpoint(tiny_dir, tmp_path):
    """inter_ctc.self_condition=true: the model gets the conditioning projection, its checkpoint
    rebuilds the same conditioned network (evaluation reproduces training's WER), and it refuses to
    run without the intermediate loss."""
    cfg = ["inter_ctc=ctc", "inter_ctc.weight=0.3", "inter_ctc.layer=1",
           "inter_ctc.self_condition=true"]
    result = train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    state = _load(result["best_checkpoint"])
    assert state["asr"]["model"]["condition_layer"] == 1
    # 64 units each way
    assert state["state_dict"]["recognizer.model.condition_proj.weight"].shape == (2 * 64, 29)
    again = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path / "again"),
                                progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]
    with pytest.raises(InstantiationException, match=r"inter_ctc.weight must be in \(0, 1\)"):
        train(tiny_train_cfg(tiny_dir, tmp_path / "bad",
                             ["inter_ctc=self_conditioned", "inter_ctc.weight=0"]))


def test_weight_noise_perturbs_forward_and_backward_only(tiny_dir, tmp_path):
    """callbacks=[default,weight_noise]: with lr=0 the optimiser moves nothing, so after real
    training steps the weights must be back where they started (noise taken off), while the losses
    differ from a noise-free run's."""
    def run(out, callbacks):
        cfg = ["optim.lr=0", "optim.weight_decay=0", "eval_manifests=null", *callbacks]
        train(tiny_train_cfg(tiny_dir, out, cfg))
        return _load(out / "checkpoints" / "last.ckpt")["state_dict"], _column(out, "train/loss")

    clean, clean_losses = run(tmp_path / "clean", [])
    noise = ["callbacks=[default,weight_noise]", "callbacks.weight_noise.std=0.3"]
    noisy, noisy_losses = run(tmp_path / "noisy", noise)
    for k, v in clean.items():
        if k.startswith("recognizer.model."):
            # same seed, same init, noise removed every step
            assert torch.allclose(noisy[k], v, atol=1e-6), k
    assert len(noisy_losses) == 3 and noisy_losses != clean_losses
    # start_epoch: no noise before it, so a 1-epoch run with start_epoch=1 is the clean run
    _, late_losses = run(tmp_path / "late", [*noise, "callbacks.weight_noise.start_epoch=1"])
    assert late_losses == clean_losses


def test_hierarchical_ctc_characters_under_subwords(tiny_dir, tmp_path):
    """inter_ctc.tokenizer=char under tokenizer=bpe: the intermediate layer gets a character output
    layer of its own, trained on the same transcripts re-encoded as characters; the checkpoint
    decodes with the sub-words."""
    cfg = ["tokenizer=bpe", "tokenizer.vocab_size=40",
           f"tokenizer.model_path={tmp_path}/bpe40.model", "inter_ctc=ctc", "inter_ctc.weight=0.3",
           "inter_ctc.layer=1", "inter_ctc.tokenizer=char"]
    result = train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    state = _load(result["best_checkpoint"])
    assert (state["asr"]["model"]["inter_classes"] == 29
            and state["asr"]["tokenizer"]["type"] == "sentencepiece")
    assert state["state_dict"]["recognizer.model.inter_classifier.weight"].shape == (29, 2 * 64)
    module = Recognizer.load(result["best_checkpoint"])
    assert module.model.inter_classifier is not None and module.tokenizer.num_classes > 29
    again = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path / "again"),
                                progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


def test_word_model_trains_with_characters_below(tiny_dir, tmp_path):
    """tokenizer=word with inter_ctc=self_conditioned (the AN4 recipe's pair): one class per
    training word (plus characters for others), character CTC on the layer below with
    self-conditioning; the vocabulary travels in the checkpoint, and evaluation reproduces
    training's WER."""
    cfg = ["tokenizer=word", "inter_ctc=self_conditioned", "model.subsampling_factor=4"]
    result = train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    state = _load(result["best_checkpoint"])
    words = state["asr"]["tokenizer"]["words"].split()
    counts = Counter(w for u in read_manifest(tiny_dir / "train.jsonl") for w in u.text.split())
    assert state["asr"]["tokenizer"]["type"] == "word" and sorted(words) == sorted(counts)
    # most frequent first
    assert [counts[w] for w in words] == sorted(counts.values(), reverse=True)
    assert state["state_dict"]["recognizer.model.classifier.weight"].shape[0] == 1 + len(words) + 28
    # blank + characters
    assert state["state_dict"]["recognizer.model.inter_classifier.weight"].shape[0] == 29
    assert state["asr"]["model"]["condition_layer"] == 1  # the middle of 2 layers
    again = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path / "again"),
                                progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


def test_intermediate_labels_are_made_from_the_text(tiny_dir):
    """The dataset encodes each transcript with every tokenizer (the model's, then the intermediate
    CTC's): the second label spells the same text in its own units, and collate pads it beside the
    first."""
    main, chars = CharTokenizer(" abcdefghijklmnopqrstuvwxyz'"), CharTokenizer(" abcdefghij")
    audio = read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath
    utts = [Utterance(audio, 1.0, text, uid) for text, uid in (("A bad  cafe", "x"), ("hi", "y"))]
    batch = collate([AudioDataset(utts, [main, chars])[i] for i in range(2)])
    assert batch.texts == ["a bad cafe", "hi"] and batch.ids == ["x", "y"]
    for targets, lengths, tok in ((batch.targets, batch.target_lengths, main),
                                  (batch.inter_targets, batch.inter_target_lengths, chars)):
        assert [tok.decode(t[:n].tolist())
                for t, n in zip(targets, lengths, strict=True)] == batch.texts
    assert batch.inter_targets.shape == (2, 10) and batch.inter_target_lengths.tolist() == [10, 2]


# --------------------------------------------------- callbacks=[default,average_best,validate_from]
def test_average_best_keeps_the_k_best_epochs_and_picks_on_validation(tiny_dir, tmp_path):
    """callbacks.average_best k=3 select=dev: the 3 best epochs' weights go to checkpoints/top/;
    their mean becomes best.ckpt only if it scores no worse on the validation manifest than the
    best epoch, and evaluation reproduces what training printed. select=always: the mean replaces
    best.ckpt whatever the two validation WERs are."""
    cfg = ["callbacks=[default,average_best]", "callbacks.average_best.k=3",
           "callbacks.average_best.select=dev", "trainer.max_epochs=4",
           "trainer.limit_train_batches=4"]
    result = train(tiny_train_cfg(tiny_dir, tmp_path, cfg))
    top = sorted((tmp_path / "checkpoints" / "top").glob("*.ckpt"))
    assert len(top) == 3
    sel = result["selection"]
    assert sorted(sel["averaged"]) == [str(p) for p in top]
    scores = [_load(p)["val_wer"] for p in sel["averaged"]]
    assert scores == sorted(scores)  # best first
    best = _load(result["best_checkpoint"])
    if sel["chosen"] == "average":
        assert (sel["val_wer_average"] <= sel["val_wer_best_epoch"]
                and result["best_val_wer"] == sel["val_wer_average"])
        assert best["averaged_from"] == sel["averaged"]
        bias = "recognizer.model.classifier.bias"
        first = _load(sel["averaged"][0])["state_dict"]
        mean = torch.stack([_load(p)["state_dict"][bias] for p in sel["averaged"]]).mean(0)
        assert torch.allclose(best["state_dict"][bias], mean, atol=1e-6)
        assert not torch.equal(best["state_dict"][bias], first[bias])
    else:
        assert sel["val_wer_average"] > sel["val_wer_best_epoch"] and "averaged_from" not in best
    assert not (tmp_path / "checkpoints" / "averaged.ckpt").exists()
    again = evaluate_checkpoint(result["best_checkpoint"], out_dir=str(tmp_path / "again"),
                                progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]
    assert (json.loads((tmp_path / "run.json").read_text())["model_selection"]["chosen"]
            == sel["chosen"])

    # select=always over the same k epochs: their mean replaces the best epoch's file in any case
    shutil.copy(result["best_checkpoint"], tmp_path / "epoch_best.ckpt")
    always = AverageBest(k=3, select="always", best_path=str(tmp_path / "epoch_best.ckpt"),
                         dirpath=str(tmp_path / "checkpoints" / "top"))
    always.best_k_models = {p: torch.tensor(_load(p)["val_wer"]) for p in sel["averaged"]}
    dev = {"dev": str(tiny_dir / "dev.jsonl")}
    chosen = always.choose(
        lambda p: evaluate_checkpoint(p, dev, str(tmp_path / "x"), "cpu",
                                      progress=False)["dev"]["wer"])
    assert chosen["chosen"] == "average" and chosen["averaged"] == sel["averaged"]
    assert chosen["val_wer_best_epoch"] is not None and chosen["val_wer_average"] is not None
    assert _load(tmp_path / "epoch_best.ckpt")["averaged_from"] == sel["averaged"]
    assert not (tmp_path / "averaged.ckpt").exists()


def test_average_select_typo_fails_before_training(tiny_dir, tmp_path):
    """A misspelt callbacks.average_best.select is caught before any epoch runs, not after the last
    one."""
    with pytest.raises(InstantiationException, match="select='alway'.*'dev'.*'always'"):
        train(tiny_train_cfg(tiny_dir, tmp_path, ["callbacks=[default,average_best]",
                                                  "callbacks.average_best.select=alway"]))
    with pytest.raises(InstantiationException, match="callbacks.average_best.k must be >= 2"):
        train(tiny_train_cfg(tiny_dir, tmp_path, ["callbacks=[default,average_best]",
                                                  "callbacks.average_best.k=1"]))
    assert not (tmp_path / "checkpoints").exists()


def test_validate_from_skips_early_validation_keeps_the_weights_and_resumes(tiny_dir, tmp_path):
    """callbacks.validate_from.fraction=0.5 over 4 epochs: validation (val rows, best.ckpt) only
    after epochs 3 and 4, the same weights as validating every epoch, and last.ckpt written at the
    end of the unvalidated epochs too, so a run killed in epoch 2 resumes from epoch 1's end, to
    the same weights as the run that was not killed."""

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    def val_epochs(run):
        rows = (run / "logs" / "metrics.csv").read_text().splitlines()
        cols = rows[0].split(",")
        epoch, wer = cols.index("epoch"), cols.index("val/wer")
        return sorted({int(r.split(",")[epoch]) for r in rows[1:] if r.split(",")[wer]})

    def last(run):
        return _load(run / "checkpoints" / "last.ckpt")

    every, later, crashed = tmp_path / "every", tmp_path / "later", tmp_path / "crashed"
    cfg = ["trainer.max_epochs=4", "eval_manifests=null"]
    late = [*cfg, "callbacks=[default,validate_from]", "callbacks.validate_from.fraction=0.5"]
    train(tiny_train_cfg(tiny_dir, every, cfg))
    result = train(tiny_train_cfg(tiny_dir, later, late))
    assert val_epochs(every) == [0, 1, 2, 3] and val_epochs(later) == [2, 3]
    a, b = last(every), last(later)
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # 32-bit: AdamW's fused kernels
    assert a["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert _load(result["best_checkpoint"])["epoch"] in (2, 3)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_train_cfg(tiny_dir, crashed, late), extra_callbacks=[Crash()])
    assert (last(crashed)["global_step"] == 3
            and not (crashed / "checkpoints" / "best.ckpt").exists())
    resumed = train(tiny_train_cfg(tiny_dir, crashed, [*late, "resume=auto"]))
    assert (resumed["epochs"] == 4 and last(crashed)["global_step"] == 12
            and val_epochs(crashed) == [2, 3])
    # the random generators' states travel in last.ckpt: the resumed run ends with the
    # uninterrupted one's weights
    c = last(crashed)
    assert all(torch.equal(b["state_dict"][k], c["state_dict"][k]) for k in b["state_dict"])


def test_validate_from_out_of_range_fails_before_training(tiny_dir, tmp_path):
    for bad in ("1.0", "-0.1"):
        with pytest.raises(InstantiationException,
                           match=r"callbacks.validate_from.fraction=.* "
                                 r"must be a fraction of trainer.max_epochs"):
            train(tiny_train_cfg(tiny_dir, tmp_path / bad,
                                 ["trainer.max_epochs=4", "callbacks=[default,validate_from]",
                                  f"callbacks.validate_from.fraction={bad}"]))
        assert not (tmp_path / bad / "checkpoints").exists()
