"""A broken release fails its gate, never goes live, and v1 keeps answering throughout."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib


class Prober(threading.Thread):
    """GET /health on one machine's public port until stopped; records every answer."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.url = f"http://{address}:{lib.PORT}/health"
        self.answers: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.answers.append(json.load(response)["release"])
            except Exception as exc:
                self.failures.append(repr(exc))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def broken_deploy(host):
    """Deploy `broken` once for the whole module, with probes running throughout."""
    address = host.ansible.get_variables()["ansible_host"]
    good = lib.current_id(host)
    before = lib.snapshot(host)
    prober = Prober(address)
    prober.start()
    run = lib.run_playbook(host, "deploy.yml", "-e", "ref=broken")
    prober.stop.set()
    prober.join()
    return {"run": run, "good": good, "before": before, "prober": prober}


def test_deploy_fails_naming_service_host_release_and_gate(host, broken_deploy):
    run = broken_deploy["run"]
    assert run.returncode != 0
    out = lib.output(run)
    name = host.backend.get_hostname()
    assert f"deploy of hello failed on {name}: release" in out, out[-2000:]
    assert "Gate 1, health on the instance's private socket" in out
    assert f"current stays on {broken_deploy['good']}, which keeps serving" in out
    assert "broken on purpose" in out  # the failing unit's journal is shown
    # It answers 500 every time: the gate gave up after 10 such answers in a row, not at
    # its 30 s deadline.
    assert "gave up: 10 unhealthy answers in a row" in out, out[-3000:]


def test_current_stays_on_the_good_release(host, broken_deploy):
    assert lib.current_id(host) == broken_deploy["good"]
    assert lib.public_health(host)["release"] == broken_deploy["good"]


def test_good_release_answered_every_request(host, broken_deploy):
    prober = broken_deploy["prober"]
    assert prober.failures == []
    assert len(prober.answers) > 20
    assert set(prober.answers) == {broken_deploy["good"]}


def test_broken_release_is_marked_failed_and_stopped(host, broken_deploy):
    last = lib.history(host)[-1]
    assert last["event"] == "failed"
    assert lib.manifest(host, last["release"])["git_sha"] == lib.git_sha("broken")
    assert not host.service(f"hello@{last['release']}").is_running
    assert not host.service(f"hello@{last['release']}").is_enabled


def test_secret_never_printed(broken_deploy):
    assert "s3cret-value-never-printed" not in broken_deploy["run"].stdout
    assert "s3cret-value-never-printed" not in broken_deploy["run"].stderr
