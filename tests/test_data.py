import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.data.check import check_manifest, check_manifests, format_check
from asr.data.datamodule import ASRDataModule
from asr.data.dataset import AudioDataset, Item, LoadFailure, collate
from asr.data.filter import UtteranceFilter
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.sampler import BucketBatchSampler
from asr.text import CharTokenizer, WordTokenizer


def test_manifest_roundtrip_resolves_relative_paths(tmp_path):
    utts = [
        Utterance("wav/a.flac", 1.25, "hello world", "a", "s1"),
        Utterance("/abs/b.wav", 2.0, "x", "b", "s2"),
    ]
    write_manifest(tmp_path / "m.jsonl", utts)
    got = read_manifest(tmp_path / "m.jsonl")
    assert got[0].audio_filepath == str(tmp_path / "wav" / "a.flac")
    assert got[1].audio_filepath == "/abs/b.wav"
    assert [(u.duration, u.text, u.id, u.speaker) for u in got] == [
        (1.25, "hello world", "a", "s1"),
        (2.0, "x", "b", "s2"),
    ]
    line = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert set(line) == {"audio_filepath", "duration", "text", "id", "speaker"}


def test_manifest_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare stage"):
        read_manifest(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "a"}\n'
                   '{"audio_filepath": "b.wav"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_manifest(bad)


def test_load_audio_sphere(tiny_dir):
    utt = read_manifest(tiny_dir / "test.jsonl")[0]
    wav = load_audio(utt.audio_filepath)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(wav.numel() / 16000 - utt.duration) < 1e-3
    assert 0 < wav.abs().max() <= 1.0


def test_load_audio_downmixes_and_resamples(tiny_dir, tmp_path):
    utt = read_manifest(tiny_dir / "test.jsonl")[0]
    ref = load_audio(utt.audio_filepath).numpy()
    # stereo at 8 kHz, 16-bit FLAC: must come back mono at 16 kHz with the same duration
    stereo = np.stack([ref[::2], ref[::2]], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 8000, subtype="PCM_16")
    wav = load_audio(tmp_path / "s.flac", 16000)
    assert wav.ndim == 1 and abs(wav.numel() - ref.size) <= 2
    corr = np.corrcoef(wav.numpy()[: ref.size - 400], ref[: ref.size - 400])[0, 1]
    assert corr > 0.9  # low-passed, but the same speech
    # 8-bit unsigned WAV and float WAV are scaled to [-1, 1], not misread
    sf.write(tmp_path / "u8.wav", ref, 16000, subtype="PCM_U8")
    sf.write(tmp_path / "f.wav", ref, 16000, subtype="FLOAT")
    assert np.abs(load_audio(tmp_path / "u8.wav").numpy() - ref).max() < 0.02
    assert np.allclose(load_audio(tmp_path / "f.wav").numpy(), ref)


def test_collate_pads_and_keeps_lengths():
    items = [Item(torch.ones(5), (torch.tensor([1, 2]),), "a", "x"),
             Item(torch.ones(3), (torch.tensor([3, 4, 5]),), "b", "y")]
    b = collate(items)
    assert b.audio.shape == (2, 5) and b.audio[1, 3:].abs().sum() == 0
    assert b.audio_lengths.tolist() == [5, 3] and b.target_lengths.tolist() == [2, 3]
    assert b.targets.tolist() == [[1, 2, 0], [3, 4, 5]] and b.ids == ["a", "b"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bucket_sampler_covers_each_index_once_within_budget(seed):
    rng = random.Random(seed)
    durations = [rng.uniform(0.5, 12.0) for _ in range(500)]
    s = BucketBatchSampler(durations, max_batch_seconds=40.0, num_buckets=10, seed=seed)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches, whole = list(s), s._rank_batches()
        # the epoch's packing holds every utterance
        assert sorted(i for b in whole for i in b) == list(range(500))
        assert batches == whole[: len(s)]  # ... and the epoch is held to len(), epoch 0's count
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == len(flat)
        for b in batches:
            assert len(b) == 1 or max(durations[i] for i in b) * len(b) <= 40.0
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first  # reshuffled per epoch
    s.set_epoch(0)
    assert list(s) == first  # ... reproducibly


def test_bucketing_reduces_padding():
    rng = random.Random(0)
    durations = [rng.uniform(0.5, 15.0) for _ in range(2000)]

    def padding(num_buckets):
        batches = list(BucketBatchSampler(durations, 60.0, num_buckets=num_buckets, seed=0))
        padded = sum(max(durations[i] for i in b) * len(b) for b in batches)
        return 1 - sum(durations) / padded

    assert padding(50) < 0.05 < padding(1)


def test_bucket_sampler_ddp_ranks_disjoint_equal_steps_same_bucket():
    rng = random.Random(0)
    durations = [rng.uniform(1.0, 15.0) for _ in range(301)]
    for world in (2, 3):
        samplers = [BucketBatchSampler(durations, 20.0, num_buckets=10, seed=3, num_replicas=world,
                                       rank=r) for r in range(world)]
        per_rank = [list(s) for s in samplers]
        assert len({len(p) for p in per_rank}) == 1
        seen = [i for p in per_rank for b in p for i in b]
        assert len(seen) == len(set(seen))  # no utterance on two ranks
        batches = sum(len(b) for b in samplers[0]._bucket_batches(random.Random(3)))
        assert len(per_rank[0]) == batches // world  # fewer than `world` batches left out
        # at each step the ranks' longest utterances are alike (the step waits for the slowest
        # rank); dealt out in turn as before, the median and 90th percentile were 0.24-0.39 and
        # 0.62-0.71
        spread = sorted(1 - min(longest) / max(longest) for longest in
                        zip(*[[max(durations[i] for i in b) for b in p] for p in per_rank],
                            strict=True))
        assert spread[len(spread) // 2] < 0.1 and spread[int(0.9 * len(spread))] < 0.2
        evals = [list(BucketBatchSampler(durations, 20.0, shuffle=False, drop_last=False,
                                         num_replicas=world, rank=r)) for r in range(world)]
        assert max(len(p) for p in evals) - min(len(p) for p in evals) <= 1
        scored = sorted(i for p in evals for b in p for i in b)
        assert scored == list(range(301))  # evaluation scores every utterance exactly once
    tiny = [list(BucketBatchSampler([1.0, 1.0, 1.0], 20.0, shuffle=False, drop_last=False,
                                    num_replicas=2, rank=r)) for r in (0, 1)]
    # fewer batches than ranks
    assert all(tiny) and sorted(i for p in tiny for b in p for i in b) == [0, 1, 2]


def test_bucket_sampler_epoch_set_by_lightning_and_resumable():
    """Lightning's own set_epoch call reaches the sampler (before, every epoch had epoch 0's
    order), and resume continues an epoch after its trained batches with the same items and
    augmentation seeds."""
    from lightning_fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    durations = [1.0 + (i % 13) * 0.4 for i in range(200)]
    s = BucketBatchSampler(durations, 12.0, num_buckets=5, seed=7, draw_seeds=True)
    _set_sampler_epoch(DataLoader(list(range(200)), batch_sampler=s), 3)
    assert s.epoch == 3
    whole = list(s)
    assert all(isinstance(i, tuple) and len(i) == 2 for b in whole for i in b)
    other = BucketBatchSampler(durations, 12.0, num_buckets=5, seed=7, draw_seeds=True)
    other.resume(3, 10)
    assert list(other) == whole[10:]
    assert list(other) == whole  # the skip is for one iteration only
    other.resume(3, len(whole))  # a finished epoch: the next one from its start
    assert other.epoch == 4 and list(other)[0] != whole[0]


def test_bucket_sampler_epochs_keep_one_length_also_when_resumed():
    """The shuffle packs epochs into different numbers of batches; Lightning takes an epoch's
    length from len() when it builds the loader, which a resumed run does in a later epoch. Every
    epoch is held to epoch 0's count, so a run resumed mid-epoch trains the batches the
    uninterrupted one trained, no more (found by scripts/kill_test.py)."""
    rng = random.Random(0)
    durations = [rng.uniform(0.5, 6.0) for _ in range(300)]
    clean = BucketBatchSampler(durations, 30.0, num_buckets=5, seed=1, draw_seeds=True)
    counts = [len(clean._rank_batches(e)) for e in range(6)]
    assert len(set(counts)) > 1, counts  # the packing differs: the case that matters
    epoch = next(e for e in range(1, 6) if counts[e] > counts[0])
    clean.set_epoch(epoch)
    trained = list(clean)
    assert len(trained) == len(clean) == counts[0]
    resumed = BucketBatchSampler(durations, 30.0, num_buckets=5, seed=1, draw_seeds=True)
    resumed.resume(epoch, 10)
    assert len(resumed) == counts[0] and list(resumed) == trained[10:]


def test_datamodule_drops_unencodable_text(tiny_dir, tmp_path):
    utts = read_manifest(tiny_dir / "train.jsonl")[:6]
    bad = [
        Utterance(u.audio_filepath, u.duration, t, u.id, u.speaker)
        for u, t in zip(utts[:2], ["", "caf\u00e9"], strict=True)
    ]
    write_manifest(tmp_path / "m.jsonl", bad + utts[2:])
    dm = ASRDataModule(CharTokenizer(), str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl"),
                       num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4
    reasons = {r["id"]: r["reason"] for r in dm.rejected if r["split"] == "train"}
    assert reasons == {utts[0].id: "empty text",
                       utts[1].id: "characters outside the tokenizer: '\u00e9'"}
    batch = next(iter(dm.train_dataloader()))
    assert batch.audio.shape[0] == batch.targets.shape[0] >= 1


def test_datamodule_rejects_text_the_intermediate_tokenizer_cannot_encode(tiny_dir, tmp_path):
    """A word model can hold a word the characters of its intermediate CTC cannot spell ("café" as
    a word class): with that tokenizer in extra_tokenizers the utterance is left out with its
    reason, not a crash mid-epoch."""
    utts = read_manifest(tiny_dir / "train.jsonl")[:4]
    odd = Utterance(utts[0].audio_filepath, utts[0].duration, "caf\u00e9 yes", "odd",
                    utts[0].speaker)
    write_manifest(tmp_path / "m.jsonl", [odd, *utts[1:]])
    words = WordTokenizer(words=["caf\u00e9", "yes", "no", "go", "stop", "help", "start"])
    assert words.encode("caf\u00e9 yes") == [1, 2]
    alone = ASRDataModule(words, str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl"),
                          num_workers=0)
    alone.setup("fit")
    assert "odd" in [u.id for u in alone.datasets["train"].utterances]
    both = ASRDataModule(words, str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl"),
                         num_workers=0, extra_tokenizers=[CharTokenizer()])
    both.setup("fit")
    assert "odd" not in [u.id for u in both.datasets["train"].utterances]
    assert [(r["id"], r["split"], r["reason"]) for r in both.rejected] == [
        ("odd", "train", "characters outside the tokenizer: '\u00e9'")]
    # validation scores every utterance
    assert "odd" in [u.id for u in both.datasets["val"].utterances]


def test_dataset_reads_real_an4(tiny_dir):
    utts = read_manifest(tiny_dir / "train.jsonl")[:3]
    ds = AudioDataset(utts, CharTokenizer())
    item = ds[0]
    assert item.id == utts[0].id and CharTokenizer().decode(item.labels[0].tolist()) == utts[0].text
    assert item.text == utts[0].text


def test_speed_perturbation_changes_length_by_factor(tiny_dir):
    utt = read_manifest(tiny_dir / "test.jsonl")[:1]
    n = AudioDataset(utt, CharTokenizer())[0][0].numel()
    for factor in (0.9, 1.1):
        wav, labels, _, _ = AudioDataset(utt, CharTokenizer(), speed_perturb=[factor])[0]
        assert abs(wav.numel() - n / factor) <= 2
        assert CharTokenizer().decode(labels[0].tolist()) == utt[0].text  # labels untouched
    with pytest.raises(ValueError, match="speed_perturb"):
        AudioDataset(utt, CharTokenizer(), speed_perturb=[3.0])


def test_audio_cache_serves_later_reads_from_memory(tiny_dir, tmp_path):
    """data.cache_audio: the second read of an utterance neither opens its file nor decodes it
    again, returns the same samples, and speed perturbation still applies to the cached
    waveform."""
    src = read_manifest(tiny_dir / "test.jsonl")[0]
    copy = tmp_path / "a.sph"
    copy.write_bytes(open(src.audio_filepath, "rb").read())
    utt = [Utterance(str(copy), src.duration, src.text, src.id)]
    ds = AudioDataset(utt, CharTokenizer(), cache=True)
    first = ds[0][0]
    copy.unlink()  # a read from disk would now fail
    again = ds[0][0]
    assert torch.equal(first, again) and torch.equal(first, load_audio(src.audio_filepath))
    # uncached: the missing file fails
    assert isinstance(AudioDataset(utt, CharTokenizer())[0], LoadFailure)
    perturbed = AudioDataset(utt, CharTokenizer(), speed_perturb=[1.1], cache=True)
    perturbed.cache[0] = first
    assert abs(perturbed[0][0].numel() - first.numel() / 1.1) <= 2
    assert torch.equal(perturbed.cache[0], first)  # the cache keeps the unperturbed samples


def test_filled_cache_serves_every_speed_to_loader_workers(tiny_dir, tmp_path):
    """data.cache_audio with speed perturbation: setup decodes each training file and resamples it
    to every speed once, in the main process; the forked loader worker then serves all three
    speeds with the files gone."""
    utts = []
    for u in read_manifest(tiny_dir / "train.jsonl")[:6]:
        copy = tmp_path / f"{u.id}.sph"
        copy.write_bytes(open(u.audio_filepath, "rb").read())
        utts.append(Utterance(str(copy), u.duration, u.text, u.id, u.speaker))
    missing = Utterance(str(tmp_path / "gone.sph"), 1.0, "yes", "gone")
    write_manifest(tmp_path / "m.jsonl", [*utts, missing])
    dm = ASRDataModule(CharTokenizer(), str(tmp_path / "m.jsonl"), str(tmp_path / "m.jsonl"),
                       num_workers=1, speed_perturb=[0.9, 1.0, 1.1], cache_audio=True)
    dm.setup("fit")
    ds = dm.datasets["train"]
    # the missing file stays out
    assert set(ds.cache) == {k for i in range(6) for k in (i, (i, 0.9), (i, 1.1))}
    for i, u in enumerate(utts):
        n = load_audio(u.audio_filepath).numel()
        assert torch.equal(ds.cache[i], load_audio(u.audio_filepath))
        for f in (0.9, 1.1):
            assert abs(ds.cache[(i, f)].numel() - n / f) <= 2
        Path(u.audio_filepath).unlink()  # from here on a read from disk would fail
    lengths: dict[str, set[int]] = {}
    dropped = set()
    for epoch in range(8):
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:  # a fresh worker process each time, forked after the fill
            dropped.update(f.id for f in batch.dropped)
            for uid, n in zip(batch.ids, batch.audio_lengths.tolist(), strict=True):
                lengths.setdefault(uid, set()).add(n)
    # every cached one read, no failure
    assert dropped <= {"gone"} and set(lengths) == {u.id for u in utts}
    sizes = {n for i in range(6) for n in (ds.cache[i].numel(), ds.cache[(i, 0.9)].numel(),
                                           ds.cache[(i, 1.1)].numel())}
    assert set().union(*lengths.values()) <= sizes
    assert max(len(s) for s in lengths.values()) >= 2  # speeds are still drawn per read
    with pytest.raises(ValueError, match="cache_audio"):
        AudioDataset(utts, CharTokenizer()).fill_cache()


# -------------------------------------------------------- the data check: the same rule as training
def test_data_check_and_datamodule_drop_utterances_too_short_for_ctc(tiny_dir, tmp_path):
    audio = read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [
        Utterance(audio, 2.0, "hello world", "ok"),
        Utterance(audio, 0.2, "a much too long label for a fifth of a second", "short"),
        Utterance(audio, 2.0, "numbers 42", "digits"),
    ])
    tok = CharTokenizer()

    def frames(samples):
        return samples // 160 // 4  # 10 ms hop, 4x subsampling: 5 frames in 0.2 s

    report = check_manifest(manifest, UtteranceFilter([tok], frames))
    assert report["utterances"] == 3 and abs(report["hours"] - 4.2 / 3600) < 1e-4
    assert report["unknown_chars"] == {"2": 1, "4": 1} and report["unusable_text"] == 1
    assert report["too_short"] == 1 and report["too_short_utts"][0]["id"] == "short"
    assert report["histogram"]["<1s"] == 1 and report["histogram"]["<5s"] == 2
    assert "inter_too_short" not in report
    dm = ASRDataModule(tok, str(manifest), str(manifest), output_frames=frames, num_workers=0)
    dm.setup("fit")
    assert [u.id for u in dm.datasets["train"].utterances] == ["ok"]
    train_reasons = {r["id"]: r["reason"] for r in dm.rejected if r["split"] == "train"}
    assert train_reasons["short"].startswith("too short for its label under CTC (5 frames <")
    # validation keeps every utterance, as evaluation does: all count in the WER; the one whose
    # text the tokenizer cannot encode has an empty label and stays out of the loss
    assert len(dm.datasets["val"].utterances) == 3
    batch = next(iter(dm.val_dataloader()))
    assert sorted(batch.texts) == ["a much too long label for a fifth of a second", "hello world",
                                   "numbers 42"]
    assert [n for t, n in zip(batch.texts, batch.target_lengths.tolist(), strict=True)
            if t == "numbers 42"] == [0]
    with pytest.raises(ValueError, match="needs at least the model's tokenizer"):
        UtteranceFilter([])


def test_data_check_counts_utterances_too_short_for_the_intermediate_labels(tiny_dir, tmp_path):
    audio = read_manifest(tiny_dir / "test.jsonl")[0].audio_filepath
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [
        Utterance(audio, 1.0, "seven", "fits"),  # 12 frames: 1 word, 5 characters
        # 5 words fit, 28 characters not
        Utterance(audio, 1.0, "three three seven eight nine", "words_only"),
    ])
    words = WordTokenizer(words=["seven", "three", "eight", "nine"])

    def frames(samples):
        return samples // 160 // 8  # 10 ms hop, 8x subsampling: 12 frames in 1 s

    report = check_manifest(manifest, UtteranceFilter([words, CharTokenizer()], frames))
    assert report["too_short"] == 0 and report["inter_too_short"] == 1
    assert "inter_too_short" not in check_manifest(manifest, UtteranceFilter([words], frames))
    assert "too short for their intermediate-CTC label: 1 (kept" in format_check("train", report)


def test_check_manifests_writes_the_report_the_run_keeps(tiny_dir, tmp_path):
    rule = UtteranceFilter([CharTokenizer()], lambda n: n // 160 // 3)
    reports = check_manifests({"train": str(tiny_dir / "train.jsonl"),
                               "val": str(tiny_dir / "dev.jsonl")}, rule, tmp_path)
    assert json.loads((tmp_path / "data_check.json").read_text()) == reports
    assert reports["train"]["utterances"] == 25 and reports["val"]["utterances"] == 5
    assert reports["train"]["unknown_chars"] == {} and reports["train"]["too_short"] == 0
