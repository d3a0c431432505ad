"""Unit tests of release_build, the action plugin (plugins/action/release_build.py):
parameters to BuildSpec, and its results. library/release_build.py only documents it.

The action builds for real against a throwaway git repository in tmp_path, with a fake
pip that writes dummy wheels, so nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import pytest
from ansible.errors import AnsibleActionFail
from ansible.module_utils.flipback_build import BuildError
from fakes import action, load_plugin

pytestmark = pytest.mark.controller

release_build = load_plugin("release_build")

ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{10}$")
T1, T2 = 1704164645, 1706933106  # 2024-01-02T03:04:05Z, 2024-02-03T04:05:06Z

FAKE_PIP = """\
import sys
from pathlib import Path

args = sys.argv[1:]
with open(Path(__file__).with_name("pip-calls.log"), "a", encoding="utf-8") as log:
    log.write(" ".join(args) + "\\n")
dest = args[args.index("--dest") + 1]
values = {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--dest", "--find-links", "-c")}
reqs = [a for a in args[1:] if not a.startswith("-") and a not in values]
if "-r" in args:
    lines = Path(args[args.index("-r") + 1]).read_text().splitlines()
    reqs += [line.split()[0] for line in lines if line.strip()]
for req in reqs:
    name, _, version = req.partition("==")
    if name == "doesnotexist":
        sys.exit(f"ERROR: No matching distribution found for {req}")
    (Path(dest) / f"{name}-{version or '0'}-py3-none-any.whl").write_bytes(req.encode())
"""


def git(repo: Path, *args: str, when: int | None = None) -> str:
    env = dict(os.environ)
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return proc.stdout.strip()


def commit(repo: Path, files: dict[str, str], when: int, tag: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", tag, when=when)
    git(repo, "tag", tag)


@pytest.fixture(autouse=True)
def git_isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")


@pytest.fixture
def source(tmp_path) -> Path:
    repo = tmp_path / "services"
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    pyproject = '[project]\nname = "hello"\ndependencies = ["fastapi==0.110.0"]\n'
    commit(repo, {"hello/pyproject.toml": pyproject, "hello/app.py": "v = 1\n"}, T1, "v1")
    commit(repo, {"hello/app.py": "v = 2\n"}, T2, "v2")
    broken = '[project]\ndependencies = ["doesnotexist==1.0"]\n'
    commit(repo, {"hello/pyproject.toml": broken}, T2 + 60, "broken-deps")
    return repo


@pytest.fixture
def args(source, tmp_path) -> dict:
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return {
        "service": "hello",
        "source": str(source),
        "subdir": "hello",
        "ref": "v2",
        "cache_dir": str(tmp_path / "cache"),
        "pip": [sys.executable, str(script)],
    }


def pip_calls(tmp_path: Path) -> int:
    """Downloads of the service's wheels (uv's, for the hosts, left out)."""
    log = tmp_path / "pip-calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return len([line for line in lines if " uv==" not in line])


def run_action(args, check_mode=False):
    """(failed, the result) of the action for a task with `args`."""
    result = action(release_build, args, check_mode=check_mode).run(task_vars={})
    return bool(result.get("failed")), result


# --------------------------------------------------------------------- parameters


class RecordingBuilder:
    """Records the spec the action built; returns what `outcome` says."""

    specs: ClassVar[list] = []
    outcome: ClassVar[dict | Exception] = {}

    def __init__(self, spec):
        RecordingBuilder.specs.append(spec)

    def build(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return dict(self.outcome)


@pytest.fixture
def recording(monkeypatch, tmp_path):
    # The action returns the code-only artifact inline: a real (small) file.
    code = tmp_path / "x.code.tar"
    code.write_bytes(b"code")
    outcome = {"changed": False, "id": "x", "code_artifact": str(code)}
    monkeypatch.setattr(release_build, "Builder", RecordingBuilder)
    monkeypatch.setattr(RecordingBuilder, "specs", [])
    monkeypatch.setattr(RecordingBuilder, "outcome", outcome)
    return RecordingBuilder


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            {},
            {"subdir": "", "ref": "HEAD", "pip": [sys.executable, "-m", "pip"], "requirements": ""},
        ),
        ({"subdir": "/hello/"}, {"subdir": "hello"}),
        ({"subdir": "services/hello/"}, {"subdir": "services/hello"}),
        ({"pip": ["/opt/py311/bin/pip"]}, {"pip": ["/opt/py311/bin/pip"]}),
        ({"cache_dir": "~/flipback-cache"}, {"cache_dir": "HOME/flipback-cache"}),
        ({"ref": "v2"}, {"ref": "v2"}),
        ({"requirements": "requirements/prod.txt"}, {"requirements": "requirements/prod.txt"}),
    ],
    ids=[
        "defaults",
        "subdir-slashes",
        "nested-subdir",
        "pip",
        "cache-dir-home",
        "ref",
        "requirements",
    ],
)
def test_parameters_reach_the_build_spec(recording, monkeypatch, tmp_path, given, expected):
    monkeypatch.setenv("HOME", str(tmp_path))
    failed, result = run_action({"service": "hello", "source": "/srv/git/x", **given})
    assert not failed, result
    (spec,) = recording.specs
    assert (spec.service, spec.source) == ("hello", "/srv/git/x")
    for key, value in expected.items():
        if key == "cache_dir":
            value = value.replace("HOME", str(tmp_path))
        assert getattr(spec, key) == value, key
    if "cache_dir" not in given:
        assert spec.cache_dir == str(tmp_path / ".cache" / "flipback")


def test_missing_required_parameters_fail(recording):
    with pytest.raises(AnsibleActionFail) as failure:
        run_action({"service": "hello"})
    assert "source" in str(failure.value)
    assert recording.specs == []


def test_build_error_details_reach_the_result(recording):
    recording.outcome = BuildError("ref: got 'x'", retryable=False, field="ref", value="x")
    failed, result = run_action({"service": "hello", "source": "/srv/git/x"})
    assert failed
    assert result["failed"] is True
    assert (result["msg"], result["retryable"]) == ("ref: got 'x'", False)
    assert (result["field"], result["value"]) == ("ref", "x")
    assert isinstance(result["elapsed"], float)


# ---------------------------------------------------------------------------- builds


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check-mode"])
def test_builds_once_then_reports_unchanged(args, tmp_path, check_mode):
    first_failed, first = run_action(args, check_mode)
    assert not first_failed, first
    assert first["changed"] is True
    assert ID_RE.match(first["id"])
    assert first["id"].startswith("20240203T040506-")
    assert first["git_sha"] == git(Path(args["source"]), "rev-parse", "v2")
    # pyproject.toml lists no uvicorn: the build adds it, and says so.
    assert first["dependencies"] == ["fastapi==0.110.0", "uvicorn==0.54.0"]
    assert (first["dependency_source"], first["added"]) == ("pyproject.toml", ["uvicorn==0.54.0"])
    assert first["project"] is None
    assert isinstance(first["elapsed"], float) and first["elapsed"] >= 0
    # Check mode builds too: the artifact is a controller cache, and a dry run names the id.
    artifact = Path(first["artifact"])
    assert artifact.parent == tmp_path / "cache" / "artifacts"
    assert first["checksum"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    # The code-only artifact travels inline (it is small).
    assert base64.b64decode(first["code_b64"]) == Path(first["code_artifact"]).read_bytes()

    second_failed, second = run_action(args)
    assert not second_failed, second
    assert second["changed"] is False
    for key in ("id", "artifact", "checksum"):
        assert second[key] == first[key], key
    # One download for the service's dependencies, one for uvicorn; then the wheelhouse.
    assert pip_calls(tmp_path) == 2


def test_takes_the_requirements_file_it_is_given(args):
    repo = Path(args["source"])
    # pyproject.toml lists fastapi; the named file wins over it (and over requirements.txt).
    files = {
        "hello/requirements/prod.txt": "flask==3.0.0\nuvicorn==0.30.0\n",
        "hello/requirements.txt": "django==5.0\n",
    }
    commit(repo, files, T2 + 120, "with-requirements")
    given = {**args, "ref": "with-requirements", "requirements": "requirements/prod.txt"}

    failed, result = run_action(given)

    assert not failed, result
    assert result["dependency_source"] == "requirements/prod.txt"
    assert result["dependencies"] == ["flask==3.0.0", "uvicorn==0.30.0"]
    assert result["added"] == []


@pytest.mark.parametrize(
    ("overrides", "field", "retryable", "says"),
    [
        ({"ref": "nope"}, "ref", False, "expected a branch, tag or commit"),
        ({"ref": "a..b"}, "ref", False, "expected a branch, tag or commit"),
        ({"subdir": "../hello"}, "subdir", False, "no '..'"),
        ({"subdir": "missing"}, "subdir", False, "has no pyproject.toml"),
        ({"source": "MISSING"}, "source", False, "reachable from the controller"),
        ({"ref": "broken-deps"}, None, False, "No matching distribution found for doesnotexist"),
        ({"requirements": "../reqs.txt"}, "requirements", False, "inside the service directory"),
        ({"requirements": "nope.txt"}, "requirements", False, "has no such file"),
    ],
    ids=[
        "unknown-ref",
        "range-ref",
        "dotdot-subdir",
        "missing-subdir",
        "no-source",
        "pip",
        "requirements-outside",
        "requirements-missing",
    ],
)
def test_reports_failures(args, tmp_path, overrides, field, retryable, says):
    if overrides.get("source") == "MISSING":
        overrides = {"source": str(tmp_path / "no-such-repo")}
    failed, result = run_action({**args, **overrides})
    assert failed
    assert result["failed"] is True
    assert says in result["msg"]
    assert result["retryable"] is retryable
    assert isinstance(result["elapsed"], float)
    if says.startswith("No matching"):  # the failing source, and what it asked for
        assert (result["field"], result["value"]) == ("pyproject.toml", ["doesnotexist==1.0"])
    else:
        assert result.get("field") == field
    if field is not None:
        assert result["value"] == {**args, **overrides}[field]
    assert "id" not in result


# ------------------------------------------------------------ credentials in source

SECRET = "s3cr%t/tok@n"
USER = "deploy-bot"


@pytest.mark.parametrize("exists", [True, False], ids=["built", "unreachable"])
def test_never_shows_the_credentials_of_the_source(args, tmp_path, exists):
    path = args["source"] if exists else str(tmp_path / "no-such-repo")
    # git takes (and ignores) userinfo in a file URL: a local stand-in for an https one.
    source = f"file://{USER}:{quote(SECRET, safe='')}@{path}"
    failed, result = run_action({**args, "source": source})

    assert failed is not exists, result
    clean = f"file://{path}"
    if exists:
        assert result["source"] == clean
    else:
        assert (result["field"], result["value"]) == ("source", clean)
        assert clean in result["msg"]
    # A module's answer echoes its parameters (`invocation`); the action's echoes none.
    assert "invocation" not in result
    shown = json.dumps(result)
    for form in (SECRET, quote(SECRET, safe=""), USER):
        assert form not in shown
