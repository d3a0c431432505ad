"""Documentation only: the release a build becomes with one host's configuration.

The action plugin of the same name (plugins/action/release_config.py) does the work on the
controller, in-process; no run executes this file as a module. ansible-doc reads
DOCUMENTATION, EXAMPLES and RETURN from here, as ansible-core's own debug and set_fact.
"""

DOCUMENTATION = r"""
---
module: release_config
short_description: Work out a release (build + configuration) and its id for one host
description:
  - A release is its build (code and wheels, from release_build) and its configuration
    (C(app), factory, C(workers), C(user) and the C(env) values). This checks the
    configuration as the host will get it (env values may differ per host) and returns
    the release id, which covers both, and what the release's manifest will record.
  - The same code with a new env value is a new release id; the same code with the same
    configuration is the same id (a no-op deploy).
  - Env values are checked (reserved names, control characters that systemd cannot carry,
    size) and never returned or echoed; the manifest keeps their names and a slow salted
    digest.
  - Runs on the controller as an action plugin; changes nothing; runs in check mode.
options:
  service:
    description: One service definition as checked by service_config (name, user, app,
      factory, workers).
    type: dict
    required: true
  env:
    description: The env values this host gets (C(NAME -> value)); never shown.
    type: raw
    default: {}
  build_id:
    description: The build's id, from release_build.
    type: str
    required: true
  root:
    description:
      - The parent of every service's directory on the host (C(flipback_root)).
      - The service's own is C(<root>/<service>).
    type: str
    default: /srv
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Work out hello's release on each host
  release_config:
    service: "{{ flipback_request.services[0] }}"
    env: "{{ flipback_services[0].env }}"
    build_id: "{{ flipback_builds.results[0].id }}"
  register: hello_release
"""

RETURN = r"""
service:
  description: The service's name.
  type: str
  returned: success
release:
  description: The release id, C(<commit time>-<hash of build and configuration>).
  type: str
  returned: success
build_id:
  description: The build the release is made of.
  type: str
  returned: success
config:
  description: What the manifest records - app, factory, workers, user, env_names,
    env_digest, unit_sha256 (never env values).
  type: dict
  returned: success
problems:
  description: Every problem found.
  type: list
  elements: str
  returned: failure
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Always false - invalid input fails the same way until it is fixed.
  type: bool
  returned: failure
"""
