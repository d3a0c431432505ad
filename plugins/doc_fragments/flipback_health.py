"""Documentation of the public health options, shared by the modules that prove a
release through the public port (release_prepare, release_switch).

Their argument spec is one definition too: `PUBLIC_HEALTH_ARGUMENTS` in
module_utils/flipback_health.py. tests/unit/test_module_docs.py checks the two agree.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  port:
    description: Public port (nginx) of the service.
    type: int
    required: true
  health_path:
    description: Health URL path.
    type: str
    default: /health
  expect_status:
    description: Status codes a healthy answer has.
    type: list
    elements: int
    default: [200]
  expect_json:
    description: JSON fields a healthy answer has (none by default).
    type: dict
    default: {}
  release_in:
    description:
      - How an answer proves which release sent it. V(header) - the C(X-Flipback-Release)
        response header, which the instance's uvicorn adds to every response (needs
        nothing from the app). V(json) - the JSON field C(release), for an app that
        echoes C(FLIPBACK_RELEASE).
      - A release staged by a flipback before the header is always asked with V(json).
    type: str
    default: header
    choices: [header, json]
  health_host:
    description: The C(Host) header of every health request (the name the app expects,
      e.g. one of Django's C(ALLOWED_HOSTS)).
    type: str
    default: localhost
  public_successes:
    description:
      - Answers in a row through the public port, each naming the release, that prove
        it live (Gate 2 of a switch; the check that a release is live already).
    type: int
    default: 3
"""
