"""Export a checkpoint: features + model as one graph (raw waveforms in, CTC log-probs out), or a
model folder.

    python -m asr.export checkpoint=exp/an4/<run>/checkpoints/best.ckpt format=onnx
    python -m asr.export checkpoint=... format=torchscript output=model.pt [quantize=int8]
    python -m asr.export checkpoint=... format=pretrained output=an4-bilstm [quantize=int8]

ONNX inputs ``audio`` (B, S) float32 and ``audio_lengths`` (B,) int64; outputs ``log_probs``
(B, T, C) and ``lengths`` (B,). Class 0 is the blank; ``<output>.tokens.txt`` lists the classes in
order. ``format=pretrained`` writes a folder (:mod:`asr.model_files`) with a model card
``README.md``, which ``asr.transcribe`` and ``asr.evaluate`` take as ``checkpoint=``. See
docs/report.md.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from asr.cli import user_errors
from asr.decoding import decoder_tokens
from asr.features import LogMelFeatures
from asr.inference import model_home
from asr.model_files import CARD, CONFIG, TOKENIZER, WEIGHTS
from asr.quantize import check_quantize, is_quantized, quantize_int8
from asr.recognizer import Recognizer
from asr.report.run_report import _audio_hours, _wer_table

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pretrained": ""}


class DFTLogMel(nn.Module):
    """The log-Mel of :class:`LogMelFeatures` with the STFT as a strided convolution by a windowed
    DFT basis.

    ONNX's STFT has no complex output in the TorchScript exporter, so the power spectrum is computed
    from real and imaginary parts as two banks of real filters (``torch.stft`` to float precision).
    """

    def __init__(self, features: LogMelFeatures) -> None:
        super().__init__()
        spec = features.mel.spectrogram
        n_fft, hop = spec.n_fft, spec.hop_length
        window = torch.zeros(n_fft)
        win = spec.window.detach().float().cpu()
        left = (n_fft - win.numel()) // 2  # torch.stft centres a shorter window in the FFT frame
        window[left : left + win.numel()] = win
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        phase = 2 * math.pi * freqs * torch.arange(n_fft, dtype=torch.float64)[None, :] / n_fft
        basis = torch.cat([torch.cos(phase), -torch.sin(phase)]) * window.double()  # (2F, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :])  # (2F, 1, n_fft)
        self.register_buffer(
            "fb", features.mel.mel_scale.fb.detach().float().cpu().clone())  # (F, n_mels)
        self.n_fft, self.hop = n_fft, hop

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, T, n_mels) log-Mel energies, T = S // hop + 1."""
        x = nn.functional.pad(
            audio.float()[:, None, :], (self.n_fft // 2, self.n_fft // 2)
        )  # (B, 1, S + n_fft)
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (B, 2F, T)
        re, im = spec.chunk(2, dim=1)  # (B, F, T) each
        mel = torch.matmul(
            (re * re + im * im).transpose(1, 2), self.fb
        )  # (B, T, F) @ (F, n_mels) -> (B, T, n_mels)
        return torch.log(mel + 1e-6)


class ExportableASR(nn.Module):
    """Waveforms -> log-probs as one graph: ``module``'s features (STFT as :class:`DFTLogMel`) and
    model."""

    def __init__(self, module: Recognizer) -> None:
        super().__init__()
        self.features = module.features
        self.log_mel = DFTLogMel(module.features)
        self.model = module.model

    def forward(self, audio: torch.Tensor,
                audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveforms, (B,) sample counts -> (B, T, C) log-probs, (B,) frame counts."""
        feats, frame_lengths = self.features.normalize_frames(self.log_mel(audio), audio_lengths)
        return self.model(feats, frame_lengths)


def export(checkpoint: str, fmt: str = "onnx", output: str | None = None, opset: int = 17,
           quantize: str | None = None, license: str = "unknown") -> Path:
    """Write the checkpoint's features + model as ONNX or TorchScript, or a model folder; returns
    the written path.

    Args:
        checkpoint: a ``.ckpt`` written by ``asr.train`` (or a model folder).
        fmt: ``onnx``, ``torchscript`` or ``pretrained`` (a folder with a model card).
        output: file (folder for ``pretrained``); default ``<checkpoint>`` with ``.onnx`` / ``.pt``,
            or ``<run dir>/pretrained`` / ``pretrained-int8``.
        quantize: ``int8`` (``pretrained`` and ``torchscript``): int8 LSTM and linear weights.
        license: the model card's ``license`` (a Hub licence identifier).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if check_quantize(quantize) and fmt == "onnx":
        raise ValueError("quantize=int8 is for format=pretrained or format=torchscript; "
                         "quantise an ONNX model with onnxruntime.quantization.quantize_dynamic")
    module = Recognizer.load(checkpoint)
    if fmt == "onnx" and is_quantized(module):
        raise ValueError(f"{checkpoint} holds int8 weights, which ONNX export does not take; "
                         f"export the float checkpoint")
    if fmt == "pretrained":
        return _export_pretrained(module, checkpoint, output, quantize, license)
    tok = module.tokenizer
    tokens = decoder_tokens(tok)  # class order: blank, then characters / words / pieces
    model = ExportableASR(quantize_int8(module) if quantize else module).eval()
    out = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    sr = module.features.config["sample_rate"]
    # two utterances of different lengths: padding and lengths are traced, not constants
    audio = torch.randn(2, sr) * 0.1
    lengths = torch.tensor([sr, sr * 3 // 4])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python values
        if fmt == "onnx":
            _onnx(model, audio, lengths, out, opset)
        else:
            torch.jit.trace(model, (audio, lengths), check_trace=False).save(str(out))
    Path(f"{out}.tokens.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out


def _onnx(model: ExportableASR, audio: torch.Tensor, lengths: torch.Tensor, out: Path,
          opset: int) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(
            "ONNX export needs onnx: pip install onnx onnxruntime (or `pip install asr[export]`)"
        ) from None
    # The TorchScript-based exporter: each direction's nn.LSTM becomes an ONNX LSTM node, the
    # per-length reversal a GatherElements.
    torch.onnx.export(
        model,
        (audio, lengths),
        str(out),
        dynamo=False,
        opset_version=opset,
        input_names=["audio", "audio_lengths"],
        output_names=["log_probs", "lengths"],
        dynamic_axes={
            "audio": {0: "batch", 1: "samples"},
            "audio_lengths": {0: "batch"},
            "log_probs": {0: "batch", 1: "frames"},
            "lengths": {0: "batch"},
        },
    )


def _export_pretrained(module: Recognizer, checkpoint: str, output: str | None,
                       quantize: str | None, license: str) -> Path:
    """The model folder of :mod:`asr.model_files` plus its ``README.md`` (:func:`model_card`)."""
    run = model_home(checkpoint)
    out = Path(output) if output else run / ("pretrained-int8" if quantize else "pretrained")
    params = sum(p.numel() for p in module.model.parameters())  # before quantisation replaces them
    module.save_pretrained(out, quantize, info={"checkpoint": Path(checkpoint).name})
    card = model_card(module, run, out, params=params, quantize=quantize, license=license)
    (out / CARD).write_text(card, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------- model card
def _read_run(run: Path) -> tuple[dict[str, Any], Any, dict[str, dict]]:
    """``run.json``, ``config.yaml`` and ``decode/<split>/report.json`` of a run dir; empty for
    what is missing or unreadable (the card then says "unknown")."""
    def load(path: Path, read: Any) -> Any:
        try:
            return read(path) if path.is_file() else None
        except (OSError, ValueError, TypeError) as err:  # half-written or foreign: do without it
            log.warning("model card: ignoring %s (%s)", path, err)
            return None

    info = load(run / "run.json", lambda p: json.loads(p.read_text())) or {}
    config = next((c for c in (load(p, OmegaConf.load)
                               for p in (run / "config.yaml", run / ".hydra" / "config.yaml"))
                   if c is not None), OmegaConf.create())
    reports = {p.parent.name: r for p in sorted(run.glob("decode/*/report.json"))
               if isinstance(r := load(p, lambda q: json.loads(q.read_text())), dict)
               and "wer" in r}
    return info if isinstance(info, dict) else {}, config, reports


def _describe_model(module: Recognizer, params: int,
                    quantize: str | None) -> list[tuple[str, str]]:
    m, f, tok = module.model.config, module.features.config, module.tokenizer.state_dict()
    front = ("none" if m["subsampling"] == "none"
             else f"{m['subsampling']} x{m['subsampling_factor']}")
    arch = (f"{front} subsampling -> {m['num_layers']} x BiLSTM({m['hidden_size']} per direction) "
            "-> linear -> CTC")
    if m.get("condition_layer"):
        arch += f" (self-conditioned on layer {m['condition_layer']})"
    kind = tok["type"]
    tokens = {"char": lambda: f"characters {tok['vocab']!r}",
              "word": lambda: (f"{len(tok['words'].split())} words + characters "
                               f"{tok['chars']!r} for other words"),
              "sentencepiece": lambda: (f"{module.tokenizer.num_classes - 1} pieces "
                                        f"(the model is base64 in {TOKENIZER})")}[kind]()
    norm = {"global": "global mean/variance (statistics of the training set, in "
                      "model.safetensors)",
            "utterance": "per-utterance mean/variance", "none": "none"}[f["normalize"]]
    return [
        ("architecture", arch),
        ("parameters", f"{params / 1e6:.2f} M"),
        ("weights", "int8 LSTM and linear weights (one float32 scale per row), the rest float32"
         if quantize else "float32"),
        ("output classes", f"{module.tokenizer.num_classes} (blank = 0)"),
        ("tokenizer", f"{kind}: {tokens}"),
        ("features", f"{f['n_mels']} log-Mel, {f['win_ms']:g} ms window, {f['hop_ms']:g} ms hop, "
                     f"{f['sample_rate']} Hz audio; normalisation: {norm}"),
    ]


def _training_facts(run: Path, info: dict, config: Any) -> list[tuple[str, str]]:
    try:
        hours = _audio_hours(run, config)
    except (OSError, ValueError, KeyError, IndexError):  # a manifest that moved or changed shape
        hours = None
    manifest = OmegaConf.select(config, "data.train_manifest", default=None)
    command = info.get("command")
    if isinstance(command, list) and command:
        command = " ".join(["python -m asr.train" if command[0] == "train.py" else command[0],
                            *command[1:]])
    git = info.get("git") or {}
    return [
        ("training data", f"{hours:.2f} h" if hours is not None else "unknown"),
        ("training manifest", f"`{manifest}`" if manifest else "unknown"),
        ("command", f"`{command}`" if command else "unknown"),
        ("epochs", str(info.get("epochs", "unknown"))),
        ("training time",
         f"{info['train_seconds'] / 60:.1f} min" if info.get("train_seconds") else "unknown"),
        ("device", str(info.get("device", "unknown"))),
        ("git commit", f"{git['commit']}{' (dirty)' if git.get('dirty') else ''}"
         if git.get("commit") else "unknown"),
    ]


def _front_matter(config: Any, quantize: str | None, license: str) -> list[str]:
    target = str(OmegaConf.select(config, "prepare._target_", default="") or "")
    corpus = target.split(".")[-2] if target.startswith("asr.data.corpora.") else None
    dataset = {"librispeech": "openslr/librispeech_asr"}.get(corpus, corpus)
    tags = ["automatic-speech-recognition", "ctc", "bilstm", "pytorch",
            *(["int8"] if quantize else [])]
    return ["---", "library_name: asr", f"license: {license}",
            "pipeline_tag: automatic-speech-recognition", "tags:", *(f"- {t}" for t in tags),
            *(["datasets:", f"- {dataset}"] if dataset else []), "metrics:", "- wer", "---"]


def _usage(path: str, quantize: str | None) -> list[str]:
    cpu = " device=cpu" if quantize else ""
    return ["", "## Usage", "", "```bash",
            f"python -m asr.transcribe checkpoint={path} audio=[a.wav,b.flac]{cpu}",
            f"python -m asr.evaluate checkpoint={path} "
            f"manifests='{{test: path/to/test.jsonl}}'{cpu}", "```", "",
            "`asr.evaluate` writes its results and log-prob cache into "
            f"`{path}/decode/` unless given `out_dir=` and `cache_dir=` "
            "(leave `decode/` out when publishing the folder).",
            *(["int8 weights run on the CPU only."] if quantize else []), "",
            "In Python: `from asr import Recognizer; "
            f'Recognizer.load("{path}").transcribe("a.wav")`.', "",
            "## Files", "", f"- `{CONFIG}`: model and feature settings",
            f"- `{WEIGHTS}`: the weights", f"- `{TOKENIZER}`: the tokenizer", ""]


def model_card(module: Recognizer, run: Path, folder: Path, params: int,
               quantize: str | None = None, license: str = "unknown") -> str:
    """The ``README.md`` of a model folder: Hub front matter, the model, its WER, training data and
    command, and how to use it; what ``run`` does not hold is "unknown"."""
    info, config, reports = _read_run(run)
    name = OmegaConf.select(config, "name", default=None)
    title = f"{name} / {run.name}" if name else folder.name
    lines = [*_front_matter(config, quantize, license), "",
             f"# {title}: BiLSTM-CTC speech recognizer", "",
             "Audio in (any sample rate; resampled), text out: log-Mel features, a bidirectional "
             "LSTM acoustic model trained with CTC, greedy or beam-search decoding.", "",
             "## Model", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _describe_model(module, params, quantize)]
    lines += ["", "## Results", ""]
    if reports:
        lines += ["Word error rate of the trained checkpoint (float32 weights, greedy decoding):",
                  "", *_wer_table(reports)]
        if quantize:
            lines += ["", "Measured before int8 quantisation; `python -m asr.evaluate "
                          "checkpoint=<this folder> manifests=...` scores these weights."]
    else:
        lines += ["unknown: the run dir held no decode/<split>/report.json "
                  "(run `python -m asr.evaluate`)"]
    lines += ["", "## Training", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in
                                                              _training_facts(run, info, config))]
    lines += _usage(f"path/to/{folder.name}", quantize)
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        out = export(cfg.checkpoint, cfg.format, cfg.output, cfg.opset, cfg.quantize, cfg.license)
    if cfg.format == "pretrained":
        print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))})")
    else:
        print(f"wrote {out} (and {out}.tokens.txt)")


if __name__ == "__main__":
    main()
