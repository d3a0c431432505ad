#!/usr/bin/python
"""Ansible module: the last history events of flipback services on a host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_history
short_description: Report the last history events of flipback services on a host
description:
  - Reads C(<root_parent>/<name>/history.jsonl) of every service in O(services) and
    returns its last O(last) events, newest last.
  - A service that is not on the host yet has no events and no error; a history that
    cannot be read is reported in the C(error) of its entry of RV(services), and the
    other services are still reported.
  - Read-only - never reports a change, and runs in check mode.
  - Runs on the host; Python standard library only.
options:
  services:
    description: Names of the services (the C(names) returned by module C(service_config)).
    type: list
    elements: str
    required: true
  last:
    description: How many events to return per service, at least 1.
    type: int
    default: 20
  root_parent:
    description: Parent of every service's root (C(<root_parent>/<name>)).
    type: path
    default: /srv
notes:
  - Supports check mode - it only reads.
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read the last ten events of each service on each host
  service_history:
    services: "{{ flipback_request.names }}"
    last: 10
  register: flipback_host_history
"""

RETURN = r"""
services:
  description: One entry per service, in the order of O(services) - C(name), C(events)
    (each C(at), C(release), C(event), C(by), C(from), C(note); oldest first), C(total)
    (events in the whole history) and C(error) (null if the history was read).
  type: list
  elements: dict
  returned: success
  sample:
    - name: hello
      total: 12
      error: null
      events:
        - {at: "2026-11-29T14:21:00Z", release: 20261129T141500-3f2a9c1d0e, event: active,
           by: alice, from: 20261128T090000-0a1b2c3d4e, note: "deploy of v2"}
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
from ansible.module_utils.flipback_status import host_history


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "str", "required": True},
            "last": {"type": "int", "default": 20},
            "root_parent": {"type": "path", "default": "/srv"},
        },
        supports_check_mode=True,
    )
    params = module.params

    def work() -> dict:
        services = host_history(
            params["services"], last=params["last"], root_parent=params["root_parent"]
        )
        return {"changed": False, "services": services}

    respond(module, work)


if __name__ == "__main__":
    main()
