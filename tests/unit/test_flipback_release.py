"""Unit tests of module_utils/flipback_release.py on real release trees under tmp_path."""

from __future__ import annotations

import json
import os
import threading

import pytest
from ansible.module_utils import flipback_release as fr
from ansible.module_utils.flipback_release import (
    ReleaseError,
    Releases,
    append_history,
    atomic_symlink,
    current_release,
    default_user,
    derive_status,
    history_event,
    manifest_problem,
    pid_alive,
    plan_prune,
    read_history,
    read_manifest,
    recorded_config,
    staging_lock_holder,
    validate_positive,
    validate_release_id,
    validate_service,
)
from ansible.module_utils.flipback_runtime import UNIT_DIR, release_id_for
from fakes import ReleaseTree
from test_flipback_runtime import a_release

SERVICE = "shop"
# 2026-11-29T12:00:00Z: every age below is measured from here.
NOW = 1_795_953_600.0
HEALTH = {"path": "/health", "expect_status": 200, "expect_json": {"ok": True}}


def rid(letter: str) -> str:
    """Release ids whose id order is a < b < c < d < e < f."""
    return f"2026110{'abcdef'.index(letter) + 1}T120000-{letter * 10}"


A, B, C, D, E, F = (rid(x) for x in "abcdef")


class Tree(ReleaseTree):
    """A service root on disk (fakes.ReleaseTree), events a minute apart from NOW; and a
    systemd unit directory for the releases' own units."""

    def __init__(self, root: str, unit_dir: str = "") -> None:
        super().__init__(root, SERVICE, at=NOW)
        self.unit_dir = unit_dir or os.path.join(os.path.dirname(root), "systemd")
        # Stands for /etc/flipback, where releases of older versions found their env.
        self.legacy_env_dir = os.path.join(os.path.dirname(root), "etc-flipback")

    def release(
        self,
        release_id: str,
        status: str | None = "staged",
        *,
        service: str = SERVICE,
        manifest_id: str | None = None,
        deployed_at: str = "2026-11-29T11:00:00Z",
        lock: str | None = None,
    ) -> Tree:
        manifest = None
        if status is not None:
            manifest = {
                "id": manifest_id or release_id,
                "service": service,
                "git_sha": "0" * 40,
                "ref": "main",
                "checksum": "sha256:abc",
                "deployed_by": "alice",
                "deployed_at": deployed_at,
                "health": HEALTH,
                "replaces": None,
                "status": status,
            }
        self.write_release(release_id, manifest)
        if lock is not None:
            with open(self.path(release_id, ".staging-lock"), "w") as handle:
                handle.write(lock)
        return self

    def on_disk(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "releases")))

    def releases(self) -> Releases:
        return Releases(
            SERVICE,
            self.root,
            clock=lambda: NOW,
            unit_dir=self.unit_dir,
            legacy_env_dir=self.legacy_env_dir,
        )

    def legacy_files(self) -> list[str]:
        """The service-wide unit template and env file of older versions."""
        os.makedirs(self.unit_dir, exist_ok=True)
        os.makedirs(self.legacy_env_dir, exist_ok=True)
        paths = [
            os.path.join(self.unit_dir, f"{SERVICE}@.service"),
            os.path.join(self.legacy_env_dir, f"{SERVICE}.env"),
        ]
        for path in paths:
            with open(path, "w") as handle:
                # What the template of older versions said of itself.
                handle.write(f"[Unit]\nDescription=flipback {SERVICE} release %i\n")
        return paths

    def configure(self, *release_ids: str) -> Tree:
        """Give releases a recorded configuration, as releases staged now have."""
        for release_id in release_ids:
            path = self.path(release_id, "manifest.json")
            with open(path) as handle:
                manifest = json.load(handle)
            manifest["config"] = {"app": "app:app", "port": 8000, "env_names": []}
            with open(path, "w") as handle:
                json.dump(manifest, handle)
        return self

    def unit(self, release_id: str, *, wanted: bool = False) -> Tree:
        """The release's own unit, as release_stage writes it (enabled: `wanted`)."""
        os.makedirs(os.path.join(self.unit_dir, "multi-user.target.wants"), exist_ok=True)
        path = os.path.join(self.unit_dir, f"{SERVICE}@{release_id}.service")
        with open(path, "w") as handle:
            handle.write("[Service]\n")
        if wanted:
            os.symlink(path, self.wants(release_id))
        return self

    def wants(self, release_id: str) -> str:
        return os.path.join(
            self.unit_dir, "multi-user.target.wants", f"{SERVICE}@{release_id}.service"
        )

    def units(self) -> list[str]:
        """Every file and link under the unit directory, relative to it."""
        return sorted(
            os.path.relpath(os.path.join(d, n), self.unit_dir)
            for d, _dirs, files in os.walk(self.unit_dir)
            for n in files
        )

    def statuses(self) -> dict[str, str]:
        return {r["id"]: r["status"] for r in self.releases().list_releases()["releases"]}


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(str(tmp_path / "srv" / SERVICE))


# =========================================================================== inputs


@pytest.mark.parametrize(
    "service",
    [
        pytest.param("a", id="one-letter"),
        pytest.param("shop", id="word"),
        pytest.param("my-svc-2", id="dash-digit"),
        pytest.param("s" * 32, id="32-chars"),
    ],
)
def test_validate_service_accepts(service):
    assert validate_service(service) == service


@pytest.mark.parametrize(
    "service",
    [
        pytest.param("", id="empty"),
        pytest.param("Shop", id="uppercase"),
        pytest.param("1shop", id="leading-digit"),
        pytest.param("-shop", id="leading-dash"),
        pytest.param("s" * 33, id="33-chars"),
        pytest.param("../etc", id="path"),
        # The controller refuses it too (one pattern: flipback_runtime.SERVICE_NAME_RE).
        pytest.param("my_svc", id="underscore"),
        pytest.param("shop\n", id="trailing-newline"),
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
    ],
)
def test_validate_service_rejects(service):
    with pytest.raises(ReleaseError) as err:
        validate_service(service)
    assert err.value.msg.startswith(f"service: got {service!r}, expected 1-32 characters")
    assert err.value.details["field"] == "service"
    assert err.value.details["value"] == service
    assert "lowercase letter" in err.value.details["expected"]
    assert err.value.retryable is False


def test_validate_release_id_accepts():
    assert validate_release_id("20261129T141500-3f2a9c1d0e") == "20261129T141500-3f2a9c1d0e"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../../etc", id="traversal"),
        pytest.param("", id="empty"),
        pytest.param("20261129T141500-3F2A9C1D0E", id="uppercase-hex"),
        pytest.param("20261129T141500-3f2a9c1d0", id="short-hash"),
        pytest.param("20261129-141500-3f2a9c1d0e", id="no-T"),
        pytest.param("20261129T141500-3f2a9c1d0e\n", id="trailing-newline"),
        pytest.param("20261129T141500-3f2a9c1d0e/..", id="suffix"),
        pytest.param(None, id="none"),
    ],
)
def test_validate_release_id_rejects(value):
    with pytest.raises(ReleaseError) as err:
        validate_release_id(value)
    assert err.value.msg == (
        f"release: got {value!r}, expected an id like 20261129T141500-3f2a9c1d0e"
    )
    assert err.value.details == {
        "field": "release",
        "value": value,
        "expected": "an id like 20261129T141500-3f2a9c1d0e",
    }


def test_validate_release_id_names_the_field():
    with pytest.raises(ReleaseError) as err:
        validate_release_id("x", field="replaces")
    assert err.value.msg.startswith("replaces: got 'x'")
    assert err.value.details["field"] == "replaces"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param(1, True, id="one"),
        pytest.param(7, True, id="seven"),
        pytest.param(0, False, id="zero"),
        pytest.param(-1, False, id="negative"),
        pytest.param(True, False, id="bool"),
        pytest.param("2", False, id="string"),
    ],
)
def test_validate_positive(value, ok):
    if ok:
        assert validate_positive(value, "keep") == value
        return
    with pytest.raises(ReleaseError) as err:
        validate_positive(value, "keep")
    assert err.value.msg == f"keep: got {value!r}, expected an integer of at least 1"
    assert err.value.details["field"] == "keep"


@pytest.mark.parametrize(
    ("env", "user"),
    [
        pytest.param({"SUDO_USER": "alice", "USER": "root"}, "alice", id="sudo-user"),
        pytest.param({"USER": "bob"}, "bob", id="user"),
        pytest.param({}, "unknown", id="neither"),
        pytest.param({"SUDO_USER": "", "USER": ""}, "unknown", id="empty"),
    ],
)
def test_default_user(monkeypatch, env, user):
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.delenv("USER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_user() == user


def test_releases_root_defaults_to_srv_service():
    assert Releases("shop").root == "/srv/shop"
    assert Releases("shop", "/opt/shop").root == "/opt/shop"
    assert Releases("shop").unit_dir == UNIT_DIR == "/etc/systemd/system"


def test_releases_validates_the_service():
    with pytest.raises(ReleaseError) as err:
        Releases("../etc")
    assert err.value.details["field"] == "service"


# =========================================================================== manifests


def test_read_manifest_missing_is_none(tree):
    tree.release(A, status=None)
    assert read_manifest(tree.root, A) is None


def test_read_manifest(tree):
    tree.release(A)
    manifest = read_manifest(tree.root, A)
    assert manifest["id"] == A
    assert manifest["health"] == HEALTH


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{not json", "could not be read", id="bad-json"),
        pytest.param('{"id": "x"', "could not be read", id="truncated"),
        pytest.param("[1, 2]", "got a JSON list, expected a JSON object", id="list"),
    ],
)
def test_read_manifest_rejects(tree, content, message):
    tree.release(A, status=None)
    with open(tree.path(A, "manifest.json"), "w") as handle:
        handle.write(content)
    with pytest.raises(ReleaseError) as err:
        read_manifest(tree.root, A)
    assert message in err.value.msg
    assert err.value.details["path"] == tree.path(A, "manifest.json")


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        pytest.param({"id": A, "service": SERVICE, "status": "staged"}, None, id="complete"),
        pytest.param(None, "manifest.json is missing", id="missing"),
        pytest.param(
            {"id": A, "service": SERVICE, "status": "staging"},
            "manifest status is 'staging', expected 'staged'",
            id="staging",
        ),
        pytest.param(
            {"id": A, "service": SERVICE},
            "manifest status is None, expected 'staged'",
            id="no-status",
        ),
        pytest.param(
            {"id": B, "service": SERVICE, "status": "staged"},
            f"manifest id is {B!r}, expected {A!r}",
            id="other-id",
        ),
        pytest.param(
            {"id": A, "service": "cart", "status": "staged"},
            "manifest service is 'cart', expected 'shop'",
            id="other-service",
        ),
    ],
)
def test_manifest_problem(manifest, problem):
    assert manifest_problem(manifest, A, SERVICE) == problem


# =========================================================================== recorded config

SECRET = "s3cr3t-hunter2"


def configure(tree: Tree, release_id: str, env: dict[str, str]):
    """The release's configuration, as release_stage stages it: in the manifest, its
    env file beside the code."""
    conf = a_release(SERVICE, tree.root, env=env)
    with open(tree.path(release_id, "manifest.json")) as handle:
        manifest = json.load(handle)
    with open(tree.path(release_id, "manifest.json"), "w") as handle:
        json.dump({**manifest, "config": conf.config}, handle)
    os.makedirs(tree.path(release_id, ".flipback"))
    with open(tree.path(release_id, ".flipback", "env"), "w") as handle:
        handle.write(conf.env_text)
    return conf


def test_recorded_config_of_a_configured_release(tree):
    tree.release(A)
    conf = configure(tree, A, {"TOKEN": SECRET, "DEBUG": "0"})

    assert recorded_config(tree.root, A) == (conf.config, {"DEBUG": "0", "TOKEN": SECRET})


def test_recorded_config_without_the_env_file(tree):
    # Values need root (0640 root:<service>); the config alone is still known.
    tree.release(A)
    conf = configure(tree, A, {"TOKEN": SECRET})
    os.unlink(tree.path(A, ".flipback", "env"))

    assert recorded_config(tree.root, A) == (conf.config, None)


def without_config(tree: Tree, kind: str) -> None:
    """Release A on disk with no configuration of its own to read, in one of many ways."""
    if kind == "no-release":
        return
    tree.release(A, status=None if kind == "no-manifest" else "staged")
    manifest = {
        "corrupt-manifest": "{not json",
        "config-not-a-mapping": json.dumps({"id": A, "config": ["workers"]}),
    }.get(kind)
    if manifest is not None:
        with open(tree.path(A, "manifest.json"), "w") as handle:
            handle.write(manifest)
    if kind == "env-file-without-config":
        os.makedirs(tree.path(A, ".flipback"))
        with open(tree.path(A, ".flipback", "env"), "w") as handle:
            handle.write('OLD="1"\n')


@pytest.mark.parametrize(
    ("kind", "env"),
    [
        pytest.param("staged-before-configs", None, id="staged-before-configs"),
        pytest.param("no-release", None, id="no-release"),
        pytest.param("no-manifest", None, id="no-manifest"),
        pytest.param("corrupt-manifest", None, id="corrupt-manifest"),
        pytest.param("config-not-a-mapping", None, id="config-not-a-mapping"),
        pytest.param("env-file-without-config", {"OLD": "1"}, id="env-file-without-config"),
    ],
)
def test_recorded_config_of_what_has_no_config(tree, kind, env):
    without_config(tree, kind)

    assert recorded_config(tree.root, A) == (None, env)


# =========================================================================== staging locks


@pytest.mark.parametrize(
    ("kill", "alive"),
    [
        pytest.param(None, True, id="exists"),
        pytest.param(ProcessLookupError, False, id="gone"),
        pytest.param(PermissionError, True, id="other-users"),
    ],
)
def test_pid_alive(monkeypatch, kill, alive):
    def fake_kill(pid, sig):
        assert (pid, sig) == (4242, 0)
        if kill is not None:
            raise kill

    monkeypatch.setattr(fr.os, "kill", fake_kill)
    assert pid_alive(4242) is alive


@pytest.mark.parametrize("pid", [pytest.param(0, id="zero"), pytest.param(-1, id="negative")])
def test_pid_alive_rejects_non_pids(pid):
    # os.kill(0 or -1, 0) would signal a whole process group: never ask.
    assert pid_alive(pid) is False


@pytest.mark.parametrize(
    ("content", "holder"),
    [
        pytest.param(None, None, id="no-lock"),
        pytest.param("{own}\n", "own", id="live-pid"),
        pytest.param("{own} staging since 12:00\n", "own", id="pid-then-text"),
        pytest.param("999999999\n", None, id="dead-pid"),
        pytest.param("", None, id="empty"),
        pytest.param("not-a-pid", None, id="garbage"),
    ],
)
def test_staging_lock_holder(tree, monkeypatch, content, holder):
    own = os.getpid()
    monkeypatch.setattr(fr, "pid_alive", lambda pid: pid == own)
    tree.release(A, lock=None if content is None else content.format(own=own))
    assert staging_lock_holder(tree.path(A)) == (own if holder == "own" else None)


# =========================================================================== current link


def test_current_release_missing_is_none(tree):
    assert current_release(tree.root) is None


def test_current_release_without_root_is_none(tmp_path):
    assert current_release(str(tmp_path / "nowhere")) is None


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(f"releases/{A}", id="relative"),
        pytest.param(f"./releases/{A}/", id="relative-untidy"),
        pytest.param("{root}/releases/" + A, id="absolute-in-root"),
    ],
)
def test_current_release_reads_the_link(tree, target):
    tree.release(A)
    os.symlink(target.format(root=tree.root), os.path.join(tree.root, "current"))
    assert current_release(tree.root) == A


def test_current_release_of_a_dangling_link(tree):
    tree.current(A)
    assert current_release(tree.root) == A


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("../../etc", id="outside"),
        pytest.param("releases/latest", id="not-an-id"),
        pytest.param(f"other/{A}", id="other-dir"),
        pytest.param(f"/elsewhere/releases/{A}", id="absolute-outside-root"),
    ],
)
def test_current_release_rejects_foreign_targets(tree, target):
    os.symlink(target, os.path.join(tree.root, "current"))
    with pytest.raises(ReleaseError) as err:
        current_release(tree.root)
    assert f"points at {target!r}, expected releases/<id>" in err.value.msg
    assert err.value.details["value"] == target


@pytest.mark.parametrize(
    ("make", "observed"),
    [
        pytest.param(os.mkdir, "directory", id="directory"),
        pytest.param(lambda p: open(p, "w").close(), "file", id="file"),
    ],
)
def test_current_release_rejects_a_non_link(tree, make, observed):
    make(os.path.join(tree.root, "current"))
    with pytest.raises(ReleaseError) as err:
        current_release(tree.root)
    assert f"got a {observed}, expected a symlink to releases/<id>" in err.value.msg


def test_current_release_reports_other_read_errors(tree, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(fr.os, "readlink", denied)
    with pytest.raises(ReleaseError) as err:
        current_release(tree.root)
    assert "could not be read" in err.value.msg


# =========================================================================== atomic symlink


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param(None, id="new-link"),
        pytest.param(f"releases/{A}", id="replace"),
        pytest.param(f"releases/{B}", id="same-target"),
    ],
)
def test_atomic_symlink(tree, existing):
    link = os.path.join(tree.root, "current")
    if existing:
        os.symlink(existing, link)

    atomic_symlink(f"releases/{B}", link)

    assert os.readlink(link) == f"releases/{B}"
    assert sorted(os.listdir(tree.root)) == ["current", "releases"]


def test_atomic_symlink_never_removes_the_link(tree, monkeypatch):
    """The only change to `current` is the rename; at every step it names a release."""
    link = os.path.join(tree.root, "current")
    os.symlink(f"releases/{A}", link)
    seen = []
    real_rename, real_unlink = os.rename, os.unlink

    def spy_rename(src, dst):
        seen.append(("rename", src, dst, os.readlink(link)))
        real_rename(src, dst)
        seen.append(("renamed", os.readlink(link)))

    def spy_unlink(path):
        assert path != link, "current must never be unlinked"
        real_unlink(path)

    monkeypatch.setattr(fr.os, "rename", spy_rename)
    monkeypatch.setattr(fr.os, "unlink", spy_unlink)

    atomic_symlink(f"releases/{B}", link)

    tmp = f"{link}.tmp-{os.getpid()}"
    assert seen == [("rename", tmp, link, f"releases/{A}"), ("renamed", f"releases/{B}")]


def test_atomic_symlink_replaces_a_stale_temp_link(tree):
    link = os.path.join(tree.root, "current")
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink("left/by/a/dead/run", tmp)

    atomic_symlink(f"releases/{A}", link)

    assert os.readlink(link) == f"releases/{A}"
    assert not os.path.lexists(tmp)


def test_atomic_symlink_failure_leaves_the_link_and_no_temp(tree):
    link = os.path.join(tree.root, "current")
    os.makedirs(os.path.join(link, "busy"))  # rename(2) cannot replace a non-empty directory

    with pytest.raises(ReleaseError) as err:
        atomic_symlink(f"releases/{A}", link)

    assert err.value.retryable is True
    assert f"could not point {link} at releases/{A}" in err.value.msg
    assert os.path.isdir(os.path.join(link, "busy"))
    assert not os.path.lexists(f"{link}.tmp-{os.getpid()}")


# =========================================================================== history


def test_read_history_missing_is_empty(tree):
    assert read_history(tree.root) == []


def test_history_keeps_append_order(tree):
    tree.events((A, "staged"), (A, "active"), (B, "staged"))
    assert [(e["release"], e["event"]) for e in tree.history()] == [
        (A, "staged"),
        (A, "active"),
        (B, "staged"),
    ]


def test_history_event_fields():
    event = history_event(
        A, "active", by="alice", note="deploy", from_release=B, expect=HEALTH, at=NOW, run="c:1:2"
    )
    assert event == {
        "at": "2026-11-29T12:00:00Z",
        "release": A,
        "event": "active",
        "by": "alice",
        "run": "c:1:2",
        "from": B,
        "note": "deploy",
        "expect": HEALTH,
    }


def test_history_event_defaults_to_now():
    event = history_event(A, "staged", by="alice")
    assert event["expect"] == {}
    assert event["from"] is None
    assert event["at"].endswith("Z")


def test_append_history_writes_one_line_per_event(tree):
    tree.events((A, "staged"), (A, "active"))
    with open(os.path.join(tree.root, "history.jsonl")) as handle:
        lines = handle.read().split("\n")
    assert lines[-1] == ""
    assert [json.loads(line)["event"] for line in lines[:-1]] == ["staged", "active"]


def test_append_history_fsyncs(tree, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(fr.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    append_history(tree.root, history_event(A, "staged", by="alice"))
    assert len(synced) == 1


def test_concurrent_appends_never_interleave(tree):
    def writer(n):
        for i in range(50):
            append_history(tree.root, history_event(A, "staged", by=f"w{n}", note="x" * (i * 40)))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = tree.history()
    assert len(events) == 400
    assert sorted({e["by"] for e in events}) == [f"w{n}" for n in range(8)]


def test_a_torn_last_line_is_ignored_then_closed(tree):
    tree.events((A, "staged"))
    with open(os.path.join(tree.root, "history.jsonl"), "a") as handle:
        handle.write('{"release": "' + A + '", "ev')  # the host died mid-append

    assert [e["event"] for e in tree.history()] == ["staged"]

    with pytest.raises(ReleaseError) as err:
        # The next append closes the torn line first; that line is now a middle line.
        tree.events((A, "active"))
        tree.history()
    assert "line 2" in err.value.msg


def test_append_after_a_torn_line_starts_a_new_line(tree):
    path = os.path.join(tree.root, "history.jsonl")
    with open(path, "w") as handle:
        handle.write('{"partial')
    append_history(tree.root, history_event(A, "staged", by="alice"))
    with open(path) as handle:
        lines = handle.read().split("\n")
    assert lines[0] == '{"partial'
    assert json.loads(lines[1])["release"] == A


def test_read_history_skips_blank_lines(tree):
    path = os.path.join(tree.root, "history.jsonl")
    event = json.dumps(history_event(A, "staged", by="alice"))
    with open(path, "w") as handle:
        handle.write(f"\n{event}\n\n  \n{event}\n")
    assert len(read_history(tree.root)) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("{oops", "expected one JSON object per line", id="bad-json"),
        pytest.param("[1, 2]", "expected an object with 'release' and 'event'", id="list"),
        pytest.param('{"release": "x"}', "expected an object with 'release'", id="no-event"),
        pytest.param(
            '{"release": "x", "event": "deployed"}',
            "(one of staged, active, failed, rolled_back, pruned, command)",
            id="unknown-event",
        ),
        pytest.param('{"release": 5, "event": "staged"}', "expected an object", id="int-id"),
    ],
)
def test_read_history_rejects_a_bad_line(tree, line, message):
    tree.events((A, "staged"))
    with open(os.path.join(tree.root, "history.jsonl"), "a") as handle:
        handle.write(line + "\n")
    tree.events((A, "active"))
    with pytest.raises(ReleaseError) as err:
        read_history(tree.root)
    assert "history.jsonl line 2: got " in err.value.msg
    assert message in err.value.msg
    assert err.value.details["line"] == 2


def test_read_history_reports_an_unreadable_log(tree):
    os.mkdir(os.path.join(tree.root, "history.jsonl"))
    with pytest.raises(ReleaseError) as err:
        read_history(tree.root)
    assert "history.jsonl: could not be read" in err.value.msg


def test_append_history_failure_is_retryable(tmp_path):
    with pytest.raises(ReleaseError) as err:
        append_history(str(tmp_path / "missing"), history_event(A, "failed", by="alice"))
    assert err.value.retryable is True
    assert f"could not append the 'failed' event of {A}" in err.value.msg


def test_append_history_reports_a_short_write(tree, monkeypatch):
    monkeypatch.setattr(fr.os, "write", lambda fd, data: len(data) - 1)
    with pytest.raises(ReleaseError) as err:
        append_history(tree.root, history_event(A, "staged", by="alice"))
    assert "short write" in err.value.msg


# =========================================================================== statuses


@pytest.mark.parametrize(
    ("release_id", "manifest", "problem", "last", "status"),
    [
        pytest.param(A, {"status": "staged"}, None, "active", "active", id="current"),
        pytest.param(B, {"status": "failed"}, "x", None, "failed", id="manifest-failed"),
        pytest.param(B, None, "missing", "active", "incomplete", id="no-manifest"),
        pytest.param(B, {"status": "staging"}, "x", None, "incomplete", id="staging"),
        pytest.param(B, {"status": "staged"}, None, None, "staged", id="no-history"),
        pytest.param(B, {"status": "staged"}, None, "staged", "staged", id="staged"),
        pytest.param(B, {"status": "staged"}, None, "active", "good", id="replaced"),
        pytest.param(B, {"status": "staged"}, None, "failed", "failed", id="failed-gate"),
        pytest.param(B, {"status": "staged"}, None, "rolled_back", "rolled_back", id="rb"),
        pytest.param(B, {"status": "staged"}, None, "pruned", "incomplete", id="half-pruned"),
    ],
)
def test_derive_status(release_id, manifest, problem, last, status):
    event = None if last is None else {"release": release_id, "event": last}
    assert derive_status(release_id, A, manifest, problem, event) == status


def test_list_reports_every_status(tree, monkeypatch):
    monkeypatch.setattr(fr, "pid_alive", lambda pid: pid == 4242)
    tree.deployed(A, B, C)
    tree.release(D).events((D, "staged"), (D, "active"), (D, "failed"))
    tree.release(E).events((E, "staged"))
    tree.release(F, status="staging", lock="4242")
    tree.events((B, "rolled_back"))
    # Names that are not release ids, and files, are not releases.
    os.makedirs(tree.path("latest"))
    open(tree.path("20261101T000000-ffffffffff"), "w").close()

    result = tree.releases().list_releases()

    assert result["changed"] is False
    assert result["current"] == C
    assert result["previous_good"] == A
    assert [(r["id"], r["status"]) for r in result["releases"]] == [
        (A, "good"),
        (B, "rolled_back"),
        (C, "active"),
        (D, "failed"),
        (E, "staged"),
        (F, "incomplete"),
    ]
    by_id = {r["id"]: r for r in result["releases"]}
    assert by_id[F]["staging_pid"] == 4242
    assert by_id[F]["problem"] == "manifest status is 'staging', expected 'staged'"
    assert by_id[C]["problem"] is None
    assert by_id[C]["last_event"] == {"event": "active", "at": tree.history()[5]["at"]}
    assert by_id[C]["manifest"] == {
        "git_sha": "0" * 40,
        "ref": "main",
        "checksum": "sha256:abc",
        "deployed_by": "alice",
        "deployed_at": "2026-11-29T11:00:00Z",
        "replaces": None,
        "status": "staged",
    }


def test_list_without_a_release_tree(tmp_path):
    result = Releases(SERVICE, str(tmp_path / "none")).list_releases()
    assert result == {"changed": False, "releases": [], "current": None, "previous_good": None}


@pytest.mark.parametrize(
    ("deployed_at", "mtime", "age"),
    [
        pytest.param("2026-11-29T11:00:00Z", NOW - 10, 3600, id="utc-z"),
        pytest.param("2026-11-29T13:00:00+02:00", NOW - 10, 3600, id="offset"),
        pytest.param("2026-11-29T11:30:00", NOW - 10, 1800, id="naive-is-utc"),
        pytest.param("yesterday", NOW - 10, 10, id="unparseable-uses-mtime"),
        pytest.param("2026-11-29T13:00:00Z", NOW - 10, 0, id="future-is-zero"),
    ],
)
def test_list_age_seconds(tree, deployed_at, mtime, age):
    tree.release(A, deployed_at=deployed_at)
    os.utime(tree.path(A), (mtime, mtime))
    (release,) = tree.releases().list_releases()["releases"]
    assert release["age_seconds"] == age


def test_list_age_of_a_release_without_manifest_uses_mtime(tree):
    tree.release(A, status=None)
    os.utime(tree.path(A), (NOW - 77, NOW - 77))
    (release,) = tree.releases().list_releases()["releases"]
    assert (release["status"], release["manifest"], release["age_seconds"]) == (
        "incomplete",
        None,
        77,
    )


def test_list_a_corrupt_manifest_is_incomplete_with_its_problem(tree):
    tree.release(A, status=None)
    with open(tree.path(A, "manifest.json"), "w") as handle:
        handle.write("{")
    (release,) = tree.releases().list_releases()["releases"]
    assert release["status"] == "incomplete"
    assert "could not be read" in release["problem"]


def test_list_a_dangling_current(tree):
    tree.release(A).current(B)
    result = tree.releases().list_releases()
    assert result["current"] == B
    assert [r["id"] for r in result["releases"]] == [A]


# =========================================================================== previous good


@pytest.mark.parametrize(
    ("order", "current", "previous"),
    [
        pytest.param([A, B, C], C, B, id="id-and-history-agree"),
        # C was deployed, then B (an older commit) was deployed over it, then D.
        pytest.param([A, C, B, D], D, B, id="history-beats-id-order"),
        # A hotfix of an old commit: the newest release by history has the oldest id.
        pytest.param([B, C, A, D], D, A, id="oldest-id-most-recent"),
        pytest.param([A], A, None, id="only-current"),
        # Rolled back to A from C: B (active before C) is the previous good of A now.
        pytest.param([A, B, C, A], A, C, id="reactivated"),
    ],
)
def test_previous_good_follows_history(tree, order, current, previous):
    for release_id in order:
        tree.release(release_id).events((release_id, "active"))
    tree.current(current)
    # Make mtimes disagree with history too: the id order decides them.
    for n, release_id in enumerate(sorted(set(order))):
        os.utime(tree.path(release_id), (NOW - 1000 + n, NOW - 1000 + n))
    assert tree.releases().list_releases()["previous_good"] == previous


def test_previous_good_uses_log_position_not_the_at_field(tree):
    """A clock stepped back between two deploys must not reorder them."""
    tree.release(A).release(B).release(C).current(C)
    for release_id, at in ((A, NOW + 500), (B, NOW), (C, NOW + 900)):
        append_history(tree.root, history_event(release_id, "active", by="alice", at=at))
    assert tree.releases().list_releases()["previous_good"] == B


@pytest.mark.parametrize(
    ("after", "previous"),
    [
        pytest.param((B, "failed"), A, id="failed-skipped"),
        pytest.param((B, "rolled_back"), A, id="rolled-back-skipped"),
        pytest.param((B, "pruned"), A, id="pruned-skipped"),
        pytest.param((B, "staged"), A, id="restaged-skipped"),
    ],
)
def test_previous_good_skips_releases_that_are_not_good(tree, after, previous):
    tree.deployed(A, B, C)
    tree.events(after)
    assert tree.releases().list_releases()["previous_good"] == previous


def test_previous_good_skips_a_release_gone_from_disk(tree):
    tree.deployed(A, B, C)
    os.rename(tree.path(B), os.path.join(tree.root, "elsewhere"))
    assert tree.releases().list_releases()["previous_good"] == A


# =========================================================================== activate


def test_activate_flips_current_and_records_it(tree, monkeypatch):
    tree.deployed(A)
    tree.release(B).events((B, "staged"))

    result = tree.releases().activate(B, by="bob", note="deploy main", check_mode=False)

    assert tree.readlink() == f"releases/{B}"
    assert not os.path.lexists(os.path.join(tree.root, f"current.tmp-{os.getpid()}"))
    assert result["changed"] is True
    assert (result["previous"], result["current"], result["release"]) == (A, B, B)
    last = tree.history()[-1]
    assert last == result["event"]
    assert {k: last[k] for k in ("release", "event", "by", "from", "note", "expect")} == {
        "release": B,
        "event": "active",
        "by": "bob",
        "from": A,
        "note": "deploy main",
        "expect": HEALTH,
    }
    assert last["at"] == "2026-11-29T12:00:00Z"
    assert tree.statuses() == {A: "good", B: "active"}


def test_activate_the_first_release(tree):
    tree.release(A).events((A, "staged"))
    result = tree.releases().activate(A, by="bob", note="", check_mode=False)
    assert tree.readlink() == f"releases/{A}"
    assert (result["previous"], result["event"]["from"]) == (None, None)


def test_activate_an_older_release_rolls_back(tree):
    tree.deployed(A, B)
    tree.releases().activate(A, by="bob", note="rollback", check_mode=False)
    tree.releases().record(B, "rolled_back", by="bob", note="", check_mode=False)
    assert tree.readlink() == f"releases/{A}"
    assert tree.statuses() == {A: "active", B: "rolled_back"}


def test_activate_the_current_release_is_unchanged(tree):
    tree.deployed(A, B)
    before = tree.history()

    result = tree.releases().activate(B, by="bob", note="", check_mode=False)

    assert result == {
        "changed": False,
        "release": B,
        "previous": B,
        "current": B,
        "event": None,
    }
    assert tree.history() == before
    assert tree.readlink() == f"releases/{B}"


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
def test_activate_records_a_flip_whose_event_was_lost(tree, check_mode):
    """A run died after the flip, before its history line: the re-run writes it."""
    tree.deployed(A)
    tree.release(B).events((B, "staged")).current(B)

    result = tree.releases().activate(B, by="bob", note="", check_mode=check_mode)

    assert result["changed"] is True
    assert result["event"]["from"] == A
    assert result["previous"] == B
    expected = ["staged", "active", "staged"] + ([] if check_mode else ["active"])
    assert [e["event"] for e in tree.history()] == expected


def test_activate_in_check_mode_changes_nothing(tree):
    tree.deployed(A)
    tree.release(B).events((B, "staged"))
    before = tree.history()

    result = tree.releases().activate(B, by="bob", note="", check_mode=True)

    assert (result["changed"], result["previous"], result["current"]) == (True, A, B)
    assert result["event"]["from"] == A
    assert tree.readlink() == f"releases/{A}"
    assert tree.history() == before


@pytest.mark.parametrize(
    ("setup", "release_id", "message"),
    [
        pytest.param(
            lambda t: None,
            "../../etc",
            "release: got '../../etc', expected an id like 20261129T141500-3f2a9c1d0e",
            id="bad-id",
        ),
        pytest.param(
            lambda t: t.release(A),
            B,
            f"release: got {B!r}, expected a release directory ",
            id="missing",
        ),
        pytest.param(
            lambda t: t.release(B, status="staging"),
            B,
            f"release {B} is incomplete: manifest status is 'staging', expected 'staged'",
            id="staging",
        ),
        pytest.param(
            lambda t: t.release(B, status=None),
            B,
            f"release {B} is incomplete: manifest.json is missing",
            id="no-manifest",
        ),
        pytest.param(
            lambda t: t.release(B, status="failed"),
            B,
            f"release {B} is incomplete: manifest status is 'failed'",
            id="staging-failed",
        ),
        pytest.param(
            lambda t: t.release(B, service="cart"),
            B,
            "manifest service is 'cart', expected 'shop'",
            id="other-service",
        ),
        pytest.param(
            lambda t: t.release(B, manifest_id=C),
            B,
            f"manifest id is {C!r}, expected {B!r}",
            id="other-id",
        ),
    ],
)
def test_activate_rejects(tree, setup, release_id, message):
    tree.deployed(A)
    setup(tree)
    before = tree.history()

    with pytest.raises(ReleaseError) as err:
        tree.releases().activate(release_id, by="bob", note="", check_mode=False)

    assert message in err.value.msg
    assert err.value.details["field"] == "release"
    assert err.value.retryable is False
    assert tree.readlink() == f"releases/{A}"
    assert tree.history() == before


def test_activate_missing_lists_what_was_found(tree):
    tree.release(A).release(B)
    with pytest.raises(ReleaseError) as err:
        tree.releases().activate(C, by="bob", note="", check_mode=False)
    assert err.value.msg.endswith(f"(latest found: {A}, {B})")


def test_activate_with_no_releases(tree):
    with pytest.raises(ReleaseError) as err:
        tree.releases().activate(C, by="bob", note="", check_mode=False)
    assert err.value.msg.endswith("(latest found: none)")


def test_activate_refuses_a_current_that_is_a_directory(tree):
    tree.release(A)
    os.mkdir(os.path.join(tree.root, "current"))
    with pytest.raises(ReleaseError) as err:
        tree.releases().activate(A, by="bob", note="", check_mode=False)
    assert "got a directory, expected a symlink" in err.value.msg
    assert os.path.isdir(os.path.join(tree.root, "current"))


def test_activate_reports_a_history_failure_after_the_flip(tree, monkeypatch):
    tree.deployed(A)
    tree.release(B)

    def full(root, event):
        raise ReleaseError("history.jsonl: could not append", retryable=True)

    monkeypatch.setattr(fr, "append_history", full)
    with pytest.raises(ReleaseError) as err:
        tree.releases().activate(B, by="bob", note="", check_mode=False)

    assert err.value.retryable is True
    assert f"current points at {B}. Running activate again records the event" in err.value.msg
    assert tree.readlink() == f"releases/{B}"


# =========================================================================== record


@pytest.mark.parametrize("event", ["staged", "failed", "rolled_back", "pruned"])
def test_record_appends_the_event(tree, event):
    tree.deployed(A)
    tree.release(B)

    result = tree.releases().record(B, event, by="bob", note="gate: 502", check_mode=False)

    last = tree.history()[-1]
    assert result == {"changed": True, "release": B, "event": last}
    assert (last["release"], last["event"], last["by"], last["note"]) == (
        B,
        event,
        "bob",
        "gate: 502",
    )
    assert last["from"] is None
    assert last["expect"] == HEALTH


def test_record_failed_changes_nothing_else(tree):
    tree.deployed(A, B)
    with open(tree.path(B, "manifest.json")) as handle:
        manifest = handle.read()

    tree.releases().record(B, "failed", by="bob", note="", check_mode=False)

    with open(tree.path(B, "manifest.json")) as handle:
        assert handle.read() == manifest
    assert tree.readlink() == f"releases/{B}"
    assert tree.statuses() == {A: "good", B: "active"}


def test_record_in_check_mode_writes_nothing(tree):
    tree.deployed(A)
    before = tree.history()
    result = tree.releases().record(A, "failed", by="bob", note="", check_mode=True)
    assert result["changed"] is True
    assert result["event"]["event"] == "failed"
    assert tree.history() == before


def test_record_pruned_may_name_a_release_that_is_gone(tree):
    tree.releases().record(A, "pruned", by="bob", note="", check_mode=False)
    assert tree.history()[-1]["expect"] == {}


def test_record_a_release_with_a_corrupt_manifest(tree):
    tree.release(A, status=None)
    with open(tree.path(A, "manifest.json"), "w") as handle:
        handle.write("{")
    result = tree.releases().record(A, "failed", by="bob", note="", check_mode=False)
    assert result["event"]["expect"] == {}


@pytest.mark.parametrize(
    ("release_id", "event", "field", "message"),
    [
        pytest.param("../x", "failed", "release", "release: got '../x', expected an id", id="id"),
        pytest.param(
            A,
            "active",
            "event",
            "event: got 'active', expected one of staged, failed, rolled_back, pruned",
            id="active",
        ),
        pytest.param(
            B,
            "failed",
            "release",
            f"release: got {B!r}, expected a directory ",
            id="missing-dir",
        ),
    ],
)
def test_record_rejects(tree, release_id, event, field, message):
    tree.release(A)
    with pytest.raises(ReleaseError) as err:
        tree.releases().record(release_id, event, by="bob", note="", check_mode=False)
    assert err.value.msg.startswith(message)
    assert err.value.details["field"] == field
    assert tree.history() == []


# =========================================================================== target


@pytest.mark.parametrize(
    ("steps", "target"),
    [
        pytest.param(None, C, id="default-one"),
        pytest.param(1, C, id="one"),
        pytest.param(2, A, id="two-is-not-id-order"),
        pytest.param(3, B, id="three"),
    ],
)
def test_target_steps_back_through_history(tree, steps, target):
    # Deployed in the order B, A, C, D: id order would say C, B, A.
    tree.deployed(B, A, C, D)

    result = tree.releases().target(None, steps)

    assert result["target"] == target
    assert result["candidates"] == [C, A, B]
    assert result["current"] == D
    assert result["changed"] is False
    assert result["reason"].startswith(
        f"previous good release {steps or 1} step(s) back: {target} (last event active at "
    )


def test_target_too_many_steps(tree):
    tree.deployed(A, B, C)
    result = tree.releases().target(None, 3)
    assert result["target"] is None
    assert result["reason"] == f"steps=3: only 2 previous good release(s): {B}, {A}"


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(
            lambda t: t.deployed(A),
            f"no previous good release: history has only {A}",
            id="only-current",
        ),
        pytest.param(
            lambda t: t.release(A).events((A, "staged")),
            "no previous good release: nothing was active",
            id="nothing-active",
        ),
        pytest.param(
            lambda t: t.deployed(A, B, C).events((B, "failed"), (A, "pruned")),
            f"no previous good release: the releases active before are now {B} (failed), "
            f"{A} (incomplete)",
            id="failed-and-half-pruned",
        ),
        pytest.param(
            lambda t: t.deployed(A, B).events((A, "rolled_back")),
            f"no previous good release: the releases active before are now {A} (rolled_back)",
            id="rolled-back",
        ),
        pytest.param(
            lambda t: t.deployed(A, B) and os.rename(t.path(A), t.root + "/gone"),
            f"no previous good release: the releases active before are now {A} (removed)",
            id="removed",
        ),
    ],
)
def test_target_none_says_why(tree, build, reason):
    build(tree)
    result = tree.releases().target(None, None)
    assert result["target"] is None
    assert result["candidates"] == []
    assert result["reason"] == reason


@pytest.mark.parametrize(
    ("named", "status"),
    [
        pytest.param(A, "good", id="good"),
        pytest.param(D, "staged", id="staged"),
        pytest.param(B, "rolled_back", id="rolled-back"),
    ],
)
def test_target_named(tree, named, status):
    tree.deployed(A, B, C)
    tree.release(D).events((B, "rolled_back"))

    result = tree.releases().target(named, None)

    assert result["target"] == named
    assert result["reason"] == f"named release {named} ({status})"


@pytest.mark.parametrize(
    ("named", "field", "message"),
    [
        pytest.param("../../etc", "release", "release: got '../../etc', expected an id", id="id"),
        pytest.param(E, "release", f"release: got {E!r}, expected a release directory", id="gone"),
        pytest.param(D, "release", f"release {D} is incomplete: manifest status", id="staging"),
        pytest.param(
            B,
            "release",
            f"release: got {B!r}, whose status is failed (last event failed at ",
            id="failed",
        ),
    ],
)
def test_target_named_rejects(tree, named, field, message):
    tree.deployed(A, B, C).events((B, "failed"))
    tree.release(D, status="staging")

    with pytest.raises(ReleaseError) as err:
        tree.releases().target(named, None)

    assert err.value.msg.startswith(message)
    assert err.value.details["field"] == field


def test_target_named_current_is_a_no_op(tree):
    # Re-running a rollback to a named release that is already live changes nothing.
    tree.deployed(A, B, C)

    result = tree.releases().target(C, None)

    assert result["target"] == C == result["current"]
    assert result["reason"] == f"{C} is already current"


def test_target_named_failed_suggests_a_good_release(tree):
    tree.deployed(A, B, C).events((B, "failed"))
    with pytest.raises(ReleaseError) as err:
        tree.releases().target(B, None)
    assert err.value.msg.endswith(f"expected a release that did not fail a gate, e.g. {A}")


def test_target_named_failed_by_manifest(tree):
    tree.deployed(A)
    tree.release(B, status="failed")
    with pytest.raises(ReleaseError) as err:
        tree.releases().target(B, None)
    assert "incomplete: manifest status is 'failed'" in err.value.msg


def test_target_names_every_release_a_named_rollback_accepts(tree):
    # What a refused rollback suggests: good, staged and rolled back; newest id first.
    tree.deployed(A, B, C)
    tree.release(D).events((B, "rolled_back"))
    result = tree.releases().target(None, None)
    assert result["named_targets"] == sorted([A, B, D], reverse=True)
    for named in result["named_targets"]:
        assert tree.releases().target(named, None)["target"] == named


def test_target_names_neither_current_nor_failed_nor_incomplete(tree):
    tree.deployed(A, B, C).events((B, "failed"))
    tree.release(D, status="staging")
    assert tree.releases().target(None, None)["named_targets"] == [A]


def test_target_rejects_zero_steps(tree):
    tree.deployed(A, B)
    with pytest.raises(ReleaseError) as err:
        tree.releases().target(None, 0)
    assert err.value.details["field"] == "steps"


# =========================================================================== prune


def prune_tree(tree: Tree, monkeypatch) -> Tree:
    """Seven releases: four good, current E, a failed, a staged newer than current."""
    monkeypatch.setattr(fr, "pid_alive", lambda pid: pid == 4242)
    return tree.deployed(A, B, C, D, E)


@pytest.mark.parametrize(
    ("keep", "removed"),
    [
        pytest.param(1, [A, B, C], id="keep-1-still-keeps-previous-good"),
        pytest.param(2, [A, B, C], id="keep-2"),
        pytest.param(3, [A, B], id="keep-3"),
        pytest.param(5, [], id="keep-all"),
        pytest.param(9, [], id="keep-more-than-exist"),
    ],
)
def test_prune_keeps_the_most_recent_good(tree, monkeypatch, keep, removed):
    prune_tree(tree, monkeypatch)

    result = tree.releases().prune(keep, by="bob", note="", check_mode=False)

    assert result["removed"] == removed
    assert result["changed"] is bool(removed)
    assert tree.on_disk() == sorted({A, B, C, D, E} - set(removed))
    assert result["kept"] == tree.on_disk()
    assert (result["current"], result["previous_good"]) == (E, D)
    assert tree.readlink() == f"releases/{E}"


def test_prune_orders_by_history_not_id(tree, monkeypatch):
    monkeypatch.setattr(fr, "pid_alive", lambda pid: False)
    # Deployed D, C, B, A: the oldest good releases by history have the newest ids.
    tree.deployed(D, C, B, A)
    result = tree.releases().prune(2, by="bob", note="", check_mode=False)
    assert result["removed"] == [C, D]
    assert tree.on_disk() == [A, B]


def test_prune_keeps_current_and_previous_good_when_history_is_odd(tree, monkeypatch):
    """Current was never recorded active: it still counts, and so does the previous good."""
    monkeypatch.setattr(fr, "pid_alive", lambda pid: False)
    tree.deployed(A, B)
    tree.release(C).current(C)
    result = tree.releases().prune(1, by="bob", note="", check_mode=False)
    assert result["removed"] == [A]
    assert tree.on_disk() == [B, C]


@pytest.mark.parametrize(
    ("build", "removed", "kept"),
    [
        pytest.param(lambda t: t.events((C, "failed")), [C], [A, B, D, E], id="failed-goes"),
        pytest.param(
            lambda t: t.events((C, "rolled_back")), [C], [A, B, D, E], id="rolled-back-goes"
        ),
        pytest.param(
            lambda t: t.release(F, status="staging"), [F], [A, B, C, D, E], id="incomplete-goes"
        ),
        pytest.param(
            lambda t: t.release(F, status="staging", lock="4242"),
            [],
            [A, B, C, D, E, F],
            id="locked-staging-stays",
        ),
        pytest.param(
            lambda t: t.release(F, status="staging", lock="999"),
            [F],
            [A, B, C, D, E],
            id="stale-lock-goes",
        ),
        pytest.param(
            lambda t: t.release(F, status=None, lock="4242"),
            [],
            [A, B, C, D, E, F],
            id="locked-without-manifest-stays",
        ),
        pytest.param(
            lambda t: t.release(F).events((F, "staged")),
            [],
            [A, B, C, D, E, F],
            id="staged-after-current-stays",
        ),
        pytest.param(
            lambda t: t.release(F),
            [],
            [A, B, C, D, E, F],
            id="staged-without-history-stays",
        ),
        pytest.param(lambda t: t.events((C, "pruned")), [C], [A, B, D, E], id="half-pruned-goes"),
        pytest.param(
            lambda t: t.events((D, "failed")),
            [D],
            [A, B, C, E],
            id="failed-previous-is-not-previous-good",
        ),
    ],
)
def test_prune_by_status(tree, monkeypatch, build, removed, kept):
    prune_tree(tree, monkeypatch)
    build(tree)
    result = tree.releases().prune(5, by="bob", note="", check_mode=False)
    assert result["removed"] == removed
    assert tree.on_disk() == kept


def test_prune_removes_staged_releases_older_than_current(tree, monkeypatch):
    monkeypatch.setattr(fr, "pid_alive", lambda pid: False)
    # F was staged, never activated, then B went live over A.
    tree.deployed(A)
    tree.release(F).events((F, "staged"))
    tree.deployed(B)
    result = tree.releases().prune(5, by="bob", note="", check_mode=False)
    assert result["removed"] == [F]


def test_prune_staged_is_kept_when_there_is_no_current(tree, monkeypatch):
    monkeypatch.setattr(fr, "pid_alive", lambda pid: False)
    tree.release(A).events((A, "staged"))
    result = tree.releases().prune(1, by="bob", note="", check_mode=False)
    assert result["removed"] == []


def test_prune_records_each_removal(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    before = len(tree.history())
    tree.releases().prune(3, by="bob", note="disk full", check_mode=False)
    added = tree.history()[before:]
    assert [(e["release"], e["event"], e["by"], e["note"]) for e in added] == [
        (A, "pruned", "bob", "keep=3, was good; disk full"),
        (B, "pruned", "bob", "keep=3, was good; disk full"),
    ]


def test_prune_in_check_mode_removes_nothing(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    before = tree.history()

    result = tree.releases().prune(2, by="bob", note="", check_mode=True)

    assert (result["changed"], result["removed"]) == (True, [A, B, C])
    assert tree.on_disk() == [A, B, C, D, E]
    assert tree.history() == before


def test_prune_reports_a_failed_removal(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    real_rmtree = fr.shutil.rmtree

    def rmtree(path):
        if path.endswith(B):
            raise PermissionError(13, "Permission denied", path)
        real_rmtree(path)

    monkeypatch.setattr(fr.shutil, "rmtree", rmtree)
    with pytest.raises(ReleaseError) as err:
        tree.releases().prune(3, by="bob", note="", check_mode=False)

    assert err.value.retryable is True
    assert err.value.details["removed"] == [A]
    assert f"could not remove {tree.path(B)}" in err.value.msg
    # Recorded before removal: the leftover reads as incomplete and goes next time.
    assert tree.statuses()[B] == "incomplete"
    monkeypatch.setattr(fr.shutil, "rmtree", real_rmtree)
    assert tree.releases().prune(3, by="bob", note="", check_mode=False)["removed"] == [B]


def test_prune_removes_the_units_of_what_it_removes(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    for release_id in (A, B, C, D, E):
        tree.unit(release_id, wanted=release_id in (B, E))

    result = tree.releases().prune(3, by="bob", note="", check_mode=False)

    assert result["removed"] == [A, B]
    assert tree.units() == [
        "multi-user.target.wants/shop@" + E + ".service",
        f"shop@{C}.service",
        f"shop@{D}.service",
        f"shop@{E}.service",
    ]
    assert not os.path.lexists(tree.wants(B))


@pytest.mark.parametrize(
    ("configured", "gone"),
    [
        pytest.param((C, D, E), True, id="every-release-left-carries-its-config"),
        pytest.param((D, E), False, id="one-left-without-config"),
        pytest.param((), False, id="none-with-config"),
    ],
)
def test_prune_removes_the_legacy_unit_and_env_once_no_release_needs_them(
    tree, monkeypatch, configured, gone
):
    prune_tree(tree, monkeypatch)
    tree.configure(*configured)
    legacy = tree.legacy_files()

    result = tree.releases().prune(3, by="bob", note="", check_mode=False)

    assert result["removed"] == [A, B]
    assert result["legacy_removed"] == (legacy if gone else [])
    assert [os.path.exists(p) for p in legacy] == [not gone, not gone]


def test_prune_keeps_a_template_of_the_same_name_that_is_not_flipbacks(tree, monkeypatch):
    # A service named like an OS template: /etc/systemd/system/<name>@.service may be
    # the administrator's override of the OS's own unit.
    prune_tree(tree, monkeypatch)
    tree.configure(C, D, E)
    template, env = tree.legacy_files()
    with open(template, "w") as handle:
        handle.write("[Unit]\nDescription=User Manager for UID %i\n")

    result = tree.releases().prune(3, by="bob", note="", check_mode=False)

    assert result["legacy_removed"] == [env]
    assert os.path.exists(template)


def test_prune_in_check_mode_keeps_the_legacy_files(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    tree.configure(C, D, E)
    legacy = tree.legacy_files()

    tree.releases().prune(3, by="bob", note="", check_mode=True)

    assert all(os.path.exists(p) for p in legacy)


def test_prune_of_a_release_without_a_unit(tree, monkeypatch):
    # Staged before releases had their own unit: nothing to remove but the release.
    prune_tree(tree, monkeypatch)
    tree.unit(D)

    result = tree.releases().prune(3, by="bob", note="", check_mode=False)

    assert result["removed"] == [A, B]
    assert tree.units() == [f"shop@{D}.service"]


def test_prune_in_check_mode_keeps_the_units(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    tree.unit(A, wanted=True)

    tree.releases().prune(3, by="bob", note="", check_mode=True)

    assert tree.units() == [f"multi-user.target.wants/shop@{A}.service", f"shop@{A}.service"]


def test_prune_rejects_keep_zero(tree):
    with pytest.raises(ReleaseError) as err:
        tree.releases().prune(0, by="bob", note="", check_mode=False)
    assert err.value.details["field"] == "keep"


def test_plan_prune_never_touches_current_or_previous_good(tree, monkeypatch):
    prune_tree(tree, monkeypatch)
    state = tree.releases().scan()
    for keep in range(1, 7):
        remove = plan_prune(state, keep)
        assert E not in remove
        assert D not in remove


# =========================================================================== targets


def with_builds(tree: Tree, release_id: str, builds: dict[str, str]) -> dict:
    """Record the builds of every target made in the release's run, as a deploy to a
    mixed fleet does, and the release's configuration; returns that configuration."""
    path = tree.path(release_id, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    config = {"app": "app:app", "port": 8000, "env_names": []}
    manifest.update(builds=builds, config=config, source_build="20261101T120000-5555555555")
    with open(path, "w") as handle:
        json.dump(manifest, handle)
    return config


def test_a_named_release_of_another_target_goes_to_this_hosts_own(tree):
    # A is this host's (trixie) release; the bookworm hosts run the same source build
    # and configuration under another id, which the rollback names.
    tree.deployed(A, B)
    other_build = "20261101T120000-0123456789"
    config = with_builds(tree, A, {"cp313": "20261101T120000-9876543210", "cp311": other_build})
    theirs = release_id_for(other_build, config)

    result = tree.releases().target(theirs, None)

    assert (result["target"], result["named"]) == (A, theirs)
    assert result["build"] == "20261101T120000-5555555555"
    assert result["reason"].startswith(f"named release {A}")


def test_a_named_release_no_target_made_is_still_refused(tree):
    tree.deployed(A, B)
    with_builds(tree, A, {"cp313": "not a build id", "cp311": "20261101T120000-0123456789"})
    with pytest.raises(ReleaseError) as err:
        tree.releases().target(F, None)
    assert err.value.details["field"] == "release"
    assert f"got {F!r}" in err.value.msg
