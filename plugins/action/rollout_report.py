"""Action: one report of a rollout, host by host, on the controller (in-process).

The last task of a deploy. From what each host noted during the run (staged,
switched, failed and why, not switched because the rollout stopped, restored), it
prints one line per host and service (with the configuration changes each release
brought, names only), checks that every host that switched runs the release worked
out for it (build + its configuration: hosts with the same configuration share an
id), and fails the run when the rollout stopped.
"""

from __future__ import annotations

import time

import ansible.module_utils
from ansible import constants as C
from ansible.plugins.action import ActionBase

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_request import OUTCOMES

ARGUMENT_SPEC = {
    "action": {"type": "str", "default": "deploy"},
    "hosts": {"type": "list", "elements": "str", "required": True},
    "rollout": {"type": "dict", "default": {}},
    "restored": {"type": "dict", "default": {}},
}


def host_lines(host: str, states: dict, restores: list) -> tuple[list[dict], list[str]]:
    """(rows, problems) for one host."""
    rows, problems = [], []
    restored = {
        r["_flipback_item"]["name"]: r
        for r in restores
        if isinstance(r, dict) and not r.get("skipped") and "_flipback_item" in r
    }
    if not states:
        problems.append(f"{host}: did not report (unreachable, or failed before staging)")
        rows.append({"host": host, "service": "-", "outcome": "no report", "ok": False})
        return rows, problems
    for service in sorted(states):
        state = states[service]
        outcome = state.get("outcome", "unknown")
        release = state.get("release")
        previous = state.get("previous")
        ok = True
        if service in restored:
            result = restored[service]
            if result.get("failed"):
                text = f"RESTORE FAILED: {result.get('msg', 'no message')}"
                problems.append(f"{host} {service}: {text}")
                ok = False
            elif outcome == "already live":
                text = (
                    f"restored to {result.get('release')} (it had gone live on "
                    f"{result.get('previous')} in an earlier run that stopped half-way)"
                )
            else:
                text = f"restored to {previous} (had switched to {release})"
                if state.get("error"):
                    # Switched, then a command after the switch failed here.
                    text += f"; {state['error']}"
                    problems.append(state["error"])
        elif outcome == "switched":
            current = state.get("current")
            text = f"switched to {current}"
            rollback = state.get("rollback")
            if rollback and previous and previous != current:
                would = rollback.get("check_mode")
                text += (
                    f" (rolled back from {previous} to {current}; "
                    f"{'would start' if would else 'started'} "
                    f"{rollback.get('started') or 'nothing (standby)'}; "
                    f"{'would stop' if would else 'stopping'} "
                    f"{rollback.get('stopped') or 'nothing'})"
                )
            if release and current != release:
                problems.append(
                    f"{host} {service}: runs {current}, expected {release} (its build with "
                    "this host's configuration)"
                )
                ok = False
        elif outcome == "already live" and state.get("rollback"):
            text = f"{release} is already current; nothing to do"
        elif outcome == "already live":
            text = f"already live on {release}"
        elif outcome in ("failed", "staging failed"):
            text = state.get("error", outcome)
            problems.append(text)
            ok = False
        elif outcome == "not switched":
            text = f"not switched (the rollout stopped); stays on {previous or 'nothing'}"
        elif outcome == "staged":
            text = f"staged {release}; not switched"
        else:
            text = f"unknown outcome {outcome!r} (expected one of {', '.join(OUTCOMES)})"
            problems.append(f"{host} {service}: {text}")
            ok = False
        changes = state.get("config_changes") or []
        if (changes and outcome in ("switched", "failed", "staged")) or (
            changes and service in restored
        ):
            text += f" (config changed: {', '.join(changes)})"
        rows.append(
            {
                "host": host,
                "service": service,
                "outcome": text,
                "ok": ok,
                "config_changes": changes,
            }
        )
    return rows, problems


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        started = time.monotonic()
        validation, _args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = validation.validated_parameters
        rows, problems = [], []
        for host in params["hosts"]:
            host_rows, host_problems = host_lines(
                host,
                params["rollout"].get(host) or {},
                params["restored"].get(host) or [],
            )
            rows += host_rows
            problems += host_problems
        stopped = any(
            (state or {}).get("outcome") in ("failed", "staging failed")
            or (state or {}).get("error")
            for states in params["rollout"].values()
            for state in (states or {}).values()
        )
        width = max([len(r["host"]) for r in rows] + [4])
        lines = [f"{r['host']:<{width}}  {r['service']}: {r['outcome']}" for r in rows]
        verdict = "the rollout stopped" if stopped else "rollout complete"
        if problems and not stopped:
            verdict = "rollout finished with problems"
        result.update(changed=False, report=rows, problems=problems, lines=lines)
        result["elapsed"] = round(time.monotonic() - started, 3)
        result["msg"] = f"{params['action']}: {verdict}\n" + "\n".join(lines)
        if problems:
            result["failed"] = True
            result["msg"] += "\n" + "\n".join(f"- {p}" for p in problems)
        return result
