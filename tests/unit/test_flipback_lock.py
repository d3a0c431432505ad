"""Unit tests of module_utils/flipback_lock.py on real lock files under tmp_path.

Time is a fake clock: `sleep` advances it (and may run a hook, e.g. the holder
releasing), so waiting, TTL and heartbeat staleness are tested without sleeping.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible.module_utils.flipback_lock import (
    KEEP_STALE,
    LockError,
    ServiceLock,
    describe,
    read_holder,
    run_is_gone,
    stale_reason,
    validate_owner,
)
from ansible.module_utils.flipback_release import ReleaseError, utc_iso

SERVICE = "shop"
# 2026-11-29T12:00:00Z
NOW = 1_795_953_600.0
ALICE = {
    "run_id": "ctl1-4242-20261129T115500Z",
    "by": "alice",
    "playbook": "deploy.yml",
    "release": "20261129T115500-aaaaaaaaaa",
    "action": "deploy",
}
BOB = {
    "run_id": "ctl2-777-20261129T120000Z",
    "by": "bob",
    "playbook": "rollback.yml",
    "release": "20261128T090000-bbbbbbbbbb",
    "action": "rollback",
}


class Clock:
    """now() and sleep(); sleep advances now and then runs `on_sleep`, if set."""

    def __init__(self, start: float = NOW) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.t += seconds
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / SERVICE


def lock_at(root: Path, clock: Clock) -> ServiceLock:
    return ServiceLock(SERVICE, str(root), now=clock.now, sleep=clock.sleep)


def hold(root: Path, owner: dict, *, since: float, refreshed: float | None = None, **extra):
    """A lock as a run of `owner` would have written it at `since`."""
    root.mkdir(parents=True, exist_ok=True)
    holder = {
        "service": SERVICE,
        **owner,
        "since": utc_iso(since),
        "pid": 99999,
        "ttl": 1800,
        "expires": since + 1800,
        "refreshed": since if refreshed is None else refreshed,
        "stale_after": 120,
        **extra,
    }
    (root / ".lock").write_text(json.dumps(holder))
    return holder


def on_disk(root: Path) -> dict | None:
    return read_holder(str(root / ".lock"))


def stale_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".lock.stale-*"))


def tree(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {p.name: p.read_text() for p in sorted(root.iterdir())}


# --------------------------------------------------------------------------- acquire


@pytest.mark.parametrize("exists", [True, False], ids=["root-exists", "root-created"])
def test_acquire_free(root, clock, exists):
    if exists:
        root.mkdir()

    result = lock_at(root, clock).acquire(ALICE)

    assert (result["changed"], result["outcome"], result["took_over"]) == (True, "acquired", None)
    assert result["waited"] == 0
    assert result["path"] == str(root / ".lock")
    holder = on_disk(root)
    assert holder == result["holder"]
    assert {k: holder[k] for k in ALICE} == ALICE
    assert holder["service"] == SERVICE
    assert holder["since"] == "2026-11-29T12:00:00Z"
    assert holder["pid"] == os.getpid()
    assert (holder["ttl"], holder["expires"]) == (1800, NOW + 1800)
    assert (holder["refreshed"], holder["stale_after"]) == (NOW, 120)
    assert stat.S_IMODE((root / ".lock").stat().st_mode) == 0o644
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    # No temporary file left behind.
    assert sorted(p.name for p in root.iterdir()) == [".lock"]
    assert clock.sleeps == []


def test_acquire_without_heartbeat_records_no_stale_after(root, clock):
    result = lock_at(root, clock).acquire(ALICE, heartbeat=False, ttl=600)
    assert result["holder"]["stale_after"] is None
    assert result["holder"]["expires"] == NOW + 600


def test_acquire_defaults_by_to_the_user(root, clock, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "carol")
    result = lock_at(root, clock).acquire({"run_id": "r1"})
    assert result["holder"]["by"] == "carol"
    assert result["holder"]["playbook"] is None


@pytest.mark.parametrize(
    "second",
    [
        {},
        {"release": "20261129T130000-cccccccccc", "action": "rollback"},
        {"by": "someone-else"},
    ],
    ids=["same-owner", "other-fields-kept-from-first", "other-by-kept"],
)
def test_reacquire_same_run_is_a_noop_that_refreshes(root, clock, second):
    lock = lock_at(root, clock)
    first = lock.acquire(ALICE)["holder"]
    clock.t += 90

    result = lock.acquire({**ALICE, **second}, ttl=60, stale_after=5)

    assert (result["changed"], result["outcome"], result["took_over"]) == (
        False,
        "refreshed",
        None,
    )
    holder = on_disk(root)
    assert holder == result["holder"]
    assert holder["refreshed"] == NOW + 90
    # The run's identity, start and limits are those of its first acquire.
    unchanged = {k: v for k, v in holder.items() if k not in ("refreshed", "pid")}
    assert unchanged == {k: v for k, v in first.items() if k not in ("refreshed", "pid")}


def test_reacquire_keeps_a_run_alive_past_stale_after(root, clock):
    """A run that acquires at every step is never taken for gone, however long it runs."""
    lock = lock_at(root, clock)
    lock.acquire(ALICE)
    for _ in range(10):
        clock.t += 100  # each step shorter than stale_after=120
        assert lock.acquire(ALICE)["outcome"] == "refreshed"
    with pytest.raises(LockError):
        lock.acquire(BOB)


def test_held_by_live_run_fails_at_once_naming_the_holder(root, clock):
    holder = hold(root, ALICE, since=NOW - 300, refreshed=NOW - 30)
    before = tree(root)

    with pytest.raises(LockError) as info:
        lock_at(root, clock).acquire(BOB)

    error = info.value
    assert error.retryable is True
    for field in ("alice", "2026-11-29T11:55:00Z", "deploy.yml", ALICE["release"], "deploy"):
        assert field in error.msg
    assert ALICE["run_id"] in error.msg
    assert "waited 0 s (wait=0)" in error.msg
    assert "goes stale at 2026-11-29T12:25:00Z (ttl)" in error.msg
    assert "if not refreshed by 2026-11-29T12:01:30Z" in error.msg
    assert error.details == {"holder": holder, "waited": 0.0, "path": str(root / ".lock")}
    assert clock.sleeps == []
    assert tree(root) == before


@pytest.mark.parametrize(
    ("gone", "outcome"),
    [
        pytest.param([ALICE["run_id"]], "took_over", id="holder-gone"),
        pytest.param(["someone-else:1:1"], None, id="other-run-gone"),
        pytest.param([], None, id="none-gone"),
    ],
)
def test_gone_runs_take_over_a_live_looking_lock_at_once(root, clock, gone, outcome):
    # A run killed with Ctrl-C leaves a fresh-looking lock; the controller that saw its
    # ansible-playbook process gone names it, and the lock is taken over without waiting.
    hold(root, ALICE, since=NOW - 10, refreshed=NOW - 5)
    if outcome is None:
        with pytest.raises(LockError):
            lock_at(root, clock).acquire(BOB, gone_runs=gone)
        assert on_disk(root)["run_id"] == ALICE["run_id"]
        return
    result = lock_at(root, clock).acquire(BOB, gone_runs=gone)
    assert result["outcome"] == outcome
    assert result["took_over"]["run_id"] == ALICE["run_id"]
    assert "its ansible-playbook process no longer exists" in result["warnings"][0]
    assert on_disk(root)["run_id"] == BOB["run_id"]
    assert clock.sleeps == []


LIVE = {"controller": "ctl", "pids": [100, "200"], "at": 1000.0}


@pytest.mark.parametrize(
    ("run_id", "live_runs", "gone"),
    [
        pytest.param("ctl:300:900", LIVE, True, id="pid-not-alive-started-before"),
        pytest.param("ctl:300:998", LIVE, True, id="started-just-over-1s-before"),
        pytest.param("ctl:300:999", LIVE, False, id="started-within-1s"),
        pytest.param("ctl:300:1001", LIVE, False, id="started-after-the-look"),
        pytest.param("ctl:100:900", LIVE, False, id="pid-alive"),
        pytest.param("ctl:200:900", LIVE, False, id="pid-alive-as-string"),
        pytest.param("other:300:900", LIVE, False, id="other-controller"),
        pytest.param("ctl:300", LIVE, False, id="two-parts"),
        pytest.param("ctl:300:900:1", LIVE, False, id="four-parts"),
        pytest.param("ctl:x:900", LIVE, False, id="pid-not-a-number"),
        pytest.param("ctl:300:soon", LIVE, False, id="start-not-a-number"),
        pytest.param("ctl-4242-20261129T115500Z", LIVE, False, id="other-run-id-format"),
        pytest.param("ctl:300:900", None, False, id="no-live-runs"),
        pytest.param("ctl:300:900", {}, False, id="empty-live-runs"),
        pytest.param("ctl:300:900", {"controller": "ctl", "pids": []}, False, id="no-at"),
        pytest.param("ctl:300:900", {**LIVE, "pids": ["x"]}, False, id="bad-pids"),
        pytest.param("ctl:300:900", {**LIVE, "at": "later"}, False, id="bad-at"),
        pytest.param("ctl:300:900", {"controller": "ctl", "at": 1000}, True, id="no-pids"),
    ],
)
def test_run_is_gone(run_id, live_runs, gone):
    assert run_is_gone(run_id, live_runs) is gone


@pytest.mark.parametrize(
    ("run_id", "pids", "outcome"),
    [
        pytest.param("ctl:4242:1795953000", [777], "took_over", id="holder-gone"),
        pytest.param("ctl:4242:1795953000", [777, 4242], None, id="holder-alive"),
        pytest.param("ctl:4242:1795953600", [777], None, id="holder-started-now"),
        pytest.param("ctl2:4242:1795953000", [777], None, id="other-controller"),
    ],
)
def test_live_runs_take_over_the_lock_of_a_run_that_died(root, clock, run_id, pids, outcome):
    # The holder's lock looks fresh (refreshed 5 s ago): only live_runs can end it.
    hold(root, {**ALICE, "run_id": run_id}, since=NOW - 600, refreshed=NOW - 5)
    live_runs = {"controller": "ctl", "pids": pids, "at": NOW}
    new = {**BOB, "run_id": "ctl:777:1795953600"}
    if outcome is None:
        with pytest.raises(LockError):
            lock_at(root, clock).acquire(new, live_runs=live_runs)
        assert on_disk(root)["run_id"] == run_id
        return
    result = lock_at(root, clock).acquire(new, live_runs=live_runs)
    assert result["outcome"] == outcome
    assert result["took_over"]["run_id"] == run_id
    assert "its ansible-playbook process no longer exists" in result["warnings"][0]
    assert on_disk(root)["run_id"] == new["run_id"]
    assert stale_files(root)
    assert clock.sleeps == []


def test_live_runs_in_check_mode_say_what_a_run_would_do(root, clock):
    holder = hold(root, {**ALICE, "run_id": "ctl:4242:1795953000"}, since=NOW - 600)
    before = tree(root)
    live_runs = {"controller": "ctl", "pids": [], "at": NOW}

    result = lock_at(root, clock).acquire(BOB, live_runs=live_runs, check_mode=True)

    assert result["outcome"] == "took_over"
    assert result["took_over"] == holder
    assert result["warnings"][0].startswith("would take over the stale lock")
    assert tree(root) == before


def test_wait_then_acquire_when_released_during_the_wait(root, clock):
    hold(root, ALICE, since=NOW - 10)
    alice_lock = lock_at(root, clock)

    def alice_finishes():
        if len(clock.sleeps) == 3:
            alice_lock.release(ALICE)

    clock.on_sleep = alice_finishes

    result = lock_at(root, clock).acquire(BOB, wait=5, poll=0.5)

    assert (result["changed"], result["outcome"]) == (True, "acquired")
    assert clock.sleeps == [0.5, 0.5, 0.5]
    assert result["waited"] == 1.5
    assert on_disk(root)["run_id"] == BOB["run_id"]
    assert on_disk(root)["since"] == utc_iso(NOW + 1.5)


def test_wait_timeout_fails_naming_the_holder(root, clock):
    holder = hold(root, ALICE, since=NOW - 10)

    with pytest.raises(LockError) as info:
        lock_at(root, clock).acquire(BOB, wait=1, poll=0.3)

    # The last sleep is cut to the deadline.
    assert clock.sleeps == [0.3, 0.3, 0.3, 0.1]
    assert info.value.retryable is True
    assert info.value.details["waited"] == 1.0
    assert info.value.details["holder"] == holder
    assert "waited 1 s (wait=1)" in info.value.msg
    assert on_disk(root) == holder


def test_lock_going_stale_during_the_wait_is_taken_over(root, clock):
    hold(root, ALICE, since=NOW - 100)  # refreshed 100 s ago, stale after 120

    result = lock_at(root, clock).acquire(BOB, wait=60, poll=10)

    assert result["outcome"] == "took_over"
    assert result["waited"] == 30
    assert clock.sleeps == [10, 10, 10]


# --------------------------------------------------------------------------- stale locks


@pytest.mark.parametrize(
    ("since", "refreshed", "extra", "reason"),
    [
        (NOW - 1800, NOW - 5, {}, "older than its ttl: it expired at 2026-11-29T12:00:00Z"),
        (NOW - 300, NOW - 121, {}, "not refreshed for 121 s (stale_after=120 s): its run is gone"),
        (
            NOW - 300,
            NOW - 200,
            {"stale_after": 150},
            "not refreshed for 200 s (stale_after=150 s)",
        ),
        (
            NOW - 400,
            NOW - 400,
            {"ttl": 300, "expires": NOW - 100, "stale_after": None},
            "older than its ttl",
        ),
    ],
    ids=["ttl-expired", "heartbeat-stale", "holder-stale-after", "no-heartbeat-ttl"],
)
def test_stale_lock_is_taken_over_with_a_warning(root, clock, since, refreshed, extra, reason):
    old = hold(root, ALICE, since=since, refreshed=refreshed, **extra)

    result = lock_at(root, clock).acquire(BOB)

    assert (result["changed"], result["outcome"]) == (True, "took_over")
    assert result["took_over"] == old
    assert on_disk(root) == result["holder"]
    assert result["holder"]["run_id"] == BOB["run_id"]
    [warning] = result["warnings"]
    assert reason in warning
    assert describe(old) in warning
    assert ".lock.stale-20261129T120000Z" in warning
    assert stale_files(root) == [".lock.stale-20261129T120000Z"]
    assert json.loads((root / ".lock.stale-20261129T120000Z").read_text()) == old


@pytest.mark.parametrize(
    ("refreshed", "extra", "stale_after"),
    [
        (NOW - 200, {"stale_after": 600}, 120),
        (NOW - 1000, {"stale_after": None}, 120),
        (NOW - 119, {}, 120),
    ],
    ids=["holder-declared-long-steps", "holder-without-heartbeat", "just-fresh"],
)
def test_live_lock_is_not_stale(root, clock, refreshed, extra, stale_after):
    hold(root, ALICE, since=NOW - 1000, refreshed=refreshed, **extra)
    with pytest.raises(LockError):
        lock_at(root, clock).acquire(BOB, stale_after=stale_after)


def test_only_the_last_three_stale_locks_are_kept(root, clock):
    names = []
    for n in range(5):
        hold(root, {**ALICE, "run_id": f"gone-{n}"}, since=clock.t - 2000)
        result = lock_at(root, clock).acquire(BOB if n % 2 else ALICE)
        assert result["outcome"] == "took_over"
        names.append(f".lock.stale-{utc_iso(clock.t).replace('-', '').replace(':', '')}")
        clock.t += 3600
        (root / ".lock").unlink()

    assert stale_files(root) == sorted(names[-KEEP_STALE:])
    kept = [json.loads((root / name).read_text())["run_id"] for name in sorted(names[-3:])]
    assert kept == ["gone-2", "gone-3", "gone-4"]


def test_two_takeovers_in_one_second_keep_both(root, clock):
    for n in range(2):
        hold(root, {**ALICE, "run_id": f"gone-{n}"}, since=NOW - 2000)
        lock_at(root, clock).acquire(BOB)
        (root / ".lock").unlink()
    assert stale_files(root) == [".lock.stale-20261129T120000Z", ".lock.stale-20261129T120000Z-1"]


@pytest.mark.parametrize(
    ("age", "outcome"),
    [(10, None), (500, "took_over")],
    ids=["fresh-unreadable-holds", "old-unreadable-taken-over"],
)
def test_unreadable_lock_goes_stale_by_its_mtime(root, clock, age, outcome):
    root.mkdir()
    (root / ".lock").write_text("not json")
    os.utime(root / ".lock", (NOW - age, NOW - age))

    if outcome is None:
        with pytest.raises(LockError) as info:
            lock_at(root, clock).acquire(BOB)
        assert "an unreadable lock (not a JSON object: 'not json')" in info.value.msg
    else:
        result = lock_at(root, clock).acquire(BOB)
        assert result["outcome"] == outcome
        assert result["took_over"]["problem"] == "not a JSON object: 'not json'"


def test_stale_reason_falls_back_to_the_callers_limits():
    holder = {"run_id": "x", "refreshed": NOW - 50}
    assert stale_reason(holder, NOW, ttl=40, stale_after=1000) is not None
    assert stale_reason(holder, NOW, ttl=1000, stale_after=40) is not None
    assert stale_reason(holder, NOW, ttl=1000, stale_after=1000) is None
    assert stale_reason({"run_id": "x"}, NOW, ttl=1, stale_after=1) is None


# --------------------------------------------------------------------------- release


def test_release_by_owner(root, clock):
    lock = lock_at(root, clock)
    lock.acquire(ALICE)

    result = lock.release({"run_id": ALICE["run_id"]})

    assert (result["changed"], result["outcome"], result["holder"]) == (True, "released", None)
    assert not (root / ".lock").exists()
    # Then free for the next run.
    assert lock.acquire(BOB)["outcome"] == "acquired"


@pytest.mark.parametrize("stale", [False, True], ids=["live", "stale"])
def test_release_by_non_owner_leaves_the_lock(root, clock, stale):
    holder = hold(root, ALICE, since=NOW - (5000 if stale else 10))

    result = lock_at(root, clock).release(BOB)

    assert (result["changed"], result["outcome"]) == (False, "held_by_other")
    assert result["holder"] == holder
    assert "locked by alice" in result["msg"]
    assert BOB["run_id"] in result["msg"]
    assert on_disk(root) == holder


@pytest.mark.parametrize("make_root", [True, False], ids=["no-lock", "no-root"])
def test_release_missing_lock(root, clock, make_root):
    if make_root:
        root.mkdir()
    result = lock_at(root, clock).release(ALICE)
    assert (result["changed"], result["outcome"], result["holder"]) == (False, "absent", None)
    assert root.exists() is make_root


# --------------------------------------------------------------------------- check mode


@pytest.mark.parametrize(
    ("setup", "call", "outcome", "changed"),
    [
        (None, "acquire", "acquired", True),
        ("alice-live", "acquire", "refreshed", False),
        ("alice-live", "acquire-bob", "busy", False),
        ("alice-live", "acquire-bob-wait", "busy", False),
        ("alice-stale", "acquire-bob", "took_over", True),
        ("alice-live", "release", "released", True),
        ("alice-live", "release-bob", "held_by_other", False),
    ],
    ids=[
        "would-acquire",
        "would-refresh",
        "would-fail",
        "would-wait",
        "would-take-over",
        "would-release",
        "would-leave",
    ],
)
def test_check_mode_writes_nothing(root, clock, setup, call, outcome, changed):
    if setup is not None:
        hold(root, ALICE, since=NOW - (5000 if setup == "alice-stale" else 10))
    before = tree(root)
    lock = lock_at(root, clock)

    if call.startswith("release"):
        result = lock.release(BOB if call.endswith("bob") else ALICE, check_mode=True)
    else:
        owner = BOB if "bob" in call else ALICE
        wait = 30 if call.endswith("wait") else 0
        result = lock.acquire(owner, wait=wait, check_mode=True)

    assert (result["outcome"], result["changed"]) == (outcome, changed)
    assert tree(root) == before
    assert root.exists() is (setup is not None)
    assert clock.sleeps == []
    if outcome == "busy":
        assert "locked by alice" in result["msg"]
        assert ("wait up to 30 s" if wait else "fail at once") in result["msg"]
    if outcome == "took_over":
        assert result["took_over"]["run_id"] == ALICE["run_id"]
        assert result["warnings"][0].startswith("would take over")


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "service", ["", "Shop", "1shop", "shop/../etc", "s" * 33, None], ids=lambda v: repr(v)[:12]
)
def test_invalid_service_is_rejected(root, service):
    with pytest.raises(ReleaseError) as info:
        ServiceLock(service, str(root))
    assert info.value.details["field"] == "service"


def test_root_defaults_to_a_directory_under_run_lock():
    assert ServiceLock(SERVICE).path == "/run/lock/flipback/shop/.lock"


@pytest.mark.parametrize(
    ("owner", "field"),
    [
        ("alice", "owner"),
        ({}, "owner.run_id"),
        ({"run_id": "  "}, "owner.run_id"),
        ({"run_id": 7}, "owner.run_id"),
        ({"run_id": "r", "release": 3}, "owner.release"),
        ({"run_id": "r", "host": "x"}, "owner"),
    ],
    ids=["not-a-dict", "no-run-id", "blank-run-id", "int-run-id", "int-release", "unknown-key"],
)
def test_invalid_owner_is_rejected(owner, field):
    with pytest.raises(LockError) as info:
        validate_owner(owner)
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    ("option", "value"),
    [("wait", -1), ("ttl", 0), ("stale_after", -5), ("poll", 0), ("wait", True), ("ttl", "9")],
    ids=["negative-wait", "zero-ttl", "negative-stale-after", "zero-poll", "bool-wait", "str-ttl"],
)
def test_invalid_seconds_are_rejected(root, clock, option, value):
    with pytest.raises(LockError) as info:
        lock_at(root, clock).acquire(ALICE, **{option: value})
    assert info.value.details["field"] == option
    assert not root.exists()


def test_root_that_is_a_file_fails(root, clock):
    root.write_text("")
    with pytest.raises(LockError) as info:
        lock_at(root, clock).acquire(ALICE)
    assert info.value.retryable is False
    assert info.value.details["path"] == str(root)


def test_unwritable_lock_fails_retryable(root, clock, monkeypatch):
    root.mkdir()

    def broken_link(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(LockError) as info:
        lock_at(root, clock).acquire(ALICE)
    assert info.value.retryable is True
    assert "No space left on device" in info.value.msg
    assert sorted(p.name for p in root.iterdir()) == []


# --------------------------------------------------------------------------- races


@pytest.mark.parametrize("stale", [False, True], ids=["free-lock", "stale-lock"])
def test_concurrent_acquire_exactly_one_wins(root, stale):
    """Real files, real clock: threads acquiring at once; one gets it, the others fail."""
    if stale:
        hold(root, {"run_id": "gone"}, since=1_000_000.0)
    contenders = 8
    barrier = threading.Barrier(contenders)
    results: dict[int, object] = {}

    def contend(n: int) -> None:
        barrier.wait()
        try:
            results[n] = ServiceLock(SERVICE, str(root)).acquire({"run_id": f"run-{n}"})
        except LockError as exc:
            results[n] = exc

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [n for n, r in results.items() if isinstance(r, dict)]
    assert len(winners) == 1
    [winner] = winners
    assert results[winner]["outcome"] == ("took_over" if stale else "acquired")
    assert on_disk(root)["run_id"] == f"run-{winner}"
    losers = [r for r in results.values() if isinstance(r, LockError)]
    assert len(losers) == contenders - 1
    assert all(f"run run-{winner})" in r.msg for r in losers)
    assert len(stale_files(root)) == (1 if stale else 0)
    assert not list(root.glob(".lock.tmp-*"))


def test_a_declared_hold_outlives_the_default_stale_after_and_ttl(root, clock):
    """A deploy that declares a long hold (a rollout of many batches) keeps its lock
    through a wait longer than the default stale_after, and its ttl grows by as much."""
    lock = lock_at(root, clock)
    taken = lock.take({"owner": ALICE, "stale_after": 3000})
    assert taken["holder"]["stale_after"] == 3000
    assert taken["holder"]["ttl"] == 1800 + 3000 - 120

    clock.t += 2900  # waiting for the batches before this host's: no refresh
    with pytest.raises(LockError):
        lock.take({"owner": BOB})
    assert on_disk(root)["run_id"] == ALICE["run_id"]

    clock.t += 200  # past the declared hold: the run is taken for gone
    assert lock.take({"owner": BOB})["outcome"] == "took_over"


def test_a_default_request_keeps_the_default_ttl(root, clock):
    taken = lock_at(root, clock).take({"owner": ALICE})
    assert (taken["holder"]["stale_after"], taken["holder"]["ttl"]) == (120, 1800)
