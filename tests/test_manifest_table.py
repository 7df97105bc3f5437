"""ManifestTable: the utterances of read_manifest, held as arrays and read back a line at a
time."""

import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from asr.data.dataset import AudioDataset, collate
from asr.data.manifest import ManifestTable, Utterance, read_manifest, write_manifest
from asr.text import CharTokenizer


@pytest.fixture
def manifest(tmp_path):
    """Six utterances with audio: relative paths (plain, ``./``, doubled slashes), absolute
    ones, no id or speaker, non-ASCII text, a blank line and a CRLF ending."""
    (tmp_path / "wav").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths = ["wav/a.wav", "./wav/b.wav", "wav//c.wav", str(elsewhere / "d.wav"), "wav/e.wav",
             "wav/f.wav"]
    for i, p in enumerate(paths):
        audio = (tmp_path / p) if not os.path.isabs(p) else p
        sf.write(audio, np.sin(np.arange(1600 * (i + 1)) * 0.01 * (i + 1)).astype(np.float32),
                 16000)
    lines = []
    for i, p in enumerate(paths):
        row = {"audio_filepath": p, "duration": 0.1 * (i + 1), "text": f"Word {'éa'[i % 2]} {i}",
               "id": f"u{i}", "speaker": f"s{i % 2}"}
        if i == 4:
            del row["id"], row["speaker"]
        lines.append(json.dumps(row, ensure_ascii=i % 2 == 0))
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        ("\n".join(lines[:2]) + "\n\n" + "\r\n".join(lines[2:]) + "\n").encode("utf-8"))
    return path


def test_table_reads_what_read_manifest_reads(manifest):
    utts, table = read_manifest(manifest), ManifestTable.read(manifest)
    assert len(table) == len(utts) == 6
    assert list(table) == utts and [table[i] for i in range(6)] == utts and table[-1] == utts[-1]
    assert (utts[1].audio_filepath == str(manifest.parent / "wav" / "b.wav")
            and utts[4].id == "wav/e.wav")
    assert (table.durations.dtype == np.float32
            and np.allclose(table.durations, [u.duration for u in utts]))
    with pytest.raises(IndexError):
        table[6]
    # no objects
    assert table.offsets.dtype == np.int64 and table.offsets.nbytes + table.lengths.nbytes == 6 * 12


def test_subsets_and_keep(manifest):
    utts, table = read_manifest(manifest), ManifestTable.read(manifest)
    picked = np.array([5, 0, 3])
    assert list(table.select(picked)) == [utts[i] for i in picked]
    mask = np.array([True, False, True, True, False, False])
    assert list(table.select(mask)) == [u for u, m in zip(utts, mask, strict=True) if m]
    assert list(table[1::2]) == utts[1::2] and list(table.select(picked)[1:]) == [utts[0], utts[3]]
    # each chunk of lines goes to `keep` once, parsed; only the kept ones stay (as offsets)
    seen = []

    def keep(chunk):
        seen.extend(chunk)
        return [u.duration > 0.35 for u in chunk]

    assert list(ManifestTable.read(manifest, keep)) == utts[3:] and seen == utts
    # the lines of a chunk read one by one when far apart (a shuffled or sparse selection of a
    # large manifest)
    table.BLOCK = 1
    assert list(table.select(picked)) == [utts[i] for i in picked]


def test_table_after_fork_in_loader_workers(manifest):
    table = ManifestTable.read(manifest)
    ds = AudioDataset(table, CharTokenizer(" abcdefghijklmnopqrstuvwxyz'é0123456789"))
    assert ds.utterances is table and ds.durations is table.durations  # not turned into a list
    expected = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=1,
                        multiprocessing_context="fork")
    got = [(b.audio[j, : b.audio_lengths[j]], (b.targets[j, : b.target_lengths[j]],), b.ids[j])
           for b in loader for j in range(len(b.ids))]
    assert ([g[2] for g in got] == [e[2] for e in expected]
            == [u.id for u in read_manifest(manifest)])
    assert all(torch.equal(g[0], e.wav) and torch.equal(g[1][0], e.labels[0])
               for g, e in zip(got, expected, strict=True))
    # a worker started by spawn gets a pickled table: it opens the manifest again
    assert list(pickle.loads(pickle.dumps(table.select([2, 1])))) == [table[2], table[1]]


def test_bad_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "a.wav", "duration": 1, "text": "a"}\n\n'
                   '{"audio_filepath": "b.wav"}\n')
    with pytest.raises(ValueError) as from_list:
        read_manifest(bad)
    with pytest.raises(ValueError) as from_table:
        ManifestTable.read(bad)
    assert str(from_table.value) == str(from_list.value)
    assert (f"{bad}:3: not a manifest line (KeyError" in str(from_table.value)
            and '"duration"' in str(from_table.value))
    with pytest.raises(FileNotFoundError, match="prepare stage"):
        ManifestTable.read(tmp_path / "missing.jsonl")
    # a manifest rewritten in place under a table: the line it can no longer parse is named
    good = tmp_path / "good.jsonl"
    write_manifest(good, [Utterance("a.wav", 1.0, "a", "a"), Utterance("b.wav", 2.0, "b", "b")])
    table = ManifestTable.read(good)
    with good.open("r+b") as f:
        f.seek(int(table.offsets[1]))
        f.write(b"{oops")
    assert table[0].id == "a"
    with pytest.raises(ValueError, match=rf"{good}:2: not a manifest line \(JSONDecodeError"):
        table[1]
