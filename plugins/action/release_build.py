"""Action: build a release on the controller, in-process (see module release_build).

Building only ever happens on the controller, so running it as a module there only
added an interpreter start and a payload per build; the action calls the same
Builder (module_utils/flipback_build.py) inside the controller's worker.

Credentials in `source` never reach the result: the Builder reports the redacted URL
(`source`) and scrubs them from its messages (see the module's documentation).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_build import (
    ARGUMENT_SPEC,
    Builder,
    BuildError,
    BuildSpec,
    group_targets,
)

# What every target's build of one commit shares; the rest is per target.
SHARED = ("source", "git_sha", "ref", "tree", "commit_time", "source_build", "project")

# Code-only artifacts up to this size are returned inline, for hosts that stage them
# without an upload (they reuse a venv with the same wheels).
INLINE_LIMIT = 2 * 1024 * 1024


def inline_code(path: str, limit: int = INLINE_LIMIT) -> str | None:
    """The code-only artifact as base64, or None when it is too big to travel inline."""
    if os.path.getsize(path) > limit:
        return None
    with open(path, "rb") as handle:
        return base64.b64encode(handle.read()).decode("ascii")


def build_targets(spec: BuildSpec, probes: dict) -> dict:
    """One build per distinct target of the hosts (the source fetched once): what they
    share, `targets` (each target's build, by key) and `hosts` (each host's target)."""
    groups = group_targets(probes)
    builds: dict[str, dict] = {}
    for index, (key, (target, _hosts)) in enumerate(groups.items()):
        built = Builder(dataclasses.replace(spec, target=target, sync=index == 0)).build()
        built["code_b64"] = inline_code(built["code_artifact"])
        builds[key] = built
    # Each target's build names every target's, for the manifests (see flipback_release
    # Releases._sibling: a rollback may name the release another target's hosts run).
    every = {key: built["id"] for key, built in builds.items()}
    for built in builds.values():
        built["builds"] = every
    first = next(iter(builds.values()))
    return {
        **{key: first[key] for key in SHARED},
        "changed": any(b["changed"] for b in builds.values()),
        "targets": builds,
        "hosts": {host: key for key, (_t, hosts) in groups.items() for host in hosts},
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        started = time.monotonic()
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        spec = BuildSpec.from_params(params)
        try:
            if params["targets"]:
                result.update(build_targets(spec, params["targets"]))
            else:
                result.update(Builder(spec).build())
                result["code_b64"] = inline_code(result["code_artifact"])
        except BuildError as exc:
            result.update(failed=True, msg=exc.msg, retryable=exc.retryable, **exc.details)
        result["elapsed"] = round(time.monotonic() - started, 3)
        return result
