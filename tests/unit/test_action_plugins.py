"""Unit tests of the controller plugins in plugins/action/ and plugins/filter/.

Each plugin file is loaded from its path, as Ansible's plugin loaders would. The pure
functions are tested directly (live_runs on a fake /proc); ActionModule.run gets the
smallest task and connection stand-ins ActionBase needs, since none of the actions
talks to a host.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.module_utils.flipback_runtime import env_file_text, resolve_release
from fakes import action, load_plugin

pytestmark = pytest.mark.controller

SECRET = "s3cr3t-hunter2"
R1 = "20261129T141500-3f2a9c1d0e"
R2 = "20261130T090000-aaaaaaaaaa"


load = load_plugin

service_config = load("service_config")
release_build = load("release_build")
release_config = load("release_config")
rollout_report = load("rollout_report")
filters = load("flipback", "filter")


# =========================================================================== service_config


def test_run_identity_names_the_controller_the_run_and_the_deployer(monkeypatch):
    monkeypatch.setenv("SUDO_USER", "carol")
    identity = service_config.run_identity(now=1_795_953_600.7)
    host = socket.gethostname()
    assert identity == {
        "run_id": f"{host}:{os.getppid()}:1795953600",
        "deployer": f"carol@{host}",
    }


def test_run_identity_without_sudo_names_the_login(monkeypatch):
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(service_config, "_login", lambda: "dave")
    assert service_config.run_identity()["deployer"] == f"dave@{socket.gethostname()}"


def fake_proc(tmp_path: Path, processes: dict[str, list[bytes] | None]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    for entry, argv in processes.items():
        (proc / entry).mkdir()
        if argv is not None:
            (proc / entry / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (proc / "self").mkdir(exist_ok=True)
    (proc / "meminfo").write_text("MemTotal: 1 kB\n")
    return proc


def test_live_runs_lists_every_ansible_playbook_process(tmp_path):
    proc = fake_proc(
        tmp_path,
        {
            "101": [b"/usr/bin/python3", b"/opt/venv/bin/ansible-playbook", b"deploy.yml"],
            "202": [b"ansible-playbook", b"rollback.yml"],
            "303": [b"/usr/bin/python3", b"/usr/bin/ansible", b"all", b"-m", b"ping"],
            "404": [b"vim", b"x", b"ansible-playbook"],
            "505": [b"/usr/bin/python3", b"/opt/ansible-playbook-wrapper"],
            "606": None,  # gone between listing and reading
            "707": [b""],  # a kernel thread
        },
    )

    runs = service_config.live_runs(str(proc))

    assert runs["controller"] == socket.gethostname()
    assert runs["pids"] == [101, 202]
    assert isinstance(runs["at"], float)


def test_live_runs_of_this_process_tree(tmp_path):
    # The real /proc: this test's own process is no ansible-playbook.
    assert os.getpid() not in service_config.live_runs()["pids"]


def services() -> list[dict]:
    return [
        {
            "name": "web",
            "source": "/srv/git/web.git",
            "app": "app:app",
            "port": 8000,
            "env": {"DATABASE_URL": f"postgres://web:{SECRET}@db/web", "DEBUG": "0"},
        },
        {"name": "api", "source": "/srv/git/api.git", "app": "api.main:app", "port": 8001},
    ]


def test_service_config_checks_names_the_run_and_hides_env(monkeypatch):
    monkeypatch.setattr(service_config, "live_runs", lambda: {"controller": "c", "pids": [1]})
    monkeypatch.setattr(
        service_config, "run_identity", lambda: {"run_id": "c:1:2", "deployer": "u@c"}
    )

    result = action(service_config, {"services": services(), "service": "web"}).run(task_vars={})

    assert "failed" not in result
    assert result["changed"] is False
    assert (result["run_id"], result["deployer"]) == ("c:1:2", "u@c")
    assert result["live_runs"] == {"controller": "c", "pids": [1]}
    assert [s["name"] for s in result["services"]] == ["web"]
    assert result["services"][0]["env_names"] == ["DATABASE_URL", "DEBUG"]
    assert isinstance(result["elapsed"], float)
    assert SECRET not in json.dumps(result)
    assert result["invocation"]["module_args"]["services"][0]["env"]["DEBUG"] == (
        "(value not shown)"
    )


def test_service_config_refuses_bad_input_naming_every_problem():
    bad = [{"name": "Web!", "port": 80}, {"name": "api", "port": "x"}]

    result = action(service_config, {"services": bad}).run(task_vars={})

    assert result["failed"] is True
    assert result["retryable"] is False
    assert len(result["problems"]) >= 2
    assert result["msg"]
    assert isinstance(result["elapsed"], float)
    assert "run_id" not in result


def test_service_config_rejects_unknown_arguments():
    with pytest.raises(AnsibleActionFail):
        action(service_config, {"services": services(), "colour": "blue"}).run(task_vars={})


# =========================================================================== release_build


CODE_TAR = b"a code-only artifact\n" * 3


class Builds:
    """Stands in for Builder; its code-only artifact is a real file, as the action reads it."""

    def __init__(self, tmp_path: Path, error: Exception | None = None, size: int = 0) -> None:
        self.specs: list = []
        self.error = error
        self.code_artifact = tmp_path / f"web-{R1}.code.tar"
        self.code_artifact.write_bytes(CODE_TAR if not size else b"x" * size)

    def __call__(self, spec):
        self.specs.append(spec)
        return self

    def build(self) -> dict:
        if self.error is not None:
            raise self.error
        return {
            "changed": True,
            "release": R1,
            "deps_key": "0123456789abcdef",
            "code_artifact": str(self.code_artifact),
        }


def test_release_build_runs_the_builder_in_process(monkeypatch, tmp_path):
    builds = Builds(tmp_path)
    monkeypatch.setattr(release_build, "Builder", builds)

    result = action(
        release_build, {"service": "web", "source": "/srv/git/web.git", "subdir": "/svc/web/"}
    ).run(task_vars={})

    assert (result["changed"], result["release"], result["deps_key"]) == (
        True,
        R1,
        "0123456789abcdef",
    )
    assert isinstance(result["elapsed"], float)
    (spec,) = builds.specs
    assert (spec.service, spec.source, spec.subdir, spec.ref) == (
        "web",
        "/srv/git/web.git",
        "svc/web",
        "HEAD",
    )
    assert spec.cache_dir == os.path.expanduser("~/.cache/flipback")
    assert spec.pip == [sys.executable, "-m", "pip"]


def test_release_build_passes_pip_and_ref(monkeypatch, tmp_path):
    builds = Builds(tmp_path)
    monkeypatch.setattr(release_build, "Builder", builds)
    action(
        release_build,
        {"service": "web", "source": "s", "ref": "v2", "pip": ["/opt/pip"], "cache_dir": "/c"},
    ).run(task_vars={})
    (spec,) = builds.specs
    assert (spec.ref, spec.pip, spec.cache_dir) == ("v2", ["/opt/pip"], "/c")


def test_release_build_failure_carries_the_details(monkeypatch, tmp_path):
    error = release_build.BuildError("ref v9 not found", retryable=False, field="ref")
    monkeypatch.setattr(release_build, "Builder", Builds(tmp_path, error))

    result = action(release_build, {"service": "web", "source": "s", "ref": "v9"}).run(task_vars={})

    assert result["failed"] is True
    assert (result["msg"], result["retryable"], result["field"]) == (
        "ref v9 not found",
        False,
        "ref",
    )
    assert isinstance(result["elapsed"], float)
    assert "code_b64" not in result


def test_release_build_returns_the_code_only_artifact_inline(monkeypatch, tmp_path):
    monkeypatch.setattr(release_build, "Builder", Builds(tmp_path))

    result = action(release_build, {"service": "web", "source": "s"}).run(task_vars={})

    assert "failed" not in result
    assert base64.b64decode(result["code_b64"], validate=True) == CODE_TAR


def test_release_build_leaves_a_big_code_only_artifact_out(monkeypatch, tmp_path):
    size = release_build.INLINE_LIMIT + 1
    monkeypatch.setattr(release_build, "Builder", Builds(tmp_path, size=size))

    result = action(release_build, {"service": "web", "source": "s"}).run(task_vars={})

    assert "failed" not in result
    assert result["code_b64"] is None
    assert result["code_artifact"] == str(tmp_path / f"web-{R1}.code.tar")


@pytest.mark.parametrize(
    ("size", "limit", "inline"),
    [
        pytest.param(0, 10, True, id="empty"),
        pytest.param(9, 10, True, id="below"),
        pytest.param(10, 10, True, id="at-the-limit"),
        pytest.param(11, 10, False, id="above"),
    ],
)
def test_inline_code_up_to_the_limit(tmp_path, size, limit, inline):
    path = tmp_path / "code.tar"
    data = bytes(range(256))[:size]
    path.write_bytes(data)

    encoded = release_build.inline_code(str(path), limit=limit)

    if inline:
        assert encoded is not None
        assert base64.b64decode(encoded, validate=True) == data
    else:
        assert encoded is None


def test_inline_code_default_limit_is_two_mib(tmp_path):
    assert release_build.INLINE_LIMIT == 2 * 1024 * 1024
    path = tmp_path / "code.tar"
    path.write_bytes(b"\0" * release_build.INLINE_LIMIT)
    assert release_build.inline_code(str(path)) is not None
    path.write_bytes(b"\0" * (release_build.INLINE_LIMIT + 1))
    assert release_build.inline_code(str(path)) is None


def test_release_build_needs_a_source():
    with pytest.raises(AnsibleActionFail):
        action(release_build, {"service": "web"}).run(task_vars={})


# =========================================================================== release_config

BUILD_ID = "20261129T141500-3f2a9c1d0e"


def web(**changes: object) -> dict:
    """The web service as service_config returns it (checked, env names only)."""
    return {
        "name": "web",
        "user": "web",
        "app": "app:app",
        "factory": False,
        "workers": 2,
        "port": 8000,
        "env_names": ["DATABASE_URL", "DEBUG"],
        **changes,
    }


WEB_ENV = {"DATABASE_URL": f"postgres://web:{SECRET}@db/web", "DEBUG": "0"}


def test_release_config_works_out_the_release_of_this_host():
    args = {"service": web(), "env": WEB_ENV, "build_id": BUILD_ID, "root": "/srv"}

    result = action(release_config, args).run(task_vars={})

    assert "failed" not in result
    expected = resolve_release(
        service="web",
        user="web",
        app="app:app",
        factory=False,
        workers=2,
        port=8000,
        env=WEB_ENV,
        build_id=BUILD_ID,
        home="/srv/web",
    )
    assert result["changed"] is False
    assert (result["service"], result["build_id"]) == ("web", BUILD_ID)
    assert (result["release"], result["config"]) == (expected["release"], expected["config"])
    assert result["config"]["env_names"] == ["DATABASE_URL", "DEBUG"]
    assert result["config"]["port"] == 8000
    assert isinstance(result["elapsed"], float)
    assert SECRET not in json.dumps(result)


@pytest.mark.parametrize(
    ("other", "same"),
    [
        pytest.param({"env": dict(WEB_ENV)}, True, id="same-configuration"),
        pytest.param({"env": {**WEB_ENV, "DEBUG": "1"}}, False, id="other-env-value"),
        pytest.param({"service": web(workers=4)}, False, id="other-workers"),
        pytest.param({"service": web(port=8001)}, False, id="other-port"),
        pytest.param({"service": web(app="app:make()")}, False, id="factory"),
        pytest.param({"root": "/opt"}, False, id="other-root"),
        pytest.param({"build_id": "20261130T090000-aaaaaaaaaa"}, False, id="other-build"),
    ],
)
def test_release_config_one_id_per_build_and_configuration(other, same):
    args = {"service": web(), "env": WEB_ENV, "build_id": BUILD_ID, "root": ""}

    first = action(release_config, args).run(task_vars={})
    second = action(release_config, {**args, **other}).run(task_vars={})

    assert (first["release"] == second["release"]) is same


def test_release_config_defaults():
    result = action(release_config, {"service": web(), "build_id": BUILD_ID}).run(task_vars={})

    assert "failed" not in result
    assert result["config"]["env_names"] == []
    assert (
        result["release"]
        == resolve_release(
            service="web",
            user="web",
            app="app:app",
            factory=False,
            workers=2,
            port=8000,
            env={},
            build_id=BUILD_ID,
            home="/srv/web",
        )["release"]
    )


def test_release_config_refuses_a_configuration_that_cannot_run():
    env = {"PATH": SECRET, "DEBUG": f"{SECRET}\n"}

    result = action(
        release_config, {"service": web(app="app"), "env": env, "build_id": "latest"}
    ).run(task_vars={})

    assert result["failed"] is True
    assert result["retryable"] is False
    assert [p.split(":")[0] for p in result["problems"]] == [
        "flipback_services (web).env.PATH",
        "flipback_services (web).env.DEBUG",
        "flipback_services (web).app",
        "build_id",
    ]
    assert result["msg"].startswith("invalid configuration (4 problems)")
    assert isinstance(result["elapsed"], float)
    assert "release" not in result
    assert SECRET not in json.dumps(result)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param({"service": {"name": "web"}}, id="no-build-id"),
        pytest.param({"build_id": BUILD_ID}, id="no-service"),
        pytest.param({"service": {"name": "web"}, "build_id": BUILD_ID, "colour": 1}, id="unknown"),
    ],
)
def test_release_config_checks_its_arguments(args):
    with pytest.raises(AnsibleActionFail):
        action(release_config, args).run(task_vars={})


# =========================================================================== filter


def test_filters_are_registered():
    assert filters.FilterModule().filters() == {
        "flipback_env_file": filters.flipback_env_file,
        "flipback_build_of": filters.flipback_build_of,
        "flipback_restore_target": filters.flipback_restore_target,
        "flipback_failed_on": filters.flipback_failed_on,
        "flipback_target_disagreement": filters.flipback_target_disagreement,
        "flipback_rollback_refusal": filters.flipback_rollback_refusal,
        "flipback_verify_report": filters.flipback_verify_report,
        "flipback_lock_hold": filters.flipback_lock_hold,
    }


def test_flipback_lock_hold_uses_the_run_forks(monkeypatch):
    from ansible import context

    services = [{"name": "web", "health": {"timeout": 30}}]
    args = {"hosts": 8, "canary": 1, "batch": "1", "stale_after": 120, "drain": 1}
    monkeypatch.setattr(context, "CLIARGS", {"forks": 20})
    wide = filters.flipback_lock_hold(services, **args)
    monkeypatch.setattr(context, "CLIARGS", {"forks": 2})
    narrow = filters.flipback_lock_hold(services, **args)
    # Eight batches of one host each: 8 switches of 91 s; staging in 1 round, then 4.
    assert wide == 120 + 8 * 91
    assert narrow == 120 * 4 + 8 * 91


def test_flipback_lock_hold_is_never_below_the_configured_stale_after(monkeypatch):
    from ansible import context

    monkeypatch.setattr(context, "CLIARGS", {"forks": 5})
    # No service in the run: nothing switches, the configured value stands.
    assert filters.flipback_lock_hold([], 0, 1, "100%", 120, 1) == 120


def test_flipback_lock_hold_refuses_what_is_not_a_list():
    with pytest.raises(AnsibleFilterError, match="expected a list of services"):
        filters.flipback_lock_hold({"name": "web"}, 2, 1, "100%", 120, 1)


@pytest.mark.parametrize(
    ("status", "build"),
    [
        pytest.param({"current": R1, "build": R2}, R2, id="recorded-build"),
        pytest.param({"current": R1, "build": None}, R1, id="older-release-is-its-own-build"),
        pytest.param({"current": None, "build": None}, None, id="nothing-live"),
    ],
)
def test_flipback_build_of(status, build):
    assert filters.flipback_build_of(status) == build


def test_flipback_build_of_refuses_what_is_not_a_status():
    with pytest.raises(AnsibleFilterError, match="expected a dict"):
        filters.flipback_build_of(["hello"])


@pytest.mark.parametrize(
    ("env", "values"),
    [
        pytest.param(WEB_ENV, WEB_ENV, id="values"),
        pytest.param({"WORKERS": 4, "RATIO": 0.5}, {"WORKERS": "4", "RATIO": "0.5"}, id="numbers"),
        pytest.param({}, {}, id="empty"),
        pytest.param(None, {}, id="none"),
    ],
)
def test_flipback_env_file_renders_the_env_file(env, values):
    assert filters.flipback_env_file(env, "web") == env_file_text(values)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        pytest.param(
            {"LD_PRELOAD": SECRET}, "(web).env.LD_PRELOAD: got a reserved name", id="name"
        ),
        pytest.param({"DEBUG": f"{SECRET}\r"}, "(web).env.DEBUG: got a value with", id="value"),
        pytest.param([SECRET], "(web).env: got a list", id="not-a-mapping"),
    ],
)
def test_flipback_env_file_refuses_what_systemd_cannot_carry(env, says):
    with pytest.raises(AnsibleFilterError) as failed:
        filters.flipback_env_file(env, "web")

    assert f"flipback_services {says}" in str(failed.value)
    assert SECRET not in str(failed.value)


def test_flipback_env_file_names_every_problem():
    with pytest.raises(AnsibleFilterError) as failed:
        filters.flipback_env_file({"PATH": "x", "1X": "y", "OK": "z"})

    message = str(failed.value)
    assert message.count("flipback_services (service).env") == 2
    assert "; " in message


# =========================================================================== rollout_report


# What an unknown outcome is told it should have been (flipback_request.OUTCOMES), spelled out.
EXPECTED = "(expected one of staged, already live, switched, not switched, failed, staging failed)"


def restore(name: str, **result: object) -> dict:
    return {"_flipback_item": {"name": name}, **result}


@pytest.mark.parametrize(
    ("state", "restores", "outcome", "ok", "problem"),
    [
        pytest.param(
            {"outcome": "switched", "current": R1}, [], f"switched to {R1}", True, None, id="ok"
        ),
        pytest.param(
            {"outcome": "switched", "current": R2},
            [],
            f"switched to {R2}",
            False,
            f"h1 web: runs {R2}, expected {R1} (its build with this host's configuration)",
            id="other-release",
        ),
        pytest.param(
            {"outcome": "switched", "current": R2, "release": R2},
            [],
            f"switched to {R2}",
            True,
            None,
            id="own-release-of-this-host",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1, "release": R2},
            [],
            f"switched to {R1}",
            False,
            f"h1 web: runs {R1}, expected {R2} (its build with this host's configuration)",
            id="not-its-own-release",
        ),
        pytest.param(
            {"outcome": "already live", "release": R1},
            [],
            f"already live on {R1}",
            True,
            None,
            id="already-live",
        ),
        pytest.param(
            {"outcome": "failed", "error": "deploy of web failed on h1: Gate 1"},
            [],
            "deploy of web failed on h1: Gate 1",
            False,
            "deploy of web failed on h1: Gate 1",
            id="failed",
        ),
        pytest.param(
            {"outcome": "staging failed"},
            [],
            "staging failed",
            False,
            "staging failed",
            id="staging-failed-without-error",
        ),
        pytest.param(
            {"outcome": "not switched", "previous": R2},
            [],
            f"not switched (the rollout stopped); stays on {R2}",
            True,
            None,
            id="not-switched",
        ),
        pytest.param(
            {"outcome": "not switched"},
            [],
            "not switched (the rollout stopped); stays on nothing",
            True,
            None,
            id="not-switched-first-deploy",
        ),
        pytest.param(
            {"outcome": "staged"}, [], f"staged {R1}; not switched", True, None, id="staged"
        ),
        # Outcomes are data from one set (flipback_request.OUTCOMES): anything else is a
        # problem of the run, never shown as if it were an outcome.
        pytest.param(
            {"outcome": "prepared"},
            [],
            f"unknown outcome 'prepared' {EXPECTED}",
            False,
            f"h1 web: unknown outcome 'prepared' {EXPECTED}",
            id="other-outcome",
        ),
        pytest.param(
            {},
            [],
            f"unknown outcome 'unknown' {EXPECTED}",
            False,
            f"h1 web: unknown outcome 'unknown' {EXPECTED}",
            id="no-outcome",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1, "previous": R2},
            [restore("web", changed=True)],
            f"restored to {R2} (had switched to {R1})",
            True,
            None,
            id="restored",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1},
            [restore("web", failed=True, msg="Gate 2")],
            "RESTORE FAILED: Gate 2",
            False,
            "h1 web: RESTORE FAILED: Gate 2",
            id="restore-failed",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1},
            [restore("web", failed=True)],
            "RESTORE FAILED: no message",
            False,
            "h1 web: RESTORE FAILED: no message",
            id="restore-failed-without-message",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1},
            [restore("web", skipped=True), restore("api", changed=True), "junk", {"changed": 1}],
            f"switched to {R1}",
            True,
            None,
            id="restore-skipped-or-of-another-service",
        ),
    ],
)
def test_host_lines(state, restores, outcome, ok, problem):
    # The release this host was to run, as its stage step noted it.
    rows, problems = rollout_report.host_lines("h1", {"web": {"release": R1, **state}}, restores)
    assert rows == [
        {"host": "h1", "service": "web", "outcome": outcome, "ok": ok, "config_changes": []}
    ]
    assert problems == ([problem] if problem else [])


CHANGES = ["workers 1 -> 2", "+DEBUG", "SECRET_KEY"]
SAID = " (config changed: workers 1 -> 2, +DEBUG, SECRET_KEY)"


@pytest.mark.parametrize(
    ("state", "restores", "outcome"),
    [
        pytest.param(
            {"outcome": "switched", "current": R1}, [], f"switched to {R1}{SAID}", id="switched"
        ),
        pytest.param({"outcome": "staged"}, [], f"staged {R1}; not switched{SAID}", id="staged"),
        pytest.param(
            {"outcome": "failed", "error": "deploy of web failed on h1: Gate 1"},
            [],
            f"deploy of web failed on h1: Gate 1{SAID}",
            id="failed",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1, "previous": R2},
            [restore("web", changed=True)],
            f"restored to {R2} (had switched to {R1}){SAID}",
            id="restored",
        ),
        pytest.param(
            {"outcome": "switched", "current": R1},
            [restore("web", failed=True, msg="Gate 2")],
            f"RESTORE FAILED: Gate 2{SAID}",
            id="restore-failed",
        ),
        # Nothing of the new configuration runs here: its changes are not news.
        pytest.param(
            {"outcome": "already live", "release": R1},
            [],
            f"already live on {R1}",
            id="already-live",
        ),
        pytest.param(
            {"outcome": "not switched", "previous": R2},
            [],
            f"not switched (the rollout stopped); stays on {R2}",
            id="not-switched",
        ),
        pytest.param({"outcome": "staging failed"}, [], "staging failed", id="staging-failed"),
    ],
)
def test_host_lines_name_the_config_changes_of_what_ran(state, restores, outcome):
    state = {**state, "config_changes": CHANGES}

    rows, _problems = rollout_report.host_lines("h1", {"web": {"release": R1, **state}}, restores)

    assert [(r["outcome"], r["config_changes"]) for r in rows] == [(outcome, CHANGES)]


@pytest.mark.parametrize("changes", [None, []], ids=["none", "empty"])
def test_host_lines_without_config_changes_say_nothing_of_them(changes):
    state = {"outcome": "switched", "current": R1, "config_changes": changes}

    rows, _problems = rollout_report.host_lines("h1", {"web": state}, [])

    assert [(r["outcome"], r["config_changes"]) for r in rows] == [(f"switched to {R1}", [])]


def test_host_lines_of_a_host_that_did_not_report():
    rows, problems = rollout_report.host_lines("h9", {}, [])
    assert rows == [{"host": "h9", "service": "-", "outcome": "no report", "ok": False}]
    assert problems == ["h9: did not report (unreachable, or failed before staging)"]


def test_host_lines_one_row_per_service_in_name_order():
    states = {
        "web": {"outcome": "switched", "current": R1, "release": R1},
        "api": {"outcome": "staged", "release": R2},
    }
    rows, _ = rollout_report.host_lines("h1", states, [])
    assert [(r["service"], r["outcome"]) for r in rows] == [
        ("api", f"staged {R2}; not switched"),
        ("web", f"switched to {R1}"),
    ]


def test_host_lines_without_a_release_accepts_what_switched():
    rows, problems = rollout_report.host_lines(
        "h1", {"web": {"outcome": "switched", "current": R2}}, []
    )
    assert (rows[0]["ok"], problems) == (True, [])


def report(rollout: dict, hosts: list[str], **extra: object) -> dict:
    args = {"hosts": hosts, "rollout": rollout, **extra}
    return action(rollout_report, args).run(task_vars={})


def test_report_of_a_complete_rollout():
    rollout = {
        "h1": {"web": {"outcome": "switched", "current": R1}},
        "host-two": {"web": {"outcome": "already live", "release": R1}},
    }

    result = report(rollout, ["h1", "host-two"])

    assert "failed" not in result
    assert result["changed"] is False
    assert result["problems"] == []
    assert result["lines"] == [
        f"h1        web: switched to {R1}",
        f"host-two  web: already live on {R1}",
    ]
    assert result["msg"] == "deploy: rollout complete\n" + "\n".join(result["lines"])
    assert [r["host"] for r in result["report"]] == ["h1", "host-two"]


def test_report_of_a_stopped_rollout_fails_naming_every_problem():
    rollout = {
        "h1": {"web": {"outcome": "switched", "current": R1, "previous": R2, "release": R1}},
        "h2": {"web": {"outcome": "failed", "error": "deploy of web failed on h2: Gate 2"}},
        "h3": {"web": {"outcome": "not switched", "previous": R2}},
    }
    restored = {"h1": [restore("web", changed=True)]}

    result = report(rollout, ["h1", "h2", "h3", "h4"], restored=restored, action="deploy")

    assert result["failed"] is True
    assert result["msg"].startswith("deploy: the rollout stopped\n")
    assert result["problems"] == [
        "deploy of web failed on h2: Gate 2",
        "h4: did not report (unreachable, or failed before staging)",
    ]
    assert result["msg"].endswith(
        "\n- deploy of web failed on h2: Gate 2"
        "\n- h4: did not report (unreachable, or failed before staging)"
    )
    assert f"h1    web: restored to {R2} (had switched to {R1})" in result["lines"]
    assert "h4    -: no report" in result["lines"]


def test_report_of_a_failed_after_switch_command_stops_and_restores():
    error = "deploy of web failed on h1: after_switch command 'notify' of web release x exited 3"
    rollout = {
        "h1": {
            "web": {
                "outcome": "switched",
                "current": R1,
                "previous": R2,
                "release": R1,
                "error": error,
            }
        },
        "h2": {"web": {"outcome": "not switched", "previous": R2}},
    }
    restored = {"h1": [restore("web", changed=True)]}

    result = report(rollout, ["h1", "h2"], restored=restored, action="deploy")

    assert result["failed"] is True
    assert result["msg"].startswith("deploy: the rollout stopped\n")
    assert result["problems"] == [error]
    assert f"h1    web: restored to {R2} (had switched to {R1}); {error}" in result["lines"]


def test_report_of_hosts_on_different_releases_fails_without_a_stop():
    rollout = {
        "h1": {"web": {"outcome": "switched", "current": R1, "release": R1}},
        "h2": {"web": {"outcome": "switched", "current": R2, "release": R1}},
    }

    result = report(rollout, ["h1", "h2"], action="rollback")

    assert result["failed"] is True
    assert result["msg"].startswith("rollback: rollout finished with problems\n")
    assert result["problems"] == [
        f"h2 web: runs {R2}, expected {R1} (its build with this host's configuration)"
    ]


def test_report_of_hosts_on_their_own_releases_is_complete():
    # Two hosts with different env values: two release ids of one build, both right.
    rollout = {
        "h1": {"web": {"outcome": "switched", "current": R1, "release": R1}},
        "h2": {
            "web": {
                "outcome": "switched",
                "current": R2,
                "release": R2,
                "config_changes": ["DATABASE_URL"],
            }
        },
    }

    result = report(rollout, ["h1", "h2"])

    assert "failed" not in result
    assert result["problems"] == []
    assert result["lines"] == [
        f"h1    web: switched to {R1}",
        f"h2    web: switched to {R2} (config changed: DATABASE_URL)",
    ]
    assert [r["config_changes"] for r in result["report"]] == [[], ["DATABASE_URL"]]


def test_report_of_a_failed_restore_fails():
    rollout = {"h1": {"web": {"outcome": "switched", "current": R1}}}
    restored = {"h1": [restore("web", failed=True, msg="unreachable")]}

    result = report(rollout, ["h1"], restored=restored)

    assert result["failed"] is True
    assert result["problems"] == ["h1 web: RESTORE FAILED: unreachable"]


def test_report_needs_the_hosts():
    with pytest.raises(AnsibleActionFail):
        action(rollout_report, {"rollout": {}}).run(task_vars={})


# =========================================================================== release


class _ReleaseHost:
    """The release module as the host would answer it, per action, recording each call."""

    def __init__(self, **answers: dict) -> None:
        self.answers = answers
        self.calls: list[dict] = []

    def __call__(self, module_name, module_args, task_vars):
        assert module_name == "release"
        self.calls.append(module_args)
        return dict(self.answers[module_args["action"]])


def _release_action(
    host: _ReleaseHost, args: dict, *, check_mode: bool = False, plugin_module=None
):
    plugin = action(plugin_module or load("release"), args, check_mode=check_mode)
    plugin._execute_module = host
    # The module path: the direct path (no module payload) has its own tests,
    # test_release_direct.py.
    plugin._direct = lambda args, task_vars: None
    plugin._remove_tmp_path = lambda path: None
    plugin._templar = SimpleNamespace(template=lambda value: value)
    return plugin


SHOP = {"name": "shop", "port": 8000, "source": "https://user:token@git.example/shop.git"}
PREPARED_STAGED = {"staged": True, "noop": False, "current": "r1", "warmed": True, "live": []}


def test_release_sends_the_host_only_the_service_keys_it_reads():
    host = _ReleaseHost(switch={"outcome": "switched", "current": "r2", "changed": True})
    args = {"action": "switch", "service": SHOP, "run": {"run_id": "x"}, "release": "r2"}

    result = _release_action(host, args).run(task_vars={})

    assert result["outcome"] == "switched"
    assert "source" not in host.calls[0]["service"]
    assert "token" not in json.dumps(host.calls)
    assert "ansible_facts" not in result


def test_release_notes_a_staging_in_the_rollout_state():
    host = _ReleaseHost(prepare=PREPARED_STAGED)
    args = {
        "action": "stage",
        "service": SHOP,
        "run": {"run_id": "x"},
        "release": "r2",
        "build": {"artifact": "/nonexistent.tar", "id": "b"},
        "note_in_rollout": True,
    }
    known = {"other": {"outcome": "switched"}}

    result = _release_action(host, args).run(task_vars={"flipback_rollout": known})

    assert [call["action"] for call in host.calls] == ["prepare"]
    assert all("note_in_rollout" not in call for call in host.calls)
    noted = result["ansible_facts"]["flipback_rollout"]
    assert noted["other"] == {"outcome": "switched"}
    assert noted["shop"] == {
        "release": "r2",
        "previous": "r1",
        "staged": True,
        "noop": False,
        "warmed": True,
        "config_changes": None,
        "release_runs": None,
        "live": [],
        "outcome": "staged",
        "instance": "shop@r2.service",
    }
    assert known == {"other": {"outcome": "switched"}}


def test_release_keeps_the_facts_of_the_call_beside_its_note():
    """The module path returns the interpreter it discovered as a fact: the note must not
    drop it, or every later call would discover again and never take the direct path."""
    discovered = {"discovered_interpreter_python": "/usr/bin/python3"}
    host = _ReleaseHost(
        switch={
            "outcome": "switched",
            "current": "r2",
            "changed": True,
            "ansible_facts": discovered,
        }
    )
    args = {"action": "switch", "service": SHOP, "release": "r2", "note_in_rollout": True}

    result = _release_action(host, args).run(task_vars={})

    assert result["ansible_facts"]["discovered_interpreter_python"] == "/usr/bin/python3"
    assert result["ansible_facts"]["flipback_rollout"]["shop"]["outcome"] == "switched"


def test_release_notes_a_switch_over_what_the_staging_noted():
    host = _ReleaseHost(switch={"outcome": "switched", "current": "r2", "changed": True})
    args = {
        "action": "switch",
        "service": SHOP,
        "run": {"run_id": "x"},
        "release": "r2",
        "note_in_rollout": "yes",
    }
    known = {"shop": {"release": "r2", "outcome": "staged", "previous": "r1"}}

    result = _release_action(host, args).run(task_vars={"flipback_rollout": known})

    assert result["ansible_facts"]["flipback_rollout"] == {
        "shop": {"release": "r2", "outcome": "switched", "previous": "r1", "current": "r2"}
    }


@pytest.mark.parametrize(
    ("answer", "check_mode"),
    [
        pytest.param({"failed": True, "msg": "gate 1 failed"}, False, id="failed"),
        pytest.param({"outcome": "switched", "current": "r1"}, True, id="check-mode"),
    ],
)
def test_release_notes_nothing_for_a_failed_or_pretended_switch(answer, check_mode):
    host = _ReleaseHost(switch=answer)
    args = {"action": "switch", "service": SHOP, "release": "r2", "note_in_rollout": True}

    result = _release_action(host, args, check_mode=check_mode).run(task_vars={})

    assert "ansible_facts" not in result


def test_release_refuses_a_note_in_rollout_that_is_not_a_boolean():
    args = {"action": "switch", "service": SHOP, "release": "r2", "note_in_rollout": "maybe"}

    host = _ReleaseHost()

    result = _release_action(host, args).run(task_vars={})

    assert result["failed"] is True and result["field"] == "note_in_rollout"
    assert "'maybe'" in result["msg"] and result["retryable"] is False
    assert host.calls == []


def test_release_gives_the_lock_back_when_staging_fails():
    host = _ReleaseHost(
        prepare={"failed": True, "msg": "disk full", "field": "root"},
        abandon={"outcome": "abandoned"},
    )
    args = {
        "action": "stage",
        "service": SHOP,
        "run": {"run_id": "x"},
        "release": "r2",
        "build": {"artifact": "/nonexistent.tar"},
        "note_in_rollout": True,
    }

    result = _release_action(host, args).run(task_vars={})

    assert [call["action"] for call in host.calls] == ["prepare", "abandon"]
    assert result["failed"] is True and result["lock_given_back"] is True
    assert "ansible_facts" not in result


def test_release_notes_a_rollback_with_the_release_it_went_back_to():
    host = _ReleaseHost(
        rollback={"outcome": "switched", "previous": "r2", "current": "r1", "changed": True}
    )
    args = {"action": "rollback", "service": SHOP, "release": "r1", "note_in_rollout": True}

    result = _release_action(host, args).run(task_vars={})

    assert result["ansible_facts"]["flipback_rollout"] == {
        "shop": {
            "release": "r1",
            "previous": "r2",
            "current": "r1",
            "outcome": "switched",
            "rollback": {"started": None, "stopped": None, "check_mode": False},
        }
    }


@pytest.mark.parametrize(
    ("rollback", "words"),
    [
        pytest.param(
            {"started": None, "stopped": "web@r2.service", "check_mode": False},
            "switched to r1 (rolled back from r2 to r1; started nothing (standby); "
            "stopping web@r2.service)",
            id="standby",
        ),
        pytest.param(
            {"started": "web@r1.service", "stopped": None, "check_mode": True},
            "switched to r1 (rolled back from r2 to r1; would start web@r1.service; "
            "would stop nothing)",
            id="check-mode",
        ),
    ],
)
def test_the_report_says_what_a_rollback_did_on_each_host(rollback, words):
    """The rollback's per-host sentence lives in the report: no task per host says it."""
    state = {"release": "r1", "previous": "r2", "current": "r1", "outcome": "switched"}
    rows, problems = rollout_report.host_lines("h1", {"web": {**state, "rollback": rollback}}, [])

    assert [row["outcome"] for row in rows] == [words] and problems == []


def test_the_report_says_a_rollback_to_the_current_release_did_nothing():
    state = {"release": "r1", "previous": "r1", "current": "r1", "outcome": "already live"}
    rollback = {"started": None, "stopped": None, "check_mode": False}
    rows, problems = rollout_report.host_lines("h1", {"web": {**state, "rollback": rollback}}, [])

    assert [row["outcome"] for row in rows] == ["r1 is already current; nothing to do"]
    assert problems == []


class _TmpDirs:
    """The host's temporary directories as ansible-core's ActionBase makes and removes
    them: each is a round trip to the host, which only an upload needs."""

    def __init__(self, plugin) -> None:
        self.made: list[str] = []
        self.removed: list[str] = []
        self.plugin = plugin
        plugin._connection._shell = SimpleNamespace(
            tmpdir=None, join_path=lambda *parts: "/".join(parts)
        )
        plugin._make_tmp_path = self.make
        plugin._remove_tmp_path = self.remove
        plugin._transfer_file = lambda local, remote: remote
        plugin._fixup_perms2 = lambda paths, execute=False: None

    def make(self, *args, **kwargs) -> str:
        path = f"/tmp/ansible-tmp-{len(self.made)}"
        self.made.append(path)
        self.plugin._connection._shell.tmpdir = path
        return path

    def remove(self, path: str) -> None:
        self.removed.append(path)
        self.plugin._connection._shell.tmpdir = None


@pytest.mark.parametrize(
    ("args", "answers"),
    [
        pytest.param(
            {"action": "switch", "release": "r2"},
            {"switch": {"outcome": "switched", "current": "r2"}},
            id="switch",
        ),
        pytest.param(
            {"action": "target", "steps": 1},
            {"target": {"target": "r1"}},
            id="target",
        ),
        pytest.param(
            {"action": "stage", "release": "r2", "build": {"artifact": "/a.tar"}},
            {"prepare": PREPARED_STAGED},
            id="stage-already-staged",
        ),
        pytest.param(
            {
                "action": "stage",
                "release": "r2",
                "build": {"artifact": "/a.tar", "code_b64": "eA==", "code_checksum": "c"},
            },
            {
                "prepare": {**PREPARED_STAGED, "staged": False, "venv_donor": "r1"},
                "stage": {"changed": True},
            },
            id="stage-inline",
        ),
    ],
)
def test_release_makes_no_temporary_directory_on_the_host_without_an_upload(args, answers):
    host = _ReleaseHost(**answers)
    plugin = _release_action(host, {"service": SHOP, "run": {"run_id": "x"}, **args})
    dirs = _TmpDirs(plugin)

    result = plugin.run(task_vars={})

    assert not result.get("failed"), result
    assert (dirs.made, dirs.removed) == ([], [])


def test_release_upload_makes_one_temporary_directory_and_removes_it():
    host = _ReleaseHost(
        prepare={**PREPARED_STAGED, "staged": False, "venv_donor": None},
        stage={"changed": True},
    )
    args = {
        "action": "stage",
        "service": SHOP,
        "run": {"run_id": "x"},
        "release": "r2",
        "build": {"artifact": "/a.tar"},
    }
    plugin = _release_action(host, args)
    dirs = _TmpDirs(plugin)

    result = plugin.run(task_vars={})

    assert result["outcome"] == "staged"
    assert host.calls[-1]["upload"] == "/tmp/ansible-tmp-0/r2.tar"
    assert (dirs.made, dirs.removed) == (["/tmp/ansible-tmp-0"], ["/tmp/ansible-tmp-0"])


CODE = {
    "artifact": "/a.tar",
    "id": "b",
    "checksum": "tar-sum",
    "code_b64": "eA==",
    "code_checksum": "code-sum",
}


def _stage_args(build: dict) -> dict:
    return {
        "action": "stage",
        "service": SHOP,
        "run": {"run_id": "x"},
        "release": "r2",
        "build": build,
        "start": True,
    }


def test_release_stages_small_code_in_the_prepare_call_when_a_donor_lends_its_venv():
    host = _ReleaseHost(
        prepare={
            **PREPARED_STAGED,
            "staged": False,
            "venv_donor": "r1",
            "staging": {"changed": True, "warmed": True, "venv": "reused from r1"},
        }
    )

    result = _release_action(host, _stage_args(CODE)).run(task_vars={})

    (call,) = host.calls
    assert (call["action"], call["artifact_b64"], call["start"]) == ("prepare", "eA==", True)
    # The code's own checksum: the host checks what it received.
    assert call["build"]["checksum"] == "code-sum"
    assert (result["outcome"], result["warmed"], result["venv"]) == (
        "staged",
        True,
        "reused from r1",
    )
    assert "staging" not in result


def test_release_uploads_after_a_prepare_that_could_not_use_the_code_sent_ahead():
    host = _ReleaseHost(
        prepare={**PREPARED_STAGED, "staged": False, "venv_donor": None},
        stage={"changed": True, "warmed": True},
    )
    plugin = _release_action(host, _stage_args(CODE))
    _TmpDirs(plugin)

    result = plugin.run(task_vars={})

    assert [call["action"] for call in host.calls] == ["prepare", "stage"]
    assert "artifact_b64" not in host.calls[1] and host.calls[1]["upload"].endswith("/r2.tar")
    assert result["outcome"] == "staged"


def test_release_sends_big_code_only_once_it_is_known_to_be_needed():
    plugin_module = load("release")
    # "eA==" is 4 characters: bigger than what goes ahead.
    plugin_module.SEND_AHEAD = 3
    host = _ReleaseHost(
        prepare={**PREPARED_STAGED, "staged": False, "venv_donor": "r1"},
        stage={"changed": True, "warmed": True},
    )

    result = _release_action(host, _stage_args(CODE), plugin_module=plugin_module).run(task_vars={})

    prepare_call, stage_call = host.calls
    assert "artifact_b64" not in prepare_call and prepare_call["build"]["checksum"] == "tar-sum"
    assert (stage_call["artifact_b64"], stage_call["build"]["checksum"]) == ("eA==", "code-sum")
    assert result["outcome"] == "staged"
