"""Unit tests of module_utils/flipback_switch.py on real release trees under tmp_path.

systemd, nginx and the health probes go through fakes: a runner that keeps the active
and enabled units in sets, records retire timers (systemd-run) without running them and
answers `nginx -t` as scripted, and a prober scripted per gate. Every fake appends to
one log, so a test sees the order of the whole switch, and each probe notes where
`current` pointed when it ran. The switch never sleeps (the drain is the timer's),
which the recording sleep proves. The nginx site directory (site_dir) is under tmp_path;
a release with a recorded configuration (its manifest's "config", made with
test_flipback_runtime.a_release) defines its site by its port.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence

import pytest
from ansible.module_utils import flipback_health
from ansible.module_utils import flipback_switch as fs
from ansible.module_utils.flipback_health import Clock, Expect, HealthError, Policy, Target
from ansible.module_utils.flipback_release import (
    ReleaseError,
)
from ansible.module_utils.flipback_runtime import site_text
from ansible.module_utils.flipback_switch import (
    GATE_1,
    GATE_2,
    PROCESSES,
    SITE,
    GateFailed,
    NothingToRollBackTo,
    Switch,
    SwitchSpec,
)
from fakes import FakeSystemd, ReleaseTree, list_units_argv
from test_flipback_runtime import a_release

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
UNIT_A = f"{SERVICE}@{A}.service"
C = "20261103T120000-cccccccccc"
UNIT_B = f"{SERVICE}@{B}.service"
UNIT_C = f"{SERVICE}@{C}.service"
RETIRE_A = f"flipback-retire-{SERVICE}-{A}"
RETIRE_B = f"flipback-retire-{SERVICE}-{B}"
RETIRE_C = f"flipback-retire-{SERVICE}-{C}"
LIST_UNITS = list_units_argv(SERVICE)
SOCKET_DIR = "/run/flipback-shop"
PORT = 8000
HEALTH = {"path": "/health", "expect_status": 200, "expect_json": {"ok": True}}
JOURNAL = ["Started shop.", "ImportError: no module named app", "Main process exited"]
NOT_READY = HealthError("health check failed: observed status 502", retryable=True)
WRONG_RELEASE = HealthError("health check failed: JSON field 'release' is 'old'")


# =========================================================================== fixtures


class Tree(ReleaseTree):
    """A service root on disk (fakes.ReleaseTree) and the directory of nginx sites
    (`site_dir`)."""

    def __init__(self, root: str, site_dir: str) -> None:
        super().__init__(root, SERVICE, manifest={"health": HEALTH, "status": "staged"})
        self.site_dir = site_dir

    def release(
        self,
        release_id: str,
        status: str = "staged",
        port: int | None = None,
        processes: dict[str, str] | None = None,
        start_window: float = 0,
    ) -> Tree:
        """A release; with `port`, staged with a recorded configuration listening on it
        (and with `processes`, those processes), else as an older flipback staged it (no
        configuration, so no site of its own)."""
        fields: dict = {"status": status}
        if port is not None or processes:
            fields["config"] = a_release(
                SERVICE,
                self.root,
                port=port or PORT,
                processes=processes,
                process_start_seconds=start_window,
            ).config
        return super().release(release_id, **fields)

    # -- the site
    @property
    def site_path(self) -> str:
        return os.path.join(self.site_dir, f"flipback-{SERVICE}.conf")

    def site_of(self, port: int) -> str:
        """The site of a release of this service listening on `port`."""
        return site_text(service=SERVICE, home=self.root, port=port)

    def site(self) -> str | None:
        try:
            with open(self.site_path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def put_site(self, content: str | None) -> Tree:
        if content is not None:
            os.makedirs(self.site_dir, exist_ok=True)
            with open(self.site_path, "w") as handle:
                handle.write(content)
        return self

    def site_dir_files(self) -> list[str]:
        return sorted(os.listdir(self.site_dir)) if os.path.isdir(self.site_dir) else []

    def pairs(self) -> list[tuple[str, str]]:
        return [(e["release"], e["event"]) for e in self.history()]

    def history_bytes(self) -> bytes:
        with open(os.path.join(self.root, "history.jsonl"), "rb") as handle:
            return handle.read()


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(str(tmp_path / "srv" / SERVICE), str(tmp_path / "nginx" / "conf.d"))


def live_a_staged_b(tree: Tree) -> Tree:
    """A is current and good; B is staged, waiting to be switched to."""
    tree.release(A).events((A, "staged"), (A, "active")).current(A)
    return tree.release(B).events((B, "staged"))


def only_b_staged(tree: Tree) -> Tree:
    """A first deploy: B is staged and nothing is current."""
    return tree.release(B).events((B, "staged"))


def b_current(tree: Tree) -> Tree:
    return tree.release(B).events((B, "staged"), (B, "active")).current(B)


def a_good_b_current(tree: Tree) -> Tree:
    """A was live before B: A is the previous good release."""
    tree.release(A).release(B)
    return tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)


def a_b_good_c_current(tree: Tree) -> Tree:
    """A, then B, then C went live: B is the previous good release, A the one before."""
    tree.release(A).release(B).release(C)
    for release_id in (A, B, C):
        tree.events((release_id, "staged"), (release_id, "active"))
    return tree.current(C)


def a_good_b_current_c_staged(tree: Tree) -> Tree:
    return a_good_b_current(tree).release(C).events((C, "staged"))


class Host(FakeSystemd):
    """Fake systemctl (fakes.FakeSystemd)/systemd-run/journalctl/nginx and prober sharing
    one ordered log.

    `active` and `enabled` hold unit names; `systemctl list-units` answers from
    `active` as systemd does (one unit per line, name first). A retire timer only
    records the unit it would stop: the instance keeps running through its drain.
    `nginx -t` exits with the next of `nginx_test` (0 once they run out) and notes, in
    `nginx_saw`, the site it was given and where `current` pointed then.
    """

    stopped_state = "failed"

    def __init__(
        self,
        tree: Tree,
        *,
        active: Sequence[str] = (),
        enabled: Sequence[str] = (),
        failing_start: Sequence[str] = (),
        gates: dict[str, HealthError | None] | None = None,
        systemd_run_fails: int = 0,
        nginx_test: Sequence[int] = (),
        reload_fails: bool = False,
    ) -> None:
        super().__init__(active=active, enabled=enabled, failing_start=failing_start)
        self.tree = tree
        self.nginx_test = list(nginx_test)
        self.reload_fails = reload_fails
        self.nginx_saw: list[tuple[str | None, str | None]] = []
        self.gates = gates or {}
        self.systemd_run_fails = systemd_run_fails
        self.probes: list[tuple[Target, Expect, Policy]] = []
        self.sleeps: list[float] = []
        self.log: list[str] = []
        self.nginx_active = True
        # Units whose process exits right after its start (systemd restarts it).
        self.crashing: set[str] = set()
        self.restarts: dict[str, int] = {}
        self.shows: list[list[str]] = []

    def cmd_journalctl(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.log.append(f"journal {argv[-1]}")
        return subprocess.CompletedProcess(argv, 0, "\n".join(JOURNAL) + "\n", "")

    def cmd_nginx(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert argv == ["nginx", "-t", "-q"], argv
        self.log.append("nginx -t")
        self.nginx_saw.append((self.tree.site(), self.tree.readlink()))
        rc = self.nginx_test.pop(0) if self.nginx_test else 0
        stderr = 'nginx: [emerg] unknown directive "lissen"' if rc else ""
        return subprocess.CompletedProcess(argv, rc, "", stderr)

    def systemctl(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if argv[1:2] not in (["list-units"], ["show"], ["is-active"]):
            # What happened: in the log (queries are not), --quiet and --no-reload left out
            # (the fake refuses an enable or disable without --no-reload).
            words = [
                a for a in argv[2:] if a.startswith("--") and a not in ("--quiet", "--no-reload")
            ]
            words += [a for a in argv[2:] if not a.startswith("--")]
            self.log.append(" ".join([argv[1], *words]))
        return super().systemctl(argv)

    def list_units(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        assert argv[1:] == LIST_UNITS, argv
        self.log.append("list-units")
        return super().list_units(argv, units)

    def show(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        # A query: in `calls` (and `shows`), not in the log of what happened.
        self.shows.append(units)
        return super().show(argv, units)

    def show_block(self, unit: str) -> str:
        restarts = self.restarts.get(unit, 0)
        return (
            super()
            .show_block(unit)
            .replace("NRestarts=0\n", f"NRestarts={restarts}\nResult=success\n")
        )

    def is_active(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        # Only nginx's state is asked (by a failed Gate 2, to tell why).
        assert units == ["nginx"], argv
        return subprocess.CompletedProcess(argv, 0 if self.nginx_active else 3, "", "")

    def start_failure(self, unit: str) -> str:
        return f"Job for {unit} failed because the control process exited."

    def started(self, unit: str) -> None:
        if unit in self.crashing:
            self.restarts[unit] = self.restarts.get(unit, 0) + 1
        else:
            super().started(unit)

    def reload_or_restart(
        self, argv: list[str], units: list[str]
    ) -> subprocess.CompletedProcess[str]:
        assert units == ["nginx"], argv
        if self.reload_fails:
            return subprocess.CompletedProcess(argv, 1, "", "nginx.service is not active.")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def cmd_systemd_run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        timer = next(a for a in argv if a.startswith("--unit="))[len("--unit=") :]
        delay = next(a for a in argv if a.startswith("--on-active="))[len("--on-active=") :]
        self.log.append(f"retire {argv[-1]} in {delay}")
        if self.systemd_run_fails:
            self.systemd_run_fails -= 1
            return subprocess.CompletedProcess(argv, 1, "", f"Unit {timer}.timer already exists.")
        self.timers[timer] = argv[-1]
        return subprocess.CompletedProcess(argv, 0, "", "")

    def prober(self, target: Target, expect: Expect, policy: Policy) -> dict:
        gate = "gate1" if target.unix_socket is not None else "gate2"
        self.probes.append((target, expect, policy))
        self.log.append(f"{gate} current={self.tree.readlink()}")
        error = self.gates.get(gate)
        if error is not None:
            raise error
        return {"ok": True, "attempts": 1}

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.log.append(f"sleep {seconds:g}")

    def switch(self, release: str = B, **overrides: object) -> Switch:
        return Switch(
            spec(self.tree, release, **overrides),
            run=self.run,
            prober=self.prober,
            sleep=self.sleep,
        )

    def gates_probed(self) -> list[str]:
        return [line.split()[0] for line in self.log if line.startswith("gate")]

    def mutations(self) -> list[str]:
        """What the switch did to systemd (queries, probes and journal reads left out)."""
        return [
            line
            for line in self.log
            if line.split()[0]
            not in ("list-units", "is-enabled", "show", "gate1", "gate2", "journal")
        ]


def spec(tree: Tree, release: str = B, **overrides: object) -> SwitchSpec:
    values: dict = {
        "service": SERVICE,
        "root": tree.root,
        "release": release,
        "action": "deploy",
        "port": PORT,
        "expect_json": {"ok": True},
        "health_timeout": 12.0,
        "public_successes": 4,
        "drain_seconds": 2.5,
        "socket_dir": SOCKET_DIR,
        "by": "bob",
        "note": "ticket 42",
        "site_dir": tree.site_dir,
        # Never the machine's own /etc: pruning removes units and legacy env files.
        "unit_dir": os.path.join(os.path.dirname(tree.site_dir), "units"),
        "legacy_env_dir": os.path.join(os.path.dirname(tree.site_dir), "etc-flipback"),
        **overrides,
    }
    return SwitchSpec(**values)


# =========================================================================== small parts


def test_unit_names_the_template_instance(tree):
    assert spec(tree).unit(B) == UNIT_B


def test_run_command_captures_output_and_exit_code():
    proc = fs.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


def test_real_probe_uses_a_real_clock(monkeypatch):
    seen = []
    # The switch's default prober is the one in flipback_health, shared with prepare.
    assert fs.Switch.__init__.__kwdefaults__["prober"] is flipback_health.real_probe
    monkeypatch.setattr(flipback_health, "probe", lambda *args: seen.append(args) or {"ok": True})
    target, expect, policy = Target(port=1), Expect(), Policy()
    assert fs.real_probe(target, expect, policy) == {"ok": True}
    assert seen[0][:3] == (target, expect, policy)
    assert isinstance(seen[0][3], Clock)


# =========================================================================== success


def test_deploy_keeps_the_previous_release_as_the_warm_standby(tree):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])

    result = host.switch().switch(check_mode=False)

    assert host.log == [
        "list-units",
        # A retire timer left for B by an earlier switch is cancelled before B starts.
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"start {UNIT_B}",
        f"gate1 current=releases/{A}",
        f"gate2 current=releases/{B}",
        f"enable {UNIT_B}",
        f"disable {UNIT_A}",
    ]
    assert tree.readlink() == f"releases/{B}"
    assert host.active == {UNIT_A, UNIT_B}
    assert host.enabled == {UNIT_B}
    assert host.timers == {}
    assert host.sleeps == []

    (private, expect_1, policy_1), (public, expect_2, policy_2) = host.probes
    assert private.unix_socket == f"{SOCKET_DIR}/{B}/app.sock"
    assert private.url_path == "/health"
    assert (public.host, public.port, public.unix_socket) == ("127.0.0.1", PORT, None)
    for expect in (expect_1, expect_2):
        assert expect == Expect(status=(200,), json={"ok": True, "release": B})
    assert (policy_1.timeout, policy_1.successes) == (12.0, 1)
    assert (policy_2.timeout, policy_2.successes) == (12.0, 4)
    # Asked again soon: an instance that just became ready (or 10 unhealthy answers in a
    # row) is seen within a quarter second, not after a backoff grown to seconds.
    assert policy_1.max_delay == policy_2.max_delay == 0.25

    active = tree.history()[-1]
    assert (active["release"], active["event"], active["from"]) == (B, "active", A)
    assert (active["note"], active["by"], active["expect"]) == ("ticket 42", "bob", HEALTH)
    assert [e["event"] for e in tree.history() if e["release"] == A] == ["staged", "active"]

    assert result["changed"] is True
    assert (result["release"], result["previous"], result["current"]) == (B, A, B)
    assert (result["started"], result["stopped"], result["standby"]) == (UNIT_B, None, A)
    assert result["reason"] is None
    assert "pruned" not in result
    assert set(result["timings"]) == {"gate_1", "gate_2"}
    assert result["diff"] == {
        "before": f"current -> releases/{A}\n",
        "after": f"current -> releases/{B}\n",
    }
    assert result["steps"] == [f"started {UNIT_B}", f"flipped current to {B}"]


@pytest.mark.parametrize(
    ("action", "standby"),
    [
        pytest.param("deploy", False, id="deploy-without-standby"),
        # A rollback to a release that was never live: A is left, and is no good release.
        pytest.param("rollback", True, id="rollback-to-named"),
    ],
)
def test_switch_a_to_b_retires_a_after_the_drain(tree, action, standby):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])

    result = host.switch(action=action, standby=standby).switch(check_mode=False)

    assert host.log == [
        "list-units",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"start {UNIT_B}",
        f"gate1 current=releases/{A}",
        f"gate2 current=releases/{B}",
        f"enable {UNIT_B}",
        f"disable {UNIT_A}",
        f"retire {UNIT_A} in 2500ms",
    ]
    retire = [call for call in host.calls if call[0] == "systemd-run"]
    assert retire == [
        [
            "systemd-run",
            "--quiet",
            "--collect",
            f"--unit={RETIRE_A}",
            "--on-active=2500ms",
            "--timer-property=AccuracySec=50ms",
            "systemctl",
            "stop",
            UNIT_A,
        ]
    ]
    # A drains: it still runs when the call returns, and its timer stops it later.
    assert host.active == {UNIT_A, UNIT_B}
    assert host.timers == {RETIRE_A: UNIT_A}
    assert host.enabled == {UNIT_B}
    assert host.sleeps == []
    assert (result["started"], result["stopped"], result["standby"]) == (UNIT_B, UNIT_A, None)
    assert result["steps"] == [
        f"started {UNIT_B}",
        f"flipped current to {B}",
        f"stopping {UNIT_A} after 2.5 s",
    ]
    last_of_a = [e for e in tree.history() if e["release"] == A][-1]
    if action == "rollback":
        assert (last_of_a["event"], last_of_a["note"]) == ("rolled_back", f"rolled back to {B}")
        assert result["reason"] == f"named release {B} (staged)"
        # A note given by the caller is kept.
        assert [e for e in tree.history() if e["event"] == "active"][-1]["note"] == "ticket 42"
    else:
        assert last_of_a["event"] == "active"
        assert result["reason"] is None


def test_first_deploy_creates_current_and_retires_nothing(tree):
    only_b_staged(tree)
    host = Host(tree)

    result = host.switch().switch(check_mode=False)

    assert host.log == [
        "list-units",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"start {UNIT_B}",
        "gate1 current=None",
        f"gate2 current=releases/{B}",
        f"enable {UNIT_B}",
    ]
    assert host.sleeps == []
    assert tree.readlink() == f"releases/{B}"
    assert tree.pairs() == [(B, "staged"), (B, "active")]
    assert tree.history()[-1]["from"] is None
    assert (result["previous"], result["started"], result["stopped"]) == (None, UNIT_B, None)
    assert result["standby"] is None
    assert result["diff"] == {"before": "", "after": f"current -> releases/{B}\n"}


def test_deploy_retires_every_instance_but_the_release_and_the_standby(tree):
    a_good_b_current_c_staged(tree)
    stray = "20261030T120000-dddddddddd"
    unit_stray = f"{SERVICE}@{stray}.service"
    host = Host(tree, active=[UNIT_A, UNIT_B, unit_stray], enabled=[UNIT_B])

    result = host.switch(C).switch(check_mode=False)

    assert host.mutations() == [
        f"stop {RETIRE_C}.timer {RETIRE_C}.service",
        f"start {UNIT_C}",
        f"enable {UNIT_C}",
        # In release order (ids sort by time), the stray one first.
        f"disable {unit_stray} {UNIT_A} {UNIT_B}",
        f"retire {unit_stray} in 2500ms",
        f"retire {UNIT_A} in 2500ms",
    ]
    assert (result["standby"], result["stopped"]) == (B, f"{unit_stray}, {UNIT_A}")
    assert host.timers == {RETIRE_A: UNIT_A, f"flipback-retire-{SERVICE}-{stray}": unit_stray}
    assert host.enabled == {UNIT_C}


def test_a_retire_timer_is_cancelled_before_its_release_goes_live(tree):
    # A is being retired by an earlier switch (its timer is pending) when a rollback
    # goes back to it: the timer must not stop the instance that is now live.
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])
    host.timers[RETIRE_A] = UNIT_A

    host.switch("", action="rollback").switch(check_mode=False)

    assert host.log.index(f"stop {RETIRE_A}.timer {RETIRE_A}.service") < host.log.index(
        f"gate1 current=releases/{B}"
    )
    assert RETIRE_A not in host.timers
    assert host.timers == {RETIRE_B: UNIT_B}
    assert UNIT_A in host.active


def test_an_instance_already_retiring_is_not_retired_again(tree):
    a_good_b_current_c_staged(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])
    host.timers[RETIRE_A] = UNIT_A

    result = host.switch(C).switch(check_mode=False)

    assert not [line for line in host.log if line.startswith("retire")]
    assert result["stopped"] is None
    assert host.timers == {RETIRE_A: UNIT_A}


# =========================================================================== rollback


def test_rollback_to_the_warm_standby_starts_no_new_instance(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback", note="").switch(check_mode=False)

    assert host.log == [
        "list-units",
        # A retire of A begun by an earlier switch is cancelled; `start` is a no-op for
        # a running instance, and waits out a stop that was already under way.
        f"stop {RETIRE_A}.timer {RETIRE_A}.service",
        f"start {UNIT_A}",
        f"gate1 current=releases/{B}",
        f"gate2 current=releases/{A}",
        f"enable {UNIT_A}",
        f"disable {UNIT_B}",
        f"retire {UNIT_B} in 2500ms",
    ]
    assert tree.readlink() == f"releases/{A}"
    assert (result["release"], result["previous"], result["current"]) == (A, B, A)
    assert (result["started"], result["stopped"], result["standby"]) == (None, UNIT_B, None)
    assert result["reason"].startswith(f"previous good release 1 step(s) back: {A} (")
    assert result["steps"] == [f"flipped current to {A}", f"stopping {UNIT_B} after 2.5 s"]
    active = tree.history()[-2]
    assert (active["release"], active["event"], active["from"]) == (A, "active", B)
    assert active["note"] == f"rollback from {B} ({result['reason']})"
    rolled_back = tree.history()[-1]
    assert (rolled_back["release"], rolled_back["event"]) == (B, "rolled_back")
    # Gate 1 probed the standby's own socket.
    assert host.probes[0][0].unix_socket == f"{SOCKET_DIR}/{A}/app.sock"
    assert host.probes[0][1].json["release"] == A


def test_rollback_steps_back_and_keeps_the_next_good_release_as_standby(tree):
    a_b_good_c_current(tree)
    host = Host(tree, active=[UNIT_B, UNIT_C], enabled=[UNIT_C])

    result = host.switch("", action="rollback", steps=2).switch(check_mode=False)

    assert result["release"] == A
    assert result["reason"].startswith(f"previous good release 2 step(s) back: {A}")
    assert (result["started"], result["stopped"], result["standby"]) == (UNIT_A, UNIT_C, B)
    assert host.mutations() == [
        f"stop {RETIRE_A}.timer {RETIRE_A}.service",
        f"start {UNIT_A}",
        f"enable {UNIT_A}",
        f"disable {UNIT_C}",
        f"retire {UNIT_C} in 2500ms",
    ]
    assert host.active == {UNIT_A, UNIT_B, UNIT_C}
    assert host.timers == {RETIRE_C: UNIT_C}


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("active", "standby"),
    [
        # The deploy of C kept B as its standby and retired A: A is good but stopped.
        pytest.param([UNIT_B, UNIT_C], None, id="a-stopped"),
        pytest.param([UNIT_A, UNIT_B, UNIT_C], A, id="a-running"),
    ],
)
def test_rollback_reports_a_standby_only_when_its_instance_runs(tree, check_mode, active, standby):
    a_b_good_c_current(tree)
    host = Host(tree, active=active, enabled=[UNIT_C])

    result = host.switch("", action="rollback").switch(check_mode=check_mode)

    assert result["release"] == B
    assert result["standby"] == standby
    # None is started to become the standby.
    assert not [line for line in host.log if line.startswith(f"start {UNIT_A}")]
    assert (UNIT_A in host.active) is (standby is not None)


def test_a_retiring_instance_is_not_reported_as_the_standby(tree):
    a_b_good_c_current(tree)
    # The deploy of C retired A, whose drain has not run out yet.
    host = Host(tree, active=[UNIT_A, UNIT_B, UNIT_C], enabled=[UNIT_C])
    host.timers[RETIRE_A] = UNIT_A

    result = host.switch("", action="rollback").switch(check_mode=False)

    assert result["release"] == B
    assert result["standby"] is None or RETIRE_A not in host.timers


def test_rollback_to_the_current_release_named_is_already_current(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_B], enabled=[UNIT_B])

    result = host.switch(B, action="rollback").switch(check_mode=False)

    assert result["changed"] is False
    assert result["reason"] == f"{B} is already current"
    assert host.mutations() == []
    assert tree.readlink() == f"releases/{B}"


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("setup", "steps", "reason", "current"),
    [
        pytest.param(
            b_current, 1, f"no previous good release: history has only {B}", B, id="only-one"
        ),
        pytest.param(
            a_good_b_current,
            2,
            f"steps=2: only 1 previous good release(s): {A}",
            B,
            id="too-many-steps",
        ),
        pytest.param(
            only_b_staged, 1, "no previous good release: nothing was active", None, id="none-live"
        ),
    ],
)
def test_nothing_to_roll_back_to_changes_nothing(tree, check_mode, setup, steps, reason, current):
    setup(tree)
    link, history = tree.readlink(), tree.history_bytes()
    host = Host(tree, active=[f"{SERVICE}@{current}.service"] if current else [])

    with pytest.raises(NothingToRollBackTo) as failed:
        host.switch("", action="rollback", steps=steps).switch(check_mode=check_mode)

    error = failed.value
    assert error.msg == (
        f"no release to roll back to ({reason}); nothing was changed, "
        f"{current or 'nothing'} stays current"
    )
    assert error.retryable is False
    assert error.details == {"current": current, "reason": reason}
    assert host.calls == []
    assert host.probes == []
    assert tree.readlink() == link
    assert tree.history_bytes() == history


def test_rollback_steps_must_be_positive(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_B])
    with pytest.raises(ReleaseError) as failed:
        host.switch("", action="rollback", steps=0).switch(check_mode=False)
    assert failed.value.details["field"] == "steps"
    assert host.calls == []


def test_rollback_to_a_failed_release_is_refused(tree):
    a_good_b_current(tree).release(C).events((C, "staged"), (C, "failed"))
    host = Host(tree, active=[UNIT_B])
    with pytest.raises(ReleaseError) as failed:
        host.switch(C, action="rollback").switch(check_mode=False)
    assert f"release: got {C!r}, whose status is failed" in failed.value.msg
    assert f"e.g. {A}" in failed.value.msg
    assert host.calls == []
    assert tree.readlink() == f"releases/{B}"


# =========================================================================== retire


def test_no_drain_stops_at_once_without_waiting(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback", drain_seconds=0).switch(check_mode=False)

    assert host.mutations()[-1] == f"stop --no-block {UNIT_B}"
    assert not [call for call in host.calls if call[0] == "systemd-run"]
    assert result["steps"][-1] == f"stopping {UNIT_B}"
    assert host.active == {UNIT_A}


def test_a_leftover_retire_timer_of_the_same_name_is_replaced(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B], systemd_run_fails=1)

    host.switch("", action="rollback").switch(check_mode=False)

    assert host.mutations()[-3:] == [
        f"retire {UNIT_B} in 2500ms",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"retire {UNIT_B} in 2500ms",
    ]
    assert host.timers == {RETIRE_B: UNIT_B}
    assert UNIT_B in host.active


def test_a_retire_timer_that_cannot_be_made_stops_at_once(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B], systemd_run_fails=2)

    host.switch("", action="rollback").switch(check_mode=False)

    assert host.mutations()[-1] == f"stop --no-block {UNIT_B}"
    assert host.active == {UNIT_A}


def test_a_retire_without_a_timer_does_not_claim_a_drain(tree):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B], systemd_run_fails=2)

    result = host.switch("", action="rollback").switch(check_mode=False)

    assert result["steps"][-1] != f"stopping {UNIT_B} after 2.5 s"
    assert result["steps"] == [
        f"flipped current to {A}",
        f"stopping {UNIT_B} now (no retire timer could be made)",
    ]
    assert host.mutations()[-4:] == [
        f"retire {UNIT_B} in 2500ms",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"retire {UNIT_B} in 2500ms",
        f"stop --no-block {UNIT_B}",
    ]
    assert host.timers == {}


@pytest.mark.parametrize(
    ("drain_seconds", "on_active"),
    [
        # With :g seconds a long drain was 1e+06s, which systemd cannot parse.
        pytest.param(1_000_000, "1000000000ms", id="long"),
        pytest.param(86_400.25, "86400250ms", id="a-day-and-a-bit"),
        pytest.param(2.5, "2500ms", id="fraction"),
        pytest.param(0.0015, "2ms", id="rounds-to-ms"),
        # A drain under half a millisecond is still a drain: at least 1 ms, never 0ms.
        pytest.param(0.0004, "1ms", id="tiny"),
        pytest.param(1e-9, "1ms", id="tinier"),
    ],
)
def test_a_drain_is_a_time_span_systemd_reads(tree, drain_seconds, on_active):
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    host.switch("", action="rollback", drain_seconds=drain_seconds).switch(check_mode=False)

    (retire,) = [call for call in host.calls if call[0] == "systemd-run"]
    assert f"--on-active={on_active}" in retire
    # Whole milliseconds, in plain digits: a time span systemd parses.
    assert on_active[:-2].isdigit() and int(on_active[:-2]) >= 1
    assert host.timers == {RETIRE_B: UNIT_B}


# =========================================================================== prune


def test_a_deploy_prunes_down_to_keep_releases_after_the_switch(tree):
    a_good_b_current_c_staged(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch(C, keep_releases=1).switch(check_mode=False)

    # C is current and B the previous good release (the standby): both are kept.
    assert result["pruned"] == [A]
    assert not os.path.exists(os.path.join(tree.root, "releases", A))
    assert os.path.isdir(os.path.join(tree.root, "releases", B))
    pruned = tree.history()[-1]
    assert (pruned["release"], pruned["event"]) == (A, "pruned")
    assert pruned["note"] == "keep=1, was good; after the switch"
    assert result["standby"] == B
    assert result["steps"][-1] == f"stopping {UNIT_A} after 2.5 s"
    # A pruned instance that once failed must not stay in `systemctl --failed`.
    assert host.log[-1] == f"reset-failed {UNIT_A}"


@pytest.mark.parametrize(
    ("keep_releases", "pruned"),
    [pytest.param(1, [A], id="keep-1"), pytest.param(3, [], id="keep-3")],
)
def test_a_dry_run_names_what_the_prune_after_the_switch_would_remove(tree, keep_releases, pruned):
    a_good_b_current_c_staged(tree)
    link, history = tree.readlink(), tree.history_bytes()
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    preview = host.switch(C, keep_releases=keep_releases).switch(check_mode=True)

    assert preview["pruned"] == pruned
    assert (tree.readlink(), tree.history_bytes()) == (link, history)
    assert sorted(os.listdir(os.path.join(tree.root, "releases"))) == [A, B, C]
    # The real run removes exactly what the dry run named.
    done = host.switch(C, keep_releases=keep_releases).switch(check_mode=False)
    assert done["pruned"] == pruned


@pytest.mark.parametrize(
    ("action", "keep_releases"),
    [pytest.param("deploy", 0, id="keep-0"), pytest.param("rollback", 1, id="rollback")],
)
def test_no_prune_without_keep_releases_or_in_a_rollback(tree, action, keep_releases):
    a_good_b_current_c_staged(tree)
    host = Host(tree, active=[UNIT_B])

    result = host.switch(C, action=action, keep_releases=keep_releases).switch(check_mode=False)

    assert "pruned" not in result
    assert sorted(os.listdir(os.path.join(tree.root, "releases"))) == [A, B, C]
    assert "pruned" not in [e["event"] for e in tree.history()]


# =========================================================================== gate failures


@pytest.mark.parametrize(
    ("setup", "running_before", "undone", "fallback"),
    [
        pytest.param(
            live_a_staged_b, False, f"stopped {UNIT_B}", f"current stays on {A}", id="a-live"
        ),
        # B warmed up by staging: it failed a gate, so it is stopped all the same.
        pytest.param(
            live_a_staged_b,
            True,
            f"stopped {UNIT_B} (it was already running)",
            f"current stays on {A}",
            id="b-was-running",
        ),
        pytest.param(
            only_b_staged, False, f"stopped {UNIT_B}", "no earlier release", id="first-deploy"
        ),
    ],
)
def test_gate_1_failure_leaves_current_alone(tree, setup, running_before, undone, fallback):
    setup(tree)
    before = tree.readlink()
    active = [UNIT_A] if before else []
    host = Host(
        tree,
        active=active + ([UNIT_B] if running_before else []),
        enabled=active,
        gates={"gate1": WRONG_RELEASE},
    )

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    error = failed.value
    assert tree.readlink() == before
    assert host.gates_probed() == ["gate1"]
    # Asked for either way: a no-op when B already ran.
    gate_1 = next(i for i, line in enumerate(host.log) if line.startswith("gate1"))
    assert host.log.index(f"start {UNIT_B}") < gate_1
    # Disabled, then stopped, whether it was started here or already ran.
    assert host.mutations()[-2:] == [f"disable {UNIT_B}", f"stop {UNIT_B}"]
    assert UNIT_B not in host.active
    assert UNIT_B not in host.enabled
    if before:
        assert UNIT_A in host.active and UNIT_A in host.enabled
        assert not [line for line in host.log if UNIT_A in line]
    assert host.timers == {}
    assert not [line for line in host.log if line.split()[0] in ("retire", "enable")]
    assert [line for line in host.log if line.startswith("disable")] == [f"disable {UNIT_B}"]
    failed_event = tree.history()[-1]
    assert (failed_event["release"], failed_event["event"]) == (B, "failed")
    assert failed_event["note"].startswith(f"{GATE_1}: {WRONG_RELEASE.msg}")
    assert (B, "active") not in tree.pairs()

    assert f'did not pass "{GATE_1}"' in error.msg
    assert WRONG_RELEASE.msg in error.msg
    assert fallback in error.msg
    assert " | ".join(JOURNAL) in error.msg
    assert error.retryable is False
    assert error.details["gate"] == GATE_1
    assert error.details["journal"] == JOURNAL
    assert error.details["undone"] == [undone]


def test_gate_1_failure_reads_far_enough_back_to_find_the_error(tree):
    live_a_staged_b(tree)
    host = Host(tree, gates={"gate1": NOT_READY})
    with pytest.raises(GateFailed):
        host.switch().switch(check_mode=False)
    journal = [call for call in host.calls if call[0] == "journalctl"]
    scan = str(fs.JOURNAL_SCAN)
    assert journal == [["journalctl", "--no-pager", "--output=cat", "-n", scan, "-u", UNIT_B]]


def traceback_of(message: str) -> list[str]:
    """What uvicorn logs for one failing request under Starlette (an exception group)."""
    return [
        "ERROR:    Exception in ASGI application",
        "  + Exception Group Traceback (most recent call last):",
        '  |   File "/srv/hello/venv/lib/python3.11/site-packages/starlette/_utils.py", '
        "line 76, in collapse_excgroups",
        "  |     yield",
        "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
        "  +-+---------------- 1 ----------------",
        "    | Traceback (most recent call last):",
        '    |   File "/srv/hello/releases/b/app.py", line 30, in health',
        f'    |     raise RuntimeError("{message}")',
        f"    | RuntimeError: {message}",
        "    +------------------------------------",
    ]


def test_journal_excerpt_keeps_a_short_journal_whole():
    lines = traceback_of("boom")
    assert fs.journal_excerpt(lines, 15) == lines


def test_journal_excerpt_keeps_the_tail_when_the_error_is_in_it():
    lines = ["noise"] * 40 + traceback_of("boom")
    assert fs.journal_excerpt(lines, 15) == lines[-15:]


def test_journal_excerpt_leads_with_the_error_that_scrolled_off():
    # The gate's last 500 arrived before uvicorn finished logging its traceback: the
    # journal ends inside the next traceback, with the error of the one before it.
    frame = '  |   File "/srv/hello/venv/lib/python3.11/site-packages/x.py", line 1, in f'
    unfinished = traceback_of("older")[:4] + [frame] * 12
    lines = ["INFO:     Started server process [12]"] + traceback_of("boom") * 2 + unfinished
    excerpt = fs.journal_excerpt(lines, 15)
    assert len(excerpt) == 15
    assert excerpt[0] == "RuntimeError: boom"
    assert excerpt[2:] == lines[-13:]
    # Every line is either shown or counted.
    shown_from = len(lines) - 13
    error_at = max(i for i, line in enumerate(lines) if line.endswith("RuntimeError: boom"))
    assert excerpt[1] == f"[{shown_from - error_at - 1} lines left out]"


def test_journal_excerpt_is_not_led_by_a_group_line_cut_before_its_error():
    # Cut right after the newest traceback's group line: its error is not logged yet,
    # so the error shown is the previous traceback's.
    cut = traceback_of("newer")[:8]
    lines = traceback_of("boom") + ["noise"] * 30 + cut
    excerpt = fs.journal_excerpt(lines, 15)
    assert excerpt[0] == "RuntimeError: boom"
    assert excerpt[-8:] == cut


def test_journal_excerpt_without_any_error_is_the_plain_tail():
    lines = [f"line {i}" for i in range(100)]
    assert fs.journal_excerpt(lines, 15) == lines[-15:]


@pytest.mark.parametrize(
    "line",
    [
        "RuntimeError: broken on purpose",
        "    | RuntimeError: broken on purpose",
        "ModuleNotFoundError: No module named 'app'",
        "pydantic_core._pydantic_core.ValidationError: 1 validation error",
        "KeyboardInterrupt",
        "SystemExit: 3",
    ],
)
def test_journal_excerpt_knows_an_exception_line(line):
    lines = [line] + [f"after {i}" for i in range(20)]
    assert fs.journal_excerpt(lines, 5)[0] == line.strip(" |+")


@pytest.mark.parametrize(
    "line",
    [
        "INFO:     Application startup complete.",
        "ERROR:    Exception in ASGI application",
        "Traceback (most recent call last):",
        # A group's line comes before the errors it holds: it is not the error.
        "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
        "BaseExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
        "hello@b.service: Main process exited, code=exited, status=1/FAILURE",
    ],
)
def test_journal_excerpt_does_not_take_other_lines_for_the_error(line):
    lines = [line] + [f"after {i}" for i in range(20)]
    assert fs.journal_excerpt(lines, 5) == lines[-5:]


@pytest.mark.parametrize(
    ("setup", "link_after", "pairs_after", "fallback", "undone"),
    [
        pytest.param(
            live_a_staged_b,
            f"releases/{A}",
            [
                (A, "staged"),
                (A, "active"),
                (B, "staged"),
                (B, "active"),
                (A, "active"),
                (B, "failed"),
            ],
            f"current is back on {A}",
            [f"current back on {A}", f"stopped {UNIT_B}"],
            id="a-live",
        ),
        pytest.param(
            only_b_staged,
            None,
            [(B, "staged"), (B, "active"), (B, "failed")],
            "no earlier release to fall back to",
            ["current removed (no earlier release)", f"stopped {UNIT_B}"],
            id="first-deploy",
        ),
    ],
)
def test_gate_2_failure_flips_back(tree, setup, link_after, pairs_after, fallback, undone):
    setup(tree)
    before = tree.readlink()
    active = [UNIT_A] if before else []
    host = Host(tree, active=active, enabled=active, gates={"gate2": NOT_READY})

    with pytest.raises(GateFailed) as failed:
        host.switch(standby=False).switch(check_mode=False)

    error = failed.value
    assert tree.readlink() == link_after
    assert host.gates_probed() == ["gate1", "gate2"]
    assert tree.pairs() == pairs_after
    if before:
        back = tree.history()[-2]
        assert back["from"] == B
        assert back["note"] == f"{B} failed: {GATE_2}"
        # A would have been retired had the switch gone through: it keeps serving.
        assert UNIT_A in host.active and UNIT_A in host.enabled
    assert tree.history()[-1]["note"].startswith(f"{GATE_2}: ")
    assert UNIT_B not in host.active
    assert UNIT_B not in host.enabled
    assert host.timers == {}
    assert host.mutations()[-2:] == [f"disable {UNIT_B}", f"stop {UNIT_B}"]
    assert not [line for line in host.log if line.startswith("retire")]
    assert [line for line in host.log if line.startswith("disable")] == [f"disable {UNIT_B}"]
    assert host.sleeps == []

    assert f'did not pass "{GATE_2}"' in error.msg
    assert fallback in error.msg
    assert " | ".join(JOURNAL) in error.msg
    assert error.retryable is False
    assert error.details == {"gate": GATE_2, "undone": undone, "journal": JOURNAL}


@pytest.mark.parametrize("gate", ["gate1", "gate2"])
def test_gate_failure_of_a_rollback_to_the_standby_stops_it(tree, gate):
    # A failed a gate: it must not linger as B's standby, though it was running.
    a_good_b_current(tree)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B], gates={gate: NOT_READY})

    with pytest.raises(GateFailed) as failed:
        host.switch("", action="rollback").switch(check_mode=False)

    stopped = f"stopped {UNIT_A} (it was already running)"
    if gate == "gate2":
        assert f"current is back on {B}" in failed.value.msg
        assert failed.value.details["undone"] == [f"current back on {B}", stopped]
    else:
        assert f"current stays on {B}" in failed.value.msg
        assert failed.value.details["undone"] == [stopped]
    assert tree.readlink() == f"releases/{B}"
    assert host.active == {UNIT_B}
    assert host.enabled == {UNIT_B}
    assert host.mutations() == [
        f"stop {RETIRE_A}.timer {RETIRE_A}.service",
        f"start {UNIT_A}",
        f"disable {UNIT_A}",
        f"stop {UNIT_A}",
    ]
    assert (A, "failed") in tree.pairs()
    assert (B, "rolled_back") not in tree.pairs()


# =========================================================================== already current


@pytest.mark.parametrize(
    ("check_mode", "active", "enabled", "changed", "started", "mutations"),
    [
        pytest.param(False, True, True, False, None, [], id="healthy"),
        pytest.param(
            False,
            False,
            True,
            True,
            UNIT_B,
            [f"stop {RETIRE_B}.timer {RETIRE_B}.service", f"start {UNIT_B}"],
            id="not-running",
        ),
        pytest.param(False, True, False, True, None, [f"enable {UNIT_B}"], id="not-enabled"),
        pytest.param(
            False,
            False,
            False,
            True,
            UNIT_B,
            [f"stop {RETIRE_B}.timer {RETIRE_B}.service", f"start {UNIT_B}", f"enable {UNIT_B}"],
            id="neither",
        ),
        pytest.param(True, True, True, False, None, [], id="check-healthy"),
        pytest.param(True, False, True, True, UNIT_B, [], id="check-not-running"),
        pytest.param(True, True, False, True, None, [], id="check-not-enabled"),
    ],
)
def test_release_already_current(tree, check_mode, active, enabled, changed, started, mutations):
    b_current(tree)
    history = tree.history_bytes()
    host = Host(tree, active=[UNIT_B] if active else [], enabled=[UNIT_B] if enabled else [])

    result = host.switch().switch(check_mode=check_mode)

    assert result["changed"] is changed
    assert (result["started"], result["stopped"], result["standby"]) == (started, None, None)
    assert result["diff"] == {"before": "", "after": ""}
    assert (result["release"], result["previous"]) == (B, B)
    assert host.mutations() == mutations
    queries = ["list-units", f"is-enabled {UNIT_B}"]
    assert [line for line in host.log if line.split()[0] in ("list-units", "is-enabled")] == (
        queries
    )
    assert host.gates_probed() == ([] if check_mode else ["gate2"])
    assert host.sleeps == []
    assert tree.readlink() == f"releases/{B}"
    assert tree.history_bytes() == history


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("standby", "kept", "retired"),
    [
        pytest.param(True, B, [UNIT_A], id="standby"),
        pytest.param(False, None, [UNIT_A, UNIT_B], id="no-standby"),
    ],
)
def test_already_current_retires_stragglers(tree, check_mode, standby, kept, retired):
    a_b_good_c_current(tree)
    history = tree.history_bytes()
    host = Host(tree, active=[UNIT_A, UNIT_B, UNIT_C], enabled=[UNIT_A, UNIT_C])

    result = host.switch(C, standby=standby).switch(check_mode=check_mode)

    assert result["changed"] is True
    assert (result["started"], result["standby"]) == (None, kept)
    assert result["stopped"] == ", ".join(retired)
    if check_mode:
        assert host.mutations() == []
        assert host.timers == {}
    else:
        assert host.mutations() == [
            f"disable {' '.join(retired)}",
            *(f"retire {unit} in 2500ms" for unit in retired),
        ]
        assert set(host.timers.values()) == set(retired)
        assert host.gates_probed() == ["gate2"]
        assert UNIT_A not in host.enabled
    assert host.active == {UNIT_A, UNIT_B, UNIT_C}
    assert tree.history_bytes() == history


@pytest.mark.parametrize(
    "error", [pytest.param(NOT_READY, id="retryable"), pytest.param(WRONG_RELEASE, id="final")]
)
def test_release_already_current_that_does_not_answer(tree, error):
    b_current(tree)
    host = Host(tree, active=[UNIT_B], enabled=[UNIT_B], gates={"gate2": error})

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    assert f"{SERVICE} {B} is current but does not answer" in failed.value.msg
    assert error.msg in failed.value.msg
    assert failed.value.retryable is error.retryable
    assert failed.value.details == {"gate": GATE_2, "journal": JOURNAL}
    assert tree.readlink() == f"releases/{B}"
    assert UNIT_B in host.active


# =========================================================================== check mode


@pytest.mark.parametrize(
    ("setup", "standby", "previous", "stopped", "kept", "before"),
    [
        pytest.param(live_a_staged_b, True, A, None, A, f"current -> releases/{A}\n", id="a-to-b"),
        pytest.param(
            live_a_staged_b,
            False,
            A,
            UNIT_A,
            None,
            f"current -> releases/{A}\n",
            id="a-to-b-no-standby",
        ),
        pytest.param(only_b_staged, True, None, None, None, "", id="first-deploy"),
    ],
)
def test_check_mode_changes_nothing(tree, setup, standby, previous, stopped, kept, before):
    setup(tree)
    link, history = tree.readlink(), tree.history_bytes()
    host = Host(tree, active=[UNIT_A] if previous else [])

    result = host.switch(standby=standby, keep_releases=1).switch(check_mode=True)

    # Only the read-only listing of the service's instances.
    assert host.calls == [["systemctl", *LIST_UNITS]]
    assert host.probes == []
    assert host.sleeps == []
    assert tree.readlink() == link
    assert tree.history_bytes() == history
    assert result == {
        "release": B,
        "previous": previous,
        "current": B,
        "started": UNIT_B,
        "stopped": stopped,
        "standby": kept,
        "reason": None,
        "diff": {"before": before, "after": f"current -> releases/{B}\n"},
        # keep_releases=1 keeps B and the release it replaces: nothing would be pruned.
        "pruned": [],
        "changed": True,
    }


def test_check_mode_rollback_names_the_target_and_starts_nothing(tree):
    a_good_b_current(tree)
    link, history = tree.readlink(), tree.history_bytes()
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback").switch(check_mode=True)

    assert (result["release"], result["started"], result["stopped"]) == (A, None, UNIT_B)
    assert result["reason"].startswith(f"previous good release 1 step(s) back: {A}")
    assert host.calls == [["systemctl", *LIST_UNITS]]
    assert (tree.readlink(), tree.history_bytes()) == (link, history)


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("manifest_status", "message"),
    [
        pytest.param(None, "expected a release directory", id="missing"),
        pytest.param("building", f"release {B} is incomplete", id="incomplete"),
    ],
)
def test_a_release_not_staged_is_refused_before_anything_starts(
    tree, check_mode, manifest_status, message
):
    tree.release(A).events((A, "staged"), (A, "active")).current(A)
    if manifest_status is not None:
        tree.release(B, status=manifest_status)
    history = tree.history_bytes()
    host = Host(tree, active=[UNIT_A])

    with pytest.raises(ReleaseError) as failed:
        host.switch().switch(check_mode=check_mode)

    assert not isinstance(failed.value, GateFailed)
    assert message in failed.value.msg
    assert host.calls == [["systemctl", *LIST_UNITS]]
    assert host.probes == []
    assert tree.readlink() == f"releases/{A}"
    assert tree.history_bytes() == history


# =========================================================================== refusals


INVALID_RELEASES = {
    "traversal": "../../etc",
    "empty": "",
    "uppercase": B.upper(),
    "trailing-dotdot": f"{B}/..",
}


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("action", "release"),
    [
        pytest.param(action, release, id=f"{action}-{name}")
        for action in ("deploy", "rollback")
        for name, release in INVALID_RELEASES.items()
        # An empty release is how a rollback asks for the previous good one.
        if release or action == "deploy"
    ],
)
def test_invalid_release_id_is_refused_before_any_command(tree, action, check_mode, release):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A])

    with pytest.raises(ReleaseError) as failed:
        host.switch(release, action=action).switch(check_mode=check_mode)

    assert failed.value.msg.startswith(f"release: got {release!r}")
    assert failed.value.details["field"] == "release"
    assert host.calls == []
    assert host.probes == []
    assert tree.readlink() == f"releases/{A}"


def test_a_start_that_fails_is_retryable_and_flips_nothing(tree):
    live_a_staged_b(tree)
    history = tree.history_bytes()
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A], failing_start=[UNIT_B])

    with pytest.raises(ReleaseError) as failed:
        host.switch().switch(check_mode=False)

    error = failed.value
    assert not isinstance(error, GateFailed)
    assert error.retryable is True
    assert error.msg.startswith(f"systemctl start {UNIT_B} failed (exit 1): Job for {UNIT_B}")
    assert host.log == [
        "list-units",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"start {UNIT_B}",
    ]
    assert host.probes == []
    assert tree.readlink() == f"releases/{A}"
    assert tree.history_bytes() == history
    assert host.active == {UNIT_A}


# =========================================================================== the nginx site

# The port the playbook passes (the service's current definition): the release's own
# recorded port, when it has one, is what Gate 2 asks.
SPEC_PORT = 9000


def test_the_site_dir_is_nginx_s_conf_d_by_default(tree):
    assert SwitchSpec(SERVICE, tree.root, B, "deploy", PORT).site_dir == "/etc/nginx/conf.d"
    assert Host(tree).switch().site_path == tree.site_path


def a_live_on(port: int | None, site: int | str | None):
    """A is live, listening on `port` (None: staged by an older flipback); the site
    there is that of port `site` (or the text given, or none)."""

    def setup(tree: Tree, b_port: int | None) -> Tree:
        tree.release(A, port=port).events((A, "staged"), (A, "active")).current(A)
        tree.release(B, port=b_port).events((B, "staged"))
        return tree.put_site(tree.site_of(site) if isinstance(site, int) else site)

    return setup


def nothing_live(site: int | str | None):
    def setup(tree: Tree, b_port: int | None) -> Tree:
        tree.release(B, port=b_port).events((B, "staged"))
        return tree.put_site(tree.site_of(site) if isinstance(site, int) else site)

    return setup


HAND_MADE = "server { listen 80; }\n"


@pytest.mark.parametrize(
    ("setup", "b_port", "site_after", "gate_2_port"),
    [
        pytest.param(a_live_on(8000, 8000), 8001, 8001, 8001, id="new-port"),
        pytest.param(a_live_on(8000, 8000), 8000, None, 8000, id="same-site"),
        pytest.param(
            a_live_on(8000, "# edited by hand\n"), 8000, 8000, 8000, id="edited-is-put-right"
        ),
        pytest.param(a_live_on(8000, None), 8001, 8001, 8001, id="live-without-a-site"),
        pytest.param(a_live_on(None, HAND_MADE), 8001, 8001, 8001, id="live-from-an-older"),
        pytest.param(nothing_live(None), 8001, 8001, 8001, id="first-deploy"),
        pytest.param(nothing_live(HAND_MADE), 8001, 8001, 8001, id="first-deploy-over-a-site"),
        # A release staged by an older flipback has no site of its own: it is left alone.
        pytest.param(a_live_on(8000, 8000), None, None, SPEC_PORT, id="no-config"),
        pytest.param(a_live_on(None, HAND_MADE), None, None, SPEC_PORT, id="no-config-old"),
        pytest.param(nothing_live(None), None, None, SPEC_PORT, id="no-config-no-site"),
    ],
)
def test_the_site_is_put_in_place_after_gate_1_and_before_the_flip(
    tree, setup, b_port, site_after, gate_2_port
):
    setup(tree, b_port)
    before, link = tree.site(), tree.readlink()
    active = [UNIT_A] if link else []
    host = Host(tree, active=active, enabled=active)

    result = host.switch(port=SPEC_PORT).switch(check_mode=False)

    written = site_after is not None
    nginx = ["nginx -t", "reload-or-restart nginx"] if written else []
    assert host.log == [
        "list-units",
        f"stop {RETIRE_B}.timer {RETIRE_B}.service",
        f"start {UNIT_B}",
        f"gate1 current={link}",
        *nginx,
        f"gate2 current=releases/{B}",
        f"enable {UNIT_B}",
        *([f"disable {UNIT_A}"] if link else []),
    ]
    if written:
        # nginx tested the new site while `current` still pointed where it did.
        assert host.nginx_saw == [(tree.site_of(site_after), link)]
        assert tree.site() == tree.site_of(site_after)
        assert os.stat(tree.site_path).st_mode & 0o7777 == 0o644
        site_step = [f"site {tree.site_path} now listens on port {site_after}"]
    else:
        # Unchanged, or not the release's to define: byte for byte as it was, no nginx.
        assert host.nginx_saw == []
        assert tree.site() == before
        site_step = []
    # No temporary file left next to it.
    assert tree.site_dir_files() == ([os.path.basename(tree.site_path)] if tree.site() else [])
    assert result["steps"] == [f"started {UNIT_B}", *site_step, f"flipped current to {B}"]
    (_private, _), (public, _) = [(t, e) for t, e, _p in host.probes]
    assert public.port == gate_2_port
    assert tree.readlink() == f"releases/{B}"
    assert result["changed"] is True


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(a_live_on(8000, 8000), id="a-live"),
        pytest.param(a_live_on(8000, None), id="a-live-without-site"),
        pytest.param(nothing_live(None), id="first-deploy"),
    ],
)
def test_gate_1_failure_leaves_the_site_untouched(tree, setup):
    setup(tree, 8001)
    before, files = tree.site(), tree.site_dir_files()
    host = Host(tree, active=[UNIT_A] if tree.readlink() else [], gates={"gate1": NOT_READY})

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    assert failed.value.details["gate"] == GATE_1
    assert (tree.site(), tree.site_dir_files()) == (before, files)
    assert host.nginx_saw == []
    assert not [line for line in host.log if "nginx" in line]
    assert failed.value.details["undone"] == [f"stopped {UNIT_B}"]


@pytest.mark.parametrize("running_before", [False, True], ids=["started", "was-running"])
@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(a_live_on(8000, 8000), id="a-live"),
        pytest.param(a_live_on(8000, None), id="a-live-without-site"),
        pytest.param(nothing_live(None), id="first-deploy"),
    ],
)
def test_a_site_nginx_rejects_is_undone_like_a_gate(tree, setup, running_before):
    setup(tree, 8001)
    before, link, files = tree.site(), tree.readlink(), tree.site_dir_files()
    live = [UNIT_A] if link else []
    host = Host(
        tree,
        active=live + ([UNIT_B] if running_before else []),
        enabled=live,
        nginx_test=[1],
    )

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    error = failed.value
    # The old site is back (none, if there was none) and nginx was not reloaded.
    assert tree.site() == before
    assert tree.site_dir_files() == files
    assert host.nginx_saw == [(tree.site_of(8001), link)]
    assert "reload-or-restart nginx" not in host.log
    # current never moved; Gate 2 never ran.
    assert tree.readlink() == link
    assert host.gates_probed() == ["gate1"]
    # The instance is stopped and the release recorded as failed, as for a gate.
    assert host.mutations()[-3:] == ["nginx -t", f"disable {UNIT_B}", f"stop {UNIT_B}"]
    assert UNIT_B not in host.active and UNIT_B not in host.enabled
    if link:
        assert UNIT_A in host.active and UNIT_A in host.enabled
    failed_event = tree.history()[-1]
    assert (failed_event["release"], failed_event["event"]) == (B, "failed")
    assert failed_event["note"].startswith(f"{SITE}: nginx rejects the site of {SERVICE}")
    assert (B, "active") not in tree.pairs()
    # The error names the site, the reason, and what was undone.
    assert f'did not pass "{SITE}"' in error.msg
    assert f"nginx rejects the site of {SERVICE} ({tree.site_path})" in error.msg
    assert 'unknown directive "lissen"' in error.msg
    assert "the previous site was put back and nginx was not reloaded" in error.msg
    assert (f"current stays on {A}" if link else "no earlier release") in error.msg
    assert error.retryable is False
    stopped = f"stopped {UNIT_B}" + (" (it was already running)" if running_before else "")
    assert error.details == {"gate": SITE, "undone": [stopped], "journal": JOURNAL}


@pytest.mark.parametrize(
    ("setup", "b_port", "nginx", "undone_site"),
    [
        pytest.param(
            a_live_on(8000, 8000),
            8001,
            ["nginx -t", "reload-or-restart nginx"],
            "put back",
            id="a-live",
        ),
        pytest.param(
            nothing_live(None),
            8001,
            ["nginx -t", "reload-or-restart nginx"],
            "put back",
            id="first-deploy",
        ),
        pytest.param(
            a_live_on(8000, None),
            8001,
            ["nginx -t", "reload-or-restart nginx"],
            "put back",
            id="a-live-without-site",
        ),
        pytest.param(a_live_on(8000, 8000), 8000, [], None, id="same-site"),
        pytest.param(a_live_on(8000, 8000), None, [], None, id="no-config"),
    ],
)
def test_gate_2_failure_puts_the_previous_site_back(tree, setup, b_port, nginx, undone_site):
    setup(tree, b_port)
    before, link, files = tree.site(), tree.readlink(), tree.site_dir_files()
    live = [UNIT_A] if link else []
    host = Host(tree, active=live, enabled=live, gates={"gate2": NOT_READY})

    with pytest.raises(GateFailed) as failed:
        host.switch(standby=False).switch(check_mode=False)

    # Byte for byte as before the deploy, or gone again if there was none.
    assert tree.site() == before
    assert tree.site_dir_files() == files
    assert tree.readlink() == link
    gate_2 = host.log.index(f"gate2 current=releases/{B}")
    assert host.log[gate_2 - len(nginx) : gate_2] == nginx
    # After Gate 2: the site goes back (nginx tests it, and is reloaded again), then B
    # is stopped.
    assert host.log[gate_2 + 1 :] == [
        *nginx,
        f"disable {UNIT_B}",
        f"stop {UNIT_B}",
        f"journal {UNIT_B}",
    ]
    if nginx:
        assert host.nginx_saw == [(tree.site_of(b_port), link), (before, link)]
    else:
        assert host.nginx_saw == []
    undone = failed.value.details["undone"]
    current = [f"current back on {A}"] if link else ["current removed (no earlier release)"]
    site = [f"site {tree.site_path} {undone_site}"] if undone_site else []
    assert undone == [*current, *site, f"stopped {UNIT_B}"]
    assert failed.value.details["gate"] == GATE_2
    assert tree.pairs()[-1] == (B, "failed")


def test_a_previous_site_nginx_rejects_on_undo_is_said_so(tree):
    a_live_on(8000, 8000)(tree, 8001)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A], gates={"gate2": NOT_READY})
    host.nginx_test = [0, 1]

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    # The old site is refused now (nginx changed under it): the one nginx runs, B's, is
    # kept, and the error says the site was not put back.
    undone = failed.value.details["undone"]
    assert undone[0] == f"current back on {A}"
    assert undone[1].startswith(f"site {tree.site_path} NOT put back: nginx rejects the site")
    assert undone[2] == f"stopped {UNIT_B}"
    assert tree.site() == tree.site_of(8001)
    assert host.log.count("reload-or-restart nginx") == 1
    assert tree.readlink() == f"releases/{A}"
    assert UNIT_B not in host.active


def test_a_failed_nginx_reload_leaves_the_live_site_as_it_was(tree):
    a_live_on(8000, 8000)(tree, 8001)
    before = tree.site()
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A], reload_fails=True)

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    assert failed.value.details["gate"] == SITE
    assert tree.readlink() == f"releases/{A}"
    assert UNIT_B not in host.active
    # A failed deploy leaves the live site byte-identical: A listens on 8000, and the
    # next reload of nginx (or a reboot) must not move it to B's port.
    assert tree.site() == before


def test_rollback_brings_back_the_site_of_the_release_it_returns_to(tree):
    # A listened on 8000, B moved the service to 8001; the playbook still says 8001.
    tree.release(A, port=8000).release(B, port=8001)
    tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)
    tree.put_site(tree.site_of(8001))
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback", port=8001).switch(check_mode=False)

    assert result["release"] == A
    assert tree.site() == tree.site_of(8000)
    assert host.log == [
        "list-units",
        f"stop {RETIRE_A}.timer {RETIRE_A}.service",
        f"start {UNIT_A}",
        f"gate1 current=releases/{B}",
        "nginx -t",
        "reload-or-restart nginx",
        f"gate2 current=releases/{A}",
        f"enable {UNIT_A}",
        f"disable {UNIT_B}",
        f"retire {UNIT_B} in 2500ms",
    ]
    # Gate 2 asks where A listens.
    assert [t.port for t, _e, _p in host.probes] == [None, 8000]
    assert result["steps"] == [
        f"site {tree.site_path} now listens on port 8000",
        f"flipped current to {A}",
        f"stopping {UNIT_B} after 2.5 s",
    ]


def test_rollback_to_a_release_without_recorded_config_leaves_the_site(tree):
    tree.release(A).release(B, port=8001)
    tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)
    tree.put_site(tree.site_of(8001))
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback", port=8001).switch(check_mode=False)

    assert result["release"] == A
    assert tree.site() == tree.site_of(8001)
    assert not [line for line in host.log if "nginx" in line]
    # spec.port is kept: the port the playbook passed.
    assert [t.port for t, _e, _p in host.probes] == [None, 8001]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("port", "site", "rewritten"),
    [
        pytest.param(8001, 8001, False, id="the-release-s-site"),
        pytest.param(8001, 8000, True, id="another-port"),
        pytest.param(8001, "# edited by hand\n", True, id="edited"),
        pytest.param(8001, None, True, id="missing"),
        pytest.param(None, HAND_MADE, False, id="no-config"),
        pytest.param(None, None, False, id="no-config-no-site"),
    ],
)
def test_already_current_puts_a_differing_site_right(tree, check_mode, port, site, rewritten):
    tree.release(B, port=port).events((B, "staged"), (B, "active")).current(B)
    tree.put_site(tree.site_of(site) if isinstance(site, int) else site)
    before = tree.site()
    history = tree.history_bytes()
    host = Host(tree, active=[UNIT_B], enabled=[UNIT_B])

    result = host.switch(port=SPEC_PORT).switch(check_mode=check_mode)

    assert result["changed"] is rewritten
    assert tree.history_bytes() == history
    assert tree.readlink() == f"releases/{B}"
    if rewritten and not check_mode:
        assert tree.site() == tree.site_of(port)
        assert host.mutations() == ["nginx -t", "reload-or-restart nginx"]
        assert result["steps"] == [f"site {tree.site_path} now listens on port {port}"]
    else:
        # Reported only (check mode), or nothing to do: byte for byte as it was.
        assert tree.site() == before
        assert host.mutations() == []
        assert result["steps"] == []
    if check_mode:
        assert host.probes == []
    else:
        # Gate 2 on the release's own port, after the site is in place.
        [(public, _e, _p)] = host.probes
        assert public.port == (port or SPEC_PORT)
        assert host.log[-1] == f"gate2 current=releases/{B}"


def test_already_current_with_a_site_nginx_rejects_puts_it_back(tree):
    b_current(tree).release(B, port=8001)
    tree.put_site(tree.site_of(8000))
    host = Host(tree, active=[UNIT_B], enabled=[UNIT_B], nginx_test=[1])

    with pytest.raises(ReleaseError) as failed:
        host.switch().switch(check_mode=False)

    assert failed.value.details["field"] == "site"
    assert tree.site() == tree.site_of(8000)
    assert host.mutations() == ["nginx -t"]
    assert host.probes == []
    # Nothing to undo: B stays current and running.
    assert tree.readlink() == f"releases/{B}"
    assert UNIT_B in host.active


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(a_live_on(8000, 8000), id="a-live"),
        pytest.param(nothing_live(None), id="first-deploy"),
    ],
)
def test_check_mode_writes_no_site(tree, setup):
    setup(tree, 8001)
    before, files = tree.site(), tree.site_dir_files()
    host = Host(tree, active=[UNIT_A] if tree.readlink() else [])

    result = host.switch().switch(check_mode=True)

    assert result["changed"] is True
    assert host.calls == [["systemctl", *LIST_UNITS]]
    assert (tree.site(), tree.site_dir_files()) == (before, files)


def _refused(msg: str) -> HealthError:
    """A probe that ran out of time without an answer: it says a retry is safe."""
    error = HealthError(
        f"{msg}. The service may still be starting; retrying is safe", retryable=True
    )
    error.found = msg
    return error


@pytest.mark.parametrize(
    ("nginx_active", "says", "never"),
    [
        pytest.param(
            True,
            [
                f"current is back on {A}, which keeps serving",
                "fix the cause and deploy again (retrying as-is is not expected to help)",
            ],
            ["nginx is not running", "retrying is safe"],
            id="nginx-runs",
        ),
        pytest.param(
            False,
            [
                f"current is back on {A}, but nothing answers on the port",
                f"nginx is not running on this host (systemctl is-active nginx), so port {PORT} "
                "cannot answer: start nginx, then run the same command again",
            ],
            ["which keeps serving", "retrying is safe"],
            id="nginx-stopped",
        ),
    ],
)
def test_a_failed_gate_2_says_what_was_observed_and_whether_nginx_runs(
    tree, nginx_active, says, never
):
    live_a_staged_b(tree)
    host = Host(
        tree,
        active=[UNIT_A],
        enabled=[UNIT_A],
        gates={"gate2": _refused("observed ConnectionRefusedError on port 8000")},
    )
    host.nginx_active = nginx_active

    with pytest.raises(GateFailed) as failed:
        host.switch(standby=False).switch(check_mode=False)

    error = failed.value
    assert "observed ConnectionRefusedError on port 8000" in error.msg
    for text in says:
        assert text in error.msg, error.msg
    for text in never:
        assert text not in error.msg, error.msg
    # The text and the flag agree: retrying as-is is not expected to help.
    assert error.retryable is False


def test_a_failed_gate_1_does_not_ask_about_nginx(tree):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A], gates={"gate1": NOT_READY})
    host.nginx_active = False

    with pytest.raises(GateFailed) as failed:
        host.switch(standby=False).switch(check_mode=False)

    assert "nginx" not in failed.value.msg
    assert not [c for c in host.calls if c[:2] == ["systemctl", "is-active"]]


@pytest.mark.parametrize("release_in", ["header", "json"])
def test_the_gates_ask_a_release_whose_unit_adds_the_header_as_configured(tree, release_in):
    # A listened on 8000 as an older flipback staged it (no header); B is staged with
    # its configuration, so its uvicorn names it in X-Flipback-Release.
    tree.release(A).release(B, port=8000)
    tree.events((A, "staged"), (A, "active"), (B, "staged")).current(A)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])

    host.switch(release_in=release_in, health_host="shop.example").switch(check_mode=False)

    assert host.gates_probed() == ["gate1", "gate2"]
    for target, expect, _policy in host.probes:
        assert target.host_header == "shop.example"
        if release_in == "header":
            assert expect.headers == {"X-Flipback-Release": B}
            assert "release" not in expect.json
        else:
            assert (expect.headers, expect.json["release"]) == ({}, B)


def test_a_rollback_to_a_release_staged_before_the_header_asks_its_json(tree):
    tree.release(A).release(B, port=8000)
    tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_B])

    result = host.switch("", action="rollback", release_in="header").switch(check_mode=False)

    assert result["release"] == A
    for _target, expect, _policy in host.probes:
        assert (expect.headers, expect.json["release"]) == ({}, A)


# =========================================================================== processes

WORKER_A = f"{SERVICE}.worker@{A}.service"
WORKER_B = f"{SERVICE}.worker@{B}.service"
BEAT_B = f"{SERVICE}.beat@{B}.service"
PROCS = {"worker": "celery -A proj worker", "beat": "celery -A proj beat"}


def a_with_worker_b_staged(tree: Tree, **b: object) -> Tree:
    """A is live with its worker; B, staged, declares a worker and a beat."""
    tree.release(A, processes={"worker": "celery -A proj worker"})
    tree.events((A, "staged"), (A, "active")).current(A)
    return tree.release(B, processes=PROCS, **b).events((B, "staged"))


def test_a_switch_starts_the_processes_with_the_release_and_stops_the_old_ones(tree):
    a_with_worker_b_staged(tree)
    host = Host(tree, active=[UNIT_A, WORKER_A], enabled=[UNIT_A, WORKER_A])

    result = host.switch().switch(check_mode=False)

    assert result["changed"] is True
    log = host.log
    # Started before any gate, with the web instance; checked after Gate 1, before the flip.
    start = log.index(f"start {BEAT_B} {WORKER_B}")
    assert log.index(f"start {UNIT_B}") < start < log.index(f"gate1 current=releases/{A}")
    assert [BEAT_B, WORKER_B] in host.shows
    # Once the switch holds: B's processes start at boot, A's stop at once (no drain).
    assert host.enabled >= {UNIT_B, WORKER_B, BEAT_B}
    assert WORKER_A not in host.enabled
    assert f"stop --no-block {WORKER_A}" in log
    assert log.index(f"stop --no-block {WORKER_A}") > log.index(f"gate2 current=releases/{B}")
    assert {WORKER_B, BEAT_B} <= host.active and WORKER_A not in host.active
    # The previous release's web instance is the standby; its processes are not.
    assert UNIT_A in host.active


def test_a_process_that_exits_in_its_start_window_fails_the_switch_before_the_flip(tree):
    a_with_worker_b_staged(tree)
    host = Host(tree, active=[UNIT_A, WORKER_A], enabled=[UNIT_A, WORKER_A])
    host.crashing = {BEAT_B}
    history = len(tree.history())

    with pytest.raises(GateFailed) as failed:
        host.switch().switch(check_mode=False)

    error = failed.value
    assert error.details["gate"] == PROCESSES
    assert f"{BEAT_B} exited during its start window" in error.msg
    assert "restarted 1 time(s)" in error.msg
    assert f"Last journal lines of {BEAT_B}" in error.msg
    assert f"journal {BEAT_B}" in host.log
    # Nothing switched: A serves with its worker; B and its processes are stopped.
    assert tree.readlink() == f"releases/{A}"
    assert {UNIT_A, WORKER_A} <= host.active
    assert not {UNIT_B, WORKER_B} & host.active
    assert f"stop {UNIT_B} {BEAT_B} {WORKER_B}" in host.log
    assert not {UNIT_B, WORKER_B, BEAT_B} & host.enabled
    assert "gate2" not in host.gates_probed()
    assert tree.pairs()[history:] == [(B, "failed")]


def test_the_start_window_is_waited_out_after_gate_1(tree, monkeypatch):
    a_with_worker_b_staged(tree, start_window=2.0)
    host = Host(tree, active=[UNIT_A, WORKER_A], enabled=[UNIT_A, WORKER_A])
    clock = iter(t * 0.05 for t in range(10_000))
    monkeypatch.setattr("ansible.module_utils.flipback_switch.time.monotonic", lambda: next(clock))

    host.switch().switch(check_mode=False)

    # Asked again and again until the window had passed, never sleeping longer than 0.2 s.
    assert host.shows.count([BEAT_B, WORKER_B]) >= 2
    assert host.sleeps and all(0 <= s <= 0.2 for s in host.sleeps)


def test_a_gate_1_failure_stops_the_processes_started_with_the_release(tree):
    a_with_worker_b_staged(tree)
    host = Host(tree, active=[UNIT_A, WORKER_A], enabled=[UNIT_A], gates={"gate1": NOT_READY})

    with pytest.raises(GateFailed):
        host.switch().switch(check_mode=False)

    assert not {WORKER_B, BEAT_B} & host.active
    assert WORKER_A in host.active


def test_a_rollback_brings_back_the_processes_of_the_release_it_returns_to(tree):
    # A was live with its worker, B is live now with worker and beat; A's instance is
    # the warm standby, its worker stopped when B went live.
    tree.release(A, processes={"worker": "celery -A proj worker"})
    tree.release(B, processes=PROCS)
    tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)
    host = Host(
        tree,
        active=[UNIT_A, UNIT_B, WORKER_B, BEAT_B],
        enabled=[UNIT_B, WORKER_B, BEAT_B],
    )

    result = host.switch(release="", action="rollback").switch(check_mode=False)

    assert result["release"] == A
    assert tree.readlink() == f"releases/{A}"
    assert WORKER_A in host.active and WORKER_A in host.enabled
    assert not {WORKER_B, BEAT_B} & host.active
    assert not {WORKER_B, BEAT_B} & host.enabled


def test_already_current_starts_a_missing_process_and_stops_strays(tree):
    tree.release(A, processes={"worker": "w"}).release(B, processes=PROCS)
    tree.events((A, "staged"), (A, "active"), (B, "staged"), (B, "active")).current(B)
    # B's beat is down; A's worker was left running by a run that was killed.
    host = Host(tree, active=[UNIT_B, WORKER_B, WORKER_A], enabled=[UNIT_B, WORKER_B, BEAT_B])

    result = host.switch().switch(check_mode=False)

    assert result["changed"] is True
    assert f"start {BEAT_B}" in host.log
    assert f"stop --no-block {WORKER_A}" in host.log
    assert {UNIT_B, WORKER_B, BEAT_B} <= host.active and WORKER_A not in host.active


def test_already_current_with_its_processes_up_is_unchanged(tree):
    b_current_with_processes = tree.release(B, processes=PROCS)
    b_current_with_processes.events((B, "staged"), (B, "active")).current(B)
    tree.put_site(tree.site_of(PORT))
    host = Host(tree, active=[UNIT_B, WORKER_B, BEAT_B], enabled=[UNIT_B, WORKER_B, BEAT_B])

    result = host.switch().switch(check_mode=False)

    assert result["changed"] is False
    assert host.mutations() == []


def test_gate_1_stops_waiting_once_the_instance_exits(tree):
    """A release that cannot start fails its gate as soon as systemd sees it exit, not
    at the gate's deadline: the gates ask `_exited` after each failed attempt."""
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])
    host.crashing = {UNIT_B}
    policies = []

    def prober(target, expect, policy):
        policies.append(policy)
        reason = policy.abort()
        raise HealthError(f"gave up: {reason}", retryable=False)

    switch = Switch(spec(tree, B), run=host.run, prober=prober, sleep=host.sleep)
    with pytest.raises(GateFailed) as failed:
        switch.switch(check_mode=False)

    assert f"gave up: {UNIT_B} exited (failed/running" in failed.value.msg
    assert "restarted 1 time(s) since this switch started it" in failed.value.msg
    assert policies[0].unhealthy_answers == 10
    assert tree.readlink() == f"releases/{A}"


def test_an_instance_that_runs_is_not_given_up_on(tree):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])
    switch = host.switch()
    switch.switch(check_mode=False)
    assert switch._exited() is None


TLS = {"certificate": "/etc/ssl/certs/shop.pem", "key": "/etc/ssl/private/shop.key"}


def with_tls(tree: Tree, release_id: str) -> None:
    """Record nginx.tls in a release's configuration, as release_config would."""
    path = os.path.join(tree.root, "releases", release_id, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    manifest["config"]["nginx"]["tls"] = TLS
    with open(path, "w") as handle:
        json.dump(manifest, handle)


def test_gate_2_asks_over_https_a_release_with_tls_and_a_rollback_brings_plain_back(tree):
    tree.release(A, port=8000).release(B, port=8443)
    with_tls(tree, B)
    tree.events((A, "staged"), (A, "active"), (B, "staged")).current(A)
    tree.put_site(tree.site_of(8000))
    host = Host(tree, active=[UNIT_A, UNIT_B], enabled=[UNIT_A])

    host.switch(B, port=8000).switch(check_mode=False)

    assert "listen 8443 ssl;" in tree.site()
    assert f"ssl_certificate_key {TLS['key']};" in tree.site()
    (private, _e, _p), (public, _e2, _p2) = host.probes
    assert (private.unix_socket is not None, private.tls) == (True, False)
    assert (public.port, public.tls) == (8443, True)

    host.probes.clear()
    host.switch("", action="rollback", port=8443).switch(check_mode=False)

    assert tree.site() == tree.site_of(8000)
    assert "ssl" not in tree.site()
    assert [(t.port, t.tls) for t, _e, _p in host.probes] == [(None, False), (8000, False)]
