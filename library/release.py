#!/usr/bin/python
"""Ansible module: the releases of one service on a host (list, activate, record, target, prune)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: List, activate, record, choose and prune the releases of a flipback service
description:
  - Works on the release tree of one service under O(root) - C(releases/<id>/) with a
    C(manifest.json), the C(current) symlink and the append-only C(history.jsonl).
  - A release's status comes from history (its last event), not from mtimes or id order -
    C(staged) (complete, never active), C(active) (C(current) points at it), C(good) (was
    active, then replaced), C(failed), C(rolled_back) (rolled away from; not a rollback
    target), C(incomplete) (manifest missing, unreadable or still C(staging)).
  - The previous good release is the most recently active (by history) good release other
    than the current one.
  - O(action=list) reports every release. Read-only.
  - O(action=activate) points C(current) at O(release) with rename(2) of a temporary link
    C(current.tmp-<pid>), so C(current) is never missing, and appends an C(active) event.
    C(changed=false) if it is already current. Supports diff mode.
  - O(action=record) appends an event for O(release) (a failed gate, a rollback, ...).
  - O(action=target) chooses a rollback target - the named O(release), or the O(steps)-th
    previous good release. Read-only.
  - O(action=prune) keeps the O(keep) most recently active good releases, and never removes
    the current one, the previous good one, or one whose C(.staging-lock) names a live
    process. Staged releases are removed only if they were staged before the current one
    went live; failed, rolled back and incomplete ones are removed.
  - Runs on the target host (Python standard library only). Check mode reports what would
    change.
options:
  action:
    description: Which operation to run.
    type: str
    required: true
    choices: [list, activate, record, target, prune]
  service:
    description: Service name, a lowercase letter then up to 31 lowercase letters, digits,
      C(_) or C(-).
    type: str
    required: true
  root:
    description: The service's directory. Defaults to C(/srv/<service>).
    type: path
  release:
    description:
      - Release id, like C(20261129T141500-3f2a9c1d0e).
      - Required with O(action=activate) and O(action=record); with O(action=target), the
        release to roll back to (instead of O(steps)).
    type: str
  event:
    description: Event to record, with O(action=record) (C(active) is written only by
      O(action=activate), which also flips C(current)).
    type: str
    choices: [staged, failed, rolled_back, pruned]
  note:
    description: Free text kept in the history event (O(action=activate), O(action=record),
      O(action=prune)).
    type: str
  by:
    description: Who made the change, kept in the history event. Defaults to the
      C(SUDO_USER) or C(USER) environment variable of the module, else C(unknown).
    type: str
  run_id:
    description: The deploy or rollback run making the change (its lock owner's C(run_id)),
      kept in the history event.
    type: str
  steps:
    description: With O(action=target), how many good releases to go back (1 = the previous
      good release). Defaults to 1.
    type: int
  keep:
    description: With O(action=prune), how many good releases (the current one included) to
      keep, at least 1.
    type: int
author: flipback
"""

EXAMPLES = r"""
- name: List the releases of shop
  release:
    action: list
    service: shop
  register: release_list

- name: Make the staged release live
  release:
    action: activate
    service: shop
    release: "{{ deploy_release_id }}"
    note: "deploy of {{ deploy_ref }}"
  register: release_activated

- name: Record that the release failed its health gate
  release:
    action: record
    service: shop
    release: "{{ deploy_release_id }}"
    event: failed
    note: "public probe answered 502"

- name: Choose the release to roll back to
  release:
    action: target
    service: shop
  register: release_rollback_target

- name: Keep three good releases
  release:
    action: prune
    service: shop
    keep: 3
"""

RETURN = r"""
releases:
  description: With O(action=list), every release, sorted by id.
  type: list
  elements: dict
  returned: action=list
  sample:
    - id: 20261129T141500-3f2a9c1d0e
      status: active
      manifest: {"git_sha": "3f2a9c1", "ref": "main", "checksum": "sha256:...",
                 "deployed_by": "alice", "deployed_at": "2026-11-29T14:20:00Z",
                 "replaces": null, "status": "staged"}
      age_seconds: 3600
      last_event: {"event": "active", "at": "2026-11-29T14:21:00Z"}
      problem: null
      staging_pid: null
current:
  description: The release C(current) points at (with O(action=activate), the one it points
    at now, or would in check mode); null if there is none.
  type: str
  returned: action=list, activate, target or prune
previous_good:
  description: The previous good release, null if there is none.
  type: str
  returned: action=list or action=prune
previous:
  description: With O(action=activate), the release C(current) pointed at before.
  type: str
  returned: action=activate
release:
  description: The release acted on.
  type: str
  returned: action=activate or action=record
event:
  description: The history event appended (in check mode, the one that would be); null when
    nothing changed.
  type: dict
  returned: action=activate or action=record
  sample: {"at": "2026-11-29T14:21:00Z", "release": "20261129T141500-3f2a9c1d0e",
           "event": "active", "by": "alice", "from": "20261128T090000-0a1b2c3d4e",
           "note": "", "expect": {"path": "/health", "expect_status": 200}}
target:
  description: With O(action=target), the release to roll back to; null if there is none.
  type: str
  returned: action=target
reason:
  description: With O(action=target), why this target was chosen, or why there is none.
  type: str
  returned: action=target
  sample: "no previous good release: history has only 20261129T141500-3f2a9c1d0e"
build:
  description: With O(action=target), the build the target is made of (the target's own
    id for a release staged before releases recorded their build); null without a target.
  type: str
  returned: action=target
candidates:
  description: With O(action=target), every previous good release, most recently active
    first.
  type: list
  elements: str
  returned: action=target
removed:
  description: With O(action=prune), the releases removed (in check mode, that would be).
  type: list
  elements: str
  returned: action=prune
kept:
  description: With O(action=prune), the releases left on disk.
  type: list
  elements: str
  returned: action=prune
legacy_removed:
  description: With O(action=prune), the service-wide unit template and env file of
    older flipback versions, removed once no release on disk needs them.
  type: list
  elements: str
  returned: action=prune, when not in check mode
diff:
  description: With O(action=activate) in diff mode, the C(current) link before and after.
  type: dict
  returned: action=activate in diff mode
  sample: {"before": "current -> releases/20261128T090000-0a1b2c3d4e\n",
           "after": "current -> releases/20261129T141500-3f2a9c1d0e\n"}
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
from ansible.module_utils.flipback_release import (
    ReleaseError,
    Releases,
    default_user,
)

# Options each action reads, beyond action, service and root; any other option set is
# a mistake in the task (e.g. keep with activate) and is reported, not ignored.
ACTION_OPTIONS = {
    "list": (),
    "activate": ("release", "note", "by", "run_id"),
    "record": ("release", "event", "note", "by", "run_id"),
    "target": ("release", "steps"),
    "prune": ("keep", "note", "by", "run_id"),
}
OPTIONAL = ("release", "event", "note", "by", "run_id", "steps", "keep")


def check_options(params: dict) -> None:
    action = params["action"]
    for name in OPTIONAL:
        if params[name] is not None and name not in ACTION_OPTIONS[action]:
            users = [a for a, options in ACTION_OPTIONS.items() if name in options]
            raise ReleaseError(
                f"{name}: got {params[name]!r}, but action={action} does not use it; expected "
                f"it only with action={' or '.join(users)}",
                field=name,
                value=params[name],
            )


def run(params: dict, check_mode: bool, diff_mode: bool) -> dict:
    check_options(params)
    releases = Releases(params["service"], params["root"], run_id=params["run_id"])
    action = params["action"]
    by = params["by"] or default_user()
    note = params["note"] or ""
    if action == "list":
        return releases.list_releases()
    if action == "target":
        return releases.target(params["release"], params["steps"])
    if action == "record":
        return releases.record(
            params["release"], params["event"], by=by, note=note, check_mode=check_mode
        )
    if action == "prune":
        return releases.prune(params["keep"], by=by, note=note, check_mode=check_mode)
    result = releases.activate(params["release"], by=by, note=note, check_mode=check_mode)
    if diff_mode:
        result["diff"] = {
            "before": _link_text(result["previous"]),
            "after": _link_text(result["current"]),
        }
    return result


def _link_text(release_id: str | None) -> str:
    return f"current -> releases/{release_id}\n" if release_id else ""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {
                "type": "str",
                "required": True,
                "choices": list(ACTION_OPTIONS),
            },
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "release": {"type": "str"},
            "event": {"type": "str", "choices": ["staged", "failed", "rolled_back", "pruned"]},
            "note": {"type": "str"},
            "by": {"type": "str"},
            "run_id": {"type": "str"},
            "steps": {"type": "int"},
            "keep": {"type": "int"},
        },
        required_if=[
            ("action", "activate", ("release",)),
            ("action", "record", ("release", "event")),
            ("action", "prune", ("keep",)),
        ],
        mutually_exclusive=[("release", "steps")],
        supports_check_mode=True,
    )
    respond(module, lambda: run(module.params, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
