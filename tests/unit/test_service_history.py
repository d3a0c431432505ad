"""Unit tests of library/service_history.py: main() end to end on history logs under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import service_history
from ansible.module_utils.flipback_release import append_history, history_event
from fakes import run_module

A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"


def log(root: Path, *events: tuple[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for second, (release_id, event) in enumerate(events):
        append_history(
            str(root),
            history_event(release_id, event, by="alice", note=f"n{second}", at=1e9 + second),
        )


def run_main(args, capsys, check_mode=False):
    code, result, _out = run_module(service_history, args, capsys, check_mode=check_mode)
    return code, result


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        pytest.param(2, [(A, "active"), (B, "staged")], id="last-2"),
        pytest.param(20, [(A, "staged"), (A, "active"), (B, "staged")], id="all"),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_main_returns_the_last_events(tmp_path, capsys, last, expected, check_mode):
    log(tmp_path / "hello", (A, "staged"), (A, "active"), (B, "staged"))

    code, result = run_main(
        {"services": ["hello", "greeter"], "last": last, "root_parent": str(tmp_path)},
        capsys,
        check_mode,
    )

    assert code == 0
    assert result["changed"] is False
    hello, greeter = result["services"]
    assert [(e["release"], e["event"]) for e in hello["events"]] == expected
    assert set(hello["events"][-1]) == {"at", "release", "event", "by", "from", "note"}
    assert hello["total"] == 3
    assert greeter == {"name": "greeter", "events": [], "total": 0, "error": None}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        pytest.param({"services": ["hello"], "last": 0}, "last", id="last-zero"),
        pytest.param({"services": ["../etc"]}, "service", id="bad-name"),
    ],
)
def test_main_fails_naming_the_field(tmp_path, capsys, args, field):
    code, result = run_main({"root_parent": str(tmp_path), **args}, capsys)
    assert code == 1
    assert (result["field"], result["retryable"]) == (field, False)
    assert "elapsed" in result
