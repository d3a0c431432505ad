"""Unit tests of module_utils/flipback_command.py: a release's commands at named points.

systemd-run goes through a fake runner that records the argv and answers as scripted
(with systemd-run's own closing lines); the release tree (manifest, history, env file,
venv) and its unit file are real, on tmp_path.
"""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.flipback_command import (
    DEFAULT_TIMEOUT,
    CommandFailed,
    ReleaseCommands,
    normalize_commands,
)
from ansible.module_utils.flipback_exec import SYSTEM_PATH, CommandTimeout
from ansible.module_utils.flipback_release import Releases, read_history, read_manifest
from ansible.module_utils.flipback_runtime import unit_text
from fakes import ReleaseTree

SERVICE = "shop"
R1 = "20261202T100000-aaaaaaaaaa"
R2 = "20261202T110000-bbbbbbbbbb"
W = "flipback_services[0] (shop)"
MIGRATE = "python manage.py migrate --noinput"


def staged(
    root, release: str, commands: dict, user: str = "shop", static: dict | None = None
) -> None:
    """A staged release under `root` (tmp_path/shop) whose configuration declares
    `commands` (as service_config normalizes them: a bare command line gets the default
    timeout), with its unit file in root/../units as staging writes it."""
    commands = {
        point: [c if isinstance(c, dict) else {"run": c, "timeout": DEFAULT_TIMEOUT} for c in cs]
        for point, cs in commands.items()
    }
    tree = ReleaseTree(root, SERVICE).venv(release, pyvenv_cfg=False)
    tree.env_file(release, 'DB="x"\n')
    tree.release(
        release,
        config={"user": user, "commands": commands, "nginx": {"static": static or {}}},
    )
    unit = unit_text(
        service=SERVICE, home=str(root), user=user, app="app:app", factory=False, workers=1
    )
    tree.unit_file(release, root.parent / "units", unit)


def ended(rc: int) -> str:
    """What systemd-run --wait writes after the command exited `rc`."""
    result = "success" if rc == 0 else "exit-code"
    return (
        f"Finished with result: {result}\n"
        f"Main processes terminated with: code=exited/status={rc}\n"
        "Service runtime: 7.5s\n"
    )


class Runner:
    """Answers each systemd-run with the next (rc, output); records every argv."""

    def __init__(self, *answers: tuple[int, str], clock: list[float] | None = None) -> None:
        self.answers = list(answers)
        self.argvs: list[list[str]] = []
        self.clock = clock

    def __call__(self, argv, timeout):
        self.argvs.append(list(argv))
        if argv[0] == "systemctl":
            return 0, "", ""
        rc, output = self.answers.pop(0)
        if self.clock is not None:
            self.clock[0] += 7.5
        if rc == "timeout":
            raise CommandTimeout(output, "")
        return rc, output, ended(rc)


def commands_at(root, point: str, runner: Runner, clock=None) -> ReleaseCommands:
    ticks = clock if clock is not None else [0.0]
    return ReleaseCommands(
        SERVICE,
        str(root),
        R2,
        point,
        by="alice",
        run_id="ctl:1:2",
        run=runner,
        now=lambda: ticks[0],
        unit_dir=str(root.parent / "units"),
    )


@pytest.fixture
def root(tmp_path):
    return tmp_path / SERVICE


# =========================================================================== definitions


def test_commands_are_normalized_to_lists_with_timeouts():
    problems: list[str] = []
    commands = normalize_commands(
        W,
        {
            "before_switch_once": MIGRATE,
            "before_switch": ["true", {"run": "collect", "timeout": "60"}],
            "after_switch": [],
        },
        problems,
    )
    assert problems == []
    assert commands == {
        "before_switch_once": [{"run": MIGRATE, "timeout": DEFAULT_TIMEOUT}],
        "before_switch": [
            {"run": "true", "timeout": DEFAULT_TIMEOUT},
            {"run": "collect", "timeout": 60},
        ],
    }


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        pytest.param(
            {"before_deploy": "x"}, "commands: got 'before_deploy', expected one of", id="point"
        ),
        pytest.param({"before_switch": ""}, "before_switch[0].run: got ''", id="empty"),
        pytest.param({"before_switch": "  "}, "before_switch[0].run: got '  '", id="blank"),
        pytest.param({"before_switch": "a\x00b"}, "before_switch[0].run: got 'a\\x00b'", id="nul"),
        pytest.param({"before_switch": [7]}, "before_switch[0]: got 7", id="not-a-command"),
        pytest.param(
            {"after_switch": {"run": "x", "timeout": 0}},
            "after_switch[0].timeout: got 0, expected seconds",
            id="timeout-0",
        ),
        pytest.param(
            {"after_switch": {"run": "x", "timeout": True}},
            "after_switch[0].timeout: got True",
            id="timeout-bool",
        ),
        pytest.param(
            {"after_switch": {"run": "x", "user": "root"}},
            "after_switch[0]: got ['user'], expected only the keys run and timeout",
            id="unknown-key",
        ),
        pytest.param("migrate", "commands: got 'migrate', expected a mapping", id="not-a-mapping"),
    ],
)
def test_bad_commands_are_refused_naming_field_and_value(raw, says):
    problems: list[str] = []
    normalize_commands(W, raw, problems)
    assert len(problems) == 1
    assert problems[0].startswith(W)
    assert says in problems[0]


def test_commands_run_with_the_release_s_own_unit_settings(root):
    staged(root, R2, {"before_switch": ["echo $DB"]})
    runner = Runner((0, "x\n"))

    commands_at(root, "before_switch", runner).run()

    (argv,) = runner.argvs
    here = f"{root}/releases/{R2}"
    for expected in (
        "--uid=shop",
        f"--working-directory={here}",
        f"--property=EnvironmentFile={here}/.flipback/env",
        f"--setenv=PATH={here}/venv/bin:{SYSTEM_PATH}",
        f"--setenv=FLIPBACK_RELEASE={R2}",
        f"--property=RuntimeMaxSec={DEFAULT_TIMEOUT}",
        # The unit's own sandbox: shared/ writable, the rest read-only.
        f"--property=ReadWritePaths={root}/shared",
        "--property=ProtectSystem=strict",
    ):
        assert expected in argv
    assert argv[-4:] == ["--", "/bin/sh", "-c", "echo $$DB"]
    assert any(a.startswith("--unit=flipback-shop-before-switch-0-") for a in argv)


# =========================================================================== running


def test_commands_run_in_order_and_are_recorded(root):
    staged(
        root,
        R2,
        {"before_switch": [{"run": "one", "timeout": 9}, {"run": "two", "timeout": 9}]},
    )
    runner = Runner((0, "first\n"), (0, "second\n"))

    result = commands_at(root, "before_switch", runner).run()

    assert [argv[-1] for argv in runner.argvs] == ["one", "two"]
    assert [c["rc"] for c in result["commands"]] == [0, 0]
    assert result["changed"] is True
    events = read_history(str(root))
    assert [e["event"] for e in events] == ["command", "command"]
    note = json.loads(events[0]["note"])
    assert (note["point"], note["run"], note["rc"], note["output"]) == (
        "before_switch",
        "one",
        0,
        "first\n",
    )
    assert events[0]["run"] == "ctl:1:2"
    ran = read_manifest(str(root), R2)["commands_run"]
    assert [(r["point"], r["run"], r["rc"]) for r in ran] == [
        ("before_switch", "one", 0),
        ("before_switch", "two", 0),
    ]


def test_a_failing_migration_stops_at_once_naming_command_code_and_output(root):
    staged(root, R2, {"before_switch_once": [MIGRATE, "never"]})
    output = "".join(f"line {n}\n" for n in range(40)) + "django.db.utils.OperationalError: boom\n"
    runner = Runner((7, output))

    with pytest.raises(CommandFailed) as failed:
        commands_at(root, "before_switch_once", runner).run()

    error = failed.value
    assert len(runner.argvs) == 1  # the second command never ran
    assert error.retryable is False
    assert f"before_switch_once command {MIGRATE!r} of shop release {R2} exited 7" in error.msg
    assert error.msg.rstrip().endswith("Fix the command or what it needs and deploy again")
    assert "django.db.utils.OperationalError: boom" in error.msg
    assert "line 39" in error.msg and "line 5\n" not in error.msg  # the last lines only
    assert (error.details["rc"], error.details["command"]) == (7, MIGRATE)
    # Recorded, and the release is failed here: never a rollback target.
    events = [e["event"] for e in read_history(str(root))]
    assert events == ["command", "failed"]
    state = Releases(SERVICE, str(root)).scan()
    assert state.releases[R2].status == "failed"


def test_a_command_out_of_time_says_so(root):
    staged(root, R2, {"before_switch": [{"run": "sleep 99", "timeout": 5}]})
    clock = [0.0]
    runner = Runner(("timeout", "still sleeping\n"), clock=clock)

    with pytest.raises(CommandFailed, match=r"ran out of its 5 s after 7\.5 s") as failed:
        commands_at(root, "before_switch", runner, clock).run()

    assert failed.value.details["rc"] == 124
    # Its unit is stopped, in case systemd did not stop it at RuntimeMaxSec.
    assert runner.argvs[-1][:2] == ["systemctl", "stop"]


def test_a_failed_after_switch_command_does_not_mark_the_live_release_failed(root):
    staged(root, R2, {"after_switch": ["notify"]})
    runner = Runner((3, "no route\n"))

    with pytest.raises(CommandFailed, match="exited 3"):
        commands_at(root, "after_switch", runner).run()

    # The restore that follows records it as rolled back.
    assert [e["event"] for e in read_history(str(root))] == ["command"]


def test_command_events_do_not_change_a_release_s_status(root):
    staged(root, R2, {"before_switch": ["true"]})
    runner = Runner((0, ""))
    commands_at(root, "before_switch", runner).run()

    state = Releases(SERVICE, str(root)).scan()
    assert state.releases[R2].status == "staged"


def test_no_commands_for_the_point_runs_nothing(root):
    staged(root, R2, {"before_switch_once": [MIGRATE]})
    runner = Runner()

    result = commands_at(root, "after_switch", runner).run()

    assert (result["changed"], result["commands"], runner.argvs) == (False, [], [])
    assert read_history(str(root)) == []


def test_check_mode_lists_the_commands_and_runs_none(root):
    staged(root, R2, {"before_switch_once": [{"run": MIGRATE, "timeout": 30}]})
    runner = Runner()

    result = commands_at(root, "before_switch_once", runner).run(check_mode=True)

    assert result["commands"] == [{"run": MIGRATE, "timeout": 30}]
    assert result["msg"].startswith("would run 1 before_switch_once command(s)")
    assert runner.argvs == []
    assert read_history(str(root)) == []


def test_check_mode_of_a_release_not_staged_yet(root):
    runner = Runner()
    result = commands_at(root, "before_switch", runner).run(check_mode=True)
    assert result["msg"] == f"would run the before_switch commands {R2} declares"
    assert runner.argvs == []


def test_a_release_not_staged_cannot_run_commands(root):
    with pytest.raises(CommandFailed, match="no manifest under"):
        commands_at(root, "before_switch", Runner()).run()


def test_an_unknown_point_is_refused():
    with pytest.raises(CommandFailed, match="point: got 'before_deploy'"):
        ReleaseCommands(SERVICE, "/srv/shop", R1, "before_deploy")


@pytest.mark.parametrize(("point", "writable"), [("before_switch", True), ("after_switch", False)])
def test_before_the_switch_commands_may_fill_the_release_s_static_directories(
    root, point, writable
):
    staged(root, R2, {point: ["collect"]}, static={"/static/": "static", "/s2/": "static"})
    runner = Runner((0, ""))

    commands_at(root, point, runner).run()

    (argv,) = runner.argvs
    rw = f"--property=ReadWritePaths={root}/releases/{R2}/static"
    assert (argv.count(rw), "--property=UMask=0022" in argv) == (
        (1, True) if writable else (0, False)
    )
