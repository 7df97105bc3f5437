"""The README's commands as written: a command a user copies must work."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data.manifest import read_manifest
from tests.conftest import ROOT

# Appended to the README's command: its defaults (3x256 model, 30 epochs) take ~50 s on a 2-core
# CPU for the same run; two epochs show the command works. No progress bar in a captured log.
SHORTER = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


def readme_section(title: str) -> str:
    """The text of README.md's ``## <title>`` section, up to the next ``## `` heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match[1]


def fenced_blocks(section: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```[^\n]*\n(.*?)^```", section, re.M | re.S)]


def test_readme_own_data_command_trains_evaluates_and_writes_the_run(tiny_dir, tmp_path):
    """README "## Your own data": manifests in its format under my/ (audio paths relative to the
    manifest), then its one command run as written from that folder."""
    blocks = fenced_blocks(readme_section("Your own data"))
    commands = [b for b in blocks if b.startswith("python ")]
    assert len(commands) == 1 and len(commands[0].splitlines()) == 1, commands
    command = shlex.split(commands[0])
    # the manifest line the README shows
    example = json.loads(next(b for b in blocks if b.startswith("{")))
    assert ({"audio_filepath", "duration", "text"} <= set(example)
            and not Path(example["audio_filepath"]).is_absolute())

    my = tmp_path / "my"
    for split, name in (("train", "train"), ("dev", "dev"), ("test", "test")):
        lines = []
        for u in read_manifest(tiny_dir / f"{split}.jsonl"):
            audio = my / "wav" / Path(u.audio_filepath).name
            audio.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(u.audio_filepath, audio)
            lines.append(json.dumps({"audio_filepath": f"wav/{audio.name}", "duration": u.duration,
                                     "text": u.text, "id": u.id}))
        (my / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    assert command[:3] == ["python", "-m", "asr.train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *command[1:], *SHORTER], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m[1]: int(m[2]) for m in re.finditer(r"^(dev|test)\s+(\d+)\s+\d+\s+[\d.]+\s+[\d.]+",
                                                 proc.stdout, re.M)}
    assert rows == {"dev": 5, "test": 4}, proc.stdout[-2000:]
    assert "WER %" in proc.stdout
    runs = list((tmp_path / "exp" / "custom").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "best.ckpt").is_file()
    assert (runs[0] / "decode" / "test" / "hyps.txt").is_file()


def test_readme_python_example_runs_as_written(tiny_checkpoint, tiny_dir, tmp_path):
    """README "## Use a model from Python": its export command (with a checkpoint in place of
    ``exp/an4/<run>/...``), then its Python block as written, from a folder where ``data/an4`` is
    the fixture's AN4 layout. It prints each file's text, the same ``asr.transcribe`` prints, and
    its words with times."""
    blocks = fenced_blocks(readme_section("Use a model from Python"))
    export_cmd = shlex.split(next(b for b in blocks if b.startswith("python -m asr.export")))
    code = next(b for b in blocks if b.startswith("from asr import Recognizer"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "an4").symlink_to(tiny_dir)
    export_cmd = [a.replace("exp/an4/<run>/checkpoints/best.ckpt", str(tiny_checkpoint))
                  for a in export_cmd]
    run = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 300}
    proc = subprocess.run([sys.executable, *export_cmd[1:]], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", code], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = re.findall(r'"(data/an4/[^"]+\.sph)"', code)
    assert len(files) == 2 and all((tmp_path / f).is_file() for f in files)
    heads = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    words = [line.split() for line in proc.stdout.splitlines() if line.startswith(" ")]
    assert [h.split(": ")[0] for h in heads] == files
    assert all(len(w) == 4 and 0 <= float(w[0]) <= float(w[1]) for w in words)
    cli = subprocess.run([sys.executable, "-m", "asr.transcribe", "checkpoint=an4-bilstm-ctc",
                          f"audio=[{','.join(files)}]"], **run)
    assert cli.returncode == 0, cli.stderr[-2000:]
    texts = [line.split("\t")[1] for line in cli.stdout.splitlines()]
    assert [h.split(": ", 1)[1].rsplit(" (", 1)[0] for h in heads] == texts


def test_readme_noise_and_finetune_commands_compose():
    """README "## Noise, reverberation, non-speech": every training command's overrides name real
    settings (Hydra composes them as the command line would), and the recipe it names exists."""
    from tests.conftest import compose_config, compose_train

    blocks = fenced_blocks(readme_section("Noise, reverberation, non-speech"))
    # the reader fills in <run>
    lines = " ".join(b.replace("\\\n", " ").replace("<run>", "2026-12-06_21-54-46")
                     for b in blocks).replace(" python ", "\npython ")
    commands = [shlex.split(line.split("#")[0]) for line in lines.splitlines()
                if "asr.train" in line or line.startswith("make train")]
    assert len(commands) >= 5, commands
    averages = [shlex.split(line) for line in lines.splitlines() if "asr.average" in line]
    assert averages, "the interpolation command is gone"
    for words in averages:
        cfg = compose_config("average", words[3:])
        assert len(cfg.checkpoints) == len(cfg.weights) == 2
        for weights in (cfg.module_weights or {}).values():
            assert len(weights) == 2
    assert any("module_weights" in words[-2] for words in averages), averages
    for words in commands:
        overrides = [w for w in words[3:] if "=" in w] if words[0] == "python" else [
            f"recipe={w.split('=', 1)[1]}" for w in words if w.startswith("RECIPE=")]
        cfg = compose_train(overrides)
        assert cfg.name.startswith("an4"), words
        if "recipe=an4-robust" in overrides:
            assert cfg.data.augment.noise.prob > 0 and cfg.data.augment.reverb.rooms > 0


def test_readme_serve_section_runs_as_written(tiny_checkpoint, tiny_dir, tmp_path):
    """README "## Serve a model": its server command, its curl commands and its Python client
    example run as written, from a folder holding the files they name (a trained checkpoint at
    exp/an4/<run>/..., an AN4 SPHERE file, talk.flac); only the port is a free one."""
    import time
    import urllib.request

    import soundfile as sf

    from tests.test_serve import free_port

    blocks = fenced_blocks(readme_section("Serve a model"))
    assert len(blocks) == 3, blocks
    port = str(free_port())
    blocks = [b.replace("8000", port).replace("<run>", "run") for b in blocks]
    work = tmp_path / "work"
    (work / "exp/an4/run/checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, work / "exp/an4/run/checkpoints/best.ckpt")
    utts = read_manifest(tiny_dir / "test.jsonl")
    sph = work / "an4/wav/an4test_clstk/fcaw/an409-fcaw-b.sph"
    sph.parent.mkdir(parents=True)
    shutil.copy(utts[0].audio_filepath, sph)
    wav, rate = sf.read(utts[1].audio_filepath)
    sf.write(work / "talk.flac", wav, rate)

    start = shlex.split(blocks[0].splitlines()[0])
    assert start[:3] == ["python", "-m", "asr.serve"], start
    server = subprocess.Popen([sys.executable, *start[1:]], cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a hang guard, not a timing
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:  # refused, or a timeout (TimeoutError is an OSError)
                assert time.monotonic() < deadline, "the server did not answer /health"
                time.sleep(0.2)
        curls = [c for c in blocks[1].replace("\\\n", " ").splitlines() if c.startswith("curl")]
        assert len(curls) == 5, curls
        outputs = []
        for command in curls:
            proc = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 0 and '"error"' not in proc.stdout, (command, proc.stdout)
            outputs.append(proc.stdout)
        assert json.loads(outputs[1])["data"][0]["id"] == "best"
        assert "text" in json.loads(outputs[2])
        assert "words" in json.loads(outputs[3])
        assert (work / "talk.srt").is_file()
        client = subprocess.run([sys.executable, "-c", blocks[2]], cwd=work, capture_output=True,
                                text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-3000:]
        assert client.stdout.strip(), "the client example printed nothing"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not (shutil.which("sox") and shutil.which("flac")),
                    reason="the README's wav.scp pipes run sox and flac (apt install sox flac)")
def test_readme_import_commands_run_as_written(tiny_dir, tmp_path, monkeypatch):
    """README "## Data from Kaldi, Lhotse and Hugging Face": the fixture's splits in every format
    at the paths the README names, then each import command and the training command as written
    (shortened), from that folder."""
    from tests import format_sources as fs

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    blocks = fenced_blocks(readme_section("Data from Kaldi, Lhotse and Hugging Face"))
    imports, training = blocks[0].splitlines(), shlex.split(blocks[1])
    assert len(imports) == 7 and all(c.startswith("python -m asr.import_data ") for c in imports)
    split = {s: read_manifest(tiny_dir / f"{s}.jsonl") for s in ("train", "dev", "test")}
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    fs.kaldi_dir(split["train"], data / "kaldi/train", "segments")
    fs.kaldi_dir(split["train"], data / "kaldi/train_sox", "pipes")
    fs.lhotse_manifests(split["dev"], cuts=data / "lhotse/cuts_dev.jsonl.gz",
                        recordings=data / "lhotse/recordings_dev.jsonl.gz",
                        supervisions=data / "lhotse/supervisions_dev.jsonl.gz")
    fs.hf_saved({"train": split["train"], "test": split["test"]}, data / "hf/my_dataset", scratch)
    fs.hf_parquet(split["test"], data / "hf/test-00000-of-00001.parquet", scratch / "pq")
    fs.hf_audiofolder(split["test"], data / "hf/my_audiofolder")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for command in imports:
        args = shlex.split(command)
        proc = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        out = tmp_path / next(a for a in args if a.startswith("out="))[4:]
        want = {"train": 25, "dev": 5, "test": 4}[out.stem.split("_")[0]]
        assert f": {want} utterances" in proc.stdout and "rejected" not in proc.stdout, (
            command, proc.stdout)
        assert len(read_manifest(out)) == want
        assert {u.speaker for u in read_manifest(out)} == {
            u.speaker for u in split[out.stem.split("_")[0]]}
    assert training[:3] == ["python", "-m", "asr.train"]
    proc = subprocess.run([sys.executable, *training[1:], *SHORTER], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads(next((tmp_path / "exp" / "custom").iterdir()).joinpath(
        "data_check.json").read_text())
    assert {k: v["utterances"] for k, v in check.items()} == {"train": 25, "val": 5}
    assert re.search(r"^test\s+4\s", proc.stdout, re.M), proc.stdout[-2000:]
