"""The audit trail: every decision the service makes, one JSON line, appended and flushed.

A line holds the time (UTC), the SHA-256 of the image bytes, the SHA-256 of the model file,
the label, the probabilities and the uncertain flag, so that any answer can be traced back
to exactly which image and which model produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

CHUNK = 1 << 20  # bytes read at a time when hashing a model file


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes held in memory (an uploaded image)."""
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    """ISO 8601 time in UTC with milliseconds, e.g. 2026-11-24T20:55:47.123+00:00."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Append-only JSON-lines file shared by every request thread (one lock, one flush a line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: whole lines land at the end even with another writer on the file
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as e:
            raise CnnlabError(f"cannot open the audit log ({e.strerror or e})", path) from None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one JSON line and flush it to the OS."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        """Close the file (further appends fail)."""
        with self._lock:
            self._file.close()
