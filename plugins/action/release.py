"""Action: the release module, sent only what the host reads; staging in one task.

Every action of the release module passes through here. The service definition is cut
down to the keys the host reads (flipback_request.HOST_SERVICE_KEYS), so the source as
given (it may carry credentials) never reaches a host or a result.

`action: stage` is a deploy's whole first phase on a host, in one task: the module's
prepare (lock, user, directories; is the release staged or live already?), then the
artifact - uploaded only when the release is not staged here, and sent inline, code
only, when a staged release lends its virtualenv - then the module's stage. Small code
goes along with the prepare, so a host that can stage it from the code alone does both
in one call. If staging
fails after the lock was taken, the lock is given back before the task fails.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shlex
import sys
import zipfile

import ansible.module_utils
from ansible import constants as C
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.vars.clean import remove_internal_keys

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_hostcall import BOOT, INSTALL, RUNNER_HOME, RUNNER_KEEP
from ansible.module_utils.flipback_request import (
    RELEASE_MUTUALLY_EXCLUSIVE,
    RELEASE_SPEC,
    host_build,
    host_service,
    instance_unit,
    noted_rollout,
)

# What `action: stage` reports of its prepare step, beside the stage's own result.
PREPARED = (
    "current",
    "staged",
    "noop",
    "warmed",
    "config_changes",
    "release_runs",
    "live",
    "venv_donor",
    "lock",
    "changes",
)

# Code-only artifacts up to this size (base64) go along with the prepare, on the chance
# that the host can stage them in the same call. The cost when it cannot (the release is
# staged already, or no staged release has its wheels): these bytes sent for nothing.
SEND_AHEAD = 512 * 1024

# What the rollout state keeps of a staging (`previous` is the prepare's `current`).
ROLLOUT_OF_STAGE = (
    "release",
    "staged",
    "noop",
    "warmed",
    "config_changes",
    "release_runs",
    "live",
    "outcome",
    "instance",
)


@functools.lru_cache(maxsize=1)
def host_code() -> tuple[str, str, tuple[str, ...]]:
    """flipback's host code as this controller has it: the package its module_utils are
    imported as (ansible.module_utils here, the collection's in a collection), a digest
    of that package name and every file's name and bytes, and the files' paths."""
    module = sys.modules[host_service.__module__]
    directory = os.path.dirname(os.path.abspath(module.__file__))
    package = module.__name__.rpartition(".")[0]
    paths = tuple(
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if name.startswith("flipback_") and name.endswith(".py")
    )
    digest = hashlib.sha256(f"flipback runner 1\0{package}\0".encode())
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(f"{os.path.basename(path)}\0".encode() + handle.read() + b"\0")
    return package, digest.hexdigest()[:32], paths


def host_code_zip(package: str, paths: tuple[str, ...]) -> bytes:
    """The zip INSTALL unpacks: the module_utils under their package's path, with an
    empty __init__.py for the package and each one above it."""
    buffer = io.BytesIO()
    parts = package.split(".")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for depth in range(1, len(parts) + 1):
            archive.writestr("/".join(parts[:depth]) + "/__init__.py", "")
        for path in paths:
            archive.write(path, "/".join(parts) + "/" + os.path.basename(path))
    return buffer.getvalue()


class ActionModule(ActionBase):
    # No temporary directory up front: ansible-core would make one on the host (a round
    # trip) and remove it (another) for every task. Modules are pipelined; only an
    # upload needs one, and `_upload` makes it.
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        note_in_rollout = args.pop("note_in_rollout", False)
        try:
            note_in_rollout = boolean(note_in_rollout, strict=True)
        except TypeError:
            result.update(
                failed=True,
                field="note_in_rollout",
                msg=f"note_in_rollout: got {note_in_rollout!r}, expected a boolean; retrying "
                "the same task does not help",
                retryable=False,
            )
            return result
        args["service"] = host_service(args.get("service"))
        try:
            if args.get("action") == "stage":
                result.update(self._stage(args, task_vars))
            else:
                if isinstance(args.get("build"), dict):
                    args["build"] = host_build(args["build"], inline=False)
                result.update(self._module(args, task_vars))
        finally:
            if self._connection._shell.tmpdir:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        if note_in_rollout and not result.get("failed"):
            noted = self._rollout_note(args, result)
            if noted is not None:
                known = self._templar.template((task_vars or {}).get("flipback_rollout") or {})
                rollout = noted_rollout(known, args["service"].get("name"), noted)
                # Beside any fact the call returned (the interpreter discovered on the
                # module path: later calls then take the direct path).
                facts = dict(result.get("ansible_facts") or {})
                result["ansible_facts"] = {**facts, "flipback_rollout": rollout}
        return result

    def _rollout_note(self, args: dict, result: dict) -> dict | None:
        """What the role's rollout state (the host fact flipback_rollout, one entry per
        service) keeps of this step: a staging, a switch really done, a rollback. Noting it here
        saves the role a set_fact task per service and host."""
        if args.get("action") == "stage":
            return {key: result.get(key) for key in ROLLOUT_OF_STAGE} | {
                "previous": result.get("current")
            }
        if args.get("action") == "switch" and not self._task.check_mode:
            return {"outcome": result.get("outcome"), "current": result.get("current")}
        if args.get("action") == "rollback":
            return {
                "release": args.get("release"),
                **{key: result.get(key) for key in ("previous", "current", "outcome")},
                # For the report's line (there is no per-host "what it did" task).
                "rollback": {
                    "started": result.get("started"),
                    "stopped": result.get("stopped"),
                    "check_mode": bool(self._task.check_mode),
                },
            }
        return None

    def _module(self, args: dict, task_vars: dict) -> dict:
        direct = self._direct(args, task_vars)
        if direct is not None:
            return direct
        return self._execute_module(module_name="release", module_args=args, task_vars=task_vars)

    def _host_python(self, task_vars: dict) -> str | None:
        """The host's Python when it is known without discovery: the host's
        ansible_python_interpreter, the one discovered earlier in the run, or an absolute
        interpreter_python setting. None: the module path runs (and discovers it)."""
        task_vars = task_vars or {}
        found = task_vars.get("ansible_python_interpreter")
        if not found:
            found = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
        if not found:
            found = C.config.get_config_value("INTERPRETER_PYTHON", variables=task_vars)
        found = self._templar.template(found) if isinstance(found, str) else None
        return found if found and found.startswith("/") else None

    def _direct(self, args: dict, task_vars: dict) -> dict | None:
        """The call run by flipback's host code installed on the host (flipback_hostcall),
        with the arguments checked here against the module's own spec; None where that
        cannot be done (no known interpreter, no pipelining, or the code cannot be
        installed or trusted) and nothing was run - the module path then runs the call.
        (The action does not support async: ActionBase refuses it before this.)"""
        interpreter = self._host_python(task_vars)
        if interpreter is None or not self._is_pipelining_enabled("new"):
            return None
        checked = ArgumentSpecValidator(
            RELEASE_SPEC, mutually_exclusive=RELEASE_MUTUALLY_EXCLUSIVE
        ).validate(args)
        if checked.error_messages:
            msg = checked.errors.msg
            if isinstance(checked.errors[0], UnsupportedError):
                msg = f"Unsupported parameters for (release) module: {msg}"
            return {"failed": True, "msg": msg, "retryable": False}
        request = {
            "params": checked.validated_parameters,
            "check_mode": bool(self._task.check_mode),
            "diff": bool(self._task.diff),
        }
        encoder = get_module_encoder("legacy", Direction.CONTROLLER_TO_MODULE)
        data = json.dumps(request, cls=encoder)
        package, digest, paths = host_code()
        environment = self._compute_environment_string()
        call = " ".join(
            part
            for part in (
                environment,
                interpreter,
                "-I -c",
                shlex.quote(BOOT),
                shlex.quote(f"{RUNNER_HOME}/{digest}"),
                shlex.quote(package),
            )
            if part
        )
        self._used_interpreter = f"#!{interpreter}"
        result = self._parse_returned_data(
            self._low_level_execute_command(call, sudoable=True, in_data=data), "legacy"
        )
        if result.get("flipback_runner") == "absent":
            install = " ".join(
                part
                for part in (
                    environment,
                    interpreter,
                    "-I -c",
                    shlex.quote(INSTALL),
                    shlex.quote(RUNNER_HOME),
                    digest,
                    str(RUNNER_KEEP),
                )
                if part
            )
            installed = self._parse_returned_data(
                self._low_level_execute_command(
                    install, sudoable=True, in_data=host_code_zip(package, paths)
                ),
                "legacy",
            )
            if installed.get("flipback_runner") != "installed":
                return None
            result = self._parse_returned_data(
                self._low_level_execute_command(call, sudoable=True, in_data=data), "legacy"
            )
            if result.get("flipback_runner") == "absent":
                # Installed, yet not trusted here (another user's directory): nothing ran.
                return None
        remove_internal_keys(result)
        for name in ("stdout", "stderr"):
            if name in result and f"{name}_lines" not in result:
                result[f"{name}_lines"] = (result[name] or "").splitlines()
        return remove_values(result, checked._no_log_values)

    def _stage(self, args: dict, task_vars: dict) -> dict:
        build = args.get("build")
        if not isinstance(build, dict) or "artifact" not in build:
            return {
                "failed": True,
                "field": "build",
                "msg": "build: expected release_build's result for this service (with its "
                "artifact); retrying the same task does not help",
            }
        common = {
            key: args[key]
            for key in ("service", "run", "release", "config", "env_file")
            if key in args
        }
        # Small code goes along with the prepare: a host where a staged release lends its
        # virtualenv stages it in that same call (one trip to the host, not two).
        code = build.get("code_b64") or ""
        ahead = code if len(code) <= SEND_AHEAD else ""
        prepare_args = {
            **common,
            "action": "prepare",
            "build": host_build(build, inline=bool(ahead)),
            "lock_hold": args.get("lock_hold"),
        }
        if ahead:
            prepare_args.update(artifact_b64=ahead, start=args.get("start"))
        prepared = self._module(prepare_args, task_vars)
        if prepared.get("failed"):
            return self._give_back(prepared, args, task_vars)
        summary = {key: prepared.get(key) for key in PREPARED}
        summary["release"] = args.get("release")
        summary["instance"] = instance_unit(args["service"]["name"], args.get("release"))
        if prepared.get("staged"):
            summary.update(
                changed=prepared.get("changed", False),
                outcome="already live" if prepared.get("noop") else "staged",
            )
            return summary
        staged = prepared.get("staging")
        if staged is None:
            inline = bool(prepared.get("venv_donor") and build.get("code_b64"))
            stage_args = {
                **common,
                "action": "stage",
                "build": host_build(build, inline=inline),
                "start": args.get("start"),
            }
            if inline:
                stage_args["artifact_b64"] = build["code_b64"]
            elif not self._task.check_mode:
                stage_args["upload"] = self._upload(build["artifact"], args.get("release"))
            staged = self._module(stage_args, task_vars)
        if staged.get("failed"):
            return self._give_back(staged, args, task_vars)
        summary.update({k: v for k, v in staged.items() if k not in summary})
        summary["warmed"] = bool(prepared.get("warmed") or staged.get("warmed"))
        summary["changed"] = True
        summary["outcome"] = "staged"
        return summary

    def _upload(self, artifact: str, release: str) -> str:
        """The artifact put in this task's own temporary directory on the host (private
        to the connecting user); the module moves it into place."""
        tmp = self._connection._shell.tmpdir or self._make_tmp_path()
        remote = self._connection._shell.join_path(tmp, f"{release}.tar")
        self._transfer_file(artifact, remote)
        self._fixup_perms2((tmp, remote), execute=False)
        return remote

    def _give_back(self, failed: dict, args: dict, task_vars: dict) -> dict:
        """A staging that failed: the lock this run took is given back, then the failure
        is reported as it was (the lock's outcome beside it)."""
        if not (args.get("run") or {}).get("run_id"):
            return failed
        given = self._module(
            {
                "action": "abandon",
                "service": args["service"],
                "run": args["run"],
                "release": args.get("release"),
            },
            task_vars,
        )
        failed = dict(failed)
        failed["lock_given_back"] = not given.get("failed")
        return failed
