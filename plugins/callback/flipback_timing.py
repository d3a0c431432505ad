"""Callback: print where a run's time went, per task, at the end of every run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: flipback_timing
type: aggregate
short_description: Per-task wall time at the end of a run
description:
  - Records how long each task took (from its start to the start of the next task, so
    every host's share and the connection round trips are counted) and prints the
    slowest tasks and the total when the playbook ends.
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
options:
  top:
    description: How many of the slowest tasks to print (0 prints none).
    type: int
    default: 8
    env:
      - name: FLIPBACK_TIMING_TOP
    ini:
      - section: flipback_timing
        key: top
"""

import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "flipback_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._started = time.monotonic()
        self._current: tuple[str, float] | None = None
        self._totals: dict[str, float] = {}

    def _close_current(self) -> None:
        if self._current is not None:
            name, started = self._current
            self._totals[name] = self._totals.get(name, 0.0) + time.monotonic() - started
            self._current = None

    def _start(self, task) -> None:
        self._close_current()
        # get_name() already carries the role prefix ("flipback : ...").
        self._current = (task.get_name().strip(), time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._start(task)

    def v2_playbook_on_stats(self, stats) -> None:
        self._close_current()
        total = time.monotonic() - self._started
        top = self.get_option("top")
        if top <= 0:
            return
        slowest = sorted(self._totals.items(), key=lambda kv: kv[1], reverse=True)[:top]
        lines = [f"{seconds:7.2f}s  {name}" for name, seconds in slowest]
        self._display.display(
            f"\nTIMING: {total:.2f}s in all, {len(self._totals)} tasks; slowest:\n"
            + "\n".join(lines)
        )
