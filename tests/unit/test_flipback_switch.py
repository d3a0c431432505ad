"""Unit tests of module_utils/flipback_switch.py on real release trees under tmp_path.

systemd, the health probes and the drain go through fakes: a runner that keeps the
active and enabled units in sets, a prober scripted per gate, and a sleep that only
records. Every fake appends to one log, so a test sees the order of the whole switch,
and each probe notes where `current` pointed when it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence

import pytest
from ansible.module_utils import flipback_switch as fs
from ansible.module_utils.flipback_health import Clock, Expect, HealthError, Policy, Target
from ansible.module_utils.flipback_release import (
    ReleaseError,
    append_history,
    history_event,
    read_history,
)
from ansible.module_utils.flipback_switch import (
    GATE_1,
    GATE_2,
    GateFailed,
    Switch,
    SwitchSpec,
)

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
UNIT_A = f"{SERVICE}@{A}.service"
UNIT_B = f"{SERVICE}@{B}.service"
SOCKET_DIR = "/run/flipback-shop"
PORT = 8000
HEALTH = {"path": "/health", "expect_status": 200, "expect_json": {"ok": True}}
JOURNAL = ["Started shop.", "ImportError: no module named app", "Main process exited"]
NOT_READY = HealthError("health check failed: observed status 502", retryable=True)
WRONG_RELEASE = HealthError("health check failed: JSON field 'release' is 'old'")


# =========================================================================== fixtures


class Tree:
    """A service root on disk: releases with manifests, a history log, a current link."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "releases"), exist_ok=True)

    def release(self, release_id: str, status: str = "staged") -> Tree:
        path = os.path.join(self.root, "releases", release_id)
        os.makedirs(path, exist_ok=True)
        manifest = {"id": release_id, "service": SERVICE, "health": HEALTH, "status": status}
        with open(os.path.join(path, "manifest.json"), "w") as handle:
            json.dump(manifest, handle)
        return self

    def events(self, *pairs: tuple[str, str]) -> Tree:
        for release_id, event in pairs:
            append_history(self.root, history_event(release_id, event, by="alice"))
        return self

    def current(self, release_id: str) -> Tree:
        os.symlink(os.path.join("releases", release_id), os.path.join(self.root, "current"))
        return self

    def readlink(self) -> str | None:
        try:
            return os.readlink(os.path.join(self.root, "current"))
        except FileNotFoundError:
            return None

    def history(self) -> list[dict]:
        return read_history(self.root)

    def pairs(self) -> list[tuple[str, str]]:
        return [(e["release"], e["event"]) for e in self.history()]

    def history_bytes(self) -> bytes:
        with open(os.path.join(self.root, "history.jsonl"), "rb") as handle:
            return handle.read()


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(str(tmp_path / "srv" / SERVICE))


def live_a_staged_b(tree: Tree) -> Tree:
    """A is current and good; B is staged, waiting to be switched to."""
    tree.release(A).events((A, "staged"), (A, "active")).current(A)
    return tree.release(B).events((B, "staged"))


def only_b_staged(tree: Tree) -> Tree:
    """A first deploy: B is staged and nothing is current."""
    return tree.release(B).events((B, "staged"))


def b_current(tree: Tree) -> Tree:
    return tree.release(B).events((B, "staged"), (B, "active")).current(B)


class Host:
    """Fake systemctl/journalctl, prober and sleep sharing one ordered log."""

    def __init__(
        self,
        tree: Tree,
        *,
        active: Sequence[str] = (),
        enabled: Sequence[str] = (),
        failing_start: Sequence[str] = (),
        gates: dict[str, HealthError | None] | None = None,
    ) -> None:
        self.tree = tree
        self.active = set(active)
        self.enabled = set(enabled)
        self.failing_start = set(failing_start)
        self.gates = gates or {}
        self.calls: list[list[str]] = []
        self.probes: list[tuple[Target, Expect, Policy]] = []
        self.sleeps: list[float] = []
        self.log: list[str] = []

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "journalctl":
            self.log.append(f"journal {argv[-1]}")
            return subprocess.CompletedProcess(argv, 0, "\n".join(JOURNAL) + "\n", "")
        assert argv[0] == "systemctl", argv
        verb, unit = argv[1], argv[-1]
        self.log.append(f"{verb} {unit}")
        rc = 0
        if verb == "is-active":
            rc = 0 if unit in self.active else 3
        elif verb == "is-enabled":
            rc = 0 if unit in self.enabled else 1
        elif verb == "start":
            if unit in self.failing_start:
                stderr = f"Job for {unit} failed because the control process exited."
                return subprocess.CompletedProcess(argv, 1, "", stderr)
            self.active.add(unit)
        elif verb == "stop":
            self.active.discard(unit)
        elif verb == "enable":
            self.enabled.add(unit)
        elif verb == "disable":
            self.enabled.discard(unit)
        else:
            raise AssertionError(f"unexpected systemctl {verb}")
        return subprocess.CompletedProcess(argv, rc, "", "")

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
    monkeypatch.setattr(fs, "probe", lambda *args: seen.append(args) or {"ok": True})
    target, expect, policy = Target(port=1), Expect(), Policy()
    assert fs.real_probe(target, expect, policy) == {"ok": True}
    assert seen[0][:3] == (target, expect, policy)
    assert isinstance(seen[0][3], Clock)


# =========================================================================== success


@pytest.mark.parametrize(
    ("action", "a_last_event"),
    [
        pytest.param("deploy", "active", id="deploy"),
        pytest.param("rollback", "rolled_back", id="rollback"),
    ],
)
def test_switch_a_to_b(tree, action, a_last_event):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A], enabled=[UNIT_A])

    result = host.switch(action=action).switch(check_mode=False)

    assert host.log == [
        f"is-active {UNIT_B}",
        f"start {UNIT_B}",
        f"gate1 current=releases/{A}",
        f"gate2 current=releases/{B}",
        f"enable {UNIT_B}",
        f"disable {UNIT_A}",
        "sleep 2.5",
        f"stop {UNIT_A}",
    ]
    assert tree.readlink() == f"releases/{B}"
    assert host.active == {UNIT_B}
    assert host.enabled == {UNIT_B}
    assert host.sleeps == [2.5]

    (private, expect_1, policy_1), (public, expect_2, policy_2) = host.probes
    assert private.unix_socket == f"{SOCKET_DIR}/{B}/app.sock"
    assert private.url_path == "/health"
    assert (public.host, public.port, public.unix_socket) == ("127.0.0.1", PORT, None)
    for expect in (expect_1, expect_2):
        assert expect == Expect(status=(200,), json={"ok": True, "release": B})
    assert (policy_1.timeout, policy_1.successes) == (12.0, 1)
    assert (policy_2.timeout, policy_2.successes) == (12.0, 4)

    active = [e for e in tree.history() if e["event"] == "active"][-1]
    assert (active["release"], active["from"], active["note"], active["by"]) == (
        B,
        A,
        "ticket 42",
        "bob",
    )
    assert active["expect"] == HEALTH
    last_of_a = [e for e in tree.history() if e["release"] == A][-1]
    assert last_of_a["event"] == a_last_event
    if action == "rollback":
        assert last_of_a["note"] == f"rolled back to {B}"

    assert result["changed"] is True
    assert (result["release"], result["previous"], result["current"]) == (B, A, B)
    assert (result["started"], result["stopped"]) == (UNIT_B, UNIT_A)
    assert set(result["timings"]) == {"gate_1", "gate_2"}
    assert result["diff"] == {
        "before": f"current -> releases/{A}\n",
        "after": f"current -> releases/{B}\n",
    }
    assert result["steps"] == [
        f"started {UNIT_B}",
        f"flipped current to {B}",
        f"stopped {UNIT_A} after 2.5 s",
    ]


def test_first_deploy_creates_current_and_stops_nothing(tree):
    only_b_staged(tree)
    host = Host(tree)

    result = host.switch().switch(check_mode=False)

    assert host.log == [
        f"is-active {UNIT_B}",
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
    assert result["diff"] == {"before": "", "after": f"current -> releases/{B}\n"}


# =========================================================================== gate failures


@pytest.mark.parametrize(
    ("setup", "running_before", "stopped", "fallback"),
    [
        pytest.param(live_a_staged_b, False, True, f"current stays on {A}", id="a-live"),
        pytest.param(live_a_staged_b, True, False, f"current stays on {A}", id="b-was-running"),
        pytest.param(only_b_staged, False, True, "no earlier release", id="first-deploy"),
    ],
)
def test_gate_1_failure_leaves_current_alone(tree, setup, running_before, stopped, fallback):
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
    assert (f"stop {UNIT_B}" in host.log) is stopped
    assert (UNIT_B in host.active) is not stopped
    assert UNIT_B not in host.enabled
    if before:
        assert UNIT_A in host.active and UNIT_A in host.enabled
        assert not [line for line in host.log if UNIT_A in line]
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
    assert error.details["undone"] == ([f"stopped {UNIT_B}"] if stopped else [])


def test_gate_1_failure_names_the_default_journal_length(tree):
    live_a_staged_b(tree)
    host = Host(tree, gates={"gate1": NOT_READY})
    with pytest.raises(GateFailed):
        host.switch().switch(check_mode=False)
    journal = [call for call in host.calls if call[0] == "journalctl"]
    assert journal == [["journalctl", "--no-pager", "--output=cat", "-n", "15", "-u", UNIT_B]]


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
        host.switch().switch(check_mode=False)

    error = failed.value
    assert tree.readlink() == link_after
    assert host.gates_probed() == ["gate1", "gate2"]
    assert tree.pairs() == pairs_after
    if before:
        back = tree.history()[-2]
        assert back["from"] == B
        assert back["note"] == f"{B} failed: {GATE_2}"
        assert UNIT_A in host.active and UNIT_A in host.enabled
    assert tree.history()[-1]["note"].startswith(f"{GATE_2}: ")
    assert UNIT_B not in host.active
    assert UNIT_B not in host.enabled
    assert host.sleeps == []

    assert f'did not pass "{GATE_2}"' in error.msg
    assert fallback in error.msg
    assert " | ".join(JOURNAL) in error.msg
    assert error.retryable is False
    assert error.details == {"gate": GATE_2, "undone": undone, "journal": JOURNAL}


# =========================================================================== already current


@pytest.mark.parametrize(
    ("check_mode", "active", "enabled", "changed", "started", "mutations"),
    [
        pytest.param(False, True, True, False, None, [], id="healthy"),
        pytest.param(False, False, True, True, UNIT_B, [f"start {UNIT_B}"], id="not-running"),
        pytest.param(False, True, False, True, None, [f"enable {UNIT_B}"], id="not-enabled"),
        pytest.param(
            False,
            False,
            False,
            True,
            UNIT_B,
            [f"start {UNIT_B}", f"enable {UNIT_B}"],
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
    assert (result["started"], result["stopped"]) == (started, None)
    assert result["diff"] == {"before": "", "after": ""}
    assert (result["release"], result["previous"]) == (B, B)
    queries = [f"is-active {UNIT_B}", f"is-enabled {UNIT_B}"]
    assert [line for line in host.log if line.split()[0] in ("start", "enable")] == mutations
    assert [line for line in host.log if line.startswith("is-")] == queries
    assert not [line for line in host.log if line.split()[0] in ("stop", "disable")]
    assert host.gates_probed() == ([] if check_mode else ["gate2"])
    assert host.sleeps == []
    assert tree.readlink() == f"releases/{B}"
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
    ("setup", "previous", "stopped", "before"),
    [
        pytest.param(live_a_staged_b, A, UNIT_A, f"current -> releases/{A}\n", id="a-to-b"),
        pytest.param(only_b_staged, None, None, "", id="first-deploy"),
    ],
)
def test_check_mode_changes_nothing(tree, setup, previous, stopped, before):
    setup(tree)
    link, history = tree.readlink(), tree.history_bytes()
    host = Host(tree, active=[UNIT_A] if previous else [])

    result = host.switch().switch(check_mode=True)

    assert host.calls == []
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
        "diff": {"before": before, "after": f"current -> releases/{B}\n"},
        "changed": True,
    }


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
    assert host.calls == []
    assert host.probes == []
    assert tree.readlink() == f"releases/{A}"
    assert tree.history_bytes() == history


# =========================================================================== refusals


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    "release",
    [
        pytest.param("../../etc", id="traversal"),
        pytest.param("", id="empty"),
        pytest.param(B.upper(), id="uppercase"),
        pytest.param(f"{B}/..", id="trailing-dotdot"),
    ],
)
def test_invalid_release_id_is_refused_before_any_command(tree, check_mode, release):
    live_a_staged_b(tree)
    host = Host(tree, active=[UNIT_A])

    with pytest.raises(ReleaseError) as failed:
        host.switch(release).switch(check_mode=check_mode)

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
    assert host.log == [f"is-active {UNIT_B}", f"start {UNIT_B}"]
    assert host.probes == []
    assert tree.readlink() == f"releases/{A}"
    assert tree.history_bytes() == history
    assert host.active == {UNIT_A}
