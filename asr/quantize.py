"""int8 dynamic quantisation of a trained model, for inference on the CPU.

LSTM and linear weights become int8 with one scale per output row; inputs are quantised per call.
:func:`int8_weights` and :func:`load_int8_weights` give and take them as plain tensors (as
``model.safetensors`` holds them). See docs/model.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

QUANTIZE = (None, "int8")
SCALE_SUFFIX = "_scale"  # "<weight name>_scale": the (rows,) float32 scales of an int8 weight
_LSTM_WEIGHTS = ("weight_ih_l0", "weight_hh_l0")
_LSTM_BIASES = ("bias_ih_l0", "bias_hh_l0")


def check_quantize(quantize: str | None, setting: str = "quantize") -> str | None:
    """``quantize`` if it is ``None`` or ``"int8"``, else a ValueError naming ``setting``."""
    if quantize not in QUANTIZE:
        raise ValueError(f"{setting} must be null (float weights) or int8, got {quantize!r}")
    return quantize


@contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao.quantization warns at every call that it is deprecated in favour of torchao (not a
    # dependency); its eager dynamic modules still work, and a user can do nothing about it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


def _dynamic() -> tuple[type, type]:
    with _quiet():
        import torch.ao.nn.quantized.dynamic as nnqd
    return nnqd.LSTM, nnqd.Linear


def is_quantized(module: nn.Module) -> bool:
    """Whether any layer of ``module`` is a dynamically quantised one."""
    return any(isinstance(m, _dynamic()) for m in module.modules())


def quantize_int8(module: nn.Module) -> nn.Module:
    """Replace the LSTMs and linear layers of ``module.model`` by int8 dynamic ones, in place.

    A module already quantised is returned as it is.

    Returns:
        ``module`` in eval mode, its ``model.lstm`` set to the dense algorithm.

    Raises:
        ValueError: the module is on a GPU (int8 dynamic quantisation has CPU kernels only).
    """
    if is_quantized(module):
        return module
    devices = {p.device.type for p in module.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"quantize=int8 runs on the CPU only, but the model is on "
                         f"{sorted(devices - {'cpu'})}; pass device=cpu")
    with _quiet():
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {nn.LSTM: per_channel_dynamic_qconfig, nn.Linear: per_channel_dynamic_qconfig}
        module.model = quantize_dynamic(module.model.eval(), spec, dtype=torch.qint8, inplace=True)
    module.model.lstm.implementation = "dense"
    return module.eval()


def _quantized_layers(model: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, bool]]:
    """``(state-dict prefix, layer, is_lstm)`` of every quantised layer of ``model``."""
    lstm, linear = _dynamic()
    for name, layer in model.named_modules():
        if isinstance(layer, (lstm, linear)):
            yield f"{prefix}{name}.", layer, isinstance(layer, lstm)


def _layer_tensors(layer: nn.Module,
                   is_lstm: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A quantised layer's ``({name: quantised weight}, {name: float bias})``."""
    if is_lstm:
        return dict(layer.get_weight()), dict(layer.get_bias())
    return {"weight": layer.weight()}, {"bias": layer.bias()}


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without the quantised layers' entries: the tensors kept float."""
    inside = tuple(prefix for prefix, _, _ in _quantized_layers(module.model, "model."))
    return {k: v for k, v in module.state_dict().items() if not (inside and k.startswith(inside))}


def int8_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state of a :func:`quantize_int8` module as plain tensors, keyed like its float one.

    Each quantised weight ``<name>`` is a (rows, columns) int8 tensor plus ``<name>_scale``, its
    (rows,) float32 scales (value = ``int8 * scale``); every other tensor is the float one.
    """
    out = float_state(module)
    for prefix, layer, is_lstm in _quantized_layers(module.model, "model."):
        weights, biases = _layer_tensors(layer, is_lstm)
        for name, w in weights.items():
            zero_points = w.q_per_channel_zero_points()
            assert (w.qscheme() == torch.per_channel_affine
                    and not zero_points.any()), "expected symmetric int8"
            out[prefix + name] = w.int_repr().contiguous()
            out[prefix + name + SCALE_SUFFIX] = w.q_per_channel_scales().float().contiguous()
        out.update({prefix + name: b.detach().contiguous() for name, b in biases.items()})
    return out


def _int8(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """The per-channel quantised tensor of ``key`` from its int8 rows and float32 scales."""
    rows, scales = tensors[key], tensors[key + SCALE_SUFFIX].double()
    if rows.dtype != torch.int8 or rows.dim() != 2 or scales.shape != rows.shape[:1]:
        raise ValueError(f"{key}: expected (rows, columns) int8 values and (rows,) scales, "
                         f"found {rows.dtype} {tuple(rows.shape)} and {tuple(scales.shape)}")
    with _quiet():
        # quantising int8 * scale by the same scale gives back the same int8 values
        return torch.quantize_per_channel(rows.float() * scales.float()[:, None], scales,
                                          torch.zeros_like(scales, dtype=torch.long), 0,
                                          torch.qint8)


def load_int8_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> set[str]:
    """Quantise ``module`` in place and load its quantised layers from ``tensors``.

    ``tensors`` as :func:`int8_weights` gives them; the float ones (:func:`float_state`) are the
    caller's to load.

    Returns:
        the keys of ``tensors`` used.

    Raises:
        KeyError: a tensor a quantised layer needs is missing (the caller names the file).
        ValueError: a weight is not int8 rows with one scale per row.
    """
    quantize_int8(module)
    used: set[str] = set()
    for prefix, layer, is_lstm in _quantized_layers(module.model, "model."):
        if is_lstm:
            names = _LSTM_WEIGHTS + _LSTM_BIASES
            layer.set_weight_bias({n: _int8(tensors, prefix + n) if n.startswith("weight")
                                   else tensors[prefix + n] for n in names})
        else:
            names = ("weight", "bias")
            layer.set_weight_bias(_int8(tensors, prefix + "weight"), tensors[prefix + "bias"])
        used.update(prefix + n for n in names)
        used.update(prefix + n + SCALE_SUFFIX for n in names if n.startswith("weight"))
    return used
