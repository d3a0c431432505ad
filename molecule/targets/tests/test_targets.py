"""A mixed fleet, bookworm (CPython 3.11) and trixie (3.13), deployed with one command:
each host runs its own Python's wheel of MarkupSafe; the two targets get their own
release ids of one source build; a rollback and a roll forward of the whole fleet pass
the fleet-wide "same build" checks across the targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

HOSTS = ("mtargets-1", "mtargetx-1")
# What each machine's Debian suite runs.
PYTHON = {"mtargets-1": "3.11", "mtargetx-1": "3.13"}


def machine(name: str):
    return testinfra.get_host(
        f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def release_of(name: str, tag: str) -> str:
    box = machine(name)
    sha = lib.git_sha(tag)
    for release in box.file(f"{lib.ROOT}/releases").listdir():
        if lib.manifest(box, release)["git_sha"] == sha:
            return release
    raise AssertionError(f"no release of {tag} on {name}")


def platform(host) -> dict:
    out = host.run(f"curl -sS --max-time 5 http://127.0.0.1:{lib.PORT}/platform")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def currents() -> dict[str, str]:
    return {name: lib.current_id(machine(name)) for name in HOSTS}


def test_each_host_runs_its_own_pythons_compiled_wheel(host):
    name = host.backend.get_hostname()
    python = PYTHON[name]
    assert host.check_output("/usr/bin/python3 -c 'import sys; print(sys.version[:4])'") == python
    seen = platform(host)
    assert seen["python"] == python
    nodot = python.replace(".", "")
    # The live release's own venv, and the C extension built for this Python.
    assert seen["speedups"].startswith(f"{lib.ROOT}/releases/{lib.current_id(host)}/venv/")
    assert f"cpython-{nodot}-x86_64-linux-gnu.so" in seen["speedups"], seen
    site = f"{lib.ROOT}/current/venv/lib/python{python}/site-packages"
    wheel = host.run(f"cat {site}/[Mm]arkup[Ss]afe-3.0.2.dist-info/WHEEL")
    assert wheel.rc == 0, wheel.stderr
    assert f"Tag: cp{nodot}-cp{nodot}-manylinux" in wheel.stdout, wheel.stdout


def test_targets_get_their_own_ids_of_one_source_build(host):
    name = host.backend.get_hostname()
    v1 = release_of(name, "v1")
    manifest = lib.manifest(host, v1)
    nodot = PYTHON[name].replace(".", "")
    assert manifest["target"].startswith(f"cp{nodot}-glibc2."), manifest["target"]
    assert "markupsafe==3.0.2" in manifest["dependencies"]
    other = next(n for n in HOSTS if n != name)
    other_v1 = release_of(other, "v1")
    # Different wheels, so different ids; one source build, which the fleet compares.
    assert other_v1 != v1
    assert lib.manifest(machine(other), other_v1)["source_build"] == manifest["source_build"]
    assert manifest["build"] != manifest["source_build"]


@pytest.fixture(scope="module")
def story():
    """v2 everywhere, the fleet rolled back to v1, forward to v2 again, then back to v1
    by the bookworm host's id: what each run printed and where each host was after it."""
    runs = {}
    # The bookworm host's id of v1, named to the whole fleet: the trixie host goes to
    # its own release of it.
    named = ("-e", "service=hello", "-e", f"release={release_of('mtargets-1', 'v1')}")
    for step, playbook, extra in (
        ("deploy v2", "deploy.yml", ("-e", "ref=v2")),
        ("rollback", "rollback.yml", ()),
        ("verify", "verify.yml", ()),
        ("forward", "deploy.yml", ("-e", "ref=v2")),
        ("named", "rollback.yml", named),
        ("status", "status.yml", ()),
    ):
        run = lib.run_fleet_playbook(playbook, *extra)
        runs[step] = (run, currents())
    return runs


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return lib.output(run)


def test_v2_goes_to_both_targets_with_one_command(host, story):
    # (A redeploy that changes nothing is molecule's idempotence step, on v1.)
    name = host.backend.get_hostname()
    out = _ok(story["deploy v2"][0])
    assert story["deploy v2"][1][name] == release_of(name, "v2")
    assert f"{name} hello: switched to {release_of(name, 'v2')}" in out


def test_the_fleet_rolls_back_across_targets(host, story):
    name = host.backend.get_hostname()
    out = _ok(story["rollback"][0])
    assert "different builds" not in out
    assert story["rollback"][1][name] == release_of(name, "v1")
    # verify.yml's "same build everywhere" holds on the mixed fleet.
    verified = _ok(story["verify"][0])
    assert "verify passed" in verified and "one build each" in verified, verified[-2000:]
    assert "different builds" not in verified


def test_the_fleet_rolls_forward(host, story):
    name = host.backend.get_hostname()
    _ok(story["forward"][0])
    assert story["forward"][1][name] == release_of(name, "v2")


def test_a_rollback_naming_one_targets_id_takes_each_host_to_its_own(host, story):
    name = host.backend.get_hostname()
    _ok(story["named"][0])
    assert story["named"][1][name] == release_of(name, "v1")
    assert lib.public_health(host)["release"] == release_of(name, "v1")
    assert "HOSTS DISAGREE" not in _ok(story["status"][0])
    assert platform(host)["python"] == PYTHON[name]
