"""The daemon's log: where it goes, and lines for events that come in floods."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger

from .. import paths

LOG_EVERY_S = 10.0  # at most one line this often for events that come in floods


class Throttled:
    """A log line for an event that may come in floods: at most one every ``every_s``,
    counting the events since the last (``{n}`` in the message)."""

    def __init__(self, level: str, message: str, every_s: float = LOG_EVERY_S):
        self.level, self.message, self.every_s = level, message, every_s
        self.count = 0
        self.next_at = 0.0
        self.fields: dict[str, Any] = {}

    def __call__(self, **fields: Any) -> None:
        self.count += 1
        self.fields = fields
        self.flush()

    def flush(self) -> None:
        """Write the line for the events counted so far, once its time has come."""
        now = time.monotonic()
        if self.count and now >= self.next_at:
            logger.bind(count=self.count).log(self.level, self.message, n=self.count,
                                               **self.fields)
            self.count = 0
            self.next_at = now + self.every_s


def _private_file(path: str, flags: int) -> int:
    """open()'s opener for the log: created 0600 whatever the umask, like the database.

    A log left readable by an older version is made private too. Rotated files are
    the renamed earlier ones, so they keep the mode.
    """
    fd = os.open(path, flags, paths.FILE_MODE)
    st = os.fstat(fd)
    if st.st_mode & 0o777 != paths.FILE_MODE and st.st_uid == os.getuid():
        os.fchmod(fd, paths.FILE_MODE)
    return fd


class _ToLoguru(logging.Handler):
    """Lines that libraries write through the standard logging module (psycopg's pool:
    "discarding closed connection", say) go where the daemon's own lines go."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.opt(depth=6, exception=record.exc_info).log(
            record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR",
                                                     "CRITICAL") else "INFO",
            "{}: {}", record.name, record.getMessage())


def setup_logging(log_file: Path | None, level: str = "INFO") -> None:
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)
    logger.remove()
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level} {message} {extra}"
    # diagnose=False: loguru would print the value of every variable in a traceback,
    # and those hold lease tokens and payloads, which the log must never show.
    logger.add(sys.stderr, level=level, format=fmt, diagnose=False)
    if log_file is not None:
        paths.ensure_private_dir(log_file.parent)
        logger.add(log_file, level=level, format=fmt, rotation="10 MB", retention=5,
                   opener=_private_file, diagnose=False)
