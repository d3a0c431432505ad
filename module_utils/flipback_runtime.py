"""How a release runs: its configuration, the files that carry it on a host, and its id.

A release is its build (code + wheels) *and* its configuration, immutable once staged:

    /etc/systemd/system/<service>@<release>.service   the release's own unit (0644 root):
                                                      user, app, factory, workers, hardening
    /etc/systemd/system/<service>.<p>@<release>.service  one unit per process `p` it
                                                      declares (`processes`), same sandbox
    <root>/releases/<release>/.flipback/env           its environment values
                                                      (0640 root:<user>, never shown)
    <root>/releases/<release>/manifest.json "config"  app, factory, workers, user, port,
                                                      the env names and a digest (never values)
    /etc/nginx/conf.d/flipback-<service>.conf         the public port of the live release:
                                                      put in place by the switch that makes
                                                      a release live, never before its gate

Each instance starts from its own release's unit and env file, so nothing a deploy
writes before its switch can change how the live release (or its standby) starts, and
a rollback brings back the configuration the release ran with. The release id covers
the build and the effective configuration: the same code with a new env value is a
new release; the same code with the same configuration is the same id (a no-op).

Everything here is pure and runs the same on the controller (release_config) and on
the hosts (release_prepare, release_stage): standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from ansible.module_utils.flipback_common import FlipbackError
from ansible.module_utils.flipback_request import RELEASE_HEADER, instance_unit

# A service's name, on the controller and on the hosts alike: it names a unit, a user's
# default, a directory and an nginx site.
SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
SERVICE_NAME_EXPECTED = "1-32 characters: a lowercase letter, then lowercase letters, digits or '-'"
RELEASE_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{10}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
APP_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\(\))?$"
)
BUILD_ID_RE = re.compile(r"^([0-9]{8}T[0-9]{6})-[0-9a-f]{10}$")
UNIT_DIR = "/etc/systemd/system"
# The group nginx's worker processes run as (Debian's nginx packages).
NGINX_GROUP = "www-data"
# Inside a release directory: flipback's own files, beside the code.
CONFIG_DIR = ".flipback"
ENV_FILE = "env"
# Names the unit sets, or that would take the process away from its release: the
# interpreter, the loader, uvicorn's own options, systemd's protocol variables.
RESERVED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "PYTHONPLATLIBDIR",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
        "PYTHONINSPECT",
        "PYTHONDONTWRITEBYTECODE",
        "NOTIFY_SOCKET",
        "MAINPID",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
    }
)
RESERVED_ENV_PREFIXES = ("FLIPBACK_", "LD_", "UVICORN_", "LISTEN_", "WATCHDOG_", "SYSTEMD_")
# systemd's own line limit is far larger; a bigger value is a file, not a setting.
MAX_ENV_VALUE = 32 * 1024
# Characters a systemd EnvironmentFile value cannot carry (a newline ends the line,
# and systemd drops values with other control characters); tab is allowed.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Inside double quotes, systemd's EnvironmentFile parser takes these after a backslash
# as themselves; every other character (tab, any Unicode) stands for itself.
_NEEDS_ESCAPE = re.compile(r'(["\\`$])')
# Work factor of the env digest: it is kept in world-readable manifests and in the
# release id, so guessing a value from it must be slow.
ENV_DIGEST_ROUNDS = 60_000


def reserved_env_name(name: str) -> bool:
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def env_problems(where: str, env: Any) -> tuple[dict[str, str], list[str]]:
    """(the values as text, problems): every problem names the key, never the value."""
    if env is None:
        return {}, []
    if not isinstance(env, Mapping):
        return {}, [f"{where}.env: got a {type(env).__name__}, expected a mapping NAME: value"]
    clean: dict[str, str] = {}
    problems: list[str] = []
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            problems.append(
                f"{where}.env: got {key!r}, expected variable names of letters, digits and "
                "'_', not starting with a digit (no '=')"
            )
            continue
        if reserved_env_name(key):
            problems.append(
                f"{where}.env.{key}: got a reserved name, expected a name of the app's own "
                f"(flipback or systemd sets it, or it would change how the release starts: "
                f"{', '.join(sorted(RESERVED_ENV_NAMES))} and names starting with "
                f"{', '.join(RESERVED_ENV_PREFIXES)})"
            )
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append(
                f"{where}.env.{key}: got a {type(value).__name__}, expected a string or number "
                "(quote yes/no/true/false in YAML)"
            )
            continue
        text = str(value)
        bad = _FORBIDDEN_CHARS.search(text)
        if bad:
            problems.append(
                f"{where}.env.{key}: got a value with the control character "
                f"U+{ord(bad.group()):04X} (value not shown), expected text on one line: a "
                "systemd environment file cannot carry NUL, newlines, CR or other control "
                "characters (tab is fine)"
            )
            continue
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            problems.append(
                f"{where}.env.{key}: got a value that is not valid Unicode text "
                "(value not shown), expected UTF-8 text"
            )
            continue
        if size > MAX_ENV_VALUE:
            problems.append(
                f"{where}.env.{key}: got a value of {size} bytes (value not shown), expected "
                f"at most {MAX_ENV_VALUE}; put large content in a file under shared/"
            )
            continue
        clean[key] = text
    return clean, problems


def env_file_text(env: Mapping[str, str]) -> str:
    """The env file systemd reads for the release: each value exactly as given."""
    lines = ["# flipback: environment of one release; written at staging, never changed."]
    for key in sorted(env):
        escaped = _NEEDS_ESCAPE.sub(r"\\\1", env[key])
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> dict[str, str]:
    """The values of a file written by env_file_text (only that shape is read)."""
    values: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, quoted = line.split("=", 1)
        if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            continue
        body, out, escaped = quoted[1:-1], [], False
        for char in body:
            if escaped:
                out.append(char if char in '"\\`$' else "\\" + char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        values[key] = "".join(out)
    return values


def env_digest(service: str, env: Mapping[str, str]) -> str:
    """A slow, salted digest of the env values: equal values, equal digest."""
    canonical = json.dumps(dict(sorted(env.items())), ensure_ascii=False, separators=(",", ":"))
    return hashlib.pbkdf2_hmac(
        "sha256", canonical.encode("utf-8"), f"flipback-env:{service}".encode(), ENV_DIGEST_ROUNDS
    ).hex()


def app_and_factory(app: str, factory: bool) -> tuple[str, bool]:
    """`module:create_app()` is the factory form of `module:create_app`."""
    if app.endswith("()"):
        return app[:-2], True
    return app, bool(factory)


# Names and places of a service on a host, known here only: every module, module_utils
# file and template takes them from these functions.

# The parent of every service's home (flipback_root).
DEFAULT_ROOT = "/srv"


def service_home(root: str, service: str) -> str:
    """A service's directory on a host: <root>/<service> (root: flipback_root, /srv)."""
    return f"{(root or DEFAULT_ROOT).rstrip('/')}/{service}"


def instance_template(service: str) -> str:
    """The unit template every web instance of the service is made from."""
    return f"{service}@.service"


def start_instance(run: Callable[[list[str]], Any], service: str, release: str) -> bool:
    """Start a release's web instance without waiting for it (a switch gates it later):
    the warm start of staging and of a roll forward. False if systemd refused."""
    return (
        run(["systemctl", "start", "--no-block", instance_unit(service, release)]).returncode == 0
    )


def stop_instance(run: Callable[[list[str]], Any], service: str, release: str) -> str | None:
    """Stop a release's web instance and wait for it; None when stopped (or not loaded:
    systemctl's 5), else why not."""
    proc = run(["systemctl", "stop", instance_unit(service, release)])
    if proc.returncode in (0, 5):
        return None
    return (proc.stderr or "").strip() or f"systemctl exit {proc.returncode}"


def retire_timer(service: str, release: str) -> str:
    """The transient timer (and service) that stops a retired instance after its drain;
    without a suffix: `.timer` and `.service` share it ('*': every one)."""
    return f"flipback-retire-{service}-{release}"


def socket_dir_of(service: str) -> str:
    return f"/run/flipback-{service}"


SITE_DIR = "/etc/nginx/conf.d"


def site_path(service: str, site_dir: str = SITE_DIR) -> str:
    return f"{site_dir}/flipback-{service}.conf"


# How nginx serves a release, as a service defines it (`nginx:`); the site of a release
# staged before these existed is written with these defaults.
NGINX_DEFAULTS: dict[str, Any] = {
    "server_name": [],
    # Seconds nginx waits between two reads from the app (a long response, a quiet
    # WebSocket) before it gives up: nginx's own default.
    "read_timeout": 60,
    # Largest request body (nginx size: 1m, 512k, 0 = no limit): nginx's own default.
    "max_body": "1m",
    # URL prefix -> directory in the release nginx serves directly (`static`: in the
    # code, or filled by a before_switch command such as collectstatic).
    "static": {},
    # HTTPS on the public port: {certificate: <path on the host>, key: <path on the
    # host>}; empty: plain HTTP.
    "tls": {},
}


def public_tls(config: Mapping[str, Any] | None) -> bool:
    """Whether a release's public port speaks TLS (its nginx.tls names a certificate)."""
    tls = ((config or {}).get("nginx") or {}).get("tls")
    return isinstance(tls, Mapping) and bool(tls.get("certificate"))


def static_dirs(config: Mapping[str, Any]) -> list[str]:
    """The release's static directories (its nginx.static), relative to it, sorted,
    each once: staging makes them, its before_switch commands may fill them."""
    static = ((config.get("nginx") or {}).get("static")) or {}
    return sorted({directory.rstrip("/") for directory in static.values()})


def user_include_dir(service: str) -> str:
    """Where a user's own nginx directives for `service` live: included inside its
    server block, never written by flipback."""
    return f"/etc/nginx/flipback/{service}"


def site_text(*, service: str, home: str, port: int, nginx: Mapping[str, Any] | None = None) -> str:
    """The nginx site of `service` while a release listening on `port` is live."""
    conf = {**NGINX_DEFAULTS, **(nginx or {})}
    upgrade = "$flipback_" + service.replace("-", "_") + "_connection"
    names = f"    server_name {' '.join(conf['server_name'])};\n" if conf["server_name"] else ""
    ssl, tls = "", ""
    if public_tls({"nginx": conf}):
        ssl = " ssl"
        tls = (
            f"    ssl_certificate {conf['tls']['certificate']};\n"
            f"    ssl_certificate_key {conf['tls']['key']};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    static = ""
    for prefix, directory in sorted(conf["static"].items()):
        # Through `current`: the files switch with the release.
        where = f"{home}/current/{directory}"
        static += f"\n    location ^~ {prefix} {{\n        alias {where.rstrip('/')}/;\n    }}\n"
    return f"""\
# flipback: public port of {service}, as the live release defines it; written by the
# switch that makes a release live. The upstream path goes through the `current`
# symlink and is resolved at every connect, so renaming `current` moves new connections
# to the new release with no nginx reload. Own directives go in
# {user_include_dir(service)}/*.conf (included below, never written by flipback).

# WebSockets: the Upgrade handshake passes through; other requests close as before.
map $http_upgrade {upgrade} {{
    default upgrade;
    "" close;
}}

server {{
    listen {port}{ssl};
    listen [::]:{port}{ssl};
{names}{tls}    client_max_body_size {conf["max_body"]};

    location / {{
        proxy_pass http://unix:{home}/current/sock:;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection {upgrade};
        proxy_set_header Host $host;
        # nginx is the edge: the client is who connected to it (behind a load balancer,
        # set_real_ip_from in the include directory below makes it the balancer's client).
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout {conf["read_timeout"]}s;
        proxy_send_timeout {conf["read_timeout"]}s;
    }}
{static}
    include {user_include_dir(service)}/*.conf;
}}
"""


def unit_path(service: str, release: str) -> str:
    return f"{UNIT_DIR}/{instance_unit(service, release)}"


def env_path(home: str, release: str) -> str:
    return f"{home}/releases/{release}/{CONFIG_DIR}/{ENV_FILE}"


def unit_description(service: str) -> str:
    """The Description= line of a flipback unit (older versions' templates had it too)."""
    return f"Description=flipback {service} release %i"


def flipback_template(path: str, service: str) -> bool:
    """Whether `path` is the unit template older flipback versions wrote for `service`
    (and not, say, the OS's `user@.service` for a service named `user`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return unit_description(service) in handle.read()
    except OSError:
        return False


def unit_text(
    *,
    service: str,
    home: str,
    user: str,
    app: str,
    factory: bool,
    workers: int,
    access_log: bool = False,
) -> str:
    """The systemd unit of one release of `service` (its id is the instance, %i)."""
    socket_dir = socket_dir_of(service)
    factory_flag = " --factory" if factory else ""
    access_flag = "" if access_log else " --no-access-log"
    return f"""\
# flipback: one release of {service}, written at staging and never changed; the
# release's own configuration (app, workers, env file) is in this file.
[Unit]
{unit_description(service)}
After=network.target
AssertPathExists={home}/releases/%i/manifest.json

[Service]
Type=exec
User={user}
Group={user}
WorkingDirectory={home}/releases/%i
EnvironmentFile={home}/releases/%i/{CONFIG_DIR}/{ENV_FILE}
Environment=FLIPBACK_RELEASE=%i PYTHONDONTWRITEBYTECODE=1
RuntimeDirectory=flipback-{service}/%i
# The private socket is for nginx and the gates only: its directory is the service's,
# group {NGINX_GROUP} (nginx's workers), closed to everyone else.
RuntimeDirectoryMode=0750
ExecStartPost=+/usr/bin/chgrp {NGINX_GROUP} {socket_dir}/%i
# The client address and scheme come from nginx's X-Forwarded-For/-Proto: every peer is
# trusted ('*'; a unix socket peer has no address), as only nginx and root reach it.
ExecStart={home}/releases/%i/venv/bin/python -m uvicorn {app}{factory_flag} \
--uds {socket_dir}/%i/app.sock --workers {workers}{access_flag} \
--proxy-headers --forwarded-allow-ips '*' \
--timeout-graceful-shutdown 20 --header {RELEASE_HEADER}:%i
Restart=on-failure
RestartSec=1
TimeoutStopSec=30
KillMode=mixed
{_hardening(home, "# uvicorn listens on a unix socket; the app may still call out over IP.")}"""


def _hardening(home: str, families_note: str) -> str:
    """The sandbox every unit of a release runs in (the web instance, its processes)."""
    return f"""
# Sandboxing: the code is read-only, only shared/ is writable.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={home}/shared
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
ProtectProc=invisible
ProcSubset=pid
DevicePolicy=closed
{families_note}
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0077

[Install]
WantedBy=multi-user.target
"""


# -- processes beside the web app (`processes: {worker: "celery -A proj worker"}`)

# A process's name is part of its unit's name: `<service>.<name>@<release>.service`
# (a service name has no dot, so no process unit can be another service's unit).
PROCESS_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_PROCESS_COMMAND = 4096
MAX_PROCESSES = 16
# Seconds each process must stay up after its start for a switch to go on (it is
# checked after Gate 1, so the web instance's start time counts towards it).
DEFAULT_PROCESS_START_SECONDS = 3
MAX_PROCESS_START_SECONDS = 300
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def process_unit(service: str, process: str, release: str) -> str:
    """A process of a release: <service>.<process>@<release>.service ('*': every one)."""
    return f"{service}.{process}@{release}.service"


def processes_of(config: Mapping[str, Any] | None) -> dict[str, str]:
    """A release's processes (name -> command line) from its recorded configuration."""
    processes = (config or {}).get("processes")
    return dict(processes) if isinstance(processes, Mapping) else {}


def process_start_seconds(config: Mapping[str, Any] | None) -> float:
    value = (config or {}).get("process_start_seconds", DEFAULT_PROCESS_START_SECONDS)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def normalize_processes(where: str, raw: Any, problems: list[str]) -> dict[str, str]:
    """The `processes` of a service definition as {name: command line}; problems name
    the field, the value and what was expected."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(
            f"{where}.processes: got {raw!r}, expected a mapping of process names to "
            'command lines, e.g. {worker: "celery -A proj worker"}'
        )
        return {}
    if len(raw) > MAX_PROCESSES:
        problems.append(
            f"{where}.processes: got {len(raw)} processes, expected at most {MAX_PROCESSES}"
        )
        return {}
    clean: dict[str, str] = {}
    for name, command in raw.items():
        if not isinstance(name, str) or not PROCESS_NAME_RE.fullmatch(name):
            problems.append(
                f"{where}.processes: got the name {name!r}, expected a lowercase name of "
                "letters, digits and '-', starting with a letter, at most 32 characters (it "
                f"becomes the unit <service>.<name>@<release>.service)"
            )
            continue
        if (
            not isinstance(command, str)
            or not command.strip()
            or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in command)
            or len(command.encode("utf-8", errors="replace")) > MAX_PROCESS_COMMAND
        ):
            problems.append(
                f"{where}.processes.{name}: got {command!r}, expected a non-empty command "
                f"line on one line (no control characters but tab, at most "
                f"{MAX_PROCESS_COMMAND} bytes), run with /bin/sh in the release"
            )
            continue
        clean[name] = command
    return dict(sorted(clean.items()))


def check_process_start_seconds(where: str, value: Any, problems: list[str]) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_PROCESS_START_SECONDS
    ):
        problems.append(
            f"{where}.process_start_seconds: got {value!r}, expected seconds, "
            f"0-{MAX_PROCESS_START_SECONDS} (how long each process must stay up after its "
            "start for the switch to go on)"
        )
        return DEFAULT_PROCESS_START_SECONDS
    return value


def _systemd_word(text: str) -> str:
    """One argument of an Exec line: double-quoted, with systemd's own expansions of
    `$` (environment) and `%` (specifiers) turned off, so it arrives as written."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("$", "$$").replace("%", "%%") + '"'


def process_unit_text(*, service: str, home: str, user: str, process: str, command: str) -> str:
    """The systemd unit of process `process` of one release of `service` (instance %i):
    the release's user, working directory, env file and sandbox; its venv first on PATH."""
    return f"""\
# flipback: process {process} of one release of {service}, written at staging and never
# changed; it runs while its release is live (and during the switch to it).
[Unit]
Description=flipback {service} process {process}, release %i
After=network.target
AssertPathExists={home}/releases/%i/manifest.json

[Service]
Type=exec
User={user}
Group={user}
WorkingDirectory={home}/releases/%i
EnvironmentFile={home}/releases/%i/{CONFIG_DIR}/{ENV_FILE}
Environment=FLIPBACK_RELEASE=%i FLIPBACK_PROCESS={process} PYTHONDONTWRITEBYTECODE=1
Environment="PATH={home}/releases/%i/venv/bin:{SYSTEM_PATH}"
Environment=VIRTUAL_ENV={home}/releases/%i/venv
ExecStart=/bin/sh -c {_systemd_word("exec " + command)}
Restart=on-failure
RestartSec=1
TimeoutStopSec=30
KillMode=mixed
{_hardening(home, "# No socket of its own; the process may call out over IP.")}"""


def release_unit_texts(
    *, service: str, home: str, release: str, config: Mapping[str, Any]
) -> dict[str, str]:
    """unit name -> text of every unit of a release: its web instance and its processes."""
    units = {
        instance_unit(service, release): unit_text(
            service=service,
            home=home,
            user=config["user"],
            app=config["app"],
            factory=config["factory"],
            workers=config["workers"],
            access_log=config["access_log"],
        )
    }
    for process, command in processes_of(config).items():
        units[process_unit(service, process, release)] = process_unit_text(
            service=service, home=home, user=config["user"], process=process, command=command
        )
    return units


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_config(
    *,
    service: str,
    home: str,
    user: str,
    app: str,
    factory: bool,
    workers: int,
    port: int,
    env: Mapping[str, str],
    nginx: Mapping[str, Any] | None = None,
    access_log: bool = False,
    commands: Mapping[str, Any] | None = None,
    processes: Mapping[str, str] | None = None,
    start_seconds: float = DEFAULT_PROCESS_START_SECONDS,
) -> dict[str, Any]:
    """What the manifest records of how a release runs (env names and a digest only)."""
    app, factory = app_and_factory(app, factory)
    unit = unit_text(
        service=service,
        home=home,
        user=user,
        app=app,
        factory=factory,
        workers=workers,
        access_log=access_log,
    )
    return {
        "app": app,
        "factory": factory,
        "workers": int(workers),
        "port": int(port),
        "user": user,
        "env_names": sorted(env),
        "env_digest": env_digest(service, env),
        "unit_sha256": sha256_text(unit),
        # Its uvicorn adds RELEASE_HEADER (the release id) to every response.
        "release_header": True,
        "access_log": bool(access_log),
        # How nginx serves it (the site is written from this when it goes live).
        "nginx": {**NGINX_DEFAULTS, **(nginx or {})},
        # The commands it runs at named points of a deploy (checked by service_config).
        "commands": dict(commands or {}),
        # Its processes beside the web app (recorded only when it has any, so that the
        # ids of releases without processes stay what they were).
        **(
            {"processes": dict(processes), "process_start_seconds": start_seconds}
            if processes
            else {}
        ),
    }


def config_digest(config: Mapping[str, Any]) -> str:
    keys = (
        "app",
        "factory",
        "workers",
        "port",
        "user",
        "env_names",
        "env_digest",
        "unit_sha256",
        "release_header",
        "access_log",
        "nginx",
        "commands",
    )
    covered = {k: config.get(k) for k in keys}
    # Keys a release records only when it uses them (see run_config).
    covered.update({k: config[k] for k in ("processes", "process_start_seconds") if k in config})
    canonical = json.dumps(covered, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def release_id_for(build_id: str, config: Mapping[str, Any]) -> str:
    """`<commit time>-<hash of the build and the configuration>`: sortable, content-stable."""
    match = BUILD_ID_RE.fullmatch(build_id or "")
    if not match:
        raise ValueError(f"build id {build_id!r} is not like 20261129T141500-3f2a9c1d0e")
    content = f"{build_id}\n{config_digest(config)}".encode()
    return f"{match.group(1)}-{hashlib.sha256(content).hexdigest()[:10]}"


def config_changes(
    before: Mapping[str, Any] | None,
    before_env: Mapping[str, str] | None,
    after: Mapping[str, Any],
    after_env: Mapping[str, str] | None,
) -> list[str]:
    """What differs between two releases' configurations, values of env never shown:
    `app app:app -> app:make()`, `workers 1 -> 2`, `HELLO_GREETING` (value changed),
    `+DJANGO_DEBUG` (added), `-OLD` (removed)."""
    if before is None:
        return []
    changes = []
    for key in ("app", "factory", "workers", "port", "user"):
        if before.get(key) != after.get(key):
            changes.append(f"{key} {before.get(key)} -> {after.get(key)}")
    old_names = set(before.get("env_names") or [])
    new_names = set(after.get("env_names") or [])
    for name in sorted(old_names | new_names):
        if name not in old_names:
            changes.append(f"+{name}")
        elif name not in new_names:
            changes.append(f"-{name}")
        elif (
            before_env is not None
            and after_env is not None
            and before_env.get(name) != after_env.get(name)
        ):
            changes.append(name)
    if (before_env is None or after_env is None) and before.get("env_digest") != after.get(
        "env_digest"
    ):
        changes.append("env values (which ones is not known)")
    if not changes and before.get("unit_sha256") != after.get("unit_sha256"):
        changes.append("unit (flipback's service settings)")
    return changes


def masked_config(config: Mapping[str, Any], env_marks: Mapping[str, str]) -> str:
    """A configuration as diff text, env values replaced by a mark."""
    lines = [
        f"app: {config.get('app')}{' (factory)' if config.get('factory') else ''}",
        f"workers: {config.get('workers')}",
        f"port: {config.get('port')}",
        f"user: {config.get('user')}",
    ]
    lines += [f"env {name}={env_marks.get(name, '***')}" for name in config.get("env_names", [])]
    return "\n".join(lines) + "\n"


class ConfigInvalid(FlipbackError):
    """A release's configuration that cannot run; retrying the same input fails the same."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            f"invalid configuration ({len(problems)} problem{'s' if len(problems) != 1 else ''}), "
            "nothing was changed on any host; fix it and run again (retrying as-is fails the "
            "same way): " + "; ".join(problems),
            retryable=False,
            problems=problems,
        )


def resolve_release(
    *,
    service: str,
    user: str,
    app: str,
    factory: bool,
    workers: int,
    port: int,
    env: Any,
    build_id: str,
    home: str,
    nginx: Mapping[str, Any] | None = None,
    access_log: bool = False,
    commands: Mapping[str, Any] | None = None,
    processes: Any = None,
    process_start_seconds: Any = DEFAULT_PROCESS_START_SECONDS,
) -> dict[str, Any]:
    """The release a build becomes with this configuration: its id and what its manifest
    records. Env values are checked (never returned, never echoed)."""
    where = f"flipback_services ({service})"
    clean, problems = env_problems(where, env)
    if not isinstance(app, str) or not APP_RE.fullmatch(app):
        problems.append(
            f"{where}.app: got {app!r}, expected 'module:attribute' or 'module:factory()'"
        )
    if not BUILD_ID_RE.fullmatch(build_id or ""):
        problems.append(f"build_id: got {build_id!r}, expected a build id of release_build")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"{where}.port: got {port!r}, expected an integer 1-65535")
    processes = normalize_processes(where, processes, problems)
    start_seconds = check_process_start_seconds(where, process_start_seconds, problems)
    if problems:
        raise ConfigInvalid(problems)
    config = run_config(
        service=service,
        home=home,
        user=user,
        app=app,
        factory=factory,
        workers=workers,
        port=port,
        env=clean,
        nginx=nginx,
        access_log=access_log,
        commands=commands,
        processes=processes,
        start_seconds=start_seconds,
    )
    return {"release": release_id_for(build_id, config), "config": config, "build_id": build_id}


def staged_files(
    *,
    service: str,
    home: str,
    release: str,
    build_id: str,
    config: Mapping[str, Any],
    env_text: str,
) -> tuple[dict[str, str], str]:
    """(unit name -> text of each of its units, env file text) of a release, after
    checking on the host, the same way as the controller did, that they are what the
    release id stands for."""
    values = parse_env_file(env_text)
    clean, problems = env_problems(f"flipback_services ({service})", values)
    if problems:
        raise ConfigInvalid(problems)
    if env_file_text(clean) != env_text:
        raise ConfigInvalid(
            ["env_file: got text that is not an env file written by flipback_env_file"]
        )
    expected = resolve_release(
        service=service,
        user=str(config.get("user")),
        app=str(config.get("app")),
        factory=bool(config.get("factory")),
        workers=int(config.get("workers") or 0),
        port=int(config.get("port") or 0),
        env=clean,
        build_id=build_id,
        home=home,
        nginx=config.get("nginx") if isinstance(config.get("nginx"), Mapping) else None,
        access_log=bool(config.get("access_log")),
        commands=config.get("commands") if isinstance(config.get("commands"), Mapping) else None,
        processes=config.get("processes"),
        process_start_seconds=config.get("process_start_seconds", DEFAULT_PROCESS_START_SECONDS),
    )
    if expected["release"] != release or expected["config"] != dict(config):
        raise ConfigInvalid(
            [
                f"release: got {release!r} for this build and configuration, expected "
                f"{expected['release']!r} (the configuration changed since the release id "
                "was worked out; run the deploy again)"
            ]
        )
    units = release_unit_texts(
        service=service, home=home, release=release, config=expected["config"]
    )
    return units, env_text


# Arguments of release_config, shared by the module and the controller action.
CONFIG_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "service": {"type": "dict", "required": True},
    "env": {"type": "raw", "default": {}, "no_log": True},
    "build_id": {"type": "str", "required": True},
    "root": {"type": "str", "default": DEFAULT_ROOT},
}


def resolve_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """resolve_release on release_config's parameters (`service`: a checked definition)."""
    svc = params["service"]
    name = str(svc.get("name", ""))
    result = resolve_release(
        service=name,
        user=str(svc.get("user", name)),
        app=svc.get("app"),
        factory=bool(svc.get("factory", False)),
        workers=int(svc.get("workers", 1)),
        port=int(svc.get("port", 0)),
        env=params["env"],
        build_id=params["build_id"],
        home=service_home(params["root"], name),
        nginx=svc.get("nginx") or None,
        access_log=bool(svc.get("access_log", False)),
        commands=svc.get("commands") or None,
        processes=svc.get("processes") or None,
        process_start_seconds=svc.get("process_start_seconds", DEFAULT_PROCESS_START_SECONDS),
    )
    return {"service": name, **result}
