"""What the unit tests share: a file loader, local HTTP servers, release trees on disk
and a fake systemd.

- load_file: a Python file (a library module, a plugin, a doc fragment) loaded from its
  path under a name of the test's choosing, as Ansible loads it: not as a package.
- load_plugin, action: a plugin of plugins/ loaded from its file; an action plugin's
  ActionModule on the smallest task and connection stand-ins ActionBase needs.
- Reply, ScriptedServer, QuietHandler, serve, closed_port: real HTTP servers on
  127.0.0.1 (or a unix socket) in a thread, for the probes and the load generator.
- ReleaseTree: a service root with releases/<id>/manifest.json, history.jsonl and a
  `current` link, as release_stage and the switch leave it.
- FakeSystemd: systemctl over sets of active and enabled units (and retire timers),
  and run(), which records every command and hands it to the fake's method for it;
  each test's host fake builds on it.
- Ownership: os.chown, os.fchown and os.lchown recorded; as root passed on, and
  unprivileged kept here and reported by os.stat, os.lstat and os.fstat, so the tests of
  code that hands files to root or a service user run without root too.
- GitOverHttp: git's dumb HTTP protocol over a directory, behind basic auth.
- StageRunner: the commands staging runs (venv, pip, compileall, systemctl).
- DummyHost: the sandbox's Host where a module only hands it over.
- service_arg, run_arg, run_module, module_params: the release module's `service` and
  `run` arguments, and its main() run on a parameter dict (or only validating one).
  run_module runs any module's main() (a library module of the deploy or the sandbox).
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import importlib.util
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from unittest import mock

from ansible.module_utils.testing import patch_module_args

# What comes from the project's module_utils is imported where it is used, so that this
# file loads without tests/conftest.py too (the scenarios' tests import it).

ROOT = Path(__file__).resolve().parents[2]

# =========================================================================== loading


def load_file(name: str, path: Path | str, *, register: bool = False) -> ModuleType:
    """The module in the file at `path`, named `name` (in sys.modules too if `register`,
    before it runs, as an import would put it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_plugin(name: str, kind: str = "action") -> ModuleType:
    """plugins/<kind>/<name>.py, as flipback_<kind>_<name>."""
    return load_file(f"flipback_{kind}_{name}", ROOT / "plugins" / kind / f"{name}.py")


def action(module: ModuleType, args: dict, *, check_mode: bool = False):
    """The ActionModule of an action plugin (from load_plugin) for a task with `args`.

    The task and connection are the smallest stand-ins ActionBase needs: none of the
    project's controller actions talks to a host. `.run(task_vars={})` runs it.
    """
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="test")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/nonexistent"))
    return module.ActionModule(task, connection, None, None, None, None)


# =========================================================================== HTTP


OK = json.dumps({"status": "ok", "release": "r2"})


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = OK
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing and does not mind a client that went away."""

    def answer(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A JSON answer (Content-Type and Content-Length, then `headers`)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first: that is what a slow-answer case tests

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(server: socketserver.BaseServer) -> threading.Thread:
    """Run `server` in a daemon thread. A short poll interval keeps shutdown() at
    teardown from waiting half a second."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    return thread


def stop(server: socketserver.BaseServer) -> None:
    server.shutdown()
    server.server_close()


class _ScriptedHandler(QuietHandler):
    server: _ScriptedTCP | _ScriptedUnix

    def do_GET(self) -> None:
        reply = self.server.scripted.next_reply(self.path, self.headers.get("Host"))
        time.sleep(reply.delay)
        self.answer(reply.status, reply.body.encode(), reply.headers)


class _ScriptedTCP(ThreadingHTTPServer):
    scripted: ScriptedServer


class _ScriptedUnix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    scripted: ScriptedServer


class ScriptedServer:
    """Answers request N with script[N] (the last reply repeats) and records each request;
    on 127.0.0.1 or, given `unix_path`, on that unix socket."""

    def __init__(self, script: list[Reply], unix_path: str | None = None) -> None:
        self.script = script
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        if unix_path is None:
            self.server = _ScriptedTCP(("127.0.0.1", 0), _ScriptedHandler)
            self.args = {"port": self.server.server_address[1]}
        else:
            self.server = _ScriptedUnix(unix_path, _ScriptedHandler)
            self.args = {"unix_socket": unix_path}
        self.server.scripted = self
        serve(self.server)

    @property
    def port(self) -> int:
        return self.args["port"]

    @property
    def paths(self) -> list[str]:
        return [request["path"] for request in self.requests]

    def next_reply(self, path: str, host: str | None) -> Reply:
        with self._lock:
            self.requests.append({"path": path, "host": host})
            return self.script[min(len(self.requests), len(self.script)) - 1]

    def target(self, **kwargs: object):
        """A flipback_health.Target at this server."""
        from ansible.module_utils.flipback_health import Target

        return Target(**self.args, **kwargs)

    def stop(self) -> None:
        stop(self.server)


class GitOverHttp(http.server.SimpleHTTPRequestHandler):
    """git's dumb HTTP protocol over `directory` (a repository after `git
    update-server-info`), behind basic auth as `user`:`password`. `seen` records the
    Authorization header (None: none) and path of every request, answered or refused.

    `GitOverHttp.serve(directory, user, password)` starts one on 127.0.0.1 in a thread and
    returns its server: `.server_address[1]` is its port, `.handler.seen` its requests;
    stop() it when done.
    """

    directory_served: str
    expected: str
    seen: list[tuple[str | None, str]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=self.directory_served, **kwargs)

    @classmethod
    def serve(cls, directory: Path | str, user: str, password: str) -> ThreadingHTTPServer:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        handler = type(
            "GitOverHttpHandler",
            (cls,),
            {"directory_served": str(directory), "expected": f"Basic {token}", "seen": []},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.handler = handler  # type: ignore[attr-defined]
        serve(server)
        return server

    def do_GET(self) -> None:
        sent = self.headers.get("Authorization")
        self.seen.append((sent, self.path))
        if sent != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="flipback"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# =========================================================================== release trees


class ReleaseTree:
    """A service root on disk: releases/<id>/manifest.json, history.jsonl, `current`.

    A release's manifest is its id, its service and `manifest` (the fields every release
    of the tree has; `release()` adds or changes some). `at`, if given, dates the history
    events, each a minute after the last from it; else they are dated now. Each test
    module's tree builds on this one with the manifests and helpers it needs.
    """

    def __init__(
        self,
        root: Path | str,
        service: str,
        *,
        manifest: dict | None = None,
        at: float | None = None,
    ) -> None:
        self.root = root
        self.service = service
        self.manifest = {"status": "staged"} if manifest is None else manifest
        self.at = at
        self.clock = 0
        os.makedirs(os.path.join(root, "releases"), exist_ok=True)

    def path(self, release_id: str, *parts: str) -> str:
        return os.path.join(self.root, "releases", release_id, *parts)

    def write_release(self, release_id: str, manifest: dict | None) -> str:
        """releases/<id>, with a manifest of id, service and `manifest` (None: none)."""
        os.makedirs(self.path(release_id), exist_ok=True)
        if manifest is not None:
            manifest = {"id": release_id, "service": self.service, **manifest}
            with open(self.path(release_id, "manifest.json"), "w") as handle:
                json.dump(manifest, handle)
        return self.path(release_id)

    def release(self, release_id: str, **fields: object):
        """A release whose manifest is the tree's, with `fields`."""
        self.write_release(release_id, {**self.manifest, **fields})
        return self

    def env_file(self, release_id: str, text: str, mode: int = 0o777) -> None:
        """The release's .flipback/env, as release_stage writes it."""
        os.makedirs(self.path(release_id, ".flipback"), mode=mode, exist_ok=True)
        with open(self.path(release_id, ".flipback", "env"), "w") as handle:
            handle.write(text)

    def venv(self, release_id: str, *, pyvenv_cfg: bool = True):
        """The release's venv/bin (and its pyvenv.cfg: a venv another release may borrow)."""
        os.makedirs(self.path(release_id, "venv", "bin"), exist_ok=True)
        if pyvenv_cfg:
            with open(self.path(release_id, "venv", "pyvenv.cfg"), "w") as handle:
                handle.write("home = /usr/bin\n")
        return self

    def unit_file(self, release_id: str, unit_dir: Path | str, text: str):
        """The release's own unit <service>@<id>.service in `unit_dir`, as staging writes
        it."""
        os.makedirs(unit_dir, exist_ok=True)
        with open(os.path.join(unit_dir, f"{self.service}@{release_id}.service"), "w") as handle:
            handle.write(text)
        return self

    def event(self, release_id: str, event: str, *, by: str = "alice", note: str = "") -> None:
        from ansible.module_utils.flipback_release import append_history, history_event

        at = None
        if self.at is not None:
            self.clock += 60
            at = self.at + self.clock
        append_history(str(self.root), history_event(release_id, event, by=by, note=note, at=at))

    def events(self, *events: tuple[str, str] | tuple[str, str, str]):
        """Append (release, event[, note]) events, by alice."""
        for release_id, event, *note in events:
            self.event(release_id, event, note="".join(note))
        return self

    def current(self, release_id: str):
        """Point `current` at the release (replacing the link there was)."""
        link = os.path.join(self.root, "current")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join("releases", release_id), link)
        return self

    def readlink(self) -> str | None:
        try:
            return os.readlink(os.path.join(self.root, "current"))
        except FileNotFoundError:
            return None

    def history(self) -> list[dict]:
        from ansible.module_utils.flipback_release import read_history

        return read_history(str(self.root))

    def deployed(self, *release_ids: str):
        """Each release staged then activated in turn, the last one current."""
        for release_id in release_ids:
            self.release(release_id).events((release_id, "staged"), (release_id, "active"))
        return self.current(release_ids[-1])


# =========================================================================== file owners


class Ownership:
    """os.chown, os.fchown and os.lchown, recorded as (path, uid, gid) in call order:
    `chowns` those of os.chown and os.fchown (the file named by its path), `lchowns`
    those of os.lchown.

    As root each is passed on to the real call. Unprivileged (where giving a file to root
    or to another account fails) the owner it gives is kept here instead, and os.stat,
    os.lstat and os.fstat report it for that file: the code under test and the test's
    own checks (Path.stat()) read the owners as they would be as root. A file is known by
    its inode, held open (O_PATH) until the test ends so that no new file reuses it; a
    rename keeps its owner, as on disk. install() puts it in place for one test.
    """

    def __init__(self) -> None:
        self.chowns: list[tuple[str, int, int]] = []
        self.lchowns: list[tuple[str, int, int]] = []
        self.privileged = os.geteuid() == 0
        self.owners: dict[tuple[int, int], tuple[int, int]] = {}
        self._held: list[int] = []

    def install(self, monkeypatch) -> Ownership:
        real = {
            name: getattr(os, name)
            for name in ("chown", "fchown", "lchown", "stat", "lstat", "fstat")
        }

        def record(call: str, path: str, uid: int, gid: int, st: os.stat_result, fd=None) -> None:
            (self.lchowns if call == "lchown" else self.chowns).append((path, uid, gid))
            if self.privileged:
                return
            key = (st.st_dev, st.st_ino)
            old_uid, old_gid = self.owners.get(key, (st.st_uid, st.st_gid))
            self.owners[key] = (old_uid if uid == -1 else uid, old_gid if gid == -1 else gid)
            if fd is None:
                flags = os.O_PATH | (os.O_NOFOLLOW if call == "lchown" else 0)
                fd = os.open(path, flags)
            else:
                fd = os.dup(fd)
            self._held.append(fd)

        def chown(path, uid, gid, *, dir_fd=None, follow_symlinks=True):
            assert dir_fd is None, "Ownership knows files by path"
            if self.privileged:
                real["chown"](path, uid, gid, follow_symlinks=follow_symlinks)
            call = "chown" if follow_symlinks else "lchown"
            stat_of = real["stat"] if follow_symlinks else real["lstat"]
            record(call, os.fspath(path), uid, gid, stat_of(path))

        def lchown(path, uid, gid):
            if self.privileged:
                real["lchown"](path, uid, gid)
            record("lchown", os.fspath(path), uid, gid, real["lstat"](path))

        def fchown(fd, uid, gid):
            if self.privileged:
                real["fchown"](fd, uid, gid)
            path = os.readlink(f"/proc/self/fd/{fd}")
            record("fchown", path, uid, gid, real["fstat"](fd), fd=fd)

        def owned(st: os.stat_result) -> os.stat_result:
            owner = self.owners.get((st.st_dev, st.st_ino))
            if owner is None:
                return st
            fields = list(st)
            fields[4:6] = owner
            extra = {name: getattr(st, name) for name in _STAT_EXTRA}
            return os.stat_result(fields, extra)

        def stat(path, *, dir_fd=None, follow_symlinks=True):
            return owned(real["stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks))

        def lstat(path, *, dir_fd=None):
            return owned(real["lstat"](path, dir_fd=dir_fd))

        def fstat(fd):
            return owned(real["fstat"](fd))

        monkeypatch.setattr(os, "chown", chown)
        monkeypatch.setattr(os, "lchown", lchown)
        monkeypatch.setattr(os, "fchown", fchown)
        if not self.privileged:
            monkeypatch.setattr(os, "stat", stat)
            monkeypatch.setattr(os, "lstat", lstat)
            monkeypatch.setattr(os, "fstat", fstat)
        return self

    def close(self) -> None:
        for fd in self._held:
            os.close(fd)
        self._held.clear()


# What os.stat_result holds beyond its ten sequence fields, on Linux.
_STAT_EXTRA = (
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)


# =========================================================================== systemd


def list_units_argv(service: str) -> list[str]:
    """What flipback asks `systemctl` for the service's instances and retire timers."""
    return [
        "list-units",
        "--plain",
        "--no-legend",
        "--state=active,activating,reloading",
        f"{service}@*.service",
        f"flipback-retire-{service}-*.timer",
        f"{service}.*@*.service",
    ]


def completed(argv: Sequence[str], rc: int = 0, out: str = "", err: str = ""):
    return subprocess.CompletedProcess(list(argv), rc, out, err)


class FakeSystemd:
    """systemctl over sets of unit names, recording every call in `calls`.

    `active` and `enabled` hold unit names; `list-units` answers from `active` as
    systemd does (one unit per line, name first), then the retire timers in `timers`
    (timer name -> the unit it stops). `show` says each unit is active or
    `stopped_state`. A unit in `failing_start` fails to start. Each verb is a method
    (`list_units` for list-units): a host fake overrides what it answers otherwise.
    """

    description = " Shop"
    stopped_state = "inactive"
    # A command the fake has no method for: it fails the test, unless this is set.
    other_commands_succeed = False

    def __init__(
        self,
        *,
        active: Iterable[str] = (),
        enabled: Iterable[str] = (),
        failing_start: Iterable[str] = (),
    ) -> None:
        self.active = set(active)
        self.enabled = set(enabled)
        self.failing_start = set(failing_start)
        self.timers: dict[str, str] = {}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """A command as the code under test runs it, recorded in `calls`: systemctl goes
        to systemctl(), another to the fake's method named after it (`systemd-run`:
        cmd_systemd_run). One with neither fails the test, unless the fake says
        `other_commands_succeed` (it then exits 0 and prints nothing)."""
        argv = list(argv)
        self.calls.append(argv)
        name = os.path.basename(argv[0])
        if name == "systemctl":
            return self.systemctl(argv)
        command = getattr(self, f"cmd_{name.replace('-', '_')}", None)
        if command is not None:
            return command(argv)
        if self.other_commands_succeed:
            return completed(argv)
        raise AssertionError(f"unexpected command {argv}")

    def systemctl(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert os.path.basename(argv[0]) == "systemctl", argv
        units = [a for a in argv[2:] if not a.startswith("--")]
        verb = getattr(self, argv[1].replace("-", "_"), None)
        if verb is None:
            raise AssertionError(f"unexpected systemctl {argv[1]}")
        return verb(argv, units)

    def list_units(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        lines = [f"{unit} loaded active running{self.description}" for unit in sorted(self.active)]
        lines += [f"{timer}.timer loaded active waiting" for timer in sorted(self.timers)]
        return completed(argv, 0, "".join(f"{line}\n" for line in lines))

    def is_enabled(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        states = ["enabled" if unit in self.enabled else "disabled" for unit in units]
        return completed(argv, 0 if "enabled" in states else 1, "\n".join(states) + "\n")

    def show_block(self, unit: str) -> str:
        state = "active" if unit in self.active else self.stopped_state
        return f"Id={unit}\nActiveState={state}\nSubState=running\nNRestarts=0\n"

    def show(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        return completed(argv, 0, "\n".join(self.show_block(unit) for unit in units))

    def start(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        for unit in units:
            if unit in self.failing_start:
                return completed(argv, 1, "", self.start_failure(unit))
            self.started(unit)
        return completed(argv)

    def started(self, unit: str) -> None:
        self.active.add(unit)

    def start_failure(self, unit: str) -> str:
        return f"Job for {unit} failed."

    def stop(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        for unit in units:
            if unit.startswith("flipback-retire-"):
                self.timers.pop(unit.rsplit(".", 1)[0], None)
            else:
                self.active.discard(unit)
        return completed(argv)

    def enable(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        # A switch changes only the boot links: a daemon reload there would cost
        # systemd about 0.2 s per call on the switch's path.
        assert "--no-reload" in argv, f"enable reloads systemd: {argv}"
        self.enabled.update(units)
        return completed(argv)

    def disable(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        assert "--no-reload" in argv, f"disable reloads systemd: {argv}"
        self.enabled.difference_update(units)
        return completed(argv)

    def reset_failed(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        return completed(argv)


# =========================================================================== staging


class StageRunner:
    """The commands staging runs, recorded in `calls`: `python -m venv` makes
    venv/bin/python (and pip, which python -m venv seeds); the step named `fail` (the
    module after -m, or systemctl's verb) exits 1 saying "<step> exploded"."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        step = stage_step(argv)
        if step == "venv":
            python = Path(argv[3], "bin", "python")
            python.parent.mkdir(parents=True)
            python.write_text("#!/bin/sh\n")
            Path(argv[3], "bin", "pip").write_text("#!/bin/sh\n")
        if step == self.fail:
            return completed(argv, 1, "", f"{step} exploded")
        return completed(argv)

    @property
    def steps(self) -> list[str]:
        return [stage_step(argv) for argv in self.calls]


def stage_step(argv: Sequence[str]) -> str:
    return argv[1] if argv[0] == "systemctl" else argv[2]


# =========================================================================== the sandbox


class DummyHost:
    """Stands in for the sandbox's Host where a module must only hand it over, never use
    it: any use of it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the dummy host was used: .{name}")


# =========================================================================== the release module


def service_arg(name: str = "shop", **fields: object) -> dict:
    """The release module's `service`: `name`, port 8000 unless `fields` say otherwise
    (None: left out)."""
    found = {"name": name, "port": 8000, **fields}
    return {key: value for key, value in found.items() if value is not None}


def run_arg(home: Path | str | None = None, **fields: object) -> dict:
    """The release module's `run`: its root the parent of the service home `home` (None:
    the default root), with `fields` (None: left out)."""
    found = {"root": None if home is None else str(Path(home).parent), **fields}
    return {key: value for key, value in found.items() if value is not None}


def run_module(module: ModuleType, args: dict, capsys, check_mode=False, diff=False):
    """`module`.main() run on `args`: (exit code, result, the output as printed)."""
    args = {"_ansible_check_mode": check_mode, "_ansible_diff": diff, **args}
    with patch_module_args(args):
        try:
            module.main()
        except SystemExit as exit_info:
            code = exit_info.code
        else:
            raise AssertionError("main() did not exit")
    out = capsys.readouterr().out
    return code, json.loads(out), out


def module_params(module: ModuleType, args: dict, capsys) -> dict:
    """The parameters `module`.main() validates `args` into, defaults filled in; its
    run() is not called, so nothing is acted on."""
    seen: dict = {}

    def capture(params: dict, *_args: object) -> dict:
        seen.update(params)
        return {"changed": False}

    with mock.patch.object(module, "run", capture):
        code, result, _out = run_module(module, args, capsys)
    assert code == 0 and seen, result
    return seen
