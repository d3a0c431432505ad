"""Zero failed requests through deploy, rollback, a broken deploy and a roll-forward."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

load = lib.bench_load()

# Clients per mode; the rate stays well below what TIME_WAIT allows (DESIGN.md).
CLIENTS = 4
RATE = 100


def _fleet_run(playbook: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """A playbook against the whole scenario fleet, as a user would run it."""
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(lib.PROJECT / "playbooks" / playbook),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )


@pytest.fixture(scope="session")
def story():
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
    addresses = [i["address"] for i in yaml.safe_load(config.read_text())]
    urls = [f"http://{address}:{lib.PORT}/health" for address in addresses]
    generators = {
        mode: load.LoadGenerator(urls, CLIENTS, mode, rate=RATE, timeout=5, duration=900)
        for mode in ("new", "keepalive")
    }
    for generator in generators.values():
        generator.start()
    clock = generators["new"]
    steps = []
    plan = [
        ("deploy v2", "deploy.yml", ("-e", "ref=v2"), True),
        ("rollback", "rollback.yml", (), True),
        ("deploy broken", "deploy.yml", ("-e", "ref=broken"), False),
        ("roll forward to v2", "deploy.yml", ("-e", "ref=v2"), True),
    ]
    try:
        time.sleep(2)
        for name, playbook, extra, should_pass in plan:
            started = clock.now()
            run = _fleet_run(playbook, *extra)
            steps.append(
                {
                    "name": name,
                    "start": started,
                    "end": clock.now(),
                    "rc": run.returncode,
                    "should_pass": should_pass,
                    "output": run.stdout[-4000:] + run.stderr[-2000:],
                }
            )
            time.sleep(2)
    finally:
        for generator in generators.values():
            generator.stop()
        for generator in generators.values():
            generator.join(timeout=30)
    return {
        "urls": urls,
        "steps": steps,
        "records": {mode: g.records for mode, g in generators.items()},
        "summary": {mode: g.summary() for mode, g in generators.items()},
    }


def test_every_step_did_what_it_should(story):
    for step in story["steps"]:
        if step["should_pass"]:
            assert step["rc"] == 0, (step["name"], step["output"])
        else:
            assert step["rc"] != 0, (step["name"], step["output"])


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_zero_failed_requests(story, mode):
    summary = story["summary"][mode]
    # Printed (the scenario runs pytest with -s) so the CI log carries the numbers.
    keys = ("total", "ok", "failed", "client_errors", "latency_ms", "requests_per_s")
    steps = [(s["name"], round(s["end"] - s["start"], 1)) for s in story["steps"]]
    print(f"\nzero_downtime {mode}: { ({k: summary[k] for k in keys}) } steps (s): {steps}")
    assert summary["total"] > 500
    assert summary["failed"] == 0, summary["failed_by_kind"]
    assert summary["client_errors"] == 0, summary["client_errors_by_kind"]


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_releases_change_only_at_the_flips(host, story, mode):
    # Per client: a client's requests are sequential, so any back and forth it sees is
    # real; across clients, overlapping requests can reach nginx out of start order.
    changes = load.release_changes(story["records"][mode], per_client=True)
    steps = {s["name"]: s for s in story["steps"]}
    flips = [steps["deploy v2"], steps["rollback"], steps["roll forward to v2"]]
    assert {url for url, _ in changes} == set(story["urls"])
    v1 = v2 = None
    for (url, client), seen in sorted(changes.items()):
        releases = [release for _, release in seen]
        v1, v2 = v1 or releases[0], v2 or releases[1]
        assert releases == [v1, v2, v1, v2], (url, client, seen)
        # Each change of the answering release falls inside the step that flipped it;
        # the broken deploy never shows.
        for (when, _), step in zip(seen[1:], flips, strict=True):
            assert step["start"] <= when <= step["end"], (url, client, when, step["name"])
    assert lib.manifest(host, v1)["git_sha"] == lib.git_sha("v1")
    assert lib.manifest(host, v2)["git_sha"] == lib.git_sha("v2")
