"""Filters of flipback.

flipback_env_file renders a release's env values as the env file systemd reads. It is
rendered on the controller while a task's arguments are templated, so the values go to
the host inside one no_log argument and are never part of a result.

flipback_restore_target says where a host's service goes back to when a rollout
stopped: the release it ran before, for a host switched in this run, or for a host
that a run which did not finish put live (a deploy killed after its canary switched);
nothing for the others.

flipback_lock_hold is the `stale_after` a deploy's staging declares in each host's lock:
long enough that no host's lock turns stale while it waits for its batch (see
flipback_config.lock_hold), never less than the configured one.

flipback_build_of names the build a service's live release is made of (from
service_status): hosts with different configurations run different release ids of
one build; a release staged before releases recorded their build is its own build.
"""

from __future__ import annotations

import ansible.module_utils
from ansible import constants as C
from ansible import context
from ansible.errors import AnsibleFilterError

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_config import lock_hold, switch_seconds
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


def flipback_restore_target(rollouts: object, host: str, service: str, run_id: str) -> str:
    """Where `service` on `host` goes back to now that the rollout `run_id` stopped;
    '' when it stays. `rollouts` is every target host's flipback_rollout.

    A host switched in this run goes back to what it ran before. A host found already
    live goes back too when the run that put it live also touched another host of this
    run that is not live on the release (staged there, failed there, or its lock taken
    over here): that run stopped half-way, so "before" is the release it replaced. A
    host that was live before any of this (a new host joined the fleet) stays.
    """
    if not isinstance(rollouts, dict):
        raise AnsibleFilterError(
            f"flipback_restore_target: got {type(rollouts).__name__}, expected a dict"
        )
    state = (rollouts.get(host) or {}).get(service) or {}
    outcome = state.get("outcome")
    if outcome == "switched":
        return state.get("previous") or ""
    live = state.get("live") or {}
    put_live_by = live.get("run")
    if outcome != "already live" or not put_live_by or put_live_by == run_id:
        return ""
    left_behind = {
        run
        for other, states in rollouts.items()
        if other != host
        for other_state in [(states or {}).get(service) or {}]
        if other_state and other_state.get("outcome") != "already live"
        for run in other_state.get("release_runs") or []
    }
    return (live.get("from") or "") if put_live_by in left_behind else ""


def flipback_failed_on(rollouts: object, service: str) -> list[str]:
    """The hosts where `service` failed its switch in this run (sorted)."""
    if not isinstance(rollouts, dict):
        raise AnsibleFilterError(
            f"flipback_failed_on: got {type(rollouts).__name__}, expected a dict"
        )
    return sorted(
        host
        for host, states in rollouts.items()
        if ((states or {}).get(service) or {}).get("outcome") == "failed"
    )


def flipback_target_disagreement(targets: object, service: str) -> str:
    """'' when every host's rollback target of `service` is one build; otherwise each
    build with the hosts that would go back to it. `targets` maps each host to its
    results of `release: action=target` (one per service)."""
    if not isinstance(targets, dict):
        raise AnsibleFilterError(
            f"flipback_target_disagreement: got {type(targets).__name__}, expected a dict"
        )
    builds: dict[str, list[str]] = {}
    for host in sorted(targets):
        for result in targets[host] or []:
            if (result.get("item") or {}).get("name") == service and result.get("target"):
                build = result.get("build") or result["target"]
                builds.setdefault(build, []).append(f"{host} -> {result['target']}")
    if len(builds) < 2:
        return ""
    return "; ".join(
        f"build {build}: {', '.join(hosts)}" for build, hosts in sorted(builds.items())
    )


def flipback_lock_hold(
    services: object, hosts: int, canary: int, batch: str, stale_after: int, drain: float
) -> int:
    if not isinstance(services, list):
        raise AnsibleFilterError(
            f"flipback_lock_hold: got {type(services).__name__}, expected a list of services"
        )
    # The forks of this run: -f on the command line, else the configuration's.
    forks = int(context.CLIARGS.get("forks") or C.DEFAULT_FORKS)
    return max(
        int(stale_after),
        lock_hold(
            hosts=int(hosts),
            canary=int(canary),
            batch=str(batch),
            forks=forks,
            switch_seconds=[switch_seconds(service, float(drain)) for service in services],
            stale_after=int(stale_after),
        ),
    )


class FilterModule:
    def filters(self) -> dict:
        return {
            "flipback_env_file": flipback_env_file,
            "flipback_build_of": flipback_build_of,
            "flipback_restore_target": flipback_restore_target,
            "flipback_failed_on": flipback_failed_on,
            "flipback_target_disagreement": flipback_target_disagreement,
            "flipback_lock_hold": flipback_lock_hold,
        }
