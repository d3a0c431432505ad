"""Filters of flipback.

flipback_env_file renders a release's env values as the env file systemd reads. It is
rendered on the controller while a task's arguments are templated, so the values go to
the host inside one no_log argument and are never part of a result.

flipback_build_of names the build a service's live release is made of (from
service_status): hosts with different configurations run different release ids of
one build; a release staged before releases recorded their build is its own build.
"""

from __future__ import annotations

import ansible.module_utils
from ansible import constants as C
from ansible.errors import AnsibleFilterError

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_runtime import env_file_text, env_problems
from ansible.module_utils.flipback_status import build_of


def flipback_env_file(env: object, service: str = "service") -> str:
    clean, problems = env_problems(f"flipback_services ({service})", env)
    if problems:
        raise AnsibleFilterError("; ".join(problems))
    return env_file_text(clean)


def flipback_build_of(status: object) -> object:
    if not isinstance(status, dict):
        raise AnsibleFilterError(f"flipback_build_of: got {type(status).__name__}, expected a dict")
    return build_of(status)


class FilterModule:
    def filters(self) -> dict:
        return {"flipback_env_file": flipback_env_file, "flipback_build_of": flipback_build_of}
