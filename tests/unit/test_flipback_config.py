"""Unit tests of module_utils/flipback_config.py: every rule, every error path, the defaults."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.module_utils.flipback_config import (
    HEALTH_DEFAULTS,
    ConfigError,
    check_params,
    check_request,
    invocation,
    lock_hold,
    redact_env,
    serial_batches,
    switch_seconds,
)
from ansible.module_utils.flipback_runtime import NGINX_DEFAULTS

SECRET = "s3cr3t-hunter2"
RELEASE = "20261129T141500-3f2a9c1d0e"
DROP = object()  # a key to leave out of the definition


def service(**changes: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "name": "web",
        "source": "/srv/git/web.git",
        "app": "app:app",
        "port": 8000,
    }
    svc.update(changes)
    return {k: v for k, v in svc.items() if v is not DROP}


def two() -> list[dict[str, Any]]:
    return [service(), service(name="api", port=8001, ref="v1")]


def config_error(services: Any, **selectors: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_request(services, **selectors)
    return info.value


def problem_for(error: ConfigError, field: str) -> str:
    found = [p for p in error.problems if p.startswith(f"{field}:")]
    assert found, f"no problem for {field!r} in {error.problems}"
    return found[0]


def assert_says_nothing_changed(error: ConfigError) -> None:
    assert error.retryable is False
    assert "nothing was changed on any host" in error.msg
    assert "retrying as-is fails the same way" in error.msg
    count = len(error.problems)
    assert error.msg.startswith(f"invalid input ({count} problem{'s' if count != 1 else ''})")
    for problem in error.problems:
        assert problem in error.msg


W = "flipback_services[0] (web)"
W0 = "flipback_services[0]"


# --------------------------------------------------------------------------- definitions


@pytest.mark.parametrize(
    ("changes", "field", "shown"),
    [
        pytest.param({"name": "web/api"}, f"{W0}.name", "'web/api'", id="name-slash"),
        pytest.param({"name": ".."}, f"{W0}.name", "'..'", id="name-dotdot"),
        pytest.param({"name": "my app"}, f"{W0}.name", "'my app'", id="name-space"),
        pytest.param({"name": "Web"}, f"{W0}.name", "'Web'", id="name-uppercase"),
        pytest.param({"name": "a" * 33}, f"{W0}.name", "'" + "a" * 33 + "'", id="name-long"),
        pytest.param({"name": DROP}, f"{W0}.name", "None", id="name-missing"),
        pytest.param({"source": DROP}, f"{W}.source", "None", id="source-missing"),
        pytest.param({"source": "  "}, f"{W}.source", "'  '", id="source-blank"),
        pytest.param({"subdir": "../other"}, f"{W}.subdir", "'../other'", id="subdir-dotdot"),
        pytest.param({"subdir": "svc/../.."}, f"{W}.subdir", "'svc/../..'", id="subdir-inner"),
        pytest.param({"subdir": "."}, f"{W}.subdir", "'.'", id="subdir-dot"),
        pytest.param({"subdir": "my svc"}, f"{W}.subdir", "'my svc'", id="subdir-space"),
        pytest.param({"subdir": "a//b"}, f"{W}.subdir", "'a//b'", id="subdir-empty-part"),
        pytest.param({"subdir": 3}, f"{W}.subdir", "3", id="subdir-not-str"),
        pytest.param({"ref": "main..evil"}, f"{W}.ref", "'main..evil'", id="ref-dotdot"),
        pytest.param({"ref": "-rf"}, f"{W}.ref", "'-rf'", id="ref-option"),
        pytest.param({"ref": "my branch"}, f"{W}.ref", "'my branch'", id="ref-space"),
        pytest.param({"ref": ""}, f"{W}.ref", "''", id="ref-empty"),
        pytest.param({"app": "app"}, f"{W}.app", "'app'", id="app-no-attr"),
        pytest.param({"app": "app:"}, f"{W}.app", "'app:'", id="app-empty-attr"),
        pytest.param({"app": "my-app:app"}, f"{W}.app", "'my-app:app'", id="app-dash"),
        pytest.param({"app": DROP}, f"{W}.app", "None", id="app-missing"),
        pytest.param({"app": "app:make( )"}, f"{W}.app", "'app:make( )'", id="app-call-args"),
        pytest.param({"app": "app:make()()"}, f"{W}.app", "'app:make()()'", id="app-call-twice"),
        pytest.param({"factory": "yes"}, f"{W}.factory", "'yes'", id="factory-text"),
        pytest.param({"factory": 1}, f"{W}.factory", "got 1,", id="factory-number"),
        pytest.param({"factory": None}, f"{W}.factory", "None", id="factory-none"),
        pytest.param({"port": 0}, f"{W}.port", "got 0,", id="port-0"),
        pytest.param({"port": 65536}, f"{W}.port", "65536", id="port-65536"),
        pytest.param({"port": "abc"}, f"{W}.port", "'abc'", id="port-abc"),
        pytest.param({"port": True}, f"{W}.port", "True", id="port-bool"),
        pytest.param({"port": DROP}, f"{W}.port", "None", id="port-missing"),
        pytest.param({"port": 22}, f"{W}.port", "got 22,", id="port-ssh"),
        pytest.param({"port": 80}, f"{W}.port", "got 80,", id="port-nginx"),
        pytest.param({"workers": 0}, f"{W}.workers", "got 0,", id="workers-0"),
        pytest.param({"workers": 65}, f"{W}.workers", "65", id="workers-65"),
        pytest.param({"workers": "many"}, f"{W}.workers", "'many'", id="workers-text"),
        pytest.param({"keep_releases": 0}, f"{W}.keep_releases", "got 0,", id="keep-0"),
        pytest.param({"keep_releases": -1}, f"{W}.keep_releases", "-1", id="keep-negative"),
        pytest.param({"keep_releases": 1}, f"{W}.keep_releases", "got 1,", id="keep-1"),
        pytest.param({"user": "root"}, f"{W}.user", "'root'", id="user-root"),
        pytest.param({"user": "www-data"}, f"{W}.user", "'www-data'", id="user-system"),
        pytest.param({"user": "Bad User"}, f"{W}.user", "'Bad User'", id="user-bad-name"),
        pytest.param({"user": 1000}, f"{W}.user", "1000", id="user-number"),
        pytest.param({"adopt_user": "yes"}, f"{W}.adopt_user", "'yes'", id="adopt-user-text"),
        pytest.param({"adopt_user": "true"}, f"{W}.adopt_user", "'true'", id="adopt-user-true"),
        pytest.param({"adopt_user": 1}, f"{W}.adopt_user", "got 1,", id="adopt-user-number"),
        pytest.param({"adopt_user": None}, f"{W}.adopt_user", "None", id="adopt-user-none"),
        pytest.param({"health": "/health"}, f"{W}.health", "'/health'", id="health-not-map"),
        pytest.param({"health": {"path": "health"}}, f"{W}.health.path", "'health'", id="path"),
        pytest.param({"health": {"path": "/a b"}}, f"{W}.health.path", "'/a b'", id="path-space"),
        # The same rule as the hosts' probe (flipback_health.valid_health_path).
        pytest.param({"health": {"path": "/a\tb"}}, f"{W}.health.path", "'/a\\tb'", id="path-tab"),
        pytest.param(
            {"health": {"path": "/h\n"}}, f"{W}.health.path", "'/h\\n'", id="path-newline"
        ),
        pytest.param({"health": {"path": "/é"}}, f"{W}.health.path", "'/é'", id="path-not-ascii"),
        pytest.param(
            {"source": "--upload-pack=x"}, f"{W}.source", "'--upload-pack=x'", id="source-option"
        ),
        pytest.param(
            {"health": {"expect_status": []}}, f"{W}.health.expect_status", "[]", id="status-empty"
        ),
        pytest.param(
            {"health": {"expect_status": 999}}, f"{W}.health.expect_status", "999", id="status-999"
        ),
        pytest.param(
            {"health": {"expect_status": [200, 99]}},
            f"{W}.health.expect_status",
            "[200, 99]",
            id="status-one-bad",
        ),
        pytest.param(
            {"health": {"expect_status": "200"}},
            f"{W}.health.expect_status",
            "'200'",
            id="status-text",
        ),
        pytest.param(
            {"health": {"expect_json": ["ok"]}},
            f"{W}.health.expect_json",
            "['ok']",
            id="expect-json-list",
        ),
        pytest.param({"health": {"timeout": 0}}, f"{W}.health.timeout", "got 0,", id="timeout-0"),
        pytest.param(
            {"requirements": "../secrets.txt"}, f"{W}.requirements", "'../secrets.txt'", id="req-up"
        ),
        pytest.param({"requirements": "/etc/x"}, f"{W}.requirements", "'/etc/x'", id="req-abs"),
        pytest.param(
            {"requirements": "-r x.txt"}, f"{W}.requirements", "'-r x.txt'", id="req-option"
        ),
        pytest.param(
            {"health": {"release_in": "body"}}, f"{W}.health.release_in", "'body'", id="release-in"
        ),
        pytest.param(
            {"health": {"host": "shop example"}}, f"{W}.health.host", "'shop example'", id="host"
        ),
        pytest.param(
            {"health": {"host": "shop.example\n"}},
            f"{W}.health.host",
            "'shop.example\\n'",
            id="host-newline",
        ),
        pytest.param({"health": {"host": ""}}, f"{W}.health.host", "''", id="host-empty"),
        pytest.param(
            {"health": {"host": "a.b:99999x"}}, f"{W}.health.host", "'a.b:99999x'", id="host-port"
        ),
        pytest.param({"health": {"timeout": 601}}, f"{W}.health.timeout", "601", id="timeout-601"),
        pytest.param({"health": {"url": "/x"}}, f"{W}.health", "['url']", id="health-unknown-key"),
        pytest.param({"colour": "blue"}, W, "['colour']", id="unknown-key"),
    ],
)
def test_invalid_definition(changes, field, shown):
    error = config_error([service(**changes)])

    problem = problem_for(error, field)
    assert problem.startswith(f"{field}: got ")
    assert shown in problem
    assert ", expected " in problem
    assert_says_nothing_changed(error)


@pytest.mark.parametrize(
    ("env", "field", "says"),
    [
        pytest.param({"DB=URL": SECRET}, f"{W}.env", "'DB=URL'", id="name-with-equals"),
        pytest.param({"1DB": SECRET}, f"{W}.env", "'1DB'", id="name-starts-with-digit"),
        pytest.param({"DB": {"password": SECRET}}, f"{W}.env.DB", "got a dict", id="value-dict"),
        pytest.param({"DB": [SECRET]}, f"{W}.env.DB", "got a list", id="value-list"),
        pytest.param({"DB": True}, f"{W}.env.DB", "got a bool", id="value-bool"),
        pytest.param(
            {"DB": f"line\n{SECRET}"}, f"{W}.env.DB", "control character U+000A", id="value-newline"
        ),
        pytest.param(
            {"DB": f"a\0{SECRET}"}, f"{W}.env.DB", "control character U+0000", id="value-nul"
        ),
        pytest.param(
            {"DB": f"a\r{SECRET}"}, f"{W}.env.DB", "control character U+000D", id="value-cr"
        ),
        pytest.param({"DB": f"{SECRET}\udc80"}, f"{W}.env.DB", "not valid Unicode", id="surrogate"),
        pytest.param(
            {"DB": SECRET * 4096}, f"{W}.env.DB", "bytes (value not shown)", id="value-too-big"
        ),
        pytest.param({"PATH": SECRET}, f"{W}.env.PATH", "reserved name", id="reserved-name"),
        pytest.param(
            {"LD_PRELOAD": SECRET}, f"{W}.env.LD_PRELOAD", "reserved name", id="reserved-prefix"
        ),
        pytest.param(
            {"FLIPBACK_RELEASE": SECRET},
            f"{W}.env.FLIPBACK_RELEASE",
            "reserved name",
            id="reserved-flipback",
        ),
        pytest.param({"DB": None}, f"{W}.env.DB", "got a NoneType", id="value-none"),
        pytest.param([f"DB={SECRET}"], f"{W}.env", "got a list", id="not-a-mapping"),
    ],
)
def test_invalid_env_never_shows_the_value(env, field, says):
    error = config_error([service(env=env)])

    assert says in problem_for(error, field)
    assert SECRET not in error.msg
    assert not any(SECRET in p for p in error.problems)
    assert SECRET not in str(error)
    assert_says_nothing_changed(error)


@pytest.mark.parametrize(
    ("key", "first", "second", "shown"),
    [
        pytest.param("port", {"port": 8000}, {"port": 8000}, "8000", id="port"),
        pytest.param("port", {"port": 8000}, {"port": "8000"}, "8000", id="port-as-text"),
        pytest.param("user", {"user": "svc"}, {"user": "svc"}, "'svc'", id="user"),
        pytest.param("name", {"port": 8000}, {"name": "web", "port": 8001}, "'web'", id="name"),
    ],
)
def test_duplicates_across_services(key, first, second, shown):
    second = {"name": "api", **second} if "name" not in second else second
    services = [service(**first), service(**{"port": 8001, **second})]

    error = config_error(services)

    name = services[1]["name"]
    problem = problem_for(error, f"flipback_services ({name}).{key}")
    assert f"got {shown}, already used by web" in problem
    assert_says_nothing_changed(error)


@pytest.mark.parametrize(
    ("services", "shown"),
    [
        pytest.param([], "[]", id="empty"),
        pytest.param(None, "None", id="none"),
        pytest.param("web", "'web'", id="string"),
        pytest.param(
            {"web": {"port": 8000, "env": {"DB": SECRET}}},
            "{'web': {'port': 8000, 'env': {'DB': '(value not shown)'}}}",
            id="mapping-with-secret",
        ),
    ],
)
def test_services_not_a_list(services, shown):
    error = config_error(services)

    assert error.problems == [
        f"flipback_services: got {shown}, expected a non-empty list of service definitions"
    ]
    assert SECRET not in error.msg
    assert_says_nothing_changed(error)


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        pytest.param("web", "'web'", id="string"),
        pytest.param(
            [{"env": {"DB": SECRET}}], "[{'env': {'DB': '(value not shown)'}}]", id="list"
        ),
    ],
)
def test_service_not_a_mapping(entry, shown):
    error = config_error([service(), entry])

    assert problem_for(error, "flipback_services[1]").startswith(
        f"flipback_services[1]: got {shown}, expected a mapping"
    )
    assert SECRET not in error.msg


def test_every_problem_is_reported_at_once():
    services = [
        service(port="abc", workers=0, user="root", env={"A=B": SECRET}),
        service(name="Api", port=8001),
        42,
    ]

    error = config_error(services, service="nope", steps="x")

    fields = [
        f"{W}.port",
        f"{W}.workers",
        f"{W}.user",
        f"{W}.env",
        "flipback_services[1].name",
        "flipback_services[2]",
        "service",
        "steps",
    ]
    for field in fields:
        problem_for(error, field)
    assert len(error.problems) >= len(fields)
    assert_says_nothing_changed(error)
    assert SECRET not in error.msg


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("selectors", "field", "shown"),
    [
        pytest.param({"service": "shop"}, "service", "'shop'", id="unknown-service"),
        pytest.param({"ref": "main..x"}, "ref", "'main..x'", id="ref-dotdot"),
        pytest.param({"ref": "--upload-pack=x"}, "ref", "'--upload-pack=x'", id="ref-option"),
        pytest.param(
            {"service": "web", "release": "../../etc"}, "release", "'../../etc'", id="release-path"
        ),
        pytest.param(
            {"service": "web", "release": "20261129T141500"},
            "release",
            "'20261129T141500'",
            id="release-short",
        ),
        pytest.param({"release": RELEASE}, "release", repr(RELEASE), id="release-all-services"),
        pytest.param({"steps": 0}, "steps", "got 0,", id="steps-0"),
        pytest.param({"steps": -1}, "steps", "-1", id="steps-negative"),
        pytest.param({"steps": "x"}, "steps", "'x'", id="steps-text"),
        pytest.param({"steps": True}, "steps", "True", id="steps-bool"),
        pytest.param(
            {"service": "web", "release": RELEASE, "steps": 1},
            "release/steps",
            f"[{RELEASE!r}, 1]",
            id="release-and-steps",
        ),
        # Given but empty: never a quiet fall back to the default.
        *[
            pytest.param({name: value}, name, repr(value), id=f"{name}-given-empty-{i}")
            for name in ("service", "ref", "source", "release", "steps")
            for i, value in enumerate(("", "  "))
        ],
        pytest.param(
            {"source": "--upload-pack=x"}, "source", "'--upload-pack=x'", id="source-option"
        ),
        *[
            pytest.param({"canary": value}, "canary", repr(value), id=f"canary-{value!r}")
            for value in (-1, "-1", "abc", "1.5", True, "", " 2")
        ],
        *[
            pytest.param({"batch": value}, "batch", repr(value), id=f"batch-{value!r}")
            for value in (0, "0", "abc", "150%", "0%", "2.5", "-1", "%", True, "")
        ],
        *[
            pytest.param({"lock_wait": value}, "lock_wait", repr(value), id=f"lock_wait-{value!r}")
            for value in (-1, "-1", "abc", "2.5555", 3601, "1e3", True, "")
        ],
    ],
)
def test_invalid_selectors(selectors, field, shown):
    error = config_error(two(), **selectors)

    problem = problem_for(error, field)
    assert shown in problem
    assert ", expected " in problem
    assert_says_nothing_changed(error)


def test_release_of_an_unknown_service_names_both_problems():
    error = config_error(two(), service="shop", release=RELEASE)

    assert "one of the defined services ['web', 'api']" in problem_for(error, "service")
    assert "one service chosen" in problem_for(error, "release")


# --------------------------------------------------------------------------- happy paths


def test_defaults_are_filled_in():
    result = check_request([service(subdir="/services/web/")])

    (svc,) = result["services"]
    assert svc == {
        "name": "web",
        "source": "/srv/git/web.git",
        "app": "app:app",
        "port": 8000,
        "subdir": "services/web",
        "ref": "HEAD",
        "workers": 1,
        "factory": False,
        "keep_releases": 5,
        "user": "web",
        "adopt_user": False,
        "access_log": False,
        "nginx": NGINX_DEFAULTS,
        "commands": {},
        "processes": {},
        "process_start_seconds": 3,
        "requirements": "",
        "env": {},
        "health": HEALTH_DEFAULTS,
    }
    assert result == {
        "services": [svc],
        "names": ["web"],
        "release": "",
        "steps": None,
        "canary": 1,
        "batch": "100%",
        "lock_wait": 0.0,
    }


@pytest.mark.parametrize(
    ("changes", "app", "factory"),
    [
        pytest.param({}, "app:app", False, id="attribute"),
        pytest.param({"factory": True}, "app:app", True, id="factory-flag"),
        pytest.param({"app": "app:create()"}, "app:create", True, id="factory-form"),
        pytest.param(
            {"app": "pkg.main:create()", "factory": True},
            "pkg.main:create",
            True,
            id="factory-form-and-flag",
        ),
        # The form says it is a factory, whatever the flag says.
        pytest.param({"app": "app:create()", "factory": False}, "app:create", True, id="form-wins"),
    ],
)
def test_a_factory_app_is_normalized(changes, app, factory):
    (svc,) = check_request([service(**changes)])["services"]

    assert (svc["app"], svc["factory"]) == (app, factory)


@pytest.mark.parametrize("adopt_user", [False, True], ids=["false", "true"])
def test_adopt_user_is_passed_on(adopt_user):
    (svc,) = check_request([service(adopt_user=adopt_user)])["services"]

    assert svc["adopt_user"] is adopt_user


def test_values_are_normalized():
    raw = service(
        port="8080",
        workers="4",
        keep_releases="3",
        user="svc_web",
        env={"WORKERS": 4, "RATIO": 0.5, "DB": SECRET},
        health={"path": "/ready", "expect_status": 204, "timeout": "10"},
    )

    (svc,) = check_request([raw])["services"]

    assert (svc["port"], svc["workers"], svc["keep_releases"]) == (8080, 4, 3)
    assert svc["user"] == "svc_web"
    assert svc["env"] == {"WORKERS": "4", "RATIO": "0.5", "DB": SECRET}
    assert svc["health"] == {
        "path": "/ready",
        "expect_status": [204],
        "expect_json": {},
        "release_in": "header",
        "host": "localhost",
        "timeout": 10,
        "unhealthy_answers": 10,
    }


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        pytest.param(
            {}, {"web": ("HEAD", "/srv/git/web.git"), "api": ("v1", "/srv/git/web.git")}, id="none"
        ),
        pytest.param(
            {"service": "api", "ref": "v2", "source": "/tmp/fork.git"},
            {"api": ("v2", "/tmp/fork.git")},
            id="one-service",
        ),
        pytest.param(
            {"ref": "main", "source": "/tmp/fork.git"},
            {"web": ("main", "/tmp/fork.git"), "api": ("main", "/tmp/fork.git")},
            id="all-services",
        ),
        pytest.param({"service": "web"}, {"web": ("HEAD", "/srv/git/web.git")}, id="select-only"),
    ],
)
def test_overrides_apply_to_the_selected_services_only(selectors, expected):
    result = check_request(two(), **selectors)

    assert result["names"] == list(expected)
    assert {s["name"]: (s["ref"], s["source"]) for s in result["services"]} == expected


@pytest.mark.parametrize(
    ("services", "selectors", "release", "steps"),
    [
        pytest.param(two(), {"service": "web", "release": RELEASE}, RELEASE, None, id="release"),
        pytest.param([service()], {"release": RELEASE}, RELEASE, None, id="release-only-service"),
        pytest.param(two(), {"steps": "2"}, "", 2, id="steps-text"),
        pytest.param(two(), {"steps": 1}, "", 1, id="steps"),
        pytest.param(two(), {"steps": None}, "", None, id="steps-not-given"),
    ],
)
def test_rollback_selectors(services, selectors, release, steps):
    result = check_request(services, **selectors)

    assert (result["release"], result["steps"]) == (release, steps)


def test_redact_env_hides_every_env_value_and_keeps_the_rest():
    value = [{"name": "web", "env": {"DB": SECRET}}, {"env": SECRET}, "env", 3]

    assert redact_env(value) == [
        {"name": "web", "env": {"DB": "(value not shown)"}},
        {"env": "(value not shown)"},
        "env",
        3,
    ]


def _params(services: Any, **selectors: Any) -> dict[str, Any]:
    """ARGUMENT_SPEC's parameters with no selector given on the command line."""
    return {
        "services": services,
        **{k: None for k in ("service", "ref", "source", "release", "steps")},
        **{k: None for k in ("canary", "batch", "lock_wait")},
        **selectors,
    }


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        pytest.param({}, (1, "100%", 0.0), id="defaults"),
        pytest.param({"canary": 0, "batch": 2, "lock_wait": 0}, (0, "2", 0.0), id="ints"),
        pytest.param(
            {"canary": "3", "batch": "25%", "lock_wait": "2.5"}, (3, "25%", 2.5), id="text"
        ),
        pytest.param({"batch": "100%", "lock_wait": "3600"}, (1, "100%", 3600.0), id="limits"),
    ],
)
def test_rollout_selectors_are_normalized(selectors, expected):
    result = check_request(two(), **selectors)

    assert (result["canary"], result["batch"], result["lock_wait"]) == expected


def test_check_params_returns_env_names_never_values():
    services = [service(env={"SECRET_KEY": "hunter2", "API": "x"})]
    result = check_params(_params(services, ref="v2"))
    (svc,) = result["services"]
    assert svc["env_names"] == ["API", "SECRET_KEY"]
    assert "env" not in svc
    assert "hunter2" not in repr(result)
    assert svc["ref"] == "v2"


def test_check_params_raises_what_check_request_raises():
    with pytest.raises(ConfigError) as info:
        check_params(_params(two(), service="nope"))
    assert problem_for(info.value, "service")


def test_invocation_hides_env_values_and_keeps_the_rest():
    params = _params([service(env={"SECRET_KEY": "hunter2"})], ref="v2")
    echoed = invocation(params)["module_args"]
    assert "hunter2" not in repr(echoed)
    assert echoed["ref"] == "v2"
    assert echoed["services"][0]["name"] == "web"


# =========================================================================== lock hold


def ansible_batches(hosts: int, serial: list) -> list[int]:
    """The batch sizes ansible-core's own PlaybookExecutor makes of `serial`."""
    from types import SimpleNamespace

    from ansible.executor.playbook_executor import PlaybookExecutor

    executor = PlaybookExecutor.__new__(PlaybookExecutor)
    names = [f"h{i}" for i in range(hosts)]
    executor._inventory = SimpleNamespace(get_hosts=lambda pattern, order=None: list(names))
    play = SimpleNamespace(hosts="all", order=None, serial=serial)
    return [len(batch) for batch in executor._get_serialized_batches(play)]


@pytest.mark.parametrize("hosts", [1, 2, 3, 4, 7, 10, 33, 100])
@pytest.mark.parametrize(
    ("canary", "batch"),
    [(1, "100%"), (0, "100%"), (1, "1"), (2, "3"), (1, "50%"), (0, "10%"), (3, "1%"), (5, "25%")],
)
def test_serial_batches_are_the_batches_ansible_runs(hosts, canary, batch):
    serial = ([canary] if canary else []) + [batch]
    assert serial_batches(hosts, canary, batch) == ansible_batches(hosts, serial)


def test_a_switch_at_worst_waits_both_gates_the_drain_and_a_slack():
    assert switch_seconds({"health": {"timeout": 30}}, drain=1) == 2 * 30 + 1 + 30


def test_the_hold_covers_staging_and_every_batch():
    # 4 hosts, canary 1 then 1 at a time: four batches; 20 forks stage them in one round.
    hold = lock_hold(hosts=4, canary=1, batch="1", forks=20, switch_seconds=[91.0], stale_after=120)
    assert hold == 120 + 4 * 91


def test_the_hold_counts_fork_rounds_and_every_service():
    # 10 hosts with 4 forks: staging in 3 rounds; batches 1 and 9, the latter in 3 rounds.
    hold = lock_hold(
        hosts=10, canary=1, batch="100%", forks=4, switch_seconds=[50.0, 20.0], stale_after=60
    )
    assert hold == 60 * 3 + (1 + 3) * 70


def test_the_hold_of_a_longer_rollout_is_longer():
    short = lock_hold(
        hosts=8, canary=1, batch="100%", forks=20, switch_seconds=[91.0], stale_after=120
    )
    many = lock_hold(hosts=8, canary=1, batch="1", forks=20, switch_seconds=[91.0], stale_after=120)
    assert many > short > 120


@pytest.mark.parametrize(
    "host", ["localhost", "shop.example.com", "shop.example.com:8443", "10.0.0.5", "a-b.c."]
)
def test_a_health_host_the_gates_can_send(host):
    (svc,) = check_request([service(health={"host": host, "release_in": "json"})])["services"]
    assert (svc["health"]["host"], svc["health"]["release_in"]) == (host, "json")


@pytest.mark.parametrize(
    ("nginx", "field", "shown"),
    [
        pytest.param({"server_name": "bad name"}, "nginx.server_name", "'bad name'", id="name"),
        pytest.param({"server_name": ["a.b;"]}, "nginx.server_name", "['a.b;']", id="name-semi"),
        pytest.param({"read_timeout": 0}, "nginx.read_timeout", "got 0,", id="timeout-0"),
        pytest.param({"read_timeout": "1h"}, "nginx.read_timeout", "'1h'", id="timeout-text"),
        pytest.param({"max_body": "10 m"}, "nginx.max_body", "'10 m'", id="size-space"),
        pytest.param({"max_body": "1t"}, "nginx.max_body", "'1t'", id="size-unit"),
        pytest.param({"static": {"static": "static"}}, "nginx.static", "'static'", id="prefix"),
        pytest.param({"static": {"/": "static"}}, "nginx.static", "'/'", id="prefix-root"),
        pytest.param({"static": {"/s/": "../etc"}}, "nginx.static", "'../etc'", id="dir-up"),
        pytest.param({"static": {"/s/": "/etc"}}, "nginx.static", "'/etc'", id="dir-abs"),
        pytest.param({"static": {"/s/": "a;b"}}, "nginx.static", "'a;b'", id="dir-semi"),
        pytest.param(
            {"static": {"/m/": "shared/media"}}, "nginx.static", "'shared/media'", id="shared"
        ),
        pytest.param({"static": {"/v/": "venv/lib"}}, "nginx.static", "'venv/lib'", id="venv"),
        pytest.param({"gzip": True}, "nginx", "['gzip']", id="unknown"),
        pytest.param(["x"], "nginx", "['x']", id="not-a-mapping"),
    ],
)
def test_bad_nginx_options_are_refused_naming_field_and_value(nginx, field, shown):
    with pytest.raises(ConfigError) as failed:
        check_request([service(nginx=nginx)])

    (problem,) = failed.value.problems
    assert problem.startswith(f"flipback_services[0] (web).{field}: got ")
    assert shown in problem


CERT, KEY = "/etc/ssl/certs/web.pem", "/etc/ssl/private/web.key"


def tls(**changes):
    return {"tls": {"certificate": CERT, "key": KEY, **changes}}


@pytest.mark.parametrize(
    ("nginx", "field", "shown"),
    [
        pytest.param({"tls": {"certificate": CERT}}, "nginx.tls", "{'certificate'", id="no-key"),
        pytest.param({"tls": {"key": KEY}}, "nginx.tls", "{'key'", id="no-certificate"),
        pytest.param(tls(ciphers="HIGH"), "nginx.tls", "'ciphers'", id="unknown-key"),
        pytest.param({"tls": "/etc/ssl/web.pem"}, "nginx.tls", "'/etc/ssl/web.pem'", id="text"),
        pytest.param(tls(key="web.key"), "nginx.tls.key", "'web.key'", id="relative"),
        pytest.param(tls(key="/etc/ssl/../web.key"), "nginx.tls.key", "'/etc/", id="dotdot"),
        pytest.param(tls(key="/etc/./ssl/web.key"), "nginx.tls.key", "'/etc/", id="dot"),
        pytest.param(tls(key="/etc/ssl/"), "nginx.tls.key", "'/etc/ssl/'", id="trailing-slash"),
        pytest.param(tls(key="//etc/web.key"), "nginx.tls.key", "'//etc/", id="double-slash"),
        pytest.param(tls(key="/etc/web key"), "nginx.tls.key", "'/etc/web key'", id="space"),
        pytest.param(
            tls(certificate="/a.pem; return 200"),
            "nginx.tls.certificate",
            "'/a.pem; return 200'",
            id="semicolon",
        ),
        pytest.param(tls(key='/etc/"web.key'), "nginx.tls.key", "web.key", id="quote"),
        pytest.param(tls(key="/etc/'web.key"), "nginx.tls.key", "web.key", id="single-quote"),
        pytest.param(tls(key="/etc/{web}.key"), "nginx.tls.key", "{web}", id="braces"),
        pytest.param(tls(key="/etc/$web.key"), "nginx.tls.key", "$web", id="variable"),
        pytest.param(tls(key="/etc/web.key\nx"), "nginx.tls.key", "\\n", id="newline"),
        pytest.param(tls(key=["/etc/web.key"]), "nginx.tls.key", "['/etc/web.key']", id="list"),
    ],
)
def test_bad_tls_options_are_refused_naming_field_value_and_no_retry(nginx, field, shown):
    with pytest.raises(ConfigError) as failed:
        check_request([service(nginx=nginx)])

    (problem,) = failed.value.problems
    assert problem.startswith(f"flipback_services[0] (web).{field}: got ")
    assert shown in problem
    assert "expected a mapping with exactly certificate and key" in problem
    assert "retrying as-is fails the same way" in failed.value.msg
    assert failed.value.retryable is False


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        pytest.param(None, {}, id="none"),
        pytest.param({}, {}, id="empty"),
        pytest.param(tls()["tls"], {"certificate": CERT, "key": KEY}, id="both"),
        pytest.param(
            {"certificate": "/etc/letsencrypt/live/web.example.com/fullchain.pem", "key": KEY},
            {"certificate": "/etc/letsencrypt/live/web.example.com/fullchain.pem", "key": KEY},
            id="letsencrypt",
        ),
    ],
)
def test_tls_is_off_by_default_and_kept_as_given(given, kept):
    (svc,) = check_request([service(nginx={"tls": given})])["services"]
    assert svc["nginx"]["tls"] == kept
    (plain,) = check_request([service()])["services"]
    assert plain["nginx"]["tls"] == {}


def test_access_log_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"\(web\)\.access_log: got 'yes'"):
        check_request([service(access_log="yes")])


def test_nginx_options_are_normalized():
    (svc,) = check_request(
        [service(nginx={"server_name": "shop.example.com", "max_body": 0, "read_timeout": "90"})]
    )["services"]
    assert svc["nginx"] == {
        **NGINX_DEFAULTS,
        "server_name": ["shop.example.com"],
        "max_body": "0",
        "read_timeout": 90,
    }


@pytest.mark.parametrize(
    ("health", "host"),
    [
        pytest.param(None, "shop.example.com", id="from-the-server-name"),
        pytest.param({"path": "/ok"}, "shop.example.com", id="health-without-host"),
        pytest.param({"host": "internal.test"}, "internal.test", id="own-host"),
    ],
)
def test_the_gates_ask_with_the_server_name_unless_told(health, host):
    names = ["*.shop.example.com"] if host == "shop.example.com" else ["x.example.com"]
    (svc,) = check_request([service(nginx={"server_name": names}, health=health)])["services"]
    assert svc["health"]["host"] == host


def test_processes_are_checked_before_anything_changes():
    error = config_error(
        [service(processes={"web.1": "x", "worker": ""}, process_start_seconds="3")]
    )
    assert "got the name 'web.1', expected a lowercase name" in problem_for(
        error, "flipback_services[0] (web).processes"
    )
    assert "expected a non-empty command line" in problem_for(
        error, "flipback_services[0] (web).processes.worker"
    )
    assert "expected seconds, 0-300" in problem_for(
        error, "flipback_services[0] (web).process_start_seconds"
    )
    assert_says_nothing_changed(error)


def test_processes_are_taken_sorted_by_name():
    result = check_request([service(processes={"worker": "celery worker", "beat": "celery beat"})])
    (svc,) = result["services"]
    assert list(svc["processes"].items()) == [("beat", "celery beat"), ("worker", "celery worker")]


def test_unhealthy_answers_is_a_count():
    error = config_error([service(health={"unhealthy_answers": 0})])
    assert "expected a count, 1-1000" in problem_for(
        error, "flipback_services[0] (web).health.unhealthy_answers"
    )
    result = check_request([service(health={"unhealthy_answers": "3"})])
    assert result["services"][0]["health"]["unhealthy_answers"] == 3
