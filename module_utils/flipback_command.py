"""Commands that belong to a release, run in its environment at named points of a deploy.

A service definition declares them (`commands:`), and they are part of the release's
configuration (its manifest's `config.commands`), so the commands a release runs are
the ones it was staged with:

    before_switch_once   once per rollout, on one host (the first of the canary batch),
                         after every host has staged, before any host switches
                         (database migrations)
    before_switch        on every host, after staging, before any host switches
    after_switch         on every host, right after its switch

Each runs as a transient systemd unit (systemd-run), built the way `exec.yml` builds
its command (flipback_exec): the release's user, env file, working directory and its
unit's sandbox (`shared/` writable, the rest read-only), its venv first on PATH,
FLIPBACK_RELEASE set, stopped at its timeout. Its output and exit code
are written to the history (event `command`) and to the release's manifest
(`commands_run`).

Runs on the target host: standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from ansible.module_utils.flipback_common import FlipbackError, write_atomic
from ansible.module_utils.flipback_exec import (
    DEFAULT_UNIT_DIR,
    WAIT_SLACK,
    CommandTimeout,
    outcome,
    resolve,
    run_with_timeout,
    split_trailer,
    systemd_run_argv,
)
from ansible.module_utils.flipback_release import (
    append_history,
    history_event,
    read_manifest,
    release_dir,
)
from ansible.module_utils.flipback_request import COMMAND_POINTS
from ansible.module_utils.flipback_runtime import static_dirs

POINTS = COMMAND_POINTS
DEFAULT_TIMEOUT = 300
MAX_TIMEOUT = 86400
# What is kept of a command's output: in the manifest and history, and in an error.
OUTPUT_KEEP = 4000
ERROR_LINES = 20
SYSTEMD_RUN = "systemd-run"

# (argv, seconds to wait) -> (rc, stdout, stderr), as flipback_exec runs systemd-run.
Runner = Callable[[list[str], float], tuple[int, str, str]]


class CommandFailed(FlipbackError):
    """A release's command exited non-zero or ran out of time."""


def normalize_commands(where: str, raw: Any, problems: list[str]) -> dict[str, list[dict]]:
    """The `commands` of a service definition as {point: [{run, timeout}, ...]}.

    A command is a non-empty shell command line, or {run: <line>, timeout: <seconds>}.
    Problems are appended to `problems`, naming the field and the value.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(
            f"{where}.commands: got {raw!r}, expected a mapping of "
            f"{', '.join(POINTS)} to lists of commands"
        )
        return {}
    commands: dict[str, list[dict]] = {}
    for point, entries in raw.items():
        field = f"{where}.commands.{point}"
        if point not in POINTS:
            problems.append(f"{where}.commands: got {point!r}, expected one of {', '.join(POINTS)}")
            continue
        if isinstance(entries, (str, Mapping)):
            entries = [entries]
        if not isinstance(entries, list):
            problems.append(f"{field}: got {entries!r}, expected a list of commands")
            continue
        normalized = []
        for index, entry in enumerate(entries):
            one = _command(f"{field}[{index}]", entry, problems)
            if one is not None:
                normalized.append(one)
        if normalized:
            commands[point] = normalized
    return commands


def _command(field: str, entry: Any, problems: list[str]) -> dict | None:
    if isinstance(entry, str):
        entry = {"run": entry}
    if not isinstance(entry, Mapping):
        problems.append(
            f"{field}: got {entry!r}, expected a command line or {{run: ..., timeout: ...}}"
        )
        return None
    unknown = sorted(set(entry) - {"run", "timeout"})
    if unknown:
        problems.append(f"{field}: got {unknown}, expected only the keys run and timeout")
        return None
    run = entry.get("run")
    if (
        not isinstance(run, str)
        or not run.strip()
        or any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in run)
        or len(run) > 4096
    ):
        problems.append(
            f"{field}.run: got {run!r}, expected a non-empty shell command line (no control "
            "characters but tab and newline, at most 4096 characters)"
        )
        return None
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or (not isinstance(timeout, int) and not (isinstance(timeout, str) and timeout.isdigit()))
        or not 1 <= int(timeout) <= MAX_TIMEOUT
    ):
        problems.append(f"{field}.timeout: got {timeout!r}, expected seconds, 1-{MAX_TIMEOUT}")
        return None
    return {"run": run, "timeout": int(timeout)}


def _signal_number(name: str) -> int:
    """9 for "KILL" or "9"; 0 for what names no signal."""
    try:
        return int(name) if name.isdigit() else int(signal.Signals[f"SIG{name}"])
    except (KeyError, ValueError):
        return 0


def _tail(text: str, limit: int = OUTPUT_KEEP) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


class ReleaseCommands:
    """Run the commands of one point of a release, and record them."""

    def __init__(
        self,
        service: str,
        root: str,
        release: str,
        point: str,
        *,
        by: str = "unknown",
        run_id: str | None = None,
        run: Runner = run_with_timeout,
        now: Callable[[], float] = time.monotonic,
        unit_dir: str = DEFAULT_UNIT_DIR,
    ) -> None:
        if point not in POINTS:
            raise CommandFailed(
                f"point: got {point!r}, expected one of {', '.join(POINTS)}",
                field="point",
                value=point,
                retryable=False,
            )
        self.service, self.root, self.release, self.point = service, root, release, point
        self.by, self.run_id = by, run_id
        self.runner, self.now, self.unit_dir = run, now, unit_dir

    def planned(self, check_mode: bool = False) -> tuple[list[dict], list[str]] | None:
        manifest = read_manifest(self.root, self.release)
        if manifest is None and check_mode:
            return None
        if manifest is None:
            raise CommandFailed(
                f"{self.release}: no manifest under {release_dir(self.root, self.release)}; "
                "expected a staged release",
                retryable=False,
            )
        config = manifest.get("config") or {}
        commands = (config.get("commands") or {}).get(self.point) or []
        return list(commands), static_dirs(config)

    def run(self, *, check_mode: bool = False) -> dict:
        result: dict[str, Any] = {
            "changed": False,
            "point": self.point,
            "release": self.release,
            "commands": [],
        }
        planned = self.planned(check_mode)
        if planned is None:
            # A dry run of a release this host has not staged yet: it knows no commands.
            result["msg"] = f"would run the {self.point} commands {self.release} declares"
            return result
        commands, writable = planned
        if not commands:
            result["msg"] = f"{self.release} declares no {self.point} commands"
            return result
        if check_mode:
            result["commands"] = [{"run": c["run"], "timeout": c["timeout"]} for c in commands]
            result["msg"] = f"would run {len(commands)} {self.point} command(s) of {self.release}"
            return result
        for index, command in enumerate(commands):
            outcome = self._run_one(index, command, writable)
            result["commands"].append(outcome)
            result["changed"] = True
            self._record(outcome)
            if outcome["rc"] != 0:
                lines = outcome["output"].splitlines()[-ERROR_LINES:]
                why = (
                    f"ran out of its {command['timeout']} s"
                    if outcome["timed_out"]
                    else f"exited {outcome['rc']}"
                )
                if self.point != "after_switch":
                    # Never live here, and it cannot go live as it is: no rollback target.
                    append_history(
                        self.root,
                        history_event(
                            self.release,
                            "failed",
                            by=self.by,
                            note=f"{self.point} command {command['run']!r} {why}",
                            run=self.run_id,
                        ),
                    )
                raise CommandFailed(
                    f"{self.point} command {command['run']!r} of {self.service} release "
                    f"{self.release} {why} after {outcome['seconds']:g} s; last lines of its "
                    "output:\n" + "\n".join(lines) + "\nFix the command or what it needs and "
                    "deploy again",
                    retryable=False,
                    command=command["run"],
                    rc=outcome["rc"],
                    output=outcome["output"],
                    commands=result["commands"],
                )
        result["msg"] = f"ran {len(commands)} {self.point} command(s) of {self.release}"
        return result

    def _run_one(self, index: int, command: dict, writable: list[str]) -> dict:
        # The release's user, directory, env file and sandbox, from its own unit file.
        target = resolve(
            self.service,
            release=self.release,
            root_parent=os.path.dirname(self.root.rstrip("/")),
            unit_dir=self.unit_dir,
        )
        if self.point != "after_switch":
            # Before the switch, the release's static directories are its commands' to
            # fill (collectstatic), readable by nginx; after it, the release is immutable.
            here = release_dir(self.root, self.release)
            target["properties"] = [
                *target["properties"],
                *(f"ReadWritePaths={here}/{directory}" for directory in writable),
                "UMask=0022",
            ]
        unit = f"flipback-{self.service}-{self.point.replace('_', '-')}-{index}-{self.release}"
        argv = systemd_run_argv(
            target, command["run"], timeout=command["timeout"], unit=unit, systemd_run=SYSTEMD_RUN
        )
        started = self.now()
        try:
            rc, stdout, stderr = self.runner(argv, command["timeout"] + WAIT_SLACK)
            stderr, info = split_trailer(stderr)
            ended = outcome(rc, info, command["timeout"])
        except CommandTimeout as exc:
            self.runner(["systemctl", "stop", unit], 60)
            stdout, stderr = exc.stdout, split_trailer(exc.stderr)[0]
            ended = {"result": "timeout", "exit_code": None}
        seconds = round(self.now() - started, 3)
        timed_out = ended["result"] == "timeout"
        code = ended["exit_code"]
        # The command's exit code; 124 (as timeout(1)) when it ran out of time, 128+N when
        # signal N ended it, 1 when it ended some other way (or could not start).
        if timed_out:
            rc = 124
        elif code is not None:
            rc = code
        elif ended.get("signal"):
            rc = 128 + _signal_number(ended["signal"])
        else:
            rc = 1
        return {
            "run": command["run"],
            "rc": rc,
            "seconds": seconds,
            "timed_out": timed_out,
            "output": _tail(stdout + stderr),
        }

    def _record(self, outcome: dict) -> None:
        note = json.dumps(
            {
                "point": self.point,
                "run": outcome["run"],
                "rc": outcome["rc"],
                "seconds": outcome["seconds"],
                "output": _tail(outcome["output"], 1000),
            },
            ensure_ascii=False,
        )
        append_history(
            self.root,
            history_event(self.release, "command", by=self.by, note=note, run=self.run_id),
        )
        path = os.path.join(release_dir(self.root, self.release), "manifest.json")
        manifest = read_manifest(self.root, self.release) or {}
        manifest.setdefault("commands_run", []).append(
            {"point": self.point, "run_id": self.run_id, **outcome}
        )
        write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n", mode=0o644)
