"""Three services as their teams ship them, on two machines: converge deployed v1.

One story runs under load (clients of both modes on every public endpoint, shop asked
with `Host: shop.test`, and a WebSocket client to lib held through the v1 -> v2 switch):
deploy v2, rollback, a no-op redeploy of v1, a deploy of shop v3 whose migration raises,
a roll forward to v2. The tests read what each step left; exec.yml and logs.yml run last.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

load = lib.bench_load()

HOSTS = ["mapps-1", "mapps-2"]
SERVICES = ["shop", "metrics", "lib"]
PORTS = {"shop": 8000, "metrics": 8001, "lib": 8002}
SHOP_HOST = "shop.test"
RATE_PER_URL = 10
REPO = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "apps-repo"


def _machine(name: str):
    return testinfra.get_host(
        f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def _addresses() -> dict[str, str]:
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
    return {i["instance"]: i["address"] for i in yaml.safe_load(config.read_text())}


def _currents(machine) -> dict[str, str]:
    out = machine.run(
        "for s in " + " ".join(SERVICES) + "; do echo $s $(readlink /srv/$s/current); done"
    ).stdout
    return {
        name: os.path.basename(target)
        for name, target in (line.split() for line in out.splitlines() if len(line.split()) == 2)
    }


def _fleet_currents() -> dict[str, dict[str, str]]:
    return {name: _currents(_machine(name)) for name in HOSTS}


def _processes(machine) -> list[str]:
    """The process units (`<service>.<process>@<release>.service`) systemd runs."""
    out = machine.run(
        "systemctl list-units --plain --no-legend --state=active,activating "
        + " ".join(f"'{s}.*@*.service'" for s in SERVICES)
    ).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def _fleet_processes() -> dict[str, list[str]]:
    return {name: _processes(_machine(name)) for name in HOSTS}


# lib again, with a process that exits as soon as it starts: the rollout must stop
# on the first host before its switch, everything left as it was.
GIVES_UP = "python -c 'import sys; print(\"ticker gives up\"); sys.exit(3)'"
BROKEN_LIB = {
    "flipback_services": [
        {
            "name": "lib",
            "source": "{{ flipback_test_repo }}",
            "subdir": "services/lib",
            "ref": "v2",
            "app": "libsvc.main:app",
            "port": 8002,
            "health": {"path": "/health", "timeout": 30},
            "processes": {"ticker": GIVES_UP},
        }
    ]
}


def _history(machine, service: str) -> list[dict]:
    text = machine.file(f"/srv/{service}/history.jsonl").content_string
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _manifest(machine, service: str, release: str) -> dict:
    return json.loads(
        machine.file(f"/srv/{service}/releases/{release}/manifest.json").content_string
    )


# --- load: every endpoint, the release read from X-Flipback-Release ------------------


class AppLoad(load.LoadGenerator):
    """bench/load.py's generator with a Host header per URL (shop answers only to
    shop.test) and the answering release taken from the X-Flipback-Release header every
    flipback release adds (prometheus_client answers text, not JSON)."""

    def __init__(self, targets: list[tuple[str, str | None]], mode: str) -> None:
        urls = [url for url, _ in targets]
        super().__init__(
            urls, len(urls), mode, rate=RATE_PER_URL * len(urls), timeout=5, duration=900
        )
        self.host_header = dict(targets)

    def _request(self, conn, target, client):
        started = time.monotonic()
        headers = {"User-Agent": "flipback-apps/1"}
        if self.host_header[target.url]:
            headers["Host"] = self.host_header[target.url]
        try:
            if conn.sock is None:
                conn.connect()
                with self._lock:
                    self._connections += 1
            conn.request("GET", target.path, headers=headers)
            response = conn.getresponse()
            response.read()
        except Exception as exc:
            return load.Record(
                started - self._t0,
                target.url,
                load.classify(exc),
                None,
                time.monotonic() - started,
                None,
                client,
            )
        kind = load.OK if 200 <= response.status < 300 else f"http_{response.status}"
        return load.Record(
            started - self._t0,
            target.url,
            kind,
            response.status,
            time.monotonic() - started,
            response.getheader("X-Flipback-Release"),
            client,
        )


# --- a WebSocket client, stdlib only ----------------------------------------------

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    """A minimal RFC 6455 client: text frames, masked as a client must; answers pings."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 5) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ConnectionError(f"handshake refused: {lines[0]!r}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != expected:
            raise ConnectionError("bad Sec-WebSocket-Accept")

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
        return data

    def _frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._frame(0x1, text.encode())

    def recv(self) -> str:
        while True:
            first, second = self._exact(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._exact(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._exact(8))[0]
            mask = self._exact(4) if second & 0x80 else b""
            payload = self._exact(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._frame(0xA, payload)
            elif opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()}")
            elif opcode in (0x1, 0x2):
                return payload.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._frame(0x8, struct.pack("!H", 1000))
        self.sock.close()


class Echoer(threading.Thread):
    """Holds one WebSocket to lib and sends an echo every `interval` seconds, recording
    (time, reply) or (time, error) on the load's clock, until stopped or an error."""

    def __init__(self, address: str, clock, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.clock = clock
        self.interval = interval
        self.ws = WebSocket(address, PORTS["lib"], "/ws")
        self.replies: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.stopped.wait(self.interval):
            count += 1
            try:
                self.ws.send(f"ping-{count}")
                reply = self.ws.recv()
            except Exception as exc:
                self.errors.append((self.clock.now(), repr(exc)))
                return
            if not reply.endswith(f" ping-{count}"):
                self.errors.append((self.clock.now(), f"unexpected reply {reply!r}"))
                return
            self.replies.append((self.clock.now(), reply))

    def finish(self) -> None:
        self.stopped.set()
        self.join(timeout=15)
        self.ws.close()


def _ws_once(address: str) -> str:
    ws = WebSocket(address, PORTS["lib"], "/ws")
    try:
        ws.send("hello")
        return ws.recv()
    finally:
        ws.close()


# --- the story -------------------------------------------------------------------

PLAN = [
    ("deploy v2", ("deploy.yml", "-e", "ref=v2"), True),
    ("rollback", ("rollback.yml",), True),
    ("redeploy v1", ("deploy.yml", "-e", "ref=v1"), True),
    ("deploy shop v3", ("deploy.yml", "-e", "service=shop", "-e", "ref=v3"), False),
    ("roll forward to v2", ("deploy.yml", "-e", "ref=v2"), True),
    ("lib with a process that exits", ("deploy.yml", "-e", "service=lib", "-e", "@broken"), False),
    ("lib whose app is not there", ("deploy.yml", "-e", "service=lib", "-e", "@no-app"), False),
]


@pytest.fixture(scope="session")
def story():
    addresses = _addresses()
    targets: list[tuple[str, str | None]] = []
    for name in HOSTS:
        address = addresses[name]
        targets += [
            (f"http://{address}:{PORTS['shop']}/healthz/", SHOP_HOST),
            (f"http://{address}:{PORTS['metrics']}/metrics", None),
            (f"http://{address}:{PORTS['lib']}/", None),
        ]
    # The view that reads the database, where the migrations ran (SQLite is per host).
    targets.append((f"http://{addresses['mapps-1']}:{PORTS['shop']}/items/", SHOP_HOST))
    generators = {mode: AppLoad(targets, mode) for mode in ("new", "keepalive")}
    clock = generators["new"]
    states = {"converged": _fleet_currents()}
    processes = {"converged": _fleet_processes()}
    broken = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "broken-lib.yml"
    broken.write_text(yaml.safe_dump(BROKEN_LIB))
    no_app = broken.with_name("no-app-lib.yml")
    (lib_def,) = BROKEN_LIB["flipback_services"]
    lib_def = {k: v for k, v in lib_def.items() if k != "processes"}
    no_app.write_text(
        yaml.safe_dump({"flipback_services": [{**lib_def, "app": "libsvc.nosuchmodule:app"}]})
    )
    steps = {}
    ws = {}
    for generator in generators.values():
        generator.start()
    try:
        time.sleep(2)
        echoers = {name: Echoer(addresses[name], clock) for name in HOSTS}
        for echoer in echoers.values():
            echoer.start()
        time.sleep(1)
        for name, argv, should_pass in PLAN:
            started = clock.now()
            files = {"@broken": f"@{broken}", "@no-app": f"@{no_app}"}
            argv = tuple(files.get(a, a) for a in argv)
            run = lib.run_fleet_playbook(*argv)
            steps[name] = {"start": started, "end": clock.now(), "run": run, "ok": should_pass}
            states[name] = _fleet_currents()
            processes[name] = _fleet_processes()
            if name == "deploy v2":
                # The held connections still echo after the switch...
                time.sleep(2)
                for echoer in echoers.values():
                    echoer.finish()
                ws = {
                    host: {
                        "replies": echoer.replies,
                        "errors": echoer.errors,
                        "switch_end": steps[name]["end"],
                        # ...and a new one reaches the new release.
                        "fresh": _ws_once(addresses[host]),
                    }
                    for host, echoer in echoers.items()
                }
            time.sleep(2)
    finally:
        for generator in generators.values():
            generator.stop()
        for generator in generators.values():
            generator.join(timeout=30)
    return {
        "addresses": addresses,
        "steps": steps,
        "states": states,
        "processes": processes,
        "ws": ws,
        "records": {mode: g.records for mode, g in generators.items()},
        "summary": {mode: g.summary() for mode, g in generators.items()},
    }


def _recap(run) -> dict[str, dict[str, int]]:
    """host -> counters of the PLAY RECAP."""
    found = {}
    for line in run.stdout.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"(\S+)\s+:\s+(.*)", line.strip())
        if match:
            found[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return found


def test_every_step_did_what_it_should(story):
    for name, step in story["steps"].items():
        out = lib.output(step["run"])[-4000:]
        assert (step["run"].returncode == 0) == step["ok"], (name, out)


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_zero_failed_requests(story, mode):
    summary = story["summary"][mode]
    keys = ("total", "ok", "failed", "client_errors", "latency_ms", "requests_per_s")
    steps = [(name, round(s["end"] - s["start"], 1)) for name, s in story["steps"].items()]
    print(f"\napps {mode}: { ({k: summary[k] for k in keys}) } steps (s): {steps}")
    assert summary["total"] > 1000
    assert summary["failed"] == 0, summary["failed_by_kind"]
    assert summary["client_errors"] == 0, summary["client_errors_by_kind"]
    # Every endpoint was asked all along.
    assert all(c["ok"] > 50 for c in summary["per_url"].values()), summary["per_url"]


def test_each_step_moved_the_releases_it_should(story):
    states = story["states"]
    for name in HOSTS:
        v1, v2 = states["converged"][name], states["deploy v2"][name]
        assert set(v1) == set(SERVICES), v1
        assert all(v1[s] != v2[s] for s in SERVICES), (v1, v2)
        assert states["rollback"][name] == v1
        assert states["redeploy v1"][name] == v1
        assert states["deploy shop v3"][name] == v1
        assert states["roll forward to v2"][name] == v2
        assert states["lib with a process that exits"][name] == v2
        assert states["lib whose app is not there"][name] == v2


@pytest.mark.parametrize("mode", ["new", "keepalive"])
def test_answering_releases_change_only_at_the_flips(story, mode):
    changes = load.release_changes(story["records"][mode], per_client=True)
    steps = story["steps"]
    flips = [steps["deploy v2"], steps["rollback"], steps["roll forward to v2"]]
    assert len(changes) == 7
    for (url, client), seen in sorted(changes.items()):
        releases = [release for _, release in seen]
        assert len(releases) == 4, (url, client, seen)
        assert releases[0] == releases[2] and releases[1] == releases[3], (url, client, seen)
        for (when, _), step in zip(seen[1:], flips, strict=True):
            assert step["start"] <= when <= step["end"], (url, client, when)


def test_a_websocket_stays_connected_through_the_switch(story):
    for name in HOSTS:
        seen = story["ws"][name]
        v1 = story["states"]["converged"][name]["lib"]
        v2 = story["states"]["deploy v2"][name]["lib"]
        assert not seen["errors"], seen["errors"]
        after = [reply for t, reply in seen["replies"] if t > seen["switch_end"]]
        print(f"\napps websocket {name}: {len(seen['replies'])} echoes, {len(after)} after")
        assert len(seen["replies"]) > 20 and after, seen["replies"][-3:]
        # One connection, one instance: v1 answered it before, during and after the switch.
        assert {reply.rsplit(" ", 1)[0] for _, reply in seen["replies"]} == {f"v1 {v1}"}
        # Intervals between echoes show no stall longer than a few seconds.
        times = [t for t, _ in seen["replies"]]
        assert max(b - a for a, b in itertools.pairwise(times)) < 3
        assert seen["fresh"] == f"v2 {v2} hello"


def test_shop_migrations_ran_once_per_rollout_on_the_first_host(host, story):
    name = host.backend.get_hostname()
    v2 = story["states"]["deploy v2"][name]["shop"]
    v1 = story["states"]["converged"][name]["shop"]
    events = [
        (e["release"], e["run"])
        for e in _history(host, "shop")
        if e["event"] == "command" and json.loads(e["note"])["point"] == "before_switch_once"
    ]
    per_run = collections.Counter(events)
    if name == "mapps-1":
        assert all(n == 1 for n in per_run.values()), per_run
        # Converge (its idempotence run changed nothing), deploy v2, shop v3 (which
        # failed), the roll forward: one rollout each.
        releases = collections.Counter(release for release, _ in per_run)
        assert releases[v1] == 1 and releases[v2] == 2 and len(per_run) == 4, per_run
        # The manifest keeps what each rollout of v2 ran: deploy v2, then the roll forward.
        ran = _manifest(host, "shop", v2)["commands_run"]
        assert [r["point"] for r in ran].count("before_switch_once") == 2, ran
        applied = host.run(
            "python3 - <<'EOF'\n"
            "import sqlite3\n"
            "db = sqlite3.connect('/srv/shop/shared/db.sqlite3')\n"
            "query = \"select name from django_migrations where app = 'catalog' order by id\"\n"
            "print(*(name for (name,) in db.execute(query)))\n"
            "EOF"
        )
        assert applied.stdout.split() == ["0001_initial", "0002_item_price"], applied
    else:
        assert not events, events


def test_shop_serves_its_v2_view_with_the_new_field(host, story):
    name = host.backend.get_hostname()
    if name != "mapps-1":
        pytest.skip("shop's SQLite database is migrated on the first host only")
    out = host.run(f"curl -sS --max-time 5 -H 'Host: {SHOP_HOST}' http://127.0.0.1:8000/items/")
    assert out.rc == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["release"] == story["states"]["roll forward to v2"][name]["shop"]
    assert body["items"] == [{"name": "widget", "price": 0}]


def test_shop_is_built_from_its_requirements_with_uvicorn_added(host, story):
    release = story["states"]["roll forward to v2"][host.backend.get_hostname()]["shop"]
    manifest = _manifest(host, "shop", release)
    assert manifest["dependency_source"] == "requirements.txt", manifest
    assert "django==5.2.19" in [pin.lower() for pin in manifest["dependencies"]], manifest
    assert manifest["added"] == ["uvicorn==0.54.0"], manifest
    assert manifest["config"]["workers"] == 4 and manifest["config"]["access_log"] is True


def test_shop_refuses_another_host_name(host):
    out = host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/healthz/")
    assert out.stdout == "400", out.stdout


def test_the_noop_redeploy_changed_nothing(story):
    run = story["steps"]["redeploy v1"]["run"]
    recap = _recap(run)
    assert set(recap) >= set(HOSTS), run.stdout[-2000:]
    for name in HOSTS:
        assert recap[name]["changed"] == 0, (name, recap[name])


def test_a_failing_migration_stops_the_rollout_before_any_switch(host, story):
    name = host.backend.get_hostname()
    run = story["steps"]["deploy shop v3"]["run"]
    out = lib.output(run)
    assert "migration 0003 refuses to run" in out, out[-3000:]
    assert "before_switch_once command" in out, out[-3000:]
    assert (
        story["states"]["deploy shop v3"][name]["shop"]
        == story["states"]["converged"][name]["shop"]
    )
    assert not host.file("/run/lock/flipback/shop/.lock").exists
    failed = [e for e in _history(host, "shop") if e["event"] == "failed"]
    assert failed, _history(host, "shop")[-5:]
    assert "apps-scenario-secret-not-printed" not in out


def test_metrics_answers_as_prometheus_client(host, story):
    name = host.backend.get_hostname()
    out = host.run("curl -sS -i --max-time 5 http://127.0.0.1:8001/metrics")
    assert out.rc == 0, out.stderr
    assert "# TYPE python_info gauge" in out.stdout or "process_" in out.stdout, out.stdout[:500]
    release = story["states"]["roll forward to v2"][name]["metrics"]
    assert re.search(rf"^x-flipback-release: {release}\r?$", out.stdout, re.I | re.M)
    manifest = _manifest(host, "metrics", release)
    assert manifest["dependency_source"] == "pyproject.toml", manifest
    pins = [pin.lower().replace("_", "-") for pin in manifest["dependencies"]]
    assert "prometheus-client==0.26.0" in pins, pins
    assert manifest["added"] == ["uvicorn==0.54.0"], manifest


def test_lib_is_built_from_its_uv_lock(host, story):
    name = host.backend.get_hostname()
    release = story["states"]["roll forward to v2"][name]["lib"]
    manifest = _manifest(host, "lib", release)
    assert manifest["dependency_source"] == "uv.lock", manifest
    assert "websockets==15.0.1" in manifest["dependencies"], manifest
    assert manifest["added"] == ["uvicorn==0.54.0"], manifest
    assert manifest["project"].startswith("libsvc-1.0.0-"), manifest
    versions = host.run(
        f"/srv/lib/releases/{release}/venv/bin/python -c 'import importlib.metadata as m; "
        'print(m.version("libsvc"), m.version("websockets"))\''
    )
    assert versions.stdout.split() == ["1.0.0", "15.0.1"], versions


def test_exec_shows_the_migrations_in_the_live_release(host, story):
    name = host.backend.get_hostname()
    run = lib.run_fleet_playbook(
        "exec.yml",
        "-e",
        "service=shop",
        # As JSON: a key=value splits at its spaces.
        "-e",
        json.dumps({"cmd": "python manage.py showmigrations catalog"}),
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    release = story["states"]["roll forward to v2"]["mapps-1"]["shop"]
    if name == "mapps-1":
        for migration in ("0001_initial", "0002_item_price"):
            pattern = rf"mapps-1 {release} \| +\[X\] {migration}"
            assert re.search(pattern, out), (migration, out[-3000:])
    else:
        assert not re.search(r"mapps-2 \S+ [|!=] ", out), out[-3000:]


def test_logs_show_the_access_log_of_the_live_release(host, story):
    name = host.backend.get_hostname()
    run = lib.run_fleet_playbook("logs.yml", "-e", "service=shop", "-e", "lines=400")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    # The JSON result format escapes the lines of the message.
    out = out.replace("\\n", "\n").replace('\\"', '"')
    release = story["states"]["roll forward to v2"][name]["shop"]
    mine = [line for line in out.splitlines() if re.search(rf"Z {name} {release} \| ", line)]
    assert any('"GET /healthz/ HTTP/1.1" 200' in line for line in mine), out[-3000:]
    # The worker's lines (far back, behind the access log: found by -e grep), prefixed
    # with its release and its name.
    run = lib.run_fleet_playbook("logs.yml", "-e", "service=shop", "-e", "grep=ready")
    out = (run.stdout + run.stderr).replace("\\n", "\n")
    assert run.returncode == 0, out[-3000:]
    assert re.search(rf"Z {name} {release}/worker \| worker {release} ready", out), out[-3000:]


def test_static_files_collected_into_the_release_are_served_by_nginx(host, story):
    """collectstatic (before_switch) fills the release's own static directory, which
    nginx serves through `current`: the files switch with the release."""
    release = os.path.basename(host.file("/srv/shop/current").linked_to)
    static = host.file(f"/srv/shop/releases/{release}/static/catalog/site.css")
    assert static.exists and static.user == "shop" and static.mode & 0o004
    out = host.run(
        f"curl -sS -D - -H 'Host: {SHOP_HOST}' http://127.0.0.1:8000/static/catalog/site.css"
    )
    assert out.rc == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200"), out.stdout[:500]
    assert out.stdout.split("\r\n\r\n", 1)[1] == static.content_string
    # Served by nginx itself: uvicorn (which adds the release header) never saw it.
    assert "x-flipback-release" not in out.stdout.lower()


def test_the_worker_runs_with_its_release_only(story):
    """shop's worker runs while its release is live: started with it, switched, rolled
    back and kept through a failed deploy; no other release's worker keeps running."""
    for step, seen in story["processes"].items():
        for name in HOSTS:
            shop = story["states"][step][name]["shop"]
            assert seen[name] == [f"shop.worker@{shop}.service"], (step, name, seen[name])


def test_a_process_that_exits_at_its_start_stops_the_rollout(host, story):
    name = host.backend.get_hostname()
    run = story["steps"]["lib with a process that exits"]["run"]
    out = lib.output(run)
    lib_now = story["states"]["lib with a process that exits"][name]["lib"]
    assert lib_now == story["states"]["roll forward to v2"][name]["lib"]
    if name == "mapps-1":
        # The canary: its process failed the switch, which was undone.
        named = re.search(r"lib\.ticker@(\S+)\.service exited during its start window", out)
        assert named, out[-3000:]
        assert "ticker gives up" in out, out[-3000:]
        release = named.group(1)
        failed = [e["release"] for e in _history(host, "lib") if e["event"] == "failed"]
        assert release in failed, _history(host, "lib")[-5:]
        assert not host.service(f"lib.ticker@{release}.service").is_running
        assert not host.service(f"lib@{release}.service").is_running
        assert host.file(f"/etc/systemd/system/lib.ticker@{release}.service").exists
    assert not host.file("/run/lock/flipback/lib/.lock").exists


def test_the_worker_heartbeat_names_the_live_release(host, story):
    name = host.backend.get_hostname()
    shop = story["states"]["lib with a process that exits"][name]["shop"]
    beat = json.loads(host.file("/srv/shop/shared/worker-heartbeat.json").content_string)
    assert beat["release"] == shop, beat
    now = float(host.run("date +%s.%N").stdout)
    assert now - beat["at"] < 5, (now, beat)
    unit = host.file(f"/etc/systemd/system/shop.worker@{shop}.service").content_string
    assert 'ExecStart=/bin/sh -c "exec python manage.py worker"' in unit
    assert host.run(f"systemctl is-enabled shop.worker@{shop}.service").stdout.strip() == "enabled"


def test_status_shows_the_worker(story):
    run = lib.run_fleet_playbook("status.yml", "-e", "service=shop")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "PROCESSES" in out and "worker active/running" in out, out[-3000:]


def test_an_instance_that_exits_fails_its_gate_at_once(host, story):
    """uvicorn exits (the app's module is not there): Gate 1 gives up as soon as systemd
    sees the instance exit, not at its 30 s deadline."""
    name = host.backend.get_hostname()
    out = lib.output(story["steps"]["lib whose app is not there"]["run"])
    if name == "mapps-1":
        assert re.search(r"gave up: lib@\S+\.service exited \(", out), out[-3000:]
        assert "nosuchmodule" in out, out[-3000:]
    assert (
        story["states"]["lib whose app is not there"][name]["lib"]
        == (story["states"]["roll forward to v2"][name]["lib"])
    )
