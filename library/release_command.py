#!/usr/bin/python
"""Ansible module: run the commands a release declares for one point of a deploy."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_command
short_description: Run a staged release's commands for one point of a deploy
description:
  - Runs, one after the other, the commands the release O(release) of O(service) declares
    for O(point) (its manifest's C(config.commands), written at staging from the
    service definition's C(commands)), and stops at the first that fails.
  - Each runs in the release's environment as a transient systemd unit (C(systemd-run
    --wait --pipe)) - the release's user, its env file, its directory as the working
    directory, its venv first on C(PATH), C(FLIPBACK_RELEASE) set, the service's
    C(shared/) writable and the rest of the system read-only - and is stopped at its
    timeout.
  - Each command's exit code, duration and output (its last 4000 characters) are
    appended to the history (event C(command)) and to the manifest (C(commands_run)).
  - A failure names the command, the release, the exit code (or the timeout) and the last
    lines of its output; retrying as-is fails the same way (RV(retryable) is false).
  - Check mode lists the commands that would run and runs none.
  - Runs on the target host, as root; Python standard library only.
options:
  service:
    description: Service name.
    type: str
    required: true
  root:
    description: The service's home; default C(/srv/<service>).
    type: path
  release:
    description: The staged release whose commands run.
    type: str
    required: true
  point:
    description:
      - V(before_switch_once) - once per rollout, on one host, after every host has staged
        and before any host switches (database migrations).
      - V(before_switch) - on every host, before any host switches.
      - V(after_switch) - on every host, right after its switch.
    type: str
    required: true
    choices: [before_switch_once, before_switch, after_switch]
  by:
    description: Who runs the deploy, for the history.
    type: str
    default: unknown
  run_id:
    description: The run this belongs to, for the history.
    type: str
author:
  - flipback
"""

EXAMPLES = r"""
- name: Migrate the database once, before any host switches
  release_command:
    service: shop
    release: 20261202T101500-3f2a9c1d0e
    point: before_switch_once
"""

RETURN = r"""
point:
  description: The point whose commands ran.
  type: str
  returned: always
release:
  description: The release whose commands ran.
  type: str
  returned: always
commands:
  description: Each command that ran (in check mode, that would run) with its exit code
    C(rc), C(seconds), C(timed_out) and C(output) (its last 4000 characters).
  type: list
  elements: dict
  returned: always
  sample: [{"run": "python manage.py migrate --noinput", "rc": 0, "seconds": 2.4,
            "timed_out": false, "output": "Operations to perform: ..."}]
msg:
  description: What ran, in one line.
  type: str
  returned: always
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_command import POINTS, ReleaseCommands
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_release import validate_release_id, validate_service
from ansible.module_utils.flipback_runtime import home_of


def run(params: dict, check_mode: bool) -> dict:
    service = validate_service(params["service"])
    release = validate_release_id(params["release"])
    return ReleaseCommands(
        service,
        home_of(params["root"] or "", service),
        release,
        params["point"],
        by=params["by"],
        run_id=params["run_id"],
    ).run(check_mode=check_mode)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "release": {"type": "str", "required": True},
            "point": {"type": "str", "required": True, "choices": list(POINTS)},
            "by": {"type": "str", "default": "unknown"},
            "run_id": {"type": "str"},
        },
        supports_check_mode=True,
    )
    respond(module, lambda: run(module.params, module.check_mode))


if __name__ == "__main__":
    main()
