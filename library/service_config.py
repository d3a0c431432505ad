#!/usr/bin/python
"""Ansible module (controller): check service definitions and selectors before any change."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_config
short_description: Validate flipback service definitions and command-line selectors
description:
  - Checks every service definition (name, source, subdir, ref, app, port, workers,
    health, env, keep_releases, user, adopt_user), that names, ports and users are unique, and the
    selectors given on the command line (service, ref, source, release, steps).
  - Reports every problem at once, each naming the field, the value received and what
    was expected; values of C(env) are never echoed (they may be secrets).
  - Returns the selected services with defaults filled in. Changes nothing; runs in
    check mode.
options:
  services:
    description: The service definitions (C(flipback_services)).
    type: raw
    required: true
  service:
    description: Only this service (C(-e service=)); not given for all. Given empty, refused.
    type: str
  ref:
    description: Override every selected service's ref (C(-e ref=)); given empty, refused.
    type: str
  source:
    description:
      - Override every selected service's source repository (C(-e source=)); given
        empty, or starting with C(-), refused. Returned without credentials.
    type: str
  release:
    description: A release id to roll back to (C(-e release=)); given empty, refused.
    type: str
  steps:
    description: Roll back this many good releases (C(-e steps=)), an integer >= 1.
    type: raw
  canary:
    description: Hosts in the canary batch (C(-e canary=)), an integer >= 0; default 1.
    type: raw
  batch:
    description: Hosts per batch after the canary (C(-e batch=)), N >= 1 or N% (1-100);
      default C(100%).
    type: raw
  lock_wait:
    description: Seconds a run waits for the deploy lock (C(-e lock_wait=)), 0-3600,
      fractions allowed; default 0.
    type: raw
author: flipback
"""

EXAMPLES = r"""
- name: Check the service definitions and the request
  service_config:
    services: "{{ flipback_services }}"
    service: "{{ service | default('') }}"
  delegate_to: localhost
  run_once: true
  register: deploy_request
"""

RETURN = r"""
services:
  description: Selected services, defaults filled in, overrides applied; C(env) is
    replaced by C(env_names) (values may be secrets).
  type: list
  elements: dict
  returned: success
canary:
  description: Hosts in the canary batch, checked.
  type: int
  returned: success
batch:
  description: Hosts per batch after the canary, checked (C(N) or C(N%)).
  type: str
  returned: success
lock_wait:
  description: Seconds to wait for the deploy lock, checked.
  type: float
  returned: success
names:
  description: Names of the selected services.
  type: list
  elements: str
  returned: success
problems:
  description: Every problem found.
  type: list
  elements: str
  returned: failure
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Always false - invalid input fails the same way until it is fixed.
  type: bool
  returned: failure
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_config import (
    ARGUMENT_SPEC,
    ConfigError,
    check_params,
    invocation,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    started = time.monotonic()
    params = module.params
    # Ansible echoes the module's arguments as `invocation`; the env values in them may
    # be secrets, so they are echoed hidden.
    echoed = invocation(params)
    try:
        result = check_params(params)
    except ConfigError as exc:
        module.fail_json(
            msg=exc.msg,
            problems=exc.problems,
            retryable=False,
            elapsed=round(time.monotonic() - started, 3),
            invocation=echoed,
        )
    module.exit_json(
        changed=False,
        elapsed=round(time.monotonic() - started, 3),
        invocation=echoed,
        **result,
    )


if __name__ == "__main__":
    main()
