"""Documentation only: note what became of a service on a host in the rollout state.

The action plugin of the same name (plugins/action/rollout_note.py) does the work on the
controller, in-process; no run executes this file as a module. ansible-doc reads
DOCUMENTATION, EXAMPLES and RETURN from here, as ansible-core's own debug and set_fact.
"""

DOCUMENTATION = r"""
---
module: rollout_note
short_description: Note what became of a service on a host in the run's rollout state
description:
  - The flipback role's record of a run, host by host, is the host fact
    C(flipback_rollout) - per service, the release staged, what it switched to, or why
    it stopped. The release action notes each step that succeeds; this action notes
    the rest (a failed step, a service left unswitched because the rollout stopped).
  - Merges O(state) into the service's entry and returns the whole state as a fact.
    Facts, not C(set_fact), carry the state, because a variable set by C(set_fact)
    would hide every fact noted after it. Runs on the controller; changes nothing.
options:
  service:
    description: The service's name.
    type: str
    required: true
  state:
    description: What to note (C(outcome), C(release), C(error), ...), merged into what
      is noted already.
    type: dict
    required: true
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Stop the rollout, naming service, host and step
  rollout_note:
    service: shop
    state:
      outcome: staging failed
      error: "deploy of shop failed on web-1 while staging: disk full"
"""

RETURN = r"""
ansible_facts:
  description: C(flipback_rollout), this host's state with the service's entry merged.
  type: dict
  returned: always
elapsed:
  description: Seconds the note took.
  type: float
  returned: always
"""
