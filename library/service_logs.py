#!/usr/bin/python
"""Ansible module: the journal of a flipback service's instances on a host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_logs
short_description: Read the journal of the instances of flipback services on a host
description:
  - Runs one C(journalctl --output=json) for the instances of every service in
    O(services) (C(<service>@*.service), or only C(<service>@<release>.service) with
    O(release)) and returns the entries parsed, oldest first - each with its time, the
    service and release it belongs to (from the instance's unit name; systemd's own
    lines about an instance count too), the process id, the priority and the message.
  - O(since), O(lines) and O(grep) become C(--since), C(--lines) and C(--grep). Without
    O(lines), every entry since O(since) is returned (at most 100000), or the last 200
    when O(since) is not given either.
  - Read-only - never reports a change, and runs in check mode.
  - Runs on the host; Python standard library only.
options:
  services:
    description: The services whose instances' journal is read (names).
    type: list
    elements: str
    required: true
  since:
    description:
      - Only entries from this time on - a span before now (C(15m), C(2h), C(1d),
        C(2h 30min)), a date (C(2026-12-01)), a time (C(2026-12-01 10:00[:30]), C(10:00)),
        or C(today), C(yesterday). Letters, digits, spaces and C(:.+-) only.
    type: str
  lines:
    description: At most this many entries, the newest (1 to 100000).
    type: int
  release:
    description: Only the instance of this release (an id like C(20261129T141500-3f2a9c1d0e));
      needs exactly one service in O(services).
    type: str
  grep:
    description:
      - Only entries whose message matches this pattern (C(journalctl --grep), a PCRE2
        pattern, case-insensitive unless it has capitals); one line, not empty.
    type: str
notes:
  - Supports check mode - it only reads.
  - C(--grep) needs journalctl built with PCRE2 (Debian's is).
author: flipback (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read the last 15 minutes of hello's instances
  service_logs:
    services: [hello]
    since: 15m
  register: flipback_host_logs

- name: Read the errors of one release
  service_logs:
    services: [hello]
    release: 20261129T141500-3f2a9c1d0e
    grep: Traceback
    lines: 500
"""

RETURN = r"""
services:
  description: The services read.
  type: list
  elements: str
  returned: success
entries:
  description: The journal entries, oldest first.
  type: list
  elements: dict
  returned: success
  contains:
    ts: {description: Microseconds since the epoch (the entry's realtime stamp)., type: int}
    at: {description: "The same time in UTC, C(2026-12-01T10:00:01.123456Z).", type: str}
    service: {description: The service the entry belongs to; null if unknown., type: str}
    release: {description: The release whose instance it is about; null if unknown., type: str}
    unit: {description: The instance's unit; null if unknown., type: str}
    pid: {description: The process that logged it; null if not recorded., type: int}
    priority: {description: Its syslog priority (0 emerg to 7 debug); null if none., type: int}
    identifier: {description: "Its SYSLOG_IDENTIFIER (C(python), C(systemd)).", type: str}
    message: {description: The message (cut at 16384 characters)., type: str}
  sample:
    - ts: 1764583201123456
      at: "2026-12-01T10:00:01.123456Z"
      service: hello
      release: 20261201T095500-3f2a9c1d0e
      unit: hello@20261201T095500-3f2a9c1d0e.service
      pid: 4242
      priority: 6
      identifier: python
      message: "INFO:     Application startup complete."
count:
  description: How many entries were returned.
  type: int
  returned: success
unparsed:
  description: Lines of journalctl's output that were not entries (should be 0).
  type: int
  returned: success
argv:
  description: The journalctl command line that ran.
  type: list
  elements: str
  returned: success
elapsed:
  description: Seconds the module took.
  type: float
  returned: always
retryable:
  description: Whether running the same task again is safe and may succeed.
  type: bool
  returned: failure
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.flipback_common import respond
from ansible.module_utils.flipback_logs import read_logs


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "str", "required": True},
            "since": {"type": "str"},
            "lines": {"type": "int"},
            "release": {"type": "str"},
            "grep": {"type": "str"},
        },
        supports_check_mode=True,
    )
    params = module.params

    def run(argv: list[str]) -> tuple[int, str, str]:
        return module.run_command(argv, environ_update={"LC_ALL": "C", "SYSTEMD_PAGER": ""})

    def work() -> dict:
        return read_logs(
            params["services"],
            run=run,
            journalctl=module.get_bin_path("journalctl", required=True),
            since=params["since"],
            lines=params["lines"],
            release=params["release"],
            grep=params["grep"],
        )

    respond(module, work)


if __name__ == "__main__":
    main()
