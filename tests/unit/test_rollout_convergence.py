"""Unit tests of how a stopped rollout converges, and of the run ids it relies on.

Controller side: the filters flipback_restore_target, flipback_failed_on and
flipback_target_disagreement (plugins/filter/flipback.py) and the report line of a
host restored because an earlier run put it live half-way (rollout_report). Both
plugin files are loaded from their paths, as test_action_plugins loads them.

Host side: history lines name the run that wrote them (history_event, Releases,
the stage and the switch), Releases.target names the build of its target, and
Prepare says which runs touched the release here (release_runs) and, when it is
live, which run put it live and what it replaced (live). The release trees and fake
hosts are those of the modules' own tests (test_flipback_release, _prepare, _stage,
_switch), imported as modules so that their names do not mix.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
import test_flipback_prepare as prepare_tests
import test_flipback_release as release_tests
import test_flipback_stage as stage_tests
import test_flipback_switch as switch_tests
from ansible.errors import AnsibleFilterError
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_prepare import Prepare
from ansible.module_utils.flipback_release import (
    Releases,
    append_history,
    history_event,
    read_history,
    utc_iso,
)
from ansible.module_utils.flipback_stage import Stager
from fakes import StageRunner, load_plugin

load = load_plugin

rollout_report = load("rollout_report")
filters = load("flipback", "filter")

controller = pytest.mark.controller
# Prepare hands files to root and the service user: fakes.Ownership unless run as root.
owned = pytest.mark.usefixtures("ownership")

# What the fleet ran before, and the release of the rollout that stopped.
BEFORE = "20261101T120000-aaaaaaaaaa"
NEW = "20261102T120000-bbbbbbbbbb"
OLDER = "20261031T120000-9999999999"
# The run that stopped now, an earlier one killed half-way, and an unrelated one.
THIS_RUN = "ctl:5000:1795960000"
EARLIER = "ctl:4000:1795950000"
UNRELATED = "ctl:3000:1795940000"


# =========================================================================== restore target


def switched(previous: str | None = BEFORE) -> dict:
    return {"outcome": "switched", "release": NEW, "current": NEW, "previous": previous}


def already_live(run: str | None, replaced: str | None = BEFORE, runs: tuple = ()) -> dict:
    """Found live on NEW; `run` put it live (None: no run recorded), replacing `replaced`."""
    return {
        "outcome": "already live",
        "release": NEW,
        "previous": NEW,
        "live": {"run": run, "from": replaced},
        "release_runs": sorted({*runs, *([run] if run else [])}),
    }


def left(outcome: str = "staged", runs: tuple = (EARLIER, THIS_RUN)) -> dict:
    """A host not live on NEW in this run, where `runs` wrote events of NEW."""
    return {"outcome": outcome, "release": NEW, "previous": BEFORE, "release_runs": list(runs)}


# What a filter may be given instead of a dict, and the type it names.
NOT_DICTS = [
    pytest.param(None, "NoneType", id="none"),
    pytest.param(["h1"], "list", id="list"),
    pytest.param("h1", "str", id="str"),
    pytest.param(3, "int", id="int"),
]


def fleet(**hosts: dict | None) -> dict:
    """Each host's flipback_rollout: {service: state} for the web service."""
    return {host: (None if state is None else {"web": state}) for host, state in hosts.items()}


@controller
@pytest.mark.parametrize(
    ("rollouts", "target"),
    [
        pytest.param(fleet(h1=switched(), h2=left()), BEFORE, id="switched-goes-back"),
        pytest.param(
            fleet(h1=switched(previous=None), h2=left()), "", id="switched-on-a-first-deploy"
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER), h2=left("staged")),
            BEFORE,
            id="live-by-an-earlier-run-that-left-a-host-staged",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER), h2=left("not switched")),
            BEFORE,
            id="live-by-an-earlier-run-that-left-a-host-not-switched",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER), h2=left("failed")),
            BEFORE,
            id="live-by-an-earlier-run-that-left-a-host-failed",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER, replaced=OLDER), h2=left()),
            OLDER,
            id="goes-back-to-what-that-run-replaced",
        ),
        pytest.param(
            fleet(h1=already_live(THIS_RUN), h2=left(runs=(THIS_RUN,))),
            "",
            id="live-by-this-run",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER), h2=left(runs=(UNRELATED, THIS_RUN))),
            "",
            id="live-by-a-run-no-other-host-lists",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER), h2=already_live(EARLIER)),
            "",
            id="the-run-finished-everywhere-it-went",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER, runs=(EARLIER,)), h2=left(runs=(THIS_RUN,))),
            "",
            id="listed-only-by-the-host-itself",
        ),
        pytest.param(
            fleet(h1=already_live(None), h2=left()), "", id="live-before-with-no-run-recorded"
        ),
        pytest.param(
            fleet(h1={"outcome": "already live", "release": NEW, "live": None}, h2=left()),
            "",
            id="live-without-an-active-event",
        ),
        pytest.param(
            fleet(h1=already_live(EARLIER, replaced=None), h2=left()),
            "",
            id="nothing-before-the-earlier-run",
        ),
        pytest.param(fleet(h1=left("staged"), h2=left()), "", id="staged-here-stays"),
        pytest.param(fleet(h1=left("failed"), h2=left()), "", id="failed-here-stays"),
        pytest.param(fleet(h2=switched()), "", id="host-that-did-not-report"),
        pytest.param(fleet(h1=None, h2=switched()), "", id="host-with-no-rollout"),
    ],
)
def test_restore_target(rollouts, target):
    assert filters.flipback_restore_target(rollouts, "h1", "web", THIS_RUN) == target


@controller
def test_restore_target_counts_only_the_runs_of_the_same_service():
    rollouts = {
        "h1": {"web": already_live(EARLIER), "api": already_live(EARLIER)},
        # EARLIER left api behind on h2, not web.
        "h2": {"web": already_live(EARLIER), "api": left()},
    }
    restore_target = filters.flipback_restore_target
    assert restore_target(rollouts, "h1", "web", THIS_RUN) == ""
    assert restore_target(rollouts, "h1", "api", THIS_RUN) == BEFORE


@controller
def test_restore_target_skips_hosts_without_a_state_for_the_service():
    rollouts = {
        "h1": {"web": already_live(EARLIER)},
        "h2": None,
        "h3": {"api": left()},
        "h4": {"web": None},
        "h5": {"web": left("not switched", runs=(EARLIER,))},
    }
    assert filters.flipback_restore_target(rollouts, "h1", "web", THIS_RUN) == BEFORE


@controller
def test_restore_target_across_a_fleet_a_killed_deploy_left_behind():
    # EARLIER switched the canary h1 and was killed; h2 ran NEW before any of it (a host
    # that joined later); this run switched h3, then failed on h4.
    rollouts = fleet(
        h1=already_live(EARLIER),
        h2=already_live(None),
        h3=switched(),
        h4=left("failed", runs=(EARLIER, THIS_RUN)),
    )
    targets = {
        host: filters.flipback_restore_target(rollouts, host, "web", THIS_RUN) for host in rollouts
    }
    assert targets == {"h1": BEFORE, "h2": "", "h3": BEFORE, "h4": ""}


@controller
@pytest.mark.parametrize(("rollouts", "kind"), NOT_DICTS)
def test_restore_target_refuses_what_is_not_a_dict(rollouts, kind):
    with pytest.raises(AnsibleFilterError) as raised:
        filters.flipback_restore_target(rollouts, "h1", "web", THIS_RUN)
    assert f"flipback_restore_target: got {kind}, expected a dict" in str(raised.value)


# =========================================================================== failed on


@controller
def test_failed_on_lists_the_hosts_where_the_service_failed_sorted():
    rollouts = {
        "web-3": {"web": left("failed"), "api": switched()},
        "web-1": {"web": left("failed")},
        "web-2": {"web": switched()},
        "web-4": {"web": left("staging failed")},
        "web-5": {"api": left("failed")},
        "web-6": None,
        "web-0": {"web": None},
    }
    assert filters.flipback_failed_on(rollouts, "web") == ["web-1", "web-3"]
    assert filters.flipback_failed_on(rollouts, "api") == ["web-5"]
    assert filters.flipback_failed_on(rollouts, "worker") == []


@controller
@pytest.mark.parametrize(("rollouts", "kind"), NOT_DICTS)
def test_failed_on_refuses_what_is_not_a_dict(rollouts, kind):
    with pytest.raises(AnsibleFilterError) as raised:
        filters.flipback_failed_on(rollouts, "web")
    assert f"flipback_failed_on: got {kind}, expected a dict" in str(raised.value)


# =========================================================================== disagreement


def found(service: str, target: str | None, build: str | None = None) -> dict:
    """One result of `release: action=target` looped over the services."""
    return {"item": {"name": service}, "target": target, "build": build}


@controller
def test_no_disagreement_for_one_build_of_different_release_ids():
    # Hosts with their own configuration run their own release ids of one build.
    targets = {
        "h1": [found("web", BEFORE, build=OLDER)],
        "h2": [found("web", NEW, build=OLDER)],
        "h3": [found("web", OLDER)],
    }
    assert filters.flipback_target_disagreement(targets, "web") == ""


@controller
def test_disagreement_names_each_build_with_its_hosts():
    targets = {
        "h3": [found("web", NEW, build="build-b")],
        "h1": [found("web", BEFORE, build="build-a")],
        "h2": [found("web", OLDER, build="build-a")],
    }
    assert filters.flipback_target_disagreement(targets, "web") == (
        f"build build-a: h1 -> {BEFORE}, h2 -> {OLDER}; build build-b: h3 -> {NEW}"
    )


@controller
def test_disagreement_takes_the_target_for_the_build_of_an_older_release():
    # A release staged before releases recorded their build is its own build.
    targets = {"h1": [found("web", BEFORE, build=None)], "h2": [found("web", NEW, build=NEW)]}
    assert filters.flipback_target_disagreement(targets, "web") == (
        f"build {BEFORE}: h1 -> {BEFORE}; build {NEW}: h2 -> {NEW}"
    )


@controller
def test_disagreement_looks_only_at_the_service_and_at_hosts_with_a_target():
    targets = {
        "h1": [found("web", BEFORE, build="build-a"), found("api", NEW, build="build-z")],
        "h2": [found("api", OLDER, build="build-y"), found("web", BEFORE, build="build-a")],
        "h3": [found("web", None)],
        "h4": [],
        "h5": None,
        "h6": [{"skipped": True}],
    }
    assert filters.flipback_target_disagreement(targets, "web") == ""
    assert filters.flipback_target_disagreement(targets, "api") == (
        f"build build-y: h2 -> {OLDER}; build build-z: h1 -> {NEW}"
    )


@controller
@pytest.mark.parametrize(("targets", "kind"), NOT_DICTS)
def test_disagreement_refuses_what_is_not_a_dict(targets, kind):
    with pytest.raises(AnsibleFilterError) as raised:
        filters.flipback_target_disagreement(targets, "web")
    assert f"flipback_target_disagreement: got {kind}, expected a dict" in str(raised.value)


# =========================================================================== refusal


def target_found(service: str, chosen: str | None, named: tuple = (), **result: object) -> dict:
    """A result of `release: action=target`: a target (or None, with the reason)."""
    return {
        "item": {"name": service},
        "target": chosen,
        "build": chosen,
        "current": NEW,
        "named_targets": list(named),
        **result,
    }


def target_refused(service: str, msg: str) -> dict:
    """The module's refusal, kept as data (failed_when: false): no `target` key."""
    return {"item": {"name": service}, "failed": False, "msg": msg}


NO_PREVIOUS = "no previous good release: history has only " + NEW


@controller
def test_no_refusal_when_every_host_has_one_target_build():
    targets = {"h1": [target_found("web", BEFORE)], "h2": [target_found("web", BEFORE)], "h3": None}
    assert filters.flipback_rollback_refusal(targets, ["web"]) == ""


@controller
def test_no_target_anywhere_is_said_once_with_the_release_to_name():
    both = (BEFORE, OLDER)
    targets = {
        "h2": [target_found("web", None, both, reason=NO_PREVIOUS)],
        "h1": [
            target_found(
                "web", None, (OLDER, BEFORE, "20261103T120000-cccccccccc"), reason=NO_PREVIOUS
            )
        ],
    }
    text = filters.flipback_rollback_refusal(targets, ["web"])
    assert text.splitlines() == [
        "rollback refused; nothing was changed on any host.",
        f"- rollback of web refused on h1, h2: no release to roll back to ({NO_PREVIOUS}); "
        f"{NEW} stays current (retrying the same command does not help)",
        "What to do next:",
        f"- name the release of web to go back to, one every host has (or {OLDER}): "
        f"ansible-playbook playbooks/rollback.yml -e service=web -e release={BEFORE}",
        "- what web ran, and when: ansible-playbook playbooks/history.yml -e service=web",
    ]


@controller
def test_a_host_refusing_a_named_release_is_named_and_no_release_is_guessed():
    msg = f"release: got {BEFORE!r}, expected a release directory"
    targets = {
        "h1": [target_found("web", BEFORE, (BEFORE,))],
        "h2": [target_refused("web", msg)],
        "h3": [target_found("api", None, reason="x")],  # another service: not asked
    }
    text = filters.flipback_rollback_refusal(targets, ["web"])
    assert text.count(msg) == 1
    assert f"- rollback refused on h2: {msg} (retrying the same command does not help)" in text
    retryable = {**targets, "h2": [{**target_refused("web", msg), "retryable": True}]}
    assert f"{msg} (a retry may help)" in filters.flipback_rollback_refusal(retryable, ["web"])
    assert "-e release=" not in text
    assert "playbooks/status.yml -e service=web" in text
    assert "playbooks/history.yml -e service=web" in text


@controller
def test_no_common_release_says_to_deploy_one():
    targets = {
        "h1": [target_found("web", None, (BEFORE,), reason=NO_PREVIOUS)],
        "h2": [target_found("web", None, (OLDER,), reason=NO_PREVIOUS)],
    }
    text = filters.flipback_rollback_refusal(targets, ["web"])
    assert "-e release=" not in text
    assert "deploy the one you want (playbooks/deploy.yml -e service=web -e ref=<git ref>)" in text


@controller
def test_targets_of_different_builds_are_refused_with_each_host_named():
    targets = {
        "h1": [target_found("web", BEFORE, (BEFORE, OLDER))],
        "h2": [target_found("web", OLDER, (BEFORE, OLDER))],
    }
    text = filters.flipback_rollback_refusal(targets, ["web"])
    assert (
        f"- rollback of web refused: the hosts would go back to different builds (build "
        f"{OLDER}: h2 -> {OLDER}; build {BEFORE}: h1 -> {BEFORE}), which would split the fleet"
    ) in text
    assert f"-e service=web -e release={BEFORE}" in text
    assert text.endswith("- or roll the hosts back apart, each group with --limit")


@controller
@pytest.mark.parametrize(("targets", "services"), [([], ["web"]), ({}, "web")], ids=["list", "str"])
def test_refusal_refuses_input_of_another_shape(targets, services):
    with pytest.raises(AnsibleFilterError, match="expected a dict of hosts and a list"):
        filters.flipback_rollback_refusal(targets, services)


# =========================================================================== verify


def service_status(
    current: str | None = NEW,
    answered: str | None = NEW,
    build: str | None = "build-a",
    **report: object,
) -> dict:
    """One service of a service_status result, as verify.yml reads it."""
    health = {"ok": answered is not None, "release": answered, "error": None}
    if answered is None:
        health["error"] = "status 502, expected one of [200]"
    return {"name": "web", "current": current, "build": build, "health": health, **report}


def statuses_of(**hosts: list) -> dict:
    return {host: {"services": services} for host, services in hosts.items()}


@controller
def test_verify_passes_in_one_line_per_outcome():
    report = filters.flipback_verify_report(
        statuses_of(h2=[service_status()], h1=[service_status()]), ["web"]
    )
    assert report == {
        "text": "verify passed: every service answers with its current release, one build "
        f"each\n- web on h1, h2: {NEW} answers",
        "failed_hosts": [],
    }


@controller
@pytest.mark.parametrize(
    ("h2", "outcome", "next_step"),
    [
        pytest.param(
            service_status(current=None, answered=None, build=None),
            "FAILED web on h2: NO RELEASE IS LIVE; expected a deployed release",
            "- web: deploy it: ansible-playbook playbooks/deploy.yml -e service=web",
            id="nothing-live",
        ),
        pytest.param(
            service_status(answered=None, previous_good=BEFORE),
            f"FAILED web on h2: current {NEW}, the public port answered nothing (status 502, "
            "expected one of [200]); expected the current release to answer",
            f"- web: go back to the previous good release ({BEFORE}): "
            "ansible-playbook playbooks/rollback.yml -e service=web",
            id="not-answering",
        ),
        pytest.param(
            service_status(answered=BEFORE),
            f"FAILED web on h2: current {NEW}, the public port answered {BEFORE}; expected the "
            "current release to answer",
            "- web: no previous good release here; deploy one that works: "
            "ansible-playbook playbooks/deploy.yml -e service=web -e ref=<git ref>",
            id="another-release-answers",
        ),
        pytest.param(
            service_status(error="history line 3 is not JSON"),
            "FAILED web on h2: could not be read: history line 3 is not JSON",
            "- web: deploy it",
            id="unreadable",
        ),
    ],
)
def test_verify_failure_names_the_host_and_the_next_step(h2, outcome, next_step):
    report = filters.flipback_verify_report(statuses_of(h1=[service_status()], h2=[h2]), ["web"])
    lines = report["text"].splitlines()
    assert lines[0] == "verify FAILED for web:"
    assert lines[1] == f"- {outcome}"
    assert lines[2] == f"- web on h1: {NEW} answers"
    assert "What to do next:" in lines
    assert any(line.startswith(next_step) for line in lines), lines
    assert "ansible-playbook playbooks/status.yml -e service=web" in report["text"]
    assert report["failed_hosts"] == ["h2"]


@controller
def test_verify_fails_every_host_of_a_split_fleet():
    statuses = statuses_of(
        h1=[service_status(build="build-a")], h2=[service_status(build="build-b")], h3=None
    )
    report = filters.flipback_verify_report(statuses, ["web"])
    assert (
        "- FAILED web: the hosts run different builds: h1 on build build-a; h2 on "
        in (report["text"])
    )
    assert "- FAILED web on h3: not read (the host gave no status)" in report["text"]
    assert report["failed_hosts"] == ["h1", "h2", "h3"]
    assert "-e service=web -e ref=<git ref>, or playbooks/rollback.yml" in report["text"]


@controller
@pytest.mark.parametrize(
    ("statuses", "services"), [([], ["web"]), ({}, "web")], ids=["list", "str"]
)
def test_verify_report_refuses_input_of_another_shape(statuses, services):
    with pytest.raises(AnsibleFilterError, match="expected a dict of hosts and a list"):
        filters.flipback_verify_report(statuses, services)


# =========================================================================== report


def restore(name: str, **result: object) -> dict:
    return {"_flipback_item": {"name": name}, **result}


HALF_WAY = (
    f"restored to {BEFORE} (it had gone live on {NEW} in an earlier run that stopped half-way)"
)


@controller
def test_host_line_of_a_host_restored_after_an_earlier_run_put_it_live():
    # The restore's release_switch result: release is where it went back to, previous
    # what it ran (NEW, put live by the earlier run).
    restores = [restore("web", changed=True, release=BEFORE, previous=NEW)]

    rows, problems = rollout_report.host_lines("h1", {"web": already_live(EARLIER)}, restores)

    assert rows == [
        {"host": "h1", "service": "web", "outcome": HALF_WAY, "ok": True, "config_changes": []}
    ]
    assert problems == []


@controller
def test_host_line_of_a_failed_restore_of_an_already_live_host_is_a_problem():
    restores = [restore("web", failed=True, msg="Gate 2", release=BEFORE, previous=NEW)]

    rows, problems = rollout_report.host_lines("h1", {"web": already_live(EARLIER)}, restores)

    assert [(r["outcome"], r["ok"]) for r in rows] == [("RESTORE FAILED: Gate 2", False)]
    assert problems == ["h1 web: RESTORE FAILED: Gate 2"]


@controller
def test_host_line_of_an_already_live_host_not_restored_is_unchanged():
    rows, problems = rollout_report.host_lines("h1", {"web": already_live(None)}, [])
    assert [r["outcome"] for r in rows] == [f"already live on {NEW}"]
    assert problems == []


@controller
def test_report_of_a_stopped_rollout_that_restored_a_half_way_host():
    rollout = fleet(
        h1=already_live(EARLIER),
        h2={"outcome": "failed", "error": "deploy of web failed on h2: Gate 1"},
        h3=switched(),
    )
    restored = {
        "h1": [restore("web", changed=True, release=BEFORE, previous=NEW)],
        "h3": [restore("web", changed=True, release=BEFORE, previous=NEW)],
    }
    task = SimpleNamespace(
        args={"hosts": ["h1", "h2", "h3"], "rollout": rollout, "restored": restored},
        async_val=0,
        check_mode=False,
        action="test",
    )
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/nonexistent"))
    module = rollout_report.ActionModule(task, connection, None, None, None, None)

    result = module.run(task_vars={})

    assert result["failed"] is True
    assert result["problems"] == ["deploy of web failed on h2: Gate 1"]
    assert result["lines"] == [
        f"h1    web: {HALF_WAY}",
        "h2    web: deploy of web failed on h2: Gate 1",
        f"h3    web: restored to {BEFORE} (had switched to {NEW})",
    ]


# =========================================================================== history runs


@pytest.fixture
def tree(tmp_path) -> release_tests.Tree:
    return release_tests.Tree(str(tmp_path / "srv" / release_tests.SERVICE))


def releases_of(tree: release_tests.Tree, run_id: str | None) -> Releases:
    return Releases(
        release_tests.SERVICE,
        tree.root,
        clock=lambda: release_tests.NOW,
        unit_dir=tree.unit_dir,
        legacy_env_dir=tree.legacy_env_dir,
        run_id=run_id,
    )


def test_history_event_names_no_run_unless_told():
    assert history_event(NEW, "staged", by="alice")["run"] is None
    assert history_event(NEW, "staged", by="alice", run=THIS_RUN)["run"] == THIS_RUN


def test_every_event_of_releases_names_its_run(tree):
    a, b, c = release_tests.A, release_tests.B, release_tests.C
    tree.deployed(a)
    tree.release(b).release(c)
    releases = releases_of(tree, THIS_RUN)

    releases.activate(b, by="bob", note="", check_mode=False)
    releases.record(c, "failed", by="bob", note="", check_mode=False)
    releases.prune(1, by="bob", note="", check_mode=False)

    written = [(e["release"], e["event"], e["run"]) for e in read_history(tree.root)[2:]]
    assert written == [
        (b, "active", THIS_RUN),
        (c, "failed", THIS_RUN),
        # keep=1 keeps the previous good release A; the failed C goes.
        (c, "pruned", THIS_RUN),
    ]


def test_events_of_releases_without_a_run_name_none(tree):
    tree.release(release_tests.A)
    releases_of(tree, None).activate(release_tests.A, by="bob", note="", check_mode=False)
    assert read_history(tree.root)[-1]["run"] is None


def test_the_run_is_kept_in_history_as_written(tree):
    tree.release(release_tests.A)
    releases_of(tree, EARLIER).activate(release_tests.A, by="bob", note="", check_mode=False)
    with open(os.path.join(tree.root, "history.jsonl")) as handle:
        line = json.loads(handle.read().splitlines()[-1])
    assert (line["event"], line["run"]) == ("active", EARLIER)


@owned
def test_the_staged_event_names_the_run_that_staged(tmp_path):
    root = tmp_path / "srv" / stage_tests.SERVICE
    artifact = stage_tests.build_artifact(tmp_path)
    spec = stage_tests.make_spec(root, artifact, tmp_path, run_id=THIS_RUN)

    Stager(spec, run=StageRunner()).stage(check_mode=False)

    last = read_history(str(root))[-1]
    assert (last["release"], last["event"], last["run"]) == (spec.release, "staged", THIS_RUN)


def test_the_active_event_of_a_switch_names_its_run(tmp_path):
    tree = switch_tests.Tree(str(tmp_path / "srv" / "shop"), str(tmp_path / "nginx" / "conf.d"))
    switch_tests.live_a_staged_b(tree)
    unit_a = switch_tests.UNIT_A
    host = switch_tests.Host(tree, active=[unit_a], enabled=[unit_a])

    result = host.switch(run_id=THIS_RUN).switch(check_mode=False)

    assert result["current"] == switch_tests.B
    last = tree.history()[-1]
    assert (last["release"], last["event"], last["run"]) == (switch_tests.B, "active", THIS_RUN)


# =========================================================================== target build


def with_build(tree: release_tests.Tree, release_id: str, build: str) -> None:
    path = tree.path(release_id, "manifest.json")
    with open(path) as handle:
        manifest = json.load(handle)
    with open(path, "w") as handle:
        json.dump({**manifest, "build": build}, handle)


def test_target_names_the_build_of_the_release_it_goes_back_to(tree):
    tree.deployed(release_tests.A, release_tests.B)
    with_build(tree, release_tests.A, OLDER)
    with_build(tree, release_tests.B, NEW)

    result = tree.releases().target(None, None)

    assert (result["target"], result["build"]) == (release_tests.A, OLDER)


def test_target_of_a_release_without_a_recorded_build_is_its_own_build(tree):
    tree.deployed(release_tests.A, release_tests.B)
    result = tree.releases().target(None, None)
    assert (result["target"], result["build"]) == (release_tests.A, release_tests.A)


def test_target_named_names_its_build(tree):
    tree.deployed(release_tests.A, release_tests.B, release_tests.C)
    with_build(tree, release_tests.A, OLDER)

    result = tree.releases().target(release_tests.A, None)

    assert (result["target"], result["build"]) == (release_tests.A, OLDER)


def test_target_already_current_names_its_build(tree):
    tree.deployed(release_tests.A, release_tests.B)
    with_build(tree, release_tests.B, NEW)
    result = tree.releases().target(release_tests.B, None)
    assert (result["target"], result["build"]) == (release_tests.B, NEW)


def test_no_target_has_no_build(tree):
    tree.deployed(release_tests.A)
    result = tree.releases().target(None, None)
    assert (result["target"], result["build"]) == (None, None)


# =========================================================================== prepare runs


@pytest.fixture
def paths(tmp_path, monkeypatch) -> prepare_tests.Paths:
    root = tmp_path / "srv" / prepare_tests.SERVICE
    accounts = prepare_tests.Accounts.made_by_flipback(root).install(monkeypatch)
    return prepare_tests.Paths(tmp_path, accounts)


def event(paths: prepare_tests.Paths, release_id: str, name: str, **fields: object) -> None:
    append_history(str(paths.root), history_event(release_id, name, by="alice", **fields))


def prepared(paths: prepare_tests.Paths, release: str) -> dict:
    return paths.prepare(prepare_tests.live_host(), release).prepare(check_mode=False)


A, B, C = prepare_tests.A, prepare_tests.B, prepare_tests.C


@owned
def test_release_runs_are_the_runs_with_events_of_the_release_here(paths):
    prepare_tests.ready(paths)
    paths.release(C)
    event(paths, C, "staged", run="ctl:9:2")
    event(paths, C, "failed", run="ctl:1:1")
    event(paths, C, "staged", run="ctl:9:2")
    event(paths, C, "staged")  # written before events named their run
    event(paths, B, "rolled_back", run=UNRELATED)  # another release

    result = prepared(paths, C)

    assert result["release_runs"] == ["ctl:1:1", "ctl:9:2"]
    assert result["live"] is None


@owned
def test_release_runs_of_a_release_never_seen_here_are_none(paths):
    prepare_tests.ready(paths)
    event(paths, B, "active", run=EARLIER)
    result = prepared(paths, C)
    assert (result["release_runs"], result["live"]) == ([], None)


@owned
def test_live_names_the_run_of_the_last_active_event_and_what_it_replaced(paths):
    prepare_tests.ready(paths)  # A then B went live, with no run recorded
    paths.release(C)
    event(paths, C, "staged", run=EARLIER)
    event(paths, C, "active", run=EARLIER, from_release=B)
    event(paths, C, "rolled_back", run=UNRELATED)
    event(paths, C, "active", run=THIS_RUN, from_release=A)
    os.unlink(paths.root / "current")
    paths.current(C)

    result = prepared(paths, C)

    assert result["live"] == {"run": THIS_RUN, "from": A}
    assert result["release_runs"] == sorted([EARLIER, UNRELATED, THIS_RUN])


@owned
def test_live_of_a_release_put_live_before_runs_were_recorded_names_no_run(paths):
    prepare_tests.ready(paths)  # B went live from A by a flipback that named no run

    result = prepared(paths, B)

    assert result["current"] == B
    assert result["live"] == {"run": None, "from": None}
    assert result["release_runs"] == []


@owned
def test_live_names_the_release_it_replaced(paths):
    prepare_tests.ready(paths)
    paths.release(C)
    event(paths, C, "active", run=EARLIER, from_release=B)
    os.unlink(paths.root / "current")
    paths.current(C)

    result = prepared(paths, C)

    assert result["live"] == {"run": EARLIER, "from": B}
    assert result["release_runs"] == [EARLIER]
    # What flipback_restore_target reads: EARLIER put C live here, replacing B.
    rollouts = fleet(
        h1={"outcome": "already live", **{k: result[k] for k in ("live", "release_runs")}},
        h2=left(runs=(EARLIER,)),
    )
    assert filters.flipback_restore_target(rollouts, "h1", "web", THIS_RUN) == B


@owned
def test_live_is_none_when_the_current_release_has_no_active_event(paths):
    prepare_tests.ready(paths)
    paths.release(C)
    event(paths, C, "staged", run=EARLIER)
    os.unlink(paths.root / "current")
    paths.current(C)  # flipped by hand: no history line

    result = prepared(paths, C)

    assert (result["live"], result["release_runs"]) == (None, [EARLIER])


def stale_lock(paths: prepare_tests.Paths, **owner: str) -> None:
    """A lock left by a run that is gone: older than its ttl."""
    since = time.time() - 4000
    holder = {
        "service": prepare_tests.SERVICE,
        "by": "alice",
        **owner,
        "since": utc_iso(since),
        "ttl": 1800,
        "expires": since + 1800,
        "refreshed": since,
        "stale_after": 120,
    }
    paths.lock.mkdir(parents=True, exist_ok=True)
    (paths.lock / ".lock").write_text(json.dumps(holder))


@owned
def test_release_runs_name_the_deploy_whose_lock_was_taken_over(paths):
    prepare_tests.ready(paths)
    paths.release(C)
    event(paths, C, "staged", run=UNRELATED)
    stale_lock(paths, run_id=EARLIER, action="deploy", release=C)

    result = prepared(paths, C)

    assert result["lock"]["outcome"] == "took_over"
    assert result["release_runs"] == sorted([EARLIER, UNRELATED])


@owned
@pytest.mark.parametrize(
    "owner",
    [
        pytest.param({"run_id": EARLIER, "action": "rollback"}, id="a-rollback"),
        pytest.param({"run_id": EARLIER}, id="no-action"),
    ],
)
def test_release_runs_leave_out_a_lock_taken_over_from_what_is_no_deploy(paths, owner):
    prepare_tests.ready(paths)
    paths.release(C)
    stale_lock(paths, **owner)

    result = prepared(paths, C)

    assert result["lock"]["outcome"] == "took_over"
    assert result["release_runs"] == []


@owned
def test_release_runs_without_a_lock(paths):
    prepare_tests.ready(paths)
    paths.release(C)
    event(paths, C, "staged", run=EARLIER)

    result = Prepare(
        paths.spec(C, lock=None),
        run=prepare_tests.live_host().run,
        prober=prepare_tests.live_host().prober,
        lock=ServiceLock(prepare_tests.SERVICE, str(paths.lock)),
    ).prepare(check_mode=False)

    assert (result["lock"], result["release_runs"]) == (None, [EARLIER])
