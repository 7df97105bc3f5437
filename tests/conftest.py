"""Shared fixtures and helpers.

Two sources of real speech:

- the committed fixture ``tests/fixtures/an4_tiny`` (34 genuine AN4 utterances in AN4's layout):
  always here, so ``make test`` on a bare clone trains, evaluates and transcribes. Small runs
  compose ``recipe=tiny`` on it (:func:`tiny_train_cfg`), research options are added on top as
  overrides;
- the full AN4 archive and the LibriSpeech samples in ``../shared/data`` (or
  ``$ASR_SHARED_DATA``): the few tests that are about the AN4 recipe or the full corpus skip with
  a reason without them.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))
AN4_ARCHIVE = SHARED / "an4_sphere.tar.gz"
LIBRI = SHARED / "librispeech-samples" / "LibriSpeech"
# the tiny recipe's prepare.download_dir, made absolute
TINY_FIXTURE = ROOT / "tests" / "fixtures" / "an4_tiny"
TINY_ARCHIVE = TINY_FIXTURE / "an4_sphere.tar.gz"

needs_an4 = pytest.mark.skipif(
    not AN4_ARCHIVE.is_file(),
    reason=f"full AN4 archive not found at {AN4_ARCHIVE} (set ASR_SHARED_DATA)"
)
needs_libri = pytest.mark.skipif(
    not LIBRI.is_dir(), reason=f"LibriSpeech samples not found at {LIBRI} (set ASR_SHARED_DATA)"
)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """The real ``conf/<name>.yaml`` composed with ``overrides`` (as the command line would)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def compose_train(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``."""
    return compose_config("train", overrides)


def tiny_recipe_overrides(data_dir: Path) -> list[str]:
    """``recipe=tiny`` reading the committed fixture archive and preparing into ``data_dir`` (its
    ``an4_tiny``)."""
    return ["recipe=tiny", f"paths.data_dir={data_dir}", f"prepare.download_dir={TINY_FIXTURE}",
            "+prepare.progress=false"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The fixture corpus prepared once per session by the tiny recipe's own prepare step
    (checksum included): ``<tmp>/an4_tiny/{train,dev,test}.jsonl`` (25 / 5 / 4 utterances)."""
    data = tmp_path_factory.mktemp("data")
    cfg = compose_train([*tiny_recipe_overrides(data), f"paths.output_dir={data / 'unused'}"])
    manifests = instantiate(cfg.prepare)
    assert Path(manifests["train"]).parent == data / "an4_tiny"
    return data / "an4_tiny"


def tiny_train_cfg(tiny_dir: Path, out_dir: Path, extra: list[str] = ()) -> DictConfig:
    """``recipe=tiny`` on the prepared fixture, shrunk to a few CPU steps: 1 epoch of 3 batches,
    every step logged, no progress bar. ``extra`` overrides come last (``trainer.max_epochs=4``,
    ``callbacks=[default,ema]``, ...)."""
    return compose_train(
        [
            *tiny_recipe_overrides(tiny_dir.parent),
            f"paths.output_dir={out_dir}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            *extra,
        ]
    )


@pytest.fixture(scope="session")
def an4_dir(tmp_path_factory) -> Path:
    """The full AN4 corpus prepared once per session by the AN4 recipe's prepare step (default
    checksums) from the shared archive; skips without it."""
    if not AN4_ARCHIVE.is_file():
        pytest.skip(f"full AN4 archive not found at {AN4_ARCHIVE} (set ASR_SHARED_DATA)")
    data = tmp_path_factory.mktemp("an4")
    cfg = compose_train(["recipe=an4", f"paths.data_dir={data}", f"paths.download_dir={SHARED}",
                         f"paths.output_dir={data / 'unused'}", "+prepare.progress=false"])
    # The archive is already "in the cache" (download_dir): nothing is fetched.
    instantiate(cfg.prepare)
    return data / "an4"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small untrained BiLSTM-CTC saved as an asr checkpoint (what ``Recognizer.load`` reads).

    Decoding, export and transcription tests need the real network and checkpoint format, not a
    good model.
    """
    import torch

    from asr.features import LogMelFeatures
    from asr.model import BiLSTMCTC
    from asr.text import CharTokenizer
    from asr.training.module import ASRModule

    torch.manual_seed(0)
    model = BiLSTMCTC(80, 29, hidden_size=32, num_layers=2)
    module = ASRModule(CharTokenizer(), LogMelFeatures(), model)
    path = tmp_path_factory.mktemp("tiny") / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    ckpt = {"state_dict": module.state_dict(), "global_step": 0}
    module.on_save_checkpoint(ckpt)  # the module's own description, as training writes it
    torch.save(ckpt, path)
    return path


class RangeServer:
    """A real HTTP server on 127.0.0.1 for a folder: honours ``Range: bytes=N-`` (206) and cuts
    the first transfer of any file named in ``cut`` after half its bytes (the connection closes,
    as a flaky network does). ``requests`` lists ``(name, Range header or None)`` in order."""

    def __init__(self, root: Path) -> None:
        self.root, self.cut, self.requests = root, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.cut:
                    server.cut.discard(name)
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def range_server(tmp_path):
    """A :class:`RangeServer` over ``tmp_path/srv``."""
    srv = tmp_path / "srv"
    srv.mkdir()
    s = RangeServer(srv)
    yield s
    s.close()


@pytest.fixture
def http_dir(tmp_path):
    """Python's own file server over ``tmp_path/www`` on 127.0.0.1 (it ignores Range requests)."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
