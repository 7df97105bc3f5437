"""Fetch files with checksum, resume and retries; extract tar/zip archives without path escapes.

Shared by every corpus. Works with http(s):// and file:// URLs.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or on a checksum mismatch)."""


def file_hash(path: str | os.PathLike, algorithm: str = "md5", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file with ``algorithm`` (any name :func:`hashlib.new` knows)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, checksums: Sequence[str]) -> str | None:
    """Check a file against its known checksums (``"sha256:<hex>"`` or ``"md5:<hex>"``): ``None``
    when one matches, else why not (the file's own digests, for the message)."""
    wanted: dict[str, set[str]] = {}
    for entry in checksums:
        algorithm, sep, digest = str(entry).partition(":")
        if not sep or algorithm not in ("sha256", "md5") or not digest:
            raise ValueError(f"checksum {entry!r}: write it as sha256:<hex> or md5:<hex>")
        wanted.setdefault(algorithm, set()).add(digest.lower())
    got = {algorithm: file_hash(path, algorithm) for algorithm in wanted}
    if any(got[a] in digests for a, digests in wanted.items()):
        return None
    return ", ".join(f"{a.upper()} {d}" for a, d in got.items()) + f" is none of {list(checksums)}"


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``, asking for a byte range when ``part`` holds some."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "asr-downloader"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range not satisfiable: the part file is already complete
            return
        raise
    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        if have and status != 206:  # the server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True,
            desc=f"download {part.name[:-5]}", disable=not progress, leave=False,
        ) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"connection closed after {part.stat().st_size} of {total} "
                                "bytes")


def _fetch_with_retries(url: str, part: Path, retries: int, backoff: float, timeout: float,
                        progress: bool) -> None:
    """:func:`_fetch_once` until the transfer completes, waiting ``backoff`` seconds (doubled each
    time) between attempts; a client error (HTTP 4xx but 416) fails at once."""
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            return
        # http.client.IncompleteRead (a chunked transfer cut) is an HTTPException, not an OSError
        except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as err:
            if (isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500
                    and err.code != 416):
                raise DownloadError(
                    f"cannot download {url}: HTTP {err.code} {err.reason}") from None
            if attempt == retries:
                raise DownloadError(
                    f"cannot download {url} after {retries} attempts ({err}); check the "
                    f"URL/mirror setting and your network, or put the file at "
                    f"{part.with_suffix('')} yourself"
                ) from None
            wait = backoff * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retry %d/%d in %.0f s", url, err, attempt,
                        retries, wait)
            time.sleep(wait)


def download(
    url: str,
    dest: str | os.PathLike,
    checksums: Sequence[str] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    checksum_setting: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Bytes go to ``dest + ".part"`` first; an interrupted transfer resumes from there with an HTTP
    Range request. The file is renamed to ``dest`` only once its checksum is one of ``checksums``,
    so a file at ``dest`` is always complete.

    Args:
        url: http(s):// or file:// address.
        dest: final path of the file.
        checksums: known checksums, ``"sha256:<hex>"`` or ``"md5:<hex>"`` (any one must match);
            ``None``: unchecked.
        retries: attempts before giving up.
        backoff: seconds before the first retry (doubled each time).
        timeout: socket timeout in seconds.
        checksum_setting: the config key holding ``checksums`` (e.g. ``prepare.checksums``), named
            in a mismatch's error so a user who trusts the copy knows what to change.

    Raises:
        DownloadError: a checksum mismatch (the partial file is removed), or every retry failed.
    """
    dest = Path(dest)
    if int(retries) < 1:
        raise ValueError(f"download of {url}: retries={retries}, give 1 or more attempts")
    setting = checksum_setting or "the corpus's checksum setting"
    if dest.exists():
        wrong = verify(dest, checksums) if checksums else None
        if wrong is None:
            return dest
        raise DownloadError(f"{dest} exists but its {wrong}: delete it to download again, or if "
                            f"you trust this copy, give its checksum (or null) in {setting}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, retries, backoff, timeout, progress)
    wrong = verify(part, checksums) if checksums else None
    if wrong is not None:
        part.unlink()
        trust = (f"; if you trust that copy, give its checksum (or null) in {setting}"
                 if checksum_setting else "")
        raise DownloadError(
            f"{url}: its {wrong}; the download was removed (a wrong mirror/base URL setting, or a "
            f"corrupt copy on the server){trust}"
        )
    os.replace(part, dest)
    return dest


def _check_name(name: str, target: Path) -> Path:
    """Where member ``name`` lands under ``target``; refused when that is outside it."""
    where = (target / name).resolve()
    if os.path.isabs(name) or not where.is_relative_to(target):
        raise ValueError(f"archive member {name!r} would be written outside {target}; "
                         "refusing to extract")
    return where


def _check_link(name: str, linkname: str, base: Path, target: Path) -> None:
    """Refuse a link ``name -> linkname`` (read from ``base``) that points outside ``target``."""
    link = Path(linkname)
    if link.is_absolute() or not (base / link).resolve().is_relative_to(target):
        raise ValueError(f"archive link {name!r} -> {linkname!r} escapes {target}; "
                         "refusing to extract")


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    where = _check_name(name, target)
    if member.issym() or member.islnk():
        _check_link(name, member.linkname, where.parent if member.issym() else target, target)
    if member.isdev():
        raise ValueError(f"archive member {name!r} is a device file; refusing to extract")


def extract_tar(archive: str | os.PathLike, target: str | os.PathLike,
                progress: bool = True) -> Path:
    """Extract a (compressed) tar archive into ``target``, refusing members that land outside it.

    Every member is checked before anything is written (absolute paths, ``..``, links that escape,
    device files), so a hostile archive leaves no files behind.
    """
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m, target)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for m in tqdm(members, desc=f"extract {Path(archive).name}", unit="file",
                          disable=not progress, leave=False):
                tf.extract(m, target, **kwargs)
    except tarfile.TarError as err:
        raise ValueError(f"{archive} is not a readable tar archive ({err}); "
                         "delete it and download again") from None
    return target


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike,
                progress: bool = True) -> Path:
    """Extract a zip archive into ``target`` with :func:`extract_tar`'s rules.

    Every member is checked before anything is written (absolute paths, ``..``, symlinks that
    escape), so a hostile archive leaves no files behind. (``zipfile`` would quietly rewrite such
    names instead; refusing says the archive is not the one expected.)
    """
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                name = m.filename.replace("\\", "/")
                where = _check_name(name, target)
                if stat.S_ISLNK(m.external_attr >> 16):
                    _check_link(name, zf.read(m).decode("utf-8", "replace"), where.parent, target)
            for m in tqdm(members, desc=f"extract {Path(archive).name}", unit="file",
                          disable=not progress, leave=False):
                zf.extract(m, target)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a readable zip archive ({err}); "
                         "delete it and download again") from None
    return target
