"""Unit tests of bench/load.py: pure summaries, and short real runs against local servers.

The servers are ThreadingHTTPServers on 127.0.0.1 whose behaviour a test switches
at run time (answer release A, then B; answer 500; reset the connection; answer
slowly), and which count requests and distinct client ports. Runs last well under a
second, except the rate-cap runs (1 s each).
"""

from __future__ import annotations

import errno
import http.client
import itertools
import json
import signal
import socket
import struct
import threading
import time
from http.server import ThreadingHTTPServer

import load
import pytest
from fakes import QuietHandler, closed_port, serve, stop

Record = load.Record

LINGER_RESET = struct.pack("ii", 1, 0)


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client closes
    server: _Server

    def do_GET(self) -> None:
        behaviour = self.server.app.hit(self.client_address[1])
        if behaviour == "reset":
            # Linger 0: closing sends RST; the server closes without shutdown() (below).
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            self.close_connection = True
            return
        if behaviour == "slow":
            time.sleep(0.5)
        status, body = {
            "500": (500, b'{"detail": "boom"}'),
            "not-json": (200, b"<html>hello</html>"),
        }.get(behaviour, (200, json.dumps({"ok": True, "release": behaviour}).encode()))
        self.answer(status, body)  # the client may time out first: the slow case tests that


class _Server(ThreadingHTTPServer):
    app: App

    def shutdown_request(self, request: socket.socket) -> None:
        if request.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == LINGER_RESET:
            self.close_request(request)  # shutdown() would send a polite FIN first
        else:
            super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-answer is expected here


class App:
    """A local HTTP server whose answer (`behaviour`) a test switches at run time:
    a release name answers 200 {"release": name}; "500", "not-json", "reset", "slow"
    (release "slow" after 0.5 s)."""

    def __init__(self, behaviour: str = "A") -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.ports: set[int] = set()
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.app = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self._thread = serve(self.server)

    def hit(self, port: int) -> str:
        with self._lock:
            self.requests += 1
            self.ports.add(port)
            return self.behaviour

    def stop(self) -> None:
        stop(self.server)


@pytest.fixture
def app():
    """Start local servers: app() or app("500"); all stopped after the test."""
    apps: list[App] = []

    def start(behaviour: str = "A") -> App:
        apps.append(App(behaviour))
        return apps[-1]

    yield start
    for started in apps:
        started.stop()


@pytest.fixture
def closed_url() -> str:
    """A URL on a port of 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{closed_port()}/health"


def run(urls: list[str], mode: str, duration: float = 0.3, clients: int = 2, **kwargs):
    """A complete run; returns the generator (records, summary)."""
    kwargs.setdefault("rate", 100)
    with load.LoadGenerator(urls, clients, mode, duration=duration, **kwargs) as generator:
        assert generator.join(duration + 3)
    return generator


MODES = pytest.mark.parametrize("mode", ["new", "keepalive"])


# --- pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connect_refused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connect_reset"),
        (http.client.RemoteDisconnected("closed"), "connect_reset"),
        (http.client.IncompleteRead(b"{", 10), "connect_reset"),
        (BrokenPipeError(errno.EPIPE, "pipe"), "connect_reset"),
        (TimeoutError("timed out"), "timeout"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "client_port_exhausted"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "other:OSError"),
        (http.client.BadStatusLine("garbage"), "other:BadStatusLine"),
    ],
    ids=[
        "refused",
        "reset",
        "remote-disconnected",
        "incomplete-read",
        "broken-pipe",
        "timeout",
        "eaddrnotavail",
        "other-oserror",
        "bad-status-line",
    ],
)
def test_classify(exc, kind):
    assert load.classify(exc) == kind


U1, U2 = "http://h1:8000/health", "http://h2:8000/health"
RECORDS = [
    Record(0.10, U1, "ok", 200, 0.010, "A"),
    Record(0.20, U2, "ok", 200, 0.020, "A"),
    Record(1.50, U1, "http_500", 500, 0.005, None),
    Record(1.60, U2, "connect_refused", None, 0.001, None),
    Record(2.20, U2, "client_port_exhausted", None, 0.000, None),
    Record(2.10, U1, "ok", 200, 0.030, "B"),  # completed after a later-started request
]
SUMMARY = load.summarize(RECORDS, elapsed=3.0)


SUMMARY_CASES = [
    ("total", 6),
    ("ok", 3),
    ("failed", 2),
    ("failed_by_kind", {"http_500": 1, "connect_refused": 1}),
    ("client_errors", 1),
    ("client_errors_by_kind", {"client_port_exhausted": 1}),
    ("latency_ms", {"p50": 20.0, "p99": 30.0, "max": 30.0}),
    (
        "releases",
        {
            "A": {"count": 2, "first": 0.1, "last": 0.2},
            "B": {"count": 1, "first": 2.1, "last": 2.1},
        },
    ),
    (
        "per_url",
        {
            U1: {"total": 3, "ok": 2, "failed": 1, "client_errors": 0},
            U2: {"total": 3, "ok": 1, "failed": 1, "client_errors": 1},
        },
    ),
    ("requests_per_s", 2.0),
    (
        "timeline",
        [
            {
                "second": 0,
                "ok": 2,
                "failed": 0,
                "client_errors": 0,
                "releases": {"A": 2},
                "p99_ms": 20.0,
            },
            {"second": 1, "ok": 0, "failed": 2, "client_errors": 0, "releases": {}, "p99_ms": None},
            {
                "second": 2,
                "ok": 1,
                "failed": 0,
                "client_errors": 1,
                "releases": {"B": 1},
                "p99_ms": 30.0,
            },
        ],
    ),
]


@pytest.mark.parametrize(("key", "expected"), SUMMARY_CASES, ids=[key for key, _ in SUMMARY_CASES])
def test_summarize(key, expected):
    assert SUMMARY[key] == expected


def test_summarize_of_nothing():
    summary = load.summarize([], elapsed=0.0)
    assert (summary["total"], summary["latency_ms"], summary["requests_per_s"]) == (
        0,
        {"p50": None, "p99": None, "max": None},
        None,
    )


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], {}),
        ([Record(0.1, U1, "connect_refused", None, 0.0, None)], {}),
        (
            [Record(t, U1, "ok", 200, 0.0, r) for t, r in [(0.0, "A"), (0.1, "A"), (0.2, "B")]],
            {U1: [(0.0, "A"), (0.2, "B")]},
        ),
        (
            # completion order differs from start order; errors between answers are skipped
            [
                Record(0.3, U1, "ok", 200, 0.0, "B"),
                Record(0.1, U1, "ok", 200, 0.0, "A"),
                Record(0.2, U1, "connect_reset", None, 0.0, None),
                Record(0.4, U1, "ok", 200, 0.0, "A"),
            ],
            {U1: [(0.1, "A"), (0.3, "B"), (0.4, "A")]},
        ),
        (
            [
                Record(0.1, U1, "ok", 200, 0.0, "A"),
                Record(0.2, U2, "ok", 200, 0.0, "B"),
                Record(0.3, U1, "ok", 200, 0.0, "B"),
                Record(0.4, U2, "ok", 200, 0.0, "B"),
            ],
            {U1: [(0.1, "A"), (0.3, "B")], U2: [(0.2, "B")]},
        ),
    ],
    ids=["empty", "no-releases", "one-flip", "start-order", "per-url"],
)
def test_release_changes(records, expected):
    assert load.release_changes(records) == expected


def test_release_changes_per_client_do_not_read_overlap_as_a_flap():
    # Client 0's request started first but reached the server after the flip; client
    # 1's started 2 ms later and got there before it. Per URL that reads A, B, A, B.
    records = [
        Record(0.100, U1, "ok", 200, 0.030, "A", 0),
        Record(0.110, U1, "ok", 200, 0.010, "A", 1),
        Record(0.200, U1, "ok", 200, 0.030, "B", 0),
        Record(0.202, U1, "ok", 200, 0.010, "A", 1),
        Record(0.300, U1, "ok", 200, 0.010, "B", 0),
        Record(0.310, U1, "ok", 200, 0.010, "B", 1),
    ]
    assert [r for _, r in load.release_changes(records)[U1]] == ["A", "B", "A", "B"]
    assert load.release_changes(records, per_client=True) == {
        (U1, 0): [(0.100, "A"), (0.200, "B")],
        (U1, 1): [(0.110, "A"), (0.310, "B")],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"urls": []}, "at least one URL"),
        ({"urls": ["ftp://h/x"]}, "not an http://"),
        ({"mode": "pipelined"}, "mode 'pipelined'"),
        ({"clients": 0}, "clients must be"),
        ({"duration": 3601}, "duration must be"),
        ({"duration": 0}, "duration must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"rate": -1}, "rate must be"),
    ],
    ids=["no-urls", "not-http", "mode", "clients", "too-long", "zero-duration", "timeout", "rate"],
)
def test_constructor_rejects(kwargs, message):
    args = {"urls": [U1], "clients": 1, "mode": "new", **kwargs}
    with pytest.raises(ValueError, match=message):
        load.LoadGenerator(args.pop("urls"), args.pop("clients"), args.pop("mode"), **args)


@pytest.mark.parametrize(
    ("mode", "rate", "expected"),
    [("new", None, 200.0), ("keepalive", None, None), ("new", 0, None), ("keepalive", 50, 50)],
    ids=["new-default", "keepalive-default", "no-cap", "explicit"],
)
def test_rate_defaults(mode, rate, expected):
    assert load.LoadGenerator([U1], 1, mode, rate).rate == expected


# --- real runs against local servers ------------------------------------------------


@MODES
def test_run_records_every_request(app, mode):
    server = app("A")

    generator = run([server.url], mode)

    records = generator.records
    summary = generator.summary()
    assert records and all(r.kind == "ok" and r.status == 200 and r.release == "A" for r in records)
    assert (summary["total"], summary["ok"], summary["failed"]) == (len(records), len(records), 0)
    assert server.requests == len(records)
    assert summary["releases"]["A"]["count"] == len(records)
    assert summary["latency_ms"]["max"] is not None
    assert min(r.t for r in records) < 0.1
    # Each record names its client, and each client's requests are sequential.
    assert {r.client for r in records} == {0, 1}
    for client in (0, 1):
        mine = sorted((r for r in records if r.client == client), key=lambda r: r.t)
        assert all(a.t + a.latency <= b.t + 1e-9 for a, b in itertools.pairwise(mine))


@MODES
@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        ("500", "http_500"),
        ("not-json", "bad_body"),
        ("reset", "connect_reset"),
        ("slow", "timeout"),
    ],
    ids=["http-500", "bad-body", "reset", "timeout"],
)
def test_run_classifies_failures_and_never_retries(app, mode, behaviour, kind):
    server = app(behaviour)

    generator = run([server.url], mode, duration=0.2, clients=1, rate=20, timeout=0.15)

    records = generator.records
    assert records and {r.kind for r in records} == {kind}
    # one server hit per recorded request: a failure is counted once, never retried
    assert server.requests == len(records)
    assert generator.summary()["failed_by_kind"] == {kind: len(records)}


@MODES
def test_run_counts_refused_connections(closed_url, mode):
    generator = run([closed_url], mode, duration=0.2, rate=20)

    summary = generator.summary()
    assert summary["total"] > 0
    assert summary["failed_by_kind"] == {"connect_refused": summary["total"]}


@MODES
def test_run_reports_port_exhaustion_apart(app, mode, monkeypatch):
    server = app("A")

    def connect(self):
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
    generator = run([server.url], mode, duration=0.2, rate=20)

    summary = generator.summary()
    assert summary["total"] > 0
    assert (summary["ok"], summary["failed"], summary["client_errors"]) == (0, 0, summary["total"])
    assert summary["client_errors_by_kind"] == {"client_port_exhausted": summary["total"]}
    assert server.requests == 0


@pytest.mark.parametrize(
    ("mode", "rate", "low", "high"),
    [("new", 50, 45, 51), ("keepalive", 50, 45, 51)],
    ids=["new", "keepalive"],
)
def test_rate_cap_bounds_the_total(app, mode, rate, low, high):
    server = app("A")

    generator = run([server.url], mode, duration=1.0, clients=4, rate=rate)

    assert low <= len(generator.records) <= high


@pytest.mark.parametrize(
    ("mode", "connections"),
    [("new", lambda requests, clients: requests), ("keepalive", lambda requests, clients: clients)],
    ids=["new-one-per-request", "keepalive-one-per-client"],
)
def test_connections_per_mode(app, mode, connections):
    server = app("A")

    generator = run([server.url], mode, clients=3)

    expected = connections(server.requests, 3)
    assert len(server.ports) == expected
    assert generator.summary()["connections"] == expected


def test_clients_spread_round_robin_over_urls(app):
    first, second = app("A"), app("B")

    generator = run([first.url, second.url], "keepalive", clients=4)

    assert (len(first.ports), len(second.ports)) == (2, 2)
    assert {(r.url, r.release) for r in generator.records} == {(first.url, "A"), (second.url, "B")}


@MODES
def test_release_changes_follow_the_flips(app, mode):
    servers = [app("A"), app("A")]

    with load.LoadGenerator([s.url for s in servers], 4, mode, rate=200, duration=5) as generator:
        for release in ("B", "A", "C"):
            time.sleep(0.15)
            for server in servers:
                server.behaviour = release
        time.sleep(0.15)

    changes = load.release_changes(generator.records, per_client=True)
    # Four clients over two URLs: two clients each, and each saw every flip once.
    assert sorted(changes) == sorted((s.url, c) for c in range(4) for s in [servers[c % 2]])
    for seen in changes.values():
        assert [release for _, release in seen] == ["A", "B", "A", "C"]
        times = [t for t, _ in seen]
        assert times == sorted(times)
    assert generator.summary()["failed"] == 0


def test_stop_ends_the_run_early(app):
    server = app("A")
    generator = load.LoadGenerator([server.url], 2, "keepalive", rate=100, duration=30)

    generator.start()
    time.sleep(0.2)
    generator.stop()

    assert generator.join(2)
    assert generator.elapsed < 1
    count = len(generator.records)
    time.sleep(0.1)
    assert len(generator.records) == count > 0


def test_start_twice_is_refused(app):
    with (
        load.LoadGenerator([app().url], 1, "new", duration=1) as generator,
        pytest.raises(RuntimeError, match="already started"),
    ):
        generator.start()


# --- CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "code"), [("A", 0), ("500", 1)], ids=["all-ok", "failures"])
def test_cli_prints_and_writes_json(app, tmp_path, capsys, behaviour, code):
    server = app(behaviour)
    out = tmp_path / "run.json"

    assert (
        load.main([server.url, "--clients", "2", "--duration", "0.3", "--json", str(out)]) == code
    )

    summary = json.loads(out.read_text())
    assert summary["mode"] == "new" and summary["rate"] == 200.0
    assert summary["total"] == server.requests > 0
    assert summary["timeline"][0]["second"] == 0
    assert "flipback load: mode new, 2 clients" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--clients", "2", "--duration", "1"],
        ["URL", "--duration", "1"],
        ["URL", "--clients", "2"],
        ["URL", "--clients", "0", "--duration", "1"],
        ["URL", "--clients", "2", "--duration", "3601"],
        ["URL", "--clients", "2", "--duration", "1", "--mode", "pipelined"],
        ["ftp://h/x", "--clients", "2", "--duration", "1"],
    ],
    ids=["no-url", "no-clients", "no-duration", "zero-clients", "too-long", "mode", "not-http"],
)
def test_cli_usage_errors(argv):
    argv = [U1 if arg == "URL" else arg for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        load.main(argv)
    assert exit_info.value.code == 2


def test_cli_refuses_a_stale_stop_file(tmp_path):
    stop = tmp_path / "stop"
    stop.touch()
    with pytest.raises(SystemExit) as exit_info:
        load.main([U1, "--clients", "1", "--duration", "1", "--stop-file", str(stop)])
    assert exit_info.value.code == 2


def _when_handled(action, before):
    """Run action in a thread once main() has replaced the SIGTERM handler `before`."""

    def wait_then_act():
        deadline = time.monotonic() + 5
        while signal.getsignal(signal.SIGTERM) is before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("trigger", ["stop-file", "sigterm"])
def test_cli_stops_early(app, tmp_path, capsys, trigger):
    server = app("A")
    stop = tmp_path / "stop"
    actions = {"stop-file": stop.touch, "sigterm": lambda: signal.raise_signal(signal.SIGTERM)}
    before = signal.getsignal(signal.SIGTERM)
    thread = _when_handled(actions[trigger], before)

    started = time.monotonic()
    code = load.main([server.url, "--clients", "1", "--duration", "30", "--stop-file", str(stop)])

    thread.join()
    assert code == 0
    assert time.monotonic() - started < 3
    assert server.requests > 0
    assert signal.getsignal(signal.SIGTERM) is before
