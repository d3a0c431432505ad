"""What the release module is asked: its service, run and build arguments.

The role hands the release module three dicts rather than twenty loose arguments: the
service definition that service_config checked (`service`), the settings of this run
(`run`: who, which run, the lock's timings, the gates' counts) and, at staging, the
build (`build`). The release action plugin sends the host only the keys it reads
(HOST_SERVICE_KEYS, HOST_BUILD_KEYS): never the source as given (it may carry
credentials) nor the code that rides inline only when it is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# This file imports nothing heavy: the release action (plugins/action/release.py) imports
# it in every worker process, once per host and task.

# The response header naming the release that answered, added by the instance's uvicorn.
RELEASE_HEADER = "X-Flipback-Release"
# How a gate tells which release answered: the header (any app), or the JSON field
# `release` (an app that echoes FLIPBACK_RELEASE). flipback_health reads these from here.
RELEASE_IN = ("header", "json")
# Answers in a row that are not healthy (and not 502/503/504, which say "starting")
# after which a probe stops waiting: the app is up and answers, just not as expected.
DEFAULT_UNHEALTHY_ANSWERS = 10


def instance_unit(service: str, release: str) -> str:
    """The web instance of a release: <service>@<release>.service ('*': every one)."""
    return f"{service}@{release}.service"


# What became of a service on a host in a run, as the role notes it and the report
# reads it: the release module's own outcomes (staged, already live, switched) and the
# role's (failed: a gate or a command; staging failed; not switched: the rollout
# stopped before this host's batch).
OUTCOMES = ("staged", "already live", "switched", "not switched", "failed", "staging failed")


def noted_rollout(known: Mapping[str, Any], service: str, state: Mapping[str, Any]) -> dict:
    """This host's rollout state (the host fact flipback_rollout, one entry per service)
    with `state` merged into `service`'s entry; `known` is not changed. The release
    action (note_in_rollout) and rollout_note both note through here."""
    rollout = dict(known)
    rollout[service] = {**(rollout.get(service) or {}), **state}
    return rollout


HEALTH_OPTIONS: dict[str, dict] = {
    "path": {"type": "str", "default": "/health"},
    "expect_status": {"type": "list", "elements": "int", "default": [200]},
    "expect_json": {"type": "dict", "default": {}},
    "release_in": {"type": "str", "default": "header", "choices": list(RELEASE_IN)},
    "host": {"type": "str", "default": "localhost"},
    "timeout": {"type": "float", "default": 30},
    "unhealthy_answers": {"type": "int", "default": DEFAULT_UNHEALTHY_ANSWERS},
}

# The keys of a checked service definition the host reads.
SERVICE_OPTIONS: dict[str, dict] = {
    "name": {"type": "str", "required": True},
    "port": {"type": "int"},
    "user": {"type": "str"},
    "ref": {"type": "str"},
    "adopt_user": {"type": "bool", "default": False},
    "keep_releases": {"type": "int", "default": 0},
    "health": {"type": "dict", "options": HEALTH_OPTIONS, "apply_defaults": True},
}
HOST_SERVICE_KEYS = tuple(SERVICE_OPTIONS)

RUN_OPTIONS: dict[str, dict] = {
    "root": {"type": "path", "default": "/srv"},
    "run_id": {"type": "str"},
    "by": {"type": "str", "default": "unknown"},
    "playbook": {"type": "str"},
    "live_runs": {"type": "dict"},
    "lock_wait": {"type": "float", "default": 0},
    "lock_stale_after": {"type": "int", "default": 120},
    "drain_seconds": {"type": "float", "default": 1},
    "standby": {"type": "bool", "default": True},
    "public_successes": {"type": "int", "default": 3},
}

BUILD_OPTIONS: dict[str, dict] = {
    "id": {"type": "str", "required": True},
    "checksum": {"type": "str", "required": True},
    # A digest of the release's wheels, not a secret (it names the key of a venv donor).
    "deps_key": {"type": "str", "default": "", "no_log": False},
    "git_sha": {"type": "str"},
    "source": {"type": "str"},
    # The build of every target (platform) made in the run, by target: recorded in the
    # manifest, so that a rollback can name the release of another target's hosts.
    "builds": {"type": "dict"},
}
HOST_BUILD_KEYS = tuple(BUILD_OPTIONS)


def host_service(service: Any) -> Any:
    """The keys of a service definition the host reads; anything else is not sent."""
    if not isinstance(service, Mapping):
        return service
    return {key: service[key] for key in HOST_SERVICE_KEYS if key in service}


def host_build(build: Mapping[str, Any], *, inline: bool) -> dict[str, Any]:
    """What the host reads of release_build's result; `inline`: the code-only artifact
    travels in the call, so its own checksum is the one to check."""
    found = {key: build[key] for key in HOST_BUILD_KEYS if build.get(key) is not None}
    if inline:
        found["checksum"] = build["code_checksum"]
    return found


# The release module's steps, and the points a release's commands run at; the argument
# spec below names them (a unit test holds flipback_actions' tables to them).
RELEASE_ACTIONS = (
    "prepare",
    "stage",
    "switch",
    "rollback",
    "restore",
    "command",
    "abandon",
    "target",
)
COMMAND_POINTS = ("before_switch_once", "before_switch", "after_switch")

# The release module's arguments. The module validates them with AnsibleModule; the
# release action, when it runs the host side directly (no module payload), validates
# them with the same spec and ansible-core's ArgumentSpecValidator before the call.
RELEASE_SPEC: dict[str, dict] = {
    "action": {"type": "str", "required": True, "choices": list(RELEASE_ACTIONS)},
    "service": {"type": "dict", "required": True, "options": SERVICE_OPTIONS},
    "run": {"type": "dict", "default": {}, "options": RUN_OPTIONS},
    "release": {"type": "str"},
    "config": {"type": "dict"},
    "env_file": {"type": "str", "no_log": True},
    "build": {"type": "dict", "options": BUILD_OPTIONS},
    "upload": {"type": "path"},
    # Not a secret, but up to 2.7 MB that would be echoed back in every result.
    "artifact_b64": {"type": "str", "no_log": True},
    "start": {"type": "bool"},
    "lock_hold": {"type": "int"},
    "point": {"type": "str", "choices": list(COMMAND_POINTS)},
    "note": {"type": "str"},
    "stop": {"type": "bool"},
    "steps": {"type": "int"},
    # Read (and removed) by the action plugin on the controller: never set here.
    "note_in_rollout": {"type": "bool"},
}
RELEASE_MUTUALLY_EXCLUSIVE = [("release", "steps"), ("upload", "artifact_b64")]
