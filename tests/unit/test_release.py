"""Unit tests of library/release.py: main() end to end on release trees under tmp_path."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import release
from ansible.module_utils.flipback_release import append_history, history_event, read_history
from ansible.module_utils.testing import patch_module_args
from fakes import ReleaseTree

SERVICE = "shop"
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
C = "20261103T120000-cccccccccc"
HEALTH = {"path": "/health", "expect_status": 200}


def tree(root: Path) -> ReleaseTree:
    return ReleaseTree(root, SERVICE, manifest={"health": HEALTH, "status": "staged"})


def stage(root: Path, release_id: str, status: str = "staged") -> None:
    tree(root).release(release_id, status=status).events((release_id, "staged"))


def go_live(root: Path, release_id: str) -> None:
    tree(root).events((release_id, "active")).current(release_id)


@pytest.fixture
def root(tmp_path) -> Path:
    """Releases A (good), B (current) and C (staged, not yet live)."""
    path = tmp_path / SERVICE
    for release_id in (A, B):
        stage(path, release_id)
        go_live(path, release_id)
    stage(path, C)
    return path


def run_main(args, capsys, check_mode=False, diff=False):
    args = {"_ansible_check_mode": check_mode, "_ansible_diff": diff, **args}
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        release.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def events(root: Path) -> list[tuple[str, str]]:
    return [(e["release"], e["event"]) for e in read_history(str(root))]


# --------------------------------------------------------------------------- list


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_list(root, capsys, check_mode):
    code, result = run_main(
        {"action": "list", "service": SERVICE, "root": str(root)}, capsys, check_mode
    )

    assert code == 0
    assert result["changed"] is False
    assert (result["current"], result["previous_good"]) == (B, A)
    assert [(r["id"], r["status"]) for r in result["releases"]] == [
        (A, "good"),
        (B, "active"),
        (C, "staged"),
    ]
    assert isinstance(result["elapsed"], float)


def test_list_defaults_root_to_srv_service(capsys, monkeypatch):
    seen = []
    real = release.Releases

    def spy(service, root, run_id=None):
        seen.append((service, root))
        return real(service, str(Path("/nonexistent") / service))

    monkeypatch.setattr(release, "Releases", spy)
    code, result = run_main({"action": "list", "service": SERVICE}, capsys)
    assert code == 0
    assert seen == [(SERVICE, None)]
    assert real(SERVICE, None).root == "/srv/shop"
    assert result["releases"] == []


# --------------------------------------------------------------------------- activate


def test_activate(root, capsys, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "carol")

    code, result = run_main(
        {"action": "activate", "service": SERVICE, "root": str(root), "release": C}, capsys
    )

    assert code == 0
    assert result["changed"] is True
    assert (result["previous"], result["current"], result["release"]) == (B, C, C)
    assert os.readlink(root / "current") == f"releases/{C}"
    assert not (root / f"current.tmp-{os.getpid()}").exists()
    last = read_history(str(root))[-1]
    assert result["event"] == last
    assert (last["event"], last["by"], last["from"], last["note"], last["expect"]) == (
        "active",
        "carol",
        B,
        "",
        HEALTH,
    )
    assert "diff" not in result


def test_activate_takes_by_and_note(root, capsys):
    run_main(
        {
            "action": "activate",
            "service": SERVICE,
            "root": str(root),
            "release": C,
            "by": "dave",
            "note": "deploy v2",
        },
        capsys,
    )
    last = read_history(str(root))[-1]
    assert (last["by"], last["note"]) == ("dave", "deploy v2")


@pytest.mark.parametrize(
    ("check_mode", "diff", "target", "changed"),
    [
        pytest.param(False, True, C, True, id="diff"),
        pytest.param(True, True, C, True, id="check-diff"),
        pytest.param(True, False, C, True, id="check"),
        pytest.param(False, True, B, False, id="diff-unchanged"),
        pytest.param(True, True, B, False, id="check-diff-unchanged"),
    ],
)
def test_activate_check_and_diff(root, capsys, check_mode, diff, target, changed):
    before = events(root)

    code, result = run_main(
        {"action": "activate", "service": SERVICE, "root": str(root), "release": target},
        capsys,
        check_mode=check_mode,
        diff=diff,
    )

    assert code == 0
    assert result["changed"] is changed
    assert (result["previous"], result["current"]) == (B, target)
    if diff:
        assert result["diff"] == {
            "before": f"current -> releases/{B}\n",
            "after": f"current -> releases/{target}\n",
        }
    else:
        assert "diff" not in result
    really = changed and not check_mode
    assert os.readlink(root / "current") == f"releases/{target if really else B}"
    assert events(root) == before + ([(target, "active")] if really else [])


def test_activate_diff_without_a_previous_current(tmp_path, capsys):
    stage(tmp_path, A)
    code, result = run_main(
        {"action": "activate", "service": SERVICE, "root": str(tmp_path), "release": A},
        capsys,
        diff=True,
    )
    assert code == 0
    assert result["diff"] == {"before": "", "after": f"current -> releases/{A}\n"}


@pytest.mark.parametrize(
    ("release_id", "message", "field"),
    [
        pytest.param(
            "../../etc",
            "release: got '../../etc', expected an id like 20261129T141500-3f2a9c1d0e",
            "release",
            id="traversal",
        ),
        pytest.param(
            "20261104T120000-dddddddddd",
            "release: got '20261104T120000-dddddddddd', expected a release directory",
            "release",
            id="missing",
        ),
    ],
)
def test_activate_fails(root, capsys, release_id, message, field):
    code, result = run_main(
        {"action": "activate", "service": SERVICE, "root": str(root), "release": release_id},
        capsys,
    )

    assert code == 1
    assert result["failed"] is True
    assert result["msg"].startswith(message)
    assert (result["field"], result["value"]) == (field, release_id)
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
    assert os.readlink(root / "current") == f"releases/{B}"


def test_activate_incomplete_fails(root, capsys):
    (root / "releases" / "20261104T120000-dddddddddd").mkdir()
    code, result = run_main(
        {
            "action": "activate",
            "service": SERVICE,
            "root": str(root),
            "release": "20261104T120000-dddddddddd",
        },
        capsys,
    )
    assert code == 1
    assert "is incomplete: manifest.json is missing" in result["msg"]


# --------------------------------------------------------------------------- record


@pytest.mark.parametrize(
    ("check_mode", "written"), [(False, True), (True, False)], ids=["run", "check"]
)
def test_record(root, capsys, check_mode, written):
    before = events(root)

    code, result = run_main(
        {
            "action": "record",
            "service": SERVICE,
            "root": str(root),
            "release": C,
            "event": "failed",
            "note": "private probe: 500",
            "by": "ci",
        },
        capsys,
        check_mode=check_mode,
    )

    assert code == 0
    assert result["changed"] is True
    assert result["release"] == C
    assert {k: result["event"][k] for k in ("release", "event", "by", "note")} == {
        "release": C,
        "event": "failed",
        "by": "ci",
        "note": "private probe: 500",
    }
    assert events(root) == before + ([(C, "failed")] if written else [])


def test_record_refuses_active(root, capsys):
    code, result = run_main(
        {
            "action": "record",
            "service": SERVICE,
            "root": str(root),
            "release": C,
            "event": "active",
        },
        capsys,
    )
    assert code == 1
    assert "value of event must be one of: staged, failed, rolled_back, pruned" in result["msg"]


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
    code, result = run_main(
        {"action": "target", "service": SERVICE, "root": str(root), **extra},
        capsys,
        check_mode=True,
    )
    assert code == 0
    assert result["changed"] is False
    assert result["target"] == target
    assert result["current"] == B
    assert result["candidates"] == [A]
    assert isinstance(result["reason"], str)


def test_target_named_failed_fails(root, capsys):
    append_history(str(root), history_event(C, "failed", by="ci"))
    code, result = run_main(
        {"action": "target", "service": SERVICE, "root": str(root), "release": C}, capsys
    )
    assert code == 1
    assert "whose status is failed" in result["msg"]
    assert result["field"] == "release"


def test_target_none_reason(tmp_path, capsys):
    stage(tmp_path, A)
    go_live(tmp_path, A)
    code, result = run_main({"action": "target", "service": SERVICE, "root": str(tmp_path)}, capsys)
    assert code == 0
    assert result["target"] is None
    assert result["reason"] == f"no previous good release: history has only {A}"


# --------------------------------------------------------------------------- prune


@pytest.fixture
def unit_dir(tmp_path, monkeypatch) -> Path:
    """The releases' own units, in a tmp_path unit directory instead of the system's."""
    path = tmp_path / "systemd"
    path.mkdir()
    monkeypatch.setattr(
        release, "Releases", functools.partial(release.Releases, unit_dir=str(path))
    )
    return path


@pytest.mark.parametrize(
    ("check_mode", "gone"), [(False, True), (True, False)], ids=["run", "check"]
)
def test_prune(root, unit_dir, capsys, check_mode, gone):
    # A third good release makes A the oldest beyond keep=2 (B current, the new one previous).
    go_live(root, C)
    for release_id in (A, B, C):
        (unit_dir / f"{SERVICE}@{release_id}.service").write_text("[Service]\n")

    code, result = run_main(
        {"action": "prune", "service": SERVICE, "root": str(root), "keep": 2},
        capsys,
        check_mode=check_mode,
    )

    assert code == 0
    assert (result["changed"], result["removed"]) == (True, [A])
    assert (result["current"], result["previous_good"]) == (C, B)
    assert (root / "releases" / A).exists() is not gone
    assert ((A, "pruned") in events(root)) is gone
    # The release's own unit goes with it.
    assert (unit_dir / f"{SERVICE}@{A}.service").exists() is not gone
    assert (unit_dir / f"{SERVICE}@{B}.service").exists()
    assert (unit_dir / f"{SERVICE}@{C}.service").exists()


def test_prune_keeps_current_and_previous_good(root, unit_dir, capsys):
    code, result = run_main(
        {"action": "prune", "service": SERVICE, "root": str(root), "keep": 1}, capsys
    )
    assert code == 0
    assert (result["changed"], result["removed"]) == (False, [])
    assert result["kept"] == [A, B, C]


def test_prune_keep_zero_fails(root, capsys):
    code, result = run_main(
        {"action": "prune", "service": SERVICE, "root": str(root), "keep": 0}, capsys
    )
    assert code == 1
    assert result["msg"] == "keep: got 0, expected an integer of at least 1"
    assert (result["field"], result["value"]) == ("keep", 0)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            {"action": "list", "service": "Shop"},
            "service: got 'Shop', expected 1-32 characters",
            id="bad-service",
        ),
        pytest.param(
            {"action": "list", "service": "../etc"},
            "service: got '../etc', expected 1-32 characters",
            id="traversal-service",
        ),
        pytest.param(
            {"action": "list", "service": SERVICE, "keep": 3},
            "keep: got 3, but action=list does not use it; expected it only with action=prune",
            id="keep-with-list",
        ),
        pytest.param(
            {"action": "activate", "service": SERVICE, "release": A, "steps": 2},
            "parameters are mutually exclusive: release|steps",
            id="release-and-steps",
        ),
        pytest.param(
            {"action": "target", "service": SERVICE, "note": "x"},
            "note: got 'x', but action=target does not use it; expected it only with "
            "action=activate or record or prune",
            id="note-with-target",
        ),
        pytest.param(
            {"action": "prune", "service": SERVICE, "keep": 2, "release": A},
            "release: got '20261101T120000-aaaaaaaaaa', but action=prune does not use it",
            id="release-with-prune",
        ),
        pytest.param(
            {"action": "activate", "service": SERVICE},
            "action is activate but all of the following are missing: release",
            id="activate-without-release",
        ),
        pytest.param(
            {"action": "record", "service": SERVICE, "release": A},
            "action is record but all of the following are missing: event",
            id="record-without-event",
        ),
        pytest.param(
            {"action": "prune", "service": SERVICE},
            "action is prune but all of the following are missing: keep",
            id="prune-without-keep",
        ),
        pytest.param({"action": "list"}, "missing required arguments: service", id="no-service"),
        pytest.param(
            {"action": "deploy", "service": SERVICE},
            "value of action must be one of: list, activate, record, target, prune",
            id="bad-action",
        ),
    ],
)
def test_arguments_are_validated(root, capsys, args, message):
    before = events(root)
    code, result = run_main({"root": str(root), **args}, capsys)
    assert code == 1
    assert message in result["msg"]
    assert events(root) == before
    assert os.readlink(root / "current") == f"releases/{B}"


def test_an_option_error_names_its_field(root, capsys):
    code, result = run_main({"action": "list", "service": "Shop", "root": str(root)}, capsys)
    assert code == 1
    assert (result["field"], result["value"]) == ("service", "Shop")
    assert "expected" in result
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
