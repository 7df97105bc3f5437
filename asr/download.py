"""Fetch files with checksum, resume and retries; extract archives without path escapes.

Shared by every corpus. Works with http(s):// and file:// URLs (tests serve archives from 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
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


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file."""
    return file_hash(path, "md5", chunk_size)


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``, asking for a byte range when ``part`` already holds some."""
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
            total=total, initial=have, unit="B", unit_scale=True, desc=f"download {part.name[:-5]}",
            disable=not progress, leave=False,
        ) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Bytes go to ``dest + ".part"`` first; an interrupted transfer resumes from there with an HTTP Range
    request, after a wait that doubles with each attempt. The file is renamed to ``dest`` only after its
    checksum matches (``sha256`` if given, else ``md5`` if given), so a file at ``dest`` is always complete.

    Args:
        url: http(s):// or file:// address.
        dest: final path of the file.
        md5, sha256: published checksum (hex); None = unchecked.
        retries: attempts before giving up.
        backoff: seconds before the first retry (doubled each time).
        timeout: socket timeout in seconds.
        progress: show a progress bar.

    Raises:
        DownloadError: the checksum does not match (the partial file is removed), or every retry failed.
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if dest.exists():
        if expected is None:
            return dest
        got = file_hash(dest, algorithm)
        if got == expected:
            return dest
        raise DownloadError(
            f"{dest} exists but its {algorithm.upper()} {got} is not the published {expected}; "
            f"delete it to download again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        # http.client.IncompleteRead (e.g. a chunked transfer cut mid-way) is an HTTPException, not an OSError
        except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as err:
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code != 416:
                raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
            if attempt == retries:
                raise DownloadError(
                    f"cannot download {url} after {retries} attempts ({err}); check the URL/mirror setting "
                    f"and your network, or put the file at {dest} yourself"
                ) from None
            wait = backoff * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retry %d/%d in %.0f s", url, err, attempt, retries, wait)
            time.sleep(wait)
    if expected is not None:
        got = file_hash(part, algorithm)
        if got != expected:
            part.unlink()
            raise DownloadError(
                f"{url}: {algorithm.upper()} {got} does not match the published {expected}; the download was "
                f"removed (a wrong mirror/base URL setting, or a corrupt copy on the server)"
            )
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    where = (target / name).resolve()
    if os.path.isabs(name) or not where.is_relative_to(target):
        raise ValueError(f"archive member {name!r} would be written outside {target}; refusing to extract")
    if member.issym() or member.islnk():
        link = Path(member.linkname)
        resolved = ((where.parent if member.issym() else target) / link).resolve()
        if link.is_absolute() or not resolved.is_relative_to(target):
            raise ValueError(f"archive link {name!r} -> {member.linkname!r} escapes {target}; refusing to extract")
    if member.isdev():
        raise ValueError(f"archive member {name!r} is a device file; refusing to extract")


def extract_tar(archive: str | os.PathLike, target: str | os.PathLike, progress: bool = True) -> Path:
    """Extract a (compressed) tar archive into ``target``, refusing any member that would land outside it.

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
            for m in tqdm(members, desc=f"extract {Path(archive).name}", unit="file", disable=not progress,
                          leave=False):
                tf.extract(m, target, **kwargs)
    except tarfile.TarError as err:
        raise ValueError(f"{archive} is not a readable tar archive ({err}); delete it and download again") from None
    return target

