"""Service definitions and command-line selectors, checked before anything changes.

Every problem is reported at once, each naming the field, the value received and
what was expected; none of them is fixed by retrying the same command.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.module_utils.flipback_command import normalize_commands
from ansible.module_utils.flipback_common import redact_url
from ansible.module_utils.flipback_health import HEALTH_PATH_EXPECTED, valid_health_path
from ansible.module_utils.flipback_request import DEFAULT_UNHEALTHY_ANSWERS, RELEASE_IN
from ansible.module_utils.flipback_runtime import (
    APP_RE,
    DEFAULT_PROCESS_START_SECONDS,
    NGINX_DEFAULTS,
    RELEASE_ID_RE,
    SERVICE_NAME_EXPECTED,
    SERVICE_NAME_RE,
    app_and_factory,
    check_process_start_seconds,
    env_problems,
    normalize_processes,
)

NAME_RE = SERVICE_NAME_RE
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@^~{}-]{0,199}$")
SUBDIR_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+$")
# Ports a service must not take on a flipback host: sshd, and nginx's default site.
RESERVED_PORTS = {22: "sshd", 80: "nginx's default site"}
# Names systemd, the system or Debian already use; a service user must be its own.
RESERVED_USERS = {"root", "daemon", "bin", "sys", "nobody", "www-data", "systemd-network"}

DEFAULTS: dict[str, Any] = {
    "subdir": "",
    "ref": "HEAD",
    "workers": 1,
    "factory": False,
    "env": {},
    "keep_releases": 5,
    "health": {},
    # Take an existing account as `user` (flipback refuses one it did not create).
    "adopt_user": False,
    # How nginx serves the service (NGINX_DEFAULTS) and whether uvicorn logs requests.
    "nginx": {},
    "access_log": False,
    # Commands of each release at named points of a deploy (flipback_command.POINTS).
    "commands": {},
    # Processes of each release beside the web app: name -> command line, each its own
    # unit, up while the release is live; each must stay up this long after its start.
    "processes": {},
    "process_start_seconds": DEFAULT_PROCESS_START_SECONDS,
    # The requirements file the build takes dependencies from ("": uv.lock, else
    # requirements.txt, else pyproject.toml [project] dependencies).
    "requirements": "",
}
HEALTH_DEFAULTS: dict[str, Any] = {
    "path": "/health",
    "expect_status": [200],
    # Nothing is required of the body unless asked: the release is proven by the
    # X-Flipback-Release header the instance's uvicorn adds (release_in: header).
    "expect_json": {},
    "release_in": "header",
    # The Host the gates ask with: the name the app expects (Django's ALLOWED_HOSTS).
    "host": "localhost",
    "timeout": 30,
    # A gate stops waiting after this many unhealthy answers in a row (502, 503 and 504
    # say "starting" and are waited for until the timeout).
    "unhealthy_answers": DEFAULT_UNHEALTHY_ANSWERS,
}
# A Host header: a DNS name or IPv4 address, optionally with a port.
HEALTH_HOST_RE = re.compile(
    r"(?=.{1,253}(?::|$))[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?(?::[1-9][0-9]{0,4})?"
)
KNOWN_KEYS = {"name", "source", "app", "port", "user", *DEFAULTS}
HEALTH_KEYS = set(HEALTH_DEFAULTS)
SECRET_MASK = "(value not shown)"


# Arguments of service_config, shared by the module and the controller action.
# Selectors are None when not given on the command line; given empty, they are refused
# (an empty -e ref= must not quietly mean "each service's own ref").
ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "services": {"type": "raw", "required": True},
    "service": {"type": "str"},
    "ref": {"type": "str"},
    "source": {"type": "str"},
    "release": {"type": "str"},
    "steps": {"type": "raw"},
    "canary": {"type": "raw"},
    "batch": {"type": "raw"},
    "lock_wait": {"type": "raw"},
}
BATCH_RE = re.compile(r"[1-9][0-9]{0,5}|(?:[1-9][0-9]?|100)%")
COUNT_RE = re.compile(r"0|[1-9][0-9]{0,5}")
WAIT_RE = re.compile(r"(?:0|[1-9][0-9]{0,4})(?:\.[0-9]{1,3})?")
MAX_LOCK_WAIT = 3600


class ConfigError(Exception):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)
        self.msg = (
            f"invalid input ({len(problems)} problem{'s' if len(problems) != 1 else ''}), "
            "nothing was changed on any host; fix it and run again (retrying as-is "
            "fails the same way): " + "; ".join(problems)
        )
        self.retryable = False


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return None


def _problem(field: str, value: Any, expected: str) -> str:
    return f"{field}: got {value!r}, expected {expected}"


def redact_env(value: Any) -> Any:
    """`value` with every `env` value hidden and the credentials of every `source` URL
    taken out, for echoing definitions that may hold secrets."""
    if isinstance(value, Mapping):
        return {
            key: (
                ({name: SECRET_MASK for name in item} if isinstance(item, Mapping) else SECRET_MASK)
                if key == "env"
                else redact_url(item)
                if key == "source" and isinstance(item, str)
                else redact_env(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_env(item) for item in value]
    return value


def normalize_service(index: int, raw: Any, problems: list[str]) -> dict[str, Any] | None:
    where = f"flipback_services[{index}]"
    if not isinstance(raw, Mapping):
        problems.append(
            _problem(where, redact_env(raw), "a mapping with name, source, app and port")
        )
        return None
    svc: dict[str, Any] = {**DEFAULTS, **raw}
    name = svc.get("name")
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        where = f"flipback_services[{index}] ({name})"
    else:
        problems.append(
            _problem(
                f"{where}.name",
                name,
                f"{SERVICE_NAME_EXPECTED} (no '/', '..' or spaces)",
            )
        )
    unknown = sorted(set(svc) - KNOWN_KEYS)
    if unknown:
        problems.append(_problem(f"{where}", unknown, f"only the keys {sorted(KNOWN_KEYS)}"))
    source = svc.get("source")
    if not isinstance(source, str) or not source.strip() or source.startswith("-"):
        # git would read a leading '-' as an option.
        problems.append(
            _problem(
                f"{where}.source",
                redact_url(source) if isinstance(source, str) else source,
                "a git repository path or URL (not starting with '-')",
            )
        )
    subdir = svc.get("subdir")
    if not isinstance(subdir, str) or (
        subdir.strip("/")
        and (
            not SUBDIR_RE.fullmatch(subdir.strip("/"))
            # release_build refuses '.' as well: catch it here, before anything is built.
            or any(part in (".", "..") for part in subdir.split("/"))
        )
    ):
        problems.append(
            _problem(f"{where}.subdir", subdir, "a relative path without '.' or '..' parts")
        )
    else:
        svc["subdir"] = subdir.strip("/")
    requirements = svc.get("requirements")
    if not isinstance(requirements, str) or (
        requirements
        and (
            not SUBDIR_RE.fullmatch(requirements)
            or any(part in (".", "..") for part in requirements.split("/"))
        )
    ):
        problems.append(
            _problem(
                f"{where}.requirements",
                requirements,
                "a requirements file as a relative path inside the service's directory "
                "(e.g. requirements/prod.txt), without '.' or '..' parts",
            )
        )
    ref = svc.get("ref")
    if not isinstance(ref, str) or not REF_RE.fullmatch(ref) or ".." in ref:
        problems.append(_problem(f"{where}.ref", ref, "a branch, tag or commit"))
    app = svc.get("app")
    if not isinstance(app, str) or not APP_RE.fullmatch(app):
        problems.append(
            _problem(
                f"{where}.app",
                app,
                "'module:attribute' (e.g. 'app:app') or a factory 'module:create_app()'",
            )
        )
    factory = svc.get("factory")
    if not isinstance(factory, bool):
        problems.append(_problem(f"{where}.factory", factory, "true or false"))
    elif isinstance(app, str) and APP_RE.fullmatch(app):
        svc["app"], svc["factory"] = app_and_factory(app, factory)
    port = _int(svc.get("port"))
    if port is None or not 1 <= port <= 65535:
        problems.append(_problem(f"{where}.port", svc.get("port"), "an integer 1-65535"))
    elif port in RESERVED_PORTS:
        problems.append(
            _problem(f"{where}.port", port, f"a port not used by {RESERVED_PORTS[port]}")
        )
    else:
        svc["port"] = port
    workers = _int(svc.get("workers"))
    if workers is None or not 1 <= workers <= 64:
        problems.append(_problem(f"{where}.workers", svc.get("workers"), "an integer 1-64"))
    else:
        svc["workers"] = workers
    keep = _int(svc.get("keep_releases"))
    if keep is None or keep < 2:
        problems.append(
            _problem(
                f"{where}.keep_releases",
                svc.get("keep_releases"),
                "an integer >= 2 (the current and the previous good release)",
            )
        )
    else:
        svc["keep_releases"] = keep
    user = svc.get("user", name)
    if not isinstance(user, str) or not USER_RE.fullmatch(user) or user in RESERVED_USERS:
        problems.append(
            _problem(
                f"{where}.user", user, "a dedicated system user name (not root or a system account)"
            )
        )
    else:
        svc["user"] = user
    adopt = svc.get("adopt_user")
    if not isinstance(adopt, bool):
        problems.append(
            _problem(
                f"{where}.adopt_user",
                adopt,
                "true or false (true: use an existing account made for this service)",
            )
        )
    if not isinstance(svc.get("access_log"), bool):
        problems.append(_problem(f"{where}.access_log", svc.get("access_log"), "true or false"))
    svc["env"] = _check_env(where, svc.get("env"), problems)
    svc["commands"] = normalize_commands(where, svc.get("commands"), problems)
    svc["processes"] = normalize_processes(where, svc.get("processes"), problems)
    svc["process_start_seconds"] = check_process_start_seconds(
        where, svc.get("process_start_seconds"), problems
    )
    svc["nginx"] = _check_nginx(where, svc.get("nginx"), problems)
    health = svc.get("health")
    names = svc["nginx"]["server_name"]
    if names and (health is None or (isinstance(health, Mapping) and "host" not in health)):
        # The gates ask with the name the site answers to (and the app expects).
        health = {**(health or {}), "host": names[0].lstrip("*.")}
    svc["health"] = _check_health(where, health, problems)
    return svc


# A server name of the site: a host name, optionally with a leading '*.' wildcard.
SERVER_NAME_RE = re.compile(
    r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# An nginx size: bytes, or k/m/g; 0 lifts the limit.
SIZE_RE = re.compile(r"(?:0|[1-9][0-9]{0,9})[kKmMgG]?")
# A static URL prefix: '/', path characters, ending in '/'.
STATIC_PREFIX_RE = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*")
STATIC_DIR_RE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*/?")
# A TLS file on the host, as nginx takes it bare in a directive: an absolute path of
# characters that cannot end the directive or start another (no space, ';', quote, '{}',
# '$', '#', newline).
TLS_PATH_RE = re.compile(r"(?:/[A-Za-z0-9_.+@=,:%~-]+)+")
TLS_KEYS = ("certificate", "key")


def _check_nginx(where: str, nginx: Any, problems: list[str]) -> dict[str, Any]:
    if nginx is None:
        nginx = {}
    if not isinstance(nginx, Mapping):
        problems.append(_problem(f"{where}.nginx", nginx, "a mapping"))
        return dict(NGINX_DEFAULTS)
    merged = {**NGINX_DEFAULTS, **nginx}
    unknown = sorted(set(merged) - set(NGINX_DEFAULTS))
    if unknown:
        problems.append(_problem(f"{where}.nginx", unknown, f"only {sorted(NGINX_DEFAULTS)}"))
    names = merged["server_name"]
    if isinstance(names, str):
        names = [names]
    if (
        not isinstance(names, list)
        or len(names) > 16
        or not all(isinstance(n, str) and SERVER_NAME_RE.fullmatch(n) for n in names)
    ):
        problems.append(
            _problem(
                f"{where}.nginx.server_name",
                merged["server_name"],
                "a host name or a list of up to 16 (a leading '*.' allowed)",
            )
        )
        # Refused: nothing else (the gates' Host) is derived from it.
        merged["server_name"] = []
    else:
        merged["server_name"] = names
    timeout = _int(merged["read_timeout"])
    if timeout is None or not 1 <= timeout <= 86400:
        problems.append(
            _problem(f"{where}.nginx.read_timeout", merged["read_timeout"], "seconds, 1-86400")
        )
    else:
        merged["read_timeout"] = timeout
    size = merged["max_body"]
    if isinstance(size, int) and not isinstance(size, bool):
        size = str(size)
    if not isinstance(size, str) or not SIZE_RE.fullmatch(size):
        problems.append(
            _problem(
                f"{where}.nginx.max_body",
                merged["max_body"],
                "an nginx size: bytes, or with k, m or g (e.g. 10m); 0 for no limit",
            )
        )
    else:
        merged["max_body"] = size
    static = merged["static"]
    if not isinstance(static, Mapping) or not all(
        isinstance(prefix, str)
        and STATIC_PREFIX_RE.fullmatch(prefix)
        and prefix != "/"
        and isinstance(directory, str)
        and STATIC_DIR_RE.fullmatch(directory)
        and not any(part in (".", "..") for part in directory.split("/"))
        and directory.split("/")[0] not in ("shared", "venv", ".flipback")
        for prefix, directory in static.items()
    ):
        problems.append(
            _problem(
                f"{where}.nginx.static",
                static,
                "a mapping of URL prefix ('/static/': starts and ends with '/', not '/ "
                "alone') to a directory in the release ('static': before_switch commands "
                "such as collectstatic fill it), without '.' or '..'; not under shared/ "
                "(closed to nginx), venv/ or .flipback/",
            )
        )
    else:
        merged["static"] = dict(static)
    merged["tls"] = _check_tls(where, merged["tls"], problems)
    return merged


def _check_tls(where: str, tls: Any, problems: list[str]) -> dict[str, str]:
    """{} (plain HTTP) or {certificate, key}: absolute, normalized paths on the host."""
    if tls is None or (isinstance(tls, Mapping) and not tls):
        return {}
    expected = (
        "a mapping with exactly certificate and key, each an absolute normalized path on "
        "the host (letters, digits and _.+@=,:%~- between '/'; no spaces, quotes, ';', "
        "'{}', '$', '#' or '..'), e.g. {certificate: /etc/ssl/certs/shop.pem, key: "
        "/etc/ssl/private/shop.key}"
    )
    if not isinstance(tls, Mapping) or set(tls) != set(TLS_KEYS):
        problems.append(_problem(f"{where}.nginx.tls", tls, expected))
        return {}
    clean: dict[str, str] = {}
    for key in TLS_KEYS:
        path = tls[key]
        if (
            not isinstance(path, str)
            or not TLS_PATH_RE.fullmatch(path)
            or os.path.normpath(path) != path
        ):
            problems.append(_problem(f"{where}.nginx.tls.{key}", path, expected))
        else:
            clean[key] = path
    return clean if len(clean) == len(TLS_KEYS) else {}


def _check_env(where: str, env: Any, problems: list[str]) -> dict[str, str]:
    clean, found = env_problems(where, env)
    problems.extend(found)
    return clean


def _check_health(where: str, health: Any, problems: list[str]) -> dict[str, Any]:
    if health is None:
        health = {}
    if not isinstance(health, Mapping):
        problems.append(_problem(f"{where}.health", health, "a mapping"))
        return dict(HEALTH_DEFAULTS)
    merged = {**HEALTH_DEFAULTS, **health}
    unknown = sorted(set(merged) - HEALTH_KEYS)
    if unknown:
        problems.append(_problem(f"{where}.health", unknown, f"only {sorted(HEALTH_KEYS)}"))
    path = merged["path"]
    if not valid_health_path(path):
        problems.append(_problem(f"{where}.health.path", path, HEALTH_PATH_EXPECTED))
    status = merged["expect_status"]
    if isinstance(status, int) and not isinstance(status, bool):
        status = [status]
    if (
        not isinstance(status, list)
        or not status
        or not all(_int(s) is not None and 100 <= int(s) <= 599 for s in status)
    ):
        problems.append(
            _problem(
                f"{where}.health.expect_status",
                merged["expect_status"],
                "HTTP status codes 100-599",
            )
        )
    else:
        merged["expect_status"] = [int(s) for s in status]
    if merged["expect_json"] is None:
        merged["expect_json"] = {}
    if not isinstance(merged["expect_json"], Mapping):
        problems.append(_problem(f"{where}.health.expect_json", merged["expect_json"], "a mapping"))
    if merged["release_in"] not in RELEASE_IN:
        problems.append(
            _problem(
                f"{where}.health.release_in",
                merged["release_in"],
                "header (the X-Flipback-Release header uvicorn adds: any app) or json (the "
                "app's JSON field release echoes FLIPBACK_RELEASE)",
            )
        )
    host = merged["host"]
    if not isinstance(host, str) or not HEALTH_HOST_RE.fullmatch(host):
        problems.append(
            _problem(
                f"{where}.health.host",
                host,
                "a host name or IPv4 address, optionally with :port (the Host header the "
                "gates send, e.g. the name in Django's ALLOWED_HOSTS)",
            )
        )
    timeout = _int(merged["timeout"])
    if timeout is None or not 1 <= timeout <= 600:
        problems.append(_problem(f"{where}.health.timeout", merged["timeout"], "seconds, 1-600"))
    else:
        merged["timeout"] = timeout
    unhealthy = _int(merged["unhealthy_answers"])
    if unhealthy is None or not 1 <= unhealthy <= 1000:
        problems.append(
            _problem(
                f"{where}.health.unhealthy_answers",
                merged["unhealthy_answers"],
                "a count, 1-1000 (unhealthy answers in a row after which a gate gives up)",
            )
        )
    else:
        merged["unhealthy_answers"] = unhealthy
    return merged


def _given_empty(name: str, value: Any, expected: str, problems: list[str]) -> None:
    if value is not None and not str(value).strip():
        problems.append(
            _problem(name, value, f"{expected}, or no -e {name}= at all for the default")
        )


def _selector(value: Any) -> str | None:
    """A command-line value as text; None when not given (or given empty: refused apart)."""
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def check_request(
    services: Any,
    *,
    service: str | None = None,
    ref: str | None = None,
    source: str | None = None,
    release: str | None = None,
    steps: Any = None,
    canary: Any = None,
    batch: Any = None,
    lock_wait: Any = None,
) -> dict[str, Any]:
    """Validate every definition and the selectors; return the selected services.

    Selectors are None when not given; given but empty, each is refused, as is a value
    that is not what it must be (a count, a batch size, a wait in seconds)."""
    problems: list[str] = []
    _given_empty("service", service, "the name of a defined service", problems)
    _given_empty("ref", ref, "a branch, tag or commit", problems)
    _given_empty("source", source, "a git repository path or URL", problems)
    _given_empty("release", release, "a release id like 20261129T141500-3f2a9c1d0e", problems)
    service, ref, release = _selector(service), _selector(ref), _selector(release)
    source = _selector(source)
    canary_value = _count("canary", canary, 1, "a number of hosts >= 0 (0: no canary)", problems)
    batch_value = "100%"
    if batch is not None:
        if isinstance(batch, bool) or not BATCH_RE.fullmatch(str(batch)):
            problems.append(
                _problem("batch", batch, "a number of hosts >= 1, or a percentage 1%-100%")
            )
        else:
            batch_value = str(batch)
    wait_value = 0.0
    if lock_wait is not None:
        text = str(lock_wait)
        if (
            isinstance(lock_wait, bool)
            or not WAIT_RE.fullmatch(text)
            or float(text) > MAX_LOCK_WAIT
        ):
            problems.append(
                _problem(
                    "lock_wait",
                    lock_wait,
                    f"seconds to wait for the deploy lock, 0-{MAX_LOCK_WAIT} (fractions allowed)",
                )
            )
        else:
            wait_value = float(text)
    if not isinstance(services, list) or not services:
        raise ConfigError(
            [
                _problem(
                    "flipback_services",
                    redact_env(services),
                    "a non-empty list of service definitions",
                )
            ]
        )
    normalized = [normalize_service(i, raw, problems) for i, raw in enumerate(services)]
    valid = [s for s in normalized if s is not None]
    _check_unique(valid, "name", problems)
    _check_unique(valid, "port", problems)
    _check_unique(valid, "user", problems)

    names = [s.get("name") for s in valid]
    selected = valid
    if service:
        if service not in names:
            problems.append(_problem("service", service, f"one of the defined services {names}"))
        selected = [s for s in valid if s.get("name") == service]
    if ref:
        if not REF_RE.fullmatch(ref) or ".." in ref:
            problems.append(_problem("ref", ref, "a branch, tag or commit"))
        selected = [{**s, "ref": ref} for s in selected]
    if source:
        if source.startswith("-"):
            # git would read it as an option.
            problems.append(
                _problem("source", redact_url(source), "a repository path or URL, not an option")
            )
        selected = [{**s, "source": source} for s in selected]
    if release and not RELEASE_ID_RE.fullmatch(release):
        problems.append(
            _problem("release", release, "a release id like 20261129T141500-3f2a9c1d0e")
        )
    if release and len(selected) != 1:
        problems.append(
            _problem(
                "release",
                release,
                "one service chosen with -e service=<name>: a release id belongs to one service",
            )
        )
    steps_value = None
    if steps is not None:
        steps_value = _int(steps) if COUNT_RE.fullmatch(str(steps).strip()) else None
        if steps_value is None or steps_value < 1:
            problems.append(_problem("steps", steps, "an integer >= 1"))
            steps_value = None
    if release and steps_value is not None:
        problems.append(_problem("release/steps", [release, steps], "one of the two, not both"))
    if problems:
        raise ConfigError(problems)
    return {
        "services": selected,
        "names": [s["name"] for s in selected],
        "release": release or "",
        "steps": steps_value,
        "canary": canary_value,
        "batch": batch_value,
        "lock_wait": wait_value,
    }


def _count(name: str, value: Any, default: int, expected: str, problems: list[str]) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not COUNT_RE.fullmatch(str(value)):
        problems.append(_problem(name, value, expected))
        return default
    return int(str(value))


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """check_request on the parameters of ARGUMENT_SPEC, as the service_config module
    and action return it. Environment values may be secrets: they are checked but never
    returned (only their names, `env_names`), so they cannot reach the output; the role
    sends them from the definitions in a no_log argument. A `source` comes back without
    its credentials."""
    result = check_request(
        params["services"],
        service=params["service"],
        ref=params["ref"],
        source=params["source"],
        release=params["release"],
        steps=params["steps"],
        canary=params["canary"],
        batch=params["batch"],
        lock_wait=params["lock_wait"],
    )
    for svc in result["services"]:
        svc["env_names"] = sorted(svc.pop("env"))
        # Credentials in a source URL stay in the controller's memory: the build gets the
        # URL from the definitions, results and output only ever see it without them.
        svc["source"] = redact_url(svc["source"])
    return result


def invocation(params: Mapping[str, Any]) -> dict[str, Any]:
    """The `invocation` Ansible echoes (shown with -vvv, kept in a registered result),
    with the env values in it hidden."""
    return {
        "module_args": {
            **params,
            "services": redact_env(params["services"]),
            "source": redact_url(params["source"] or ""),
        }
    }


def _check_unique(services: Sequence[Mapping[str, Any]], key: str, problems: list[str]) -> None:
    seen: dict[Any, str] = {}
    for svc in services:
        value = svc.get(key)
        if value is None or isinstance(value, (dict, list)):
            continue
        if value in seen:
            problems.append(
                f"flipback_services ({svc.get('name')}).{key}: got {value!r}, already used "
                f"by {seen[value]}; expected each service to have its own {key}"
            )
        else:
            seen[value] = str(svc.get("name"))


# Seconds a switch may take beyond its two gates' deadlines (start, flip, nginx reload,
# retire): generous, as a hold that is too long only delays the takeover of a lock whose
# run died on another controller.
SWITCH_SLACK = 30


def serial_batches(hosts: int, canary: int, batch: str) -> list[int]:
    """The batch sizes the deploy's switch play runs in: `serial: [canary, batch]` (the
    canary left out when 0) split as Ansible splits it: a percentage is of all hosts,
    rounded down, at least 1; the last entry repeats until every host is in a batch."""
    serial = ([canary] if canary > 0 else []) + [batch]
    sizes: list[int] = []
    left, index = hosts, 0
    while left > 0:
        value = serial[index]
        if isinstance(value, str) and value.endswith("%"):
            size = int(int(value[:-1]) / 100.0 * hosts) or 1
        else:
            size = int(value)
        sizes.append(min(size, left))
        left -= sizes[-1]
        index = min(index + 1, len(serial) - 1)
    return sizes


def lock_hold(
    *,
    hosts: int,
    canary: int,
    batch: str,
    forks: int,
    switch_seconds: Sequence[float],
    stale_after: int,
) -> int:
    """Seconds a deploy's lock may go without a refresh: the `stale_after` its staging
    declares on every host, so that no host's lock turns stale while it waits for its
    batch.

    A host is refreshed when it is prepared and when it switches. In between it waits
    for the staging of every host (`stale_after` bounds one step of one host; the steps
    run `forks` hosts at a time) and for every batch before its own, each of which takes
    at most, per service, its switch's worst case (`switch_seconds`) for every `forks`
    hosts of the batch. Counting every batch covers the last host, and the time after
    its switch until the run's end (its restore, if the rollout stops).
    """
    rounds = -(-hosts // max(forks, 1))
    staging = stale_after * rounds
    switching = sum(
        -(-size // max(forks, 1)) * sum(switch_seconds)
        for size in serial_batches(hosts, canary, batch)
    )
    return int(staging + switching)


def switch_seconds(service: Mapping[str, Any], drain: float) -> float:
    """A switch's worst case for one service: both gates to their deadline, the drain
    and SWITCH_SLACK."""
    return 2 * service["health"]["timeout"] + drain + SWITCH_SLACK
