"""A release's commands, on two machines: converge deployed v1 with them.

Each fixture runs one deploy on both machines and reads what the tests need of every
machine right after it (pytest groups the tests by machine, so the second machine's
tests run after every fixture).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

HOSTS = ["mhooks-1", "mhooks-2"]
SHARED = "/srv/hello/shared"


def _machine(name: str):
    return testinfra.get_host(
        f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def _release_of(machine, tag: str) -> str | None:
    sha = lib.git_sha(tag)
    found = [
        name
        for name in machine.file("/srv/hello/releases").listdir()
        if lib.manifest(machine, name)["git_sha"] == sha
        and lib.manifest(machine, name).get("status") != "failed"
    ]
    return sorted(found)[-1] if found else None


def _read(machine, path: str) -> str | None:
    file = machine.file(path)
    return file.content_string if file.exists else None


def _state(run) -> dict:
    """Each machine as the run left it."""
    seen = {"run": run, "out": lib.output(run)}
    for name in HOSTS:
        machine = _machine(name)
        current = lib.current_id(machine)
        seen[name] = {
            "current": current,
            "migrations": _read(machine, f"{SHARED}/migrations.log"),
            "after": _read(machine, f"{SHARED}/after.txt"),
            "history": lib.history(machine),
            "locked": machine.file("/run/lock/flipback/hello/.lock").exists,
            "active": machine.run(
                "systemctl list-units 'hello@*' --state=active --plain --no-legend"
            ).stdout,
            "manifests": {
                r: lib.manifest(machine, r) for r in machine.file("/srv/hello/releases").listdir()
            },
        }
    return seen


@pytest.fixture(scope="module")
def converged():
    return _state(lib.run_fleet_playbook("status.yml"))


@pytest.fixture(scope="module")
def dry_run(converged):
    return _state(lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2", "--check"))


@pytest.fixture(scope="module")
def failed_migration(dry_run):
    return _state(
        lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2", "-e", "hello_fail_migration=1")
    )


@pytest.fixture(scope="module")
def v2(failed_migration):
    return _state(lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2"))


@pytest.fixture(scope="module")
def failed_after(v2):
    return _state(
        lib.run_fleet_playbook(
            "deploy.yml", "-e", "ref=v2", "-e", "hello_fail_after=1", "-e", "batch=1"
        )
    )


def test_the_migration_ran_once_on_the_first_host(host, converged):
    name = host.backend.get_hostname()
    v1 = converged[name]["current"]
    migrations = converged[name]["migrations"]
    if name == "mhooks-1":
        assert migrations == f"{v1} {name}\n"
    else:
        assert migrations is None


def test_before_switch_ran_on_every_host_as_the_release(host, converged):
    v1 = converged[host.backend.get_hostname()]["current"]
    lines = host.file(f"{SHARED}/before-{v1}.txt").content_string.splitlines()
    assert lines == ["hello", f"/srv/hello/releases/{v1}", f"/srv/hello/releases/{v1}/venv"]


def test_after_switch_ran_after_the_switch(host, converged):
    name = host.backend.get_hostname()
    assert converged[name]["after"] == f"{converged[name]['current']}\n"


def test_the_commands_are_recorded_in_manifest_and_history(host, converged):
    name = host.backend.get_hostname()
    v1 = converged[name]["current"]
    ran = converged[name]["manifests"][v1]["commands_run"]
    points = [r["point"] for r in ran]
    expected = ["before_switch", "after_switch"]
    if name == "mhooks-1":
        expected = ["before_switch_once", *expected]
    assert points == expected
    assert all(r["rc"] == 0 for r in ran)
    notes = [
        json.loads(e["note"])["point"]
        for e in converged[name]["history"]
        if e["event"] == "command" and e["release"] == v1
    ]
    assert notes == expected


def test_a_dry_run_says_which_commands_would_run_and_runs_none(host, converged, dry_run):
    name = host.backend.get_hostname()
    assert dry_run["run"].returncode == 0, dry_run["out"][-3000:]
    assert "would run" in dry_run["out"]
    assert dry_run[name]["migrations"] == converged[name]["migrations"]
    assert dry_run[name]["current"] == converged[name]["current"]


def test_a_failing_migration_stops_the_rollout_before_any_host_switches(
    host, converged, failed_migration
):
    name = host.backend.get_hostname()
    out = failed_migration["out"]
    assert failed_migration["run"].returncode != 0, out[-3000:]
    assert "deploy of hello failed on mhooks-1" in out, out[-3000:]
    assert "before_switch_once command" in out and "exited 7" in out, out[-3000:]
    assert "migration 0042 failed: column exists" in out, out[-3000:]
    assert "Start, gate, flip" not in failed_migration["run"].stdout.split("PLAY RECAP")[0] or (
        "changed: [mhooks" not in out.split("Start, gate, flip")[1][:200]
    )
    state = failed_migration[name]
    assert state["current"] == converged[name]["current"]
    assert state["migrations"] == converged[name]["migrations"]
    assert not state["locked"]
    # The release that could not migrate is failed on both: never a rollback target.
    failed = [e for e in state["history"] if e["event"] == "failed" and e["run"] is not None]
    assert failed, state["history"][-4:]
    assert converged[name]["current"] in state["active"]


def test_the_next_deploy_migrates_and_switches(host, converged, v2):
    name = host.backend.get_hostname()
    assert v2["run"].returncode == 0, v2["out"][-3000:]
    current = v2[name]["current"]
    assert current != converged[name]["current"]
    assert v2[name]["after"] == f"{current}\n"
    if name == "mhooks-1":
        assert v2[name]["migrations"].splitlines()[-1] == f"{current} {name}"
        assert len(v2[name]["migrations"].splitlines()) == 2


def test_a_failing_after_switch_command_puts_the_host_back(host, v2, failed_after):
    name = host.backend.get_hostname()
    out = failed_after["out"]
    assert failed_after["run"].returncode != 0, out[-3000:]
    assert "cache warm-up refused" in out, out[-3000:]
    assert "after_switch command" in out and "exited 3" in out, out[-3000:]
    if name == "mhooks-1":
        assert f"mhooks-1 hello: restored to {v2[name]['current']}" in out, out[-3000:]
    else:
        assert "mhooks-2 hello: not switched (the rollout stopped)" in out, out[-3000:]
    assert failed_after[name]["current"] == v2[name]["current"]
    assert not failed_after[name]["locked"]
    answered = lib.public_health(host)
    assert answered["release"] == v2[name]["current"]
