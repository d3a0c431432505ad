"""Unit tests of module_utils/flipback_command.py: a release's commands at named points.

systemd-run goes through a fake runner that records the argv and answers as scripted;
the release tree (manifest, history) is real, on tmp_path.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from ansible.module_utils.flipback_command import (
    DEFAULT_TIMEOUT,
    CommandFailed,
    ReleaseCommands,
    normalize_commands,
    sandbox_argv,
)
from ansible.module_utils.flipback_release import Releases, read_history, read_manifest

SERVICE = "shop"
R1 = "20261202T100000-aaaaaaaaaa"
R2 = "20261202T110000-bbbbbbbbbb"
W = "flipback_services[0] (shop)"
MIGRATE = "python manage.py migrate --noinput"


def staged(root, release: str, commands: dict, user: str = "shop") -> None:
    """A staged release whose configuration declares `commands` (as service_config
    normalizes them: a bare command line gets the default timeout)."""
    commands = {
        point: [c if isinstance(c, dict) else {"run": c, "timeout": DEFAULT_TIMEOUT} for c in cs]
        for point, cs in commands.items()
    }
    path = root / "releases" / release
    path.mkdir(parents=True)
    manifest = {
        "id": release,
        "service": SERVICE,
        "status": "staged",
        "config": {"user": user, "commands": commands},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


class Runner:
    """Answers each systemd-run with the next (rc, output); records every argv."""

    def __init__(self, *answers: tuple[int, str], clock: list[float] | None = None) -> None:
        self.answers = list(answers)
        self.argvs: list[list[str]] = []
        self.clock = clock

    def __call__(self, argv, **kwargs):
        self.argvs.append(list(argv))
        rc, output = self.answers.pop(0)
        if self.clock is not None:
            self.clock[0] += 7.5
        return subprocess.CompletedProcess(argv, rc, output, None)


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
    )


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


def test_every_dollar_reaches_the_shell_as_written():
    argv = sandbox_argv(
        service=SERVICE,
        root="/srv/shop",
        release=R2,
        user="shop",
        unit="u",
        timeout=1,
        command='echo "${DB:-none}" $FLIPBACK_RELEASE $$',
    )
    assert argv[-1] == 'echo "$${DB:-none}" $$FLIPBACK_RELEASE $$$$'


def test_the_sandbox_is_the_release_s_environment():
    argv = sandbox_argv(
        service=SERVICE,
        root="/srv/shop",
        release=R2,
        user="shopuser",
        unit="flipback-shop-x",
        timeout=42,
        command=MIGRATE,
    )
    assert argv[:5] == ["/usr/bin/systemd-run", "--quiet", "--wait", "--pipe", "--collect"]
    assert argv[-4:] == ["--", "/bin/sh", "-c", MIGRATE]
    for expected in (
        "--uid=shopuser",
        "--gid=shopuser",
        f"--working-directory=/srv/shop/releases/{R2}",
        f"--property=EnvironmentFile=/srv/shop/releases/{R2}/.flipback/env",
        f"--setenv=PATH=/srv/shop/releases/{R2}/venv/bin:/usr/local/bin:/usr/bin:/bin",
        f"--setenv=FLIPBACK_RELEASE={R2}",
        "--property=RuntimeMaxSec=42",
        "--property=ProtectSystem=strict",
        "--property=ReadWritePaths=/srv/shop/shared",
        "--property=NoNewPrivileges=yes",
    ):
        assert expected in argv


# =========================================================================== running


def test_commands_run_in_order_and_are_recorded(tmp_path):
    staged(
        tmp_path,
        R2,
        {"before_switch": [{"run": "one", "timeout": 9}, {"run": "two", "timeout": 9}]},
    )
    runner = Runner((0, "first\n"), (0, "second\n"))

    result = commands_at(tmp_path, "before_switch", runner).run()

    assert [argv[-1] for argv in runner.argvs] == ["one", "two"]
    assert [c["rc"] for c in result["commands"]] == [0, 0]
    assert result["changed"] is True
    events = read_history(str(tmp_path))
    assert [e["event"] for e in events] == ["command", "command"]
    note = json.loads(events[0]["note"])
    assert (note["point"], note["run"], note["rc"], note["output"]) == (
        "before_switch",
        "one",
        0,
        "first\n",
    )
    assert events[0]["run"] == "ctl:1:2"
    ran = read_manifest(str(tmp_path), R2)["commands_run"]
    assert [(r["point"], r["run"], r["rc"]) for r in ran] == [
        ("before_switch", "one", 0),
        ("before_switch", "two", 0),
    ]


def test_a_failing_migration_stops_at_once_naming_command_code_and_output(tmp_path):
    staged(tmp_path, R2, {"before_switch_once": [MIGRATE, "never"]})
    output = "".join(f"line {n}\n" for n in range(40)) + "django.db.utils.OperationalError: boom\n"
    runner = Runner((7, output))

    with pytest.raises(CommandFailed) as failed:
        commands_at(tmp_path, "before_switch_once", runner).run()

    error = failed.value
    assert len(runner.argvs) == 1  # the second command never ran
    assert error.retryable is False
    assert f"before_switch_once command {MIGRATE!r} of shop release {R2} exited 7" in error.msg
    assert error.msg.rstrip().endswith("Fix the command or what it needs and deploy again")
    assert "django.db.utils.OperationalError: boom" in error.msg
    assert "line 39" in error.msg and "line 5\n" not in error.msg  # the last lines only
    assert (error.details["rc"], error.details["command"]) == (7, MIGRATE)
    # Recorded, and the release is failed here: never a rollback target.
    events = [e["event"] for e in read_history(str(tmp_path))]
    assert events == ["command", "failed"]
    state = Releases(SERVICE, str(tmp_path)).scan()
    assert state.releases[R2].status == "failed"


def test_a_command_out_of_time_says_so(tmp_path):
    staged(tmp_path, R2, {"before_switch": [{"run": "sleep 99", "timeout": 5}]})
    clock = [0.0]
    runner = Runner((1, "Terminated\n"), clock=clock)

    with pytest.raises(CommandFailed, match=r"ran out of its 5 s after 7\.5 s"):
        commands_at(tmp_path, "before_switch", runner, clock).run()


def test_a_failed_after_switch_command_does_not_mark_the_live_release_failed(tmp_path):
    staged(tmp_path, R2, {"after_switch": ["notify"]})
    runner = Runner((3, "no route\n"))

    with pytest.raises(CommandFailed, match="exited 3"):
        commands_at(tmp_path, "after_switch", runner).run()

    # The restore that follows records it as rolled back.
    assert [e["event"] for e in read_history(str(tmp_path))] == ["command"]


def test_command_events_do_not_change_a_release_s_status(tmp_path):
    staged(tmp_path, R2, {"before_switch": ["true"]})
    runner = Runner((0, ""))
    commands_at(tmp_path, "before_switch", runner).run()

    state = Releases(SERVICE, str(tmp_path)).scan()
    assert state.releases[R2].status == "staged"


def test_no_commands_for_the_point_runs_nothing(tmp_path):
    staged(tmp_path, R2, {"before_switch_once": [MIGRATE]})
    runner = Runner()

    result = commands_at(tmp_path, "after_switch", runner).run()

    assert (result["changed"], result["commands"], runner.argvs) == (False, [], [])
    assert read_history(str(tmp_path)) == []


def test_check_mode_lists_the_commands_and_runs_none(tmp_path):
    staged(tmp_path, R2, {"before_switch_once": [{"run": MIGRATE, "timeout": 30}]})
    runner = Runner()

    result = commands_at(tmp_path, "before_switch_once", runner).run(check_mode=True)

    assert result["commands"] == [{"run": MIGRATE, "timeout": 30}]
    assert result["msg"].startswith("would run 1 before_switch_once command(s)")
    assert runner.argvs == []
    assert read_history(str(tmp_path)) == []


def test_check_mode_of_a_release_not_staged_yet(tmp_path):
    runner = Runner()
    result = commands_at(tmp_path, "before_switch", runner).run(check_mode=True)
    assert result["msg"] == f"would run the before_switch commands {R2} declares"
    assert runner.argvs == []


def test_a_release_not_staged_cannot_run_commands(tmp_path):
    with pytest.raises(CommandFailed, match="no manifest under"):
        commands_at(tmp_path, "before_switch", Runner()).run()


def test_an_unknown_point_is_refused():
    with pytest.raises(CommandFailed, match="point: got 'before_deploy'"):
        ReleaseCommands(SERVICE, "/srv/shop", R1, "before_deploy")
