import pytest
import torch

from asr.data import load_audio, read_manifest
from asr.features import LogMelFeatures, SpecAugment
from asr.model import BiLSTMCTC, _gather_time, reversal_index


@pytest.fixture(scope="module")
def an4_batch(an4_dir):
    utts = read_manifest(an4_dir / "test.jsonl")[:4]
    wavs = [load_audio(u.audio_filepath) for u in utts]
    lengths = torch.tensor([w.numel() for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        audio[i, : w.numel()] = w
    return audio, lengths


def test_logmel_shapes_lengths_and_normalisation(an4_batch):
    audio, lengths = an4_batch
    feats, flen = LogMelFeatures()(audio, lengths)
    assert feats.shape == (4, int(flen.max()), 80)
    assert flen.tolist() == [int(n) // 160 + 1 for n in lengths]
    for i, n in enumerate(flen.tolist()):
        valid = feats[i, :n]
        assert valid.mean(0).abs().max() < 1e-3 and (valid.std(0, unbiased=False) - 1).abs().max() < 1e-2
        assert feats[i, n:].abs().sum() == 0  # padding stays zero


def test_logmel_of_padded_batch_equals_single_utterance(an4_batch):
    audio, lengths = an4_batch
    fe = LogMelFeatures()
    batch_feats, flen = fe(audio, lengths)
    i = int(lengths.argmin())
    alone, alone_len = fe(audio[i : i + 1, : lengths[i]], lengths[i : i + 1])
    n = int(alone_len)
    assert int(flen[i]) == n
    assert torch.allclose(batch_feats[i, :n], alone[0, :n], atol=1e-4)


def test_specaugment_masks_in_training_only():
    feats = torch.randn(3, 200, 80)
    lengths = torch.tensor([200, 150, 90])
    aug = SpecAugment(freq_masks=2, freq_width=20, time_masks=2, time_width=0.1)
    aug.eval()
    assert torch.equal(aug(feats, lengths), feats)
    aug.train()
    torch.manual_seed(0)
    out = aug(feats, lengths)
    zeroed = (out == 0) & (feats != 0)
    assert zeroed.any()
    # time masks stay inside each utterance's valid frames
    time_masked = zeroed.all(dim=2)
    for i, n in enumerate(lengths.tolist()):
        assert not time_masked[i, n:].any()


@pytest.mark.parametrize(
    "subsampling,factor", [("stack", 2), ("stack", 3), ("stack", 4), ("conv", 2), ("conv", 4), ("conv", 8), ("none", 1)]
)
def test_model_output_lengths_over_many_lengths(subsampling, factor):
    model = BiLSTMCTC(80, 29, hidden_size=16, num_layers=2, subsampling=subsampling, subsampling_factor=factor).eval()
    for t in range(1, 40):
        lengths = torch.tensor([t, max(1, t // 2)])
        log_probs, out_len = model(torch.randn(2, t, 80), lengths)
        assert log_probs.shape[0] == 2 and log_probs.shape[2] == 29
        assert int(out_len.max()) <= log_probs.shape[1]
        assert out_len.tolist() == model.output_lengths(lengths).tolist()
        assert int(out_len[0]) >= -(-t // factor) - (1 if subsampling == "conv" else 0)
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, log_probs.shape[1]), atol=1e-4)


def test_model_ignores_padding():
    torch.manual_seed(0)
    model = BiLSTMCTC(80, 29, hidden_size=16, num_layers=2, subsampling="stack", subsampling_factor=3).eval()
    x = torch.randn(1, 30, 80)
    alone, n = model(x, torch.tensor([30]))
    padded = torch.cat([x, torch.randn(1, 12, 80)], dim=1)
    batch, m = model(padded, torch.tensor([30]))
    assert int(n) == int(m) == 10
    assert torch.allclose(alone[0, :10], batch[0, :10], atol=1e-5)


def test_bilstm_equals_packed_bidirectional_lstm_and_loads_its_weights():
    """BiLSTM must give what nn.LSTM(bidirectional) over a PackedSequence gives, outputs and gradients,
    and a checkpoint holding that packed module's weights must load into BiLSTMCTC unchanged."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=12, num_layers=3, dropout=0.0, subsampling="none").eval()
    packed = torch.nn.LSTM(20, 12, num_layers=3, bidirectional=True, batch_first=True)
    old_state = {k: v for k, v in model.state_dict().items() if not k.startswith("lstm.")}
    old_state.update({f"lstm.{k}": v for k, v in packed.state_dict().items()})
    model.load_state_dict(old_state)  # strict: every renamed key must land

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


def test_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="model.subsampling"):
        BiLSTMCTC(80, 29, subsampling="pool")
    with pytest.raises(ValueError, match="subsampling_factor"):
        BiLSTMCTC(80, 29, subsampling="conv", subsampling_factor=3)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"model.dropout=.* must be in \[0, 1\)"):
            BiLSTMCTC(80, 29, dropout=bad)


def test_bilstm_runs_under_cpu_bf16_autocast_on_any_cpu():
    """trainer.precision=bf16-mixed on CPU: oneDNN has bf16 LSTM kernels only on CPUs with native bf16; elsewhere
    (AVX2-only) the LSTM layers must fall back to fp32 instead of failing. Either way the result is the fp32 one
    to bf16 rounding, and gradients flow."""
    from asr.model import BiLSTM

    torch.manual_seed(0)
    lstm = BiLSTM(24, 32, num_layers=2)
    x = torch.randn(3, 11, 24, requires_grad=True)
    lengths = torch.tensor([11, 7, 4])
    ref = lstm(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lstm(x, lengths)
    assert torch.allclose(out.float(), ref, atol=0.05)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_shared_dropout_keeps_one_mask_per_utterance_and_channel():
    from asr.model import SharedDropout

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
    """asr.model.dropout on CPU (masks from 16-bit random integers): the dropped fraction is p to sampling noise,
    every element's expectation is its value, the gradient is the mask, and a seed repeats the mask."""
    from asr.model import dropout

    torch.manual_seed(0)
    x = torch.full((1000, 1000), 3.0, requires_grad=True)  # 10^6 elements: std of the dropped fraction 0.0004
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


def test_global_normalisation_from_real_training_audio(an4_dir):
    from asr.features import global_stats

    utts = read_manifest(an4_dir / "train.jsonl")[:40]
    feats = LogMelFeatures(normalize="global")
    wavs = [load_audio(u.audio_filepath) for u in utts]
    mean, std = global_stats(feats, wavs)
    assert mean.shape == std.shape == (80,) and (std > 0.5).all()
    feats.set_global_stats(mean, std)
    out = torch.cat([feats(w[None], torch.tensor([w.numel()]))[0][0] for w in wavs])  # every frame of the 40
    assert out.mean(0).abs().max() < 1e-3 and (out.std(0) - 1).abs().max() < 1e-2
    assert set(feats.state_dict()) == {"global_mean", "global_std", "mel.spectrogram.window", "mel.mel_scale.fb"}
    with pytest.raises(ValueError, match="positive"):
        feats.set_global_stats(mean, torch.zeros(80))
    with pytest.raises(ValueError, match="normalize=global"):
        LogMelFeatures().set_global_stats(mean, std)


def test_intermediate_ctc_outputs_share_the_output_layer():
    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0).eval()
    feats, lengths = torch.randn(2, 30, 20), torch.tensor([30, 21])
    final, inter, out_lengths = model.forward_with_intermediate(feats, lengths, layer=2)
    ref, ref_lengths = model(feats, lengths)
    assert torch.equal(final, ref) and torch.equal(out_lengths, ref_lengths)
    x, _ = model.frontend(feats, lengths)
    second = model.lstm.layer_outputs(x, ref_lengths)[1]
    assert torch.allclose(inter, model.classifier(second).log_softmax(-1))
    assert not torch.allclose(inter, final)
    with pytest.raises(ValueError, match="1..2"):
        model.forward_with_intermediate(feats, lengths, layer=3)


def test_self_conditioned_ctc_feeds_the_intermediate_posteriors_to_the_next_layer():
    torch.manual_seed(0)
    model = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0, condition_layer=2).eval()
    assert model.config["condition_layer"] == 2 and model.condition_proj.weight.shape == (16, 9)
    feats, lengths = torch.randn(2, 30, 20), torch.tensor([30, 21])
    final, inter, out_lengths = model.forward_with_intermediate(feats, lengths, layer=2)
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
    assert torch.allclose(final, model.classifier(out).log_softmax(-1), atol=1e-6)
    # the conditioning changes the model: without it the last layer differs
    plain = BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, dropout=0.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("condition_proj")})
    assert not torch.allclose(plain.eval()(feats, lengths)[0], final)
    with pytest.raises(ValueError, match="condition_layer must be 1..2"):
        BiLSTMCTC(20, 9, hidden_size=8, num_layers=3, condition_layer=3)
