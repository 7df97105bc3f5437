"""BiLSTM: a stacked bidirectional LSTM over a padded batch, with two forward algorithms.

Also here: the dropout it uses between layers. See docs/model.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

IMPLEMENTATIONS = ("auto", "dense", "packed")
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# cuDNN wants every weight in one flat buffer; ours live in per-direction modules, so it copies them
_NOT_CONTIGUOUS = ".*weights are not part of single contiguous chunk of memory"


def check_implementation(implementation: str) -> str:
    """``implementation`` if it names a BiLSTM forward algorithm, else a ValueError."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.lstm must be 'auto', 'dense' or 'packed', got {implementation!r}")
    return implementation


def reversal_index(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T) time index reversing each sequence within its length; padding maps to itself.

    Reversing is its own inverse, so the same index turns a reversed batch back.
    """
    steps = torch.arange(frames, device=lengths.device).unsqueeze(0)  # (1, T)
    last = lengths.unsqueeze(1) - 1  # (B, 1)
    return torch.where(steps <= last, last - steps, steps)


def lstm_autocast_supported(device: torch.device) -> bool:
    """Whether the LSTM kernels can run under bf16 autocast on ``device``.

    CUDA always can. On CPU, oneDNN's LSTM has bf16 kernels only with native bf16 (AVX512-BF16,
    AMX); elsewhere it fails ("could not create a primitive descriptor") instead of falling back.
    """
    return device.type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, t], :] for a (B, T, D) batch and a (B, T) index."""
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def _valid_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, 1) bool: whether each frame lies within its sequence's length."""
    return (torch.arange(frames, device=lengths.device).unsqueeze(0)  # (1, T) < (B, 1)
            < lengths.unsqueeze(1)).unsqueeze(-1)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout: each element zeroed with probability ``p``, the rest rescaled.

    On CPU a faster mask from 16-bit random draws, ``p`` rounded to a multiple of 1/65536;
    elsewhere torch's own. See docs/model.md.
    """
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    drop = round(p * 65536)
    if drop >= 65536:
        return x * 0.0
    n = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    # int16 is uniform on [-32768, 32767]
    keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - 32768
    return x * keep.to(x.dtype).mul_(65536 / (65536 - drop))


class SharedDropout(nn.Module):
    """Dropout with one mask per utterance and channel, shared by all frames ("variational" or
    "locked", Gal & Ghahramani 2016): (B, T, D) -> (B, T, D); ``shared=False``: per element."""

    def __init__(self, p: float, shared: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"model.dropout={p} must be in [0, 1)")
        self.p, self.shared = p, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not self.shared:
            return dropout(x, self.p)
        keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device,
                           dtype=x.dtype).bernoulli_(1 - self.p)  # (B, 1, D)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared={self.shared}"


class _TemplateLSTM(nn.LSTM):
    """A bidirectional ``nn.LSTM`` on the meta device, run through ``functional_call`` only.

    It never flattens the weights it is given (see docs/model.md): cuDNN compacts a copy instead.
    """

    def flatten_parameters(self) -> None:
        pass


def _template(input_size: int, hidden_size: int, num_layers: int) -> _TemplateLSTM:
    with torch.device("meta"):  # shapes only: allocates nothing, draws no random numbers
        return _TemplateLSTM(input_size, hidden_size, num_layers, bidirectional=True,
                             batch_first=True)


Condition = Callable[[int, torch.Tensor], torch.Tensor]


class BiLSTM(nn.Module):
    """Stacked bidirectional LSTM over a padded (B, T, D) batch, exact for every sequence length.

    The parameters are one single-direction ``nn.LSTM`` per layer and direction
    (``layers[i]["fwd"]``, ``layers[i]["bwd"]``); ``implementation`` picks only the algorithm:
    ``"dense"`` (per-direction calls over the padded batch), ``"packed"`` (bidirectional calls over
    a PackedSequence) or ``"auto"`` (packed on CUDA, dense elsewhere). Both give the same outputs
    (to float rounding), zero at padding frames. See docs/model.md.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        shared_dropout: bool = False,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        self.implementation = check_implementation(implementation)
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                "fwd": nn.LSTM(input_size if i == 0 else 2 * hidden_size, hidden_size,
                               batch_first=True),
                "bwd": nn.LSTM(input_size if i == 0 else 2 * hidden_size, hidden_size,
                               batch_first=True),
            })
            for i in range(num_layers)
        )
        self.dropout = SharedDropout(dropout, shared=shared_dropout)
        # A plain tuple, not submodules: stateless templates stay out of state_dict() and .to().
        self._templates = (
            _template(input_size, hidden_size, num_layers),  # the whole stack in one call
            _template(input_size, hidden_size, 1),  # the first layer alone
            _template(2 * hidden_size, hidden_size, 1),  # any later layer alone
        )

    def uses_packed(self, device: torch.device) -> bool:
        """Whether a forward call on an input on ``device`` runs the packed algorithm."""
        return self.implementation == "packed" or (self.implementation == "auto"
                                                   and device.type == "cuda")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) input, (B,) valid frames -> (B, T, 2H) output."""
        return self._run(x, lengths, None, every_layer=False)[-1]

    def layer_outputs(
        self, x: torch.Tensor, lengths: torch.Tensor, condition: Condition | None = None
    ) -> list[torch.Tensor]:
        """(B, T, D) input, (B,) valid frames -> every layer's (B, T, 2H) output, first to last.

        ``condition(i, output)``, if given, maps layer ``i``'s (0-based) output to the next layer's
        input; the list holds the outputs as the layers produced them."""
        return self._run(x, lengths, condition, every_layer=True)

    def _run(
        self, x: torch.Tensor, lengths: torch.Tensor, condition: Condition | None, every_layer: bool
    ) -> list[torch.Tensor]:
        if torch.is_autocast_enabled(x.device.type) and not lstm_autocast_supported(x.device):
            # bf16-mixed on a CPU without bf16 LSTM kernels: these layers run in fp32, the rest bf16
            with torch.autocast(x.device.type, enabled=False):
                return self._algorithm(x.float(), lengths, condition, every_layer)
        return self._algorithm(x, lengths, condition, every_layer)

    def _algorithm(
        self, x: torch.Tensor, lengths: torch.Tensor, condition: Condition | None, every_layer: bool
    ) -> list[torch.Tensor]:
        if not self.uses_packed(x.device):
            return self._dense_layers(x, lengths.to(x.device, non_blocking=True).clamp(min=1),
                                      condition)
        # pack_padded_sequence reads them on the host (no copy if there)
        lengths = lengths.detach().cpu().clamp(min=1)
        shared_masks = self.dropout.shared and self.training and self.dropout.p > 0
        if every_layer or condition is not None or shared_masks:
            return self._packed_layers(x, lengths, condition)
        between = 0.0 if self.dropout.shared else self.dropout.p  # torch's, inside the call
        return [self._packed_call(0, 0, len(self.layers), x, lengths, between)]

    def _dense_layers(
        self, x: torch.Tensor, lengths: torch.Tensor, condition: Condition | None
    ) -> list[torch.Tensor]:
        index = reversal_index(lengths, x.shape[1])  # once for every layer and both ways
        valid = _valid_mask(lengths, x.shape[1])
        outputs = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            forward_out, _ = layer["fwd"](x)
            backward_out, _ = layer["bwd"](_gather_time(x, index))
            x = (torch.cat([forward_out, _gather_time(backward_out, index)], dim=-1)  # (B, T, 2H)
                 * valid.to(forward_out.dtype))
            outputs.append(x)
            if condition is not None and i + 1 < len(self.layers):
                x = condition(i, x) * valid.to(x.dtype)
        return outputs

    def _packed_layers(
        self, x: torch.Tensor, lengths: torch.Tensor, condition: Condition | None
    ) -> list[torch.Tensor]:
        valid = (_valid_mask(lengths.to(x.device, non_blocking=True), x.shape[1])
                 if condition is not None else None)
        outputs = []
        for i in range(len(self.layers)):
            if i > 0:
                x = self.dropout(x)
            x = self._packed_call(1 if i == 0 else 2, i, i + 1, x, lengths, 0.0)
            outputs.append(x)
            if valid is not None and i + 1 < len(self.layers):
                x = condition(i, x) * valid.to(x.dtype)
        return outputs

    def _packed_call(
        self, template: int, first: int, stop: int, x: torch.Tensor, lengths: torch.Tensor,
        between: float
    ) -> torch.Tensor:
        """Layers ``first`` to ``stop - 1`` in one call of ``self._templates[template]`` over a
        PackedSequence, dropout ``between``: (B, T, D) -> (B, T, 2H), zero at padding."""
        lstm = self._templates[template]
        lstm.training, lstm.dropout = self.training, between
        weights = {}
        for k, layer in enumerate(self.layers[first:stop]):
            for name in _WEIGHTS:
                weights[f"{name}_l{k}"] = getattr(layer["fwd"], f"{name}_l0")
                weights[f"{name}_l{k}_reverse"] = getattr(layer["bwd"], f"{name}_l0")
        # sorted here, on the host, as pack_padded_sequence would: its own unsorting reads
        # indices off the device
        lengths, order = torch.sort(lengths, descending=True)
        restore = torch.empty_like(order)
        restore[order] = torch.arange(len(order))
        sorted_x = x.index_select(0, order.to(x.device, non_blocking=True))
        packed = pack_padded_sequence(sorted_x, lengths, batch_first=True, enforce_sorted=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NOT_CONTIGUOUS)
            out, _ = functional_call(lstm, weights, (packed,))
        padded = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return padded.index_select(0, restore.to(x.device, non_blocking=True))

    def extra_repr(self) -> str:
        return f"implementation={self.implementation!r}"
