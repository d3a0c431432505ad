"""v1 -> v2 -> rollback: v1 answers; named rollbacks; no target fails and changes nothing,
saying so once with the next step; verify.yml is short and says what to do on failure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib


def _releases(host) -> tuple[str, str]:
    """(v1 id, v2 id), read from the manifests and the throwaway repository's tags."""
    by_sha = {}
    for name in host.file("/srv/hello/releases").listdir():
        by_sha[lib.manifest(host, name)["git_sha"]] = name
    return by_sha[lib.git_sha("v1")], by_sha[lib.git_sha("v2")]


def test_rollback_made_v1_current_and_live(host):
    v1, v2 = _releases(host)
    assert lib.current_id(host) == v1
    assert lib.public_health(host)["release"] == v1
    assert host.service(f"hello@{v1}").is_running, lib.journal(host, f"hello@{v1}")
    assert host.service(f"hello@{v1}").is_enabled
    # v2 is retired: it stops once its drain is over.
    assert lib.stops_within(host, f"hello@{v2}.service")


def test_rollback_is_recorded_with_its_note(host):
    v1, v2 = _releases(host)
    last_two = [(e["release"], e["event"]) for e in lib.history(host)[-2:]]
    assert last_two == [(v1, "active"), (v2, "rolled_back")]
    assert lib.history(host)[-2]["note"].startswith(f"rollback from {v2}")


def test_named_rollback_and_its_rerun(host):
    v1, v2 = _releases(host)
    run = lib.run_playbook(host, "rollback.yml", "-e", "service=hello", "-e", f"release={v2}")
    assert run.returncode == 0, run.stdout[-3000:]
    assert lib.current_id(host) == v2
    assert lib.public_health(host)["release"] == v2

    before = lib.snapshot(host)
    again = lib.run_playbook(host, "rollback.yml", "-e", "service=hello", "-e", f"release={v2}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "changed=0" in again.stdout
    assert "is already current; nothing to do" in lib.output(again)
    assert lib.snapshot(host) == before

    back = lib.run_playbook(host, "rollback.yml", "-e", "service=hello", "-e", f"release={v1}")
    assert back.returncode == 0, back.stdout[-3000:]
    assert lib.current_id(host) == v1


def test_rollback_without_target_fails_and_changes_nothing(host):
    # v1 is current and v2 was rolled back from: there is no previous good release.
    v1, v2 = _releases(host)
    before = lib.snapshot(host)
    run = lib.run_playbook(host, "rollback.yml", "-e", "service=hello")
    assert run.returncode != 0
    out = lib.output(run)
    # Said once (not once per host and again by a rescue), with the next step: the
    # release that a named rollback can go back to, and where to read the history.
    assert out.count("no release to roll back to") == 1, out[-3000:]
    assert "nothing was changed on any host" in out
    assert f"playbooks/rollback.yml -e service=hello -e release={v2}" in out, out[-3000:]
    assert "playbooks/history.yml -e service=hello" in out
    assert "Lock, start, gate, flip" not in run.stdout
    assert lib.snapshot(host) == before
    assert lib.public_health(host)["release"] == v1


def test_a_named_release_missing_here_is_refused_once(host):
    v1, _ = _releases(host)
    missing = "20200101T000000-0123456789"
    before = lib.snapshot(host)
    run = lib.run_playbook(host, "rollback.yml", "-e", "service=hello", "-e", f"release={missing}")
    assert run.returncode != 0
    out = lib.output(run)
    name = host.backend.get_hostname()
    assert out.count(f"release: got '{missing}'") == 1, out[-3000:]
    assert f"rollback refused on {name}: release: got '{missing}'" in out, out[-3000:]
    assert "playbooks/history.yml -e service=hello" in out
    assert lib.snapshot(host) == before
    assert lib.public_health(host)["release"] == v1


def test_verify_is_short_and_on_failure_says_what_to_do(host):
    v1, _ = _releases(host)
    name = host.backend.get_hostname()
    ok = lib.run_playbook(host, "verify.yml")
    out = lib.output(ok)
    assert ok.returncode == 0, out[-3000:]
    # (One message: line breaks show as \n where the output is JSON, as under molecule.)
    assert "verify passed: every service answers with its current release" in out, out[-3000:]
    assert f"hello on {name}: {v1} answers" in out, out[-3000:]
    assert len(ok.stdout.splitlines()) < 40, ok.stdout  # no result dumps
    # The live instance stops: the public port answers 502 until it is started again.
    host.run_expect([0], f"systemctl stop hello@{v1}.service")
    try:
        run = lib.run_playbook(host, "verify.yml")
    finally:
        host.run_expect([0], f"systemctl start hello@{v1}.service")
    out = lib.output(run)
    assert run.returncode != 0, out[-3000:]
    assert out.count("the public port answered nothing") == 1, out[-3000:]
    assert f"FAILED hello on {name}: current {v1}, the public port answered nothing" in out
    assert "What to do next:" in out
    assert "ansible-playbook playbooks/logs.yml -e service=hello -e since=15m" in out
    assert f"verify failed on {name}" in out
    # Started again, v1 answers (the rehearsal below starts from here).
    url = f"http://127.0.0.1:{lib.PORT}/health"
    host.run_expect(
        [0], f"for i in $(seq 100); do curl -sf {url} && exit 0; sleep 0.2; done; exit 1"
    )
    assert lib.public_health(host)["release"] == v1


def test_rehearsal_ends_on_the_new_release(host):
    # After the tests above v1 is current and v2 was rolled back from: rehearse v2.
    v1, v2 = _releases(host)
    run = lib.run_playbook(host, "rehearse.yml", "-e", "ref=v2")
    out = lib.output(run)
    assert run.returncode == 0, out[-3000:]
    assert "REHEARSAL passed in" in out
    for step in (
        "deploy",
        "verify after deploy",
        "rollback",
        "verify after rollback",
        "roll forward",
        "verify after roll forward",
    ):
        assert f"{step} " in out, step
    assert lib.current_id(host) == v2
    assert lib.public_health(host)["release"] == v2
    events = [(e["release"], e["event"]) for e in lib.history(host)[-3:]]
    assert events == [(v1, "active"), (v2, "rolled_back"), (v2, "active")]


def test_a_play_of_your_own_deploys_with_the_role(host, tmp_path):
    # The role's main.yml is a whole deploy in one play (request, stage, commands,
    # switch, finish): a playbook of your own needs only `roles: [flipback]`.
    v1, v2 = _releases(host)
    own = tmp_path / "own.yml"
    own.write_text("- hosts: all\n  gather_facts: false\n  roles: [flipback]\n", encoding="utf-8")
    run = lib.run_playbook(host, str(own), "-e", "ref=v1")
    out = lib.output(run)
    assert run.returncode == 0, out[-3000:]
    assert lib.current_id(host) == v1
    assert lib.public_health(host)["release"] == v1
    assert f"{host.backend.get_hostname()} hello: switched to {v1}" in out, out[-3000:]
    # And back, so the reboot tests find the fleet as the rehearsal left it.
    run = lib.run_playbook(host, str(own), "-e", "ref=v2")
    assert run.returncode == 0, lib.output(run)[-3000:]
    assert lib.current_id(host) == v2
