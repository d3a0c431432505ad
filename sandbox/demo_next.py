"""What to try after `make demo`: the exact commands, for the fleet as the demo left it.

`make demo` ends with `status.yml -e status_json=FILE`; this reads FILE and prints the
commands to run next, with a release id that every host has and that a rollback by id
accepts (not current, not failed, complete), so that each command works as printed, in
the order printed. (A rollback by id marks the release it leaves rolled back, not
good: the way back is by id too.)

    python sandbox/demo_next.py /var/tmp/flipback-demo-status.json [--service hello]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# What `rollback.yml -e release=<id>` accepts (see Releases.target): not failed, complete.
NAMEABLE = ("good", "rolled_back", "staged")


def rollback_choices(status: Any, service: str) -> list[tuple[str, str]]:
    """(release id, status on the first host) of every release of `service` that every
    host has and can roll back to by id, newest id first. ValueError when `status` is
    not what status.yml writes."""
    if not isinstance(status, dict) or not isinstance(status.get("hosts"), dict):
        raise ValueError("not a status.yml -e status_json file: no 'hosts' object")
    per_host: list[dict[str, str]] = []
    for host, result in sorted(status["hosts"].items()):
        reports = [s for s in (result or {}).get("services") or [] if s.get("name") == service]
        if not reports:
            raise ValueError(f"host {host} reports no service {service!r}")
        current = reports[0].get("current")
        per_host.append(
            {
                r["id"]: r.get("status", "")
                for r in reports[0].get("releases") or []
                if r.get("id") != current and r.get("status") in NAMEABLE
            }
        )
    if not per_host:
        return []
    common = set(per_host[0]).intersection(*per_host[1:])
    return [(rid, per_host[0][rid]) for rid in sorted(common, reverse=True)]


def live(status: Any, service: str) -> tuple[str | None, str | None]:
    """(current, previous good) of `service` when every host agrees; else None each."""
    reports = [
        next((s for s in (r or {}).get("services") or [] if s.get("name") == service), {})
        for r in status["hosts"].values()
    ]
    currents = {r.get("current") for r in reports}
    previous = {r.get("previous_good") for r in reports}
    return (
        currents.pop() if len(currents) == 1 else None,
        previous.pop() if len(previous) == 1 else None,
    )


def next_steps(status: Any, service: str, venv: str = ".venv") -> str:
    playbook = f"{venv}/bin/ansible-playbook playbooks"
    choices = rollback_choices(status, service)
    lines = ["== what to try next (the sandbox stays up; `make sandbox-down` removes it)"]
    lines += [
        f"  {playbook}/status.yml",
        "      every service on every host: current and previous good release, health",
    ]
    current, previous = live(status, service)
    if choices and current:
        release, state = choices[0]
        lines += [
            f"  {playbook}/rollback.yml -e service={service} -e release={release}",
            f"      {service} to a release named by its id (its status now: {state})",
            f"  {playbook}/rollback.yml -e service={service} -e release={current}",
            "      and back to the release live now",
        ]
    lines += [f"  {playbook}/rollback.yml -e service={service}"]
    if previous:
        lines += [f"      {service} back to its previous good release, {previous}"]
    else:
        lines += ["      refused here (no previous good release): it says why, and what to run"]
    lines += [
        f"  {playbook}/history.yml -e service={service}",
        f"      what {service} ran, and when",
        f"  {playbook}/logs.yml -e service={service} -e since=15m",
        f"      the journal of {service}'s instances on every host",
        f"  {playbook}/verify.yml",
        "      every service answers with its current release, one build on every host",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print what to try after `make demo`.")
    parser.add_argument("status_json", type=Path, help="the file of status.yml -e status_json")
    parser.add_argument("--service", default="hello", help="the service (default: hello)")
    args = parser.parse_args(argv)
    try:
        text = next_steps(json.loads(args.status_json.read_text()), args.service)
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        parser.error(f"{args.status_json}: {exc}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
