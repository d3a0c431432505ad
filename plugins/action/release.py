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

import ansible.module_utils
from ansible import constants as C
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

for _path in C.DEFAULT_MODULE_UTILS_PATH:
    if _path not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(_path)

from ansible.module_utils.flipback_request import host_build, host_service, noted_rollout
from ansible.module_utils.flipback_runtime import instance_unit

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
                result["ansible_facts"] = {"flipback_rollout": rollout}
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
            }
        return None

    def _module(self, args: dict, task_vars: dict) -> dict:
        return self._execute_module(module_name="release", module_args=args, task_vars=task_vars)

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
