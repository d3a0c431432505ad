"""Documentation only: check service definitions and selectors before any change.

The action plugin of the same name (plugins/action/service_config.py) does the work on the
controller, in-process; no run executes this file as a module. ansible-doc reads
DOCUMENTATION, EXAMPLES and RETURN from here, as ansible-core's own debug and set_fact.
"""

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
author: flipback (!UNKNOWN)
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
ansible_facts:
  description: C(flipback_rollout), empty - every run starts its rollout state afresh
    (the flipback role notes each host's steps in it with rollout_note and the release
    action).
  type: dict
  returned: success
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
