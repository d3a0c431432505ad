"""Switch a service to a staged release on one host, in one call.

The whole switch is one transaction on the host, so it costs one round trip:

    take the deploy lock                 (a deploy's own lock is refreshed)
    rollback: choose the target          (previous good, N steps back, or named)
    start <service>@<release>            (the rollback's "restart of uvicorn"; a no-op
                                          when it runs as the warm standby)
    start its processes                  (<service>.<p>@<release>, if it declares any)
    Gate 1: health on its private socket (the answer can only come from it)
    its processes stay up through their start window (never restarted)
    the nginx site of the release's port (only when it differs: nginx -t, reload)
    flip `current` with rename(2)        (which also moves live traffic)
    Gate 2: health through the public port, N answers in a row naming the release
    enable the new instance and its processes, disable the others; record the events;
    stop every other release's processes (they run only while their release is live)
    keep the previous good release's instance running as the warm standby, and
    retire every other instance after the drain, by a systemd timer on the host
    deploy: prune releases beyond keep_releases
    give the lock back

With the standby, a rollback to the previous release starts nothing: Gate 1 answers
at once and the flip is the whole rollback. The drain never blocks the call: the old
instance is stopped by a transient timer (`flipback-retire-<service>-<release>`),
which any later switch to that release cancels first.

The site is part of the release's configuration (its port): it is written by the
switch that makes a release live, after its Gate 1, never before, and a rollback
puts back the site of the release it returns to.

If a gate fails, everything is undone before the error is raised: `current` goes
back to the release that was serving (or is removed if there was none), the site
that was there is put back, the new
instance is stopped (even one warmed by staging: a release that failed a gate must
not linger as anyone's standby), the release is recorded as failed, and the error
carries the failing unit's last journal lines, led by the last Python exception line
if that scrolled off (see `journal_excerpt`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.flipback_common import (
    FlipbackError,
    Runner,
    read_text,
    run_command,
    write_atomic,
)
from ansible.module_utils.flipback_health import (
    Expect,
    HealthError,
    Policy,
    Prober,
    Target,
    expect_release,
    real_probe,
)
from ansible.module_utils.flipback_prepare import all_enabled, scan_instances
from ansible.module_utils.flipback_release import (
    LEGACY_ENV_DIR,
    ReleaseError,
    Releases,
    as_if_activated,
    plan_prune,
    recorded_config,
    recorded_site,
    release_in_of,
    tls_of,
    validate_positive,
    validate_release_id,
)
from ansible.module_utils.flipback_request import DEFAULT_UNHEALTHY_ANSWERS
from ansible.module_utils.flipback_runtime import (
    SITE_DIR,
    UNIT_DIR,
    instance_unit,
    process_start_seconds,
    process_unit,
    processes_of,
    retire_timer,
    site_path,
)

# The longest wait between two probes of a gate. A starting instance is asked again
# within this long of being ready, and `health.unhealthy_answers` answers in a row take
# about that many times this long (a 2 s cap made 10 answers last 9 s). Each attempt is
# one connect to a local socket, plus one `systemctl show` while it fails.
GATE_MAX_DELAY = 0.25
# How far back the journal is read when a gate fails, to find the error behind it.
JOURNAL_SCAN = 300
# The last line of a Python traceback (`RuntimeError: ...`), also inside the `| `
# frame of an exception group as anyio and Starlette print it. A group's own line
# (`ExceptionGroup: unhandled errors in a TaskGroup`) is not the error: it is printed
# before the exceptions it holds, so it is left out.
_EXCEPTION_LINE = re.compile(
    r"^[\s|+]*(?:[A-Za-z_]\w*\.)*(?=[A-Za-z_])(?!(?:Base)?ExceptionGroup\b)"
    r"\w*(?:Error|Exception|Exit|Interrupt)(?::\s.*)?$"
)


def journal_excerpt(lines: list[str], limit: int) -> list[str]:
    """The last `limit` journal lines, led by the error behind them if it scrolled off.

    A failing `/health` logs a traceback per probe, and the 500 reaches the gate before
    uvicorn has finished logging it; its tail then ends inside the traceback, and the
    shutdown lines push the error itself further up. So when the newest exception line
    is older than the tail, it is kept as the first line, followed by a marker saying
    how many lines were left out, and the rest of the room goes to the newest lines.
    """
    if len(lines) <= limit:
        return list(lines)
    tail = lines[-limit:]
    if any(_EXCEPTION_LINE.match(line) for line in tail):
        return tail
    for index in range(len(lines) - limit - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[index]):
            kept = lines[-(limit - 2) :] if limit > 2 else []
            skipped = len(lines) - index - 1 - len(kept)
            return [lines[index].strip(" |+"), f"[{skipped} lines left out]", *kept][:limit]
    return tail


GATE_1 = "Gate 1, health on the instance's private socket"
GATE_2 = "Gate 2, health through the public port answers with the release"
SITE = "the nginx site of the release's port"
PROCESSES = "its processes stay up through their start window"


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
    # How the gates tell the release answered (header or json), and the Host they send.
    release_in: str = "header"
    health_host: str = "localhost"
    health_timeout: float = 30.0
    # A gate gives up after this many unhealthy answers in a row (not 502/503/504).
    unhealthy_answers: int = DEFAULT_UNHEALTHY_ANSWERS
    public_successes: int = 3
    drain_seconds: float = 1.0
    socket_dir: str = ""
    by: str = "unknown"
    note: str = ""
    # The run this switch belongs to (its lock owner's run_id), written in history.
    run_id: str | None = None
    journal_lines: int = 15
    # Rollback without a named release: how many good releases back.
    steps: int = 1
    standby: bool = True
    # Deploy: prune down to this many good releases after the switch (0: no prune).
    keep_releases: int = 0
    # Where nginx sites live (the service's is flipback-<service>.conf).
    site_dir: str = SITE_DIR
    # Where units live (each release's own; pruning removes them).
    unit_dir: str = UNIT_DIR
    # Where releases staged by older versions found their env (pruning tidies it).
    legacy_env_dir: str = LEGACY_ENV_DIR

    def unit(self, release: str) -> str:
        return instance_unit(self.service, release)

    def process_units(self, release: str, processes: list[str]) -> list[str]:
        return [process_unit(self.service, p, release) for p in processes]


class ProcessDown(HealthError):
    """A process of the release exited (or is restarting) during its start window."""

    def __init__(self, msg: str, unit: str) -> None:
        super().__init__(msg, retryable=False, found=msg)
        self.unit = unit


class NothingToRollBackTo(ReleaseError):
    """A rollback found no target; nothing was changed."""


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
        self.releases = Releases(
            spec.service,
            spec.root,
            unit_dir=spec.unit_dir,
            legacy_env_dir=spec.legacy_env_dir,
            run_id=spec.run_id,
        )
        self.steps: list[str] = []
        self.previous: str | None = None
        # The release's processes (from its manifest) and how long each must stay up.
        self.process_names: list[str] = []
        self.start_window = 0.0
        # Which of them run already, and the units of other releases' processes.
        self.running_processes: list[str] = []
        self.other_processes: list[str] = []
        self.previous_processes: list[str] = []
        # NRestarts of the release's units before this switch started them.
        self.restarts: dict[str, int] = {}

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

    def _boot(self, verb: str, *units: str, check: bool = True) -> None:
        """`enable` or `disable` units at boot. Only the boot-time links change
        (`--no-reload`): systemd already knows every unit (staging reloaded it), and a
        reload costs systemd about 0.2 s each time, on the switch's path."""
        self._systemctl(verb, "--quiet", "--no-reload", *units, check=check)

    def _active(self, unit: str) -> bool:
        return self._systemctl("is-active", "--quiet", unit, check=False).returncode == 0

    def _journal(self, unit: str) -> list[str]:
        proc = self.run(
            [
                "journalctl",
                "--no-pager",
                "--output=cat",
                "-n",
                str(max(JOURNAL_SCAN, self.spec.journal_lines)),
                "-u",
                unit,
            ]
        )
        return journal_excerpt(proc.stdout.splitlines(), self.spec.journal_lines)

    # -- gates
    def _expect(self) -> Expect:
        spec = self.spec
        release_in = release_in_of(spec.root, spec.release, spec.release_in)
        return expect_release(spec.expect_status, spec.expect_json, spec.release, release_in)

    def _gate_private(self) -> dict:
        socket_path = os.path.join(self.spec.socket_dir, self.spec.release, "app.sock")
        return self.prober(
            Target(
                url_path=self.spec.health_path,
                unix_socket=socket_path,
                host_header=self.spec.health_host,
            ),
            self._expect(),
            Policy(
                timeout=self.spec.health_timeout,
                delay=0.1,
                max_delay=GATE_MAX_DELAY,
                unhealthy_answers=self.spec.unhealthy_answers,
                abort=self._exited,
            ),
        )

    def _gate_public(self) -> dict:
        return self.prober(
            Target(
                url_path=self.spec.health_path,
                host="127.0.0.1",
                port=self.spec.port,
                host_header=self.spec.health_host,
                tls=tls_of(self.spec.root, self.spec.release),
            ),
            self._expect(),
            Policy(
                timeout=self.spec.health_timeout,
                delay=0.05,
                max_delay=GATE_MAX_DELAY,
                successes=self.spec.public_successes,
                unhealthy_answers=self.spec.unhealthy_answers,
                abort=self._exited,
            ),
        )

    # -- the switch
    def choose(self) -> dict[str, Any] | None:
        """Rollback: settle the target release; None when a deploy names it already."""
        spec = self.spec
        if spec.action != "rollback":
            return None
        if spec.release:
            chosen = self.releases.target(spec.release, None)
        else:
            chosen = self.releases.target(None, validate_positive(spec.steps, "steps"))
            if chosen["target"] is None:
                raise NothingToRollBackTo(
                    f"no release to roll back to ({chosen['reason']}); nothing was changed, "
                    f"{chosen['current'] or 'nothing'} stays current",
                    retryable=False,
                    current=chosen["current"],
                    reason=chosen["reason"],
                )
            spec.release = chosen["target"]
        if not spec.note:
            spec.note = f"rollback from {chosen['current']} ({chosen['reason']})"
        return chosen

    def plan(self) -> dict[str, Any]:
        spec = self.spec
        validate_release_id(spec.release)
        state = self.releases.scan()
        previous = state.current
        found = scan_instances(self.run, spec.service)
        active, retiring = found.active, found.retiring
        keep = self._keep_after(state, previous)
        config, _env = recorded_config(spec.root, spec.release)
        self.process_names = sorted(processes_of(config))
        self.start_window = process_start_seconds(config)
        # Processes run while their release is live: every other release's stop once
        # the switch holds (the previous release's included), and a switch that is undone
        # leaves them as they were.
        self.other_processes = [
            unit
            for release, names in found.processes.items()
            if release != spec.release
            for unit in spec.process_units(release, names)
        ]
        if previous and previous != spec.release:
            before, _env = recorded_config(spec.root, previous)
            self.previous_processes = spec.process_units(previous, sorted(processes_of(before)))
        self.running_processes = found.processes.get(spec.release, [])
        return {
            "release": spec.release,
            "previous": previous,
            "start": None if spec.release in active else spec.unit(spec.release),
            # An instance whose retire timer is pending is on its way out already.
            "retire": [r for r in active if r not in keep and r not in retiring],
            # Only an instance that runs is a standby; none is started to become one.
            "standby": next(
                (
                    r
                    for r in sorted(keep)
                    if r != spec.release and r in active and r not in retiring
                ),
                None,
            ),
        }

    def _keep_after(self, state, previous: str | None) -> set[str]:
        """Instances that keep running after the switch: the release, and the standby."""
        keep = {self.spec.release}
        if not self.spec.standby:
            return keep
        if self.spec.action == "deploy" and previous and previous != self.spec.release:
            # The release rolled away from in a deploy is the next rollback's target.
            keep.add(previous)
        else:
            good = [r for r in state.previous_good() if r != self.spec.release]
            keep.update(good[:1])
        return keep

    def switch(self, check_mode: bool) -> dict[str, Any]:
        spec = self.spec
        chosen = self.choose()
        plan = self.plan()
        site = self._site_of(spec.release)
        if site is not None:
            # The release's own port: Gate 2 asks where it will listen.
            spec.port = site[1]
        previous = self.previous = plan["previous"]
        result: dict[str, Any] = {
            "release": spec.release,
            "previous": previous,
            "current": spec.release,
            "started": plan["start"],
            "stopped": ", ".join(spec.unit(r) for r in plan["retire"]) or None,
            "standby": plan["standby"],
            "reason": chosen["reason"] if chosen else None,
            "diff": {
                "before": f"current -> releases/{previous}\n" if previous else "",
                "after": f"current -> releases/{spec.release}\n",
            },
        }
        if previous == spec.release:
            return self._already_current(result, plan, check_mode)
        # A missing or incomplete release is refused before its instance starts.
        self.releases.activate(spec.release, by=spec.by, note=spec.note, check_mode=True)
        if check_mode:
            # Nothing starts in a dry run, so there is nothing to probe; what the prune
            # after the switch would remove is worked out on the state it would leave.
            if spec.keep_releases > 0 and spec.action == "deploy":
                after = as_if_activated(self.releases.scan(), spec.release)
                result["pruned"] = plan_prune(after, validate_positive(spec.keep_releases, "keep"))
            return {**result, "changed": True}

        unit = spec.unit(spec.release)
        # A retire left by an earlier switch must not stop the instance going live: its
        # timer and the stop the timer runs are cancelled first. `start` is asked for even
        # when the instance runs (a no-op then): a stop that was already under way is
        # waited out and the instance started again, before any gate probes it.
        self._cancel_retire(spec.release)
        was_running = plan["start"] is None
        processes = spec.process_units(spec.release, self.process_names)
        restarts = self.restarts = self._restarts([unit, *processes])
        self._systemctl("start", unit)
        if not was_running:
            self.steps.append(f"started {unit}")
        timings: dict[str, float] = {}
        started = time.monotonic()
        if processes:
            # Started with the web instance, before any gate; each is checked once Gate 1
            # has passed, so the instance's start time counts towards their window.
            self._systemctl("start", *processes, check=False)
            self.steps.append(f"started {', '.join(processes)}")
        try:
            self._gate_private()
            timings["gate_1"] = round(time.monotonic() - started, 3)
        except HealthError as exc:
            raise self._undo(GATE_1, exc, flipped=False, was_running=was_running) from exc
        if processes:
            try:
                self._gate_processes(processes, restarts, started)
                timings["processes"] = round(time.monotonic() - started, 3)
            except ProcessDown as exc:
                raise self._undo(
                    PROCESSES, exc, flipped=False, was_running=was_running, unit=exc.unit
                ) from exc

        try:
            site_before = self._ensure_site(site)
        except ReleaseError as exc:
            raise self._undo(SITE, exc, flipped=False, was_running=was_running) from exc
        self.releases.activate(spec.release, by=spec.by, note=spec.note, check_mode=False)
        self.steps.append(f"flipped current to {spec.release}")
        try:
            started = time.monotonic()
            self._gate_public()
            timings["gate_2"] = round(time.monotonic() - started, 3)
        except HealthError as exc:
            raise self._undo(
                GATE_2, exc, flipped=True, was_running=was_running, site_before=site_before
            ) from exc

        if previous and spec.action == "rollback":
            self.releases.record(
                previous,
                "rolled_back",
                by=spec.by,
                note=f"rolled back to {spec.release}",
                check_mode=False,
            )
        self._settle(previous, plan["retire"])
        result = {**result, "changed": True, "timings": timings}
        if spec.keep_releases > 0 and spec.action == "deploy":
            pruned = self.releases.prune(
                spec.keep_releases, by=spec.by, note="after the switch", check_mode=False
            )
            result["pruned"] = pruned["removed"]
            if pruned["removed"]:
                # A pruned release's instance that once failed would stay listed by
                # `systemctl --failed` for good.
                self._systemctl(
                    "reset-failed", *(spec.unit(r) for r in pruned["removed"]), check=False
                )
        return {**result, "steps": self.steps}

    def _settle(self, previous: str | None, retire: list[str]) -> None:
        """Only the live release starts at boot; the standby runs; the rest retire;
        the processes of every other release stop."""
        spec = self.spec
        processes = spec.process_units(spec.release, self.process_names)
        self._boot("enable", spec.unit(spec.release), *processes)
        others = sorted({*retire, *([previous] if previous else [])} - {spec.release})
        old_processes = sorted({*self.other_processes, *self.previous_processes})
        if others or old_processes:
            self._boot("disable", *(spec.unit(r) for r in others), *old_processes, check=False)
        self._stop_processes(self.other_processes)
        for release in retire:
            self._retire(release)

    def _stop_processes(self, units: list[str]) -> None:
        """Stop processes of releases that are not live (no drain: they serve no
        requests; each gets its unit's TimeoutStopSec to finish what it does)."""
        if units:
            self._systemctl("stop", "--no-block", *units, check=False)
            self.steps.append(f"stopping {', '.join(units)}")

    def _exited(self) -> str | None:
        """Why the release's instance cannot answer any more (it exited, and systemd
        restarts or gave up on it), or None: a gate stops waiting for it at once."""
        unit = self.spec.unit(self.spec.release)
        props = self._show([unit]).get(unit, {})
        state, sub = props.get("ActiveState", "unknown"), props.get("SubState", "unknown")
        again = int(props.get("NRestarts") or 0) - self.restarts.get(unit, 0)
        if again > 0 or state in ("failed", "inactive") or sub == "auto-restart":
            return (
                f"{unit} exited ({state}/{sub}, result {props.get('Result', 'unknown')}, "
                f"restarted {max(again, 0)} time(s) since this switch started it)"
            )
        return None

    def _restarts(self, units: list[str]) -> dict[str, int]:
        """How often systemd has restarted each unit so far (NRestarts)."""
        return {u: int(p.get("NRestarts") or 0) for u, p in self._show(units).items()}

    def _show(self, units: list[str]) -> dict[str, dict[str, str]]:
        if not units:
            return {}
        proc = self.run(
            [
                "systemctl",
                "show",
                "--property=Id,ActiveState,SubState,NRestarts,Result",
                *units,
            ]
        )
        shown: dict[str, dict[str, str]] = {}
        for block in proc.stdout.split("\n\n"):
            props = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
            if props.get("Id"):
                shown[props["Id"]] = props
        return shown

    def _gate_processes(self, units: list[str], restarts: dict[str, int], started: float) -> None:
        """Each process is up (and was not restarted) for its whole start window."""
        deadline = started + self.start_window
        while True:
            shown = self._show(units)
            for unit in units:
                props = shown.get(unit, {})
                state = props.get("ActiveState", "unknown")
                sub = props.get("SubState", "unknown")
                again = int(props.get("NRestarts") or 0) - restarts.get(unit, 0)
                starting = state == "activating" and sub == "start"
                if again > 0 or not (state == "active" or starting):
                    why = f"restarted {again} time(s)" if again > 0 else f"{state} ({sub})"
                    raise ProcessDown(
                        f"{unit} exited during its start window of {self.start_window:g} s: "
                        f"{why}, result {props.get('Result', 'unknown')}",
                        unit,
                    )
                if time.monotonic() >= deadline and starting:
                    raise ProcessDown(
                        f"{unit} was still starting at the end of its start window of "
                        f"{self.start_window:g} s",
                        unit,
                    )
            if time.monotonic() >= deadline:
                return
            self.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _cancel_retire(self, release: str) -> None:
        """Cancel a pending retire of the release's instance: its timer, and the stop the
        timer may have begun to run (a stop job already queued still runs)."""
        timer = retire_timer(self.spec.service, release)
        self._systemctl("stop", "--quiet", f"{timer}.timer", f"{timer}.service", check=False)

    def _retire(self, release: str) -> None:
        """Stop an instance after the drain, without waiting for it here."""
        spec = self.spec
        unit = spec.unit(release)
        if spec.drain_seconds <= 0:
            self._systemctl("stop", "--no-block", unit)
            self.steps.append(f"stopping {unit}")
            return
        timer = retire_timer(spec.service, release)
        argv = [
            "systemd-run",
            "--quiet",
            "--collect",
            f"--unit={timer}",
            f"--on-active={max(1, round(spec.drain_seconds * 1000))}ms",
            "--timer-property=AccuracySec=50ms",
            "systemctl",
            "stop",
            unit,
        ]
        if self.run(argv).returncode != 0:
            # A timer of the same name from an earlier retire: replace it.
            self._cancel_retire(release)
            if self.run(argv).returncode != 0:
                self._systemctl("stop", "--no-block", unit)
                self.steps.append(f"stopping {unit} now (no retire timer could be made)")
                return
        self.steps.append(f"stopping {unit} after {spec.drain_seconds:g} s")

    def _already_current(
        self, result: dict[str, Any], plan: dict[str, Any], check_mode: bool
    ) -> dict[str, Any]:
        """Nothing to switch: the live instance runs, is enabled, answers; leftovers retire."""
        spec = self.spec
        unit = spec.unit(spec.release)
        result.update(diff={"before": "", "after": ""})
        changed = False
        if plan["start"] is not None:
            changed = True
            if not check_mode:
                self._cancel_retire(spec.release)
                self._systemctl("start", unit)
                self.steps.append(f"started {unit} (current, was not running)")
        missing = [p for p in self.process_names if p not in self.running_processes]
        if missing:
            changed = True
            if not check_mode:
                units = spec.process_units(spec.release, missing)
                self._systemctl("start", *units)
                self.steps.append(f"started {', '.join(units)} (current, was not running)")
        if self.other_processes:
            changed = True
            if not check_mode:
                self._boot("disable", *self.other_processes, check=False)
                self._stop_processes(self.other_processes)
        processes = spec.process_units(spec.release, self.process_names)
        if not all_enabled(self.run, [unit, *processes]):
            changed = True
            if not check_mode:
                self._boot("enable", unit, *processes)
        if plan["retire"]:
            changed = True
            if not check_mode:
                self._boot("disable", *(spec.unit(r) for r in plan["retire"]), check=False)
                for release in plan["retire"]:
                    self._retire(release)
        site = self._site_of(spec.release)
        if site is not None and read_text(self.site_path) != site[0]:
            changed = True
            if not check_mode:
                self._ensure_site(site)
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

    # -- the public site
    @property
    def site_path(self) -> str:
        return site_path(self.spec.service, self.spec.site_dir)

    def _site_of(self, release: str) -> tuple[str, int] | None:
        """The site a release defines (its port), or None for a release staged before
        releases carried their configuration (the site is then left as it is)."""
        return recorded_site(self.spec.root, self.spec.service, release)

    def _ensure_site(self, site: tuple[str, int] | None) -> tuple[str | None] | None:
        """Put the release's site in place if it differs from the one there; returns
        (what was there,) when it changed it, for the undo; None when nothing changed."""
        if site is None:
            return None
        before = read_text(self.site_path)
        if before == site[0]:
            return None
        self._install_site(site[0])
        self.steps.append(f"site {self.site_path} now listens on port {site[1]}")
        return (before,)

    def _install_site(self, content: str | None) -> None:
        """Write (or, for None, remove) the site; nginx -t, then reload. A site nginx
        rejects is taken out again, and nginx is not reloaded."""
        path = self.site_path
        before = read_text(path)
        _put(path, content)
        test = self.run(["nginx", "-t", "-q"])
        if test.returncode != 0:
            _put(path, before)
            raise ReleaseError(
                f"nginx rejects the site of {self.spec.service} ({path}): "
                f"{(test.stderr or test.stdout).strip()[-500:]}; the previous site was put "
                "back and nginx was not reloaded",
                retryable=False,
                field="site",
            )
        reload = self._systemctl("reload-or-restart", "nginx", check=False)
        if reload.returncode != 0:
            # nginx keeps what it had loaded; the file on disk must say the same, or the
            # next reload or reboot would serve the other port.
            _put(path, before)
            self._systemctl("reload-or-restart", "nginx", check=False)
            raise ReleaseError(
                f"could not reload nginx for the site of {self.spec.service} ({path}): "
                f"{(reload.stderr or reload.stdout).strip()[-500:]}; the previous site was "
                "put back",
                retryable=True,
                field="site",
            )

    def _undo(
        self,
        gate: str,
        error: FlipbackError,
        *,
        flipped: bool,
        was_running: bool,
        site_before: tuple[str | None] | None = None,
        unit: str | None = None,
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
        if site_before is not None:
            try:
                self._install_site(site_before[0])
                undone.append(f"site {self.site_path} put back")
            except ReleaseError as exc:
                undone.append(f"site {self.site_path} NOT put back: {exc.msg}")
        web = spec.unit(spec.release)
        processes = spec.process_units(spec.release, self.process_names)
        # Stopped even if it was already running (warmed up by staging, or the standby):
        # an instance that failed a gate must not linger as anyone's standby.
        self._boot("disable", web, *processes, check=False)
        self._systemctl("stop", web, *processes, check=False)
        undone.append(f"stopped {web}" + (" (it was already running)" if was_running else ""))
        if processes:
            undone.append(f"stopped {', '.join(processes)}")
        # The journal of the unit that failed (the web instance unless a process did),
        # read once it has stopped: by then it has finished logging its last traceback.
        unit = unit or web
        journal = self._journal(unit)
        self.releases.record(
            spec.release,
            "failed",
            by=spec.by,
            note=f"{gate}: {error.msg[:300]}",
            check_mode=False,
        )
        # Gate 2 asks through nginx: when nginx does not run, nothing answers on the port,
        # whatever the releases do, and the message must say so.
        nginx_down = gate != GATE_1 and (
            self._systemctl("is-active", "--quiet", "nginx", check=False).returncode != 0
        )
        serving = "which keeps serving" if not nginx_down else "but nothing answers on the port"
        if not previous:
            fallback = "no earlier release to fall back to"
        elif flipped:
            fallback = f"current is back on {previous}, {serving}"
        else:
            fallback = f"current stays on {previous}, {serving}"
        if nginx_down:
            advice = (
                f"nginx is not running on this host (systemctl is-active nginx), so port "
                f"{spec.port} cannot answer: start nginx, then run the same command again"
            )
        else:
            advice = (
                "the release was stopped and marked failed; fix the cause and deploy again "
                "(retrying as-is is not expected to help)"
            )
        found = getattr(error, "found", error.msg)
        return GateFailed(
            f'release {spec.release} did not pass "{gate}" ({found}). {fallback}. {advice}. '
            f"Last journal lines of {unit}: " + " | ".join(journal),
            retryable=False,
            gate=gate,
            undone=undone,
            journal=journal,
        )


def _put(path: str, content: str | None) -> None:
    """Replace `path` by rename (root, 0644), or remove it for None."""
    if content is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomic(path, content, 0o644)
