"""Helpers shared by the scenarios' testinfra tests (they run on the controller)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

SERVICE = "hello"
ROOT = f"/srv/{SERVICE}"
PORT = 8000
REPO = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "hello-repo"
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[2]))

# What the unit tests share (tests/unit/fakes.py): its file loader and git server too.
if str(PROJECT / "tests" / "unit") not in sys.path:
    sys.path.insert(0, str(PROJECT / "tests" / "unit"))

from fakes import load_file  # noqa: E402 (the path above first)


def bench_load():
    """bench/load.py, the load generator (bench/ is no package), loaded once from its
    file as `flipback_load`."""
    if "flipback_load" not in sys.modules:
        load_file("flipback_load", PROJECT / "bench" / "load.py", register=True)
    return sys.modules["flipback_load"]


def git_sha(ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def current_id(host) -> str:
    link = host.file(f"{ROOT}/current")
    assert link.is_symlink, f"{ROOT}/current is not a symlink"
    return os.path.basename(link.linked_to)


def manifest(host, release: str) -> dict:
    return json.loads(host.file(f"{ROOT}/releases/{release}/manifest.json").content_string)


def history(host) -> list[dict]:
    text = host.file(f"{ROOT}/history.jsonl").content_string
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def public_health(host) -> dict:
    out = host.run(f"curl -sS --max-time 5 http://127.0.0.1:{PORT}/health")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def stops_within(host, unit: str, seconds: int = 30) -> bool:
    """Whether `unit` is (or within `seconds` becomes) inactive: a retired instance
    runs on through its drain, then through uvicorn's graceful shutdown."""
    script = (
        f"for i in $(seq {seconds * 10}); do "
        f"systemctl is-active --quiet {unit} || exit 0; sleep 0.1; done; exit 1"
    )
    return host.run(script).rc == 0


def journal(host, unit: str) -> str:
    return host.run(f"journalctl --no-pager -n 40 -u {unit}").stdout


def _playbook_argv(host, name: str, extra: tuple[str, ...]) -> list[str]:
    return [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "--limit",
        host.backend.get_hostname(),
        str(PROJECT / "playbooks" / name),
        *extra,
    ]


# JSON results: no colour codes and no line folding inside messages.
_PLAYBOOK_ENV = {
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
}


def run_playbook(host, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run one of flipback's playbooks as a user would, limited to `host`.

    testinfra runs every test of a module for one host before the next host, so a
    test that changes state must change only its own host.
    """
    return subprocess.run(
        _playbook_argv(host, name, extra),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_PLAYBOOK_ENV},
        timeout=600,
    )


def run_fleet_playbook(
    name: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one of flipback's playbooks on every machine of the scenario at once. `env`
    adds to the environment (e.g. to arm the flipback_kill callback)."""
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(PROJECT / "playbooks" / name),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_PLAYBOOK_ENV, **(env or {})},
        timeout=900,
    )


def start_fleet_playbook(
    name: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Like run_fleet_playbook, but in the background; `.communicate()` collects it."""
    return subprocess.Popen(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(PROJECT / "playbooks" / name),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_PLAYBOOK_ENV, **(env or {})},
    )


def start_playbook(
    host, name: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Like run_playbook, but in the background; `.communicate()` collects it. `env`
    adds to the environment (e.g. to arm the flipback_kill callback)."""
    return subprocess.Popen(
        _playbook_argv(host, name, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_PLAYBOOK_ENV, **(env or {})},
    )


def callbacks_with_kill() -> str:
    """The callbacks this configuration enables, plus flipback_kill (fault injection)."""
    # Imported here: it reads ANSIBLE_CONFIG (molecule's), as the runs will.
    from ansible import constants as C

    enabled = list(C.config.get_config_value("CALLBACKS_ENABLED") or [])
    return ",".join([*enabled, "flipback_kill"])


def process_state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped, Z: exited, unreaped)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def output(run: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr of a run with all whitespace runs (line folding) made one space."""
    return " ".join((run.stdout + "\n" + run.stderr).split())


def snapshot(host) -> str:
    """Everything a failed or refused run must leave untouched, byte for byte.

    Metadata (mode, owner, size, mtime, link target) of every file under /srv, the
    units, the nginx sites and the env files, plus the content hash of each file
    outside the virtualenvs (which only a new release ever writes).
    """
    paths = "/srv /etc/systemd/system /etc/nginx/conf.d /etc/flipback"
    return host.run(
        f"find {paths} -xdev -printf '%p %l %m %u %g %s %T@\\n' 2>/dev/null | sort; "
        f"find {paths} -xdev -type f -not -path '*/venv/*' -print0 2>/dev/null "
        "| sort -z | xargs -0 -r sha256sum"
    ).stdout


def scenario_health_urls() -> list[str]:
    """The public health URL of every machine of the scenario."""
    config = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "instance_config.yml"
    return [f"http://{i['address']}:{PORT}/health" for i in yaml.safe_load(config.read_text())]


def story_under_load(plan, *, clients: int, rate: int, pause: float) -> dict:
    """Run each step of `plan` (name, playbook and its arguments, whether it must pass)
    on the whole fleet, in turn, while clients of both modes (a new connection per
    request, keep-alive) hit every machine's public port. Each step's window is kept on
    the load's clock, so a test can tell which requests it saw."""
    load = bench_load()
    urls = scenario_health_urls()
    generators = {
        mode: load.LoadGenerator(urls, clients, mode, rate=rate, timeout=5, duration=900)
        for mode in ("new", "keepalive")
    }
    for generator in generators.values():
        generator.start()
    clock = generators["new"]
    steps = {}
    try:
        time.sleep(2)
        for name, argv, should_pass in plan:
            started = clock.now()
            run = run_fleet_playbook(*argv)
            steps[name] = {
                "name": name,
                "start": started,
                "end": clock.now(),
                "run": run,
                "should_pass": should_pass,
            }
            time.sleep(pause)
    finally:
        for generator in generators.values():
            generator.stop()
        for generator in generators.values():
            generator.join(timeout=30)
    return {
        "urls": urls,
        "steps": steps,
        "records": {mode: g.records for mode, g in generators.items()},
        "summary": {mode: g.summary() for mode, g in generators.items()},
    }
