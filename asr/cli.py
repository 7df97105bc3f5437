"""What the entry points share: a user's mistake ends the command with one line, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("asr")


@contextmanager
def user_errors(*more: type[BaseException]) -> Iterator[None]:
    """End the command with ``error: <message>`` on stderr (and in the log) and exit status 2 on
    errors a user's setting or file causes (a missing file, a bad value, a package not installed,
    and the kinds in ``more``); anything else is a bug and keeps its traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError, ImportError, *more) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

