"""Unit tests of library/service_status.py: main() end to end on a release tree under
tmp_path, with a fake `systemctl` first on PATH and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import service_status
import yaml
from fakes import ReleaseTree, Reply, ScriptedServer, run_module

A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
HEALTH = {"path": "/health", "expect_status": [200], "expect_json": {"ok": True}}

# Prints one `systemctl show` block per unit (B's instance runs) and logs its arguments.
FAKE_SYSTEMCTL = f"""#!{sys.executable}
import sys
with open(sys.argv[0] + ".calls", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
units = sys.argv[sys.argv.index("--") + 1:]
for unit in units:
    running = "{B}" in unit
    print(f"Id={{unit}}")
    print("ActiveState=" + ("active" if running else "inactive"))
    print("SubState=" + ("running" if running else "dead"))
    print("UnitFileState=" + ("enabled" if running else ""))
    print()
"""


def deploy(root: Path, service: str, *release_ids: str) -> None:
    """Each release staged then activated in turn, the last one current."""
    manifest = {"health": HEALTH, "status": "staged"}
    ReleaseTree(root, service, manifest=manifest).deployed(*release_ids)


@pytest.fixture
def port():
    server = ScriptedServer([Reply(200, json.dumps({"ok": True, "release": B}))])
    yield server.port
    server.stop()


@pytest.fixture
def systemctl(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return script


def run_main(args, capsys, check_mode=False):
    code, result, _out = run_module(service_status, args, capsys, check_mode=check_mode)
    return code, result


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_main_reports_every_service_in_one_call(tmp_path, capsys, systemctl, port, check_mode):
    deploy(tmp_path / "srv" / "hello", "hello", A, B)
    services = [
        {"name": "hello", "port": port, "health": HEALTH, "source": "/repo", "env_names": []},
        {"name": "greeter", "port": 1, "health": HEALTH},
    ]

    code, result = run_main(
        {
            "services": services,
            "root_parent": str(tmp_path / "srv"),
            "lock_dir": str(tmp_path / "locks"),
            "probe_timeout": 1,
        },
        capsys,
        check_mode,
    )

    assert code == 0
    assert result["changed"] is False
    assert isinstance(result["elapsed"], float)
    hello, greeter = result["services"]
    assert (hello["current"], hello["previous_good"], hello["error"]) == (B, A, None)
    assert [(r["id"], r["status"]) for r in hello["releases"]] == [(A, "good"), (B, "active")]
    assert [(i["release"], i["active_state"], i["sub_state"]) for i in hello["instances"]] == [
        (A, "inactive", "dead"),
        (B, "active", "running"),
    ]
    assert (hello["health"]["ok"], hello["health"]["release"]) == (True, B)
    assert hello["lock"] is None
    assert (greeter["current"], greeter["releases"], greeter["health"]) == (None, [], None)
    assert Path(f"{systemctl}.calls").read_text().splitlines() == [
        "show --no-pager --property=Id,ActiveState,SubState,UnitFileState -- "
        f"hello@{A}.service hello@{B}.service"
    ]


def test_main_defaults(monkeypatch, capsys):
    seen = {}

    def spy(services, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(service_status, "host_status", spy)
    code, result = run_main({"services": []}, capsys)
    assert code == 0
    assert result["services"] == []
    assert (seen["root_parent"], seen["lock_dir"], seen["probe_timeout"]) == (
        "/srv",
        "/run/lock/flipback",
        3.0,
    )


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        pytest.param(
            {"services": [{"name": "Hello", "port": 8000}]},
            "services[0].name",
            "services[0].name: got 'Hello'",
            id="bad-name",
        ),
        pytest.param(
            {"services": [{"name": "hello", "port": 0}]},
            "services[0].port",
            "services[0].port: got 0, expected a TCP port",
            id="bad-port",
        ),
        pytest.param(
            {"services": [], "probe_timeout": 0},
            "probe_timeout",
            "probe_timeout: got 0.0",
            id="bad-timeout",
        ),
    ],
)
def test_main_fails_naming_the_field(tmp_path, capsys, args, field, message):
    code, result = run_main({"root_parent": str(tmp_path), **args}, capsys)
    assert code == 1
    assert result["failed"] is True
    assert result["msg"].startswith(message)
    assert (result["field"], result["retryable"]) == (field, False)
    assert "elapsed" in result


def test_main_argument_spec(capsys):
    code, result = run_main({"services": "hello"}, capsys)
    assert code == 1
    assert "services" in result["msg"]


def test_every_key_of_a_service_is_documented(tmp_path, capsys, systemctl):
    deploy(tmp_path / "srv" / "hello", "hello", A, B)
    documented = yaml.safe_load(service_status.RETURN)["services"]["contains"]

    code, result = run_main(
        {
            "services": [{"name": "hello", "port": 1, "health": HEALTH}],
            "root_parent": str(tmp_path / "srv"),
            "lock_dir": str(tmp_path / "locks"),
            "probe_timeout": 1,
        },
        capsys,
    )

    assert code == 0
    [hello] = result["services"]
    assert set(hello) <= set(documented)
