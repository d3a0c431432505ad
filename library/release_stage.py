#!/usr/bin/python
"""Ansible module (host): stage a release from its uploaded artifact."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_stage
short_description: Stage a flipback release on a host (unpack, virtualenv, offline install)
description:
  - Unpacks the uploaded artifact into C(<root>/releases/<release>), creates the
    virtualenv at that final path, installs the dependencies from the artifact's
    wheelhouse with no network, precompiles bytecode, links C(sock) to the release's
    private socket, and writes the manifest. Code and virtualenv are owned by root.
  - Stages the release's configuration with it - its own systemd unit
    C(/etc/systemd/system/<service>@<release>.service) and its env file - after checking
    that they are what the release id stands for; neither is changed afterwards, so each
    instance starts from its own release's configuration.
  - A release already staged is left alone (C(changed=false)). A release left
    half-finished by a killed run is wiped and staged again; one being staged by a live
    run is refused (retryable).
  - Appends a C(staged) event to the service's history; removes the artifact after use.
options:
  service:
    description: Service name.
    type: str
    required: true
  root:
    description: Service root; default C(/srv/<service>).
    type: path
  release:
    description: Release id.
    type: str
    required: true
  artifact:
    description: Path of the uploaded artifact on the host.
    type: path
    required: true
  checksum:
    description: Expected sha256 of the artifact.
    type: str
    required: true
  socket_dir:
    description: Socket directory (C(<release>/app.sock)); default C(/run/flipback-<service>).
    type: path
  python:
    description: Interpreter that creates the virtualenv.
    type: path
    default: /usr/bin/python3
  manifest:
    description: Extra manifest fields (git_sha, ref, health, ...).
    type: dict
    default: {}
  deps_key:
    description:
      - Key of the release's dependency set (from release_build). When a complete
        release on the host has the same key, its virtualenv is copied by hard links
        (scripts rewritten for the new path) instead of built again.
    type: str
    default: ""
  artifact_b64:
    description:
      - The artifact itself, base64 - a code-only artifact for a host that reuses a
        venv with the same wheels, so no upload is needed. Written to O(artifact) first.
    type: str
  build_id:
    description: The build the release is made of (C(id) of release_build).
    type: str
    required: true
  config:
    description:
      - How the release runs, as release_config returned it (app, factory, workers, user,
        env_names, env_digest, unit_sha256). Checked against the release id, then staged
        with the code and recorded in the manifest; never changed after.
    type: dict
    required: true
  env_file:
    description:
      - The release's env file, as the C(flipback_env_file) filter renders it; written to
        C(<release>/.flipback/env) (0640 root:<user>) and never shown.
    type: str
    required: true
  start:
    description:
      - Once staged, start the release's instance without waiting for it (it listens
        only on its private socket), so it is warm by the time the switch gates it.
    type: bool
    default: false
  by:
    description: Who deploys (recorded in manifest and history).
    type: str
    default: unknown
  run_id:
    description:
      - The run that stages (the deploy lock owner's C(run_id)), recorded with the
        C(staged) event so that a re-run can tell which run touched this host.
    type: str
author: flipback
"""

EXAMPLES = r"""
- name: Stage hello's new release
  release_stage:
    service: hello
    release: 20261129T141500-3f2a9c1d0e
    artifact: /srv/hello/.incoming/20261129T141500-3f2a9c1d0e.tar
    checksum: "{{ deploy_build.checksum }}"
    build_id: "{{ deploy_build.id }}"
    config: "{{ hello_release.config }}"
    env_file: "{{ {'HELLO_GREETING': 'hi'} | flipback_env_file('hello') }}"
    manifest:
      git_sha: "{{ deploy_build.git_sha }}"
"""

RETURN = r"""
release:
  description: The release id.
  type: str
  returned: always
path:
  description: The release directory.
  type: str
  returned: always
replaces:
  description: The release that was current when this one was staged.
  type: str
  returned: when changed
venv_from:
  description: The release whose virtualenv was reused; null if it was built.
  type: str
  returned: when changed
venv_tool:
  description:
    - What built the virtualenv, C(uv) (from the wheel the artifact brings, kept on the
      host under /var/lib/flipback/tools) or C(venv+pip); null when it was reused.
  type: str
  returned: when changed
warmed:
  description: Whether the instance was started after staging (O(start)).
  type: bool
  returned: success
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
diff:
  description: In diff mode, when the release's configuration differs from the live
    release's - both as text, every env value shown as C(***), a changed one as
    C(*** (changed)).
  type: dict
  returned: in diff mode, when the configuration changes
problems:
  description: Every problem of a refused configuration (names, never values).
  type: list
  elements: str
  returned: when the configuration does not match the release id or cannot run
field:
  description: The parameter that was refused.
  type: str
  returned: when a parameter was refused
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""

import base64
import binascii
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_release import (
    ReleaseError,
    validate_release_id,
    validate_service,
)
from ansible.module_utils.flipback_stage import Stager, StageSpec


def write_inline(path: str, data_b64: str) -> None:
    """The artifact sent inline, written where an upload would have put it (root, 0600)."""
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReleaseError(
            f"artifact_b64: not valid base64 ({exc}); expected the artifact's bytes",
            field="artifact_b64",
        ) from exc
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        # O_CREAT's mode only applies to a new file.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "service": {"type": "str", "required": True},
            "root": {"type": "path"},
            "release": {"type": "str", "required": True},
            "artifact": {"type": "path", "required": True},
            "checksum": {"type": "str", "required": True},
            "socket_dir": {"type": "path"},
            "python": {"type": "path", "default": "/usr/bin/python3"},
            "manifest": {"type": "dict", "default": {}},
            "by": {"type": "str", "default": "unknown"},
            "run_id": {"type": "str"},
            "deps_key": {"type": "str", "default": ""},
            "start": {"type": "bool", "default": False},
            "build_id": {"type": "str", "required": True},
            "config": {"type": "dict", "required": True},
            "env_file": {"type": "str", "required": True, "no_log": True},
            # Not a secret, but up to 2.7 MB that would be echoed back in every result.
            "artifact_b64": {"type": "str", "no_log": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    service = params["service"]
    spec = StageSpec(
        service=service,
        root=params["root"] or f"/srv/{service}",
        release=params["release"],
        artifact=params["artifact"],
        checksum=params["checksum"],
        socket_dir=params["socket_dir"] or f"/run/flipback-{service}",
        python=params["python"],
        manifest=params["manifest"],
        by=params["by"],
        run_id=params["run_id"],
        deps_key=params["deps_key"],
        build_id=params["build_id"],
        config=params["config"],
        env_text=params["env_file"],
    )

    def work() -> dict:
        # Names are checked before anything is written for them.
        validate_service(spec.service)
        validate_release_id(spec.release)
        stager = Stager(spec)
        if params["artifact_b64"] and not module.check_mode and not stager.staged():
            write_inline(spec.artifact, params["artifact_b64"])
        result = stager.stage(module.check_mode)
        diff = result.pop("diff", None)
        if module._diff and diff is not None:
            result["diff"] = diff
        result["warmed"] = False
        if params["start"] and result["changed"] and not module.check_mode:
            result["warmed"] = stager.warm_up()
        return result

    respond(module, work)


if __name__ == "__main__":
    main()
