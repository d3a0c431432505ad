"""Read-only reports: what each host runs (status) and what happened there (history).

On a host, `host_status` reads every selected service in one module call (one
round trip): its releases and their statuses (from `scan`, so history decides),
the systemd state of each release's instance (one `systemctl show` for every
unit of every service), one probe of its public port, and the holder of its
deploy lock. `host_history` reads the last events of each service's history.
Neither writes anything, and a service that is not on the host yet is reported
empty, not as an error: a status report must work on a fleet that is half
deployed. A service whose files cannot be read is reported with its `error`,
and the other services are still reported.

On the controller, `status_report` and `history_report` turn the per-host
results into rows and a fixed-width table.

The command runner (systemctl) and the probe are passed in, so the logic is
unit-tested without systemd or a real service. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.module_utils.flipback_health import (
    HEALTH_PATH_EXPECTED,
    Expect,
    Target,
    attempt,
    valid_health_path,
)
from ansible.module_utils.flipback_lock import DEFAULT_LOCK_DIR, LOCK, read_holder
from ansible.module_utils.flipback_release import (
    ReleaseError,
    fleet_build,
    read_history,
    read_manifest,
    recorded_config,
    scan,
    validate_positive,
    validate_service,
)
from ansible.module_utils.flipback_runtime import (
    DEFAULT_ROOT,
    config_changes,
    instance_unit,
    process_unit,
    processes_of,
    public_tls,
    service_home,
)

# (argv) -> (rc, stdout, stderr), as AnsibleModule.run_command returns them.
Runner = Callable[[list[str]], tuple[int, str, str]]
Probe = Callable[[int, Mapping[str, Any], float, bool], dict]

DEFAULT_PROBE_TIMEOUT = 3.0
DEFAULT_LAST = 20
UNIT_PROPERTIES = ("Id", "ActiveState", "SubState", "UnitFileState")
HISTORY_FIELDS = ("at", "release", "event", "by", "from", "note")
# Order of the status counts in the report's releases column.
STATUS_ORDER = ("active", "good", "staged", "failed", "rolled_back", "incomplete")
NOTE_WIDTH = 48
ERROR_WIDTH = 32


# =========================================================================== inputs


def validate_services(services: object) -> list[dict]:
    """The services to report: name, port and health (path, expect_status, expect_json).

    Takes the `services` that service_config returns (extra keys are ignored).
    """
    if not isinstance(services, list):
        raise ReleaseError(
            f"services: got {services!r}, expected a list of service definitions "
            "(the services returned by service_config)",
            field="services",
            value=services,
        )
    clean = []
    seen: set[str] = set()
    for index, raw in enumerate(services):
        where = f"services[{index}]"
        if not isinstance(raw, Mapping):
            raise ReleaseError(
                f"{where}: got {raw!r}, expected a mapping with name, port and health",
                field=where,
                value=raw,
            )
        try:
            name = validate_service(raw.get("name"))
        except ReleaseError as exc:
            exc.msg = f"{where}.name: {exc.msg.removeprefix('service: ')}"
            exc.details["field"] = f"{where}.name"
            raise
        if name in seen:
            raise ReleaseError(
                f"{where}.name: got {name!r} twice, expected each service once",
                field=f"{where}.name",
                value=name,
            )
        seen.add(name)
        port = raw.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ReleaseError(
                f"{where}.port: got {port!r}, expected a TCP port from 1 to 65535",
                field=f"{where}.port",
                value=port,
            )
        clean.append({"name": name, "port": port, "health": _health(where, raw.get("health"))})
    return clean


def _health(where: str, health: object) -> dict:
    health = {} if health is None else health
    if not isinstance(health, Mapping):
        raise ReleaseError(
            f"{where}.health: got {health!r}, expected a mapping (path, expect_status, "
            "expect_json)",
            field=f"{where}.health",
            value=health,
        )
    path = health.get("path", "/health")
    if not valid_health_path(path):
        raise ReleaseError(
            f"{where}.health.path: got {path!r}, expected {HEALTH_PATH_EXPECTED}",
            field=f"{where}.health.path",
            value=path,
        )
    status = health.get("expect_status", [200])
    if isinstance(status, int) and not isinstance(status, bool):
        status = [status]
    if (
        not isinstance(status, list)
        or not status
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in status)
    ):
        raise ReleaseError(
            f"{where}.health.expect_status: got {status!r}, expected a list of HTTP statuses",
            field=f"{where}.health.expect_status",
            value=status,
        )
    expect_json = health.get("expect_json", {})
    if not isinstance(expect_json, Mapping):
        raise ReleaseError(
            f"{where}.health.expect_json: got {expect_json!r}, expected a mapping",
            field=f"{where}.health.expect_json",
            value=expect_json,
        )
    return {"path": path, "expect_status": status, "expect_json": dict(expect_json)}


def validate_names(names: object) -> list[str]:
    if not isinstance(names, list):
        raise ReleaseError(
            f"services: got {names!r}, expected a list of service names",
            field="services",
            value=names,
        )
    return [validate_service(name) for name in names]


def validate_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 60:
        raise ReleaseError(
            f"probe_timeout: got {value!r}, expected seconds above 0, at most 60",
            field="probe_timeout",
            value=value,
        )
    return float(value)


# =========================================================================== host: status


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show` output of several units (blocks split by blank lines), by Id."""
    units: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        props = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def unit_states(
    run: Runner, systemctl: str | None, units: Sequence[str]
) -> tuple[dict[str, dict[str, str]], str | None]:
    """(properties by unit, error): one `systemctl show` call for every unit."""
    if not units:
        return {}, None
    if systemctl is None:
        return {}, "systemctl not found on the host"
    argv = [systemctl, "show", "--no-pager", f"--property={','.join(UNIT_PROPERTIES)}", "--"]
    rc, out, err = run([*argv, *units])
    if rc != 0:
        return {}, f"systemctl show exited {rc}: {(err or out).strip()[:200]}"
    return parse_systemctl_show(out), None


def probe_once(port: int, health: Mapping[str, Any], timeout: float, tls: bool = False) -> dict:
    """One GET of 127.0.0.1:<port><path> (HTTPS, unverified, when the live release's
    nginx.tls is set), no retry: a report shows now, it does not wait."""
    started = time.monotonic()
    obs = attempt(
        Target(
            url_path=health["path"],
            port=port,
            host_header=health.get("host", "localhost"),
            tls=tls,
        ),
        Expect(status=tuple(health["expect_status"]), json=dict(health["expect_json"] or {})),
        timeout,
    )
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return {
        "ok": obs.ok,
        "status": obs.status,
        # Who answered: the release header uvicorn adds, else the app's JSON `release`.
        "release": obs.release,
        "latency_ms": elapsed_ms if obs.status is not None else None,
        "error": obs.error,
    }


def _last_event(event: Mapping[str, Any] | None) -> dict | None:
    if event is None:
        return None
    last = {"event": event["event"], "at": event.get("at")}
    for key in ("by", "note"):
        if event.get(key):
            last[key] = event[key]
    return last


def _unit_state(unit: str, units: Mapping[str, Mapping[str, str]]) -> dict:
    props = units.get(unit, {})
    return {
        "unit": unit,
        "active_state": props.get("ActiveState") or None,
        "sub_state": props.get("SubState") or None,
        "unit_file_state": props.get("UnitFileState") or None,
    }


def _instance(
    service: str, release: Mapping[str, Any], units: Mapping[str, Mapping[str, str]]
) -> dict:
    """The state of a release's web instance, and of each of its processes."""
    return {
        "release": release["id"],
        **_unit_state(instance_unit(service, release["id"]), units),
        "processes": [
            {"name": name, **_unit_state(process_unit(service, name, release["id"]), units)}
            for name in release.get("processes") or []
        ],
    }


def host_status(
    services: Sequence[Mapping[str, Any]],
    *,
    run: Runner,
    systemctl: str | None,
    root_parent: str = DEFAULT_ROOT,
    lock_dir: str = DEFAULT_LOCK_DIR,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    now: float | None = None,
    probe: Probe = probe_once,
) -> list[dict]:
    """The status of every service on this host, in the order given."""
    services = validate_services(list(services))
    probe_timeout = validate_timeout(probe_timeout)
    now = time.time() if now is None else now
    reports = []
    for svc in services:
        name = svc["name"]
        root = service_home(root_parent, name)
        report: dict[str, Any] = {
            "name": name,
            "port": svc["port"],
            "deployed": os.path.isdir(root),
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
        errors = []
        try:
            state = scan(root, name, now)
        except ReleaseError as exc:
            errors.append(exc.msg)
        else:
            report["current"] = state.current
            report["previous_good"] = next(iter(state.previous_good()), None)
            report["config"], report["config_changes"] = _config(root, state)
            report["build"] = _build(root, state.current)
            report["releases"] = [
                {
                    "id": rel.id,
                    "status": rel.status,
                    "age_seconds": rel.age_seconds,
                    "last_event": _last_event(rel.last_event),
                    "processes": _processes(root, rel.id),
                }
                for rel in (state.releases[rid] for rid in sorted(state.releases))
            ]
        try:
            report["lock"] = read_holder(os.path.join(lock_dir, name, LOCK))
        except ReleaseError as exc:
            errors.append(exc.msg)
        if report["deployed"]:
            # Nothing deployed means nothing of this service listens on the port: a probe
            # would only meet whatever else does.
            report["health"] = probe(
                svc["port"], svc["health"], probe_timeout, public_tls(report["config"])
            )
        report["error"] = "; ".join(errors) or None
        reports.append(report)
    # One systemctl call for the instances of every service: a round trip per unit costs more
    # than the whole report.
    wanted = [
        unit
        for r in reports
        for rel in r["releases"]
        for unit in (
            instance_unit(r["name"], rel["id"]),
            *(process_unit(r["name"], p, rel["id"]) for p in rel["processes"]),
        )
    ]
    units, unit_error = unit_states(run, systemctl, wanted)
    for report in reports:
        report["instances"] = [_instance(report["name"], rel, units) for rel in report["releases"]]
        if unit_error and report["releases"]:
            report["error"] = "; ".join(filter(None, (report["error"], unit_error)))
    return reports


def _processes(root: str, release_id: str) -> list[str]:
    """The names of the processes a release declares (its manifest's configuration)."""
    try:
        manifest = read_manifest(root, release_id) or {}
    except ReleaseError:
        return []
    config = manifest.get("config")
    return sorted(processes_of(config if isinstance(config, Mapping) else None))


def build_of(report: Mapping[str, Any]) -> str | None:
    """The build a service's live release is made of, from its status: hosts whose
    configuration differs run different release ids of one build; a release staged
    before releases recorded their build counts as its own build."""
    return report.get("build") or report.get("current")


def _build(root: str, current: str | None) -> str | None:
    """The build the live release is compared by across the fleet (fleet_build: its
    source build, shared by every platform's wheels of it); None when nothing is live or
    the release was staged before releases recorded it."""
    if not current:
        return None
    try:
        manifest = read_manifest(root, current) or {}
    except ReleaseError:
        return None
    build = fleet_build(manifest, "")
    return build or None


def _config(root: str, state: Any) -> tuple[dict | None, list[str] | None]:
    """The live release's configuration (no values), and what changed from the previous
    good release (None when either was staged before releases carried it)."""
    if not state.current:
        return None, None
    config, env = recorded_config(root, state.current)
    previous = next(iter(state.previous_good()), None)
    if config is None or previous is None:
        return config, None
    before, before_env = recorded_config(root, previous)
    if before is None:
        return config, None
    return config, config_changes(before, before_env, config, env)


# =========================================================================== host: history


def host_history(
    names: Sequence[str], *, last: int = DEFAULT_LAST, root_parent: str = DEFAULT_ROOT
) -> list[dict]:
    """The last `last` events of each service's history on this host, newest last."""
    names = validate_names(list(names))
    last = validate_positive(last, "last")
    reports = []
    for name in names:
        report: dict[str, Any] = {"name": name, "events": [], "total": 0, "error": None}
        try:
            events = read_history(service_home(root_parent, name))
        except ReleaseError as exc:
            report["error"] = exc.msg
        else:
            report["total"] = len(events)
            report["events"] = [{k: e.get(k) for k in HISTORY_FIELDS} for e in events[-last:]]
        reports.append(report)
    return reports


# =========================================================================== controller: report


def compact_age(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def truncate(text: object, width: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _releases_cell(releases: Sequence[Mapping[str, Any]]) -> str:
    if not releases:
        return "0"
    counts: dict[str, int] = {}
    for rel in releases:
        counts[rel.get("status", "?")] = counts.get(rel.get("status", "?"), 0) + 1
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return f"{len(releases)} ({', '.join(f'{counts[s]} {s}' for s in order)})"


def _instance_cell(report: Mapping[str, Any]) -> str:
    instances = report.get("instances") or []
    current = report.get("current")
    if current is None:
        return "-"
    mine = next((i for i in instances if i.get("release") == current), None)
    cell = "?"
    if mine is not None and mine.get("active_state"):
        cell = f"{mine['active_state']}/{mine.get('sub_state') or '?'}"
    others = sum(
        1 for i in instances if i.get("release") != current and i.get("active_state") == "active"
    )
    # An old instance still running after a deploy or rollback is worth seeing.
    return cell + (f" +{others} other active" if others else "")


def _processes_cell(report: Mapping[str, Any]) -> str:
    """`<name> <state>` of each process of the live release; others still running."""
    instances = report.get("instances") or []
    current = report.get("current")
    mine = next((i for i in instances if i.get("release") == current), None)
    cells = [
        f"{p['name']} {p.get('active_state') or '?'}/{p.get('sub_state') or '?'}"
        for p in ((mine or {}).get("processes") or [])
    ]
    others = sum(
        1
        for i in instances
        if i.get("release") != current
        for p in i.get("processes") or []
        if p.get("active_state") == "active"
    )
    cell = ", ".join(cells) or "-"
    return cell + (f" +{others} other active" if others else "")


def _health_cell(report: Mapping[str, Any]) -> str:
    health = report.get("health")
    if not health:
        return "-"
    if health.get("ok"):
        cell = f"ok {health.get('latency_ms') or 0:.0f} ms"
        answering = health.get("release")
        current = report.get("current")
        if answering and answering != current:
            # Principle 1 says this cannot happen; if it does, it must stand out.
            cell += f" ANSWERS {answering}"
        return cell
    if health.get("status") is not None:
        return f"FAIL {health['status']}"
    return f"FAIL {truncate(health.get('error'), ERROR_WIDTH)}"


def _config_cell(report: Mapping[str, Any]) -> str:
    """`<workers>w <n> env`, then what changed from the previous good release."""
    config = report.get("config")
    if not config:
        return "-" if not report.get("current") else "not recorded"
    cell = f"{config.get('workers')}w {len(config.get('env_names') or [])} env"
    changes = report.get("config_changes")
    if changes:
        cell += f"; changed: {truncate(', '.join(changes), ERROR_WIDTH)}"
    return cell


def _lock_cell(lock: Mapping[str, Any] | None) -> str:
    if not lock:
        return "-"
    if lock.get("problem"):
        return "unreadable lock"
    return f"{lock.get('by') or 'unknown'} since {lock.get('since') or '?'}"


def _host_services(result: object) -> tuple[list[dict] | None, str | None]:
    """(services, why none): a host that failed or was unreachable has no services."""
    if isinstance(result, Mapping) and isinstance(result.get("services"), list):
        return list(result["services"]), None
    if isinstance(result, Mapping) and (result.get("msg") or result.get("failed")):
        return None, truncate(result.get("msg") or "failed", 200)
    return None, "no result (unreachable?)"


def _validate_hosts(hosts: object) -> Mapping[str, Any]:
    if not isinstance(hosts, Mapping):
        raise ReleaseError(
            f"hosts: got {hosts!r}, expected a mapping of host name to that host's result",
            field="hosts",
            value=hosts,
        )
    return hosts


STATUS_COLUMNS = (
    ("service", "SERVICE"),
    ("host", "HOST"),
    ("current", "CURRENT"),
    ("age", "AGE"),
    ("previous_good", "PREVIOUS GOOD"),
    ("instance", "INSTANCE"),
    ("processes", "PROCESSES"),
    ("health", "HEALTH"),
    ("releases", "RELEASES"),
    ("config", "CONFIG"),
    ("lock", "LOCK"),
)
HISTORY_COLUMNS = (
    ("at", "AT"),
    ("host", "HOST"),
    ("service", "SERVICE"),
    ("release", "RELEASE"),
    ("event", "EVENT"),
    ("by", "BY"),
    ("note", "NOTE"),
)


def render_table(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width columns two spaces apart, a header and a rule; no trailing spaces."""
    widths = [
        max([len(title)] + [len(str(row.get(key, ""))) for row in rows]) for key, title in columns
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line([title for _key, title in columns]), line(["-" * w for w in widths])]
    lines += [line([str(row.get(key, "")) for key, _title in columns]) for row in rows]
    return "\n".join(lines)


def status_report(hosts: object) -> dict:
    """One row per service and host (services in their order, then hosts), and the table."""
    hosts = _validate_hosts(hosts)
    by_service: dict[str, list[dict]] = {}
    notes = []
    # service -> {build (or release when no build is recorded): [hosts]}
    builds: dict[str, dict[str, list[str]]] = {}
    for host, result in hosts.items():
        services, why = _host_services(result)
        if services is None:
            notes.append(f"{host}: {why}")
            continue
        for report in services:
            current = report.get("current")
            releases = report.get("releases") or []
            age = next((r.get("age_seconds") for r in releases if r.get("id") == current), None)
            row = {
                "service": report.get("name", "?"),
                "host": host,
                "current": current or "-",
                "age": compact_age(age) if current else "-",
                "previous_good": report.get("previous_good") or "-",
                "instance": _instance_cell(report),
                "processes": _processes_cell(report),
                "health": _health_cell(report),
                "releases": _releases_cell(releases),
                "config": _config_cell(report),
                "lock": _lock_cell(report.get("lock")),
            }
            by_service.setdefault(row["service"], []).append(row)
            if current is None:
                notes.append(f"{host} {row['service']}: NO RELEASE IS LIVE here")
            else:
                build = build_of(report)
                builds.setdefault(row["service"], {}).setdefault(build, []).append(host)
            if report.get("error"):
                notes.append(f"{host} {row['service']}: {report['error']}")
            health = report.get("health") or {}
            if health and not health.get("ok") and health.get("error"):
                notes.append(f"{host} {row['service']}: health: {health['error']}")
    for service, hosts_by_build in builds.items():
        if len(hosts_by_build) > 1:
            split = "; ".join(
                f"{', '.join(sorted(names))} on {build}"
                for build, names in sorted(hosts_by_build.items())
            )
            notes.append(f"{service}: HOSTS DISAGREE, they run different builds: {split}")
    rows = [row for service_rows in by_service.values() for row in service_rows]
    # The PROCESSES column only when a service has processes.
    columns = [
        c for c in STATUS_COLUMNS if c[0] != "processes" or any(r["processes"] != "-" for r in rows)
    ]
    table = render_table(columns, rows)
    if notes:
        table += "\n\n" + "\n".join(f"! {note}" for note in notes)
    return {"rows": rows, "table": table, "problems": notes}


def history_report(hosts: object, last: int = DEFAULT_LAST) -> dict:
    """The last `last` events of every host, merged by time (oldest first), and the table."""
    hosts = _validate_hosts(hosts)
    last = validate_positive(last, "last")
    rows = []
    notes = []
    for host, result in hosts.items():
        services, why = _host_services(result)
        if services is None:
            notes.append(f"{host}: {why}")
            continue
        for report in services:
            if report.get("error"):
                notes.append(f"{host} {report.get('name', '?')}: {report['error']}")
            for event in report.get("events") or []:
                rows.append(
                    {
                        "at": event.get("at") or "?",
                        "host": host,
                        "service": report.get("name", "?"),
                        "release": event.get("release") or "-",
                        "event": event.get("event") or "?",
                        "by": event.get("by") or "-",
                        "from": event.get("from"),
                        "note": event.get("note") or "",
                    }
                )
    # ISO 8601 UTC strings sort by time; the sort is stable, so events of one host and
    # second keep their order in that host's log.
    rows.sort(key=lambda row: row["at"])
    rows = rows[-last:]
    shown = [{**row, "note": truncate(row["note"], NOTE_WIDTH) or "-"} for row in rows]
    table = render_table(HISTORY_COLUMNS, shown)
    if notes:
        table += "\n\n" + "\n".join(f"! {note}" for note in notes)
    return {"rows": rows, "table": table}


def write_json(path: str, data: object) -> bool:
    """Write `data` as JSON to `path` through a temporary file and rename(2); False if the
    file already held exactly that."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        if handle.read() == text:
            return False
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ReleaseError(
            f"json_path: could not write {path} ({exc}); expected a writable file in an "
            "existing directory",
            retryable=False,
            field="json_path",
            value=path,
        ) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return True
