"""A release is its code and its configuration, proven on real machines under load.

The module fixture runs one story on the whole fleet while clients hammer both public
ports: a no-change redeploy, an env rotation deployed from a source URL that carries
credentials, a bad env value and a bad `app` (both fail their gate), a rollback and a
roll forward. Every test then checks one machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib
from fakes import GitOverHttp, stop  # flipback_testlib put tests/unit on the path

CLIENTS = 4
RATE = 100
# Exactly what molecule.yml gives hello_greeting (YAML escapes decoded).
GREETING = "  Grüße\tcafé ☃ \"q\" 'a' $HOME `t` \\n 100% #x  "
ROTATED = "rotated: ünïcode\tand tab"
TOKEN = "tok-9f2c-never-printed"
# Extra vars as JSON: `-e key=value` would split a value at its spaces.
AS_ROTATED = json.dumps({"hello_greeting": ROTATED})
USERNAME = "deployer"


@pytest.fixture(scope="module")
def git_server():
    """The test repository over git's dumb HTTP protocol, behind basic auth
    (fakes.GitOverHttp)."""
    subprocess.run(["git", "-C", str(lib.REPO), "update-server-info"], check=True)
    server = GitOverHttp.serve(lib.REPO / ".git", USERNAME, TOKEN)
    yield f"http://{USERNAME}:{TOKEN}@127.0.0.1:{server.server_address[1]}/", server.handler
    stop(server)


@pytest.fixture(scope="module")
def story(git_server):
    url, handler = git_server
    plan = [
        ("no change", ("deploy.yml",), True),
        (
            "dry run of a rotation",
            ("deploy.yml", "--check", "--diff", "-e", "hello_greeting=dry-run-value"),
            True,
        ),
        ("rotate", ("deploy.yml", "-e", AS_ROTATED, "-e", f"source={url}"), True),
        ("bad env value", ("deploy.yml", "-e", AS_ROTATED, "-e", "hello_fail_health=1"), False),
        ("bad app", ("deploy.yml", "-e", AS_ROTATED, "-e", "hello_app=app:nope"), False),
        ("rollback", ("rollback.yml",), True),
        ("roll forward", ("deploy.yml", "-e", AS_ROTATED), True),
    ]
    story = lib.story_under_load(plan, clients=CLIENTS, rate=RATE, pause=1)
    # The paths of the requests that carried the right credentials.
    served = [path for auth, path in handler.seen if auth == handler.expected]
    return {**story, "git_requests": served}


def _releases(host) -> dict[str, dict]:
    return {name: lib.manifest(host, name) for name in host.file(f"{lib.ROOT}/releases").listdir()}


def _environ(host, release: str) -> dict[str, str]:
    """The environment of the instance's main process, as the kernel holds it."""
    unit = f"hello@{release}.service"
    out = host.run(f"base64 -w0 /proc/$(systemctl show -p MainPID --value {unit})/environ")
    assert out.rc == 0, out.stderr
    raw = base64.b64decode(out.stdout).decode("utf-8")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _release_with(host, greeting: str) -> str:
    """The release (of picky, the only code here) whose env gives this greeting."""
    matches = []
    for name, manifest in _releases(host).items():
        if manifest["config"]["app"] != "app:app":
            continue  # the release of the bad `app`
        env = host.file(f"{lib.ROOT}/releases/{name}/.flipback/env").content_string
        if f'HELLO_GREETING="{_escaped(greeting)}"' in env and 'FAIL_HEALTH="0"' in env:
            matches.append(name)
    assert len(matches) == 1, (greeting, matches)
    return matches[0]


def _escaped(value: str) -> str:
    return re.sub(r'(["\\`$])', r"\\\1", value)


def _live_files(host) -> str:
    """sha256 of what decides how the live release starts: its unit, its env file,
    the nginx site."""
    release = lib.current_id(host)
    paths = [
        f"/etc/systemd/system/hello@{release}.service",
        f"{lib.ROOT}/releases/{release}/.flipback/env",
        "/etc/nginx/conf.d/flipback-hello.conf",
    ]
    out = host.run("sha256sum " + " ".join(paths) + f" && stat -c '%a %U %G' {' '.join(paths)}")
    assert out.rc == 0, out.stderr
    return out.stdout


def test_every_step_did_what_it_should(story):
    for name, step in story["steps"].items():
        out = lib.output(step["run"])
        if step["should_pass"]:
            assert step["run"].returncode == 0, (name, out[-3000:])
        else:
            assert step["run"].returncode != 0, (name, out[-3000:])


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_zero_failed_requests(story, mode):
    summary = story["summary"][mode]
    keys = ("total", "ok", "failed", "client_errors", "latency_ms", "requests_per_s")
    steps = [(n, round(s["end"] - s["start"], 1)) for n, s in story["steps"].items()]
    print(f"\nconfig {mode}: { ({k: summary[k] for k in keys}) } steps (s): {steps}")
    assert summary["total"] > 500
    assert summary["failed"] == 0, summary["failed_by_kind"]
    assert summary["client_errors"] == 0, summary["client_errors_by_kind"]


def test_a_redeploy_of_the_same_code_and_configuration_changes_nothing(story):
    out = story["steps"]["no change"]["run"].stdout
    recap = re.findall(r"^(mconfig-\d)\s+: ok=\d+\s+changed=(\d+)", out, flags=re.M)
    assert sorted(recap) == [("mconfig-1", "0"), ("mconfig-2", "0")], out[-3000:]


def test_a_rotation_is_a_new_release_of_the_same_code(host, story):
    first, rotated = _release_with(host, GREETING), _release_with(host, ROTATED)
    assert first != rotated
    manifests = _releases(host)
    assert manifests[first]["git_sha"] == manifests[rotated]["git_sha"] == lib.git_sha("picky")
    assert manifests[first]["build"] == manifests[rotated]["build"]
    assert manifests[first]["config"]["env_digest"] != manifests[rotated]["config"]["env_digest"]
    out = lib.output(story["steps"]["rotate"]["run"])
    name = host.backend.get_hostname()
    assert f"{name} hello: switched to {rotated} (config changed: HELLO_GREETING)" in out, out[
        -3000:
    ]
    # Its history says it was staged and went live like any release.
    events = [e["event"] for e in lib.history(host) if e["release"] == rotated]
    assert events[:2] == ["staged", "active"]


def test_a_dry_run_shows_the_config_change_without_its_value(story):
    run = story["steps"]["dry run of a rotation"]["run"]
    out = lib.output(run)
    assert "config changed: HELLO_GREETING" in out, out[-3000:]
    assert "env HELLO_GREETING=*** (changed)" in out, out[-3000:]
    assert "dry-run-value" not in out


@pytest.mark.parametrize(
    ("step", "why"),
    [("bad env value", "HELLO_FAIL_HEALTH=1 on this host"), ("bad app", "nope")],
)
def test_a_bad_configuration_fails_its_gate_and_names_it(host, story, step, why):
    out = lib.output(story["steps"][step]["run"])
    # The canary (the first machine) fails its gate; the other never switches.
    assert "deploy of hello failed on mconfig-1" in out, out[-3000:]
    assert "Gate 1" in out
    assert why in out, out[-3000:]
    if host.backend.get_hostname() == "mconfig-2":
        assert "mconfig-2 hello: not switched (the rollout stopped)" in out, out[-3000:]


def test_the_roll_forward_ends_on_the_rotated_release_with_its_env(host, story):
    rotated = _release_with(host, ROTATED)
    assert lib.current_id(host) == rotated
    assert lib.public_health(host) == {"ok": True, "service": "hello", "release": rotated}
    env = _environ(host, rotated)
    assert env["HELLO_GREETING"] == ROTATED
    assert env["FLIPBACK_RELEASE"] == rotated


def test_the_rollback_brought_the_first_configuration_back(host, story):
    first, rotated = _release_with(host, GREETING), _release_with(host, ROTATED)
    out = lib.output(story["steps"]["rollback"]["run"])
    assert f"rolled back from {rotated} to {first}" in out, out[-3000:]
    # The first release still runs as the standby after the roll forward: its process
    # carries its own values, byte for byte (Unicode, a tab, quotes, spaces).
    env = _environ(host, first)
    assert env["HELLO_GREETING"] == GREETING
    assert env["HELLO_FAIL_HEALTH"] == "0"


def test_a_restart_after_a_failed_deploy_runs_the_live_configuration(host, story):
    """The live release's unit, env file and site are byte-identical after a failed
    deploy (one of them with another port); restarting its instance (a crash, an OOM
    kill, a reboot) brings back the same configuration, and it answers."""
    live = lib.current_id(host)
    before = _live_files(host)
    # The second also moves the service to another port: the site stays as it was.
    for extra in (
        ("-e", "hello_fail_health=1"),
        ("-e", "hello_app=app:nope", "-e", "hello_port=8010"),
    ):
        run = lib.run_playbook(host, "deploy.yml", "-e", AS_ROTATED, *extra)
        assert run.returncode != 0, lib.output(run)[-2000:]
        assert _live_files(host) == before
        assert lib.current_id(host) == live
        restart = host.run(f"systemctl restart hello@{live}.service")
        assert restart.rc == 0, restart.stderr
        deadline = time.monotonic() + 30
        while True:
            probe = host.run(
                f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{lib.PORT}/health"
            )
            if probe.stdout == "200" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert probe.stdout == "200", lib.journal(host, f"hello@{live}.service")
        assert lib.public_health(host)["release"] == live
        env = _environ(host, live)
        assert (env["HELLO_GREETING"], env["HELLO_FAIL_HEALTH"]) == (ROTATED, "0")


def test_each_release_carries_its_own_unit_and_env_file(host, story):
    for release, manifest in _releases(host).items():
        if manifest.get("status") != "staged":
            continue
        unit = host.file(f"/etc/systemd/system/hello@{release}.service")
        assert (unit.user, unit.group, unit.mode) == ("root", "root", 0o644)
        assert hashlib.sha256(unit.content).hexdigest() == manifest["config"]["unit_sha256"]
        env = host.file(f"{lib.ROOT}/releases/{release}/.flipback/env")
        assert (env.user, env.group, env.mode) == ("root", "hello", 0o640)
        assert manifest["config"]["env_names"] == ["HELLO_FAIL_HEALTH", "HELLO_GREETING"]
        # The service user reads its env only through systemd; others not at all.
        assert host.run(f"runuser -u nobody -- cat {env.path}").rc != 0
    # No service-wide unit or env file is written any more.
    assert not host.file("/etc/systemd/system/hello@.service").exists
    assert not host.file("/etc/flipback/hello.env").exists


def test_status_shows_the_configuration_change(host, story, tmp_path):
    run = lib.run_playbook(host, "status.yml")
    out = lib.output(run)
    assert run.returncode == 0, out[-2000:]
    # Live: the rotated release; previous good: the first; values never shown.
    assert "changed: HELLO_GREETING" in out, out[-3000:]
    assert ROTATED not in out and "Grüße" not in out


def test_credentials_in_the_source_reach_git_and_nowhere_else(host, story):
    # git asked the server, with the credentials (the server refuses without them).
    assert any("/info/refs" in p for p in story["git_requests"]), story["git_requests"]
    for name, step in story["steps"].items():
        assert TOKEN not in lib.output(step["run"]), name
    found = host.run(
        f"grep -rl --exclude-dir=venv {TOKEN} /srv /etc /run /var/log 2>/dev/null; "
        f"journalctl --no-pager | grep -c {TOKEN}"
    )
    assert found.stdout.split() == ["0"], found.stdout
    rotated = _release_with(host, ROTATED)
    source = lib.manifest(host, rotated)["source"]
    assert source.startswith("http://127.0.0.1:") and "@" not in source, source
    cache = Path(os.environ.get("HOME", "/root")) / ".cache" / "flipback" / "git"
    leaked = subprocess.run(
        ["grep", "-rl", TOKEN, str(cache)], capture_output=True, text=True, check=False
    )
    assert leaked.stdout == "", leaked.stdout
