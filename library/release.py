#!/usr/bin/python
"""Ansible module (host): every step of a flipback release's life on one host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release
short_description: Stage, switch, roll back and retire flipback releases on a host
description:
  - One module for every step the role takes on a host, chosen by O(action), so a run
    builds one module payload rather than one per step. Each call takes the checked
    service definition (O(service)) and this run's settings (O(run)).
  - O(action=prepare) takes the service's deploy lock (or fails naming its holder),
    makes sure the service user and its directories are there, and reports whether
    the release is staged and live, and how its configuration differs from the live
    release's (env values are compared on the host, never shown). A release already
    live - current, running, enabled, alone apart from the standby, answering through
    the public port - is reported with C(noop=true) and the lock is given back.
  - O(action=stage) unpacks the artifact (uploaded by the action plugin, or sent
    inline in O(artifact_b64)) into C(<root>/<service>/releases/<release>), builds the
    virtualenv at that final path offline (or reuses one with the same wheels), and
    stages the release's own unit, process units and env file, which are never changed
    afterwards. With O(start), its instance starts warm for the switch. Through the
    action plugin, O(action=stage) first runs O(action=prepare), then uploads the
    artifact only when it is needed, in one task; if staging fails, the lock is given back.
  - O(action=switch) starts the release's instance (unless warm), probes it on its
    private socket (Gate 1), points C(current) and the nginx site at it, probes the
    public port (Gate 2), enables it, keeps the previous good release as the warm
    standby, retires the rest after the drain and prunes to the service's
    C(keep_releases). A failed gate is undone before the module fails, and the error
    carries the instance's journal.
  - O(action=rollback) and O(action=restore) switch the same way to an older release
    (the one left is recorded as C(rolled_back)); O(action=restore) is the finish of a
    deploy that stopped, putting back what a host ran before.
  - O(action=command) runs the release's commands of one O(point) (e.g. migrations).
  - O(action=abandon) ends what a stopped deploy left on a host that did not switch -
    records the release as failed (with O(note)), stops its warm instance (O(stop)) if
    it is not current, and gives the deploy lock back.
  - O(action=target) chooses a rollback target, read-only - the named O(release), or
    the good release O(steps) back.
  - Switches, staging and commands run under the service's deploy lock, owned by
    the run (O(run.run_id)). Check mode reports what would change.
  - Through the action plugin, the arguments are checked on the controller against this
    module's spec, and the call runs from flipback's host code installed once per
    version under C(/var/lib/flipback/tools/runner/<digest>) (compiled, root's, code
    only; arguments travel on stdin), so no module payload is built or unpacked per
    call. Without a known interpreter or pipelining, the module itself runs.
options:
  action:
    description: The step to take.
    type: str
    required: true
    choices: [prepare, stage, switch, rollback, restore, command, abandon, target]
  service:
    description: The service, as service_config checked it (the keys the host reads).
    type: dict
    required: true
    suboptions:
      name:
        description: Service name.
        type: str
        required: true
      port:
        description: The public port nginx serves it on (prepare, stage, switches).
        type: int
      user:
        description: The system user it runs as.
        type: str
      ref:
        description: The ref it was built from (kept in the manifest).
        type: str
      adopt_user:
        description: Take an existing account flipback did not create, made for this
          service (its primary group its own, with no other members).
        type: bool
        default: false
      keep_releases:
        description: After a deploy's switch, prune down to this many good releases
          (0 - none).
        type: int
        default: 0
      health:
        description: How the gates probe it.
        type: dict
        suboptions:
          path:
            description: Health path.
            type: str
            default: /health
          expect_status:
            description: Statuses that count as healthy.
            type: list
            elements: int
            default: [200]
          expect_json:
            description: Fields the JSON body must have, with these values.
            type: dict
            default: {}
          release_in:
            description: Where an answer names its release (C(header) - the
              C(X-Flipback-Release) header uvicorn adds; C(json) - a C(release) field).
            type: str
            default: header
            choices: [header, json]
          host:
            description: The Host header the gates send (and the TLS server name).
            type: str
            default: localhost
          timeout:
            description: Seconds each gate may take.
            type: float
            default: 30
          unhealthy_answers:
            description: A gate gives up after this many unhealthy answers in a row
              (502, 503 and 504 say the app is starting and are waited for); it also
              gives up at once when the instance exits, or when an answer lacks the
              JSON fields the app itself answers.
            type: int
            default: 10
  run:
    description: This run's settings, the same for every call of a run.
    type: dict
    default: {}
    suboptions:
      root:
        description: Where services live; a service's directory is C(<root>/<name>).
        type: path
        default: /srv
      run_id:
        description: The run (C(<controller>:<pid>:<start>)); owns the deploy lock and
          is written in history. Without it, no lock is taken.
        type: str
      by:
        description: Who runs it (recorded in history and the lock).
        type: str
        default: unknown
      playbook:
        description: The play, named in the lock.
        type: str
      live_runs:
        description: The controller's ansible-playbook processes when the run began;
          a lock held by another run of that controller not among them is taken over.
        type: dict
      lock_wait:
        description: Seconds to wait for a busy lock (prepare, stage, rollback).
        type: float
        default: 0
      lock_stale_after:
        description: Seconds without a heartbeat after which a holder counts as gone.
        type: int
        default: 120
      drain_seconds:
        description: Seconds a retired instance keeps running after the flip (a timer
          on the host stops it).
        type: float
        default: 1
      standby:
        description: Keep the previous good release running (not enabled) as the warm
          standby.
        type: bool
        default: true
      public_successes:
        description: Answers in a row naming the release that Gate 2 needs.
        type: int
        default: 3
  release:
    description: The release id acted on; with O(action=target), the release to roll
      back to (instead of O(steps)).
    type: str
  config:
    description: How the release runs, as release_config returned it (prepare, stage).
    type: dict
  env_file:
    description: The release's env file (prepare compares it, stage writes it); never shown.
    type: str
  build:
    description: The build of the release (prepare, stage).
    type: dict
    suboptions:
      id:
        description: Build id.
        type: str
        required: true
      checksum:
        description: sha256 of the artifact the host gets.
        type: str
        required: true
      deps_key:
        description: Key of the wheels; a staged release with the same key lends its
          virtualenv.
        type: str
        default: ""
      git_sha:
        description: Commit built (kept in the manifest).
        type: str
      source:
        description: Where it was built from, without credentials (kept in the manifest).
        type: str
      builds:
        description:
          - The build id of every target platform made in the run, by target key (kept in
            the manifest). With it, O(action=target) and O(action=rollback) take for
            O(release) the id this release has on hosts of another target (another
            Python or libc), and go to this host's own release of it.
        type: dict
  upload:
    description: Stage - where the action plugin put the artifact on the host; it is
      moved to C(<root>/<name>/.incoming/) before use.
    type: path
  artifact_b64:
    description: Stage - the code-only artifact, inline, when a staged release lends
      its virtualenv. Prepare - the same, sent ahead; when the release is not staged
      and a staged release lends its virtualenv, it is staged in the same call (the
      result's RV(staging)); otherwise it is not used.
    type: str
  start:
    description: Stage (and prepare when it stages) - start the release's instance warm
      for the switch.
    type: bool
  lock_hold:
    description: Prepare (and stage through the action plugin, which hands it to its
      prepare) - the lock's stale time while the whole rollout holds it (instead of
      O(run.lock_stale_after)).
    type: int
  point:
    description: Command - which commands to run.
    type: str
    choices: [before_switch_once, before_switch, after_switch]
  note:
    description: Kept in history (switches); with O(action=abandon), records the release
      as failed with this note.
    type: str
  stop:
    description: Abandon - stop the release's instance warmed for a switch that did not
      happen (never the current release's).
    type: bool
  steps:
    description: Target - how many good releases back (1 - the previous good release).
    type: int
  note_in_rollout:
    description:
      - Stage, switch and rollback - the action plugin notes the outcome in the host fact
        C(flipback_rollout), under the service's name (the role's rollout state), so no
        C(set_fact) task is needed. Read on the controller; never sent to the host.
    type: bool
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Stage hello's new release (prepare, upload, stage, in one task)
  release:
    action: stage
    service: "{{ flipback_service }}"
    run: "{{ _flipback_run }}"
    release: "{{ _flipback_release }}"
    config: "{{ hello_release.config }}"
    env_file: "{{ {'HELLO_GREETING': 'hi'} | flipback_env_file('hello') }}"
    build: "{{ hello_build }}"
    start: true

- name: Switch to it
  release:
    action: switch
    service: "{{ flipback_service }}"
    run: "{{ _flipback_run }}"
    release: 20261129T141500-3f2a9c1d0e
    note: deploy of v2

- name: Choose the release to roll back to
  release:
    action: target
    service: {name: hello}
    steps: 1
  register: hello_target
"""

RETURN = r"""
release:
  description: The release acted on.
  type: str
  returned: always
outcome:
  description: The step's outcome as data - C(staged) or C(already live) (stage),
    C(switched) or C(already live) (switch, rollback, restore), C(ran) (command),
    C(abandoned) (abandon).
  type: str
  returned: success, except prepare and target
current:
  description: The release C(current) points at (after a switch; before, for prepare).
  type: str
  returned: success
previous:
  description: Switches - the release that was current before.
  type: str
  returned: switches
staged:
  description: Prepare, stage - whether the release was already staged here.
  type: bool
  returned: prepare, stage
noop:
  description: Prepare, stage - the release is already live here (the lock was given back).
  type: bool
  returned: prepare, stage
instance:
  description: Stage - the release's web instance (its unit, C(<service>@<release>.service)).
  returned: action=stage
  type: str
warmed:
  description: Prepare, stage - whether the release's instance runs for the switch.
  type: bool
  returned: prepare, stage
venv_donor:
  description: Prepare - a staged release whose virtualenv has the same wheels.
  type: str
  returned: prepare
staging:
  description: Prepare - the stage's own result, when the code came along in
    O(artifact_b64) and the release was staged in the same call.
  type: dict
  returned: prepare, when it staged
config_changes:
  description: Prepare, stage - how the configuration differs from the live release's
    (env values never shown).
  type: list
  elements: str
  returned: prepare, stage
release_runs:
  description: Prepare, stage - the runs that wrote an event of the release here.
  type: list
  elements: str
  returned: prepare, stage
live:
  description: Prepare, stage - when the release is current, the run that put it live
    and the release it replaced.
  type: dict
  returned: prepare, stage
started:
  description: Switches - the instance started; null if none.
  type: str
  returned: switches
stopped:
  description: Switches - the instances retired after the drain; abandon - the
    instance stopped.
  type: str
  returned: switches, abandon
standby:
  description: Switches - the release kept as the warm standby; null if none.
  type: str
  returned: switches
pruned:
  description: Switch - releases pruned after it.
  type: list
  elements: str
  returned: switch
target:
  description: Target - the release to roll back to; null if none.
  type: str
  returned: target
reason:
  description: Target - why this target, or why none.
  type: str
  returned: target
build:
  description: Target - the build the target is compared by across the fleet - its source
    build, which hosts of every target platform share (its build, for releases staged
    before manifests recorded one).
  type: str
  returned: target
named:
  description: Target - the release id O(release) named, when it is another target
    platform's id of the release chosen here (RV(target)).
  type: str
  returned: target, when O(release) named another target's id
gate:
  description: The gate that failed.
  type: str
  returned: when a gate failed
journal:
  description: Last journal lines of the failing instance or command.
  type: list
  elements: str
  returned: failure
lock:
  description: What became of the deploy lock.
  type: dict
  returned: prepare, stage, abandon
changes:
  description: Prepare, stage - what was (or would be) changed on the host (the user,
    directories).
  type: list
  elements: str
  returned: prepare, stage
path:
  description: Stage - the release's directory.
  type: str
  returned: stage
replaces:
  description: Stage - the release C(current) pointed at when it was staged.
  type: str
  returned: stage
venv_from:
  description: Stage - the staged release whose virtualenv was reused (hard links);
    null when it was built.
  type: str
  returned: stage
venv_base:
  description: Stage - the staged release (the live one first) whose virtualenv,
    copied by hard links and synced by uv to exactly this release's wheels, this
    release's virtualenv started from; only changed packages were unpacked and
    compiled. Null when it was built from nothing or reused whole.
  type: str
  returned: stage
venv_tool:
  description: Stage - what built the virtualenv (C(uv) or C(venv+pip)); null when it
    was reused.
  type: str
  returned: stage
problems:
  description: Stage - what is wrong with the release's configuration files, when they
    are not what its id stands for.
  type: list
  elements: str
  returned: when stage refuses the configuration
steps:
  description: Switches - what the switch did, in order.
  type: list
  elements: str
  returned: switches
timings:
  description: Switches - seconds each gate took.
  type: dict
  returned: switches, when changed
undone:
  description: Switches - what was undone after a failed gate.
  type: list
  elements: str
  returned: when a gate failed
diff:
  description: The flip of C(current) (switches), the staged files (stage), in diff mode.
  type: dict
  returned: in diff mode
value:
  description: The value that was refused.
  type: str
  returned: when a parameter was refused
expected:
  description: What the refused parameter should have been.
  type: str
  returned: when a parameter was refused
candidates:
  description: Target - every previous good release, most recently active first.
  type: list
  elements: str
  returned: target
named_targets:
  description: Target - every release that O(release) may name here (complete, not
    failed, not current), newest id first; what a refused rollback suggests instead.
  type: list
  elements: str
  returned: target
recorded:
  description: Abandon - the history event written (the release as failed); null
    without a note.
  type: dict
  returned: abandon
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
field:
  description: The parameter that was refused.
  type: str
  returned: when a parameter was refused
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_actions import run
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_request import RELEASE_MUTUALLY_EXCLUSIVE, RELEASE_SPEC


def main() -> None:
    module = AnsibleModule(
        argument_spec=RELEASE_SPEC,
        mutually_exclusive=RELEASE_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    respond(module, lambda: run(module.params, module.check_mode, module._diff, module.warn))


if __name__ == "__main__":
    main()
