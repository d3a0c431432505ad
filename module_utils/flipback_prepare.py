"""Get one host ready for a release of one service, in one call.

The first round trip of a deploy, so it does everything that does not depend on the
release being staged yet:

    take the service's deploy lock              (or fail naming its holder)
    the service user (created, or an existing one checked) and its directories
    report: current release, whether the release is staged, whether it is already live,
            and how its configuration differs from the live release's (env values
            compared here, on the host, never shown)

No unit, env file or nginx site is written here: each release carries its own unit
and env file, staged with its code (flipback_stage), and its site (its port) is put in
place by the switch that makes it live, after its gate (flipback_switch). So nothing
this call writes can change how the live release or its standby starts or serves.

If the release is already current, its instance active and enabled, no other
instance is left over, and it answers through the public port, the deploy has
nothing to do on this host: the lock is given back at once and `noop` is true.

Runs on the target host: standard library only.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.flipback_common import Runner, read_text, run_command
from ansible.module_utils.flipback_health import (
    HealthError,
    Policy,
    Prober,
    Target,
    expect_release,
    real_probe,
)
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_release import (
    RELEASE_ID_RE,
    ReleaseError,
    Releases,
    config_report,
    recorded_config,
    recorded_site,
    release_in_of,
    tls_of,
    validate_release_id,
    validate_service,
)
from ansible.module_utils.flipback_runtime import (
    PROCESS_NAME_RE,
    SITE_DIR,
    flipback_template,
    instance_template,
    instance_unit,
    process_unit,
    processes_of,
    retire_timer,
    site_path,
    start_instance,
)
from ansible.module_utils.flipback_stage import find_donor

# Where the system's systemd finds unit files (systemd.unit(5)): a template of the
# service's name there, or drop-ins for it, would apply to flipback's instances.
UNIT_SEARCH_PATH = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)


@dataclass
class PrepareSpec:
    service: str
    root: str
    user: str
    release: str
    # How the release runs (release_config's `config`) and its env file, to tell what
    # changes against the live release.
    config: dict = field(default_factory=dict)
    env_text: str = ""
    lock: dict | None = None
    port: int = 0
    health_path: str = "/health"
    expect_status: tuple[int, ...] = (200,)
    expect_json: dict = field(default_factory=dict)
    release_in: str = "header"
    health_host: str = "localhost"
    public_successes: int = 3
    noop_timeout: float = 5.0
    standby: bool = True
    # Key of the release's wheels: a staged release with the same key lends its venv.
    deps_key: str = ""
    # Where nginx sites live (the service's is flipback-<service>.conf).
    site_dir: str = SITE_DIR
    # Take an existing account flipback did not create (its primary group must be its
    # own, with no other members): see Prepare._existing_user.
    adopt_user: bool = False
    unit_search_path: tuple[str, ...] = UNIT_SEARCH_PATH

    def unit(self, release: str) -> str:
        return instance_unit(self.service, release)


EXPECTED_USER = (
    "a user flipback creates for this service: pick an unused name, or set adopt_user: true "
    "for an account made for this service whose primary group is its own"
)


@dataclass(frozen=True)
class Instances:
    """What of a service systemd has active or starting, from one `systemctl` call."""

    # Release ids whose web instance is active or starting.
    active: list[str]
    # Release ids whose instance has a retire timer pending.
    retiring: list[str]
    # Release id -> names of its processes that are active or starting.
    processes: dict[str, list[str]]


def scan_instances(run: Runner, service: str) -> Instances:
    """The service's instances, retire timers and processes that systemd has active or
    starting (`<service>@<id>`, `flipback-retire-<service>-<id>`, `<service>.<p>@<id>`)."""
    timer_prefix = retire_timer(service, "")
    proc = run(
        [
            "systemctl",
            "list-units",
            "--plain",
            "--no-legend",
            "--state=active,activating,reloading",
            instance_unit(service, "*"),
            f"{retire_timer(service, '*')}.timer",
            process_unit(service, "*", "*"),
        ]
    )
    prefix = f"{service}@"
    process_prefix = f"{service}."
    active, retiring = [], []
    processes: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        name = line.split(" ", 1)[0]
        process = None
        if name.startswith(prefix) and name.endswith(".service"):
            instance = name[len(prefix) : -len(".service")]
        elif name.startswith(timer_prefix) and name.endswith(".timer"):
            instance = name[len(timer_prefix) : -len(".timer")]
        elif name.startswith(process_prefix) and name.endswith(".service") and "@" in name:
            process, instance = name[len(process_prefix) : -len(".service")].split("@", 1)
            if not PROCESS_NAME_RE.fullmatch(process):
                continue
        else:
            continue
        # Only flipback's own instances, named by release id: a service called like an
        # OS template (`user`, `getty`) must never count `user@1000.service` as its own.
        if not RELEASE_ID_RE.fullmatch(instance):
            continue
        if process is not None:
            processes.setdefault(instance, []).append(process)
        elif name.endswith(".service"):
            active.append(instance)
        else:
            retiring.append(instance)
    return Instances(
        sorted(active), sorted(retiring), {r: sorted(p) for r, p in sorted(processes.items())}
    )


def all_enabled(run: Runner, units: Sequence[str]) -> bool:
    """Whether every unit is enabled (`systemctl is-enabled` of several units succeeds
    when any one is, so its answer for each is read)."""
    proc = run(["systemctl", "is-enabled", *units])
    states = proc.stdout.split()
    return len(states) == len(units) and all(state == "enabled" for state in states)


def list_instances(run: Runner, service: str) -> tuple[list[str], list[str]]:
    """(active, retiring): release ids of the service's instances that systemd has
    active or starting, and of those with a retire timer still pending; one call."""
    found = scan_instances(run, service)
    return found.active, found.retiring


class Prepare:
    def __init__(
        self,
        spec: PrepareSpec,
        *,
        run: Runner = run_command,
        prober: Prober = real_probe,
        lock: ServiceLock | None = None,
    ) -> None:
        self.spec = spec
        self.run = run
        self.prober = prober
        self.lock = lock or ServiceLock(spec.service)
        self.changes: list[str] = []
        self.warnings: list[str] = []

    # -- the call
    def prepare(self, check_mode: bool) -> dict[str, Any]:
        spec = self.spec
        validate_service(spec.service)
        validate_release_id(spec.release)
        result: dict[str, Any] = {"release": spec.release, "lock": None}
        # Before the lock: a release that cannot serve here leaves nothing behind.
        self._tls_files()
        if spec.lock is not None:
            result["lock"] = self._take_lock(check_mode)
        self._unit_namespace()
        self._user(check_mode)
        uid, gid = self._ids(check_mode)
        self._dir(spec.root, 0, 0, 0o755, check_mode)
        self._dir(os.path.join(spec.root, "releases"), 0, 0, 0o755, check_mode)
        self._dir(os.path.join(spec.root, ".incoming"), 0, 0, 0o700, check_mode)
        self._dir(os.path.join(spec.root, "shared"), uid, gid, 0o750, check_mode)

        releases = Releases(spec.service, spec.root)
        state = releases.scan()
        staged = spec.release in state.releases and state.releases[spec.release].status not in (
            "incomplete",
        )
        result.update(
            changed=bool(self.changes),
            changes=self.changes,
            current=state.current,
            staged=staged,
            venv_donor=None if staged else find_donor(spec.root, spec.release, spec.deps_key),
            config_changes=self._config_changes(state.current),
            warnings=self.warnings,
            **self._runs_of_release(state, result["lock"]),
        )
        noop = (
            not self.changes
            and state.current == spec.release
            and self._live_and_alone(state, check_mode)
        )
        result["noop"] = noop
        result["warmed"] = False
        if staged and not noop and state.current != spec.release and not check_mode:
            # Staged before (a roll forward): start it now, on every host at once, so the
            # switch finds it warm. Only a head start; the switch gates it either way.
            active, _retiring = list_instances(self.run, spec.service)
            if spec.release not in active:
                result["warmed"] = start_instance(self.run, spec.service, spec.release)
            else:
                # Already running: left by a run that stopped before its end (killed
                # after warming it), so it is this switch's too and stops with it if
                # the switch does not happen. The warm standby is not: it stays.
                standby = state.previous_good()[:1] if spec.standby else []
                result["warmed"] = spec.release not in standby
        if noop and spec.lock is not None and not check_mode:
            # Nothing to switch on this host: the lock goes back in this same call.
            self.lock.release(spec.lock["owner"])
            result["lock"] = {**(result["lock"] or {}), "outcome": "released"}
        return result

    # -- which runs touched this release here
    def _runs_of_release(self, state, lock: dict | None) -> dict[str, Any]:
        """The runs that wrote an event of this release here, and the deploy run whose
        lock this run took over; when the release is live, the run that put it live and
        what it replaced. A deploy that stops compares these across the fleet: a host
        put live by a run that left other hosts behind goes back with them."""
        release = self.spec.release
        events = [e for e in state.history if e.get("release") == release]
        runs = {e["run"] for e in events if e.get("run")}
        holder = (lock or {}).get("took_over") or {}
        if holder.get("action") == "deploy" and holder.get("run_id"):
            runs.add(holder["run_id"])
        live = None
        if state.current == release:
            went_live = [e for e in events if e.get("event") == "active"]
            if went_live:
                live = {"run": went_live[-1].get("run"), "from": went_live[-1].get("from")}
        return {"release_runs": sorted(runs), "live": live}

    # -- configuration
    def _config_changes(self, current: str | None) -> list[str]:
        """How this release's configuration differs from the live one's (names only)."""
        spec = self.spec
        return config_report(
            spec.root, spec.service, current, spec.release, spec.config, spec.env_text
        )[0]

    # -- lock
    def _take_lock(self, check_mode: bool) -> dict:
        taken = self.lock.take(self.spec.lock or {}, check_mode=check_mode)
        self.warnings.extend(taken.pop("warnings", []))
        return {k: taken.get(k) for k in ("outcome", "holder", "took_over", "waited", "msg")}

    # -- files
    def _unit_namespace(self) -> None:
        """Refuse a service named like a template unit of the host (`user`, `getty`,
        `modprobe`...): its settings and drop-ins would apply to flipback's instances
        `<service>@<release>`, and flipback's names must never touch the OS's. Only reads."""
        service = self.spec.service
        for directory in self.spec.unit_search_path:
            template = os.path.join(directory, instance_template(service))
            dropins = f"{template}.d"
            found = None
            if os.path.isdir(dropins):
                found = dropins
            elif os.path.lexists(template) and not flipback_template(template, service):
                # flipback's own template of older versions is no collision.
                found = template
            if found is not None:
                raise ReleaseError(
                    f"name: got {service!r}, which the host's systemd already uses: {found} "
                    f"would apply to flipback's instances {service}@<release>; expected a "
                    "service name no unit on the host uses (rename the service)",
                    field="name",
                    value=service,
                    retryable=False,
                )

    def _tls_files(self) -> None:
        """Refuse a release whose nginx.tls files are not here, before anything changes:
        its site would fail `nginx -t` at its switch, after other hosts switched. Both must
        be regular files (symlinks followed) that root can read; the key must give no
        access to other users (o-rwx: 0600 root, or 0640 root:ssl-cert as Debian makes
        them). Only reads: check mode too."""
        tls = (self.spec.config.get("nginx") or {}).get("tls") or {}
        for key in ("certificate", "key"):
            path = tls.get(key)
            if not path:
                continue
            field_name = f"nginx.tls.{key}"
            found = None
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):
                    found = "not a regular file"
                else:
                    with open(path, "rb") as handle:
                        handle.read(1)
            except FileNotFoundError:
                found = "missing"
            except OSError as exc:
                found = f"unreadable ({exc.strerror or type(exc).__name__})"
            else:
                if found is None and key == "key" and st.st_mode & 0o007:
                    found = f"open to every local user (mode {stat.S_IMODE(st.st_mode):04o})"
            if found is None:
                continue
            expected = (
                "a regular file root can read"
                + (
                    " that other users cannot (chmod o-rwx, e.g. 0600 root:root)"
                    if key == "key"
                    else ""
                )
                + " on this host; put it in place (or fix the path), then run again "
                "(retrying as-is fails the same way)"
            )
            raise ReleaseError(
                f"{field_name}: got {path!r}, which on this host is {found}; expected {expected}",
                field=field_name,
                value=path,
                expected=expected,
                retryable=False,
            )

    def _user(self, check_mode: bool) -> None:
        spec = self.spec
        try:
            entry = pwd.getpwnam(spec.user)
        except KeyError:
            entry = None
        if entry is not None:
            self._existing_user(entry)
            return
        self.changes.append(f"user {spec.user}")
        if check_mode:
            return
        self._must(
            [
                "useradd",
                "--system",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "--home-dir",
                os.path.join(spec.root, "shared"),
                "--no-create-home",
                spec.user,
            ],
            f"create the system user {spec.user}",
        )

    def _existing_user(self, entry: pwd.struct_passwd) -> None:
        """Refuse an existing account unless flipback made it for this service, or it is
        adopted (adopt_user) and its primary group is its own: the release's env file is
        readable by that group, so a shared one (`nogroup`, `users`, another account's)
        would hand the service's secrets to others. Only reads: check mode too.

        Made by flipback (see the useradd below): home <root>/shared, and a primary group
        of its own name. Adopted: a primary group of its own name, which /etc/group lists
        no other member of."""
        spec = self.spec
        user = spec.user
        expected_home = os.path.normpath(os.path.join(spec.root, "shared"))
        home = entry.pw_dir or ""
        try:
            group = grp.getgrgid(entry.pw_gid)
        except KeyError:
            group_name, members = None, []
        else:
            group_name, members = group.gr_name, sorted(m for m in group.gr_mem if m != user)
        own_group = group_name == user
        made_here = bool(home) and os.path.normpath(home) == expected_home
        if own_group and (made_here or (spec.adopt_user and not members)):
            return
        shown_group = (
            f"{group_name} (gid {entry.pw_gid})"
            if group_name is not None
            else f"gid {entry.pw_gid} (no such group)"
        )
        if members:
            shown_group += f", which also lists {', '.join(members)}"
        why = []
        if not own_group:
            why.append(f"its primary group is not its own (a group named {user})")
        if spec.adopt_user:
            if members:
                why.append("its group has other members")
            why = [f"adopt_user is set, but {'; '.join(why)}"]
        elif not made_here:
            why.append(
                f"flipback did not create it (its home would be {expected_home}) "
                "and adopt_user is not set"
            )
        raise ReleaseError(
            f"user: got {user!r}, an existing account with home {home or '(none)'} and "
            f"primary group {shown_group}: {'; '.join(why)}; expected {EXPECTED_USER}",
            field="user",
            value=user,
            expected=EXPECTED_USER,
            retryable=False,
        )

    def _ids(self, check_mode: bool) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(self.spec.user)
        except KeyError:
            if check_mode:
                return -1, -1
            raise
        return entry.pw_uid, entry.pw_gid

    def _dir(self, path: str, uid: int, gid: int, mode: int, check_mode: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.changes.append(f"directory {path}")
            if not check_mode:
                os.makedirs(path, mode=mode, exist_ok=True)
                os.chown(path, max(uid, 0), max(gid, 0))
                os.chmod(path, mode)
            return
        if uid < 0:
            return
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid, gid):
            self.changes.append(f"directory {path} (owner or mode)")
            if not check_mode:
                os.chown(path, uid, gid)
                os.chmod(path, mode)

    def _must(self, argv: Sequence[str], what: str) -> None:
        proc = self.run(argv)
        if proc.returncode != 0:
            raise ReleaseError(
                f"could not {what}: {' '.join(argv)} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}",
                retryable=True,
            )

    # -- already live?
    def _live_and_alone(self, state, check_mode: bool) -> bool:
        spec = self.spec
        config, _env = recorded_config(spec.root, spec.release)
        processes = sorted(processes_of(config))
        units = [spec.unit(spec.release)]
        units += [process_unit(spec.service, p, spec.release) for p in processes]
        if not all_enabled(self.run, units):
            return False
        allowed = {spec.release}
        if spec.standby:
            allowed.update(state.previous_good()[:1])
        found = scan_instances(self.run, spec.service)
        active, retiring = found.active, found.retiring
        if spec.release not in active or set(active) - allowed - set(retiring):
            return False
        if found.processes.get(spec.release, []) != processes or any(
            r != spec.release for r in found.processes
        ):
            # A process of the live release is down, or one of another release runs:
            # the switch brings them to what the live release declares.
            return False
        site = recorded_site(spec.root, spec.service, spec.release)
        if site is not None and read_text(site_path(spec.service, spec.site_dir)) != site[0]:
            # The site is not the release's (edited, or left by an interrupted switch):
            # the switch puts it back.
            return False
        if check_mode:
            return True
        try:
            self.prober(
                Target(
                    url_path=spec.health_path,
                    host="127.0.0.1",
                    port=spec.port,
                    host_header=spec.health_host,
                    tls=tls_of(spec.root, spec.release),
                ),
                expect_release(
                    spec.expect_status,
                    spec.expect_json,
                    spec.release,
                    release_in_of(spec.root, spec.release, spec.release_in),
                ),
                Policy(timeout=spec.noop_timeout, delay=0.05, successes=spec.public_successes),
            )
        except HealthError:
            # The switch call makes it answer, or fails naming the gate.
            return False
        return True
