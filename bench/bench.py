"""The benchmark of issue #6: how long a deploy and a rollback take, and where the time goes.

`bench/run` (which runs `make setup`, then this file with the repository's .venv) brings
up its own sandbox fleet ("bench", 10.213.40.0/24, never the demo's or molecule's),
deploys hello from a throwaway repository once to start from a live release, then,
under the load generator (bench/load.py, a new connection per request, rate-capped),
repeats R rounds of:

    floor            bench/floor.yml: one ping task, the cost of any playbook at all
    deploy new       playbooks/deploy.yml of a new commit of hello
    deploy no-change the same command again (must report changed=0)
    rollback         playbooks/rollback.yml back to the previous good release

Every command is timed with time.monotonic() around the subprocess, its output goes
to a log file, and its window on the load generator's clock is kept, so the requests
sent during it can be summarised. The per-task timings that the flipback_timing
callback prints at the end of each run are parsed from the logs. It prints a table,
writes all of it as JSON and draws a PNG timeline (bench/plot.py).

With `--machines 1,4,16` it does the whole thing per fleet size, growing or shrinking
the same fleet, and adds a table of medians per size against the smallest.

Everything here is standard library but the picture (bench/plot.py draws it with
matplotlib, a dev dependency); the pure parts (statistics, window slicing,
parsing the Ansible output, the tables) are unit-tested in tests/unit/test_bench_*.py.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import load
import plot
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
WORK_DIR = Path("/var/tmp/flipback-bench")
FLEET = "bench"
# Nothing else on the controller uses this range (the demo has .1, molecule .21-.25).
SUBNET = "10.213.40.0/24"
SERVICE = "hello"
PORT = 8000
BRANCH = "bench"
MAX_MACHINES = 32  # what the sandbox role allows
SCALING_MACHINES = 16  # issue #6's scaling target is measured at this size

# The measured operations, in the order a round runs them.
OPERATIONS = (
    "floor",
    "deploy_new",
    "deploy_nochange",
    "rollback",
    "deploy_deps",
    "broken_exit",
    "broken_unhealthy",
)
LABELS = {
    "floor": "floor (ping)",
    "deploy_new": "deploy new",
    "deploy_nochange": "deploy no-change",
    "rollback": "rollback",
    "deploy_deps": "deploy deps bumped",
    "broken_exit": "broken: exits",
    "broken_unhealthy": "broken: 500s",
}
# Operations that must fail (a broken release): their time is the time to the verdict.
MUST_FAIL = ("broken_exit", "broken_unhealthy")
# Issue #15: the median of each operation over the median of the floor, same run.
TARGETS = {
    "deploy_new": 3.5,
    "deploy_nochange": 1.5,
    "rollback": 1.3,
    "deploy_deps": 5.0,
}
# A small dependency of hello's stack (anyio needs idna), pinned to another version in
# each deps-bumped deploy: a set of wheels no host has a venv for yet.
DEPS_BUMPS = ("3.4", "3.5", "3.6", "3.7", "3.8", "3.9", "3.10")
# Issue #6: a deploy to 16 machines at most twice a deploy to 1.
SCALING_TARGET = 2.0

DEFAULT_CLIENTS = 4
# A few clients, well under the 200/s that TIME_WAIT allows in the new-connection mode,
# so that the load does not take the controller's two cores away from Ansible.
DEFAULT_RATE = 50.0
# Seconds of plain traffic before the first and after the last command, for the timeline.
QUIET_SECONDS = 2.0
# Cores busy with work that is not the bench's, above which its wall times are suspect.
BUSY_OTHERS = 0.25
# Lines of the per-task timing kept per operation in the JSON and the printout.
TOP_TASKS = 8

# A release id as the tasks name it ("Switch to 20261102T100000-987e21b84d").
RELEASE_ID = re.compile(r"\b\d{8}T\d{6}-[0-9a-f]{10}\b")
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")
TIMING_HEAD = re.compile(r"^TIMING: ([\d.]+)s in all, (\d+) tasks; slowest:$")
TIMING_LINE = re.compile(r"^\s*([\d.]+)s  (.*)$")


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and where its log is."""


# --- pure parts ------------------------------------------------------------------------


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """Nearest-rank percentile of values in any order; None for no values."""
    return load.nearest_rank(sorted(values), fraction)


def inventory_addresses(text: str) -> list[str]:
    """The ansible_host of every host in an inventory file (YAML, as the sandbox role
    writes it), in file order; [] for an empty or missing file."""
    found: list[str] = []

    def walk(group: Any) -> None:
        if not isinstance(group, dict):
            return
        for host in (group.get("hosts") or {}).values():
            if isinstance(host, dict) and host.get("ansible_host"):
                found.append(str(host["ansible_host"]))
        for child in (group.get("children") or {}).values():
            walk(child)

    for group in (yaml.safe_load(text) or {}).values():
        walk(group)
    return found


def spread(values: Sequence[float]) -> dict[str, Any]:
    """min / median / max (seconds, rounded to ms) of a list of wall times."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 2)


def in_windows(
    records: Iterable[load.Record], windows: Iterable[tuple[float, float]]
) -> list[load.Record]:
    """The requests that started inside any window [start, end) of the load's clock."""
    spans = sorted(windows)
    return [r for r in records if any(start <= r.t < end for start, end in spans)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def window_summary(records: Sequence[load.Record]) -> dict[str, Any]:
    """Counts and latency of a set of requests; client errors apart, as load.py does."""
    failed = Counter(r.kind for r in records if not r.ok and not r.client_error)
    client = Counter(r.kind for r in records if r.client_error)
    latencies = [r.latency for r in records if r.ok]
    return {
        "requests": len(records),
        "ok": len(latencies),
        "failed": sum(failed.values()),
        "failed_by_kind": dict(failed.most_common()),
        "client_errors": sum(client.values()),
        "latency_ms": {
            "p50": _ms(percentile(latencies, 0.50)),
            "p99": _ms(percentile(latencies, 0.99)),
            "max": _ms(max(latencies, default=None)),
        },
    }


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: per host, ok/changed/failed/... counts."""
    recap: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    except ValueError:
        return recap
    for line in lines[start + 1 :]:
        match = RECAP_LINE.match(line.rstrip())
        if not match:
            if recap:
                break
            continue
        counts = dict(pair.split("=") for pair in match.group(2).split())
        recap[match.group(1)] = {key: int(value) for key, value in counts.items()}
    return recap


def changed_total(recap: dict[str, dict[str, int]]) -> int | None:
    """changed= summed over the hosts; None when there was no recap."""
    if not recap:
        return None
    return sum(counts.get("changed", 0) for counts in recap.values())


def parse_timing(text: str) -> dict[str, Any] | None:
    """The flipback_timing callback's block: its total and the tasks it lists, slowest first.

    The block reads "TIMING: 21.11s in all, 35 tasks; slowest:" and then one
    "   6.36s  <task name>" line per task; None when the run printed none.
    """
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if TIMING_HEAD.match(line.strip())]
    if not heads:
        return None
    head = TIMING_HEAD.match(lines[heads[-1]].strip())
    assert head is not None
    tasks: list[list[Any]] = []
    for line in lines[heads[-1] + 1 :]:
        match = TIMING_LINE.match(line)
        if not match:
            break
        tasks.append([match.group(2).strip(), float(match.group(1))])
    return {"total": float(head.group(1)), "task_count": int(head.group(2)), "tasks": tasks}


def task_key(name: str) -> str:
    """A task name with release ids replaced, so that the same task adds up across rounds."""
    return RELEASE_ID.sub("<release>", name)


def top_tasks(timings: Sequence[dict[str, Any] | None], top: int = TOP_TASKS) -> list[dict]:
    """The tasks that took longest in a set of runs of one operation, by median per run.

    A task missing from a run's list counts as 0 s in that run (the callback lists
    every task when FLIPBACK_TIMING_TOP is large enough, as bench/run sets it).
    """
    runs = [timing for timing in timings if timing]
    per_task: dict[str, list[float]] = {}
    for i, timing in enumerate(runs):
        for name, seconds in timing["tasks"]:
            samples = per_task.setdefault(task_key(name), [0.0] * len(runs))
            samples[i] += seconds
    ranked = sorted(
        per_task.items(), key=lambda item: (statistics.median(item[1]), max(item[1])), reverse=True
    )
    return [
        {
            "task": name,
            "median_s": round(statistics.median(samples), 2),
            "max_s": round(max(samples), 2),
        }
        for name, samples in ranked[:top]
    ]


def parse_machines(text: str) -> list[int]:
    """--machines: a comma-separated list of fleet sizes, each 1-32, no repeats."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 1,4,16") from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one fleet size")
    bad = [size for size in sizes if not 1 <= size <= MAX_MACHINES]
    if bad:
        raise argparse.ArgumentTypeError(f"fleet sizes must be 1-{MAX_MACHINES}, got {bad}")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"fleet size repeated in {text!r}")
    return sizes


def parse_cores(text: str) -> list[int]:
    """--project-cores: a comma-separated list of core counts, each 1-1024."""
    try:
        cores = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 2,8") from None
    if not cores or not all(1 <= c <= 1024 for c in cores):
        raise argparse.ArgumentTypeError(f"core counts must be 1-1024, got {text!r}")
    return cores


def _cost_spread(commands: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The spread of one cpu_cost figure over the commands that have it."""
    return spread(
        [c["cpu_cost"][key] for c in commands if (c.get("cpu_cost") or {}).get(key) is not None]
    )


def operation_stats(
    commands: Sequence[dict[str, Any]], records: Sequence[load.Record]
) -> dict[str, dict[str, Any]]:
    """Per operation: wall-time spread, ratio of medians to the floor's, the requests sent
    during its windows, the slowest tasks; for no-change deploys how many said changed=0."""
    stats: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        done = [c for c in commands if c["op"] == op]
        windows = [(c["window"]["start"], c["window"]["end"]) for c in done if c.get("window")]
        stats[op] = {
            "seconds": [c["seconds"] for c in done],
            **spread([c["seconds"] for c in done]),
            "load": window_summary(in_windows(records, windows)),
            "top_tasks": top_tasks([c.get("timing") for c in done]),
            "changed": [c.get("changed") for c in done],
            "other_cores": spread([c["cpu"]["other_cores"] for c in done if c.get("cpu")]),
            "controller_cpu_per_host": _cost_spread(done, "controller_s_per_host"),
            "machine_cpu_per_host": _cost_spread(done, "machine_s_per_host"),
        }
    floor = stats["floor"]["median"]
    for op, entry in stats.items():
        entry["x_floor"] = ratio(entry["median"], floor)
        target = TARGETS.get(op)
        entry["target_x_floor"] = target
        entry["target_met"] = (
            None if target is None or entry["x_floor"] is None else entry["x_floor"] <= target
        )
    nochange = stats["deploy_nochange"]
    nochange["changed_zero"] = sum(1 for changed in nochange["changed"] if changed == 0)
    return stats


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _lat(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width columns, a dashed line under the header (as status.yml prints)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))

    dashes = ["-" * width for width in widths]
    return "\n".join(line(cells).rstrip() for cells in [header, dashes, *rows])


def format_operations(stats: dict[str, dict[str, Any]]) -> str:
    """The main table: one line per operation."""
    rows = []
    for op in OPERATIONS:
        entry = stats[op]
        target = entry["target_x_floor"]
        met = entry["target_met"]
        verdict = (
            "-"
            if target is None
            else f"<= {target:g}: " + ("?" if met is None else "yes" if met else "NO")
        )
        window = entry["load"]
        rows.append(
            [
                LABELS[op],
                str(entry["n"]),
                _seconds(entry["min"]),
                _seconds(entry["median"]),
                _seconds(entry["max"]),
                "-" if entry["x_floor"] is None else f"{entry['x_floor']:.1f}",
                verdict,
                str(window["requests"]),
                str(window["failed"]),
                _lat(window["latency_ms"]["p99"]),
                _lat(window["latency_ms"]["max"]),
                "-"
                if entry["other_cores"]["max"] is None
                else f"{entry['other_cores']['max']:.2f}",
            ]
        )
    header = [
        "OPERATION",
        "RUNS",
        "MIN",
        "MEDIAN",
        "MAX",
        "x FLOOR",
        "TARGET",
        "REQUESTS",
        "FAILED",
        "P99",
        "MAX LAT",
        "OTHERS' CPU",
    ]
    return render_table(header, rows)


def busy_warning(stats: dict[str, dict[str, Any]], cores: int) -> str:
    """A warning when other work on the controller took CPU during the measured commands."""
    worst = max((stats[op]["other_cores"]["max"] or 0.0 for op in OPERATIONS), default=0.0)
    if worst <= BUSY_OTHERS:
        return ""
    return (
        f"WARNING: other work on the controller used up to {worst:.2f} of its {cores} cores"
        " during the measured commands (OTHERS' CPU, the max per operation): the wall times"
        " above are inflated; rerun on an idle machine"
    )


def format_top_tasks(stats: dict[str, dict[str, Any]], top: int = 5) -> str:
    """Where the time goes: the slowest tasks of each playbook operation."""
    lines = []
    for op in OPERATIONS[1:]:
        tasks = stats[op]["top_tasks"][:top]
        if not tasks:
            continue
        lines.append(f"  {LABELS[op]} (median per run, max):")
        lines.extend(
            f"    {task['median_s']:6.2f} s  {task['max_s']:6.2f} s  {task['task']}"
            for task in tasks
        )
    return "\n".join(lines)


def format_load(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    failed = ", ".join(f"{kind} {n}" for kind, n in summary["failed_by_kind"].items())
    return (
        f"load: {summary['total']} requests ({summary['requests_per_s']}/s over "
        f"{summary['elapsed']:.0f} s, {summary['clients']} clients, new connection each), "
        f"{summary['ok']} ok, {summary['failed']} failed{f' ({failed})' if failed else ''}, "
        f"{summary['client_errors']} client errors; latency p50 {_lat(latency['p50'])}, "
        f"p99 {_lat(latency['p99'])}, max {_lat(latency['max'])}"
    )


# The operations the projection to large fleets is made for.
PROJECTED = ("deploy_new", "rollback")
PROJECTED_SIZES = (100, 1000)


def projected_wall(
    floor: float, wall: float, hosts: int, cpu_per_host: float, cores: int, forks: int
) -> float:
    """The model of bench/README.md ("What a deploy costs per host"): a run is the
    floor (start, inventory, plays) plus its per-host path L = wall - floor, measured on
    a fleet no larger than `forks`. Ansible runs each task on `forks` hosts at a time,
    so the path is walked once per wave of `forks` hosts, and a wave cannot be shorter
    than the controller's CPU work for its hosts spread over its cores."""
    path = max(0.0, wall - floor)
    waves = math.ceil(hosts / forks)
    per_wave_cpu = min(hosts, forks) * cpu_per_host / cores
    return floor + waves * max(path, per_wave_cpu)


def marginal_cpu(stats: dict[str, dict[str, Any]], op: str, key: str) -> float | None:
    """An operation's CPU seconds per host beyond the floor's: what its hosts add to
    what any playbook costs (the interpreter's start, the inventory, one ping), which
    the model counts once, in the floor, not once per host."""
    value = stats[op][key]["median"]
    if value is None:
        return None
    floor = (stats["floor"].get(key) or {}).get("median") or 0.0
    return round(max(0.0, value - floor), 3)


def projection(
    stats: dict[str, dict[str, Any]], cores: Sequence[int], forks: int
) -> list[dict[str, Any]]:
    """Per projected operation and controller size, the modelled wall time on real
    fleets (whose hosts have CPUs of their own, so only the controller's CPU counts)."""
    floor = stats["floor"]["median"]
    rows = []
    for op in PROJECTED:
        if op not in stats:
            continue
        wall = stats[op]["median"]
        cpu = marginal_cpu(stats, op, "controller_cpu_per_host")
        if floor is None or wall is None or cpu is None:
            continue
        for c in cores:
            rows.append(
                {
                    "op": op,
                    "cores": c,
                    "forks": forks,
                    "controller_cpu_per_host_beyond_floor_s": cpu,
                    "path_s": round(max(0.0, wall - floor), 3),
                    "projected_s": {
                        str(n): round(projected_wall(floor, wall, n, cpu, c, forks), 1)
                        for n in PROJECTED_SIZES
                    },
                }
            )
    return rows


def format_cpu(stats: dict[str, dict[str, Any]], rows: Sequence[dict[str, Any]]) -> str:
    """CPU seconds per host of each operation, then the projection to large fleets."""
    table = []
    for op in OPERATIONS:
        controller = stats[op]["controller_cpu_per_host"]
        machine = stats[op]["machine_cpu_per_host"]
        table.append(
            [
                LABELS[op],
                _cpu(controller["median"]),
                _cpu(controller["max"]),
                _cpu(machine["median"]),
                _cpu(machine["max"]),
            ]
        )
    text = render_table(
        [
            "OPERATION",
            "CONTROLLER CPU/HOST",
            "(MAX)",
            "MACHINE CPU/HOST",
            "(MAX)",
        ],
        table,
    )
    if rows:
        text += "\nprojected wall time on a real fleet (model: bench/README.md):\n" + render_table(
            ["OPERATION", "CORES", "FORKS", *(f"{n} HOSTS" for n in PROJECTED_SIZES)],
            [
                [
                    LABELS[row["op"]],
                    str(row["cores"]),
                    str(row["forks"]),
                    *(_seconds(row["projected_s"][str(n)]) for n in PROJECTED_SIZES),
                ]
                for row in rows
            ],
        )
    return text


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def model_check(runs: Sequence[dict[str, Any]], cores: int, forks: int) -> list[dict[str, Any]]:
    """The model against this controller's own measurements: from the smallest fleet's
    floor, path and CPU per host, the wall time of every larger one. Here the machines
    share the controller's cores, so their CPU counts too (it does not on real fleets)."""
    ordered = sorted(
        (run for run in runs if run.get("operations")), key=lambda run: run["machines"]
    )
    if len(ordered) < 2:
        return []
    base = ordered[0]["operations"]
    rows = []
    for op in PROJECTED:
        floor, wall = base["floor"]["median"], base[op]["median"]
        controller = marginal_cpu(base, op, "controller_cpu_per_host")
        machine = marginal_cpu(base, op, "machine_cpu_per_host") or 0.0
        if None in (floor, wall, controller):
            continue
        for run in ordered[1:]:
            k = run["machines"]
            predicted = projected_wall(floor, wall, k, controller + machine, cores, forks)
            measured = run["operations"][op]["median"]
            rows.append(
                {
                    "op": op,
                    "machines": k,
                    "base_machines": ordered[0]["machines"],
                    "predicted_s": round(predicted, 2),
                    "measured_s": measured,
                    "error": None if not measured else round(predicted / measured - 1, 3),
                }
            )
    return rows


def format_model_check(rows: Sequence[dict[str, Any]]) -> str:
    return render_table(
        ["OPERATION", "MACHINES", "PREDICTED", "MEASURED", "ERROR"],
        [
            [
                LABELS[row["op"]],
                f"{row['machines']} (from {row['base_machines']})",
                _seconds(row["predicted_s"]),
                _seconds(row["measured_s"]),
                "-" if row["error"] is None else f"{row['error']:+.0%}",
            ]
            for row in rows
        ],
    )


def ansible_forks(config: Path = ROOT / "ansible.cfg") -> int:
    """forks of the repository's ansible.cfg (Ansible's own default, 5, when unset)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    return parser.getint("defaults", "forks", fallback=5)


def scaling_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fleet size, each operation's median and its ratio to the smallest size's."""
    ordered = sorted(runs, key=lambda run: run["machines"])
    if not ordered:
        return []
    base = ordered[0]
    rows = []
    for run in ordered:
        row: dict[str, Any] = {"machines": run["machines"], "base_machines": base["machines"]}
        for op in OPERATIONS:
            median = run["operations"][op]["median"]
            row[op] = {
                "median": median,
                "x_base": ratio(median, base["operations"][op]["median"]),
            }
        rows.append(row)
    return rows


def format_scaling(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    base = rows[0]["base_machines"]
    header = ["MACHINES"]
    for op in OPERATIONS:
        header += [LABELS[op].upper(), f"x K={base}"]
    table = []
    for row in rows:
        cells = [str(row["machines"])]
        for op in OPERATIONS:
            x_base = row[op]["x_base"]
            cells += [_seconds(row[op]["median"]), "-" if x_base is None else f"{x_base:.2f}"]
        table.append(cells)
    text = render_table(header, table)
    by_size = {row["machines"]: row for row in rows}
    if 1 in by_size and SCALING_MACHINES in by_size:
        x = by_size[SCALING_MACHINES]["deploy_new"]["x_base"]
        verdict = "?" if x is None else "yes" if x <= SCALING_TARGET else "NO"
        text += (
            f"\ntarget: deploy new to {SCALING_MACHINES} machines <= {SCALING_TARGET:g} x to 1: "
            f"{verdict} ({'-' if x is None else f'{x:.2f}'})"
        )
    return text


# --- the machine and the run -------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _output(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    except OSError:
        return ""
    return proc.stdout.strip()


def machine_facts() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        os_name = None
    ansible = _output([str(BIN / "ansible-playbook"), "--version"]).splitlines()
    dirty = _output(["git", "status", "--porcelain"]).splitlines()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model.group(1).strip() if model else None,
        "mem_total_mib": int(mem.group(1)) // 1024 if mem else None,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ansible": ansible[0] if ansible else None,
        "git_commit": _output(["git", "rev-parse", "HEAD"]) or None,
        # Others may be editing the playbooks while a bench runs: say what was not committed.
        "git_uncommitted": dirty,
    }


def busy_seconds(proc_stat: str, ticks_per_second: int) -> float:
    """CPU seconds spent busy (not idle, not waiting for I/O) by all CPUs, from /proc/stat."""
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            fields = [int(value) for value in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            busy = sum(fields[:3]) + sum(fields[5:8])
            return busy / ticks_per_second
    raise ValueError("no cpu line in /proc/stat")


def cgroup_usage_seconds(cpu_stat: str) -> float:
    """usage_usec of a cgroup v2 cpu.stat, in seconds."""
    match = re.search(r"^usage_usec (\d+)$", cpu_stat, re.MULTILINE)
    return int(match.group(1)) / 1e6 if match else 0.0


def other_cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """How many cores were busy during an interval, and how many of those with work that
    was not the bench's: not its own process and children (Ansible, ssh, git, the load
    generator) and not its fleet's machines. Others' work inflates every wall time."""
    wall = after["wall"] - before["wall"]
    if wall <= 0:
        return None
    delta = {key: after[key] - before[key] for key in ("busy", "ours", "fleet")}
    if delta["fleet"] < 0:  # the fleet's cgroup went away (teardown): its share is unknown
        return None
    return {
        "busy_cores": round(delta["busy"] / wall, 2),
        "bench_cores": round((delta["ours"] + delta["fleet"]) / wall, 2),
        "other_cores": round(max(0.0, delta["busy"] - delta["ours"] - delta["fleet"]) / wall, 2),
    }


def proc_cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """utime + stime of one process, from its /proc/<pid>/stat line (the fields after the
    command name's closing parenthesis, which may itself hold spaces or parentheses)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def is_ssh_master(cmdline: bytes) -> bool:
    """An OpenSSH ControlPersist master names itself "ssh: <control path> [mux]"."""
    return cmdline.startswith(b"ssh: ") and b"[mux]" in cmdline


def ssh_master_seconds(proc: Path = Path("/proc")) -> dict[int, float]:
    """CPU seconds of every ssh ControlPersist master on the controller, by pid. They
    carry every module call's bytes, but are daemons (not waited-for children), so
    RUSAGE_CHILDREN misses them."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if is_ssh_master((entry / "cmdline").read_bytes()):
                found[int(entry.name)] = proc_cpu_seconds((entry / "stat").read_text(), ticks)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def machine_seconds(fleet_cgroup: Path | None) -> dict[str, float]:
    """CPU seconds of each machine of the fleet, from its own cgroup (one per machine)."""
    if fleet_cgroup is None or not fleet_cgroup.is_dir():
        return {}
    usage = {}
    for child in sorted(fleet_cgroup.iterdir()):
        stat = child / "cpu.stat"
        if stat.is_file():
            usage[child.name] = cgroup_usage_seconds(_read(str(stat)))
    return usage


def cpu_snapshot(fleet_cgroup: Path | None) -> dict[str, Any]:
    """The counters other_cores() and cpu_costs() compare."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    fleet = _read(str(fleet_cgroup / "cpu.stat")) if fleet_cgroup else ""
    return {
        "wall": time.monotonic(),
        "busy": busy_seconds(_read("/proc/stat"), os.sysconf("SC_CLK_TCK")),
        # Our process (the load generator's threads) and every child waited for.
        "ours": children.ru_utime + children.ru_stime + own.ru_utime + own.ru_stime,
        # The command's process tree alone: ansible-playbook, its forks and ssh clients.
        "children": children.ru_utime + children.ru_stime,
        "ssh_masters": ssh_master_seconds(),
        "fleet": cgroup_usage_seconds(fleet),
        "machines": machine_seconds(fleet_cgroup),
    }


def cpu_costs(before: dict[str, Any], after: dict[str, Any], hosts: int) -> dict[str, Any]:
    """What one command cost in CPU: the controller's (the command's process tree and the
    ssh masters' growth) and each machine's (its cgroup), in total and per host."""
    masters = sum(
        max(0.0, seconds - before["ssh_masters"].get(pid, 0.0))
        for pid, seconds in after["ssh_masters"].items()
    )
    controller = after["children"] - before["children"] + masters
    machines = {
        name: round(after["machines"][name] - before["machines"][name], 3)
        for name in after["machines"]
        if name in before["machines"] and after["machines"][name] >= before["machines"][name]
    }
    return {
        "controller_s": round(controller, 3),
        "ssh_masters_s": round(masters, 3),
        "controller_s_per_host": round(controller / hosts, 3) if hosts else None,
        "machines_s": machines,
        "machine_s_per_host": round(statistics.fmean(machines.values()), 3) if machines else None,
    }


@dataclass
class Settings:
    machines: list[int]
    rounds: int
    clients: int
    rate: float
    keep: bool
    out: Path
    # Controller core counts to project large fleets for, and ansible.cfg's forks.
    project_cores: list[int]
    forks: int


class Bench:
    """One benchmark run: the fleet, the throwaway repository, the commands and their logs."""

    def __init__(self, settings: Settings, console: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.console = console
        self.inventory = WORK_DIR / "inventory"
        self.repo = WORK_DIR / "repo"
        self.logs = settings.out / "logs"
        self.env = {
            **os.environ,
            # The project's settings, as from the repository root; the timing callback lists
            # every task (not only its default 8) so that rounds can be compared task by task.
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "FLIPBACK_TIMING_TOP": "1000",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.load: load.LoadGenerator | None = None
        self.sequence = 0
        # The fleet's machines run in this cgroup, each in a child cgroup of its own
        # (unified hierarchy, hybrid or pure v2).
        self.fleet_cgroup = next(
            (
                root / "flipback" / FLEET
                for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
                if (root / "cgroup.procs").exists()
            ),
            None,
        )

    def say(self, text: str) -> None:
        print(text, file=self.console, flush=True)

    # -- setup ------------------------------------------------------------------------

    def prepare(self) -> None:
        """The bench's inventory (service definition) and its throwaway repository."""
        self.logs.mkdir(parents=True, exist_ok=True)
        group_vars = self.inventory / "group_vars" / "all"
        group_vars.mkdir(parents=True, exist_ok=True)
        (group_vars / "services.yml").write_text(
            "---\n"
            "# Written by bench/run: the one service the benchmark deploys.\n"
            "flipback_services:\n"
            f"  - name: {SERVICE}\n"
            f"    source: {self.repo}\n"
            "    subdir: services/hello\n"
            f"    ref: {BRANCH}\n"
            "    app: app:app\n"
            f"    port: {PORT}\n"
            "    workers: 1\n"
            "    health:\n"
            "      path: /health\n"
            "      expect_json: { ok: true, service: hello }\n"
            "    keep_releases: 5\n"
            f"    user: {SERVICE}\n"
        )
        # Kept between runs: its branch only moves forward, and each run adds commits.
        if not (self.repo / ".git").is_dir():
            self._check(
                [str(BIN / "python"), str(ROOT / "tests/fixtures/service_repo.py"), str(self.repo)]
            )
            self._git("checkout", "-q", "-B", BRANCH, "v2")

    def _check(self, argv: Sequence[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
        if proc.returncode:
            raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr[-800:]}")

    def _git(self, *args: str) -> None:
        env = {
            "GIT_AUTHOR_NAME": "flipback bench",
            "GIT_AUTHOR_EMAIL": "bench@flipback.invalid",
            "GIT_COMMITTER_NAME": "flipback bench",
            "GIT_COMMITTER_EMAIL": "bench@flipback.invalid",
        }
        argv = ["git", "-C", str(self.repo), *args]
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, env={**os.environ, **env}
        )
        if proc.returncode:
            raise BenchError(f"{shlex.join(argv)} failed: {proc.stderr.strip()[-800:]}")

    def new_commit(self, note: str) -> None:
        """A change to hello's tree (not its code), so that the next deploy is a new release."""
        marker = self.repo / "services" / "hello" / "BENCH"
        marker.write_text(f"{note} at {datetime.now(UTC).isoformat()}\n")
        self._git("add", "-A")
        self._git("commit", "-q", "-m", f"bench: {note}")

    def pin_idna(self, version: str | None, note: str) -> None:
        """hello's dependencies with idna pinned at `version` (None: as hello has them)."""
        pyproject = self.repo / "services" / "hello" / "pyproject.toml"
        text = re.sub(r'\n  "idna==[^"]*",', "", pyproject.read_text())
        if version is not None:
            text = text.replace("dependencies = [", f'dependencies = [\n  "idna=={version}",', 1)
        pyproject.write_text(text)
        self.new_commit(note)

    def break_app(self, how: str | None, note: str) -> None:
        """hello's app broken `how` ("exit": it cannot be imported, so uvicorn exits;
        "unhealthy": /health answers 500), or whole again (None)."""
        app = self.repo / "services" / "hello" / "app.py"
        text = app.read_text()
        text = text.split("\n# bench: broken\n")[0]
        if how == "exit":
            text += '\n# bench: broken\nraise ImportError("bench: broken on purpose")\n'
        elif how == "unhealthy":
            text += (
                "\n# bench: broken\n"
                "app.router.routes = [r for r in app.router.routes"
                ' if getattr(r, "path", "") != "/health"]\n\n\n'
                '@app.get("/health")\ndef _broken_health():\n'
                '    raise RuntimeError("bench: broken on purpose")\n'
            )
        app.write_text(text)
        self.new_commit(note)

    def sandbox_args(self, *extra: str) -> list[str]:
        return [
            str(ROOT / "playbooks/sandbox.yml"),
            "-e",
            f"sandbox_name={FLEET}",
            "-e",
            f"sandbox_subnet={SUBNET}",
            "-e",
            f"sandbox_inventory_path={self.inventory / 'hosts.yml'}",
            *extra,
        ]

    def addresses(self) -> list[str]:
        return inventory_addresses(_read(str(self.inventory / "hosts.yml")))

    # -- commands -------------------------------------------------------------------------

    def command(self, op: str, k: int, round_: int | None, args: Sequence[str]) -> dict[str, Any]:
        """Run one ansible-playbook from the repository root, timed, its output in a log."""
        self.sequence += 1
        tag = f"r{round_}" if round_ else "setup"
        log = self.logs / f"{self.sequence:03d}-k{k}-{tag}-{op}.log"
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), *args]
        window_start = self.load.now() if self.load else None
        cpu_before = cpu_snapshot(self.fleet_cgroup)
        with log.open("w") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            started = time.monotonic()
            proc = subprocess.run(
                argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
            seconds = time.monotonic() - started
        window_end = self.load.now() if self.load else None
        cpu_after = cpu_snapshot(self.fleet_cgroup)
        cpu = other_cores(cpu_before, cpu_after)
        text = log.read_text()
        recap = parse_recap(text)
        result: dict[str, Any] = {
            "op": op,
            "machines": k,
            "round": round_,
            "argv": argv,
            "rc": proc.returncode,
            "seconds": round(seconds, 3),
            "changed": changed_total(recap),
            "recap": recap,
            "timing": parse_timing(text),
            "log": str(log),
            "cpu": cpu,
            "cpu_cost": cpu_costs(cpu_before, cpu_after, k),
            "window": None
            if window_start is None
            else {"start": round(window_start, 3), "end": round(window_end or 0.0, 3)},
        }
        label = LABELS.get(op, op)
        where = f"[K={k} {'round ' + str(round_) if round_ else 'setup'}]" if k else "[teardown]"
        self.say(
            f"{where:<16} {label:<17} {_seconds(seconds):>8}  rc={proc.returncode}"
            f"  changed={'-' if result['changed'] is None else result['changed']}"
            + (f"  others' cpu {cpu['other_cores']:.2f} cores" if cpu else "")
        )
        if bool(proc.returncode) != (op in MUST_FAIL):
            tail = "\n".join("    " + line for line in text.splitlines()[-15:])
            what = "passed, but must fail" if op in MUST_FAIL else "failed"
            raise BenchError(f"{label} {what} (rc {proc.returncode}); log {log}:\n{tail}")
        return result

    def deploy_args(self) -> list[str]:
        return [
            str(ROOT / "playbooks/deploy.yml"),
            "-e",
            f"service={SERVICE}",
            "-e",
            f"source={self.repo}",
            "-e",
            f"ref={BRANCH}",
        ]

    def rollback_args(self) -> list[str]:
        return [str(ROOT / "playbooks/rollback.yml"), "-e", f"service={SERVICE}"]

    def floor_args(self) -> list[str]:
        return [str(ROOT / "bench/floor.yml")]

    # -- one fleet size -------------------------------------------------------------------

    def run_size(self, k: int, result: dict[str, Any]) -> None:
        """Fleet of k, a live release, then the rounds under load; fills `result` as it goes
        so that a failure still leaves what was measured."""
        setup = result["setup"]
        commands = result["commands"]
        setup.append(self.command("fleet", k, None, self.sandbox_args("-e", f"sandbox_size={k}")))
        addresses = self.addresses()
        if len(addresses) != k:
            raise BenchError(f"the fleet's inventory lists {addresses}, expected {k} machines")
        result["addresses"] = addresses
        # Not measured: opens the SSH connections every later command reuses (ControlPersist)
        # and starts every machine on a live release, so that round 1 is like the others.
        setup.append(self.command("warmup", k, None, self.floor_args()))
        self.new_commit(f"K={k} base")
        setup.append(self.command("deploy_base", k, None, self.deploy_args()))

        urls = [f"http://{address}:{PORT}/health" for address in addresses]
        self.load = load.LoadGenerator(
            urls,
            max(self.settings.clients, k),  # at least one client per machine
            "new",
            rate=self.settings.rate,
            duration=load.MAX_DURATION,
        )
        self.load.start()
        try:
            time.sleep(QUIET_SECONDS)
            for round_ in range(1, self.settings.rounds + 1):
                commands.append(self.command("floor", k, round_, self.floor_args()))
                self.new_commit(f"K={k} round {round_}")
                commands.append(self.command("deploy_new", k, round_, self.deploy_args()))
                commands.append(self.command("deploy_nochange", k, round_, self.deploy_args()))
                commands.append(self.command("rollback", k, round_, self.rollback_args()))
                version = DEPS_BUMPS[(round_ - 1) % len(DEPS_BUMPS)]
                self.pin_idna(version, f"K={k} round {round_}: idna {version}")
                commands.append(self.command("deploy_deps", k, round_, self.deploy_args()))
                for how in ("exit", "unhealthy"):
                    self.break_app(how, f"K={k} round {round_}: broken ({how})")
                    commands.append(self.command(f"broken_{how}", k, round_, self.deploy_args()))
                self.break_app(None, f"K={k} round {round_}: whole again")
                self.pin_idna(None, f"K={k} round {round_}: hello's own dependencies")
            time.sleep(QUIET_SECONDS)
        finally:
            self.load.stop()
            self.load.join()
            self.finish_size(k, result)
            self.load = None

    def finish_size(self, k: int, result: dict[str, Any]) -> None:
        """Statistics, the table and the PNG of one fleet size, from what was measured."""
        assert self.load is not None
        records = self.load.records
        summary = self.load.summary()
        for command in result["commands"]:
            window = command["window"]
            command["load"] = window_summary(
                in_windows(records, [(window["start"], window["end"])])
            )
        stats = operation_stats(result["commands"], records)
        result["operations"] = stats
        result["load"] = summary
        result["projection"] = projection(stats, self.settings.project_cores, self.settings.forks)
        png = self.settings.out / f"timeline-k{k}.png"
        windows = [
            (c["window"]["start"], c["window"]["end"], c["op"], c["round"])
            for c in result["commands"]
        ]
        title = (
            f"flipback bench  K={k}  R={self.settings.rounds}  "
            f"{summary['clients']} clients  {summary['rate']:g}/s  "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC  "
            f"{_output(['git', 'rev-parse', '--short', 'HEAD']) or 'no commit'}"
        )
        png.write_bytes(plot.timeline_png(summary["timeline"], windows, title))
        result["png"] = str(png)
        nochange = stats["deploy_nochange"]
        result["warning"] = busy_warning(stats, len(os.sched_getaffinity(0))) or None
        self.say(
            f"\n== K={k} machines, {len(result['commands']) // len(OPERATIONS)} rounds"
            f" ({', '.join(result.get('addresses', []))})\n"
            + format_operations(stats)
            + (f"\n{result['warning']}" if result["warning"] else "")
            + f"\nno-change deploys that reported changed=0: {nochange['changed_zero']}"
            f" of {nochange['n']}\n"
            + format_load(summary)
            + "\ncpu seconds per host (controller: ansible-playbook's process tree and the"
            " ssh masters; machine: its cgroup):\n"
            + format_cpu(stats, result["projection"])
            + "\nwhere the time goes:\n"
            + format_top_tasks(stats)
            + "\n"
        )

    def teardown(self) -> None:
        self.command("fleet_down", 0, None, self.sandbox_args("-e", "sandbox_state=absent"))


def _problems(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What a clean run must not show: failed requests, a no-change deploy that changed."""
    problems = []
    for run in runs:
        stats = run.get("operations")
        if not stats:
            continue
        k = run["machines"]
        failed = run["load"]["failed"]
        if failed:
            problems.append(f"K={k}: {failed} requests failed ({run['load']['failed_by_kind']})")
        nochange = stats["deploy_nochange"]
        if nochange["changed_zero"] != nochange["n"]:
            problems.append(
                f"K={k}: no-change deploy reported changes: changed={nochange['changed']}"
            )
    return problems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Deploy, no-change deploy and rollback of hello, timed against a one-task"
        " floor, under load, on the bench's own sandbox fleet (10.213.40.0/24).",
    )
    parser.add_argument(
        "--machines",
        type=parse_machines,
        default=[2],
        metavar="K[,K...]",
        help="fleet sizes, 1-32; several give a scaling table (default 2)",
    )
    parser.add_argument(
        "--rounds", type=load.positive_int, default=5, metavar="R", help="default 5"
    )
    parser.add_argument(
        "--clients",
        type=load.positive_int,
        default=DEFAULT_CLIENTS,
        help=f"load clients, raised to K so every machine gets one (default {DEFAULT_CLIENTS})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"total requests/s of the load, new connection each (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--project-cores",
        type=parse_cores,
        default=None,
        metavar="C[,C...]",
        help="controller cores to project 100 and 1,000 hosts for (default: this one's)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the fleet up (tear down later: see README)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"output directory (default {WORK_DIR}/results/<UTC time>)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.rate <= load.DEFAULT_NEW_RATE:
        parser.error(f"--rate must be in (0, {load.DEFAULT_NEW_RATE:g}] (TIME_WAIT, DESIGN.md)")
    if os.geteuid() != 0:
        parser.error("the sandbox fleet needs root")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or WORK_DIR / "results" / stamp).resolve()
    settings = Settings(
        args.machines,
        args.rounds,
        args.clients,
        args.rate,
        args.keep,
        out,
        args.project_cores or [len(os.sched_getaffinity(0))],
        ansible_forks(),
    )

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    lock = (WORK_DIR / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        parser.error(f"another bench/run holds {WORK_DIR / '.lock'}; one at a time (same fleet)")

    bench = Bench(settings)
    report: dict[str, Any] = {
        "bench": {
            "command": ["bench/run", *(sys.argv[1:] if argv is None else argv)],
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "out": str(out),
        },
        "machine": machine_facts(),
        "settings": {
            "machines": settings.machines,
            "rounds": settings.rounds,
            "clients": settings.clients,
            "rate": settings.rate,
            "mode": "new",
            "fleet": FLEET,
            "subnet": SUBNET,
            "service": SERVICE,
            "inventory": str(bench.inventory),
            "repo": str(bench.repo),
            "keep": settings.keep,
            "project_cores": settings.project_cores,
            "forks": settings.forks,
        },
        "runs": [],
    }
    error: str | None = None
    try:
        bench.prepare()
        bench.say(f"bench: output in {out}")
        for k in settings.machines:
            result: dict[str, Any] = {"machines": k, "setup": [], "commands": []}
            report["runs"].append(result)
            bench.run_size(k, result)
    except BenchError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        if not settings.keep:
            try:
                bench.teardown()
            except BenchError as exc:
                error = f"{error}; {exc}" if error else str(exc)
        else:
            bench.say(
                f"fleet kept; tear it down with: .venv/bin/ansible-playbook -i {bench.inventory} "
                + shlex.join(bench.sandbox_args("-e", "sandbox_state=absent"))
            )

    measured = [run for run in report["runs"] if run.get("operations")]
    report["scaling"] = scaling_rows(measured) if len(measured) > 1 else []
    if report["scaling"]:
        bench.say("== scaling: median per fleet size\n" + format_scaling(report["scaling"]) + "\n")
    report["model_check"] = model_check(measured, len(os.sched_getaffinity(0)), settings.forks)
    if report["model_check"]:
        bench.say(
            "== the model against these runs (smallest fleet's figures; machines' CPU"
            " counted, as they share this controller)\n"
            + format_model_check(report["model_check"])
            + "\n"
        )
    problems = _problems(report["runs"])
    report["bench"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["bench"]["error"] = error
    report["bench"]["problems"] = problems
    report["machine"]["git_uncommitted_at_end"] = _output(
        ["git", "status", "--porcelain"]
    ).splitlines()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    latest = WORK_DIR / "results" / "latest"
    if out.parent == latest.parent:
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)
    bench.say(f"json: {out / 'bench.json'}")
    for run in report["runs"]:
        if run.get("png"):
            bench.say(f"png:  {run['png']}")
    bench.say(f"logs: {bench.logs}")
    if error:
        bench.say(f"FAILED: {error}")
    for problem in problems:
        bench.say(f"PROBLEM: {problem}")
    return 1 if error or problems else 0


if __name__ == "__main__":
    sys.exit(main())
