"""Unit tests of library/health_check.py: options to the probe, and main() on real servers."""

from __future__ import annotations

import json

import health_check
import pytest
from ansible.module_utils.flipback_health import Expect, Policy, Target
from fakes import OK, Reply, ScriptedServer, closed_port, run_module

# Short enough that failure cases take a fraction of a second in real time.
FAST = {"timeout": 0.3, "delay": 0.05, "max_delay": 0.1, "attempt_timeout": 0.2}


@pytest.fixture(params=["tcp", "unix"])
def serve(request, tmp_path):
    """Start a scripted server on the parametrized transport: serve(Reply(...), ...)."""
    servers: list[ScriptedServer] = []

    def start(*script: Reply) -> ScriptedServer:
        unix_path = str(tmp_path / "app.sock") if request.param == "unix" else None
        servers.append(ScriptedServer(list(script), unix_path))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def run_main(args, capsys):
    code, result, _out = run_module(health_check, args, capsys)
    return code, result


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check-mode"])
def test_main_reports_a_healthy_service(serve, capsys, check_mode):
    server = serve(Reply(503), Reply())

    code, result = run_main(
        {
            **server.args,
            **FAST,
            "expect_json": {"release": "r2"},
            "_ansible_check_mode": check_mode,
        },
        capsys,
    )

    assert code == 0
    assert result["changed"] is False
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["body"] == OK
    assert result["json"] == json.loads(OK)
    assert result["attempts"] == 2
    assert result["consecutive"] == 1
    assert result["last_error"] == "status 503, expected one of [200]"
    assert result["elapsed"] >= 0
    # Read-only: the probe runs in check mode too.
    assert len(server.requests) == 2


def test_main_passes_options_to_the_probe(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        health_check, "probe", lambda *args: calls.append(args) or {"ok": True, "elapsed": 0.0}
    )

    code, result = run_main({"port": 8000}, capsys)

    assert code == 0
    assert result == {
        "changed": False,
        "ok": True,
        "elapsed": 0.0,
        "invocation": result["invocation"],
    }
    assert calls == [
        (
            Target(
                url_path="/health",
                host="127.0.0.1",
                port=8000,
                unix_socket=None,
                host_header="localhost",
            ),
            Expect(status=(200,), json={}),
            Policy(timeout=30, attempt_timeout=2, delay=0.2, backoff=1.5, max_delay=2, successes=1),
        )
    ]


@pytest.mark.parametrize(
    ("script", "args", "retryable", "message"),
    [
        pytest.param(
            [Reply(body=json.dumps({"release": "r1"}))],
            {"expect_json": {"release": "r2"}},
            False,
            "(JSON field 'release' is 'r1', expected 'r2'); expected status in [200] and JSON "
            'fields {"release": "r2"}. The service answered, but not as expected',
            id="wrong-release",
        ),
        pytest.param(
            [Reply(503, "starting")],
            {},
            True,
            "observed status 503, body 'starting'; expected status in [200]. "
            "The service may still be starting",
            id="still-starting",
        ),
        pytest.param(
            [Reply(), Reply(500, "boom")],
            {"successes": 3},
            False,
            "observed status 500, body 'boom'; expected status in [200], 3 times in a row",
            id="streak-broken-by-500",
        ),
    ],
)
def test_main_reports_an_unhealthy_service(serve, capsys, script, args, retryable, message):
    server = serve(*script)

    code, result = run_main({**server.args, **FAST, **args}, capsys)

    assert code == 1
    assert result["failed"] is True
    assert message in result["msg"]
    assert result["retryable"] is retryable
    assert result["elapsed"] > 0
    assert result["attempts"] == len(server.requests) > 1
    assert result["status"] == script[-1].status
    assert result["body"] == script[-1].body
    assert "ok" not in result


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check-mode"])
def test_main_reports_an_unreachable_service(capsys, check_mode):
    code, result = run_main(
        {"port": closed_port(), **FAST, "_ansible_check_mode": check_mode}, capsys
    )

    assert code == 1
    assert "observed ConnectionRefusedError" in result["msg"]
    assert result["retryable"] is True
    assert result["status"] is None
    assert result["attempts"] > 1
    assert result["elapsed"] > 0


def test_main_reports_an_invalid_input_with_its_field(capsys):
    code, result = run_main({"port": 8000, "url_path": "health"}, capsys)

    assert code == 1
    assert result["msg"].startswith("url_path: got 'health', expected a path starting with '/'")
    assert result["field"] == "url_path"
    assert result["retryable"] is False
    assert "elapsed" in result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            {"port": 80, "unix_socket": "/run/app.sock"},
            "parameters are mutually exclusive: port|unix_socket",
            id="port-and-socket",
        ),
        pytest.param({}, "one of the following is required: port, unix_socket", id="neither"),
        pytest.param(
            {"port": 80, "expect_status": ["ok"]},
            "Elements value for option 'expect_status' is of type",
            id="status-not-int",
        ),
        pytest.param(
            {"port": 80, "expect_json": "release"},
            "dictionary requested, could not parse JSON or key=value",
            id="json-not-dict",
        ),
    ],
)
def test_main_argument_spec(monkeypatch, capsys, args, message):
    monkeypatch.setattr(health_check, "probe", lambda *args: pytest.fail("probe must not run"))

    code, result = run_main(args, capsys)

    assert code == 1
    assert message in result["msg"]
