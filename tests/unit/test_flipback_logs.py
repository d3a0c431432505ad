"""Unit tests of module_utils/flipback_logs.py, library/service_logs.py and the filters
of plugins/filter/flipback_logs.py: journalctl's JSON lines as a Debian 12 host writes
them, a fake journalctl runner, and the merge of several hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.module_utils.flipback_logs import (
    DEFAULT_LINES,
    MAX_LINES,
    check_request,
    journal_argv,
    merge,
    parse_entry,
    read_logs,
    utc_text,
    validate_grep,
    validate_lines,
    validate_release,
    validate_since,
)
from ansible.module_utils.flipback_release import ReleaseError
from fakes import load_file, run_module

ROOT = Path(__file__).resolve().parents[2]
A = "20261201T095500-3f2a9c1d0e"
B = "20261201T101500-0a1b2c3d4e"
BOOT = "5c1e0d3f2a9b4c8d9e0f1a2b3c4d5e6f"


def journal_line(usec: int, message, **fields) -> str:
    """One line of `journalctl -o json --output-fields=...`: the fields asked for, plus
    the cursor and timestamps journalctl always adds, every value a string."""
    entry = {
        "__CURSOR": f"s=0f3a;i={usec % 9973:x};b={BOOT};m={usec % 77777:x};t={usec:x};x=1a2b",
        "__REALTIME_TIMESTAMP": str(usec),
        "__MONOTONIC_TIMESTAMP": str(usec % 10**9),
        "_BOOT_ID": BOOT,
        "MESSAGE": message,
        **fields,
    }
    return json.dumps(entry, separators=(",", ":"))


T0 = 1_764_583_201_123_456  # 2025-12-01T10:00:01.123456Z
UVICORN = journal_line(
    T0,
    "INFO:     Started server process [4242]",
    PRIORITY="6",
    _PID="4242",
    SYSLOG_IDENTIFIER="python",
    _SYSTEMD_UNIT=f"hello@{A}.service",
)
STARTED = journal_line(
    T0 - 500_000,
    f"Started hello@{A}.service - flipback hello release {A}.",
    PRIORITY="6",
    _PID="1",
    SYSLOG_IDENTIFIER="systemd",
    _SYSTEMD_UNIT="init.scope",
    UNIT=f"hello@{A}.service",
)
# A message with an escape sequence is given as its bytes.
BINARY = journal_line(
    T0 + 1_000,
    list(b"bad \x1b[31mred\x1b[0m caf\xc3\xa9"),
    PRIORITY="3",
    _PID="4243",
    SYSLOG_IDENTIFIER="python",
    _SYSTEMD_UNIT=f"hello@{B}.service",
)


# Real lines, as journalctl 252 on a sandbox machine (Debian 12) wrote them for
# `journalctl -o json --output-fields=... -u 'hello@*.service'`: the app's own line, and
# systemd's line about the instance (the unit in UNIT=, from init.scope).
REAL_RELEASE = "20261104T100000-74e4617730"
REAL_APP = (
    '{"PRIORITY":"6","_SYSTEMD_UNIT":"hello@20261104T100000-74e4617730.service","_BOOT_ID":'
    '"a5388d5fdd70493bb00c56087091fb6c","__MONOTONIC_TIMESTAMP":"8725626058","MESSAGE":'
    '"INFO:     Uvicorn running on unix socket /run/flipback-hello/20261104T100000-74e4617730'
    '/app.sock (Press CTRL+C to quit)","_PID":"119","SYSLOG_IDENTIFIER":"python","__CURSOR":'
    '"s=ea4e446cad5b4b89af833172fbc4e944;i=52;b=a5388d5fdd70493bb00c56087091fb6c;m=208167cca;'
    't=661a6ca1aa846;x=167e009a1fcf3a48","__REALTIME_TIMESTAMP":"1796218843473990"}'
)
REAL_SYSTEMD = (
    '{"_PID":"1","_SYSTEMD_UNIT":"init.scope","__MONOTONIC_TIMESTAMP":"8725282359",'
    '"SYSLOG_IDENTIFIER":"systemd","UNIT":"hello@20261104T100000-74e4617730.service",'
    '"MESSAGE":"Started hello@20261104T100000-74e4617730.service - flipback hello release '
    '20261104T100000-74e4617730.","PRIORITY":"6","_BOOT_ID":"a5388d5fdd70493bb00c56087091fb6c",'
    '"__REALTIME_TIMESTAMP":"1796218843130291","__CURSOR":"s=ea4e446cad5b4b89af833172fbc4e944;'
    'i=4e;b=a5388d5fdd70493bb00c56087091fb6c;m=208113e37;t=661a6ca1569b3;x=a782a25fca3b3de4"}'
)


def test_parse_entry_of_real_journalctl_lines():
    app = parse_entry(REAL_APP, ["hello"])
    assert app == {
        "ts": 1796218843473990,
        "at": "2026-12-02T13:40:43.473990Z",
        "service": "hello",
        "release": REAL_RELEASE,
        "process": None,
        "unit": f"hello@{REAL_RELEASE}.service",
        "pid": 119,
        "priority": 6,
        "identifier": "python",
        "message": "INFO:     Uvicorn running on unix socket /run/flipback-hello/"
        f"{REAL_RELEASE}/app.sock (Press CTRL+C to quit)",
    }
    started = parse_entry(REAL_SYSTEMD, ["hello"])
    assert (started["release"], started["pid"], started["identifier"]) == (
        REAL_RELEASE,
        1,
        "systemd",
    )
    assert started["ts"] < app["ts"]
    assert parse_entry(REAL_APP, ["greeter"])["release"] is None


# =========================================================================== inputs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("15m", "-15m"),
        ("2h", "-2h"),
        ("1d", "-1d"),
        ("2h 30min", "-2h 30min"),
        ("-15m", "-15m"),
        ("15 min ago", "-15 min"),
        ("2026-12-01", "2026-12-01"),
        ("2026-12-01 10:00", "2026-12-01 10:00"),
        ("2026-12-01 10:00:30", "2026-12-01 10:00:30"),
        ("10:00", "10:00"),
        ("today", "today"),
        ("yesterday", "yesterday"),
    ],
)
def test_since_takes_journalctl_time_specs(given, expected):
    assert validate_since(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "  ",
        "15m; rm -rf /",
        "$(id)",
        "15x",
        "2026-13-01",
        "2026-12-01 25:00",
        "soon",
        "2026-12-0110:00",
        "--help",
        None,
        15,
        "a" * 65,
    ],
)
def test_since_refuses_anything_else(given):
    with pytest.raises(ReleaseError) as caught:
        validate_since(given)
    assert caught.value.msg.startswith(f"since: got {given!r}")
    assert "expected a journalctl time" in caught.value.msg


@pytest.mark.parametrize(("given", "expected"), [(1, 1), ("50", 50), (MAX_LINES, MAX_LINES)])
def test_lines_in_range(given, expected):
    assert validate_lines(given) == expected


@pytest.mark.parametrize("given", [0, MAX_LINES + 1, "-5", "ten", "", True, 1.5])
def test_lines_out_of_range(given):
    with pytest.raises(ReleaseError, match=r"^lines: got .*expected a whole number from 1 to"):
        validate_lines(given)


def test_release_must_be_a_release_id():
    assert validate_release(A) == A
    with pytest.raises(ReleaseError, match=r"^release: got 'latest', expected a release id"):
        validate_release("latest")


@pytest.mark.parametrize("given", ["", "a\nb", "a\rb", None, "x" * 1001])
def test_grep_must_be_one_nonempty_line(given):
    with pytest.raises(ReleaseError, match=r"^grep: got "):
        validate_grep(given)


def test_grep_takes_a_pattern():
    assert validate_grep("Traceback|ERROR [0-9]+") == "Traceback|ERROR [0-9]+"


def test_check_request_collects_every_problem_and_refuses_empty_selectors():
    checked = check_request(since="soon", lines="0", release="", grep="")
    assert [p.split(":")[0] for p in checked["problems"]] == ["since", "lines", "release", "grep"]
    assert check_request() == {
        "since": None,
        "lines": None,
        "release": None,
        "grep": None,
        "problems": [],
    }


# =========================================================================== host


def test_journal_argv_selects_the_instances():
    argv = journal_argv("/bin/journalctl", ["hello", "greeter"], since="-15m", grep="boom")
    assert argv[:4] == ["/bin/journalctl", "--no-pager", "--quiet", "--output=json"]
    assert "--unit=hello@*.service" in argv and "--unit=greeter@*.service" in argv
    # Their processes too (`<service>.<process>@<release>.service`).
    assert "--unit=hello.*@*.service" in argv and "--unit=greeter.*@*.service" in argv
    assert "--since=-15m" in argv and "--grep=boom" in argv
    assert f"--lines={MAX_LINES}" in argv  # all since then
    one = journal_argv("journalctl", ["hello"], release=A, lines=7)
    assert f"--unit=hello@{A}.service" in one and "--lines=7" in one
    assert f"--unit=hello.*@{A}.service" in one
    assert not [a for a in one if a.startswith(("--since", "--grep"))]
    assert f"--lines={DEFAULT_LINES}" in journal_argv("journalctl", ["hello"])


def test_parse_entry_of_the_apps_own_line():
    assert parse_entry(UVICORN, ["hello"]) == {
        "ts": T0,
        "at": "2025-12-01T10:00:01.123456Z",
        "service": "hello",
        "release": A,
        "process": None,
        "unit": f"hello@{A}.service",
        "pid": 4242,
        "priority": 6,
        "identifier": "python",
        "message": "INFO:     Started server process [4242]",
    }


def test_parse_entry_of_systemds_line_about_an_instance():
    entry = parse_entry(STARTED, ["hello"])
    assert (entry["release"], entry["unit"], entry["identifier"]) == (
        A,
        f"hello@{A}.service",
        "systemd",
    )


def test_parse_entry_of_a_binary_message():
    entry = parse_entry(BINARY, ["hello"])
    assert entry["message"] == "bad \x1b[31mred\x1b[0m café"
    assert (entry["release"], entry["priority"]) == (B, 3)


def test_parse_entry_of_odd_lines():
    assert parse_entry("", ["hello"]) is None
    assert parse_entry("not json", ["hello"]) is None
    assert parse_entry('{"MESSAGE":"no time"}', ["hello"]) is None
    # A field logged twice comes as a list; a too-large message as null.
    entry = parse_entry(
        journal_line(T0, None, _SYSTEMD_UNIT=["other.service", "x"], _PID="abc"), ["hello"]
    )
    assert entry["release"] is None and entry["pid"] is None
    assert entry["message"].startswith("[flipback: message not shown")
    # Another service's instance with the same shape is not this service's.
    other = journal_line(T0, "x", _SYSTEMD_UNIT=f"hellox@{A}.service")
    assert parse_entry(other, ["hello"])["release"] is None


def test_parse_entry_cuts_a_huge_message():
    entry = parse_entry(journal_line(T0, "x" * 20000), ["hello"])
    assert len(entry["message"]) < 17000
    assert entry["message"].endswith("[flipback: cut at 16384 characters]")


def test_utc_text():
    assert utc_text(0) == "1970-01-01T00:00:00.000000Z"


class FakeJournal:
    def __init__(self, rc=0, out="", err=""):
        self.rc, self.out, self.err = rc, out, err
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        return self.rc, self.out, self.err


def test_read_logs_parses_and_orders_the_entries():
    journal = FakeJournal(out="\n".join([UVICORN, BINARY, STARTED, "garbage"]) + "\n")
    result = read_logs(["hello"], run=journal, journalctl="/bin/journalctl", since="15m")
    assert [e["ts"] for e in result["entries"]] == [T0 - 500_000, T0, T0 + 1_000]
    assert (result["count"], result["unparsed"], result["changed"]) == (3, 1, False)
    assert "--since=-15m" in journal.calls[0]


def test_read_logs_refuses_bad_input_before_journalctl_runs():
    journal = FakeJournal()
    for kwargs in ({"since": "x;y"}, {"lines": 0}, {"release": "nope"}, {"grep": "a\nb"}):
        with pytest.raises(ReleaseError):
            read_logs(["hello"], run=journal, **kwargs)
    with pytest.raises(ReleaseError, match=r"^release: got .* expected one service"):
        read_logs(["hello", "greeter"], run=journal, release=A)
    with pytest.raises(ReleaseError, match=r"^service: got 'Bad'"):
        read_logs(["Bad"], run=journal)
    with pytest.raises(ReleaseError, match=r"^services: got \[\]"):
        read_logs([], run=journal)
    assert journal.calls == []


def test_read_logs_reports_a_journalctl_failure():
    journal = FakeJournal(rc=1, err='Failed to parse timestamp: "-15x"\n')
    with pytest.raises(ReleaseError) as caught:
        read_logs(["hello"], run=journal, since="15m")
    assert caught.value.msg.startswith("journalctl: exited with 1 (Failed to parse timestamp")
    assert caught.value.retryable is True


def test_a_host_where_no_instance_ever_logged_has_no_lines():
    journal = FakeJournal(rc=1, err="Failed to add filter for units: No data available\n")
    assert read_logs(["hello"], run=journal)["entries"] == []


def test_a_grep_that_matches_nothing_is_no_failure():
    result = read_logs(["hello"], run=FakeJournal(rc=1), grep="nothing-like-this")
    assert result["entries"] == []


# =========================================================================== controller


def _host(*lines):
    return {"entries": [parse_entry(line, ["hello"]) for line in lines]}


def test_merge_orders_every_host_by_time_and_prefixes_host_and_release():
    later = journal_line(T0 + 5, "GET /health\tok", _SYSTEMD_UNIT=f"hello@{A}.service")
    merged = merge(
        {
            "web-10": _host(UVICORN, later),
            "web-2": _host(STARTED, BINARY),
            "web-3": {"failed": True, "msg": "journalctl: exited with 1\n(boom)"},
            "web-4": {},
        }
    )
    assert [(e["host"], e["ts"]) for e in merged["entries"]] == [
        ("web-2", T0 - 500_000),
        ("web-10", T0),
        ("web-10", T0 + 5),
        ("web-2", T0 + 1_000),
    ]
    lines = merged["text"].split("\n")
    assert lines[0] == f"2025-12-01T10:00:00.623456Z web-2  {A} | Started hello@{A}.service - " + (
        f"flipback hello release {A}."
    )
    assert lines[2] == f"2025-12-01T10:00:01.123461Z web-10 {A} | GET /health ok"
    # An escape sequence cannot reach the terminal.
    assert lines[3].endswith(f"web-2  {B} | bad \\x1b[31mred\\x1b[0m café")
    assert lines[-2:] == [
        "! web-3: journalctl: exited with 1 (boom)",
        "! web-4: no result (unreachable?)",
    ]
    assert merged["problems"] == [
        "web-3: journalctl: exited with 1 (boom)",
        "web-4: no result (unreachable?)",
    ]
    assert merged["counts"] == {"web-10": 2, "web-2": 2, "web-3": None, "web-4": None}
    json.dumps(merged)  # what logs_json writes


def test_merge_keeps_the_newest_lines_of_all_hosts():
    merged = merge({"a": _host(UVICORN, BINARY), "b": _host(STARTED)}, lines=2)
    assert [e["ts"] for e in merged["entries"]] == [T0, T0 + 1_000]


def test_merge_splits_multi_line_messages_and_names_the_service_when_several():
    trace = journal_line(T0, "Traceback:\n  File x\nValueError", _SYSTEMD_UNIT=f"hello@{A}.service")
    other = journal_line(T0 + 1, "hi", _SYSTEMD_UNIT=f"greeter@{B}.service")
    hosts = {"h": {"entries": [parse_entry(trace, ["hello"]), parse_entry(other, ["greeter"])]}}
    lines = merge(hosts)["text"].split("\n")
    assert lines[:3] == [
        f"2025-12-01T10:00:01.123456Z h hello {A} | Traceback:",
        f"2025-12-01T10:00:01.123456Z h hello {A} |   File x",
        f"2025-12-01T10:00:01.123456Z h hello {A} | ValueError",
    ]
    assert lines[3].endswith(f"h greeter {B} | hi")


def test_merge_of_nothing_says_so():
    assert merge({"h": {"entries": []}})["text"] == "(no journal lines matched)"
    with pytest.raises(ReleaseError, match=r"^hosts: got"):
        merge([])


# =========================================================================== filters


@pytest.fixture
def filters():
    module = load_file("flipback_filter_logs", ROOT / "plugins" / "filter" / "flipback_logs.py")
    return module.FilterModule().filters()


@pytest.mark.controller
def test_filters_are_registered(filters):
    assert sorted(filters) == [
        "flipback_exec_report",
        "flipback_exec_request",
        "flipback_logs_merge",
        "flipback_logs_request",
    ]


@pytest.mark.controller
def test_logs_request_filter_reports_every_problem_in_one_message(filters):
    checked = filters["flipback_logs_request"]("15x", "0", None, "")
    assert len(checked["problems"]) == 3
    assert checked["msg"].startswith("invalid input (3 problems), no host was asked")
    assert "since: got '15x'" in checked["msg"] and "grep: got ''" in checked["msg"]
    good = filters["flipback_logs_request"]("15m", "20")
    assert (good["since"], good["lines"], good["msg"]) == ("-15m", 20, "")


@pytest.mark.controller
def test_exec_request_filter(filters):
    checked = filters["flipback_exec_request"](["hello"], "hello", "", "300", "some")
    assert checked["msg"].startswith("invalid input (2 problems), nothing was run on any host")
    good = filters["flipback_exec_request"](["hello"], "hello", "id", None, None)
    assert (good["cmd"], good["timeout"], good["hosts"], good["msg"]) == ("id", 300, "first", "")
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="expected the list of selected service names"):
        filters["flipback_exec_request"]("hello", "hello", "id")


@pytest.mark.controller
def test_merge_and_report_filters(filters):
    merged = filters["flipback_logs_merge"]({"h": _host(UVICORN)}, "1")
    assert merged["entries"][0]["host"] == "h"
    text = filters["flipback_exec_report"]({"h": {"release": A, "stdout": "x\n", "ran": True}})
    assert text == f"h {A} | x\nh {A} = exit 0"
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match=r"^flipback_logs_merge: hosts: got"):
        filters["flipback_logs_merge"]("nope")


# =========================================================================== the module


def test_module_reads_the_journal_through_journalctl(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "journalctl"
    fake.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat <<'EOF'\n{UVICORN}\n{STARTED}\nEOF\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    module = load_file("service_logs", ROOT / "library" / "service_logs.py")
    args = {"services": ["hello"], "since": "2h", "release": A}
    code, result, _out = run_module(module, args, capsys, check_mode=True)
    assert code == 0
    assert [e["release"] for e in result["entries"]] == [A, A]
    assert result["changed"] is False
    argv = (tmp_path / "argv").read_text()
    assert f"--unit=hello@{A}.service" in argv and "--since=-2h" in argv


def test_a_process_line_is_attributed_to_its_release_and_process():
    line = json.dumps(
        {
            "_SYSTEMD_UNIT": f"hello.worker@{A}.service",
            "MESSAGE": "celery@host ready.",
            "__REALTIME_TIMESTAMP": "1796218843473990",
        }
    )
    entry = parse_entry(line, ["hello"])
    assert (entry["service"], entry["release"], entry["process"]) == ("hello", A, "worker")
    # A unit of another service, or not named like a process, is nobody's.
    for unit in (f"hellox.worker@{A}.service", f"hello.Worker@{A}.service", "hello.w@1.service"):
        other = json.dumps({"_SYSTEMD_UNIT": unit, "MESSAGE": "x", "__REALTIME_TIMESTAMP": "1"})
        assert parse_entry(other, ["hello"])["release"] is None
    text = merge({"h1": {"entries": [entry]}})["text"]
    assert f"h1 {A}/worker | celery@host ready." in text
