#!/usr/bin/python
"""Ansible module (host): switch a service to a staged release in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_switch
short_description: Start, gate, flip, verify and retire - a flipback release switch in one call
description:
  - Starts C(<service>@<release>), probes it on its private socket (Gate 1), points
    C(current) at it with rename(2) (which moves live traffic), probes the public port
    until O(public_successes) answers in a row name the release (Gate 2), enables the
    new instance, and stops the previous one after O(drain_seconds).
  - If a gate fails, the switch is undone before the module fails - C(current) back on
    the release that was serving (removed if there was none), the new instance stopped
    unless it was already running, the release recorded as failed - and the error names
    the gate and carries the instance's last journal lines.
  - When the release is already current, makes sure its instance runs, is enabled and
    answers; C(changed=false) if it did.
  - With O(action=rollback), the release left is recorded as C(rolled_back).
  - Check mode reports the flip as a diff and the instances that would start and stop.
options:
  service:
    description: Service name.
    type: str
    required: true
  root:
    description: Service root; default C(/srv/<service>).
    type: path
  release:
    description: The staged release to switch to.
    type: str
    required: true
  action:
    description: What the switch is part of (recorded, and names the failure).
    type: str
    default: deploy
    choices: [deploy, rollback]
  port:
    description: Public port (nginx) of the service.
    type: int
    required: true
  health_path:
    description: Health URL path.
    type: str
    default: /health
  expect_status:
    description: Status codes a healthy answer has.
    type: list
    elements: int
    default: [200]
  expect_json:
    description: JSON fields a healthy answer has; C(release) is always added.
    type: dict
    default: {}
  health_timeout:
    description: Seconds each gate may take.
    type: float
    default: 30
  public_successes:
    description: Answers in a row Gate 2 needs.
    type: int
    default: 3
  drain_seconds:
    description: Seconds the old instance keeps running after the flip.
    type: float
    default: 1
  socket_dir:
    description: Directory of the C(<release>/app.sock) sockets; default C(/run/flipback-<service>).
    type: path
  by:
    description: Who switches (recorded in the history).
    type: str
    default: unknown
  note:
    description: Note recorded with the C(active) event.
    type: str
    default: ""
author: flipback
"""

EXAMPLES = r"""
- name: Switch hello to its new release
  release_switch:
    service: hello
    release: 20261129T141500-3f2a9c1d0e
    port: 8000
    expect_json: {ok: true}
"""

RETURN = r"""
release:
  description: The release switched to.
  type: str
  returned: always
previous:
  description: The release that was current before.
  type: str
  returned: always
started:
  description: Instance started (or that would be, in check mode); null if none.
  type: str
  returned: always
stopped:
  description: Instance stopped after the drain (or that would be); null if none.
  type: str
  returned: always
timings:
  description: Seconds each gate took.
  type: dict
  returned: when changed
gate:
  description: The gate that failed.
  type: str
  returned: failure
journal:
  description: Last journal lines of the failing instance.
  type: list
  elements: str
  returned: failure
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_release import ReleaseError
from ansible.module_utils.flipback_switch import Switch, SwitchSpec


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "release": {"type": "str", "required": True},
            "action": {"type": "str", "default": "deploy", "choices": ["deploy", "rollback"]},
            "port": {"type": "int", "required": True},
            "health_path": {"type": "str", "default": "/health"},
            "expect_status": {"type": "list", "elements": "int", "default": [200]},
            "expect_json": {"type": "dict", "default": {}},
            "health_timeout": {"type": "float", "default": 30},
            "public_successes": {"type": "int", "default": 3},
            "drain_seconds": {"type": "float", "default": 1},
            "socket_dir": {"type": "path"},
            "by": {"type": "str", "default": "unknown"},
            "note": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    started = time.monotonic()
    params = module.params
    service = params["service"]
    spec = SwitchSpec(
        service=service,
        root=params["root"] or f"/srv/{service}",
        release=params["release"],
        action=params["action"],
        port=params["port"],
        health_path=params["health_path"],
        expect_status=tuple(params["expect_status"]),
        expect_json=params["expect_json"],
        health_timeout=params["health_timeout"],
        public_successes=params["public_successes"],
        drain_seconds=params["drain_seconds"],
        socket_dir=params["socket_dir"] or f"/run/flipback-{service}",
        by=params["by"],
        note=params["note"],
    )
    try:
        result = Switch(spec).switch(module.check_mode)
    except ReleaseError as exc:
        module.fail_json(
            msg=exc.msg,
            retryable=exc.retryable,
            elapsed=round(time.monotonic() - started, 3),
            **exc.details,
        )
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(elapsed=round(time.monotonic() - started, 3), **result)


if __name__ == "__main__":
    main()
