"""Unit tests of bench/bench.py's pure parts: statistics, windows, parsing Ansible's output,
the tables. Nothing here runs a playbook or a machine."""

from __future__ import annotations

import argparse

import load
import pytest

import bench

Record = load.Record


def rec(t: float, kind: str = "ok", latency: float = 0.002) -> object:
    return Record(
        t, "http://10.213.40.11:8000/health", kind, 200 if kind == "ok" else None, latency, "r1"
    )


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.99, None),
        ([5.0], 0.5, 5.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        (list(range(1, 101)), 0.99, 99),
        (list(range(1, 101)), 1.0, 100),
        ([7.0, 1.0], 0.0, 1.0),
    ],
    ids=["empty", "one", "unsorted-median", "even-nearest-rank", "p99-of-100", "max", "p0"],
)
def test_percentile(values, fraction, expected):
    assert bench.percentile(values, fraction) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {"n": 0, "min": None, "median": None, "max": None}),
        ([2.0], {"n": 1, "min": 2.0, "median": 2.0, "max": 2.0}),
        ([3.0, 1.0, 2.0], {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}),
        ([1.0, 2.0, 3.0, 10.0], {"n": 4, "min": 1.0, "median": 2.5, "max": 10.0}),
        ([1.23456], {"n": 1, "min": 1.235, "median": 1.235, "max": 1.235}),
    ],
    ids=["empty", "one", "odd", "even-mean-of-middle", "rounded-to-ms"],
)
def test_spread(values, expected):
    assert bench.spread(values) == expected


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [(6.0, 2.0, 3.0), (None, 2.0, None), (1.0, None, None), (1.0, 0.0, None), (1.0, 3.0, 0.33)],
    ids=["plain", "no-value", "no-base", "zero-base", "rounded"],
)
def test_ratio(value, base, expected):
    assert bench.ratio(value, base) == expected


def test_in_windows_start_inclusive_end_exclusive():
    records = [rec(t) for t in (0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 6.0)]
    picked = bench.in_windows(records, [(1.0, 2.0), (5.0, 5.5)])
    assert [r.t for r in picked] == [1.0, 1.5, 5.0]


def test_in_windows_none():
    assert bench.in_windows([rec(1.0)], []) == []


def test_window_summary_counts_and_latency():
    records = [rec(0.1, latency=0.001 * i) for i in range(1, 101)]
    records += [rec(0.2, "connect_refused"), rec(0.3, "http_502"), rec(0.4, "connect_refused")]
    records.append(rec(0.5, load.PORT_EXHAUSTED))
    summary = bench.window_summary(records)
    assert summary["requests"] == 104
    assert summary["ok"] == 100
    assert summary["failed"] == 3
    assert summary["failed_by_kind"] == {"connect_refused": 2, "http_502": 1}
    assert summary["client_errors"] == 1
    assert summary["latency_ms"] == {"p50": 50.0, "p99": 99.0, "max": 100.0}


def test_window_summary_empty():
    summary = bench.window_summary([])
    assert summary["requests"] == 0
    assert summary["latency_ms"] == {"p50": None, "p99": None, "max": None}


RECAP = """\
TASK [flipback : Give the deploy lock of the service back] *********************
ok: [bench-2]

PLAY RECAP *********************************************************************
bench-1                    : ok=32   changed=9    unreachable=0    failed=0    skipped=2  ignored=0
bench-2                    : ok=29   changed=0    unreachable=0    failed=1    skipped=2  ignored=0


TIMING: 21.11s in all, 35 tasks; slowest:
   6.36s  flipback : Stage the release (virtualenv at its final path, offline install)
   1.54s  flipback : Switch to 20261102T100000-987e21b84d
   0.00s  flipback : Reload systemd and nginx before switching
"""


def test_parse_recap():
    recap = bench.parse_recap(RECAP)
    assert set(recap) == {"bench-1", "bench-2"}
    assert recap["bench-1"]["changed"] == 9
    assert recap["bench-2"] == {
        "ok": 29,
        "changed": 0,
        "unreachable": 0,
        "failed": 1,
        "skipped": 2,
        "ignored": 0,
    }
    assert bench.changed_total(recap) == 9


def test_parse_recap_missing():
    assert bench.parse_recap("ERROR! the playbook could not be found") == {}
    assert bench.changed_total({}) is None


def test_parse_timing():
    timing = bench.parse_timing(RECAP)
    assert timing == {
        "total": 21.11,
        "task_count": 35,
        "tasks": [
            ["flipback : Stage the release (virtualenv at its final path, offline install)", 6.36],
            ["flipback : Switch to 20261102T100000-987e21b84d", 1.54],
            [
                "flipback : Reload systemd and nginx before switching",
                0.0,
            ],
        ],
    }


def test_parse_timing_missing():
    assert bench.parse_timing("PLAY RECAP ***\nlocalhost : ok=1 changed=0\n") is None


def test_task_key_hides_release_ids():
    assert bench.task_key("flipback : Switch to 20261102T100000-987e21b84d") == (
        "flipback : Switch to <release>"
    )
    assert bench.task_key("Ping every host") == "Ping every host"


def test_top_tasks_median_over_runs_missing_counts_zero():
    runs = [
        {"tasks": [["Stage", 6.0], ["Switch to 20261102T100000-987e21b84d", 1.0]]},
        {"tasks": [["Stage", 8.0], ["Switch to 20261103T100000-0123456789", 3.0]]},
        {"tasks": [["Stage", 7.0], ["Lock", 9.0]]},
        None,  # a run that printed no timing
    ]
    top = bench.top_tasks(runs, top=3)
    assert top == [
        {"task": "Stage", "median_s": 7.0, "max_s": 8.0},
        {"task": "Switch to <release>", "median_s": 1.0, "max_s": 3.0},
        {"task": "Lock", "median_s": 0.0, "max_s": 9.0},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", [2]), ("1,4,16", [1, 4, 16]), ("16,1", [16, 1]), ("1,4,", [1, 4])],
    ids=["one", "three", "any-order", "trailing-comma"],
)
def test_parse_machines(text, expected):
    assert bench.parse_machines(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b", "not a list"),
        ("", "at least one"),
        ("0,4", "1-16"),
        ("17", "1-16"),
        ("2,2", "repeated"),
    ],
    ids=["letters", "empty", "zero", "too-many", "repeat"],
)
def test_parse_machines_refuses(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        bench.parse_machines(text)


def _command(op, round_, seconds, start, changed=0, tasks=None):
    return {
        "op": op,
        "round": round_,
        "seconds": seconds,
        "changed": changed,
        "window": {"start": start, "end": start + seconds},
        "timing": {"total": seconds, "task_count": 1, "tasks": tasks or [["t", seconds]]},
    }


def _commands():
    commands = []
    t = 0.0
    for round_, (floor, new, same, back) in enumerate(
        [(1.0, 6.0, 2.0, 3.0), (1.2, 5.0, 2.4, 2.0), (0.8, 7.0, 3.0, 2.2)], start=1
    ):
        for op, seconds, changed in (
            ("floor", floor, 0),
            ("deploy_new", new, 5),
            ("deploy_nochange", same, 0 if round_ != 2 else 1),
            ("rollback", back, 2),
        ):
            commands.append(_command(op, round_, seconds, t, changed))
            t += seconds
    return commands


def test_operation_stats():
    commands = _commands()
    # One failed request inside the second deploy_new window (starts at 1+6+2+3+1.2 = 13.2).
    records = [rec(t / 10) for t in range(0, 400)] + [rec(14.0, "connect_reset")]
    stats = bench.operation_stats(commands, records)
    assert stats["floor"]["median"] == 1.0
    assert stats["deploy_new"]["seconds"] == [6.0, 5.0, 7.0]
    assert (stats["deploy_new"]["min"], stats["deploy_new"]["median"]) == (5.0, 6.0)
    # Issue #15's targets: 3.5, 1.5 and 1.3 times the floor.
    assert stats["deploy_new"]["x_floor"] == 6.0
    assert stats["deploy_new"]["target_met"] is False
    assert stats["deploy_nochange"]["x_floor"] == 2.4
    assert stats["deploy_nochange"]["target_met"] is False
    assert stats["rollback"]["x_floor"] == 2.2
    assert stats["rollback"]["target_met"] is False
    assert stats["floor"]["target_met"] is None
    # Operations a run did not measure have no figures (and no verdict).
    assert stats["deploy_deps"]["n"] == 0 and stats["deploy_deps"]["target_met"] is None
    assert stats["deploy_nochange"]["changed_zero"] == 2
    assert stats["deploy_new"]["load"]["failed"] == 1
    assert stats["rollback"]["load"]["failed"] == 0
    assert stats["deploy_new"]["top_tasks"] == [{"task": "t", "median_s": 6.0, "max_s": 7.0}]
    # The windows tile 0..35.6 s without overlap: each request in it is counted once.
    assert sum(stats[op]["load"]["requests"] for op in bench.OPERATIONS) == 356 + 1


def test_format_operations_and_top_tasks():
    stats = bench.operation_stats(_commands(), [])
    table = bench.format_operations(stats)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["OPERATION", "RUNS", "MIN"]
    assert set(lines[1]) <= {"-", " "}
    assert "deploy new" in lines[3] and "6.0" in lines[3] and "<= 3.5: NO" in lines[3]
    assert "<= 1.3: NO" in lines[5]
    assert "deploy new (median per run, max)" in bench.format_top_tasks(stats)


def test_scaling_rows_against_smallest():
    def run(k, new):
        return {
            "machines": k,
            "operations": {
                op: {"median": new if op == "deploy_new" else 1.0} for op in bench.OPERATIONS
            },
        }

    rows = bench.scaling_rows([run(16, 20.0), run(1, 10.0), run(4, 12.0)])
    assert [row["machines"] for row in rows] == [1, 4, 16]
    assert [row["deploy_new"]["x_base"] for row in rows] == [1.0, 1.2, 2.0]
    text = bench.format_scaling(rows)
    assert "x K=1" in text
    assert "<= 2 x to 1: yes (2.00)" in text


def test_render_table_aligns():
    text = bench.render_table(["A", "LONGER"], [["xyz", "1"], ["x", "22"]])
    assert text.splitlines() == ["A    LONGER", "---  ------", "xyz  1", "x    22"]


PROC_STAT = """\
cpu  1000 50 300 9000 200 10 20 5 0 0
cpu0 500 25 150 4500 100 5 10 2 0 0
intr 12345
"""


def test_busy_seconds_excludes_idle_and_iowait():
    # user + nice + system + irq + softirq + steal = 1000+50+300+10+20+5
    assert bench.busy_seconds(PROC_STAT, 100) == pytest.approx(13.85)


def test_busy_seconds_needs_the_cpu_line():
    with pytest.raises(ValueError):
        bench.busy_seconds("intr 1\n", 100)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("usage_usec 2500000\nuser_usec 2000000\n", 2.5), ("", 0.0)],
    ids=["cgroup", "no-cgroup"],
)
def test_cgroup_usage_seconds(text, expected):
    assert bench.cgroup_usage_seconds(text) == expected


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (
            {"wall": 12.0, "busy": 20.0, "ours": 3.0, "fleet": 5.0},
            {"busy_cores": 1.0, "bench_cores": 0.6, "other_cores": 0.4},
        ),
        (
            # Counters sampled at slightly different moments: never a negative share.
            {"wall": 12.0, "busy": 11.0, "ours": 3.0, "fleet": 5.0},
            {"busy_cores": 0.1, "bench_cores": 0.6, "other_cores": 0.0},
        ),
        ({"wall": 2.0, "busy": 10.0, "ours": 1.0, "fleet": 1.0}, None),
        ({"wall": 12.0, "busy": 20.0, "ours": 3.0, "fleet": 0.0}, None),
    ],
    ids=["others-0.4-cores", "clamped-at-zero", "no-time-passed", "fleet-cgroup-removed"],
)
def test_other_cores(after, expected):
    before = {"wall": 2.0, "busy": 10.0, "ours": 1.0, "fleet": 1.0}
    assert bench.other_cores(before, after) == expected


def test_busy_warning():
    stats = bench.operation_stats(_commands(), [])
    assert bench.busy_warning(stats, 2) == ""
    commands = _commands()
    commands[5]["cpu"] = {"busy_cores": 2.0, "bench_cores": 0.8, "other_cores": 1.2}
    stats = bench.operation_stats(commands, [])
    assert stats["deploy_new"]["other_cores"]["max"] == 1.2
    assert "1.20 of its 2 cores" in bench.busy_warning(stats, 2)
