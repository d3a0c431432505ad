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
    new instance, keeps the previous good release running as the warm standby (see
    O(standby)) and retires other instances after O(drain_seconds).
  - If a gate fails, the switch is undone before the module fails - C(current) back on
    the release that was serving (removed if there was none), the new instance stopped
    (even one already running, warmed by staging), the release recorded as failed - and
    the error names the gate and carries the instance's last journal lines (led by the
    last Python exception line when the traceback's end had already scrolled past them).
  - With O(lock_owner), the service's deploy lock is taken first (or refreshed by the
    run that holds it) and given back when the call ends, even when it fails.
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
    description:
      - The staged release to switch to.
      - With O(action=rollback) it may be left empty; the target is then the good
        release O(steps) back (a failure, with nothing changed, if there is none).
    type: str
    default: ""
  steps:
    description: Rollback without O(release) - how many good releases back.
    type: int
    default: 1
  standby:
    description:
      - Keep the previous good release's instance running (not enabled) as the warm
        standby, so a rollback to it starts nothing.
    type: bool
    default: true
  keep_releases:
    description: Deploy - prune down to this many good releases after the switch (0 - none).
    type: int
    default: 0
  action:
    description: What the switch is part of (recorded, and names the failure).
    type: str
    default: deploy
    choices: [deploy, rollback]
  health_timeout:
    description: Seconds each gate may take.
    type: float
    default: 30
  unhealthy_answers:
    description:
      - A gate gives up after this many unhealthy answers in a row (502, 503 and 504,
        which say the app is starting, are waited for until O(health_timeout)). A gate
        also gives up at once when the instance exits, or when an answer of the expected
        status lacks the JSON fields the app itself answers.
    type: int
    default: 10
  drain_seconds:
    description:
      - Seconds an instance being retired keeps running after the flip; a timer on the
        host stops it, so the call does not wait.
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
extends_documentation_fragment:
  - flipback_health
  - flipback_lock
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
current:
  description: The release C(current) points at after the call.
  type: str
  returned: success
steps:
  description: What the switch did, in order.
  type: list
  elements: str
  returned: success
undone:
  description: What was undone after a failed gate.
  type: list
  elements: str
  returned: when a gate failed
diff:
  description: The flip of C(current), in diff mode.
  type: dict
  returned: in diff mode
previous:
  description: The release that was current before.
  type: str
  returned: always
started:
  description: Instance started (or that would be, in check mode); null if none.
  type: str
  returned: always
stopped:
  description: Instances retired after the drain (or that would be); null if none.
  type: str
  returned: always
standby:
  description: Release whose instance keeps running as the warm standby; null if none.
  type: str
  returned: always
reason:
  description: Rollback - why this target was chosen.
  type: str
  returned: always
pruned:
  description: Releases pruned after the switch (in check mode, those that would be).
  type: list
  elements: str
  returned: when a deploy prunes
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
field:
  description: The parameter that was refused.
  type: str
  returned: when a parameter was refused
value:
  description: The value that was refused.
  type: str
  returned: when a parameter was refused
expected:
  description: What the refused parameter should have been.
  type: str
  returned: when a parameter was refused
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_health import (
    DEFAULT_UNHEALTHY_ANSWERS,
    PUBLIC_HEALTH_ARGUMENTS,
    public_health,
)
from ansible.module_utils.flipback_lock import LOCK_ARGUMENTS, ServiceLock, lock_request
from ansible.module_utils.flipback_switch import Switch, SwitchSpec


def run(spec: SwitchSpec, params: dict, check_mode: bool, warn) -> dict:
    """The switch under the service's deploy lock, given back however the switch ends."""
    request = lock_request(params)
    if request is None:
        return Switch(spec).switch(check_mode)
    lock = ServiceLock(spec.service)
    taken = lock.take(request, check_mode=check_mode)
    for warning in taken.pop("warnings", []):
        warn(warning)
    try:
        return Switch(spec).switch(check_mode)
    finally:
        if not check_mode:
            lock.release(request["owner"])


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "release": {"type": "str", "default": ""},
            "steps": {"type": "int", "default": 1},
            "standby": {"type": "bool", "default": True},
            "keep_releases": {"type": "int", "default": 0},
            **LOCK_ARGUMENTS,
            "action": {"type": "str", "default": "deploy", "choices": ["deploy", "rollback"]},
            **PUBLIC_HEALTH_ARGUMENTS,
            "health_timeout": {"type": "float", "default": 30},
            "unhealthy_answers": {"type": "int", "default": DEFAULT_UNHEALTHY_ANSWERS},
            "drain_seconds": {"type": "float", "default": 1},
            "socket_dir": {"type": "path"},
            "by": {"type": "str", "default": "unknown"},
            "note": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    service = params["service"]
    spec = SwitchSpec(
        service=service,
        root=params["root"] or f"/srv/{service}",
        release=params["release"],
        action=params["action"],
        **public_health(params),
        health_timeout=params["health_timeout"],
        unhealthy_answers=params["unhealthy_answers"],
        drain_seconds=params["drain_seconds"],
        socket_dir=params["socket_dir"] or f"/run/flipback-{service}",
        by=params["by"],
        note=params["note"],
        run_id=(params["lock_owner"] or {}).get("run_id"),
        steps=params["steps"],
        standby=params["standby"],
        keep_releases=params["keep_releases"],
    )

    def work() -> dict:
        result = run(spec, params, module.check_mode, module.warn)
        if not module._diff:
            result.pop("diff", None)
        return result

    respond(module, work)


if __name__ == "__main__":
    main()
