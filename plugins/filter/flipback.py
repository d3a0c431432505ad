"""Filters of flipback.

flipback_env_file renders a release's env values as the env file systemd reads. It is
rendered on the controller while a task's arguments are templated, so the values go to
the host inside one no_log argument and are never part of a result.

flipback_restore_target says where a host's service goes back to when a rollout
stopped: the release it ran before, for a host switched in this run, or for a host
that a run which did not finish put live (a deploy killed after its canary switched);
nothing for the others.

flipback_rollback_refusal words why a rollback is refused before any host switches (a
host without a target, hosts whose targets are different builds) once for the fleet,
with the releases that a named rollback could go back to instead.

flipback_verify_report is what verify.yml says: each service's outcome on the hosts
(hosts alike on one line), the hosts that fail, and what to run next.

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


# A refusal that the same command, run again, meets again.
NO_RETRY = "retrying the same command does not help"


def flipback_rollback_refusal(targets: object, services: object) -> str:
    """'' when every host has a rollback target for every service in `services` (names)
    and the hosts agree on its build; otherwise why the rollback is refused and what to
    run instead, said once for the whole fleet (hosts with the same reason on one line).
    `targets` maps each host to its results of `release: action=target` (one per
    service); a result without `target` is the module's refusal (a named release
    missing or failed there)."""
    if not isinstance(targets, dict) or not isinstance(services, list):
        raise AnsibleFilterError(
            f"flipback_rollback_refusal: got {type(targets).__name__} and "
            f"{type(services).__name__}, expected a dict of hosts and a list of service names"
        )
    # (what was refused, why) -> the hosts; per service, each host's releases that
    # release=<id> may name there (None: that host refused, so unknown).
    problems: dict[tuple[str, str], list[str]] = {}
    named: dict[str, list[set[str] | None]] = {name: [] for name in services}
    refused: set[str] = set()
    for host in sorted(targets):
        for result in targets[host] or []:
            name = (result.get("item") or {}).get("name")
            if name not in named:
                continue
            if "target" not in result:
                # Whether a retry helps, as the host's module said it.
                retry = "a retry may help" if result.get("retryable") else NO_RETRY
                why = ("rollback refused", f"{result.get('msg') or 'no message'} ({retry})")
                named[name].append(None)
            else:
                named[name].append(set(result.get("named_targets") or []))
                if result["target"] is not None:
                    continue
                why = (
                    f"rollback of {name} refused",
                    f"no release to roll back to ({result.get('reason') or 'no reason given'}); "
                    f"{result.get('current') or 'nothing'} stays current ({NO_RETRY})",
                )
            refused.add(name)
            problems.setdefault(why, []).append(host)
    lines = [f"{what} on {', '.join(hosts)}: {why}" for (what, why), hosts in problems.items()]
    split = {name: flipback_target_disagreement(targets, name) for name in services}
    for name in services:
        if split[name]:
            refused.add(name)
            lines.append(
                f"rollback of {name} refused: the hosts would go back to different builds "
                f"({split[name]}), which would split the fleet ({NO_RETRY})"
            )
    if not lines:
        return ""
    out = ["rollback refused; nothing was changed on any host.", *(f"- {x}" for x in lines)]
    out.append("What to do next:")
    for name in (n for n in services if n in refused):
        known = named[name]
        common = []
        if known and None not in known:
            common = sorted(set.intersection(*known), reverse=True)
        if common:
            also = f" (or {', '.join(common[1:4])})" if len(common) > 1 else ""
            out.append(
                f"- name the release of {name} to go back to, one every host has{also}: "
                f"ansible-playbook playbooks/rollback.yml -e service={name} -e release={common[0]}"
            )
        elif None in known:
            out.append(
                f"- {name}: name a release every host has; each host's releases: "
                f"ansible-playbook playbooks/status.yml -e service={name}"
            )
        else:
            out.append(
                f"- {name}: no release other than the current one is on every host: deploy "
                f"the one you want (playbooks/deploy.yml -e service={name} -e ref=<git ref>)"
            )
        out.append(
            f"- what {name} ran, and when: ansible-playbook playbooks/history.yml -e service={name}"
        )
    if any(split.values()):
        out.append("- or roll the hosts back apart, each group with --limit")
    return "\n".join(out)


def flipback_verify_report(statuses: object, services: object) -> dict:
    """What verify.yml says, once for the fleet: {'text': ..., 'failed_hosts': [...]}.

    `statuses` maps each host to its service_status result; a service passes on a host
    when a release is live there and the public port answers with it, and passes on the
    fleet when every host runs one build of it. Hosts with the same outcome share a line;
    on failure the text ends with what to run next."""
    if not isinstance(statuses, dict) or not isinstance(services, list):
        raise AnsibleFilterError(
            f"flipback_verify_report: got {type(statuses).__name__} and "
            f"{type(services).__name__}, expected a dict of hosts and a list of service names"
        )
    lines: list[str] = []
    problems: dict[str, set[str]] = {}  # service -> kinds: live, answer, build
    failed: set[str] = set()
    previous: dict[str, set[str]] = {}  # where the live release fails: its previous good
    for name in services:
        groups: dict[tuple[bool, str], list[str]] = {}
        builds: dict[str, list[str]] = {}
        for host in sorted(statuses):
            found = [
                s for s in (statuses[host] or {}).get("services") or [] if s.get("name") == name
            ]
            report = found[0] if found else {}
            current, health = report.get("current"), report.get("health") or {}
            if not found:
                outcome, kind = "not read (the host gave no status)", "live"
            elif report.get("error"):
                outcome, kind = f"could not be read: {report['error']}", "live"
            elif current is None:
                outcome, kind = "NO RELEASE IS LIVE; expected a deployed release", "live"
            elif health.get("ok") and health.get("release") == current:
                outcome, kind = f"{current} answers", ""
            else:
                answered = health.get("release") or "nothing"
                error = f" ({health['error']})" if health.get("error") else ""
                outcome = f"current {current}, the public port answered {answered}{error}; "
                outcome += "expected the current release to answer"
                kind = "answer"
                if report.get("previous_good"):
                    previous.setdefault(name, set()).add(report["previous_good"])
            if kind:
                problems.setdefault(name, set()).add(kind)
                failed.add(host)
            groups.setdefault((not kind, outcome), []).append(host)
            if current is not None:
                builds.setdefault(str(build_of(report)), []).append(host)
        for (ok, outcome), hosts in sorted(groups.items()):
            lines.append(f"{'' if ok else 'FAILED '}{name} on {', '.join(hosts)}: {outcome}")
        if len(builds) > 1:
            problems.setdefault(name, set()).add("build")
            failed.update(h for hosts in builds.values() for h in hosts)
            split = "; ".join(f"{', '.join(h)} on build {b}" for b, h in sorted(builds.items()))
            lines.append(f"FAILED {name}: the hosts run different builds: {split}")
    if not problems:
        head = "verify passed: every service answers with its current release, one build each"
        return {"text": "\n".join([head, *(f"- {x}" for x in lines)]), "failed_hosts": []}
    out = [f"verify FAILED for {', '.join(n for n in services if n in problems)}:"]
    out += [f"- {x}" for x in lines]
    out.append("What to do next:")
    for name in (n for n in services if n in problems):
        kinds, e = problems[name], f"-e service={name}"
        out.append(
            f"- {name}: see each host and its instance: ansible-playbook playbooks/status.yml {e}"
            f"; the journal: ansible-playbook playbooks/logs.yml {e} -e since=15m"
        )
        if "live" in kinds:
            out.append(f"- {name}: deploy it: ansible-playbook playbooks/deploy.yml {e}")
        if "answer" in kinds and previous.get(name):
            out.append(
                f"- {name}: go back to the previous good release ("
                + ", ".join(sorted(previous[name]))
                + f"): ansible-playbook playbooks/rollback.yml {e}"
            )
        elif "answer" in kinds:
            out.append(
                f"- {name}: no previous good release here; deploy one that works: "
                f"ansible-playbook playbooks/deploy.yml {e} -e ref=<git ref>"
            )
        if "build" in kinds:
            out.append(
                f"- {name}: put every host on one build: ansible-playbook playbooks/deploy.yml "
                f"{e} -e ref=<git ref>, or playbooks/rollback.yml {e} -e release=<id>"
            )
    return {"text": "\n".join(out), "failed_hosts": sorted(failed)}


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
            "flipback_rollback_refusal": flipback_rollback_refusal,
            "flipback_verify_report": flipback_verify_report,
            "flipback_lock_hold": flipback_lock_hold,
        }
