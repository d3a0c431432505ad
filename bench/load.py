"""Load generator: steady HTTP traffic against public endpoints while releases flip.

Every request is recorded (start time, URL, outcome, latency, the `release` its JSON
body names), so a run answers two questions about a deploy or a rollback: did any
request fail, and did the answering release change exactly once per flip, with no
back and forth.

Two modes: `new` opens a TCP connection per request and closes it after (what a
fleet of short-lived clients does; every request goes through connect and accept),
`keepalive` reuses one HTTP/1.1 connection per client. Clients never retry: a failed
request is recorded once, and in `keepalive` the next request opens a new connection.

A closed connection leaves the client's end in TIME_WAIT for 60 s, so `new` at about
1,000 requests/s runs out of ephemeral ports within 30 s (DESIGN.md, "Measured
facts"). Its rate is therefore capped at 200 requests/s in total unless told
otherwise, and "cannot assign requested address" (EADDRNOTAVAIL) is reported apart,
as a client error, never as a failure of the service.

Python API (also for testinfra tests)::

    with LoadGenerator(["http://10.213.1.11:8000/health"], clients=8, mode="new") as load:
        ...  # deploy, roll back
    summary = load.summary()
    assert summary["failed"] == 0
    changes = release_changes(load.records)

CLI: `python bench/load.py URL [URL ...] --clients C --duration S [--mode new|keepalive]
[--rate R] [--timeout T] [--json FILE] [--stop-file PATH]`; exit status 0 when no
request failed, 1 when some did, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import math
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

MODES = ("new", "keepalive")
# Sustainable for minutes with a new connection per request (see the module docstring).
DEFAULT_NEW_RATE = 200.0
MAX_DURATION = 3600.0
# A bound for API runs, which the caller normally ends with stop() or the context manager.
DEFAULT_API_DURATION = 600.0
DEFAULT_TIMEOUT = 5.0
OK = "ok"
PORT_EXHAUSTED = "client_port_exhausted"
# Errors that say something about the load generator's machine, not about the service.
CLIENT_ERROR_KINDS = frozenset({PORT_EXHAUSTED})
HEADERS = {"User-Agent": "flipback-load/1", "Accept": "application/json"}
# How often the CLI looks for the stop file.
POLL_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint, split once so that each request costs no URL parsing."""

    url: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r} is not an http://host[:port]/path URL")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.hostname, parts.port or 80, path)


@dataclass(frozen=True, slots=True)
class Record:
    """One request: `kind` is "ok" or an error kind (see classify())."""

    t: float  # when the request started, seconds since the run started (monotonic)
    url: str
    kind: str
    status: int | None  # None when no complete response arrived
    latency: float  # seconds, connect (mode new) to the last byte of the body
    release: str | None  # the JSON body's `release` field, when present
    client: int = 0  # which client sent it; a client's requests are sequential

    @property
    def ok(self) -> bool:
        return self.kind == OK

    @property
    def client_error(self) -> bool:
        return self.kind in CLIENT_ERROR_KINDS


def classify(exc: BaseException) -> str:
    """The error kind of an exception raised while connecting, sending or reading."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return PORT_EXHAUSTED
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    # RemoteDisconnected (closed before a status line) is a ConnectionResetError;
    # IncompleteRead is a connection cut in the middle of the body.
    if isinstance(
        exc,
        ConnectionResetError
        | ConnectionAbortedError
        | BrokenPipeError
        | http.client.IncompleteRead,
    ):
        return "connect_reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"other:{type(exc).__name__}"


def _parse_body(body: bytes) -> tuple[bool, str | None]:
    """Whether the body is a JSON object, and its `release` field when present."""
    try:
        document = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return False, None
    if not isinstance(document, dict):
        return False, None
    release = document.get("release")
    return True, None if release is None else str(release)


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection was closed by the server.

    Nothing is due on an idle HTTP/1.1 connection, so anything readable (EOF, a
    reset, stray bytes) means it is unusable. Reconnecting then is no retry: no
    request was sent on it. poll() rather than select(): no limit on fd numbers.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Pacer:
    """Shared interval scheduler: at most `rate` send times per second across all clients.

    Send times are spaced 1/rate apart and never lie in the past, so a spell in which
    the clients fell behind (slow answers) earns no burst afterwards.
    """

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """The monotonic time at which the caller may send its next request."""
        now = time.monotonic()
        if not self._interval:
            return now
        with self._lock:
            slot = max(self._next, now)
            self._next = slot + self._interval
        return slot


def nearest_rank(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (bench.py's percentile too).
    statistics.quantiles() interpolates, which would change the published figures."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def release_changes(
    records: Iterable[Record], *, per_client: bool = False
) -> dict[Any, list[tuple[float, str]]]:
    """Per URL, the (start time, release) of each request whose release differs from
    the previous answer's, in start order: the first entry is the initial release.

    A clean deploy then rollback on one URL reads [(0.0, A), (t1, B), (t2, A)]; a
    flapping switch shows up as more entries than flips.

    Across clients, start order is not the order in which the server picked the
    release: a request that started first can reach nginx after the flip, and one that
    started a moment later before it, which reads as a flap that did not happen. A
    client's own requests are sequential, so with `per_client` the changes are worked
    out per (URL, client), where every back and forth is real.
    """
    changes: dict[Any, list[tuple[float, str]]] = {}
    for record in sorted(records, key=lambda r: r.t):
        if record.release is None:
            continue
        seen = changes.setdefault((record.url, record.client) if per_client else record.url, [])
        if not seen or seen[-1][1] != record.release:
            seen.append((record.t, record.release))
    return changes


def timeline(records: Iterable[Record], elapsed: float) -> list[dict[str, Any]]:
    """Per-second buckets by start time: ok, failed, client errors, p99 latency, releases."""
    count = max(1, math.ceil(elapsed))
    buckets: list[dict[str, Any]] = [
        {"second": i, "ok": 0, "failed": 0, "client_errors": 0, "releases": {}}
        for i in range(count)
    ]
    latencies: list[list[float]] = [[] for _ in range(count)]
    for record in records:
        index = min(count - 1, max(0, int(record.t)))
        bucket = buckets[index]
        if record.ok:
            bucket["ok"] += 1
            latencies[index].append(record.latency)
        elif record.client_error:
            bucket["client_errors"] += 1
        else:
            bucket["failed"] += 1
        if record.release is not None:
            bucket["releases"][record.release] = bucket["releases"].get(record.release, 0) + 1
    for bucket, bucket_latencies in zip(buckets, latencies, strict=True):
        bucket["p99_ms"] = _ms(nearest_rank(sorted(bucket_latencies), 0.99))
    return buckets


def summarize(records: Sequence[Record], elapsed: float) -> dict[str, Any]:
    """Counts, latency of successful requests, releases seen, and the per-second timeline.

    Client errors (the load generator's own, such as running out of ports) are counted
    apart and are neither ok nor failed.
    """
    failed = Counter(r.kind for r in records if not r.ok and not r.client_error)
    client = Counter(r.kind for r in records if r.client_error)
    latencies = sorted(r.latency for r in records if r.ok)
    releases: dict[str, dict[str, Any]] = {}
    per_url: dict[str, dict[str, int]] = {}
    for record in sorted(records, key=lambda r: r.t):
        url = per_url.setdefault(record.url, {"total": 0, "ok": 0, "failed": 0, "client_errors": 0})
        url["total"] += 1
        url["ok" if record.ok else "client_errors" if record.client_error else "failed"] += 1
        if record.release is not None:
            seen = releases.setdefault(record.release, {"count": 0, "first": round(record.t, 3)})
            seen["count"] += 1
            seen["last"] = round(record.t, 3)
    return {
        "total": len(records),
        "ok": len(latencies),
        "failed": sum(failed.values()),
        "failed_by_kind": dict(failed.most_common()),
        "client_errors": sum(client.values()),
        "client_errors_by_kind": dict(client.most_common()),
        "latency_ms": {
            "p50": _ms(nearest_rank(latencies, 0.50)),
            "p99": _ms(nearest_rank(latencies, 0.99)),
            "max": _ms(latencies[-1] if latencies else None),
        },
        "releases": releases,
        "per_url": per_url,
        "elapsed": round(elapsed, 3),
        "requests_per_s": round(len(records) / elapsed, 1) if elapsed > 0 else None,
        "timeline": timeline(records, elapsed),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a block of text for a terminal."""
    rate = summary.get("rate")
    latency = summary["latency_ms"]
    lines = [
        f"flipback load: mode {summary.get('mode')}, {summary.get('clients')} clients, "
        f"rate cap {'none' if rate is None else f'{rate:g}/s'}, {summary['elapsed']:.1f} s",
        f"  requests  {summary['total']} total, {summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['requests_per_s']}/s, {summary.get('connections')} connections",
        "  failed    "
        + (", ".join(f"{k} {n}" for k, n in summary["failed_by_kind"].items()) or "none"),
        "  client    "
        + (", ".join(f"{k} {n}" for k, n in summary["client_errors_by_kind"].items()) or "none")
        + " (the load generator's own errors, not the service's)",
        "  latency   "
        + ", ".join(
            f"{name} {'-' if value is None else f'{value:.1f} ms'}"
            for name, value in latency.items()
        )
        + " (ok requests)",
    ]
    for i, (release, seen) in enumerate(summary["releases"].items()):
        lines.append(
            f"  {'releases' if i == 0 else '':<9} {release}: {seen['count']} requests, "
            f"{seen['first']:.3f} s .. {seen['last']:.3f} s"
        )
    for url, counts in summary["per_url"].items():
        lines.append(
            f"  {url}: {counts['total']} total, {counts['ok']} ok, {counts['failed']} failed"
            f", {counts['client_errors']} client errors"
        )
    return "\n".join(lines)


class LoadGenerator:
    """`clients` threads sending GETs to `urls` (client i gets urls[i % len(urls)]).

    `rate` caps the total requests/s across all clients: None means the mode's
    default (200 for `new`, no cap for `keepalive`), 0 means no cap. `timeout` bounds
    connect and each read of every request. The run ends after `duration` seconds or
    at stop() (or when `stop_event` is set), whichever comes first; a request in
    flight then finishes or times out, and is recorded.
    """

    def __init__(
        self,
        urls: Sequence[str],
        clients: int,
        mode: str = "new",
        rate: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        duration: float = DEFAULT_API_DURATION,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if clients < 1:
            raise ValueError(f"clients must be at least 1, got {clients}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION:g}] s, got {duration}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if rate is not None and rate < 0:
            raise ValueError(f"rate must be 0 (no cap) or positive, got {rate}")
        self.targets = [Target.parse(url) for url in urls]
        self.clients = clients
        self.mode = mode
        self.rate = (DEFAULT_NEW_RATE if mode == "new" else None) if rate is None else rate or None
        self.timeout = timeout
        self.duration = duration
        self.stop_event = threading.Event()
        self.started_at: str | None = None
        self._pacer = Pacer(self.rate)
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._connections = 0
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._deadline = 0.0
        self._ended: float | None = None

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("this load generator was already started")
        self.started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._t0 = time.monotonic()
        self._deadline = self._t0 + self.duration
        self._running = self.clients
        self._threads = [
            threading.Thread(target=self._client, args=(i,), name=f"load-client-{i}", daemon=True)
            for i in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every client to finish; True when they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self.join()

    @property
    def records(self) -> list[Record]:
        """A snapshot of the requests recorded so far, in completion order."""
        with self._lock:
            return list(self._records)

    def now(self) -> float:
        """Seconds since the run started: the time base of every record's `t`."""
        return time.monotonic() - self._t0

    @property
    def elapsed(self) -> float:
        """Seconds from start to the end of the run (the duration, unless stopped early or a
        last request ran past it), or to now while it runs."""
        end = self._ended if self._ended is not None else time.monotonic()
        return end - self._t0 if self._threads else 0.0

    def summary(self) -> dict[str, Any]:
        with self._lock:
            connections = self._connections
        return {
            "mode": self.mode,
            "clients": self.clients,
            "rate": self.rate,
            "timeout": self.timeout,
            "urls": [target.url for target in self.targets],
            "started_at": self.started_at,
            "connections": connections,
            **summarize(self.records, self.elapsed),
        }

    def _client(self, index: int) -> None:
        target = self.targets[index % len(self.targets)]
        conn: http.client.HTTPConnection | None = None
        try:
            while True:
                slot = self._pacer.reserve()
                if slot >= self._deadline or self.stop_event.wait(slot - time.monotonic()):
                    break
                if conn is not None and conn.sock is not None and _dropped(conn.sock):
                    conn.close()
                if conn is None:
                    conn = http.client.HTTPConnection(
                        target.host, target.port, timeout=self.timeout
                    )
                record = self._request(conn, target, index)
                with self._lock:
                    self._records.append(record)
                # After an error the connection's state is unknown: never reuse it.
                if self.mode == "new" or record.status is None:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._running -= 1
                if not self._running:
                    # Clients leave as soon as their next send time falls after the
                    # deadline; the run still covered the whole duration.
                    now = time.monotonic()
                    self._ended = now if self.stop_event.is_set() else max(now, self._deadline)

    def _request(self, conn: http.client.HTTPConnection, target: Target, client: int) -> Record:
        started = time.monotonic()
        try:
            if conn.sock is None:  # new mode, first request, or after an error / Connection: close
                conn.connect()
                with self._lock:
                    self._connections += 1
            conn.request("GET", target.path, headers=HEADERS)
            response = conn.getresponse()
            body = response.read()
        except Exception as exc:
            kind = classify(exc)
            latency = time.monotonic() - started
            return Record(started - self._t0, target.url, kind, None, latency, None, client)
        latency = time.monotonic() - started
        is_json, release = _parse_body(body)
        if not 200 <= response.status < 300:
            kind = f"http_{response.status}"
        elif not is_json:
            kind = "bad_body"
        else:
            kind = OK
        return Record(
            started - self._t0, target.url, kind, response.status, latency, release, client
        )


def _positive_duration(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DURATION:g}] seconds")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (bench.py uses it too)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="load.py",
        description="Steady HTTP load against public endpoints; every request recorded.",
    )
    parser.add_argument(
        "urls",
        nargs="+",
        metavar="URL",
        help="http://host:port/path; several spread round-robin over clients",
    )
    parser.add_argument(
        "--clients", type=positive_int, required=True, help="concurrent clients (threads)"
    )
    parser.add_argument(
        "--duration",
        type=_positive_duration,
        required=True,
        help=f"seconds, at most {MAX_DURATION:g}",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="new",
        help="new: a TCP connection per request (default); keepalive: one per client",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help=f"total requests/s cap, 0 for none (default: {DEFAULT_NEW_RATE:g} for new, none for"
        " keepalive)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds, for connect and each read (default %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the summary with per-second buckets as JSON",
    )
    parser.add_argument(
        "--stop-file", type=Path, metavar="PATH", help="stop early when this file appears"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.stop_file is not None and args.stop_file.exists():
        parser.error(f"--stop-file {args.stop_file} exists already; remove it first")
    try:
        load = LoadGenerator(
            args.urls, args.clients, args.mode, args.rate, args.timeout, duration=args.duration
        )
    except ValueError as exc:
        parser.error(str(exc))

    def stop_on_signal(signum: int, frame: FrameType | None) -> None:
        load.stop()

    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        load.start()
        while not load.join(POLL_INTERVAL):
            if args.stop_file is not None and args.stop_file.exists():
                load.stop()
    finally:
        load.stop()
        load.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = load.summary()
    print(format_summary(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
