"""Action: check the service definitions and the request on the controller, in-process.

The checks are those of the service_config module (module_utils/flipback_config.py),
run inside the controller's worker instead of as a module: no interpreter to start,
no payload to build, so the first task of every run costs milliseconds. The action
also names the run for the deploy locks (controller, ansible-playbook pid, start)
and the deployer, which used to take pipe lookups, and starts the run's rollout state
(the host fact flipback_rollout) empty.
"""

from __future__ import annotations

import os
import socket
import time

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

# Let the controller import the project's module_utils as Ansible ships them to hosts.
for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_config import (
    ARGUMENT_SPEC,
    ConfigError,
    check_params,
    invocation,
)


def run_identity(now: float | None = None) -> dict[str, str]:
    """`<controller>:<ansible-playbook pid>:<start>`; this worker's parent is the run."""
    host = socket.gethostname()
    started = int(time.time() if now is None else now)
    user = os.environ.get("SUDO_USER") or _login()
    return {"run_id": f"{host}:{os.getppid()}:{started}", "deployer": f"{user}@{host}"}


def live_runs(proc: str = "/proc") -> dict:
    """This controller's ansible-playbook processes now: a lock held by any other run
    of this controller that started before now belongs to a run that is gone."""
    pids = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(os.path.basename(arg) == b"ansible-playbook" for arg in argv[:2]):
            pids.append(int(entry))
    return {"controller": socket.gethostname(), "pids": sorted(pids), "at": time.time()}


def _login() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        started = time.monotonic()
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        result["invocation"] = invocation(params)
        try:
            checked = check_params(params)
        except ConfigError as exc:
            result.update(
                failed=True,
                msg=exc.msg,
                problems=exc.problems,
                retryable=False,
                elapsed=round(time.monotonic() - started, 3),
            )
            return result
        result.update(checked, changed=False, live_runs=live_runs(), **run_identity())
        # A run starts with no rollout state (rollout_note): a persistent fact cache must
        # not hand the last run's to this one.
        result["ansible_facts"] = {"flipback_rollout": {}}
        result["elapsed"] = round(time.monotonic() - started, 3)
        return result
