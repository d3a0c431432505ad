"""Unit tests of module_utils/flipback_exec.py and library/service_exec.py: a release tree
under tmp_path with the unit flipback writes, and a fake systemd-run runner."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from ansible.module_utils.flipback_exec import (
    DEFAULT_TIMEOUT,
    MAX_OUTPUT,
    WAIT_SLACK,
    CommandTimeout,
    check_request,
    exec_report,
    execute,
    outcome,
    parse_unit,
    refusal,
    resolve,
    run_with_timeout,
    split_trailer,
    systemd_run_argv,
    validate_cmd,
    validate_hosts,
    validate_timeout,
)
from ansible.module_utils.flipback_release import ReleaseError
from ansible.module_utils.flipback_runtime import env_file_text, unit_text
from fakes import ReleaseTree, load_file, run_module

ROOT = Path(__file__).resolve().parents[2]
A = "20261101T120000-aaaaaaaaaa"
B = "20261102T120000-bbbbbbbbbb"
SECRET = "s3cr3t-never-in-argv"
TRAILER_OK = (
    "Finished with result: success\n"
    "Main processes terminated with: code=exited/status=0\n"
    "Service runtime: 12ms\n"
    "CPU time consumed: 9ms\n"
)


def deploy(tmp_path: Path, *releases: str, current: str | None = None) -> tuple[str, str]:
    """hello with these releases (units and env files as staging writes them);
    `current` points at `current` (default: the last). (root_parent, unit_dir)"""
    root_parent = tmp_path / "srv"
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    home = root_parent / "hello"
    tree = ReleaseTree(home, "hello")
    unit = unit_text(
        service="hello", home=str(home), user="hello", app="app:app", factory=False, workers=2
    )
    for release in releases:
        tree.venv(release, pyvenv_cfg=False)
        tree.env_file(release, env_file_text({"HELLO_TOKEN": SECRET}))
        tree.unit_file(release, unit_dir, unit)
    (home / "shared").mkdir(parents=True, exist_ok=True)
    if releases:
        tree.current(current or releases[-1])
    return str(root_parent), str(unit_dir)


class FakeRunner:
    """Answers systemd-run with the given (rc, stdout, stderr) and records each call."""

    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = TRAILER_OK, raises=None):
        self.rc, self.stdout, self.stderr, self.raises = rc, stdout, stderr, raises
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, argv, timeout):
        self.calls.append((list(argv), timeout))
        if self.raises is not None and argv[0].endswith("systemd-run"):
            raise self.raises
        return self.rc, self.stdout, self.stderr


# =========================================================================== inputs


@pytest.mark.parametrize("cmd", ["", "   ", None, 3, "a\x00b", "x" * (16 * 1024 + 1)])
def test_a_bad_command_is_refused_naming_the_field(cmd):
    with pytest.raises(ReleaseError) as caught:
        validate_cmd(cmd)
    assert caught.value.msg.startswith("cmd: ")
    assert "nothing was run" in caught.value.msg
    assert caught.value.retryable is False


@pytest.mark.parametrize(("value", "expected"), [(1, 1), ("300", 300), (" 86400 ", 86400)])
def test_timeouts_in_range_are_taken(value, expected):
    assert validate_timeout(value) == expected


@pytest.mark.parametrize("value", [0, -1, 86401, "5s", "", True, 2.5, None])
def test_bad_timeouts_are_refused(value):
    with pytest.raises(ReleaseError, match=r"^timeout: got .*expected whole seconds"):
        validate_timeout(value)


def test_hosts_is_first_or_all():
    assert validate_hosts("all") == "all"
    with pytest.raises(ReleaseError, match=r"^hosts: got 'web-1', expected 'first'"):
        validate_hosts("web-1")


def test_check_request_collects_every_problem():
    checked = check_request(names=["hello", "greeter"], service=None, cmd="", timeout="0")
    problems = checked["problems"]
    assert len(problems) == 3, problems
    assert problems[0].startswith("service: got None, expected one service chosen")
    assert "['hello', 'greeter']" in problems[0]
    assert problems[1].startswith("cmd: got ''")
    assert problems[2].startswith("timeout: got '0'")
    message = refusal(problems)
    assert message.startswith("invalid input (3 problems), nothing was run on any host")
    assert "retrying as-is fails the same way" in message


def test_check_request_of_a_good_request():
    checked = check_request(names=["hello"], service="hello", cmd="id", timeout=None, hosts="all")
    assert checked == {
        "service": "hello",
        "cmd": "id",
        "timeout": DEFAULT_TIMEOUT,
        "hosts": "all",
        "problems": [],
    }


# =========================================================================== the unit


def test_parse_unit_reads_the_service_section_with_continued_lines():
    text = unit_text(
        service="hello", home="/srv/hello", user="hello", app="app:app", factory=True, workers=3
    )
    unit = parse_unit(text)
    assert unit["User"] == ["hello"]
    assert unit["WorkingDirectory"] == ["/srv/hello/releases/%i"]
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # The continued ExecStart= is one value; [Unit] and [Install] keys are not taken.
    assert unit["ExecStart"][0].endswith("--header X-Flipback-Release:%i")
    assert "--workers 3" in unit["ExecStart"][0]
    assert "Description" not in unit and "WantedBy" not in unit
    assert unit["CapabilityBoundingSet"] == [""]


def test_resolve_reads_the_live_release_and_its_unit(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A, B, current=A)
    target = resolve("hello", root_parent=root_parent, unit_dir=unit_dir)
    home = f"{root_parent}/hello"
    assert target["release"] == A
    assert (target["user"], target["group"]) == ("hello", "hello")
    assert target["cwd"] == f"{home}/releases/{A}"
    assert target["env_file"] == f"{home}/releases/{A}/.flipback/env"
    assert target["venv"] == f"{home}/releases/{A}/venv"
    assert target["environment"] == [f"FLIPBACK_RELEASE={A} PYTHONDONTWRITEBYTECODE=1"]
    props = target["properties"]
    assert f"ReadWritePaths={home}/shared" in props
    assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props
    assert "SystemCallFilter=~@privileged @resources" in props
    assert "CapabilityBoundingSet=" in props and "UMask=0077" in props
    # Nothing about the server process.
    assert not [p for p in props if p.split("=")[0] in ("ExecStart", "Restart", "RuntimeDirectory")]


def test_resolve_refuses_a_service_not_on_the_host(tmp_path):
    with pytest.raises(ReleaseError) as caught:
        resolve("hello", root_parent=str(tmp_path / "srv"), unit_dir=str(tmp_path))
    assert caught.value.msg.startswith("service: got 'hello', which is not on this host")
    assert "a retry does not help" in caught.value.msg
    assert caught.value.details["field"] == "service"


def test_resolve_refuses_a_host_with_no_live_release(tmp_path):
    root_parent, unit_dir = deploy(tmp_path)
    with pytest.raises(ReleaseError, match=r"^service: 'hello' has no live release on this host"):
        resolve("hello", root_parent=root_parent, unit_dir=unit_dir)


def test_resolve_refuses_a_bad_service_name(tmp_path):
    with pytest.raises(ReleaseError, match=r"^service: got '../etc'"):
        resolve("../etc", root_parent=str(tmp_path), unit_dir=str(tmp_path))


def test_resolve_refuses_a_release_without_its_unit(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    os.unlink(f"{unit_dir}/hello@{A}.service")
    with pytest.raises(ReleaseError) as caught:
        resolve("hello", root_parent=root_parent, unit_dir=unit_dir)
    assert caught.value.msg.startswith(f"release: the live release {A} of hello has no readable")
    assert caught.value.details == {"field": "release", "value": A}


def test_resolve_refuses_a_release_without_its_env_file(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    os.unlink(f"{root_parent}/hello/releases/{A}/.flipback/env")
    with pytest.raises(
        ReleaseError, match=f"^release: the live release {A} of hello is missing its env file"
    ):
        resolve("hello", root_parent=root_parent, unit_dir=unit_dir)


def test_resolve_refuses_a_unit_with_another_working_directory(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    path = Path(unit_dir) / f"hello@{A}.service"
    path.write_text(path.read_text().replace("WorkingDirectory=", "WorkingDirectory=/tmp#"))
    with pytest.raises(ReleaseError, match=r"WorkingDirectory= is '/tmp#"):
        resolve("hello", root_parent=root_parent, unit_dir=unit_dir)


def test_resolve_refuses_a_unit_with_an_unknown_specifier(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    path = Path(unit_dir) / f"hello@{A}.service"
    path.write_text(path.read_text().replace("User=hello", "User=%u"))
    with pytest.raises(ReleaseError, match=r"^User: got '%u' with the specifier %u"):
        resolve("hello", root_parent=root_parent, unit_dir=unit_dir)


# =========================================================================== systemd-run


def test_the_command_line_carries_the_release_environment_but_no_env_value(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    target = resolve("hello", root_parent=root_parent, unit_dir=unit_dir)
    argv = systemd_run_argv(
        target, "echo hi", timeout=42, unit="flipback-exec-hello-x.service", systemd_run="/sr"
    )
    home = f"{root_parent}/hello"
    assert argv[:4] == ["/sr", "--wait", "--pipe", "--collect"]
    assert argv[-4:] == ["--", "/bin/sh", "-c", "echo hi"]
    assert "--uid=hello" in argv and "--gid=hello" in argv
    assert f"--working-directory={home}/releases/{A}" in argv
    assert f"--property=EnvironmentFile={home}/releases/{A}/.flipback/env" in argv
    assert f"--setenv=FLIPBACK_RELEASE={A}" in argv
    path = next(a for a in argv if a.startswith("--setenv=PATH="))
    assert path.startswith(f"--setenv=PATH={home}/releases/{A}/venv/bin:")
    assert "--property=RuntimeMaxSec=42" in argv
    assert f"--property=ReadWritePaths={home}/shared" in argv
    assert "--property=ProtectSystem=strict" in argv
    assert "--quiet" not in argv  # its closing lines tell the command's end apart
    # systemd would expand $NAME (to nothing for `$1`) before the shell runs: doubled.
    shell = systemd_run_argv(
        target, "awk '{print $1}' $HOME $$", timeout=1, unit="u", systemd_run="s"
    )
    assert shell[-1] == "awk '{print $$1}' $$HOME $$$$"
    assert SECRET not in json.dumps(argv)


def test_split_trailer_takes_systemd_runs_lines_off_the_stderr():
    stderr = "Running as unit: flipback-exec-hello-1.service\nwarning: x\n" + (
        "Finished with result: exit-code\n"
        "Main processes terminated with: code=exited/status=3\n"
        "Service runtime: 5ms\n"
    )
    assert split_trailer(stderr) == (
        "warning: x\n",
        {"result": "exit-code", "code": "exited", "status": "3"},
    )


def test_split_trailer_without_the_closing_lines_says_nothing_ended():
    stderr = "Failed to start transient service unit: Unit x already exists.\n"
    assert split_trailer(stderr) == (stderr, None)


def test_split_trailer_keeps_the_commands_own_lines_that_look_alike():
    # Only lines from the last "Finished with result:" on are systemd-run's.
    stderr = "Service runtime: mine\n" + TRAILER_OK
    assert split_trailer(stderr) == (
        "Service runtime: mine\n",
        {"result": "success", "code": "exited", "status": "0"},
    )
    assert split_trailer("Service runtime: mine\n") == ("Service runtime: mine\n", None)


@pytest.mark.parametrize(
    ("rc", "info", "expected"),
    [
        (0, {"result": "success", "code": "exited", "status": "0"}, (0, None, None)),
        (
            3,
            {"result": "exit-code", "code": "exited", "status": "3"},
            (3, None, "the command exited with code 3"),
        ),
        (
            1,
            {"result": "signal", "code": "killed", "status": "KILL"},
            (None, "KILL", "the command was killed by signal KILL"),
        ),
        (
            1,
            {"result": "timeout", "code": "killed", "status": "TERM"},
            (None, "TERM", "the command ran longer than the timeout of 9 s and was stopped"),
        ),
    ],
)
def test_outcome_tells_how_the_command_ended(rc, info, expected):
    ended = outcome(rc, info, 9)
    assert (ended["exit_code"], ended["signal"]) == expected[:2]
    if expected[2] is None:
        assert ended["failure"] is None
    else:
        assert ended["failure"].startswith(expected[2])


def test_execute_runs_the_command_and_returns_its_output(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner(
        stdout=f"{A}\nhello\n", stderr="Running as unit: u.service\nnote\n" + TRAILER_OK
    )
    result = execute(
        "hello",
        "echo $FLIPBACK_RELEASE; id -un",
        timeout=30,
        runner=runner,
        systemd_run="/usr/bin/systemd-run",
        root_parent=root_parent,
        unit_dir=unit_dir,
        token="cafe",
    )
    assert result["ran"] is True and result["changed"] is True
    assert result["unit"] == "flipback-exec-hello-cafe.service"
    assert (result["release"], result["user"], result["exit_code"]) == (A, "hello", 0)
    assert "rc" not in result  # Ansible would fail the task on a non-zero rc
    assert result["stdout"] == f"{A}\nhello\n"
    assert result["stderr"] == "note\n"
    assert result["failure"] is None and result["result"] == "success"
    [(argv, wait)] = runner.calls
    assert wait == 30 + WAIT_SLACK
    assert "--unit=flipback-exec-hello-cafe.service" in argv
    assert SECRET not in json.dumps(result)


def test_a_failing_command_is_a_result_with_its_exit_code(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner(
        rc=3,
        stderr="boom\nFinished with result: exit-code\n"
        "Main processes terminated with: code=exited/status=3\n",
    )
    result = execute("hello", "exit 3", runner=runner, root_parent=root_parent, unit_dir=unit_dir)
    assert (result["exit_code"], result["result"]) == (3, "exit-code")
    assert "rc" not in result
    assert result["failure"] == "the command exited with code 3"
    assert result["stderr"] == "boom\n"


def test_systemd_run_that_cannot_start_the_command_is_an_error(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner(rc=1, stderr="Failed to start transient service unit: Access denied\n")
    with pytest.raises(ReleaseError) as caught:
        execute("hello", "true", runner=runner, root_parent=root_parent, unit_dir=unit_dir)
    assert caught.value.msg.startswith(
        f"exec: systemd-run could not run the command in hello release {A} on this host (rc 1)"
    )
    assert "Access denied" in caught.value.msg
    assert caught.value.details["field"] == "cmd"


def test_a_command_past_its_timeout_is_stopped(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner(raises=CommandTimeout("partial\n", "Running as unit: u\n"))
    result = execute(
        "hello",
        "sleep 999",
        timeout=5,
        runner=runner,
        systemctl="/bin/systemctl",
        root_parent=root_parent,
        unit_dir=unit_dir,
        token="beef",
    )
    assert result["result"] == "timeout"
    assert "within the timeout of 5 s" in result["failure"]
    assert "a larger -e timeout may help" in result["failure"]
    assert result["stdout"] == "partial\n" and result["stderr"] == ""
    assert runner.calls[1][0] == ["/bin/systemctl", "stop", "flipback-exec-hello-beef.service"]


def test_nothing_runs_in_check_mode_or_with_run_false(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner()
    for kwargs in ({"check_mode": True}, {"run": False}):
        result = execute(
            "hello", "rm -rf /", runner=runner, root_parent=root_parent, unit_dir=unit_dir, **kwargs
        )
        assert result["ran"] is False and result["changed"] is False
        assert result["release"] == A and result["user"] == "hello"
    assert runner.calls == []


def test_output_is_capped(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner(stdout="y\n" * MAX_OUTPUT)
    result = execute("hello", "yes", runner=runner, root_parent=root_parent, unit_dir=unit_dir)
    assert result["truncated"] is True
    assert len(result["stdout"].encode()) < MAX_OUTPUT + 100
    assert result["stdout"].endswith("output truncated at 1048576 bytes]\n")


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    root_parent, unit_dir = deploy(tmp_path, A)
    runner = FakeRunner()
    for cmd, timeout in (("", 5), ("true", 0)):
        with pytest.raises(ReleaseError):
            execute(
                "hello",
                cmd,
                timeout=timeout,
                runner=runner,
                root_parent=root_parent,
                unit_dir=unit_dir,
            )
    assert runner.calls == []


def test_run_with_timeout_runs_and_times_out():
    assert run_with_timeout([sys.executable, "-c", "print('x'); exit(4)"], 30) == (4, "x\n", "")
    with pytest.raises(CommandTimeout) as caught:
        run_with_timeout(
            [sys.executable, "-u", "-c", "import time; print('early'); time.sleep(30)"], 1
        )
    assert caught.value.stdout == "early\n"


# =========================================================================== report


def test_exec_report_prefixes_every_line_with_host_and_release():
    text = exec_report(
        {
            "web-1": {
                "release": A,
                "ran": True,
                "stdout": "one\n\ttwo\x1b[2J\n",
                "stderr": "warn\n",
                "failure": None,
            },
            "web-10": {"release": B, "ran": True, "stdout": "", "failure": "the command exited"},
            "web-3": {"failed": True, "msg": "service: 'hello' has no live release"},
            "web-4": {},
        }
    )
    assert text.split("\n") == [
        f"web-1  {A} | one",
        f"web-1  {A} |     two\\x1b[2J",
        f"web-1  {A} ! warn",
        f"web-1  {A} = exit 0",
        f"web-10 {B} = FAILED: the command exited",
        "web-3  - = could not run: service: 'hello' has no live release",
        "web-4  - = no result (unreachable?)",
    ]


def test_exec_report_of_check_mode_says_what_would_run():
    text = exec_report(
        {
            "h": {
                "release": A,
                "ran": False,
                "result": "not run (check mode)",
                "user": "hello",
                "cwd": "/srv/hello/releases/x",
            }
        }
    )
    assert text == f"h {A} = not run (check mode): would run as hello in /srv/hello/releases/x"


def test_exec_report_refuses_a_non_mapping():
    with pytest.raises(ReleaseError, match=r"^hosts: got"):
        exec_report(["h"])  # type: ignore[arg-type]


# =========================================================================== the module


def _module():
    return load_file("service_exec", ROOT / "library" / "service_exec.py")


def test_module_in_check_mode_finds_the_release_and_runs_nothing(tmp_path, capsys):
    root_parent, unit_dir = deploy(tmp_path, A)
    module = _module()
    args = {
        "service": "hello",
        "cmd": "touch /tmp/flipback-must-not-exist",
        "root_parent": root_parent,
        "unit_dir": unit_dir,
    }
    code, result, _out = run_module(module, args, capsys, check_mode=True)
    assert code == 0
    assert result["release"] == A and result["ran"] is False
    assert result["result"] == "not run (check mode)"


def test_module_fails_on_a_host_with_no_live_release(tmp_path, capsys):
    root_parent, unit_dir = deploy(tmp_path)
    module = _module()
    args = {"service": "hello", "cmd": "true", "root_parent": root_parent, "unit_dir": unit_dir}
    code, result, _out = run_module(module, args, capsys)
    assert code == 1
    assert result["failed"] is True
    assert result["msg"].startswith("service: 'hello' has no live release on this host")
    assert result["field"] == "service" and result["retryable"] is False
