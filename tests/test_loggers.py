"""Experiment trackers on a real CPU run of the tiny recipe: ``logger=[csv,mlflow]`` (a local SQLite
store) and ``logger=[csv,wandb]`` (offline) hold the run's ``val/wer`` and its resolved config, read
back with each tracker's own reader; a tracker that is not installed fails before any data is
touched."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from asr.train import instantiate_all, train
from asr.training.tracking import log_run_params, run_params
from tests.conftest import compose_train, tiny_recipe_overrides, tiny_train_cfg


def _column(run: Path, key: str) -> list[float]:
    """The non-empty values of one column of the run's metrics.csv."""
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index(key)
    return [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]


def test_mlflow_store_holds_val_wer_and_the_resolved_config(tiny_dir, tmp_path, monkeypatch):
    """The default store is <exp dir>/mlflow.db: experiment = the recipe's name, run = the run
    folder's name; every val/wer of metrics.csv is in the run, and the config's values are its
    params, each once (Lightning's own hyperparameter call adds none)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tmp_path / "exp"
    out = exp / "tiny" / "run-1"
    cfg = tiny_train_cfg(tiny_dir, out, ["logger=[csv,mlflow]", f"paths.exp_dir={exp}",
                                         "trainer.max_epochs=2"])
    result = train(cfg)
    uri = f"sqlite:///{exp}/mlflow.db"
    assert cfg.logger.mlflow.tracking_uri == uri and (exp / "mlflow.db").is_file()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    wers = [m.value for m in client.get_metric_history(run.info.run_id, "val/wer")]
    assert len(wers) == 2 and wers == pytest.approx(_column(out, "val/wer"))
    assert min(wers) == pytest.approx(result["best_val_wer"])
    params = run.data.params
    assert params["optim.lr"] == str(cfg.optim.lr) == "0.003"
    assert params["model.hidden_size"] == "64"  # the tiny recipe's, not the model group's 256
    assert params["optim.optimizer.betas"] == "[0.9, 0.98]"
    assert params["trainer.max_epochs"] == "2" and params["name"] == "tiny"
    assert not [k for k in params if k.startswith("module.model")]  # ${model}: under model.*
    assert len(params) == len(run_params(cfg))
    # the CSV logger got the same params (its hparams.yaml)
    hparams = yaml.safe_load((out / "logs" / "hparams.yaml").read_text())
    assert hparams["optim.lr"] == 0.003 and hparams["model.hidden_size"] == 64


def _wandb_records(path: Path) -> list:
    """The records of a run's ``.wandb`` file (what ``wandb sync`` uploads): a LevelDB-style log
    (a 7-byte ``:W&B`` header, 32 KiB blocks of chunks with a 7-byte header each) of wandb's
    ``Record`` protobufs. wandb has no Python reader of its own for it."""
    from wandb.proto.wandb_internal_pb2 import Record

    block, header = 32768, 7
    data, pos, chunks, records = path.read_bytes(), header, b"", []
    assert data[:4] == b":W&B"
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunks += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(Record.FromString(chunks))
            chunks = b""
    return records


def _key(item) -> str:
    """A config or history item's name (``nested_key`` holds it when ``key`` is empty)."""
    return item.key or ".".join(item.nested_key)


def test_wandb_offline_run_holds_val_wer_and_the_resolved_config(tiny_dir, tmp_path,
                                                                 monkeypatch):
    """Offline, with no account and nothing sent: the run is <run dir>/wandb/offline-run-*/
    run-*.wandb, named after the run folder, holding every val/wer of metrics.csv and the config's
    values; it is finished (exit code 0) when train() returns."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb-home"
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                       "WANDB_CONFIG_DIR": home / "config", "WANDB_CACHE_DIR": home / "cache",
                       "WANDB_DATA_DIR": home / "data", "WANDB_DIR": home}.items():
        monkeypatch.setenv(key, str(value))
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run-1"
    cfg = tiny_train_cfg(tiny_dir, out, ["logger=[csv,wandb]", "trainer.max_epochs=2"])
    train(cfg)
    assert wandb.run is None  # finished: the next run in this process starts its own
    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = {}
    for record in _wandb_records(run_file):
        records.setdefault(record.WhichOneof("record_type"), []).append(record)
    [run] = [record.run for record in records["run"]]
    assert run.display_name == "run-1" and run.project == "tiny"
    items = [item for record in records["config"] for item in record.config.update]
    config = {_key(item): json.loads(item.value_json) for item in items}
    assert len(items) == len(config) == len(run_params(cfg))  # each once
    assert config["optim.lr"] == 0.003 and config["model.hidden_size"] == 64
    assert config["optim.optimizer.betas"] == "[0.9, 0.98]"
    wers = [json.loads(item.value_json) for record in records["history"]
            for item in record.history.item if _key(item) == "val/wer"]
    assert len(wers) == 2 and wers == pytest.approx(_column(out, "val/wer"))
    assert [record.exit.exit_code for record in records["exit"]] == [0]


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_not_installed_fails_before_any_data_is_touched(name, tmp_path, monkeypatch):
    """The error names the package and the extra; the recipe's prepare step never ran."""
    monkeypatch.setitem(sys.modules, name, None)  # `import <name>` fails, as when not installed
    data, out = tmp_path / "data", tmp_path / "run"
    cfg = compose_train([*tiny_recipe_overrides(data), f"paths.output_dir={out}",
                         f"logger=[csv,{name}]"])
    with pytest.raises(ImportError, match=rf"logger\.{name} .* needs the {name} package.* "
                                          r"pip install -e '\.\[track\]'"):
        train(cfg)
    assert not data.exists() and not out.exists()


def test_run_params_flatten_the_resolved_config_and_the_default_loggers_take_them(tmp_path):
    """Dotted keys, interpolations resolved, lists as JSON text, names MLflow refuses made legal;
    a copy of a whole section and a missing value are left out. The default loggers (CSV,
    TensorBoard) write them to their hparams.yaml."""
    plain = OmegaConf.create({"a": {"b": 1, "c": [1, {"d": 2}], "e": "${a.b}"}, "copy": "${a}",
                              "dev+noise": None, "todo": "???"})
    assert run_params(plain) == {"a.b": 1, "a.c": '[1, {"d": 2}]', "a.e": 1, "dev_noise": None}
    cfg = compose_train([*tiny_recipe_overrides(tmp_path / "data"),
                         f"paths.output_dir={tmp_path / 'run'}"])
    loggers = instantiate_all(cfg.logger)
    assert sorted(loggers) == ["csv", "tensorboard"]
    log_run_params(loggers.values(), cfg)
    for logger in loggers.values():
        logger.save()
    for where in ("logs", "logs/tensorboard"):
        hparams = yaml.safe_load((tmp_path / "run" / where / "hparams.yaml").read_text())
        assert hparams["optim.lr"] == 0.003 and hparams["model.hidden_size"] == 64
