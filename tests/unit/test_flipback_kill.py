"""Unit tests of the flipback_kill callback: it counts tasks, logs them, and kills at N+1.

The plugin is loaded through Ansible's callback loader (so its options come from its
DOCUMENTATION, as in a real run) with os.killpg and os.setpgid patched. Two short real
runs of ansible-playbook against localhost show the kill takes the run's process group
and nothing above it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.plugins.loader import callback_loader

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "sandbox" / "plugins" / "callback"
callback_loader.add_directory(str(PLUGINS))

pytestmark = pytest.mark.controller


class _Task(SimpleNamespace):
    def get_name(self) -> str:
        return self.name


@pytest.fixture
def signals(monkeypatch):
    """What the plugin would have done to processes, instead of doing it."""
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append(("killpg", pgid, sig)))
    monkeypatch.setattr(os, "setpgid", lambda pid, pgid: sent.append(("setpgid", pid, pgid)))
    return sent


def _plugin(
    monkeypatch,
    kill_after: str | None = None,
    task_log: Path | None = None,
    after_task: str | None = None,
    kill_signal: str | None = None,
):
    for name, value in (
        ("FLIPBACK_KILL_AFTER", kill_after),
        ("FLIPBACK_TASK_LOG", task_log),
        ("FLIPBACK_KILL_AFTER_TASK", after_task),
        ("FLIPBACK_KILL_SIGNAL", kill_signal),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(value))
    plugin = callback_loader.get("flipback_kill")
    plugin.set_options()
    return plugin


def _run_tasks(plugin, names: list[str], handlers: tuple[str, ...] = ()) -> None:
    for name in names:
        plugin.v2_playbook_on_task_start(_Task(name=name), is_conditional=False)
    for name in handlers:
        plugin.v2_playbook_on_handler_task_start(_Task(name=name))
    plugin.v2_playbook_on_stats(stats=None)


TASKS = ["first", "second", "third", "fourth"]


@pytest.mark.parametrize(
    ("kill_after", "killed_at"),
    [
        pytest.param("1", 2, id="after-task-1-kills-at-2"),
        pytest.param("3", 4, id="after-task-3-kills-at-4"),
        pytest.param("4", 5, id="after-the-last-task-kills-at-the-end"),
        pytest.param("9", 5, id="beyond-the-run-kills-at-the-end"),
    ],
)
def test_kills_once_when_task_n_plus_1_starts(
    monkeypatch, signals, tmp_path, kill_after, killed_at
):
    log = tmp_path / "tasks.log"
    plugin = _plugin(monkeypatch, kill_after=kill_after, task_log=log)
    # The patched killpg returns, so the plugin carries on; only the first kill counts.
    killed_after: list[int] = []
    monkeypatch.setattr(
        os, "killpg", lambda pgid, sig: killed_after.append(log.read_text().count("\n"))
    )
    _run_tasks(plugin, TASKS)
    assert killed_after[0] == killed_at
    lines = log.read_text().splitlines()
    assert lines[killed_at - 1].endswith("\tSIGKILL")
    assert lines[killed_at - 1].startswith(f"{killed_at}\t")


def test_kill_is_sigkill_to_its_own_process_group(monkeypatch, signals):
    plugin = _plugin(monkeypatch, kill_after="1")
    plugin.v2_playbook_on_task_start(_Task(name="first"), is_conditional=False)
    assert [s for s in signals if s[0] == "killpg"] == []
    plugin.v2_playbook_on_task_start(_Task(name="second"), is_conditional=False)
    assert ("killpg", os.getpgrp(), signal.SIGKILL) in signals


def test_handlers_are_counted_after_the_tasks(monkeypatch, signals, tmp_path):
    log = tmp_path / "tasks.log"
    plugin = _plugin(monkeypatch, kill_after="2", task_log=log)
    _run_tasks(plugin, ["first"], handlers=("Reload nginx", "Reload systemd"))
    assert log.read_text().splitlines()[:3] == [
        "1\tfirst",
        "2\tReload nginx",
        "3\tReload systemd\tSIGKILL",
    ]


def test_log_only_counts_every_task_and_never_kills(monkeypatch, signals, tmp_path):
    log = tmp_path / "tasks.log"
    plugin = _plugin(monkeypatch, task_log=log)
    _run_tasks(plugin, TASKS, handlers=("Reload nginx",))
    assert log.read_text().splitlines() == [
        "1\tfirst",
        "2\tsecond",
        "3\tthird",
        "4\tfourth",
        "5\tReload nginx",
    ]
    assert signals == []


@pytest.mark.parametrize("kill_after", [None, "0"], ids=["unset", "zero"])
def test_inert_without_settings(monkeypatch, signals, tmp_path, kill_after):
    monkeypatch.chdir(tmp_path)
    plugin = _plugin(monkeypatch, kill_after=kill_after)
    _run_tasks(plugin, TASKS)
    assert signals == []
    assert list(tmp_path.iterdir()) == []


def test_armed_it_leads_its_own_process_group(monkeypatch, signals):
    # The test process is not a group leader under most runners; if it is, there is
    # nothing to do and nothing must be done.
    _plugin(monkeypatch, kill_after="3")
    expected = [] if os.getpgrp() == os.getpid() else [("setpgid", 0, 0)]
    assert signals == expected


@pytest.mark.parametrize(
    ("after_task", "killed_at"),
    [
        pytest.param("second", 3, id="after-second-kills-at-third"),
        pytest.param("ourth", 5, id="a-part-of-the-last-name-kills-at-the-end"),
        pytest.param("fifth", 5, id="never-seen-kills-at-the-end"),
    ],
)
def test_kill_after_a_named_task(monkeypatch, signals, tmp_path, after_task, killed_at):
    log = tmp_path / "tasks.log"
    plugin = _plugin(monkeypatch, task_log=log, after_task=after_task)
    _run_tasks(plugin, TASKS)
    lines = log.read_text().splitlines()
    assert [line for line in lines if line.endswith("\tSIGKILL")] == [lines[killed_at - 1]]
    assert [s for s in signals if s[0] == "killpg"] == [("killpg", os.getpgrp(), signal.SIGKILL)]


def test_stop_pauses_once_and_the_run_goes_on_unarmed(monkeypatch, signals, tmp_path):
    log = tmp_path / "tasks.log"
    plugin = _plugin(monkeypatch, task_log=log, after_task="first", kill_signal="STOP")
    _run_tasks(plugin, TASKS)
    # Paused when "second" started; nothing more when the run ends after SIGCONT.
    assert [s for s in signals if s[0] == "killpg"] == [("killpg", os.getpgrp(), signal.SIGSTOP)]
    assert log.read_text().splitlines() == [
        "1\tfirst",
        "2\tsecond\tSIGSTOP",
        "3\tthird",
        "4\tfourth",
    ]


# --------------------------------------------------------------------------- real runs

PLAYBOOK = """\
- name: Four tasks on the controller
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: One
      ansible.builtin.command: "true"
      changed_when: false
    - name: Two
      ansible.builtin.command: "true"
      changed_when: false
    - name: Three
      ansible.builtin.command: "touch {{ marker }}"
      changed_when: true
    - name: Four
      ansible.builtin.command: "true"
      changed_when: false
"""


def _argv(tmp_path: Path) -> list[str]:
    playbook = tmp_path / "four.yml"
    playbook.write_text(PLAYBOOK)
    bin_dir = Path(sys.executable).parent
    return [
        str(bin_dir / "ansible-playbook"),
        "-i",
        "localhost,",
        "-e",
        f"marker={tmp_path / 'task-three-ran'}",
        str(playbook),
    ]


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    # Ansible's temporary directories under tmp_path: the default (~/.ansible/tmp, where
    # ~ is the account's home as the password database has it) need not be writable,
    # e.g. for nobody (/nonexistent).
    return {
        **os.environ,
        "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS),
        "ANSIBLE_CALLBACKS_ENABLED": "flipback_kill",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        **env,
    }


def _ansible_playbook(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # Deliberately in the test's own process group: the kill must not reach us.
    return subprocess.run(
        _argv(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=_env(tmp_path, **env),
    )


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_real_run_is_killed_at_task_n_plus_1_and_the_caller_survives(tmp_path):
    log = tmp_path / "tasks.log"
    run = _ansible_playbook(tmp_path, FLIPBACK_KILL_AFTER="2", FLIPBACK_TASK_LOG=str(log))
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr
    assert log.read_text().splitlines() == ["1\tOne", "2\tTwo", "3\tThree\tSIGKILL"]
    assert not (tmp_path / "task-three-ran").exists()


def test_real_run_with_only_a_task_log_completes(tmp_path):
    log = tmp_path / "tasks.log"
    run = _ansible_playbook(tmp_path, FLIPBACK_TASK_LOG=str(log))
    assert run.returncode == 0, run.stdout + run.stderr
    assert log.read_text().splitlines() == ["1\tOne", "2\tTwo", "3\tThree", "4\tFour"]
    assert (tmp_path / "task-three-ran").exists()


def test_real_run_paused_after_a_named_task_goes_on_after_sigcont(tmp_path):
    log = tmp_path / "tasks.log"
    run = subprocess.Popen(
        _argv(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(
            tmp_path,
            FLIPBACK_KILL_AFTER_TASK="Two",
            FLIPBACK_KILL_SIGNAL="STOP",
            FLIPBACK_TASK_LOG=str(log),
        ),
    )
    try:
        deadline = time.monotonic() + 60
        while _state(run.pid) != "T":
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # Held between tasks two and three: three has not run, and we were not stopped.
        assert not (tmp_path / "task-three-ran").exists()
        assert log.read_text().splitlines() == ["1\tOne", "2\tTwo", "3\tThree\tSIGSTOP"]
        os.killpg(run.pid, signal.SIGCONT)
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, out
    assert (tmp_path / "task-three-ran").exists()
    assert log.read_text().splitlines()[3:] == ["4\tFour"]
