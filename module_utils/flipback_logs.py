"""Day-2 commands: the journal of a service's instances, read on every host and merged.

On a host, `read_logs` runs one `journalctl -o json` for the instances of the selected
services (`<service>@*.service` and its processes `<service>.*@*.service`, or only
one release's), with --since, -n and --grep as asked, and parses each entry: its time
(microseconds since the epoch), the release and process (from the unit's name), the
process id, the priority and the message. systemd's own lines about an instance
("Started ...", "Stopping ...") carry the unit in UNIT=, and are attributed to their
release too.

On the controller, `check_request` refuses bad input before any host is asked, and
`merge` orders every host's entries by time into one list and a text view, each line
prefixed with its host and release.

The command runner is passed in, so the logic is unit-tested without a journal.
Standard library only.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.module_utils.flipback_config import RELEASE_ID_RE
from ansible.module_utils.flipback_release import (
    RELEASE_ID_EXAMPLE,
    ReleaseError,
    validate_service,
)
from ansible.module_utils.flipback_runtime import PROCESS_NAME_RE, instance_unit, process_unit

# (argv) -> (rc, stdout, stderr), as AnsibleModule.run_command returns them.
Runner = Callable[[list[str]], tuple[int, str, str]]

MAX_LINES = 100_000
# Lines when neither `since` nor `lines` is given: a screenful or two.
DEFAULT_LINES = 200
MAX_GREP = 1000
# A journal message longer than this is cut (a stack trace fits; a dump does not).
MAX_MESSAGE = 16 * 1024
# journalctl time specs (systemd.time(7)) flipback takes: characters first, then forms.
SINCE_SAFE_RE = re.compile(r"^[0-9A-Za-z :.+-]{1,64}$")
_UNITS = (
    r"(?:us|ms|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hour|hours"
    r"|d|day|days|w|week|weeks)"
)
# `15m`, `2h 30min`, `-15m`, `15 min ago`: a span before now.
SPAN_RE = re.compile(rf"^(-)?((?:[0-9]{{1,6}} ?{_UNITS} ?)+)(ago)?$")
# `2026-12-01`, `2026-12-01 10:00`, `2026-12-01 10:00:30`, `10:00` (today).
DATE_RE = re.compile(
    r"^(?:([0-9]{4})-([0-9]{2})-([0-9]{2}))?"
    r"(?:(?:^| )([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?$"
)
SINCE_WORDS = ("today", "yesterday", "now")
SINCE_EXPECTED = (
    "a journalctl time: a span before now like 15m, 2h, 1d or '2h 30min', a date "
    "'2026-12-01', a time '2026-12-01 10:00[:30]' or '10:00', or today/yesterday"
)
JOURNAL_FIELDS = (
    "MESSAGE",
    "PRIORITY",
    "_PID",
    "SYSLOG_IDENTIFIER",
    "_SYSTEMD_UNIT",
    "UNIT",
    "OBJECT_SYSTEMD_UNIT",
)
# What journalctl 252 says when no unit in the journal matches a --unit pattern.
NO_UNITS_MESSAGE = "Failed to add filter for units: No data available"


# =========================================================================== inputs


def validate_since(since: object) -> str:
    """The `--since` value journalctl gets: a bare span (`15m`) becomes `-15m`."""
    if not isinstance(since, str) or not SINCE_SAFE_RE.fullmatch(since.strip() or "!"):
        raise ReleaseError(
            f"since: got {since!r}, expected {SINCE_EXPECTED}, in letters, digits, spaces "
            "and ':.+-' only (a retry as-is fails the same way)",
            field="since",
            value=since,
        )
    text = " ".join(since.split())
    if text in SINCE_WORDS:
        return text
    span = SPAN_RE.fullmatch(text)
    if span:
        return f"-{span.group(2).strip()}"
    date = DATE_RE.fullmatch(text)
    if date and any(date.groups()):
        year, month, day, hour, minute, second = date.groups()
        try:
            if year:
                datetime.date(int(year), int(month), int(day))
            if hour:
                datetime.time(int(hour), int(minute), int(second or 0))
        except ValueError as exc:
            raise ReleaseError(
                f"since: got {since!r}, not a real date or time ({exc}); expected "
                f"{SINCE_EXPECTED} (a retry as-is fails the same way)",
                field="since",
                value=since,
            ) from exc
        return text
    raise ReleaseError(
        f"since: got {since!r}, expected {SINCE_EXPECTED} (a retry as-is fails the same way)",
        field="since",
        value=since,
    )


def validate_lines(lines: object) -> int:
    """1 to MAX_LINES; a string of digits (as -e gives it) is taken too."""
    value: int | None = None
    if isinstance(lines, int) and not isinstance(lines, bool):
        value = lines
    elif isinstance(lines, str) and re.fullmatch(r"[0-9]{1,7}", lines.strip()):
        value = int(lines.strip())
    if value is None or not 1 <= value <= MAX_LINES:
        raise ReleaseError(
            f"lines: got {lines!r}, expected a whole number from 1 to {MAX_LINES} (a retry "
            "as-is fails the same way)",
            field="lines",
            value=lines,
        )
    return value


def validate_release(release: object) -> str:
    if not isinstance(release, str) or not RELEASE_ID_RE.fullmatch(release):
        raise ReleaseError(
            f"release: got {release!r}, expected a release id like {RELEASE_ID_EXAMPLE} "
            "(a retry as-is fails the same way)",
            field="release",
            value=release,
        )
    return release


def validate_grep(grep: object) -> str:
    if not isinstance(grep, str) or not grep:
        raise ReleaseError(
            f"grep: got {grep!r}, expected non-empty text (a journalctl --grep pattern) "
            "(a retry as-is fails the same way)",
            field="grep",
            value=grep,
        )
    if "\n" in grep or "\r" in grep or "\x00" in grep:
        raise ReleaseError(
            f"grep: got {grep!r}, expected one line of text: no newline, CR or NUL (a retry "
            "as-is fails the same way)",
            field="grep",
            value=grep,
        )
    if len(grep) > MAX_GREP:
        raise ReleaseError(
            f"grep: got {len(grep)} characters, expected at most {MAX_GREP} (a retry as-is "
            "fails the same way)",
            field="grep",
            value=grep[:80] + "...",
        )
    return grep


def _given(value: object) -> bool:
    return value is not None


def check_request(
    *,
    since: object = None,
    lines: object = None,
    release: object = None,
    grep: object = None,
) -> dict[str, Any]:
    """The logs request, checked on the controller before any host is asked: every
    problem at once (`problems`). A selector given empty (`-e grep=`) is refused, not
    taken as absent."""
    problems: list[str] = []
    checked: dict[str, Any] = {"since": None, "lines": None, "release": None, "grep": None}
    for key, check, value in (
        ("since", validate_since, since),
        ("lines", validate_lines, lines),
        ("release", validate_release, release),
        ("grep", validate_grep, grep),
    ):
        if not _given(value):
            continue
        try:
            checked[key] = check(value)
        except ReleaseError as exc:
            problems.append(exc.msg.split(" (a retry as-is")[0])
    checked["problems"] = problems
    return checked


def effective_lines(lines: int | None, since: str | None) -> int:
    """How many entries each host returns: as asked, else all since `since` (up to
    MAX_LINES), else DEFAULT_LINES."""
    if lines is not None:
        return lines
    return MAX_LINES if since is not None else DEFAULT_LINES


# =========================================================================== host


def journal_argv(
    journalctl: str,
    services: Sequence[str],
    *,
    since: str | None = None,
    lines: int | None = None,
    release: str | None = None,
    grep: str | None = None,
) -> list[str]:
    argv = [
        journalctl,
        "--no-pager",
        "--quiet",
        "--output=json",
        f"--output-fields={','.join(JOURNAL_FIELDS)}",
    ]
    for service in services:
        # The web instances, and the processes beside them (`<service>.<process>@...`).
        argv.append(f"--unit={instance_unit(service, release or '*')}")
        argv.append(f"--unit={process_unit(service, '*', release or '*')}")
    if since is not None:
        argv.append(f"--since={since}")
    argv.append(f"--lines={effective_lines(lines, since)}")
    if grep is not None:
        argv.append(f"--grep={grep}")
    return argv


def _field(value: object) -> str | None:
    """A journal field as text: journalctl gives a string, a list of byte values (for
    a value that is not valid UTF-8 or has control characters), a list of either (a
    field given more than once: the first is taken), or null (too large)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value):
            return bytes(value).decode("utf-8", errors="replace")
        return _field(value[0])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _instance(unit: str | None, services: Sequence[str]) -> tuple[str, str, str | None] | None:
    """(service, release, process) of an instance unit `<service>@<release>.service` (no
    process) or of a process unit `<service>.<process>@<release>.service`."""
    if not unit or not unit.endswith(".service") or "@" not in unit:
        return None
    name, _at, instance = unit[: -len(".service")].partition("@")
    name, _dot, process = name.partition(".")
    if process and not PROCESS_NAME_RE.fullmatch(process):
        return None
    if name in services and RELEASE_ID_RE.fullmatch(instance):
        return name, instance, process or None
    return None


def parse_entry(line: str, services: Sequence[str]) -> dict[str, Any] | None:
    """One line of `journalctl -o json` as an entry; None for a line that is not one
    (blank, or JSON without a time)."""
    line = line.strip()
    if not line:
        return None
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, Mapping):
        return None
    stamp = _field(raw.get("__REALTIME_TIMESTAMP"))
    if stamp is None or not stamp.isdigit():
        return None
    owner = None
    unit = None
    for key in ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT"):
        owner = _instance(_field(raw.get(key)), services)
        if owner:
            unit = _field(raw.get(key))
            break
    message = _field(raw.get("MESSAGE"))
    if message is None:
        message = "[flipback: message not shown by journalctl (too large or missing)]"
    elif len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f" [flipback: cut at {MAX_MESSAGE} characters]"
    priority = _field(raw.get("PRIORITY"))
    pid = _field(raw.get("_PID"))
    usec = int(stamp)
    return {
        "ts": usec,
        "at": utc_text(usec),
        "service": owner[0] if owner else None,
        "release": owner[1] if owner else None,
        "process": owner[2] if owner else None,
        "unit": unit,
        "pid": int(pid) if pid and pid.isdigit() else None,
        "priority": int(priority) if priority and priority.isdigit() else None,
        "identifier": _field(raw.get("SYSLOG_IDENTIFIER")),
        "message": message.rstrip("\n"),
    }


def utc_text(usec: int) -> str:
    """`2026-12-01T10:00:01.123456Z` for microseconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(usec // 1_000_000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{usec % 1_000_000:06d}Z"


def read_logs(
    services: Sequence[str],
    *,
    run: Runner,
    journalctl: str = "journalctl",
    since: str | None = None,
    lines: int | None = None,
    release: str | None = None,
    grep: str | None = None,
) -> dict[str, Any]:
    """The journal entries of the services' instances on this host, oldest first."""
    if not isinstance(services, list | tuple) or not services:
        raise ReleaseError(
            f"services: got {services!r}, expected a non-empty list of service names",
            field="services",
            value=services,
        )
    names = [validate_service(name) for name in services]
    since = None if since is None else validate_since(since)
    lines = None if lines is None else validate_lines(lines)
    release = None if release is None else validate_release(release)
    grep = None if grep is None else validate_grep(grep)
    if release is not None and len(names) != 1:
        raise ReleaseError(
            f"release: got {release!r} with the services {names}, expected one service: a "
            "release id belongs to one service (a retry as-is fails the same way)",
            field="release",
            value=release,
        )
    argv = journal_argv(journalctl, names, since=since, lines=lines, release=release, grep=grep)
    rc, out, err = run(argv)
    # journalctl --grep exits 1 when nothing matched, with nothing on stdout or stderr; a
    # unit pattern that no unit in the journal matches (nothing of the service ran on
    # this host yet) fails with ENODATA. Neither is an error: there are no lines.
    nothing = (
        rc == 1
        and not out.strip()
        and ((grep is not None and not err.strip()) or NO_UNITS_MESSAGE in err)
    )
    if nothing:
        out = ""
    elif rc != 0:
        raise ReleaseError(
            f"journalctl: exited with {rc} ({' '.join(err.split())[:1000] or 'no message'}) "
            f"for {' '.join(argv[1:])}; expected the journal of the instances (a retry "
            "helps only if the journal was busy or rotating)",
            retryable=True,
            rc=rc,
            argv=argv,
        )
    entries = []
    skipped = 0
    for line in out.split("\n"):
        if not line.strip():
            continue
        entry = parse_entry(line, names)
        if entry is None:
            skipped += 1
            continue
        entries.append(entry)
    entries.sort(key=lambda e: e["ts"])
    return {
        "changed": False,
        "services": names,
        "entries": entries,
        "count": len(entries),
        "unparsed": skipped,
        "argv": argv,
    }


# =========================================================================== controller


def _clean(line: str) -> str:
    """A line as a terminal shows it safely: tabs expanded, other control characters
    (an escape sequence could rewrite the screen) escaped, no trailing spaces."""
    line = line.expandtabs(4)
    line = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", line)
    return line.rstrip()


def merge(hosts: object, lines: int | None = None) -> dict[str, Any]:
    """Every host's entries in one list ordered by time (equal times keep each host's
    order, hosts in the order given), cut to the last `lines`; the text view, one line
    per message line: `<UTC time> <host> [<service>] <release> | <message>`; and
    `problems`, one per host that gave no entries because it failed."""
    if not isinstance(hosts, Mapping):
        raise ReleaseError(
            f"hosts: got {hosts!r}, expected a mapping of host name to that host's result",
            field="hosts",
            value=hosts,
        )
    if lines is not None:
        lines = validate_lines(lines)
    merged = []
    problems = []
    services: set[str] = set()
    counts: dict[str, int | None] = {}
    for order, (host, result) in enumerate(hosts.items()):
        if not isinstance(result, Mapping) or not isinstance(result.get("entries"), list):
            why = "no result (unreachable?)"
            if isinstance(result, Mapping) and (result.get("msg") or result.get("failed")):
                why = " ".join(str(result.get("msg") or "failed").split())
            problems.append(f"{host}: {why}")
            counts[str(host)] = None
            continue
        counts[str(host)] = len(result["entries"])
        for seq, entry in enumerate(result["entries"]):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("ts"), int):
                continue
            merged.append((entry["ts"], order, seq, str(host), entry))
            if entry.get("service"):
                services.add(entry["service"])
    merged.sort(key=lambda item: item[:3])
    if lines is not None:
        merged = merged[-lines:]
    entries = [{"host": host, **entry} for _ts, _order, _seq, host, entry in merged]
    width = max((len(str(h)) for h in hosts), default=0)
    with_service = len(services) > 1
    text = []
    for entry in entries:
        owner = entry.get("release") or "-"
        if entry.get("process"):
            owner = f"{owner}/{entry['process']}"
        if with_service:
            owner = f"{entry.get('service') or '-'} {owner}"
        prefix = f"{entry.get('at') or '?'} {entry['host'].ljust(width)} {owner}"
        for part in str(entry.get("message") or "").split("\n") or [""]:
            text.append(f"{prefix} | {_clean(part)}".rstrip())
    if not entries:
        text.append("(no journal lines matched)")
    if problems:
        text.append("")
        text += [f"! {problem}" for problem in problems]
    return {"entries": entries, "text": "\n".join(text), "problems": problems, "counts": counts}
