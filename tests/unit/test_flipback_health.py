"""Unit tests of module_utils/flipback_health.py against real HTTP servers (TCP and unix socket).

The servers answer from a script; time in the probe loop comes from a fake clock
whose sleep only moves its own time, so deadlines and backoff are checked exactly
without waiting. Only the per-attempt timeout is real (sockets time out in real time).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import socket
import ssl
import time

import pytest
from ansible.module_utils import flipback_health
from ansible.module_utils.flipback_health import (
    BODY_LIMIT,
    Expect,
    HealthError,
    Policy,
    Target,
    probe,
)
from fakes import OK, Reply, ScriptedServer, closed_port


@pytest.fixture(params=["tcp", "unix"])
def serve(request, tmp_path):
    """Start a scripted server on the parametrized transport: serve(Reply(...), ...)."""
    servers: list[ScriptedServer] = []

    def start(*script: Reply) -> ScriptedServer:
        unix_path = str(tmp_path / f"app{len(servers)}.sock") if request.param == "unix" else None
        server = ScriptedServer(list(script), unix_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


# The failure cases run on this schedule: attempts at t=0, 0.2 and 0.6; the next
# wait (0.5) would start an attempt at 1.1, past the 1s deadline.
SHORT = Policy(timeout=1, delay=0.2, backoff=2, max_delay=0.5)


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("script", "expect", "successes", "attempts", "sleeps", "last_error"),
    [
        pytest.param([Reply()], Expect(), 1, 1, [], None, id="first-answer-good"),
        pytest.param(
            [Reply(503), Reply(503), Reply()],
            Expect(),
            1,
            3,
            [0.2, 0.3],
            "status 503, expected one of [200]",
            id="503-twice-then-200",
        ),
        pytest.param(
            [Reply()], Expect(), 3, 3, [0.2, 0.2], None, id="three-in-a-row-at-base-delay"
        ),
        pytest.param(
            [Reply(), Reply(503), Reply(503), Reply(), Reply()],
            Expect(),
            2,
            5,
            [0.2, 0.2, 0.3, 0.2],
            "status 503, expected one of [200]",
            id="failure-resets-streak-and-backoff",
        ),
        pytest.param(
            [Reply(body=json.dumps({"status": "ok", "release": "r1"})), Reply()],
            Expect(json={"release": "r2", "status": "ok"}),
            1,
            2,
            [0.2],
            "JSON field 'release' is 'r1', expected 'r2'",
            id="old-release-then-new",
        ),
        pytest.param(
            [Reply(204, "")], Expect(status=(200, 204)), 1, 1, [], None, id="other-status-allowed"
        ),
        pytest.param(
            [Reply(body="OK")], Expect(), 1, 1, [], None, id="json-not-checked-when-not-expected"
        ),
    ],
)
def test_probe_succeeds(serve, script, expect, successes, attempts, sleeps, last_error):
    server = serve(*script)
    clock = FakeClock()

    result = probe(
        server.target(), expect, Policy(delay=0.2, backoff=1.5, successes=successes), clock
    )

    assert result["ok"] is True
    assert result["attempts"] == attempts == len(server.requests)
    assert result["consecutive"] == successes
    assert result["last_error"] == last_error
    assert clock.sleeps == pytest.approx(sleeps)
    assert result["elapsed"] == pytest.approx(sum(sleeps))
    assert result["status"] == script[-1].status
    assert result["body"] == script[-1].body
    assert result["json"] == (json.loads(script[-1].body) if script[-1].body == OK else None)


def test_probe_sends_path_and_host_header(serve):
    server = serve(Reply())

    probe(
        server.target(url_path="/health?deep=1", host_header="shop.example.com"),
        Expect(),
        Policy(),
        FakeClock(),
    )

    assert server.requests == [{"path": "/health?deep=1", "host": "shop.example.com"}]


def test_probe_truncates_the_body(serve):
    server = serve(Reply(body="x" * 5000))

    result = probe(server.target(), Expect(), Policy(), FakeClock())

    assert result["body"] == "x" * BODY_LIMIT


# --------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """(certificate, key) files of a self-signed certificate for shop.example.com."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    where = tmp_path_factory.mktemp("tls")
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def serve_tls(self_signed):
    """A scripted HTTPS server on loopback with the self-signed certificate; the names
    clients asked for by SNI are in its `server_names`."""
    servers: list[ScriptedServer] = []

    def start(*script: Reply) -> ScriptedServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self_signed)
        server = ScriptedServer(list(script))
        server.server_names = []
        context.sni_callback = lambda _conn, name, _ctx: server.server_names.append(name)
        server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_probe_over_https_sends_the_health_host_as_sni_and_host_without_verifying(serve_tls):
    server = serve_tls(Reply(headers=(("X-Flipback-Release", "r2"),)))

    result = probe(
        server.target(tls=True, host_header="shop.example.com:8443"),
        flipback_health.expect_release([200], {}, "r2"),
        Policy(),
        FakeClock(),
    )

    # Self-signed and issued to another name than 127.0.0.1: accepted all the same.
    assert (result["ok"], result["release"]) == (True, "r2")
    assert server.requests == [{"path": "/health", "host": "shop.example.com:8443"}]
    assert server.server_names == ["shop.example.com"]
    assert server.target(tls=True).describe().startswith("https://127.0.0.1:")


def test_probe_over_https_of_a_plain_port_fails_retryable_naming_tls():
    server = ScriptedServer([Reply()])
    try:
        with pytest.raises(HealthError) as failed:
            probe(server.target(tls=True), Expect(), SHORT, FakeClock())
    finally:
        server.stop()

    assert failed.value.retryable is True
    assert "health check of https://127.0.0.1:" in failed.value.msg
    assert "SSL" in failed.value.msg


def test_probe_over_http_of_an_https_port_fails(serve_tls):
    server = serve_tls(Reply())

    with pytest.raises(HealthError) as failed:
        probe(server.target(), Expect(), SHORT, FakeClock())

    assert "health check of http://127.0.0.1:" in failed.value.msg
    assert server.requests == []


# --------------------------------------------------------------------------- failure


@pytest.mark.parametrize(
    ("script", "expect", "successes", "attempts", "retryable", "observed"),
    [
        pytest.param(
            [Reply(503, "starting")],
            Expect(),
            1,
            3,
            True,
            "observed status 503, body 'starting'",
            id="still-503",
        ),
        pytest.param(
            [Reply(502, "bad gateway")],
            Expect(),
            1,
            3,
            True,
            "observed status 502",
            id="proxy-502",
        ),
        pytest.param(
            [Reply(404, "nope")], Expect(), 1, 3, False, "observed status 404", id="wrong-status"
        ),
        pytest.param(
            [Reply(body=json.dumps({"release": "r1"}))],
            Expect(json={"release": "r2"}),
            1,
            3,
            False,
            "(JSON field 'release' is 'r1', expected 'r2')",
            id="wrong-release",
        ),
        pytest.param(
            [Reply(body=json.dumps({"status": "ok"}))],
            Expect(json={"release": "r2"}),
            1,
            3,
            False,
            "(JSON field 'release' missing)",
            id="json-field-missing",
        ),
        pytest.param(
            [Reply(body="<html>up</html>")],
            Expect(json={"release": "r2"}),
            1,
            3,
            False,
            "body '<html>up</html>' (body is not JSON)",
            id="not-json",
        ),
        pytest.param(
            [Reply(body="[1, 2]")],
            Expect(json={"release": "r2"}),
            1,
            3,
            False,
            "(body is not a JSON object)",
            id="json-not-an-object",
        ),
        pytest.param(
            [Reply(), Reply(503), Reply(), Reply(503), Reply()],
            Expect(),
            2,
            5,
            True,
            "observed only 1 of 2 good answers in a row, the last status 200",
            id="streak-never-reached",
        ),
    ],
)
def test_probe_fails_at_the_deadline(
    serve, script, expect, successes, attempts, retryable, observed
):
    server = serve(*script)
    clock = FakeClock()
    policy = Policy(timeout=1, delay=0.2, backoff=2, max_delay=0.5, successes=successes)

    with pytest.raises(HealthError) as err:
        probe(server.target(), expect, policy, clock)

    exc = err.value
    assert exc.retryable is retryable
    assert observed in exc.msg
    assert f"expected {expect.describe()}" in exc.msg
    assert ("retrying is safe" in exc.msg) is retryable
    assert f"failed after {attempts} attempts" in exc.msg
    assert exc.details["attempts"] == attempts == len(server.requests)
    assert exc.details["status"] == script[-1].status
    assert exc.details["body"] == script[-1].body
    assert exc.details["elapsed"] == pytest.approx(sum(clock.sleeps))
    assert clock.t < 1000 + policy.timeout


@pytest.mark.parametrize(
    ("where", "error"),
    [
        pytest.param("tcp-closed-port", "ConnectionRefusedError", id="tcp-refused"),
        pytest.param("no-socket-file", "FileNotFoundError", id="unix-socket-missing"),
        pytest.param("stale-socket-file", "ConnectionRefusedError", id="unix-nobody-listening"),
    ],
)
def test_probe_unreachable_is_retryable(tmp_path, where, error):
    if where == "tcp-closed-port":
        target = Target(port=closed_port())
    else:
        path = tmp_path / "app.sock"
        if where == "stale-socket-file":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(path))
        target = Target(unix_socket=str(path))
    clock = FakeClock()

    with pytest.raises(HealthError) as err:
        probe(target, Expect(), SHORT, clock)

    exc = err.value
    assert exc.retryable is True
    assert f"observed {error}" in exc.msg
    assert "The service may still be starting; retrying is safe" in exc.msg
    assert exc.details["attempts"] == 3
    assert exc.details["status"] is None
    assert exc.details["body"] == ""
    assert exc.details["last_error"].startswith(error)
    assert exc.details["elapsed"] == pytest.approx(0.6)


def test_probe_times_out_a_slow_answer(serve):
    server = serve(Reply(delay=1))

    with pytest.raises(HealthError) as err:
        probe(
            server.target(),
            Expect(),
            dataclasses.replace(SHORT, attempt_timeout=0.1),
            FakeClock(),
        )

    assert err.value.retryable is True
    assert "observed no answer within 0.1s" in err.value.msg
    assert err.value.details["attempts"] == 3


def test_attempt_is_cut_short_at_the_deadline(serve):
    server = serve(Reply(delay=2))
    started = time.monotonic()

    with pytest.raises(HealthError) as err:
        probe(server.target(), Expect(), Policy(timeout=0.3, attempt_timeout=5, delay=1))

    assert time.monotonic() - started < 1.5
    assert err.value.details["attempts"] == 1
    assert "no answer within 0.3s" in err.value.msg


@pytest.mark.parametrize(
    ("policy", "sleeps"),
    [
        pytest.param(
            Policy(timeout=3, delay=0.2, backoff=1.5, max_delay=2),
            [0.2, 0.3, 0.45, 0.675, 1.0125],
            id="grows-by-backoff",
        ),
        pytest.param(
            Policy(timeout=5, delay=1, backoff=3, max_delay=2), [1, 2], id="capped-at-max-delay"
        ),
        pytest.param(
            Policy(timeout=2, delay=0.5, backoff=1, max_delay=0.5), [0.5, 0.5, 0.5], id="steady"
        ),
        pytest.param(Policy(timeout=0.1, delay=0.2, max_delay=0.2), [], id="no-time-to-retry"),
    ],
)
def test_backoff_schedule_until_the_deadline(policy, sleeps):
    clock = FakeClock()

    with pytest.raises(HealthError) as err:
        probe(Target(port=closed_port()), Expect(), policy, clock)

    assert clock.sleeps == pytest.approx(sleeps)
    assert err.value.details["attempts"] == len(sleeps) + 1
    assert err.value.details["elapsed"] == pytest.approx(sum(sleeps), abs=1e-3)
    assert f"in {err.value.details['elapsed']:g}s (timeout {policy.timeout:g}s)" in err.value.msg


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("target", "expect", "policy", "field"),
    [
        pytest.param(Target(url_path="health", port=80), Expect(), Policy(), "url_path", id="rel"),
        pytest.param(Target(url_path="/a b", port=80), Expect(), Policy(), "url_path", id="space"),
        pytest.param(
            Target(url_path="/é", port=80), Expect(), Policy(), "url_path", id="not-ascii"
        ),
        pytest.param(
            Target(url_path="/" + "x" * 2048, port=80), Expect(), Policy(), "url_path", id="long"
        ),
        pytest.param(Target(), Expect(), Policy(), "port", id="no-port-no-socket"),
        pytest.param(Target(port=70000), Expect(), Policy(), "port", id="port-range"),
        pytest.param(Target(port=80), Expect(status=()), Policy(), "expect_status", id="none"),
        pytest.param(Target(port=80), Expect(status=(99,)), Policy(), "expect_status", id="99"),
        pytest.param(Target(port=80), Expect(), Policy(timeout=0), "timeout", id="timeout"),
        pytest.param(
            Target(port=80), Expect(), Policy(attempt_timeout=-1), "attempt_timeout", id="attempt"
        ),
        pytest.param(Target(port=80), Expect(), Policy(delay=0), "delay", id="busy-loop"),
        pytest.param(
            Target(port=80), Expect(), Policy(delay=3, max_delay=2), "max_delay", id="max-delay"
        ),
        pytest.param(Target(port=80), Expect(), Policy(backoff=0.5), "backoff", id="backoff"),
        pytest.param(Target(port=80), Expect(), Policy(successes=0), "successes", id="successes"),
    ],
)
def test_invalid_input_fails_before_probing(target, expect, policy, field):
    clock = FakeClock()

    with pytest.raises(HealthError) as err:
        probe(target, expect, policy, clock)

    assert err.value.msg.startswith(f"{field}: got ")
    assert err.value.details["field"] == field
    assert err.value.retryable is False
    assert clock.sleeps == []


def test_expect_release_names_the_release_over_the_configured_fields():
    expect = flipback_health.expect_release(
        [200, 204], {"ok": True, "release": "x"}, "r1", release_in="json"
    )
    assert expect == flipback_health.Expect(status=(200, 204), json={"ok": True, "release": "r1"})


def test_expect_release_asks_the_release_header_by_default():
    expect = flipback_health.expect_release([200], {"ok": True}, "r1")
    assert expect == flipback_health.Expect(
        status=(200,), json={"ok": True}, headers={"X-Flipback-Release": "r1"}
    )
    assert "header X-Flipback-Release: r1" in expect.describe()


NAMED_R2 = (("x-flipback-release", "r2"),)


@pytest.mark.parametrize(
    ("reply", "ok", "error"),
    [
        pytest.param(Reply(body="OK", headers=NAMED_R2), True, None, id="header-any-body"),
        pytest.param(
            Reply(headers=(("X-FLIPBACK-RELEASE", "r2"),)), True, None, id="name-any-case"
        ),
        pytest.param(
            Reply(headers=(("x-flipback-release", "r1"),)),
            False,
            "header X-Flipback-Release is 'r1', expected 'r2'",
            id="another-release",
        ),
        pytest.param(Reply(), False, "header X-Flipback-Release missing", id="no-header"),
    ],
)
def test_attempt_checks_the_release_header(serve, reply, ok, error):
    server = serve(reply)
    expect = flipback_health.expect_release([200], {}, "r2")

    obs = flipback_health.attempt(server.target(), expect, 2.0)

    assert (obs.ok, obs.error) == (ok, error)


def test_attempt_checks_the_header_before_the_json_fields(serve):
    server = serve(Reply(body=json.dumps({"ok": False}), headers=NAMED_R2))
    expect = flipback_health.expect_release([200], {"ok": True}, "r2")

    obs = flipback_health.attempt(server.target(), expect, 2.0)

    assert obs.error == "JSON field 'ok' is False, expected True"


@pytest.mark.parametrize(
    ("reply", "release"),
    [
        pytest.param(Reply(body="OK", headers=NAMED_R2), "r2", id="header"),
        pytest.param(Reply(body=json.dumps({"release": "r1"})), "r1", id="json-field"),
        pytest.param(
            Reply(body=json.dumps({"release": "r1"}), headers=NAMED_R2), "r2", id="header-first"
        ),
        pytest.param(Reply(body="OK"), None, id="neither"),
        pytest.param(Reply(body=json.dumps({"release": 3})), None, id="not-a-name"),
    ],
)
def test_the_release_that_answered(serve, reply, release):
    server = serve(reply)

    result = probe(server.target(), Expect(), Policy(), FakeClock())

    assert result["release"] == release


# --------------------------------------------------------------------------- giving up early


def test_an_answer_waiting_cannot_change_fails_at_once(serve):
    # The expected status, but a field the app itself answers is missing: no retry.
    server = serve(Reply(body=json.dumps({"status": "ok"})))
    clock = FakeClock()
    policy = Policy(timeout=30, delay=0.2)

    with pytest.raises(HealthError) as err:
        probe(server.target(), Expect(json={"ok": True}), policy, clock)

    assert err.value.retryable is False
    assert "gave up: an answer waiting cannot change" in err.value.msg
    assert "(JSON field 'ok' missing)" in err.value.msg
    assert len(server.requests) == 1 and clock.sleeps == []


def test_a_release_field_that_differs_is_waited_for(serve):
    # Another release may still be answering: that can change.
    server = serve(Reply(body=json.dumps({"ok": True, "release": "old"})))
    clock = FakeClock()

    with pytest.raises(HealthError) as err:
        probe(
            server.target(), Expect(json={"ok": True, "release": "new"}), Policy(timeout=1), clock
        )

    assert "gave up" not in err.value.msg and len(server.requests) > 1


@pytest.mark.parametrize(
    ("replies", "limit", "gives_up_after"),
    [
        pytest.param([Reply(500, "boom")], 4, 4, id="500s"),
        pytest.param([Reply(404, "nope")], 2, 2, id="404s"),
        # 503 says "starting": a warm-up is waited for, whatever its length.
        pytest.param([Reply(503, "warming")], 2, None, id="503s-wait"),
        # A good answer between bad ones starts the count again (the last reply repeats).
        pytest.param([Reply(500), Reply(500), Reply(), Reply(500), Reply(500)], 3, 6, id="reset"),
    ],
)
def test_unhealthy_answers_in_a_row_give_up_early(serve, replies, limit, gives_up_after):
    server = serve(*replies)
    clock = FakeClock()
    policy = Policy(timeout=3, delay=0.2, max_delay=0.2, unhealthy_answers=limit, successes=2)

    with pytest.raises(HealthError) as err:
        probe(server.target(), Expect(), policy, clock)

    if gives_up_after is None:
        assert "gave up" not in err.value.msg
        assert len(server.requests) > limit
    else:
        assert f"gave up: {limit} unhealthy answers in a row" in err.value.msg
        assert err.value.retryable is False
        assert len(server.requests) == gives_up_after


def test_abort_stops_waiting_for_a_process_that_exited(serve):
    server = serve(Reply(503, "starting"))
    clock = FakeClock()
    asked = []

    def abort():
        asked.append(clock.t)
        return "hello@r2.service exited (failed, auto-restart)" if len(asked) >= 2 else None

    with pytest.raises(HealthError) as err:
        probe(server.target(), Expect(), Policy(timeout=30, delay=0.2, abort=abort), clock)

    assert "gave up: hello@r2.service exited (failed, auto-restart)" in err.value.msg
    assert err.value.retryable is False
    assert len(asked) == 2 == len(server.requests)


def test_abort_is_not_asked_while_the_answers_are_good(serve):
    server = serve(Reply(), Reply(503), Reply(), Reply())
    asked = []
    policy = Policy(timeout=30, delay=0.2, successes=2, abort=lambda: asked.append(1))

    probe(server.target(), Expect(), policy, FakeClock())

    assert asked == [1]
