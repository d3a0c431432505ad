"""Action: work out, per host, the release a build becomes with that host's configuration.

Runs in the controller's worker (no module to ship), before anything changes on any
host: it checks the env values this host would get (they may differ per host), and
returns the release id (build + configuration) and what the manifest will record. The
env values are never part of the result.
"""

from __future__ import annotations

import time

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_runtime import (
    CONFIG_ARGUMENT_SPEC,
    ConfigInvalid,
    resolve_params,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        started = time.monotonic()
        validation, _args = self.validate_argument_spec(argument_spec=CONFIG_ARGUMENT_SPEC)
        params = validation.validated_parameters
        try:
            result.update(resolve_params(params), changed=False)
        except ConfigInvalid as exc:
            result.update(failed=True, msg=exc.msg, retryable=False, **exc.details)
        result["elapsed"] = round(time.monotonic() - started, 3)
        return result
