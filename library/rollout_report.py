"""Documentation only: one report of a rollout, host by host.

The action plugin of the same name (plugins/action/rollout_report.py) does the work on the
controller, in-process; no run executes this file as a module. ansible-doc reads
DOCUMENTATION, EXAMPLES and RETURN from here, as ansible-core's own debug and set_fact.
"""

DOCUMENTATION = r"""
---
module: rollout_report
short_description: Report a deploy or rollback host by host, and fail it if it stopped
description:
  - The last task of a deploy or a rollback (the flipback role's finish step). From what
    each host noted during the run (staged, switched, failed and why, not switched because
    the rollout stopped, restored), prints one line per host and service, with the names
    of the configuration changes each release brought (never their values).
  - Checks that every host that switched runs the release worked out for it (its build
    with this host's configuration), and fails when the rollout stopped or a host did not
    report. Runs on the controller; changes nothing.
options:
  action:
    description: What the run was, the first word of the report (C(deploy), C(rollback)).
    type: str
    default: deploy
  hosts:
    description: Every host of the run, so that one that never reported is named too.
    type: list
    elements: str
    required: true
  rollout:
    description: Per host, per service, what the host noted (C(outcome), C(release),
      C(previous), C(current), C(error), C(config_changes)).
    type: dict
    default: {}
  restored:
    description: Per host, the results of putting its services back after a stopped
      rollout (each with C(_flipback_item.name)).
    type: dict
    default: {}
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Report the rollout, host by host (fails if it stopped)
  rollout_report:
    action: deploy
    hosts: "{{ ansible_play_hosts_all }}"
    rollout: >-
      {{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all
      | map('extract', hostvars) | map(attribute='flipback_rollout', default={}))) }}
  run_once: true
"""

RETURN = r"""
report:
  description: One row per host and service - host, service, outcome, ok, config_changes.
  type: list
  elements: dict
  returned: always
lines:
  description: The report as text, one line per row.
  type: list
  elements: str
  returned: always
problems:
  description: Every problem found (a failed gate, a restore that failed, a host that
    runs another release than worked out for it, a host that did not report).
  type: list
  elements: str
  returned: always
elapsed:
  description: Seconds the report took.
  type: float
  returned: always
"""
