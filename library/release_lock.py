#!/usr/bin/python
"""Ansible module: the per-service lock that lets one deploy or rollback run at a time."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_lock
short_description: Take or give back the lock that lets one deploy or rollback of a flipback
  service run on a host at a time
description:
  - The lock is the file C(<root>/.lock), a JSON object naming its holder - the O(owner)
    fields, C(since) (ISO 8601 UTC), the C(pid) of the module, C(ttl) and C(expires) (epoch),
    C(refreshed) (epoch) and C(stale_after).
  - O(state=acquired) takes the lock for the run O(owner.run_id). A new lock is a complete
    temporary file hard-linked to C(.lock), so exactly one of two racing runs gets it. If
    another run holds it, the module polls every O(poll) seconds for up to O(wait) seconds,
    then fails with C(retryable=true), naming the holder (who, since when, which playbook,
    release and action) and returning it as RV(holder).
  - Acquiring again with the same O(owner.run_id) succeeds with C(changed=false) and only
    refreshes the lock (C(refreshed), C(pid)); the owner fields, C(since) and C(expires) stay
    as the first acquire wrote them. A run acquires at every step; that is its heartbeat.
  - The module process ends with each task, so a run that was killed (Ctrl-C, a lost
    controller) is detected by its silence - a lock not refreshed for the holder's
    O(stale_after) seconds, or older than the holder's O(ttl), is stale. The holder's values,
    recorded in the lock, decide, not the waiter's. The next acquire renames a stale lock to
    C(.lock.stale-<UTC time>) (the last three are kept, for forensics), takes the lock, and
    warns naming the old holder (RV(took_over)).
  - O(state=released) removes the lock if O(owner.run_id) holds it. A lock held by another
    run, or no lock at all, is left alone with C(changed=false) and no failure, so releasing
    is safe in C(rescue) and C(always) sections.
  - Every read-decide-write holds flock(2) on O(root) for a few milliseconds, so two runs
    cannot both judge a lock stale and both take it over. Local filesystems only.
  - Runs on the target host (Python standard library only). Check mode reads the lock and
    reports what a run would do (RV(outcome)), without writing, waiting or failing on a held
    lock.
notes:
  - Release the lock in an C(always) section so that it is given back when a step fails.
    Ctrl-C stops ansible-playbook before C(always) runs; the lock then goes stale after
    O(stale_after) seconds and the next run takes it over.
  - Choose O(stale_after) longer than the longest step between two acquires of a run.
options:
  service:
    description: Service name, a lowercase letter then up to 31 lowercase letters, digits,
      C(_) or C(-).
    type: str
    required: true
  root:
    description: Directory of the lock, created (mode C(0755)) if missing when the lock
      is acquired. Defaults to C(/run/lock/flipback/<service>) (a tmpfs, so a lock never
      outlives a reboot, and taking it changes nothing under C(/srv)).
    type: path
  state:
    description: Whether the run O(owner.run_id) should hold the lock.
    type: str
    choices: [acquired, released]
    default: acquired
  owner:
    description: The run taking or giving back the lock. Its fields are recorded in the lock
      and named in the message of a run that finds the lock held.
    type: dict
    required: true
    suboptions:
      run_id:
        description: An id unique to the ansible-playbook run, chosen by the playbook - e.g.
          the controller's host name, the ansible-playbook pid and its start time. Every
          acquire and the release of one run pass the same id.
        type: str
        required: true
      by:
        description: Who runs the playbook. Defaults to the C(SUDO_USER) or C(USER)
          environment variable of the module, else C(unknown).
        type: str
      playbook:
        description: The playbook running.
        type: str
      release:
        description: The release being deployed or rolled back to.
        type: str
      action:
        description: What the run does, e.g. C(deploy) or C(rollback).
        type: str
  wait:
    description: With O(state=acquired), seconds to wait for a lock held by another run
      before failing; C(0) fails at once. A stale lock is taken over without waiting.
    type: float
    default: 0
  poll:
    description: With O(state=acquired), seconds between two looks at a held lock.
    type: float
    default: 0.2
  ttl:
    description: With O(state=acquired), seconds after which this run's lock is stale
      however often it is refreshed, recorded in the lock as C(expires). Used for a lock
      that records none.
    type: int
    default: 1800
  stale_after:
    description: With O(state=acquired), seconds without a refresh after which this run
      counts as gone, recorded in the lock. Used for a lock that records none.
    type: int
    default: 120
  heartbeat:
    description: With O(state=acquired), whether this run refreshes the lock at every step.
      If false, C(stale_after) is recorded as null and the lock goes stale only after
      O(ttl).
    type: bool
    default: true
  gone_runs:
    description:
      - With O(state=acquired), run ids the caller knows are gone (e.g. the playbook
        checked on the controller that the holder's ansible-playbook process no longer
        exists, as after Ctrl-C). A lock held by one of them is taken over at once, with
        a warning, instead of waiting for O(stale_after).
    type: list
    elements: str
    default: []
author: flipback
"""

EXAMPLES = r"""
- name: Take the lock of shop for this deploy
  release_lock:
    service: shop
    owner:
      run_id: "{{ deploy_run_id }}"
      by: "{{ lookup('ansible.builtin.env', 'USER') }}"
      playbook: deploy.yml
      release: "{{ deploy_release_id }}"
      action: deploy
    wait: 60
  register: release_lock_taken

- name: Refresh the lock before the next step (the run's heartbeat)
  release_lock:
    service: shop
    owner:
      run_id: "{{ deploy_run_id }}"

- name: Give the lock back, also when a step failed
  release_lock:
    service: shop
    state: released
    owner:
      run_id: "{{ deploy_run_id }}"
"""

RETURN = r"""
outcome:
  description: What happened (in check mode, what would) - C(acquired) (the lock was free),
    C(refreshed) (this run held it already), C(took_over) (a stale lock was set aside),
    C(busy) (check mode only - another run holds it; a run would wait or fail),
    C(released), C(absent) (nothing to release) or C(held_by_other) (left alone on release).
  type: str
  returned: success
  sample: acquired
holder:
  description: The lock's content after the operation (in check mode, as it would be);
    null if there is no lock. On failure, the run that holds it.
  type: dict
  returned: success, or failure because another run holds the lock
  sample: {"service": "shop", "run_id": "ctl1-48211-20261129T141500Z", "by": "alice",
           "playbook": "deploy.yml", "release": "20261129T141500-3f2a9c1d0e",
           "action": "deploy", "since": "2026-11-29T14:15:00Z", "pid": 5123, "ttl": 1800,
           "expires": 1795962900.0, "refreshed": 1795961100.0, "stale_after": 120}
took_over:
  description: The stale lock that was taken over (in check mode, would be), as it read;
    null otherwise.
  type: dict
  returned: success
waited:
  description: Seconds spent waiting for the lock.
  type: float
  returned: success, or failure because another run holds the lock
path:
  description: The lock file (on failure, the file or directory that failed).
  type: str
  returned: success, or failure on the lock file
  sample: /run/lock/flipback/shop/.lock
msg:
  description: What happened, or why the lock could not be taken.
  type: str
  returned: always
  sample: "shop is locked by bob since 2026-11-29T14:15:00Z (playbook deploy.yml, release
    20261129T141500-3f2a9c1d0e, action deploy, run ctl1-48211-20261129T141500Z); waited 60 s
    (wait=60), expected the lock free; it goes stale at 2026-11-29T14:45:00Z (ttl) or if not
    refreshed by 2026-11-29T14:20:00Z. Retry when that run has finished"
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed (true when the
    lock is held by another run).
  type: bool
  returned: failure
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_lock import OWNER_OPTIONS, ServiceLock


def run(params: dict, check_mode: bool) -> dict:
    lock = ServiceLock(params["service"], params["root"])
    if params["state"] == "released":
        return lock.release(params["owner"], check_mode=check_mode)
    return lock.acquire(
        params["owner"],
        wait=params["wait"],
        ttl=params["ttl"],
        stale_after=params["stale_after"],
        heartbeat=params["heartbeat"],
        poll=params["poll"],
        gone_runs=params["gone_runs"],
        check_mode=check_mode,
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "owner": {"type": "dict", "required": True, "options": OWNER_OPTIONS},
            "wait": {"type": "float", "default": 0},
            "poll": {"type": "float", "default": 0.2},
            "ttl": {"type": "int", "default": 1800},
            "stale_after": {"type": "int", "default": 120},
            "heartbeat": {"type": "bool", "default": True},
            "gone_runs": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    respond(module, lambda: run(module.params, module.check_mode))


if __name__ == "__main__":
    main()
