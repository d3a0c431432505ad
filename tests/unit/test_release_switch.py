"""Unit tests of library/release_switch.py: parameters to SwitchSpec, main()'s results.

main() switches a real release tree under tmp_path; systemd, the probes and the drain
go through fakes injected by replacing the module's Switch with a factory.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence

import pytest
import release_switch
from ansible.module_utils.flipback_health import Expect, HealthError, Policy, Target
from ansible.module_utils.flipback_release import append_history, history_event, read_history
from ansible.module_utils.flipback_switch import GATE_1, GATE_2, Switch, SwitchSpec
from ansible.module_utils.testing import patch_module_args

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
UNIT_A = f"{SERVICE}@{A}.service"
UNIT_B = f"{SERVICE}@{B}.service"
JOURNAL = ["Started shop.", "Traceback (most recent call last):"]


class Host:
    """Fake systemctl/journalctl, prober and sleep; records the specs main() built."""

    def __init__(self) -> None:
        self.active = {UNIT_A}
        self.enabled = {UNIT_A}
        self.failing_start: set[str] = set()
        self.gates: dict[str, HealthError] = {}
        self.calls: list[list[str]] = []
        self.probed: list[str] = []
        self.sleeps: list[float] = []
        self.specs: list[SwitchSpec] = []

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "journalctl":
            return subprocess.CompletedProcess(argv, 0, "\n".join(JOURNAL) + "\n", "")
        verb, unit = argv[1], argv[-1]
        if verb == "is-active":
            return subprocess.CompletedProcess(argv, 0 if unit in self.active else 3, "", "")
        if verb == "is-enabled":
            return subprocess.CompletedProcess(argv, 0 if unit in self.enabled else 1, "", "")
        if verb == "start" and unit in self.failing_start:
            return subprocess.CompletedProcess(argv, 1, "", f"Job for {unit} failed.")
        {
            "start": self.active.add,
            "stop": self.active.discard,
            "enable": self.enabled.add,
            "disable": self.enabled.discard,
        }[verb](unit)
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


@pytest.fixture
def host(monkeypatch) -> Host:
    fake = Host()
    monkeypatch.setattr(release_switch, "Switch", fake.switch)
    return fake


@pytest.fixture
def root(tmp_path) -> str:
    """A is current and good; B is staged."""
    path = str(tmp_path / SERVICE)
    for release_id in (A, B):
        os.makedirs(os.path.join(path, "releases", release_id))
        manifest = {"id": release_id, "service": SERVICE, "status": "staged"}
        with open(os.path.join(path, "releases", release_id, "manifest.json"), "w") as handle:
            json.dump(manifest, handle)
        append_history(path, history_event(release_id, "staged", by="alice"))
    append_history(path, history_event(A, "active", by="alice"))
    os.symlink(f"releases/{A}", os.path.join(path, "current"))
    return path


def args(root: str, **extra: object) -> dict:
    return {"service": SERVICE, "root": root, "release": B, "port": 8000, **extra}


def run_main(module_args: dict, capsys, check_mode: bool = False, diff: bool = False):
    module_args = {"_ansible_check_mode": check_mode, "_ansible_diff": diff, **module_args}
    with patch_module_args(module_args), pytest.raises(SystemExit) as exit_info:
        release_switch.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def current(root: str) -> str | None:
    try:
        return os.readlink(os.path.join(root, "current"))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- parameters


def test_parameters_become_the_spec(host, root, capsys):
    run_main(
        args(
            root,
            action="rollback",
            health_path="/healthz",
            expect_status=[200, 204],
            expect_json={"ok": True},
            health_timeout=7,
            public_successes=5,
            drain_seconds=0.5,
            socket_dir="/run/custom",
            by="carol",
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
            action="rollback",
            port=8000,
            health_path="/healthz",
            expect_status=(200, 204),
            expect_json={"ok": True},
            health_timeout=7.0,
            public_successes=5,
            drain_seconds=0.5,
            socket_dir="/run/custom",
            by="carol",
            note="hotfix",
        )
    ]


def test_defaults_name_the_service(host, capsys, monkeypatch):
    class Stub:
        def __init__(self, spec: SwitchSpec) -> None:
            host.specs.append(spec)

        def switch(self, check_mode: bool) -> dict:
            return {"changed": False, "release": B, "diff": {"before": "", "after": ""}}

    monkeypatch.setattr(release_switch, "Switch", Stub)
    code, result = run_main({"service": SERVICE, "release": B, "port": 8000}, capsys)
    assert (code, result["changed"], "diff" in result) == (0, False, False)
    (spec,) = host.specs
    assert (spec.root, spec.socket_dir) == (f"/srv/{SERVICE}", f"/run/flipback-{SERVICE}")
    assert (spec.action, spec.health_path, spec.expect_status) == ("deploy", "/health", (200,))
    assert (spec.expect_json, spec.health_timeout, spec.public_successes) == ({}, 30.0, 3)
    assert (spec.drain_seconds, spec.by, spec.note) == (1.0, "unknown", "")


# --------------------------------------------------------------------------- exit_json


@pytest.mark.parametrize("diff", [False, True], ids=["no-diff", "diff"])
def test_switch_exits_with_the_result(host, root, capsys, diff):
    code, result = run_main(args(root, drain_seconds=2), capsys, diff=diff)

    assert code == 0
    assert result["changed"] is True
    assert (result["release"], result["previous"]) == (B, A)
    assert (result["started"], result["stopped"]) == (UNIT_B, UNIT_A)
    assert isinstance(result["elapsed"], float)
    assert set(result["timings"]) == {"gate_1", "gate_2"}
    assert host.probed == ["gate1", "gate2"]
    assert host.sleeps == [2.0]
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
    assert (result["started"], result["stopped"]) == (UNIT_B, UNIT_A)
    assert "elapsed" in result
    assert ("diff" in result) is diff
    assert host.calls == []
    assert host.probed == []
    assert current(root) == f"releases/{A}"
    assert read_history(root) == history


def test_already_current_and_healthy_is_unchanged(host, root, capsys):
    code, result = run_main(args(root, release=A), capsys)
    assert code == 0
    assert result["changed"] is False
    assert (result["started"], result["stopped"], result["previous"]) == (None, None, A)
    assert host.probed == ["gate2"]


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
        pytest.param({"service": "Shop!"}, "service: got 'Shop!'", "service", id="service"),
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
    assert host.calls == []
    assert current(root) == f"releases/{A}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"port": None}, "port", id="port-missing"),
        pytest.param({"action": "retire"}, "action", id="action-choice"),
        pytest.param({"public_successes": "many"}, "public_successes", id="successes-type"),
    ],
)
def test_arguments_are_validated(host, root, capsys, extra, message):
    module_args = {key: value for key, value in args(root, **extra).items() if value is not None}
    code, result = run_main(module_args, capsys)
    assert code == 1
    assert message in result["msg"]
    assert host.specs == []
