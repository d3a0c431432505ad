"""Pieces every flipback module shares: its error type and answer, running a command, hashing.

Standard library only: it runs on the controller and on the hosts.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class FlipbackError(Exception):
    """A failure with what was observed, what was expected, and whether a retry is safe."""

    def __init__(self, msg: str, *, retryable: bool = False, **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retryable = retryable
        self.details = details


def respond(module: Any, work: Callable[[], dict[str, Any]]) -> NoReturn:
    """End an AnsibleModule with what `work()` returns, or with the FlipbackError it raises.

    Both answers carry `elapsed`, the seconds `work` took; a result or error that timed
    itself (a health probe) keeps its own. A result's `warnings` become module warnings.
    `module` is duck-typed so this file stays free of Ansible imports.
    """
    started = time.monotonic()
    try:
        result = work()
    except FlipbackError as exc:
        elapsed = round(time.monotonic() - started, 3)
        module.fail_json(
            msg=exc.msg, retryable=exc.retryable, **{"elapsed": elapsed, **exc.details}
        )
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**{"elapsed": round(time.monotonic() - started, 3), **result})


# How modules run commands; tests pass a fake of this shape.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


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
