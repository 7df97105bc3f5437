"""The real entry points on real AN4 audio with a real Lightning Trainer on CPU (a few steps)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError

from asr.evaluate import evaluate
from asr.module import ASRModule
from asr.train import select_average, train
from tests.conftest import ROOT, SHARED, compose_train, tiny_train_cfg


@pytest.fixture(scope="module")
def trained(an4_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_train_cfg(an4_dir, out))
    return out, result


def test_train_writes_checkpoints_logs_and_reports(trained):
    out, result = trained
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
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
        assert len(hyps) == len(refs) == report["utterances"]
        assert report["ref_words"] == report["hits"] + report["substitutions"] + report["deletions"]
    assert result["reports"]["test"]["utterances"] == 130


def test_evaluate_reproduces_training_report(trained, tmp_path):
    out, result = trained
    reports = evaluate(result["best_checkpoint"], out_dir=str(tmp_path), progress=False)
    for split in ("dev", "test"):
        for key in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances"):
            assert reports[split][key] == result["reports"][split][key]
        assert (tmp_path / split / "hyps.txt").read_text() == (out / "decode" / split / "hyps.txt").read_text()


def test_checkpoint_loads_weights_only_and_decodes(trained, an4_dir):
    out, _ = trained
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["asr"]["model"]["hidden_size"] == 32 and ckpt["asr"]["tokenizer"]["type"] == "word"  # the AN4 recipe's
    module = ASRModule.load_for_inference(out / "checkpoints" / "best.ckpt")
    assert not module.training
    log_probs, lengths = module(torch.zeros(1, 16000), torch.tensor([16000]))
    assert log_probs.shape[-1] == module.tokenizer.num_classes and int(lengths) == log_probs.shape[1]


def test_resume_auto_continues_from_last(an4_dir, tmp_path):
    first = train(tiny_train_cfg(an4_dir, tmp_path, ["trainer.max_epochs=1"]))
    assert first["epochs"] == 1
    again = train(tiny_train_cfg(an4_dir, tmp_path, ["trainer.max_epochs=2", "resume=auto"]))
    assert again["epochs"] == 2
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6  # 3 steps per epoch, 2 epochs: nothing replayed or skipped
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    epoch_col = rows[0].split(",").index("epoch")
    assert {r.split(",")[epoch_col] for r in rows[1:]} == {"0", "1"}  # the curves before the resume survive


def test_misspelled_key_is_named():
    with pytest.raises(ConfigCompositionException, match="num_layerz"):
        compose_train(["model.num_layerz=2"])
    with pytest.raises((ConfigCompositionException, ConfigAttributeError), match="recipe"):
        compose_train(["recipe=nope"])


def test_issue_override_keys_exist():
    cfg = compose_train(["recipe=an4", "model.num_layers=2", "optim.lr=3e-3", "trainer.max_epochs=5"])
    assert cfg.model.num_layers == 2 and cfg.optim.optimizer.lr == 3e-3 and cfg.trainer.max_epochs == 5


def _run(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _cli_overrides(an4_dir):
    return [
        f"paths.data_dir={an4_dir.parent}", f"prepare.data_dir={an4_dir}", f"paths.download_dir={SHARED}",
        "model.hidden_size=16", "model.num_layers=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.num_workers=0",
    ]


def test_cli_multirun_sweep_then_evaluate(an4_dir, tmp_path):
    proc = _run(["-m", "asr.train", "-m", "recipe=an4", "optim.lr=1e-3,3e-3", f"paths.exp_dir={tmp_path}",
                 *_cli_overrides(an4_dir)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted(Path(tmp_path).glob("an4/multirun_*/*/checkpoints/best.ckpt"))
    assert len(ckpts) == 2
    lrs = sorted(
        torch.load(c, weights_only=True)["optimizer_states"][0]["param_groups"][0]["initial_lr"] for c in ckpts
    )
    assert lrs == [1e-3, 3e-3]
    assert proc.stdout.count("WER %") == 2
    ev = _run(["-m", "asr.evaluate", f"checkpoint={ckpts[0]}", f"out_dir={tmp_path / 'ev'}"], cwd=ROOT)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((ckpts[0].parent.parent / "decode" / "test" / "report.json").read_text())
    test_row = next(line for line in ev.stdout.splitlines() if line.startswith("test "))  # not the tmp path
    assert f"{100 * report['wer']:.2f}" in test_row


def test_cli_errors_are_one_line(tmp_path):
    proc = _run(["-m", "asr.evaluate", f"checkpoint={tmp_path}/missing.ckpt"], cwd=ROOT)
    assert proc.returncode == 2 and "missing.ckpt does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(["-m", "asr.train", "model.num_layerz=3"], cwd=ROOT)
    assert proc.returncode != 0 and "num_layerz" in proc.stderr


def test_bf16_autocast_path_on_cpu(an4_dir, tmp_path):
    """The GPU recipe's precision (bf16-mixed) runs on CPU too: features and CTC stay fp32, loss finite."""
    result = train(tiny_train_cfg(an4_dir, tmp_path, ["trainer.precision=bf16-mixed", "eval_manifests=null"]))
    ckpt = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    module = ASRModule.load_for_inference(result["best_checkpoint"]).train()
    audio = torch.randn(2, 16000) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = module.features(audio, torch.tensor([16000, 12000]))
        log_probs, lengths = module(audio, torch.tensor([16000, 12000]))
    assert feats.dtype == torch.float32 and log_probs.dtype == torch.float32
    assert torch.isfinite(log_probs).all() and result["reports"] == {}
    # Lightning cannot clip a fused optimiser's gradients under mixed precision: AdamW's fused kernels stay off
    last = torch.load(Path(result["best_checkpoint"]).with_name("last.ckpt"), map_location="cpu", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["fused"] is False



def test_weight_average_is_what_validation_and_decoding_use(an4_dir, tmp_path):
    """optim.ema_decay: the average lags the trained weights, survives a resume, and is the model that
    load_for_inference (evaluate, transcribe, export) returns."""
    cfg = ["optim.ema_decay=0.9", "trainer.max_epochs=1", "eval_manifests=null"]
    train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert int(state["ema_model.n_averaged"]) == 3  # one update per step
    name = "lstm.layers.0.fwd.weight_hh_l0"
    assert not torch.equal(state[f"ema_model.module.{name}"], state[f"model.{name}"])

    module = ASRModule.load_for_inference(tmp_path / "checkpoints" / "last.ckpt")
    assert module.ema_model is None
    assert torch.equal(module.model.state_dict()[name], state[f"ema_model.module.{name}"])

    again = train(tiny_train_cfg(an4_dir, tmp_path, [*cfg, "trainer.max_epochs=2", "resume=auto"]))
    assert again["epochs"] == 2
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(resumed["state_dict"]["ema_model.n_averaged"]) == 6  # counted on from the checkpoint


def test_weight_average_update_rule():
    from asr.module import _ema_update

    update = _ema_update(0.9)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(1))  # decay min(0.9, 2/11): early updates mostly copy
    assert torch.allclose(averaged[0], torch.full((3,), 1 - 2 / 11))
    averaged = [torch.zeros(3)]
    update(averaged, current, torch.tensor(1000))  # later: the configured decay
    assert torch.allclose(averaged[0], torch.full((3,), 0.1))


def test_last_checkpoint_is_written_every_epoch_even_without_a_new_best(an4_dir, tmp_path):
    """resume=auto must lose at most one epoch: last.ckpt follows every epoch, not only the improving ones
    (Lightning 2.6's save_last=True writes it only when best.ckpt is written)."""
    import pytorch_lightning as L

    class WorseEachEpoch(L.Callback):  # runs before the checkpoint callbacks (Lightning puts those last)
        def on_validation_end(self, trainer, pl_module):
            trainer.callback_metrics["val/wer"] = torch.tensor(float(trainer.current_epoch))

    # average_best=1: best.ckpt stays the best epoch's (the recipe's 5-epoch mean would replace it)
    train(tiny_train_cfg(an4_dir, tmp_path, ["trainer.max_epochs=3", "eval_manifests=null", "average_best=1"]),
          extra_callbacks=[WorseEachEpoch()])
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 3  # val/wer 0 after the first epoch, never beaten
    assert last["global_step"] == 9  # 3 steps x 3 epochs


def test_global_normalisation_statistics_travel_with_the_checkpoint(an4_dir, tmp_path):
    """features.normalize=global: statistics from the training manifest, written to global_stats.json, saved in
    best.ckpt and used by evaluate (which reproduces training's table)."""
    result = train(tiny_train_cfg(an4_dir, tmp_path, ["features.normalize=global", "global_stats_utterances=30"]))
    stats = json.loads((tmp_path / "global_stats.json").read_text())
    assert stats["utterances"] == 30 and len(stats["mean"]) == len(stats["std"]) == 80
    module = ASRModule.load_for_inference(result["best_checkpoint"])
    assert torch.allclose(module.features.global_mean, torch.tensor(stats["mean"]))
    assert torch.allclose(module.features.global_std, torch.tensor(stats["std"]))
    assert not torch.allclose(module.features.global_std, torch.ones(80))
    again = evaluate(result["best_checkpoint"], out_dir=str(tmp_path / "again"), progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


def test_intermediate_ctc_loss_in_training(an4_dir, tmp_path):
    """inter_ctc.weight > 0: the logged training loss mixes the last layer's CTC (train/ctc_last) with layer 1's."""
    cfg = ["model.num_layers=2", "inter_ctc.weight=0.5", "inter_ctc.layer=1", "eval_manifests=null"]
    train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    losses = [(float(r.split(",")[head.index("train/loss")]), float(r.split(",")[head.index("train/ctc_last")]))
              for r in rows[1:] if r.split(",")[head.index("train/loss")]]
    assert len(losses) == 3 and all(abs(total - last) > 1e-3 for total, last in losses)
    with pytest.raises(ValueError, match=r"inter_ctc.layer must be 1..1 \(below model.num_layers=2\)"):
        train(tiny_train_cfg(an4_dir, tmp_path / "bad", ["inter_ctc.weight=0.3", "inter_ctc.layer=2"]))
    with pytest.raises(ValueError, match="needs model.num_layers >= 2"):
        train(tiny_train_cfg(an4_dir, tmp_path / "one", ["model.num_layers=1"]))  # the AN4 recipe has it on


def test_an4_recipe_puts_self_conditioned_intermediate_ctc_on_the_middle_layer(an4_dir, tmp_path):
    from asr.text import CharTokenizer
    from asr.train import build_module

    for layers, middle in [(2, 1), (3, 2), (5, 3)]:
        module = build_module(tiny_train_cfg(an4_dir, tmp_path, [f"model.num_layers={layers}"]), CharTokenizer())
        assert module.inter_ctc_layer == module.model.config["condition_layer"] == middle
        assert module.inter_ctc_weight == 0.3 and module.features.normalize == "global"


def test_self_conditioned_ctc_trains_and_decodes_from_its_checkpoint(an4_dir, tmp_path):
    """inter_ctc.self_condition=true: the model gets the conditioning projection, its checkpoint rebuilds the same
    conditioned network (evaluation reproduces training's WER), and it refuses to run without the intermediate loss."""
    cfg = ["model.num_layers=2", "inter_ctc.weight=0.3", "inter_ctc.layer=1", "inter_ctc.self_condition=true"]
    result = train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    state = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    assert state["asr"]["model"]["condition_layer"] == 1
    assert state["state_dict"]["model.condition_proj.weight"].shape == (64, 29)
    again = evaluate(result["best_checkpoint"], out_dir=str(tmp_path / "again"), progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]
    with pytest.raises(ValueError, match="inter_ctc.weight > 0"):
        train(tiny_train_cfg(an4_dir, tmp_path / "bad", ["inter_ctc.weight=0", "inter_ctc.self_condition=true"]))


def test_weight_noise_perturbs_forward_and_backward_only(an4_dir, tmp_path):
    """optim.weight_noise: with lr=0 the optimiser moves nothing, so after real training steps the weights must be
    back where they started (noise taken off), while the losses differ from a noise-free run's."""
    def run(out, noise):
        cfg = ["optim.lr=0", "optim.weight_decay=0", f"optim.weight_noise={noise}", "eval_manifests=null"]
        train(tiny_train_cfg(an4_dir, out, cfg))
        state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        rows = (out / "logs" / "metrics.csv").read_text().splitlines()
        col = rows[0].split(",").index("train/loss")
        return state, [r.split(",")[col] for r in rows[1:] if r.split(",")[col]]

    clean, clean_losses = run(tmp_path / "clean", 0.0)
    noisy, noisy_losses = run(tmp_path / "noisy", 0.3)
    for k, v in clean.items():
        if k.startswith("model."):
            assert torch.allclose(noisy[k], v, atol=1e-6), k  # same seed, same init, noise removed every step
    assert len(noisy_losses) == 3 and noisy_losses != clean_losses


def test_hierarchical_ctc_characters_under_subwords(an4_dir, tmp_path):
    """inter_ctc.tokenizer=char under tokenizer=bpe: the intermediate layer gets a character output layer of its
    own, trained on the same transcripts re-encoded as characters; the checkpoint decodes with the sub-words."""
    cfg = ["tokenizer=bpe", "tokenizer.vocab_size=60", f"tokenizer.model_path={tmp_path}/bpe60.model",
           "model.num_layers=2", "inter_ctc.weight=0.3", "inter_ctc.layer=1", "inter_ctc.tokenizer=char"]
    result = train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    state = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    assert state["asr"]["model"]["inter_classes"] == 29 and state["asr"]["tokenizer"]["type"] == "sentencepiece"
    assert state["state_dict"]["model.inter_classifier.weight"].shape == (29, 64)
    module = ASRModule.load_for_inference(result["best_checkpoint"])
    assert module.model.inter_classifier is not None and module.tokenizer.num_classes > 29
    again = evaluate(result["best_checkpoint"], out_dir=str(tmp_path / "again"), progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


def test_word_model_trains_with_characters_below(an4_dir, tmp_path):
    """tokenizer=word: one class per training word (plus characters for others), character CTC on the layer below
    with self-conditioning; the vocabulary travels in the checkpoint, and evaluation reproduces training's WER."""
    cfg = ["tokenizer=word", "model.num_layers=2", "inter_ctc.weight=0.3", "inter_ctc.layer=1",
           "inter_ctc.tokenizer=char", "inter_ctc.self_condition=true", "model.subsampling_factor=4"]
    result = train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    state = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    words = state["asr"]["tokenizer"]["words"].split()
    assert state["asr"]["tokenizer"]["type"] == "word" and words[:2] == ["one", "two"]
    assert state["state_dict"]["model.classifier.weight"].shape[0] == 1 + len(words) + 28
    assert state["state_dict"]["model.inter_classifier.weight"].shape[0] == 29  # blank + characters
    again = evaluate(result["best_checkpoint"], out_dir=str(tmp_path / "again"), progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]


def test_retokenized_targets_spell_the_same_text():
    from asr.data import Batch
    from asr.text import CharTokenizer

    main, chars = CharTokenizer(" abcdefghijklmnopqrstuvwxyz'"), CharTokenizer(" abcdefghij")
    texts = ["a bad cafe", "hi"]
    ids = [main.encode(t) for t in texts]
    targets = torch.zeros(2, 10, dtype=torch.long)
    for i, t in enumerate(ids):
        targets[i, : len(t)] = torch.tensor(t)
    batch = Batch(torch.zeros(2, 5), torch.tensor([5, 5]), targets, torch.tensor([len(t) for t in ids]), ["x", "y"])
    module = ASRModule.__new__(ASRModule)
    module.tokenizer = main
    out = ASRModule._retokenize(module, batch, chars)
    assert [chars.decode(t[:n].tolist()) for t, n in zip(out.targets, out.target_lengths, strict=True)] == texts
    assert out.ids == ["x", "y"] and torch.equal(out.audio, batch.audio)


def test_average_best_keeps_the_k_best_epochs_and_picks_on_validation(an4_dir, tmp_path):
    """average_best=3: the 3 best epochs' weights go to checkpoints/top/; their mean becomes best.ckpt only if it
    scores no worse on the validation manifest than the best epoch, and evaluation reproduces what training printed."""
    cfg = ["average_best=3", "average_select=dev", "trainer.max_epochs=4", "trainer.limit_train_batches=4"]
    result = train(tiny_train_cfg(an4_dir, tmp_path, cfg))
    top = sorted((tmp_path / "checkpoints" / "top").glob("*.ckpt"))
    assert len(top) == 3
    sel = result["selection"]
    assert sorted(sel["averaged"]) == [str(p) for p in top]
    scores = [torch.load(p, map_location="cpu", weights_only=True)["val_wer"] for p in sel["averaged"]]
    assert scores == sorted(scores)  # best first
    best = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)
    if sel["chosen"] == "average":
        assert sel["val_wer_average"] <= sel["val_wer_best_epoch"] and result["best_val_wer"] == sel["val_wer_average"]
        assert best["averaged_from"] == sel["averaged"]
        first = torch.load(sel["averaged"][0], map_location="cpu", weights_only=True)["state_dict"]
        mean = torch.stack([torch.load(p, map_location="cpu", weights_only=True)["state_dict"]["model.classifier.bias"]
                            for p in sel["averaged"]]).mean(0)
        assert torch.allclose(best["state_dict"]["model.classifier.bias"], mean, atol=1e-6)
        assert not torch.equal(best["state_dict"]["model.classifier.bias"], first["model.classifier.bias"])
    else:
        assert sel["val_wer_average"] > sel["val_wer_best_epoch"] and "averaged_from" not in best
    assert not (tmp_path / "checkpoints" / "averaged.ckpt").exists()
    again = evaluate(result["best_checkpoint"], out_dir=str(tmp_path / "again"), progress=False)
    assert again["test"]["wer"] == result["reports"]["test"]["wer"]
    assert json.loads((tmp_path / "run.json").read_text())["model_selection"]["chosen"] == sel["chosen"]

    # average_select=always: the same k epochs, and their mean replaces best.ckpt whatever the two dev WERs are
    shutil.copy(result["best_checkpoint"], tmp_path / "epoch_best.ckpt")
    top_k = {p: torch.load(p, map_location="cpu", weights_only=True)["val_wer"] for p in sel["averaged"]}
    always = select_average(str(tmp_path / "epoch_best.ckpt"), top_k, str(an4_dir / "dev.jsonl"),
                            torch.device("cpu"), rule="always")
    assert always["chosen"] == "average" and always["averaged"] == sel["averaged"]
    assert always["val_wer_best_epoch"] is not None and always["val_wer_average"] is not None
    replaced = torch.load(tmp_path / "epoch_best.ckpt", map_location="cpu", weights_only=True)
    assert replaced["averaged_from"] == sel["averaged"]


def test_average_select_typo_fails_before_training(an4_dir, tmp_path):
    """A misspelt average_select is caught before any epoch runs, not after the last one."""
    with pytest.raises(ValueError, match="average_select='alway'.*'dev'.*'always'"):
        train(tiny_train_cfg(an4_dir, tmp_path, ["average_best=3", "average_select=alway"]))
    assert not (tmp_path / "checkpoints").exists()


def test_validate_from_skips_early_validation_keeps_the_weights_and_resumes(an4_dir, tmp_path):
    """validate_from=0.5 over 4 epochs: validation (val rows, best.ckpt) only after epochs 3 and 4, the same
    weights as validating every epoch, and last.ckpt written at the end of the unvalidated epochs too, so a run
    killed in epoch 2 resumes from epoch 1's end, to the same weights as the run that was not killed."""
    import pytorch_lightning as L

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
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    every, later, crashed = tmp_path / "every", tmp_path / "later", tmp_path / "crashed"
    cfg = ["trainer.max_epochs=4", "eval_manifests=null", "average_best=1"]
    train(tiny_train_cfg(an4_dir, every, cfg))
    result = train(tiny_train_cfg(an4_dir, later, [*cfg, "validate_from=0.5"]))
    assert val_epochs(every) == [0, 1, 2, 3] and val_epochs(later) == [2, 3]
    a, b = last(every), last(later)
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["optimizer_states"][0]["param_groups"][0]["fused"] is True  # 32-bit: AdamW's fused kernels
    assert torch.load(result["best_checkpoint"], map_location="cpu", weights_only=True)["epoch"] in (2, 3)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_train_cfg(an4_dir, crashed, [*cfg, "validate_from=0.5"]), extra_callbacks=[Crash()])
    assert last(crashed)["global_step"] == 3 and not (crashed / "checkpoints" / "best.ckpt").exists()
    resumed = train(tiny_train_cfg(an4_dir, crashed, [*cfg, "validate_from=0.5", "resume=auto"]))
    assert resumed["epochs"] == 4 and last(crashed)["global_step"] == 12 and val_epochs(crashed) == [2, 3]
    # the random generators' states travel in last.ckpt: the resumed run ends with the uninterrupted one's weights
    c = last(crashed)
    assert all(torch.equal(b["state_dict"][k], c["state_dict"][k]) for k in b["state_dict"])


def test_validate_from_out_of_range_fails_before_training(an4_dir, tmp_path):
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ValueError, match=r"validate_from=.* must be a fraction of trainer.max_epochs"):
            train(tiny_train_cfg(an4_dir, tmp_path / bad, ["trainer.max_epochs=4", f"validate_from={bad}"]))
        assert not (tmp_path / bad / "checkpoints").exists()
