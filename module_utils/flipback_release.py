"""Releases of one service on one host: which exist, which is live, which to roll back to.

Layout under `root` (default /srv/<service>), per the release contract:

    releases/<id>/manifest.json   what was staged (status "staged" once complete)
    releases/<id>/.staging-lock   pid of a run that is staging this release right now
    current                       symlink -> releases/<id>, switched by rename(2)
    history.jsonl                 append-only lifecycle events, one JSON object per line

History decides, not mtimes: a release's lifecycle status is its last event in
history, and "previous good" is ordered by the position of each release's last
"active" event. The log is append-only, so a line's position is the order in
which things happened on this host; the `at` field is for people (a clock step
would otherwise reorder events).

Runs on the target host: standard library only.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ansible.module_utils.flipback_common import FlipbackError
from ansible.module_utils.flipback_runtime import (
    RELEASE_ID_RE,
    SERVICE_NAME_EXPECTED,
    SERVICE_NAME_RE,
    UNIT_DIR,
    config_changes,
    env_path,
    flipback_template,
    instance_template,
    instance_unit,
    masked_config,
    parse_env_file,
    process_unit,
    public_tls,
    release_id_for,
    site_text,
)

SERVICE_RE = SERVICE_NAME_RE
RELEASE_ID_EXAMPLE = "20261129T141500-3f2a9c1d0e"
EVENTS = ("staged", "active", "failed", "rolled_back", "pruned", "command")
# Events that say what ran, not what became of a release: they never decide its status.
NOTE_EVENTS = ("command",)
# "active" is written only by activate, which also flips `current`.
RECORDABLE_EVENTS = ("staged", "failed", "rolled_back", "pruned")
MANIFEST = "manifest.json"
STAGING_LOCK = ".staging-lock"
HISTORY = "history.jsonl"
# Where releases staged before releases carried their configuration found their env.
LEGACY_ENV_DIR = "/etc/flipback"
MANIFEST_SUMMARY_KEYS = (
    "git_sha",
    "ref",
    "checksum",
    "deployed_by",
    "deployed_at",
    "replaces",
    "status",
)
# Status of a complete release that is not current, from its last history event.
# A "pruned" release that is still on disk is what an interrupted prune left.
_STATUS_BY_LAST_EVENT = {
    "staged": "staged",
    "active": "good",
    "failed": "failed",
    "rolled_back": "rolled_back",
    "pruned": "incomplete",
}


class ReleaseError(FlipbackError):
    """A failure with what was observed, what was expected, and whether a retry is safe."""


# --------------------------------------------------------------------------- inputs


def validate_service(service: object) -> str:
    if not isinstance(service, str) or not SERVICE_RE.fullmatch(service):
        expected = SERVICE_NAME_EXPECTED
        raise ReleaseError(
            f"service: got {service!r}, expected {expected}",
            field="service",
            value=service,
            expected=expected,
        )
    return service


def validate_release_id(release_id: object, field: str = "release") -> str:
    if not isinstance(release_id, str) or not RELEASE_ID_RE.fullmatch(release_id):
        expected = f"an id like {RELEASE_ID_EXAMPLE}"
        raise ReleaseError(
            f"{field}: got {release_id!r}, expected {expected}",
            field=field,
            value=release_id,
            expected=expected,
        )
    return release_id


def validate_positive(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ReleaseError(
            f"{field}: got {value!r}, expected an integer of at least 1",
            field=field,
            value=value,
            expected="an integer >= 1",
        )
    return value


def default_user() -> str:
    """Who runs this: under become, SUDO_USER is the person who logged in."""
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown"


def utc_iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- disk helpers


def releases_dir(root: str) -> str:
    return os.path.join(root, "releases")


def release_dir(root: str, release_id: str) -> str:
    return os.path.join(releases_dir(root), release_id)


def read_manifest(root: str, release_id: str) -> dict | None:
    """The release's manifest, or None if it has none (yet)."""
    path = os.path.join(release_dir(root, release_id), MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReleaseError(
            f"{path}: could not be read ({exc}); expected a JSON object",
            path=path,
        ) from exc
    if not isinstance(manifest, dict):
        raise ReleaseError(
            f"{path}: got a JSON {type(manifest).__name__}, expected a JSON object",
            path=path,
        )
    return manifest


def fleet_build(manifest: Mapping[str, Any] | None, release_id: str) -> str:
    """The build a release is compared by across a fleet: the source build every
    platform's build of its commit shares (hosts of another Python or libc run their own
    wheels of it), else its build, else the release itself (staged before either was
    recorded)."""
    manifest = manifest or {}
    for key in ("source_build", "build"):
        if isinstance(manifest.get(key), str) and manifest[key]:
            return manifest[key]
    return release_id


def release_in_of(root: str, release_id: str, wanted: str) -> str:
    """How a gate tells that `release_id` answered: `wanted` ("header" or "json") if the
    release's unit adds the release header, else "json" (a release staged by a flipback
    before the header, whose app echoes its release in JSON)."""
    try:
        config = (read_manifest(root, release_id) or {}).get("config") or {}
    except ReleaseError:
        config = {}
    return wanted if config.get("release_header") else "json"


def tls_of(root: str, release_id: str) -> bool:
    """Whether `release_id`'s public port speaks HTTPS (its recorded nginx.tls): what
    the probes of the public port must speak while it is live."""
    return public_tls(recorded_config(root, release_id)[0])


def recorded_config(root: str, release_id: str) -> tuple[dict | None, dict[str, str] | None]:
    """(config, env values) a staged release runs with; None for what cannot be read
    (a release staged by an older flipback has no config; values need root)."""
    try:
        config = (read_manifest(root, release_id) or {}).get("config")
    except ReleaseError:
        config = None
    try:
        with open(env_path(root, release_id), encoding="utf-8") as handle:
            env: dict[str, str] | None = parse_env_file(handle.read())
    except OSError:
        env = None
    return (config if isinstance(config, dict) else None), env


def recorded_site(root: str, service: str, release_id: str) -> tuple[str, int] | None:
    """(nginx site, port) a staged release defines; None when it recorded no port
    (staged before releases carried their configuration)."""
    config, _env = recorded_config(root, release_id)
    port = (config or {}).get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        return None
    nginx = (config or {}).get("nginx")
    return (
        site_text(
            service=service, home=root, port=port, nginx=nginx if isinstance(nginx, dict) else None
        ),
        port,
    )


def config_report(
    root: str,
    service: str,
    current: str | None,
    release: str,
    config: dict,
    env_text: str,
) -> tuple[list[str], dict | None]:
    """(changes, diff): how a release's configuration differs from the live release's,
    env values compared here (as root) and never shown; the diff masks every value."""
    if not current or current == release or not config:
        return [], None
    before, before_env = recorded_config(root, current)
    if before is None:
        return [f"configuration of {current} not recorded (staged by an older flipback)"], None
    changes = config_changes(before, before_env, config, parse_env_file(env_text))
    if not changes:
        return [], None
    changed = {c for c in changes if c.isidentifier()}
    return changes, {
        "before_header": f"{service} configuration of {current}",
        "after_header": f"{service} configuration of {release}",
        "before": masked_config(before, {}),
        "after": masked_config(config, {name: "*** (changed)" for name in changed}),
    }


def manifest_problem(manifest: dict | None, release_id: str, service: str) -> str | None:
    """Why a manifest does not describe a complete release of `service`; None if it does."""
    if manifest is None:
        return f"{MANIFEST} is missing"
    if manifest.get("status") != "staged":
        return f"manifest status is {manifest.get('status')!r}, expected 'staged'"
    if manifest.get("id") != release_id:
        return f"manifest id is {manifest.get('id')!r}, expected {release_id!r}"
    if manifest.get("service") != service:
        return f"manifest service is {manifest.get('service')!r}, expected {service!r}"
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_lock_holder(path: str) -> int | None:
    """The live pid named by `<path>/.staging-lock`, or None (no lock, unreadable, or stale)."""
    try:
        with open(os.path.join(path, STAGING_LOCK), encoding="utf-8") as handle:
            pid = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def current_release(root: str) -> str | None:
    """The id `current` points at, or None if there is no `current` yet."""
    link = os.path.join(root, "current")
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise ReleaseError(f"{link}: could not be read ({exc})", path=link) from exc
        raise ReleaseError(
            f"{link}: got a {'directory' if os.path.isdir(link) else 'file'}, expected a "
            "symlink to releases/<id>. Move it away by hand; nothing was changed",
            path=link,
        ) from exc
    parent, name = os.path.split(os.path.normpath(target))
    if os.path.isabs(target):
        parent = os.path.relpath(parent, root)
    if parent != "releases" or not RELEASE_ID_RE.fullmatch(name):
        raise ReleaseError(
            f"{link}: points at {target!r}, expected releases/<id> with an id like "
            f"{RELEASE_ID_EXAMPLE}. Fix the link by hand; nothing was changed",
            path=link,
            value=target,
        )
    return name


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_symlink(target: str, link: str) -> None:
    """Point `link` at `target` with rename(2): at every instant `link` names old or new."""
    tmp = f"{link}.tmp-{os.getpid()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            # Left by an earlier run that died with the same pid.
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.rename(tmp, link)
        _fsync_dir(os.path.dirname(link) or ".")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ReleaseError(
            f"could not point {link} at {target}: {exc}; expected rename(2) of {tmp} "
            "to succeed. The link was not changed (rename is atomic); a retry is safe",
            retryable=True,
            path=link,
        ) from exc


# --------------------------------------------------------------------------- history


def history_path(root: str) -> str:
    return os.path.join(root, HISTORY)


def history_event(
    release_id: str,
    event: str,
    *,
    by: str,
    note: str = "",
    from_release: str | None = None,
    expect: dict | None = None,
    at: float | None = None,
    run: str | None = None,
) -> dict:
    """One history line. `run` is the deploy or rollback run that wrote it (its lock
    owner's run_id): a re-run tells from it which run put a release live."""
    return {
        "at": utc_iso(time.time() if at is None else at),
        "release": release_id,
        "event": event,
        "by": by,
        "run": run,
        "from": from_release,
        "note": note,
        "expect": expect or {},
    }


def read_history(root: str) -> list[dict]:
    """Every event, oldest first. A missing log is an empty history.

    An unparseable last line without a newline is a write that never completed
    (the host died mid-append): it is ignored, as if the event had not happened.
    """
    path = history_path(root)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ReleaseError(f"{path}: could not be read ({exc})", path=path) from exc
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)
        try:
            event = json.loads(line)
        except ValueError as exc:
            if torn:
                break
            raise ReleaseError(
                f"{path} line {number}: got {line[:80]!r}, expected one JSON object per "
                f"line ({exc}). Repair the line by hand; nothing was changed",
                path=path,
                line=number,
            ) from exc
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("release"), str)
            or event.get("event") not in EVENTS
        ):
            raise ReleaseError(
                f"{path} line {number}: got {line[:80]!r}, expected an object with "
                f"'release' and 'event' (one of {', '.join(EVENTS)})",
                path=path,
                line=number,
            )
        events.append(event)
    return events


def append_history(root: str, event: dict) -> None:
    """Append one event as one line with a single write(2) on O_APPEND, then fsync.

    O_APPEND makes the kernel seek and write as one step, so concurrent appenders
    never interleave inside a line.
    """
    path = history_path(root)
    data = json.dumps(event, sort_keys=True).encode() + b"\n"
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # Close a line torn by a crash, so this event starts on its own line.
                data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ReleaseError(
            f"{path}: could not append the {event['event']!r} event of {event['release']} "
            f"({exc}); expected one complete line written",
            retryable=True,
            path=path,
        ) from exc


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Release:
    id: str
    status: str
    manifest: dict | None
    problem: str | None
    age_seconds: int
    staging_pid: int | None
    last_event: dict | None
    # Positions in history (0 = oldest line) of this release's last such event.
    last_active: int | None
    last_staged: int | None

    def summary(self) -> dict:
        manifest = None
        if self.manifest is not None:
            manifest = {key: self.manifest.get(key) for key in MANIFEST_SUMMARY_KEYS}
        last = None
        if self.last_event is not None:
            last = {"event": self.last_event["event"], "at": self.last_event.get("at")}
        return {
            "id": self.id,
            "status": self.status,
            "manifest": manifest,
            "age_seconds": self.age_seconds,
            "last_event": last,
            "problem": self.problem,
            "staging_pid": self.staging_pid,
        }


def derive_status(
    release_id: str,
    current: str | None,
    manifest: dict | None,
    problem: str | None,
    last_event: dict | None,
) -> str:
    if release_id == current:
        return "active"
    if manifest is not None and manifest.get("status") == "failed":
        return "failed"
    if problem is not None:
        return "incomplete"
    if last_event is None:
        return "staged"
    return _STATUS_BY_LAST_EVENT[last_event["event"]]


@dataclass(frozen=True)
class State:
    current: str | None
    releases: dict[str, Release]
    history: list[dict]

    def previous_good(self) -> list[str]:
        """Good releases on disk, most recently active first (by history position)."""
        good = [r for r in self.releases.values() if r.status == "good"]
        good.sort(key=lambda r: r.last_active or 0, reverse=True)
        return [r.id for r in good]


def scan(root: str, service: str, now: float) -> State:
    history = read_history(root)
    last_event: dict[str, dict] = {}
    last_active: dict[str, int] = {}
    last_staged: dict[str, int] = {}
    for position, event in enumerate(history):
        if event["event"] in NOTE_EVENTS:
            continue
        last_event[event["release"]] = event
        if event["event"] == "active":
            last_active[event["release"]] = position
        elif event["event"] == "staged":
            last_staged[event["release"]] = position
    current = current_release(root)
    try:
        entries = sorted(os.scandir(releases_dir(root)), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    releases = {}
    for entry in entries:
        if not RELEASE_ID_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            manifest = read_manifest(root, entry.name)
            problem = manifest_problem(manifest, entry.name, service)
        except ReleaseError as exc:
            manifest, problem = None, exc.msg
        releases[entry.name] = Release(
            id=entry.name,
            status=derive_status(
                entry.name, current, manifest, problem, last_event.get(entry.name)
            ),
            manifest=manifest,
            problem=problem,
            age_seconds=_age(manifest, entry.stat(follow_symlinks=False).st_mtime, now),
            staging_pid=staging_lock_holder(entry.path),
            last_event=last_event.get(entry.name),
            last_active=last_active.get(entry.name),
            last_staged=last_staged.get(entry.name),
        )
    return State(current=current, releases=releases, history=history)


def _age(manifest: dict | None, mtime: float, now: float) -> int:
    """Seconds since the manifest's deployed_at; the directory's mtime if it has none."""
    started = mtime
    deployed_at = manifest.get("deployed_at") if manifest else None
    if isinstance(deployed_at, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(deployed_at)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            started = parsed.timestamp()
    return max(0, int(now - started))


def as_if_activated(state: State, release_id: str) -> State:
    """The state a deploy's activation of `release_id` would leave, for dry runs.

    The release becomes current and the most recently active; the one it replaces
    becomes good (a deploy keeps it as the previous good release).
    """
    position = len(state.history)
    releases = {}
    for rid, release in state.releases.items():
        if rid == release_id:
            release = replace(release, status="active", last_active=position)
        elif rid == state.current:
            release = replace(release, status="good")
        releases[rid] = release
    return State(current=release_id, releases=releases, history=state.history)


def plan_prune(state: State, keep: int) -> list[str]:
    """Releases to remove so that `keep` good releases (the current one first) remain.

    Never removed: current, the previous good release, and a release whose
    staging lock names a live process. Staged releases go only if they were
    staged before the current release went live (a newer one is waiting to be
    activated).
    """
    live = [r for r in state.releases.values() if r.status in ("active", "good")]
    live.sort(key=lambda r: (r.id != state.current, -(r.last_active or 0)))
    protected = {r.id for r in live[:keep]} | set(state.previous_good()[:1])
    if state.current is not None:
        protected.add(state.current)
    current = state.releases.get(state.current or "")
    current_since = current.last_active if current is not None else None
    remove = []
    for release in state.releases.values():
        if release.id in protected or release.staging_pid is not None:
            continue
        if release.status == "staged":
            staged_before_current = (
                release.last_staged is not None
                and current_since is not None
                and release.last_staged < current_since
            )
            if not staged_before_current:
                continue
        remove.append(release.id)
    return sorted(remove)


# --------------------------------------------------------------------------- actions


class Releases:
    """The five operations of the release module on one service's root."""

    def __init__(
        self,
        service: str,
        root: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        unit_dir: str = UNIT_DIR,
        legacy_env_dir: str = LEGACY_ENV_DIR,
        run_id: str | None = None,
    ) -> None:
        self.service = validate_service(service)
        self.root = root or f"/srv/{service}"
        self.clock = clock
        self.run_id = run_id
        self.unit_dir = unit_dir
        self.legacy_env_dir = legacy_env_dir

    @property
    def current_link(self) -> str:
        return os.path.join(self.root, "current")

    def scan(self) -> State:
        return scan(self.root, self.service, self.clock())

    def list_releases(self) -> dict:
        state = self.scan()
        return {
            "changed": False,
            "releases": [state.releases[rid].summary() for rid in sorted(state.releases)],
            "current": state.current,
            "previous_good": next(iter(state.previous_good()), None),
        }

    def activate(self, release_id: str, *, by: str, note: str, check_mode: bool) -> dict:
        release_id = validate_release_id(release_id)
        state = self.scan()
        release = self._require(state, release_id)
        old = state.current
        result = {"changed": False, "release": release_id, "previous": old, "current": release_id}
        expect = (release.manifest or {}).get("health") or {}
        if old == release_id:
            last = release.last_event
            if last is not None and last["event"] == "active":
                result["event"] = None
                return result
            # A run died between the flip and its history line: record what is live,
            # or this release would never count as good once replaced.
            replaced = self._last_active_other_than(state, release_id)
            event = self._event(release_id, "active", by, note, replaced, expect)
            result.update(changed=True, event=event)
        else:
            event = self._event(release_id, "active", by, note, old, expect)
            result.update(changed=True, event=event)
            if not check_mode:
                atomic_symlink(os.path.join("releases", release_id), self.current_link)
        if not check_mode:
            try:
                append_history(self.root, event)
            except ReleaseError as exc:
                exc.msg += (
                    f"; {self.current_link} points at {release_id}. Running activate "
                    "again records the event"
                )
                raise
        return result

    def record(
        self, release_id: str, event_name: str, *, by: str, note: str, check_mode: bool
    ) -> dict:
        release_id = validate_release_id(release_id)
        if event_name not in RECORDABLE_EVENTS:
            raise ReleaseError(
                f"event: got {event_name!r}, expected one of {', '.join(RECORDABLE_EVENTS)} "
                "('active' is recorded by action=activate, which also flips current)",
                field="event",
                value=event_name,
                expected=list(RECORDABLE_EVENTS),
            )
        path = release_dir(self.root, release_id)
        if event_name != "pruned" and not os.path.isdir(path):
            raise ReleaseError(
                f"release: got {release_id!r}, expected a directory {path} for event "
                f"{event_name!r} (only 'pruned' may name a release that is gone)",
                field="release",
                value=release_id,
            )
        try:
            manifest = read_manifest(self.root, release_id) or {}
        except ReleaseError:
            # The event matters more than the expected health of a broken release.
            manifest = {}
        event = self._event(release_id, event_name, by, note, None, manifest.get("health"))
        if not check_mode:
            append_history(self.root, event)
        return {"changed": True, "release": release_id, "event": event}

    def target(self, release_id: str | None, steps: int | None) -> dict:
        result = self._target(release_id, steps)
        chosen = result["target"]
        # The build the target is made of: hosts with their own configuration run their
        # own release ids of one build, and hosts of another platform (Python, libc)
        # their own build of the same source, so a fleet-wide rollback compares builds.
        manifest = self.scan().releases[chosen].manifest if chosen else None
        result["build"] = fleet_build(manifest, chosen) if chosen else None
        return result

    def _target(self, release_id: str | None, steps: int | None) -> dict:
        state = self.scan()
        candidates = state.previous_good()
        result = {
            "changed": False,
            "current": state.current,
            "candidates": candidates,
            # What a refused rollback can suggest as release=<id>: what _require and the
            # failed check below accept, newest first.
            "named_targets": sorted(
                (
                    r.id
                    for r in state.releases.values()
                    if r.problem is None and r.status != "failed" and r.id != state.current
                ),
                reverse=True,
            ),
            "target": None,
        }
        if release_id is not None:
            release_id = validate_release_id(release_id)
            named = release_id
            release_id = self._sibling(state, release_id) or release_id
            release = self._require(state, release_id)
            if release_id != named:
                result["named"] = named
            if release_id == state.current:
                # Already there: a re-run of the same rollback has nothing to do.
                result.update(target=release_id, reason=f"{release_id} is already current")
                return result
            if release.status == "failed":
                raise ReleaseError(
                    f"release: got {release_id!r}, whose status is failed ({self._when(release)}); "
                    "expected a release that did not fail a gate"
                    + (f", e.g. {candidates[0]}" if candidates else ""),
                    field="release",
                    value=release_id,
                )
            result.update(
                target=release_id, reason=f"named release {release_id} ({release.status})"
            )
            return result
        steps = validate_positive(1 if steps is None else steps, "steps")
        if len(candidates) >= steps:
            chosen = state.releases[candidates[steps - 1]]
            result.update(
                target=chosen.id,
                reason=f"previous good release {steps} step(s) back: {chosen.id} "
                f"({self._when(chosen)})",
            )
        elif candidates:
            result["reason"] = (
                f"steps={steps}: only {len(candidates)} previous good release(s): "
                f"{', '.join(candidates)}"
            )
        else:
            result["reason"] = self._no_target_reason(state)
        return result

    def prune(self, keep: int, *, by: str, note: str, check_mode: bool) -> dict:
        keep = validate_positive(keep, "keep")
        state = self.scan()
        remove = plan_prune(state, keep)
        result = {
            "changed": bool(remove),
            "removed": remove,
            "kept": sorted(set(state.releases) - set(remove)),
            "current": state.current,
            "previous_good": next(iter(state.previous_good()), None),
        }
        if check_mode:
            return result
        done: list[str] = []
        for release_id in remove:
            status = state.releases[release_id].status
            why = f"keep={keep}, was {status}" + (f"; {note}" if note else "")
            # Recorded first: if the removal is cut short, the leftover reads as an
            # interrupted prune (status incomplete) and the next prune finishes it.
            append_history(self.root, self._event(release_id, "pruned", by, why, None, None))
            try:
                shutil.rmtree(release_dir(self.root, release_id))
                # The release's own units go with it, its web instance's and its
                # processes' (never enabled: only current's are).
                units = [instance_unit(self.service, release_id)]
                units += [
                    os.path.basename(path)
                    for path in glob.glob(
                        os.path.join(
                            glob.escape(self.unit_dir), process_unit(self.service, "*", release_id)
                        )
                    )
                ]
                for unit in units:
                    for path in (
                        os.path.join(self.unit_dir, "multi-user.target.wants", unit),
                        os.path.join(self.unit_dir, unit),
                    ):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
            except OSError as exc:
                raise ReleaseError(
                    f"could not remove {release_dir(self.root, release_id)}: {exc}; expected "
                    "the directory gone. Running prune again finishes it",
                    retryable=True,
                    removed=done,
                ) from exc
            done.append(release_id)
        result["legacy_removed"] = self._remove_legacy_files(set(state.releases) - set(remove))
        return result

    def _remove_legacy_files(self, kept: set[str]) -> list[str]:
        """Releases staged before releases carried their configuration ran from one
        service-wide unit template and env file. Once none of them is left on disk,
        those two files go (the env file holds secrets no release uses any more)."""
        for release_id in kept:
            try:
                manifest = read_manifest(self.root, release_id)
            except ReleaseError:
                return []
            if not isinstance((manifest or {}).get("config"), dict):
                return []
        removed = []
        template = os.path.join(self.unit_dir, instance_template(self.service))
        for path in (template, os.path.join(self.legacy_env_dir, f"{self.service}.env")):
            # Only flipback's template: a service named like an OS template (`user`) must
            # not take away an administrator's override of the OS's unit.
            if path == template and not flipback_template(path, self.service):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        return removed

    # -- helpers
    def _event(
        self,
        release_id: str,
        name: str,
        by: str,
        note: str,
        from_release: str | None,
        expect: dict | None,
    ) -> dict:
        return history_event(
            release_id,
            name,
            by=by,
            note=note,
            from_release=from_release,
            expect=expect,
            at=self.clock(),
            run=self.run_id,
        )

    @staticmethod
    def _sibling(state: State, release_id: str) -> str | None:
        """The release here that `release_id`, a release of another target (hosts of
        another Python or libc), stands for: the same source build and configuration,
        built for this host's platform. Each manifest records the build of every target
        made in its run (`builds`), so the id this host's configuration gives on each is
        known here. None when `release_id` is a release here, or stands for none."""
        if release_id in state.releases:
            return None
        for release in state.releases.values():
            manifest = release.manifest or {}
            builds = manifest.get("builds")
            config = manifest.get("config")
            if not isinstance(builds, dict) or not isinstance(config, dict):
                continue
            for build_id in builds.values():
                try:
                    if release_id_for(str(build_id), config) == release_id:
                        return release.id
                except ValueError:
                    continue
        return None

    def _require(self, state: State, release_id: str) -> Release:
        """The release, if it is on disk and complete; otherwise say what was found."""
        release = state.releases.get(release_id)
        if release is None:
            found = sorted(state.releases)[-5:]
            raise ReleaseError(
                f"release: got {release_id!r}, expected a release directory "
                f"{release_dir(self.root, release_id)} (latest found: "
                f"{', '.join(found) if found else 'none'})",
                field="release",
                value=release_id,
            )
        if release.problem is not None:
            raise ReleaseError(
                f"release {release_id} is incomplete: {release.problem}; expected a "
                "complete release (manifest status 'staged'). Stage it again, then retry",
                field="release",
                value=release_id,
            )
        return release

    @staticmethod
    def _when(release: Release) -> str:
        last = release.last_event
        if last is None:
            return "no history"
        return f"last event {last['event']} at {last.get('at')}"

    @staticmethod
    def _last_active_other_than(state: State, release_id: str) -> str | None:
        for event in reversed(state.history):
            if event["event"] == "active" and event["release"] != release_id:
                return event["release"]
        return None

    def _no_target_reason(self, state: State) -> str:
        ever_active = []
        for event in reversed(state.history):
            rid = event["release"]
            if event["event"] == "active" and rid != state.current and rid not in ever_active:
                ever_active.append(rid)
        if not ever_active:
            only = f"history has only {state.current}" if state.current else "nothing was active"
            return f"no previous good release: {only}"
        described = []
        for rid in ever_active:
            release = state.releases.get(rid)
            described.append(f"{rid} ({release.status if release else 'removed'})")
        return "no previous good release: the releases active before are now " + ", ".join(
            described
        )
