#!/usr/bin/python
"""Ansible module: probe a service's HTTP health endpoint over TCP or a unix socket."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_check
short_description: Wait until an HTTP health endpoint answers as expected
description:
  - Sends C(GET O(url_path)) to a service, either over TCP to O(host):O(port) or over the
    unix socket O(unix_socket) (for example a release's private uvicorn socket, reachable
    before any client is), with the C(Host) header O(host_header).
  - An answer is good when its status is in O(expect_status) and, if O(expect_json) is
    given, its body is a JSON object whose top-level fields hold the expected values
    (for example the release id, so that the answer can only come from that release).
  - Attempts repeat until O(successes) good answers in a row, or until O(timeout) seconds
    have passed. The wait between attempts starts at O(delay), is multiplied by
    O(backoff) after each failed attempt up to O(max_delay), and drops back to O(delay)
    after a good answer; a failed attempt resets the run of good answers.
  - On failure the message says what was observed (the last status and body, or the
    connection error) and what was expected, and RV(retryable) says whether running the
    task again may succeed - true when the service could not be reached, timed out, or
    answered 502, 503 or 504 (it may still be starting), false when it answered
    something else (for example another release's id).
  - Read-only - it never reports a change, and it probes in check mode too.
  - Runs on the host; Python standard library only.
options:
  url_path:
    description: Path (and query) to request; must start with C(/).
    type: str
    default: /health
  port:
    description: TCP port to connect to on O(host). Exactly one of O(port) and
      O(unix_socket) is required.
    type: int
  unix_socket:
    description: Unix socket to connect to instead of TCP (for example
      C(/srv/S/releases/<id>/sock)).
    type: path
  host:
    description: Address to connect to with O(port).
    type: str
    default: 127.0.0.1
  host_header:
    description: Value of the C(Host) request header (selects the nginx server block).
    type: str
    default: localhost
  expect_status:
    description: HTTP statuses that count as a good answer.
    type: list
    elements: int
    default: [200]
  expect_json:
    description: Top-level fields the JSON body must hold, with their values. Empty means
      the body is not checked.
    type: dict
    default: {}
  timeout:
    description: Overall deadline in seconds. The check gives up when the next attempt
      could not start before it.
    type: float
    default: 30
  attempt_timeout:
    description: Seconds one attempt may take to connect and read the answer (cut short
      at the overall deadline).
    type: float
    default: 2
  delay:
    description: Seconds to wait after an attempt before the next one (above 0).
    type: float
    default: 0.2
  backoff:
    description: Factor (1 or more) applied to the wait after each failed attempt.
    type: float
    default: 1.5
  max_delay:
    description: Longest wait between attempts, in seconds (at least O(delay)).
    type: float
    default: 2
  successes:
    description: Good answers needed in a row.
    type: int
    default: 1
notes:
  - Supports check mode - the probe only reads, so it runs unchanged.
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Wait for the new release on its private socket
  health_check:
    unix_socket: "/srv/shop/releases/{{ _release_id }}/sock"
    url_path: /health
    expect_json:
      release: "{{ _release_id }}"
    timeout: 60
  register: health_check_private

- name: Check the public endpoint through nginx, three good answers in a row
  health_check:
    port: 80
    host_header: shop.example.com
    expect_status: [200]
    expect_json:
      release: "{{ _release_id }}"
    successes: 3
    timeout: 20
  register: health_check_public
"""

RETURN = r"""
ok:
  description: Whether the endpoint answered as expected.
  type: bool
  returned: success
  sample: true
status:
  description: HTTP status of the last attempt; null if it got no answer.
  type: int
  returned: always
  sample: 200
body:
  description: Body of the last answer, decoded as UTF-8 and cut to 2000 characters.
  type: str
  returned: always
  sample: '{"status": "ok", "release": "20261129T141500-3f2a9c1d0e"}'
json:
  description: Body of the last answer parsed as JSON; null if it was not JSON.
  type: raw
  returned: always
  sample: {"status": "ok", "release": "20261129T141500-3f2a9c1d0e"}
release:
  description: The release that sent the last answer - its C(X-Flipback-Release) header
    (added by a flipback instance's uvicorn), else the JSON field C(release); null if
    neither names one.
  type: str
  returned: always
  sample: 20261129T141500-3f2a9c1d0e
attempts:
  description: Number of requests sent.
  type: int
  returned: always
  sample: 4
consecutive:
  description: Good answers in a row at the end.
  type: int
  returned: always
  sample: 1
last_error:
  description: What was wrong with the most recent failed attempt (connection error,
    status or JSON mismatch); null if no attempt failed.
  type: str
  returned: always
  sample: "ConnectionRefusedError: [Errno 111] Connection refused"
elapsed:
  description: Seconds the check took.
  type: float
  returned: always
  sample: 1.204
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
  sample: false
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_health import Expect, Policy, Target, probe


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url_path": {"type": "str", "default": "/health"},
            "port": {"type": "int"},
            "unix_socket": {"type": "path"},
            "host": {"type": "str", "default": "127.0.0.1"},
            "host_header": {"type": "str", "default": "localhost"},
            "expect_status": {"type": "list", "elements": "int", "default": [200]},
            "expect_json": {"type": "dict", "default": {}},
            "timeout": {"type": "float", "default": 30},
            "attempt_timeout": {"type": "float", "default": 2},
            "delay": {"type": "float", "default": 0.2},
            "backoff": {"type": "float", "default": 1.5},
            "max_delay": {"type": "float", "default": 2},
            "successes": {"type": "int", "default": 1},
        },
        mutually_exclusive=[("port", "unix_socket")],
        required_one_of=[("port", "unix_socket")],
        supports_check_mode=True,
    )
    params = module.params

    def work() -> dict:
        result = probe(
            Target(
                url_path=params["url_path"],
                host=params["host"],
                port=params["port"],
                unix_socket=params["unix_socket"],
                host_header=params["host_header"],
            ),
            Expect(status=tuple(params["expect_status"]), json=params["expect_json"]),
            Policy(
                timeout=params["timeout"],
                attempt_timeout=params["attempt_timeout"],
                delay=params["delay"],
                backoff=params["backoff"],
                max_delay=params["max_delay"],
                successes=params["successes"],
            ),
        )
        return {"changed": False, **result}

    # The probe times itself, so its elapsed (on success or failure) is the one reported;
    # an invalid input fails before probing, timed by respond().
    respond(module, work)


if __name__ == "__main__":
    main()
