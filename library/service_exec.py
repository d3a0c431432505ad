#!/usr/bin/python
"""Ansible module: run a one-off command in the live release of a flipback service."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_exec
short_description: Run a one-off command in the environment of a service's live release
description:
  - Runs C(/bin/sh -c <cmd>) as a transient systemd service (C(systemd-run --wait --pipe
    --collect)) in the environment of the release C(<root_parent>/<service>/current) points
    at, as its instance runs - its user and group, its directory (C(releases/<id>)) as
    working directory, its env file (C(releases/<id>/.flipback/env)), C(FLIPBACK_RELEASE=<id>),
    its virtualenv first on C(PATH) (and C(VIRTUAL_ENV)), and the sandboxing of the
    release's own unit (C(<unit_dir>/<service>@<id>.service)), so the code is read-only
    and C(shared/) is writable.
  - The env values are read by systemd from the env file; they are never part of the
    module's arguments, its result or the command line it runs.
  - The command is stopped after O(timeout) seconds (systemd's C(RuntimeMaxSec=)).
  - A command that ran and failed (a non-zero exit, a signal, the timeout) is reported in
    RV(failure), RV(exit_code) and RV(result) (there is no C(rc), which Ansible would take
    as the task's failure), not as a module failure, so that its output
    can be shown first; the module fails only when the command could not be started (no
    live release on the host, a missing unit or env file, systemd-run refused it).
  - With O(run=false), or in check mode, it only finds the live release and reports what
    it would run as; nothing runs.
  - Runs on the host as root; Python standard library only.
options:
  service:
    description: The service whose live release the command runs in.
    type: str
    required: true
  cmd:
    description:
      - The shell command, run by C(/bin/sh -c); not empty, at most 16 KiB.
    type: str
    required: true
  timeout:
    description: Seconds the command may run before it is stopped (1 to 86400).
    type: int
    default: 300
  run:
    description:
      - Whether to run the command; C(false) only finds the live release (a check of
        every host before the command runs on any).
    type: bool
    default: true
  root_parent:
    description: Parent of every service's root (C(<root_parent>/<service>)).
    type: path
    default: /srv
  unit_dir:
    description: Where the release units are (C(<unit_dir>/<service>@<release>.service)).
    type: path
    default: /etc/systemd/system
notes:
  - Supports check mode - nothing runs in it.
  - The command runs with C(MemoryDenyWriteExecute=) and the unit's system call filter,
    as the app does; a tool that needs more (a JIT, a debugger) fails the same way there.
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Run a database migration in the live release
  service_exec:
    service: hello
    cmd: python -m app.migrate
    timeout: 600
  register: flipback_exec_result

- name: Only check that the host has a live release to run in
  service_exec:
    service: hello
    cmd: "true"
    run: false
"""

RETURN = r"""
service:
  description: The service.
  type: str
  returned: success
release:
  description: The live release the command ran in (or would run in).
  type: str
  returned: success
  sample: 20261129T141500-3f2a9c1d0e
user:
  description: The user the command ran as (the release's).
  type: str
  returned: success
group:
  description: The group the command ran as.
  type: str
  returned: success
cwd:
  description: Its working directory, the release's directory.
  type: str
  returned: success
ran:
  description: Whether the command was started.
  type: bool
  returned: success
unit:
  description: The transient unit it ran as (C(flipback-exec-<service>-<hex>.service)).
  type: str
  returned: success
exit_code:
  description: The command's exit code; null when it did not exit by itself.
  type: int
  returned: success
signal:
  description: The signal that ended it (C(KILL), C(SEGV) ...); null otherwise.
  type: str
  returned: success
result:
  description: How systemd says it ended (C(success), C(exit-code), C(signal), C(timeout),
    ...), or C(not run).
  type: str
  returned: success
failure:
  description: Why the command failed, as a sentence; null when it succeeded or did not run.
  type: str
  returned: success
  sample: the command exited with code 3
stdout:
  description: What the command wrote to stdout (at most 1 MiB).
  type: str
  returned: success
stderr:
  description: What the command wrote to stderr (at most 1 MiB), without systemd-run's
    own lines.
  type: str
  returned: success
truncated:
  description: Whether RV(stdout) or RV(stderr) was cut at 1 MiB.
  type: bool
  returned: success
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_exec import execute


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "cmd": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 300},
            "run": {"type": "bool", "default": True},
            "root_parent": {"type": "path", "default": "/srv"},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
        },
        supports_check_mode=True,
    )
    params = module.params

    def work() -> dict:
        run = params["run"] and not module.check_mode
        return execute(
            params["service"],
            params["cmd"],
            timeout=params["timeout"],
            run=run,
            check_mode=module.check_mode,
            systemd_run=module.get_bin_path("systemd-run", required=run) or "systemd-run",
            systemctl=module.get_bin_path("systemctl") or "systemctl",
            root_parent=params["root_parent"],
            unit_dir=params["unit_dir"],
        )

    respond(module, work)


if __name__ == "__main__":
    main()
