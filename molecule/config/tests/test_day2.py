"""Day-2 commands on real machines: exec.yml runs a command in the live release's
environment (its user, directory, venv, env file and sandbox) and reports a failing
command's exit code; logs.yml merges the instances' journals of both machines.

The module fixture runs every playbook once on the fleet; each test then checks one
machine (or the runs). Env values must never show in any output.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

# The env values of hello's releases in this scenario (molecule.yml and test_config.py):
# none of them may appear in any output.
SECRETS = ("Grüße", "café ☃", "rotated: ünïcode")
# Proves the command's environment without printing a value: the env file was read
# (HELLO_GREETING is set), the code is read-only, shared/ is writable.
CMD = (
    'echo "release=$FLIPBACK_RELEASE"; echo "user=$(id -un)"; echo "cwd=$(pwd)"; '
    "python -c \"import sys; print('prefix=' + sys.prefix)\"; "
    'test -n "$HELLO_GREETING" && echo greeting=set; '
    "touch ../../shared/day2-x && echo shared=writable; "
    "touch ./day2-nope 2>/dev/null && echo code=WRITABLE || echo code=read-only; "
    "echo to-stderr >&2; "
    # The shell gets $2 as typed (systemd expands $NAME in a command line itself).
    'set -- a b; echo "second=$2"'
)


def _exec(*extra: str):
    return lib.run_fleet_playbook("exec.yml", "-e", "service=hello", *extra)


@pytest.fixture(scope="module")
def day2(tmp_path_factory):
    logs_json = tmp_path_factory.mktemp("day2") / "logs.json"
    runs = {
        "exec all": _exec("-e", json.dumps({"cmd": CMD, "hosts": "all"})),
        "exec fails": _exec("-e", json.dumps({"cmd": "echo before-exit; exit 3"})),
        "exec empty": _exec("-e", "cmd="),
        "exec unknown": lib.run_fleet_playbook("exec.yml", "-e", "service=nope", "-e", "cmd=id"),
        "exec check": _exec("--check", "-e", "cmd=touch ../../shared/day2-check"),
        "logs": lib.run_fleet_playbook(
            "logs.yml",
            "-e",
            "service=hello",
            "-e",
            "since=3h",
            "-e",
            "lines=2000",
            "-e",
            f"logs_json={logs_json}",
        ),
        "logs bad": lib.run_fleet_playbook(
            "logs.yml", "-e", "service=hello", "-e", json.dumps({"since": "1h; id"})
        ),
    }
    return {"runs": runs, "logs_json": logs_json}


def _out(run) -> str:
    return run.stdout + "\n" + run.stderr


def test_exec_runs_in_the_live_release_as_its_user_in_its_venv(host, day2):
    run = day2["runs"]["exec all"]
    out = _out(run)
    assert run.returncode == 0, out[-3000:]
    name, release = host.backend.get_hostname(), lib.current_id(host)
    home = f"{lib.ROOT}/releases/{release}"
    for line in (
        f"release={release}",
        "user=hello",
        f"cwd={home}",
        f"prefix={home}/venv",
        "greeting=set",
        "shared=writable",
        "code=read-only",
        "second=b",
    ):
        assert f"{name} {release} | {line}" in out, (line, out[-3000:])
    assert f"{name} {release} ! to-stderr" in out, out[-3000:]
    assert f"{name} {release} = exit 0" in out, out[-3000:]
    shared = host.file(f"{lib.ROOT}/shared/day2-x")
    assert shared.exists and shared.user == "hello"
    assert not host.file(f"{home}/day2-nope").exists


def test_exec_leaves_no_unit_behind(host, day2):
    units = host.run("systemctl list-units --all --no-legend 'flipback-exec-*'")
    assert units.stdout.strip() == "", units.stdout


def test_a_failing_command_fails_the_run_with_its_exit_code_on_the_first_host(host, day2):
    run = day2["runs"]["exec fails"]
    out = _out(run)
    assert run.returncode != 0, out[-3000:]
    release = lib.current_id(host)
    if host.backend.get_hostname() == "mconfig-1":
        assert f"mconfig-1 {release} | before-exit" in out, out[-3000:]
        assert f"mconfig-1 {release} = FAILED: the command exited with code 3" in out
        assert "exit code 3" in lib.output(run), out[-3000:]
    else:
        # By default the command runs on the first host of the play only.
        assert not re.search(r"mconfig-2 \S+ [|!=] ", out), out[-3000:]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("exec empty", "cmd: got '', expected a non-empty shell command"),
        ("exec unknown", "service: got 'nope', expected one of the defined services"),
        ("logs bad", "since: got '1h; id', expected a journalctl time"),
    ],
)
def test_bad_input_is_refused_before_any_host_is_asked(day2, step, expected):
    run = day2["runs"][step]
    out = lib.output(run)
    assert run.returncode != 0, out[-3000:]
    assert expected in out, out[-3000:]
    assert "invalid input" in out
    # The refusal comes from the controller: no task that asks a machine was reached.
    assert "TASK [Find the live release" not in run.stdout, out[-3000:]
    assert "TASK [Read the journal" not in run.stdout, out[-3000:]


def test_exec_under_check_runs_nothing(host, day2):
    run = day2["runs"]["exec check"]
    out = _out(run)
    assert run.returncode == 0, out[-3000:]
    assert "not run (check mode): would run as hello" in out, out[-3000:]
    assert not host.file(f"{lib.ROOT}/shared/day2-check").exists


def test_logs_show_the_live_release_of_every_host_merged_by_time(host, day2):
    run = day2["runs"]["logs"]
    out = _out(run)
    assert run.returncode == 0, out[-3000:]
    name, release = host.backend.get_hostname(), lib.current_id(host)
    assert re.search(rf"Z {name} {release} \| ", out), out[-3000:]
    data = json.loads(day2["logs_json"].read_text())
    assert data["services"] == ["hello"]
    assert data["request"]["since"] == "-3h"
    assert set(data["hosts"]) == {"mconfig-1", "mconfig-2"}
    entries = data["entries"]
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    mine = [e for e in entries if e["host"] == name]
    assert any(e["release"] == release for e in mine), mine[-5:]
    assert all(e["unit"] is None or e["unit"].startswith("hello@") for e in mine)
    # uvicorn's own lines of the live instance are there.
    assert any(
        e["release"] == release and "Application startup complete" in e["message"] for e in mine
    ), [e["message"] for e in mine][-20:]


def test_logs_of_one_release_with_grep(host, day2, tmp_path):
    release = lib.current_id(host)
    path = tmp_path / "one.json"
    run = lib.run_playbook(
        host,
        "logs.yml",
        "--check",
        "-e",
        "service=hello",
        "-e",
        f"release={release}",
        # As JSON: `-e grep=startup complete` would split the value at its space.
        "-e",
        json.dumps({"grep": "startup complete"}),
        "-e",
        f"logs_json={path}",
    )
    assert run.returncode == 0, lib.output(run)[-3000:]
    entries = json.loads(path.read_text())["entries"]
    assert entries, lib.output(run)[-3000:]
    assert {e["release"] for e in entries} == {release}
    assert all("startup complete" in e["message"].lower() for e in entries), entries


def test_no_env_value_shows_in_any_output(day2):
    # As typed, and as JSON writes it (the results and logs_json may escape non-ASCII).
    forms = [f for secret in SECRETS for f in (secret, json.dumps(secret)[1:-1])]
    for step, run in day2["runs"].items():
        out = _out(run)
        for form in forms:
            assert form not in out, step
    text = day2["logs_json"].read_text()
    for form in forms:
        assert form not in text
