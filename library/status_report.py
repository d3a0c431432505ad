#!/usr/bin/python
"""Ansible module (controller): the fleet's status or history as a table, and as JSON."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: status_report
short_description: Render the status or history of flipback services across hosts
description:
  - With O(kind=status), takes each host's C(service_status) result and makes one row per
    service and host - current release and its age, previous good release, the systemd
    state of the current release's instance (and how many other instances are active),
    the probe of the public port (C(ok) and latency, C(FAIL) and why, and the answering
    release if it is not the current one), the releases on disk counted by status, and
    who holds the deploy lock since when.
  - With O(kind=history), takes each host's C(service_history) result and merges the
    events of every host by time, keeping the last O(last).
  - Problems (a host with no result, a service that could not be read, a failed probe)
    are listed under the table, one line each, starting with C(!).
  - With O(json_path), also writes a JSON object with C(kind) and C(hosts) (every host's
    full result, without C(invocation)) through a temporary file renamed over the target.
    Nothing else is written.
  - Runs on the controller.
options:
  kind:
    description: Which report to render.
    type: str
    choices: [status, history]
    default: status
  hosts:
    description: Host name to that host's registered C(service_status) (O(kind=status))
      or C(service_history) (O(kind=history)) result. A host whose result has no
      C(services) (it failed, or was unreachable) is named under the table.
    type: dict
    required: true
  last:
    description: With O(kind=history), how many events to show in all, at least 1.
    type: int
    default: 20
  json_path:
    description: Write O(hosts) as JSON to this file on the controller (its directory
      must exist). Not written in check mode.
    type: path
notes:
  - Supports check mode - the report is rendered; O(json_path) is not written.
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Render the status table
  status_report:
    hosts: >-
      {{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars)
      | map(attribute='flipback_host_status', default={}))) }}
    json_path: /tmp/status.json
  delegate_to: localhost
  run_once: true
  register: flipback_status_report

- name: Render the last 10 events of every host
  status_report:
    kind: history
    hosts: >-
      {{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars)
      | map(attribute='flipback_host_history', default={}))) }}
    last: 10
  delegate_to: localhost
  run_once: true
  register: flipback_history_report
"""

RETURN = r"""
table:
  description: The report as a fixed-width table (header, rule, one line per row), then
    the problems found, one C(!) line each.
  type: str
  returned: success
  sample: |-
    SERVICE  HOST       CURRENT                     AGE  PREVIOUS GOOD  INSTANCE        ...
    -------  ---------  --------------------------  ---  -------------  --------------  ...
    hello    sandbox-1  20261129T141500-3f2a9c1d0e  1h   -              active/running  ...
rows:
  description: The rows of the table. With O(kind=status) - C(service), C(host),
    C(current), C(age), C(previous_good), C(instance), C(health), C(releases), C(lock),
    as shown. With O(kind=history) - C(at), C(host), C(service), C(release), C(event),
    C(by), C(from), C(note) (the whole note).
  type: list
  elements: dict
  returned: success
problems:
  description: With O(kind=status), every problem found - a host without a result, a
    service with no release live on a host, hosts running different builds of a
    service, a part that could not be read, a failed probe - as listed under the table.
  type: list
  elements: str
  returned: with O(kind=status)
json_path:
  description: The JSON file written (or that would be, in check mode); null without
    O(json_path).
  type: str
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
from ansible.module_utils.flipback_status import history_report, status_report, write_json


def export(kind: str, hosts: dict) -> dict:
    """What the JSON file holds: each host's result without Ansible's echo of the arguments."""
    return {
        "kind": kind,
        "hosts": {
            host: {k: v for k, v in result.items() if k != "invocation"}
            if isinstance(result, dict)
            else result
            for host, result in hosts.items()
        },
    }


def run(params: dict, check_mode: bool) -> dict:
    if params["kind"] == "history":
        report = history_report(params["hosts"], params["last"])
    else:
        report = status_report(params["hosts"])
    changed = False
    if params["json_path"] and not check_mode:
        # The report file is the only thing this module writes; it says changed only when
        # the file's content changed.
        changed = write_json(params["json_path"], export(params["kind"], params["hosts"]))
    return {"changed": changed, "json_path": params["json_path"], **report}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "kind": {"type": "str", "choices": ["status", "history"], "default": "status"},
            "hosts": {"type": "dict", "required": True},
            "last": {"type": "int", "default": 20},
            "json_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    respond(module, lambda: run(module.params, module.check_mode))


if __name__ == "__main__":
    main()
