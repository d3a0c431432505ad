"""After v1 then v2 (and v2 again): v2 is live, v1 is its warm standby, with the designed layout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib


def test_current_points_at_v2(host):
    release = lib.current_id(host)
    assert lib.manifest(host, release)["git_sha"] == lib.git_sha("v2")


def test_v2_replaced_v1(host):
    v2 = lib.manifest(host, lib.current_id(host))
    v1 = lib.manifest(host, v2["replaces"])
    assert v1["git_sha"] == lib.git_sha("v1")
    assert v2["status"] == v1["status"] == "staged"


def test_v2_instance_active_and_v1_the_standby(host):
    v2 = lib.current_id(host)
    v1 = lib.manifest(host, v2)["replaces"]
    new = host.service(f"hello@{v2}")
    assert new.is_running, lib.journal(host, f"hello@{v2}")
    assert new.is_enabled
    # The release rolled away from keeps running, off the public port and not started
    # at boot, so a rollback to it starts nothing.
    old = host.service(f"hello@{v1}")
    assert old.is_running, lib.journal(host, f"hello@{v1}")
    assert not old.is_enabled
    active = host.run("systemctl list-units --plain --no-legend --state=active 'hello@*'").stdout
    assert sorted(line.split()[0] for line in active.splitlines()) == sorted(
        [f"hello@{v1}.service", f"hello@{v2}.service"]
    )


def test_public_port_answers_with_v2(host):
    body = lib.public_health(host)
    assert body == {"ok": True, "service": "hello", "release": lib.current_id(host)}


def test_every_answer_names_its_release_in_a_header(host):
    # Added by the instance's uvicorn (--header), passed on by nginx: any path, any app.
    for path in ("/health", "/", "/no-such-page"):
        out = host.run(f"curl -sS -o /dev/null -D - --max-time 5 http://127.0.0.1:8000{path}")
        assert out.rc == 0, out.stderr
        headers = dict(line.split(": ", 1) for line in out.stdout.splitlines()[1:] if ": " in line)
        named = {k.lower(): v for k, v in headers.items()}.get("x-flipback-release")
        assert named == lib.current_id(host), out.stdout


def test_own_nginx_directives_are_included_and_kept(host):
    # The include flipback never writes: a user's directive applies to the service's site.
    own = "/etc/nginx/flipback/hello/own.conf"
    setup = host.run(
        f"mkdir -p /etc/nginx/flipback/hello && echo 'add_header X-Own-Directive kept always;'"
        f" > {own} && nginx -t && systemctl reload nginx"
    )
    assert setup.rc == 0, setup.stderr
    try:
        deadline = time.monotonic() + 10
        while True:
            out = host.run("curl -sS -o /dev/null -D - --max-time 5 http://127.0.0.1:8000/health")
            if "x-own-directive: kept" in out.stdout.lower() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "x-own-directive: kept" in out.stdout.lower(), out.stdout
        site = host.file("/etc/nginx/conf.d/flipback-hello.conf").content_string
        assert "include /etc/nginx/flipback/hello/*.conf;" in site
    finally:
        host.run(f"rm -f {own} && systemctl reload nginx")


def test_private_socket_is_the_release_s_own(host):
    release = lib.current_id(host)
    sock = host.file(f"/srv/hello/releases/{release}/sock")
    assert sock.linked_to == f"/run/flipback-hello/{release}/app.sock"
    assert host.socket(f"unix:///run/flipback-hello/{release}/app.sock").is_listening


def test_only_nginx_and_the_service_reach_the_private_socket(host):
    release = lib.current_id(host)
    directory = host.file(f"/run/flipback-hello/{release}")
    assert (directory.user, directory.group, directory.mode) == ("hello", "www-data", 0o750)
    ask = f"curl -sS --max-time 5 --unix-socket /run/flipback-hello/{release}/app.sock http://x/health"
    # Another local user cannot go around nginx (and its X-Forwarded-For)...
    assert host.run(f"runuser -u nobody -- {ask}").rc != 0
    # ...nginx's workers can, and a restart of the instance keeps it so.
    assert host.run(f"runuser -u www-data -- {ask}").rc == 0


def test_service_user_is_unprivileged_and_cannot_write_code(host):
    user = host.user("hello")
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    release = lib.current_id(host)
    for path in (f"/srv/hello/releases/{release}", f"/srv/hello/releases/{release}/venv/bin"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o755), path
        assert host.run(f"runuser -u hello -- test -w {path}").rc != 0, path
    app = host.file(f"/srv/hello/releases/{release}/app.py")
    assert (app.user, app.mode) == ("root", 0o644)


def test_shared_and_secrets_permissions(host):
    shared = host.file("/srv/hello/shared")
    assert (shared.user, shared.group, shared.mode) == ("hello", "hello", 0o750)
    release = lib.current_id(host)
    conf = host.file(f"/srv/hello/releases/{release}/.flipback")
    assert (conf.user, conf.group, conf.mode) == ("root", "hello", 0o750)
    env = host.file(f"/srv/hello/releases/{release}/.flipback/env")
    assert (env.user, env.group, env.mode) == ("root", "hello", 0o640)
    assert 'HELLO_SECRET="s3cret-value-never-printed"' in env.content_string
    # The manifest (world-readable) keeps the names and a digest, never the values.
    text = host.file(f"/srv/hello/releases/{release}/manifest.json").content_string
    assert "s3cret-value-never-printed" not in text
    assert lib.manifest(host, release)["config"]["env_names"] == ["HELLO_SECRET"]
    unit = host.file(f"/etc/systemd/system/hello@{release}.service")
    assert (unit.user, unit.mode) == ("root", 0o644)
    assert "EnvironmentFile=/srv/hello/releases/%i/.flipback/env" in unit.content_string


def test_history_records_both_releases(host):
    v2 = lib.current_id(host)
    v1 = lib.manifest(host, v2)["replaces"]
    events = [(e["release"], e["event"]) for e in lib.history(host)]
    assert events == [(v1, "staged"), (v1, "active"), (v2, "staged"), (v2, "active")]


def test_nginx_proxies_through_current(host):
    site = host.file("/etc/nginx/conf.d/flipback-hello.conf").content_string
    assert "proxy_pass http://unix:/srv/hello/current/sock:;" in site
    assert host.socket("tcp://0.0.0.0:8000").is_listening


def test_unit_sandboxing_exposure_is_at_most_2_5(host):
    unit = f"hello@{lib.current_id(host)}.service"
    out = host.run(f"systemd-analyze security --no-pager {unit}")
    assert out.rc == 0, out.stderr
    overall = [line for line in out.stdout.splitlines() if "Overall exposure level" in line]
    assert overall, out.stdout
    exposure = float(overall[0].split(":")[1].split()[0])
    assert exposure <= 2.5, out.stdout


def test_service_runs_as_its_user_with_no_new_privileges(host):
    unit = f"hello@{lib.current_id(host)}.service"
    out = host.run(f"systemctl show -p User -p NoNewPrivileges -p ProtectSystem {unit}")
    props = dict(line.split("=", 1) for line in out.stdout.split())
    assert props == {"User": "hello", "NoNewPrivileges": "yes", "ProtectSystem": "strict"}
    pid = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "hello"


@pytest.mark.parametrize(
    ("playbook", "extra", "says"),
    [
        # v2 goes on as the standby of v1: nothing starts (v1 runs) and nothing stops.
        pytest.param(
            "deploy.yml",
            ("-e", "ref=v1"),
            "would start nothing; would stop nothing",
            id="deploy-v1",
        ),
        pytest.param(
            "rollback.yml",
            (),
            "would start nothing (standby); would stop hello@{v2}.service",
            id="rollback",
        ),
    ],
)
def test_dry_run_shows_the_flip_and_changes_nothing(host, playbook, extra, says):
    v2 = lib.current_id(host)
    v1 = lib.manifest(host, v2)["replaces"]
    before = lib.snapshot(host)
    run = lib.run_playbook(host, playbook, "--check", "--diff", *extra)
    out = lib.output(run)
    assert run.returncode == 0, out[-3000:]
    assert f"-current -> releases/{v2}" in out, out[-3000:]
    assert f"+current -> releases/{v1}" in out
    assert says.format(v2=v2) in out, out[-3000:]
    assert lib.snapshot(host) == before
    assert lib.public_health(host)["release"] == v2


def _both(host, ref: str, *extra: str) -> list[tuple[int, str]]:
    runs = [lib.start_playbook(host, "deploy.yml", "-e", f"ref={ref}", *extra) for _ in range(2)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        results.append((run.returncode, " ".join((out + " " + err).split())))
    return results


def test_two_deploys_at_once_one_fails_naming_the_holder(host):
    # A deploy that switches (v2 -> v1) holds the lock from staging to the switch. The
    # first run is paused (SIGSTOP, by the flipback_kill callback) right after the task
    # that takes the lock, so the second one asks while the first holds it, every time,
    # however fast the first would have been.
    v2 = lib.current_id(host)
    v1 = lib.manifest(host, v2)["replaces"]
    pause = {
        "ANSIBLE_CALLBACKS_ENABLED": lib.callbacks_with_kill(),
        "FLIPBACK_KILL_AFTER_TASK": "Take the deploy lock",
        "FLIPBACK_KILL_SIGNAL": "STOP",
    }
    holder = lib.start_playbook(host, "deploy.yml", "-e", "ref=v1", env=pause)
    try:
        deadline = time.monotonic() + 300
        while lib.process_state(holder.pid) != "T":
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the first deploy never reached its pause"
            time.sleep(0.1)
        assert host.file("/run/lock/flipback/hello/.lock").exists
        busy = lib.run_playbook(host, "deploy.yml", "-e", "ref=v1")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=600)
    said = lib.output(busy)
    assert holder.returncode == 0, (out + err)[-3000:]
    assert busy.returncode != 0, said[-3000:]
    assert "hello is locked by" in said, said[-3000:]
    for field in ("playbook Deploy - stage", f"release {v1}", "action deploy", "since"):
        assert field in said, said[-2000:]
    assert "the rollout stopped" in said, said[-2000:]
    assert lib.current_id(host) == v1
    assert lib.public_health(host)["release"] == v1
    assert not host.file("/run/lock/flipback/hello/.lock").exists


def test_two_deploys_at_once_with_lock_wait_both_succeed(host):
    listing = host.run("ls /srv/hello/releases").stdout.split()
    (v2,) = [r for r in listing if lib.manifest(host, r)["git_sha"] == lib.git_sha("v2")]
    results = _both(host, "v2", "-e", "lock_wait=300")
    assert [rc for rc, _ in results] == [0, 0], results
    assert lib.current_id(host) == v2
    assert not host.file("/run/lock/flipback/hello/.lock").exists


def test_status_reports_what_is_live(host, tmp_path):
    v2 = lib.current_id(host)
    v1 = lib.manifest(host, v2)["replaces"]
    path = tmp_path / "status.json"
    before = lib.snapshot(host)
    run = lib.run_playbook(host, "status.yml", "-e", f"status_json={path}")
    assert run.returncode == 0, lib.output(run)[-3000:]
    assert "SERVICE" in run.stdout and v2 in run.stdout  # the printed table
    hello = json.loads(path.read_text())["hosts"][host.backend.get_hostname()]["services"][0]
    assert (hello["name"], hello["current"], hello["previous_good"]) == ("hello", v2, v1)
    assert hello["health"]["ok"] is True
    assert hello["health"]["release"] == v2
    states = {i["release"]: i["active_state"] for i in hello["instances"]}
    # v1 runs on as the warm standby.
    assert states == {v1: "active", v2: "active"}
    assert {r["id"]: r["status"] for r in hello["releases"]} == {v1: "good", v2: "active"}
    assert hello["lock"] is None
    assert lib.snapshot(host) == before


def test_history_lists_the_deploys(host):
    v2 = lib.current_id(host)
    run = lib.run_playbook(host, "history.yml", "-e", "service=hello", "-e", "last=20")
    assert run.returncode == 0, lib.output(run)[-3000:]
    lines = [line for line in run.stdout.splitlines() if v2 in line]
    assert any(" staged " in line for line in lines), run.stdout[-2000:]
    assert any(" active " in line for line in lines), run.stdout[-2000:]
