"""asr.lstm.BiLSTM, its forward algorithms (model.lstm: dense, packed, auto) and its dropout."""

import warnings

import pytest
import torch

from asr.lstm import BiLSTM, SharedDropout, _gather_time, dropout, reversal_index
from asr.model import BiLSTMCTC

IMPLS = ("dense", "packed")
LENGTHS = torch.tensor([13, 1, 7, 13, 2, 10, 5, 12])  # length 1 and the longest, unsorted, repeated


def _twin(impl: str, template: BiLSTM, **kwargs) -> BiLSTM:
    """A BiLSTM with ``kwargs`` and ``implementation=impl``, holding ``template``'s weights."""
    twin = BiLSTM(**kwargs, implementation=impl)
    twin.load_state_dict(template.state_dict())
    return twin.train(template.training)


def _outputs_and_grads(fn, x: torch.Tensor,
                       params: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``fn(x)``'s tensors, and the gradients of a fixed random weighting of them w.r.t. x and
    every parameter."""
    x = x.detach().clone().requires_grad_(True)
    outs = fn(x)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    outs = [o for o in outs if o.is_floating_point()]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs)
    names = list(params)
    grads = torch.autograd.grad(loss, [x, *(params[n] for n in names)], allow_unused=True)
    return [o.detach() for o in outs], list(grads)


def _assert_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        assert (u is None) == (v is None), i
        if u is not None:
            assert (u.shape == v.shape
                    and torch.allclose(u, v, atol=atol)), (i, (u - v).abs().max().item())


def _condition(i: int, out: torch.Tensor) -> torch.Tensor:
    # anything differentiable that changes the next layer's input
    return torch.tanh(out * (i + 2)) + out


@pytest.mark.parametrize("call", ["forward", "layer_outputs", "layer_outputs+condition"])
def test_dense_and_packed_give_the_same_outputs_and_gradients(call):
    kwargs = dict(input_size=6, hidden_size=5, num_layers=3, dropout=0.3)
    torch.manual_seed(0)
    # eval: dropout off, so both compute one function
    dense = BiLSTM(**kwargs, implementation="dense").eval()
    packed = _twin("packed", dense, **kwargs)
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), 6)

    def run(model):
        if call == "forward":
            return lambda x: model(x, LENGTHS)
        return lambda x: model.layer_outputs(x, LENGTHS,
                                             _condition if call.endswith("condition") else None)

    ref = _outputs_and_grads(run(dense), x, dict(dense.named_parameters()))
    got = _outputs_and_grads(run(packed), x, dict(packed.named_parameters()))
    _assert_close(ref[0], got[0])
    _assert_close(ref[1], got[1])
    # every parameter and the input get gradient
    assert all(g is not None and g.abs().sum() > 0 for g in got[1])
    for out in got[0]:
        for i, n in enumerate(LENGTHS.tolist()):
            assert out[i, n:].abs().sum() == 0  # padding frames are zero
    for i, n in enumerate(LENGTHS.tolist()):
        assert got[1][0][i, n:].abs().sum() == 0  # nothing flows from padding


@pytest.mark.parametrize("shared", [False, True])
def test_packed_layer_by_layer_draws_the_dense_dropout_masks(shared):
    """Where the packed path runs layer by layer (every layer's output wanted, or shared masks),
    dropout between layers is this module's own: from the same seed it draws the masks dense
    draws."""
    kwargs = dict(input_size=6, hidden_size=5, num_layers=3, dropout=0.4, shared_dropout=shared)
    torch.manual_seed(0)
    dense = BiLSTM(**kwargs, implementation="dense").train()
    packed = _twin("packed", dense, **kwargs)
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), 6)
    calls = [lambda m: lambda x: m.layer_outputs(x, LENGTHS)]
    if shared:  # shared masks: even the plain forward runs layer by layer
        calls.append(lambda m: lambda x: m(x, LENGTHS))
    for call in calls:
        results = []
        for model in (dense, packed):
            torch.manual_seed(5)
            results.append(_outputs_and_grads(call(model), x, dict(model.named_parameters())))
        _assert_close(results[0][0], results[1][0])
        _assert_close(results[0][1], results[1][1])
    eval_out = packed.eval()(x, LENGTHS)
    assert not torch.allclose(results[1][0][-1], eval_out, atol=1e-3)  # the masks dropped something


def test_packed_single_call_applies_dropout_between_layers_in_training_only():
    kwargs = dict(input_size=6, hidden_size=5, num_layers=3, dropout=0.4)
    torch.manual_seed(0)
    packed = BiLSTM(**kwargs, implementation="packed")
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), 6, requires_grad=True)
    train_out = packed.train()(x, LENGTHS)
    eval_out = packed.eval()(x, LENGTHS)
    assert not torch.allclose(train_out, eval_out, atol=1e-3)
    assert torch.allclose(eval_out, _twin("dense", packed, **kwargs).eval()(x, LENGTHS), atol=1e-5)
    train_out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in packed.parameters())
    no_dropout = _twin("packed", packed, **{**kwargs, "dropout": 0.0}).train()
    assert torch.allclose(no_dropout(x, LENGTHS), eval_out, atol=1e-6)


def _ctc_model(impl: str, **kwargs) -> BiLSTMCTC:
    torch.manual_seed(0)
    return BiLSTMCTC(12, 7, hidden_size=6, num_layers=3, subsampling="none", lstm=impl,
                     **kwargs).eval()


@pytest.mark.parametrize("settings", [{}, {"inter_classes": 5},
                                      {"inter_classes": 5, "condition_layer": 2}])
def test_bilstmctc_dense_and_packed_agree_with_intermediate_ctc_and_self_conditioning(settings):
    dense, packed = _ctc_model("dense", **settings), _ctc_model("packed", **settings)
    packed.load_state_dict(dense.state_dict())
    feats = torch.randn(len(LENGTHS), int(LENGTHS.max()), 12)
    for call in (lambda m: lambda x: m(x, LENGTHS), lambda m: lambda x: m(x, LENGTHS, 2)):
        ref = _outputs_and_grads(call(dense), feats, dict(dense.named_parameters()))
        got = _outputs_and_grads(call(packed), feats, dict(packed.named_parameters()))
        _assert_close(ref[0], got[0])
        _assert_close(ref[1], got[1])


def test_auto_runs_dense_on_cpu_bit_for_bit():
    torch.manual_seed(0)
    dense = BiLSTMCTC(12, 7, hidden_size=6, num_layers=3, subsampling="stack", lstm="dense")
    torch.manual_seed(0)
    auto = BiLSTMCTC(12, 7, hidden_size=6, num_layers=3, subsampling="stack")
    assert auto.config["lstm"] == "auto" and auto.lstm.implementation == "auto"
    assert (not auto.lstm.uses_packed(torch.device("cpu"))
            and auto.lstm.uses_packed(torch.device("cuda")))
    assert dense.lstm.uses_packed(torch.device("cuda")) is False
    feats, lengths = torch.randn(3, 20, 12), torch.tensor([20, 9, 1])
    for mode in (False, True):
        torch.manual_seed(3)
        a = auto.train(mode)(feats, lengths)[0]
        torch.manual_seed(3)
        d = dense.train(mode)(feats, lengths)[0]
        assert torch.equal(a, d)


def test_parameters_are_the_same_for_every_implementation():
    models = {impl: _ctc_model(impl, inter_classes=5, condition_layer=1)
              for impl in ("auto", "dense", "packed")}
    states = {impl: m.state_dict() for impl, m in models.items()}
    names = {impl: [n for n, _ in m.named_parameters()] for impl, m in models.items()}
    assert names["auto"] == names["dense"] == names["packed"]
    assert list(states["auto"]) == list(states["dense"]) == list(states["packed"])
    assert all(torch.equal(states["dense"][k], states[impl][k])
               for impl in states for k in states["dense"])
    assert "lstm.layers.2.bwd.weight_hh_l0" in states["packed"]
    # the packed path's template is no submodule
    assert not any("template" in n for n in states["packed"])
    assert [m.config["lstm"] for m in models.values()] == ["auto", "dense", "packed"]


def test_a_dense_state_dict_loads_into_packed_with_the_same_outputs():
    torch.manual_seed(0)
    dense = BiLSTMCTC(12, 7, hidden_size=6, num_layers=2, subsampling="conv",
                      subsampling_factor=2, lstm="dense")
    torch.manual_seed(1)  # different initial weights, all replaced
    packed = BiLSTMCTC(12, 7, hidden_size=6, num_layers=2, subsampling="conv",
                       subsampling_factor=2, lstm="packed")
    packed.load_state_dict(dense.state_dict())  # strict
    feats, lengths = torch.randn(4, 25, 12), torch.tensor([25, 3, 17, 1])
    ref, ref_len = dense.eval()(feats, lengths)
    out, out_len = packed.eval()(feats, lengths)
    assert torch.equal(ref_len, out_len) and torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bilstm_equals_packed_bidirectional_lstm_with_its_weights(impl):
    """BiLSTM must give what nn.LSTM(bidirectional) over a PackedSequence gives, outputs and
    gradients, with that packed module's weights (layer l, direction d of one holds layer l's d
    LSTM of the other)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=12, num_layers=3, dropout=0.0, subsampling="none",
                      lstm=impl).eval()
    packed = torch.nn.LSTM(20, 12, num_layers=3, bidirectional=True, batch_first=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lstm.")}
    # "weight_ih_l2_reverse" -> "layers.2.bwd.weight_ih_l0"
    for key, value in packed.state_dict().items():
        name, _, rest = key.rpartition("_l")
        layer, _, reverse = rest.partition("_")
        state[f"lstm.layers.{layer}.{'bwd' if reverse else 'fwd'}.{name}_l0"] = value
    model.load_state_dict(state)  # strict: every weight has its place

    lengths = torch.tensor([17, 3, 17, 1, 9])
    x = torch.randn(5, 17, 20, requires_grad=True)
    ours = model.lstm(x, lengths)
    ref, _ = pad_packed_sequence(
        packed(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[0],
        batch_first=True, total_length=17,
    )
    assert torch.allclose(ours, ref, atol=1e-6)  # padding frames are zero in both
    weights = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    assert g_ours[1, 3:].abs().sum() == 0  # nothing flows from padding


def test_a_bad_lstm_setting_is_refused_by_name():
    with pytest.raises(ValueError,
                       match=r"model.lstm must be 'auto', 'dense' or 'packed', got 'cudnn'"):
        BiLSTMCTC(20, 9, lstm="cudnn")
    with pytest.raises(ValueError, match="model.lstm must be"):
        BiLSTM(4, 3, 1, implementation="Dense")


@pytest.mark.parametrize("impl", IMPLS)
def test_model_ignores_padding(impl):
    torch.manual_seed(0)
    model = BiLSTMCTC(80, 29, hidden_size=16, num_layers=2, subsampling="stack",
                      subsampling_factor=3, lstm=impl)
    model.eval()
    x = torch.randn(1, 30, 80)
    alone, n = model(x, torch.tensor([30]))
    padded = torch.cat([x, torch.randn(1, 12, 80)], dim=1)
    batch, m = model(padded, torch.tensor([30]))
    assert int(n) == int(m) == 10
    assert torch.allclose(alone[0, :10], batch[0, :10], atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bilstm_runs_under_cpu_bf16_autocast_on_any_cpu(impl):
    """trainer.precision=bf16-mixed on CPU: oneDNN has bf16 LSTM kernels only on CPUs with native
    bf16; elsewhere (AVX2-only) the LSTM layers must fall back to fp32 instead of failing. Either
    way the result is the fp32 one to bf16 rounding, and gradients flow."""
    torch.manual_seed(0)
    lstm = BiLSTM(24, 32, num_layers=2, implementation=impl)
    x = torch.randn(3, 11, 24, requires_grad=True)
    lengths = torch.tensor([11, 7, 4])
    ref = lstm(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lstm(x, lengths)
    assert torch.allclose(out.float(), ref, atol=0.05)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_shared_dropout_keeps_one_mask_per_utterance_and_channel():
    torch.manual_seed(0)
    drop = SharedDropout(0.5, shared=True).train()
    x = torch.ones(4, 50, 16)
    y = drop(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}  # kept values rescaled by 1 / (1 - p)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every frame
    assert 0.3 < (y > 0).float().mean() < 0.7
    assert not torch.equal(y[0], y[1])  # a different mask per utterance
    plain = SharedDropout(0.5, shared=False).train()(x)
    assert not torch.equal(plain, plain[:, :1].expand_as(plain))
    assert torch.equal(drop.eval()(x), x)
    model = BiLSTMCTC(20, 9, hidden_size=8, num_layers=2, shared_dropout=True)
    assert model.config["shared_dropout"] is True and model.lstm.dropout.shared


def test_cpu_dropout_drops_p_and_keeps_the_mean():
    """asr.lstm.dropout on CPU (masks from 16-bit random integers): the dropped fraction is p to
    sampling noise, every element's expectation is its value, the gradient is the mask, and a seed
    repeats the mask."""
    torch.manual_seed(0)
    # 10^6 elements: std of the dropped fraction 0.0004
    x = torch.full((1000, 1000), 3.0, requires_grad=True)
    for p in (0.1, 0.2, 0.5):
        y = dropout(x, p)
        assert abs((y == 0).float().mean().item() - p) < 0.002
        assert abs(y.mean().item() - 3.0) < 0.01
        kept = y[y != 0]
        assert torch.allclose(kept, torch.full_like(kept, 3.0 * 65536 / (65536 - round(p * 65536))))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, y.detach() / 3.0)  # d(sum)/dx: the scaled mask
    odd = torch.ones(5, 7, 3)  # an element count not a multiple of 4
    assert dropout(odd, 0.5).shape == odd.shape
    torch.manual_seed(1)
    first = dropout(odd, 0.5)
    torch.manual_seed(1)
    assert torch.equal(first, dropout(odd, 0.5))
    assert torch.equal(dropout(odd, 0.0), odd) and not dropout(odd, 1.0).any()
    means = torch.stack([dropout(odd, 0.5) for _ in range(4000)]).mean(0)
    assert (means - 1).abs().max() < 0.1  # no element is favoured (each mean's std ~0.016)


@pytest.mark.parametrize("impl", IMPLS)
def test_intermediate_ctc_outputs_share_the_output_layer(impl):
    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0, lstm=impl).eval()
    feats, lengths = torch.randn(2, 30, 20), torch.tensor([30, 21])
    final, inter, out_lengths = model(feats, lengths, layer=2)
    ref, ref_lengths = model(feats, lengths)
    # packed: forward runs the stack in one call, forward(layer=...) layer by layer
    assert torch.allclose(final, ref, atol=1e-5) and torch.equal(out_lengths, ref_lengths)
    x, _ = model.frontend(feats, lengths)
    second = model.lstm.layer_outputs(x, ref_lengths)[1]
    assert torch.allclose(inter, model.classifier(second).log_softmax(-1))
    assert not torch.allclose(inter, final)
    with pytest.raises(ValueError, match="1..2"):
        model(feats, lengths, layer=3)


@pytest.mark.parametrize("impl", IMPLS)
def test_self_conditioned_ctc_feeds_the_intermediate_posteriors_to_the_next_layer(impl):
    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0, condition_layer=2,
                      lstm=impl).eval()
    assert model.config["condition_layer"] == 2 and model.condition_proj.weight.shape == (16, 9)
    feats, lengths = torch.randn(2, 30, 20), torch.tensor([30, 21])
    final, inter, out_lengths = model(feats, lengths, layer=2)
    ref, _ = model(feats, lengths)
    assert torch.equal(final, ref)  # decoding sees the same conditioned network as training
    # by hand: layer 2's posteriors, projected, are added to its output before layer 3 reads it
    x, short = model.frontend(feats, lengths)
    first, second = model.lstm.layer_outputs(x, short)[:2]
    assert torch.allclose(inter, model.classifier(second).log_softmax(-1))
    valid = (torch.arange(x.shape[1]) < short[:, None])[..., None]
    third_in = (second + model.condition_proj(inter.exp())) * valid
    index = reversal_index(short, x.shape[1])
    top = model.lstm.layers[2]
    backward = top["bwd"](_gather_time(third_in, index))[0]
    out = torch.cat([top["fwd"](third_in)[0], _gather_time(backward, index)], -1) * valid
    assert torch.allclose(final, model.classifier(out).log_softmax(-1), atol=1e-5)
    # the conditioning changes the model: without it the last layer differs
    plain = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0, lstm=impl)
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("condition_proj")})
    assert not torch.allclose(plain.eval()(feats, lengths)[0], final)
    with pytest.raises(ValueError, match="condition_layer must be 1..2"):
        BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, condition_layer=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_equals_dense_on_cuda_and_auto_takes_packed(monkeypatch):
    dense = _ctc_model("dense", inter_classes=5, condition_layer=1).cuda()
    packed, auto = (_ctc_model("packed", inter_classes=5, condition_layer=1),
                    _ctc_model("auto", inter_classes=5))
    packed.load_state_dict(dense.state_dict())
    auto.load_state_dict({k: v for k, v in dense.state_dict().items()
                          if not k.startswith("condition_proj")})
    packed, auto = packed.cuda(), auto.cuda()
    feats = torch.randn(len(LENGTHS), int(LENGTHS.max()), 12, device="cuda")
    with (torch.backends.cudnn.flags(enabled=True, allow_tf32=False),
          warnings.catch_warnings(record=True) as caught):
        warnings.simplefilter("always")
        for call in (lambda m: lambda x: m(x, LENGTHS), lambda m: lambda x: m(x, LENGTHS, 1)):
            ref = _outputs_and_grads(call(dense), feats, dict(dense.named_parameters()))
            got = _outputs_and_grads(call(packed), feats, dict(packed.named_parameters()))
            _assert_close([t.cpu() for t in ref[0]], [t.cpu() for t in got[0]])
            _assert_close([t.cpu() for t in ref[1]], [t.cpu() for t in got[1]])
    # silenced for the packed calls
    assert not [w for w in caught if "contiguous chunk" in str(w.message)]

    # the packed call leaves the parameters where they are,
    # and a graph awaiting its backward stays valid
    pointers = [p.data_ptr() for p in packed.parameters()]
    first, second = packed(feats, LENGTHS)[0], packed(feats, LENGTHS)[0]
    (first.sum() + second.sum()).backward()
    assert pointers == [p.data_ptr() for p in packed.parameters()]

    calls = []
    original = BiLSTM._packed_call
    monkeypatch.setattr(BiLSTM, "_packed_call",
                        lambda self, *a: calls.append(a[0]) or original(self, *a))
    out = auto.train()(feats, LENGTHS)[0]
    assert calls == [0]  # the whole stack in one call
    out.sum().backward()
    assert all(p.grad is not None for p in auto.lstm.parameters())
    auto.cpu().eval()(feats.cpu(), LENGTHS)
    assert calls == [0]  # the same model on the CPU runs dense
