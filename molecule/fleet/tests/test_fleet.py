"""A fleet of four: canary and batches, then a rollout stopped by one host's failed gate.

The module-scoped fixtures run each rollout once, on the whole fleet; every test then
checks one machine (testinfra runs the tests once per machine).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

HOSTS = ["mfleet-1", "mfleet-2", "mfleet-3", "mfleet-4"]


def _release_of(host, tag: str) -> str:
    sha = lib.git_sha(tag)
    for name in host.file("/srv/hello/releases").listdir():
        if lib.manifest(host, name)["git_sha"] == sha:
            return name
    raise AssertionError(f"no release of {tag} on {host.backend.get_hostname()}")


def _switch_batches(stdout: str) -> list[list[str]]:
    """Hosts that ran the switch, batch by batch, from the run's output."""
    batches = []
    for block in re.split(r"\nTASK \[", stdout):
        if block.startswith("flipback : Start, gate, flip, gate, retire"):
            hosts = re.findall(r"^changed: \[([\w-]+)\]", block, flags=re.M)
            if hosts:
                batches.append(sorted(hosts))
    return batches


@pytest.fixture(scope="module")
def v2_rollout():
    run = lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2", "-e", "batch=2")
    return run


@pytest.fixture(scope="module")
def picky_rollout(v2_rollout):
    # One host per batch after the canary: mfleet-3 fails its gate in batch 3.
    return lib.run_fleet_playbook("deploy.yml", "-e", "ref=picky", "-e", "batch=1")


def test_v2_went_out_as_a_canary_then_batches_of_two(host, v2_rollout):
    out = lib.output(v2_rollout)
    assert v2_rollout.returncode == 0, out[-3000:]
    assert _switch_batches(v2_rollout.stdout) == [
        ["mfleet-1"],
        ["mfleet-2", "mfleet-3"],
        ["mfleet-4"],
    ], v2_rollout.stdout[-4000:]
    v2 = _release_of(host, "v2")
    assert f"{host.backend.get_hostname()} hello: switched to {v2}" in out
    assert lib.current_id(host) == v2
    assert lib.public_health(host)["release"] == v2


def test_a_failed_gate_on_the_third_host_stops_the_rollout(host, picky_rollout):
    out = lib.output(picky_rollout)
    assert picky_rollout.returncode != 0, out[-3000:]
    assert "the rollout stopped" in out, out[-3000:]
    # mfleet-1 (canary) and mfleet-2 had switched; mfleet-3 failed; mfleet-4 never switched.
    assert _switch_batches(picky_rollout.stdout) == [["mfleet-1"], ["mfleet-2"]], out[-4000:]
    assert "deploy of hello failed on mfleet-3: release" in out
    assert '"Gate 1' in out or "Gate 1" in out
    v2, picky = _release_of(host, "v2"), _release_of(host, "picky")
    name = host.backend.get_hostname()
    says = {
        "mfleet-1": f"mfleet-1 hello: restored to {v2} (had switched to {picky})",
        "mfleet-2": f"mfleet-2 hello: restored to {v2} (had switched to {picky})",
        "mfleet-3": "deploy of hello failed on mfleet-3",
        "mfleet-4": f"mfleet-4 hello: not switched (the rollout stopped); stays on {v2}",
    }
    assert says[name] in out, out[-4000:]


def test_every_host_ends_on_the_previous_release_and_answers(host, picky_rollout):
    v2, picky = _release_of(host, "v2"), _release_of(host, "picky")
    assert lib.current_id(host) == v2
    assert lib.public_health(host) == {"ok": True, "service": "hello", "release": v2}
    assert host.service(f"hello@{v2}").is_enabled
    assert not host.service(f"hello@{picky}").is_enabled
    assert not host.file("/run/lock/flipback/hello/.lock").exists


def test_what_each_host_recorded_about_the_stopped_release(host, picky_rollout):
    picky = _release_of(host, "picky")
    events = [e["event"] for e in lib.history(host) if e["release"] == picky]
    expected = {
        # Switched, then restored: the release rolled away from is rolled_back.
        "mfleet-1": ["staged", "active", "rolled_back"],
        "mfleet-2": ["staged", "active", "rolled_back"],
        # Its own gate failed: the switch undid itself, nothing went live.
        "mfleet-3": ["staged", "failed"],
        # Staged, never switched.
        "mfleet-4": ["staged"],
    }[host.backend.get_hostname()]
    assert events == expected
    # No instance of the stopped release is left running anywhere (a short drain aside).
    assert lib.stops_within(host, f"hello@{picky}.service")


def test_status_and_history_after_the_stopped_rollout(host, picky_rollout, tmp_path):
    v2 = _release_of(host, "v2")
    run = lib.run_playbook(host, "status.yml", "-e", f"status_json={tmp_path / 's.json'}")
    assert run.returncode == 0, lib.output(run)[-2000:]
    assert v2 in run.stdout
