"""Pieces every flipback module shares: its error type, running a command, hashing a file.

Standard library only: it runs on the controller and on the hosts.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence


class FlipbackError(Exception):
    """A failure with what was observed, what was expected, and whether a retry is safe."""

    def __init__(self, msg: str, *, retryable: bool = False, **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retryable = retryable
        self.details = details


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
