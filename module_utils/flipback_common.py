"""Pieces every flipback module shares: its error type and answer, running a command, hashing,
reading and replacing a file, and keeping credentials in a git URL out of everything
flipback writes or reports.

Standard library only: it runs on the controller and on the hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import quote, unquote


class FlipbackError(Exception):
    """A failure with what was observed, what was expected, and whether a retry is safe."""

    def __init__(self, msg: str, *, retryable: bool = False, **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retryable = retryable
        self.details = details


def respond(module: Any, work: Callable[[], dict[str, Any]]) -> NoReturn:
    """End an AnsibleModule with what `work()` returns, or with the FlipbackError it raises.

    Both answers carry `elapsed`, the seconds `work` took; a result or error that timed
    itself (a health probe) keeps its own. A result's `warnings` become module warnings.
    `module` is duck-typed so this file stays free of Ansible imports.
    """
    started = time.monotonic()
    try:
        result = work()
    except FlipbackError as exc:
        elapsed = round(time.monotonic() - started, 3)
        module.fail_json(
            msg=exc.msg, retryable=exc.retryable, **{"elapsed": elapsed, **exc.details}
        )
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**{"elapsed": round(time.monotonic() - started, 3), **result})


# How modules run commands; tests pass a fake of this shape.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
# The same with variables added to the command's environment (say, a credential that
# must not appear in its argv); run_command is one.
EnvRunner = Callable[[Sequence[str], Mapping[str, str]], "subprocess.CompletedProcess[str]"]


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` without a stdin; `env`, if given, is added to this process's environment."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **env} if env else None,
    )


def read_text(path: str) -> str | None:
    """A file's text; None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str, content: str, mode: int, gid: int | None = None) -> None:
    """Replace `path` by rename(2) of `<path>.tmp.<pid>`, so a reader sees the old file or
    the new one, never part of either. The mode (and, given `gid`, owner root:`gid`) is
    set before the content is written."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if gid is not None:
                os.fchown(handle.fileno(), 0, gid)
            os.fchmod(handle.fileno(), mode)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------- credentials in URLs

# `scheme://authority...`: the authority ends at the first "/", "?" or "#", as git reads it.
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)$", re.DOTALL)
# ssh logs in as the URL's user, which is no secret; its password, if any, is.
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})


def _userinfo(url: str) -> tuple[str, str, str | None, str] | None:
    """(`scheme://`, raw username, raw password or None, `host[:port]...`) of a URL with
    userinfo; None for one without, for a scp-like `user@host:path` and for a local path.

    The userinfo ends at the authority's last "@", so a password with an unencoded "@"
    is taken out whole instead of leaking its tail into the host.
    """
    match = _URL_RE.match(url)
    if match is None:
        return None
    prefix, authority, rest = match.groups()
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return None
    username, colon, password = userinfo.partition(":")
    return prefix, username, password if colon else None, hostport + rest


def redact_url(url: str) -> str:
    """`url` without its credentials: every userinfo of an http(s) (or any other) URL
    goes; an ssh:// URL keeps a user without a password and loses a password.

    `https://u:token@git.example.com/x.git` -> `https://git.example.com/x.git`,
    `ssh://git:pw@host/x.git` -> `ssh://git@host/x.git`; `ssh://git@host/x.git`,
    scp-like `git@host:x.git` and local paths come back unchanged.
    """
    parts = _userinfo(url)
    if parts is None:
        return url
    prefix, username, password, rest = parts
    if prefix[:-3].lower() in _SSH_SCHEMES and username:
        return url if password is None else f"{prefix}{username}@{rest}"
    return prefix + rest


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(redact_url(url), username, password): the credentials redact_url took out,
    percent-decoded as git would send them; None for a part that was not there or stays
    in the URL (an ssh user)."""
    clean = redact_url(url)
    parts = _userinfo(url)
    if parts is None or clean == url:
        return clean, None, None
    prefix, username, password, _rest = parts
    kept = prefix[:-3].lower() in _SSH_SCHEMES
    return (
        clean,
        unquote(username) if username and not kept else None,
        unquote(password) if password else None,
    )


def _spellings(secret: str) -> set[str]:
    """The ways `secret` may be written in a URL or a message: as given, decoded, and
    percent-encoded (upper- and lower-case hex)."""
    forms = {secret, unquote(secret)}
    for plain in list(forms):
        for safe in ("", "!$&'()*+,;=:"):
            encoded = quote(plain, safe=safe)
            forms.add(encoded)
            forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded))
    return {form for form in forms if form}


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every spelling of each non-empty secret replaced by `***`."""
    forms = set().union(*(_spellings(s) for s in secrets if s))
    if not forms:
        return text
    # Longest first, so that a secret containing another one goes whole.
    pattern = "|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f)))
    return re.sub(pattern, "***", text)
