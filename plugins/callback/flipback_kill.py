"""Callback: kill the run with SIGKILL at a chosen task, for the interrupt tests."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: flipback_kill
type: aggregate
short_description: SIGKILL the run at the start of a chosen task (fault injection)
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
  - With task_log=PATH, appends one line per started task (number, a tab, the task's
    name; the task it kills at gets a third field, SIGKILL), so a test can learn how
    many tasks a full run has.
  - Needs enabling (callbacks_enabled, or ANSIBLE_CALLBACKS_ENABLED=flipback_kill) and
    does nothing unless kill_after or task_log is set.
requirements:
  - enabled in callbacks_enabled; never enable it for real deploys
options:
  kill_after:
    description: Kill the run when task kill_after + 1 starts (0 or unset never kills).
    type: int
    default: 0
    env:
      - name: FLIPBACK_KILL_AFTER
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
        self._task_log = ""

    def set_options(self, task_keys=None, var_options=None, direct=None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._kill_after = max(0, self.get_option("kill_after") or 0)
        self._task_log = self.get_option("task_log") or ""
        if self._kill_after and os.getpgrp() != os.getpid():
            # Killing a group this run does not lead would also kill whatever started it
            # (a test runner, a shell script). A session leader already leads its group.
            os.setpgid(0, 0)

    def _start(self, task) -> None:
        self._started += 1
        number = self._started
        name = task.get_name().strip()
        kill = self._kill_after > 0 and number == self._kill_after + 1
        self._log(f"{number}\t{name}" + ("\tSIGKILL" if kill else ""))
        if kill:
            self._kill(f"at the start of task {number} ({name})")

    def _log(self, line: str) -> None:
        if self._task_log:
            # Opened per line: every line is on disk before a kill can cut the run short.
            with open(self._task_log, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def _kill(self, where: str) -> None:
        sys.stderr.write(f"flipback_kill: SIGKILL to process group {os.getpgrp()} {where}\n")
        sys.stderr.flush()
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._start(task)

    def v2_playbook_on_stats(self, stats) -> None:
        if self._kill_after > 0:
            self._log(f"{self._started + 1}\t(end of the run)\tSIGKILL")
            self._kill(f"at the end of the run, after {self._started} tasks")
