"""Day-2 commands: run a one-off command in the environment of a service's live release.

On a host, `resolve` finds what the live release runs as, from the files that decide
how its instance starts: `current` names the release, and the release's own unit
(`/etc/systemd/system/<service>@<release>.service`) gives its user and group, its
working directory, its env file, its environment and its sandboxing. `execute` then
runs `/bin/sh -c <cmd>` as a transient service through `systemd-run --wait --pipe`
with those same settings, the release's venv first on PATH, and a runtime limit:

    systemd-run --wait --pipe --collect --service-type=exec --unit=flipback-exec-...
        --uid=<user> --gid=<group> --working-directory=<home>/releases/<id>
        -p EnvironmentFile=<home>/releases/<id>/.flipback/env
        --setenv=FLIPBACK_RELEASE=<id> --setenv=PATH=<release>/venv/bin:...
        -p RuntimeMaxSec=<timeout> -p NoNewPrivileges=yes -p ProtectSystem=strict ...
        -- /bin/sh -c <cmd, each $ doubled: systemd would expand $NAME itself>

The env values stay in the env file: systemd reads them for the command, and they are
never part of an argument, a result or the output flipback prints. The sandboxing is
the unit's own (taken from the unit file, so a release keeps the sandbox it was staged
with): the code is read-only, `shared/` is writable.

systemd-run returns the service's exit status, but also returns non-zero when it could
not start the service at all. So it is run without --quiet: after the command ends it
writes a few lines of its own at the end of its stderr ("Finished with result: ...",
"Main processes terminated with: code=exited/status=3", ...), which tell the command's
exit code, a signal or a timeout apart from a failure to start; they are taken off the
stderr shown (and so is its opening "Running as unit: ..." line).

On the controller, `check_request` refuses a bad request before anything runs on a
host, and `exec_report` renders every host's output, prefixed with host and release.

The command runner is passed in, so the logic is unit-tested without systemd.
Standard library only.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.module_utils.flipback_release import (
    ReleaseError,
    current_release,
    validate_service,
)
from ansible.module_utils.flipback_runtime import DEFAULT_ROOT, instance_unit, service_home

DEFAULT_TIMEOUT = 300
MAX_TIMEOUT = 86400
# A command is typed on a command line; anything longer is a script to deploy.
MAX_CMD = 16 * 1024
# What one host's output may bring back through Ansible, per stream.
MAX_OUTPUT = 1024 * 1024
HOSTS_CHOICES = ("first", "all")
DEFAULT_UNIT_DIR = "/etc/systemd/system"
# Seconds systemd gives the command between SIGTERM and SIGKILL at the timeout.
STOP_GRACE = 10
# Seconds beyond the timeout the module waits for systemd-run before it stops the
# unit itself (systemd's own RuntimeMaxSec= should have ended it by then).
WAIT_SLACK = STOP_GRACE + 20
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The unit's sandboxing settings the command gets too, in the unit's order. The rest of
# the unit (ExecStart, Restart, the runtime directory of the socket ...) is about the
# server process and does not apply to a one-off command.
SANDBOX_KEYS = frozenset(
    {
        "NoNewPrivileges",
        "ProtectSystem",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RemoveIPC",
        "ProtectProc",
        "ProcSubset",
        "DevicePolicy",
        "DeviceAllow",
        "RestrictAddressFamilies",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
        "UMask",
    }
)
# What systemd-run (without --quiet) writes after the command ended, in this order.
_TRAILER_PREFIXES = (
    "Finished with result: ",
    "Main processes terminated with: ",
    "Service runtime: ",
    "CPU time consumed: ",
    "Memory peak: ",
    "IP traffic received: ",
    "IP traffic sent: ",
    "IO bytes read: ",
    "IO bytes written: ",
)
_RUNNING_AS = re.compile(r"^Running as unit: [^\n]*\n")
_TERMINATED = re.compile(r"^code=(\w+)/status=(\S+)$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")
_SPECIFIER = re.compile(r"%.")
_TRUNCATED = "\n[flipback: output truncated at {limit} bytes]\n"


class CommandTimeout(Exception):
    """The runner's wait ran out; what the command wrote until then."""

    def __init__(self, stdout: str, stderr: str) -> None:
        super().__init__("timed out")
        self.stdout = stdout
        self.stderr = stderr


# (argv, seconds to wait) -> (rc, stdout, stderr); raises CommandTimeout.
Runner = Callable[[Sequence[str], float], tuple[int, str, str]]


def run_with_timeout(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run `argv` with no stdin and wait at most `timeout` seconds for it."""
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise CommandTimeout(_text(out), _text(err)) from None
    return proc.returncode, _text(out), _text(err)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data


# =========================================================================== inputs


def validate_cmd(cmd: object) -> str:
    if not isinstance(cmd, str) or not cmd.strip():
        raise ReleaseError(
            f"cmd: got {cmd!r}, expected a non-empty shell command, e.g. -e cmd='python -V' "
            "(nothing was run; a retry as-is fails the same way)",
            field="cmd",
            value=cmd,
        )
    if "\x00" in cmd:
        raise ReleaseError(
            "cmd: got a command with a NUL character, expected shell text without NUL "
            "(nothing was run; a retry as-is fails the same way)",
            field="cmd",
            value=cmd,
        )
    size = len(cmd.encode("utf-8", errors="replace"))
    if size > MAX_CMD:
        raise ReleaseError(
            f"cmd: got a command of {size} bytes, expected at most {MAX_CMD}: deploy a "
            "script with the release and run that (nothing was run; a retry as-is fails "
            "the same way)",
            field="cmd",
            value=cmd[:80] + "...",
        )
    return cmd


def validate_timeout(timeout: object) -> int:
    """Seconds, 1 to MAX_TIMEOUT; a string of digits (as -e gives it) is taken too."""
    value: int | None = None
    if isinstance(timeout, int) and not isinstance(timeout, bool):
        value = timeout
    elif isinstance(timeout, str) and _DIGITS.fullmatch(timeout.strip()):
        value = int(timeout.strip())
    if value is None or not 1 <= value <= MAX_TIMEOUT:
        raise ReleaseError(
            f"timeout: got {timeout!r}, expected whole seconds from 1 to {MAX_TIMEOUT} "
            f"(default {DEFAULT_TIMEOUT}) (nothing was run; a retry as-is fails the same way)",
            field="timeout",
            value=timeout,
        )
    return value


def validate_hosts(hosts: object) -> str:
    if hosts not in HOSTS_CHOICES:
        raise ReleaseError(
            f"hosts: got {hosts!r}, expected 'first' (the default: the first host of the "
            "play) or 'all' (every host of the play; --limit picks hosts) (nothing was run; "
            "a retry as-is fails the same way)",
            field="hosts",
            value=hosts,
        )
    return str(hosts)


def check_request(
    *,
    names: Sequence[str],
    service: object,
    cmd: object,
    timeout: object = None,
    hosts: object = None,
) -> dict[str, Any]:
    """The exec request, checked on the controller before any host is touched: every
    problem at once (`problems`), each naming the field, the value and what was expected.
    `names` are the services service_config selected."""
    problems: list[str] = []
    checked: dict[str, Any] = {
        "service": None,
        "cmd": None,
        "timeout": DEFAULT_TIMEOUT,
        "hosts": "first",
    }
    if service is None or service == "":
        problems.append(
            f"service: got {service!r}, expected one service chosen with -e service=<name> "
            f"(one of {list(names)}): a command runs in one service's release"
        )
    elif len(names) != 1:
        problems.append(f"service: got {service!r}, expected one of the defined services")
    else:
        checked["service"] = names[0]
    for key, check, value in (
        ("cmd", validate_cmd, cmd),
        ("timeout", validate_timeout, DEFAULT_TIMEOUT if timeout is None else timeout),
        ("hosts", validate_hosts, "first" if hosts is None else hosts),
    ):
        try:
            checked[key] = check(value)
        except ReleaseError as exc:
            problems.append(exc.msg.split(" (nothing was run")[0])
    checked["problems"] = problems
    return checked


def refusal(problems: Sequence[str]) -> str:
    """The message of a refused request."""
    count = len(problems)
    return (
        f"invalid input ({count} problem{'s' if count != 1 else ''}), nothing was run on "
        "any host; fix it and run again (retrying as-is fails the same way): " + "; ".join(problems)
    )


# =========================================================================== host: the release


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: key -> its values in order (continued
    lines joined, comments skipped)."""
    settings: dict[str, list[str]] = {}
    section = None
    pending = ""
    for raw in text.split("\n"):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _expand(value: str, release: str, where: str) -> str:
    """`%i` is the release id; a unit flipback writes has no other specifier."""

    def one(match: re.Match[str]) -> str:
        spec = match.group()
        if spec == "%i":
            return release
        if spec == "%%":
            return "%"
        raise ReleaseError(
            f"{where}: got {value!r} with the specifier {spec}, expected only %i in the "
            "settings of a flipback unit (a retry does not help)",
            field=where,
            value=value,
        )

    return _SPECIFIER.sub(one, value)


def resolve(
    service: str,
    *,
    release: str | None = None,
    root_parent: str = DEFAULT_ROOT,
    unit_dir: str = DEFAULT_UNIT_DIR,
) -> dict[str, Any]:
    """What the live release of `service` (or the staged `release`) runs as, read from
    its files: release, home, user, group, cwd, env file, venv, the unit's environment
    settings and sandboxing."""
    service = validate_service(service)
    home = service_home(root_parent, service)
    if not os.path.isdir(home):
        raise ReleaseError(
            f"service: got {service!r}, which is not on this host ({home} does not exist); "
            "expected a service deployed here: deploy it first (a retry does not help)",
            field="service",
            value=service,
        )
    release = release or current_release(home)
    if release is None:
        raise ReleaseError(
            f"service: {service!r} has no live release on this host ({home}/current does "
            "not exist); expected a service deployed here: deploy it first (a retry does "
            "not help)",
            field="service",
            value=service,
        )
    release_dir = os.path.join(home, "releases", release)
    unit_path = os.path.join(unit_dir, instance_unit(service, release))
    try:
        with open(unit_path, encoding="utf-8") as handle:
            unit = parse_unit(handle.read())
    except OSError as exc:
        raise ReleaseError(
            f"release: the live release {release} of {service} has no readable unit "
            f"({unit_path}: {exc.strerror}); expected the unit its staging wrote (a retry "
            "does not help; redeploy the release)",
            field="release",
            value=release,
        ) from exc

    def single(key: str) -> str:
        values = unit.get(key) or []
        if len(values) != 1 or not values[-1]:
            raise ReleaseError(
                f"{unit_path}: [Service] {key}= is {values or 'missing'}, expected one value "
                "as flipback writes it (a retry does not help)",
                field=key,
                value=values,
            )
        return _expand(values[-1], release, key)

    user = single("User")
    group = single("Group") if unit.get("Group") else user
    cwd = single("WorkingDirectory")
    env_file = single("EnvironmentFile")
    if os.path.normpath(cwd) != release_dir:
        raise ReleaseError(
            f"{unit_path}: WorkingDirectory= is {cwd!r}, expected the release's directory "
            f"{release_dir} (a retry does not help)",
            field="WorkingDirectory",
            value=cwd,
        )
    venv_bin = os.path.join(release_dir, "venv", "bin")
    for path, what in ((venv_bin, "its virtualenv"), (env_file, "its env file")):
        if not os.path.exists(path):
            raise ReleaseError(
                f"release: the live release {release} of {service} is missing {what} ({path} "
                "does not exist); expected a fully staged release (a retry does not help)",
                field="release",
                value=release,
            )
    environment = [_expand(v, release, "Environment") for v in unit.get("Environment", [])]
    properties = []
    for key in unit:
        if key in SANDBOX_KEYS:
            properties += [f"{key}={_expand(v, release, key)}" for v in unit[key]]
    return {
        "service": service,
        "release": release,
        "home": home,
        "unit_file": unit_path,
        "user": user,
        "group": group,
        "cwd": release_dir,
        "env_file": env_file,
        "venv": os.path.join(release_dir, "venv"),
        "environment": environment,
        "properties": properties,
    }


def transient_unit(service: str, token: str | None = None) -> str:
    return f"flipback-exec-{service}-{token or secrets.token_hex(4)}.service"


def systemd_run_argv(
    target: Mapping[str, Any], cmd: str, *, timeout: int, unit: str, systemd_run: str
) -> list[str]:
    """The systemd-run command line: the release's user, cwd, env file and sandboxing,
    the venv first on PATH. It names the env file, never a value from it."""
    argv = [
        systemd_run,
        "--wait",
        "--pipe",
        "--collect",
        "--service-type=exec",
        f"--unit={unit}",
        f"--description=flipback exec in {target['service']} release {target['release']}",
        f"--uid={target['user']}",
        f"--gid={target['group']}",
        f"--working-directory={target['cwd']}",
        f"--property=EnvironmentFile={target['env_file']}",
    ]
    argv += [f"--property=Environment={value}" for value in target["environment"]]
    argv += [
        f"--setenv=FLIPBACK_RELEASE={target['release']}",
        f"--setenv=VIRTUAL_ENV={target['venv']}",
        f"--setenv=PATH={target['venv']}/bin:{SYSTEM_PATH}",
        f"--property=RuntimeMaxSec={timeout}",
        f"--property=TimeoutStopSec={STOP_GRACE}",
    ]
    argv += [f"--property={prop}" for prop in target["properties"]]
    # systemd expands $NAME and ${NAME} in a service's command line before the shell
    # sees it (and turns $$ into $): doubled, every $ reaches the shell as typed.
    return [*argv, "--", "/bin/sh", "-c", cmd.replace("$", "$$")]


def split_trailer(stderr: str) -> tuple[str, dict[str, str] | None]:
    """(the command's stderr, what systemd-run said of the end: `result`, and `code`
    and `status` of the main process when it said so); None when it said nothing
    (it could not start the command, or it was itself stopped)."""
    stderr = _RUNNING_AS.sub("", stderr, count=1)
    lines = stderr.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    end = len(lines)
    start = None
    while end > 0:
        line = lines[end - 1]
        if line.startswith(_TRAILER_PREFIXES[0]):
            start = end - 1
            break
        if not line.startswith(_TRAILER_PREFIXES[1:]):
            break
        end -= 1
    if start is None:
        return stderr, None
    info: dict[str, str] = {}
    for line in lines[start:]:
        if line.startswith(_TRAILER_PREFIXES[0]):
            info["result"] = line[len(_TRAILER_PREFIXES[0]) :].strip()
        elif line.startswith(_TRAILER_PREFIXES[1]):
            match = _TERMINATED.match(line[len(_TRAILER_PREFIXES[1]) :].strip())
            if match:
                info["code"], info["status"] = match.groups()
    kept = lines[:start]
    return ("\n".join(kept) + "\n") if kept else "", info


def outcome(rc: int, info: Mapping[str, str] | None, timeout: int) -> dict[str, Any]:
    """How the command ended: `result` (success, exit-code, signal, timeout, ...), its
    `exit_code` (None unless it exited), the `signal` that ended it, and `failure`, the
    sentence that says why it failed (None if it did not)."""
    code = info.get("code") if info else None
    status = info.get("status") if info else None
    result = info.get("result") if info else None
    ended: dict[str, Any] = {"result": result, "exit_code": None, "signal": None}
    if code == "exited" and status is not None and status.isdigit():
        ended["exit_code"] = int(status)
    elif code in ("killed", "dumped") and status:
        ended["signal"] = status
    if result == "success":
        ended["exit_code"] = 0 if ended["exit_code"] is None else ended["exit_code"]
        ended["failure"] = None
    elif result == "timeout":
        ended["failure"] = (
            f"the command ran longer than the timeout of {timeout} s and was stopped "
            "(a larger -e timeout may help)"
        )
    elif ended["exit_code"] is not None:
        ended["failure"] = f"the command exited with code {ended['exit_code']}"
    elif ended["signal"]:
        ended["failure"] = f"the command was killed by signal {ended['signal']}"
    else:
        ended["failure"] = f"the command ended with result {result!r} (systemd-run rc {rc})"
    return ended


def _capped(text: str) -> tuple[str, bool]:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= MAX_OUTPUT:
        return text, False
    cut = data[:MAX_OUTPUT].decode("utf-8", errors="ignore")
    return cut + _TRUNCATED.format(limit=MAX_OUTPUT), True


def execute(
    service: str,
    cmd: str,
    *,
    timeout: int = DEFAULT_TIMEOUT,
    run: bool = True,
    check_mode: bool = False,
    runner: Runner = run_with_timeout,
    systemd_run: str = "systemd-run",
    systemctl: str = "systemctl",
    root_parent: str = DEFAULT_ROOT,
    unit_dir: str = DEFAULT_UNIT_DIR,
    token: str | None = None,
) -> dict[str, Any]:
    """Run `cmd` in the live release of `service` (or, with `run` false or in check
    mode, only find that release). A command that ran and failed is a result, not an
    error: its `failure` says how it ended; an error is raised only when it could not
    be started."""
    cmd = validate_cmd(cmd)
    timeout = validate_timeout(timeout)
    target = resolve(service, root_parent=root_parent, unit_dir=unit_dir)
    result: dict[str, Any] = {
        "changed": False,
        "service": target["service"],
        "release": target["release"],
        "user": target["user"],
        "group": target["group"],
        "cwd": target["cwd"],
        "ran": False,
        "unit": None,
        "exit_code": None,
        "signal": None,
        "result": None,
        "failure": None,
        "stdout": "",
        "stderr": "",
        "truncated": False,
    }
    if not run or check_mode:
        result["result"] = "not run (check mode)" if check_mode else "not run"
        return result
    unit = transient_unit(target["service"], token)
    argv = systemd_run_argv(target, cmd, timeout=timeout, unit=unit, systemd_run=systemd_run)
    result.update(unit=unit, ran=True, changed=True)
    try:
        rc, stdout, stderr = runner(argv, timeout + WAIT_SLACK)
    except CommandTimeout as exc:
        # systemd's RuntimeMaxSec= should have stopped it long ago; make sure.
        runner([systemctl, "stop", unit], 60)
        stdout, stderr = exc.stdout, split_trailer(exc.stderr)[0]
        result.update(
            result="timeout",
            failure=(
                f"the command did not end within the timeout of {timeout} s (+{WAIT_SLACK} s)"
                f" and its unit {unit} was stopped (a larger -e timeout may help)"
            ),
        )
        result["stdout"], cut_out = _capped(stdout)
        result["stderr"], cut_err = _capped(stderr)
        result["truncated"] = cut_out or cut_err
        return result
    stderr, info = split_trailer(stderr)
    if info is None:
        raise ReleaseError(
            f"exec: systemd-run could not run the command in {target['service']} release "
            f"{target['release']} on this host (rc {rc}): {stderr.strip()[-2000:] or 'no output'}"
            "; expected it to start a transient unit (a retry helps only if the cause was "
            "transient, e.g. systemd was reloading)",
            retryable=False,
            field="cmd",
            value=cmd,
            rc=rc,
            stdout=_capped(stdout)[0],
        )
    # No `rc` in the result: Ansible fails a result whose rc is not 0, and a command that
    # failed is reported (its output shown) before the playbook fails on `failure`.
    result.update(outcome(rc, info, timeout))
    result["stdout"], cut_out = _capped(stdout)
    result["stderr"], cut_err = _capped(stderr)
    result["truncated"] = cut_out or cut_err
    return result


# =========================================================================== controller: report


def _clean(line: str) -> str:
    """A line as a terminal shows it safely: tabs expanded, other control characters
    escaped, no trailing spaces."""
    line = line.expandtabs(4)
    line = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", line)
    return line.rstrip()


def exec_report(hosts: Mapping[str, Any]) -> str:
    """Every host's output: `<host> <release> | <stdout line>`, `... ! <stderr line>`,
    and a closing `... = <how it ended>` line per host."""
    if not isinstance(hosts, Mapping):
        raise ReleaseError(
            f"hosts: got {hosts!r}, expected a mapping of host name to that host's result",
            field="hosts",
            value=hosts,
        )
    width = max((len(str(h)) for h in hosts), default=0)
    out: list[str] = []
    for host, result in hosts.items():
        name = str(host).ljust(width)
        if not isinstance(result, Mapping) or not result:
            out.append(f"{name} - = no result (unreachable?)")
            continue
        release = result.get("release") or "-"
        prefix = f"{name} {release}"
        for stream, mark in (("stdout", "|"), ("stderr", "!")):
            text = result.get(stream) or ""
            if not isinstance(text, str) or not text:
                continue
            for line in text.rstrip("\n").split("\n"):
                out.append(f"{prefix} {mark} {_clean(line)}".rstrip())
        if result.get("ran") is False and not result.get("failed"):
            out.append(
                f"{prefix} = {result.get('result') or 'not run'}: would run as "
                f"{result.get('user')} in {result.get('cwd')}"
            )
        elif result.get("failed") or result.get("skipped"):
            why = result.get("msg") or ("skipped" if result.get("skipped") else "failed")
            out.append(f"{prefix} = could not run: {_clean(' '.join(str(why).split()))}")
        elif result.get("failure"):
            out.append(f"{prefix} = FAILED: {result['failure']}")
        else:
            out.append(f"{prefix} = exit 0")
    return "\n".join(out)
