#!/usr/bin/python
"""Ansible module: the status of every flipback service on a host, in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_status
short_description: Report the releases, instances, health and lock of flipback services on a host
description:
  - Reads, for every service in O(services), in one module call (one round trip per host)
    - the release C(current) points at and the previous good release;
    - every release on disk with its status (from history, as module C(release) derives
      it), its age and its last history event;
    - the systemd state of each release's instance C(<service>@<release>.service), from
      one C(systemctl show) call for the units of every service;
    - one probe of the public port, C(GET http://127.0.0.1:<port><health.path>), with no
      retry and a short timeout (a report shows the present, it does not wait);
    - the holder of the service's deploy lock, if it is held.
  - A service that is not on the host yet (no C(<root_parent>/<name>)) is reported with
    no current release, no releases, no probe and no error.
  - A service whose files cannot be read (a broken C(current) link, a corrupt history
    line) is reported with RV(services[].error); the other services are still reported.
  - Read-only - never reports a change, and runs in check mode.
  - Runs on the host; Python standard library only.
options:
  services:
    description:
      - The services to report - the RV(services) returned by module C(service_config).
        Each needs C(name), C(port) and C(health) (C(path), C(expect_status),
        C(expect_json)); other keys are ignored.
    type: list
    elements: dict
    required: true
  root_parent:
    description: Parent of every service's root (C(<root_parent>/<name>)).
    type: path
    default: /srv
  lock_dir:
    description: Parent of every service's lock directory (C(<lock_dir>/<name>/.lock)).
    type: path
    default: /run/lock/flipback
  probe_timeout:
    description: Seconds the probe of each public port may take (above 0, at most 60).
    type: float
    default: 3
notes:
  - Supports check mode - it only reads.
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read the status of every service on each host
  service_status:
    services: "{{ flipback_request.services }}"
  register: flipback_host_status
"""

RETURN = r"""
services:
  description: One entry per service, in the order of O(services).
  type: list
  elements: dict
  returned: success
  contains:
    name: {description: The service., type: str}
    port: {description: Its public port., type: int}
    deployed: {description: Whether C(<root_parent>/<name>) exists., type: bool}
    current: {description: The release C(current) points at; null if none., type: str}
    previous_good: {description: The previous good release; null if none., type: str}
    releases:
      description: Releases on disk, by id - C(id), C(status), C(age_seconds),
        C(last_event) (C(event), C(at), and C(by), C(note) when recorded).
      type: list
      elements: dict
    instances:
      description: Per release on disk - C(release), C(unit), C(active_state),
        C(sub_state), C(unit_file_state) (null where systemd reported nothing).
      type: list
      elements: dict
    health:
      description: The probe of the public port - C(ok), C(status) (null without an
        answer), C(release) (the C(release) field of the answer), C(latency_ms),
        C(error) (what was wrong, null if ok); null if the service is not deployed.
      type: dict
    lock:
      description: The lock file's content (C(by), C(since), C(playbook), C(release),
        C(action), C(run_id), ...); null if the service is not locked.
      type: dict
    error:
      description: Why part of the service could not be read; null if all of it was.
      type: str
    build:
      description: The build (code and wheels) the live release is made of; hosts whose
        configuration differs run different release ids of one build. Null if nothing is
        live or the release was staged before releases recorded it.
      type: str
    config:
      description: How the live release runs, from its manifest (C(app), C(factory),
        C(workers), C(user), C(env_names), C(env_digest), C(unit_sha256)); never env
        values; null if nothing is live or the release was staged before releases carried it.
      type: dict
    config_changes:
      description: What the live release's configuration changed from the previous good
        release's (C(NAME), C(+NAME), C(-NAME), C(workers 1 -> 2)); null when either
        configuration is unknown.
      type: list
      elements: str
  sample:
    - name: hello
      port: 8000
      deployed: true
      current: 20261129T141500-3f2a9c1d0e
      previous_good: 20261128T090000-0a1b2c3d4e
      releases:
        - id: 20261129T141500-3f2a9c1d0e
          status: active
          age_seconds: 3600
          last_event: {event: active, at: "2026-11-29T14:21:00Z", by: alice}
      instances:
        - release: 20261129T141500-3f2a9c1d0e
          unit: hello@20261129T141500-3f2a9c1d0e.service
          active_state: active
          sub_state: running
          unit_file_state: enabled
      health: {ok: true, status: 200, release: 20261129T141500-3f2a9c1d0e,
               latency_ms: 3.1, error: null}
      lock: null
      error: null
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
from ansible.module_utils.flipback_status import host_status


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "required": True},
            "root_parent": {"type": "path", "default": "/srv"},
            "lock_dir": {"type": "path", "default": "/run/lock/flipback"},
            "probe_timeout": {"type": "float", "default": 3},
        },
        supports_check_mode=True,
    )
    params = module.params

    def run(argv: list[str]) -> tuple[int, str, str]:
        return module.run_command(argv, environ_update={"LC_ALL": "C", "SYSTEMD_PAGER": ""})

    def work() -> dict:
        services = host_status(
            params["services"],
            run=run,
            systemctl=module.get_bin_path("systemctl"),
            root_parent=params["root_parent"],
            lock_dir=params["lock_dir"],
            probe_timeout=params["probe_timeout"],
        )
        return {"changed": False, "services": services}

    respond(module, work)


if __name__ == "__main__":
    main()
