"""Zero failed requests through deploy, rollback, a broken deploy and a roll-forward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

load = lib.bench_load()

# Clients per mode; the rate stays well below what TIME_WAIT allows (bench/README.md).
CLIENTS = 4
RATE = 100


@pytest.fixture(scope="session")
def story():
    plan = [
        ("deploy v2", ("deploy.yml", "-e", "ref=v2"), True),
        ("rollback", ("rollback.yml",), True),
        ("deploy broken", ("deploy.yml", "-e", "ref=broken"), False),
        ("roll forward to v2", ("deploy.yml", "-e", "ref=v2"), True),
    ]
    return lib.story_under_load(plan, clients=CLIENTS, rate=RATE, pause=2)


def test_every_step_did_what_it_should(story):
    for name, step in story["steps"].items():
        out = lib.output(step["run"])[-4000:]
        if step["should_pass"]:
            assert step["run"].returncode == 0, (name, out)
        else:
            assert step["run"].returncode != 0, (name, out)


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_zero_failed_requests(story, mode):
    summary = story["summary"][mode]
    # Printed (the scenario runs pytest with -s) so the CI log carries the numbers.
    keys = ("total", "ok", "failed", "client_errors", "latency_ms", "requests_per_s")
    steps = [(name, round(s["end"] - s["start"], 1)) for name, s in story["steps"].items()]
    print(f"\nzero_downtime {mode}: { ({k: summary[k] for k in keys}) } steps (s): {steps}")
    assert summary["total"] > 500
    assert summary["failed"] == 0, summary["failed_by_kind"]
    assert summary["client_errors"] == 0, summary["client_errors_by_kind"]


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_releases_change_only_at_the_flips(host, story, mode):
    # Per client: a client's requests are sequential, so any back and forth it sees is
    # real; across clients, overlapping requests can reach nginx out of start order.
    changes = load.release_changes(story["records"][mode], per_client=True)
    steps = story["steps"]
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
