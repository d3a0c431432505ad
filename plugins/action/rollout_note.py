"""Action: note what became of a service on this host in the run's rollout state.

The rollout state is the host fact `flipback_rollout` (per service: the release this
host staged, what it switched to, or why it stopped). It is written only as a host fact:
by the release action (`note_in_rollout`) when a step succeeds, and by this action where
the role notes a failure, or a service left unswitched because the rollout stopped. A
set_fact of the same name would take precedence over every fact written after it and
hide them: a second service staged or rolled back on the same host after the first one
failed there would go unreported, and its lock, warm instance or restore be missed.
`service_config` starts every run with an empty state, so that a persistent fact cache
never carries one run's state into the next.
"""

from __future__ import annotations

import time

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_request import noted_rollout

ARGUMENT_SPEC = {
    "service": {"type": "str", "required": True},
    "state": {"type": "dict", "required": True},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        started = time.monotonic()
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        known = self._templar.template((task_vars or {}).get("flipback_rollout") or {})
        rollout = noted_rollout(known, params["service"], params["state"])
        result.update(changed=False, ansible_facts={"flipback_rollout": rollout})
        result["elapsed"] = round(time.monotonic() - started, 3)
        return result
