"""WER of asr.transcribe's long-file splitting: N AN4 test utterances back to back, several chunk settings.

    python benchmarks/long_audio.py exp/an4/<run>/checkpoints/best.ckpt data/an4/test.jsonl [N]
"""

from __future__ import annotations

import sys

import jiwer
import torch

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.recognizer import Recognizer, split_points
from asr.text import normalize_text


def main(checkpoint: str, manifest: str, n: int = 20) -> None:
    module = Recognizer.load(checkpoint)
    utts = read_manifest(manifest)[:n]
    wav = torch.cat([load_audio(u.audio_filepath) for u in utts])  # (S,)
    ref = " ".join(normalize_text(u.text) for u in utts)
    print(f"{wav.numel() / 16000:.1f} s of audio, {len(ref.split())} words")
    print("chunk_seconds | overlap_seconds | search_seconds | pieces | WER %")
    for chunk, overlap, search in [(600, 0, 0), (10, 1, 3), (10, 0, 3), (5, 1, 0), (5, 0, 0)]:
        log_probs = module.long_log_probs(wav, chunk, overlap, search)  # (T, C)
        hyp = module.decoder.decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]
        pieces = len(split_points(wav, 16000, module.samples_per_frame, chunk, search)) - 1
        print(f"{chunk} | {overlap} | {search} | {pieces} | {100 * jiwer.wer(ref, hyp):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20)
