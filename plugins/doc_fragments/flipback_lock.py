"""Documentation of the deploy-lock options, shared by the modules that take the lock.

Their argument spec is one definition too: `LOCK_ARGUMENTS` in
module_utils/flipback_lock.py. tests/unit/test_module_docs.py checks the two agree.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  lock_owner:
    description:
      - Owner recorded in the service's deploy lock; no lock is taken without it.
      - The run that already holds the lock refreshes it instead; the module's
        description says when the lock is given back.
    type: dict
    suboptions:
      run_id:
        description: Id of the run (C(<controller>:<pid>:<start>)).
        type: str
        required: true
      by:
        description: Who runs it.
        type: str
      playbook:
        description: Name of the play.
        type: str
      release:
        description: Release the run deploys.
        type: str
      action:
        description: deploy, rollback or restore.
        type: str
  lock_wait:
    description: Seconds to wait for a busy lock.
    type: float
    default: 0
  lock_stale_after:
    description: Seconds without a heartbeat after which a holder counts as gone.
    type: int
    default: 120
  live_runs:
    description:
      - What the controller saw when the run began - C(controller) (its name), C(pids)
        (of every ansible-playbook process) and C(at) (when). A lock held by a run of
        that controller that started earlier and whose process was gone is taken over
        at once, with a warning.
    type: dict
"""
