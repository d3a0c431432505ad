"""Switch a service to a staged release on one host, in one call.

The whole switch is one transaction on the host, so it costs one round trip:

    start <service>@<release>            (the rollback's "restart of uvicorn")
    Gate 1: health on its private socket (the answer can only come from it)
    flip `current` with rename(2)        (which also moves live traffic)
    Gate 2: health through the public port, N answers in a row naming the release
    enable the new instance, disable the old one; record the events
    drain, then stop the old instance

If a gate fails, everything is undone before the error is raised: `current` goes
back to the release that was serving (or is removed if there was none), the new
instance is stopped unless it was already running, the release is recorded as
failed, and the error carries the failing unit's last journal lines.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.flipback_common import run_command
from ansible.module_utils.flipback_health import Clock, Expect, HealthError, Policy, Target, probe
from ansible.module_utils.flipback_release import (
    ReleaseError,
    Releases,
    validate_release_id,
)

GATE_1 = "Gate 1, health on the instance's private socket"
GATE_2 = "Gate 2, health through the public port answers with the release"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Prober = Callable[[Target, Expect, Policy], dict]


def real_probe(target: Target, expect: Expect, policy: Policy) -> dict:
    return probe(target, expect, policy, Clock())


@dataclass
class SwitchSpec:
    service: str
    root: str
    release: str
    action: str  # deploy | rollback
    port: int
    health_path: str = "/health"
    expect_status: tuple[int, ...] = (200,)
    expect_json: dict = field(default_factory=dict)
    health_timeout: float = 30.0
    public_successes: int = 3
    drain_seconds: float = 1.0
    socket_dir: str = ""
    by: str = "unknown"
    note: str = ""
    journal_lines: int = 15

    def unit(self, release: str) -> str:
        return f"{self.service}@{release}.service"


class GateFailed(ReleaseError):
    """A gate failed and the switch was undone."""


class Switch:
    def __init__(
        self,
        spec: SwitchSpec,
        *,
        run: Runner = run_command,
        prober: Prober = real_probe,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.run = run
        self.prober = prober
        self.sleep = sleep
        self.releases = Releases(spec.service, spec.root)
        self.steps: list[str] = []
        self.previous: str | None = None

    # -- systemd
    def _systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = self.run(["systemctl", *args])
        if check and proc.returncode != 0:
            raise ReleaseError(
                f"systemctl {' '.join(args)} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}",
                retryable=True,
            )
        return proc

    def _active(self, unit: str) -> bool:
        return self._systemctl("is-active", "--quiet", unit, check=False).returncode == 0

    def _journal(self, unit: str) -> list[str]:
        proc = self.run(
            [
                "journalctl",
                "--no-pager",
                "--output=cat",
                "-n",
                str(self.spec.journal_lines),
                "-u",
                unit,
            ]
        )
        return proc.stdout.splitlines()

    # -- gates
    def _expect(self) -> Expect:
        return Expect(
            status=tuple(self.spec.expect_status),
            json={**self.spec.expect_json, "release": self.spec.release},
        )

    def _gate_private(self) -> dict:
        socket_path = os.path.join(self.spec.socket_dir, self.spec.release, "app.sock")
        return self.prober(
            Target(url_path=self.spec.health_path, unix_socket=socket_path),
            self._expect(),
            Policy(timeout=self.spec.health_timeout, delay=0.1),
        )

    def _gate_public(self) -> dict:
        return self.prober(
            Target(url_path=self.spec.health_path, host="127.0.0.1", port=self.spec.port),
            self._expect(),
            Policy(
                timeout=self.spec.health_timeout,
                delay=0.05,
                successes=self.spec.public_successes,
            ),
        )

    # -- the switch
    def plan(self) -> dict[str, Any]:
        spec = self.spec
        validate_release_id(spec.release)
        state = self.releases.scan()
        previous = state.current
        return {
            "release": spec.release,
            "previous": previous,
            "start": None if previous == spec.release else spec.unit(spec.release),
            "stop": spec.unit(previous) if previous and previous != spec.release else None,
        }

    def switch(self, check_mode: bool) -> dict[str, Any]:
        spec = self.spec
        plan = self.plan()
        previous = self.previous = plan["previous"]
        result: dict[str, Any] = {
            "release": spec.release,
            "previous": previous,
            "current": spec.release,
            "started": plan["start"],
            "stopped": plan["stop"],
            "diff": {
                "before": f"current -> releases/{previous}\n" if previous else "",
                "after": f"current -> releases/{spec.release}\n",
            },
        }
        if previous == spec.release:
            return self._already_current(result, check_mode)
        # A missing or incomplete release is refused before its instance starts.
        self.releases.activate(spec.release, by=spec.by, note=spec.note, check_mode=True)
        if check_mode:
            # Nothing starts in a dry run, so there is nothing to probe.
            return {**result, "changed": True}

        unit = spec.unit(spec.release)
        was_running = self._active(unit)
        self._systemctl("start", unit)
        self.steps.append(f"started {unit}")
        timings: dict[str, float] = {}
        try:
            started = time.monotonic()
            self._gate_private()
            timings["gate_1"] = round(time.monotonic() - started, 3)
        except HealthError as exc:
            raise self._undo(GATE_1, exc, flipped=False, was_running=was_running) from exc

        self.releases.activate(spec.release, by=spec.by, note=spec.note, check_mode=False)
        self.steps.append(f"flipped current to {spec.release}")
        try:
            started = time.monotonic()
            self._gate_public()
            timings["gate_2"] = round(time.monotonic() - started, 3)
        except HealthError as exc:
            raise self._undo(GATE_2, exc, flipped=True, was_running=was_running) from exc

        self._systemctl("enable", "--quiet", unit)
        if previous:
            if spec.action == "rollback":
                self.releases.record(
                    previous,
                    "rolled_back",
                    by=spec.by,
                    note=f"rolled back to {spec.release}",
                    check_mode=False,
                )
            old = spec.unit(previous)
            self._systemctl("disable", "--quiet", old, check=False)
            # The old instance finishes what it accepted before the flip.
            self.sleep(spec.drain_seconds)
            self._systemctl("stop", old)
            self.steps.append(f"stopped {old} after {spec.drain_seconds:g} s")
        return {**result, "changed": True, "timings": timings, "steps": self.steps}

    def _already_current(self, result: dict[str, Any], check_mode: bool) -> dict[str, Any]:
        """Nothing to switch: make sure the live instance runs, is enabled and answers."""
        spec = self.spec
        unit = spec.unit(spec.release)
        result.update(started=None, stopped=None, diff={"before": "", "after": ""})
        changed = False
        if not self._active(unit):
            changed = True
            result["started"] = unit
            if not check_mode:
                self._systemctl("start", unit)
                self.steps.append(f"started {unit} (current, was not running)")
        if self._systemctl("is-enabled", "--quiet", unit, check=False).returncode != 0:
            changed = True
            if not check_mode:
                self._systemctl("enable", "--quiet", unit)
        if not check_mode:
            try:
                self._gate_public()
            except HealthError as exc:
                raise GateFailed(
                    f"{spec.service} {spec.release} is current but does not answer through "
                    f"the public port: {exc.msg}",
                    retryable=exc.retryable,
                    gate=GATE_2,
                    journal=self._journal(unit),
                ) from exc
        return {**result, "changed": changed, "steps": self.steps}

    def _undo(
        self, gate: str, error: HealthError, *, flipped: bool, was_running: bool
    ) -> GateFailed:
        spec = self.spec
        previous = self.previous
        undone: list[str] = []
        if flipped:
            if previous:
                self.releases.activate(
                    previous, by=spec.by, note=f"{spec.release} failed: {gate}", check_mode=False
                )
                undone.append(f"current back on {previous}")
            else:
                os.unlink(os.path.join(spec.root, "current"))
                undone.append("current removed (no earlier release)")
        unit = spec.unit(spec.release)
        journal = self._journal(unit)
        if not was_running:
            self._systemctl("stop", unit, check=False)
            undone.append(f"stopped {unit}")
        self.releases.record(
            spec.release,
            "failed",
            by=spec.by,
            note=f"{gate}: {error.msg[:300]}",
            check_mode=False,
        )
        if not previous:
            fallback = "no earlier release to fall back to"
        elif flipped:
            fallback = f"current is back on {previous}, which keeps serving"
        else:
            fallback = f"current stays on {previous}, which keeps serving"
        return GateFailed(
            f'release {spec.release} did not pass "{gate}" ({error.msg}). {fallback}. '
            f"Last journal lines of {unit}: " + " | ".join(journal),
            retryable=False,
            gate=gate,
            undone=undone,
            journal=journal,
        )
