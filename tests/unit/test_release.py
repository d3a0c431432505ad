"""Unit tests of library/release.py: action=target and abandon end to end on release trees
under tmp_path, and which options each action takes (check_options)."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import release
import yaml
from ansible.module_utils import flipback_actions as actions
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_release import (
    ReleaseError,
    append_history,
    history_event,
    read_history,
)
from fakes import ReleaseTree, run_arg, run_module, service_arg

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
C = "20261103T120000-cccccccccc"
HEALTH = {"path": "/health", "expect_status": 200}
RUN_ID = "ctl:4242:1795953600"


def tree(root: Path) -> ReleaseTree:
    return ReleaseTree(root, SERVICE, manifest={"health": HEALTH, "status": "staged"})


def stage(root: Path, release_id: str, status: str = "staged") -> None:
    tree(root).release(release_id, status=status).events((release_id, "staged"))


def go_live(root: Path, release_id: str) -> None:
    tree(root).events((release_id, "active")).current(release_id)


@pytest.fixture
def root(tmp_path) -> Path:
    """The service home (run.root is tmp_path): releases A (good), B (current) and C
    (staged, not yet live)."""
    path = tmp_path / SERVICE
    for release_id in (A, B):
        stage(path, release_id)
        go_live(path, release_id)
    stage(path, C)
    return path


def args(root: Path, action: str, *, service: dict | None = None, run: dict | None = None, **extra):
    """action on the service at `root`; `service` and `run` change those arguments' keys."""
    return {
        "action": action,
        "service": service_arg(**{"name": SERVICE, **(service or {})}),
        "run": run_arg(root, **(run or {})),
        **extra,
    }


def run_main(module_args, capsys, check_mode=False, diff=False):
    code, result, _out = run_module(release, module_args, capsys, check_mode=check_mode, diff=diff)
    return code, result


def events(root: Path) -> list[tuple[str, str]]:
    return [(e["release"], e["event"]) for e in read_history(str(root))]


# --------------------------------------------------------------------------- target


@pytest.mark.parametrize(
    ("extra", "target"),
    [
        pytest.param({}, A, id="default-steps"),
        pytest.param({"steps": 1}, A, id="steps-1"),
        pytest.param({"steps": 2}, None, id="steps-2-none"),
        pytest.param({"release": C}, C, id="named"),
    ],
)
def test_target(root, capsys, extra, target):
    code, result = run_main(args(root, "target", **extra), capsys, check_mode=True)
    assert code == 0
    assert result["changed"] is False
    assert result["target"] == target
    assert result["build"] == target
    assert result["current"] == B
    assert result["candidates"] == [A]
    assert isinstance(result["reason"], str)


def test_target_named_failed_fails(root, capsys):
    append_history(str(root), history_event(C, "failed", by="ci"))
    code, result = run_main(args(root, "target", release=C), capsys)
    assert code == 1
    assert "whose status is failed" in result["msg"]
    assert result["field"] == "release"


def test_target_none_reason(tmp_path, capsys):
    home = tmp_path / SERVICE
    stage(home, A)
    go_live(home, A)
    code, result = run_main(args(home, "target"), capsys)
    assert code == 0
    assert result["target"] is None
    assert result["reason"] == f"no previous good release: history has only {A}"


def test_target_needs_no_port(root, capsys):
    code, result = run_main(args(root, "target", service={"port": None}), capsys)
    assert (code, result["target"]) == (0, A)


def test_target_defaults_root_to_srv(capsys, monkeypatch):
    seen = []
    real = actions.Releases

    def spy(service, root, run_id=None):
        seen.append((service, root))
        return real(service, str(Path("/nonexistent") / service))

    monkeypatch.setattr(actions, "Releases", spy)
    code, result = run_main({"action": "target", "service": {"name": SERVICE}}, capsys)
    assert code == 0
    assert seen == [(SERVICE, f"/srv/{SERVICE}")]
    assert result["target"] is None


# --------------------------------------------------------------------------- abandon


class Runner:
    """A fake systemctl: `rc` for every stop, recorded in `calls`."""

    def __init__(self, rc: int = 0, err: str = "") -> None:
        self.calls: list[list[str]] = []
        self.rc = rc
        self.err = err

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), self.rc, "", self.err)


@pytest.fixture
def runner(monkeypatch) -> Runner:
    fake = Runner()
    monkeypatch.setattr(actions, "abandon", functools.partial(actions.abandon, runner=fake))
    return fake


@pytest.fixture
def lock_root(tmp_path, monkeypatch) -> Path:
    """The module's deploy locks live here instead of /run/lock/flipback."""
    path = tmp_path / "lock" / SERVICE
    monkeypatch.setattr(actions, "ServiceLock", lambda service: ServiceLock(service, str(path)))
    return path


def take_lock(lock_root: Path, run_id: str = RUN_ID) -> None:
    ServiceLock(SERVICE, str(lock_root)).take({"owner": {"run_id": run_id, "by": "bob"}})


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_abandon_records_failed_stops_the_warm_instance_and_gives_the_lock_back(
    root, runner, lock_root, capsys, check_mode
):
    take_lock(lock_root)
    before = events(root)

    code, result = run_main(
        args(
            root,
            "abandon",
            run={"run_id": RUN_ID, "by": "bob"},
            release=C,
            note="not tried here",
            stop=True,
        ),
        capsys,
        check_mode=check_mode,
    )

    assert code == 0
    assert result["changed"] is True
    assert (result["outcome"], result["release"], result["current"]) == ("abandoned", C, B)
    assert result["stopped"] == f"{SERVICE}@{C}.service"
    assert {k: result["recorded"][k] for k in ("release", "event", "by", "note")} == {
        "release": C,
        "event": "failed",
        "by": "bob",
        "note": "not tried here",
    }
    if check_mode:
        assert events(root) == before
        assert runner.calls == []
        assert (lock_root / ".lock").exists()
        return
    assert events(root) == [*before, (C, "failed")]
    assert read_history(str(root))[-1]["run"] == RUN_ID
    assert runner.calls == [["systemctl", "stop", f"{SERVICE}@{C}.service"]]
    assert result["lock"]["outcome"] == "released"
    assert not (lock_root / ".lock").exists()


def test_abandon_never_stops_the_current_release(root, runner, lock_root, capsys):
    code, result = run_main(args(root, "abandon", release=B, stop=True), capsys)

    assert code == 0
    assert (result["changed"], result["stopped"], result["recorded"]) == (False, None, None)
    assert runner.calls == []
    assert events(root)[-1] == (C, "staged")


def test_abandon_without_note_or_stop_only_gives_the_lock_back(root, runner, lock_root, capsys):
    take_lock(lock_root)
    before = events(root)

    code, result = run_main(args(root, "abandon", run={"run_id": RUN_ID}, release=C), capsys)

    assert code == 0
    assert (result["recorded"], result["stopped"]) == (None, None)
    assert result["lock"]["outcome"] == "released"
    assert events(root) == before
    assert runner.calls == []
    assert not (lock_root / ".lock").exists()


def test_abandon_leaves_another_run_s_lock(root, runner, lock_root, capsys):
    take_lock(lock_root, "other:777:1795953000")

    code, result = run_main(args(root, "abandon", run={"run_id": RUN_ID}, release=C), capsys)

    assert code == 0
    assert result["lock"]["outcome"] == "held_by_other"
    assert (lock_root / ".lock").exists()


def test_abandon_without_run_id_touches_no_lock(root, runner, lock_root, capsys):
    code, result = run_main(args(root, "abandon", release=C, stop=True), capsys)

    assert code == 0
    assert "lock" not in result
    assert not lock_root.exists()


@pytest.mark.parametrize(
    ("rc", "failed"),
    [
        pytest.param(5, False, id="no-such-unit"),
        pytest.param(1, True, id="stop-failed"),
    ],
)
def test_abandon_stop_failures(root, runner, lock_root, capsys, rc, failed):
    runner.rc, runner.err = rc, "Failed to stop"

    code, result = run_main(args(root, "abandon", release=C, stop=True), capsys)

    if not failed:
        assert (code, result["stopped"]) == (0, f"{SERVICE}@{C}.service")
        return
    assert code == 1
    assert (
        result["msg"] == f"could not stop {SERVICE}@{C}.service: Failed to stop; retrying may help"
    )
    assert result["retryable"] is True


ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations"}
# Returned by action=abandon (recorded) and target (candidates, which the old release
# module documented) but missing from release.py's RETURN.
UNDOCUMENTED = {"recorded", "candidates"}


def test_what_abandon_and_target_return_is_documented():
    assert set(yaml.safe_load(release.RETURN)) >= UNDOCUMENTED


@pytest.mark.parametrize(
    ("action", "extra"),
    [
        pytest.param("target", {}, id="target"),
        pytest.param("target", {"release": "../x"}, id="target-refused"),
        pytest.param("abandon", {"release": C, "note": "x", "stop": True}, id="abandon"),
        pytest.param("abandon", {"release": B, "stop": True}, id="abandon-current"),
    ],
)
def test_every_key_returned_is_documented(root, runner, lock_root, capsys, action, extra):
    documented = yaml.safe_load(release.RETURN)

    _code, result = run_main(args(root, action, run={"run_id": RUN_ID}, **extra), capsys)

    # value and expected (a refused input): see test_release_switch.UNDOCUMENTED.
    assert set(result) - ANSIBLE_KEYS - UNDOCUMENTED - {"value", "expected"} <= set(documented)
    assert UNDOCUMENTED & set(result) or "field" in result


# --------------------------------------------------------------------------- check_options

ALL_OPTIONS = {
    "release": C,
    "config": {"workers": 1},
    "env_file": "",
    "build": {"id": "x", "checksum": "0" * 64},
    "upload": "/tmp/x.tar",
    "artifact_b64": "",
    "start": True,
    "lock_hold": 60,
    "point": "after_switch",
    "note": "x",
    "stop": True,
    "steps": 1,
}


def params(action: str, service: dict | None = None, **options: object) -> dict:
    return {
        "action": action,
        "service": {"name": SERVICE, "port": 8000, **(service or {})},
        **dict.fromkeys(actions.OPTIONAL),
        **options,
    }


def test_every_option_is_known_to_check_options():
    documented = yaml.safe_load(release.DOCUMENTATION)["options"]
    # note_in_rollout is read by the action plugin on the controller, never sent here.
    controller = {"note_in_rollout"}
    assert set(actions.OPTIONAL) == set(documented) - {"action", "service", "run"} - controller
    assert set(ALL_OPTIONS) == set(actions.OPTIONAL)
    assert set(actions.ACTION_OPTIONS) == set(actions.REQUIRED) == set(actions.ACTIONS)
    for action, required in actions.REQUIRED.items():
        assert set(required) <= set(actions.ACTION_OPTIONS[action]), action


@pytest.mark.parametrize(
    ("action", "option"),
    [
        pytest.param(action, option, id=f"{action}-{option}")
        for action in actions.ACTIONS
        for option in actions.OPTIONAL
        if option not in actions.ACTION_OPTIONS[action]
    ],
)
def test_an_option_an_action_does_not_use_is_refused(action, option):
    users = [a for a, options in actions.ACTION_OPTIONS.items() if option in options]

    with pytest.raises(ReleaseError) as refused:
        actions.check_options(params(action, **{option: ALL_OPTIONS[option]}))

    assert refused.value.msg == (
        f"{option}: got a value, but action={action} does not use it; expected it only "
        f"with action={' or '.join(users)}"
    )
    assert (refused.value.details["field"], refused.value.retryable) == (option, False)


@pytest.mark.parametrize(
    ("action", "option"),
    [
        pytest.param(action, option, id=f"{action}-{option}")
        for action in actions.ACTIONS
        for option in actions.REQUIRED[action]
    ],
)
def test_a_missing_required_option_is_refused(action, option):
    given = {name: ALL_OPTIONS[name] for name in actions.REQUIRED[action] if name != option}

    with pytest.raises(ReleaseError) as refused:
        actions.check_options(params(action, **given))

    assert refused.value.msg.startswith(f"{option}: missing; action={action} needs it")
    assert refused.value.details["field"] == option


@pytest.mark.parametrize("action", actions.ACTIONS)
def test_each_action_takes_its_options(action):
    options = {name: ALL_OPTIONS[name] for name in actions.ACTION_OPTIONS[action]}
    if action == "stage":
        del options["artifact_b64"]
    if action == "target":
        del options["steps"]
    # Every option of the action at once is accepted ...
    assert actions.check_options(params(action, **options)) is None
    # ... and the same with one more, of another action, is not: the check looked.
    other = next(name for name in actions.OPTIONAL if name not in actions.ACTION_OPTIONS[action])
    with pytest.raises(ReleaseError) as refused:
        actions.check_options(params(action, **options, **{other: ALL_OPTIONS[other]}))
    assert refused.value.details["field"] == other


@pytest.mark.parametrize(
    ("action", "needs_port"),
    [(action, action not in ("command", "abandon", "target")) for action in actions.ACTIONS],
)
def test_which_actions_need_the_port(action, needs_port):
    required = {name: ALL_OPTIONS[name] for name in actions.REQUIRED[action]}
    checked = params(action, service={"port": None}, **required)
    if not needs_port:
        assert actions.check_options(checked) is None
        return
    with pytest.raises(ReleaseError) as refused:
        actions.check_options(checked)
    assert refused.value.msg.startswith(f"service.port: missing; action={action} needs it")
    assert refused.value.details["field"] == "service.port"


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("module_args", "message"),
    [
        pytest.param(
            {"action": "target", "service": {"name": "Shop"}},
            "service: got 'Shop', expected 1-32 characters",
            id="bad-service",
        ),
        pytest.param(
            {"action": "target", "service": {"name": "../etc"}},
            "service: got '../etc', expected 1-32 characters",
            id="traversal-service",
        ),
        pytest.param(
            {"action": "target", "service": {"name": SERVICE}, "release": A, "steps": 2},
            "parameters are mutually exclusive: release|steps",
            id="release-and-steps",
        ),
        pytest.param(
            {"action": "target", "service": {"name": SERVICE}, "note": "x"},
            "note: got a value, but action=target does not use it; expected it only with "
            "action=switch or rollback or restore or abandon",
            id="note-with-target",
        ),
        pytest.param(
            {
                "action": "switch",
                "service": {"name": SERVICE, "port": 8000},
                "release": A,
                "start": True,
            },
            "start: got a value, but action=switch does not use it; expected it only with "
            "action=prepare or stage",
            id="start-with-switch",
        ),
        pytest.param(
            {"action": "switch", "service": {"name": SERVICE, "port": 8000}},
            "release: missing; action=switch needs it",
            id="switch-without-release",
        ),
        pytest.param(
            {"action": "command", "service": {"name": SERVICE}, "release": A},
            "point: missing; action=command needs it",
            id="command-without-point",
        ),
        pytest.param({"action": "target"}, "missing required arguments: service", id="no-service"),
        pytest.param(
            {"action": "target", "service": {}},
            "missing required arguments: name found in service",
            id="no-service-name",
        ),
        pytest.param(
            {"action": "list", "service": {"name": SERVICE}},
            "value of action must be one of: prepare, stage, switch, rollback, restore, "
            "command, abandon, target",
            id="bad-action",
        ),
        pytest.param(
            {"action": "target", "service": {"name": SERVICE}, "keep": 3},
            "Unsupported parameters for (basic.py) module: keep",
            id="keep-is-gone",
        ),
    ],
)
def test_arguments_are_validated(root, capsys, module_args, message):
    before = events(root)
    code, result = run_main({"run": run_arg(root), **module_args}, capsys)
    assert code == 1
    assert message in result["msg"]
    assert events(root) == before
    assert os.readlink(root / "current") == f"releases/{B}"


def test_an_option_error_names_its_field(root, capsys):
    code, result = run_main(args(root, "target", service={"name": "Shop"}), capsys)
    assert code == 1
    assert (result["field"], result["value"]) == ("service", "Shop")
    assert "expected" in result
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)


def test_an_option_an_action_does_not_use_is_refused_by_main(root, capsys):
    code, result = run_main(args(root, "switch", release=C, point="after_switch"), capsys)
    assert code == 1
    assert result["msg"].startswith("point: got a value, but action=switch does not use it")
    assert (result["field"], result["retryable"]) == ("point", False)
    assert os.readlink(root / "current") == f"releases/{B}"
