#!/usr/bin/python
"""Ansible module: a cached debootstrap base image for sandbox machines."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sandbox_image
short_description: Build (once) and cache the Debian base image of the sandbox fleet
description:
  - Builds a Debian root file system with C(debootstrap) under O(images_dir), in a
    directory named after a key of the suite, variant, mirror and package list.
  - An image whose key already exists is reused (C(changed=false)); a new package list
    gives a new key and so a new build. The build goes to a temporary directory that is
    renamed into place only when complete, so an interrupted build is never used.
  - After a successful build, older images that no running machine uses are removed.
  - Runs on the controller, as root.
options:
  packages:
    description: Debian packages to include (debootstrap C(--include)).
    type: list
    elements: str
    required: true
  suite:
    description: Debian suite.
    type: str
    default: bookworm
  variant:
    description: debootstrap variant.
    type: str
    default: minbase
    choices: [minbase, buildd, fakechroot]
  mirror:
    description: Debian mirror URL; empty means debootstrap's default.
    type: str
    default: ""
  images_dir:
    description: Where images are kept, one directory per key.
    type: path
    default: /var/lib/flipback/images
  cache_dir:
    description: debootstrap's package cache, which makes a rebuild faster.
    type: path
    default: /var/cache/flipback/debs
author: flipback
"""

EXAMPLES = r"""
- name: Build the sandbox base image
  sandbox_image:
    packages: [python3, python3-venv, openssh-server, systemd, systemd-sysv, dbus]
  register: sandbox_image_built
"""

RETURN = r"""
path:
  description: The image's root directory.
  type: str
  returned: always
key:
  description: The image's content key.
  type: str
  returned: always
pruned:
  description: Older unused images that were removed.
  type: list
  elements: str
  returned: always
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""

import fcntl
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_sandbox import (
    Host,
    Image,
    ImageSpec,
    SandboxError,
    validate_packages,
)


def run(module: AnsibleModule, host: Host) -> dict:
    params = module.params
    if os.geteuid() != 0:
        raise SandboxError(
            "the sandbox needs root (debootstrap, mounts and network namespaces); "
            f"running as uid {os.geteuid()}. Run it as root; nothing was changed"
        )
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "debootstrap not found on the controller; install it (`make setup` does, "
            "or `apt-get install debootstrap`); nothing was changed"
        )
    spec = ImageSpec(
        suite=params["suite"],
        variant=params["variant"],
        packages=validate_packages(params["packages"]),
        mirror=params["mirror"],
        images_dir=params["images_dir"],
        cache_dir=params["cache_dir"],
    )
    if module.check_mode:
        return Image(spec, host).ensure(True)
    # Scenarios run side by side: the first builds the image, the others wait for it
    # here and then find it built. The lock sits beside the images, never among them
    # (their pruning would take it for an image).
    parent = os.path.dirname(spec.images_dir.rstrip("/")) or "/"
    os.makedirs(parent, mode=0o755, exist_ok=True)
    lock_path = os.path.join(parent, f".{os.path.basename(spec.images_dir.rstrip('/'))}.lock")
    with open(lock_path, "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return Image(spec, host).ensure(False)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "required": True},
            "suite": {"type": "str", "default": "bookworm"},
            "variant": {
                "type": "str",
                "default": "minbase",
                "choices": ["minbase", "buildd", "fakechroot"],
            },
            "mirror": {"type": "str", "default": ""},
            "images_dir": {"type": "path", "default": "/var/lib/flipback/images"},
            "cache_dir": {"type": "path", "default": "/var/cache/flipback/debs"},
        },
        supports_check_mode=True,
    )
    respond(module, lambda: run(module, Host()))


if __name__ == "__main__":
    main()
