import pytest
import torch

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.features import LogMelFeatures, SpecAugment
from asr.model import BiLSTMCTC


@pytest.fixture(scope="module")
def speech_batch(tiny_dir):
    utts = read_manifest(tiny_dir / "test.jsonl")[:4]
    wavs = [load_audio(u.audio_filepath) for u in utts]
    lengths = torch.tensor([w.numel() for w in wavs])
    audio = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        audio[i, : w.numel()] = w
    return audio, lengths


def test_logmel_shapes_lengths_and_normalisation(speech_batch):
    audio, lengths = speech_batch
    feats, flen = LogMelFeatures()(audio, lengths)
    assert feats.shape == (4, int(flen.max()), 80)
    assert flen.tolist() == [int(n) // 160 + 1 for n in lengths]
    for i, n in enumerate(flen.tolist()):
        valid = feats[i, :n]
        assert (valid.mean(0).abs().max() < 1e-3
                and (valid.std(0, unbiased=False) - 1).abs().max() < 1e-2)
        assert feats[i, n:].abs().sum() == 0  # padding stays zero


def test_logmel_of_padded_batch_equals_single_utterance(speech_batch):
    audio, lengths = speech_batch
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
    "subsampling,factor",
    [("stack", 2), ("stack", 3), ("stack", 4), ("conv", 2), ("conv", 4), ("conv", 8), ("none", 1)]
)
def test_model_output_lengths_over_many_lengths(subsampling, factor):
    model = BiLSTMCTC(80, 29, hidden_size=16, num_layers=2, subsampling=subsampling,
                      subsampling_factor=factor).eval()
    for t in range(1, 40):
        lengths = torch.tensor([t, max(1, t // 2)])
        log_probs, out_len = model(torch.randn(2, t, 80), lengths)
        assert log_probs.shape[0] == 2 and log_probs.shape[2] == 29
        assert int(out_len.max()) <= log_probs.shape[1]
        assert out_len.tolist() == model.output_lengths(lengths).tolist()
        assert int(out_len[0]) >= -(-t // factor) - (1 if subsampling == "conv" else 0)
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, log_probs.shape[1]), atol=1e-4)


def test_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="model.subsampling"):
        BiLSTMCTC(80, 29, subsampling="pool")
    with pytest.raises(ValueError, match="subsampling_factor"):
        BiLSTMCTC(80, 29, subsampling="conv", subsampling_factor=3)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"model.dropout=.* must be in \[0, 1\)"):
            BiLSTMCTC(80, 29, dropout=bad)


def test_global_normalisation_from_real_training_audio(tiny_dir):
    from asr.features import global_stats

    utts = read_manifest(tiny_dir / "train.jsonl")  # 25 utterances
    feats = LogMelFeatures(normalize="global")
    wavs = [load_audio(u.audio_filepath) for u in utts]
    mean, std = global_stats(feats, wavs)
    assert mean.shape == std.shape == (80,) and (std > 0.5).all()
    feats.set_global_stats(mean, std)
    # every frame of the 25
    out = torch.cat([feats(w[None], torch.tensor([w.numel()]))[0][0] for w in wavs])
    assert out.mean(0).abs().max() < 1e-3 and (out.std(0) - 1).abs().max() < 1e-2
    assert set(feats.state_dict()) == {"global_mean", "global_std", "mel.spectrogram.window",
                                       "mel.mel_scale.fb"}
    with pytest.raises(ValueError, match="positive"):
        feats.set_global_stats(mean, torch.zeros(80))
    with pytest.raises(ValueError, match="normalize=global"):
        LogMelFeatures().set_global_stats(mean, std)

