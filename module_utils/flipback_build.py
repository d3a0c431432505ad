"""Build a release artifact on the controller: source at a git ref plus a wheelhouse.

The artifact is a tar with `src/` (the service directory at the commit, from
`git archive`), `wheels/` (every dependency as a wheel, so hosts install offline)
and, for a service that is a package (its pyproject.toml has a [build-system]),
`project/` with the service's own wheel. Its release id is
`<commit time UTC>-<content hash>`: sortable, and the same for the same content, so
building the same ref twice yields the same id and the deploy has nothing to do.

The dependencies come from what the service already has, first found first:
`uv.lock` (exported by uv, locked versions and hashes), a requirements file
(`requirements.txt`, or the one the build names; `--hash=` pins are enforced by pip),
else `[project] dependencies` of pyproject.toml. uvicorn, which runs every service,
is added at UVICORN when none of the downloaded wheels is uvicorn.

Credentials in `source` (`https://user:token@host/x.git`) stay in the controller's
memory: the mirror is cloned from, configured with and named after the URL without
them, git gets them from its environment through a credential helper, and every
message and result shows the redacted URL.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

from ansible.module_utils.flipback_common import (
    EnvRunner,
    FlipbackError,
    Runner,
    run_command,
    scrub,
    sha256_file,
    split_credentials,
)

REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@{}^~-]{0,199}$")
SUBDIR_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+$|^$")

# Hands git the credentials of `source` from the environment of a clone or fetch, so they
# are in neither its argv (visible in `ps`) nor the mirror's config. The empty helper
# before it drops the user's own helpers, which could otherwise store them on disk.
CREDENTIAL_HELPER = (
    'credential.helper=!f() { test "$1" = get && '
    'printf "username=%s\\npassword=%s\\n" "$FLIPBACK_GIT_USERNAME" "$FLIPBACK_GIT_PASSWORD"; }; f'
)


# Arguments of release_build, shared by the module and the controller action.
ARGUMENT_SPEC: dict[str, dict] = {
    "service": {"type": "str", "required": True},
    "source": {"type": "str", "required": True},
    "subdir": {"type": "str", "default": ""},
    "ref": {"type": "str", "default": "HEAD"},
    "cache_dir": {"type": "path", "default": "~/.cache/flipback"},
    "pip": {"type": "list", "elements": "str", "default": []},
    "requirements": {"type": "str", "default": ""},
    # Each target host's platform probe (PROBE's output), by host; empty: build for the
    # controller's own platform.
    "targets": {"type": "dict", "default": {}},
}

# Added to the wheelhouse when none of the service's dependencies brings uvicorn (a
# Django project, say, does not list it): every release runs under uvicorn.
UVICORN = "uvicorn==0.54.0"
# Shipped to the hosts with the wheels (artifact tools/): staging makes each venv with it.
HOST_UV = "uv==0.13.9"

UV_EXPORT = [
    "export",
    "--frozen",
    "--no-dev",
    "--no-emit-project",
    "--format",
    "requirements-txt",
    "--no-header",
]

# pip's lines that say why a download failed; kept whole in the message.
REASON_RE = re.compile(
    r"Requires-Python|requires a different python|No matching distribution"
    r"|Could not find a version",
    re.IGNORECASE,
)
# A Python the index's versions exclude: the index answered, a retry changes nothing.
PYTHON_RE = re.compile(r"Requires-Python|requires a different python", re.IGNORECASE)
# Failures of the network or the index, which a later try may not meet.
NETWORK_RE = re.compile(
    r"connection (?:error|refused|reset|aborted|broken)|NewConnectionError|ConnectTimeout"
    r"|ReadTimeout|timed out|Max retries exceeded|Temporary failure in name resolution"
    r"|Name or service not known|RemoteDisconnected|IncompleteRead|ProxyError"
    r"|\b5\d\d Server Error|HTTP error 5\d\d|status code 5\d\d",
    re.IGNORECASE,
)
# Enough for every reason pip gives; a bound only for a pathological output.
REASON_LIMIT = 8000
# The package pip found no wheel for (the first one it names).
NO_WHEEL_RE = re.compile(r"No matching distribution found for (\S+)")
# Dependencies built from source into pure wheels, at most, before the build gives up.
PURE_BUILDS_MAX = 8

# Run by the hosts' /usr/bin/python3 (the interpreter every release venv is made from),
# once per host and run: what its wheels must be built for, as one line of JSON.
PROBE = " ".join(
    (
        "import json,os,platform,sys;",
        "libc=os.confstr('CS_GNU_LIBC_VERSION') if 'CS_GNU_LIBC_VERSION' in os.confstr_names",
        "else '';",
        "print(json.dumps({'implementation':sys.implementation.name,",
        "'python':'%d.%d'%sys.version_info[:2],'machine':platform.machine(),",
        "'libc':libc or ' '.join(platform.libc_ver()).strip()}))",
    )
)
# As the role's task runs it (its folded lines joined by single spaces, as here).
PROBE_COMMAND = f'/usr/bin/python3 -c "{PROBE}"'
# The oldest manylinux glibc for an architecture (PEP 600): x86 wheels go back to 2.5.
MANYLINUX_FLOOR = {"x86_64": 5, "i686": 5}
MANYLINUX_DEFAULT_FLOOR = 17
# PEP 600's names for the glibc versions the older manylinux tags stand for.
MANYLINUX_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
MACHINE_RE = re.compile(r"^[a-z0-9_]{1,20}$")
PYTHON_RE_VERSION = re.compile(r"^3\.(\d{1,2})$")
GLIBC_RE = re.compile(r"^glibc (2)\.(\d{1,3})$")


class BuildError(FlipbackError):
    """A failure with what was observed, what was expected, and whether a retry is safe."""


def validate_ref(ref: str) -> str:
    if not isinstance(ref, str) or not REF_RE.fullmatch(ref) or ".." in ref:
        raise BuildError(
            f"ref: got {ref!r}, expected a branch, tag or commit (letters, digits, ._/-)",
            field="ref",
            value=ref,
        )
    return ref


def validate_subdir(subdir: str) -> str:
    parts = subdir.split("/") if subdir else []
    if not SUBDIR_RE.fullmatch(subdir) or any(p in (".", "..") for p in parts):
        raise BuildError(
            f"subdir: got {subdir!r}, expected a relative path inside the repository "
            "(no '..', no leading '/')",
            field="subdir",
            value=subdir,
        )
    return subdir


def validate_requirements(path: str) -> str:
    """A requirements file named by the build: a relative path inside the service dir."""
    parts = path.split("/") if path else []
    if path and (not SUBDIR_RE.fullmatch(path) or any(p in (".", "..") for p in parts)):
        raise BuildError(
            f"requirements: got {path!r}, expected a relative path inside the service "
            "directory (no '..', no leading '/'), e.g. requirements/prod.txt",
            field="requirements",
            value=path,
            retryable=False,
        )
    return path


@dataclass(frozen=True)
class Target:
    """What a host's wheels are built for: CPython X.Y on a glibc of some version, on one
    architecture. Hosts that report the same are one target and get the same wheels."""

    python: str  # "3.13"
    machine: str  # "x86_64"
    glibc: str  # "2.41"

    @property
    def nodot(self) -> str:
        return self.python.replace(".", "")

    @property
    def key(self) -> str:
        """`cp313-glibc2.41-x86_64`: names the target in results, caches and messages."""
        return f"cp{self.nodot}-glibc{self.glibc}-{self.machine}"

    def describe(self) -> str:
        return f"CPython {self.python}, glibc {self.glibc}, {self.machine}"

    def platforms(self) -> list[str]:
        """The platform tags its wheels may carry, most specific first, as pip on such a
        host would prefer them: manylinux_2_N down to the architecture's floor (with the
        older names of 2.17, 2.12 and 2.5 after theirs), then the bare linux tag."""
        minor = int(self.glibc.split(".")[1])
        floor = MANYLINUX_FLOOR.get(self.machine, MANYLINUX_DEFAULT_FLOOR)
        tags: list[str] = []
        for glibc_minor in range(minor, floor - 1, -1):
            tags.append(f"manylinux_2_{glibc_minor}_{self.machine}")
            if glibc_minor in MANYLINUX_LEGACY:
                tags.append(f"{MANYLINUX_LEGACY[glibc_minor]}_{self.machine}")
        return [*tags, f"linux_{self.machine}"]

    def pip_args(self) -> list[str]:
        """`pip download` options that pick this target's wheels whatever the controller
        runs (pip then takes wheels only: --only-binary=:all:, added by the download)."""
        args = [
            "--implementation",
            "cp",
            "--python-version",
            self.nodot,
            "--abi",
            f"cp{self.nodot}",
        ]
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def accepts(self, wheel: str) -> bool:
        """Whether a wheel (its file name) installs on this target: one of its tags is
        the target's (pure wheels, py3-none-any, always do)."""
        tags = os.path.basename(wheel)[: -len(".whl")].split("-")[-3:]
        pythons, abis, platforms = (part.split(".") for part in tags)
        if not set(platforms) & {"any", *self.platforms()}:
            return False
        if not set(abis) & {"none", "abi3", f"cp{self.nodot}"}:
            return False
        minor = int(self.nodot[1:])
        fits = {f"cp{self.nodot}", "py3", f"py{self.nodot}"}
        if set(abis) & {"abi3"}:  # abi3 wheels name the oldest CPython they run on
            fits |= {f"cp3{m}" for m in range(2, minor + 1)}
        return bool(set(pythons) & fits)


def target_of(host: str, probe: object) -> Target:
    """The target a host's probe (PROBE's output, or its parsed dict) describes; refused
    naming the host, what it reported and what flipback builds for."""
    data = probe
    if isinstance(probe, str):
        lines = [line.strip() for line in probe.splitlines() if line.strip()]
        try:
            data = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            data = None
    if not isinstance(data, dict):
        raise BuildError(
            f"targets: host {host} answered the platform probe with {str(probe)[-300:]!r}, "
            "expected one line of JSON from /usr/bin/python3 (is python3 installed there?). "
            "Nothing was changed; retrying helps only once the host answers",
            field="targets",
            value=host,
            retryable=False,
        )
    impl = data.get("implementation")
    python = str(data.get("python") or "")
    machine = str(data.get("machine") or "")
    libc = str(data.get("libc") or "")
    glibc = GLIBC_RE.fullmatch(libc)
    problems = []
    if impl != "cpython":
        problems.append(f"implementation {impl!r} (expected cpython)")
    if not PYTHON_RE_VERSION.fullmatch(python):
        problems.append(f"python {python!r} (expected 3.N)")
    if not MACHINE_RE.fullmatch(machine):
        problems.append(f"machine {machine!r} (expected an architecture such as x86_64)")
    if glibc is None:
        problems.append(
            f"libc {libc!r} (expected glibc 2.N: musl hosts, Alpine say, are not supported)"
        )
    if problems:
        raise BuildError(
            f"targets: host {host} runs {', '.join(problems)}; flipback builds wheels for "
            "CPython 3 on glibc Linux. Nothing was changed; retrying does not change this",
            field="targets",
            value={
                "host": host,
                **{k: data.get(k) for k in ("implementation", "python", "machine", "libc")},
            },
            retryable=False,
        )
    return Target(python=python, machine=machine, glibc=f"2.{glibc.group(2)}")  # type: ignore[union-attr]


def group_targets(probes: dict[str, object]) -> dict[str, tuple[Target, list[str]]]:
    """Hosts grouped by target: {target key: (target, sorted hosts)}, in key order."""
    groups: dict[str, tuple[Target, list[str]]] = {}
    for host in sorted(probes):
        target = target_of(host, probes[host])
        groups.setdefault(target.key, (target, []))[1].append(host)
    return dict(sorted(groups.items()))


def pip_failure(stderr: str) -> tuple[str, bool]:
    """Why pip failed, fit for a message, and whether a retry may help.

    Keeps every ERROR line with its indented continuation (a hash mismatch lists the
    packages there) and every line naming Requires-Python or a missing distribution,
    each whole, plus the first line naming a network failure. A retry helps only a
    network failure (connection, timeout, 5xx), never a Python the versions exclude.
    """
    kept: list[str] = []
    network = python = False
    in_error = False
    for line in stderr.splitlines():
        stripped = line.strip()
        if not stripped:
            in_error = False
            continue
        continuation = in_error and line[:1].isspace()
        in_error = stripped.startswith("ERROR:") or continuation
        is_network = bool(NETWORK_RE.search(line))
        python = python or bool(PYTHON_RE.search(line))
        wanted = in_error or REASON_RE.search(line) or (is_network and not network)
        if wanted and stripped not in kept:
            kept.append(stripped)
        network = network or is_network
    reason = "\n".join(kept) if kept else stderr.strip()[-600:]
    if len(reason) > REASON_LIMIT:
        reason = reason[:REASON_LIMIT] + "\n[...]"
    return reason, network and not python


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_pin(path: str) -> str:
    """`name==version` of a wheel, from its file name (PEP 427)."""
    parts = os.path.basename(path)[: -len(".whl")].split("-")
    return f"{canonical_name(parts[0])}=={parts[1]}"


def uv_command() -> list[str]:
    """uv next to this interpreter (the controller's venv has it), else `python -m uv`."""
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    if os.access(beside, os.X_OK):
        return [beside]
    return [sys.executable, "-m", "uv"]


REQ_INCLUDE_RE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")


def requirements_text(path: str, seen: set[str] | None = None) -> str:
    """A requirements file with every file it includes (-r, -c), for the wheelhouse key."""
    seen = set() if seen is None else seen
    real = os.path.realpath(path)
    if real in seen or not os.path.isfile(path):
        return ""
    seen.add(real)
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    parts = [text]
    for line in text.splitlines():
        match = REQ_INCLUDE_RE.match(line)
        if match:
            included = os.path.join(os.path.dirname(path), match.group(1))
            parts.append(requirements_text(included, seen))
    return "\n".join(parts)


def release_id(commit_time: int, tree: str, wheel_hashes: Sequence[str]) -> str:
    """`YYYYmmddTHHMMSS-<10 hex>`: commit time first (sortable), then a content hash."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(commit_time))
    content = "\n".join([tree, *sorted(wheel_hashes)]).encode()
    return f"{stamp}-{hashlib.sha256(content).hexdigest()[:10]}"


def dependencies_of(pyproject_text: str) -> list[str]:
    try:
        data = tomllib.loads(pyproject_text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(
            f"pyproject.toml: not valid TOML ({exc}); expected a [project] table with dependencies",
            field="pyproject.toml",
        ) from exc
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BuildError(
            "pyproject.toml: [project] dependencies missing or not a list of strings; "
            'expected e.g. dependencies = ["fastapi==0.165.0", "uvicorn==0.54.0"]',
            field="pyproject.toml",
        )
    return sorted(deps)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def write_artifact(
    path: str,
    source_tar: bytes,
    wheels: Sequence[str],
    mtime: int,
    meta: dict,
    project: Sequence[str] = (),
    tools: Sequence[str] = (),
) -> None:
    """A deterministic tar: fixed order, owner and mtime, so equal content gives equal bytes.
    `project` is the service's own wheel, if it is a package (under project/); `tools`
    are wheels of what staging uses on the host (uv, under tools/), never installed."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        _add_bytes(out, "flipback.json", json.dumps(meta, sort_keys=True).encode(), mtime, 0o644)
        with tarfile.open(fileobj=io.BytesIO(source_tar)) as src:
            for member in sorted(src.getmembers(), key=lambda m: m.name):
                if not (member.isfile() or member.isdir()):
                    continue  # links and devices are not part of a Python service's source
                # Only the "./" prefix goes: lstrip("./") would turn ".env" into "env".
                rel = member.name.removeprefix("./").lstrip("/")
                if not rel or ".." in rel.split("/"):
                    continue  # never written outside src/
                name = "src/" + rel
                if member.isdir():
                    info = tarfile.TarInfo(name.rstrip("/"))
                    info.type = tarfile.DIRTYPE
                    info.mode, info.mtime, info.uid, info.gid = 0o755, mtime, 0, 0
                    out.addfile(info)
                    continue
                # A regular file (checked above): extractfile gives its content, never None.
                fh = src.extractfile(member)
                mode = 0o755 if member.mode & 0o111 else 0o644
                _add_bytes(out, name, fh.read(), mtime, mode)
        for wheel in sorted(wheels, key=os.path.basename):
            with open(wheel, "rb") as fh:
                _add_bytes(out, "wheels/" + os.path.basename(wheel), fh.read(), mtime, 0o644)
        for wheel in project:
            with open(wheel, "rb") as fh:
                _add_bytes(out, "project/" + os.path.basename(wheel), fh.read(), mtime, 0o644)
        for wheel in tools:
            with open(wheel, "rb") as fh:
                _add_bytes(out, "tools/" + os.path.basename(wheel), fh.read(), mtime, 0o644)
    os.replace(tmp, path)


@dataclass
class BuildSpec:
    service: str
    source: str
    subdir: str
    ref: str
    cache_dir: str
    pip: Sequence[str]
    # A requirements file inside the service dir, named by the service; "" looks for
    # uv.lock, then requirements.txt, then takes pyproject.toml's dependencies.
    requirements: str = ""
    uv: Sequence[str] = field(default_factory=uv_command)
    # The hosts' platform the wheels are for; None: the controller's own (pip's default).
    target: Target | None = None
    # False when the same run built this source for another target a moment ago: the
    # mirror is current, no second fetch.
    sync: bool = True

    @classmethod
    def from_params(cls, params: dict) -> BuildSpec:
        """The spec that ARGUMENT_SPEC's parameters ask for (module and action alike);
        pip defaults to this interpreter's."""
        return cls(
            service=params["service"],
            source=params["source"],
            subdir=params["subdir"].strip("/"),
            ref=params["ref"],
            cache_dir=params["cache_dir"],
            pip=params["pip"] or [sys.executable, "-m", "pip"],
            requirements=(params.get("requirements") or "").strip(),
        )


class Builder:
    """Builds `spec`. `run` runs the local commands (git in the mirror, pip); `run_remote`
    runs the git commands that reach the source (clone, fetch) with variables added to
    their environment, the credentials among them."""

    def __init__(
        self, spec: BuildSpec, run: Runner = run_command, run_remote: EnvRunner = run_command
    ) -> None:
        self.spec = spec
        self.run = run
        self.run_remote = run_remote
        # `source` is the URL every message, result and mirror config shows.
        self.source, self.username, self.password = split_credentials(spec.source)
        # The service dir at the commit being built, as `git archive` gives it (once).
        self._archived: bytes | None = None

    def scrub(self, text: str) -> str:
        """A command's output, fit for a message: without the credentials of the source."""
        return scrub(text, [self.username, self.password])

    def git(self, *args: str) -> str:
        proc = self.run(["git", "-C", self.mirror, *args])
        if proc.returncode != 0:
            raise BuildError(
                f"git {' '.join(args)} failed in the mirror of {self.source}: "
                f"{self.scrub(proc.stderr.strip())[-500:]}",
                retryable=False,
            )
        return proc.stdout

    def remote_git(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`git *args` that reaches the source: never prompts (a missing credential fails
        instead of hanging), and gets the credentials, if any, from its environment."""
        env = {"GIT_TERMINAL_PROMPT": "0"}
        argv = ["git"]
        if self.username is not None or self.password is not None:
            for value in (self.username or "", self.password or ""):
                if any(c in value for c in "\n\r\0"):
                    raise BuildError(
                        "source: the credentials in the URL contain a line break or NUL "
                        f"(percent-encoded?); expected a plain user and token for {self.source}",
                        field="source",
                        value=self.source,
                        retryable=False,
                    )
            argv += ["-c", "credential.helper=", "-c", CREDENTIAL_HELPER]
            env["FLIPBACK_GIT_USERNAME"] = self.username or ""
            env["FLIPBACK_GIT_PASSWORD"] = self.password or ""
        return self.run_remote([*argv, *args], env)

    @staticmethod
    def _mirror_of(cache_dir: str, url: str) -> str:
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        return os.path.join(cache_dir, "git", f"{key}.git")

    @property
    def mirror(self) -> str:
        """Named after the redacted URL: the same mirror with or without credentials."""
        return self._mirror_of(self.spec.cache_dir, self.source)

    def _adopt_old_mirror(self) -> None:
        """Versions before redaction named the mirror after the URL with its credentials
        and kept them in its config: take such a mirror over (its fix follows), or, if
        there is one under the new name already, clean its config where it lies."""
        if self.source == self.spec.source:
            return
        old = self._mirror_of(self.spec.cache_dir, self.spec.source)
        if not os.path.isdir(old):
            return
        if not os.path.isdir(self.mirror):
            os.rename(old, self.mirror)
            return
        self._clean_remote_url(old)

    def _clean_remote_url(self, mirror: str) -> None:
        proc = self.run(["git", "-C", mirror, "config", "--get", "remote.origin.url"])
        if proc.returncode == 0 and proc.stdout.strip() != self.source:
            fixed = self.run(["git", "-C", mirror, "remote", "set-url", "origin", self.source])
            if fixed.returncode != 0:
                raise BuildError(
                    f"git remote set-url failed in the mirror of {self.source}: "
                    f"{self.scrub(fixed.stderr.strip())[-500:]}",
                    retryable=False,
                )

    def sync_mirror(self) -> None:
        """A bare mirror of the source, fetched every build, so refs are current."""
        self._adopt_old_mirror()
        if not os.path.isdir(self.mirror):
            os.makedirs(os.path.dirname(self.mirror), exist_ok=True)
            # `--`: a user's value is never read as an option.
            proc = self.remote_git("clone", "--quiet", "--mirror", "--", self.source, self.mirror)
            if proc.returncode != 0:
                raise BuildError(
                    f"source: got {self.source!r}, expected a git repository reachable "
                    f"from the controller ({self.scrub(proc.stderr.strip())[-400:]}); "
                    "nothing was changed",
                    field="source",
                    value=self.source,
                    retryable=False,
                )
            return
        # A mirror whose config still holds the credentials (made by an older version).
        self._clean_remote_url(self.mirror)
        proc = self.remote_git("-C", self.mirror, "fetch", "--quiet", "--prune", "origin")
        if proc.returncode != 0:
            raise BuildError(
                f"source: could not fetch {self.source!r} "
                f"({self.scrub(proc.stderr.strip())[-400:]}); "
                "retrying is safe, nothing was changed",
                field="source",
                value=self.source,
                retryable=True,
            )

    def resolve(self) -> str:
        proc = self.run(
            [
                "git",
                "-C",
                self.mirror,
                "rev-parse",
                "--verify",
                "--quiet",
                f"{self.spec.ref}^{{commit}}",
            ]
        )
        if proc.returncode != 0:
            raise BuildError(
                f"ref: got {self.spec.ref!r}, expected a branch, tag or commit of "
                f"{self.source}; nothing was changed",
                field="ref",
                value=self.spec.ref,
                retryable=False,
            )
        return proc.stdout.strip()

    def _target_args(self) -> list[str]:
        return self.spec.target.pip_args() if self.spec.target else []

    def _for(self) -> str:
        target = self.spec.target
        return f"target {target.key} ({target.describe()})" if target else "the hosts' Python"

    def _download(self, what: str, source: str, args: Sequence[str], value: object) -> None:
        proc = self._pip_download(args)
        if proc.returncode != 0:
            self._download_failed(what, source, proc, value)

    def _pip_download(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return self.run(
            [
                *self.spec.pip,
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                *self._target_args(),
                *args,
            ]
        )

    def _download_failed(
        self, what: str, source: str, proc: subprocess.CompletedProcess[str], value: object
    ) -> None:
        reason, retryable = pip_failure(self.scrub(proc.stderr or proc.stdout))
        raise BuildError(
            f"dependencies ({source}): could not download {what} as wheels for "
            f"{self._for()}; pip says:\n{reason}\n"
            + (
                "A network failure: retrying may succeed."
                if retryable
                else "Retrying does not change this: fix the dependencies (or the "
                "hosts' Python) and build again."
            ),
            field=source,
            value=value,
            retryable=retryable,
        )

    def _download_building_pure(
        self, what: str, source: str, args: Sequence[str], value: object, built: str
    ) -> None:
        """Download as wheels for the target; a dependency published as source only is
        built here into a wheel (`pip wheel`, this controller's Python) and offered to the
        next try, if the wheel is pure Python (it runs on every target). One that builds a
        platform wheel is refused, naming it and the target."""
        tried: list[str] = []
        while True:
            extra = ["--find-links", built] if tried else []
            proc = self._pip_download([*extra, *args])
            if proc.returncode == 0:
                return
            missing = NO_WHEEL_RE.search(proc.stderr or proc.stdout or "")
            if missing is None or len(tried) >= PURE_BUILDS_MAX:
                return self._download_failed(what, source, proc, value)
            requirement = missing.group(1)
            if requirement in tried:  # built, and still not taken: say why pip refuses
                self._download_failed(what, source, proc, value)
            tried.append(requirement)
            self._build_pure(requirement, source, built)

    def _build_pure(self, requirement: str, source: str, built: str) -> None:
        target = self.spec.target or Target("?", "?", "?")  # only called with a target
        out = tempfile.mkdtemp(prefix="sdist.", dir=self.spec.cache_dir)
        try:
            proc = self.run(
                [
                    *self.spec.pip,
                    "wheel",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--no-binary=:all:",
                    "--wheel-dir",
                    out,
                    requirement,
                ]
            )
            wheels = self._wheels(out)
            pure = [w for w in wheels if w.endswith("-none-any.whl")]
            if proc.returncode != 0 or len(wheels) != 1 or not pure:
                reason, retryable = pip_failure(self.scrub(proc.stderr or proc.stdout))
                got = (
                    f"builds {os.path.basename(wheels[0])}, a wheel for this controller only"
                    if len(wheels) == 1
                    else f"could not be built here (pip wheel exited {proc.returncode}):\n{reason}"
                )
                raise BuildError(
                    f"dependencies ({source}): {requirement} has no wheel for target "
                    f"{target.key} ({target.describe()}), and its source {got}. Expected a "
                    f"wheel of it for {target.key} on the index: pin a version that has one, "
                    "publish one (built on a host of that target) to your index, or deploy "
                    "the service to hosts of another target. "
                    + (
                        "A network failure: retrying may succeed."
                        if len(wheels) != 1 and retryable
                        else "Retrying does not change this."
                    ),
                    field=source,
                    value={"package": requirement, "target": target.key},
                    retryable=len(wheels) != 1 and retryable,
                )
            os.makedirs(built, exist_ok=True)
            os.replace(pure[0], os.path.join(built, os.path.basename(pure[0])))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def wheelhouse(
        self, source: str, args: Sequence[str], key_text: str
    ) -> tuple[list[str], list[str]]:
        """Every dependency as a wheel, downloaded once per requirement text (kept under
        cache_dir/wheels/<key>); uvicorn added when none of them is uvicorn. Returns the
        wheels and what was added."""
        target = self.spec.target
        # A target's wheelhouse is its own; the controller's (no target) keeps its old key.
        salt = f"\n{target.key}" if target else ""
        key = hashlib.sha256(f"{source}\n{key_text}\n{UVICORN}{salt}".encode()).hexdigest()[:16]
        dest = os.path.join(self.spec.cache_dir, "wheels", key)
        done = os.path.join(dest, ".complete")
        added: list[str] = []
        if os.path.exists(done):
            with open(done, encoding="utf-8") as fh:
                added = json.load(fh)["added"]
        else:
            os.makedirs(dest, exist_ok=True)
            if args:  # pip download fails when given no requirement at all
                if source == "pyproject.toml":
                    what, value = str(list(args)), list(args)
                else:
                    what, value = f"the requirements of {source}", source
                if target is None:
                    self._download(what, source, ["--dest", dest, *args], value)
                else:
                    built = os.path.join(dest, ".built")
                    self._download_building_pure(
                        what, source, ["--dest", dest, *args], value, built
                    )
            pins = [wheel_pin(w) for w in self._wheels(dest)]
            if not any(pin.split("==")[0] == "uvicorn" for pin in pins):
                # Resolved against what is there already: the service's pins hold.
                constraints = os.path.join(dest, ".constraints.txt")
                with open(constraints, "w", encoding="utf-8") as fh:
                    fh.write("".join(f"{pin}\n" for pin in pins))
                self._download(
                    UVICORN,
                    source,
                    ["--dest", dest, "--find-links", dest, "-c", constraints, UVICORN],
                    [UVICORN],
                )
                added = [UVICORN]
            with open(done, "w", encoding="utf-8") as fh:
                json.dump({"source": source, "added": added}, fh)
        return self._wheels(dest), added

    def tools(self) -> list[str]:
        """uv's wheel for the hosts (downloaded once, kept under cache_dir/tools): staging
        builds the venv with it, far faster than venv + pip. Not part of the release."""
        dest = os.path.join(self.spec.cache_dir, "tools", HOST_UV.replace("==", "-"))
        if self.spec.target is not None:
            # uv's wheel is per architecture and libc (not per Python).
            dest = os.path.join(dest, f"glibc{self.spec.target.glibc}-{self.spec.target.machine}")
        done = os.path.join(dest, ".complete")
        if not os.path.exists(done):
            os.makedirs(dest, exist_ok=True)
            self._download(HOST_UV, "tools", ["--dest", dest, "--no-deps", HOST_UV], [HOST_UV])
            with open(done, "w", encoding="utf-8") as fh:
                fh.write(HOST_UV + "\n")
        return self._wheels(dest)

    @staticmethod
    def _wheels(dest: str) -> list[str]:
        return sorted(
            os.path.join(dest, name) for name in os.listdir(dest) if name.endswith(".whl")
        )

    def _blob(self, sha: str, name: str) -> str | None:
        """The text of `name` in the service dir at `sha`, or None if there is none."""
        path = f"{self.spec.subdir}/{name}" if self.spec.subdir else name
        proc = self.run(["git", "-C", self.mirror, "cat-file", "-t", f"{sha}:{path}"])
        if proc.returncode != 0 or proc.stdout.strip() != "blob":
            return None
        return self.git("show", f"{sha}:{path}")

    def _archive(self, treeish: str) -> bytes:
        if self._archived is None:
            archive = subprocess.run(
                ["git", "-C", self.mirror, "archive", "--format=tar", treeish],
                capture_output=True,
                check=False,
            )
            if archive.returncode != 0:
                raise BuildError(
                    f"git archive of {treeish} failed: "
                    f"{self.scrub(archive.stderr.decode(errors='replace'))[-400:]}",
                    retryable=True,
                )
            self._archived = archive.stdout
        return self._archived

    def _checkout(self, treeish: str, work: str) -> str:
        """The service dir at the commit, as files under `work` (once per build)."""
        tree = os.path.join(work, "tree")
        if not os.path.isdir(tree):
            os.makedirs(tree)
            with tarfile.open(fileobj=io.BytesIO(self._archive(treeish))) as tar:
                tar.extractall(tree, filter="data")
        return tree

    def _uv_export(self, pyproject: str, lock: str, work: str) -> str:
        """The locked, non-dev dependencies of uv.lock as a requirements file (with the
        lock's hashes), exported by uv from the two files alone."""
        project = os.path.join(work, "uv")
        os.makedirs(project)
        for name, text in (("pyproject.toml", pyproject), ("uv.lock", lock)):
            with open(os.path.join(project, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        try:
            proc = self.run(
                [*self.spec.uv, "--no-config", "--offline", *UV_EXPORT, "--directory", project]
            )
        except FileNotFoundError as exc:
            proc = subprocess.CompletedProcess([], 127, "", str(exc))
        if proc.returncode != 0:
            raise BuildError(
                f"uv.lock: `uv export` failed (exit {proc.returncode}): "
                f"{self.scrub((proc.stderr or proc.stdout).strip())[-2000:]}; expected a "
                f"uv.lock that uv {' '.join(self.spec.uv)} can read (`make setup` installs "
                "uv into the controller's venv). Retrying does not change this",
                field="uv.lock",
                retryable=False,
            )
        local = [
            line.strip()
            for line in proc.stdout.splitlines()
            if line.strip().startswith(("-e ", "./", "../", "/", "file:"))
        ]
        if local:
            raise BuildError(
                f"uv.lock: the locked dependencies include local paths {local}; expected "
                "packages from an index only (hosts install wheels, offline). Retrying does "
                "not change this",
                field="uv.lock",
                value=local,
                retryable=False,
            )
        path = os.path.join(work, "uv-export.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(proc.stdout)
        return path

    def _requirements(
        self, sha: str, treeish: str, pyproject: str | None, work: str
    ) -> tuple[str, list[str], str]:
        """Where the dependencies come from: (dependency_source, pip download args,
        the text the wheelhouse is keyed on)."""
        named = self.spec.requirements
        if not named:
            lock = self._blob(sha, "uv.lock")
            if lock is not None:
                if pyproject is None:
                    raise BuildError(
                        "uv.lock: the service dir has a uv.lock but no pyproject.toml; "
                        "expected both (uv exports the lock with its project). Retrying "
                        "does not change this",
                        field="uv.lock",
                        retryable=False,
                    )
                exported = self._uv_export(pyproject, lock, work)
                with open(exported, encoding="utf-8") as fh:
                    return "uv.lock", ["-r", exported], fh.read()
        name = named or "requirements.txt"
        if self._blob(sha, name) is not None:
            path = os.path.join(self._checkout(treeish, work), name)
            return name, ["-r", path], requirements_text(path)
        if named:
            raise BuildError(
                f"requirements: got {named!r}, but the service dir "
                f"{self.spec.subdir or '.'!r} at {self.spec.ref} has no such file; expected "
                "a requirements file inside it. Retrying does not change this",
                field="requirements",
                value=named,
                retryable=False,
            )
        if pyproject is None:
            raise BuildError(
                f"subdir: {self.spec.subdir or '.'!r} at {self.spec.ref} has no pyproject.toml "
                "(nor uv.lock or requirements.txt); expected the service's directory",
                field="subdir",
                value=self.spec.subdir,
                retryable=False,
            )
        deps = dependencies_of(pyproject)
        return "pyproject.toml", deps, "\n".join(deps)

    def _project_wheel(self, treeish: str, work: str, commit_time: int) -> str:
        """The service's own wheel, built from the tree at the commit (its build backend
        comes from the index, in an isolated environment). SOURCE_DATE_EPOCH is the commit
        time, so the same tree gives the same wheel."""
        tree = self._checkout(treeish, work)
        out = os.path.join(work, "project")
        os.makedirs(out)
        proc = self.run(
            [
                "env",
                f"SOURCE_DATE_EPOCH={commit_time}",
                *self.spec.pip,
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--wheel-dir",
                out,
                tree,
            ]
        )
        built = self._wheels(out)
        if proc.returncode != 0 or len(built) != 1:
            reason, retryable = pip_failure(self.scrub(proc.stderr or proc.stdout))
            raise BuildError(
                f"pyproject.toml: could not build the service's own wheel (it has a "
                f"[build-system]); pip wheel exited {proc.returncode} with "
                f"{[os.path.basename(w) for w in built]}:\n{reason}\n"
                + (
                    "A network failure: retrying may succeed."
                    if retryable
                    else "Retrying does not change this: fix the build of the project."
                ),
                field="pyproject.toml",
                retryable=retryable,
            )
        target = self.spec.target
        if target is not None and not target.accepts(built[0]):
            raise BuildError(
                f"pyproject.toml: the service's own wheel, {os.path.basename(built[0])}, is "
                f"built on the controller and does not install on target {target.key} "
                f"({target.describe()}); expected a pure-Python project (its wheel tagged "
                "py3-none-any). Retrying does not change this",
                field="pyproject.toml",
                value={"wheel": os.path.basename(built[0]), "target": target.key},
                retryable=False,
            )
        return built[0]

    def build(self) -> dict:
        validate_ref(self.spec.ref)
        validate_subdir(self.spec.subdir)
        validate_requirements(self.spec.requirements)
        # Two runs on one controller (say, two deploys started at once) share the git
        # mirror, the wheelhouse and the artifacts: builds take turns.
        os.makedirs(self.spec.cache_dir, exist_ok=True)
        with open(os.path.join(self.spec.cache_dir, ".build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            work = tempfile.mkdtemp(prefix="build.", dir=self.spec.cache_dir)
            try:
                return self._build(work)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _build(self, work: str) -> dict:
        spec = self.spec
        self._archived = None
        if spec.sync or not os.path.isdir(self.mirror):
            self.sync_mirror()
        sha = self.resolve()
        treeish = f"{sha}:{spec.subdir}" if spec.subdir else f"{sha}^{{tree}}"
        proc = self.run(["git", "-C", self.mirror, "cat-file", "-t", treeish])
        if proc.returncode != 0 or proc.stdout.strip() != "tree":
            raise BuildError(
                f"subdir: {spec.subdir or '.'!r} at {spec.ref} has no pyproject.toml; "
                "expected the service's directory",
                field="subdir",
                value=spec.subdir,
            )
        tree = self.git("rev-parse", "--verify", "--quiet", treeish).strip()
        pyproject = self._blob(sha, "pyproject.toml")
        package = False
        if pyproject is not None:
            try:
                package = "build-system" in tomllib.loads(pyproject)
            except tomllib.TOMLDecodeError as exc:
                raise BuildError(
                    f"pyproject.toml: not valid TOML ({exc}); expected a [project] table "
                    "with dependencies",
                    field="pyproject.toml",
                ) from exc
        source, args, key_text = self._requirements(sha, treeish, pyproject, work)
        wheels, added = self.wheelhouse(source, args, key_text)
        deps = sorted(wheel_pin(w) for w in wheels)
        # The last commit that changed the service, not `sha` itself: a commit elsewhere
        # in the repository must leave the id, and so the artifact, as it was.
        commit_time = int(
            self.git("log", "-1", "--format=%ct", sha, "--", spec.subdir or ".").strip()
        )
        wheel_hashes = [sha256_file(w) for w in wheels]
        # The project's own wheel stays out of both: the tree covers its source, and a
        # code change must keep reusing the venv.
        rid = release_id(commit_time, tree, wheel_hashes)
        # What every target of this commit shares (the code and the dependencies asked
        # for, not the wheels chosen for one platform): what fleet-wide checks compare.
        source_build = release_id(commit_time, tree, [source, key_text, UVICORN])
        target = spec.target.key if spec.target else None
        # Same wheels, same virtualenv: a host may reuse a staged release's venv.
        deps_key = hashlib.sha256("\n".join([*deps, *sorted(wheel_hashes)]).encode()).hexdigest()[
            :16
        ]
        artifacts = os.path.join(spec.cache_dir, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        artifact = os.path.join(artifacts, f"{spec.service}-{rid}.tar")
        # The same release without its wheels, for hosts that already have a venv with
        # exactly these wheels: small enough to travel inside the staging call.
        code_artifact = os.path.join(artifacts, f"{spec.service}-{rid}.code.tar")
        built = None
        if os.path.exists(artifact) and os.path.exists(code_artifact):
            with tarfile.open(code_artifact) as tar:
                meta_file = tar.extractfile("flipback.json")
                if meta_file is None:
                    raise BuildError(
                        f"artifact {code_artifact}: flipback.json is not a file; expected "
                        "the build's record. Remove the artifact and deploy again",
                        field="artifact",
                        value=code_artifact,
                    )
                built = json.load(meta_file)
        # An artifact of an older flipback may lack the project's wheel or its source
        # build: built again.
        changed = (
            built is None
            or (package and not built.get("project"))
            or built.get("source_build") != source_build
        )
        meta = {
            "service": spec.service,
            "id": rid,
            "git_sha": sha,
            "tree": tree,
            "dependencies": deps,
            "dependency_source": source,
            "added": added,
            "deps_key": deps_key,
            "project": None,
            "source_build": source_build,
            "target": target,
        }
        if changed:
            source_tar = self._archive(treeish)
            project = [self._project_wheel(treeish, work, commit_time)] if package else []
            meta["project"] = os.path.basename(project[0]) if project else None
            write_artifact(artifact, source_tar, wheels, commit_time, meta, project, self.tools())
            write_artifact(code_artifact, source_tar, [], commit_time, meta, project)
        else:
            meta["project"] = built.get("project") if built else None
        return {
            "changed": changed,
            "source": self.source,
            "id": rid,
            "git_sha": sha,
            "ref": spec.ref,
            "tree": tree,
            "commit_time": commit_time,
            "artifact": artifact,
            "checksum": sha256_file(artifact),
            "code_artifact": code_artifact,
            "code_checksum": sha256_file(code_artifact),
            "dependencies": deps,
            "dependency_source": source,
            "added": added,
            "deps_key": deps_key,
            "wheels": [os.path.basename(w) for w in wheels],
            "project": meta["project"],
            "source_build": source_build,
            "target": target,
        }
