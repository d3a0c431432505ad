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


INVENTORY = """\
---
# as the sandbox role writes it
all:
  children:
    bench:
      hosts:
        bench-1:
          ansible_host: 10.213.40.11
        bench-2: {ansible_host: 10.213.40.12}
        local: {ansible_connection: local}
      vars:
        ansible_user: root
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (INVENTORY, ["10.213.40.11", "10.213.40.12"]),
        ("", []),
        ("---\nall: {}\n", []),
        ("all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n", ["10.0.0.1"]),
    ],
    ids=["sandbox-role", "missing-file", "empty-placeholder", "top-level-hosts"],
)
def test_inventory_addresses(text, expected):
    assert bench.inventory_addresses(text) == expected


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
        ("0,4", "1-32"),
        ("33", "1-32"),
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


# --- CPU per host, and the projection to large fleets ---------------------------------


def test_proc_cpu_seconds_reads_utime_and_stime_after_the_name():
    # A command name with a space and a parenthesis must not shift the fields.
    stat = "4242 (ssh: a (b) [mux]) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 150 0 0 20 0 1"
    assert bench.proc_cpu_seconds(stat, 100) == 4.0


@pytest.mark.parametrize(
    ("cmdline", "master"),
    [
        (b"ssh: /root/.ansible/cp/2f7c1a [mux]\x00", True),
        (b"ssh\x00-o\x00ControlMaster=auto\x0010.213.40.11\x00", False),
        (b"sshd: root@pts/0\x00", False),
    ],
    ids=["master", "client", "sshd"],
)
def test_is_ssh_master(cmdline, master):
    assert bench.is_ssh_master(cmdline) is master


def _snapshot(children, masters, machines):
    return {"children": children, "ssh_masters": masters, "machines": machines}


def test_cpu_costs_per_host():
    before = _snapshot(10.0, {100: 1.0}, {"bench-1": 5.0, "bench-2": 7.0})
    after = _snapshot(13.0, {100: 1.5, 200: 0.5}, {"bench-1": 6.0, "bench-2": 10.0, "bench-3": 1.0})
    cost = bench.cpu_costs(before, after, 2)
    # 3 s of the process tree, 0.5 s more of an old master, 0.5 s of a new one.
    assert cost["controller_s"] == 4.0
    assert cost["ssh_masters_s"] == 1.0
    assert cost["controller_s_per_host"] == 2.0
    # bench-3 appeared meanwhile: its usage is not this command's.
    assert cost["machines_s"] == {"bench-1": 1.0, "bench-2": 3.0}
    assert cost["machine_s_per_host"] == 2.0


def test_cpu_costs_without_hosts_or_machines():
    cost = bench.cpu_costs(_snapshot(1.0, {}, {}), _snapshot(1.5, {}, {}), 0)
    assert cost["controller_s"] == 0.5
    assert cost["controller_s_per_host"] is None
    assert cost["machine_s_per_host"] is None


@pytest.mark.parametrize(
    ("hosts", "cpu_per_host", "cores", "forks", "expected"),
    [
        # Latency-bound: one wave; the path (wall - floor = 3 s) once.
        (10, 0.2, 2, 20, 1.0 + 3.0),
        # CPU-bound within the wave: 20 hosts x 0.5 s / 2 cores = 5 s > 3 s.
        (20, 0.5, 2, 20, 1.0 + 5.0),
        # 100 hosts in waves of 20: five waves of max(3 s, 20 x 0.2 / 2 = 2 s).
        (100, 0.2, 2, 20, 1.0 + 5 * 3.0),
        # 1,000 hosts, 8 cores: 50 waves of max(3 s, 20 x 2.0 / 8 = 5 s).
        (1000, 2.0, 8, 20, 1.0 + 50 * 5.0),
        # A partial last wave counts as a wave.
        (21, 0.0, 2, 20, 1.0 + 2 * 3.0),
    ],
    ids=["latency-bound", "cpu-bound", "waves", "thousand", "partial-wave"],
)
def test_projected_wall(hosts, cpu_per_host, cores, forks, expected):
    assert bench.projected_wall(1.0, 4.0, hosts, cpu_per_host, cores, forks) == pytest.approx(
        expected
    )


def _cpu_stats(floor, ops):
    """Operation stats with only what the projection reads."""
    stats = {
        "floor": {"median": floor, "controller_cpu_per_host": {"median": 0.0}},
    }
    for op, (wall, controller, machine) in ops.items():
        stats[op] = {
            "median": wall,
            "controller_cpu_per_host": {"median": controller},
            "machine_cpu_per_host": {"median": machine},
        }
    return stats


def test_projection_per_operation_and_controller():
    stats = _cpu_stats(1.0, {"deploy_new": (5.0, 1.0, 3.0), "rollback": (2.0, 0.2, 0.5)})
    rows = bench.projection(stats, [2, 8], 20)
    assert [(row["op"], row["cores"]) for row in rows] == [
        ("deploy_new", 2),
        ("deploy_new", 8),
        ("rollback", 2),
        ("rollback", 8),
    ]
    deploy_2 = rows[0]
    # 100 hosts: 5 waves of max(4 s, 20 x 1.0 / 2 = 10 s); 1,000: 50 of them.
    assert deploy_2["projected_s"] == {"100": 51.0, "1000": 501.0}
    # With 8 cores the wave is 20 x 1.0 / 8 = 2.5 s < 4 s: latency-bound.
    assert rows[1]["projected_s"] == {"100": 21.0, "1000": 201.0}
    assert rows[0]["path_s"] == 4.0
    text = bench.format_cpu(
        {
            op: {
                **stats.get(op, {}),
                "controller_cpu_per_host": {"median": 1.0, "max": 1.2},
                "machine_cpu_per_host": {"median": 3.0, "max": 3.5},
            }
            for op in bench.OPERATIONS
        },
        rows,
    )
    assert "1000 HOSTS" in text and "51.0 s" in text and "501.0 s" in text


def test_marginal_cpu_is_beyond_the_floor():
    stats = _cpu_stats(1.0, {"deploy_new": (5.0, 3.1, 4.0)})
    stats["floor"]["controller_cpu_per_host"]["median"] = 0.7
    assert bench.marginal_cpu(stats, "deploy_new", "controller_cpu_per_host") == 2.4
    # The floor has no machine figure here: nothing to take off.
    assert bench.marginal_cpu(stats, "deploy_new", "machine_cpu_per_host") == 4.0
    # Never below zero.
    stats["floor"]["controller_cpu_per_host"]["median"] = 9.0
    assert bench.marginal_cpu(stats, "deploy_new", "controller_cpu_per_host") == 0.0
    rows = bench.projection(stats, [2], 20)
    assert rows[0]["controller_cpu_per_host_beyond_floor_s"] == 0.0


def test_projection_skips_what_was_not_measured():
    stats = _cpu_stats(1.0, {"deploy_new": (5.0, None, None), "rollback": (2.0, 0.2, None)})
    assert [row["op"] for row in bench.projection(stats, [2], 20)] == ["rollback"]


def test_model_check_predicts_larger_fleets_from_the_smallest():
    small = {
        "machines": 1,
        "operations": _cpu_stats(1.0, {"deploy_new": (5.0, 1.0, 3.0), "rollback": (2.0, 0.2, 0.3)}),
    }
    big = {
        "machines": 8,
        "operations": _cpu_stats(
            1.5, {"deploy_new": (20.0, 0.8, 2.5), "rollback": (3.0, 0.2, 0.3)}
        ),
    }
    rows = bench.model_check([big, small], cores=2, forks=20)
    deploy = next(row for row in rows if row["op"] == "deploy_new")
    # 8 hosts x (1.0 + 3.0) s / 2 cores = 16 s > the 4 s path: 1 + 16.
    assert deploy["predicted_s"] == 17.0
    assert deploy["measured_s"] == 20.0
    assert deploy["error"] == pytest.approx(-0.15)
    rollback = next(row for row in rows if row["op"] == "rollback")
    # 8 x 0.5 / 2 = 2 s > 1 s path: 1 + 2.
    assert rollback["predicted_s"] == 3.0
    assert rollback["error"] == 0.0
    assert "8 (from 1)" in bench.format_model_check(rows)
    assert bench.model_check([small], cores=2, forks=20) == []


def test_ansible_forks(tmp_path):
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\nforks = 12\n")
    assert bench.ansible_forks(config) == 12
    config.write_text("[defaults]\ninventory = x\n")
    assert bench.ansible_forks(config) == 5
    # The repository's own setting.
    assert bench.ansible_forks() >= 1


@pytest.mark.parametrize(
    ("text", "expected"), [("2", [2]), ("8,2,8", [2, 8]), ("1,1024", [1, 1024])]
)
def test_parse_cores(text, expected):
    assert bench.parse_cores(text) == expected


@pytest.mark.parametrize("text", ["0", "a", "", "2,2000"])
def test_parse_cores_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_cores(text)
