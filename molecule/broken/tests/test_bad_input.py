"""Bad input fails before any host changes, naming field, value, expectation and retry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

GOOD = {
    "name": "hello",
    "source": str(lib.REPO),
    "subdir": "services/hello",
    "ref": "v1",
    "app": "app:app",
    "port": 8000,
    "workers": 1,
    "health": {"path": "/health", "expect_json": {"ok": True, "service": "hello"}},
    "env": {"HELLO_SECRET": "s3cret-value-never-printed"},
    "keep_releases": 3,
    "user": "hello",
}
OTHER = {**GOOD, "name": "other", "user": "other", "port": 8001, "env": {}}


def services(**changes) -> str:
    return json.dumps({"flipback_services": [{**GOOD, **changes}]})


# (id, playbook, extra arguments, text the failure must contain)
CASES = [
    (
        "name-slash",
        "deploy.yml",
        ["-e", services(name="bad/name")],
        "name: got 'bad/name', expected",
    ),
    ("name-dotdot", "deploy.yml", ["-e", services(name="..")], "name: got '..', expected"),
    (
        "name-space",
        "deploy.yml",
        ["-e", services(name="has space")],
        "name: got 'has space', expected",
    ),
    (
        "release-traversal",
        "rollback.yml",
        ["-e", "service=hello", "-e", "release=../../etc"],
        "release: got '../../etc', expected a release id",
    ),
    (
        "release-missing",
        "rollback.yml",
        ["-e", "service=hello", "-e", "release=20200101T000000-0123456789"],
        "release: got '20200101T000000-0123456789', expected a release directory",
    ),
    (
        "keep-zero",
        "deploy.yml",
        ["-e", services(keep_releases=0)],
        "keep_releases: got 0, expected an integer >= 2",
    ),
    (
        "keep-negative",
        "deploy.yml",
        ["-e", services(keep_releases=-1)],
        "keep_releases: got -1, expected an integer >= 2",
    ),
    (
        "app-not-module-attr",
        "deploy.yml",
        ["-e", services(app="app")],
        "app: got 'app', expected 'module:attribute'",
    ),
    (
        "port-out-of-range",
        "deploy.yml",
        ["-e", services(port=70000)],
        "port: got 70000, expected an integer 1-65535",
    ),
    (
        "port-used-twice",
        "deploy.yml",
        ["-e", json.dumps({"flipback_services": [GOOD, {**OTHER, "port": 8000}]})],
        "port: got 8000, already used by hello",
    ),
    (
        "health-path-relative",
        "deploy.yml",
        ["-e", services(health={"path": "health"})],
        "health.path: got 'health', expected a path starting with '/'",
    ),
    (
        "source-missing",
        "deploy.yml",
        ["-e", "source=/nonexistent/repo"],
        "source: got '/nonexistent/repo', expected a git repository",
    ),
    (
        "ref-missing",
        "deploy.yml",
        ["-e", "ref=no-such-ref"],
        "ref: got 'no-such-ref', expected a branch, tag or commit",
    ),
    (
        "workers-zero",
        "deploy.yml",
        ["-e", services(workers=0)],
        "workers: got 0, expected an integer 1-64",
    ),
    (
        "env-name-with-equals",
        "deploy.yml",
        ["-e", services(env={"A=B": "x"})],
        "env: got 'A=B', expected variable names",
    ),
    *[
        (
            f"env-reserved-{name.lower()}",
            "deploy.yml",
            ["-e", services(env={name: "x", "HELLO_SECRET": "s3cret-value-never-printed"})],
            f"env.{name}: got a reserved name",
        )
        for name in ("FLIPBACK_RELEASE", "PATH", "LD_PRELOAD", "PYTHONPATH", "UVICORN_PORT")
    ],
    *[
        (
            f"env-value-{label}",
            "deploy.yml",
            ["-e", services(env={"HELLO_SECRET": f"s3cret-value-never-printed{char}x"})],
            f"env.HELLO_SECRET: got a value with the control character {code}",
        )
        for label, char, code in (
            ("newline", "\n", "U+000A"),
            ("cr", "\r", "U+000D"),
            ("escape", "\x1b", "U+001B"),
        )
    ],
    *[
        (f"selector-{name}-{label}", playbook, ["-e", f"{name}={value}"], expected)
        for name, label, value, playbook, expected in (
            ("batch", "text", "abc", "deploy.yml", "batch: got 'abc', expected a number"),
            ("batch", "zero", "0", "deploy.yml", "batch: got '0', expected a number"),
            ("batch", "over-100", "150%", "deploy.yml", "batch: got '150%', expected"),
            ("canary", "negative", "-1", "deploy.yml", "canary: got '-1', expected"),
            ("canary", "text", "abc", "deploy.yml", "canary: got 'abc', expected"),
            ("lock_wait", "text", "abc", "deploy.yml", "lock_wait: got 'abc', expected"),
            ("lock_wait", "negative", "-5", "rollback.yml", "lock_wait: got '-5', expected"),
            ("ref", "empty", "", "deploy.yml", "ref: got '', expected"),
            ("source", "empty", "", "deploy.yml", "source: got '', expected"),
            ("service", "empty", "", "deploy.yml", "service: got '', expected"),
            ("release", "empty", "", "rollback.yml", "release: got '', expected"),
        )
    ],
    (
        "name-of-an-os-template-unit",
        "deploy.yml",
        ["-e", services(name="user", user="usersvc")],
        "name: got 'user', which the host's systemd already uses",
    ),
    (
        "factory-not-bool",
        "deploy.yml",
        ["-e", services(factory="yes please")],
        "factory: got 'yes please', expected true or false",
    ),
    (
        "command-unknown-point",
        "deploy.yml",
        ["-e", services(commands={"before_deploy": ["true"]})],
        "commands: got 'before_deploy', expected one of before_switch_once",
    ),
    (
        "command-empty",
        "deploy.yml",
        ["-e", services(commands={"before_switch_once": [""]})],
        "commands.before_switch_once[0].run: got '', expected a non-empty shell command",
    ),
    (
        "command-timeout",
        "deploy.yml",
        ["-e", services(commands={"after_switch": [{"run": "true", "timeout": 0}]})],
        "commands.after_switch[0].timeout: got 0, expected seconds",
    ),
    (
        "health-host",
        "deploy.yml",
        ["-e", services(health={"host": "bad host;"})],
        "health.host: got 'bad host;', expected a host name",
    ),
    (
        "release-in",
        "deploy.yml",
        ["-e", services(health={"release_in": "body"})],
        "health.release_in: got 'body', expected header",
    ),
    (
        "nginx-static-outside",
        "deploy.yml",
        ["-e", services(nginx={"static": {"/static/": "../../etc"}})],
        "nginx.static: got {'/static/': '../../etc'}, expected a mapping of URL prefix",
    ),
    (
        "nginx-max-body",
        "deploy.yml",
        ["-e", services(nginx={"max_body": "1t"})],
        "nginx.max_body: got '1t', expected an nginx size",
    ),
    (
        "requirements-outside",
        "deploy.yml",
        ["-e", services(requirements="../../etc/passwd")],
        "requirements: got '../../etc/passwd', expected a requirements file",
    ),
    (
        "process-name-not-a-unit-name",
        "deploy.yml",
        ["-e", services(processes={"Celery Worker": "celery -A proj worker"})],
        "processes: got the name 'Celery Worker', expected a lowercase name",
    ),
    (
        "process-name-with-a-dot",
        "deploy.yml",
        ["-e", services(processes={"web.1": "celery -A proj worker"})],
        "processes: got the name 'web.1', expected a lowercase name",
    ),
    (
        "process-empty-command",
        "deploy.yml",
        ["-e", services(processes={"worker": " "})],
        "processes.worker: got ' ', expected a non-empty command line",
    ),
    (
        "process-command-two-lines",
        "deploy.yml",
        ["-e", services(processes={"worker": "celery worker\nrm -rf /"})],
        "expected a non-empty command line on one line",
    ),
    (
        "process-start-seconds",
        "deploy.yml",
        ["-e", services(processes={"worker": "true"}, process_start_seconds=-1)],
        "process_start_seconds: got -1, expected seconds, 0-300",
    ),
    (
        "steps-zero",
        "rollback.yml",
        ["-e", "service=hello", "-e", "steps=0"],
        "steps: got '0', expected an integer >= 1",
    ),
]


@pytest.mark.parametrize(
    ("playbook", "extra", "expected"),
    [pytest.param(p, e, x, id=i) for i, p, e, x in CASES],
)
def test_bad_input_fails_before_any_change(host, playbook, extra, expected):
    if host.backend.get_hostname() != "mbroken-1":
        # Input is checked before any host is touched; one machine shows that, and the
        # runs are limited to it.
        pytest.skip("bad input is checked on the first machine only")
    before = lib.snapshot(host)
    run = lib.run_playbook(host, playbook, *extra)
    out = lib.output(run)
    assert run.returncode != 0, out[-2000:]
    assert expected in out, out[-3000:]
    # Whether a retry helps: the result's field, or (a rollback refused for the whole
    # fleet at once, in one message) the same said in words.
    assert '"retryable": false' in out or "retrying the same command does not help" in out, out[
        -2000:
    ]
    assert "s3cret-value-never-printed" not in out
    assert lib.snapshot(host) == before
    assert lib.public_health(host)["release"] == lib.current_id(host)


def test_a_lock_file_that_does_not_parse_fails_before_any_change(host, tmp_path_factory):
    """A project whose uv.lock uv cannot read: the build says so, not retryable, and no
    host is touched."""
    if host.backend.get_hostname() != "mbroken-1":
        pytest.skip("bad input is checked on the first machine only")
    repo = tmp_path_factory.mktemp("broken-lock")
    service = repo / "services" / "hello"
    service.mkdir(parents=True)
    (service / "app.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (service / "pyproject.toml").write_text(
        '[project]\nname = "hello"\nversion = "1"\ndependencies = []\n'
    )
    (service / "uv.lock").write_text("this is [not a lock\n")
    for argv in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "lock"],
        ["tag", "v1"],
    ):
        subprocess.run(["git", "-C", str(repo), *argv], check=True)
    before = lib.snapshot(host)
    run = lib.run_playbook(host, "deploy.yml", "-e", services(source=str(repo)))
    out = lib.output(run)
    assert run.returncode != 0, out[-2000:]
    assert "uv.lock: `uv export` failed" in out, out[-3000:]
    assert '"retryable": false' in out, out[-2000:]
    assert lib.snapshot(host) == before
    assert lib.public_health(host)["release"] == lib.current_id(host)
