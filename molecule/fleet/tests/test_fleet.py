"""A fleet of four: canary and batches, then a rollout stopped by one host's failed gate.

The module-scoped fixtures run each rollout once, on the whole fleet; every test then
checks one machine (testinfra runs the tests once per machine). pytest groups the tests
by machine, so the later machines' tests run after every fixture has run: what a test
reads of a machine's state right after its run comes from a snapshot the fixture took
of every machine (`Seen`), not from the machine as it is when the test runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

HOSTS = ["mfleet-1", "mfleet-2", "mfleet-3", "mfleet-4"]


def _release_of(host, tag: str) -> str:
    sha = lib.git_sha(tag)
    for name in host.file("/srv/hello/releases").listdir():
        if lib.manifest(host, name)["git_sha"] == sha:
            return name
    raise AssertionError(f"no release of {tag} on {host.backend.get_hostname()}")


class Seen:
    """Every machine's releases (id -> git sha), current release and history, read right
    after a fixture's run."""

    def __init__(self, run: subprocess.CompletedProcess[str]) -> None:
        self.run = run
        self.machines = {}
        for name in HOSTS:
            machine = testinfra.get_host(
                f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
            )
            releases = machine.file("/srv/hello/releases").listdir()
            self.machines[name] = {
                "releases": {r: lib.manifest(machine, r)["git_sha"] for r in releases},
                "current": lib.current_id(machine),
                "history": lib.history(machine),
                "health": lib.public_health(machine),
                "locked": machine.file("/run/lock/flipback/hello/.lock").exists,
            }

    def release_of(self, host, tag: str) -> str:
        name = host.backend.get_hostname()
        sha = lib.git_sha(tag)
        for release, release_sha in self.machines[name]["releases"].items():
            if release_sha == sha:
                return release
        raise AssertionError(f"no release of {tag} on {name} after that run")

    def current(self, host) -> str:
        return self.machines[host.backend.get_hostname()]["current"]

    def history(self, host) -> list[dict]:
        return self.machines[host.backend.get_hostname()]["history"]

    def health(self, host) -> dict:
        return self.machines[host.backend.get_hostname()]["health"]

    def locked(self, host) -> bool:
        return self.machines[host.backend.get_hostname()]["locked"]


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
    return Seen(lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2", "-e", "batch=2"))


@pytest.fixture(scope="module")
def picky_rollout(v2_rollout):
    # One host per batch after the canary: mfleet-3 fails its gate in batch 3.
    return Seen(lib.run_fleet_playbook("deploy.yml", "-e", "ref=picky", "-e", "batch=1"))


def test_v2_went_out_as_a_canary_then_batches_of_two(host, v2_rollout):
    out = lib.output(v2_rollout.run)
    assert v2_rollout.run.returncode == 0, out[-3000:]
    assert _switch_batches(v2_rollout.run.stdout) == [
        ["mfleet-1"],
        ["mfleet-2", "mfleet-3"],
        ["mfleet-4"],
    ], v2_rollout.run.stdout[-4000:]
    v2 = v2_rollout.release_of(host, "v2")
    assert f"{host.backend.get_hostname()} hello: switched to {v2}" in out
    assert v2_rollout.current(host) == v2


def test_a_failed_gate_on_the_third_host_stops_the_rollout(host, picky_rollout):
    run = picky_rollout.run
    out = lib.output(run)
    assert run.returncode != 0, out[-3000:]
    assert "the rollout stopped" in out, out[-3000:]
    # mfleet-1 (canary) and mfleet-2 had switched; mfleet-3 failed; mfleet-4 never switched.
    assert _switch_batches(run.stdout) == [["mfleet-1"], ["mfleet-2"]], out[-4000:]
    assert "deploy of hello failed on mfleet-3: release" in out
    assert '"Gate 1' in out or "Gate 1" in out
    v2, picky = picky_rollout.release_of(host, "v2"), picky_rollout.release_of(host, "picky")
    name = host.backend.get_hostname()
    says = {
        "mfleet-1": f"mfleet-1 hello: restored to {v2} (had switched to {picky})",
        "mfleet-2": f"mfleet-2 hello: restored to {v2} (had switched to {picky})",
        "mfleet-3": "deploy of hello failed on mfleet-3",
        "mfleet-4": f"mfleet-4 hello: not switched (the rollout stopped); stays on {v2}",
    }
    assert says[name] in out, out[-4000:]


def test_every_host_ends_on_the_previous_release(host, picky_rollout):
    v2 = picky_rollout.release_of(host, "v2")
    assert picky_rollout.current(host) == v2


def test_what_each_host_recorded_about_the_stopped_release(host, picky_rollout):
    picky = picky_rollout.release_of(host, "picky")
    events = [e["event"] for e in picky_rollout.history(host) if e["release"] == picky]
    expected = {
        # Switched, then restored: the release rolled away from is rolled_back.
        "mfleet-1": ["staged", "active", "rolled_back"],
        "mfleet-2": ["staged", "active", "rolled_back"],
        # Its own gate failed: the switch undid itself, nothing went live.
        "mfleet-3": ["staged", "failed"],
        # Staged, never tried: recorded as failed too, so that every host agrees on
        # what a rollback may go back to.
        "mfleet-4": ["staged", "failed"],
    }[host.backend.get_hostname()]
    assert events == expected


def _inventory_run(target: str, command: str) -> None:
    """A shell command on one machine of the scenario, as root."""
    subprocess.run(
        [
            "ansible",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            target,
            "-m",
            "ansible.builtin.shell",
            "-a",
            command,
        ],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def split_rollback(picky_rollout):
    """A named rollback to `picky`: mfleet-3 has no such release (its env differs, so
    its picky is another release id, and that one failed): refused everywhere."""
    picky = re.search(
        r"mfleet-1 hello: restored to \S+ \(had switched to (\S+)\)", lib.output(picky_rollout.run)
    ).group(1)
    return Seen(
        lib.run_fleet_playbook("rollback.yml", "-e", "service=hello", "-e", f"release={picky}")
    )


@pytest.fixture(scope="module")
def limited_rollbacks(split_rollback):
    """mfleet-1 alone deployed v1 (--limit), so its previous good release is v2 while
    mfleet-2's is v1; a rollback of both would split them: refused. Then mfleet-1 alone
    back on v2."""
    apart = lib.run_fleet_playbook("deploy.yml", "-e", "ref=v1", "--limit", "mfleet-1")
    split = Seen(lib.run_fleet_playbook("rollback.yml", "--limit", "mfleet-1,mfleet-2"))
    together = Seen(lib.run_fleet_playbook("deploy.yml", "-e", "ref=v2", "--limit", "mfleet-1"))
    return apart, split, together


@pytest.fixture(scope="module")
def broken_rollback(limited_rollbacks):
    """A rollback to v1 whose gate fails on mfleet-4 only (its v1 is broken on purpose
    for this run): the hosts that switched go back to v2."""
    v1 = lib.git_sha("v1")
    find = "for d in /srv/hello/releases/*; do grep -q " + v1 + " $d/manifest.json && echo $d; done"
    # Its instance runs as the standby: stopped, so the rollback must start it.
    sabotage = (
        f"d=$({find}); systemctl stop hello@$(basename $d).service && "
        "mv $d/app.py $d/app.py.orig && echo 'raise SystemExit(3)' > $d/app.py"
    )
    undo = f"d=$({find}); mv $d/app.py.orig $d/app.py"
    _inventory_run("mfleet-4", sabotage)
    try:
        run = lib.run_fleet_playbook("rollback.yml", "-e", "service=hello")
    finally:
        _inventory_run("mfleet-4", undo)
    return Seen(run)


def test_a_rollback_that_cannot_happen_everywhere_is_refused_before_any_switch(
    host, split_rollback
):
    out = lib.output(split_rollback.run)
    assert split_rollback.run.returncode != 0, out[-3000:]
    assert "rollback refused on mfleet-3" in out, out[-3000:]
    assert "nothing was changed on any host" in out
    assert "Lock, start, gate, flip" not in split_rollback.run.stdout
    assert split_rollback.current(host) == split_rollback.release_of(host, "v2")


def test_a_rollback_to_different_builds_is_refused_before_any_switch(host, limited_rollbacks):
    apart, split, together = limited_rollbacks
    assert apart.returncode == 0, lib.output(apart)[-3000:]
    out = lib.output(split.run)
    assert split.run.returncode != 0, out[-3000:]
    v1, v2 = split.release_of(host, "v1"), split.release_of(host, "v2")
    if host.backend.get_hostname() in ("mfleet-1", "mfleet-2"):
        # Each host and the release it would have gone back to are named.
        target = v2 if host.backend.get_hostname() == "mfleet-1" else v1
        assert f"{host.backend.get_hostname()} -> {target}" in out, out[-3000:]
    assert "rollback of hello refused: the hosts would go back to different builds" in out, out[
        -3000:
    ]
    assert "nothing was changed on any host" in out
    assert "Lock, start, gate, flip" not in split.run.stdout
    assert together.run.returncode == 0, lib.output(together.run)[-3000:]
    assert together.current(host) == v2


def test_a_rollback_that_fails_on_one_host_puts_the_others_back(host, broken_rollback):
    out = lib.output(broken_rollback.run)
    assert broken_rollback.run.returncode != 0, out[-3000:]
    v1, v2 = broken_rollback.release_of(host, "v1"), broken_rollback.release_of(host, "v2")
    name = host.backend.get_hostname()
    if name == "mfleet-4":
        assert "rollback of hello failed on mfleet-4" in out, out[-3000:]
    else:
        assert f"{name} hello: restored to {v2} (had switched to {v1})" in out, out[-3000:]
    assert broken_rollback.current(host) == v2


@pytest.fixture(scope="module")
def killed_deploy(broken_rollback):
    """A deploy of `picky` killed (SIGKILL, the whole run) right after the canary
    switched: mfleet-1 runs picky, the three others hold the dead run's lock with
    picky staged."""
    kill = {
        "ANSIBLE_CALLBACKS_ENABLED": lib.callbacks_with_kill(),
        "FLIPBACK_KILL_AFTER_TASK": "Start, gate, flip, gate, retire",
    }
    return lib.run_fleet_playbook("deploy.yml", "-e", "ref=picky", "-e", "batch=1", env=kill)


@pytest.fixture(scope="module")
def rerun_deploy(killed_deploy):
    """The same deploy run again: mfleet-1 is already live on picky, mfleet-2 switches,
    mfleet-3 fails its gate, so the rollout stops - and the fleet must converge back."""
    return Seen(lib.run_fleet_playbook("deploy.yml", "-e", "ref=picky", "-e", "batch=1"))


def test_a_killed_deploy_left_the_canary_on_the_new_release(host, killed_deploy):
    assert killed_deploy.returncode == -9, lib.output(killed_deploy)[-3000:]
    assert _switch_batches(killed_deploy.stdout) == [["mfleet-1"]], killed_deploy.stdout[-3000:]


def test_its_rerun_that_stops_puts_every_host_back_on_the_release_before(host, rerun_deploy):
    out = lib.output(rerun_deploy.run)
    assert rerun_deploy.run.returncode != 0, out[-3000:]
    v2, picky = rerun_deploy.release_of(host, "v2"), rerun_deploy.release_of(host, "picky")
    name = host.backend.get_hostname()
    says = {
        # Put live by the killed run, which left the others behind: back with them.
        "mfleet-1": (
            f"mfleet-1 hello: restored to {v2} (it had gone live on {picky} in an earlier "
            "run that stopped half-way)"
        ),
        "mfleet-2": f"mfleet-2 hello: restored to {v2} (had switched to {picky})",
        "mfleet-3": "deploy of hello failed on mfleet-3",
        "mfleet-4": f"mfleet-4 hello: not switched (the rollout stopped); stays on {v2}",
    }
    assert says[name] in out, out[-4000:]
    assert rerun_deploy.current(host) == v2
    assert rerun_deploy.health(host) == {"ok": True, "service": "hello", "release": v2}
    assert not rerun_deploy.locked(host)
    # No instance of the stopped release is left running, here or by the killed run
    # (a short drain aside); the warm standby of v2 stays.
    assert lib.stops_within(host, f"hello@{picky}.service")


@pytest.fixture(scope="module")
def long_rollout(rerun_deploy):
    """A rollout of four batches longer than the lock's stale_after (3 s here): paused
    (SIGSTOP) once the canary switched, the other hosts waiting with their locks unrefreshed
    for longer than that. A second deploy on a waiting host must find its lock held,
    not stale; then the first run goes on and finishes."""
    short = ("-e", "flipback_lock_stale_after=3")
    pause = {
        "ANSIBLE_CALLBACKS_ENABLED": lib.callbacks_with_kill(),
        "FLIPBACK_KILL_AFTER_TASK": "Start, gate, flip, gate, retire",
        "FLIPBACK_KILL_SIGNAL": "STOP",
    }
    first = lib.start_fleet_playbook(
        "deploy.yml", "-e", "ref=v1", "-e", "batch=1", *short, env=pause
    )
    try:
        deadline = time.monotonic() + 600
        while lib.process_state(first.pid) != "T":
            assert first.poll() is None, "the first deploy ended before its pause"
            assert time.monotonic() < deadline, "the first deploy never paused"
            time.sleep(0.2)
        time.sleep(5)  # more than stale_after since the waiting hosts' last refresh
        second = lib.run_fleet_playbook(
            "deploy.yml", "-e", "ref=v1", "--limit", "mfleet-4", "-e", "lock_wait=0", *short
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=900)
    first_run = subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)
    return second, Seen(first_run)


def test_a_rollout_longer_than_stale_after_keeps_every_waiting_hosts_lock(host, long_rollout):
    second, first = long_rollout
    out = lib.output(second)
    assert second.returncode != 0, out[-3000:]
    assert "hello is locked by" in out, out[-3000:]
    assert "took over" not in out, out[-3000:]
    first_out = lib.output(first.run)
    assert first.run.returncode == 0, first_out[-3000:]
    assert _switch_batches(first.run.stdout) == [[h] for h in HOSTS], first.run.stdout[-3000:]
    v1 = first.release_of(host, "v1")
    assert first.current(host) == v1
    assert first.health(host) == {"ok": True, "service": "hello", "release": v1}
    assert not first.locked(host)


def test_the_fleet_serves_one_release_and_status_agrees(host, long_rollout, tmp_path):
    v1 = _release_of(host, "v1")
    assert host.service(f"hello@{v1}").is_enabled
    run = lib.run_playbook(
        host, "status.yml", "-e", f"status_json={tmp_path / 's.json'}", "-e", "strict=true"
    )
    assert run.returncode == 0, lib.output(run)[-2000:]
    assert v1 in run.stdout
