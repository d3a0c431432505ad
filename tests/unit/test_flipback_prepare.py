"""Unit tests of module_utils/flipback_prepare.py on real files under tmp_path.

As root (as the module runs) ownership is real: directories are chowned to the service
user's ids; unprivileged, fakes.Ownership keeps the owners the chowns give and reports
them, so the same checks run. The host's accounts are a fake (Accounts: what
Prepare reads through pwd and grp, and what the fake useradd adds), so no system
account is made or borrowed; by default the service user `shop` is there as flipback
creates it (home <root>/shared, a group of its own) with ids no real account has.
systemctl, nginx, useradd and the public probe go through fakes; the deploy lock is a
real ServiceLock under tmp_path, and the nginx site directory (site_dir) is under
tmp_path too. Prepare writes no site: the switch does, after its gate; prepare
only reads it to tell whether the live release is served as it defines. Releases whose
configuration is recorded are made with test_flipback_runtime.a_release, as
release_config and release_stage make them.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.module_utils import flipback_prepare as fp
from ansible.module_utils.flipback_health import Expect, HealthError, Policy, Target
from ansible.module_utils.flipback_lock import LockError, ServiceLock
from ansible.module_utils.flipback_prepare import (
    EXPECTED_USER,
    Prepare,
    PrepareSpec,
    list_instances,
)
from ansible.module_utils.flipback_release import (
    ReleaseError,
    config_report,
)
from ansible.module_utils.flipback_runtime import site_text
from fakes import FakeSystemd, ReleaseTree, list_units_argv
from test_flipback_runtime import Release, a_release

# Files are handed to root and to the service user: as root for real, else as
# fakes.Ownership records and reports them (the conftest's `ownership`).
pytestmark = pytest.mark.usefixtures("ownership")

SERVICE = "shop"
USER = "shop"
# Ids of the fake accounts: no real account or group has them (the files are chowned to them).
UID = GID = 64100
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
C = "20261103T120000-cccccccccc"
OLD_SECRET = "old-s3cret-value"
NEW_SECRET = "new-s3cret-value"
OWNER = {"run_id": "ctl:4242:1795953600", "by": "bob"}


def unit(release: str) -> str:
    return f"{SERVICE}@{release}.service"


class Accounts:
    """The host's accounts as Prepare reads them (its pwd.getpwnam, grp.getgrgid), and
    as the fake useradd adds to them. Entries are plain objects with the attributes of
    pwd's and grp's (pwd.struct_passwd/grp.struct_group built here made CPython 3.11.7
    print "SystemError ... in tp_clear" when collected)."""

    def __init__(self) -> None:
        self.users: dict[str, SimpleNamespace] = {}
        self.groups: dict[int, SimpleNamespace] = {}

    def add_group(self, name: str, gid: int, members: Sequence[str] = ()) -> int:
        self.groups[gid] = SimpleNamespace(
            gr_name=name, gr_passwd="x", gr_gid=gid, gr_mem=list(members)
        )
        return gid

    def add_user(self, name: str, home: str, gid: int, uid: int = UID) -> SimpleNamespace:
        entry = SimpleNamespace(
            pw_name=name,
            pw_passwd="x",
            pw_uid=uid,
            pw_gid=gid,
            pw_gecos="",
            pw_dir=home,
            pw_shell="/usr/sbin/nologin",
        )
        self.users[name] = entry
        return entry

    def useradd(self, argv: Sequence[str]) -> None:
        """What `useradd --system --user-group --home-dir H ... NAME` makes."""
        name = argv[-1]
        gid = max([GID - 1, *self.groups]) + 1
        self.add_group(name, gid)
        self.add_user(name, argv[argv.index("--home-dir") + 1], gid, uid=gid)

    def getpwnam(self, name: str) -> SimpleNamespace:
        return self.users[name]

    def getgrgid(self, gid: int) -> SimpleNamespace:
        return self.groups[gid]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Accounts:
        """Make flipback_prepare (only it) read these accounts."""
        monkeypatch.setattr(fp, "pwd", SimpleNamespace(getpwnam=self.getpwnam))
        monkeypatch.setattr(fp, "grp", SimpleNamespace(getgrgid=self.getgrgid))
        return self

    @classmethod
    def made_by_flipback(cls, root: Path | str, user: str = USER) -> Accounts:
        """A host where flipback created `user` for the service at `root` before."""
        accounts = cls()
        accounts.add_user(user, os.path.join(root, "shared"), accounts.add_group(user, GID))
        return accounts


class Host(FakeSystemd):
    """Fake systemctl (fakes.FakeSystemd)/nginx/useradd and public prober, with one
    ordered log. `active` and `retiring` name releases (instances running, retire timers
    pending)."""

    # The accounts the fake useradd adds to (set by Paths.prepare).
    accounts: Accounts | None = None

    def __init__(
        self,
        *,
        active: Sequence[str] = (),
        enabled: Sequence[str] = (),
        retiring: Sequence[str] = (),
    ) -> None:
        super().__init__(active=[unit(r) for r in active], enabled=enabled)
        self.timers = {f"flipback-retire-{SERVICE}-{r}": unit(r) for r in retiring}
        self.nginx_test = (0, "")
        self.fail: dict[str, str] = {}
        self.probe_error: HealthError | None = None
        self.start_rc = 0
        self.probes: list[tuple[Target, Expect, Policy]] = []

    other_commands_succeed = True

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if argv[0] in self.fail:
            self.calls.append(list(argv))
            return subprocess.CompletedProcess(list(argv), 4, "", self.fail[argv[0]])
        return super().run(argv)

    def cmd_useradd(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if self.accounts is not None:
            self.accounts.useradd(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    def cmd_nginx(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        rc, err = self.nginx_test if argv[:2] == ["nginx", "-t"] else (0, "")
        return subprocess.CompletedProcess(argv, rc, "", err)

    def start(self, argv: list[str], units: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, self.start_rc, "", "")

    def prober(self, target: Target, expect: Expect, policy: Policy) -> dict:
        self.probes.append((target, expect, policy))
        if self.probe_error is not None:
            raise self.probe_error
        return {"ok": True}

    def commands(self) -> list[str]:
        """Every command but the read-only queries, as one string each."""
        queries = (["systemctl", "list-units"], ["systemctl", "is-enabled"])
        return [" ".join(c) for c in self.calls if c[:2] not in queries]


class Paths:
    def __init__(self, tmp_path: Path, accounts: Accounts) -> None:
        self.tmp_path = tmp_path
        self.root = tmp_path / "srv" / SERVICE
        # Stand for /etc/systemd/system and /usr/lib/systemd/system.
        self.units_etc = tmp_path / "units-etc"
        self.units_lib = tmp_path / "units-lib"
        self.site = tmp_path / "etc" / "nginx" / "conf.d" / f"flipback-{SERVICE}.conf"
        self.lock = tmp_path / "lock" / SERVICE
        self.accounts = accounts

    def configured(self, env: dict[str, str] | None = None, **changes: object) -> Release:
        """A release of the shop on this root, as release_config works it out."""
        values: dict = {"env": env, "user": USER, **changes}
        return a_release(SERVICE, str(self.root), **values)

    def spec(self, release: str = B, **overrides: object) -> PrepareSpec:
        values: dict = {
            "service": SERVICE,
            "root": str(self.root),
            "user": USER,
            "release": release,
            "site_dir": str(self.site.parent),
            "lock": {"owner": OWNER, "wait": 0, "stale_after": 120, "live_runs": None},
            "port": 8000,
            "expect_json": {"ok": True},
            "public_successes": 2,
            # Never the machine's own systemd directories.
            "unit_search_path": (str(self.units_etc), str(self.units_lib)),
            **overrides,
        }
        return PrepareSpec(**values)

    def prepare(self, host: Host, release: str = B, **overrides: object) -> Prepare:
        host.accounts = self.accounts
        return Prepare(
            self.spec(release, **overrides),
            run=host.run,
            prober=host.prober,
            lock=ServiceLock(SERVICE, str(self.lock)),
        )

    def lock_holder(self) -> dict | None:
        path = self.lock / ".lock"
        return json.loads(path.read_text()) if path.exists() else None

    def release(
        self,
        release_id: str,
        *events: str,
        status: str = "staged",
        deps_key: str = "",
        configured: Release | None = None,
    ) -> None:
        """A release on disk; `configured`: staged with that configuration (its manifest's
        `config` and its env file), else as an older flipback staged it (neither)."""
        tree = ReleaseTree(self.root, SERVICE)
        tree.write_release(release_id, None)
        manifest: dict = {"status": status}
        if deps_key:
            manifest["deps_key"] = deps_key
            tree.venv(release_id)
        if configured is not None:
            manifest["config"] = configured.config
            tree.env_file(release_id, configured.env_text, mode=0o750)
        tree.release(release_id, **manifest).events(*((release_id, e) for e in events))

    def current(self, release_id: str) -> None:
        ReleaseTree(self.root, SERVICE).current(release_id)

    def site_of(self, port: int = 8000) -> str:
        """The site a release of the shop on this root listening on `port` is served by."""
        return site_text(service=SERVICE, home=str(self.root), port=port)

    def put_site(self, content: str | None) -> None:
        """The site as the switch (or a hand) left it; None: there is none."""
        if content is None:
            if self.site.exists():
                self.site.unlink()
            return
        self.site.parent.mkdir(parents=True, exist_ok=True)
        self.site.write_text(content)


@pytest.fixture
def paths(tmp_path, monkeypatch) -> Paths:
    root = tmp_path / "srv" / SERVICE
    return Paths(tmp_path, Accounts.made_by_flipback(root).install(monkeypatch))


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def ready(paths: Paths, configured: Release | None = None) -> None:
    """A host prepared before, with B current (staged with `configured`, if given) and A
    the previous good release."""
    Prepare(paths.spec(lock=None), run=Host().run).prepare(check_mode=False)
    paths.release(A, "staged", "active")
    paths.release(B, "staged", "active", configured=configured)
    paths.current(B)


# --------------------------------------------------------------------------- instances


def test_list_instances_reads_services_and_retire_timers():
    def run(argv):
        out = (
            f"{unit(A)} loaded active running Shop A\n"
            f"{unit(B)} loaded activating start Shop B\n"
            f"flipback-retire-{SERVICE}-{A}.timer loaded active waiting\n"
            f"{SERVICE}-other.service loaded active running other\n"
            "\n"
        )
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert list_instances(run, SERVICE) == ([A, B], [A])


def test_list_instances_never_counts_instances_not_named_by_a_release_id():
    # A service named like an OS template unit (`user`) shares the prefix of its
    # instances (user@1000.service): only release ids are flipback's.
    def run(argv):
        out = (
            "user@1000.service loaded active running User Manager for UID 1000\n"
            f"user@{A}.service loaded active running flipback user release\n"
            "flipback-retire-user-1000.timer loaded active waiting\n"
            f"user@{A}x.service loaded active running not a release id either\n"
        )
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert list_instances(run, "user") == ([A], [])


def test_list_instances_asks_systemd_once_for_both():
    calls = []

    def run(argv):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    assert list_instances(run, SERVICE) == ([], [])
    assert calls == [["systemctl", *list_units_argv(SERVICE)]]


# --------------------------------------------------------------------------- files


def test_a_fresh_host_gets_everything(paths):
    host = Host()

    result = paths.prepare(host).prepare(check_mode=False)

    assert mode_owner(paths.root) == (0o755, 0, 0)
    assert mode_owner(paths.root / "releases") == (0o755, 0, 0)
    assert mode_owner(paths.root / ".incoming") == (0o700, 0, 0)
    assert mode_owner(paths.root / "shared") == (0o750, UID, GID)

    # No unit, no env file, no site, no daemon-reload, no nginx: each release stages its
    # own unit and env file, and the switch puts its site in place after its gate.
    assert host.commands() == []
    assert sorted(p.name for p in paths.tmp_path.iterdir()) == ["lock", "srv"]
    assert not paths.site.parent.exists()
    assert result["changed"] is True
    assert result["changes"] == [
        f"directory {paths.root}",
        f"directory {paths.root / 'releases'}",
        f"directory {paths.root / '.incoming'}",
        f"directory {paths.root / 'shared'}",
    ]
    assert (result["current"], result["staged"], result["noop"]) == (None, False, False)
    assert result["config_changes"] == []
    assert "env_changed" not in result
    assert "diff" not in result
    assert result["lock"]["outcome"] == "acquired"
    assert paths.lock_holder()["run_id"] == OWNER["run_id"]


def test_a_prepared_host_is_unchanged_and_reloads_nothing(paths):
    paths.prepare(Host()).prepare(check_mode=False)
    host = Host()

    result = paths.prepare(host).prepare(check_mode=False)

    assert result["changed"] is False
    assert result["changes"] == []
    assert "diff" not in result
    assert result["config_changes"] == []
    assert result["lock"]["outcome"] == "refreshed"
    assert host.commands() == []


def test_a_new_configuration_writes_and_reloads_nothing(paths):
    ready(paths, paths.configured({"SHOP_SECRET": OLD_SECRET}))
    host = Host()
    new = paths.configured({"SHOP_SECRET": NEW_SECRET}, workers=2)

    result = paths.prepare(host, C, config=new.config, env_text=new.env_text).prepare(False)

    # How C runs is C's own unit and env file, staged with it: nothing to write here.
    assert result["config_changes"] == ["workers 1 -> 2", "SHOP_SECRET"]
    assert (result["changed"], result["changes"], host.commands()) == (False, [], [])


def site_dir_listing(paths: Paths) -> dict[str, tuple[bytes, int]]:
    """Every file under site_dir, with its content and mtime (nothing is written)."""
    if not paths.site.parent.exists():
        return {}
    return {
        str(p.relative_to(paths.site.parent)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(paths.site.parent.rglob("*"))
    }


SITES = {
    "missing": lambda paths: None,
    "live-port": lambda paths: paths.site_of(8000),
    "new-port": lambda paths: paths.site_of(8001),
    "edited": lambda paths: paths.site_of(8000) + "# edited by hand\n",
}


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.parametrize(
    ("release", "port"),
    [
        pytest.param(B, 8000, id="current"),
        pytest.param(C, 8001, id="new-port"),
        pytest.param(C, 8000, id="same-port"),
    ],
)
def test_prepare_never_writes_under_site_dir(paths, check_mode, site, release, port):
    ready(paths, paths.configured(port=8000))
    paths.put_site(SITES[site](paths))
    before = site_dir_listing(paths)
    host = live_host()
    new = paths.configured(port=port)

    result = paths.prepare(
        host, release, config=new.config, env_text=new.env_text, port=port
    ).prepare(check_mode=check_mode)

    # Not written, not removed, not created, not reloaded: the switch does that, after
    # its gate, and only for a release that is going live.
    assert site_dir_listing(paths) == before
    assert not [c for c in host.calls if c[0] == "nginx" or "nginx" in c]
    assert not [c for c in result["changes"] if "site" in c or "conf.d" in c]
    assert result["changed"] is False
    assert "diff" not in result
    # A new port is told as a change of the configuration, and that is all.
    assert result["config_changes"] == (["port 8000 -> 8001"] if port == 8001 else [])


def test_owner_and_mode_are_put_right(paths):
    paths.prepare(Host()).prepare(check_mode=False)
    os.chmod(paths.root / "shared", 0o777)
    host = Host()

    result = paths.prepare(host).prepare(check_mode=False)

    assert result["changes"] == [f"directory {paths.root / 'shared'} (owner or mode)"]
    assert "diff" not in result
    assert mode_owner(paths.root / "shared") == (0o750, UID, GID)
    assert host.commands() == []


def test_a_failed_useradd_is_retryable(paths):
    host = Host()
    host.fail["useradd"] = "boom"
    with pytest.raises(ReleaseError) as failed:
        paths.prepare(host, user=f"{USER}x").prepare(check_mode=False)
    assert failed.value.msg.startswith(f"could not create the system user {USER}x: ")
    assert failed.value.msg.endswith("exited 4: boom")
    assert failed.value.retryable is True


def test_check_mode_changes_nothing(paths):
    paths.accounts.users.clear()
    host = Host()

    result = paths.prepare(host).prepare(check_mode=True)

    assert result["changed"] is True
    assert result["changes"] == [
        f"user {USER}",
        f"directory {paths.root}",
        f"directory {paths.root / 'releases'}",
        f"directory {paths.root / '.incoming'}",
        f"directory {paths.root / 'shared'}",
    ]
    assert "diff" not in result
    assert result["lock"]["outcome"] == "acquired"
    assert result["noop"] is False
    assert host.calls == []
    assert not paths.root.exists()
    assert not paths.site.parent.exists()
    assert not paths.lock.exists()


# --------------------------------------------------------------------------- the service user

# How the service user is found on the host, for test_the_service_user: None, no such
# user; else (home, primary group, its members), where home "<shared>" stands for
# <root>/shared (the home flipback gives the users it creates) and the group is the
# user's own (`shop`) or another: `nogroup` and `users` (shared by whoever has them),
# `web` (another account's), or None (a gid that has no group entry).
MADE = "<shared>"
ACCOUNTS = {
    "missing": None,
    "made-by-flipback": (MADE, USER, []),
    # The members of a group of its own are only looked at for an adopted account.
    "made-by-flipback-group-with-members": (MADE, USER, ["alice"]),
    "made-by-flipback-group-changed": (MADE, "nogroup", []),
    "like-sshd": ("/run/sshd", "nogroup", []),
    "like-nobody": ("/nonexistent", "nogroup", []),
    "own-group-other-home": (f"/home/{USER}", USER, []),
    "own-group-listing-itself": (f"/home/{USER}", USER, [USER]),
    "group-users": (f"/home/{USER}", "users", []),
    "another-account-s-group": (f"/home/{USER}", "web", ["web"]),
    "group-with-members": (f"/home/{USER}", USER, ["alice", "bob"]),
    "no-group-entry": (f"/home/{USER}", None, []),
}
GIDS = {USER: GID, "nogroup": 65534, "users": 100, "web": 64200, None: 64300}


def on_host(paths: Paths, account: str) -> tuple[str, str | None] | None:
    """Put the account `account` names (ACCOUNTS) in place of the default one; return
    its home and group, as the refusal names them."""
    paths.accounts.users.clear()
    found = ACCOUNTS[account]
    if found is None:
        return None
    home, group, members = found
    home = str(paths.root / "shared") if home == MADE else home
    if group is not None:
        paths.accounts.add_group(group, GIDS[group], members)
    paths.accounts.add_user(USER, home, GIDS[group])
    return home, group


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("account", "adopt_user", "outcome"),
    [
        pytest.param("missing", False, "created", id="missing-created"),
        pytest.param("missing", True, "created", id="missing-adopt-created"),
        pytest.param("made-by-flipback", False, "taken", id="made-by-flipback"),
        pytest.param("made-by-flipback", True, "taken", id="made-by-flipback-adopt"),
        pytest.param(
            "made-by-flipback-group-with-members",
            False,
            "taken",
            id="made-by-flipback-group-with-members",
        ),
        pytest.param(
            "made-by-flipback-group-changed", False, "refused", id="made-by-flipback-nogroup"
        ),
        pytest.param(
            "made-by-flipback-group-changed",
            True,
            "refused",
            id="made-by-flipback-nogroup-adopt",
        ),
        pytest.param("like-sshd", False, "refused", id="other-home-refused"),
        pytest.param("like-nobody", False, "refused", id="nobody-refused"),
        pytest.param("own-group-other-home", False, "refused", id="own-group-not-adopted"),
        pytest.param("own-group-other-home", True, "taken", id="adopt-own-group"),
        pytest.param("own-group-listing-itself", True, "taken", id="adopt-own-group-lists-it"),
        pytest.param("like-sshd", True, "refused", id="adopt-nogroup"),
        pytest.param("like-nobody", True, "refused", id="adopt-nobody"),
        pytest.param("group-users", True, "refused", id="adopt-group-users"),
        pytest.param("another-account-s-group", True, "refused", id="adopt-another-s-group"),
        pytest.param("group-with-members", True, "refused", id="adopt-group-with-members"),
        pytest.param("no-group-entry", True, "refused", id="adopt-no-group-entry"),
    ],
)
def test_the_service_user(paths, account, adopt_user, outcome, check_mode):
    found = on_host(paths, account)
    host = Host()
    prepare = paths.prepare(host, adopt_user=adopt_user)

    if outcome == "refused":
        assert found is not None
        with pytest.raises(ReleaseError) as failed:
            prepare.prepare(check_mode=check_mode)

        home, group = found
        error = failed.value
        assert (error.details["field"], error.details["value"]) == ("user", USER)
        assert error.details["expected"] == EXPECTED_USER
        assert error.retryable is False
        # What was found, why it is refused, and what would do.
        assert error.msg.startswith(f"user: got {USER!r}, an existing account with home {home} ")
        shown = f"{group} (gid {GIDS[group]})" if group else f"gid {GIDS[group]} (no such group)"
        assert f"primary group {shown}" in error.msg
        assert error.msg.endswith(f"expected {EXPECTED_USER}")
        members = [m for m in ACCOUNTS[account][2] if m != USER]
        if group != USER:
            assert f"its primary group is not its own (a group named {USER})" in error.msg
        if adopt_user:
            assert "adopt_user is set, but " in error.msg
        if adopt_user and members:
            assert f"which also lists {', '.join(members)}" in error.msg
            assert "its group has other members" in error.msg
        if not adopt_user and home != str(paths.root / "shared"):
            assert f"its home would be {paths.root / 'shared'}" in error.msg
            assert "adopt_user is not set" in error.msg
        # Before anything is made: no user, no directory (a root that is not there yet
        # is still not there).
        assert host.calls == []
        assert not paths.root.exists()
        # The lock is taken before the user is looked at, and a failure does not give it
        # back: the role's rescue does (release_lock, roles/flipback/tasks/stage.yml). In
        # check mode it is only looked at.
        if check_mode:
            assert not paths.lock.exists()
        else:
            assert paths.lock_holder()["run_id"] == OWNER["run_id"]
        return

    result = prepare.prepare(check_mode=check_mode)

    useradd = [c for c in host.calls if c[0] == "useradd"]
    if outcome == "created":
        assert result["changes"][0] == f"user {USER}"
        assert useradd == (
            []
            if check_mode
            else [
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--home-dir",
                    str(paths.root / "shared"),
                    "--no-create-home",
                    USER,
                ]
            ]
        )
    else:
        assert f"user {USER}" not in result["changes"]
        assert useradd == []
    assert result["lock"]["outcome"] == "acquired"
    if check_mode:
        assert not paths.root.exists()
    else:
        entry = paths.accounts.getpwnam(USER)
        assert mode_owner(paths.root / "shared") == (0o750, entry.pw_uid, entry.pw_gid)


def test_a_user_flipback_created_is_taken_on_the_next_deploy(paths):
    paths.accounts.users.clear()
    paths.prepare(Host()).prepare(check_mode=False)
    host = Host()

    result = paths.prepare(host).prepare(check_mode=False)

    # What useradd made is what the check accepts: no adopt_user needed.
    assert (result["changed"], result["changes"], host.calls) == (False, [], [])


def test_a_user_flipback_created_for_another_root_is_refused(paths):
    # The same name, made by flipback for a service somewhere else: not this one's.
    paths.accounts.users.clear()
    paths.accounts.add_user(USER, "/srv/other/shared", paths.accounts.add_group(USER, GID))

    with pytest.raises(ReleaseError) as failed:
        paths.prepare(Host()).prepare(check_mode=False)

    assert "home /srv/other/shared " in failed.value.msg
    assert f"its home would be {paths.root / 'shared'}" in failed.value.msg


def test_a_trailing_slash_on_the_root_is_the_same_home(paths):
    result = paths.prepare(Host(), root=f"{paths.root}/").prepare(check_mode=False)
    assert f"user {USER}" not in result["changes"]


REAL = pytest.mark.skipif(
    "nobody" not in {p.pw_name for p in pwd.getpwall()}
    or grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name == "nobody",
    reason="needs the system account nobody, with a group not its own (Debian: nogroup)",
)


@REAL
@pytest.mark.parametrize("adopt_user", [False, True], ids=["plain", "adopt"])
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_the_real_nobody_is_refused(tmp_path, check_mode, adopt_user):
    # Through the real pwd and grp: the account the issue is about.
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    root = tmp_path / "srv" / SERVICE
    host = Host()
    spec = PrepareSpec(
        service=SERVICE, root=str(root), user="nobody", release=B, adopt_user=adopt_user
    )

    with pytest.raises(ReleaseError) as failed:
        Prepare(spec, run=host.run, prober=host.prober).prepare(check_mode=check_mode)

    assert failed.value.details["field"] == "user"
    assert f"home {nobody.pw_dir} and primary group {group} (gid {nobody.pw_gid})" in (
        failed.value.msg
    )
    assert (host.calls, root.exists()) == ([], False)


# --------------------------------------------------------------------------- state and noop


@pytest.mark.parametrize(
    ("status", "staged"),
    [pytest.param("staged", True, id="staged"), pytest.param("staging", False, id="incomplete")],
)
def test_reports_whether_the_release_is_staged(paths, status, staged):
    ready(paths)
    paths.release(C, status=status)

    result = paths.prepare(Host(), C).prepare(check_mode=False)

    assert (result["current"], result["staged"], result["noop"]) == (B, staged, False)


def host_of(running: list[str], **changes: object) -> Host:
    """B enabled, `running` running; `active`, `enabled` and `retiring` (releases) as Host
    takes them, any other change set on the host."""
    states = {"active": running, "enabled": [unit(B)]}
    names = ("active", "enabled", "retiring")
    states.update((name, changes.pop(name)) for name in names if name in changes)
    host = Host(**states)  # type: ignore[arg-type]
    for name, value in changes.items():
        setattr(host, name, value)
    return host


def live_host(**changes: object) -> Host:
    return host_of([A, B], **changes)


@pytest.mark.parametrize(
    ("host", "standby", "noop"),
    [
        pytest.param(live_host(), True, True, id="live-with-standby"),
        pytest.param(live_host(active=[B]), True, True, id="live-alone"),
        pytest.param(live_host(), False, False, id="standby-not-allowed"),
        pytest.param(live_host(enabled=set()), True, False, id="not-enabled"),
        pytest.param(live_host(active=[A]), True, False, id="not-running"),
        pytest.param(live_host(active=[A, B, C]), True, False, id="straggler"),
        pytest.param(
            live_host(active=[A, B, C], retiring=[C]), True, True, id="straggler-retiring"
        ),
        pytest.param(
            live_host(probe_error=HealthError("status 502")), True, False, id="not-answering"
        ),
    ],
)
def test_noop_when_the_release_is_already_live_and_alone(paths, host, standby, noop):
    ready(paths)
    paths.release(C, "staged", "failed")

    result = paths.prepare(host, standby=standby).prepare(check_mode=False)

    assert result["noop"] is noop
    assert result["changed"] is False
    if noop:
        # Nothing to switch here: the lock goes back in this same call.
        assert result["lock"]["outcome"] == "released"
        assert paths.lock_holder() is None
        (target, expect, policy) = host.probes[0]
        assert (target.host, target.port, target.unix_socket) == ("127.0.0.1", 8000, None)
        assert expect == Expect(status=(200,), json={"ok": True, "release": B})
        assert (policy.timeout, policy.successes) == (5.0, 2)
    else:
        assert result["lock"]["outcome"] == "acquired"
        assert paths.lock_holder()["run_id"] == OWNER["run_id"]


def test_noop_in_check_mode_probes_nothing_and_keeps_no_lock(paths):
    ready(paths)
    host = live_host()

    result = paths.prepare(host).prepare(check_mode=True)

    assert result["noop"] is True
    assert host.probes == []
    assert paths.lock_holder() is None


def test_no_noop_when_something_changed(paths):
    ready(paths)
    os.chmod(paths.root / "shared", 0o777)
    host = live_host()

    result = paths.prepare(host).prepare(check_mode=False)

    assert result["noop"] is False
    assert host.probes == []
    assert paths.lock_holder() is not None


def test_noop_without_a_lock(paths):
    ready(paths)
    result = paths.prepare(live_host(), lock=None).prepare(check_mode=False)
    assert (result["noop"], result["lock"]) == (True, None)
    assert paths.lock_holder() is None


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("live_port", "site", "noop"),
    [
        pytest.param(8000, lambda p: p.site_of(8000), True, id="the-release-s-site"),
        pytest.param(8001, lambda p: p.site_of(8001), True, id="the-release-s-other-port"),
        pytest.param(8000, lambda p: None, False, id="missing"),
        pytest.param(8000, lambda p: p.site_of(8001), False, id="another-port"),
        pytest.param(8001, lambda p: p.site_of(8000), False, id="the-old-port"),
        pytest.param(8000, lambda p: p.site_of(8000) + "# edited by hand\n", False, id="edited"),
        pytest.param(8000, lambda p: p.site_of(8000).rstrip("\n"), False, id="one-byte-off"),
        pytest.param(8000, lambda p: "", False, id="empty"),
        pytest.param(
            8000,
            lambda p: site_text(service=SERVICE, home="/srv/other", port=8000),
            False,
            id="another-home",
        ),
    ],
)
def test_noop_only_when_the_site_is_the_live_release_s(paths, check_mode, live_port, site, noop):
    live = paths.configured(port=live_port)
    ready(paths, live)
    paths.put_site(site(paths))
    before = site_dir_listing(paths)
    host = live_host()

    result = paths.prepare(
        host, config=live.config, env_text=live.env_text, port=live_port
    ).prepare(check_mode=check_mode)

    assert result["noop"] is noop
    assert result["changed"] is False
    # Not put right here: a site that is not the release's is the switch's to write.
    assert site_dir_listing(paths) == before
    assert not [c for c in host.calls if c[0] == "nginx" or "nginx" in c]
    if check_mode or not noop:
        # The site is looked at before the probe: a site that differs probes nothing.
        assert host.probes == []
    else:
        (target, _expect, _policy) = host.probes[0]
        assert target.port == live_port
    if noop and not check_mode:
        assert result["lock"]["outcome"] == "released"
        assert paths.lock_holder() is None
    elif not check_mode:
        assert result["lock"]["outcome"] == "acquired"
        assert paths.lock_holder()["run_id"] == OWNER["run_id"]
    else:
        assert paths.lock_holder() is None


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    "site",
    [
        pytest.param(None, id="missing"),
        pytest.param("server { listen 8000; }\n", id="by-an-older-flipback"),
    ],
)
def test_noop_of_a_release_staged_before_configs_were_recorded_ignores_the_site(
    paths, check_mode, site
):
    # No recorded config, no port: the site is not the release's to check (the switch
    # leaves it alone too).
    ready(paths)
    paths.put_site(site)
    before = site_dir_listing(paths)
    host = live_host()

    result = paths.prepare(host).prepare(check_mode=check_mode)

    assert result["noop"] is True
    assert site_dir_listing(paths) == before


# --------------------------------------------------------------------------- roll forward

KEY = "0123456789abcdef"
WARM = ["systemctl start --no-block " + unit(C)]


def host_with(**changes: object) -> Host:
    return host_of([B], **changes)


@pytest.mark.parametrize(
    ("release", "status", "host", "check_mode", "warmed", "commands"),
    [
        pytest.param(C, "staged", host_with(), False, True, WARM, id="staged-cold"),
        pytest.param(C, "staged", host_with(start_rc=5), False, False, WARM, id="start-refused"),
        # Left running by a run killed after warming it: this switch's, stopped with it.
        pytest.param(C, "staged", host_with(active=[B, C]), False, True, [], id="already-up"),
        pytest.param(C, "staged", host_with(), True, False, [], id="check"),
        pytest.param(C, "staging", host_with(), False, False, [], id="not-staged"),
        pytest.param(B, "staged", host_with(), False, False, [], id="current-noop"),
        pytest.param(B, "staged", host_with(active=[]), False, False, [], id="current-down"),
    ],
)
def test_a_staged_release_is_started_early(
    paths, release, status, host, check_mode, warmed, commands
):
    ready(paths)
    paths.release(C, status=status)

    result = paths.prepare(host, release).prepare(check_mode=check_mode)

    assert result["warmed"] is warmed
    # A start refused is only a lost head start: the switch starts it and says why.
    assert host.commands() == commands
    assert result["changed"] is False


def test_the_warm_standby_is_not_this_switchs_to_stop(paths):
    ready(paths)
    # C went live after A, then B after C: C is the previous good release.
    paths.release(C, "staged", "active")
    paths.release(B, "active")
    host = host_with(active=[B, C])

    # A roll forward to the standby (C ran before B): it runs already, and if the
    # switch does not happen it stays running as the standby.
    result = paths.prepare(host, C).prepare(check_mode=False)

    assert (result["staged"], result["noop"], result["warmed"]) == (True, False, False)
    assert host.commands() == []


def test_a_release_that_failed_a_gate_before_is_warmed_too(paths):
    ready(paths)
    paths.release(C, "staged", "failed")
    host = host_with()

    result = paths.prepare(host, C).prepare(check_mode=False)

    # Staged before, failed a gate since: a new attempt still gets its head start.
    assert (result["staged"], result["noop"], result["warmed"]) == (True, False, True)
    assert result["lock"]["outcome"] == "acquired"
    assert paths.lock_holder()["run_id"] == OWNER["run_id"]


@pytest.mark.parametrize(
    ("deps_key", "donors", "current", "donor"),
    [
        pytest.param(KEY, {A: KEY}, None, A, id="same-wheels"),
        pytest.param(KEY, {A: "f" * 16}, None, None, id="other-wheels"),
        pytest.param("", {A: KEY}, None, None, id="no-key"),
        pytest.param(KEY, {}, None, None, id="nothing-staged"),
        pytest.param(KEY, {A: KEY, B: KEY}, B, B, id="current-first"),
    ],
)
def test_venv_donor_names_a_release_with_the_same_wheels(paths, deps_key, donors, current, donor):
    Prepare(paths.spec(lock=None), run=Host().run).prepare(check_mode=False)
    for release_id, key in donors.items():
        paths.release(release_id, deps_key=key)
    if current:
        paths.current(current)

    result = paths.prepare(Host(), C, deps_key=deps_key).prepare(check_mode=False)

    assert (result["staged"], result["venv_donor"]) == (False, donor)


def test_a_staged_release_needs_no_venv_donor(paths):
    ready(paths)
    paths.release(A, deps_key=KEY)
    paths.release(C, deps_key=KEY)

    result = paths.prepare(host_with(), C, deps_key=KEY).prepare(check_mode=False)

    assert (result["staged"], result["venv_donor"]) == (True, None)


def test_venv_donor_in_check_mode_on_a_fresh_host(paths):
    result = paths.prepare(Host(), C, deps_key=KEY).prepare(check_mode=True)

    assert (result["venv_donor"], result["warmed"]) == (None, False)
    assert not paths.root.exists()


# --------------------------------------------------------------------------- configuration

LIVE_ENV = {"SHOP_SECRET": OLD_SECRET, "KEEP": "same", "GONE": OLD_SECRET}


@pytest.mark.parametrize(
    ("env", "changes", "config_changes"),
    [
        pytest.param(
            {**LIVE_ENV, "SHOP_SECRET": NEW_SECRET}, {}, ["SHOP_SECRET"], id="value-changed"
        ),
        pytest.param({**LIVE_ENV, "ADDED": NEW_SECRET}, {}, ["+ADDED"], id="added"),
        pytest.param(
            {k: v for k, v in LIVE_ENV.items() if k != "GONE"}, {}, ["-GONE"], id="removed"
        ),
        pytest.param(LIVE_ENV, {"workers": 3}, ["workers 1 -> 3"], id="workers"),
        pytest.param(LIVE_ENV, {"port": 8001}, ["port 8000 -> 8001"], id="port"),
        pytest.param(
            LIVE_ENV,
            {"app": "app:make()"},
            ["app app:app -> app:make", "factory False -> True"],
            id="factory",
        ),
        pytest.param(
            {"SHOP_SECRET": NEW_SECRET, "KEEP": "same", "ADDED": "x"},
            {"workers": 2, "port": 9000},
            ["workers 1 -> 2", "port 8000 -> 9000", "+ADDED", "-GONE", "SHOP_SECRET"],
            id="all-at-once",
        ),
        # The same configuration with another build: nothing to say about it.
        pytest.param(
            LIVE_ENV, {"build_id": "20261130T090000-aaaaaaaaaa"}, [], id="same-config-new-code"
        ),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_config_changes_against_the_live_release(paths, env, changes, config_changes, check_mode):
    ready(paths, paths.configured(LIVE_ENV))
    new = paths.configured(env, **changes)

    result = paths.prepare(host_with(), C, config=new.config, env_text=new.env_text).prepare(
        check_mode=check_mode
    )

    assert result["config_changes"] == config_changes
    # The masked diff of the configuration is release_stage's (a result that changes
    # something, so --diff shows it); prepare returns no diff at all.
    assert "diff" not in result
    # Values are compared here, on the host, and shown nowhere.
    assert OLD_SECRET not in json.dumps(result)
    assert NEW_SECRET not in json.dumps(result)


def test_the_config_diff_of_config_report_masks_every_value(paths):
    ready(paths, paths.configured(LIVE_ENV))
    new = paths.configured({**LIVE_ENV, "SHOP_SECRET": NEW_SECRET, "ADDED": NEW_SECRET}, workers=2)

    changes, diff = config_report(str(paths.root), SERVICE, B, C, new.config, new.env_text)

    assert changes == ["workers 1 -> 2", "+ADDED", "SHOP_SECRET"]
    assert diff == {
        "before_header": f"{SERVICE} configuration of {B}",
        "after_header": f"{SERVICE} configuration of {C}",
        "before": (
            f"app: app:app\nworkers: 1\nport: 8000\nuser: {USER}\n"
            "env GONE=***\nenv KEEP=***\nenv SHOP_SECRET=***\n"
        ),
        "after": (
            f"app: app:app\nworkers: 2\nport: 8000\nuser: {USER}\n"
            "env ADDED=***\nenv GONE=***\nenv KEEP=***\nenv SHOP_SECRET=*** (changed)\n"
        ),
    }
    assert OLD_SECRET not in json.dumps(diff)
    assert NEW_SECRET not in json.dumps(diff)


def test_config_changes_of_a_live_release_staged_before_configs_were_recorded(paths):
    ready(paths)
    new = paths.configured({"SHOP_SECRET": NEW_SECRET})

    result = paths.prepare(host_with(), C, config=new.config, env_text=new.env_text).prepare(
        check_mode=False
    )

    assert result["config_changes"] == [
        f"configuration of {B} not recorded (staged by an older flipback)"
    ]
    assert "diff" not in result
    assert NEW_SECRET not in json.dumps(result)


def test_config_changes_when_the_live_env_file_cannot_be_read(paths):
    ready(paths, paths.configured(LIVE_ENV))
    (paths.root / "releases" / B / ".flipback" / "env").unlink()
    new = paths.configured({**LIVE_ENV, "SHOP_SECRET": NEW_SECRET, "ADDED": "x"})

    result = paths.prepare(host_with(), C, config=new.config, env_text=new.env_text).prepare(
        check_mode=False
    )

    # Names still compare; which values changed cannot be told without the old ones.
    assert result["config_changes"] == ["+ADDED", "env values (which ones is not known)"]


@pytest.mark.parametrize(
    ("setup", "release", "config"),
    [
        pytest.param("live", B, True, id="release-is-current"),
        pytest.param("fresh", C, True, id="nothing-live"),
        pytest.param("live", C, False, id="no-config-given"),
    ],
)
def test_no_config_changes_without_two_configurations(paths, setup, release, config):
    if setup == "live":
        ready(paths, paths.configured(LIVE_ENV))
    new = paths.configured({**LIVE_ENV, "SHOP_SECRET": NEW_SECRET}, workers=4)
    overrides = {"config": new.config, "env_text": new.env_text} if config else {}

    result = paths.prepare(host_with(), release, **overrides).prepare(check_mode=False)

    assert result["config_changes"] == []
    assert "diff" not in result


# --------------------------------------------------------------------------- refusals


def test_a_busy_lock_fails_before_anything_changes(paths):
    paths.lock.mkdir(parents=True)
    other = ServiceLock(SERVICE, str(paths.lock))
    other.acquire({"run_id": "other:1:1", "by": "alice"})
    host = Host()

    with pytest.raises(LockError) as failed:
        paths.prepare(host).prepare(check_mode=False)

    assert f"{SERVICE} is locked by " in failed.value.msg
    assert failed.value.retryable is True
    assert host.calls == []
    assert not paths.root.exists()
    assert paths.lock_holder()["run_id"] == "other:1:1"


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"service": "Shop!"}, "service", id="service"),
        pytest.param({"release": "../../etc"}, "release", id="release"),
    ],
)
def test_invalid_input_is_refused_before_anything(paths, check_mode, overrides, field):
    host = Host()
    spec = paths.spec(**{k: v for k, v in overrides.items() if k != "release"})
    spec.release = overrides.get("release", B)  # type: ignore[assignment]
    prepare = Prepare(
        spec, run=host.run, prober=host.prober, lock=ServiceLock(SERVICE, str(paths.lock))
    )

    with pytest.raises(ReleaseError) as failed:
        prepare.prepare(check_mode=check_mode)

    assert failed.value.details["field"] == field
    assert host.calls == []
    assert not paths.root.exists()
    assert not paths.lock.exists()


@pytest.mark.parametrize(
    ("where", "name", "content", "refused"),
    [
        pytest.param(
            "lib", f"{SERVICE}@.service", "[Unit]\nDescription=OS\n", True, id="os-template"
        ),
        pytest.param("etc", f"{SERVICE}@.service.d", None, True, id="template-drop-ins"),
        pytest.param(
            "etc",
            f"{SERVICE}@.service",
            f"[Unit]\nDescription=flipback {SERVICE} release %i\n",
            False,
            id="flipback-s-own-older-template",
        ),
        pytest.param("lib", "other@.service", "[Unit]\n", False, id="another-name"),
        pytest.param("lib", f"{SERVICE}.service", "[Unit]\n", False, id="a-plain-unit-of-the-name"),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_a_service_named_like_a_template_unit_of_the_host_is_refused(
    paths, where, name, content, refused, check_mode
):
    directory = paths.units_etc if where == "etc" else paths.units_lib
    directory.mkdir(parents=True)
    if content is None:
        (directory / name).mkdir()
    else:
        (directory / name).write_text(content)
    host = Host()
    prepare = paths.prepare(host)

    if not refused:
        assert prepare.prepare(check_mode=check_mode)["release"] == B
        return
    with pytest.raises(ReleaseError) as failed:
        prepare.prepare(check_mode=check_mode)
    error = failed.value
    assert (error.details["field"], error.details["value"]) == ("name", SERVICE)
    assert error.retryable is False
    assert str(directory / name) in error.msg
    assert f"would apply to flipback's instances {SERVICE}@<release>" in error.msg
    # Before the user or any directory.
    assert host.calls == []
    assert not paths.root.exists()


# --------------------------------------------------------------------------- TLS files


def tls_files(paths: Paths, cert: object, key: object) -> dict:
    """A config whose nginx.tls names a certificate and a key under tls/, each made as
    `cert` / `key` says: a file mode (int), "missing", "dir" or "dangling" (a symlink to
    nothing); a str mode "link:0600" is a symlink to a file of that mode."""
    where = paths.tmp_path / "tls"
    where.mkdir(exist_ok=True)
    found = {}
    for name, how in (("certificate", cert), ("key", key)):
        path = where / f"{name}.pem"
        if how == "dir":
            path.mkdir()
        elif how == "dangling":
            path.symlink_to(where / "nowhere")
        elif isinstance(how, str) and how.startswith("link:"):
            target = where / f"{name}-target.pem"
            target.write_text("-----BEGIN-----\n")
            target.chmod(int(how[5:], 8))
            path.symlink_to(target)
        elif how != "missing":
            path.write_text("-----BEGIN-----\n")
            path.chmod(how)
        found[name] = str(path)
    return {"nginx": {"tls": found}}


@pytest.mark.parametrize(
    ("cert", "key", "refused", "found"),
    [
        pytest.param(0o644, 0o600, None, None, id="cert-0644-key-0600"),
        pytest.param(0o644, 0o640, None, None, id="key-0640-ssl-cert-group"),
        pytest.param("link:0644", "link:0600", None, None, id="symlinks-to-files"),
        pytest.param(
            "missing", 0o600, "certificate", "which on this host is missing;", id="cert-missing"
        ),
        pytest.param(0o644, "missing", "key", "which on this host is missing;", id="key-missing"),
        pytest.param(
            "dir", 0o600, "certificate", "which on this host is not a regular file", id="cert-dir"
        ),
        pytest.param(
            0o644, "dangling", "key", "which on this host is missing;", id="key-dangling-link"
        ),
        pytest.param(0o644, 0o644, "key", "is open to every local user (mode 0644)", id="key-o+r"),
        pytest.param(0o644, 0o602, "key", "mode 0602", id="key-o+w"),
        pytest.param(0o644, "link:0604", "key", "mode 0604", id="key-o+r-behind-link"),
    ],
)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_tls_files_are_checked_on_the_host_before_anything_changes(
    paths, cert, key, refused, found, check_mode
):
    config = tls_files(paths, cert, key)
    host = Host()
    prepare = paths.prepare(host, config=config)

    if refused is None:
        assert prepare.prepare(check_mode=check_mode)["release"] == B
        return
    with pytest.raises(ReleaseError) as failed:
        prepare.prepare(check_mode=check_mode)
    error = failed.value
    path = config["nginx"]["tls"][refused]
    assert (error.details["field"], error.details["value"]) == (f"nginx.tls.{refused}", path)
    assert error.retryable is False
    assert error.msg.startswith(f"nginx.tls.{refused}: got {path!r}, ")
    assert found in error.msg
    assert "retrying as-is fails the same way" in error.msg
    # Before the lock, the user or any directory.
    assert host.calls == []
    assert not paths.root.exists()
    assert not paths.lock.exists()


def test_a_release_without_tls_asks_for_no_files(paths):
    host = Host()
    result = paths.prepare(host, config={"nginx": {"tls": {}}}).prepare(check_mode=False)
    assert result["release"] == B


def test_noop_probes_a_live_release_with_tls_over_https(paths):
    live = paths.configured(port=8443)
    live.config["nginx"]["tls"] = tls_files(paths, 0o644, 0o600)["nginx"]["tls"]
    ready(paths, live)
    paths.put_site(
        site_text(service=SERVICE, home=str(paths.root), port=8443, nginx=live.config["nginx"])
    )
    host = live_host()

    result = paths.prepare(host, config=live.config, env_text=live.env_text, port=8443).prepare(
        check_mode=False
    )

    assert result["noop"] is True
    [(target, _expect, _policy)] = host.probes
    assert (target.port, target.tls) == (8443, True)
