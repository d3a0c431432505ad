#!/usr/bin/python
"""Ansible module: the first round trip of a deploy on one host (see flipback_prepare)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_prepare
short_description: Take the deploy lock and get a host ready for a release, in one call
description:
  - Takes the service's deploy lock (or fails naming its holder), makes sure the
    service user and its directories are there, and reports whether the release is
    staged and live.
  - Writes no unit, env file or nginx site - each release carries its own unit and env
    file, staged with its code by release_stage, and its site (its port) is put in
    place by release_switch after its gate - so nothing it writes changes how the live
    release starts or serves.
  - Reports how the release's configuration differs from the live release's
    (C(config_changes); env values are compared on the host and never shown).
  - When the release is already current, running, enabled, alone (apart from the
    standby) and answering through the public port, returns C(noop=true) and gives
    the lock back in the same call.
  - Check mode reports what would change; the lock is
    only looked at.
options:
  service:
    description: Service name.
    type: str
    required: true
  root:
    description: Service root; default C(/srv/<service>).
    type: path
  user:
    description:
      - System user the service runs as, created if missing (home C(<root>/shared), a
        primary group of its own name).
      - An existing account is refused (before any directory is made) unless flipback
        made it for this service (that home, a group of its own) or C(adopt_user) is
        set, as the release's env file is readable by the user's primary group.
    type: str
    required: true
  adopt_user:
    description:
      - Take an existing account flipback did not create, made for this service. Its
        primary group must still be its own (named like the user, never C(nogroup),
        C(users) or another account's group) with no other members in C(/etc/group).
    type: bool
    default: false
  release:
    description: Release this run deploys.
    type: str
    required: true
  config:
    description: How the release runs, as release_config returned it.
    type: dict
    default: {}
  env_file:
    description: The release's env file (C(flipback_env_file) filter); only compared
      with the live release's, never written here, never shown.
    type: str
    default: ""
  standby:
    description: Whether the previous good release's instance may keep running.
    type: bool
    default: true
  deps_key:
    description: Key of the release's wheels (from release_build), to find a venv to reuse.
    type: str
    default: ""
author: flipback
extends_documentation_fragment:
  - flipback_health
  - flipback_lock
"""

EXAMPLES = r"""
- name: Get the host ready for hello's new release
  release_prepare:
    service: hello
    user: hello
    release: 20261129T141500-3f2a9c1d0e
    config: "{{ hello_release.config }}"
    env_file: "{{ {'HELLO_GREETING': 'hi'} | flipback_env_file('hello') }}"
    port: 8000
    lock_owner: {run_id: "ctl:1234:1764425700"}
"""

RETURN = r"""
release:
  description: The release this run deploys.
  type: str
  returned: success
config_changes:
  description: How the release's configuration differs from the live release's, e.g.
    C(workers 1 -> 2), C(HELLO_GREETING) (value changed), C(+DJANGO_DEBUG), C(-OLD);
    env values are never shown. Empty when nothing differs or nothing is live.
  type: list
  elements: str
  returned: success
current:
  description: Release C(current) points at; null if none.
  type: str
  returned: success
staged:
  description: Whether the release is already staged on the host.
  type: bool
  returned: success
venv_donor:
  description: A staged release whose venv has the same wheels (the release can be staged
    from the code-only artifact, without an upload); null if none or already staged.
  type: str
  returned: success
warmed:
  description: Whether the instance of an already staged release runs for this switch -
    started by the call (not waiting for it), so the switch finds it warm, or left
    running by a run that stopped before its end. The warm standby is not. If the
    switch does not happen, the run stops it.
  type: bool
  returned: success
noop:
  description: Whether the release is already live here (the lock was given back).
  type: bool
  returned: success
release_runs:
  description: The runs (lock owners' C(run_id)) that wrote an event of the release here,
    and the deploy run whose lock this call took over. A deploy that stops compares them
    across the fleet.
  type: list
  elements: str
  returned: success
live:
  description: When the release is already current here, the run that put it live
    (C(run)) and the release it replaced (C(from)); null otherwise.
  type: dict
  returned: success
changes:
  description: What was (or would be) changed - the user, directories.
  type: list
  elements: str
  returned: success
lock:
  description: Outcome of taking the lock (outcome, holder, took_over, waited).
  type: dict
  returned: success
holder:
  description: Holder of the busy lock.
  type: dict
  returned: when the lock is busy
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
from ansible.module_utils.flipback_health import PUBLIC_HEALTH_ARGUMENTS, public_health
from ansible.module_utils.flipback_lock import LOCK_ARGUMENTS, lock_request
from ansible.module_utils.flipback_prepare import Prepare, PrepareSpec


def spec_from(params: dict) -> PrepareSpec:
    service = params["service"]
    return PrepareSpec(
        service=service,
        root=params["root"] or f"/srv/{service}",
        user=params["user"],
        adopt_user=params["adopt_user"],
        release=params["release"],
        lock=lock_request(params),
        **public_health(params),
        standby=params["standby"],
        deps_key=params["deps_key"],
        config=params["config"],
        env_text=params["env_file"],
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "user": {"type": "str", "required": True},
            "adopt_user": {"type": "bool", "default": False},
            "release": {"type": "str", "required": True},
            "config": {"type": "dict", "default": {}},
            "env_file": {"type": "str", "default": "", "no_log": True},
            **LOCK_ARGUMENTS,
            **PUBLIC_HEALTH_ARGUMENTS,
            "standby": {"type": "bool", "default": True},
            "deps_key": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )

    respond(module, lambda: Prepare(spec_from(module.params)).prepare(module.check_mode))


if __name__ == "__main__":
    main()
