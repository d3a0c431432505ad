"""Stage a release on a host: unpack the artifact, build its virtualenv in place, offline.

A release is staged straight into its final directory, because a virtualenv is not
relocatable. While that happens its manifest says `status: staging` and a
`.staging-lock` names the staging process, so a half-finished release is never
activated, never a rollback target, and never removed by another run's prune. A
release left half-finished by a killed run is wiped and staged again.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.flipback_common import Runner, run_command, sha256_file, write_atomic
from ansible.module_utils.flipback_release import (
    MANIFEST,
    STAGING_LOCK,
    ReleaseError,
    append_history,
    config_report,
    current_release,
    history_event,
    read_manifest,
    release_dir,
    staging_lock_holder,
    utc_iso,
    validate_release_id,
    validate_service,
)
from ansible.module_utils.flipback_runtime import (
    CONFIG_DIR,
    ENV_FILE,
    UNIT_DIR,
    staged_files,
    start_instance,
    static_dirs,
)

WHEELS_DIR = ".wheels"
# The service's own wheel (a service that is a package), installed over the venv.
PROJECT_DIR = ".project"
# Inside a release while it is staged: the tools the artifact brings (uv's wheel).
TOOLS_DIR = ".tools"
# Where uv's binary, taken out of the wheel an artifact brought, is kept on a host (one
# directory per wheel; the next artifacts need not carry it again to be fast).
TOOL_CACHE = "/var/lib/flipback/tools"
# What the manifest keeps of the build's record (flipback.json in the artifact).
# `source_build` and `target`: what every platform's build of the commit shares, and the
# platform these wheels are for (see flipback_build.Target).
BUILD_RECORD = ("dependencies", "dependency_source", "added", "project", "source_build", "target")


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Only plain files and directories under src/, wheels/, project/ or tools/, never
    outside the target."""
    members = []
    for member in tar.getmembers():
        name = member.name
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise ReleaseError(
                f"artifact: member {name!r} would be written outside the release; expected "
                "relative paths only",
                field="artifact",
            )
        if member.issym() or member.islnk() or not (member.isfile() or member.isdir()):
            raise ReleaseError(
                f"artifact: member {name!r} is not a plain file or directory",
                field="artifact",
            )
        if parts[0] in ("src", "wheels", "project", "tools") or name == "flipback.json":
            members.append(member)
    return members


@dataclass
class StageSpec:
    service: str
    root: str
    release: str
    artifact: str
    checksum: str
    socket_dir: str
    python: str
    manifest: dict[str, Any]
    by: str
    run_id: str | None = None
    # Key of the dependency set; a staged release with the same key lends its venv.
    deps_key: str = ""
    # How the release runs (release_config's `config`), the build it is made of, and
    # its env file (flipback_env_file): staged with the code, never changed after.
    build_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    env_text: str = ""
    unit_dir: str = UNIT_DIR
    tool_cache: str = TOOL_CACHE


class Stager:
    def __init__(self, spec: StageSpec, run: Runner = run_command) -> None:
        self.spec = spec
        self.run = run
        self.path = release_dir(spec.root, spec.release)
        self.venv_from: str | None = None
        # A staged release whose venv, synced to this one's wheels, this one started from.
        self.venv_base: str | None = None
        # uv's binary on this host ("" once looked for and not found), what made the venv.
        self.uv_path: str | None = None
        self.tool_cache = spec.tool_cache
        self.venv_tool = "venv+pip"
        # Unit name -> text of each of the release's units (web instance, processes).
        self.units: dict[str, str] = {}

    def staged(self) -> bool:
        manifest = read_manifest(self.spec.root, self.spec.release)
        return manifest is not None and manifest.get("status") == "staged"

    def stage(self, check_mode: bool) -> dict[str, Any]:
        spec = self.spec
        validate_service(spec.service)
        validate_release_id(spec.release)
        result: dict[str, Any] = {"release": spec.release, "path": self.path}
        # The configuration is checked against the release id before anything is written.
        self.units, _env = staged_files(
            service=spec.service,
            home=spec.root,
            release=spec.release,
            build_id=spec.build_id,
            config=spec.config,
            env_text=spec.env_text,
        )
        if self.staged():
            return {**result, "changed": False}
        # What staging changes in how the service runs (values masked), for --diff.
        _changes, diff = config_report(
            spec.root,
            spec.service,
            current_release(spec.root),
            spec.release,
            spec.config,
            spec.env_text,
        )
        if diff is not None:
            result["diff"] = diff
        holder = staging_lock_holder(self.path)
        if holder is not None:
            raise ReleaseError(
                f"release {spec.release} is being staged by another run (pid {holder}); "
                "expected no concurrent staging. Retry once it has finished",
                retryable=True,
                holder=holder,
            )
        if check_mode:
            return {**result, "changed": True}
        if not os.path.isfile(spec.artifact):
            raise ReleaseError(
                f"artifact: {spec.artifact} does not exist on the host; expected the "
                "uploaded release artifact",
                field="artifact",
                retryable=True,
            )
        observed = sha256_file(spec.artifact)
        if observed != spec.checksum:
            raise ReleaseError(
                f"artifact: checksum {observed} does not match the build's {spec.checksum}; "
                "the upload is damaged. Retrying uploads it again",
                field="checksum",
                retryable=True,
            )
        previous = current_release(spec.root)
        # A half-finished release of a killed run: start again from nothing.
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path, mode=0o755)
        self._write_lock()
        self._write_manifest("staging", previous)
        try:
            self._unpack()
            self._virtualenv()
            self._finish()
            self._configure()
        except ReleaseError:
            raise
        except (OSError, tarfile.TarError) as exc:
            raise ReleaseError(
                f"staging {spec.release} failed: {exc}; the release stays marked 'staging' "
                "and is never used. Retrying stages it again",
                retryable=True,
            ) from exc
        self._write_manifest("staged", previous)
        os.unlink(os.path.join(self.path, STAGING_LOCK))
        # The artifact is only a vehicle; the staged release is what stays.
        os.unlink(spec.artifact)
        append_history(
            spec.root,
            history_event(
                spec.release,
                "staged",
                by=spec.by,
                from_release=previous,
                expect=spec.manifest.get("health"),
                run=spec.run_id,
            ),
        )
        return {
            **result,
            "changed": True,
            "replaces": previous,
            "venv_from": self.venv_from,
            "venv_base": self.venv_base,
            "venv_tool": None if self.venv_from else self.venv_tool,
        }

    def unit_paths(self) -> list[str]:
        return [os.path.join(self.spec.unit_dir, name) for name in self.units]

    def _configure(self) -> None:
        """The release's own configuration: its env file (root, readable by the service's
        group only) beside the code, and its own unit; systemd learns of the unit now."""
        user = self.spec.config["user"]
        try:
            gid = pwd.getpwnam(user).pw_gid
        except KeyError as exc:
            raise ReleaseError(
                f"user: {user!r} does not exist on the host; expected the service user "
                "release_prepare creates. Retrying runs release_prepare first",
                field="user",
                value=user,
                retryable=True,
            ) from exc
        conf_dir = os.path.join(self.path, CONFIG_DIR)
        # The code may carry a file or directory of that name: flipback's wins.
        if os.path.isdir(conf_dir) and not os.path.islink(conf_dir):
            shutil.rmtree(conf_dir)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(conf_dir)
        os.mkdir(conf_dir, 0o750)
        os.chown(conf_dir, 0, gid)
        os.chmod(conf_dir, 0o750)
        write_atomic(os.path.join(conf_dir, ENV_FILE), self.spec.env_text, 0o640, gid)
        self._make_static_dirs(pwd.getpwnam(user).pw_uid, gid)
        os.makedirs(self.spec.unit_dir, mode=0o755, exist_ok=True)
        for name, text in self.units.items():
            write_atomic(os.path.join(self.spec.unit_dir, name), text, 0o644, 0)
        proc = self.run(["systemctl", "daemon-reload"])
        self._check(proc, "reload systemd for the release's units")

    def _make_static_dirs(self, uid: int, gid: int) -> None:
        """The release's static directories (nginx.static) exist and belong to the
        service's user, so that its before_switch commands (collectstatic) can fill them;
        the app itself cannot write them (its unit keeps the release read-only)."""
        for directory in static_dirs(self.spec.config):
            path = os.path.join(self.path, directory)
            if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
                raise ReleaseError(
                    f"nginx.static: {directory!r} is a symlink or a file in the release's "
                    "code; expected a directory (or nothing: flipback creates it). Fix the "
                    "repository; a retry does not help",
                    field="nginx.static",
                    value=directory,
                )
            os.makedirs(path, mode=0o755, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, 0o755)

    def warm_up(self) -> bool:
        """Start the staged release's instance, not waiting: the switch gates it later.

        Only a head start: if systemd refuses, the switch starts it and reports why.
        """
        return start_instance(self.run, self.spec.service, self.spec.release)

    def _write_lock(self) -> None:
        with open(os.path.join(self.path, STAGING_LOCK), "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")

    def _write_manifest(self, status: str, previous: str | None) -> None:
        spec = self.spec
        manifest = {
            **spec.manifest,
            "id": spec.release,
            "service": spec.service,
            "checksum": spec.checksum,
            "deployed_by": spec.by,
            "deployed_at": spec.manifest.get("deployed_at") or utc_iso_now(),
            "replaces": previous,
            "status": status,
            "deps_key": spec.deps_key or None,
            "build": spec.build_id or None,
            # How it runs: env names and a digest, never values.
            "config": spec.config,
        }
        # What it was built from (the artifact's own record, once unpacked): every pin,
        # where the pins came from, what flipback added, the project's own wheel.
        meta = getattr(self, "meta", None) or {}
        manifest.update({k: meta[k] for k in BUILD_RECORD if k in meta})
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        write_atomic(os.path.join(self.path, MANIFEST), text, 0o644)

    def _unpack(self) -> None:
        with tarfile.open(self.spec.artifact) as tar:
            members = safe_members(tar)
            for member in members:
                if member.name == "flipback.json":
                    continue
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1]:
                    continue
                top, rest = parts
                base = {
                    "src": self.path,
                    "wheels": os.path.join(self.path, WHEELS_DIR),
                    "project": os.path.join(self.path, PROJECT_DIR),
                    "tools": os.path.join(self.path, TOOLS_DIR),
                }[top]
                dest = os.path.join(base, rest)
                if member.isdir():
                    os.makedirs(dest, mode=0o755, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
                # safe_members keeps regular files and directories only: never None.
                source = tar.extractfile(member)
                with open(dest, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(dest, 0o755 if member.mode & 0o111 else 0o644)
            meta_member = tar.getmember("flipback.json")
            meta_file = tar.extractfile(meta_member)
            if meta_file is None:
                raise ReleaseError(
                    "artifact: flipback.json is not a file; expected the build's record "
                    "(an artifact of release_build); retrying with the same artifact does "
                    "not help",
                    field="artifact",
                )
            self.meta = json.load(meta_file)

    def _donor(self) -> str | None:
        return find_donor(self.spec.root, self.spec.release, self.spec.deps_key)

    def _virtualenv(self) -> None:
        venv = os.path.join(self.path, "venv")
        donor = self._donor()
        if donor is not None:
            link_venv(os.path.join(self.spec.root, "releases", donor, "venv"), venv)
            self.venv_from = donor
            self._install_project(venv)
            self._compile(self.path, exclude_venv=True)
            return
        self.venv_from = None
        if self.meta.get("dependencies") and not os.path.isdir(os.path.join(self.path, WHEELS_DIR)):
            raise ReleaseError(
                f"{self.spec.release}: the artifact carries no wheels and no staged release on "
                "this host has a virtualenv with them; expected the full artifact. A re-run "
                "uploads it",
                retryable=True,
            )
        deps = self.meta.get("dependencies", [])
        uv = self._uv()
        if uv is not None and deps and self._venv_from_base(uv, venv, deps):
            return
        if uv is not None:
            self.venv_tool = "uv"
            self._check(
                self.run(
                    [
                        uv,
                        "venv",
                        "--quiet",
                        "--no-config",
                        "--offline",
                        "--no-cache",
                        "--python",
                        self.spec.python,
                        "--no-python-downloads",
                        venv,
                    ]
                ),
                "create the virtualenv (uv venv)",
            )
            if deps:
                self._check(
                    self.run(
                        [
                            uv,
                            "pip",
                            "install",
                            "--quiet",
                            "--no-config",
                            "--offline",
                            "--no-cache",
                            "--no-index",
                            "--python",
                            os.path.join(venv, "bin", "python"),
                            "--find-links",
                            os.path.join(self.path, WHEELS_DIR),
                            *deps,
                        ]
                    ),
                    "install the dependencies from the wheelhouse (offline, uv)",
                )
            self._install_project(venv)
            self._compile(self.path, exclude_venv=False)
            return
        self._check(self.run([self.spec.python, "-m", "venv", venv]), "create the virtualenv")
        if deps:
            self._check(
                self.run(
                    [
                        os.path.join(venv, "bin", "python"),
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--no-index",
                        "--no-compile",
                        "--find-links",
                        os.path.join(self.path, WHEELS_DIR),
                        *deps,
                    ]
                ),
                "install the dependencies from the wheelhouse (offline)",
            )
        self._install_project(venv)
        self._compile(self.path, exclude_venv=False)

    def _venv_from_base(self, uv: str, venv: str, deps: list[str]) -> bool:
        """The venv as a hard-linked copy of a staged release's (the live one first) that
        uv then syncs to exactly this release's wheels: the packages both have keep their
        files and bytecode, so only what changed is unpacked and compiled. The same
        wheels as a fresh venv: uv resolves `deps` from the wheelhouse for this
        interpreter, then makes the copy hold exactly that set. False (nothing left
        behind) when no base fits or a step fails; the fresh venv is made then."""
        base = venv_base(self.spec.root, self.spec.release, self.spec.python)
        if base is None:
            return False
        requested = os.path.join(self.path, WHEELS_DIR, "requested.txt")
        resolved = os.path.join(self.path, WHEELS_DIR, "resolved.txt")
        wheels = ["--find-links", os.path.join(self.path, WHEELS_DIR)]
        common = ["--quiet", "--no-config", "--offline", "--no-cache", "--no-index"]
        python = ["--python", os.path.join(venv, "bin", "python")]
        try:
            with open(requested, "w", encoding="utf-8") as fh:
                fh.write("".join(f"{dep}\n" for dep in deps))
            link_venv(os.path.join(self.spec.root, "releases", base, "venv"), venv)
            synced = all(
                self.run(argv).returncode == 0
                for argv in (
                    [uv, "pip", "compile", *common, *python, *wheels, "-o", resolved, requested],
                    [uv, "pip", "sync", *common, *python, *wheels, resolved],
                )
            )
        except OSError:
            synced = False
        if not synced:
            shutil.rmtree(venv, ignore_errors=True)
            return False
        self.venv_tool = "uv"
        self.venv_base = base
        self._install_project(venv)
        self._compile(self.path, exclude_venv=False)
        return True

    def _install_project(self, venv: str) -> None:
        """The service's own wheel, if it is a package, into the release's venv.

        --no-deps: its dependencies are the venv's. --force-reinstall: a borrowed venv
        holds the donor's copy of the project, likely under the same version, which must
        never be what runs. pip removes and writes files (never in place), so the donor's
        files, shared by hard links, stay as they are. pip compiles what it installs: the
        borrowed venv is not compiled again.
        """
        wheel = self.meta.get("project")
        if not wheel:
            return
        if (
            not isinstance(wheel, str)
            or "/" in wheel
            or wheel.startswith(".")
            or not wheel.endswith(".whl")
        ):
            raise ReleaseError(
                f"artifact: project {wheel!r} in flipback.json is not a wheel's file name; "
                "expected e.g. shop-1.0-py3-none-any.whl. Retrying does not change this",
                field="project",
                value=wheel,
                retryable=False,
            )
        path = os.path.join(self.path, PROJECT_DIR, wheel)
        if not os.path.isfile(path):
            raise ReleaseError(
                f"artifact: names the project's wheel {wheel!r} but does not carry it under "
                "project/; expected the build's artifact. Retrying does not change this",
                field="project",
                value=wheel,
                retryable=False,
            )
        uv = self._uv()
        if uv is not None or not os.path.exists(os.path.join(venv, "bin", "pip")):
            # uv removes and writes files (never in place), as pip does.
            if uv is None:
                raise ReleaseError(
                    f"{self.spec.release}: its venv (made by uv) has no pip, and uv is not on "
                    f"this host ({TOOL_CACHE}); expected the full artifact. A re-run with "
                    "the wheels uploads it",
                    retryable=True,
                )
            self._check(
                self.run(
                    [
                        uv,
                        "pip",
                        "install",
                        "--quiet",
                        "--no-config",
                        "--offline",
                        "--no-cache",
                        "--no-index",
                        "--no-deps",
                        "--reinstall",
                        "--python",
                        os.path.join(venv, "bin", "python"),
                        path,
                    ]
                ),
                "install the project's own wheel (offline, uv, over the venv)",
            )
            return
        self._check(
            self.run(
                [
                    os.path.join(venv, "bin", "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-index",
                    "--no-deps",
                    "--force-reinstall",
                    path,
                ]
            ),
            "install the project's own wheel (offline, over the venv)",
        )

    def _compile(self, path: str, *, exclude_venv: bool) -> None:
        argv = [os.path.join(path, "venv", "bin", "python"), "-m", "compileall", "-q", "-j", "0"]
        if exclude_venv:
            # The borrowed venv's bytecode is already there (hard links).
            argv += ["-x", r"/venv/"]
        self._check(self.run([*argv, path]), "precompile bytecode")

    def _uv(self) -> str | None:
        """uv on this host: from the cache, or taken out of the wheel the artifact brought
        (then kept for the next releases); None when neither has it (staging then uses
        venv and pip, as before uv was shipped)."""
        if self.uv_path is not None:
            return self.uv_path or None
        self.uv_path = ""
        tools = os.path.join(self.path, TOOLS_DIR)
        wheels = sorted(
            name
            for name in (os.listdir(tools) if os.path.isdir(tools) else [])
            if name.startswith("uv-") and name.endswith(".whl")
        )
        names = wheels or sorted(
            os.listdir(self.tool_cache) if os.path.isdir(self.tool_cache) else []
        )
        for name in reversed(names):
            binary = os.path.join(self.tool_cache, name.removesuffix(".whl"), "uv")
            if os.access(binary, os.X_OK):
                self.uv_path = binary
                break
            if name in wheels:
                self.uv_path = extract_uv(os.path.join(tools, name), binary)
                break
        return self.uv_path or None

    def _finish(self) -> None:
        shutil.rmtree(os.path.join(self.path, TOOLS_DIR), ignore_errors=True)
        shutil.rmtree(os.path.join(self.path, WHEELS_DIR), ignore_errors=True)
        shutil.rmtree(os.path.join(self.path, PROJECT_DIR), ignore_errors=True)
        sock = os.path.join(self.path, "sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        os.symlink(os.path.join(self.spec.socket_dir, self.spec.release, "app.sock"), sock)
        # The code and its virtualenv belong to root: the service user can read and
        # run them, never change them.
        for dirpath, dirnames, filenames in os.walk(self.path):
            if self.venv_from is not None and dirpath == self.path and "venv" in dirnames:
                # A borrowed venv is the donor's files, already root's.
                dirnames.remove("venv")
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), 0, 0)
            os.chmod(dirpath, 0o755)
        os.lchown(self.path, 0, 0)

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            raise ReleaseError(
                f"could not {what} for {self.spec.release} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}; the release stays marked "
                "'staging' and is never used",
                retryable=False,
            )


def extract_uv(wheel: str, binary: str) -> str:
    """Take uv's binary out of its wheel (`uv-<version>.data/scripts/uv`) to `binary`
    (root, 0755), atomically; returns its path, or "" if the wheel has none."""
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            return ""
        os.makedirs(os.path.dirname(binary), mode=0o755, exist_ok=True)
        tmp = f"{binary}.tmp.{os.getpid()}"
        with archive.open(member) as source, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out)
    os.chmod(tmp, 0o755)
    os.replace(tmp, binary)
    return binary


def staged_venvs(root: str, release: str):
    """(name, manifest) of each complete release on this host other than `release` that
    has a virtualenv: the live release first, then by name."""
    current = current_release(root)
    releases = os.path.join(root, "releases")
    try:
        names = sorted(os.listdir(releases), key=lambda name: (name != current, name))
    except FileNotFoundError:
        return
    for name in names:
        if name == release:
            continue
        try:
            manifest = read_manifest(root, name)
        except ReleaseError:
            continue
        if (
            manifest
            and manifest.get("status") == "staged"
            and os.path.isfile(os.path.join(releases, name, "venv", "pyvenv.cfg"))
        ):
            yield name, manifest


def find_donor(root: str, release: str, deps_key: str) -> str | None:
    """A complete release on this host whose virtualenv has exactly these wheels."""
    if not deps_key:
        return None
    for name, manifest in staged_venvs(root, release):
        if manifest.get("deps_key") == deps_key:
            return name
    return None


def venv_base(root: str, release: str, python: str) -> str | None:
    """A complete release here whose venv uv made for this very interpreter (the live
    release first): a start for a venv with other wheels (Stager._venv_from_base)."""
    version = ".".join(str(n) for n in sys.version_info[:3])
    for name, _manifest in staged_venvs(root, release):
        cfg_path = os.path.join(root, "releases", name, "venv", "pyvenv.cfg")
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                cfg = dict(line.split(" = ", 1) for line in fh.read().splitlines() if " = " in line)
        except OSError:
            continue
        if (
            "uv" in cfg
            and cfg.get("version_info") == version
            and os.path.realpath(os.path.join(cfg.get("home", ""), "python3"))
            == os.path.realpath(python)
        ):
            return name
    return None


def link_venv(source: str, dest: str) -> None:
    """Copy a virtualenv by hard links, then rewrite the files that name its path.

    Staged venvs are never changed in place, so sharing their files is safe; the
    scripts in bin/ and pyvenv.cfg carry the venv's own path and get their own copies.
    """
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        target_dir = os.path.normpath(os.path.join(dest, rel))
        os.makedirs(target_dir, mode=0o755, exist_ok=True)
        # The donor's mode, not the umask's: the service user must read its venv.
        os.chmod(target_dir, os.stat(dirpath).st_mode & 0o7777)
        for name in dirnames + filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(target_dir, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                if name in dirnames:
                    dirnames.remove(name)
            elif name in filenames:
                os.link(src, dst)
    old, new = source.encode(), dest.encode()
    rewrite = [os.path.join(dest, "pyvenv.cfg")]
    bin_dir = os.path.join(dest, "bin")
    rewrite += [os.path.join(bin_dir, n) for n in os.listdir(bin_dir)]
    for path in rewrite:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        if old not in data:
            continue
        mode = os.stat(path).st_mode & 0o7777
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data.replace(old, new))
        os.chmod(tmp, mode)
        # rename(2) replaces the link, so the donor's file is untouched.
        os.replace(tmp, path)


def utc_iso_now() -> str:
    return utc_iso(time.time())
