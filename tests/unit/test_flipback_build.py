"""Unit tests of module_utils/flipback_build.py, against throwaway git repositories.

Real `git` runs in tmp_path; `pip download` is a small fake script (one dummy wheel
per requirement), so nothing here touches the network. Where pip's own behaviour is
under test (hashes, Requires-Python, building a project's wheel), real pip runs against
a local index in tmp_path, or builds with a backend that needs no index; uv runs for
real (`uv export --frozen` reads only the lock).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pytest
from ansible.module_utils import flipback_build
from ansible.module_utils.flipback_build import (
    HOST_UV,
    Builder,
    BuildError,
    BuildSpec,
    dependencies_of,
    release_id,
    validate_ref,
    validate_subdir,
    write_artifact,
)
from fakes import GitOverHttp, stop

ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{10}$")

# Commit times, chosen so the id's stamp can be read off: 2024-01-02T03:04:05Z and so on.
T1, T2, T3, T4 = 1704164645, 1706933106, 1709528767, 1712297228
STAMP = {T1: "20240102T030405", T2: "20240203T040506", T3: "20240304T050607"}
STAMP[T4] = "20240405T060708"

HELLO_PYPROJECT = """\
[project]
name = "hello"
version = "0.1.0"
dependencies = ["uvicorn==0.30.0", "fastapi==0.110.0"]
"""
OTHER_PYPROJECT = """\
[project]
name = "other"
version = "0.1.0"
dependencies = ["flask==3.0.0"]
"""

FAKE_PIP = '''\
"""Stands in for `pip download`: one dummy wheel per requirement (given, or in a -r
file), never the network. `pip wheel` is passed on to the real pip."""
import os
import re
import sys
from pathlib import Path

args = sys.argv[1:]
here = Path(__file__).parent
with open(here / "pip-calls.log", "a", encoding="utf-8") as log:
    log.write(" ".join(args) + "\\n")
if args[:1] == ["wheel"]:
    os.execv(sys.executable, [sys.executable, "-m", "pip", *args])
if args[:1] != ["download"]:
    sys.exit(f"fake pip: expected download, got {args}")
reqs, dest, i = [], None, 1
while i < len(args):
    arg = args[i]
    if arg in ("--dest", "--find-links", "-r", "-c"):
        value, i = args[i + 1], i + 2
        if arg == "--dest":
            dest = value
        if arg == "-r":
            text = Path(value).read_text()
            with open(here / "pip-files.log", "a", encoding="utf-8") as log:
                log.write(text + "\\n----\\n")
            for line in text.replace("\\\\\\n", " ").splitlines():
                line = line.split(" #")[0].split(";")[0].strip()
                if line and not line.startswith(("#", "-")):
                    reqs.append(line.split()[0])
        continue
    if not arg.startswith("-"):
        reqs.append(arg)
    i += 1
if not reqs:  # as real pip does
    sys.exit("ERROR: You must give at least one requirement to download")
salt = os.environ.get("FAKE_PIP_SALT", "")
for req in reqs:
    name = re.split(r"[=<>!~;\\[ ]", req)[0]
    if name == "doesnotexist":
        sys.exit(f"ERROR: No matching distribution found for {req}")
    if name == "unreachable":
        for left in (4, 3, 2, 1, 0):
            print(
                f"WARNING: Retrying (Retry(total={left}, connect=None, read=None)) after "
                "connection broken by 'NewConnectionError(<HTTPSConnection>: Failed to "
                "establish a new connection: [Errno 101] Network is unreachable')': "
                f"/simple/{name}/",
                file=sys.stderr,
            )
        print(f"ERROR: Could not find a version that satisfies the requirement {req} "
              "(from versions: none)", file=sys.stderr)
        sys.exit(f"ERROR: No matching distribution found for {req}")
    version = req.split("==", 1)[1] if "==" in req else "0"
    wheel = Path(dest) / f"{name}-{version}-py3-none-any.whl"
    wheel.write_bytes(f"{req}{salt}".encode())
'''


class Repo:
    """A throwaway git repository whose commits have known times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "--quiet", "-b", "main")

    def git(self, *args: str, when: int | None = None) -> str:
        env = None
        if when is not None:
            date = f"@{when} +0200"  # a non-UTC offset: the id must still use UTC
            env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        proc = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return proc.stdout.strip()

    def commit(self, files: dict[str, str | None], when: int, tag: str = "") -> str:
        for name, text in files.items():
            path = self.path / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "--quiet", "--allow-empty", "-m", f"commit at {when}", when=when)
        if tag:
            self.git("tag", tag)
        return self.git("rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def git_isolated(monkeypatch, tmp_path):
    """Neither the user's nor the system's git config may change what the builder sees."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "FAKE_PIP_SALT"):
        monkeypatch.delenv(var, raising=False)
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")


@pytest.fixture
def services(tmp_path) -> Repo:
    """Two services in one repository: hello (v1, then v2 changes its app.py) and other."""
    repo = Repo(tmp_path / "services")
    repo.commit(
        {
            "hello/pyproject.toml": HELLO_PYPROJECT,
            "hello/app.py": "print('hello v1')\n",
            "other/pyproject.toml": OTHER_PYPROJECT,
            "other/app.py": "print('other')\n",
            "docs/README.md": "not a service\n",
        },
        T1,
        tag="v1",
    )
    repo.commit({"hello/app.py": "print('hello v2')\n"}, T2, tag="v2")
    return repo


@pytest.fixture
def pip(tmp_path) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return [sys.executable, str(script)]


def pip_calls(pip: list[str]) -> list[str]:
    """The downloads of the services' wheels (uv's for the hosts, once per cache, apart:
    see uv_calls)."""
    log = Path(pip[1]).with_name("pip-calls.log")
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if HOST_UV not in line]


def uv_calls(pip: list[str]) -> list[str]:
    log = Path(pip[1]).with_name("pip-calls.log")
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if HOST_UV in line]


def make_builder(repo: Repo, pip: list[str], tmp_path: Path, **overrides) -> Builder:
    fields = {
        "service": "hello",
        "source": str(repo.path),
        "subdir": "hello",
        "ref": "v2",
        "cache_dir": str(tmp_path / "cache"),
        "pip": pip,
        **overrides,
    }
    return Builder(BuildSpec(**fields))


def members(artifact: str) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(artifact) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(artifact: str, name: str) -> bytes:
    with tarfile.open(artifact) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read()


# ----------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    "ref",
    ["HEAD", "main", "v1", "release/2024.01", "feature_x-1", "a" * 40, "HEAD~1", "v2^{commit}"],
    ids=["head", "branch", "tag", "slash-dot", "underscore-dash", "sha", "tilde", "peel"],
)
def test_validate_ref_accepts(ref):
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    ["", "-x", "--upload-pack=evil", "a..b", "../etc", "/main", "has space", "a;b", "x" * 201, 7],
    ids=[
        "empty",
        "option",
        "long-option",
        "dotdot",
        "dotdot-leading",
        "leading-slash",
        "space",
        "semicolon",
        "too-long",
        "not-a-string",
    ],
)
def test_validate_ref_rejects_naming_field_and_value(ref):
    with pytest.raises(BuildError) as info:
        validate_ref(ref)
    assert info.value.details == {"field": "ref", "value": ref}
    assert info.value.msg.startswith(f"ref: got {ref!r}")
    assert info.value.retryable is False


@pytest.mark.parametrize(
    "subdir",
    ["", "hello", "services/hello", "a.b/c_d-e", ".well-known"],
    ids=["root", "one", "nested", "punctuation", "dot-prefixed-name"],
)
def test_validate_subdir_accepts(subdir):
    assert validate_subdir(subdir) == subdir


@pytest.mark.parametrize(
    "subdir",
    ["..", "../x", "a/../b", "a/..", ".", "a/./b", "/etc", "a/", "a//b", "has space", "a\\b"],
    ids=[
        "dotdot",
        "dotdot-leading",
        "dotdot-middle",
        "dotdot-trailing",
        "dot",
        "dot-middle",
        "leading-slash",
        "trailing-slash",
        "double-slash",
        "space",
        "backslash",
    ],
)
def test_validate_subdir_rejects_naming_field_and_value(subdir):
    with pytest.raises(BuildError) as info:
        validate_subdir(subdir)
    assert info.value.details == {"field": "subdir", "value": subdir}
    assert info.value.msg.startswith(f"subdir: got {subdir!r}")
    assert info.value.retryable is False


# ---------------------------------------------------------------------- release_id

TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
HASHES = [hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()]


@pytest.mark.parametrize(
    ("commit_time", "stamp"),
    [(0, "19700101T000000"), (T1, STAMP[T1]), (T4, STAMP[T4]), (1735689599, "20241231T235959")],
    ids=["epoch", "t1", "t4", "end-of-year"],
)
def test_release_id_stamps_the_commit_time_in_utc(commit_time, stamp):
    # A local time zone 14 hours from UTC must not leak into the stamp.
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XXX-14"
    time.tzset()
    try:
        rid = release_id(commit_time, TREE, HASHES)
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert ID_RE.match(rid), rid
    assert rid.startswith(stamp + "-")


@pytest.mark.parametrize(
    ("other", "same"),
    [
        ((T1, TREE, HASHES), True),
        ((T1, TREE, list(reversed(HASHES))), True),
        ((T1, TREE, HASHES[:1]), False),
        ((T1, TREE, [HASHES[0], hashlib.sha256(b"c").hexdigest()]), False),
        ((T1, "0" * 40, HASHES), False),
        ((T1, TREE, []), False),
    ],
    ids=[
        "same-inputs",
        "wheel-order-irrelevant",
        "wheel-dropped",
        "wheel-hash-changed",
        "tree-changed",
        "no-wheels",
    ],
)
def test_release_id_hash_follows_content(other, same):
    base = release_id(T1, TREE, HASHES)
    assert (release_id(*other) == base) is same


def test_release_id_stamp_does_not_change_the_hash():
    assert release_id(T1, TREE, HASHES)[-10:] == release_id(T2, TREE, HASHES)[-10:]


# ------------------------------------------------------------------ dependencies_of


@pytest.mark.parametrize(
    ("text", "deps"),
    [
        (HELLO_PYPROJECT, ["fastapi==0.110.0", "uvicorn==0.30.0"]),
        ('[project]\nname = "x"\ndependencies = []\n', []),
        (
            '[project]\ndependencies = ["b>=1; python_version>\'3\'", "a"]\n',
            ["a", "b>=1; python_version>'3'"],
        ),
    ],
    ids=["pinned-sorted", "empty-list", "markers"],
)
def test_dependencies_of_reads_project_dependencies(text, deps):
    assert dependencies_of(text) == deps


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[project\n", "not valid TOML"),
        ('[project]\nname = "x"\n', "missing or not a list"),
        ('[tool.poetry]\ndependencies = ["a"]\n', "missing or not a list"),
        ('[project]\ndependencies = "fastapi"\n', "missing or not a list"),
        ('[project]\ndependencies = ["a", 1]\n', "missing or not a list"),
        ("", "missing or not a list"),
    ],
    ids=["invalid-toml", "missing", "no-project-table", "a-string", "non-string-item", "empty"],
)
def test_dependencies_of_rejects_naming_the_file(text, says):
    with pytest.raises(BuildError) as info:
        dependencies_of(text)
    assert info.value.details == {"field": "pyproject.toml"}
    assert says in info.value.msg
    assert info.value.retryable is False


# ------------------------------------------------------------------- write_artifact


def source_tar(files: dict[str, bytes], *, mtime: int = 1, dirs: tuple[str, ...] = ()) -> bytes:
    """A tar like `git archive` makes, with whatever mtimes the caller gives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mtime = mtime
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o755 if name.endswith(".sh") else 0o664
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


SOURCE_FILES = {
    "app.py": b"print('hi')\n",
    "pkg/__init__.py": b"",
    "run.sh": b"#!/bin/sh\n",
    ".env.example": b"PORT=8000\n",
}


@pytest.fixture
def wheel_files(tmp_path) -> list[str]:
    paths = []
    for name in ("uvicorn-0.30.0-py3-none-any.whl", "fastapi-0.110.0-py3-none-any.whl"):
        path = tmp_path / "wheels-in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(name.encode())
        paths.append(str(path))
    return paths


def test_write_artifact_is_byte_identical_for_the_same_content(tmp_path, wheel_files):
    meta = {"service": "hello", "id": "x", "dependencies": ["a"]}
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    write_artifact(str(first), source_tar(SOURCE_FILES, mtime=1), wheel_files, T1, meta)
    # Other mtimes in the source, another wheel order and key order: still the same bytes.
    write_artifact(
        str(second),
        source_tar(dict(reversed(SOURCE_FILES.items())), mtime=999),
        list(reversed(wheel_files)),
        T1,
        dict(reversed(meta.items())),
    )
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob("*.tmp.*"))


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("mtime", {"mtime": T2}),
        ("meta", {"meta": {"service": "hello", "id": "y"}}),
        ("source", {"files": {**SOURCE_FILES, "app.py": b"print('bye')\n"}}),
    ],
    ids=["mtime", "meta", "source"],
)
def test_write_artifact_differs_when_an_input_differs(tmp_path, wheel_files, change, kwargs):
    def write(path, files=SOURCE_FILES, mtime=T1, meta=None):
        write_artifact(str(path), source_tar(files), wheel_files, mtime, meta or {"id": "x"})
        return path.read_bytes()

    assert write(tmp_path / "a.tar") != write(tmp_path / "b.tar", **kwargs), change


def test_write_artifact_layout(tmp_path, wheel_files):
    artifact = tmp_path / "out.tar"
    meta = {"service": "hello", "id": "x"}
    write_artifact(str(artifact), source_tar(SOURCE_FILES, dirs=("pkg",)), wheel_files, T1, meta)
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        infos = tar.getmembers()
    assert names == [
        "flipback.json",
        "src/.env.example",
        "src/app.py",
        "src/pkg",
        "src/pkg/__init__.py",
        "src/run.sh",
        "wheels/fastapi-0.110.0-py3-none-any.whl",
        "wheels/uvicorn-0.30.0-py3-none-any.whl",
    ]
    assert json.loads(read_member(str(artifact), "flipback.json")) == meta
    assert read_member(str(artifact), "src/app.py") == SOURCE_FILES["app.py"]
    modes = {i.name: i.mode for i in infos}
    assert modes["src/run.sh"] == 0o755
    assert modes["src/app.py"] == 0o644
    assert modes["src/pkg"] == 0o755
    assert {(i.mtime, i.uid, i.gid) for i in infos} == {(T1, 0, 0)}
    assert not any(i.issym() or i.islnk() for i in infos)


@pytest.mark.parametrize(
    "name",
    ["/etc/cron.d/evil", "../escape.py", "a/../../escape.py", "./"],
    ids=["absolute", "dotdot", "dotdot-nested", "dot-root"],
)
def test_write_artifact_keeps_every_entry_inside_its_directory(tmp_path, name):
    artifact = tmp_path / "out.tar"
    write_artifact(str(artifact), source_tar({name: b"x", "./app.py": b"y"}), [], T1, {})
    names = list(members(str(artifact)))
    assert "src/app.py" in names
    for entry in names:
        assert not entry.startswith("/")
        assert ".." not in entry.split("/")
        assert entry == "flipback.json" or entry.startswith(("src/", "wheels/"))


# --------------------------------------------------------------------------- build


def test_first_build_writes_the_artifact(services, pip, tmp_path):
    result = make_builder(services, pip, tmp_path).build()
    v2 = services.git("rev-parse", "v2")
    assert result["changed"] is True
    assert ID_RE.match(result["id"])
    assert result["id"].startswith(STAMP[T2] + "-")
    assert result["git_sha"] == v2
    assert result["ref"] == "v2"
    assert result["commit_time"] == T2
    assert result["tree"] == services.git("rev-parse", "v2:hello")
    assert result["dependencies"] == ["fastapi==0.110.0", "uvicorn==0.30.0"]
    assert result["wheels"] == [
        "fastapi-0.110.0-py3-none-any.whl",
        "uvicorn-0.30.0-py3-none-any.whl",
    ]
    artifact = result["artifact"]
    assert artifact == str(tmp_path / "cache" / "artifacts" / f"hello-{result['id']}.tar")
    assert result["checksum"] == hashlib.sha256(Path(artifact).read_bytes()).hexdigest()
    assert sorted(members(artifact)) == [
        "flipback.json",
        "src/app.py",
        "src/pyproject.toml",
        # uv for the hosts' staging, never installed in the release.
        "tools/uv-0.13.9-py3-none-any.whl",
        "wheels/fastapi-0.110.0-py3-none-any.whl",
        "wheels/uvicorn-0.30.0-py3-none-any.whl",
    ]
    assert uv_calls(pip) == [
        f"download --quiet --disable-pip-version-check --only-binary=:all: --dest "
        f"{tmp_path / 'cache' / 'tools' / 'uv-0.13.9'} --no-deps {HOST_UV}"
    ]
    assert read_member(artifact, "src/app.py") == b"print('hello v2')\n"
    assert json.loads(read_member(artifact, "flipback.json")) == {
        "service": "hello",
        "id": result["id"],
        "git_sha": v2,
        "tree": result["tree"],
        "dependencies": result["dependencies"],
        "dependency_source": "pyproject.toml",
        "added": [],
        "deps_key": result["deps_key"],
        "project": None,
        "source_build": result["source_build"],
        "target": None,
    }
    # hello lists uvicorn: nothing is added, one download.
    assert (result["dependency_source"], result["added"], result["project"]) == (
        "pyproject.toml",
        [],
        None,
    )
    assert len(pip_calls(pip)) == 1
    assert pip_calls(pip)[0].startswith("download ")


def test_every_build_also_writes_the_code_only_artifact(services, pip, tmp_path):
    result = make_builder(services, pip, tmp_path).build()

    code = result["code_artifact"]
    assert code == str(tmp_path / "cache" / "artifacts" / f"hello-{result['id']}.code.tar")
    assert result["code_checksum"] == hashlib.sha256(Path(code).read_bytes()).hexdigest()
    assert result["code_checksum"] != result["checksum"]
    # The full artifact minus its wheels: same source, same metadata.
    full = members(result["artifact"])
    assert sorted(members(code)) == sorted(
        n for n in full if not n.startswith(("wheels/", "tools/"))
    )
    for name in ("src/app.py", "src/pyproject.toml", "flipback.json"):
        assert read_member(code, name) == read_member(result["artifact"], name), name


@pytest.mark.parametrize("missing", ["artifact", "code_artifact"])
def test_a_missing_artifact_builds_both_again_identically(services, pip, tmp_path, missing):
    first = make_builder(services, pip, tmp_path).build()
    Path(first[missing]).unlink()

    again = make_builder(services, pip, tmp_path).build()

    assert again["changed"] is True
    for key in ("id", "artifact", "checksum", "code_artifact", "code_checksum"):
        assert again[key] == first[key], key
    assert Path(again["artifact"]).is_file() and Path(again["code_artifact"]).is_file()


def test_same_ref_again_is_unchanged_and_uses_the_wheelhouse(services, pip, tmp_path):
    first = make_builder(services, pip, tmp_path).build()
    before = Path(first["artifact"]).stat().st_mtime_ns
    second = make_builder(services, pip, tmp_path).build()
    assert second["changed"] is False
    for key in ("id", "checksum", "artifact", "code_checksum", "git_sha", "wheels"):
        assert second[key] == first[key], key
    assert Path(first["artifact"]).stat().st_mtime_ns == before
    assert len(pip_calls(pip)) == 1


def test_builds_started_at_once_take_turns(services, pip, tmp_path):
    # Two deploys started together share the mirror and the wheelhouse: both builds
    # succeed, give the same release, and only one of them builds.
    results: list[dict] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(make_builder(services, pip, tmp_path).build())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({r["id"] for r in results}) == 1
    assert sorted(r["changed"] for r in results) == [False, False, False, True]
    assert len(pip_calls(pip)) == 1


@pytest.mark.parametrize(
    ("ref", "same_as"),
    [("v1", "v1"), ("v2", "v2"), ("main", "v2"), ("HEAD", "v2"), ("HEAD~1", "v1"), ("sha", "v1")],
    ids=["tag-v1", "tag-v2", "branch", "head", "relative", "full-sha"],
)
def test_ref_forms_resolve_to_their_commit(services, pip, tmp_path, ref, same_as):
    if ref == "sha":
        ref = services.git("rev-parse", "v1")
    result = make_builder(services, pip, tmp_path, ref=ref).build()
    assert result["git_sha"] == services.git("rev-parse", same_as)
    assert result["commit_time"] == {"v1": T1, "v2": T2}[same_as]


def test_v1_and_v2_get_different_sortable_ids(services, pip, tmp_path):
    v1 = make_builder(services, pip, tmp_path, ref="v1").build()
    v2 = make_builder(services, pip, tmp_path, ref="v2").build()
    assert v1["id"] < v2["id"]
    assert v1["artifact"] != v2["artifact"]
    # Same dependencies, so one download serves both.
    assert len(pip_calls(pip)) == 1


def test_commit_to_another_service_keeps_this_services_id(services, pip, tmp_path):
    before = make_builder(services, pip, tmp_path, ref="main").build()
    services.commit({"other/app.py": "print('other v2')\n"}, T3)
    after = make_builder(services, pip, tmp_path, ref="main").build()
    assert after["git_sha"] != before["git_sha"]
    assert after["changed"] is False
    assert (after["id"], after["checksum"]) == (before["id"], before["checksum"])


def test_commit_to_this_service_gives_a_new_later_id(services, pip, tmp_path):
    before = make_builder(services, pip, tmp_path, ref="main").build()
    services.commit({"hello/app.py": "print('hello v3')\n"}, T3)
    after = make_builder(services, pip, tmp_path, ref="main").build()
    assert after["changed"] is True
    assert after["id"].startswith(STAMP[T3] + "-")
    assert after["id"] > before["id"]
    assert read_member(after["artifact"], "src/app.py") == b"print('hello v3')\n"


def test_reverting_a_service_returns_to_its_earlier_id(services, pip, tmp_path):
    v1 = make_builder(services, pip, tmp_path, ref="v1").build()
    services.commit({"hello/app.py": "print('hello v1')\n"}, T3)
    reverted = make_builder(services, pip, tmp_path, ref="main").build()
    assert reverted["tree"] == v1["tree"]
    # The content is v1's, the stamp that of the revert: a new release, sorted last.
    assert reverted["id"][-10:] == v1["id"][-10:]
    assert reverted["id"].startswith(STAMP[T3] + "-")


def test_new_wheel_content_gives_a_new_id(services, pip, tmp_path, monkeypatch):
    first = make_builder(services, pip, tmp_path).build()
    monkeypatch.setenv("FAKE_PIP_SALT", "rebuilt")
    second = make_builder(services, pip, tmp_path, cache_dir=str(tmp_path / "cache2")).build()
    assert second["tree"] == first["tree"]
    assert second["id"] != first["id"]
    assert second["id"][:15] == first["id"][:15]


def test_a_commit_made_after_the_mirror_is_fetched(services, pip, tmp_path):
    before = make_builder(services, pip, tmp_path, ref="main").build()
    new_sha = services.commit({"hello/app.py": "print('hello v4')\n"}, T4, tag="v4")
    after = make_builder(services, pip, tmp_path, ref="main").build()
    assert after["git_sha"] == new_sha != before["git_sha"]
    assert make_builder(services, pip, tmp_path, ref="v4").build()["git_sha"] == new_sha


def test_service_at_the_repository_root(tmp_path, pip):
    repo = Repo(tmp_path / "single")
    repo.commit({"pyproject.toml": HELLO_PYPROJECT, "app.py": "print('root')\n"}, T1)
    repo.commit({}, T2)  # changes no file, so not the service either
    result = make_builder(repo, pip, tmp_path, subdir="", ref="main").build()
    assert result["tree"] == repo.git("rev-parse", "main^{tree}")
    assert result["commit_time"] == T1
    assert "src/app.py" in members(result["artifact"])


def test_service_without_dependencies_gets_only_uvicorn(tmp_path, pip):
    repo = Repo(tmp_path / "nodeps")
    repo.commit(
        {"svc/pyproject.toml": '[project]\nname = "svc"\ndependencies = []\n', "svc/app.py": ""},
        T1,
    )
    result = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    assert result["wheels"] == ["uvicorn-0.54.0-py3-none-any.whl"]
    assert (result["dependencies"], result["added"]) == (["uvicorn==0.54.0"], ["uvicorn==0.54.0"])
    # No download of an empty requirement list (pip refuses one): only uvicorn's.
    (call,) = pip_calls(pip)
    assert call.endswith(" uvicorn==0.54.0")
    assert [n for n in members(result["artifact"]) if n.startswith("wheels/")] == [
        "wheels/uvicorn-0.54.0-py3-none-any.whl"
    ]


MISSING = "<missing>"


def _remove_source(repo: Repo, builder: Builder) -> None:
    builder.build()  # makes the mirror
    subprocess.run(["rm", "-rf", str(repo.path)], check=True)


def _commit_bad_pyproject(text: str):
    def setup(repo: Repo, builder: Builder) -> None:
        repo.commit({"hello/pyproject.toml": text}, T3)

    return setup


@pytest.mark.parametrize(
    ("overrides", "setup", "field", "retryable", "says"),
    [
        ({"ref": "nope"}, None, "ref", False, "expected a branch, tag or commit of"),
        ({"ref": "-x"}, None, "ref", False, "expected a branch, tag or commit"),
        ({"ref": "v1..v2"}, None, "ref", False, "expected a branch, tag or commit"),
        ({"subdir": "../hello"}, None, "subdir", False, "no '..'"),
        ({"subdir": "/hello"}, None, "subdir", False, "no leading '/'"),
        ({"subdir": "docs"}, None, "subdir", False, "has no pyproject.toml"),
        ({"subdir": "missing"}, None, "subdir", False, "has no pyproject.toml"),
        ({"subdir": "hello/app.py"}, None, "subdir", False, "has no pyproject.toml"),
        ({"source": MISSING}, None, "source", False, "reachable from the controller"),
        ({"ref": "main"}, _remove_source, "source", True, "could not fetch"),
        ({"ref": "main"}, _commit_bad_pyproject("[project\n"), "pyproject.toml", False, "TOML"),
        (
            {"ref": "main"},
            _commit_bad_pyproject('[project]\ndependencies = ["doesnotexist==1.0"]\n'),
            "pyproject.toml",
            False,
            "could not download ['doesnotexist==1.0'] as wheels",
        ),
        (
            {"ref": "main"},
            _commit_bad_pyproject('[project]\ndependencies = ["unreachable==1.0"]\n'),
            "pyproject.toml",
            True,
            "Network is unreachable",
        ),
    ],
    ids=[
        "unknown-ref",
        "option-like-ref",
        "range-ref",
        "dotdot-subdir",
        "absolute-subdir",
        "subdir-without-pyproject",
        "subdir-missing",
        "subdir-is-a-file",
        "missing-source",
        "source-gone-after-mirror",
        "invalid-pyproject",
        "pip-fails",
        "pip-offline",
    ],
)
def test_build_failures(services, pip, tmp_path, overrides, setup, field, retryable, says):
    if overrides.get("source") == MISSING:
        overrides = {**overrides, "source": str(tmp_path / "no-such-repo")}
    builder = make_builder(services, pip, tmp_path, **overrides)
    if setup is not None:
        setup(services, builder)
    with pytest.raises(BuildError) as info:
        builder.build()
    assert info.value.retryable is retryable
    assert info.value.details.get("field") == field
    assert says in info.value.msg
    if field in ("ref", "subdir", "source"):
        assert info.value.details["value"] == getattr(builder.spec, field)
    if setup is None:
        assert not (tmp_path / "cache" / "artifacts").exists()


def test_pip_failure_is_retried_on_the_next_build(services, pip, tmp_path):
    services.commit(
        {"hello/pyproject.toml": '[project]\ndependencies = ["doesnotexist==1.0"]\n'}, T3
    )
    for _ in range(2):
        with pytest.raises(BuildError):
            make_builder(services, pip, tmp_path, ref="main").build()
    # No `.complete` marker after a failure: each build asks pip again.
    assert len(pip_calls(pip)) == 2


def test_failing_git_command_names_the_command(services, pip, tmp_path):
    def run(argv):
        if "--format=%ct" in argv:
            return subprocess.CompletedProcess(argv, 128, "", "fatal: broken mirror")
        return flipback_build.run_command(argv)

    builder = make_builder(services, pip, tmp_path)
    builder.run = run
    with pytest.raises(BuildError) as info:
        builder.build()
    assert "failed in the mirror of" in info.value.msg
    assert "fatal: broken mirror" in info.value.msg
    assert info.value.retryable is False


def test_failing_git_archive_is_retryable(services, pip, tmp_path, monkeypatch):
    real_run = subprocess.run

    def run(argv, **kwargs):
        if "archive" in argv:
            return subprocess.CompletedProcess(argv, 128, b"", b"fatal: disk full")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(flipback_build.subprocess, "run", run)
    with pytest.raises(BuildError) as info:
        make_builder(services, pip, tmp_path).build()
    assert info.value.retryable is True
    assert "fatal: disk full" in info.value.msg
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == []


@pytest.mark.parametrize(
    ("pip", "expected"),
    [([], [sys.executable, "-m", "pip"]), (["/opt/pip"], ["/opt/pip"])],
    ids=["default-pip", "given-pip"],
)
def test_build_spec_from_params(pip, expected):
    params = {
        "service": "web",
        "source": "/srv/git/web.git",
        "subdir": "/services/web/",
        "ref": "v1",
        "cache_dir": "/var/cache/flipback",
        "pip": pip,
    }
    assert BuildSpec.from_params(params) == BuildSpec(
        service="web",
        source="/srv/git/web.git",
        subdir="services/web",
        ref="v1",
        cache_dir="/var/cache/flipback",
        pip=expected,
    )


# ------------------------------------------------------------ credentials in source

SECRET = "s3cr%t/tok@n"  # percent-encoded in a URL: s3cr%25t%2Ftok%40n
SECRET_IN_URL = quote(SECRET, safe="")
USER = "deploy-bot"


def file_url(repo: Repo) -> str:
    """`file://user:secret@/path`: the builder clones `file:///path`, so the real
    repository stands in for an https server that wants credentials."""
    return f"file://{USER}:{SECRET_IN_URL}@{repo.path}"


def spellings(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote(secret, safe="").lower()]


def assert_no_secret_under(path: Path) -> None:
    """No file under `path` (mirror config, packs, artifacts, locks) holds the secret."""
    for file in path.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for form in spellings(SECRET):
                assert form.encode() not in data, f"{form!r} in {file}"


def remote_url(mirror: str) -> str:
    return subprocess.run(
        ["git", "-C", mirror, "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


class RecordingRemote:
    """Stands in for run_remote: records (argv, env), then answers as told, never running
    git: "ok" succeeds, any other text fails with it as stderr."""

    def __init__(self, answer: str = "ok") -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.answer = answer

    def __call__(self, argv, env):
        self.calls.append((list(argv), dict(env)))
        if self.answer == "ok":
            return ok(argv)
        return subprocess.CompletedProcess(argv, 128, "", self.answer)


def ok(argv, stdout: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(argv, 0, stdout, "")


def test_credentials_stay_out_of_the_cache_and_the_result(services, pip, tmp_path):
    source = file_url(services)
    builder = make_builder(services, pip, tmp_path, source=source)
    first = builder.build()
    second = make_builder(services, pip, tmp_path, source=source).build()  # fetches

    clean = f"file://{services.path}"
    assert first["source"] == second["source"] == clean
    assert second["id"] == first["id"]
    assert remote_url(builder.mirror) == clean
    # Same mirror with or without the credentials.
    assert builder.mirror == make_builder(services, pip, tmp_path, source=clean).mirror
    assert_no_secret_under(tmp_path / "cache")
    for form in [*spellings(SECRET), USER]:
        assert form not in json.dumps(first)


def test_result_source_of_a_plain_path_is_the_path(services, pip, tmp_path):
    assert make_builder(services, pip, tmp_path).build()["source"] == str(services.path)


def _old_mirror(name: str):
    """Set up a mirror as a version before redaction left it, under `name`: "old" (named
    after the URL with credentials) or "new" (named after the redacted URL)."""

    def setup(repo: Repo, builder: Builder) -> list[str]:
        where = Builder._mirror_of(builder.spec.cache_dir, builder.spec.source)
        if name == "new":
            where = builder.mirror
        os.makedirs(os.path.dirname(where), exist_ok=True)
        # What `git clone --mirror <url with credentials>` leaves (git reads a file URL's
        # encoded "/" as a path, so the clone itself cannot take this one).
        subprocess.run(["git", "clone", "--quiet", "--mirror", str(repo.path), where], check=True)
        subprocess.run(
            ["git", "-C", where, "config", "remote.origin.url", builder.spec.source], check=True
        )
        assert SECRET_IN_URL in remote_url(where)
        return [where]

    return setup


def _old_and_new_mirror(repo: Repo, builder: Builder) -> list[str]:
    (old,) = _old_mirror("old")(repo, builder)
    make_builder(repo, [], Path(builder.spec.cache_dir).parent, source=builder.source).sync_mirror()
    return [old, builder.mirror]


@pytest.mark.parametrize(
    ("setup", "kept_old"),
    [(_old_mirror("old"), False), (_old_mirror("new"), False), (_old_and_new_mirror, True)],
    ids=["old-name-taken-over", "new-name-cleaned", "old-beside-new-cleaned-in-place"],
)
def test_a_mirror_with_credentials_in_its_config_is_cleaned(
    services, pip, tmp_path, setup, kept_old
):
    builder = make_builder(services, pip, tmp_path, source=file_url(services))
    mirrors = setup(services, builder)

    result = builder.build()

    assert result["source"] == f"file://{services.path}"
    assert remote_url(builder.mirror) == result["source"]
    old = Builder._mirror_of(builder.spec.cache_dir, builder.spec.source)
    assert os.path.isdir(old) is kept_old
    for mirror in mirrors:
        if os.path.isdir(mirror):
            assert remote_url(mirror) == result["source"]
    assert_no_secret_under(tmp_path / "cache")


@pytest.mark.parametrize(
    ("source", "clean", "env"),
    [
        pytest.param(
            f"https://{USER}:{SECRET_IN_URL}@git.example.com/team/app.git",
            "https://git.example.com/team/app.git",
            {"FLIPBACK_GIT_USERNAME": USER, "FLIPBACK_GIT_PASSWORD": SECRET},
            id="user-and-token",
        ),
        pytest.param(
            f"http://{SECRET_IN_URL}@[::1]:8080/x.git",
            "http://[::1]:8080/x.git",
            {"FLIPBACK_GIT_USERNAME": SECRET, "FLIPBACK_GIT_PASSWORD": ""},
            id="token-as-user-ipv6",
        ),
        pytest.param(
            f"ssh://git:{SECRET_IN_URL}@host:2222/x.git",
            "ssh://git@host:2222/x.git",
            {"FLIPBACK_GIT_USERNAME": "", "FLIPBACK_GIT_PASSWORD": SECRET},
            id="ssh-password",
        ),
        pytest.param(
            "https://git.example.com/x.git", "https://git.example.com/x.git", {}, id="none"
        ),
        pytest.param("ssh://git@host/x.git", "ssh://git@host/x.git", {}, id="ssh-user"),
        pytest.param("git@host:x.git", "git@host:x.git", {}, id="scp-like"),
    ],
)
def test_credentials_reach_git_in_its_environment_only(tmp_path, source, clean, env):
    remote = RecordingRemote()
    spec = BuildSpec("hello", source, "hello", "main", str(tmp_path / "cache"), ["pip"])
    builder = Builder(spec, run_remote=remote)
    builder.sync_mirror()  # clones
    os.makedirs(builder.mirror)
    builder.run = lambda argv: ok(argv, stdout=clean)  # the mirror's config is clean
    builder.sync_mirror()  # fetches

    (clone_argv, clone_env), (fetch_argv, fetch_env) = remote.calls
    assert clone_argv[-5:] == ["--quiet", "--mirror", "--", clean, builder.mirror]
    assert fetch_argv[-6:] == ["-C", builder.mirror, "fetch", "--quiet", "--prune", "origin"]
    helper = ["-c", "credential.helper=", "-c", flipback_build.CREDENTIAL_HELPER]
    for argv, given in ((clone_argv, clone_env), (fetch_argv, fetch_env)):
        assert given == {"GIT_TERMINAL_PROMPT": "0", **env}
        # Credentials replace the user's helpers; without them, those still answer.
        assert (argv[1:5] == helper) is bool(env)
        for word in argv:
            for form in spellings(SECRET):
                assert form not in word


def test_the_credential_helper_answers_get_from_the_environment():
    script = flipback_build.CREDENTIAL_HELPER.removeprefix("credential.helper=!")
    env = {
        **os.environ,
        "FLIPBACK_GIT_USERNAME": USER,
        "FLIPBACK_GIT_PASSWORD": "p a$s'\"\\x",
    }
    run = [
        subprocess.run(["sh", "-c", f"{script} {op}"], env=env, capture_output=True, text=True)
        for op in ("get", "store", "erase")
    ]
    assert run[0].stdout == f"username={USER}\npassword=p a$s'\"\\x\n"
    assert [r.stdout for r in run[1:]] == ["", ""]


@pytest.mark.parametrize("line_break", ["%0A", "%0d", "%00"], ids=["lf", "cr", "nul"])
def test_credentials_with_a_line_break_are_refused_without_showing_them(tmp_path, line_break):
    source = f"https://{USER}:{SECRET_IN_URL}{line_break}x@host/x.git"
    spec = BuildSpec("hello", source, "hello", "main", str(tmp_path / "cache"), ["pip"])
    remote = RecordingRemote()
    with pytest.raises(BuildError) as info:
        Builder(spec, run_remote=remote).sync_mirror()
    assert remote.calls == []
    assert info.value.details == {"field": "source", "value": "https://host/x.git"}
    for form in [*spellings(SECRET), USER]:
        assert form not in info.value.msg


def _stderr_with_the_secret() -> str:
    return (
        f"fatal: could not read from https://{USER}:{SECRET_IN_URL}@git.example.com/x\n"
        f"remote: token {SECRET} is expired ({SECRET_IN_URL.lower()})"
    )


@pytest.mark.parametrize(
    ("step", "field", "retryable", "says"),
    [
        ("clone", "source", False, "reachable from the controller"),
        ("fetch", "source", True, "could not fetch"),
        ("mirror-git", None, False, "failed in the mirror of"),
    ],
    ids=["clone", "fetch", "git-in-the-mirror"],
)
def test_failures_never_show_the_credentials(services, pip, tmp_path, step, field, retryable, says):
    source = file_url(services)
    clean = f"file://{services.path}"
    builder = make_builder(services, pip, tmp_path, source=source)
    if step == "fetch":
        builder.build()
    if step in ("clone", "fetch"):
        builder.run_remote = RecordingRemote(_stderr_with_the_secret())
    else:
        real = builder.run

        def run(argv):
            if "--format=%ct" in argv:
                return subprocess.CompletedProcess(argv, 128, "", _stderr_with_the_secret())
            return real(argv)

        builder.run = run

    with pytest.raises(BuildError) as info:
        builder.build()

    assert says in info.value.msg
    assert clean in info.value.msg
    assert "remote: token *** is expired (***)" in info.value.msg
    assert info.value.retryable is retryable
    assert info.value.details.get("field") == field
    if field is not None:
        assert info.value.details["value"] == clean
    shown = info.value.msg + json.dumps(info.value.details)
    for form in [*spellings(SECRET), USER]:
        assert form not in shown
    assert_no_secret_under(tmp_path / "cache")


# An https server is too much for a unit test; git's own "dumb" HTTP protocol over
# http.server is not: it shows the credential helper at work with a real git.


AUTH = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
WRONG_AUTH = "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()


@pytest.fixture
def served(services, tmp_path, monkeypatch):
    """`services` as a bare repository over http://127.0.0.1, behind basic auth."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(services.path), str(www / "services.git")],
        check=True,
    )
    subprocess.run(["git", "-C", str(www / "services.git"), "update-server-info"], check=True)
    server = GitOverHttp.serve(www, USER, SECRET)
    # The Authorization header of every request (None: none sent), answered or refused.
    yield f"127.0.0.1:{server.server_address[1]}/services.git", server.handler.seen
    stop(server)


@pytest.mark.parametrize(
    ("userinfo", "works", "sent"),
    [
        (f"{USER}:{SECRET_IN_URL}@", True, {None, AUTH}),
        (f"{USER}:wrong@", False, {None, WRONG_AUTH}),
        ("", False, {None}),
    ],
    ids=["right-credentials", "wrong-password", "no-credentials-fails-without-a-prompt"],
)
def test_over_http_with_basic_auth(served, services, pip, tmp_path, userinfo, works, sent):
    where, seen = served
    # A credential helper of the user's that stores what it is given must not get them.
    store = tmp_path / "stored-credentials"
    Path(os.environ["GIT_CONFIG_GLOBAL"]).write_text(
        f"[credential]\n\thelper = store --file {store}\n"
    )
    builder = make_builder(services, pip, tmp_path, source=f"http://{userinfo}{where}")

    if works:
        result = builder.build()
        again = make_builder(services, pip, tmp_path, source=builder.spec.source).build()
        assert result["source"] == again["source"] == f"http://{where}"
        assert result["git_sha"] == services.git("rev-parse", "v2")
        assert again["id"] == result["id"]
        assert remote_url(builder.mirror) == f"http://{where}"
    else:
        with pytest.raises(BuildError) as info:
            builder.build()
        assert info.value.details == {"field": "source", "value": f"http://{where}"}
        for form in [*spellings(SECRET), USER, "wrong"]:
            assert form not in info.value.msg
    # Git asked without credentials first, then with those of the URL, from the helper.
    assert {auth for auth, _path in seen} == sent
    assert not store.exists()
    assert_no_secret_under(tmp_path / "cache")


# ------------------------------------------------------------------ dependency sources

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UV_SERVICE = FIXTURES / "uv_service"
LOCKED = ["anyio==4.4.0", "h11==0.14.0", "idna==3.20", "sniffio==1.3.1"]


def pip_files(pip: list[str]) -> list[str]:
    """The requirements files the fake pip was given with -r, in call order."""
    log = Path(pip[1]).with_name("pip-files.log")
    return log.read_text().split("\n----\n")[:-1] if log.exists() else []


def uv_service(repo: Repo, when: int = T1, **extra: str | None) -> str:
    files: dict[str, str | None] = {
        "svc/pyproject.toml": (UV_SERVICE / "pyproject.toml").read_text(),
        "svc/uv.lock": (UV_SERVICE / "uv.lock").read_text(),
        "svc/app.py": "app = None\n",
    }
    files.update({f"svc/{name.replace('__', '/')}": text for name, text in extra.items()})
    return repo.commit(files, when)


def test_uv_lock_comes_first_and_is_exported_by_uv(tmp_path, pip):
    repo = Repo(tmp_path / "locked")
    # A requirements.txt beside the lock is not read: uv.lock comes first.
    uv_service(repo, **{"requirements.txt": "django==5.0\n"})

    result = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    assert result["dependency_source"] == "uv.lock"
    # Every locked package (transitive ones too), and uvicorn, which the lock lacks.
    assert result["dependencies"] == sorted([*LOCKED, "uvicorn==0.54.0"])
    assert result["added"] == ["uvicorn==0.54.0"]
    meta = json.loads(read_member(result["artifact"], "flipback.json"))
    assert (meta["dependency_source"], meta["dependencies"], meta["added"]) == (
        "uv.lock",
        result["dependencies"],
        ["uvicorn==0.54.0"],
    )
    (exported,) = pip_files(pip)
    # The lock's hashes reach pip, which enforces them; no dev dependency, no project.
    assert exported.count("--hash=sha256:") == 8
    pins = [line.split()[0] for line in exported.splitlines() if line[:1].isalnum()]
    assert pins == LOCKED
    assert "iniconfig" not in exported
    first, second = pip_calls(pip)
    assert " -r " in first and "uvicorn" not in first
    # uvicorn is resolved against the locked pins, which stay as they are.
    assert " -c " in second and second.endswith(" uvicorn==0.54.0")


def test_a_code_change_of_a_uv_project_reuses_its_wheelhouse(tmp_path, pip):
    repo = Repo(tmp_path / "locked")
    uv_service(repo)
    first = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    uv_service(repo, T2, **{"app.py": "app = 2\n"})

    second = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    assert second["id"] != first["id"]
    assert second["deps_key"] == first["deps_key"]
    assert (second["dependencies"], second["added"]) == (first["dependencies"], first["added"])
    assert len(pip_calls(pip)) == 2  # both from the first build


@pytest.mark.parametrize(
    ("uv", "lock", "says"),
    [
        pytest.param(None, "this is [not a lock\n", "`uv export` failed", id="broken-lock"),
        pytest.param("missing", None, "make setup", id="uv-missing"),
        pytest.param("local-path", None, "include local paths ['-e ./libs/shared']", id="local"),
    ],
)
def test_uv_lock_problems_are_not_retryable(tmp_path, pip, uv, lock, says):
    repo = Repo(tmp_path / "locked")
    uv_service(repo, **({"uv.lock": lock} if lock else {}))
    overrides = {}
    if uv == "missing":
        overrides["uv"] = [str(tmp_path / "no-such-uv")]
    if uv == "local-path":
        script = tmp_path / "fake_uv.py"
        script.write_text("print('anyio==4.4.0')\nprint('-e ./libs/shared')\n")
        overrides["uv"] = [sys.executable, str(script)]

    with pytest.raises(BuildError) as info:
        make_builder(repo, pip, tmp_path, subdir="svc", ref="main", **overrides).build()

    assert says in info.value.msg
    assert info.value.retryable is False
    assert info.value.details["field"] == "uv.lock"
    assert pip_calls(pip) == []


def test_uv_is_found_next_to_the_interpreter(tmp_path, monkeypatch):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    monkeypatch.setattr(flipback_build.sys, "executable", str(python))
    assert flipback_build.uv_command() == [str(python), "-m", "uv"]
    (bin_dir / "uv").write_text("#!/bin/sh\n")
    (bin_dir / "uv").chmod(0o755)
    assert flipback_build.uv_command() == [str(bin_dir / "uv")]
    # The test run's own venv has uv, as `make setup` installs it.
    monkeypatch.undo()
    assert BuildSpec("s", "x", "", "HEAD", "c", []).uv == [str(Path(sys.executable).parent / "uv")]


def test_requirements_txt_comes_before_pyproject(tmp_path, pip):
    repo = Repo(tmp_path / "reqs")
    repo.commit(
        {
            "svc/pyproject.toml": '[project]\nname = "svc"\ndependencies = ["flask==3.0.0"]\n',
            "svc/requirements.txt": "-r base.txt\n# the web framework\nfastapi==0.110.0\n",
            "svc/base.txt": "uvicorn==0.30.0\n",
            "svc/app.py": "",
        },
        T1,
    )
    builder = make_builder(repo, pip, tmp_path, subdir="svc", ref="main")

    result = builder.build()

    assert result["dependency_source"] == "requirements.txt"
    # The fake pip leaves the include to real pip: fastapi only, so uvicorn is added.
    assert result["dependencies"] == ["fastapi==0.110.0", "uvicorn==0.54.0"]
    assert "flask" not in " ".join(pip_calls(pip))
    (given,) = pip_files(pip)
    assert given.startswith("-r base.txt\n")
    # What an included file says is part of the wheelhouse's key.
    again = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    assert (again["changed"], len(pip_calls(pip))) == (False, 2)
    repo.commit({"svc/base.txt": "uvicorn==0.31.0\n"}, T2)
    make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    assert len(pip_calls(pip)) == 4


def test_a_project_without_pyproject_but_with_requirements_gets_uvicorn(tmp_path, pip):
    # A Django project: requirements.txt, no pyproject.toml, and no uvicorn in either.
    repo = Repo(tmp_path / "django")
    repo.commit({"site/requirements.txt": "django==5.0\n", "site/manage.py": ""}, T1)

    result = make_builder(repo, pip, tmp_path, subdir="site", ref="main").build()

    assert result["dependency_source"] == "requirements.txt"
    assert result["dependencies"] == ["django==5.0", "uvicorn==0.54.0"]
    assert result["added"] == ["uvicorn==0.54.0"]
    assert result["project"] is None
    assert "wheels/uvicorn-0.54.0-py3-none-any.whl" in members(result["artifact"])


def test_a_named_requirements_file_wins_over_uv_lock(tmp_path, pip):
    repo = Repo(tmp_path / "locked")
    uv_service(repo, **{"requirements__prod.txt": "flask==3.0.0\nuvicorn==0.40.0\n"})

    result = make_builder(
        repo, pip, tmp_path, subdir="svc", ref="main", requirements="requirements/prod.txt"
    ).build()

    assert result["dependency_source"] == "requirements/prod.txt"
    assert result["dependencies"] == ["flask==3.0.0", "uvicorn==0.40.0"]
    assert result["added"] == []
    assert len(pip_calls(pip)) == 1


@pytest.mark.parametrize(
    ("requirements", "says"),
    [
        ("missing.txt", "has no such file"),
        ("../requirements.txt", "no '..'"),
        ("/etc/requirements.txt", "no leading '/'"),
    ],
    ids=["missing", "dotdot", "absolute"],
)
def test_a_bad_requirements_path_fails_naming_it(services, pip, tmp_path, requirements, says):
    builder = make_builder(services, pip, tmp_path, requirements=requirements)
    with pytest.raises(BuildError) as info:
        builder.build()
    assert says in info.value.msg
    assert (info.value.details["field"], info.value.details["value"]) == (
        "requirements",
        requirements,
    )
    assert info.value.retryable is False
    assert pip_calls(pip) == []


def test_requirements_text_follows_includes_once(tmp_path):
    (tmp_path / "reqs").mkdir()
    (tmp_path / "requirements.txt").write_text("-r reqs/base.txt\n-c reqs/pins.txt\nflask\n")
    (tmp_path / "reqs" / "base.txt").write_text("--requirement=../requirements.txt\nclick\n")
    (tmp_path / "reqs" / "pins.txt").write_text("click==8.1.0\n")
    text = flipback_build.requirements_text(str(tmp_path / "requirements.txt"))
    assert text.count("flask") == 1  # the loop back is read once
    assert "click\n" in text and "click==8.1.0" in text


# ------------------------------------------------------------ real pip, local index


def make_wheel(directory: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A minimal, valid pure-Python wheel (real pip reads its metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    entries = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    entries[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in [*entries, f"{dist}/RECORD"])
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in entries.items():
            archive.writestr(zipfile.ZipInfo(entry, (2024, 1, 1, 0, 0, 0)), text)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 503 index on disk, and real pip pointed at it alone (no config, no network).
    Call it with (name, version, requires, requires_python) rows; returns the wheels."""
    root = tmp_path / "index"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", (root / "simple").as_uri())
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)

    def publish(*rows: tuple[str, str, Sequence[str], str]) -> dict[str, Path]:
        wheels = {}
        for name, version, requires, requires_python in rows:
            wheel = make_wheel(root / "files", name, version, requires)
            wheels[f"{name}=={version}"] = wheel
            page = root / "simple" / name / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            old = page.read_text() if page.exists() else ""
            attr = f' data-requires-python="{html.escape(requires_python)}"' * bool(requires_python)
            link = f'<a href="{wheel.as_uri()}#sha256={sha256(wheel)}"{attr}>{wheel.name}</a>\n'
            page.write_text(old + link)
        return wheels

    return publish


REAL_PIP = [sys.executable, "-m", "pip"]


def test_hashed_requirements_are_enforced_and_uvicorn_keeps_their_pins(tmp_path, index):
    wheels = index(
        ("flask", "3.0.0", (), ""),
        ("h11", "0.14.0", (), ""),
        ("h11", "0.16.0", (), ""),
        ("uvicorn", "0.54.0", ("h11>=0.8",), ""),
        # What the hosts' staging runs on (shipped with the wheels, not installed).
        ("uv", "0.13.9", (), ""),
    )
    pinned = "".join(
        f"{req} --hash=sha256:{sha256(wheels[req])}\n" for req in ("flask==3.0.0", "h11==0.14.0")
    )
    repo = Repo(tmp_path / "hashed")
    repo.commit({"svc/requirements.txt": pinned, "svc/app.py": ""}, T1)

    result = make_builder(repo, REAL_PIP, tmp_path, subdir="svc", ref="main").build()

    assert result["dependency_source"] == "requirements.txt"
    # uvicorn added, resolved with h11 held at the pinned 0.14.0 (0.16.0 is newer).
    assert result["dependencies"] == ["flask==3.0.0", "h11==0.14.0", "uvicorn==0.54.0"]
    assert result["added"] == ["uvicorn==0.54.0"]
    for req in result["dependencies"]:
        name = wheels[req].name
        assert read_member(result["artifact"], f"wheels/{name}") == wheels[req].read_bytes()

    tampered = pinned.replace(sha256(wheels["flask==3.0.0"]), "0" * 64)
    repo.commit({"svc/requirements.txt": tampered}, T2)
    with pytest.raises(BuildError) as info:
        make_builder(repo, REAL_PIP, tmp_path, subdir="svc", ref="main").build()
    assert "DO NOT MATCH THE HASHES" in info.value.msg
    assert f"Expected sha256 {'0' * 64}" in info.value.msg
    assert sha256(wheels["flask==3.0.0"]) in info.value.msg  # what pip got
    assert info.value.retryable is False
    assert info.value.details["field"] == "requirements.txt"


def test_a_dependency_for_another_python_fails_whole_and_not_retryable(tmp_path, index):
    # Many versions, all for a Python to come: pip's reason is one long line.
    versions = [f"1.{n}" for n in range(60)]
    index(*[("futurelib", v, (), ">=3.99") for v in versions])
    repo = Repo(tmp_path / "future")
    pyproject = '[project]\nname = "svc"\ndependencies = ["futurelib==1.59"]\n'
    repo.commit({"svc/pyproject.toml": pyproject, "svc/app.py": ""}, T1)

    with pytest.raises(BuildError) as info:
        make_builder(repo, REAL_PIP, tmp_path, subdir="svc", ref="main").build()

    msg = info.value.msg
    ignored = (
        "ERROR: Ignored the following versions that require a different python version: "
        + "; ".join(f"{v} Requires-Python >=3.99" for v in sorted(versions))
    )
    assert ignored in msg  # whole: the reason is never cut off
    assert "ERROR: Could not find a version that satisfies the requirement futurelib==1.59" in msg
    assert "ERROR: No matching distribution found for futurelib==1.59" in msg
    assert "Retrying does not change this" in msg
    assert info.value.retryable is False
    assert (info.value.details["field"], info.value.details["value"]) == (
        "pyproject.toml",
        ["futurelib==1.59"],
    )
    assert not (tmp_path / "cache" / "artifacts").exists() or not list(
        (tmp_path / "cache" / "artifacts").iterdir()
    )


@pytest.mark.parametrize(
    ("stderr", "kept", "retryable"),
    [
        pytest.param(
            "Collecting x\n  Downloading x.whl\nERROR: No matching distribution found for x\n",
            ["ERROR: No matching distribution found for x"],
            False,
            id="no-distribution",
        ),
        pytest.param(
            "WARNING: Retrying (Retry(total=0)) after connection broken by "
            "'ConnectTimeoutError(...)': /simple/x/\n"
            "ERROR: Could not find a version that satisfies the requirement x\n",
            [
                "WARNING: Retrying (Retry(total=0)) after connection broken by "
                "'ConnectTimeoutError(...)': /simple/x/",
                "ERROR: Could not find a version that satisfies the requirement x",
            ],
            True,
            id="offline",
        ),
        pytest.param(
            "ERROR: HTTP error 503 while getting https://files/x.whl\n",
            ["ERROR: HTTP error 503 while getting https://files/x.whl"],
            True,
            id="5xx",
        ),
        pytest.param(
            "ERROR: HTTP error 404 while getting https://files/x.whl\n",
            ["ERROR: HTTP error 404 while getting https://files/x.whl"],
            False,
            id="4xx",
        ),
        pytest.param(
            "WARNING: Retrying after connection broken by 'ReadTimeoutError'\n"
            "ERROR: Package 'x' requires a different Python: 3.11.7 not in '>=3.12'\n",
            [
                "WARNING: Retrying after connection broken by 'ReadTimeoutError'",
                "ERROR: Package 'x' requires a different Python: 3.11.7 not in '>=3.12'",
            ],
            False,
            id="python-despite-a-flaky-network",
        ),
        pytest.param("Traceback\n" + "x" * 700, ["x" * 600], False, id="no-error-line"),
    ],
)
def test_pip_failure_keeps_the_reasons_and_says_if_a_retry_helps(stderr, kept, retryable):
    assert flipback_build.pip_failure(stderr) == ("\n".join(kept), retryable)


# --------------------------------------------------------------- the project's wheel

BACKEND = (FIXTURES / "project_backend.py").read_text()
PACKAGE_PYPROJECT = """\
[project]
name = "mypkg"
version = "1.0.0"
dependencies = ["fastapi==0.110.0"]

[build-system]
requires = []
build-backend = "project_backend"
backend-path = ["_build"]
"""


def src_layout(repo: Repo, main: str, when: int) -> str:
    return repo.commit(
        {
            "svc/pyproject.toml": PACKAGE_PYPROJECT,
            "svc/_build/project_backend.py": BACKEND,
            "svc/src/mypkg/__init__.py": "",
            "svc/src/mypkg/main.py": main,
        },
        when,
    )


def wheel_entries(data: bytes) -> dict[str, tuple[bytes, tuple]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {i.filename: (archive.read(i), i.date_time) for i in archive.infolist()}


def test_a_src_layout_project_ships_its_own_wheel(tmp_path, pip):
    repo = Repo(tmp_path / "pkg")
    src_layout(repo, "app = 'v1'\n", T1)

    result = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    wheel = "mypkg-1.0.0-py3-none-any.whl"
    assert result["project"] == wheel
    # Shipped in both artifacts, never among the dependencies' wheels.
    for artifact in (result["artifact"], result["code_artifact"]):
        names = members(artifact)
        assert f"project/{wheel}" in names
        assert json.loads(read_member(artifact, "flipback.json"))["project"] == wheel
    assert result["wheels"] == [
        "fastapi-0.110.0-py3-none-any.whl",
        "uvicorn-0.54.0-py3-none-any.whl",
    ]
    entries = wheel_entries(read_member(result["artifact"], f"project/{wheel}"))
    assert entries["mypkg/main.py"][0] == b"app = 'v1'\n"
    # Built with SOURCE_DATE_EPOCH at the commit time (the backend dates entries by it).
    # (zip dates count in steps of two seconds)
    assert {date for _data, date in entries.values()} == {time.gmtime(T1 - T1 % 2)[:6]}
    wheel_calls = [c for c in pip_calls(pip) if c.startswith("wheel ")]
    assert len(wheel_calls) == 1 and "--no-deps" in wheel_calls[0]
    # The id covers the tree and the dependencies' wheels, not the project's wheel.
    hashes = [
        hashlib.sha256(read_member(result["artifact"], f"wheels/{w}")).hexdigest()
        for w in result["wheels"]
    ]
    assert result["id"] == release_id(T1, result["tree"], hashes)

    again = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    assert (again["changed"], again["project"]) == (False, wheel)


def test_a_project_built_twice_gives_the_same_id_and_bytes(tmp_path, pip):
    repo = Repo(tmp_path / "pkg")
    src_layout(repo, "app = 'v1'\n", T1)
    first = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    second = make_builder(
        repo, pip, tmp_path, subdir="svc", ref="main", cache_dir=str(tmp_path / "other-cache")
    ).build()
    assert second["changed"] is True
    for key in ("id", "deps_key", "checksum", "code_checksum", "project"):
        assert second[key] == first[key], key


def test_a_code_change_gives_a_new_id_but_keeps_the_deps_key(tmp_path, pip):
    repo = Repo(tmp_path / "pkg")
    src_layout(repo, "app = 'v1'\n", T1)
    first = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    src_layout(repo, "app = 'v2'\n", T2)

    second = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    assert second["id"] != first["id"]
    assert second["deps_key"] == first["deps_key"]  # hosts reuse the venv
    wheel = f"project/{second['project']}"
    assert wheel_entries(read_member(second["code_artifact"], wheel))["mypkg/main.py"][0] == (
        b"app = 'v2'\n"
    )


def test_a_project_whose_wheel_cannot_be_built_fails_not_retryable(tmp_path, pip):
    repo = Repo(tmp_path / "pkg")
    src_layout(repo, "app = 'v1'\n", T1)
    repo.commit({"svc/_build/project_backend.py": "raise SystemExit('backend broken')\n"}, T2)

    with pytest.raises(BuildError) as info:
        make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    assert "could not build the service's own wheel" in info.value.msg
    assert info.value.details["field"] == "pyproject.toml"
    assert info.value.retryable is False
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == []


def test_an_older_artifact_without_the_project_is_built_again(tmp_path, pip):
    repo = Repo(tmp_path / "pkg")
    src_layout(repo, "app = 'v1'\n", T1)
    first = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()
    # As a flipback before project wheels wrote it: same id, no project/.
    meta = json.loads(read_member(first["code_artifact"], "flipback.json"))
    del meta["project"]
    source = subprocess.run(
        ["git", "-C", str(repo.path), "archive", "--format=tar", "main:svc"],
        capture_output=True,
        check=True,
    ).stdout
    for artifact in (first["artifact"], first["code_artifact"]):
        write_artifact(artifact, source, [], T1, meta)

    again = make_builder(repo, pip, tmp_path, subdir="svc", ref="main").build()

    assert (again["changed"], again["id"], again["project"]) == (
        True,
        first["id"],
        first["project"],
    )
    assert f"project/{first['project']}" in members(again["code_artifact"])
