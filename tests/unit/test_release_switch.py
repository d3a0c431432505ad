"""Unit tests of library/release.py, action=switch, rollback and restore: parameters to
SwitchSpec, main()'s results.

main() switches a real release tree under tmp_path; systemd, the probes and the drain
go through fakes injected by replacing the module's Switch with a factory. The deploy
lock lives under tmp_path (the module's ServiceLock is given that root).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import release
import yaml
from ansible.module_utils import flipback_actions as actions
from ansible.module_utils.flipback_health import Expect, HealthError, Policy, Target
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_release import (
    read_history,
    utc_iso,
)
from ansible.module_utils.flipback_switch import GATE_1, GATE_2, Switch, SwitchSpec
from fakes import FakeSystemd, ReleaseTree, run_arg, run_module, service_arg

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
UNIT_A = f"{SERVICE}@{A}.service"
UNIT_B = f"{SERVICE}@{B}.service"
JOURNAL = ["Started shop.", "Traceback (most recent call last):"]


class Host(FakeSystemd):
    """Fake systemctl (fakes.FakeSystemd)/systemd-run/journalctl and prober; records the
    specs main() built."""

    def __init__(self) -> None:
        super().__init__(active={UNIT_A}, enabled={UNIT_A})
        self.gates: dict[str, HealthError] = {}
        self.probed: list[str] = []
        self.sleeps: list[float] = []
        self.specs: list[SwitchSpec] = []
        self.on_call: Callable[[list[str]], None] | None = None

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if self.on_call is not None:
            self.on_call(list(argv))
        return super().run(argv)

    def cmd_journalctl(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "\n".join(JOURNAL) + "\n", "")

    def cmd_systemd_run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, "", "")

    def is_active(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        # nginx runs here (a failed Gate 2 asks).
        return subprocess.CompletedProcess(argv, 0, "", "")

    def prober(self, target: Target, expect: Expect, policy: Policy) -> dict:
        gate = "gate1" if target.unix_socket is not None else "gate2"
        self.probed.append(gate)
        if gate in self.gates:
            raise self.gates[gate]
        return {"ok": True}

    def switch(self, spec: SwitchSpec) -> Switch:
        self.specs.append(spec)
        return Switch(spec, run=self.run, prober=self.prober, sleep=self.sleeps.append)

    def mutations(self) -> list[list[str]]:
        """Calls that change something: queries and journal reads left out."""
        queries = ("list-units", "is-enabled", "is-active")
        return [
            c
            for c in self.calls
            if c[0] == "systemd-run" or (c[0] == "systemctl" and c[1] not in queries)
        ]


@pytest.fixture
def host(monkeypatch) -> Host:
    fake = Host()
    monkeypatch.setattr(actions, "Switch", fake.switch)
    return fake


@pytest.fixture
def root(tmp_path) -> str:
    """The service home (run.root is tmp_path): A is current and good; B is staged."""
    path = str(tmp_path / SERVICE)
    tree = ReleaseTree(path, SERVICE).release(A).release(B)
    tree.events((A, "staged"), (B, "staged"), (A, "active")).current(A)
    return path


@pytest.fixture
def locks_made() -> list[str]:
    """The services main() made a ServiceLock for."""
    return []


@pytest.fixture
def lock_root(tmp_path, monkeypatch, locks_made) -> Path:
    """The module's deploy locks live here instead of /run/lock/flipback."""
    path = tmp_path / "lock" / SERVICE

    def service_lock(service: str) -> ServiceLock:
        locks_made.append(service)
        return ServiceLock(service, str(path))

    monkeypatch.setattr(actions, "ServiceLock", service_lock)
    return path


def hold(lock_root: Path, run_id: str, *, age: float = 10) -> dict:
    """A fresh lock of another run, as release_prepare or release_lock writes it."""
    lock_root.mkdir(parents=True, exist_ok=True)
    since = time.time() - age
    holder = {
        "service": SERVICE,
        "run_id": run_id,
        "by": "alice",
        "playbook": "deploy.yml",
        "release": None,
        "action": "deploy",
        "since": utc_iso(since),
        "pid": 99999,
        "ttl": 1800,
        "expires": since + 1800,
        "refreshed": since,
        "stale_after": 120,
    }
    (lock_root / ".lock").write_text(json.dumps(holder))
    return holder


def args(root: str, *, service: dict | None = None, run: dict | None = None, **extra) -> dict:
    """action=switch to B at `root`; `service` and `run` change those arguments' keys,
    `extra` the others (None: left out)."""
    found = {
        "action": "switch",
        "service": service_arg(**{"name": SERVICE, **(service or {})}),
        "run": run_arg(root, **(run or {})),
        "release": B,
        **extra,
    }
    return {key: value for key, value in found.items() if value is not None}


def run_main(module_args: dict, capsys, check_mode: bool = False, diff: bool = False):
    code, result, _out = run_module(release, module_args, capsys, check_mode=check_mode, diff=diff)
    return code, result


def current(root: str) -> str | None:
    try:
        return os.readlink(os.path.join(root, "current"))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- parameters


HEALTH = {
    "path": "/healthz",
    "expect_status": [200, 204],
    "expect_json": {"ok": True},
    "release_in": "json",
    "host": "shop.example",
    "timeout": 7,
    "unhealthy_answers": 4,
}
RUN = {
    "by": "carol",
    "run_id": "ctl:1:2",
    "public_successes": 5,
    "drain_seconds": 0.5,
    "standby": False,
}


@pytest.mark.parametrize(
    ("action", "spec_action", "keep_releases"),
    [
        pytest.param("switch", "deploy", 4, id="switch"),
        # Only a deploy's switch prunes: a rollback or restore keeps what is there.
        pytest.param("rollback", "rollback", 0, id="rollback"),
        pytest.param("restore", "rollback", 0, id="restore"),
    ],
)
def test_parameters_become_the_spec(host, root, capsys, action, spec_action, keep_releases):
    run_main(
        args(
            root,
            action=action,
            service={"health": HEALTH, "keep_releases": 4},
            run=RUN,
            note="hotfix",
        ),
        capsys,
        check_mode=True,
    )
    assert host.specs == [
        SwitchSpec(
            service=SERVICE,
            root=root,
            release=B,
            action=spec_action,
            port=8000,
            health_path="/healthz",
            expect_status=(200, 204),
            expect_json={"ok": True},
            release_in="json",
            health_host="shop.example",
            health_timeout=7.0,
            unhealthy_answers=4,
            public_successes=5,
            drain_seconds=0.5,
            socket_dir=f"/run/flipback-{SERVICE}",
            by="carol",
            note="hotfix",
            run_id="ctl:1:2",
            standby=False,
            keep_releases=keep_releases,
        )
    ]


def test_defaults_name_the_service(host, capsys, monkeypatch):
    class Stub:
        def __init__(self, spec: SwitchSpec) -> None:
            host.specs.append(spec)

        def switch(self, check_mode: bool) -> dict:
            return {"changed": False, "release": B, "diff": {"before": "", "after": ""}}

    monkeypatch.setattr(actions, "Switch", Stub)
    code, result = run_main(
        {"action": "switch", "service": {"name": SERVICE, "port": 8000}, "release": B}, capsys
    )
    assert (code, result["changed"], "diff" in result) == (0, False, False)
    (spec,) = host.specs
    assert (spec.root, spec.socket_dir) == (f"/srv/{SERVICE}", f"/run/flipback-{SERVICE}")
    assert (spec.action, spec.health_path, spec.expect_status) == ("deploy", "/health", (200,))
    assert (spec.expect_json, spec.health_timeout, spec.public_successes) == ({}, 30.0, 3)
    assert (spec.release_in, spec.health_host, spec.unhealthy_answers) == (
        "header",
        "localhost",
        10,
    )
    assert (spec.drain_seconds, spec.by, spec.note, spec.run_id) == (1.0, "unknown", "", None)
    assert (spec.steps, spec.standby, spec.keep_releases) == (1, True, 0)


@pytest.mark.parametrize("action", ["switch", "rollback", "restore"])
def test_a_switch_needs_the_release(host, root, capsys, action):
    code, result = run_main(args(root, action=action, release=None), capsys)
    assert code == 1
    assert result["msg"].startswith(f"release: missing; action={action} needs it")
    assert (result["field"], result["retryable"]) == ("release", False)
    assert host.specs == []


# --------------------------------------------------------------------------- exit_json


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
def test_switch_exits_with_the_result(host, root, capsys, diff):
    code, result = run_main(
        args(root, run={"drain_seconds": 2, "standby": False}), capsys, diff=diff
    )

    assert code == 0
    assert result["changed"] is True
    assert result["outcome"] == "switched"
    assert (result["release"], result["previous"]) == (B, A)
    assert (result["started"], result["stopped"], result["standby"]) == (UNIT_B, UNIT_A, None)
    assert result["reason"] is None
    assert isinstance(result["elapsed"], float)
    assert set(result["timings"]) == {"gate_1", "gate_2"}
    assert host.probed == ["gate1", "gate2"]
    (retire,) = [call for call in host.calls if call[0] == "systemd-run"]
    assert "--on-active=2000ms" in retire
    assert retire[-3:] == ["systemctl", "stop", UNIT_A]
    assert host.sleeps == []
    assert current(root) == f"releases/{B}"
    if diff:
        assert result["diff"] == {
            "before": f"current -> releases/{A}\n",
            "after": f"current -> releases/{B}\n",
        }
    else:
        assert "diff" not in result


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
def test_check_mode_reports_what_would_happen(host, root, capsys, diff):
    history = read_history(root)

    code, result = run_main(args(root), capsys, check_mode=True, diff=diff)

    assert code == 0
    assert result["changed"] is True
    assert result["outcome"] == "switched"
    assert (result["started"], result["stopped"], result["standby"]) == (UNIT_B, None, A)
    assert "elapsed" in result
    assert ("diff" in result) is diff
    assert host.mutations() == []
    assert host.probed == []
    assert current(root) == f"releases/{A}"
    assert read_history(root) == history


def test_already_current_and_healthy_is_unchanged(host, root, capsys):
    code, result = run_main(args(root, release=A), capsys)
    assert code == 0
    assert result["changed"] is False
    assert result["outcome"] == "already live"
    assert (result["started"], result["stopped"], result["previous"]) == (None, None, A)
    assert host.probed == ["gate2"]
    assert host.mutations() == []


ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations"}
# Returned by the switches but missing from release.py's RETURN (release_switch documented
# them): see test_what_a_switch_returns_is_documented.
UNDOCUMENTED = {"steps", "timings", "undone", "diff", "value", "expected"}


def test_what_a_switch_returns_is_documented():
    assert set(yaml.safe_load(release.RETURN)) >= UNDOCUMENTED


@pytest.mark.parametrize(
    ("module_args", "gate", "check_mode"),
    [
        pytest.param({"diff": True}, None, False, id="switched"),
        pytest.param({"service": {"keep_releases": 1}}, None, False, id="pruned"),
        pytest.param({}, None, True, id="check"),
        pytest.param({"release": A}, None, False, id="already-current"),
        pytest.param({}, "gate1", False, id="gate-1-failed"),
        pytest.param({}, "gate2", False, id="gate-2-failed"),
        pytest.param({"release": "../etc"}, None, False, id="invalid-release"),
        pytest.param({"release": A, "action": "rollback"}, None, False, id="rollback-to-current"),
        pytest.param({"release": None, "action": "rollback"}, None, False, id="no-release"),
    ],
)
def test_every_key_returned_is_documented(host, root, capsys, module_args, gate, check_mode):
    documented = yaml.safe_load(release.RETURN)
    if gate:
        host.gates[gate] = HealthError("status 502")
    module_args = dict(module_args)
    diff = module_args.pop("diff", False)

    _code, result = run_main(args(root, **module_args), capsys, check_mode=check_mode, diff=diff)

    assert set(result) - ANSIBLE_KEYS - UNDOCUMENTED <= set(documented)
    for key, value in result.items():
        if key in documented and value is not None:
            kind = {"str": str, "list": list, "dict": dict, "float": float, "bool": bool}
            assert isinstance(value, kind[documented[key]["type"]]), key


# --------------------------------------------------------------------------- fail_json


@pytest.mark.parametrize(
    ("gate", "error", "expected_gate"),
    [
        pytest.param("gate1", HealthError("refused"), GATE_1, id="gate-1"),
        pytest.param("gate2", HealthError("status 502"), GATE_2, id="gate-2"),
    ],
)
def test_a_failed_gate_fails_with_the_gate_and_journal(
    host, root, capsys, gate, error, expected_gate
):
    host.gates[gate] = error

    code, result = run_main(args(root), capsys)

    assert code == 1
    assert result["failed"] is True
    assert f'did not pass "{expected_gate}"' in result["msg"]
    assert error.msg in result["msg"]
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
    assert result["gate"] == expected_gate
    assert result["journal"] == JOURNAL
    assert f"stopped {UNIT_B}" in result["undone"]
    assert current(root) == f"releases/{A}"
    assert UNIT_A in host.active


def test_an_already_current_release_that_does_not_answer_fails(host, root, capsys):
    host.gates["gate2"] = HealthError("status 502", retryable=True)

    code, result = run_main(args(root, release=A), capsys)

    assert code == 1
    assert "is current but does not answer" in result["msg"]
    assert result["retryable"] is True
    assert result["gate"] == GATE_2
    assert result["journal"] == JOURNAL
    assert "elapsed" in result


def test_a_start_that_fails_is_retryable(host, root, capsys):
    host.failing_start.add(UNIT_B)

    code, result = run_main(args(root), capsys)

    assert code == 1
    assert result["msg"].startswith(f"systemctl start {UNIT_B} failed (exit 1)")
    assert result["retryable"] is True
    assert "elapsed" in result
    assert "gate" not in result
    assert current(root) == f"releases/{A}"


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("extra", "message", "field"),
    [
        pytest.param({"release": "../../etc"}, "release: got '../../etc'", "release", id="id"),
        pytest.param(
            {"release": "20261103T120000-cccccccccc"},
            "expected a release directory",
            "release",
            id="not-staged",
        ),
        pytest.param(
            {"service": {"name": "Shop!"}}, "service: got 'Shop!'", "service", id="service"
        ),
    ],
)
def test_a_refused_input_fails_before_any_command(
    host, root, capsys, check_mode, extra, message, field
):
    code, result = run_main(args(root, **extra), capsys, check_mode=check_mode)

    assert code == 1
    assert message in result["msg"]
    assert result["field"] == field
    assert result["retryable"] is False
    assert "elapsed" in result
    # At most the read-only listing of instances: nothing started, stopped or flipped.
    assert host.mutations() == []
    assert current(root) == f"releases/{A}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            {"service": {"port": None}},
            "service.port: missing; action=switch needs it",
            id="port-missing",
        ),
        pytest.param({"action": "retire"}, "value of action must be one of", id="action-choice"),
        pytest.param(
            {"run": {"public_successes": "many"}}, "public_successes", id="successes-type"
        ),
        pytest.param({"point": "after_switch"}, "point: got a value", id="option-not-used"),
    ],
)
def test_arguments_are_validated(host, root, capsys, extra, message):
    code, result = run_main(args(root, **extra), capsys)
    assert code == 1
    assert message in result["msg"]
    assert host.specs == []


# --------------------------------------------------------------------------- the deploy lock

OWNER = {"run_id": "ctl:4242:1795953600", "by": "bob"}


def lock_on_disk(lock_root: Path) -> dict | None:
    path = lock_root / ".lock"
    return json.loads(path.read_text()) if path.exists() else None


def test_no_run_id_takes_no_lock(host, root, lock_root, locks_made, capsys):
    code, _result = run_main(args(root), capsys)
    assert code == 0
    assert locks_made == []
    assert not lock_root.exists()


@pytest.mark.parametrize("held_by_this_run", [False, True], ids=["free", "refreshed"])
def test_the_lock_is_held_during_the_switch_and_given_back(
    host, root, lock_root, locks_made, capsys, held_by_this_run
):
    if held_by_this_run:
        # release_prepare took it for this run; the switch refreshes it, then gives it back.
        hold(lock_root, OWNER["run_id"])
    seen: list[dict | None] = []
    host.on_call = lambda argv: seen.append(lock_on_disk(lock_root))

    code, result = run_main(args(root, run=OWNER), capsys)

    assert code == 0
    assert result["changed"] is True
    assert locks_made == [SERVICE]
    assert seen and all(lock and lock["run_id"] == OWNER["run_id"] for lock in seen)
    assert lock_on_disk(lock_root) is None


@pytest.mark.parametrize(
    ("gate", "failing_start"),
    [
        pytest.param("gate2", False, id="gate-failed"),
        pytest.param(None, True, id="start-failed"),
    ],
)
def test_the_lock_is_given_back_when_the_switch_fails(
    host, root, lock_root, capsys, gate, failing_start
):
    if gate:
        host.gates[gate] = HealthError("status 502")
    if failing_start:
        host.failing_start.add(UNIT_B)

    code, result = run_main(args(root, run=OWNER), capsys)

    assert code == 1
    assert result["failed"] is True
    assert lock_on_disk(lock_root) is None
    assert current(root) == f"releases/{A}"


def test_a_lock_held_by_another_run_fails_before_anything_changes(host, root, lock_root, capsys):
    holder = hold(lock_root, "other:777:1795953000")

    code, result = run_main(args(root, run={**OWNER, "lock_wait": 0}), capsys)

    assert code == 1
    assert f"{SERVICE} is locked by " in result["msg"]
    assert "alice" in result["msg"]
    assert result["retryable"] is True
    assert result["holder"] == holder
    assert lock_on_disk(lock_root) == holder
    assert host.calls == []
    assert current(root) == f"releases/{A}"


@pytest.mark.parametrize(
    ("live_runs", "taken_over"),
    [
        # This controller's run 777 is not among the live ansible-playbook processes.
        pytest.param(
            {"controller": "ctl", "pids": [4242], "at": time.time()}, True, id="holder-gone"
        ),
        pytest.param(
            {"controller": "ctl", "pids": [4242, 777], "at": time.time()},
            False,
            id="holder-alive",
        ),
        pytest.param(None, False, id="no-live-runs"),
    ],
)
def test_a_lock_of_a_run_that_died_on_this_controller_is_taken_over(
    host, root, lock_root, capsys, live_runs, taken_over
):
    hold(lock_root, "ctl:777:1700000000")

    code, result = run_main(args(root, run={**OWNER, "live_runs": live_runs}), capsys)

    if not taken_over:
        assert code == 1
        assert "is locked by" in result["msg"]
        assert lock_on_disk(lock_root)["run_id"] == "ctl:777:1700000000"
        return
    assert code == 0
    [warning] = result["warnings"]
    assert "took over the stale lock of shop held by alice" in json.dumps(warning)
    assert "its ansible-playbook process no longer exists" in json.dumps(warning)
    assert lock_on_disk(lock_root) is None
    assert current(root) == f"releases/{B}"


@pytest.mark.parametrize("held", [False, True], ids=["free", "held-by-other"])
def test_check_mode_only_looks_at_the_lock(host, root, lock_root, capsys, held):
    holder = hold(lock_root, "other:777:1795953000") if held else None

    code, result = run_main(args(root, run=OWNER), capsys, check_mode=True)

    assert code == 0
    assert result["changed"] is True
    assert lock_on_disk(lock_root) == holder
    assert host.mutations() == []


@pytest.mark.parametrize(
    ("action", "lock_action"),
    [
        pytest.param("switch", "deploy", id="switch"),
        pytest.param("rollback", "rollback", id="rollback"),
        pytest.param("restore", "restore", id="restore"),
    ],
)
def test_the_lock_names_the_run_and_what_it_does(
    host, root, lock_root, capsys, action, lock_action
):
    seen: list[dict | None] = []
    host.on_call = lambda argv: seen.append(lock_on_disk(lock_root))

    code, result = run_main(
        args(root, action=action, run={**OWNER, "playbook": "deploy.yml"}), capsys
    )

    assert code == 0
    assert result["outcome"] == "switched"
    lock = seen[0]
    assert lock is not None
    assert (lock["run_id"], lock["by"], lock["playbook"]) == (OWNER["run_id"], "bob", "deploy.yml")
    assert (lock["action"], lock["release"]) == (lock_action, B)
    assert lock_on_disk(lock_root) is None


@pytest.mark.parametrize(
    ("action", "waited"),
    [
        pytest.param("switch", False, id="switch-fails-at-once"),
        pytest.param("restore", False, id="restore-fails-at-once"),
        pytest.param("rollback", True, id="rollback-waits"),
    ],
)
def test_only_a_rollback_waits_for_a_busy_lock(
    host, root, lock_root, capsys, monkeypatch, action, waited
):
    hold(lock_root, "other:777:1795953000")
    requests: list[dict] = []
    real_take = ServiceLock.take

    def take(self, request, *, check_mode=False):
        requests.append(request)
        return real_take(self, {**request, "wait": 0}, check_mode=check_mode)

    monkeypatch.setattr(ServiceLock, "take", take)

    code, result = run_main(args(root, action=action, run={**OWNER, "lock_wait": 30}), capsys)

    assert code == 1
    assert "is locked by" in result["msg"]
    assert [request["wait"] for request in requests] == [30.0 if waited else 0]
    assert host.calls == []
