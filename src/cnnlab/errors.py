"""One error type for every problem a user can fix: the CLI prints it on one line, exit 2."""

from __future__ import annotations

from pathlib import Path


class CnnlabError(Exception):
    """A user-facing error: bad input, missing file, inconsistent options.

    The message names the file (when there is one) and the problem, so that
    `cnnlab: <message>` on one line tells the user what to fix.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
