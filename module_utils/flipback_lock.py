"""The per-service lock: one deploy or rollback of a service on a host at a time.

The lock is the file `<root>/.lock` (root: /run/lock/flipback/<service> by
default, a tmpfs), a JSON object naming its holder:

    run_id, by, playbook, release, action   the owner, as the playbook passed it
    service                                 the service locked
    since                                   when the run took the lock (ISO 8601 UTC)
    pid                                     the module process that last wrote it (forensics)
    ttl, expires                            the run's time to live, and since + ttl (epoch)
    refreshed                               the run's last acquire (epoch): its heartbeat
    stale_after                             seconds without a refresh after which the run is
                                            taken for gone; null if the run does not refresh

The module process exits after every task, so "the holder's run is gone" cannot
be seen through a pid on the host. The playbook can see it on the controller and
name such runs in `gone_runs`; otherwise: a run acquires again at every step (a no-op for
its own run_id that only moves `refreshed`), and a lock not refreshed for its
`stale_after` seconds, or past its `expires`, is stale: the next acquirer sets
it aside as `.lock.stale-<UTC time>` (the last three are kept) and takes over.
The holder's own `ttl` and `stale_after`, recorded in the lock, decide: a
waiter with shorter ones cannot take the lock from a run that declared long
steps.

Writes are atomic on a local filesystem: a new lock is a complete temporary file
hard-linked to `.lock` (link(2) fails with EEXIST if the lock is held), and a
refresh renames a complete temporary file over it. Every read-decide-write
(acquire, refresh, take over, release) also holds flock(2) on the root
directory for a few milliseconds, so two acquirers cannot both judge a lock
stale and both take it over; the kernel drops that flock if the process dies.

Runs on the target host: standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from ansible.module_utils.flipback_release import (
    ReleaseError,
    default_user,
    utc_iso,
    validate_service,
)

LOCK = ".lock"
STALE_PREFIX = ".lock.stale-"
KEEP_STALE = 3
OWNER_FIELDS = ("run_id", "by", "playbook", "release", "action")
DEFAULT_TTL = 1800
DEFAULT_STALE_AFTER = 120
DEFAULT_POLL = 0.2


DEFAULT_LOCK_DIR = "/run/lock/flipback"


class LockError(ReleaseError):
    """The lock could not be taken or given back; says who holds it and if a retry is safe."""


# --------------------------------------------------------------------------- inputs


def validate_owner(owner: object) -> dict:
    """The owner with every field present; `by` defaults to the user running the module."""
    if not isinstance(owner, dict):
        raise LockError(
            f"owner: got {owner!r}, expected a dict with run_id and optionally "
            f"{', '.join(OWNER_FIELDS[1:])}",
            field="owner",
            value=owner,
        )
    unknown = sorted(set(owner) - set(OWNER_FIELDS))
    if unknown:
        raise LockError(
            f"owner: got unknown key(s) {', '.join(unknown)}, expected only "
            f"{', '.join(OWNER_FIELDS)}",
            field="owner",
            value=owner,
        )
    run_id = owner.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise LockError(
            f"owner.run_id: got {run_id!r}, expected a non-empty id unique to the "
            "ansible-playbook run (e.g. controller host, pid and start time)",
            field="owner.run_id",
            value=run_id,
        )
    normalized = {}
    for name in OWNER_FIELDS:
        value = owner.get(name)
        if value is not None and not isinstance(value, str):
            raise LockError(
                f"owner.{name}: got {value!r}, expected a string",
                field=f"owner.{name}",
                value=value,
            )
        normalized[name] = value
    normalized["by"] = normalized["by"] or default_user()
    return normalized


def validate_seconds(value: object, field: str, *, minimum: float, inclusive: bool) -> float:
    number = _number(value)
    if number is None or number < minimum or (number == minimum and not inclusive):
        bound = f"{'at least' if inclusive else 'more than'} {minimum:g}"
        raise LockError(
            f"{field}: got {value!r}, expected a number of seconds {bound}",
            field=field,
            value=value,
            expected=bound,
        )
    return float(number)


# --------------------------------------------------------------------------- lock file


def read_holder(path: str) -> dict | None:
    """The lock's content; None if there is no lock.

    A lock that is not a JSON object (edited by hand, or written by something
    else) still holds: it is described by its problem, and its mtime stands in
    for `refreshed` so that it goes stale like any other.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(
            f"{path}: could not be read ({exc}); expected a readable lock file",
            retryable=True,
            path=path,
        ) from exc
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    if not isinstance(holder, dict):
        return {"run_id": None, "problem": f"not a JSON object: {text[:80]!r}", "refreshed": mtime}
    return holder


def describe(holder: dict) -> str:
    """Who holds the lock, for messages: by, since, playbook, release, action, run."""
    if holder.get("problem"):
        return f"an unreadable lock ({holder['problem']}), last written {_at(holder)}"
    return (
        f"{holder.get('by') or 'unknown'} since {holder.get('since') or 'unknown'} "
        f"(playbook {holder.get('playbook') or 'unknown'}, "
        f"release {holder.get('release') or 'unknown'}, "
        f"action {holder.get('action') or 'unknown'}, run {holder.get('run_id')})"
    )


def _at(holder: dict) -> str:
    refreshed = holder.get("refreshed")
    return utc_iso(refreshed) if isinstance(refreshed, int | float) else "at an unknown time"


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def deadlines(holder: dict, ttl: float, stale_after: float | None) -> tuple[float | None, ...]:
    """(expires, refresh deadline, stale_after) of the holder; None where unknown or unused.

    The holder's recorded `expires` and `stale_after` decide; `ttl` and
    `stale_after` stand in only for a lock that does not record them.
    """
    refreshed = _number(holder.get("refreshed"))
    expires = _number(holder.get("expires"))
    if expires is None and refreshed is not None:
        expires = refreshed + ttl
    limit = _number(holder.get("stale_after", stale_after))
    refresh_by = refreshed + limit if limit is not None and refreshed is not None else None
    return expires, refresh_by, limit


def stale_reason(holder: dict, now: float, ttl: float, stale_after: float | None) -> str | None:
    """Why the holder's run counts as gone; None while it holds."""
    expires, refresh_by, limit = deadlines(holder, ttl, stale_after)
    if expires is not None and now >= expires:
        return f"older than its ttl: it expired at {utc_iso(expires)}"
    if refresh_by is not None and limit is not None and now > refresh_by:
        return (
            f"not refreshed for {now - refresh_by + limit:.0f} s (stale_after={limit:g} s): "
            "its run is gone"
        )
    return None


# --------------------------------------------------------------------------- the lock


def run_is_gone(run_id: str, live_runs: dict | None) -> bool:
    """Whether `run_id` (`<controller>:<pid>:<start>`) is a run that died on this controller.

    `live_runs` is what the controller saw when this run began: its name, the pids of
    every ansible-playbook process then, and when it looked. A holder from that
    controller whose pid was not among them, and which started before the look, is
    gone. A run that started later, another controller's run, or a pid reused by a new
    ansible-playbook all count as alive: only the stale rules can end those.
    """
    if not live_runs:
        return False
    parts = run_id.split(":")
    if len(parts) != 3 or parts[0] != live_runs.get("controller"):
        return False
    try:
        pid, started = int(parts[1]), int(parts[2])
        looked = float(live_runs.get("at", 0))
        pids = {int(p) for p in live_runs.get("pids", [])}
    except (TypeError, ValueError):
        return False
    return pid not in pids and started < looked - 1


class ServiceLock:
    """Acquire and release `<root>/.lock` for one service; `now` and `sleep` for tests."""

    def __init__(
        self,
        service: str,
        root: str | None = None,
        *,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service = validate_service(service)
        # /run/lock is a tmpfs: a lock never outlives a reboot (which ends every run),
        # and taking it leaves the service's files under /srv untouched.
        self.root = root or os.path.join(DEFAULT_LOCK_DIR, service)
        self.path = os.path.join(self.root, LOCK)
        self.now = now
        self.sleep = sleep
        self.gone_runs: frozenset[str] = frozenset()
        self.live_runs: dict | None = None

    def acquire(
        self,
        owner: dict,
        *,
        wait: float = 0.0,
        ttl: float = DEFAULT_TTL,
        stale_after: float = DEFAULT_STALE_AFTER,
        heartbeat: bool = True,
        poll: float = DEFAULT_POLL,
        gone_runs: Sequence[str] = (),
        live_runs: dict | None = None,
        check_mode: bool = False,
    ) -> dict:
        owner = validate_owner(owner)
        self.gone_runs = frozenset(gone_runs)
        self.live_runs = live_runs
        wait = validate_seconds(wait, "wait", minimum=0, inclusive=True)
        ttl = validate_seconds(ttl, "ttl", minimum=0, inclusive=False)
        stale_after = validate_seconds(stale_after, "stale_after", minimum=0, inclusive=False)
        poll = validate_seconds(poll, "poll", minimum=0, inclusive=False)
        recorded_stale_after = stale_after if heartbeat else None
        started = self.now()
        deadline = started + wait
        while True:
            result, holder = self._attempt(owner, ttl, recorded_stale_after, check_mode)
            waited = round(self.now() - started, 3)
            if result is not None:
                result["waited"] = waited
                return result
            if check_mode:
                # Nothing is waited for in check mode: say what a real run would do.
                would = f"wait up to {wait:g} s for it" if wait else "fail at once (wait=0)"
                return {
                    "changed": False,
                    "outcome": "busy",
                    "msg": f"{self.service} is locked by {describe(holder)}; a run would {would}",
                    "holder": holder,
                    "took_over": None,
                    "waited": waited,
                    "path": self.path,
                }
            remaining = deadline - self.now()
            if remaining <= 0:
                raise self._busy_error(holder, wait, waited, ttl, recorded_stale_after)
            self.sleep(min(poll, remaining))

    def take(self, request: dict, *, check_mode: bool = False) -> dict:
        """acquire() with a lock_request(); a request may leave out all but the owner."""
        stale_after = request.get("stale_after", DEFAULT_STALE_AFTER)
        return self.acquire(
            request["owner"],
            wait=request.get("wait", 0),
            # A run that declares a longer hold than the default lives longer by as much.
            ttl=DEFAULT_TTL + max(0, stale_after - DEFAULT_STALE_AFTER),
            stale_after=stale_after,
            live_runs=request.get("live_runs"),
            check_mode=check_mode,
        )

    def release(self, owner: dict, *, check_mode: bool = False) -> dict:
        owner = validate_owner(owner)
        if check_mode or not os.path.isdir(self.root):
            return self._give_back(owner, read_holder(self.path), write=False)
        with self._guard():
            return self._give_back(owner, read_holder(self.path), write=True)

    def _give_back(self, owner: dict, holder: dict | None, *, write: bool) -> dict:
        result = {"changed": False, "took_over": None, "waited": 0.0, "path": self.path}
        if holder is None:
            result.update(outcome="absent", holder=None)
            result["msg"] = f"{self.service} was not locked; nothing to release"
        elif holder.get("run_id") != owner["run_id"]:
            # Releasing runs in rescue/always paths: best effort, never a failure,
            # and never someone else's lock.
            result.update(outcome="held_by_other", holder=holder)
            result["msg"] = (
                f"{self.service} is locked by {describe(holder)}, not by run "
                f"{owner['run_id']}; left as it is"
            )
        else:
            if write:
                self._unlink(self.path)
            result.update(changed=True, outcome="released", holder=None)
            result["msg"] = f"{'released' if write else 'would release'} the lock of {self.service}"
        return result

    # -- one attempt

    def _attempt(
        self, owner: dict, ttl: float, stale_after: float | None, check_mode: bool
    ) -> tuple[dict | None, dict]:
        """(result, lock content) if the lock is now this run's; (None, holder) if another's."""
        if check_mode:
            return self._decide(owner, ttl, stale_after, read_holder(self.path), write=False)
        self._make_root()
        with self._guard():
            return self._decide(owner, ttl, stale_after, read_holder(self.path), write=True)

    def _decide(
        self,
        owner: dict,
        ttl: float,
        stale_after: float | None,
        holder: dict | None,
        *,
        write: bool,
    ) -> tuple[dict | None, dict]:
        now = self.now()
        result = {"changed": True, "took_over": None, "path": self.path}
        if holder is not None and holder.get("run_id") == owner["run_id"]:
            # Re-entrant: the run acquires again at every step; that is its heartbeat.
            refreshed = {**holder, "refreshed": now, "pid": os.getpid()}
            if write:
                self._write(refreshed, replace=True)
            result.update(changed=False, outcome="refreshed", holder=refreshed)
            result["msg"] = f"{self.service} is already locked by this run; refreshed"
            return result, refreshed
        if holder is not None:
            reason = stale_reason(holder, now, ttl, stale_after)
            if reason is None and (
                holder.get("run_id") in self.gone_runs
                or run_is_gone(str(holder.get("run_id", "")), self.live_runs)
            ):
                reason = "its run is gone (its ansible-playbook process no longer exists)"
            if reason is None:
                return None, holder
            kept = self._set_aside(now) if write else f"{STALE_PREFIX}{_stamp(now)}"
            verb = "took" if write else "would take"
            warning = (
                f"{verb} over the stale lock of {self.service} held by {describe(holder)}: "
                f"{reason}; the old lock {'is' if write else 'would be'} kept as {kept}"
            )
            result.update(outcome="took_over", took_over=holder, warnings=[warning])
        else:
            result["outcome"] = "acquired"
        new = {
            "service": self.service,
            **owner,
            "since": utc_iso(now),
            "pid": os.getpid(),
            "ttl": ttl,
            "expires": now + ttl,
            "refreshed": now,
            "stale_after": stale_after,
        }
        if write and not self._write(new, replace=False):
            # Someone outside the flock protocol linked a lock in between.
            current = read_holder(self.path)
            if current is not None:
                return None, current
            raise LockError(
                f"{self.path}: appeared and vanished while being acquired; expected it to "
                "stay. A retry is safe",
                retryable=True,
                path=self.path,
            )
        verb = "acquired" if write else "would acquire"
        result.update(holder=new, msg=f"{verb} the lock of {self.service}")
        return result, new

    def _busy_error(
        self, holder: dict, wait: float, waited: float, ttl: float, stale_after: float | None
    ) -> LockError:
        expires, refresh_by, _stale_at = deadlines(holder, ttl, stale_after)
        goes_stale = []
        if expires is not None:
            goes_stale.append(f"at {utc_iso(expires)} (ttl)")
        if refresh_by is not None:
            goes_stale.append(f"if not refreshed by {utc_iso(refresh_by)}")
        stale_note = f"; it goes stale {' or '.join(goes_stale)}" if goes_stale else ""
        return LockError(
            f"{self.service} is locked by {describe(holder)}; waited {waited:g} s "
            f"(wait={wait:g}), expected the lock free{stale_note}. Retry when that run "
            "has finished",
            retryable=True,
            holder=holder,
            waited=waited,
            path=self.path,
        )

    # -- disk

    def _make_root(self) -> None:
        try:
            if not os.path.isdir(self.root):
                os.makedirs(self.root, mode=0o755, exist_ok=True)
                # makedirs' mode is cut by the umask.
                os.chmod(self.root, 0o755)
        except OSError as exc:
            raise LockError(
                f"{self.root}: could not be created ({exc}); expected a directory for "
                f"{self.service}",
                path=self.root,
            ) from exc

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """flock(2) on the root directory around one read-decide-write."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise LockError(
                f"{self.root}: could not be opened ({exc}); expected a directory",
                path=self.root,
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, holder: dict, *, replace: bool) -> bool:
        """Write the lock from a complete temporary file; False if a new lock found one there."""
        data = json.dumps(holder, sort_keys=True).encode() + b"\n"
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{LOCK}.tmp-", dir=self.root)
            try:
                os.fchmod(fd, 0o644)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, self.path)
                tmp = None
            else:
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    return False
            _fsync_dir(self.root)
        except OSError as exc:
            raise LockError(
                f"{self.path}: could not be written ({exc}); expected the lock file "
                "written. A retry is safe",
                retryable=True,
                path=self.path,
            ) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return True

    def _set_aside(self, now: float) -> str:
        """Rename the stale lock for forensics, keep the last KEEP_STALE; the name kept."""
        base = f"{STALE_PREFIX}{_stamp(now)}"
        name, n = base, 0
        while os.path.lexists(os.path.join(self.root, name)):
            n += 1
            name = f"{base}-{n}"
        try:
            os.rename(self.path, os.path.join(self.root, name))
            stale = sorted(
                (e.name for e in os.scandir(self.root) if e.name.startswith(STALE_PREFIX)),
                key=_stale_order,
            )
            for old in stale[:-KEEP_STALE]:
                self._unlink(os.path.join(self.root, old))
        except OSError as exc:
            raise LockError(
                f"{self.path}: the stale lock could not be set aside as {name} ({exc}); "
                "expected a rename in the same directory. A retry is safe",
                retryable=True,
                path=self.path,
            ) from exc
        return name

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LockError(
                f"{path}: could not be removed ({exc}); expected it gone. A retry is safe",
                retryable=True,
                path=path,
            ) from exc


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _stale_order(name: str) -> tuple[str, int]:
    """Oldest first: by time stamp, then by the -<n> added when two share a second."""
    stamp, _dash, n = name[len(STALE_PREFIX) :].partition("-")
    return stamp, int(n) if n.isdigit() else 0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
