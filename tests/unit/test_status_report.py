"""Unit tests of library/status_report.py: main() with host results as the playbooks pass them."""

from __future__ import annotations

import json

import pytest
import status_report
from fakes import run_module

A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"

STATUS = {
    "changed": False,
    "invocation": {"module_args": {"services": []}},
    "services": [
        {
            "name": "hello",
            "current": B,
            "previous_good": A,
            "releases": [
                {"id": A, "status": "good", "age_seconds": 7200},
                {"id": B, "status": "active", "age_seconds": 60},
            ],
            "instances": [{"release": B, "active_state": "active", "sub_state": "running"}],
            "health": {"ok": True, "status": 200, "release": B, "latency_ms": 3.0},
            "lock": None,
            "error": None,
            "config": {"app": "app:app", "workers": 2, "env_names": ["DEBUG", "TOKEN"]},
            "config_changes": ["workers 1 -> 2", "+DEBUG"],
        }
    ],
}
HISTORY = {
    "services": [
        {
            "name": "hello",
            "events": [
                {"at": "2026-11-29T12:00:00Z", "release": A, "event": "active", "by": "alice"},
                {"at": "2026-11-29T12:05:00Z", "release": B, "event": "active", "by": "bob"},
            ],
        }
    ]
}


def run_main(args, capsys, check_mode=False):
    code, result, _out = run_module(status_report, args, capsys, check_mode=check_mode)
    return code, result


def test_main_renders_the_status_table(capsys):
    code, result = run_main({"hosts": {"sandbox-1": STATUS}}, capsys)

    assert code == 0
    assert (result["changed"], result["json_path"]) == (False, None)
    assert result["rows"] == [
        {
            "service": "hello",
            "host": "sandbox-1",
            "current": B,
            "age": "1m",
            "previous_good": A,
            "instance": "active/running",
            "processes": "-",
            "health": "ok 3 ms",
            "releases": "2 (1 active, 1 good)",
            "config": "2w 2 env; changed: workers 1 -> 2, +DEBUG",
            "lock": "-",
        }
    ]
    assert result["table"].splitlines()[2].split() == [
        "hello",
        "sandbox-1",
        B,
        "1m",
        A,
        "active/running",
        "ok",
        "3",
        "ms",
        "2",
        "(1",
        "active,",
        "1",
        "good)",
        "2w",
        "2",
        "env;",
        "changed:",
        "workers",
        "1",
        "->",
        "2,",
        "+DEBUG",
        "-",
    ]
    assert result["table"].splitlines()[0].split()[-2:] == ["CONFIG", "LOCK"]


@pytest.mark.parametrize(
    ("last", "releases"), [pytest.param(1, [B], id="last-1"), pytest.param(20, [A, B], id="all")]
)
def test_main_renders_the_history_table(capsys, last, releases):
    code, result = run_main({"kind": "history", "hosts": {"h": HISTORY}, "last": last}, capsys)

    assert code == 0
    assert result["changed"] is False
    assert [row["release"] for row in result["rows"]] == releases
    assert result["table"].splitlines()[0].split()[:3] == ["AT", "HOST", "SERVICE"]


@pytest.mark.parametrize(
    ("kind", "hosts"), [pytest.param("status", STATUS, id="status"), ("history", HISTORY)]
)
def test_main_writes_json_once(tmp_path, capsys, kind, hosts):
    path = tmp_path / "report.json"
    args = {"kind": kind, "hosts": {"sandbox-1": hosts}, "json_path": str(path)}

    code, result = run_main(args, capsys)
    assert (code, result["changed"], result["json_path"]) == (0, True, str(path))
    written = json.loads(path.read_text())
    assert written["kind"] == kind
    assert written["hosts"]["sandbox-1"]["services"] == hosts["services"]
    assert "invocation" not in written["hosts"]["sandbox-1"]

    code, result = run_main(args, capsys)
    assert (code, result["changed"]) == (0, False)


def test_main_writes_nothing_in_check_mode(tmp_path, capsys):
    path = tmp_path / "status.json"
    code, result = run_main(
        {"hosts": {"sandbox-1": STATUS}, "json_path": str(path)}, capsys, check_mode=True
    )
    assert (code, result["changed"]) == (0, False)
    assert result["table"]
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        pytest.param({"kind": "history", "hosts": {}, "last": 0}, "last", id="last-zero"),
        pytest.param({"hosts": {}, "json_path": "/nonexistent/dir/s.json"}, "json_path", id="dir"),
    ],
)
def test_main_fails_naming_the_field(capsys, args, field):
    code, result = run_main(args, capsys)
    assert code == 1
    assert (result["field"], result["retryable"]) == (field, False)
    assert "elapsed" in result


def test_main_argument_spec(capsys):
    code, result = run_main({"kind": "fleet", "hosts": {}}, capsys)
    assert code == 1
    assert "value of kind must be one of: status, history" in result["msg"]
