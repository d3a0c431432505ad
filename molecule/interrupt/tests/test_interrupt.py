"""Kill ansible-playbook at every task of a deploy and of a rollback, then run it again.

The flipback_kill callback (sandbox/plugins/callback/) SIGKILLs the run's process group when
task N+1 starts, so task N is the last one done. For every N of a full run (the count
T is learned from a full run right before each loop, never written down here: the
playbooks change), one machine runs the command killed after task N, checks the host,
runs the same command again and checks the host again. The four machines share the
kill points and work in parallel, each limited to itself (--limit), while clients
hit every machine's public port with a new connection per request. Every deploy kill
point deploys a release that is new to its machine (one commit per point on the
machine's own branch of the test repository), so staging really happens.

After every kill: `current` names a complete release (manifest status "staged", no
staging lock) that answers /health on the public port with its own id, and it is the
release from before the command or the one the command was to switch to.
After every re-run: exit 0, `current` is the intended release, every release on disk
is complete, no artifact is left in transit, no stray `current.*` link, the deploy
lock is free. After a deploy, every release on disk has been live (nothing staged and
abandoned is kept) and they are exactly the keep_releases most recently live ones.
A rollback must land on the previous good release (live before, never rolled away
from or failed; README "How it works"), and never on a release whose deploy was killed
after staging ("half-finished"), which the next deploy removes. A default rollback
names no release: when the killed run had already switched, the re-run is a second
rollback and must land one more good release back (reported apart in the totals).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import flipback_testlib as lib

load = lib.bench_load()

# One client per machine, a new connection per request, 5 requests/s per machine:
# enough to catch a refused or reset connection at any flip, light on 2 cores.
CLIENTS = 4
RATE = 20
LOCK = f"/run/lock/flipback/{lib.SERVICE}/.lock"
DEPLOY = "deploy.yml"
ROLLBACK = "rollback.yml"
KILLED = -signal.SIGKILL
OUTPUT_TAIL = 3000

# Everything one check needs from a host, read in one round trip.
_STATE_SCRIPT = r"""
import json, os, subprocess
root = "/srv/hello"

def ls(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []

state = {"current": None, "releases": {}, "history": [], "torn_history_lines": 0}
try:
    state["current"] = os.readlink(os.path.join(root, "current"))
except OSError as exc:
    state["current_error"] = str(exc)
for name in ls(os.path.join(root, "releases")):
    path = os.path.join(root, "releases", name)
    try:
        with open(os.path.join(path, "manifest.json")) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        manifest = {"error": str(exc)}
    state["releases"][name] = {
        "status": manifest.get("status"),
        "id": manifest.get("id"),
        "git_sha": manifest.get("git_sha"),
        "error": manifest.get("error"),
        "staging_lock": os.path.exists(os.path.join(path, ".staging-lock")),
    }
try:
    with open(os.path.join(root, "history.jsonl")) as fh:
        for line in fh:
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    state["torn_history_lines"] += 1
                    continue
                state["history"].append({k: event.get(k) for k in ("release", "event", "from")})
except FileNotFoundError:
    pass
state["incoming"] = ls(os.path.join(root, ".incoming"))
state["root_entries"] = ls(root)
state["lock_held"] = os.path.exists(LOCK)
probe = subprocess.run(
    ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", "http://127.0.0.1:PORT/health"],
    capture_output=True, text=True,
)
state["health"] = {"rc": probe.returncode, "out": probe.stdout, "err": probe.stderr}
print(json.dumps(state))
""".replace("LOCK", repr(LOCK)).replace("PORT", str(lib.PORT))


# --------------------------------------------------------------------------- host state


@dataclass
class HostState:
    raw: dict

    @property
    def current(self) -> str | None:
        target = self.raw.get("current") or ""
        parent, name = os.path.split(target)
        return name if parent == "releases" else None

    @property
    def releases(self) -> dict[str, dict]:
        return self.raw["releases"]

    def complete(self, release: str | None) -> bool:
        info = self.releases.get(release or "")
        return bool(
            info
            and info["status"] == "staged"
            and info["id"] == release
            and not info["staging_lock"]
        )

    def sha(self, release: str | None) -> str | None:
        return (self.releases.get(release or "") or {}).get("git_sha")

    def with_sha(self, sha: str) -> list[str]:
        return [rid for rid, info in self.releases.items() if info["git_sha"] == sha]

    def last_events(self) -> tuple[dict[str, str], dict[str, int]]:
        last, last_active = {}, {}
        for position, event in enumerate(self.raw["history"]):
            last[event["release"]] = event["event"]
            if event["event"] == "active":
                last_active[event["release"]] = position
        return last, last_active

    def ever_active(self, release: str) -> bool:
        return release in self.last_events()[1]

    def good(self) -> list[str]:
        """Releases that were live and were not failed or rolled away from, newest first."""
        last, last_active = self.last_events()
        good = [
            rid
            for rid in self.releases
            if rid != self.current and self.complete(rid) and last.get(rid) == "active"
        ]
        return sorted(good, key=lambda rid: last_active[rid], reverse=True)

    def previous_good(self) -> str | None:
        return next(iter(self.good()), None)

    def most_recently_live(self, keep: int) -> set[str]:
        last, last_active = self.last_events()
        live = [rid for rid in last_active if last[rid] == "active"]
        return set(sorted(live, key=lambda rid: last_active[rid])[-keep:])

    def health_problem(self) -> str | None:
        probe = self.raw["health"]
        if probe["rc"] != 0:
            return f"curl of the public port failed (rc {probe['rc']}): {probe['err'].strip()}"
        body, _, code = probe["out"].rpartition("\n")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if code != "200" or not isinstance(answer, dict) or answer.get("ok") is not True:
            return f"public /health answered {code} {body[:200]!r}, expected 200 with ok: true"
        if answer.get("release") != self.current:
            return (
                f"public /health answered release {answer.get('release')}, "
                f"current is {self.current}"
            )
        return None

    def current_problems(self) -> list[str]:
        if self.current is None:
            return [
                f"current is {self.raw.get('current')!r} ({self.raw.get('current_error', '')}), "
                "expected a link to releases/<id>"
            ]
        problems = []
        if not self.complete(self.current):
            problems.append(
                f"current -> {self.current}, which is not a complete release: "
                f"{self.releases.get(self.current)}"
            )
        health = self.health_problem()
        if health:
            problems.append(health)
        return problems

    def leftover_problems(self) -> list[str]:
        problems = [
            f"release {rid} is not complete: {info}"
            for rid, info in self.releases.items()
            if not self.complete(rid)
        ]
        if self.raw["incoming"]:
            problems.append(f"artifacts left in .incoming: {self.raw['incoming']}")
        stray = [n for n in self.raw["root_entries"] if n.startswith("current") and n != "current"]
        if stray:
            problems.append(f"stray links next to current: {stray}")
        if self.raw["lock_held"]:
            problems.append(f"the deploy lock {LOCK} is still held")
        if self.raw["torn_history_lines"]:
            problems.append(f"{self.raw['torn_history_lines']} unreadable history lines")
        return problems


# --------------------------------------------------------------------------- one machine


@dataclass
class Point:
    """One kill point: the run killed after task `n`, what it left, and the re-run."""

    phase: str
    host: str
    n: int
    argv: tuple[str, ...]
    last_done: str = ""
    killed_at: str = ""
    kill_rc: int | None = None
    after_kill: list[str] = field(default_factory=list)
    rerun_rc: int | None = None
    after_rerun: list[str] = field(default_factory=list)
    left_half_finished: bool = False
    switched_before_kill: bool = False
    output: str = ""

    @property
    def problems(self) -> list[str]:
        found = []
        if self.kill_rc != KILLED:
            found.append(f"the run to kill exited {self.kill_rc}, expected SIGKILL")
        found += [f"after the kill: {p}" for p in self.after_kill]
        if self.rerun_rc != 0:
            found.append(f"the re-run exited {self.rerun_rc}, expected 0")
        found += [f"after the re-run: {p}" for p in self.after_rerun]
        return found

    def reproduction(self) -> str:
        return (
            f"{self.phase} on {self.host}: `ansible-playbook --limit {self.host} "
            f"playbooks/{' '.join(self.argv)}` with FLIPBACK_KILL_AFTER={self.n} (last task done: "
            f"{self.last_done!r}; killed at the start of {self.killed_at!r}), then the same "
            f"command again: {'; '.join(self.problems)}\n{self.output}"
        )


class Machine:
    """One sandbox machine, its branch of the test repository, and its playbook runs."""

    def __init__(self, name: str, fleet: Fleet) -> None:
        self.name = name
        self.fleet = fleet
        self.host = testinfra.get_host(
            f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
        )
        self.branch = f"interrupt-{name}"
        self.top_sha = lib.git_sha("v1")
        self.commits = 0
        self.half_finished: str | None = None
        self.half_finished_history: list[str] = []
        self.deploy_problems: list[str] = []
        self.final: HostState | None = None
        self.points: dict[str, list[Point]] = {DEPLOY: [], ROLLBACK: []}
        self.errors: list[str] = []

    def state(self) -> HostState:
        out = self.host.run(f"python3 -c {shlex.quote(_STATE_SCRIPT)}")
        assert out.rc == 0, f"{self.name}: could not read the host state: {out.stderr}"
        return HostState(json.loads(out.stdout))

    def new_commit(self, label: str) -> str:
        """A commit on this machine's branch whose service content no release had yet."""
        self.commits += 1
        return self.fleet.repo.commit(self.branch, f"{self.name} {label} #{self.commits}\n")

    def run(
        self, argv: tuple[str, ...], *, kill_after: int = 0, task_log: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **lib._PLAYBOOK_ENV, "ANSIBLE_CALLBACKS_ENABLED": self.fleet.callbacks}
        if kill_after:
            env["FLIPBACK_KILL_AFTER"] = str(kill_after)
        if task_log is not None:
            env["FLIPBACK_TASK_LOG"] = str(task_log)
        return subprocess.run(
            [
                "ansible-playbook",
                "-i",
                os.environ["MOLECULE_INVENTORY_FILE"],
                "--limit",
                self.name,
                str(lib.PROJECT / "playbooks" / argv[0]),
                *argv[1:],
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env=env,
            # Its own session, as a terminal would give it: the kill takes its process
            # group (the run and its workers) and nothing of the test.
            start_new_session=True,
        )

    def must_run(self, argv: tuple[str, ...]) -> None:
        run = self.run(argv)
        assert run.returncode == 0, (
            f"{self.name}: {' '.join(argv)} exited {run.returncode}\n{_tail(run)}"
        )

    def learn_task_count(self, argv: tuple[str, ...]) -> list[str]:
        log = self.fleet.log_path(self.name, argv[0], "full")
        run = self.run(argv, task_log=log)
        assert run.returncode == 0, f"{self.name}: full run of {argv} failed\n{_tail(run)}"
        return [line.split("\t")[1] for line in log.read_text().splitlines()]

    # -- deploys

    def deploy_kill_points(self, points: list[int]) -> None:
        for n in points:
            sha = self.new_commit(f"deploy kill point {n}")
            argv = (DEPLOY, "-e", f"ref={sha}")
            point = self._kill_and_rerun("deploy", n, argv, self._check_deploy(sha))
            self.top_sha = sha
            self.points[DEPLOY].append(point)

    def _check_deploy(self, sha: str):
        def check(point: Point, before: HostState, after: HostState, killed: bool) -> list[str]:
            problems = after.current_problems()
            if killed:
                allowed = {before.current, *after.with_sha(sha)}
                if after.current not in allowed:
                    problems.append(
                        f"current is {after.current}, neither the release before "
                        f"({before.current}) nor the one being deployed"
                    )
                point.left_half_finished = any(
                    after.complete(rid) and rid != after.current for rid in after.with_sha(sha)
                )
                return problems
            if after.sha(after.current) != sha:
                problems.append(
                    f"current is {after.current} (git {after.sha(after.current)}), "
                    f"expected the release of commit {sha}"
                )
            problems += after.leftover_problems()
            problems += self._deploy_keep_problems(after)
            return problems

        return check

    def _deploy_keep_problems(self, after: HostState) -> list[str]:
        problems = [
            f"release {rid} is on disk but was never live (a half-finished deploy kept)"
            for rid in after.releases
            if not after.ever_active(rid)
        ]
        expected = after.most_recently_live(self.fleet.keep)
        if set(after.releases) != expected:
            problems.append(
                f"releases on disk {sorted(after.releases)}, expected the "
                f"{self.fleet.keep} most recently live {sorted(expected)}"
            )
        return problems

    # -- rollbacks

    def make_half_finished(self, n: int) -> None:
        """Deploy a new release killed where a deploy leaves it staged but not live."""
        sha = self.new_commit(f"half-finished deploy killed after task {n}")
        run = self.run((DEPLOY, "-e", f"ref={sha}"), kill_after=n)
        assert run.returncode == KILLED, f"{self.name}: exited {run.returncode}\n{_tail(run)}"
        state = self.state()
        staged = [rid for rid in state.with_sha(sha) if state.complete(rid)]
        assert staged and staged[0] != state.current, (
            f"{self.name}: a deploy killed after task {n} left no staged, not live release "
            f"this time: {state.raw}"
        )
        self.half_finished = staged[0]
        self.half_finished_history = [
            e["event"] for e in state.raw["history"] if e["release"] == self.half_finished
        ]

    def ensure_rollback_targets(self) -> None:
        """At least two good releases to go back to: one for the command, one for a re-run
        that finds the killed run's switch already done (see _check_rollback)."""
        if len(self.state().good()) >= 2:
            return
        self.roll_forward()
        while len(self.state().good()) < 2:
            self.top_sha = self.new_commit("a release to roll back from")
            self.roll_forward()

    def roll_forward(self) -> None:
        """Deploy the newest release of this machine's branch; check what it leaves."""
        self.must_run((DEPLOY, "-e", f"ref={self.top_sha}"))
        state = self.state()
        problems = state.current_problems() + state.leftover_problems()
        problems += self._deploy_keep_problems(state)
        if state.sha(state.current) != self.top_sha:
            problems.append(f"current is {state.current}, expected the release of {self.top_sha}")
        self.deploy_problems += [f"after a deploy of {self.top_sha}: {p}" for p in problems]
        self.final = state

    def rollback_kill_points(self, points: list[int]) -> None:
        for n in points:
            self.ensure_rollback_targets()
            before = self.state()
            point = self._kill_and_rerun(
                "rollback", n, (ROLLBACK,), self._check_rollback(before.previous_good())
            )
            self.points[ROLLBACK].append(point)

    def _check_rollback(self, target: str | None):
        # A default rollback names no release: it goes one good release back from
        # wherever it starts. If the killed run had already switched, the re-run is a
        # second rollback by definition and must land one more good release back.
        expected = {"target": target}

        def check(point: Point, before: HostState, after: HostState, killed: bool) -> list[str]:
            problems = after.current_problems()
            if self.half_finished is not None and after.current == self.half_finished:
                problems.append(f"rolled back to the half-finished release {self.half_finished}")
            if killed:
                if after.current not in (before.current, target):
                    problems.append(
                        f"current is {after.current}, neither the release before "
                        f"({before.current}) nor the rollback target ({target})"
                    )
                if after.current == target:
                    point.switched_before_kill = True
                    expected["target"] = after.previous_good()
                return problems
            if after.current != expected["target"]:
                switched = f"switched to {target}" if point.switched_before_kill else "no switch"
                problems.append(
                    f"current is {after.current}, expected the previous good release "
                    f"{expected['target']} (before the command: {before.current}; the kill "
                    f"left: {switched})"
                )
            problems += after.leftover_problems()
            return problems

        return check

    # -- both

    def _kill_and_rerun(self, phase: str, n: int, argv: tuple[str, ...], check) -> Point:
        point = Point(phase=phase, host=self.name, n=n, argv=argv)
        log = self.fleet.log_path(self.name, phase, str(n))
        before = self.state()
        started = time.monotonic()
        killed = self.run(argv, kill_after=n, task_log=log)
        point.kill_rc = killed.returncode
        names = [line.split("\t") for line in log.read_text().splitlines()]
        point.last_done = names[n - 1][1] if len(names) >= n else "?"
        point.killed_at = names[n][1] if len(names) > n else "?"
        after_kill = self.state()
        point.after_kill = check(point, before, after_kill, True)
        rerun = self.run(argv)
        point.rerun_rc = rerun.returncode
        point.after_rerun = check(point, before, self.state(), False)
        if point.problems:
            point.output = f"killed run:\n{_tail(killed)}\nre-run:\n{_tail(rerun)}"
        print(
            f"[{self.name}] {phase} killed after task {n} ({point.last_done}): "
            f"{'ok' if not point.problems else 'PROBLEMS'} in {time.monotonic() - started:.1f}s"
        )
        return point

    def guarded(self, work, *args) -> None:
        """Run one phase's work; an error is kept for the tests, the other machines go on."""
        try:
            work(*args)
        except Exception:
            self.errors.append(traceback.format_exc())


def _tail(run: subprocess.CompletedProcess[str]) -> str:
    return (run.stdout[-OUTPUT_TAIL:] + "\n" + run.stderr[-OUTPUT_TAIL:]).strip()


# --------------------------------------------------------------------------- the fleet


class Repo:
    """Commits on per-machine branches of the test repository, without touching its
    work tree or index (each branch gets its own index file: threads never collide)."""

    def __init__(self, path: Path, base: str, scratch: Path) -> None:
        self.path = path
        self.base = base
        self.scratch = scratch
        self.tips: dict[str, str] = {}

    def _git(self, branch: str, *args: str, stdin: str | None = None) -> str:
        env = {
            **os.environ,
            "GIT_INDEX_FILE": str(self.scratch / f"index-{branch}"),
            "GIT_AUTHOR_NAME": "flipback tests",
            "GIT_AUTHOR_EMAIL": "tests@flipback.invalid",
            "GIT_COMMITTER_NAME": "flipback tests",
            "GIT_COMMITTER_EMAIL": "tests@flipback.invalid",
        }
        return subprocess.run(
            ["git", "-C", str(self.path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()

    def commit(self, branch: str, content: str) -> str:
        parent = self.tips.get(branch, self.base)
        self._git(branch, "read-tree", parent)
        blob = self._git(branch, "hash-object", "-w", "--stdin", stdin=content)
        path = f"services/{lib.SERVICE}/interrupt.txt"
        self._git(branch, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
        tree = self._git(branch, "write-tree")
        sha = self._git(branch, "commit-tree", tree, "-p", parent, "-m", content.strip())
        # A branch, so that the build's mirror of the repository fetches the commit.
        self._git(branch, "update-ref", f"refs/heads/{branch}", sha)
        self.tips[branch] = sha
        return sha


class Fleet:
    def __init__(self, scratch: Path) -> None:
        config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
        instances = yaml.safe_load(config.read_text())
        self.addresses = [i["address"] for i in instances]
        self.scratch = scratch
        self.repo = Repo(lib.REPO, lib.git_sha("v1"), scratch)
        self.callbacks = lib.callbacks_with_kill()
        self.keep = _keep_releases()
        self.machines = [Machine(i["instance"], self) for i in instances]
        self.task_names: dict[str, list[str]] = {}
        self.phase_seconds: dict[str, float] = {}
        self.half_finished_after: int | None = None
        self.load: dict = {}
        self.seconds = 0.0

    def log_path(self, host: str, phase: str, label: str) -> Path:
        return self.scratch / f"{host}-{phase}-{label}.log"

    def in_parallel(self, name: str, work) -> None:
        """`work(machine, index)` on every machine at once; returns when all are done."""
        started = time.monotonic()
        with ThreadPoolExecutor(len(self.machines)) as pool:
            for machine, index in zip(self.machines, range(len(self.machines)), strict=True):
                pool.submit(machine.guarded, work, machine, index)
        self.phase_seconds[name] = round(time.monotonic() - started, 1)

    def share(self, count: int, index: int) -> list[int]:
        """Kill points 1..count dealt round-robin, so every machine gets early and late ones."""
        return list(range(1 + index, count + 1, len(self.machines)))


def _keep_releases() -> int:
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    services = yaml.safe_load((inventory / "group_vars" / "all").read_text())["flipback_services"]
    return next(s for s in services if s["name"] == lib.SERVICE)["keep_releases"]


@pytest.fixture(scope="session")
def fleet():
    with tempfile.TemporaryDirectory(prefix="interrupt-") as scratch:
        fleet = Fleet(Path(scratch))
        started = time.monotonic()
        urls = [f"http://{address}:{lib.PORT}/health" for address in fleet.addresses]
        generator = load.LoadGenerator(urls, CLIENTS, "new", rate=RATE, timeout=5, duration=1800)
        generator.start()
        try:
            _story(fleet)
        finally:
            generator.stop()
            generator.join(timeout=30)
        fleet.load = generator.summary()
        fleet.seconds = round(time.monotonic() - started, 1)
        yield fleet


def _story(fleet: Fleet) -> None:
    first = fleet.machines[0]

    # Deploys: learn T from a full deploy of a new release, then every kill point.
    sha = first.new_commit("full deploy")
    fleet.task_names[DEPLOY] = first.learn_task_count((DEPLOY, "-e", f"ref={sha}"))
    first.top_sha = sha
    count = len(fleet.task_names[DEPLOY])
    fleet.in_parallel("deploy kills", lambda m, i: m.deploy_kill_points(fleet.share(count, i)))
    if any(m.errors for m in fleet.machines):
        return

    # Rollbacks: learn T from a full rollback, then every kill point, with a release
    # that a killed deploy left staged but never live on every machine.
    first.guarded(first.ensure_rollback_targets)
    fleet.task_names[ROLLBACK] = first.learn_task_count((ROLLBACK,))
    half = [p.n for m in fleet.machines for p in m.points[DEPLOY] if p.left_half_finished]
    fleet.half_finished_after = max(half, default=None)
    count = len(fleet.task_names[ROLLBACK])

    def rollbacks(machine: Machine, index: int) -> None:
        if fleet.half_finished_after is not None:
            machine.make_half_finished(fleet.half_finished_after)
        machine.rollback_kill_points(fleet.share(count, index))
        # The next deploy cleans a half-finished release away: unless a roll-forward
        # between the rollbacks already did (and checked it), deploy once more.
        machine.final = machine.state()
        if machine.half_finished in machine.final.releases:
            machine.roll_forward()

    fleet.in_parallel("rollback kills", rollbacks)


# --------------------------------------------------------------------------- tests


def test_no_machine_hit_an_error(fleet):
    errors = [f"{m.name}:\n{e}" for m in fleet.machines for e in m.errors]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("playbook", [DEPLOY, ROLLBACK])
def test_every_kill_point_was_tested(fleet, playbook):
    count = len(fleet.task_names.get(playbook, []))
    assert count >= 2, f"{playbook}: a full run had {count} tasks"
    tested = sorted(p.n for m in fleet.machines for p in m.points[playbook])
    assert tested == list(range(1, count + 1))


@pytest.mark.parametrize("playbook", [DEPLOY, ROLLBACK])
def test_every_kill_left_a_healthy_current_and_every_rerun_recovered(fleet, playbook):
    broken = [p.reproduction() for m in fleet.machines for p in m.points[playbook] if p.problems]
    assert not broken, "\n\n".join(broken)


def test_a_deploy_killed_after_staging_was_tested(fleet):
    # Without such a kill point the half-finished checks below would prove nothing.
    assert fleet.half_finished_after is not None, fleet.task_names[DEPLOY]


def test_half_finished_release_was_marked_never_live_and_is_gone(fleet):
    for machine in fleet.machines:
        half = machine.half_finished
        assert half is not None, machine.name
        # Recorded as staged (not good) when the deploy was killed ...
        assert machine.half_finished_history == ["staged"], (machine.name, half)
        # ... never became current (the rollback checks say so at every point), never
        # went live, and the deploy after the rollbacks removed it.
        assert machine.final is not None, machine.name
        assert not machine.final.ever_active(half), (machine.name, half)
        assert half not in machine.final.releases, (machine.name, half)


def test_deploys_between_rollbacks_left_clean_hosts(fleet):
    problems = [f"{m.name}: {p}" for m in fleet.machines for p in m.deploy_problems]
    assert not problems, "\n".join(problems)


def test_zero_failed_requests(fleet):
    summary = fleet.load
    tested = {
        playbook: sum(len(m.points[playbook]) for m in fleet.machines)
        for playbook in (DEPLOY, ROLLBACK)
    }
    twice = sorted(
        p.n for m in fleet.machines for p in m.points[ROLLBACK] if p.switched_before_kill
    )
    # Printed (the scenario runs pytest with -s) so the CI log carries the numbers.
    print(
        f"\ninterrupt: kill points tested: deploy {tested[DEPLOY]} "
        f"(of {len(fleet.task_names.get(DEPLOY, []))} tasks), rollback {tested[ROLLBACK]} "
        f"(of {len(fleet.task_names.get(ROLLBACK, []))} tasks; killed after the switch, "
        f"so the re-run rolled back again: {twice}); half-finished deploy: killed "
        f"after task {fleet.half_finished_after}; requests {summary['total']}, ok "
        f"{summary['ok']}, failed {summary['failed']} {summary['failed_by_kind']}, client "
        f"errors {summary['client_errors']}, latency ms {summary['latency_ms']}; phases (s) "
        f"{fleet.phase_seconds}, in all {fleet.seconds} s"
    )
    assert summary["total"] > 1000
    assert summary["failed"] == 0, summary["failed_by_kind"]
    assert summary["client_errors"] == 0, summary["client_errors_by_kind"]
