"""The host side of a release call made without a module payload.

A module call through ansible-core sends the host a payload of every module_util the
module imports, which the host unpacks and compiles from source on every call (Python
never caches bytecode for code imported from a zip): about 0.2 s of a host's CPU per
call, before any work. So the release action installs flipback's module_utils on each
host once per version, compiled, and runs each call there with flipback_hostcall's BOOT,
the checked parameters on stdin as JSON; BOOT hands them to `main` below.

`main` answers the way the module does through AnsibleModule (library/release.py runs
the same flipback_actions.run): one JSON object on stdout, `failed` and `msg` on a
failure, `elapsed` always, the warnings as `warnings`. Like every module_util the host
runs, this file imports nothing of Ansible.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import IO, Any

from ansible.module_utils.flipback_actions import run
from ansible.module_utils.flipback_common import FlipbackError


def _plain(value: Any) -> Any:
    """What json cannot write on its own (sets, from a result), as a sorted list."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def answer(request: dict, work=run) -> dict:
    """The result of one call, as AnsibleModule's exit_json or fail_json would give it."""
    warnings: list[str] = []
    started = time.monotonic()
    try:
        result = work(
            request["params"],
            bool(request.get("check_mode")),
            bool(request.get("diff")),
            warnings.append,
        )
    except FlipbackError as exc:
        elapsed = round(time.monotonic() - started, 3)
        result = {
            "failed": True,
            "msg": exc.msg,
            "retryable": exc.retryable,
            "elapsed": elapsed,
            **exc.details,
        }
    except Exception as exc:  # a crash is reported as a failure, with its traceback
        result = {
            "failed": True,
            "msg": f"the release step crashed on the host: {type(exc).__name__}: {exc}",
            "exception": traceback.format_exc(),
            "elapsed": round(time.monotonic() - started, 3),
        }
    else:
        warnings.extend(result.pop("warnings", []))
        result = {"elapsed": round(time.monotonic() - started, 3), **result}
    result.setdefault("changed", False)
    if warnings:
        result["warnings"] = warnings
    return result


def main(stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> None:
    request = json.loads((stdin or sys.stdin.buffer).read())
    out = stdout or sys.stdout
    out.write(json.dumps(answer(request), default=_plain))
    out.flush()
