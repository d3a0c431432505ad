"""Unit tests of service_config, the action plugin (plugins/action/service_config.py):
its results, failures and secrecy of env. library/service_config.py only documents it.
"""

from __future__ import annotations

import json

import pytest
from fakes import action, load_plugin

pytestmark = pytest.mark.controller

service_config = load_plugin("service_config")

SECRET = "s3cr3t-hunter2"
RELEASE = "20261129T141500-3f2a9c1d0e"


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


def run_action(args, check_mode=False):
    """(failed, the result, the result as JSON) of the action for a task with `args`."""
    result = action(service_config, args, check_mode=check_mode).run(task_vars={})
    return bool(result.get("failed")), result, json.dumps(result)


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_success_returns_env_names_never_values(check_mode):
    failed, result, out = run_action({"services": services()}, check_mode)

    assert not failed
    assert result["changed"] is False
    assert "failed" not in result
    assert isinstance(result["elapsed"], float)
    assert result["names"] == ["web", "api"]
    web, api = result["services"]
    assert web["env_names"] == ["DATABASE_URL", "DEBUG"]
    assert api["env_names"] == []
    assert "env" not in web
    assert (web["workers"], web["keep_releases"], web["user"]) == (1, 5, "web")
    # An existing account is refused on the hosts unless the definition adopts it.
    assert (web["adopt_user"], api["adopt_user"]) == (False, False)
    assert SECRET not in out
    assert result["invocation"]["module_args"]["services"][0]["env"] == {
        "DATABASE_URL": "(value not shown)",
        "DEBUG": "(value not shown)",
    }


def test_selectors_are_passed_on():
    failed, result, _ = run_action(
        {
            "services": services(),
            "service": "api",
            "ref": "v2",
            "source": "/tmp/fork.git",
            "release": RELEASE,
        },
    )

    assert not failed
    assert result["names"] == ["api"]
    assert (result["services"][0]["ref"], result["services"][0]["source"]) == (
        "v2",
        "/tmp/fork.git",
    )
    assert (result["release"], result["steps"]) == (RELEASE, None)


def test_steps_as_text():
    failed, result, _ = run_action({"services": services(), "steps": "2"})

    assert not failed
    assert result["steps"] == 2


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        pytest.param(
            {"services": []},
            "flipback_services: got [], expected a non-empty list of service definitions",
            id="no-services",
        ),
        pytest.param(
            {"services": {"web": services()[0]}},
            "flipback_services: got {'web': ",
            id="services-a-mapping",
        ),
        pytest.param({"steps": 0}, "steps: got 0, expected an integer >= 1", id="steps-0"),
        pytest.param(
            {"services": [{**services()[0], "adopt_user": "yes"}]},
            "flipback_services[0] (web).adopt_user: got 'yes', expected true or false",
            id="adopt-user-not-bool",
        ),
        pytest.param({"service": "shop"}, "service: got 'shop', expected one of", id="service"),
        pytest.param(
            {"services": [{**services()[0], "env": {"DB": {"password": SECRET}}}]},
            "flipback_services[0] (web).env.DB: got a dict",
            id="env-value-dict",
        ),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_failure(args, problem, check_mode):
    failed, result, out = run_action({"services": services(), **args}, check_mode)

    assert failed
    assert result["failed"] is True
    assert result["retryable"] is False
    assert isinstance(result["elapsed"], float)
    assert any(p.startswith(problem) for p in result["problems"])
    assert result["msg"].startswith("invalid input (1 problem), nothing was changed on any host")
    assert "retrying as-is fails the same way" in result["msg"]
    assert problem in result["msg"]
    assert SECRET not in out


def test_failure_reports_every_problem():
    broken = [{**services()[0], "port": 22, "workers": 0}, {**services()[1], "user": "root"}]

    failed, result, _ = run_action({"services": broken, "steps": "x"})

    assert failed
    assert len(result["problems"]) == 4
    assert result["msg"].startswith("invalid input (4 problems)")
    for problem in result["problems"]:
        assert problem in result["msg"]
