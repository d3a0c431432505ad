"""Unit tests of module_utils/flipback_status.py: release trees under tmp_path, a fake
systemctl, and a real HTTP server on 127.0.0.1 for the probe."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from ansible.module_utils import flipback_status
from ansible.module_utils.flipback_health import Observation
from ansible.module_utils.flipback_release import ReleaseError
from ansible.module_utils.flipback_status import (
    compact_age,
    history_report,
    host_history,
    host_status,
    parse_systemctl_show,
    probe_once,
    render_table,
    status_report,
    truncate,
    unit_states,
    validate_names,
    validate_services,
    validate_timeout,
    write_json,
)
from fakes import FakeSystemd, ReleaseTree, Reply, ScriptedServer, closed_port
from test_flipback_runtime import Release, a_release

# 2026-11-29T12:00:00Z: ages are measured from here.
NOW = 1_795_953_600.0
HEALTH = {"path": "/health", "expect_status": [200], "expect_json": {"ok": True}}


def rid(letter: str) -> str:
    """Release ids whose id order is a < b < c < d."""
    return f"2026110{'abcd'.index(letter) + 1}T120000-{letter * 10}"


A, B, C, D = (rid(x) for x in "abcd")


# --------------------------------------------------------------------------- fixtures


class Tree(ReleaseTree):
    """A service root on disk (fakes.ReleaseTree); events a minute apart from NOW."""

    def __init__(self, root: Path, service: str) -> None:
        manifest = {
            "deployed_by": "alice",
            "deployed_at": "2026-11-29T11:00:00Z",
            "health": HEALTH,
            "status": "staged",
        }
        super().__init__(root, service, manifest=manifest, at=NOW)

    def release(
        self,
        release_id: str,
        deployed_at: str = "2026-11-29T11:00:00Z",
        configured: Release | None = None,
    ) -> Tree:
        """A staged release; with its configuration (manifest and env file) if `configured`."""
        fields: dict = {"deployed_at": deployed_at}
        if configured is not None:
            fields["config"] = configured.config
            fields["build"] = configured.build_id
            self.env_file(release_id, configured.env_text)
        return super().release(release_id, **fields)

    def configured(self, env: dict[str, str], **changes: object) -> Release:
        return a_release(self.service, str(self.root), env=env, **changes)


def svc(name: str, port: int = 8000, **health: object) -> dict:
    return {"name": name, "port": port, "health": {**HEALTH, **health}}


class FakeSystemctl(FakeSystemd):
    """Answers `systemctl show` (fakes.FakeSystemd) from a table of unit states (active,
    sub, unit file state) and records every call; with `rc`, fails every call."""

    def __init__(self, states: dict[str, tuple[str, str, str]] | None = None, rc: int = 0):
        super().__init__()
        self.states = states or {}
        self.rc = rc

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        if self.rc:
            self.calls.append(argv)
            return self.rc, "", "Failed to connect to bus"
        proc = self.run(argv)
        return proc.returncode, proc.stdout, proc.stderr

    def show_block(self, unit: str) -> str:
        active, sub, file_state = self.states.get(unit, ("inactive", "dead", ""))
        return f"Id={unit}\nActiveState={active}\nSubState={sub}\nUnitFileState={file_state}\n"


def fake_probe(answers: dict[int, dict]):
    calls, tls_calls = [], []

    def probe(port, health, timeout, tls):
        calls.append((port, health["path"], timeout))
        tls_calls.append(tls)
        return answers.get(port, {"ok": False, "status": None, "error": "refused"})

    probe.calls = calls
    probe.tls = tls_calls
    return probe


@pytest.fixture
def http_server():
    """A server on 127.0.0.1 that answers every GET with its script: [Reply(status, body,
    delay)]."""
    server = ScriptedServer([Reply(200, "{}", 0.0)])
    yield server
    server.stop()


# =========================================================================== inputs


def test_validate_services_keeps_what_it_needs_and_fills_health_defaults():
    from_config = {
        "name": "hello",
        "port": 8000,
        "source": "/repo",
        "env_names": ["X"],
        "health": {"path": "/up", "expect_status": [200, 204], "expect_json": {}, "timeout": 30},
    }
    assert validate_services([from_config, {"name": "greeter", "port": 8001}]) == [
        {
            "name": "hello",
            "port": 8000,
            "health": {"path": "/up", "expect_status": [200, 204], "expect_json": {}},
        },
        {
            "name": "greeter",
            "port": 8001,
            "health": {"path": "/health", "expect_status": [200], "expect_json": {}},
        },
    ]


def test_validate_services_takes_a_single_status():
    health = validate_services([svc("a", expect_status=204)])[0]["health"]
    assert health["expect_status"] == [204]


@pytest.mark.parametrize(
    ("services", "field", "message"),
    [
        pytest.param("hello", "services", "services: got 'hello', expected a list", id="not-list"),
        pytest.param(["hello"], "services[0]", "services[0]: got 'hello'", id="not-mapping"),
        pytest.param([{"port": 1}], "services[0].name", "services[0].name: got None", id="no-name"),
        pytest.param(
            [svc("Hello")], "services[0].name", "services[0].name: got 'Hello'", id="bad-name"
        ),
        pytest.param(
            [svc("a"), svc("a", 8001)], "services[1].name", "got 'a' twice", id="duplicate"
        ),
        pytest.param([{"name": "a"}], "services[0].port", "port: got None", id="no-port"),
        pytest.param([svc("a", 0)], "services[0].port", "port: got 0", id="port-zero"),
        pytest.param([svc("a", 70000)], "services[0].port", "got 70000", id="port-high"),
        pytest.param([svc("a", True)], "services[0].port", "got True", id="port-bool"),
        pytest.param(
            [{"name": "a", "port": 1, "health": "x"}],
            "services[0].health",
            "health: got 'x', expected a mapping",
            id="health-not-mapping",
        ),
        pytest.param(
            [svc("a", path="health")], "services[0].health.path", "got 'health'", id="rel-path"
        ),
        pytest.param(
            [svc("a", expect_status=[])],
            "services[0].health.expect_status",
            "got []",
            id="status-empty",
        ),
        pytest.param(
            [svc("a", expect_status=["200"])],
            "services[0].health.expect_status",
            "got ['200']",
            id="status-string",
        ),
        pytest.param(
            [svc("a", expect_json=[1])],
            "services[0].health.expect_json",
            "got [1], expected a mapping",
            id="json-not-mapping",
        ),
    ],
)
def test_validate_services_rejects(services, field, message):
    with pytest.raises(ReleaseError) as err:
        validate_services(services)
    assert message in err.value.msg
    assert err.value.details["field"] == field
    assert err.value.retryable is False


@pytest.mark.parametrize(
    ("names", "ok"),
    [
        pytest.param(["hello", "greeter"], True, id="names"),
        pytest.param([], True, id="empty"),
        pytest.param("hello", False, id="not-list"),
        pytest.param(["../etc"], False, id="bad-name"),
    ],
)
def test_validate_names(names, ok):
    if ok:
        assert validate_names(names) == names
        return
    with pytest.raises(ReleaseError):
        validate_names(names)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param(3, True, id="int"),
        pytest.param(0.5, True, id="float"),
        pytest.param(60, True, id="max"),
        pytest.param(0, False, id="zero"),
        pytest.param(61, False, id="too-long"),
        pytest.param(True, False, id="bool"),
        pytest.param("3", False, id="string"),
    ],
)
def test_validate_timeout(value, ok):
    if ok:
        assert validate_timeout(value) == float(value)
        return
    with pytest.raises(ReleaseError) as err:
        validate_timeout(value)
    assert err.value.details["field"] == "probe_timeout"


# =========================================================================== systemctl


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param(
            "Id=a@x.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n",
            {
                "a@x.service": {
                    "Id": "a@x.service",
                    "ActiveState": "active",
                    "SubState": "running",
                    "UnitFileState": "enabled",
                }
            },
            id="one-unit",
        ),
        pytest.param(
            "ActiveState=active\nId=a@x.service\n\nId=a@y.service\nActiveState=failed\n\n",
            {
                "a@x.service": {"Id": "a@x.service", "ActiveState": "active"},
                "a@y.service": {"Id": "a@y.service", "ActiveState": "failed"},
            },
            id="two-units-any-order",
        ),
        pytest.param("ActiveState=active\n", {}, id="no-id"),
        pytest.param(
            "Id=a@x.service\nUnitFileState=\n",
            {"a@x.service": {"Id": "a@x.service", "UnitFileState": ""}},
            id="empty-value",
        ),
    ],
)
def test_parse_systemctl_show(text, expected):
    assert parse_systemctl_show(text) == expected


def test_unit_states_asks_once_for_every_unit():
    run = FakeSystemctl({"a@x.service": ("active", "running", "enabled")})
    units, error = unit_states(run, "/bin/systemctl", ["a@x.service", "b@y.service"])
    assert error is None
    assert run.calls == [
        [
            "/bin/systemctl",
            "show",
            "--no-pager",
            "--property=Id,ActiveState,SubState,UnitFileState",
            "--",
            "a@x.service",
            "b@y.service",
        ]
    ]
    assert units["a@x.service"]["SubState"] == "running"
    assert units["b@y.service"]["ActiveState"] == "inactive"


@pytest.mark.parametrize(
    ("systemctl", "run", "units", "error"),
    [
        pytest.param("/bin/systemctl", FakeSystemctl(), [], None, id="no-units-no-call"),
        pytest.param(
            None, FakeSystemctl(), ["a@x.service"], "systemctl not found on the host", id="missing"
        ),
        pytest.param(
            "/bin/systemctl",
            FakeSystemctl(rc=1),
            ["a@x.service"],
            "systemctl show exited 1: Failed to connect to bus",
            id="fails",
        ),
    ],
)
def test_unit_states_without_an_answer(systemctl, run, units, error):
    assert unit_states(run, systemctl, units) == ({}, error)
    if not units:
        assert run.calls == []


# =========================================================================== probe


@pytest.mark.parametrize(
    ("reply", "health", "ok", "release", "error"),
    [
        pytest.param(
            (200, '{"ok": true, "release": "r1"}', 0), HEALTH, True, "r1", None, id="healthy"
        ),
        pytest.param((200, '{"ok": true}', 0), HEALTH, True, None, None, id="no-release-field"),
        pytest.param(
            (502, "bad gateway", 0),
            HEALTH,
            False,
            None,
            "status 502, expected one of [200]",
            id="bad-status",
        ),
        pytest.param(
            (200, '{"ok": false, "release": "r1"}', 0),
            HEALTH,
            False,
            "r1",
            "JSON field 'ok' is False, expected True",
            id="wrong-json",
        ),
        pytest.param((200, "up", 0), HEALTH, False, None, "body is not JSON", id="not-json"),
        pytest.param(
            (204, "", 0),
            {**HEALTH, "expect_status": [204], "expect_json": {}},
            True,
            None,
            None,
            id="no-body-expected",
        ),
    ],
)
def test_probe_once_answers(http_server, reply, health, ok, release, error):
    http_server.script = [Reply(*reply)]
    port = http_server.port

    result = probe_once(port, {**health, "path": "/health?x=1"}, 2)

    assert (result["ok"], result["status"], result["release"], result["error"]) == (
        ok,
        reply[0],
        release,
        error,
    )
    assert 0 <= result["latency_ms"] < 2000
    assert http_server.paths == ["/health?x=1"]


def test_probe_once_refused():
    result = probe_once(closed_port(), HEALTH, 1)
    assert (result["ok"], result["status"], result["latency_ms"]) == (False, None, None)
    assert "ConnectionRefusedError" in result["error"]


def test_probe_once_gives_up_at_its_timeout(http_server):
    http_server.script = [Reply(200, '{"ok": true}', 1.0)]
    started = time.monotonic()
    result = probe_once(http_server.port, HEALTH, 0.2)
    assert time.monotonic() - started < 0.9
    assert (result["ok"], result["status"], result["error"]) == (
        False,
        None,
        "no answer within 0.2s",
    )
    assert len(http_server.paths) == 1


# =========================================================================== host_status


@pytest.fixture
def srv(tmp_path) -> Path:
    return tmp_path / "srv"


@pytest.fixture
def locks(tmp_path) -> Path:
    return tmp_path / "locks"


def status(services, srv, locks, run=None, probe=None, **kwargs):
    return host_status(
        services,
        run=run or FakeSystemctl(),
        systemctl="/bin/systemctl",
        root_parent=str(srv),
        lock_dir=str(locks),
        now=NOW,
        probe=probe or fake_probe({}),
        **kwargs,
    )


def test_host_status_reports_a_deployed_service(srv, locks):
    tree = Tree(srv / "hello", "hello").deployed(A, B)
    tree.release(C).events((C, "staged"), (C, "failed", "gate 1: 502"))
    run = FakeSystemctl(
        {
            f"hello@{B}.service": ("active", "running", "enabled"),
            f"hello@{C}.service": ("failed", "failed", "disabled"),
        }
    )
    health = {"ok": True, "status": 200, "release": B, "latency_ms": 3.2, "error": None}
    probe = fake_probe({8000: health})

    [hello] = status([svc("hello")], srv, locks, run, probe, probe_timeout=1.5)

    assert hello["name"] == "hello"
    assert hello["deployed"] is True
    assert (hello["current"], hello["previous_good"]) == (B, A)
    assert [(r["id"], r["status"], r["age_seconds"]) for r in hello["releases"]] == [
        (A, "good", 3600),
        (B, "active", 3600),
        (C, "failed", 3600),
    ]
    assert hello["releases"][2]["last_event"] == {
        "event": "failed",
        "at": "2026-11-29T12:06:00Z",
        "by": "alice",
        "note": "gate 1: 502",
    }
    # An empty note is left out.
    assert hello["releases"][1]["last_event"] == {
        "event": "active",
        "at": "2026-11-29T12:04:00Z",
        "by": "alice",
    }
    assert hello["instances"] == [
        {
            "release": A,
            "unit": f"hello@{A}.service",
            "active_state": "inactive",
            "sub_state": "dead",
            "unit_file_state": None,
            "processes": [],
        },
        {
            "release": B,
            "unit": f"hello@{B}.service",
            "active_state": "active",
            "sub_state": "running",
            "unit_file_state": "enabled",
            "processes": [],
        },
        {
            "release": C,
            "unit": f"hello@{C}.service",
            "active_state": "failed",
            "sub_state": "failed",
            "unit_file_state": "disabled",
            "processes": [],
        },
    ]
    assert hello["health"] == health
    assert probe.calls == [(8000, "/health", 1.5)]
    assert (hello["lock"], hello["error"]) == (None, None)
    # Staged before releases carried their configuration.
    assert (hello["config"], hello["config_changes"]) == (None, None)


SECRET = "s3cr3t-hunter2"
GOOD_ENV = {"TOKEN": SECRET, "KEEP": "k", "GONE": "g"}


def configured_tree(srv: Path, current_env, previous_env, **current_changes) -> Tree:
    """hello: A the previous good release, B current, each staged with its env (None:
    staged before configurations were recorded)."""
    tree = Tree(srv / "hello", "hello")
    for release_id, env, changes in ((A, previous_env, {}), (B, current_env, current_changes)):
        conf = None if env is None else tree.configured(env, **changes)
        tree.release(release_id, configured=conf)
        tree.events((release_id, "staged"), (release_id, "active"))
    return tree.current(B)


@pytest.mark.parametrize(
    ("current_env", "changes", "config_changes"),
    [
        pytest.param(GOOD_ENV, {}, [], id="same"),
        pytest.param({**GOOD_ENV, "TOKEN": "rotated"}, {}, ["TOKEN"], id="value-changed"),
        pytest.param({"TOKEN": SECRET, "KEEP": "k", "NEW": "n"}, {}, ["-GONE", "+NEW"], id="names"),
        pytest.param(GOOD_ENV, {"workers": 4}, ["workers 1 -> 4"], id="workers"),
    ],
)
def test_host_status_reports_the_config_and_what_changed_from_the_previous_good(
    srv, locks, current_env, changes, config_changes
):
    tree = configured_tree(srv, current_env, GOOD_ENV, **changes)

    [hello] = status([svc("hello")], srv, locks)

    assert hello["config"] == tree.configured(current_env, **changes).config
    assert hello["config_changes"] == config_changes
    # The build the live release is made of: the same whatever its configuration.
    assert hello["build"] == tree.configured(GOOD_ENV).build_id
    assert SECRET not in json.dumps(hello)


@pytest.mark.parametrize(
    ("current_env", "previous_env", "config", "no_previous_good"),
    [
        pytest.param(GOOD_ENV, None, True, False, id="previous-not-recorded"),
        pytest.param(None, GOOD_ENV, False, False, id="current-not-recorded"),
        pytest.param(None, None, False, False, id="neither-recorded"),
        pytest.param(GOOD_ENV, GOOD_ENV, True, True, id="no-previous-good"),
    ],
)
def test_host_status_config_changes_need_both_configurations(
    srv, locks, current_env, previous_env, config, no_previous_good
):
    tree = configured_tree(srv, current_env, previous_env)
    if no_previous_good:
        tree.events((A, "failed", "gate 2"))

    [hello] = status([svc("hello")], srv, locks)

    expected = tree.configured(GOOD_ENV).config if config else None
    assert (hello["config"], hello["config_changes"]) == (expected, None)


def test_host_status_when_the_previous_env_file_cannot_be_read(srv, locks):
    configured_tree(srv, {**GOOD_ENV, "TOKEN": "rotated"}, GOOD_ENV)
    (srv / "hello" / "releases" / A / ".flipback" / "env").unlink()

    [hello] = status([svc("hello")], srv, locks)

    assert hello["config_changes"] == ["env values (which ones is not known)"]


def test_host_status_when_the_current_env_file_cannot_be_read(srv, locks):
    configured_tree(srv, GOOD_ENV, GOOD_ENV)
    (srv / "hello" / "releases" / B / ".flipback" / "env").unlink()

    [hello] = status([svc("hello")], srv, locks)

    assert hello["config_changes"] == []


def test_host_status_of_a_service_not_deployed_yet(srv, locks):
    run, probe = FakeSystemctl(), fake_probe({})
    [ghost] = status([svc("ghost")], srv, locks, run, probe)
    assert ghost == {
        "name": "ghost",
        "port": 8000,
        "deployed": False,
        "current": None,
        "previous_good": None,
        "releases": [],
        "instances": [],
        "health": None,
        "lock": None,
        "error": None,
        "config": None,
        "config_changes": None,
        "build": None,
    }
    # Nothing to ask systemd about, and nothing of it listens on the port.
    assert (run.calls, probe.calls) == ([], [])


def test_host_status_asks_systemd_once_for_every_service(srv, locks):
    Tree(srv / "hello", "hello").deployed(A, B)
    Tree(srv / "greeter", "greeter").deployed(C)
    run = FakeSystemctl()
    services = [svc("hello"), svc("greeter", 8001), svc("ghost", 8002)]

    reports = status(services, srv, locks, run)

    assert [r["name"] for r in reports] == ["hello", "greeter", "ghost"]
    assert len(run.calls) == 1
    assert run.calls[0][5:] == [f"hello@{A}.service", f"hello@{B}.service", f"greeter@{C}.service"]


def test_host_status_reports_the_lock_holder(srv, locks):
    Tree(srv / "hello", "hello").deployed(A)
    holder = {"run_id": "ctl:1:2", "by": "bob", "since": "2026-11-29T11:59:00Z"}
    (locks / "hello").mkdir(parents=True)
    (locks / "hello" / ".lock").write_text(json.dumps(holder))
    (locks / "greeter").mkdir()
    (locks / "greeter" / ".lock").write_text("garbage")

    hello, greeter = status([svc("hello"), svc("greeter", 8001)], srv, locks)

    assert hello["lock"] == holder
    assert greeter["lock"]["problem"] == "not a JSON object: 'garbage'"


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        pytest.param(
            lambda root: (root / "history.jsonl").write_text("not json\n{}\n"),
            "history.jsonl line 1",
            id="corrupt-history",
        ),
        pytest.param(
            lambda root: ((root / "current").unlink(), (root / "current").mkdir()),
            "current: got a directory",
            id="current-is-a-directory",
        ),
    ],
)
def test_host_status_reports_an_unreadable_service_and_goes_on(srv, locks, break_it, error):
    Tree(srv / "hello", "hello").deployed(A)
    Tree(srv / "greeter", "greeter").deployed(B)
    break_it(srv / "hello")

    hello, greeter = status([svc("hello"), svc("greeter", 8001)], srv, locks)

    assert error in hello["error"]
    assert (hello["current"], hello["releases"]) == (None, [])
    assert greeter["error"] is None
    assert greeter["current"] == B


def test_host_status_names_a_systemctl_failure_on_each_deployed_service(srv, locks):
    Tree(srv / "hello", "hello").deployed(A)

    hello, ghost = status([svc("hello"), svc("ghost", 8001)], srv, locks, FakeSystemctl(rc=1))

    assert hello["error"] == "systemctl show exited 1: Failed to connect to bus"
    assert hello["instances"][0]["active_state"] is None
    assert ghost["error"] is None


def test_host_status_probes_a_real_port(srv, locks, http_server):
    Tree(srv / "hello", "hello").deployed(A)
    http_server.script = [Reply(200, json.dumps({"ok": True, "release": A}), 0)]

    [hello] = host_status(
        [svc("hello", http_server.port)],
        run=FakeSystemctl(),
        systemctl="/bin/systemctl",
        root_parent=str(srv),
        lock_dir=str(locks),
    )

    assert (hello["health"]["ok"], hello["health"]["release"]) == (True, A)


def test_host_status_checks_its_inputs(srv, locks):
    with pytest.raises(ReleaseError) as err:
        status([svc("hello")], srv, locks, probe_timeout=0)
    assert err.value.details["field"] == "probe_timeout"


# =========================================================================== host_history


def test_host_history_returns_the_last_events_newest_last(srv):
    Tree(srv / "hello", "hello").deployed(A, B).events((B, "rolled_back", "back to A"))

    [hello, ghost] = host_history(["hello", "ghost"], last=2, root_parent=str(srv))

    assert hello["total"] == 5
    assert hello["error"] is None
    assert hello["events"] == [
        {
            "at": "2026-11-29T12:04:00Z",
            "release": B,
            "event": "active",
            "by": "alice",
            "from": None,
            "note": "",
        },
        {
            "at": "2026-11-29T12:05:00Z",
            "release": B,
            "event": "rolled_back",
            "by": "alice",
            "from": None,
            "note": "back to A",
        },
    ]
    assert ghost == {"name": "ghost", "events": [], "total": 0, "error": None}


def test_host_history_reports_a_corrupt_log_and_goes_on(srv):
    Tree(srv / "greeter", "greeter").deployed(A)
    (srv / "hello").mkdir()
    (srv / "hello" / "history.jsonl").write_text("oops\n\n")

    hello, greeter = host_history(["hello", "greeter"], root_parent=str(srv))

    assert "history.jsonl line 1" in hello["error"]
    assert hello["events"] == []
    assert len(greeter["events"]) == 2


@pytest.mark.parametrize(
    ("names", "last", "field"),
    [
        pytest.param(["hello"], 0, "last", id="last-zero"),
        pytest.param(["hello"], True, "last", id="last-bool"),
        pytest.param(["Hello"], 5, "service", id="bad-name"),
    ],
)
def test_host_history_checks_its_inputs(srv, names, last, field):
    with pytest.raises(ReleaseError) as err:
        host_history(names, last=last, root_parent=str(srv))
    assert err.value.details["field"] == field


# =========================================================================== report cells


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(59, "59s", id="seconds"),
        pytest.param(60, "1m", id="minute"),
        pytest.param(3599, "59m", id="minutes"),
        pytest.param(7200, "2h", id="hours"),
        pytest.param(3 * 86400 + 5, "3d", id="days"),
        pytest.param(None, "-", id="none"),
        pytest.param(True, "-", id="bool"),
    ],
)
def test_compact_age(seconds, text):
    assert compact_age(seconds) == text


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        pytest.param("short", 10, "short", id="fits"),
        pytest.param("a  b\nc", 10, "a b c", id="whitespace-folded"),
        pytest.param("abcdefghijkl", 10, "abcdefg...", id="cut"),
        pytest.param(None, 10, "", id="none"),
    ],
)
def test_truncate(text, width, expected):
    assert truncate(text, width) == expected


def test_render_table_pads_columns_and_strips_trailing_spaces():
    table = render_table(
        (("a", "A"), ("b", "LONG B"), ("c", "C")),
        [{"a": "xxx", "b": "y", "c": ""}, {"a": "z", "b": "yy", "c": "w"}],
    )
    assert table.splitlines() == [
        "A    LONG B  C",
        "---  ------  -",
        "xxx  y",
        "z    yy      w",
    ]


def host_report(**overrides) -> dict:
    """One service's status as service_status returns it: B current, A previous good."""
    report = {
        "name": "hello",
        "current": B,
        "previous_good": A,
        "releases": [
            {"id": A, "status": "good", "age_seconds": 7200},
            {"id": B, "status": "active", "age_seconds": 300},
        ],
        "instances": [
            {"release": A, "active_state": "inactive", "sub_state": "dead"},
            {"release": B, "active_state": "active", "sub_state": "running"},
        ],
        "health": {"ok": True, "status": 200, "release": B, "latency_ms": 4.4, "error": None},
        "lock": None,
        "error": None,
    }
    report.update(overrides)
    return report


@pytest.mark.parametrize(
    ("overrides", "column", "cell"),
    [
        pytest.param({}, "current", B, id="current"),
        pytest.param({}, "age", "5m", id="age-of-current"),
        pytest.param({}, "previous_good", A, id="previous-good"),
        pytest.param({"previous_good": None}, "previous_good", "-", id="no-previous-good"),
        pytest.param({}, "instance", "active/running", id="instance"),
        pytest.param(
            {
                "instances": [
                    {"release": A, "active_state": "active", "sub_state": "running"},
                    {"release": B, "active_state": "active", "sub_state": "running"},
                ]
            },
            "instance",
            "active/running +1 other active",
            id="old-instance-still-active",
        ),
        pytest.param({"instances": []}, "instance", "?", id="instance-unknown"),
        pytest.param({}, "health", "ok 4 ms", id="healthy"),
        pytest.param(
            {"health": {"ok": True, "latency_ms": 2.0, "release": A}},
            "health",
            f"ok 2 ms ANSWERS {A}",
            id="answers-another-release",
        ),
        pytest.param(
            {"health": {"ok": False, "status": 502, "error": "status 502"}},
            "health",
            "FAIL 502",
            id="bad-status",
        ),
        pytest.param(
            {"health": {"ok": False, "status": None, "error": "ConnectionRefusedError: " * 3}},
            "health",
            "FAIL ConnectionRefusedError: Conne...",
            id="unreachable",
        ),
        pytest.param({}, "releases", "2 (1 active, 1 good)", id="releases"),
        pytest.param(
            {
                "releases": [
                    {"id": C, "status": "failed"},
                    {"id": A, "status": "good"},
                    {"id": B, "status": "active"},
                    {"id": D, "status": "weird"},
                ]
            },
            "releases",
            "4 (1 active, 1 good, 1 failed, 1 weird)",
            id="releases-in-status-order",
        ),
        pytest.param({}, "config", "not recorded", id="config-not-recorded"),
        pytest.param(
            {"config": {"workers": 2, "env_names": ["A", "B", "C"]}},
            "config",
            "2w 3 env",
            id="config",
        ),
        pytest.param(
            {"config": {"workers": 1, "env_names": None}}, "config", "1w 0 env", id="no-env"
        ),
        pytest.param(
            {"config": {"workers": 2, "env_names": ["A"]}, "config_changes": []},
            "config",
            "2w 1 env",
            id="config-unchanged",
        ),
        pytest.param(
            {
                "config": {"workers": 2, "env_names": ["A", "C"]},
                "config_changes": ["workers 1 -> 2", "+C"],
            },
            "config",
            "2w 2 env; changed: workers 1 -> 2, +C",
            id="config-changed",
        ),
        pytest.param(
            {
                "config": {"workers": 2, "env_names": ["A"]},
                "config_changes": ["workers 1 -> 2", "-DATABASE_URL", "+DATABASE_URI"],
            },
            "config",
            "2w 1 env; changed: workers 1 -> 2, -DATABASE_URL...",
            id="config-changes-truncated",
        ),
        pytest.param({"current": None, "config": None}, "config", "-", id="config-not-deployed"),
        pytest.param({}, "lock", "-", id="no-lock"),
        pytest.param(
            {"lock": {"by": "bob@ctl", "since": "2026-11-29T11:59:00Z"}},
            "lock",
            "bob@ctl since 2026-11-29T11:59:00Z",
            id="lock",
        ),
        pytest.param(
            {"lock": {"run_id": None, "problem": "not JSON"}},
            "lock",
            "unreadable lock",
            id="unreadable-lock",
        ),
        pytest.param(
            {
                "current": None,
                "previous_good": None,
                "releases": [],
                "instances": [],
                "health": None,
            },
            "instance",
            "-",
            id="not-deployed",
        ),
    ],
)
def test_status_report_cells(overrides, column, cell):
    [row] = status_report({"sandbox-1": {"services": [host_report(**overrides)]}})["rows"]
    assert row[column] == cell


def test_status_report_of_a_service_not_deployed():
    empty = host_report(current=None, previous_good=None, releases=[], instances=[], health=None)
    [row] = status_report({"h": {"services": [empty]}})["rows"]
    assert row == {
        "service": "hello",
        "host": "h",
        "current": "-",
        "age": "-",
        "previous_good": "-",
        "instance": "-",
        "processes": "-",
        "health": "-",
        "releases": "0",
        "config": "-",
        "lock": "-",
    }


def test_status_report_rows_go_by_service_then_host_and_problems_follow_the_table():
    hosts = {
        "sandbox-1": {
            "services": [
                host_report(),
                host_report(name="greeter", error="history.jsonl line 3: bad"),
            ]
        },
        "sandbox-2": {
            "services": [
                host_report(health={"ok": False, "status": None, "error": "refused"}),
                host_report(name="greeter"),
            ]
        },
        "sandbox-3": {"failed": True, "msg": "services[0].port: got 0"},
        "sandbox-4": {},
    }

    report = status_report(hosts)

    assert [(r["service"], r["host"]) for r in report["rows"]] == [
        ("hello", "sandbox-1"),
        ("hello", "sandbox-2"),
        ("greeter", "sandbox-1"),
        ("greeter", "sandbox-2"),
    ]
    lines = report["table"].splitlines()
    assert lines[0].split() == [
        "SERVICE",
        "HOST",
        "CURRENT",
        "AGE",
        "PREVIOUS",
        "GOOD",
        "INSTANCE",
        "HEALTH",
        "RELEASES",
        "CONFIG",
        "LOCK",
    ]
    assert len({len(line) for line in lines[:2]}) == 1
    assert lines[6:] == [
        "",
        "! sandbox-1 greeter: history.jsonl line 3: bad",
        "! sandbox-2 hello: health: refused",
        "! sandbox-3: services[0].port: got 0",
        "! sandbox-4: no result (unreachable?)",
    ]


def test_status_report_needs_a_mapping_of_hosts():
    with pytest.raises(ReleaseError) as err:
        status_report(["sandbox-1"])
    assert err.value.details["field"] == "hosts"


# =========================================================================== history_report


def events_of(*events: tuple[str, str, str, str]) -> list[dict]:
    return [
        {"at": at, "release": rel, "event": event, "by": "alice", "from": None, "note": note}
        for at, rel, event, note in events
    ]


def test_history_report_merges_hosts_by_time_and_keeps_the_last():
    hosts = {
        "sandbox-1": {
            "services": [
                {
                    "name": "hello",
                    "events": events_of(
                        ("2026-11-29T12:01:00Z", A, "staged", ""),
                        ("2026-11-29T12:03:00Z", A, "active", "deploy of v1"),
                    ),
                }
            ]
        },
        "sandbox-2": {
            "services": [
                {
                    "name": "hello",
                    "events": events_of(
                        ("2026-11-29T12:02:00Z", A, "staged", ""),
                        ("2026-11-29T12:03:00Z", A, "active", "x" * 60),
                    ),
                },
                {"name": "greeter", "events": [], "error": "history.jsonl line 1: bad"},
            ]
        },
    }

    report = history_report(hosts, last=3)

    assert [(r["at"][11:16], r["host"], r["event"]) for r in report["rows"]] == [
        ("12:02", "sandbox-2", "staged"),
        ("12:03", "sandbox-1", "active"),
        ("12:03", "sandbox-2", "active"),
    ]
    # Rows keep the whole note; the table cuts it.
    assert report["rows"][2]["note"] == "x" * 60
    lines = report["table"].splitlines()
    assert lines[0].split() == ["AT", "HOST", "SERVICE", "RELEASE", "EVENT", "BY", "NOTE"]
    assert lines[2].endswith("staged  alice  -")
    assert lines[4].endswith("x" * 45 + "...")
    assert lines[5:] == ["", "! sandbox-2 greeter: history.jsonl line 1: bad"]


def test_history_report_of_no_events():
    report = history_report({"h": {"services": [{"name": "hello", "events": []}]}})
    assert report["rows"] == []
    assert report["table"].splitlines()[0].startswith("AT")


def test_history_report_checks_last():
    with pytest.raises(ReleaseError) as err:
        history_report({}, last=0)
    assert err.value.details["field"] == "last"


# =========================================================================== write_json


def test_write_json_writes_atomically_and_only_on_change(tmp_path):
    path = tmp_path / "status.json"
    assert write_json(str(path), {"b": 1, "a": [1]}) is True
    assert json.loads(path.read_text()) == {"a": [1], "b": 1}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert write_json(str(path), {"a": [1], "b": 1}) is False
    assert write_json(str(path), {"a": [2]}) is True
    assert sorted(os.listdir(tmp_path)) == ["status.json"]


def test_write_json_into_a_missing_directory_fails_and_leaves_nothing(tmp_path):
    with pytest.raises(ReleaseError) as err:
        write_json(str(tmp_path / "missing" / "status.json"), {})
    assert err.value.details["field"] == "json_path"
    assert err.value.retryable is False
    assert os.listdir(tmp_path) == []


def test_host_status_has_no_build_for_a_release_staged_before_builds_were_recorded(srv, locks):
    configured_tree(srv, None, None)

    [hello] = status([svc("hello")], srv, locks)

    assert hello["current"] == B
    assert hello["build"] is None


def test_host_status_has_no_build_when_nothing_is_live(srv, locks):
    [hello] = status([svc("hello")], srv, locks)

    assert hello["build"] is None


@pytest.mark.parametrize(
    ("second", "problems"),
    [
        pytest.param({}, [], id="same-release"),
        # Another release id of the same build: hosts whose env differs.
        pytest.param({"current": A, "build": "build-1"}, [], id="same-build-other-config"),
        pytest.param(
            {"current": A, "build": "build-2"},
            ["hello: HOSTS DISAGREE, they run different builds: h1 on build-1; h2 on build-2"],
            id="different-builds",
        ),
        pytest.param(
            {"current": A, "build": None},
            [f"hello: HOSTS DISAGREE, they run different builds: h2 on {A}; h1 on build-1"],
            id="older-release-counts-as-its-own-build",
        ),
        pytest.param(
            {"current": None, "build": None, "previous_good": None, "health": None},
            ["h2 hello: NO RELEASE IS LIVE here"],
            id="no-release-on-one-host",
        ),
    ],
)
def test_status_report_names_hosts_without_a_release_and_hosts_that_disagree(second, problems):
    hosts = {
        "h1": {"services": [host_report(build="build-1")]},
        "h2": {"services": [host_report(**{"build": "build-1", **second})]},
    }

    report = status_report(hosts)

    assert report["problems"] == problems
    for problem in problems:
        assert f"! {problem}" in report["table"]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_host_status_probes_over_https_when_the_live_release_has_tls(srv, locks, tls):
    tree = Tree(srv / "hello", "hello")
    conf = tree.configured(GOOD_ENV)
    if tls:
        conf.config["nginx"]["tls"] = {"certificate": "/etc/ssl/c.pem", "key": "/etc/ssl/k.pem"}
    tree.release(A, configured=conf).events((A, "staged"), (A, "active")).current(A)
    probe = fake_probe({})

    status([svc("hello")], srv, locks, probe=probe)

    assert probe.tls == [tls]


def test_probe_once_speaks_https_when_told(monkeypatch):
    seen = []
    monkeypatch.setattr(
        flipback_status, "attempt", lambda target, *_a: seen.append(target) or Observation()
    )

    flipback_status.probe_once(8443, svc("hello")["health"], 1.0, True)
    flipback_status.probe_once(8000, svc("hello")["health"], 1.0)

    assert [(t.port, t.tls) for t in seen] == [(8443, True), (8000, False)]
