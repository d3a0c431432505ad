"""Unit tests of library/release_lock.py: main() end to end on lock files under tmp_path."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.flipback_release import utc_iso
from ansible.module_utils.testing import patch_module_args

# Loaded from library/ by tests/conftest.py.
release_lock = sys.modules["release_lock"]

SERVICE = "shop"
ALICE = {
    "run_id": "ctl1-4242-20261129T115500Z",
    "by": "alice",
    "playbook": "deploy.yml",
    "release": "20261129T115500-aaaaaaaaaa",
    "action": "deploy",
}
BOB = {"run_id": "ctl2-777-20261129T120000Z", "by": "bob", "action": "rollback"}


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each module run is a new process; in one test process warnings would pile up."""
    monkeypatch.setattr(module_warnings, "_global_warnings", {})


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / SERVICE


def run_main(args, capsys, check_mode=False):
    args = {"_ansible_check_mode": check_mode, **args}
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        release_lock.main()
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def hold(root: Path, owner: dict, *, age: float) -> dict:
    """A lock written by `owner`'s run `age` seconds ago, never refreshed since."""
    root.mkdir(parents=True, exist_ok=True)
    since = time.time() - age
    holder = {
        "service": SERVICE,
        **owner,
        "since": utc_iso(since),
        "pid": 99999,
        "ttl": 1800,
        "expires": since + 1800,
        "refreshed": since,
        "stale_after": 120,
    }
    (root / ".lock").write_text(json.dumps(holder))
    return holder


def args(root: Path, owner: dict, **extra) -> dict:
    return {"service": SERVICE, "root": str(root), "owner": owner, **extra}


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("setup", "state", "owner", "outcome", "changed"),
    [
        (None, "acquired", ALICE, "acquired", True),
        ("alice", "acquired", ALICE, "refreshed", False),
        ("alice-stale", "acquired", BOB, "took_over", True),
        ("alice", "released", ALICE, "released", True),
        ("alice", "released", BOB, "held_by_other", False),
        (None, "released", ALICE, "absent", False),
    ],
    ids=["acquire", "reacquire", "take-over", "release", "release-other", "release-absent"],
)
def test_main(root, capsys, setup, state, owner, outcome, changed):
    if setup is not None:
        hold(root, ALICE, age=5000 if setup.endswith("stale") else 10)

    code, result = run_main(args(root, owner, state=state), capsys)

    assert code == 0
    assert (result["outcome"], result["changed"]) == (outcome, changed)
    assert isinstance(result["elapsed"], float)
    assert result["path"] == str(root / ".lock")
    assert "waited" in result
    if outcome in ("acquired", "refreshed", "took_over"):
        assert json.loads((root / ".lock").read_text()) == result["holder"]
        assert result["holder"]["run_id"] == owner["run_id"]
    if outcome == "took_over":
        assert result["took_over"]["by"] == "alice"
        [warning] = result["warnings"]
        assert "took over the stale lock of shop held by alice" in json.dumps(warning)
    else:
        assert "warnings" not in result
    if outcome in ("released", "absent"):
        assert not (root / ".lock").exists()
    if outcome == "held_by_other":
        assert result["holder"]["run_id"] == ALICE["run_id"]


def test_main_options_reach_the_lock(root, capsys):
    code, result = run_main(
        args(root, {"run_id": "r1"}, ttl=600, stale_after=30, heartbeat=False), capsys
    )
    assert code == 0
    holder = result["holder"]
    assert (holder["ttl"], holder["stale_after"]) == (600, None)
    assert holder["expires"] - holder["refreshed"] == 600
    assert holder["by"]  # defaulted to the user running the module


def test_main_defaults_root_to_run_lock(capsys, monkeypatch, tmp_path):
    seen = []
    real = release_lock.ServiceLock

    def spy(service, root):
        seen.append((service, root))
        return real(service, str(tmp_path / service))

    monkeypatch.setattr(release_lock, "ServiceLock", spy)
    code, result = run_main({"service": SERVICE, "owner": ALICE}, capsys)
    assert code == 0
    assert seen == [(SERVICE, None)]
    assert real(SERVICE).path == "/run/lock/flipback/shop/.lock"
    assert result["outcome"] == "acquired"


# --------------------------------------------------------------------------- failures


def test_main_held_fails_retryable_naming_the_holder(root, capsys):
    holder = hold(root, ALICE, age=10)

    code, result = run_main(args(root, BOB), capsys)

    assert code == 1
    assert result["failed"] is True
    assert result["retryable"] is True
    assert result["holder"] == holder
    assert result["waited"] < 1
    assert isinstance(result["elapsed"], float)
    for field in ("alice", holder["since"], "deploy.yml", ALICE["release"], "deploy"):
        assert field in result["msg"]


def test_main_waits_for_the_holder(root, capsys):
    hold(root, ALICE, age=10)

    code, result = run_main(args(root, BOB, wait=0.3, poll=0.05), capsys)

    assert code == 1
    assert 0.3 <= result["waited"] < 2
    assert "wait=0.3" in result["msg"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"service": "Shop!"}, "service"),
        ({"wait": -1}, "wait"),
        ({"ttl": 0}, "ttl"),
        ({"poll": 0}, "poll"),
        ({"owner": {"run_id": " "}}, "owner.run_id"),
    ],
    ids=["bad-service", "negative-wait", "zero-ttl", "zero-poll", "blank-run-id"],
)
def test_main_invalid_input_fails(root, capsys, extra, field):
    code, result = run_main({**args(root, ALICE), **extra}, capsys)
    assert code == 1
    assert result["field"] == field
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
    assert not root.exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"owner": {"by": "alice"}},
        {"owner": {"run_id": "r", "colour": "blue"}},
        {"state": "held"},
    ],
    ids=["owner-without-run-id", "owner-unknown-key", "bad-state"],
)
def test_main_argument_spec_rejects(root, capsys, bad):
    code, result = run_main({**args(root, ALICE), **bad}, capsys)
    assert code == 1
    assert result["failed"] is True
    assert not root.exists()


def test_main_write_failure_is_retryable(root, capsys, monkeypatch):
    root.mkdir()

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", no_space)
    code, result = run_main(args(root, ALICE), capsys)
    assert code == 1
    assert result["retryable"] is True
    assert result["path"] == str(root / ".lock")
    assert "No space left on device" in result["msg"]
    assert list(root.iterdir()) == []


# --------------------------------------------------------------------------- check mode


@pytest.mark.parametrize(
    ("setup", "owner", "state", "outcome", "changed"),
    [
        (None, ALICE, "acquired", "acquired", True),
        ("alice", BOB, "acquired", "busy", False),
        ("alice-stale", BOB, "acquired", "took_over", True),
        ("alice", ALICE, "released", "released", True),
    ],
    ids=["would-acquire", "would-fail", "would-take-over", "would-release"],
)
def test_main_check_mode_writes_nothing(root, capsys, setup, owner, state, outcome, changed):
    if setup is not None:
        hold(root, ALICE, age=5000 if setup.endswith("stale") else 10)
    before = sorted(p.name for p in root.iterdir()) if root.exists() else None

    code, result = run_main(args(root, owner, state=state), capsys, check_mode=True)

    assert code == 0
    assert (result["outcome"], result["changed"]) == (outcome, changed)
    after = sorted(p.name for p in root.iterdir()) if root.exists() else None
    assert after == before
