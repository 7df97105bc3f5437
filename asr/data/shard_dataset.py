"""Reading planned batches from tar shards: each loader worker reads its stream's shards in order
(:mod:`asr.data.shard_loader` has the plan)."""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence

import soundfile as sf
import webdataset as wds
from torch.utils.data import Dataset
from webdataset.tariterators import group_by_keys, tar_file_expander

from asr.audio import bad_samples, load_audio, speed_perturb
from asr.data.augment import AudioAugment, draw_generator
from asr.data.dataset import Item, LoadFailure, encode_labels
from asr.data.filter import UtteranceFilter
from asr.data.manifest import Utterance
from asr.data.shard_loader import ShardBatch, ShardIndex
from asr.text import normalize_text

log = logging.getLogger(__name__)


class _StreamReader:
    """One stream's position in its shards, and the utterances (compressed bytes) of the buffer
    being batched."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self.key: tuple[int, int, int] | None = None  # (epoch, stream, buffer) held in `samples`
        # (shard, member) -> WebDataset sample, or why not
        self.samples: dict[tuple[int, int], dict | str] = {}
        self.shard: int | None = None
        self.position = 0  # the next member of the open shard
        self.handle = None
        self.members: Iterator[dict] | None = None

    def close(self) -> None:
        handle, self.handle, self.members, self.shard = self.handle, None, None, None
        if handle is not None:
            try:
                handle.close()  # a pipe: waits for the command, raises on its exit status
            except OSError as err:
                log.warning("closing a shard stream: %s", err)

    def _open(self, shard: int) -> None:
        self.close()
        url = self.index.url(shard)
        self.handle = wds.gopen(url)
        self.members = group_by_keys(tar_file_expander([{"stream": self.handle, "url": url}]))
        self.shard, self.position = shard, 0

    def _next(self) -> dict:
        sample = next(self.members)
        self.position += 1
        return sample

    def load(self, batch: ShardBatch) -> None:
        """Read the buffer ``batch`` is cut from, unless it is the one held: continue the open
        shard where it stands, or open the span's shard and skip (without decoding) to its first
        member."""
        key = (batch.epoch, batch.stream, batch.buffer)
        if key == self.key:
            return
        self.key, self.samples = key, {}
        for shard, first, stop in batch.span:
            try:
                if self.shard != shard or self.position > first:
                    self._open(shard)
                while self.position < first:
                    self._next()
                for member in range(self.position, stop):
                    self.samples[(shard, member)] = self._next()
            except (OSError, EOFError, StopIteration, ValueError, tarfile.TarError) as err:
                why = f"shard {self.index.url(shard)} unreadable from member {self.position}: " \
                      f"{err.__class__.__name__}: {err}"
                for m in range(self.position, stop):
                    self.samples[(shard, m)] = why
                self.close()

    def take(self, shard: int, member: int) -> dict | str:
        return self.samples.pop((shard, member),
                                f"shard {self.index.url(shard)} member {member}: not read")


class ShardDataset(Dataset):
    """Planned batches (:class:`~asr.data.shard_loader.ShardBatch`) -> lists of
    :class:`~asr.data.dataset.Item` or :class:`~asr.data.dataset.LoadFailure`, as
    :class:`~asr.data.dataset.AudioDataset` yields them.

    Utterances the run's :class:`~asr.data.filter.UtteranceFilter` rejects come back as failures
    too, with the reason: ``collate`` drops them and the log names them once.

    Args:
        index: the shards.
        rule: which utterances can train; its tokenizers make the labels.
        sample_rate: audio is resampled to this rate.
        speed_perturb: speed factors drawn per utterance from its planned seed.
        augment: waveform augmentation drawn from the same seed; babble mixes the other
            utterances of the batch.
    """

    def __init__(self, index: ShardIndex, rule: UtteranceFilter, sample_rate: int = 16000,
                 speed_perturb: Sequence[float] | None = None,
                 augment: AudioAugment | None = None) -> None:
        self.augment = augment
        self.index = index
        self.rule = rule
        self.sample_rate = sample_rate
        self.speed_perturb = [float(f) for f in speed_perturb or []]
        self._readers: dict[int, _StreamReader] = {}  # per stream, in the worker process reading it
        self._at = (-1, -1)  # (epoch, position) of the last batch read here

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        """A loader worker starts with no stream open (what this process has read is not its)."""
        return {**self.__dict__, "_readers": {}, "_at": (-1, -1)}

    def __getitem__(self, item: int) -> Item | LoadFailure:
        raise TypeError("ShardDataset reads whole planned batches (__getitems__), "
                        "not single utterances")

    def __getitems__(self, batch: ShardBatch) -> list[Item | LoadFailure]:
        # a new epoch, or one read again: start afresh
        if batch.epoch != self._at[0] or batch.position <= self._at[1]:
            for reader in self._readers.values():
                reader.close()
            self._readers = {}
        self._at = (batch.epoch, batch.position)
        reader = self._readers.setdefault(batch.stream, _StreamReader(self.index))
        reader.load(batch)
        items = [self._item(reader.take(shard, member), seed)
                 for shard, member, seed in batch.members]
        if self.augment is None:
            return items
        return [self._augmented(items, k, seed) for k, (*_, seed) in enumerate(batch.members)]

    def _augmented(self, items: list[Item | LoadFailure], k: int, seed: int
                   ) -> Item | LoadFailure:
        """Item ``k`` through the augmentation; its babble voices are the batch's others."""
        item = items[k]
        if isinstance(item, LoadFailure):
            return item
        others = [it.wav for j, it in enumerate(items) if j != k and isinstance(it, Item)]

        def voices(count: int, rng) -> list:
            return [others[int(i)] for i in rng.integers(len(others), size=count)] if others \
                else []

        wav, speech = self.augment(item.wav, draw_generator(seed), voices)
        if speech:
            return item._replace(wav=wav)
        return Item(wav, encode_labels("", self.rule.tokenizers), item.id, "")

    def _item(self, sample: dict | str, seed: int) -> Item | LoadFailure:
        if isinstance(sample, str):
            return LoadFailure(sample.split(" ", 2)[1] if sample.startswith("shard ") else "?",
                               sample)
        where = f"{sample.get('__url__')} {sample['__key__']}"
        try:
            record = json.loads(sample["json"])
            audio = next(v for k, v in sample.items() if not k.startswith("__") and k != "json")
            wav = load_audio(io.BytesIO(audio), self.sample_rate)
        except (KeyError, StopIteration, json.JSONDecodeError, sf.LibsndfileError, RuntimeError,
                ValueError) as err:
            return LoadFailure(where, f"{where}: {err.__class__.__name__}: {err}")
        uid = record.get("id", where)
        if (why := bad_samples(wav)) is not None:
            return LoadFailure(uid, f"{where}: {why}")
        utt = Utterance(record.get("audio_filepath", ""), float(record["duration"]),
                        str(record["text"]), uid)
        frames = self.rule.frames([utt])
        rejected = self.rule.reject(utt, frames[0] if frames else None)
        if rejected is not None:
            return LoadFailure(uid, f"{where}: {rejected[1]}")
        if self.speed_perturb:
            wav = speed_perturb(wav, self.sample_rate,
                                random.Random(seed).choice(self.speed_perturb))
        text = normalize_text(utt.text)
        return Item(wav, encode_labels(text, self.rule.tokenizers), uid, text)
