"""Callback: kill (or pause) the run at a chosen task, for the interrupt and lock tests."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: flipback_kill
type: aggregate
short_description: SIGKILL (or SIGSTOP) the run at the start of a chosen task (fault injection)
description:
  - Counts the task starts Ansible announces to callbacks (v2_playbook_on_task_start and
    v2_playbook_on_handler_task_start, in order; includes are tasks too) and, with
    kill_after=N, sends SIGKILL to the whole process group of ansible-playbook when
    task N+1 starts, before it reaches any host.
    Task N has then finished on every host; nothing of task N+1 has run. This is what a
    hard kill of the terminal session does between two tasks. If the run ends before
    task N+1 starts, it is killed at the end instead (v2_playbook_on_stats), so an armed
    run always dies by SIGKILL and a test can tell that its kill happened.
  - The process group is ansible-playbook's own (armed, the plugin makes it a group
    leader when it loads, before any worker is forked), so the kill takes the workers
    and their ssh clients with it but never the process that started the run. The ssh
    ControlPersist masters run in their own sessions and survive, as they would.
  - With kill_after_task=TEXT instead, the task to kill at is the first one to start after
    a task whose name contains TEXT (kill_after wins if both are set).
  - With kill_signal=STOP, the run is paused instead (SIGSTOP to the same process
    group, ansible-playbook included) and goes on where it stopped when the group gets
    SIGCONT, so a test can hold a run between two tasks (e.g. with the deploy lock taken).
  - With task_log=PATH, appends one line per started task (number, a tab, the task's
    name; the task it kills at gets a third field, the signal), so a test can learn how
    many tasks a full run has.
  - Needs enabling (callbacks_enabled, or ANSIBLE_CALLBACKS_ENABLED=flipback_kill) and
    does nothing unless kill_after, kill_after_task or task_log is set.
requirements:
  - enabled in callbacks_enabled; never enable it for real deploys
options:
  kill_after:
    description: Kill the run when task kill_after + 1 starts (0 or unset never kills).
    type: int
    default: 0
    env:
      - name: FLIPBACK_KILL_AFTER
  kill_after_task:
    description: Kill the run when the first task after one whose name contains this starts.
    type: str
    env:
      - name: FLIPBACK_KILL_AFTER_TASK
  kill_signal:
    description: KILL ends the run; STOP pauses it until its process group gets SIGCONT.
    type: str
    default: KILL
    choices: [KILL, STOP]
    env:
      - name: FLIPBACK_KILL_SIGNAL
  task_log:
    description: File to append each started task's number and name to (unset logs nothing).
    type: path
    env:
      - name: FLIPBACK_TASK_LOG
"""

import os
import signal
import sys

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "flipback_kill"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = 0
        self._kill_after = 0
        self._kill_after_task = ""
        self._previous = ""  # name of the task that started last
        self._signal = signal.SIGKILL
        self._task_log = ""

    def set_options(self, task_keys=None, var_options=None, direct=None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._kill_after = max(0, self.get_option("kill_after") or 0)
        self._kill_after_task = self.get_option("kill_after_task") or ""
        self._signal = signal.Signals[f"SIG{self.get_option('kill_signal') or 'KILL'}"]
        self._task_log = self.get_option("task_log") or ""
        if self._armed and os.getpgrp() != os.getpid():
            # Killing a group this run does not lead would also kill whatever started it
            # (a test runner, a shell script). A session leader already leads its group.
            os.setpgid(0, 0)

    @property
    def _armed(self) -> bool:
        return self._kill_after > 0 or bool(self._kill_after_task)

    def _start(self, task) -> None:
        self._started += 1
        number = self._started
        name = task.get_name().strip()
        if self._kill_after > 0:
            kill = number == self._kill_after + 1
        else:
            kill = bool(self._kill_after_task) and self._kill_after_task in self._previous
            if kill:
                self._kill_after_task = ""  # once: a paused run goes on unarmed
        self._previous = name
        self._log(f"{number}\t{name}" + (f"\t{self._signal.name}" if kill else ""))
        if kill:
            self._kill(f"at the start of task {number} ({name})")

    def _log(self, line: str) -> None:
        if self._task_log:
            # Opened per line: every line is on disk before a kill can cut the run short.
            with open(self._task_log, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def _kill(self, where: str) -> None:
        name = self._signal.name
        sys.stderr.write(f"flipback_kill: {name} to process group {os.getpgrp()} {where}\n")
        sys.stderr.flush()
        os.killpg(os.getpgrp(), self._signal)

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._start(task)

    def v2_playbook_on_stats(self, stats) -> None:
        if self._armed:
            self._log(f"{self._started + 1}\t(end of the run)\t{self._signal.name}")
            self._kill(f"at the end of the run, after {self._started} tasks")
