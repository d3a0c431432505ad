"""After the rollback tests: reboot the machine and see what a real host does on its own.

Runs after test_rollback.py (file order), once per machine, and reboots only that
machine, through the playbook a user runs (playbooks/sandbox.yml -e
sandbox_state=restarted). With no deploy, the current release must answer on the
public port, the warm standby must stay stopped (it is disabled, so a boot does not
start it), and history and shared data must be exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

SCENARIO = yaml.safe_load((Path(__file__).resolve().parents[1] / "molecule.yml").read_text())
PLATFORMS = SCENARIO["platforms"]
DATA_FILE = f"{lib.ROOT}/shared/reboot-proof.txt"
# Generous: the machine shuts down (about 2 s) and boots (a few seconds) before the
# playbook returns; this only bounds the wait for the service behind nginx.
ANSWER_DEADLINE = 60
# As flipback_testlib runs playbooks: no colour codes, no folding inside messages.
PLAYBOOK_ENV = {
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
}


def _addresses() -> dict[str, str]:
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
    return {i["instance"]: i["address"] for i in yaml.safe_load(config.read_text())}


def _other_host(name: str):
    others = [p["name"] for p in PLATFORMS if p["name"] != name]
    return testinfra.get_host(
        f"ansible://{others[0]}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def _boot_id(host) -> str:
    out = host.run("cat /proc/sys/kernel/random/boot_id")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def _active_instances(host) -> set[str]:
    out = host.run("systemctl list-units 'hello@*.service' --state=active --plain --no-legend")
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _public_answer(address: str) -> tuple[int, dict | str]:
    """(HTTP status, JSON body) of /health through nginx on the public port, from the
    controller; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{address}:{lib.PORT}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[-300:]
    except (OSError, ValueError) as exc:
        return 0, repr(exc)


def _reboot_playbook(machine: str) -> subprocess.CompletedProcess[str]:
    """playbooks/sandbox.yml as a user runs it, for this scenario's fleet and one machine."""
    first = PLATFORMS[0]
    return subprocess.run(
        [
            "ansible-playbook",
            # The play targets the controller alone: no inventory but localhost's.
            "-i",
            "localhost,",
            str(lib.PROJECT / "playbooks" / "sandbox.yml"),
            "-e",
            f"sandbox_name={first['sandbox_fleet']}",
            "-e",
            f"sandbox_subnet={first['sandbox_subnet']}",
            "-e",
            f"sandbox_size={len(PLATFORMS)}",
            "-e",
            "sandbox_state=restarted",
            "-e",
            f"sandbox_machines={machine}",
            "-e",
            "sandbox_inventory_path=",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **PLAYBOOK_ENV},
        timeout=600,
    )


def _snapshot(host) -> dict:
    history = host.file(f"{lib.ROOT}/history.jsonl").content
    return {
        "boot_id": _boot_id(host),
        "current": lib.current_id(host),
        "history": history,
        "history_sha256": hashlib.sha256(history).hexdigest(),
        "data": host.file(DATA_FILE).content if host.file(DATA_FILE).exists else None,
        "releases": sorted(host.file(f"{lib.ROOT}/releases").listdir()),
        "active": _active_instances(host),
    }


@pytest.fixture(scope="module")
def reboot(host):
    """Write a data file, note everything, reboot this machine, wait until the service
    answers again (or the deadline passes), note everything again."""
    name = host.backend.get_hostname()
    address = _addresses()[name]
    other = _other_host(name)
    token = f"written before the reboot of {name} at {time.time():.6f}"
    wrote = host.run(
        f"printf %s {shlex.quote(token)} > {DATA_FILE}.tmp && chown hello:hello "
        f"{DATA_FILE}.tmp && mv {DATA_FILE}.tmp {DATA_FILE} && sync"
    )
    assert wrote.rc == 0, wrote.stderr
    before = _snapshot(host)
    other_boot = _boot_id(other)

    started = time.monotonic()
    run = _reboot_playbook(name)
    playbook_seconds = time.monotonic() - started

    deadline = time.monotonic() + ANSWER_DEADLINE
    answer = _public_answer(address)
    while answer[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = _public_answer(address)
    answered_after = time.monotonic() - started
    after = _snapshot(host)
    return {
        "name": name,
        "token": token,
        "run": run,
        "before": before,
        "after": after,
        "answer": answer,
        "other_boot": (other_boot, _boot_id(other)),
        "seconds": {"playbook": playbook_seconds, "answered": answered_after},
    }


def test_reboot_went_through_the_playbook(reboot):
    run = reboot["run"]
    out = lib.output(run)
    assert run.returncode == 0, out[-3000:]
    assert f"{reboot['name']} rebooted with its state: a reboot was asked for" in out, out[-2000:]
    assert "REBUILT" not in out, out[-2000:]
    # The sandbox warns when it had to kill a machine or rebuilt one unasked.
    assert "[WARNING]" not in out, out[-2000:]
    timings = re.search(r"stopping took ([0-9.]+) s, booting .* ran ([0-9.]+) s", out)
    assert timings, out[-2000:]


def test_the_machine_went_down_and_only_that_one(reboot):
    assert reboot["after"]["boot_id"] != reboot["before"]["boot_id"], (
        f"boot id of {reboot['name']} unchanged ({reboot['after']['boot_id']}): "
        "expected a new boot after sandbox_state=restarted"
    )
    before, after = reboot["other_boot"]
    assert after == before, "the other machine was rebooted too; expected only this one"


def test_the_current_release_answers_without_a_deploy(reboot):
    status, body = reboot["answer"]
    seconds = reboot["seconds"]
    assert status == 200, (
        f"{reboot['name']}: /health through nginx gave {status} ({body}) "
        f"{seconds['answered']:.1f} s after the reboot began; expected 200"
    )
    assert body["release"] == reboot["before"]["current"], body
    assert reboot["after"]["current"] == reboot["before"]["current"]


def test_the_standby_does_not_start_at_boot(host, reboot):
    current = f"hello@{reboot['before']['current']}.service"
    standbys = reboot["before"]["active"] - {current}
    # The rehearsal ended with a roll forward: the release it replaced stays running
    # as a warm standby until a reboot.
    assert standbys, (
        f"no warm standby ran before the reboot (active: {sorted(reboot['before']['active'])});"
        " expected the release the rehearsal's roll forward replaced"
    )
    assert reboot["after"]["active"] == {current}, (
        f"active after the reboot: {sorted(reboot['after']['active'])}; expected only {current}"
    )
    for unit in standbys:
        state = host.run(f"systemctl is-active {unit}").stdout.strip()
        assert state == "inactive", f"{unit} is {state} after the reboot; expected inactive"
        enabled = host.run(f"systemctl is-enabled {unit}").stdout.strip()
        assert enabled == "disabled", f"{unit} is {enabled}; expected disabled"
    assert host.run(f"systemctl is-enabled {current}").stdout.strip() == "enabled"


def test_history_and_data_are_intact(reboot):
    before, after = reboot["before"], reboot["after"]
    assert after["history_sha256"] == before["history_sha256"], (
        "history.jsonl changed across the reboot; expected it byte-identical (no deploy ran)"
    )
    assert after["history"] == before["history"]
    assert after["releases"] == before["releases"]
    assert after["data"] == reboot["token"].encode()


def test_the_machine_booted_clean(host, reboot):
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.run("systemctl --failed --plain --no-legend").stdout.strip()
    assert state == "running", f"system state {state}; failed units: {failed}"
    assert host.service("nginx").is_running
