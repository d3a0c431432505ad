#!/usr/bin/python
"""Ansible module: a fleet of real systemd machines (systemd-nspawn) on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sandbox_fleet
short_description: Bring a sandbox fleet of systemd-nspawn machines up or down
description:
  - Manages a fleet named O(name) on the controller - a bridge C(<name>-br) holding the
    first address of O(subnet), and O(size) machines C(<name>-1) ... C(<name>-N), each an
    overlayfs copy of O(image) booted by systemd-nspawn (systemd as PID 1) in its own
    network namespace C(<name>-N), joined to the bridge by a veth pair, with address
    C(.10+N) and no default route.
  - Each machine gets its own SSH host key; the fleet gets one client key
    (C(<state_dir>/<name>/id_ed25519)) and a known_hosts file, so SSH keeps strict
    host key checking.
  - A machine's state is its own overlay layer (everything written on it). With
    O(state=present), running machines are kept (C(changed=false)); missing ones are
    created; a stopped machine (powered off inside, its nspawn killed, or the controller
    rebooted) whose layer is intact is booted again on that layer, keeping its state;
    machines beyond O(size) are removed.
  - A machine is rebuilt from the image (its state discarded) only when O(rebuild) asks
    for it, when the fleet's O(image) or O(subnet) changed, or when its layer was left
    half-built by an interrupted run; the result and a warning say which and why.
  - With O(state=restarted), the fleet is first brought to what O(state=present) gives,
    then every running machine (or those in O(machines)) is powered off cleanly
    (SIGTERM to nspawn, which asks the machine's systemd for an orderly shutdown;
    SIGKILL after O(stop_timeout)) and booted again on its own layer, as a reboot of a
    real host would. It waits until sshd answers and systemd is running.
  - With O(state=absent), every machine is stopped (SIGTERM, then SIGKILL after
    O(stop_timeout)), and its mount, namespace, veth, bridge, keys and files are removed.
  - Runs on the controller, as root. Check mode reports what would change.
options:
  name:
    description: Fleet name, 1-10 lowercase letters or digits, starting with a letter.
    type: str
    required: true
  state:
    description: Whether the fleet should exist; V(restarted) also reboots its machines.
    type: str
    default: present
    choices: [present, absent, restarted]
  rebuild:
    description: Build the machines (every one, or those in O(machines)) again from the
      image, discarding their state. Only with O(state=present) or O(state=restarted).
    type: bool
    default: false
  machines:
    description: Names of the machines to reboot (O(state=restarted)) or rebuild
      (O(rebuild=true)); omitted, all of them. The others are still brought up.
    type: list
    elements: str
  size:
    description: Number of machines, 1-32. Refused before any change when the
      controller's available memory cannot hold the machines to start (about 192 MiB
      each).
    type: int
    default: 2
  subnet:
    description: Private IPv4 network of the fleet, with room for O(size) machines
      from .11 (a /26 holds 32); must be unused on the controller. Required unless O(state=absent).
    type: str
  image:
    description: Root directory of the base image (see M(sandbox_image)). Required unless
      O(state=absent).
    type: path
  state_dir:
    description: Where fleets keep machine layers, keys and logs.
    type: path
    default: /var/lib/flipback/sandbox
  boot_timeout:
    description: Seconds to wait for machines to finish booting.
    type: int
    default: 120
  stop_timeout:
    description: Seconds to wait for a clean shutdown before killing a machine.
    type: int
    default: 15
author: flipback
"""

EXAMPLES = r"""
- name: Bring up two machines
  sandbox_fleet:
    name: sandbox
    size: 2
    subnet: 10.213.1.0/24
    image: /var/lib/flipback/images/0123456789ab
  register: sandbox_fleet_state

- name: Reboot sandbox-1, keeping what was written on it
  sandbox_fleet:
    name: sandbox
    state: restarted
    machines: [sandbox-1]
    subnet: 10.213.1.0/24
    image: /var/lib/flipback/images/0123456789ab

- name: Tear the fleet down
  sandbox_fleet:
    name: sandbox
    state: absent
"""

RETURN = r"""
machines:
  description: The fleet's machines (empty after O(state=absent)).
  type: list
  elements: dict
  returned: always
  sample: [{"name": "sandbox-1", "address": "10.213.1.11"}]
key:
  description: Private SSH key that logs in as root on every machine.
  type: str
  returned: always
known_hosts:
  description: known_hosts file holding every machine's host key.
  type: str
  returned: always
kept:
  description: Machines that were already running.
  type: list
  elements: str
  returned: always
created:
  description: Machines created.
  type: list
  elements: str
  returned: always
booted:
  description: Stopped machines booted again on their own layer, their state kept.
  type: list
  elements: str
  returned: always
rebooted:
  description: Running machines powered off cleanly and booted again, their state kept
    (O(state=restarted)).
  type: list
  elements: str
  returned: always
rebuilt:
  description: Machines built again from the image, their state discarded (asked for,
    image or subnet changed, or left half-built).
  type: list
  elements: str
  returned: always
removed:
  description: Machines stopped and removed.
  type: list
  elements: str
  returned: always
reasons:
  description: Why each machine not kept was created, booted, rebooted, rebuilt or
    removed.
  type: dict
  returned: always
  sample: {"sandbox-2": "it was stopped (its systemd-nspawn is not running)"}
msg:
  description: One line per machine on what was done to it and why.
  type: str
  returned: always
timings:
  description: Seconds to stop machines, to boot them (until sshd answers and systemd
    is running) and in all; empty when nothing was started.
  type: dict
  returned: always
  sample: {"stop": 2.1, "boot": 3.4, "total": 5.6}
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""

import ipaddress
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_sandbox import (
    Fleet,
    FleetSpec,
    Host,
    SandboxError,
    parse_subnet,
    validate_fleet_name,
    validate_size,
)

# Absent needs no subnet: only names and paths are used to find what to remove.
_UNUSED_SUBNET = ipaddress.IPv4Network("10.255.255.0/24")


def preflight() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "the sandbox needs root (mounts, network namespaces, systemd-nspawn); "
            f"running as uid {os.geteuid()}. Run it as root; nothing was changed"
        )
    missing = [
        tool for tool in ("systemd-nspawn", "ip", "ssh", "ssh-keygen") if shutil.which(tool) is None
    ]
    if missing:
        raise SandboxError(
            f"missing on the controller: {', '.join(missing)}; expected systemd-nspawn "
            "(package systemd-container), iproute2 and openssh-client. `make setup` "
            "installs them; nothing was changed"
        )


def build_fleet(params: dict) -> Fleet:
    present = params["state"] != "absent"
    if not present:
        for unused in ("rebuild", "machines"):
            if params.get(unused):
                raise SandboxError(
                    f"{unused}: got {params[unused]!r} with state=absent, which removes "
                    "every machine; expected it only with state=present or restarted. "
                    "Nothing was changed",
                    field=unused,
                    value=params[unused],
                )
    if present:
        for required in ("subnet", "image"):
            if not params[required]:
                raise SandboxError(
                    f"{required}: missing; expected a value with state={params['state']}",
                    field=required,
                )
        if not os.path.isdir(params["image"]):
            raise SandboxError(
                f"image: got {params['image']!r}, expected an existing base image directory "
                "(built by sandbox_image)",
                field="image",
                value=params["image"],
            )
    size = validate_size(params["size"]) if present else 1
    spec = FleetSpec(
        name=validate_fleet_name(params["name"]),
        size=size,
        subnet=parse_subnet(params["subnet"], size) if present else _UNUSED_SUBNET,
        image=params["image"] or "",
        state_dir=params["state_dir"],
    )
    return Fleet(
        spec, Host(), boot_timeout=params["boot_timeout"], stop_timeout=params["stop_timeout"]
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {
                "type": "str",
                "default": "present",
                "choices": ["present", "absent", "restarted"],
            },
            "rebuild": {"type": "bool", "default": False},
            "machines": {"type": "list", "elements": "str"},
            "size": {"type": "int", "default": 2},
            "subnet": {"type": "str"},
            "image": {"type": "path"},
            "state_dir": {"type": "path", "default": "/var/lib/flipback/sandbox"},
            "boot_timeout": {"type": "int", "default": 120},
            "stop_timeout": {"type": "int", "default": 15},
        },
        required_if=[
            ("state", "present", ("subnet", "image")),
            ("state", "restarted", ("subnet", "image")),
        ],
        supports_check_mode=True,
    )

    def work() -> dict:
        preflight()
        fleet = build_fleet(module.params)
        params = module.params
        if params["state"] in ("present", "restarted"):
            act = fleet.present if params["state"] == "present" else fleet.restarted
            return act(module.check_mode, rebuild=params["rebuild"], machines=params["machines"])
        result = fleet.absent(module.check_mode)
        result["machines"] = []
        return result

    respond(module, work)


if __name__ == "__main__":
    main()
