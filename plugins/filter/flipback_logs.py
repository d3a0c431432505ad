"""Filters of flipback's day-2 playbooks (exec.yml, logs.yml), run on the controller.

flipback_exec_request and flipback_logs_request check a request's extra vars before
any host is asked; they return the checked values and a list of `problems` (each
naming the field, the value and what was expected), which the playbook turns into
one failure, so every problem is reported at once.

flipback_exec_report renders every host's output of a command, each line prefixed
with its host and release.

flipback_logs_merge orders the journal entries of every host by time into one list
and a text view, each line prefixed with its host and release.
"""

from __future__ import annotations

import ansible.module_utils
from ansible import constants as C
from ansible.errors import AnsibleFilterError

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_common import FlipbackError
from ansible.module_utils.flipback_exec import check_request as exec_request
from ansible.module_utils.flipback_exec import exec_report, refusal
from ansible.module_utils.flipback_logs import check_request as logs_request
from ansible.module_utils.flipback_logs import merge


def _plain(value: object) -> object:
    """An extra var as a plain Python value; Ansible's omitted/undefined comes as None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


def flipback_exec_request(
    names: object,
    service: object = None,
    cmd: object = None,
    timeout: object = None,
    hosts: object = None,
) -> dict:
    if not isinstance(names, list):
        raise AnsibleFilterError(
            f"flipback_exec_request: got {names!r}, expected the list of selected service names"
        )
    checked = exec_request(
        names=[str(n) for n in names],
        service=_plain(service),
        cmd=_plain(cmd),
        timeout=_plain(timeout),
        hosts=_plain(hosts),
    )
    checked["msg"] = refusal(checked["problems"]) if checked["problems"] else ""
    return checked


def flipback_exec_report(hosts: object) -> str:
    try:
        return exec_report(hosts)  # type: ignore[arg-type]
    except FlipbackError as exc:
        raise AnsibleFilterError(f"flipback_exec_report: {exc.msg}") from exc


def flipback_logs_request(
    since: object = None, lines: object = None, release: object = None, grep: object = None
) -> dict:
    checked = logs_request(
        since=_plain(since), lines=_plain(lines), release=_plain(release), grep=_plain(grep)
    )
    if checked["problems"]:
        count = len(checked["problems"])
        checked["msg"] = (
            f"invalid input ({count} problem{'s' if count != 1 else ''}), no host was asked; "
            "fix it and run again (retrying as-is fails the same way): "
            + "; ".join(checked["problems"])
        )
    else:
        checked["msg"] = ""
    return checked


def flipback_logs_merge(hosts: object, lines: object = None) -> dict:
    try:
        return merge(hosts, _plain(lines))  # type: ignore[arg-type]
    except FlipbackError as exc:
        raise AnsibleFilterError(f"flipback_logs_merge: {exc.msg}") from exc


class FilterModule:
    def filters(self) -> dict:
        return {
            "flipback_exec_request": flipback_exec_request,
            "flipback_exec_report": flipback_exec_report,
            "flipback_logs_request": flipback_logs_request,
            "flipback_logs_merge": flipback_logs_merge,
        }
