"""Build a release artifact on the controller: source at a git ref plus a wheelhouse.

The artifact is a tar with `src/` (the service directory at the commit, from
`git archive`) and `wheels/` (every dependency as a wheel, so hosts install
offline). Its release id is `<commit time UTC>-<content hash>`: sortable, and the
same for the same content, so building the same ref twice yields the same id and
the deploy has nothing to do.

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
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

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
}


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
    path: str, source_tar: bytes, wheels: Sequence[str], mtime: int, meta: dict
) -> None:
    """A deterministic tar: fixed order, owner and mtime, so equal content gives equal bytes."""
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
                fh = src.extractfile(member)
                assert fh is not None
                mode = 0o755 if member.mode & 0o111 else 0o644
                _add_bytes(out, name, fh.read(), mtime, mode)
        for wheel in sorted(wheels, key=os.path.basename):
            with open(wheel, "rb") as fh:
                _add_bytes(out, "wheels/" + os.path.basename(wheel), fh.read(), mtime, 0o644)
    os.replace(tmp, path)


@dataclass
class BuildSpec:
    service: str
    source: str
    subdir: str
    ref: str
    cache_dir: str
    pip: Sequence[str]

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

    def wheelhouse(self, deps: Sequence[str]) -> list[str]:
        key = hashlib.sha256("\n".join(deps).encode()).hexdigest()[:16]
        dest = os.path.join(self.spec.cache_dir, "wheels", key)
        done = os.path.join(dest, ".complete")
        if not os.path.exists(done):
            os.makedirs(dest, exist_ok=True)
            if deps:  # pip download fails when given no requirement at all
                proc = self.run(
                    [
                        *self.spec.pip,
                        "download",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--only-binary=:all:",
                        "--dest",
                        dest,
                        *deps,
                    ]
                )
                if proc.returncode != 0:
                    raise BuildError(
                        f"could not download wheels for {list(deps)}: "
                        f"{self.scrub(proc.stderr.strip())[-600:]}; expected every dependency "
                        "as a wheel for the hosts' Python",
                        retryable=True,
                    )
            with open(done, "w", encoding="utf-8") as fh:
                fh.write("\n".join(deps) + "\n")
        return sorted(
            os.path.join(dest, name) for name in os.listdir(dest) if name.endswith(".whl")
        )

    def build(self) -> dict:
        validate_ref(self.spec.ref)
        validate_subdir(self.spec.subdir)
        # Two runs on one controller (say, two deploys started at once) share the git
        # mirror, the wheelhouse and the artifacts: builds take turns.
        os.makedirs(self.spec.cache_dir, exist_ok=True)
        with open(os.path.join(self.spec.cache_dir, ".build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build()

    def _build(self) -> dict:
        spec = self.spec
        self.sync_mirror()
        sha = self.resolve()
        treeish = f"{sha}:{spec.subdir}" if spec.subdir else f"{sha}^{{tree}}"
        pyproject_path = (
            f"{sha}:{spec.subdir}/pyproject.toml" if spec.subdir else f"{sha}:pyproject.toml"
        )
        proc = self.run(["git", "-C", self.mirror, "show", pyproject_path])
        if proc.returncode != 0:
            raise BuildError(
                f"subdir: {spec.subdir or '.'!r} at {spec.ref} has no pyproject.toml; "
                "expected the service's directory",
                field="subdir",
                value=spec.subdir,
            )
        tree = self.git("rev-parse", "--verify", "--quiet", treeish).strip()
        deps = dependencies_of(proc.stdout)
        wheels = self.wheelhouse(deps)
        # The last commit that changed the service, not `sha` itself: a commit elsewhere
        # in the repository must leave the id, and so the artifact, as it was.
        commit_time = int(
            self.git("log", "-1", "--format=%ct", sha, "--", spec.subdir or ".").strip()
        )
        wheel_hashes = [sha256_file(w) for w in wheels]
        rid = release_id(commit_time, tree, wheel_hashes)
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
        changed = not (os.path.exists(artifact) and os.path.exists(code_artifact))
        meta = {
            "service": spec.service,
            "id": rid,
            "git_sha": sha,
            "tree": tree,
            "dependencies": deps,
            "deps_key": deps_key,
        }
        if changed:
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
            write_artifact(artifact, archive.stdout, wheels, commit_time, meta)
            write_artifact(code_artifact, archive.stdout, [], commit_time, meta)
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
            "deps_key": deps_key,
            "wheels": [os.path.basename(w) for w in wheels],
        }
