"""Every step of a flipback release's life on one host: the release module's work.

library/release.py documents the module and runs this through AnsibleModule; the release
action runs it directly through flipback_runner when it can (no module payload per
call). Either way the parameters are the ones RELEASE_SPEC (flipback_request) checked.
This file, like every flipback module_util the host runs, imports nothing of Ansible.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil

from ansible.module_utils.flipback_command import ReleaseCommands
from ansible.module_utils.flipback_common import run_command
from ansible.module_utils.flipback_lock import ServiceLock
from ansible.module_utils.flipback_prepare import Prepare, PrepareSpec
from ansible.module_utils.flipback_release import (
    ReleaseError,
    Releases,
    current_release,
    validate_release_id,
    validate_service,
)
from ansible.module_utils.flipback_request import RELEASE_ACTIONS
from ansible.module_utils.flipback_runtime import (
    instance_unit,
    service_home,
    socket_dir_of,
    stop_instance,
)
from ansible.module_utils.flipback_stage import Stager, StageSpec
from ansible.module_utils.flipback_switch import Switch, SwitchSpec

# The options each action reads beyond action, service and run; any other option set is
# a mistake in the task (e.g. point with switch), reported rather than ignored.
ACTION_OPTIONS = {
    "prepare": ("release", "config", "env_file", "build", "lock_hold", "artifact_b64", "start"),
    "stage": (
        "release",
        "config",
        "env_file",
        "build",
        "upload",
        "artifact_b64",
        "start",
    ),
    "switch": ("release", "note"),
    "rollback": ("release", "note"),
    "restore": ("release", "note"),
    "command": ("release", "point"),
    "abandon": ("release", "note", "stop"),
    "target": ("release", "steps"),
}
REQUIRED = {
    "prepare": ("release", "config", "build"),
    "stage": ("release", "config", "env_file", "build"),
    "switch": ("release",),
    "rollback": ("release",),
    "restore": ("release",),
    "command": ("release", "point"),
    "abandon": ("release",),
    "target": (),
}
# The same steps, in the order RELEASE_SPEC lists them (a unit test holds the two equal).
ACTIONS = RELEASE_ACTIONS
# Every option some action reads, in the order check_options looks at them.
OPTIONAL = tuple(dict.fromkeys(name for names in ACTION_OPTIONS.values() for name in names))
# The actions that probe the release through the public port.
PROBING = ("prepare", "stage", "switch", "rollback", "restore")
# What a switch is part of, for the lock and history.
LOCK_ACTION = {
    "prepare": "deploy",
    "stage": "deploy",
    "switch": "deploy",
    "command": "deploy",
    "abandon": "deploy",
    "rollback": "rollback",
    "restore": "restore",
}


def check_options(params: dict) -> None:
    action = params["action"]
    for name in OPTIONAL:
        if params[name] is not None and name not in ACTION_OPTIONS[action]:
            users = [a for a, options in ACTION_OPTIONS.items() if name in options]
            raise ReleaseError(
                f"{name}: got a value, but action={action} does not use it; expected it only "
                f"with action={' or '.join(users)}",
                field=name,
            )
    for name in REQUIRED[action]:
        if params[name] is None:
            raise ReleaseError(
                f"{name}: missing; action={action} needs it. Retrying the same task does not help",
                field=name,
            )
    if action in PROBING and params["service"]["port"] is None:
        raise ReleaseError(
            f"service.port: missing; action={action} needs it (the service as "
            "service_config checked it). Retrying the same task does not help",
            field="service.port",
        )


class Request:
    """One call's parameters, read the way every action reads them."""

    def __init__(self, params: dict) -> None:
        self.params = params
        self.action = params["action"]
        self.service = params["service"]
        self.run = params["run"]
        self.name = validate_service(self.service["name"])
        self.home = service_home(self.run["root"], self.name)
        self.health = self.service["health"]
        if params["release"] is not None:
            validate_release_id(params["release"])

    @property
    def run_id(self) -> str | None:
        return self.run["run_id"]

    def owner(self) -> dict:
        found = {
            "run_id": self.run_id,
            "by": self.run["by"],
            "playbook": self.run["playbook"],
            "action": LOCK_ACTION.get(self.action),
            "release": self.params["release"],
        }
        return {key: value for key, value in found.items() if value is not None}

    def lock(self, *, wait: float, stale_after: int | None = None) -> dict | None:
        """The lock this call takes; None when the run names no run_id."""
        if not self.run_id:
            return None
        return {
            "owner": self.owner(),
            "wait": wait,
            "stale_after": stale_after or self.run["lock_stale_after"],
            "live_runs": self.run["live_runs"],
        }

    def public_health(self) -> dict:
        health = self.health
        return {
            "port": self.service["port"],
            "health_path": health["path"],
            "expect_status": tuple(health["expect_status"]),
            "expect_json": health["expect_json"],
            "release_in": health["release_in"],
            "health_host": health["host"],
            "public_successes": self.run["public_successes"],
        }


def prepare_spec(request: Request) -> PrepareSpec:
    params = request.params
    config = params["config"]
    return PrepareSpec(
        service=request.name,
        root=request.home,
        user=config.get("user") or request.service["user"] or request.name,
        adopt_user=request.service["adopt_user"],
        release=params["release"],
        lock=request.lock(wait=request.run["lock_wait"], stale_after=params["lock_hold"]),
        **request.public_health(),
        standby=request.run["standby"],
        deps_key=params["build"]["deps_key"],
        config=config,
        env_text=params["env_file"] or "",
    )


def stage_spec(request: Request) -> StageSpec:
    params = request.params
    build = params["build"]
    return StageSpec(
        service=request.name,
        root=request.home,
        release=params["release"],
        artifact=os.path.join(request.home, ".incoming", f"{params['release']}.tar"),
        checksum=build["checksum"],
        socket_dir=socket_dir_of(request.name),
        python="/usr/bin/python3",
        manifest={
            "git_sha": build["git_sha"],
            "ref": request.service["ref"],
            "source": build["source"],
            "health": request.health,
            # Every target's build of the run (a rollback may name another target's id).
            **({"builds": build["builds"]} if build.get("builds") else {}),
        },
        by=request.run["by"],
        run_id=request.run_id,
        deps_key=build["deps_key"],
        build_id=build["id"],
        config=params["config"],
        env_text=params["env_file"],
    )


def switch_spec(request: Request) -> SwitchSpec:
    params = request.params
    return SwitchSpec(
        service=request.name,
        root=request.home,
        release=params["release"],
        action="deploy" if request.action == "switch" else "rollback",
        **request.public_health(),
        health_timeout=request.health["timeout"],
        unhealthy_answers=request.health["unhealthy_answers"],
        drain_seconds=request.run["drain_seconds"],
        socket_dir=socket_dir_of(request.name),
        by=request.run["by"],
        note=params["note"] or "",
        run_id=request.run_id,
        standby=request.run["standby"],
        keep_releases=request.service["keep_releases"] if request.action == "switch" else 0,
    )


def place_artifact(path: str, *, upload: str | None, data_b64: str | None) -> None:
    """The artifact where staging reads it (root only, 0600): moved from where the action
    plugin uploaded it, or written from the bytes sent inline. Nothing is made on the
    host for an artifact that is refused."""
    data = b""
    if not upload:
        try:
            data = base64.b64decode(data_b64 or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ReleaseError(
                f"artifact_b64: not valid base64 ({exc}); expected the artifact's bytes",
                field="artifact_b64",
            ) from exc
    elif not os.path.isfile(upload):
        raise ReleaseError(
            f"artifact: the upload {upload} is not on the host (an earlier try may have "
            "used it); running the deploy again uploads it again",
            field="artifact",
            retryable=True,
        )
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if upload:
        shutil.move(upload, path)
        os.chown(path, 0, 0)
        os.chmod(path, 0o600)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        # O_CREAT's mode only applies to a new file.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def prepare(request: Request, check_mode: bool) -> dict:
    return Prepare(prepare_spec(request)).prepare(check_mode)


def stage(request: Request, check_mode: bool, diff_mode: bool) -> dict:
    params = request.params
    stager = Stager(stage_spec(request))
    if (params["upload"] or params["artifact_b64"]) and not check_mode and not stager.staged():
        place_artifact(
            stager.spec.artifact, upload=params["upload"], data_b64=params["artifact_b64"]
        )
    result = stager.stage(check_mode)
    diff = result.pop("diff", None)
    if diff_mode and diff is not None:
        result["diff"] = diff
    result["warmed"] = False
    if params["start"] and result["changed"] and not check_mode:
        result["warmed"] = stager.warm_up()
    result["outcome"] = "staged"
    return result


def switch(request: Request, check_mode: bool, warn, diff_mode: bool) -> dict:
    """The switch under the service's deploy lock, given back however the switch ends.
    A deploy's switch and a restore take the lock their run holds since staging (or
    fail at once); a rollback waits for it like a staging does."""
    wait = request.run["lock_wait"] if request.action == "rollback" else 0
    spec = switch_spec(request)
    lock_request = request.lock(wait=wait)
    if lock_request is None:
        result = Switch(spec).switch(check_mode)
    else:
        lock = ServiceLock(request.name)
        taken = lock.take(lock_request, check_mode=check_mode)
        for warning in taken.pop("warnings", []):
            warn(warning)
        try:
            result = Switch(spec).switch(check_mode)
        finally:
            if not check_mode:
                lock.release(lock_request["owner"])
    if not diff_mode:
        result.pop("diff", None)
    result["outcome"] = (
        "already live" if result.get("previous") == result.get("release") else "switched"
    )
    return result


def command(request: Request, check_mode: bool) -> dict:
    params = request.params
    result = ReleaseCommands(
        request.name,
        request.home,
        params["release"],
        params["point"],
        by=request.run["by"],
        run_id=request.run_id,
    ).run(check_mode=check_mode)
    result["outcome"] = "ran"
    return result


def abandon(request: Request, check_mode: bool, runner=run_command) -> dict:
    """What a stopped deploy left on a host that did not switch: the release recorded as
    failed (with a note), its warm instance stopped unless it is current, the lock
    given back."""
    params = request.params
    release = params["release"]
    releases = Releases(request.name, request.home, run_id=request.run_id)
    result: dict = {"changed": False, "release": release, "recorded": None, "stopped": None}
    if params["note"]:
        recorded = releases.record(
            release, "failed", by=request.run["by"], note=params["note"], check_mode=check_mode
        )
        result["recorded"] = recorded.get("event")
        result["changed"] = result["changed"] or recorded.get("changed", False)
    current = current_release(request.home)
    if params["stop"] and current != release:
        unit = instance_unit(request.name, release)
        result["stopped"] = unit
        result["changed"] = True
        if not check_mode:
            why = stop_instance(runner, request.name, release)
            if why is not None:
                raise ReleaseError(
                    f"could not stop {unit}: {why}; retrying may help", retryable=True
                )
    if request.run_id:
        result["lock"] = ServiceLock(request.name).release(
            {"run_id": request.run_id}, check_mode=check_mode
        )
    result["current"] = current
    result["outcome"] = "abandoned"
    return result


def run(params: dict, check_mode: bool, diff_mode: bool, warn) -> dict:
    check_options(params)
    request = Request(params)
    action = request.action
    if action == "target":
        releases = Releases(request.name, request.home, run_id=request.run_id)
        return releases.target(params["release"], params["steps"])
    if action == "prepare":
        prepared = prepare(request, check_mode)
        if params["artifact_b64"] is None or prepared["staged"] or not prepared["venv_donor"]:
            return prepared
        # The code came along and a staged release lends its virtualenv: staged in this
        # same call, saving the task a second trip to the host.
        return {**prepared, "staging": stage(request, check_mode, diff_mode)}
    if action == "stage":
        return stage(request, check_mode, diff_mode)
    if action == "command":
        return command(request, check_mode)
    if action == "abandon":
        return abandon(request, check_mode)
    return switch(request, check_mode, warn, diff_mode)
