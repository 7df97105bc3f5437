"""``report.html``: what ``report.md`` shows, on one self-contained page, with the worst utterances
to listen to.

Images and audio are inlined as ``data:`` URIs and the page may fetch nothing, so it opens the same
anywhere. See docs/report.md.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.data.manifest import Utterance, read_manifest
from asr.data.reading import mono_at, read_samples, where

# 30 s of 16 kHz 16-bit audio is ~1.3 MB of base64: five utterances a split keep the page a few MB
MAX_AUDIO_SECONDS = 30.0

# edit op of asr.report.analysis.word_pairs -> (CSS class, name in the legend)
OPS = {"S": ("sub", "substitution"), "D": ("del", "deletion"), "I": ("ins", "insertion")}

# a line ending in a backslash continues on the next: the page's CSS keeps that rule on one line
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; \
background: #f6f7f9;
       margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; \
min-height: 100vh; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 36px 0 10px; padding-bottom: 4px; \
border-bottom: 2px solid #e3e6eb; }
h3 { font-size: 1.05em; margin: 22px 0 8px; }
code, .align { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 0.92em; }
nav a { margin-right: 14px; } a { color: #1f5fbf; }
.muted, .note { color: #5d6673; } .note { font-size: 0.9em; font-style: italic; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #d9dde3; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; } .facts th { font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.curves { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 12px; }
figure { margin: 8px 0; } figure img { max-width: 100%; border: 1px solid #e3e6eb; }
figcaption { color: #5d6673; font-size: 0.88em; }
.utt { border: 1px solid #e3e6eb; border-radius: 6px; padding: 10px 12px; margin: 10px 0; }
.utt .head { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 14px; \
margin-bottom: 8px; }
.utt audio { height: 34px; }
.align { display: flex; flex-wrap: wrap; gap: 10px 3px; }
.w { display: inline-flex; flex-direction: column; padding: 1px 5px; border-radius: 3px; \
white-space: pre; }
.w.label { color: #8a929e; font-weight: 600; padding-left: 0; }
.gap { color: #8a929e; }
.sub { background: #ffd98a; } .del { background: #ffb3b3; } .ins { background: #b5dcff; }
.legend span { display: inline-block; padding: 1px 8px; border-radius: 3px; margin-right: 8px; }
"""


@dataclass(frozen=True)
class SplitView:
    """What the page shows of one scored split.

    Args:
        name: the split (``decode/<name>/``).
        report: its ``report.json`` (WER, counts).
        analysis: its :func:`asr.report.analysis.error_analysis`, or None without
            ``refs.txt``/``hyps.txt``.
        manifest: its manifest, found on disk (the audio to play), or None.
        alignment: ``decode/<name>/alignment.png`` when evaluation drew one, else None.
    """

    name: str
    report: dict
    analysis: dict | None
    manifest: Path | None
    alignment: Path | None


def _esc(value: object) -> str:
    return html.escape(str(value))


def png_uri(path: str | os.PathLike) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def wav_uri(wav: np.ndarray, sample_rate: int) -> str:
    """A waveform ((S,) float array in [-1, 1]) as a 16-bit PCM WAV ``data:audio/wav;base64,...``
    URI."""
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _audio(utt: Utterance | None, utt_id: str, sample_rate: int | None) -> str:
    """An ``<audio>`` player of the utterance's first :data:`MAX_AUDIO_SECONDS` seconds, or a note
    saying why not."""
    if utt is None:
        return f'<span class="note">no audio: {_esc(utt_id)} is not in the split\'s manifest</span>'
    path = where(utt)
    if not (utt.pipe or Path(utt.audio_filepath).is_file()):
        return f'<span class="note">no audio: {_esc(path)} does not exist</span>'
    try:
        data, native = read_samples(utt)  # read once (a wav.scp command runs once)
        rate = sample_rate or native
        wav = mono_at(data, native, rate).numpy()  # (S,)
    except (RuntimeError, ValueError, OSError) as err:  # soundfile's errors are RuntimeErrors
        return f'<span class="note">no audio: {_esc(path)} could not be read ({_esc(err)})</span>'
    seconds, keep = len(wav) / rate, int(MAX_AUDIO_SECONDS * rate)
    if len(wav) > keep:
        length = (f"first {MAX_AUDIO_SECONDS:.0f} s of {seconds:.1f} s "
                  f"(the page keeps {MAX_AUDIO_SECONDS:.0f} s an utterance)")
    else:
        length = f"{seconds:.1f} s"
    player = f'<audio controls preload="auto" src="{wav_uri(wav[:keep], rate)}"></audio>'
    return f'{player}<span class="note">{length}</span>'


def _aligned_words(utt: dict) -> str:
    """Reference over hypothesis, word by word; substitutions, deletions and insertions coloured
    (:data:`OPS`)."""
    if "words" not in utt:  # an errors.json older than word_pairs: its two sclite lines
        return f"<pre>REF: {_esc(utt['ref'])}\nHYP: {_esc(utt['hyp'])}</pre>"
    cells = ['<span class="w label"><span>REF</span><span>HYP</span></span>']
    for op, ref, hyp in utt["words"]:
        ref_html = _esc(ref) if ref else '<span class="gap">***</span>'
        hyp_html = _esc(hyp) if hyp else '<span class="gap">***</span>'
        if op:
            css, name = OPS[op]
            cells.append(f'<span class="w {css}" title="{name}"><span>{ref_html}</span>'
                         f'<span>{hyp_html}</span></span>')
        else:
            cells.append(f'<span class="w"><span>{ref_html}</span><span>{hyp_html}</span></span>')
    return '<div class="align">' + "".join(cells) + "</div>"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _manifest_audio(view: SplitView) -> tuple[dict[str, Utterance], str]:
    """``{utterance id: utterance}`` of the split's manifest, and a note when it cannot be read."""
    if view.manifest is None:
        return {}, (f"manifest {view.report.get('manifest', '(not in report.json)')} not found: "
                    "no audio to play")
    try:
        return {u.id: u for u in read_manifest(view.manifest)}, ""
    except (FileNotFoundError, ValueError) as err:
        return {}, f"no audio to play: {err}"


def _worst_utterances(view: SplitView, worst: int, sample_rate: int | None) -> list[str]:
    items = view.analysis["worst"][:worst]
    if not items:
        return ["<p>no errors</p>"]
    audio, note = _manifest_audio(view)
    out = [f'<p class="note">{_esc(note)}</p>'] if note else []
    for u in items:
        out += ['<div class="utt"><div class="head">',
                f"<code>{_esc(u['id'])}</code><span>{_count(u['errors'], 'error')} / "
                f"{_count(u['ref_words'], 'word')} (WER {100 * u['wer']:.0f}%)</span>",
                _audio(audio.get(u["id"]), u["id"], sample_rate), "</div>", _aligned_words(u),
                "</div>"]
    return out


def _confusions(analysis: dict) -> list[str]:
    """The top substitutions, deletions and insertions of a split, side by side."""
    subs, dels, ins = analysis["substitutions"], analysis["deletions"], analysis["insertions"]
    rows = ["<table><tr><th>substitution (ref → hyp)</th><th>n</th><th>deleted</th><th>n</th>"
            "<th>inserted</th><th>n</th></tr>"]
    for i in range(max(len(subs), len(dels), len(ins), 1)):
        s = (f"<td>{_esc(subs[i][0])} → {_esc(subs[i][1])}</td><td class=num>{subs[i][2]}</td>"
             if i < len(subs) else "<td></td><td></td>")
        d = (f"<td>{_esc(dels[i][0])}</td><td class=num>{dels[i][1]}</td>"
             if i < len(dels) else "<td></td><td></td>")
        n = (f"<td>{_esc(ins[i][0])}</td><td class=num>{ins[i][1]}</td>"
             if i < len(ins) else "<td></td><td></td>")
        rows.append(f"<tr>{s}{d}{n}</tr>")
    return rows + ["</table>"]


def _split_section(view: SplitView, worst: int, sample_rate: int | None) -> list[str]:
    out = [f'<section id="errors-{_esc(view.name)}"><h2>Errors: {_esc(view.name)}</h2>']
    if view.analysis is not None:
        legend = "".join(f'<span class="{css}">{name}</span>' for css, name in OPS.values())
        out += [f"<h3>{_esc(view.name)}: worst utterances</h3>", f'<p class="legend">{legend}'
                f'<span class="gap">***</span> = no word on that side</p>']
        out += _worst_utterances(view, worst, sample_rate)
        out += [f"<h3>{_esc(view.name)}: top confusions</h3>", *_confusions(view.analysis)]
    else:
        out.append('<p class="note">no refs.txt / hyps.txt in this split\'s decode dir: '
                   'no error analysis</p>')
    if view.alignment is not None:
        out += [f"<h3>{_esc(view.name)}: posteriorgram and forced alignment</h3>",
                f'<figure><img src="{png_uri(view.alignment)}" alt="{_esc(view.name)} alignment">',
                f"<figcaption>decode/{_esc(view.name)}/alignment.png: the CTC posteriorgram of "
                "one utterance with the forced alignment of its reference</figcaption></figure>"]
    return out + ["</section>"]


def _table(header: list[str], rows: list[list[object]], numeric_from: int) -> list[str]:
    """An HTML table; columns from ``numeric_from`` on are right-aligned numbers."""
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [f"<td{' class=num' if i >= numeric_from else ''}>{_esc(v)}</td>"
                 for i, v in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return out + ["</table>"]


def _facts_table(facts: list[tuple[str, str]]) -> list[str]:
    rows = [f'<tr><th scope="row">{_esc(name)}</th><td>{_esc(value)}</td></tr>'
            for name, value in facts]
    return ['<table class="facts">', *rows, "</table>"]


def _wer_row(name: str, r: dict) -> list[object]:
    """One row of the WER table from a split's ``report.json``."""
    return [name, r["utterances"], r["ref_words"], f"{100 * r['wer']:.2f}", f"{100 * r['cer']:.2f}",
            r["substitutions"], r["deletions"], r["insertions"]]


def _head(title: str) -> list[str]:
    # the page may load nothing but what it holds: data: images and audio, its own <style>
    policy = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">', f"<title>{_esc(title)}</title>",
            f"<style>{CSS}</style></head>"]


def build_html(title: str, facts: list[tuple[str, str]], plots: list[Path], splits: list[SplitView],
               worst: int = 5, sample_rate: int | None = None, rebuild: str = "") -> str:
    """The page, as one HTML string.

    Args:
        facts: ``(name, value)`` rows of the run facts table.
        plots: the curve PNGs, in order.
        splits: one :class:`SplitView` per scored split.
        worst: how many worst utterances per split to show, each with its audio.
        sample_rate: the rate the audio is played at (the model's); None: each file's own.
        rebuild: the command that rebuilds the page, shown under the title.
    """
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>'
                  for a, t in [("facts", "facts"), ("wer", "WER"), ("curves", "curves")]
                  + [(f"errors-{v.name}", f"errors: {v.name}") for v in splits])
    out = _head(title) + ["<body><main>", f"<h1>{_esc(title)}</h1>"]
    if rebuild:
        out.append(f'<p class="muted">Rebuild with <code>{_esc(rebuild)}</code>.</p>')
    out += [f"<nav>{nav}</nav>", '<h2 id="facts">Facts</h2>']
    out += _facts_table(facts)
    out.append('<h2 id="wer">Final WER (best.ckpt, greedy)</h2>')
    if splits:
        header = ["split", "utts", "words", "WER %", "CER %", "sub", "del", "ins"]
        out += _table(header, [_wer_row(v.name, v.report) for v in splits], numeric_from=1)
    else:
        out.append('<p class="note">no decode/&lt;split&gt;/report.json yet: run asr.evaluate</p>')
    out.append('<h2 id="curves">Curves</h2><div class="curves">')
    out += [f'<figure><img src="{png_uri(p)}" alt="{_esc(p.stem)}"></figure>' for p in plots]
    if not plots:
        out.append('<p class="note">logs/metrics.csv holds no curves yet</p>')
    out.append("</div>")
    for view in splits:
        out += _split_section(view, worst, sample_rate)
    return "\n".join(out + ["</main></body></html>"]) + "\n"
