"""HTTP health probes over TCP or a unix socket: a deadline loop with backoff.

A probe GETs one path until the service has answered as expected for
`successes` attempts in a row, or until the deadline passes. Each attempt
either could not reach the service (connection refused, no socket file yet,
timeout: it may still be starting, so a retry is safe) or got an answer that
is compared with the expected status codes, response headers and top-level JSON
fields (an answer from the wrong release will not change by asking again).

Which release answered needs nothing from the app: every instance's uvicorn adds
RELEASE_HEADER, naming its release, to each response it sends (`--header`), and nginx
passes it on. An app that echoes its release in its JSON (`release`) can be asked
that way instead.

Time is read and spent through a `Clock`, so the deadline and backoff logic
can be unit-tested without sleeping.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ansible.module_utils.flipback_common import FlipbackError
from ansible.module_utils.flipback_request import RELEASE_HEADER

BODY_LIMIT = 2000
# A health answer is small; reading more than this is a sign of the wrong endpoint.
READ_LIMIT = 1 << 20
# An answer with these statuses comes from a proxy whose backend is not up yet
# (nginx answers 502 while the release's socket does not exist) or from a service
# that says it is still starting: the same probe may succeed later.
STARTING_STATUSES = frozenset({502, 503, 504})

# RELEASE_HEADER, RELEASE_IN (how a gate tells which release answered: the header, or
# the JSON field `release`) and DEFAULT_UNHEALTHY_ANSWERS are defined with the release
# module's arguments in flipback_request, which stays light: the controller imports it
# for every host of every release task.

# One rule for a health path, on the controller (service_config) and the hosts: '/' and
# printable ASCII, no spaces (percent-encode anything else), as a request line needs it.
HEALTH_PATH_RE = re.compile(r"/[\x21-\x7e]{0,2047}")
HEALTH_PATH_EXPECTED = "a path starting with '/', of printable ASCII without spaces"


def valid_health_path(path: object) -> bool:
    return isinstance(path, str) and HEALTH_PATH_RE.fullmatch(path) is not None


class HealthError(FlipbackError):
    """A failure with what was observed, what was expected, and whether a retry is safe."""


class Clock:
    """Real time; tests pass an object with the same two methods."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket; the Host header is sent as given by the caller."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnverifiedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `host`:`port` that asks for `server_name` (SNI) and does not verify the
    certificate: a probe proves which release answers through nginx on this host, not
    who the host is, and internal hosts commonly serve self-signed certificates."""

    def __init__(self, host: str, port: int | None, server_name: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=context)
        self.tls_context = context
        self.server_name = server_name

    def connect(self) -> None:
        # HTTPSConnection would send `host` (127.0.0.1: no SNI at all) as the name.
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.server_name)


@dataclass(frozen=True)
class Target:
    url_path: str = "/health"
    host: str = "127.0.0.1"
    port: int | None = None
    unix_socket: str | None = None
    host_header: str = "localhost"
    # HTTPS (the release's nginx.tls), with host_header's name as SNI; never verified.
    tls: bool = False

    def describe(self) -> str:
        if self.unix_socket is not None:
            return f"http://{self.host_header}{self.url_path} via unix:{self.unix_socket}"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.url_path}"

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.unix_socket is not None:
            return UnixHTTPConnection(self.unix_socket, timeout)
        if self.tls:
            server_name = self.host_header.rsplit(":", 1)[0].rstrip(".")
            return UnverifiedHTTPSConnection(self.host, self.port, server_name, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


@dataclass(frozen=True)
class Expect:
    status: tuple[int, ...] = (200,)
    json: dict = field(default_factory=dict)
    # Response headers that must have these values (names compared case-insensitively).
    headers: dict = field(default_factory=dict)

    def describe(self) -> str:
        text = f"status in {list(self.status)}"
        for name, value in self.headers.items():
            text += f" and header {name}: {value}"
        if self.json:
            text += f" and JSON fields {json.dumps(self.json, sort_keys=True)}"
        return text


def expect_release(status, json_fields: dict, release: str, release_in: str = "header") -> Expect:
    """A healthy answer of `release`: one of `status`, with `json_fields`, naming the
    release in RELEASE_HEADER (`release_in="header"`) or in the JSON field `release`
    (`"json"`): what every gate of a release asks."""
    if release_in == "json":
        return Expect(status=tuple(status), json={**json_fields, "release": release})
    return Expect(status=tuple(status), json=dict(json_fields), headers={RELEASE_HEADER: release})


@dataclass(frozen=True)
class Policy:
    timeout: float = 30.0
    attempt_timeout: float = 2.0
    delay: float = 0.2
    backoff: float = 1.5
    max_delay: float = 2.0
    successes: int = 1
    # Give up after this many unhealthy answers in a row (0: only at the deadline).
    unhealthy_answers: int = 0
    # Asked after each failed attempt: a reason to stop waiting now (the process being
    # probed has exited), or None.
    abort: Callable[[], str | None] | None = field(default=None, compare=False)


@dataclass
class Observation:
    """One attempt: an answer (status, body) or a connection error, and what was wrong."""

    status: int | None = None
    body: str = ""
    json: object = None
    error: str | None = None
    # Response headers, names in lower case.
    headers: dict = field(default_factory=dict)
    # An answer that waiting cannot change: the expected status, but a body without
    # the fields the definition requires (or not JSON at all).
    final: bool = False

    @property
    def release(self) -> str | None:
        """The release that answered: the release header, else a JSON `release` field."""
        named = self.headers.get(RELEASE_HEADER.lower())
        if named:
            return named
        document = self.json if isinstance(self.json, dict) else {}
        release = document.get("release")
        return release if isinstance(release, str) else None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in STARTING_STATUSES

    @property
    def unhealthy(self) -> bool:
        """An answer, and not a healthy one, nor one that says the app is starting."""
        return not self.ok and not self.retryable

    def describe(self) -> str:
        if self.status is None:
            return str(self.error)
        excerpt = self.body[:200] + ("..." if len(self.body) > 200 else "")
        return f"status {self.status}, body {excerpt!r}"


def _bad(field_name: str, value: object, expected: str) -> HealthError:
    return HealthError(
        f"{field_name}: got {value!r}, expected {expected}", field=field_name, value=value
    )


def validate(target: Target, expect: Expect, policy: Policy) -> None:
    """Reject inputs that would make every attempt fail or the loop meaningless.

    A zero delay is refused: it would turn a refused connection into a busy loop.
    """
    path = target.url_path
    if not valid_health_path(path):
        raise _bad("url_path", path, HEALTH_PATH_EXPECTED)
    if target.unix_socket is None and not (target.port is not None and 1 <= target.port <= 65535):
        raise _bad("port", target.port, "a TCP port from 1 to 65535")
    if not expect.status or any(not 100 <= code <= 599 for code in expect.status):
        raise _bad("expect_status", list(expect.status), "a non-empty list of HTTP statuses")
    for name, value in (
        ("timeout", policy.timeout),
        ("attempt_timeout", policy.attempt_timeout),
        ("delay", policy.delay),
    ):
        if not value > 0:
            raise _bad(name, value, "a number of seconds above 0")
    if policy.max_delay < policy.delay:
        raise _bad("max_delay", policy.max_delay, f"at least delay ({policy.delay:g})")
    if policy.backoff < 1:
        raise _bad("backoff", policy.backoff, "a factor of 1 or more")
    if policy.successes < 1:
        raise _bad("successes", policy.successes, "1 or more")


def compare_json(document: object, expected: dict) -> str | None:
    """Why the parsed body does not hold the expected top-level fields, or None if it does."""
    if not isinstance(document, dict):
        return "body is not a JSON object"
    for key, want in expected.items():
        if key not in document:
            return f"JSON field {key!r} missing"
        if document[key] != want:
            return f"JSON field {key!r} is {document[key]!r}, expected {want!r}"
    return None


def attempt(target: Target, expect: Expect, timeout: float) -> Observation:
    conn = target.connection(timeout)
    try:
        conn.request(
            "GET",
            target.url_path,
            headers={
                "Host": target.host_header,
                "Accept": "application/json",
                "User-Agent": "flipback-health",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        raw = response.read(READ_LIMIT)
    except TimeoutError:
        return Observation(error=f"no answer within {round(timeout, 3):g}s")
    except (OSError, http.client.HTTPException) as exc:
        return Observation(error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    obs = Observation(
        status=response.status,
        body=raw.decode("utf-8", errors="replace"),
        headers={name.lower(): value for name, value in response.getheaders()},
    )
    try:
        obs.json = json.loads(obs.body)
        parsed = True
    except ValueError:
        parsed = False
    if response.status not in expect.status:
        obs.error = f"status {response.status}, expected one of {list(expect.status)}"
    else:
        obs.error = compare_headers(obs.headers, expect.headers)
        if obs.error is None and expect.json:
            obs.error = compare_json(obs.json, expect.json) if parsed else "body is not JSON"
            # The app's own fields are what its code answers: waiting will not change
            # them. (A `release` field that differs may be another release answering.)
            own = {k: v for k, v in expect.json.items() if k != "release"}
            obs.final = (
                obs.error is not None
                and bool(own)
                and (not parsed or compare_json(obs.json, own) is not None)
            )
    return obs


def compare_headers(headers: dict, expected: dict) -> str | None:
    """Why the answer's headers (names in lower case) lack an expected value, or None."""
    for name, want in expected.items():
        got = headers.get(name.lower())
        if got is None:
            return f"header {name} missing"
        if got != want:
            return f"header {name} is {got!r}, expected {want!r}"
    return None


def probe(target: Target, expect: Expect, policy: Policy, clock: Clock | None = None) -> dict:
    """Attempt until `policy.successes` good answers in a row; raise HealthError at the deadline.

    The wait before the next attempt starts at `delay`, grows by `backoff` after
    each failed attempt up to `max_delay`, and drops back to `delay` after a
    good answer. The loop gives up when the next attempt could not start before
    the deadline, and an attempt is cut short at the deadline.
    """
    validate(target, expect, policy)
    clock = clock or Clock()
    started = clock.now()
    deadline = started + policy.timeout
    attempts = consecutive = unhealthy = 0
    wait = policy.delay
    last_error: str | None = None
    while True:
        # The floor keeps a socket timeout positive when a sleep overshoots a little.
        remaining = max(deadline - clock.now(), 0.01)
        obs = attempt(target, expect, min(policy.attempt_timeout, remaining))
        attempts += 1
        if obs.ok:
            consecutive += 1
            wait = policy.delay
        else:
            consecutive = 0
            last_error = obs.error
        unhealthy = unhealthy + 1 if obs.unhealthy else 0
        result = {
            "status": obs.status,
            "body": obs.body[:BODY_LIMIT],
            "json": obs.json,
            "release": obs.release,
            "elapsed": round(clock.now() - started, 3),
            "attempts": attempts,
            "consecutive": consecutive,
            "last_error": last_error,
        }
        if consecutive >= policy.successes:
            return {"ok": True, **result}
        if obs.final:
            raise _failure(target, expect, policy, obs, result, "an answer waiting cannot change")
        if policy.unhealthy_answers and unhealthy >= policy.unhealthy_answers:
            raise _failure(
                target, expect, policy, obs, result, f"{unhealthy} unhealthy answers in a row"
            )
        if not obs.ok and policy.abort is not None:
            reason = policy.abort()
            if reason:
                raise _failure(target, expect, policy, obs, result, reason)
        if clock.now() + wait >= deadline:
            raise _failure(target, expect, policy, obs, result)
        clock.sleep(wait)
        if not obs.ok:
            wait = min(wait * policy.backoff, policy.max_delay)


def _failure(
    target: Target,
    expect: Expect,
    policy: Policy,
    obs: Observation,
    result: dict,
    gave_up: str | None = None,
) -> HealthError:
    """The error of a probe that ran out of time, or that stopped waiting (`gave_up`
    says why: nothing it could wait for would change the outcome)."""
    streak = f", {policy.successes} times in a row" if policy.successes > 1 else ""
    observed = obs.describe()
    if obs.ok:
        observed = (
            f"only {result['consecutive']} of {policy.successes} good answers in a row, "
            f"the last {observed}"
        )
    elif obs.status in expect.status:
        observed += f" ({obs.error})"
    # Out of time while the answers were good: the service is up, so another run may pass.
    retryable = (obs.ok or obs.retryable) and gave_up is None
    if gave_up is not None:
        advice = "Waiting longer would not change that; retrying as-is will not either"
    elif retryable:
        advice = "The service may still be starting; retrying is safe"
    else:
        advice = "The service answered, but not as expected; retrying will not change that"
    why = f"gave up: {gave_up}" if gave_up is not None else f"timeout {policy.timeout:g}s"
    found = (
        f"health check of {target.describe()} failed after {result['attempts']} attempts in "
        f"{result['elapsed']:g}s ({why}): observed {observed}; "
        f"expected {expect.describe()}{streak}"
    )
    error = HealthError(f"{found}. {advice}", retryable=retryable, **result)
    # What was observed, without the advice: a caller that undoes and decides for itself
    # whether a retry helps (the switch) says its own.
    error.found = found
    return error


# How the switch and the prepare call probe; tests pass a fake of this shape.
Prober = Callable[[Target, Expect, Policy], dict]


def real_probe(target: Target, expect: Expect, policy: Policy) -> dict:
    return probe(target, expect, policy, Clock())
